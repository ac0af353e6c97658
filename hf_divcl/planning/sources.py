"""Several sources in one run: each source planned on its own, then the sources' batches put in one order.

The training rows are the sources one after the other (``offsets``); every global batch is planned within one
source (by any builder, so a diversity window applies *within* a source) and the batches are then ordered as
sentence-transformers orders the batches of a ``DatasetDict``:

* ``"proportional"`` — every batch of every source, in a random order (a source with twice the rows gives twice
  the batches); each row once per epoch;
* ``"round_robin"`` — one batch of each source in turn until the source with the fewest batches runs out (the
  other sources' later batches are left out of that epoch).

``mix`` moves the batches between one source per batch (0) and fully mixed batches (1): in every full-size batch,
``round(mix × B)`` positions chosen at random give up their rows, and all those rows are dealt out again at random
over the same positions of the whole epoch (so each row is still used once). The expected share of a batch drawn
from other sources is ``mix × (1 − that source's share of the rows)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .._common import mix_seed
from .dedupe import repair_duplicates
from .plan import EpochPlan

__all__ = ["ORDERS", "SourceSplit", "plan_sources"]

ORDERS = ("proportional", "round_robin")


@dataclass(frozen=True)
class SourceSplit:
    """Where each source's rows sit among the training rows, and how their batches are ordered and mixed.

    Args:
        names: one name per source (a ``DatasetDict``'s keys, in order).
        sizes: rows per source; source ``s`` holds rows ``offsets[s] .. offsets[s + 1] - 1``.
        order: ``"proportional"`` or ``"round_robin"`` (see the module docstring).
        mix: fraction of each batch's rows dealt out across the epoch (0: one source per batch).
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    order: str = "proportional"
    mix: float = 0.0

    def __post_init__(self) -> None:
        if len(self.names) != len(self.sizes) or not self.names:
            raise ValueError(f"A SourceSplit needs one size per name, got {len(self.names)} names and "
                             f"{len(self.sizes)} sizes.")
        if self.order not in ORDERS:
            raise ValueError(f"multi_dataset_batch_sampler must be one of {ORDERS}, got {self.order!r}.")
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"source_mix must be in [0, 1] (0: one source per batch, 1: fully mixed), got {self.mix}.")

    @property
    def offsets(self) -> list[int]:
        out = [0]
        for n in self.sizes:
            out.append(out[-1] + int(n))
        return out

    def rows(self, s: int) -> torch.Tensor:
        """``(n_s,)`` row indices of source ``s``."""
        return torch.arange(self.offsets[s], self.offsets[s + 1])

    def source_of(self, rows: torch.Tensor) -> torch.Tensor:
        """Source index of each row in ``rows`` (any shape, int64)."""
        return torch.bucketize(rows, torch.tensor(self.offsets[1:]), right=True)

    def batch_counts(self, batch_size: int, drop_last: bool) -> list[int]:
        """Global batches each source gives per epoch (before the order drops any)."""
        return [n // batch_size + (0 if drop_last or n % batch_size == 0 else 1) for n in self.sizes]

    def n_batches(self, batch_size: int, drop_last: bool) -> list[int]:
        """Global batches each source gives per epoch once ordered (round robin keeps min × sources)."""
        counts = self.batch_counts(batch_size, drop_last)
        return [min(counts)] * len(counts) if self.order == "round_robin" else counts

    def local_batches(self, batch_size: int, processes: int, drop_last: bool) -> int:
        """Local batches per epoch when each global batch of ``processes × batch_size`` rows is split into
        ``processes`` local batches (a source's last, partial global batch into fewer)."""
        g = batch_size * processes
        total = 0
        for n, kept in zip(self.sizes, self.n_batches(g, drop_last), strict=True):
            full = min(kept, n // g)
            total += full * processes
            if kept > full:  # the source's partial last batch is among those kept
                total += -(-(n - full * g) // batch_size)
        return total


def plan_sources(split: SourceSplit, plan_one: Callable[[torch.Tensor, int], EpochPlan], batch_size: int, *,
                 seed: int, epoch: int, groups: torch.Tensor | None = None) -> EpochPlan:
    """One epoch over several sources: ``plan_one(rows, s)`` plans source ``s``'s rows (an :class:`EpochPlan` whose
    batches hold positions into ``rows``), then the batches are ordered and mixed as ``split`` says.

    Returns an :class:`EpochPlan` over all rows; ``builder["sources"]`` holds each batch's home source. Batch values
    are those of the source plans, NaN for batches changed by mixing. Deterministic for ``(seed, epoch)``."""
    plans = [plan_one(split.rows(s), s) for s in range(len(split.names))]
    gen = torch.Generator().manual_seed(mix_seed(seed, 7_919 + epoch))
    batches: list[tuple[int, torch.Tensor, float, bool]] = []  # (source, global rows, value, in window)
    per_source = []
    for s, plan in enumerate(plans):
        rows = split.rows(s)
        per_source.append([(s, rows[b], float(plan.values[k]), bool(plan.in_window[k]))
                           for k, b in enumerate(plan.batches)])
    if split.order == "round_robin":
        keep = min(len(p) for p in per_source)
        for k in range(keep):
            batches.extend(p[k] for p in per_source)
    else:
        flat = [b for p in per_source for b in p]
        batches = [flat[i] for i in torch.randperm(len(flat), generator=gen).tolist()]
    sources = [b[0] for b in batches]
    rows = [b[1] for b in batches]
    values = torch.tensor([b[2] for b in batches], dtype=torch.float32)
    in_window = torch.tensor([b[3] for b in batches], dtype=torch.bool)
    if split.mix > 0 and rows:
        rows, changed = _mix(rows, batch_size, split.mix, gen)
        if groups is not None:
            rows = repair_duplicates(rows, groups, gen)
        values[changed] = float("nan")
        in_window[changed] = False
    first = plans[0]
    return EpochPlan(batches=rows, values=values, in_window=in_window, metric=first.metric,
                     builder={**first.builder, "sources": sources, "order": split.order, "mix": split.mix},
                     window=first.window, seconds=sum(p.seconds for p in plans),
                     achievable=first.achievable, calibration=first.calibration)


def _mix(rows: Sequence[torch.Tensor], batch_size: int, mix: float, gen: torch.Generator
         ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Deal ``round(mix × B)`` rows of every full-size batch out again at random over the same positions."""
    k = round(mix * batch_size)
    full = [i for i, b in enumerate(rows) if b.numel() == batch_size]
    changed = torch.zeros(len(rows), dtype=torch.bool)
    if k == 0 or len(full) < 2:
        return list(rows), changed
    out = [b.clone() for b in rows]
    stacked = torch.stack([out[i] for i in full])  # (n_full, B)
    pos = torch.argsort(torch.rand(stacked.shape, generator=gen), dim=1)[:, :k]  # (n_full, k) positions freed
    freed = stacked.gather(1, pos).reshape(-1)
    dealt = freed[torch.randperm(freed.numel(), generator=gen)].reshape(pos.shape)
    stacked.scatter_(1, pos, dealt)
    for j, i in enumerate(full):
        out[i] = stacked[j]
    changed[full] = True
    return out, changed
