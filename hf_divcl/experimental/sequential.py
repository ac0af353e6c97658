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
    "label_probe_loss",
    "look_schedule",
    "preconditioned_score",
    "preconditioner",
    "recheck_verdict",
    "retrieval_probe_loss",
    "step_score",
]

RANDOM_ARM = "random"


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


def retrieval_probe_loss(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Retrieval loss over a whole probe set: each anchor ``(P, d)`` against *all* ``P`` positives ``(P, d)``
    (cross-entropy of the true positive's rank-softmax at ``temperature``); rows are L2-normalised here.

    With ``P`` in the hundreds this is a smooth stand-in for ranking a corpus (what ndcg@k / k-NN evaluate),
    unlike InfoNCE over ``B`` random in-batch negatives. Returns a 0-dim tensor.
    """
    u = torch.nn.functional.normalize(anchors, dim=-1)
    v = torch.nn.functional.normalize(positives, dim=-1)
    logits = u @ v.T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))


def label_probe_loss(anchors: torch.Tensor, positives: torch.Tensor, labels: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Soft k-NN loss over a labelled probe set: anchor ``i`` ``(P, d)`` against the positives of every *other* probe
    row ``(P, d)``; the loss is ``−log`` of the softmax mass (at ``temperature``) on rows sharing its label
    ``(P,)``, averaged over anchors that have such a row. Rows are L2-normalised here. Returns a 0-dim tensor.

    This is what k-NN classification rewards (neighbours of the same class), unlike instance retrieval
    (:func:`retrieval_probe_loss`), which also rewards pushing apart two images of one class.
    """
    u = torch.nn.functional.normalize(anchors, dim=-1)
    v = torch.nn.functional.normalize(positives, dim=-1)
    n = u.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per probe row), got {tuple(labels.shape)}.")
    other = ~torch.eye(n, dtype=torch.bool, device=u.device)
    same = (labels[:, None] == labels[None, :]).to(u.device) & other
    has = same.any(dim=1)
    if not bool(has.any()):
        raise ValueError("the label probe needs at least two probe rows of one label; every label occurs once.")
    logits = (u @ v.T / temperature).masked_fill(~other, float("-inf"))
    pos = logits.masked_fill(~same, float("-inf")).logsumexp(dim=1)
    return (logits.logsumexp(dim=1) - pos)[has].mean()


def preconditioner(optimizer, params: Sequence[torch.nn.Parameter],
                   grads: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor] | None, str]:
    """The factor the optimizer will apply to each gradient this step, and its name.

    Adam-family (``exp_avg_sq`` in the state or a fresh Adam): ``1/(√v̂_t + ε)`` with ``v_t`` already updated by
    this step's gradient and bias-corrected — at the first step this makes the direction ``sign(g)``, as Adam's.
    Anything else (SGD, Adafactor without ``exp_avg_sq``…): ``None`` = the identity (the step is ``lr·g``, up to
    momentum, which is common to every arm of a block).
    """
    states = _adam_states(optimizer, params)
    if states is None:
        return None, "identity"
    out = []
    for (sq, beta2, eps, step), g in zip(states, grads, strict=True):
        v = sq * beta2 + (1 - beta2) * g * g if sq is not None else (1 - beta2) * g * g
        out.append(1.0 / ((v / (1 - beta2 ** (float(step) + 1))).sqrt() + eps))
    return out, "adam"


def step_score(grads: Sequence[torch.Tensor], precond: Sequence[torch.Tensor] | None,
               probe_grad: Sequence[torch.Tensor], lr: float) -> torch.Tensor:
    """``lr·⟨P(g), ∇L_probe⟩`` as a 0-dim float64 tensor on the gradients' device (no host sync): the drop of the
    probe loss the step would buy, to first order."""
    terms = []
    for i, (g, q) in enumerate(zip(grads, probe_grad, strict=True)):
        d = g if precond is None else g * precond[i]
        terms.append((d.double() * q.double()).sum())
    return lr * torch.stack(terms).sum()


