"""Calibrating a diversity window on the user's own data.

:func:`calibrate_window` draws batches of controlled diversity from the bank (tight neighbourhoods → random →
spread), computes the exact mean InfoNCE gradient norm each produces at the training temperature, and places the
window around the maximum: the batches whose gradients are within ``keep_fraction`` of the strongest
(the paper's proposal). Measuring held-out progress per level instead is experimental
(:func:`hf_divcl.experimental.progress.calibrate_progress`, ``batch_policy="progress"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..diversity.bands import gradient_bands
from ..diversity.levels import SweepLevel, default_levels, draw_level, parse_level
from ..diversity.window import METRICS, DiversityWindow, measure_diversity

__all__ = ["CalibrationResult", "calibrate_window"]


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
        from ..publish.plots import pyplot, save_figure

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
) -> CalibrationResult:
    """Choose a diversity window around the largest InfoNCE gradient (the paper's proposal).

    On real data the largest gradient is often not the most progress (docs/results.md): the window this returns is
    a measurement of the gradient's dependence on diversity, not a recommendation to train in it.

    Args:
        anchors (`torch.Tensor` of shape `(N, d)`): one embedding per training row (e.g. ``bank.all()``).
        batch_size (`int`): the (global) training batch size.
        temperature (`float`): the loss temperature τ — the window moves with it.
        positives (`torch.Tensor` of shape `(N, d)`, *optional*): each row's positive; without it the anchors
            are their own positives (alignment 1, the most saturated softmax: prefer passing them).
        metric (`str`): the window's diversity metric.
        n_batches (`int`): batches per diversity level.
        levels (`list`, *optional*): sweep levels (default: :func:`hf_divcl.diversity.levels.default_levels`).
        keep_fraction (`float`): levels whose mean gradient is at least this fraction of the peak form the window.
        seed (`int`): seed of the batch draws.
        max_rows (`int`): calibrate on a seeded subset of at most this many rows.
    """
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
