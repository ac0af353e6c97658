"""What a planner reads from a training ``datasets.Dataset`` besides the bank: its text and image columns, the
duplicate group of every row, and the default bank encoded from its first two text columns.

Used by :class:`hf_divcl.sampler.DiversityWindowBatchSampler` (``dedupe``, ``default_model``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch

from .._common import banks_cache_dir, is_image_feature
from .dedupe import content_ids, duplicate_groups

logger = logging.getLogger("hf_divcl.sampler")  # the sampler's logger, as before the split

__all__ = ["default_bank", "image_columns", "row_content_ids", "row_duplicate_groups", "text_columns"]


def text_columns(dataset, label_columns: list[str] | None = None) -> list[str]:
    """The string columns of ``dataset`` in order, label columns left out."""
    feats = getattr(dataset, "features", None) or {}
    labels = set(label_columns or [])
    return [c for c in dataset.column_names if c not in labels
            and getattr(feats.get(c), "dtype", None) in ("string", "large_string")]


def image_columns(dataset) -> list[str]:
    """The ``Image`` columns of ``dataset`` in order."""
    feats = getattr(dataset, "features", None) or {}
    return [c for c in dataset.column_names if is_image_feature(feats.get(c))]


def row_duplicate_groups(dataset, label_columns: list[str] | None = None) -> torch.Tensor | None:
    """Duplicate group per row ``(N,)``: rows with the same text in the same column (the first two text columns:
    anchor, positive) or the same image bytes share a group; ``None`` without such columns. Hard-negative columns
    (third text column and later) are not compared: a row's hard negative may well be another row's positive."""
    cols = [[(k, t) for t in dataset[c]] for k, c in enumerate(text_columns(dataset, label_columns)[:2])]
    for c in image_columns(dataset):  # compare the encoded bytes (or paths), never decode
        from datasets import Image

        # through the dataset (not its Arrow table), so a select / shuffle / filter maps rows as the sampler sees them
        cells = dataset.cast_column(c, Image(decode=False))[c]
        cols.append([hashlib.sha256(x["bytes"]).digest() if x and x.get("bytes") is not None
                     else (x or {}).get("path") or f"row{i}" for i, x in enumerate(cells)])
    return duplicate_groups(*cols) if cols else None


def row_content_ids(dataset, columns: list[str]) -> torch.Tensor:
    """``(N, k)`` content id of each row's ``columns`` (anchor, positive, hard negatives) in one id space: equal texts
    (or equal image bytes) share an id across rows and columns (:func:`~hf_divcl.planning.dedupe.content_ids`)."""
    from datasets import Image

    cells = []
    for c in columns:
        if is_image_feature(dataset.features[c]):
            raw = dataset.cast_column(c, Image(decode=False))[c]
            cells.append([hashlib.sha256(x["bytes"]).digest() if x and x.get("bytes") is not None
                          else f"path:{x['path']}".encode() if x and x.get("path") else f"{c}:row{i}".encode()
                          for i, x in enumerate(raw)])  # bytes: never equal to a text
        else:
            cells.append(dataset[c])
    return content_ids(*cells)


def default_bank(dataset, label_columns: list[str] | None, default_model: bool | str) -> Any:
    """The bank of ``dataset`` encoded with ``default_model`` (``True``: the packaged model) from its first two text
    columns, cached on disk; a ``ValueError`` that says what to pass when there is no model or no text column."""
    from ..bank import EmbeddingBank
    from ..models.loading import DEFAULT_TEXT_MODEL, load_sentence_transformer

    cols = text_columns(dataset, label_columns)
    how = ("build one from the model you train, e.g. EmbeddingBank.from_reference(model, [ds['anchor'], "
           "ds['positive']]), and pass DiversityWindowBatchSampler.configure(bank=...)")
    if not default_model:
        raise ValueError("DiversityWindowBatchSampler needs a bank (one embedding per row) to plan batches: "
                         f"{how}; or configure(default_model=True) to encode the data with the packaged "
                         f"{DEFAULT_TEXT_MODEL} (or default_model='path/to/model'). DivCLTrainer builds the bank "
                         "from the model being trained by itself.")
    if not cols:
        raise ValueError(f"default_model needs text columns; this dataset has none ({dataset.column_names}): "
                         f"{how}.")
    name = DEFAULT_TEXT_MODEL if default_model is True else str(default_model)
    cache = banks_cache_dir()
    logger.warning("No bank given (default_model=%r): encoding columns %s of %d rows with %s to plan batches "
                   "(cached in %s). The batches follow that model's geometry, not the model you train.",
                   default_model, cols[:2], len(dataset), name, cache)
    model = load_sentence_transformer(name, device="cpu")
    return EmbeddingBank.from_reference(model, [list(dataset[c]) for c in cols[:2]], cache_dir=cache)
