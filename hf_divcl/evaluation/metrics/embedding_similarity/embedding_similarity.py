"""Cosine similarity of paired embeddings, optionally rank-correlated with human scores, as an `evaluate` metric.

``predictions[i]`` and ``references[i]`` are the two embeddings of pair ``i`` (e.g. two words, or an anchor and
its positive). Keep one import per line: `evaluate` parses them.
"""

import warnings

import datasets
import evaluate
import torch
from scipy import stats

_DESCRIPTION = """
Mean cosine similarity between paired embeddings and, when human similarity scores are given, the Spearman rank
correlation (average ranks for ties) and Pearson correlation between the per-pair cosines and the scores, as in
word-similarity benchmarks (WordSim-353, SimLex-999) and STS.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): first embedding of each pair, (N, d).
    references (`list` of `list` of `float`): second embedding of each pair, (N, d).
    scores (`list` of `float`, *optional*): human similarity score of each pair, N values.

Returns:
    mean_cosine (`float`): mean over pairs of cos(predictions[i], references[i]), in [-1, 1].
    pairs (`int`): N.
    spearman (`float`, only with `scores`): Spearman correlation of the cosines with the scores, in [-1, 1]
        (NaN when either side is constant or N < 2).
    pearson (`float`, only with `scores`): Pearson correlation, same conventions.

Examples:
    >>> metric = hf_divcl.evaluation.metrics.load("embedding_similarity")
    >>> metric.compute(predictions=[[1.0, 0.0], [1.0, 1.0]], references=[[1.0, 0.0], [0.0, 1.0]], scores=[10, 5])
    {'mean_cosine': 0.8535..., 'pairs': 2, 'spearman': 1.0 (up to rounding), 'pearson': 1.0}
"""

_CITATION = """
@article{spearman1904,
  title = {The proof and measurement of association between two things},
  author = {Spearman, Charles},
  journal = {The American Journal of Psychology},
  volume = {15},
  pages = {72--101},
  year = {1904}
}
"""


def _correlation(kind, x, y) -> float:
    if len(x) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.spearmanr(x, y) if kind == "spearman" else stats.pearsonr(x, y)
    return float(result.statistic)


class EmbeddingSimilarity(evaluate.Metric):
    """Cosine of paired embeddings; Spearman/Pearson against optional human scores."""

    def _info(self) -> evaluate.MetricInfo:
        vector = datasets.Sequence(datasets.Value("float64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": vector, "references": vector}),
            reference_urls=["https://en.wikipedia.org/wiki/Spearman%27s_rank_correlation_coefficient"],
        )

    def _compute(self, predictions, references, scores=None) -> dict:
        if not predictions:
            raise ValueError("embedding_similarity: no pairs; pass at least one predictions/references pair.")
        for row, (a, b) in enumerate(zip(predictions, references, strict=True)):
            if len(a) != len(b) or len(a) != len(predictions[0]):
                raise ValueError(f"embedding_similarity: pair {row} has embeddings of dimension {len(a)} and "
                                 f"{len(b)}; every embedding must have dimension {len(predictions[0])}.")
        u = torch.tensor(predictions, dtype=torch.float64)
        v = torch.tensor(references, dtype=torch.float64)
        norms = torch.linalg.vector_norm(u, dim=-1) * torch.linalg.vector_norm(v, dim=-1)
        if bool((norms == 0).any()):
            row = int(torch.nonzero(norms == 0)[0])
            raise ValueError(f"embedding_similarity: pair {row} has an all-zero embedding; cosine is undefined.")
        cosine = (u * v).sum(-1) / norms
        out = {"mean_cosine": cosine.mean().item(), "pairs": len(predictions)}
        if scores is not None:
            scores = [float(s) for s in scores]
            if len(scores) != len(predictions):
                raise ValueError(f"embedding_similarity: {len(scores)} scores for {len(predictions)} pairs; pass "
                                 "one human score per pair.")
            out["spearman"] = _correlation("spearman", cosine.tolist(), scores)
            out["pearson"] = _correlation("pearson", cosine.tolist(), scores)
        return out
