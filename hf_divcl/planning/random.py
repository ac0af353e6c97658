"""``random``: a uniform permutation (the baseline)."""

from __future__ import annotations

import torch

from .base import BatchBuilder
from .context import PlanContext

__all__ = ["RandomBuilder"]


class RandomBuilder(BatchBuilder):
    """Uniform random partition (the baseline; ignores the window but still reports it)."""

    name = "random"
    uses_window = False
    requires_window = False

    def assign(self, ctx: PlanContext, n_batches: int) -> torch.Tensor:
        return torch.randperm(ctx.num_rows, generator=ctx.generator)[: n_batches * ctx.batch_size].view(n_batches, -1)
