"""Local data: text pairs from CSV, TSV, JSON lines or Parquet files (validated row by row), and any local file or
image folder as a `datasets.Dataset` with columns mapped by name."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .validation import DatasetError

logger = logging.getLogger(__name__)

__all__ = ["load_local_dataset", "load_pair_file", "validate_pairs"]

_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def validate_pairs(anchors: list, positives: list, source: str, anchor_column: str = "anchor",
                   positive_column: str = "positive") -> None:
    """Raise a ``ValueError`` naming the first row/column whose text is missing, empty or not a string."""
    for column, values in ((anchor_column, anchors), (positive_column, positives)):
        for i, text in enumerate(values):
            if not isinstance(text, str):
                raise ValueError(f"{source}: row {i}, column {column!r} holds {text!r} ({type(text).__name__}); "
                                 "every anchor and positive must be a string. Fill or drop that row.")
            if not text.strip():
                raise ValueError(f"{source}: row {i}, column {column!r} is empty ({text!r}); an empty text has no "
                                 "meaning as an anchor or positive. Fill or drop that row.")


def _file_format(path: Path, folders: bool = False) -> str | None:
    """The `datasets` builder for ``path`` (None: an image folder); missing paths and odd files raise."""
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist.")
    if path.is_dir():
        if folders:
            return None
        raise IsADirectoryError(f"{str(path)!r} is a folder; pass one data file ({', '.join(sorted(_FORMATS))}).")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        also = " or an image folder" if folders else ""
        raise ValueError(f"Unsupported data file {str(path)!r}: use one of {sorted(_FORMATS)}{also}.")
    return fmt


def _utf8_problem(path: Path) -> str | None:
    """Where the file stops being UTF-8: line, byte offset and the offending byte."""
    offset = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return (f"line {lineno} is not valid UTF-8: byte 0x{raw[err.start]:02x} at byte offset "
                        f"{offset + err.start} (column {err.start + 1}) in {raw[:60]!r}. Save the file as UTF-8, "
                        f"e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8{path.suffix}` (or its real encoding).")
            offset += len(raw)
    return None


def _json_problem(path: Path) -> str | None:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # one JSON document (an array of records)
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            return f"line {err.lineno} is not valid JSON ({err.msg} at column {err.colno}). Fix that line."
        return None
    records = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            return (f"line {lineno} is not valid JSON ({err.msg} at column {err.colno}): {line[:80]!r}. Fix or "
                    "delete that line (JSON lines: one object per line).")
        if not isinstance(value, dict):
            return (f"line {lineno} holds a JSON {type(value).__name__} ({line[:60]!r}), not an object; JSON lines "
                    "files hold one {\"column\": value, ...} object per line.")
        records += 1
    return None if records else "the file holds no records; add one JSON object per line."


def _csv_problem(path: Path, delimiter: str) -> str | None:
    import csv

    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            return "has no header line; the first line must name the columns."
        rows = 0
        for row in reader:
            if not row:
                continue
            rows += 1
            if len(row) > len(header):
                return (f"line {reader.line_num} has {len(row)} fields but the header has {len(header)} "
                        f"({header}): {delimiter.join(row)[:80]!r}. Quote fields that contain "
                        f"{'tabs' if delimiter == chr(9) else 'commas'}, or fix that line.")
    return None if rows else f"the file has a header ({header}) but no data rows."


def _read(path: Path, fmt: str, split: str = "train"):
    """``datasets.load_dataset`` on one local file; a file it cannot read raises :class:`DatasetError` naming the
    line (and byte) at fault, found by re-reading the file only after the failure."""
    import datasets

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    kwargs = {"delimiter": delimiter} if delimiter == "\t" else {}
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split=split, **kwargs)
    except Exception as err:
        if path.stat().st_size == 0:
            raise DatasetError(f"{str(path)!r} is empty (0 bytes).") from err
        problem = None
        if fmt in ("csv", "json"):
            problem = _utf8_problem(path)
            if problem is None:
                problem = _json_problem(path) if fmt == "json" else _csv_problem(path, delimiter)
        elif fmt == "parquet":
            problem = (f"is not a readable Parquet file ({err}). Write it with pandas.DataFrame.to_parquet or "
                       "datasets.Dataset.to_parquet, or give it the extension of its real format.")
        if problem is None:
            cause = f" ({type(err.__cause__).__name__}: {err.__cause__})" if err.__cause__ is not None else ""
            problem = f"cannot be read as {fmt.upper()}: {type(err).__name__}: {err}{cause}"
        raise DatasetError(f"{str(path)!r}: {problem}") from err
    _check_utf8_columns(ds, path)
    return ds


def _check_utf8_columns(ds, path: Path) -> None:
    """Arrow's JSON and Parquet readers keep invalid UTF-8 in string columns (it fails later, on access)."""
    import pyarrow as pa

    for name, col in zip(ds.column_names, ds.data.columns, strict=True):
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        start = 0
        for chunk in col.chunks:
            try:
                chunk.validate(full=True)
            except pa.ArrowInvalid as err:
                last = str(err).rsplit(" ", 1)[-1]
                row = f"row {start + int(last)}, " if last.isdigit() else ""
                where = _utf8_problem(path) if path.suffix.lower() != ".parquet" else None
                raise DatasetError(f"{str(path)!r}: {row}column {name!r} is not valid UTF-8"
                                   f"{'; ' + where if where else '. Re-write the column as UTF-8 text.'}") from None
            start += len(chunk)


