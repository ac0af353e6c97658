"""``BatchBuilder``: the strategy interface every builder implements."""

from __future__ import annotations

from typing import Any

import torch

from .context import PlanContext

__all__ = ["BatchBuilder"]


class BatchBuilder:
    """Base class: split positions ``0..M-1`` of ``ctx.rows`` into ``n_batches`` full batches."""

    name = "base"
    uses_window = True  # aims batches at the window (and is measured against it)
    requires_window = True  # cannot plan without one

    def assign(self, ctx: PlanContext, n_batches: int) -> torch.Tensor:  # (n_batches, B) long
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"builder": self.name}
