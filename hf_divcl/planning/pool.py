"""``pool`` (Pool-P): keep the best 1/P of each round of random candidate batches."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..diversity.window import measure_batches
from .base import BatchBuilder
from .context import PlanContext

__all__ = ["PoolBuilder"]


class PoolBuilder(BatchBuilder):
    """Pool-P: keep the best ``1/P`` of each round of random candidate batches; the rest go back to the pool.

    Args:
        p (`int`, *optional*, defaults to 3): candidates per kept batch.
    """

    name = "pool"

    def __init__(self, p: int = 3) -> None:
        if p < 1:
            raise ValueError(f"PoolBuilder needs p >= 1, got {p}.")
        self.p = p

    def config(self) -> dict[str, Any]:
        return {"builder": self.name, "p": self.p}

    def assign(self, ctx: PlanContext, n_batches: int) -> torch.Tensor:
        b, gen, window = ctx.batch_size, ctx.generator, ctx.window
        if window is None:
            raise ValueError("PoolBuilder aims at a window and got none; plan with builder='random' instead.")
        remaining = torch.randperm(ctx.num_rows, generator=gen)[: n_batches * b]
        kept: list[torch.Tensor] = []
        n_kept = 0
        while n_kept < n_batches:
            perm = remaining[torch.randperm(remaining.numel(), generator=gen)]
            k = perm.numel() // b
            cand = perm[: k * b].view(k, b)
            take = k if k <= self.p else math.ceil(k / self.p)
            if take < k:
                dist = window.distance(measure_batches(ctx.bank, ctx.rows[cand], window.metric))
                noise = torch.rand(k, generator=gen) * 1e-9  # random tie-break among in-window batches
                best = (dist + noise).argsort()[:take]
            else:
                best = torch.arange(k)
            kept.append(cand[best])
            n_kept += take
            mask = torch.ones(k, dtype=torch.bool)
            mask[best] = False
            remaining = cand[mask].flatten()
        return torch.cat(kept)[:n_batches]