def load_pair_file(path: str | Path, anchor_column: str = "anchor",
                   positive_column: str = "positive") -> tuple[list[str], list[str]]:
    """Read ``(anchors, positives)`` from a local data file via `datasets` (Arrow-cached).

    Raises `FileNotFoundError` / `IsADirectoryError` / `ValueError` (extension) for the path, and
    :class:`~hf_divcl.data.validation.DatasetError` (a `ValueError`) naming the line of a file that is not UTF-8, a
    broken JSON line, a CSV line with too many fields; `ValueError` naming row and column of a bad value.
    """
    path = Path(path)
    ds = _read(path, _file_format(path))
    missing = [c for c in (anchor_column, positive_column) if c not in ds.column_names]
    if missing:
        raise ValueError(f"{str(path)!r} has no column(s) {missing}; its columns are {ds.column_names}. "
                         "Choose them with --anchor-column / --positive-column.")
    anchors, positives = list(ds[anchor_column]), list(ds[positive_column])
    validate_pairs(anchors, positives, str(path), anchor_column, positive_column)
    return anchors, positives


def load_local_dataset(path: str | Path, columns: dict[str, str] | None = None, split: str = "train"):
    """A local data set as a `datasets.Dataset` (Arrow-cached by `datasets`), columns renamed by name.

    Args:
        path: a ``.csv`` / ``.tsv`` / ``.json`` / ``.jsonl`` / ``.parquet`` file, or a folder of images in
            ``imagefolder`` layout (one sub-folder per class → ``image`` and ``label`` columns).
        columns: mapping ``{"anchor": "question", "positive": "answer"}`` from the names hf_divcl uses to the
            file's own column names; only mapped columns (and ``label`` when present) are kept. Without a mapping
            every column is kept as it is.
        split: the split `datasets` builds (local files give ``train``).

    A missing file or column raises an error naming it and listing the columns the file has; a file that cannot
    be parsed raises :class:`~hf_divcl.data.validation.DatasetError` naming the line (see :func:`load_pair_file`).
    Values are not checked here: :func:`~hf_divcl.data.validation.validate_training_dataset` (run by the trainer)
    names bad rows.
    """
    import datasets

    path = Path(path)
    fmt = _file_format(path, folders=True)
    if columns:
        sources = list(columns.values())
        if any(not isinstance(c, str) for c in sources):
            raise ValueError(f"columns={columns!r}: map each hf_divcl name to the file's column name (a string).")
        twice = sorted({c for c in sources if sources.count(c) > 1})
        if twice:
            raise ValueError(f"columns={columns!r} maps several names to {twice}; each hf_divcl column needs its own "
                             "source column (an anchor equal to its positive teaches nothing).")
    if fmt is None:
        try:
            ds = datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
        except (ValueError, FileNotFoundError) as err:  # datasets: EmptyDatasetError, "corresponds to no data"
            raise DatasetError(f"{str(path)!r} holds no image files: an image folder needs one sub-folder per class "
                               f"holding .png / .jpg files ({type(err).__name__}: {err}).") from err
    else:
        ds = _read(path, fmt, split)
    if not columns:
        return ds
    missing = [src for src in columns.values() if src not in ds.column_names]
    if missing:
        raise ValueError(f"{str(path)!r} has no column(s) {missing}; its columns are {ds.column_names}. Fix the "
                         "column mapping (hf_divcl name → your column name).")
    keep = list(columns.values()) + (["label"] if "label" in ds.column_names and "label" not in columns else [])
    ds = ds.select_columns(keep)
    renames = {src: dst for dst, src in columns.items() if src != dst}
    return ds.rename_columns(renames) if renames else ds
