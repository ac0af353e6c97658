"""`evaluate` metric modules shipped inside hf_divcl, loadable offline by path.

Each metric lives in ``hf_divcl/evaluation/metrics/<name>/<name>.py`` (the layout ``evaluate.load(folder)`` expects):

- ``batch_diversity``: effective rank, participation ratio, lambda_max, mean (squared) cosine of one batch of
  embeddings (:func:`hf_divcl.diversity.metrics.batch_diversity`);
- ``embedding_similarity``: mean cosine of paired embeddings and Spearman/Pearson against optional human scores.

``evaluate.load`` copies the module into its modules cache (``HF_MODULES_CACHE``) and imports it from there; it
never needs the Hub for a local path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import evaluate

__all__ = ["METRIC_MODULES", "load", "metric_path"]

METRIC_MODULES = ("batch_diversity", "embedding_similarity")
"""Names of the metric modules in this folder."""


def metric_path(name: str) -> str:
    """Folder of the metric module ``name`` (pass it to ``evaluate.load``)."""
    if name not in METRIC_MODULES:
        raise ValueError(f"Unknown hf_divcl metric {name!r}; available: {', '.join(METRIC_MODULES)}.")
    return str(Path(__file__).resolve().parent / name)


def load(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """``evaluate.load(metric_path(name), **kwargs)``: an hf_divcl metric, offline.

    Example:

    ```python
    >>> from hf_divcl.evaluation import metrics
    >>> metrics.load("batch_diversity").compute(embeddings=[[1.0, 0.0], [0.0, 1.0]])["effective_rank"]
    2.0
    ```
    """
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)
