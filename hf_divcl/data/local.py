"""Text pairs from local files (CSV, TSV, JSON lines, Parquet), validated row by row."""

from __future__ import annotations

from pathlib import Path

__all__ = ["load_pair_file", "validate_pairs"]

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
