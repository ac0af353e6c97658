"""What ``batch_policy="progress"`` and ``"explore"`` share: both start on random batches, hand the decision to a
runner (a ``TrainerCallback``: :class:`~hf_divcl.experimental.follower.WindowFollower`,
:class:`~hf_divcl.experimental.explorer.StepExplorer`) that switches the sampler to a window mid-run, and keep that
decision across a resume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..diversity.levels import parse_level
from ..policies.base import BatchPolicy, SamplerSetup
from ..policies.context import PolicyContext
from ..policies.window import check_builder, check_on_infeasible

__all__ = ["FollowingPolicy", "level_names"]


def level_names(levels: str | list[str] | None) -> list[str] | None:
    """Candidate levels from ``"local:64,spread:4"`` or a list; ``None`` for the defaults."""
    if not levels:
        return None
    names = [x.strip() for x in levels.split(",")] if isinstance(levels, str) else [str(x).strip() for x in levels]
    for name in names:
        parse_level(name)  # fail now, naming the level
    return names


@dataclass
class FollowingPolicy(BatchPolicy):
    """What ``"progress"`` and ``"explore"`` share: start on random batches, switch to a window the runner chose (its
    decision survives a resume), describe the decision.

    Args (shared):
        budget: the cap on what measuring costs, as a fraction of the run's training batches.
        levels: candidate levels, e.g. ``"local:64,local:256,spread:4"`` (default: two neighbourhood sizes, one
            spread level); random batches are always the baseline.
        probe_rows: training rows held out as the probe set (0: automatic).
        sample_rows: rows encoded per measurement to draw candidate batches from (0: 8 × the global batch).
        builder, builder_kwargs, on_infeasible: plan the window's batches once one is chosen.
        replan_chunk_rows: a window chosen mid-epoch with more rows than this left is planned in parts (the rest in a
            background thread); 0 plans it in one go.
    """

    budget: float = 0.05
    levels: str | list[str] | None = None
    probe_rows: int = 0
    sample_rows: int = 0
    builder: str = "greedy"
    builder_kwargs: dict[str, Any] | None = None
    on_infeasible: str = "closest"
    replan_chunk_rows: int = 65_536

    runner: ClassVar[Any] = None  # the WindowFollower / StepExplorer of this run (set per instance)
    plan: ClassVar[Any] = None  # what the runner may spend, planned before training
    probe_dataset: ClassVar[Any] = None  # the held-out probe rows

    def level_list(self) -> list[str] | None:
        return level_names(self.levels)

    def __post_init__(self) -> None:
        check_builder(self.builder, self.name)
        check_on_infeasible(self.on_infeasible, self.name)
        if not 0 <= self.budget <= 1:
            raise ValueError(f"batch_policy={self.name!r}: budget must be in [0, 1], got {self.budget}.")
        if self.probe_rows and self.probe_rows < 2:
            raise ValueError(f"batch_policy={self.name!r}: probe_rows must be 0 (automatic) or >= 2 (a contrastive "
                             f"loss needs two pairs), got {self.probe_rows}.")
        if int(self.replan_chunk_rows) < 0:
            raise ValueError(f"batch_policy={self.name!r}: replan_chunk_rows must be >= 0 (0: re-plan the rest of an "
                             f"epoch in one go), got {self.replan_chunk_rows}.")
        self.level_list()

    @property
    def window(self):
        current = self.runner.current if self.runner is not None else None
        return current.window if current is not None and current.decision == "window" else None

    def callbacks(self, ctx: PolicyContext) -> list[Any]:
        if self.plan is not None and self.plan.steps:
            self.runner = self.make_runner(ctx)
            return [self.runner]
        return []

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.runner is not None:
            self.runner.load_state_dict(state)

    def state_dict(self) -> dict[str, Any] | None:
        return self.runner.state_dict() if self.runner is not None else None

    def state_arrays(self) -> dict[str, Any]:
        return getattr(self.runner, "state_arrays", dict)()

    def start(self, ctx: PolicyContext, dataset: Any, batch_size: int, seed: int) -> SamplerSetup:
        window = self.window  # a resumed run continues with its last decision
        bank = ctx.build_bank(dataset) if window is not None or ctx.user_bank is not None else None
        return SamplerSetup(self.builder if window is not None else "random", window, self.builder_kwargs, bank=bank,
                            logged_window=window, on_infeasible=self.on_infeasible,
                            replan_chunk_rows=int(self.replan_chunk_rows))

    def describe(self, ctx: PolicyContext) -> dict[str, Any]:
        current = self.runner.current if self.runner is not None else None
        plan = self.plan
        if current is not None:
            reason = current.reason
        elif plan is not None and not plan.steps:
            reason = plan.reason
        else:
            reason = "exploring" if self.name == "explore" else "not calibrated yet"
        return {"decision": current.decision if current is not None else "random", "reason": reason,
                "calibration_plan": plan.to_dict() if plan else None,
                "calibrations": len(self.runner.history) if self.runner is not None else 0}
