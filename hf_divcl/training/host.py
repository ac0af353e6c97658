"""What the trainer's helpers (:mod:`.recorder`, :mod:`.guards`, :mod:`.run_files`) read from the trainer, declared
as a protocol so that they never import :mod:`.trainer` (which imports them). Type-only: nothing here runs."""

from __future__ import annotations

from typing import Any, Protocol

from ..batch_policy.host import PolicyHost

__all__ = ["TrainerHost"]


class TrainerHost(PolicyHost, Protocol):
    """``DivCLTrainer`` as its helpers see it: the batch policy's view plus the run's logger, selector, state and
    counters."""

    diversity: Any  # the DiversityLogger
    selector: Any
    state: Any  # transformers' TrainerState
    calibration_plan: Any
    nonfinite_skipped: int

    def train(self, *args: Any, **kwargs: Any) -> Any: ...
