"""Local data: text pairs from CSV, TSV, JSON lines or Parquet files (validated row by row), and any local file or
image folder as a `datasets.Dataset` with columns mapped by name."""

from __future__ import annotations

from pathlib import Path

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


def load_pair_file(path: str | Path, anchor_column: str = "anchor",
                   positive_column: str = "positive") -> tuple[list[str], list[str]]:
    """Read ``(anchors, positives)`` from a local data file via `datasets` (Arrow-cached)."""
    import datasets

    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"Unsupported data file {str(path)!r}: use one of {sorted(_FORMATS)}.")
    if not path.is_file():
        raise FileNotFoundError(f"Data file {str(path)!r} does not exist.")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
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

    A missing file or column raises an error naming it and listing the columns the file has.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist.")
    if path.is_dir():
        ds = datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    else:
        fmt = _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"Unsupported data file {str(path)!r}: use one of {sorted(_FORMATS)} or an image folder.")
        kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        ds = datasets.load_dataset(fmt, data_files=str(path), split=split, **kwargs)
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
