"""The benchmarks' shared statistics on quality curves: area, time to a target, paired Student-t intervals.

A curve is a list of evaluation points ``{"step": int, "seconds": float, <score>: float, ...}`` in step order.
"""

from __future__ import annotations

import itertools
import math


def auc(curve: list[dict], key: str = "score") -> float:
    """Area under ``key``'s curve over training steps divided by the steps (trapezoids): the mean quality along
    the run, which rewards getting good sooner. A single point (or no step range) gives its own value."""
    if len(curve) < 2 or curve[-1]["step"] == curve[0]["step"]:
        return curve[-1][key]
    area = sum((b["step"] - a["step"]) * (a[key] + b[key]) / 2 for a, b in itertools.pairwise(curve))
    return area / (curve[-1]["step"] - curve[0]["step"])


def best_of_sweep(finals: dict[float, dict[int, float]]) -> dict | None:
    """One arm's τ sweep, ``{τ: {seed: final score}}``: the τ with the highest mean final score over the seeds every
    τ shares (None when no seed is shared), as ``{"tau", "swept", "at_edge", "common_seeds", "final_by_tau"}``;
    ``at_edge``: the best is the lowest or highest τ tried, so the sweep does not bracket it."""
    taus = sorted(finals)
    common = set.intersection(*(set(finals[t]) for t in taus))
    if not common:
        return None
    means = {t: math.fsum(finals[t][s] for s in common) / len(common) for t in taus}
    tau = max(taus, key=means.__getitem__)
    return {"tau": tau, "swept": len(taus) > 1, "at_edge": tau in (taus[0], taus[-1]), "common_seeds": sorted(common),
            "final_by_tau": {f"{t:g}": means[t] for t in taus}}


def reach(curve: list[dict], target: float, key: str = "step", score: str = "score") -> float | None:
    """First ``key`` (``step`` or ``seconds``) at which ``score`` reaches ``target``, linearly interpolated between
    evaluations; None when the curve never does."""
    prev = curve[0]
    if prev[score] >= target:
        return prev[key]
    for point in curve[1:]:
        if point[score] >= target:
            f = (target - prev[score]) / (point[score] - prev[score])
            return prev[key] + f * (point[key] - prev[key])
        prev = point
    return None


def t_interval(values: list[float | None]) -> dict:
    """Mean and 95 % Student-t interval of paired differences: ``{"mean", "ci95": [low, high] | None, "n"}``.
    None and non-finite values are dropped; with fewer than two values there is no interval."""
    import torch

    from hf_divcl.experimental.sequential import paired_interval

    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "ci95": None, "n": 0}
    mean, low, high = paired_interval(torch.tensor(values, dtype=torch.float64), 0.95)
    return {"mean": mean, "ci95": [low, high] if len(values) > 1 else None, "n": len(values)}
