"""How the data-set checks read a `datasets.Dataset`: a column as one Arrow array in the row order the caller
sees, the kind of a column's feature (text, image, label, ...), the rows where an Arrow mask holds, and a short
printable list of rows.

Shared by :mod:`hf_divcl.data.validation` (what is refused) and :mod:`hf_divcl.data.truncation` (what is only reported),
so both name the same rows.
"""

from __future__ import annotations

from typing import Any

_SHOW_ROWS = 10


def format_rows(rows: list[int]) -> str:
    """``[3, 8, 12]`` → ``"3, 8, 12"``; long lists end with ``", ... (N in all)"``."""
    shown = ", ".join(str(r) for r in rows[:_SHOW_ROWS])
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > _SHOW_ROWS else "")


def feature_kind(feature: Any) -> str:
    name = type(feature).__name__
    if name == "Image":
        return "image"
    if name == "ClassLabel":
        return "class label"
    if name == "Json":
        return "json"
    if name in ("List", "Sequence", "LargeList", "list"):
        return "list"
    if name == "dict":
        return "dict"
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return "text"
    if dtype in ("binary", "large_binary"):
        return "binary"
    if dtype == "null":
        return "null"
    return f"other ({dtype or name})"


def column_values(dataset, name: str):
    """The column as one Arrow array in the row order the caller sees (the indices mapping applied)."""
    import pyarrow as pa

    col = dataset.data.column(name)
    # datasets has no public accessor for the indices mapping (select / shuffle / filter): its public routes to the
    # mapped column (``with_format("arrow")[name]``, ``flatten_indices()``) go through Python lists or rewrite every
    # column, tens of times slower than one Arrow ``take``
    indices = getattr(dataset, "_indices", None)
    if indices is not None:
        col = col.take(indices.column(0))
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def first_true(mask) -> int | None:
    import pyarrow.compute as pc

    idx = pc.index(mask.fill_null(False) if mask.null_count else mask, True).as_py()
    return None if idx < 0 else idx


def true_rows(mask) -> list[int]:
    import numpy as np

    return np.flatnonzero(mask.fill_null(False).to_numpy(zero_copy_only=False)).tolist()
