"""Check a training data set before any training starts: every problem is reported with its row and column.

Text columns are checked with Arrow compute kernels (no Python loop over the rows); image columns are decoded
once, so a corrupt file fails here and not in the middle of an epoch. Row numbers are those of the data set as
the caller sees it (after ``select`` / ``filter`` / ``shuffle``), not of the Arrow table underneath.

What is refused (:class:`DatasetError`, naming row, column, value and the fix) and what is accepted with a
warning (``logging`` at WARNING level, counts and rows named) is listed case by case in
``docs/reliability_bad_data.md``.

The helpers that read the data set's columns live in :mod:`hf_divcl.data.columns` and the truncation report
in :mod:`hf_divcl.data.truncation`.
"""

from __future__ import annotations

import io
import logging
import math

from .columns import column_values, feature_kind, first_true, format_rows, true_rows
from .truncation import truncation_report

logger = logging.getLogger(__name__)

__all__ = ["DatasetError", "model_columns", "validate_training_dataset"]

RESERVED = ("return_loss", "dataset_name")
LABEL_COLUMNS = ("label", "labels", "score", "scores")
# modes whose conversion to 8-bit RGB clips or blanks the pixel values (16-bit and 32-bit grey, float)
_HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_INVISIBLE = r"^[\s\p{Z}\p{Cc}\p{Cf}]*$"  # whitespace, separators, control and format (zero-width) characters
_IMAGE_PATH = r"(?i)\.(png|jpe?g|gif|bmp|webp|tiff?)$"


class DatasetError(ValueError):
    """A training data set that cannot be trained on as it is; the message names the row, column and fix."""


def model_columns(dataset, label_columns: list[str] | tuple[str, ...], ignore: tuple[str, ...] = ()) -> list[str]:
    """Columns the model will see, in order (labels and bookkeeping columns excluded)."""
    return [c for c in dataset.column_names if c not in label_columns and c not in ignore]


def _not_a_dataset(dataset) -> str:
    kind = type(dataset).__name__
    module = type(dataset).__module__
    if kind == "DataFrame" and module.startswith("pandas"):
        fix = "Convert it with datasets.Dataset.from_pandas(df, preserve_index=False)."
    elif kind == "IterableDataset":
        fix = ("A streaming data set trains with batch_policy='random' only: the other policies plan batches from "
               "every row, which needs random access and a length. Load it without streaming=True, or materialise "
               "it with datasets.Dataset.from_generator(...).")
    elif kind in ("DatasetDict", "IterableDatasetDict"):
        fix = (f"Check one split at a time, e.g. ds['train'] (splits: {list(dataset.keys())}); DivCLTrainer takes a "
               "DatasetDict of several training sources and checks each one.")
    elif isinstance(dataset, dict):
        fix = "Convert it with datasets.Dataset.from_dict({...}) (one list per column)."
    elif isinstance(dataset, (list, tuple)):
        fix = "Convert it with datasets.Dataset.from_list([...]) (one dict per row)."
    else:
        fix = "Convert it with datasets.Dataset.from_dict({...}) or from_list([...])."
    return f"train_dataset must be a datasets.Dataset, got {kind}. {fix}"


def _check_text(col, column: str) -> None:
    import pyarrow.compute as pc

    if col.null_count:
        row = first_true(pc.is_null(col))
        raise DatasetError(f"Row {row}, column {column!r} is missing (None). Every input must be a non-empty text: "
                           f"fill or drop that row (e.g. dataset.filter(lambda r: r[{column!r}] is not None)).")
    row = first_true(pc.match_substring_regex(col, _INVISIBLE))
    if row is not None:
        value = col[row].as_py()
        if not value.strip():
            raise DatasetError(f"Row {row}, column {column!r} is empty or whitespace only ({value!r}); an empty text "
                               "carries no meaning as an anchor or positive. Fill or drop that row.")
        raise DatasetError(f"Row {row}, column {column!r} holds only invisible characters ({value[:20]!r}: "
                           "control, zero-width or other format characters); the tokenizer drops them, leaving an "
                           "empty text. Fill or drop that row.")
    at = pc.find_substring(col, "\x00")
    row = first_true(pc.greater_equal(at, 0))
    if row is not None:
        value = col[row].as_py()
        raise DatasetError(f"Row {row}, column {column!r} contains a NUL character at position {at[row].as_py()} "
                           f"({value[:40]!r}); NUL usually means binary or UTF-16 data read as text. Fix the source "
                           f"or strip them: dataset.map(lambda r: {{{column!r}: r[{column!r}].replace('\\x00', '')}}).")
    if pc.match_substring_regex(col.slice(0, 1), _IMAGE_PATH)[0].as_py() and \
            pc.all(pc.match_substring_regex(col, _IMAGE_PATH)).as_py():  # row 0 first: the whole column seldom
        raise DatasetError(f"Column {column!r} holds text that looks like image file paths (row 0: "
                           f"{col[0].as_py()!r}); as text the model would read the path, not the image. Load the "
                           f"images: dataset.cast_column({column!r}, datasets.Image()).")
    mangled = true_rows(pc.match_substring(col, "\ufffd"))
    if mangled:
        logger.warning("Column %r: %d row(s) contain U+FFFD replacement characters (rows %s), a sign the text was "
                       "decoded with errors='replace' from another encoding; they are trained on as they are. "
                       "Re-read the source with its real encoding.", column, len(mangled), format_rows(mangled))


