"""The diversity window, and its calibration from the gradient it produces on the user's own data.

A :class:`DiversityWindow` is an interval of one diversity metric of :func:`hf_divcl.spectral.batch_diversity`
(``effective_rank`` by default). :func:`calibrate_window` draws batches of controlled diversity from the bank
(tight neighbourhoods → random → spread), computes the exact mean InfoNCE gradient norm each produces at the
training temperature, and places the window around the maximum: the batches whose gradients are within
``keep_fraction`` of the strongest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .spectral import batch_diversity, gradient_bands
from .sweep import SweepLevel, default_levels, draw_level, parse_level

__all__ = ["METRICS", "CalibrationResult", "DiversityWindow", "calibrate_window", "measure_batches",
           "measure_diversity"]

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


@dataclass
class CalibrationResult:
    """The calibrated window and the curve it was read from (one row per diversity level, low → high)."""

    window: DiversityWindow
    temperature: float
    batch_size: int
    curve: list[dict[str, float | str]] = field(default_factory=list)
    peak_level: str = ""
    keep_fraction: float = 0.9

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = self.window.to_dict()
        return d

    def format(self) -> str:
        m = self.window.metric
        lines = [f"Calibration at τ = {self.temperature:g}, B = {self.batch_size} ({m}):",
                 f"  {'level':>10} {m:>16} {'± std':>7} {'mean ‖∇‖':>10} {'band lower':>11} {'band upper':>11}"]
        for r in self.curve:
            mark = " <- peak" if r["level"] == self.peak_level else ""
            lines.append(f"  {r['level']:>10} {r['metric']:16.3f} {r['metric_std']:7.3f} {r['grad_norm']:10.4f} "
                         f"{r['lower']:11.4f} {r['upper']:11.4f}{mark}")
        lines.append(f"  window: {m} in [{self.window.low:.3f}, {self.window.high:.3f}] "
                     f"(levels with ≥ {self.keep_fraction:.0%} of the peak gradient)")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        from .plotting import pyplot, save_figure

        x = [r["metric"] for r in self.curve]
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(x, [r["grad_norm"] for r in self.curve], marker="o", label="mean ‖∇_u ℓ‖ (exact)")
        ax.fill_between(x, [r["lower"] for r in self.curve], [r["upper"] for r in self.curve], alpha=0.2,
                        label="mean band")
        ax.axvspan(self.window.low, self.window.high, color="tab:green", alpha=0.15, label="window")
        ax.set_xlabel(self.window.metric)
        ax.set_ylabel("gradient norm")
        ax.set_title(f"τ = {self.temperature:g}, B = {self.batch_size}")
        ax.legend()
        ax.grid(alpha=0.3)
        return save_figure(fig, path)


def calibrate_window(
    anchors: torch.Tensor,
    batch_size: int,
    temperature: float,
    *,
    positives: torch.Tensor | None = None,
    metric: str = "effective_rank",
    n_batches: int = 32,
    levels: list[str | SweepLevel] | None = None,
    keep_fraction: float = 0.9,
    seed: int = 0,
    max_rows: int = 50_000,
    method: str = "gradient",
    gain=None,
    n_pairs: int = 4,
    confidence: float = 0.9,
):
    """Choose a diversity window: around the largest InfoNCE gradient (``method="gradient"``, the paper's
    proposal) or where one step buys the most held-out progress over random batches (``method="progress"``).

    ``method="progress"`` needs ``gain(rows) → float`` (e.g. :class:`hf_divcl.progress.StepGain`) and returns a
    :class:`hf_divcl.progress.ProgressCalibration`, whose decision may be ``"random"`` (no level beat random
    batches with ``confidence``); see :func:`hf_divcl.progress.calibrate_progress`. The gradient method returns a
    :class:`CalibrationResult`. On real data the largest gradient is often not the most progress: prefer
    ``"progress"`` for training.

    Args:
        anchors (`torch.Tensor` of shape `(N, d)`): one embedding per training row (e.g. ``bank.all()``).
        batch_size (`int`): the (global) training batch size.
        temperature (`float`): the loss temperature τ — the window moves with it.
        positives (`torch.Tensor` of shape `(N, d)`, *optional*): each row's positive; without it the anchors
            are their own positives (alignment 1, the most saturated softmax: prefer passing them).
        metric (`str`): the window's diversity metric.
        n_batches (`int`): batches per diversity level.
        levels (`list`, *optional*): sweep levels (default: :func:`hf_divcl.sweep.default_levels`).
        keep_fraction (`float`): levels whose mean gradient is at least this fraction of the peak form the window.
        seed (`int`): seed of the batch draws.
        max_rows (`int`): calibrate on a seeded subset of at most this many rows.
        method (`str`): ``"gradient"`` or ``"progress"``.
        gain, n_pairs, confidence: ``method="progress"`` only (see :func:`hf_divcl.progress.calibrate_progress`).
    """
    if method == "progress":
        from .progress import calibrate_progress

        if gain is None:
            raise ValueError("method='progress' needs gain(rows) -> float, the held-out improvement one step on a "
                             "batch buys (e.g. hf_divcl.progress.StepGain); DivCLTrainer builds it for you.")
        return calibrate_progress(anchors[:max_rows], batch_size, temperature, gain, levels=levels,
                                  n_pairs=n_pairs, metric=metric, confidence=confidence, seed=seed)
    if method != "gradient":
        raise ValueError(f"method must be 'gradient' or 'progress', got {method!r}.")
    if metric not in METRICS:
        raise ValueError(f"Unknown diversity metric {metric!r}; choose one of {sorted(METRICS)}.")
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}.")
    n = anchors.shape[0]
    if positives is not None and positives.shape != anchors.shape:
        raise ValueError(f"positives {tuple(positives.shape)} must match anchors {tuple(anchors.shape)}.")
    gen = torch.Generator().manual_seed(seed)
    if n > max_rows:
        keep = torch.randperm(n, generator=gen)[:max_rows]
        anchors = anchors[keep]
        positives = positives[keep] if positives is not None else None
        n = max_rows
    u_all = torch.nn.functional.normalize(anchors.float(), dim=-1)
    v_all = u_all if positives is None else torch.nn.functional.normalize(positives.float(), dim=-1)
    lv = [parse_level(x) if isinstance(x, str) else x for x in levels] if levels else default_levels(n, batch_size)

    rows, per_batch = [], []
    for level in lv:
        idx = draw_level(u_all, level, batch_size, n_batches, gen)
        u, v = u_all[idx], v_all[idx]
        values = measure_diversity(u, metric)
        bands = gradient_bands(u, v, temperature, validate=False)
        g = bands.grad_norm.mean(-1)  # (R,) mean over anchors of each batch
        rows.append({"level": level.name, "metric": values.mean().item(),
                     "metric_std": values.std().item() if n_batches > 1 else 0.0,
                     "grad_norm": g.mean().item(), "lower": bands.lower.mean().item(),
                     "upper": bands.upper.mean().item(), "inside_fraction": bands.inside().float().mean().item()})
        per_batch.append(values)
    order = sorted(range(len(rows)), key=lambda i: rows[i]["metric"] * METRICS[metric])
    rows = [rows[i] for i in order]
    per_batch = [per_batch[i] for i in order]
    peak = max(range(len(rows)), key=lambda i: rows[i]["grad_norm"])
    thr = keep_fraction * rows[peak]["grad_norm"]
    lo_i = hi_i = peak  # the contiguous run of levels around the peak above the threshold
    while lo_i > 0 and rows[lo_i - 1]["grad_norm"] >= thr:
        lo_i -= 1
    while hi_i < len(rows) - 1 and rows[hi_i + 1]["grad_norm"] >= thr:
        hi_i += 1
    vals = torch.cat(per_batch[lo_i:hi_i + 1])
    low, high = torch.quantile(vals, 0.05).item(), torch.quantile(vals, 0.95).item()
    window = DiversityWindow(low, high, metric)
    return CalibrationResult(window=window, temperature=float(temperature), batch_size=batch_size, curve=rows,
                             peak_level=rows[peak]["level"], keep_fraction=keep_fraction)
