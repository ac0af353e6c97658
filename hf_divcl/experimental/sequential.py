"""The training steps as the experiment: explore diversity levels against random batches on the run's own steps.

Instead of extra scored batches (:mod:`hf_divcl.experimental.progress`), exploration makes some *training* steps
the experiment. The steps are grouped in blocks of ``K`` consecutive steps; each block holds every arm once —
random batches and each candidate diversity level — in an order drawn from the run's seed (:func:`block_order`),
so every process agrees and each block pairs the arms in time. Each step is scored from the gradient it computes
anyway (:func:`step_score`): the progress the optimizer's step buys on a held-out probe, to first order,
``lr·⟨P(g_t), ∇θ L_probe⟩`` with ``P`` the optimizer's own preconditioner for this step (Adam: ``g/(√v̂_t+ε)``
with the step's bias-corrected second moment; SGD: the identity). The probe gradient is refreshed between blocks
only, so every arm of a block is scored against the same one.

The decision is sequential with controlled error (:class:`SequentialTest`): per level, the paired differences
``score(level) − score(random)`` of the blocks seen so far are tested one-sided at a few planned looks (block
counts growing geometrically), with a Bonferroni split of ``alpha`` over looks and levels, so the chance of
calling *any* level ahead of random when none is, over the whole exploration, is at most ``alpha`` (under the
t-test's normal approximation). A level confidently *behind* random is dropped from later blocks (successive
elimination: its steps stop costing the run). Exploration ends with a window (a level ahead with confidence), or
with random batches and the reason: every level is behind, or none got ahead within ``max_blocks``.

The probe (:func:`retrieval_probe_loss`) is retrieval over the whole probe set: each probe anchor against *all*
probe positives (corpus-like negatives, ≥ 256 of them by default), not InfoNCE over random in-batch negatives —
the objective a random batch estimates without bias, which favours random batches by construction. Where the
user evaluates class-level k-NN (image encoders trained self-supervised), :func:`label_probe_loss` is the k-NN-faithful
counterpart: each probe anchor retrieves the *other* probe items of its label among all of them (a soft k-NN over
the probe set), so pushing apart two images of one class counts as harm, not as progress.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .._common import mix_seed

__all__ = [
    "RANDOM_ARM",
    "ExploreDecision",
    "SequentialTest",
    "block_order",
    "look_schedule",
    "paired_interval",
    "recheck_verdict",
]

RANDOM_ARM = "random"


def paired_interval(diffs: torch.Tensor, confidence: float = 0.9) -> tuple[float, float, float]:
    """Mean and two-sided Student-t ``confidence`` interval of paired differences ``(n,)``, as floats.

    With fewer than two finite differences the interval is ``(-inf, inf)``: nothing is known.
    """
    d = diffs.double()
    d = d[torch.isfinite(d)]
    n = d.numel()
    if n == 0:
        return float("nan"), -math.inf, math.inf
    mean = d.mean().item()
    if n < 2:
        return mean, -math.inf, math.inf
    from scipy.special import stdtrit  # Student-t quantile (lighter import than scipy.stats)

    half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * d.std(unbiased=True).item() / math.sqrt(n)
    return mean, mean - half, mean + half


def block_order(arms: Sequence[str], block: int, seed: int) -> list[str]:
    """The order of ``arms`` in block ``block``: a permutation drawn from ``(seed, block)`` alone, so every process
    (and a resumed run) computes the same one."""
    gen = torch.Generator().manual_seed(mix_seed(seed, 104_729 + block))
    return [arms[i] for i in torch.randperm(len(arms), generator=gen).tolist()]


def look_schedule(min_blocks: int, max_blocks: int, growth: float = 2.0) -> list[int]:
    """Block counts at which the test looks: ``min_blocks``, then ×``growth`` (rounded up) until ``max_blocks``,
    which is always the last look."""
    if min_blocks < 2:
        raise ValueError(f"min_blocks must be >= 2 (a paired t-test needs two blocks), got {min_blocks}.")
    if max_blocks < min_blocks:
        raise ValueError(f"max_blocks ({max_blocks}) must be >= min_blocks ({min_blocks}).")
    if growth <= 1:
        raise ValueError(f"growth must be > 1, got {growth}.")
    looks = [min_blocks]
    while looks[-1] < max_blocks:
        looks.append(min(max_blocks, max(looks[-1] + 1, math.ceil(looks[-1] * growth))))
    return looks


@dataclass
class ExploreDecision:
    """Where exploration stands: ``status`` ``"exploring"``, ``"window"`` (``level`` won) or ``"random"``
    (``reason`` says why); ``levels`` holds each level's paired statistics at the last look."""

    status: str
    level: str | None = None
    reason: str = ""
    blocks: int = 0
    look: int = -1
    levels: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recheck_verdict(decision: ExploreDecision, rule: str) -> str:
    """What a finished re-check of a window (a :class:`SequentialTest` of its one level against random batches)
    means for it: ``"behind"`` (behind random with confidence: drop it under any rule), ``"not_ahead"`` (not ahead
    with confidence: drop it under ``rule="ahead"``), ``"failed"`` (the scores were not finite: drop it) or
    ``"keep"``. A re-check cut short before its test decided (``"exploring"``) is inconclusive."""
    if rule not in ("ahead", "behind"):
        raise ValueError(f"rule must be 'ahead' or 'behind', got {rule!r}.")
    if decision.status == "random" and not decision.levels:
        return "failed"
    if decision.status == "random" and not any(s.get("active") for s in decision.levels.values()):
        return "behind"
    if decision.status != "window" and rule == "ahead":
        return "not_ahead"
    return "keep"


