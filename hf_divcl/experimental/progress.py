"""Progress calibration: place the diversity window where one optimizer step buys the most held-out improvement.

The gradient-magnitude calibration (:func:`hf_divcl.diversity.window.calibrate_window` with ``method="gradient"``)
puts the
window where the InfoNCE gradient is largest. A large gradient is not progress: on real data the level that trains
best is often elsewhere and moves with τ. This module measures progress directly.

For each candidate diversity level (tight neighbourhoods … spread out, :mod:`hf_divcl.diversity.levels`) it draws
``n_pairs``
batches, each *paired* with a random batch drawn from the same generator, and scores every batch by the held-out
improvement one step on it buys (:class:`StepGain`): the drop of the contrastive loss on a fixed probe set that is
never trained on. Either measured exactly (``"lookahead"``: take the step, evaluate the probe, restore the weights
bit for bit) or by its first-order estimate (``"first_order"``: ``lr·⟨d, ∇θ L_probe⟩`` for the step direction d,
one backward per batch and one for the probe). The per-pair differences level − random give each level a mean
gain *relative to random* with a t-interval; a level becomes the window only if the lower end of its interval is
above zero (:func:`decide`). Otherwise the decision is ``"random"``: batches stay random and the reason is logged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..diversity.levels import SweepLevel, draw_level, parse_level
from ..diversity.window import METRICS, DiversityWindow, measure_diversity
from .preconditioner import preconditioner
from .sequential import paired_interval

__all__ = ["ESTIMATES", "ProgressCalibration", "StepGain", "calibrate_progress", "decide", "default_progress_levels"]

ESTIMATES = ("first_order", "lookahead")


def default_progress_levels(n_rows: int, batch_size: int) -> list[SweepLevel]:
    """Candidate levels besides random: the tightest neighbourhood the candidate rows allow (a seed row's ``B``
    nearest neighbours), a looser one when the sample is large, and one spread level.

    Tight levels must be really tight: drawn from a sample of ``8B`` rows, a ``4B`` neighbourhood is barely less
    diverse than random (effective rank 25.5 vs 27.1 of 32 on MiniLM/WordNet), far from the tight windows that
    measurably train better at large τ.
    """
    levels = [SweepLevel("local", batch_size)]
    if 8 * batch_size <= n_rows // 4:
        levels.append(SweepLevel("local", 8 * batch_size))
    if 4 * batch_size <= n_rows:
        levels.append(SweepLevel("spread", 4))
    return levels


@dataclass
class ProgressCalibration:
    """Outcome of one progress calibration: the decision, the evidence per level, and what it cost.

    ``decision`` is ``"window"`` (``window`` and ``level`` set) or ``"random"`` (``reason`` says why).
    ``levels`` holds one row per candidate level: its diversity, its mean gain relative to random and the
    interval. ``cost`` counts forward/backward passes and seconds.
    """

    decision: str
    window: DiversityWindow | None
    level: str | None
    reason: str
    temperature: float
    batch_size: int
    estimate: str = "first_order"
    confidence: float = 0.9
    n_pairs: int = 0
    step: int = 0
    random_gain: float = float("nan")
    random_metric: float = float("nan")
    levels: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = self.window.to_dict() if self.window is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProgressCalibration:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["window"] = DiversityWindow(**d["window"]) if d.get("window") else None
        return cls(**d)

    def format(self) -> str:
        lines = [f"Progress calibration at step {self.step} (τ = {self.temperature:g}, B = {self.batch_size}, "
                 f"{self.n_pairs} pairs per level, {self.estimate}, {self.confidence:.0%} intervals):",
                 f"  {'level':>10} {'eff. rank':>9} {'gain − random':>14} {'interval':>24}",
                 f"  {'random':>10} {self.random_metric:9.2f} {0.0:14.3e} {'(baseline)':>24}"]
        for r in self.levels:
            mark = " <- window" if r["level"] == self.level else ""
            lines.append(f"  {r['level']:>10} {r['metric']:9.2f} {r['gain_vs_random']:14.3e} "
                         f"[{r['ci_low']:10.3e}, {r['ci_high']:10.3e}]{mark}")
        if self.decision == "window" and self.window is not None:
            lines.append(f"  decision: window {self.window.metric} in [{self.window.low:.2f}, {self.window.high:.2f}]")
        else:
            lines.append(f"  decision: random batches — {self.reason}")
        return "\n".join(lines)


def decide(diffs: dict[str, torch.Tensor], confidence: float = 0.9) -> tuple[str | None, dict[str, tuple]]:
    """The level whose gain over random is positive with confidence, and every level's (mean, low, high).

    Among levels whose interval's lower end is above 0, the one with the largest lower end wins; ``None`` when
    no level beats random (the caller keeps random batches).
    """
    stats = {name: paired_interval(d, confidence) for name, d in diffs.items()}
    winners = [(low, name) for name, (_, low, _) in stats.items() if math.isfinite(low) and low > 0]
    return (max(winners)[1] if winners else None), stats


def calibrate_progress(
    anchors: torch.Tensor,
    batch_size: int,
    temperature: float,
    gain: Callable[[torch.Tensor], float],
    *,
    levels: Sequence[str | SweepLevel] | None = None,
    n_pairs: int = 4,
    metric: str = "effective_rank",
    confidence: float = 0.9,
    seed: int = 0,
    estimate: str = "first_order",
    step: int = 0,
) -> ProgressCalibration:
    """Measure, per diversity level, the held-out gain of one step relative to random batches, and decide.

    Args:
        anchors (`torch.Tensor` of shape `(N, d)`): embeddings of the candidate rows (unit rows after normalising).
        batch_size (`int`): the (global) training batch size.
        temperature (`float`): the loss temperature (recorded; the gain function trains at it).
        gain (`Callable`): ``gain(rows) → float``, the held-out improvement one optimizer step on the batch
            ``rows`` (indices into ``anchors``, shape ``(B,)``) buys — e.g. a :class:`StepGain`. Must leave the
            model as it found it.
        levels: candidate levels (default :func:`default_progress_levels`); random is always the baseline.
        n_pairs (`int`): batches per level, each paired with its own random batch (≥ 2).
        metric (`str`): diversity metric of the window.
        confidence (`float`): two-sided level of the paired t-intervals.
        seed (`int`): seed of the batch draws.
    """
    if metric not in METRICS:
        raise ValueError(f"Unknown diversity metric {metric!r}; choose one of {sorted(METRICS)}.")
    if n_pairs < 2:
        raise ValueError(f"n_pairs must be >= 2 for a confidence interval, got {n_pairs}.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    n = anchors.shape[0]
    if n < 2 * batch_size:
        raise ValueError(f"Progress calibration needs at least 2 × B = {2 * batch_size} candidate rows, got {n}.")
    t0 = time.perf_counter()
    u = torch.nn.functional.normalize(anchors.float(), dim=-1)
    lv = [parse_level(x) if isinstance(x, str) else x for x in levels] if levels else \
        default_progress_levels(n, batch_size)
    lv = [x for x in lv if x.kind != "random"]
    gen = torch.Generator(device=u.device).manual_seed(seed)
    random_idx = draw_level(u, SweepLevel("random"), batch_size, n_pairs, gen)
    level_idx = {x.name: draw_level(u, x, batch_size, n_pairs, gen) for x in lv}
    # interleave the measurements pair by pair, so that any drift hits every level alike
    gains = {name: torch.empty(n_pairs, dtype=torch.float64) for name in ["random", *level_idx]}
    for i in range(n_pairs):
        gains["random"][i] = gain(random_idx[i])
        for name, idx in level_idx.items():
            gains[name][i] = gain(idx[i])
    values = {"random": measure_diversity(u[random_idx], metric)}
    values.update({name: measure_diversity(u[idx], metric) for name, idx in level_idx.items()})
    diffs = {name: gains[name] - gains["random"] for name in level_idx}
    common = {"temperature": float(temperature), "batch_size": batch_size, "estimate": estimate,
              "confidence": confidence, "n_pairs": n_pairs, "step": step,
              "random_gain": gains["random"].mean().item(), "random_metric": values["random"].mean().item()}
    finite = all(bool(torch.isfinite(g).all()) for g in gains.values())
    winner, stats = decide(diffs, confidence) if finite else (None, {})
    rows = []
    for name in level_idx:
        mean, low, high = stats.get(name, (float("nan"), -math.inf, math.inf))
        rows.append({"level": name, "metric": values[name].mean().item(), "metric_std": values[name].std().item(),
                     "gain_mean": gains[name].mean().item(), "gain_vs_random": mean, "ci_low": low, "ci_high": high,
                     "wins": int((diffs[name] > 0).sum())})
    cost = {"seconds": time.perf_counter() - t0, "batches_scored": float(n_pairs * (1 + len(level_idx)))}
    if not finite:
        bad = sorted(name for name, g in gains.items() if not bool(torch.isfinite(g).all()))
        return ProgressCalibration("random", None, None, f"the gain was NaN/Inf for level(s) {bad}; kept random "
                                   "batches (check the learning rate and the data)", levels=rows, cost=cost, **common)
    if winner is None:
        return ProgressCalibration("random", None, None, f"no level beat random batches with {confidence:.0%} "
                                   f"confidence ({n_pairs} pairs per level)", levels=rows, cost=cost, **common)
    v = values[winner]
    lo, hi = torch.quantile(v, 0.05).item(), torch.quantile(v, 0.95).item()
    window = DiversityWindow(min(lo, hi), max(lo, hi), metric)
    return ProgressCalibration("window", window, winner, f"{winner} beat random batches with {confidence:.0%} "
                               "confidence", levels=rows, cost=cost, **common)


class StepGain:
    """The held-out improvement one optimizer step on a batch buys, on a fixed probe set.

    The step direction is the one the optimizer would take from this batch's gradient alone: preconditioned by
    Adam's second-moment estimate when the optimizer has one (``g / (√v̂ + ε)``), otherwise ``sign(g)`` (Adam's
    first step); its length is the run's learning rate. ``"first_order"`` returns ``lr·⟨d, ∇θ L_probe⟩`` (one
    backward per batch, one for the probe); ``"lookahead"`` takes the step, evaluates the probe loss and restores
    the parameters exactly (one backward per batch plus two probe forwards).

    Args:
        params: the trainable parameters.
        loss_of (`Callable`): ``loss_of(rows) → 0-dim loss tensor`` for a batch of training rows ``(B,)``.
        probe_loss_of (`Callable`): ``probe_loss_of() → list of 0-dim losses`` over the probe set's chunks.
        lr (`float`): the learning rate of the step (> 0).
        optimizer (*optional*): the run's optimizer; its ``exp_avg_sq`` state preconditions the step.
        estimate (`str`): ``"first_order"`` or ``"lookahead"``.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], loss_of: Callable[[torch.Tensor], torch.Tensor],
                 probe_loss_of: Callable[[], list[torch.Tensor]], lr: float, *, optimizer=None,
                 estimate: str = "first_order") -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("Progress calibration needs trainable parameters; the model has none (all frozen).")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"Progress calibration needs a learning rate > 0, got {lr}.")
        if estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {ESTIMATES}, got {estimate!r}.")
        self.loss_of, self.probe_loss_of, self.lr, self.estimate = loss_of, probe_loss_of, float(lr), estimate
        self.precond = self._preconditioner(optimizer)
        self.backward_passes = 0
        self.probe_forward_passes = 0
        self._probe_grad: list[torch.Tensor] | None = None
        self._probe_loss: float | None = None

    def _preconditioner(self, optimizer) -> list[torch.Tensor] | None:
        """Adam's ``1/(√v̂ + ε)`` as the optimizer holds it (``None``: no second moment yet, or not Adam)."""
        return preconditioner(optimizer, self.params)[0] if optimizer is not None else None

    def direction(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self.precond is None:
            return [g.sign() for g in grads]
        return [g * c for g, c in zip(grads, self.precond, strict=True)]

    def probe_gradient(self) -> list[torch.Tensor]:
        if self._probe_grad is None:
            losses = self.probe_loss_of()
            self.probe_forward_passes += len(losses)
            total = torch.stack(losses).mean()
            self._probe_loss = total.item()
            self._probe_grad = [g if g is not None else torch.zeros_like(p) for g, p in zip(
                torch.autograd.grad(total, self.params, allow_unused=True), self.params, strict=True)]
            self.backward_passes += len(losses)
        return self._probe_grad

    def probe_loss(self) -> float:
        with torch.no_grad():
            losses = self.probe_loss_of()
        self.probe_forward_passes += len(losses)
        return torch.stack(losses).mean().item()

    def __call__(self, rows: torch.Tensor) -> float:
        loss = self.loss_of(rows)
        if not bool(torch.isfinite(loss.detach())):
            return float("nan")
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(
            torch.autograd.grad(loss, self.params, allow_unused=True), self.params, strict=True)]
        self.backward_passes += 1
        d = self.direction(grads)
        if self.estimate == "first_order":
            gp = self.probe_gradient()
            dots = torch.stack([(a * b).sum(dtype=torch.float64) for a, b in zip(d, gp, strict=True)])
            return self.lr * dots.sum().item()  # one host sync per scored batch
        if self._probe_loss is None:
            self._probe_loss = self.probe_loss()
        saved = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, step in zip(self.params, d, strict=True):
                    p.sub_(self.lr * step)
            after = self.probe_loss()
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)
        return self._probe_loss - after
