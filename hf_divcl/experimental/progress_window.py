"""``batch_policy="progress"``: random batches until a diversity level measured by held-out progress per step beats
them with confidence; re-measured as the model moves (:mod:`.follower` schedules the calibrations within
``budget``, :mod:`.progress` measures and decides)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._common import global_batch_size
from ..policies.context import PolicyContext
from ..policies.registry import register_policy
from .follower import WindowFollower, schedule_progress
from .following import FollowingPolicy

__all__ = ["ProgressWindow"]


@register_policy
@dataclass
class ProgressWindow(FollowingPolicy):
    """Random batches unless a diversity level, measured during the run by the held-out gain of one optimizer step
    against paired random batches, trains better with confidence.

    Args:
        budget: the calibrations' cost cap, as a fraction of the run's training batches.
        pairs: scored batches per level, each paired with a random one (default: as many as the budget affords, 3-8).
        levels: candidate levels, e.g. ``"local:64,local:256,spread:4"`` (default: two neighbourhood sizes, one
            spread level).
        estimate: ``"first_order"`` (lr·<step direction, probe gradient>) or ``"lookahead"`` (step, probe, restore).
        confidence: a level wins only if this two-sided interval of its gain over random lies above 0.
        probe_rows: training rows held out as the probe set (0: 2 × the global batch, at most 5 % of the rows).
        sample_rows: rows encoded per calibration for candidate batches (0: 8 × the global batch).
        recalibrate_every: ``"epoch"``, a number of steps, or ``"none"``.
        recalibrate_early: also re-calibrate after this fraction of the steps (0: not).
        builder, builder_kwargs, on_infeasible: plan the window's batches once one is chosen.
        replan_chunk_rows: a window chosen mid-epoch with more rows than this left is planned in parts (the rest in a
            background thread); 0 plans it in one go.
    """

    pairs: int | None = None
    estimate: str = "first_order"
    confidence: float = 0.9
    recalibrate_every: str = "epoch"
    recalibrate_early: float = 0.1

    name = "progress"
    experimental = True
    summary = "random batches until a level measured by held-out progress per step beats them"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pairs is not None and self.pairs < 2:
            raise ValueError(f"batch_policy='progress': pairs must be >= 2 (a confidence interval needs two pairs), "
                             f"got {self.pairs}.")
        if self.estimate not in ("first_order", "lookahead"):
            raise ValueError(f"batch_policy='progress': estimate must be 'first_order' or 'lookahead', got "
                             f"{self.estimate!r}.")
        if not 0 < self.confidence < 1:
            raise ValueError(f"batch_policy='progress': confidence must be in (0, 1), got {self.confidence}.")
        if not 0 <= self.recalibrate_early < 1:
            raise ValueError(f"batch_policy='progress': recalibrate_early must be in [0, 1), got "
                             f"{self.recalibrate_early}.")
        every = str(self.recalibrate_every).strip().lower()
        if every not in ("epoch", "none") and not (every.isdigit() and int(every) > 0):
            raise ValueError(f"batch_policy='progress': recalibrate_every must be 'epoch', 'none' or a number of "
                             f"steps > 0, got {self.recalibrate_every!r}.")
        self.recalibrate_every = every

    def prepare(self, dataset: Any, args: Any) -> Any:
        dataset, self.probe_dataset, self.plan = schedule_progress(dataset, args, self, global_batch_size(args))
        return dataset

    def make_runner(self, ctx: PolicyContext) -> WindowFollower:
        return WindowFollower(ctx, self.plan, self, self.probe_dataset)

    def logs(self) -> dict[str, float]:
        return {"window_active": float(self.window is not None),
                "calibration_seconds": self.runner.seconds if self.runner is not None else 0.0}