class SequentialTest:
    """Group-sequential paired one-sided t-tests of each level against random, with successive elimination.

    Args:
        levels: the candidate level names (random is the baseline, not a level).
        alpha (`float`): the chance, over the whole exploration, of calling any level ahead of random when none
            is (split evenly over looks and levels: Bonferroni; a share above 0.5 is capped at 0.5, where the sign
            of the mean difference decides).
        min_blocks / max_blocks (`int`): the first look, and the last (the exploration budget, in blocks).
        growth (`float`): ratio between successive looks.
        max_bad_fraction (`float`): stop (random batches) when more than this fraction of blocks had a
            non-finite score.
    """

    def __init__(self, levels: Sequence[str], alpha: float = 0.05, min_blocks: int = 10, max_blocks: int = 80,
                 growth: float = 2.0, max_bad_fraction: float = 0.25) -> None:
        if not levels:
            raise ValueError("SequentialTest needs at least one level to compare with random batches.")
        if RANDOM_ARM in levels:
            raise ValueError(f"{RANDOM_ARM!r} is the baseline; do not list it among the levels.")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
        self.levels = list(levels)
        self.alpha = float(alpha)
        self.looks = look_schedule(min_blocks, max_blocks, growth)
        # a one-sided level above 0.5 would put the bound on the wrong side of the mean: cap it (the sign decides)
        self.alpha_look = min(0.5, self.alpha / (len(self.looks) * len(self.levels)))
        self.max_bad_fraction = max_bad_fraction
        self.diffs: dict[str, list[float]] = {name: [] for name in self.levels}
        self.active = list(self.levels)
        self.blocks = 0
        self.bad_blocks = 0
        self.decision = ExploreDecision("exploring")

    @property
    def arms(self) -> list[str]:
        """The arms still played in each block: random and the levels not eliminated."""
        return [RANDOM_ARM, *self.active]

    @property
    def done(self) -> bool:
        return self.decision.status != "exploring"

    def add_block(self, scores: dict[str, float]) -> ExploreDecision:
        """Add one block's scores (one per arm of :attr:`arms`) and test if this block count is a look."""
        if self.done:
            return self.decision
        missing = [a for a in self.arms if a not in scores]
        if missing:
            raise ValueError(f"block {self.blocks}: no score for arm(s) {missing}; every active arm needs one.")
        if not all(math.isfinite(scores[a]) for a in self.arms):
            self.bad_blocks += 1
            if self.bad_blocks > self.max_bad_fraction * max(self.looks[-1], 1):
                bad = sorted(a for a in self.arms if not math.isfinite(scores[a]))
                self.decision = ExploreDecision(
                    "random", reason=f"step scores were NaN/inf in {self.bad_blocks} blocks (last: {bad}); kept "
                    "random batches (check the learning rate and the data)", blocks=self.blocks)
            return self.decision
        for name in self.active:
            self.diffs[name].append(scores[name] - scores[RANDOM_ARM])
        self.blocks += 1
        if self.blocks in self.looks:
            self._look(self.looks.index(self.blocks))
        return self.decision

    def statistics(self, name: str) -> dict[str, Any]:
        """Paired statistics of one level: blocks, mean difference, its standard error, the one-sided bounds at
        the per-look level, and whether it is still played."""
        from scipy.special import stdtrit

        d = torch.tensor(self.diffs[name], dtype=torch.float64)
        n = d.numel()
        out: dict[str, Any] = {"blocks": n, "active": name in self.active,
                               "mean": d.mean().item() if n else float("nan")}
        if n < 2:
            return {**out, "se": float("inf"), "low": -math.inf, "high": math.inf}
        se = d.std(unbiased=True).item() / math.sqrt(n)
        t = float(stdtrit(n - 1, 1 - self.alpha_look))
        return {**out, "se": se, "low": out["mean"] - t * se, "high": out["mean"] + t * se,
                "t": out["mean"] / se if se > 0 else math.copysign(math.inf, out["mean"] or 1.0)}

    def _look(self, look: int) -> None:
        stats = {name: self.statistics(name) for name in self.levels}
        ahead = [(stats[n]["low"], n) for n in self.active if stats[n]["low"] > 0]
        last = look == len(self.looks) - 1
        common = {"blocks": self.blocks, "look": look, "levels": stats}
        if ahead:
            level = max(ahead)[1]
            self.decision = ExploreDecision(
                "window", level=level, reason=f"{level} ahead of random batches after {self.blocks} blocks "
                f"(one-sided bound {stats[level]['low']:.3g} > 0 at α = {self.alpha:g} over {len(self.looks)} looks "
                f"and {len(self.levels)} levels)", **common)
            return
        self.active = [n for n in self.active if not stats[n]["high"] < 0]
        for name in self.levels:
            stats[name]["active"] = name in self.active
        if not self.active:
            self.decision = ExploreDecision("random", reason=f"every level is behind random batches with "
                                            f"confidence after {self.blocks} blocks", **common)
        elif last:
            self.decision = ExploreDecision("random", reason=f"no level got ahead of random batches with "
                                            f"confidence within {self.blocks} blocks", **common)
        else:
            self.decision = ExploreDecision("exploring", **common)

    def state_dict(self) -> dict[str, Any]:
        return {"levels": self.levels, "alpha": self.alpha, "looks": self.looks, "diffs": self.diffs,
                "active": self.active, "blocks": self.blocks, "bad_blocks": self.bad_blocks,
                "decision": self.decision.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["levels"]) != self.levels or list(state["looks"]) != self.looks:
            raise ValueError(f"Cannot resume exploration: the checkpoint explored levels {state['levels']} with "
                             f"looks {state['looks']}, this run has {self.levels} / {self.looks}. Resume with the "
                             "same exploration settings.")
        self.diffs = {k: list(v) for k, v in state["diffs"].items()}
        self.active = list(state["active"])
        self.blocks, self.bad_blocks = int(state["blocks"]), int(state["bad_blocks"])
        self.decision = ExploreDecision(**state["decision"])
