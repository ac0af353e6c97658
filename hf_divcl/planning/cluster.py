"""``cluster`` (TAS-Balanced-like): batches made of k-means cluster segments."""

from __future__ import annotations

from typing import Any

import torch

from ..diversity.window import measure_batches
from .base import BatchBuilder
from .context import PlanContext
from .sketch import kmeans

__all__ = ["ClusterBuilder"]


class ClusterBuilder(BatchBuilder):
    """TAS-Balanced-like: batches made of ``c`` cluster segments, ``c`` chosen on the data to hit the window.

    Args:
        n_clusters (`int`, *optional*): k-means clusters (default ``clamp(M / (4B), 2, 1024)``).
        clusters_per_batch (`int`, *optional*): fix ``c`` (a divisor of B) instead of choosing it from the window;
            without a window the default is 1 (one cluster per batch, as TAS-Balanced).
        sketch_dim (`int`, *optional*, defaults to 32): k-means runs in the PCA sketch.
        kmeans_backend (`str`, *optional*, defaults to `"torch"`): ``"torch"`` or ``"faiss"`` (see
            :func:`~hf_divcl.planning.sketch.kmeans`); recorded in the plan's config.
    """

    name = "cluster"
    requires_window = False  # without a window: one cluster per batch, as TAS-Balanced

    def __init__(self, n_clusters: int | None = None, clusters_per_batch: int | None = None,
                 sketch_dim: int = 32, kmeans_backend: str = "torch") -> None:
        self.n_clusters, self.clusters_per_batch, self.sketch_dim = n_clusters, clusters_per_batch, sketch_dim
        self.kmeans_backend = kmeans_backend
        self.chosen_c: int | None = None

    def config(self) -> dict[str, Any]:
        return {"builder": self.name, "n_clusters": self.n_clusters, "clusters_per_batch": self.chosen_c,
                "sketch_dim": self.sketch_dim, "kmeans_backend": self.kmeans_backend}

    @staticmethod
    def _mix(order: torch.Tensor, n_batches: int, b: int, c: int, gen: torch.Generator) -> torch.Tensor:
        segs = order[: n_batches * b].view(n_batches * c, b // c)
        return segs[torch.randperm(n_batches * c, generator=gen)].view(n_batches, b)

    def assign(self, ctx: PlanContext, n_batches: int) -> torch.Tensor:
        b, gen = ctx.batch_size, ctx.generator
        ctx.sketch_dim = self.sketch_dim
        m = ctx.num_rows
        k = self.n_clusters or int(min(1024, max(2, m // (4 * b))))
        labels = kmeans(ctx.sketch, k, gen, iters=8, backend=self.kmeans_backend)
        # rows sorted by cluster, random within a cluster
        order = torch.argsort(labels.double() + torch.rand(m, generator=gen, dtype=torch.float64) * 0.5)
        divisors = [c for c in range(1, b + 1) if b % c == 0]
        if self.clusters_per_batch is not None:
            if b % self.clusters_per_batch:
                raise ValueError(f"clusters_per_batch={self.clusters_per_batch} must divide batch_size={b}.")
            c = self.clusters_per_batch
        elif ctx.window is None:
            c = 1
        else:  # choose c on the data: the divisor whose batches' mean metric is closest to the window centre
            best = None
            for c_try in divisors:
                trial = self._mix(order, n_batches, b, c_try, torch.Generator().manual_seed(c_try))
                sample = trial[torch.randperm(n_batches, generator=gen)[: min(16, n_batches)]]
                val = measure_batches(ctx.bank, ctx.rows[sample], ctx.window.metric).mean().item()
                gap = abs(val - ctx.window.center)
                if best is None or gap < best[0]:
                    best = (gap, c_try)
            c = best[1]
        self.chosen_c = c
        return self._mix(order, n_batches, b, c, gen)
