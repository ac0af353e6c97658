"""``batch_policy="explore"``: the first training steps are the experiment — blocks of steps on random batches and
each candidate level, each step scored from its own gradient on a retrieval probe, decided by a group-sequential
test; a chosen window is re-checked as the model moves (:mod:`.explore_plan` sizes it, :mod:`.explorer` runs it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._common import global_batch_size
from ..policies.context import PolicyContext
from ..policies.registry import register_policy
from .explore_plan import RECHECK_BLOCKS, schedule_exploration
from .explorer import StepExplorer
from .following import FollowingPolicy

__all__ = ["ExploreWindow"]


@register_policy
@dataclass
class ExploreWindow(FollowingPolicy):
    """The first steps explore random batches against candidate diversity levels; a level is kept only when it is
    ahead with confidence (and while it stays so at its re-checks).

    Args:
        budget: everything exploring can spend (scored steps, re-checks, probe refreshes), as a fraction of the run.
        alpha: chance of a false window over the whole exploration.
        max_fraction: the largest fraction of the run's steps spent exploring.
        min_blocks: blocks before the test's first look; a run explores only when its budget holds 8 × this many
            blocks with the probe refreshed at least every ``min(min_blocks, 10)`` blocks.
        probe_temperature: temperature of the retrieval probe.
        probe: ``"retrieval"`` (each probe anchor against all probe positives) or ``"labels"`` (a soft k-NN over the
            probe rows' labels in ``probe_label_column``).
        probe_label_column: ``probe="labels"``: the column holding each row's class.
        recheck_blocks: re-check a chosen window against random batches at 2s, 4s… for up to this many blocks (0:
            never).
        recheck_rule: ``"ahead"`` (keep the window only while it is ahead with confidence) or ``"behind"`` (drop it
            only when it is behind with confidence).
        levels, probe_rows, sample_rows: candidate levels, probe rows (0: min(256, 10 %)), candidate sample (0: 8 B).
        builder, builder_kwargs, on_infeasible, replan_chunk_rows: as for ``batch_policy="progress"``.
    """

    alpha: float = 0.05
    max_fraction: float = 0.3
    min_blocks: int = 10
    probe_temperature: float = 0.05
    probe: str = "retrieval"
    probe_label_column: str = "label"
    recheck_blocks: int = RECHECK_BLOCKS
    recheck_rule: str = "ahead"

    name = "explore"
    experimental = True
    summary = "the first training steps explore diversity levels against random batches, a sequential test decides"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.alpha < 1:
            raise ValueError(f"batch_policy='explore': alpha must be in (0, 1), got {self.alpha}.")
        if not 0 < self.max_fraction <= 1:
            raise ValueError(f"batch_policy='explore': max_fraction must be in (0, 1], got {self.max_fraction}.")
        if self.min_blocks < 2:
            raise ValueError(f"batch_policy='explore': min_blocks must be >= 2 (a paired test needs two blocks), got "
                             f"{self.min_blocks}.")
        if self.recheck_rule not in ("ahead", "behind"):
            raise ValueError(f"batch_policy='explore': recheck_rule must be 'ahead' or 'behind', got "
                             f"{self.recheck_rule!r}.")
        if self.probe not in ("retrieval", "labels"):
            raise ValueError(f"batch_policy='explore': probe must be 'retrieval' or 'labels', got {self.probe!r}.")
        if self.recheck_blocks < 0 or self.recheck_blocks == 1:
            raise ValueError(f"batch_policy='explore': recheck_blocks must be 0 (no re-checks) or >= 2 (a paired test "
                             f"needs two blocks), got {self.recheck_blocks}.")
        if not self.probe_temperature > 0:
            raise ValueError(f"batch_policy='explore': probe_temperature must be > 0, got {self.probe_temperature}.")

    def prepare(self, dataset: Any, args: Any) -> Any:
        dataset, self.probe_dataset, self.plan = schedule_exploration(dataset, args, self, global_batch_size(args))
        return dataset

    def make_runner(self, ctx: PolicyContext) -> StepExplorer:
        return StepExplorer(ctx, self.plan, self.builder, self.probe_dataset)

    def attach(self, sampler: Any) -> None:
        if self.runner is not None:
            sampler.batch_source = self.runner.source

    def on_batch(self, row_ids) -> None:
        if self.runner is not None and not self.runner.finished:
            self.runner.note(row_ids)
