"""Check a training data set before any training starts: every problem is reported with its row and column.

Text columns are checked with Arrow compute kernels (no Python loop over the rows); image columns are decoded
once, so a corrupt file fails here and not in the middle of an epoch.
"""

from __future__ import annotations

import io
import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["DatasetError", "input_columns", "validate_training_dataset"]

RESERVED = ("return_loss", "dataset_name")


class DatasetError(ValueError):
    """A training data set that cannot be trained on as it is; the message names the row, column and fix."""


def _feature_kind(feature: Any) -> str:
    name = type(feature).__name__
    if name == "Image":
        return "image"
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return "text"
    return f"other ({dtype or name})"


def input_columns(dataset, label_columns: list[str] | tuple[str, ...], ignore: tuple[str, ...] = ()) -> list[str]:
    """Columns the model will see, in order (labels and bookkeeping columns excluded)."""
    return [c for c in dataset.column_names if c not in label_columns and c not in ignore]


def _first(mask) -> int | None:
    import pyarrow.compute as pc

    idx = pc.index(mask.fill_null(True) if mask.null_count else mask, True).as_py()
    return None if idx < 0 else idx


def _check_text(table_column, column: str) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table_column.combine_chunks() if isinstance(table_column, pa.ChunkedArray) else table_column
    if col.null_count:
        row = _first(pc.is_null(col))
        raise DatasetError(f"Row {row}, column {column!r} is missing (None). Every input must be a non-empty text: "
                           "fill or drop that row (e.g. dataset.filter(lambda r: r[col] is not None)).")
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
    row = _first(empty)
    if row is not None:
        raise DatasetError(f"Row {row}, column {column!r} is empty or whitespace only ({col[row].as_py()!r}); an "
                           "empty text carries no meaning as an anchor or positive. Fill or drop that row.")


def _check_images(dataset, column: str, image_size: int | None, max_pixels: int) -> None:
    from PIL import Image

    data = dataset.data.column(column)
    for row, cell in enumerate(data.to_pylist()):
        if cell is None:
            raise DatasetError(f"Row {row}, column {column!r} has no image (None). Drop that row or fix the file.")
        raw, path = cell.get("bytes"), cell.get("path")
        try:
            with Image.open(io.BytesIO(raw) if raw is not None else path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise DatasetError(f"Row {row}, column {column!r}: image of {w}×{h} pixels exceeds the limit of "
                                       f"{max_pixels} pixels; resize it beforehand or raise max_image_pixels.")
                img.load()
        except DatasetError:
            raise
        except Exception as err:  # PIL raises many types for broken files
            where = f" ({path})" if path else ""
            raise DatasetError(f"Row {row}, column {column!r}: the image{where} cannot be read ({err}). Replace or "
                               "drop that row.") from err
        if min(w, h) < 1 or (image_size is not None and min(w, h) < 2):
            raise DatasetError(f"Row {row}, column {column!r}: image of size {w}×{h} is too small to train on.")


def validate_training_dataset(dataset, *, label_columns: list[str] | tuple[str, ...] = ("label", "labels", "score",
                                                                                        "scores"),
                              ignore: tuple[str, ...] = (), min_rows: int = 2, expect_columns: int | None = None,
                              image_size: int | None = None, max_image_pixels: int = 4096 * 4096) -> list[str]:
    """Raise :class:`DatasetError` for the first unusable row; return the input columns.

    Checks: a `datasets.Dataset`; at least `min_rows` rows (e.g. one global batch); no reserved column names;
    every input column text (non-empty strings) or image (decodable, not huge); optional exact column count.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise DatasetError(f"train_dataset must be a datasets.Dataset, got {type(dataset).__name__}. Convert it with "
                           "datasets.Dataset.from_dict({...}) or from_list([...]).")
    if len(dataset) < min_rows:
        raise DatasetError(f"The training data set has {len(dataset)} rows but one global batch needs {min_rows}; "
                           "use more data, a smaller per_device_train_batch_size, or fewer processes.")
    if bad := sorted(set(dataset.column_names) & set(RESERVED)):
        raise DatasetError(f"Column name(s) {bad} are reserved by sentence-transformers; rename them.")
    cols = input_columns(dataset, label_columns, ignore)
    if not cols:
        raise DatasetError(f"The data set has no input columns (columns: {dataset.column_names}).")
    if expect_columns is not None and len(cols) != expect_columns:
        raise DatasetError(f"Expected {expect_columns} input column(s), found {len(cols)}: {cols}.")
    for column in cols:
        kind = _feature_kind(dataset.features[column])
        if kind == "text":
            _check_text(dataset.data.column(column), column)
        elif kind == "image":
            _check_images(dataset, column, image_size, max_image_pixels)
        else:
            sample = dataset[0][column]
            raise DatasetError(f"Column {column!r} holds {kind} values (row 0: {sample!r:.80}); inputs must be text "
                               "(strings) or images (datasets.Image). Cast it, e.g. "
                               f"dataset.cast_column({column!r}, datasets.Value('string')), rename it to 'label' if "
                               "it is a label, or remove it.")
    return cols
