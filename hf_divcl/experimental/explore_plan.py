"""``batch_policy="explore"``'s budget: how long a run may explore, how often its probe is refreshed and how many
re-checks follow, all within ``budget`` of the run (pure arithmetic, no model).

Cost (batch equivalents: one forward + backward of a training batch = 1, a forward alone ≈ 1/3): each
exploration refresh encodes ``S`` candidate rows (``S/(3B)``) and takes the probe gradient over ``P`` probe pairs
(``P/B``); a re-check refreshes once and encodes nothing (``P/B``); each scored step costs :data:`SCORE_COST`
(the fused score, a few passes over the parameters). :func:`plan_exploration` fits all of it within the budget —
one refresh and the shortest exploration, then the re-checks that can follow (at least one, or no exploration),
then a longer exploration, then more refreshes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from .._common import HOLD_OUT_SEED, hold_out, total_training_steps
from ..diversity.levels import parse_level
from .cost import SCORE_COST, recheck_cost, refresh_cost
from .progress import default_progress_levels
from .sequential import RANDOM_ARM

logger = logging.getLogger(__name__)

__all__ = ["EXPLORE_FILE", "RECHECK_BLOCKS", "ExplorePlan", "check_probe_labels", "explore_min_steps",
           "plan_exploration", "schedule_exploration"]

EXPLORE_FILE = "divcl_explore.jsonl"
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
    planned_cost: float = 0.0  # the most the plan can spend, batch equivalents (≤ budget × steps)
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
    per_refresh = refresh_cost(sample_rows, probe_rows, batch_size)
    recheck = recheck_cost(probe_rows, batch_size, recheck_blocks)
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
            f"the run is too short to explore: {total_steps} steps at max_fraction={max_fraction:g} hold "
            f"{held} blocks of {k} arms, the test needs {need} ({POWER_LOOKS} × min_blocks) "
            f"(≥ {steps_needed} steps); batches stay random"), **common)
    if max_blocks < need or (slots and not rechecks):
        longer = explore_min_steps(batch_size, probe_rows, budget=budget, max_fraction=max_fraction,
                                   min_blocks=min_blocks, levels=lv, sample_rows=sample_rows,
                                   recheck_blocks=recheck_blocks) if _explain and budget > 0 else 0
        return ExplorePlan(max_blocks=0, refresh_blocks=0, reason=(
            f"the run is too short to explore within budget={budget:g}: the test needs {need} blocks "
            f"of {k} arms ({need * block_cost:.1f} batch equivalents of scoring) with the probe refreshed every "
            f"{stale} blocks ({math.ceil(need / stale)} × {per_refresh:.1f})"
            + (f" and one re-check of a chosen window {recheck:.1f}" if slots else "")
            + f", the budget affords {budget_units:.1f}" + (f" (≥ {longer:,} steps)" if longer else "")
            + "; batches stay random" + (" (recheck_blocks=0 explores without re-checks)" if slots else "")),
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


def schedule_exploration(dataset, args, settings, global_batch: int):
    """``(training rows, probe rows or None, plan)`` for ``batch_policy="explore"``: size the exploration and, when one
    fits, hold out the probe rows (never trained on)."""
    n = len(dataset)
    s = settings
    probe = s.probe_rows or min(256, max(2, n // 10))
    rest = n - probe
    total = total_training_steps(args, rest, global_batch)
    plan = plan_exploration(
        total_steps=total, batch_size=global_batch, train_rows=max(rest, 0), probe_rows=probe,
        budget=s.budget, max_fraction=s.max_fraction, min_blocks=s.min_blocks, alpha=s.alpha, levels=s.level_list(),
        sample_rows=s.sample_rows, probe_temperature=s.probe_temperature, recheck_blocks=s.recheck_blocks,
        recheck_rule=s.recheck_rule, probe=s.probe, probe_label_column=s.probe_label_column)
    if plan.max_blocks and rest < max(2 * global_batch, plan.sample_rows):
        plan.max_blocks, plan.reason = 0, (f"the training set ({n} rows) is too small to hold out {probe} probe rows "
                                           f"and still draw candidate batches of {global_batch} from "
                                           f"{plan.sample_rows} rows; batches stay random")
    if not plan.max_blocks:
        logger.warning("batch_policy='explore': %s.", plan.reason)
        return dataset, None, plan
    if plan.probe == "labels":
        check_probe_labels(dataset, plan.probe_label_column)
    dataset, probe_dataset = hold_out(dataset, probe, int(args.seed) + HOLD_OUT_SEED)
    logger.info("batch_policy='explore': %d probe rows held out; %s.", probe, plan.reason)
    return dataset, probe_dataset, plan


def check_probe_labels(dataset, column: str) -> None:
    """Fail early, naming the column, when ``probe="labels"`` has no label column (an unlabelled row is
    already named by the dataset validation)."""
    if column not in dataset.column_names:
        raise ValueError(f"batch_policy='explore' with probe='labels' reads each probe row's class from column "
                         f"{column!r}, which the training set does not have (columns: {dataset.column_names}). Set "
                         "probe_label_column to the label column, or use probe='retrieval'.")