def _check_binary(dataset, column: str) -> None:
    import pyarrow as pa

    col = column_values(dataset, column)
    as_text = pa.Array.from_buffers(pa.large_string() if pa.types.is_large_binary(col.type) else pa.string(),
                                    len(col), col.buffers(), null_count=col.null_count, offset=col.offset)
    try:
        as_text.validate(full=True)
    except pa.ArrowInvalid as err:
        row = int(str(err).rsplit(" ", 1)[-1]) if str(err).rsplit(" ", 1)[-1].isdigit() else None
        where = f"row {row} ({col[row].as_py()[:40]!r}) is not valid UTF-8" if row is not None else \
            f"some rows are not valid UTF-8 ({err})"
        decode = f"dataset.map(lambda r: {{{column!r}: r[{column!r}].decode('latin-1')}})"
        raise DatasetError(f"Column {column!r} holds raw bytes (binary), not text, and {where}. Decode them with the "
                           f"right encoding, e.g. {decode}, or, if they are image files, "
                           f"dataset.cast_column({column!r}, datasets.Image()).") from None
    raise DatasetError(f"Column {column!r} holds raw bytes (binary), not text (row 0: {col[0].as_py()[:40]!r}). They "
                       f"are valid UTF-8: cast it with dataset.cast_column({column!r}, datasets.Value('string')), or, "
                       f"if they are image files, dataset.cast_column({column!r}, datasets.Image()).")


def _check_json(dataset, column: str) -> None:
    """A `datasets.Json` column (a JSON file whose column mixes types): name the first row that is not a string."""
    import pyarrow.compute as pc

    col = column_values(dataset, column)
    storage = col.storage if hasattr(col, "storage") else col
    row = first_true(pc.invert(pc.starts_with(storage.cast("string"), '"')))
    if row is None:
        return
    value = dataset[row][column]
    raise DatasetError(f"Row {row}, column {column!r} holds {value!r:.60} ({type(value).__name__}) where the other "
                       "rows hold text: the column mixes types. Every input must be a string: fix or drop that row.")


def _other_kind(dataset, column: str, kind: str) -> DatasetError:
    sample = dataset[0][column]
    head = f"Column {column!r} holds {kind} values (row 0: {sample!r:.80}); inputs must be text (strings) or images " \
           "(datasets.Image)."
    if kind == "list":
        fix = "Keep one text per cell: pick or join the list's items, or explode them into rows."
    elif kind == "dict":
        fix = f"Pick the text field, e.g. dataset.flatten() then select {column!r}.<field>."
    elif kind == "null":
        return DatasetError(f"Column {column!r} is None in every row (Arrow type null): fill it or remove it.")
    elif kind == "class label":
        fix = f"Name it 'label' if it is the label, or decode it to text with dataset.cast_column({column!r}, " \
              "datasets.Value('string'))."
    else:
        fix = (f"Cast it, e.g. dataset.cast_column({column!r}, datasets.Value('string')), rename it to 'label' (or "
               "'score') if it is a label, or remove it.")
    return DatasetError(f"{head} {fix}")


