"""The window's target on this data: how the window metric maps to the mean squared cosine, and the achievable range."""

from __future__ import annotations

from typing import Any

import torch

from ..diversity.levels import SweepLevel, draw_level
from ..diversity.window import measure_diversity
from .context import PlanContext
from .sketch import sketch_mean_sq_cosine

__all__ = ["calibrate_target", "target_sketch_mcos2"]


def calibrate_target(ctx: PlanContext, n_rows: int = 20_000, n_batches: int = 12) -> dict[str, Any]:
    """Measure on the data how the window metric relates to the sketch's mean cos², and the achievable range.

    Draws batches from tight neighbourhoods to spread-out sets (see :mod:`hf_divcl.diversity.levels`) on a sample of
    rows.
    Returns ``{"achievable": (lo, hi), "metric": tensor, "sketch_mcos2": tensor}``.
    """
    if ctx.calibration:
        return ctx.calibration
    window, b = ctx.window, ctx.batch_size
    m = ctx.num_rows
    sample = torch.randperm(m, generator=ctx.generator)[: min(n_rows, m)]
    xs = ctx.emb(sample).float()
    ss = ctx.sketch[sample]
    levels = [SweepLevel("local", b), SweepLevel("local", 4 * b), SweepLevel("local", 16 * b),
              SweepLevel("random"), SweepLevel("spread", 2), SweepLevel("spread", 4), SweepLevel("spread", 8)]
    metric = window.metric if window is not None else "effective_rank"
    vals, mc, exact = [], [], []
    for lv in levels:
        if lv.kind != "random" and (lv.param * (b if lv.kind == "spread" else 1)) > xs.shape[0]:
            continue
        # spread levels hold (R, P, P) similarity blocks: draw them two batches at a time to bound the memory
        step = 2 if lv.kind == "spread" else n_batches
        idx = torch.cat([draw_level(xs, lv, b, min(step, n_batches - k), ctx.generator)
                         for k in range(0, n_batches, step)])
        vals.append(measure_diversity(xs[idx], metric))
        mc.append(sketch_mean_sq_cosine(ss[idx]))
        exact.append(measure_diversity(xs[idx], "mean_sq_cosine"))
    v, c, e = torch.cat(vals), torch.cat(mc), torch.cat(exact)
    ctx.calibration = {"achievable": (v.min().item(), v.max().item()), "metric": v, "sketch_mcos2": c,
                       "mean_sq_cosine": e}
    return ctx.calibration


def target_sketch_mcos2(ctx: PlanContext, value: float, key: str = "sketch_mcos2") -> float:
    """The mean cos² (in the sketch, or exact with ``key="mean_sq_cosine"``) that corresponds to a window-metric
    ``value``: a monotone fit on binned calibration batches."""
    cal = calibrate_target(ctx)
    v, c = cal["metric"], cal[key]
    order = v.argsort()
    v, c = v[order], c[order]
    nb = max(2, min(20, v.numel() // 4))
    bins = torch.tensor_split(torch.arange(v.numel()), nb)
    xv = torch.stack([v[i].mean() for i in bins])
    yc = torch.stack([c[i].mean() for i in bins])
    # more diversity ⇒ smaller mean cos²: enforce monotonicity in the metric's direction
    yc = torch.cummin(yc, 0).values if ctx.window.direction > 0 else torch.cummax(yc, 0).values
    x = min(max(value, xv[0].item()), xv[-1].item())
    j = int(torch.searchsorted(xv, torch.tensor(x)).clamp(1, nb - 1))
    x0, x1, y0, y1 = xv[j - 1].item(), xv[j].item(), yc[j - 1].item(), yc[j].item()
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
