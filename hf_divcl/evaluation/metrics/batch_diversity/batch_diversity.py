"""Batch diversity of a set of embeddings as an `evaluate` metric (loadable offline by path).

All rows added with ``add``/``add_batch``/``compute`` form ONE batch ``(B, d)``; the numbers are those of
``hf_divcl.diversity.metrics.batch_diversity`` on that batch in float64. Keep one import per line: `evaluate` parses
them.
"""

import datasets
import evaluate
import torch

from hf_divcl.diversity.metrics import batch_diversity  # absolute: evaluate copies this file elsewhere

_DESCRIPTION = """
How spread out a batch of embeddings is: effective rank (exp of the entropy of the normalised eigenvalues of the
second moment), participation ratio (B^2 / ||G||_F^2 of the cosine matrix G), lambda_max (top eigenvalue of the
trace-1 second moment), and the mean cosine and mean squared cosine over ordered pairs i != j. Rows are
L2-normalised first. Computed by hf_divcl.diversity.metrics.batch_diversity in float64.
"""

_KWARGS_DESCRIPTION = """
Args:
    embeddings (`list` of `list` of `float`): B >= 2 rows, one embedding of dimension d >= 1 per row.

Returns:
    effective_rank (`float`): in [1, min(B, d)].
    participation_ratio (`float`): in [1, min(B, d)].
    lambda_max (`float`): in [1 / min(B, d), 1].
    mean_cosine (`float`): in [-1 / (B - 1), 1].
    mean_sq_cosine (`float`): in [0, 1].
    batch_size (`int`): B.

Examples:
    >>> metric = hf_divcl.evaluation.metrics.load("batch_diversity")
    >>> metric.compute(embeddings=[[1.0, 0.0], [0.0, 1.0]])["effective_rank"]
    2.0
"""

_CITATION = """
@misc{hf_divcl,
  title = {hf_divcl: diversity-window batches for contrastive encoders},
  note = {hf_divcl.diversity.metrics.batch_diversity; see docs/maths.md}
}
"""

KEYS = ("effective_rank", "participation_ratio", "lambda_max", "mean_cosine", "mean_sq_cosine")


class BatchDiversity(evaluate.Metric):
    """`evaluate` wrapper of :func:`hf_divcl.diversity.metrics.batch_diversity`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"embeddings": datasets.Sequence(datasets.Value("float64"))}),
            reference_urls=["https://en.wikipedia.org/wiki/Effective_rank"],
        )

    def _compute(self, embeddings) -> dict:
        lengths = {len(row) for row in embeddings}
        if len(lengths) > 1:
            first = len(embeddings[0])
            row = next(i for i, r in enumerate(embeddings) if len(r) != first)
            raise ValueError(f"batch_diversity: row {row} has {len(embeddings[row])} values, row 0 has {first}; "
                             "every embedding must have the same dimension.")
        x = torch.tensor(embeddings, dtype=torch.float64)
        if x.ndim != 2:
            raise ValueError(f"batch_diversity: expected a list of B embeddings (B, d); got shape {tuple(x.shape)}.")
        stats = batch_diversity(x)
        out = {key: stats[key].item() for key in KEYS}
        out["batch_size"] = int(stats["batch_size"].item())
        return out
