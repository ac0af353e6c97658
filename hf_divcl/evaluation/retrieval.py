"""Text retrieval on held-out pairs: each anchor retrieves its own positive among the unique positives (nDCG@10,
MRR@10, accuracy@1/5/10 from sentence-transformers' ``InformationRetrievalEvaluator``).

One of the held-out evaluations :mod:`hf_divcl.evaluation.tasks` runs; it logs to
``hf_divcl.evaluation.tasks`` like the rest of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger("hf_divcl.evaluation.tasks")  # the evaluation logger, as before the split

__all__ = ["RETRIEVAL_METRICS", "retrieval_metrics"]

RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "accuracy@1", "accuracy@5", "accuracy@10")
"""Keys of :func:`retrieval_metrics`, each prefixed with ``f"{name}_"``."""


def _check_texts(anchors: Sequence[str], positives: Sequence[str]) -> None:
    if len(anchors) != len(positives):
        raise ValueError(f"anchors and positives must pair up row by row; got {len(anchors)} anchors and "
                         f"{len(positives)} positives.")
    if not anchors:
        raise ValueError("No pairs to evaluate: anchors and positives are empty.")
    for column, texts in (("anchors", anchors), ("positives", positives)):
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{column}[{row}] = {text!r} is not a non-empty string; drop or fix that pair.")


def retrieval_metrics(
    model: SentenceTransformer,
    anchors: Sequence[str],
    positives: Sequence[str],
    name: str = "wordnet",
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> dict[str, float]:
    """Retrieve each anchor's positive among all unique positives; nDCG@10, MRR@10 and accuracy@1/5/10.

    Queries are the ``N`` anchors, the corpus is the unique positive texts (pairs that share a positive, e.g. two
    examples of one synset, share one document) and each query has exactly one relevant document. Ranking is by
    cosine similarity whatever the model's ``similarity_fn_name``; ties go to the positive that appears first.
    With one relevant document, ``accuracy@1 <= mrr@10 <= ndcg@10 <= accuracy@10``.

    Runs ``sentence_transformers``' ``InformationRetrievalEvaluator`` (no CSV written); like every
    sentence-transformers evaluator it also records the metrics in ``model.model_card_data``.

    Args:
        model: the encoder; ``model.encode_query`` embeds anchors, ``model.encode_document`` positives.
        anchors, positives (`Sequence[str]`): the pairs, row by row (e.g. ``ds["anchor"]``, ``ds["positive"]``).
        name (`str`, defaults to `"wordnet"`): prefix of the keys.
        batch_size (`int`, defaults to 64): encoding batch size.

    Returns:
        `dict[str, float]`: ``f"{name}_{metric}"`` for each metric in [`RETRIEVAL_METRICS`] (bare metric names
        when ``name`` is empty), each in ``[0, 1]``.
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    anchors, positives = list(anchors), list(positives)
    _check_texts(anchors, positives)
    width = len(str(len(positives)))
    doc_ids: dict[str, str] = {}
    for text in positives:  # zero-padded ids: their string order is the order of first appearance
        doc_ids.setdefault(text, f"d{len(doc_ids):0{width}d}")
    queries = {f"q{i:0{width}d}": text for i, text in enumerate(anchors)}
    relevant = {qid: {doc_ids[positives[i]]} for i, qid in enumerate(queries)}
    evaluator = InformationRetrievalEvaluator(
        queries=queries,
        corpus={doc_id: text for text, doc_id in doc_ids.items()},
        relevant_docs=relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 5, 10],
        precision_recall_at_k=[10],
        map_at_k=[10],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        name=name,
        write_csv=False,
        score_functions={"cosine": cos_sim},
        main_score_function="cosine",
    )
    raw = evaluator(model)
    prefix = f"{name}_" if name else ""
    out = {}
    for metric in RETRIEVAL_METRICS:
        key = f"{prefix}cosine_{metric}"
        if key not in raw:
            raise KeyError(f"InformationRetrievalEvaluator returned no {key!r} (keys: {sorted(raw)}); its output "
                           "format changed, update hf_divcl.evaluation.tasks.retrieval_metrics.")
        out[f"{prefix}{metric}"] = float(raw[key])
    logger.info("retrieval %s: %d queries, %d documents: %s", name, len(queries), len(doc_ids), out)
    return out