def preconditioned_score(optimizer, params: Sequence[torch.nn.Parameter], grads: Sequence[torch.Tensor],
                         probe_grad: Sequence[torch.Tensor], lr: float) -> tuple[torch.Tensor, str]:
    """``step_score(grads, preconditioner(optimizer, params, grads)[0], probe_grad, lr)`` and the preconditioner's
    name, without materialising the preconditioner or float64 copies: per parameter one scratch tensor and five
    passes over it (``v``, its root, ``+ε``, ``q/·``, the dot with ``g``), each tensor's dot in its own dtype, summed
    in float64. No host sync. This is the explorer's per-step cost, so it must stay a small fraction of a step."""
    states = _adam_states(optimizer, params)
    scales = None if states is None else _bias_scales(states)
    terms = []
    for i, (g, q) in enumerate(zip(grads, probe_grad, strict=True)):
        dtype = torch.promote_types(g.dtype, q.dtype)
        g, q = g.reshape(-1).to(dtype), q.reshape(-1).to(dtype)
        if scales is None:
            terms.append(torch.dot(g, q).double())
            continue
        sq, beta2 = states[i][:2]
        # √(v_t/bias) + ε = √(c/bias) · (√w + ε·s) with s = √(bias/c), w = sq + g²·(1-β2)/β2 and c = β2 (w = g²,
        # c = 1-β2 without a second moment yet): five passes, the factor 1/s applied to the tensor's dot at the end
        if sq is not None:
            w = torch.addcmul(sq.reshape(-1).to(dtype), g, g, value=(1 - beta2) / beta2)
        else:
            w = torch.mul(g, g)
        scale, eps_scale = scales[i]
        w.sqrt_().add_(eps_scale)
        torch.div(q, w, out=w)
        terms.append(torch.dot(g, w).double() * scale)
    return lr * torch.stack(terms).sum(), "identity" if states is None else "adam"


def _bias_scales(states: list[tuple[Any, float, float, Any]]) -> list[tuple[Any, Any]]:
    """``(s, ε·s)`` per parameter with ``s = √(bias_t / c)``, ``bias_t = 1 − β2^(t+1)``, ``c = β2`` with a second
    moment (``1 − β2`` without). Adam keeps ``t`` as a tensor, on the parameter's device when fused or capturable
    (the Trainer's default ``adamw_torch_fused``): reading it per parameter would be one host sync each, so tensor
    steps are stacked per ``(β2, c, ε)`` and the factors stay 0-dim float64 tensors on that device."""
    out: list[tuple[Any, Any]] = [(0.0, 0.0)] * len(states)
    groups: dict[tuple[float, float, float, bool], list[int]] = {}
    for i, (sq, beta2, eps, step) in enumerate(states):
        key = (beta2, beta2 if sq is not None else 1 - beta2, eps, isinstance(step, torch.Tensor))
        groups.setdefault(key, []).append(i)
    for (beta2, c, eps, tensor), idx in groups.items():
        if tensor and len({states[i][3].device for i in idx}) == 1:
            t = torch.stack([states[i][3].reshape(()) for i in idx]).double()
            scale = ((1 - torch.pow(beta2, t + 1)) / c).sqrt()
            pairs = zip(scale.unbind(), (eps * scale).unbind(), strict=True)
        else:
            values = [math.sqrt((1 - beta2 ** (float(states[i][3]) + 1)) / c) for i in idx]
            pairs = ((v, eps * v) for v in values)
        for i, pair in zip(idx, pairs, strict=True):
            out[i] = pair
    return out


def _adam_states(optimizer, params: Sequence[torch.nn.Parameter]) -> list[tuple[Any, float, float, Any]] | None:
    """Per parameter ``(exp_avg_sq or None, β2, ε, step)`` of an Adam-family optimizer, ``step`` as the optimizer
    keeps it (a number, or a 0-dim tensor, possibly on the parameter's device: never read here); ``None`` when any
    parameter has no second moment (the identity preconditioner, as :func:`preconditioner`)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    if inner is None:
        return None
    adam = "betas" in inner.defaults and "eps" in inner.defaults
    groups = {id(p): gr for gr in inner.param_groups for p in gr["params"]}
    out = []
    for p in params:
        st = inner.state.get(p, {})
        if "exp_avg_sq" not in st and not (adam and not st):
            return None
        group = groups.get(id(p), inner.defaults)
        out.append((st.get("exp_avg_sq"), group.get("betas", (0.9, 0.999))[1], group.get("eps", 1e-8),
                    st.get("step", 0.0)))
    return out


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
