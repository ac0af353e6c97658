"""``window="explore"``: a :class:`DivCLTrainer` run whose first steps are the experiment.

From step 0 the sampler asks :class:`StepExplorer` for each global batch (:meth:`StepExplorer.source`): blocks of
consecutive steps hold every arm once (random batches and each candidate level, :mod:`hf_divcl.batch_policy.explore`),
a level's batch is drawn from a candidate sample of training rows embedded by the current model, a random arm's
batch is the sampler's own planned one. Each step is scored at ``on_pre_optimizer_step`` from the gradient it has
just computed, with the optimizer's preconditioner and the retrieval probe's gradient; the group-sequential test
decides after whole blocks. A window is then applied for the rest of the run (the epoch is re-planned from the
next batch not yet handed out), or the run stays on random batches with the reason.

A chosen window is re-checked as the model moves: when it was chosen at step ``s``, short re-checks start at
``2s``, ``4s``, … (while one fits before the end). A re-check is a small exploration with two arms — the window's
own planned batch and a random batch drawn from a fresh candidate sample — for up to ``recheck_blocks`` blocks,
tested as exploration is. With ``recheck_rule="ahead"`` (the default) the window stays only while it is still ahead
of random batches with confidence; with ``"behind"`` it goes only when it is behind with confidence
(:func:`~hf_divcl.batch_policy.explore.recheck_verdict`).

Cost (batch equivalents: one forward + backward of a training batch = 1, a forward alone ≈ 1/3): each
exploration refresh encodes ``S`` candidate rows (``S/(3B)``) and takes the probe gradient over ``P`` probe pairs
(``P/B``); a re-check refreshes once and encodes nothing (``P/B``); each scored step costs :data:`SCORE_COST`
(the fused score, a few passes over the parameters). :func:`plan_exploration` fits all of it within
``calibration_budget`` of the run — one refresh and the shortest exploration, then the re-checks that can follow
(at least one, or no exploration), then a longer exploration, then more refreshes. Between refreshes the probe
gradient is stale but common to every arm of a block. The seconds actually spent, by kind, are in each record's
``cost``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import TrainerCallback

from .._common import HOLD_OUT_SEED, hold_out, mix_seed, total_training_steps
from ..diversity.levels import draw_level, parse_level
from ..diversity.window import DiversityWindow, measure_diversity
from .explore import (
    RANDOM_ARM,
    SequentialTest,
    block_order,
    label_probe_loss,
    preconditioned_score,
    recheck_verdict,
    retrieval_probe_loss,
)
from .follower import ProbeEnv, calibration_sample, seeded_rows
from .progress import ProgressCalibration, default_progress_levels

if TYPE_CHECKING:
    from .host import PolicyHost

logger = logging.getLogger(__name__)

__all__ = ["EXPLORE_FILE", "RECHECK_BLOCKS", "SCORE_COST", "ExplorePlan", "StepExplorer", "explore_min_steps",
           "plan_exploration", "schedule_exploration"]

EXPLORE_FILE = "divcl_explore.jsonl"
# A scored step's extra work in batch equivalents: the fused score (preconditioned_score) over every trainable
# parameter. Measured 0.07-0.09 on MiniLM at B = 32 on CPU, 0.03-0.05 on the tiny ViT at B = 128
# (benchmarks/explore_cost.py, docs/results.md); rounded up.
SCORE_COST = 0.1
# Blocks an exploration needs, in multiples of its first look (min_blocks), and the most blocks one probe gradient
# may score. On the adapter setting of benchmarks/calibrator_power.py (30 seeds, true gains of local:32 +0.11 at
# τ = 0.5 and +0.03 at τ = 0.2) the test chose the level in 29/30 and 25/30 runs with up to 80 blocks and the probe
# refreshed every 10; in 14/30 and 6/30 with up to 40 (the trainer's plan at 1,300 steps), 13/30 with 31, 0/30
# with 10; with 80 blocks scored by one probe gradient 6/30 and 8/30 (docs/results.md).
POWER_LOOKS = 8
REFRESH_EVERY = 10
# and at most 16 × min_blocks (looks at 1, 2, 4, 8, 16 × min_blocks): budget beyond that goes to re-checks
LONGEST_LOOK = 16
# Blocks of a re-check (first look at half of them). With the rule "ahead" in the adapter setting (true gains +0.085
# and +0.03), 10 blocks dropped 24 of 29 and 17 of 21 true windows and the runs kept +0.028 and +0.005; 40 blocks
# dropped 11 and 14 and kept +0.060 and +0.009. In the paper's regime, where the chosen window hurts, both dropped
# all 6 of 6 and the runs ended alike (docs/results.md).
RECHECK_BLOCKS = 40


@dataclass
class ExplorePlan:
    """How long exploration may last and how often its probe is refreshed (``max_blocks`` 0: no exploration,
    ``reason`` says why)."""

    levels: list[str]
    probe_rows: int
    sample_rows: int
    min_blocks: int
    max_blocks: int
    refresh_blocks: int
    alpha: float
    probe_temperature: float
    total_steps: int
    cost_per_refresh: float  # batch equivalents
    reason: str = ""
    score_cost: float = SCORE_COST  # per scored step, batch equivalents
    recheck_cost: float = 0.0  # per re-check (one probe refresh and its scored steps), batch equivalents
    max_rechecks: int = 0  # re-checks the budget holds after the exploration
    planned_cost: float = 0.0  # the most the plan can spend, batch equivalents (≤ calibration_budget × steps)
    recheck_blocks: int = RECHECK_BLOCKS
    recheck_rule: str = "ahead"  # keep the window only while it is ahead with confidence; "behind": until behind
    probe: str = "retrieval"  # or "labels" (label_probe_loss over probe_label_column)
    probe_label_column: str = "label"

    @property
    def steps(self) -> list[int]:
        """Exploration starts at step 0 (empty: none)."""
        return [0] if self.max_blocks else []

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_exploration(*, total_steps: int, batch_size: int, train_rows: int, probe_rows: int, budget: float = 0.05,
                     max_fraction: float = 0.3, min_blocks: int = 10, alpha: float = 0.05,
                     levels: list[str] | None = None, sample_rows: int = 0,
                     probe_temperature: float = 0.05, recheck_blocks: int = RECHECK_BLOCKS, recheck_rule: str = "ahead",
                     probe: str = "retrieval", probe_label_column: str = "label",
                     _explain: bool = True) -> ExplorePlan:
    """Size an exploration: at most ``max_fraction`` of the steps; its scored steps, probe refreshes and the
    re-checks that can follow all within ``budget`` of the run (in batch equivalents). A run explores only when the
    budget holds ``POWER_LOOKS × min_blocks`` blocks with the probe refreshed at least every
    ``min(min_blocks, REFRESH_EVERY)`` blocks — fewer blocks or a staler probe left the test almost blind
    (docs/results.md) — and one re-check (unless ``recheck_blocks`` is 0). The rest goes to a longer exploration
    (up to ``LONGEST_LOOK × min_blocks`` blocks), then to more re-checks, then to more refreshes."""
    sample_rows = min(train_rows, sample_rows or 8 * batch_size)
    lv = levels or [x.name for x in default_progress_levels(sample_rows, batch_size)]
    lv = [x for x in lv if x != RANDOM_ARM]
    for name in lv:
        parse_level(name)  # fail early on a typo
    k = 1 + len(lv)
    per_refresh = sample_rows / (3 * batch_size) + probe_rows / batch_size
    recheck = probe_rows / batch_size + 2 * recheck_blocks * SCORE_COST
    budget_units = budget * total_steps
    block_cost = SCORE_COST * k
    stale = max(1, min(min_blocks, REFRESH_EVERY))  # the most blocks one probe gradient scores

    def cost(blocks: int) -> float:  # scoring and the refreshes it needs
        return block_cost * blocks + math.ceil(blocks / stale) * per_refresh

    need = POWER_LOOKS * min_blocks
    slots = _recheck_slots(total_steps, min_blocks * k, recheck_blocks) if recheck_blocks >= 2 else 0
    first = 1 if slots and budget_units >= cost(need) + recheck else 0  # the one re-check a window must get
    held = int(max_fraction * total_steps) // k  # blocks the run holds
    lo, hi = 0, min(held, LONGEST_LOOK * min_blocks)  # the longest exploration the rest affords
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget_units - first * recheck else (lo, mid - 1)
    max_blocks = lo
    # more re-checks only from what a longer exploration leaves: length is what gives the test its power, and the
    # first re-check dropped every harmful window in the paper's regime (docs/results.md)
    spare = budget_units - first * recheck - cost(max_blocks)
    rechecks = first + min(slots - first, max(0, math.floor(spare / recheck))) if first else 0
    left = budget_units - rechecks * recheck
    refreshes = math.floor((left - block_cost * max_blocks) / per_refresh)
    common = {"levels": lv, "probe_rows": probe_rows, "sample_rows": sample_rows, "min_blocks": min_blocks,
              "alpha": alpha, "probe_temperature": probe_temperature, "total_steps": total_steps,
              "cost_per_refresh": per_refresh, "recheck_blocks": recheck_blocks,
              "recheck_rule": recheck_rule, "probe": probe,
              "probe_label_column": probe_label_column, "recheck_cost": recheck, "max_rechecks": rechecks}
    if not lv:
        return ExplorePlan(max_blocks=0, refresh_blocks=0, reason="no candidate level to explore", **common)
    if held < need:
        steps_needed = math.ceil(need * k / max(max_fraction, 1e-9))
        return ExplorePlan(max_blocks=0, refresh_blocks=0, reason=(
            f"the run is too short to explore: {total_steps} steps at explore_max_fraction={max_fraction:g} hold "
            f"{held} blocks of {k} arms, the test needs {need} ({POWER_LOOKS} × explore_min_blocks) "
            f"(≥ {steps_needed} steps); batches stay random"), **common)
    if max_blocks < need or (slots and not rechecks):
        longer = explore_min_steps(batch_size, probe_rows, budget=budget, max_fraction=max_fraction,
                                   min_blocks=min_blocks, levels=lv, sample_rows=sample_rows,
                                   recheck_blocks=recheck_blocks) if _explain and budget > 0 else 0
        return ExplorePlan(max_blocks=0, refresh_blocks=0, reason=(
            f"the run is too short to explore within calibration_budget={budget:g}: the test needs {need} blocks "
            f"of {k} arms ({need * block_cost:.1f} batch equivalents of scoring) with the probe refreshed every "
            f"{stale} blocks ({math.ceil(need / stale)} × {per_refresh:.1f})"
            + (f" and one re-check of a chosen window {recheck:.1f}" if slots else "")
            + f", the budget affords {budget_units:.1f}" + (f" (≥ {longer:,} steps)" if longer else "")
            + "; batches stay random" + (" (explore_recheck_blocks=0 explores without re-checks)" if slots else "")),
            **common)
    refreshes = min(refreshes, max_blocks)
    refresh_blocks = max(1, min(stale, math.ceil(max_blocks / refreshes)))
    planned = block_cost * max_blocks + math.ceil(max_blocks / refresh_blocks) * per_refresh + rechecks * recheck
    return ExplorePlan(max_blocks=max_blocks, refresh_blocks=refresh_blocks, planned_cost=planned, reason=(
        f"up to {max_blocks} blocks of {k} arms ({max_blocks * k} steps), probe refreshed every {refresh_blocks} "
        f"block(s), up to {rechecks} re-check(s) of a chosen window, at most {planned:.1f} batch equivalents "
        f"({planned / max(total_steps, 1):.1%} of the run, budget {budget:.0%})"), **common)


def explore_min_steps(batch_size: int, probe_rows: int = 256, **plan_kwargs: Any) -> int:
    """The run length (in steps) from which on every run explores under :func:`plan_exploration` at this batch
    size (0: none up to 10⁶ steps). Not quite monotone near it (the block count is rounded), so the search ends
    with a scan. The README's and the usage guide's sizing line are this number at B = 32."""
    def explores(steps: int) -> bool:
        return plan_exploration(total_steps=steps, batch_size=batch_size, train_rows=10**9, probe_rows=probe_rows,
                                _explain=False, **plan_kwargs).max_blocks > 0
    steps = 16
    while not explores(steps):
        if steps > 10**6:
            return 0
        steps *= 2
    fails = [t for t in range(steps // 4, 2 * steps) if not explores(t)]
    return max(fails, default=steps // 4 - 1) + 1


def _recheck_slots(total_steps: int, first_decision: int, blocks: int) -> int:
    """How many re-checks can follow a decision at step ``first_decision`` (the earliest possible): at twice the
    step, then twice again, each while it and its ``2 · blocks`` steps fit before the end."""
    n, at = 0, 2 * first_decision
    while blocks >= 2 and at + 2 * blocks + 2 <= total_steps:
        n, at = n + 1, 2 * (at + 2 * blocks)
    return n


def schedule_exploration(dataset, args, global_batch: int):
    """``(training rows, probe rows or None, plan)`` for ``window="explore"``: size the exploration and, when one
    fits, hold out the probe rows (never trained on)."""
    n = len(dataset)
    probe = args.calibration_probe_rows or min(256, max(2, n // 10))
    rest = n - probe
    total = total_training_steps(args, rest, global_batch)
    plan = plan_exploration(
        total_steps=total, batch_size=global_batch, train_rows=max(rest, 0), probe_rows=probe,
        budget=args.calibration_budget, max_fraction=args.explore_max_fraction, min_blocks=args.explore_min_blocks,
        alpha=args.explore_alpha,
        levels=[x.strip() for x in args.calibration_levels.split(",")] if args.calibration_levels else None,
        sample_rows=args.calibration_sample_rows, probe_temperature=args.explore_probe_temperature,
        recheck_blocks=args.explore_recheck_blocks, recheck_rule=args.explore_recheck_rule, probe=args.explore_probe,
        probe_label_column=args.explore_probe_label_column)
    if plan.max_blocks and rest < max(2 * global_batch, plan.sample_rows):
        plan.max_blocks, plan.reason = 0, (f"the training set ({n} rows) is too small to hold out {probe} probe rows "
                                           f"and still draw candidate batches of {global_batch} from "
                                           f"{plan.sample_rows} rows; batches stay random")
    if not plan.max_blocks:
        logger.warning("window='explore': %s.", plan.reason)
        return dataset, None, plan
    if plan.probe == "labels":
        check_probe_labels(dataset, plan.probe_label_column)
    dataset, probe_dataset = hold_out(dataset, probe, int(args.seed) + HOLD_OUT_SEED)
    logger.info("window='explore': %d probe rows held out; %s.", probe, plan.reason)
    return dataset, probe_dataset, plan


def check_probe_labels(dataset, column: str) -> None:
    """Fail early, naming the column, when ``explore_probe="labels"`` has no label column (an unlabelled row is
    already named by the dataset validation)."""
    if column not in dataset.column_names:
        raise ValueError(f"explore_probe='labels' reads each probe row's class from column {column!r}, which the "
                         f"training set does not have (columns: {dataset.column_names}). Set "
                         "explore_probe_label_column to the label column, or use explore_probe='retrieval'.")


def probe_embeddings(trainer: PolicyHost, data) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor and positive embeddings ``(P, d)`` of the probe rows, with autograd, computed in chunks of the global
    batch size: each chunk is collated (and padded) as a training batch is, so the probe's cost is ``P/B`` training
    batches as the plan counts it, not one batch padded to the longest of all ``P`` rows."""
    n, b = len(data), max(1, trainer.global_batch_size())
    us, vs = [], []
    for lo in range(0, n, b):
        features, _ = trainer.collect_features(trainer.collate_rows(data, list(range(lo, min(lo + b, n)))))
        if len(features) < 2:
            raise ValueError("window='explore' needs (anchor, positive) pairs (or two image views) for its probe.")
        us.append(trainer.model(dict(features[0]))["sentence_embedding"])
        vs.append(trainer.model(dict(features[1]))["sentence_embedding"])
    return torch.cat(us), torch.cat(vs)