def _check_images(dataset, column: str, image_size: int | None, max_pixels: int) -> None:
    from PIL import Image

    animated: list[int] = []
    for row, cell in enumerate(column_values(dataset, column).to_pylist()):
        raw, path = (cell or {}).get("bytes"), (cell or {}).get("path")
        if raw is None and not path:
            raise DatasetError(f"Row {row}, column {column!r} has no image (None). Drop that row or fix the file.")
        try:
            with Image.open(io.BytesIO(raw) if raw is not None else path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise DatasetError(f"Row {row}, column {column!r}: image of {w}×{h} pixels exceeds the limit of "
                                       f"{max_pixels} pixels; resize it beforehand or raise max_image_pixels.")
                if img.mode in _HIGH_BIT_MODES:
                    raise DatasetError(f"Row {row}, column {column!r}: image in PIL mode {img.mode!r} (16-bit, 32-bit "
                                       "or float pixels); training converts images to 8-bit RGB, which would clip "
                                       "it to white or black. Convert it to 8 bits first, e.g. "
                                       "Image.fromarray((np.asarray(img) >> 8).astype('uint8')) for 16-bit data.")
                if getattr(img, "n_frames", 1) > 1:
                    animated.append(row)
                img.load()
        except DatasetError:
            raise
        except Image.DecompressionBombError as err:
            raise DatasetError(f"Row {row}, column {column!r}: the image exceeds the pixel limit ({err}); resize it "
                               "beforehand.") from err
        except FileNotFoundError as err:
            raise DatasetError(f"Row {row}, column {column!r}: the image file {path!r} does not exist. Fix the path "
                               "or drop that row.") from err
        except Exception as err:  # PIL raises many types for broken files
            where = f" ({path})" if path else ""
            raise DatasetError(f"Row {row}, column {column!r}: the image{where} cannot be read ({err}). Replace or "
                               "drop that row.") from err
        if min(w, h) < 1 or (image_size is not None and min(w, h) < 2):
            raise DatasetError(f"Row {row}, column {column!r}: image of size {w}×{h} is too small to train on.")
    if animated:
        logger.warning("Column %r: %d animated image(s) (rows %s); only the first frame is trained on.", column,
                       len(animated), format_rows(animated))


def _check_label(dataset, column: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    feature = dataset.features[column]
    kind = feature_kind(feature)
    if kind == "text":
        raise DatasetError(f"Column {column!r} is a label column (sentence-transformers passes it to the loss as a "
                           f"number) but holds text (row 0: {dataset[0][column]!r:.60}). Encode it with "
                           f"dataset.class_encode_column({column!r}), or rename it if it is an input.")
    col = column_values(dataset, column)
    if col.null_count:
        row = first_true(pc.is_null(col))
        raise DatasetError(f"Row {row}, column {column!r}: the label is missing (None). Fill or drop that row.")
    if pa.types.is_floating(col.type):
        row = first_true(pc.invert(pc.is_finite(col)))
        if row is not None:
            raise DatasetError(f"Row {row}, column {column!r}: the label is {col[row].as_py()} (not finite); a NaN or "
                               "infinite score poisons the loss. Fix or drop that row.")
    if kind == "class label":
        n = feature.num_classes
        values = col.storage if hasattr(col, "storage") else col
        bad = pc.or_(pc.less(values, -1), pc.greater_equal(values, n))
        row = first_true(bad)
        if row is not None:
            raise DatasetError(f"Row {row}, column {column!r}: label {values[row].as_py()} is outside the "
                               f"{n} class names (ids 0..{n - 1}, or -1 for 'no label'). Fix or drop that row.")
        unlabelled = true_rows(pc.equal(values, -1))
        if unlabelled:
            logger.warning("Column %r: %d row(s) have label -1 ('no label'; rows %s). The contrastive loss does not "
                           "read labels, so they train; k-NN and linear-probe evaluation refuse negative labels.",
                           column, len(unlabelled), format_rows(unlabelled))


def _check_bookkeeping(dataset, column: str) -> None:
    """A column named like one the trainer adds (row ids): its values are replaced; say so unless they match."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column_values(dataset, column)
    same = pa.types.is_integer(col.type) and col.null_count == 0 and \
        bool(pc.all(pc.equal(col.cast("int64"), np.arange(len(col), dtype=np.int64))).as_py())
    if not same:
        logger.warning("Column %r is the trainer's row-id column; its values are replaced by the row index "
                       "0..%d. Rename it if you need it.", column, len(dataset) - 1)


def _check_duplicates(dataset, text_cols: list[str], dedupe_batch_size: int | None) -> None:
    """Exact duplicate rows: warn with counts. With in-batch dedupe, refuse a text repeated in more rows than
    there are batches (the sampler could not keep its copies apart)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not text_cols:
        return
    n = len(dataset)
    table = pa.table({**{c: column_values(dataset, c) for c in text_cols}, "__row": np.arange(n)})
    groups = table.group_by(text_cols).aggregate([("__row", "min"), ("__row", "max"), ("__row", "count")])
    repeats = n - groups.num_rows
    if repeats:
        dup = groups.filter(pc.greater(groups["__row_count"], 1))
        first = int(pc.index(dup["__row_min"], pc.min(dup["__row_min"])).as_py())
        lo, hi, k = (dup[c][first].as_py() for c in ("__row_min", "__row_max", "__row_count"))
        logger.warning("%d of %d rows repeat an earlier row exactly in column(s) %s (%d distinct row(s) repeated; e.g. "
                       "rows %d and %d%s). With dedupe=True copies never share a batch, but every copy is trained "
                       "on, so repeated pairs weigh more. Drop them to train on each pair once.", repeats, n,
                       text_cols, dup.num_rows, lo, hi, f", {k} copies" if k > 2 else "")
    if not dedupe_batch_size:
        return
    batches = math.ceil(n / dedupe_batch_size)
    for column in text_cols[:2]:  # the sampler keeps equal anchors apart, and equal positives
        counts = pc.value_counts(table[column].combine_chunks())
        top = int(pc.index(counts.field("counts"), pc.max(counts.field("counts"))).as_py())
        copies, text = counts.field("counts")[top].as_py(), counts.field("values")[top].as_py()
        if copies > batches:
            rows = true_rows(pc.equal(table[column], text))
            raise DatasetError(f"Column {column!r}: the text {text!r:.60} appears in {copies} rows "
                               f"({format_rows(rows)}) but "
                               f"an epoch has only {batches} batches of {dedupe_batch_size}; with dedupe=True rows "
                               "sharing a text never meet in a batch, so no plan exists. Deduplicate the data, use a "
                               "smaller batch, or set dedupe=False.")


def validate_training_dataset(dataset, *, label_columns: list[str] | tuple[str, ...] = LABEL_COLUMNS,
                              ignore: tuple[str, ...] = (), min_rows: int = 2, expect_columns: int | None = None,
                              image_size: int | None = None, max_image_pixels: int = 4096 * 4096, model=None,
                              dedupe_batch_size: int | None = None) -> list[str]:
    """Raise :class:`DatasetError` for the first unusable row; return the input columns.

    Checks: a `datasets.Dataset`; at least `min_rows` rows (e.g. one global batch); no reserved column names;
    every input column text (non-empty, visible strings without NUL) or image (decodable, 8-bit, not huge);
    label columns numeric, present and in range; optional exact column count. With ``dedupe_batch_size``: no text
    repeated in more rows than an epoch has batches. Warnings (logged, not raised): exact duplicate rows, texts
    longer than ``model.max_seq_length`` (when ``model`` is given), replacement characters, animated images,
    ClassLabel -1, and a caller's column named like an ``ignore`` (bookkeeping) column.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise DatasetError(_not_a_dataset(dataset))
    if len(dataset) == 0:
        raise DatasetError(f"The training data set is empty (0 rows; columns: {dataset.column_names}). Check the file "
                           "or the filter that produced it.")
    if len(dataset) < min_rows:
        raise DatasetError(f"The training data set has {len(dataset)} row{'s' if len(dataset) > 1 else ''} but one "
                           f"global batch needs {min_rows}; use more data, a smaller per_device_train_batch_size, or "
                           "fewer processes.")
    if bad := sorted(set(dataset.column_names) & set(RESERVED)):
        raise DatasetError(f"Column name(s) {bad} are reserved by sentence-transformers; rename them, e.g. "
                           f"dataset.rename_column({bad[0]!r}, 'source').")
    cols = model_columns(dataset, label_columns, ignore)
    if not cols:
        raise DatasetError(f"The data set has no input columns (columns: {dataset.column_names}); label columns "
                           f"({list(label_columns)}) are not inputs. Add the text or image columns to train on.")
    if expect_columns is not None and len(cols) != expect_columns:
        raise DatasetError(f"Expected {expect_columns} input column(s), found {len(cols)}: {cols}.")
    text_cols = []
    for column in cols:
        kind = feature_kind(dataset.features[column])
        if kind == "text":
            _check_text(column_values(dataset, column), column)
            text_cols.append(column)
        elif kind == "image":
            _check_images(dataset, column, image_size, max_image_pixels)
        elif kind == "binary":
            _check_binary(dataset, column)
        elif kind == "json":
            _check_json(dataset, column)
            raise _other_kind(dataset, column, "JSON")
        else:
            raise _other_kind(dataset, column, kind)
    for column in dataset.column_names:
        if column in label_columns:
            _check_label(dataset, column)
        elif column in ignore:
            _check_bookkeeping(dataset, column)
    _check_duplicates(dataset, text_cols, dedupe_batch_size)
    if model is not None:
        truncation_report(dataset, text_cols, model)
    return cols
