"""Held-out evaluation of trained encoders: text retrieval, word similarity, and k-NN / linear-probe accuracy.

- :func:`retrieval_metrics`: anchors are queries, the unique positives are the corpus and each query's one
  relevant document is its own positive; sentence-transformers' ``InformationRetrievalEvaluator`` ranks the corpus
  by cosine similarity and gives nDCG@10, MRR@10 and accuracy@1/5/10 (use a split from
  :func:`hf_divcl.data.wordnet_split`, whose test glosses are never seen in training).
- :func:`word_similarity`: Spearman correlation between the cosine of two single-word embeddings and human ratings
  on WordSim-353 and SimLex-999, read from the test data shipped in the ``gensim`` wheel (``gensim`` is never
  imported, only its files are read: ``pip install gensim==4.4.0``).
- :func:`knn_accuracy` and :func:`linear_probe_accuracy`: frozen-embedding classification for image encoders
  (cosine k-NN with a vectorised vote; scikit-learn logistic regression on standardised unit embeddings).
- :func:`evaluate_text` and :func:`evaluate_vision` run these together and time them.

Every function takes a ``SentenceTransformer``; the ``*_from_embeddings`` variants take precomputed embeddings.

This module holds :func:`evaluate_text` and :func:`evaluate_vision`; the
retrieval lives in :mod:`hf_divcl.evaluation.retrieval`, word similarity in
:mod:`hf_divcl.evaluation.word_similarity`, k-NN
and the linear probe in :mod:`hf_divcl.evaluation.probes`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .probes import (
    encode_images,
    knn_accuracy_from_embeddings,
    linear_probe_accuracy_from_embeddings,
)
from .retrieval import retrieval_metrics
from .word_similarity import (
    word_similarity,
)

if TYPE_CHECKING:
    import datasets
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

__all__ = ["evaluate_text", "evaluate_vision"]


def _column(data: datasets.Dataset | Mapping[str, Any], column: str, what: str) -> list:
    names = list(getattr(data, "column_names", None) or data.keys())
    if column not in names:
        raise KeyError(f"{what} has no column {column!r} (columns: {names}); pass the column name.")
    return list(data[column])


def evaluate_text(
    model: SentenceTransformer,
    test_pairs: datasets.Dataset | Mapping[str, Sequence[str]],
    name: str = "wordnet",
    batch_size: int = 64,
    word_sim: bool = True,
    anchor_column: str = "anchor",
    positive_column: str = "positive",
    show_progress_bar: bool = False,
) -> dict[str, float | int]:
    """Retrieval metrics on held-out pairs plus (``word_sim=True``) word similarity, with timings (progress bars
    over the encoding with ``show_progress_bar``).

    Args:
        test_pairs: a `datasets.Dataset` or mapping with ``anchor`` and ``positive`` columns, e.g.
            ``wordnet_split("example", "test", source="embedded")``.

    Returns:
        `dict[str, float | int]`: [`retrieval_metrics`] keys, ``f"{name}_seconds"``, and with ``word_sim`` the
        [`word_similarity`] keys and ``word_similarity_seconds``.
    """
    anchors = _column(test_pairs, anchor_column, "test_pairs")
    positives = _column(test_pairs, positive_column, "test_pairs")
    start = time.perf_counter()
    out: dict[str, float | int] = dict(retrieval_metrics(model, anchors, positives, name=name, batch_size=batch_size,
                                                         show_progress_bar=show_progress_bar))
    out[f"{name}_seconds" if name else "seconds"] = time.perf_counter() - start
    if word_sim:
        start = time.perf_counter()
        out.update(word_similarity(model, show_progress_bar=show_progress_bar))
        out["word_similarity_seconds"] = time.perf_counter() - start
    return out


def evaluate_vision(
    model: SentenceTransformer,
    train_ds: datasets.Dataset,
    test_ds: datasets.Dataset,
    train_limit: int | None = None,
    test_limit: int | None = None,
    k: int = 20,
    vote: str = "majority",
    batch_size: int = 64,
    image_column: str = "image",
    label_column: str = "label",
    seed: int = 0,
    show_progress_bar: bool = False,
) -> dict[str, float | int]:
    """k-NN and linear-probe accuracy of a frozen image encoder; each image set is embedded once (with progress bars
    when ``show_progress_bar``).

    Args:
        train_ds, test_ds: image data sets such as ``digits("train")`` / ``fashion_mnist("test", limit=...)``.
        train_limit, test_limit: use only the first rows of each (None: all).

    Returns:
        `dict[str, float | int]`: ``knn_accuracy`` (``k`` nearest, ``vote``), ``linear_probe_accuracy``, ``knn_k``,
        ``train_size``, ``test_size``, ``encode_seconds`` and ``seconds`` (total).
    """
    start = time.perf_counter()
    parts = {}
    for what, ds, limit in (("train_ds", train_ds, train_limit), ("test_ds", test_ds, test_limit)):
        if limit is not None:
            if limit < 1:
                raise ValueError(f"{what} limit={limit}: pass None (all rows) or an int >= 1.")
            ds = ds.select(range(min(limit, len(ds))))
        parts[what] = (_column(ds, image_column, what), _column(ds, label_column, what))
    (train_images, y_train), (test_images, y_test) = parts["train_ds"], parts["test_ds"]
    train = encode_images(model, train_images, batch_size, show_progress_bar=show_progress_bar)
    test = encode_images(model, test_images, batch_size, show_progress_bar=show_progress_bar)
    encoded = time.perf_counter()
    return {
        "knn_accuracy": knn_accuracy_from_embeddings(train, y_train, test, y_test, k=k, vote=vote),
        "linear_probe_accuracy": linear_probe_accuracy_from_embeddings(train, y_train, test, y_test, seed=seed),
        "knn_k": k,
        "train_size": len(y_train),
        "test_size": len(y_test),
        "encode_seconds": encoded - start,
        "seconds": time.perf_counter() - start,
    }