def probe_gradient(trainer: PolicyHost, params: list[torch.nn.Parameter], plan: ExplorePlan) -> list[torch.Tensor]:
    """Gradient of the probe loss over the whole probe set: :func:`retrieval_probe_loss` (anchors against all probe
    positives) or, with ``plan.probe == "labels"``, :func:`label_probe_loss`."""
    data = trainer.probe_dataset
    u, v = probe_embeddings(trainer, data)
    if plan.probe == "labels":
        _, codes = np.unique(np.asarray(data[plan.probe_label_column], dtype=object).astype(str), return_inverse=True)
        loss = label_probe_loss(u.float(), v.float(), torch.as_tensor(codes), plan.probe_temperature)
    else:
        loss = retrieval_probe_loss(u.float(), v.float(), plan.probe_temperature)
    if not bool(torch.isfinite(loss.detach())):
        raise ValueError(f"the probe loss is {loss.item()} (not finite)")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]


class StepExplorer(TrainerCallback):
    """Runs a ``window="explore"`` exploration inside training and applies its decision."""

    def __init__(self, trainer: PolicyHost, plan: ExplorePlan) -> None:
        self.trainer = trainer
        self.plan = plan
        self.test = SequentialTest(plan.levels, alpha=plan.alpha, min_blocks=plan.min_blocks,
                                   max_blocks=plan.max_blocks)
        self.blocks: list[dict[str, Any]] = []  # per block: first slot, arm order, scores by arm
        self.drawn: dict[int, list[int]] = {}  # slot → rows of a level batch handed out, not yet trained on
        self.keys: dict[tuple[int, ...], int] = {}  # a local batch's rows → its slot
        self.slot_now: int | None = None
        self.sample_rows: torch.Tensor | None = None
        self.sample_emb: torch.Tensor | None = None
        self.probe_grad: list[torch.Tensor] | None = None
        self.refreshed_at = -1
        self.preconditioner_name = ""
        self.history: list[dict[str, Any]] = []
        self.passes = {"probe_refreshes": 0, "encoded_rows": 0, "scored_steps": 0}
        self.split = {"refresh": 0.0, "draw": 0.0, "score": 0.0, "test": 0.0, "apply": 0.0}  # seconds by kind
        self.run_before = 0.0  # training wall-clock of earlier processes (a resumed run)
        self.started: float | None = None
        self.finished = False  # no experiment running (exploration over, no re-check under way)
        self.phase = "explore"  # or "recheck"
        self.level: str | None = None  # the level of the window in force
        self.next_check: int | None = None  # the step at which the next re-check starts
        self.rechecks = 0
        self.start_slot = 0  # the experiment's blocks start at or after this step
        self._params: list[torch.nn.Parameter] | None = None

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def current(self) -> ProgressCalibration | None:
        return ProgressCalibration.from_dict(self.history[-1]) if self.history else None

    def state_dict(self) -> dict[str, Any]:
        blocks = [{**b, "scores": {k: float(v) for k, v in b["scores"].items()}} for b in self.blocks]
        return {"kind": "explore", "test": self.test.state_dict(), "blocks": blocks,
                "drawn": {str(k): v for k, v in self.drawn.items()}, "history": self.history,
                "seconds": self.seconds, "passes": self.passes, "split": self.split,
                "run_seconds": self.run_seconds(), "finished": self.finished,
                "refreshed_at": self.refreshed_at, "plan": self.plan.to_dict(), "phase": self.phase,
                "level": self.level, "next_check": self.next_check, "rechecks": self.rechecks,
                "start_slot": self.start_slot}

    def state_arrays(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps beside :meth:`state_dict`: the candidate sample, its embeddings and the
        probe gradient in force (flattened), so a resumed run scores and draws exactly as the original."""
        if self.finished or self.sample_rows is None or self.probe_grad is None:
            return {}
        arrays = {"explore_sample_rows": self.sample_rows, "explore_sample_emb": self.sample_emb,
                  "explore_probe_grad": torch.cat([g.detach().reshape(-1).float().cpu() for g in self.probe_grad])}
        return {k: v for k, v in arrays.items() if v is not None}  # a re-check's sample has no embeddings

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "explore":
            raise ValueError("Cannot resume window='explore' from a checkpoint of another window policy; resume "
                             "with the checkpoint's window setting.")
        self.phase, self.level = state.get("phase", "explore"), state.get("level")
        self.next_check, self.rechecks = state.get("next_check"), int(state.get("rechecks", 0))
        self.start_slot = int(state.get("start_slot", 0))
        if self.phase == "recheck":
            self.test = self.recheck_test()
        self.test.load_state_dict(state["test"])
        self.blocks = [{**b, "scores": {k: torch.tensor(v, dtype=torch.float64) for k, v in b["scores"].items()}}
                       for b in state["blocks"]]
        self.drawn = {int(k): list(v) for k, v in state["drawn"].items()}
        self.history = list(state["history"])
        self.passes = dict(state["passes"])
        # a checkpoint from before the split by kind keeps its total as one kind
        self.split = {**self.split, **(state.get("split") or {"earlier": float(state["seconds"])})}
        self.run_before = float(state.get("run_seconds", 0.0))
        self.finished = bool(state["finished"])
        self.refreshed_at = int(state["refreshed_at"])
        saved = self.trainer.saved
        rows, emb, grad = (saved.array(f"explore_{k}") for k in ("sample_rows", "sample_emb", "probe_grad"))
        if not self.finished and (rows is None or grad is None or (emb is None and self.phase == "explore")):
            raise ValueError("Cannot resume window='explore' mid-exploration: the checkpoint lacks its arrays "
                             "(divcl_state/explore_*.npy). Resume from another checkpoint or start afresh.")
        if not self.finished:
            self.sample_rows, self.sample_emb = rows.long(), emb
            params = self.params()
            sizes = [p.numel() for p in params]
            if grad.numel() != sum(sizes):
                raise ValueError(f"Cannot resume window='explore': the saved probe gradient has {grad.numel()} "
                                 f"values, the model {sum(sizes)} trainable parameters.")
            self.probe_grad = [g.reshape(p.shape).to(device=p.device, dtype=p.dtype)
                               for g, p in zip(torch.split(grad, sizes), params, strict=True)]

    # -- the arms ------------------------------------------------------------------------------------------------

    def _block_of(self, slot: int) -> dict[str, Any] | None:
        for b in reversed(self.blocks):
            if b["start"] <= slot < b["start"] + len(b["order"]):
                return b
            if b["start"] + len(b["order"]) <= slot:
                break
        return None

    def arm_of(self, slot: int) -> tuple[dict[str, Any], str] | None:
        """The block and arm of step ``slot``, opening a new block when ``slot`` is past the last one."""
        if self.finished:
            return None
        b = self._block_of(slot)
        if b is None:
            end = self.blocks[-1]["start"] + len(self.blocks[-1]["order"]) if self.blocks else 0
            if slot < max(end, self.start_slot) or len(self.blocks) >= self.test.looks[-1] + 2:
                return None
            arms = self.test.arms
            b = {"index": len(self.blocks), "start": slot,
                 "order": block_order(arms, self.block_key(len(self.blocks)), int(self.trainer.args.seed)),
                 "scores": {}}
            self.blocks.append(b)
        return b, b["order"][slot - b["start"]]

    def source(self, epoch: int, index: int, n_batches: int, planned: torch.Tensor) -> torch.Tensor | None:
        """The sampler's hook: the rows of global batch ``index`` of ``epoch`` (``None``: the planned batch)."""
        if self.finished or self.sample_rows is None:
            return None
        ga = max(1, int(self.trainer.args.gradient_accumulation_steps))
        slot = (epoch * n_batches + index) // ga
        found = self.arm_of(slot)
        if found is None:
            return None
        arm = found[1]
        rows = planned
        planned_arm = RANDOM_ARM if self.phase == "explore" else self.level  # the arm the sampler's batch serves
        if arm != planned_arm and planned.numel() == self.trainer.global_batch_size():
            if slot not in self.drawn:
                t0 = time.perf_counter()
                gen = torch.Generator().manual_seed(mix_seed(int(self.trainer.args.seed), 7_000_003 + slot))
                if arm == RANDOM_ARM:  # a re-check's random arm: no embeddings needed
                    pick = torch.randperm(len(self.sample_rows), generator=gen)[:planned.numel()]
                else:
                    pick = draw_level(self.sample_emb, parse_level(arm), planned.numel(), 1, gen)[0]
                self.drawn[slot] = self.sample_rows[pick].tolist()
                self.spend("draw", t0)
            rows = torch.tensor(self.drawn[slot], dtype=torch.long)
        b = self.trainer.divcl_sampler.batch_size if self.trainer.divcl_sampler is not None else rows.numel()
        for i in range(0, rows.numel(), b):
            self.keys[tuple(rows[i:i + b].tolist())] = slot
        return rows

    def note(self, row_ids: torch.Tensor) -> None:
        """From the step: which slot the local batch ``row_ids`` was handed out for."""
        slot = self.keys.pop(tuple(row_ids.tolist()), None)
        self.slot_now = slot if (self.slot_now is None or self.slot_now == slot) else -1

    # -- measuring -----------------------------------------------------------------------------------------------

    def params(self) -> list[torch.nn.Parameter]:
        if self._params is None:
            self._params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        return self._params

    def refresh(self, block_index: int) -> None:
        """Draw a new candidate sample and take the probe gradient (one process; broadcast under DDP). Exploration
        embeds the sample (its levels are drawn from the embeddings); a re-check does not (its other arm is random
        batches), which saves the encoding pass."""
        t = self.trainer
        t0 = time.perf_counter()
        payload: list[Any] = [None, None, None]
        if t.is_world_process_zero():
            try:
                with ProbeEnv(t):
                    seed = mix_seed(t.args.seed, self.block_key(block_index))
                    if self.phase == "explore":
                        rows, emb = calibration_sample(t, self.plan.sample_rows, seed=seed)
                    else:
                        rows, emb = seeded_rows(len(t.train_dataset), self.plan.sample_rows, seed), None
                    grad = probe_gradient(t, self.params(), self.plan)
                payload = [rows, emb, [g.cpu() for g in grad]]
            except (ValueError, RuntimeError) as err:
                if isinstance(err, RuntimeError) and "out of memory" in str(err).lower():
                    raise
                payload = [None, None, f"{type(err).__name__}: {err}"]
        payload = self.agreed(payload)
        if isinstance(payload[2], str):
            self.finish("random", None, f"exploration failed: {payload[2]}; kept random batches", block_index)
            return
        self.sample_rows, self.sample_emb = payload[0], payload[1]
        device = self.params()[0].device
        self.probe_grad = [g.to(device) for g in payload[2]]
        self.refreshed_at = block_index
        self.passes["probe_refreshes"] += 1
        self.passes["encoded_rows"] += len(self.sample_rows) if self.sample_emb is not None else 0
        self.spend("refresh", t0)

    def spend(self, kind: str, t0: float) -> None:
        self.split[kind] += time.perf_counter() - t0

    @property
    def seconds(self) -> float:
        """Seconds spent exploring and re-checking so far, all kinds together."""
        return sum(self.split.values())

    def run_seconds(self) -> float:
        """Training wall-clock so far, this process's and earlier ones' (resumed runs), exploration included."""
        return self.run_before + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        if not self.finished and self.probe_grad is None:  # a resumed run has its own from the checkpoint
            self.refresh(self.test.blocks)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        slot, self.slot_now = self.slot_now, None
        if self.finished or slot is None or slot < 0:
            return
        t0 = time.perf_counter()
        if self.probe_grad is None:
            return
        found = self.arm_of(slot)
        if found is None:
            return
        block, arm = found
        params = self.params()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        lr = self.trainer.lr_scheduler.get_last_lr()[0] if self.trainer.lr_scheduler is not None \
            else args.learning_rate
        block["scores"][arm], self.preconditioner_name = preconditioned_score(
            self.trainer.optimizer, params, grads, self.probe_grad, float(lr))
        self.drawn.pop(slot, None)
        self.passes["scored_steps"] += 1
        self.spend("score", t0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.finished:
            if self.next_check is not None and state.global_step >= self.next_check:
                self.start_recheck(state.global_step)
            return
        t0 = time.perf_counter()
        done = [b for b in self.blocks if not b.get("tested") and len(b["scores"]) == len(b["order"])]
        for b in done:
            b["tested"] = True
            # one host sync per block; under DDP the first process's scores decide, so every process agrees
            scores = self.agreed({k: float(v) for k, v in b["scores"].items()})
            b["scores"] = {k: torch.tensor(v, dtype=torch.float64) for k, v in scores.items()}
            if args.learning_rate <= 0:
                self.finish("random", None, "the learning rate is 0: no step makes progress to compare; kept "
                            "random batches", state.global_step)
                return
            decision = self.test.add_block(scores)
            if decision.status != "exploring":
                self.spend("test", t0)
                self.conclude(decision, state.global_step)
                return
        self.spend("test", t0)
        if done and self.phase == "explore" and self.test.blocks - self.refreshed_at >= self.plan.refresh_blocks:
            self.refresh(self.test.blocks)
        if len(self.blocks) > self.test.looks[-1] + 1 and not self.finished:
            self.conclude(self.test.decision, state.global_step)

    # -- re-checks -----------------------------------------------------------------------------------------------

    def block_key(self, index: int) -> int:
        """A block's key for its arm order and candidate sample: exploration's blocks count from 0, each re-check's
        from its own offset, so no two blocks of a run share one."""
        return index + 1_000_003 * self.rechecks

    def recheck_test(self) -> SequentialTest:
        n = self.plan.recheck_blocks
        return SequentialTest([self.level], alpha=self.plan.alpha, min_blocks=max(2, n // 2), max_blocks=n)

    def next_slot(self) -> int:
        """The first step whose batches the sampler has not handed out yet (the same on every process)."""
        sampler = self.trainer.divcl_sampler
        ga = max(1, int(self.trainer.args.gradient_accumulation_steps))
        plan = sampler.plan()
        return self.agreed(-(-(sampler.epoch * len(plan.batches) + sampler.yielded_global()) // ga))

    def schedule_recheck(self, step: int) -> None:
        """The next re-check at twice ``step``, if it and its blocks fit before the run ends."""
        n = self.plan.recheck_blocks
        at = max(2 * step, step + 1)
        fits = n >= 2 and at + 2 * n + 2 <= self.plan.total_steps and self.rechecks < self.plan.max_rechecks
        self.next_check = at if fits and self.level is not None and self.trainer.divcl_sampler is not None else None

    def start_recheck(self, step: int) -> None:
        """Open a re-check of the window in force: two arms (its planned batch, a random batch from a fresh
        candidate sample) from the next step whose batches are not handed out yet."""
        self.rechecks += 1
        self.phase = "recheck"
        self.next_check = None
        self.test = self.recheck_test()
        self.blocks, self.finished = [], False
        self.drawn.clear()
        self.keys.clear()
        self.start_slot = self.next_slot()
        logger.info("window='explore': re-check %d of the window (%s) from step %d, up to %d blocks.",
                    self.rechecks, self.level, self.start_slot, self.plan.recheck_blocks)
        self.refresh(0)

    def end_recheck(self, decision, step: int) -> None:
        """Revert to random batches when the window is behind with confidence (``recheck_rule="behind"``) or not
        ahead with confidence (``"ahead"``); keep it otherwise."""
        stats = self.test.statistics(self.level)
        head = (f"re-check {self.rechecks} at step {step} ({self.test.blocks} blocks, window − random "
                f"{stats['mean']:.3g}, one-sided bounds [{stats['low']:.3g}, {stats['high']:.3g}])")
        verdict = recheck_verdict(decision, self.plan.recheck_rule)
        why = {"behind": "fell behind random batches with confidence",
               "not_ahead": "is no longer ahead of random batches with confidence (explore_recheck_rule='ahead')",
               "failed": f"could not be re-checked ({decision.reason})"}
        if verdict != "keep":
            self.finish("random", None, f"{head}: the window ({self.level}) {why[verdict]}; back to random batches",
                        step, levels=decision.levels, estimate="recheck")
            return
        kept = "ahead of random batches" if decision.status == "window" else "not behind random batches with confidence"
        self.finish("window", self.current.window, f"{head}: the window is {kept}; kept", step,
                    self.level, levels=decision.levels, estimate="recheck", apply=False)

    # -- the decision --------------------------------------------------------------------------------------------

    def agreed(self, value: Any) -> Any:
        """``value`` as the first process has it (broadcast under DDP; every process calls this at the same point)."""
        if self.trainer.args.world_size > 1 and torch.distributed.is_available() and \
                torch.distributed.is_initialized():
            payload = [value]
            torch.distributed.broadcast_object_list(payload, src=0)
            return payload[0]
        return value

    def level_diversity(self, level: str) -> torch.Tensor | None:
        """Effective rank ``(16,)`` of batches drawn at ``level`` from the current candidate sample (``None`` when
        the sample has no embeddings: a re-check's)."""
        if self.sample_emb is None:
            return None
        gen = torch.Generator().manual_seed(mix_seed(int(self.trainer.args.seed), 99_991))
        idx = draw_level(self.sample_emb, parse_level(level), self.trainer.global_batch_size(), 16, gen)
        return measure_diversity(self.sample_emb[idx], "effective_rank")

    def conclude(self, decision, step: int) -> None:
        if self.phase == "recheck":
            self.end_recheck(decision, step)
            return
        window = None
        if decision.status == "window" and self.sample_emb is not None:
            values = self.level_diversity(decision.level)
            lo, hi = torch.quantile(values, 0.05).item(), torch.quantile(values, 0.95).item()
            window = DiversityWindow(min(lo, hi), max(lo, hi), "effective_rank")
        status = "window" if window is not None else "random"
        reason = decision.reason or "exploration ended without a decision; kept random batches"
        self.finish(status, window, reason, step, decision.level if window is not None else None,
                    levels=decision.levels)

    def finish(self, status: str, window: DiversityWindow | None, reason: str, step: int, level: str | None = None,
               levels: dict[str, Any] | None = None, estimate: str = "explore", apply: bool = True) -> None:
        """Record the outcome of the exploration or re-check, apply it (``apply``: re-plan the epoch from the next
        batch not handed out) and schedule the next re-check while a window is in force."""
        t = self.trainer
        self.finished = True
        self.drawn.clear()
        self.keys.clear()
        diversity = {name: None if (d := self.level_diversity(name)) is None else d.mean().item()
                     for name in [RANDOM_ARM, *(levels or {})]}
        rows = [{"level": name, "metric": diversity[name], "gain_vs_random": s.get("mean", float("nan")),
                 "ci_low": s.get("low", -math.inf), "ci_high": s.get("high", math.inf), "blocks": s.get("blocks", 0),
                 "active": s.get("active", False)} for name, s in (levels or {}).items()]
        cal = ProgressCalibration(status, window, level, reason, temperature=float(t.args.temperature),
                                  batch_size=t.global_batch_size(), estimate=estimate, confidence=1 - self.plan.alpha,
                                  n_pairs=self.test.blocks, step=step, levels=rows,
                                  random_metric=diversity[RANDOM_ARM] or float("nan"))
        before = self.history[-1]["cost"].get("seconds", 0.0) if self.history else 0.0
        record = cal.to_dict()
        self.history.append(record)  # in force before it is applied: the run files read it
        if apply:
            t0 = time.perf_counter()
            sampler = t.divcl_sampler
            replan = window is not None or self.phase == "recheck"
            cut = self.agreed(sampler.yielded_global() if sampler is not None and replan else None)
            t.apply_window(window, cut=cut)
            self.spend("apply", t0)
        else:
            t.record_policy()  # the window stays: only its record is new
        run = self.run_seconds()
        record["cost"] = {"seconds": self.seconds, **{k: float(v) for k, v in self.passes.items()},
                          **{f"{k}_seconds": v for k, v in self.split.items()}, "run_seconds": run,
                          "fraction_of_run": self.seconds / run if run > 0 else None,
                          "preconditioner": self.preconditioner_name}
        record["wall_seconds"] = self.seconds - before  # what this exploration or re-check cost
        self.level = level if window is not None else None
        self.schedule_recheck(step)
        logger.warning("window='explore' at step %d after %d blocks: %s — %s", step, self.test.blocks,
                       f"window {window.metric} in [{window.low:.2f}, {window.high:.2f}] ({level})" if window
                       else "random batches", reason)
        if t.is_world_process_zero():
            Path(t.args.output_dir).mkdir(parents=True, exist_ok=True)
            with open(os.path.join(t.args.output_dir, EXPLORE_FILE), "a") as fh:
                fh.write(json.dumps({**record, "blocks": [{"start": b["start"], "order": b["order"],
                                                           "scores": {k: float(v) for k, v in b["scores"].items()}}
                                                          for b in self.blocks]}) + "\n")
