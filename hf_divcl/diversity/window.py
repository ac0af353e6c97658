"""The diversity window: an interval of one batch-diversity metric, and the metric measured on many batches.

A :class:`DiversityWindow` is an interval of one diversity metric of
:func:`hf_divcl.diversity.metrics.batch_diversity` (``effective_rank`` by default). Where a run's window comes from
(calibration, progress measurements) is :mod:`hf_divcl.batch_policy`'s business.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .metrics import batch_diversity

__all__ = ["METRICS", "DiversityWindow", "measure_batches", "measure_diversity"]

# metric → +1 when larger means more diverse, −1 when larger means less diverse
METRICS: dict[str, int] = {"effective_rank": 1, "participation_ratio": 1, "mean_sq_cosine": -1, "lambda_max": -1}


def metric_range(metric: str, batch_size: int, dim: int) -> tuple[float, float]:
    """The values ``metric`` can take for a batch of ``batch_size`` unit vectors in ``dim`` dimensions."""
    r = float(min(batch_size, dim))
    return {"effective_rank": (1.0, r), "participation_ratio": (1.0, r), "mean_sq_cosine": (0.0, 1.0),
            "lambda_max": (1.0 / r, 1.0)}[metric]


def _metric_chunks(get, n: int, metric: str, chunk: int, device: torch.device) -> torch.Tensor:
    """``metric`` of batches ``0..n-1``, fetched ``chunk`` at a time by ``get(slice) → (r, B, d)`` (float32 inside).

    Each matrix is decomposed on its own, so the values do not depend on the chunking.
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown diversity metric {metric!r}; choose one of {sorted(METRICS)}.")
    need_spectrum = metric in ("effective_rank", "lambda_max")
    out = [batch_diversity(get(slice(s, min(s + chunk, n))).float(), spectrum=need_spectrum, validate=False)[metric]
           for s in range(0, n, chunk)]
    return torch.cat(out) if out else torch.empty(0, device=device)


def measure_diversity(embeddings: torch.Tensor, metric: str = "effective_rank", chunk: int = 64) -> torch.Tensor:
    """``metric`` of each batch in ``(R, B, d)`` (any float dtype; processed in float32 chunks), shape ``(R,)``."""
    return _metric_chunks(lambda sl: embeddings[sl], embeddings.shape[0], metric, chunk, embeddings.device)


def measure_batches(bank: torch.Tensor, index: torch.Tensor, metric: str = "effective_rank",
                    chunk: int = 64) -> torch.Tensor:
    """``metric`` of the batches ``bank[index]`` for ``index`` of shape ``(R, B)``, shape ``(R,)``.

    Same values as ``measure_diversity(bank[index])``, but rows are gathered one chunk of batches at a time, so
    the extra memory is a few chunks (``chunk · B · d`` floats each), not a copy of the whole selection.
    """
    return _metric_chunks(lambda sl: bank[index[sl]], index.shape[0], metric, chunk, bank.device)


@dataclass(frozen=True)
class DiversityWindow:
    """An interval ``[low, high]`` of a batch-diversity metric that training batches should fall in.

    Args:
        low (`float`): lower edge (inclusive).
        high (`float`): upper edge (inclusive).
        metric (`str`, *optional*, defaults to `"effective_rank"`): one of ``effective_rank``,
            ``participation_ratio``, ``mean_sq_cosine``, ``lambda_max`` (see :func:`batch_diversity`).
    """

    low: float
    high: float
    metric: str = "effective_rank"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"Unknown diversity metric {self.metric!r}; choose one of {sorted(METRICS)}.")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"Window edges must be finite, got low={self.low}, high={self.high}.")
        if self.low > self.high:
            raise ValueError(f"Window low ({self.low}) is greater than high ({self.high}); swap them.")
        floor, ceil = metric_range(self.metric, 10**9, 10**9)
        if self.low < floor or (self.metric in ("mean_sq_cosine", "lambda_max") and self.high > 1.0):
            raise ValueError(f"Window [{self.low}, {self.high}] is outside the range of {self.metric} "
                             f"([{floor}, {'min(B, d)' if ceil > 1 else 1}]).")

    def check_feasible_range(self, batch_size: int, dim: int) -> None:
        """Raise if the window cannot be met by any batch of this size and dimension."""
        lo, hi = metric_range(self.metric, batch_size, dim)
        if self.low > hi or self.high < lo:
            raise ValueError(f"Window [{self.low}, {self.high}] of {self.metric} is outside what batches of "
                             f"B = {batch_size} in d = {dim} can reach ([{lo:g}, {hi:g}]).")

    @property
    def center(self) -> float:
        return 0.5 * (self.low + self.high)

    @property
    def direction(self) -> int:
        """+1 if larger metric values mean more diversity, −1 otherwise."""
        return METRICS[self.metric]

    def contains(self, values: torch.Tensor) -> torch.Tensor:
        return (values >= self.low) & (values <= self.high)

    def distance(self, values: torch.Tensor) -> torch.Tensor:
        """0 inside the window, else the distance to the nearest edge (same shape as ``values``)."""
        return (self.low - values).clamp_min(0) + (values - self.high).clamp_min(0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, text: str) -> DiversityWindow:
        """``"effective_rank:10:20"`` or ``"10:20"`` (effective rank)."""
        parts = text.split(":")
        try:
            if len(parts) == 2:
                return cls(float(parts[0]), float(parts[1]))
            if len(parts) == 3:
                return cls(float(parts[1]), float(parts[2]), parts[0])
        except ValueError as err:
            if "could not convert" not in str(err):
                raise
        raise ValueError(f"Bad window {text!r}; write 'low:high' or 'metric:low:high', e.g. effective_rank:12:24.")
