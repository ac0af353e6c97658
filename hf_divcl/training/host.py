"""What the trainer's helpers (:mod:`.recorder`, :mod:`.guards`, :mod:`.run_files`) read from the trainer, declared
as a protocol so that they never import :mod:`.trainer` (which imports them). Type-only: nothing here runs."""

from __future__ import annotations

from typing import Any, Protocol

from ..policies.context import PolicyContext

__all__ = ["TrainerHost"]


class TrainerHost(PolicyContext, Protocol):
    """``DivCLTrainer`` as its helpers see it: the batch policy's view plus the run's logger, policy, state and
    counters."""

    diversity: Any  # the DiversityLogger
    policy: Any  # the run's BatchPolicy
    state: Any  # transformers' TrainerState
    nonfinite_skipped: int
    sources: Any  # the SourceSplit of a multi-source run, else None
    step_loss: Any  # the current batch's loss

    def losses(self) -> list[Any]: ...

    def train(self, *args: Any, **kwargs: Any) -> Any: ...
