"""``plan_epoch``: one epoch as a partition of the rows into batches, with what every builder shares."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .._common import mix_seed
from ..diversity.window import DiversityWindow, measure_batches, measure_diversity
from .base import BatchBuilder
from .context import PlanContext
from .dedupe import repair_duplicates
from .refine import refine_swaps
from .registry import get_builder
from .sketch import row_chunks
from .target import calibrate_target

logger = logging.getLogger(__name__)

__all__ = ["INFEASIBLE_ACTIONS", "EpochPlan", "plan_epoch"]


@dataclass
class EpochPlan:
    """One epoch: a partition of the row indices into batches, with each batch's diversity.

    Attributes:
        batches (`list[torch.Tensor]`): int64 row indices per batch (the last may be partial).
        values (`torch.Tensor` of shape `(n_batches,)`): window metric per batch (NaN for batches of one row).
        in_window (`torch.Tensor` of shape `(n_batches,)`): bool, whether each batch's value is inside the window.
    """

    batches: list[torch.Tensor]
    values: torch.Tensor
    in_window: torch.Tensor
    metric: str
    builder: dict[str, Any]
    window: DiversityWindow | None
    seconds: float
    achievable: tuple[float, float] | None = None
    calibration: dict[str, Any] | None = None  # the window's target calibration (``plan_epoch(calibration=...)``)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for bt in self.batches:
            yield bt.tolist()

    @property
    def in_window_fraction(self) -> float:
        """Fraction of full-size batches inside the window (NaN without a window)."""
        full = torch.tensor([bt.numel() == self.batches[0].numel() for bt in self.batches])
        if self.window is None or not bool(full.any()):
            return float("nan")
        return self.in_window[full].float().mean().item()

    def summary(self) -> dict[str, Any]:
        """Builder settings and statistics over the full-size batches."""
        full = torch.tensor([bt.numel() == self.batches[0].numel() for bt in self.batches])
        v = self.values[full & ~self.values.isnan()]
        return {
            **self.builder, "n_batches": len(self), "metric": self.metric,
            "metric_mean": v.mean().item() if v.numel() else float("nan"),
            "metric_std": v.std().item() if v.numel() > 1 else 0.0,
            "in_window_fraction": self.in_window_fraction, "seconds": self.seconds,
            "window": self.window.to_dict() if self.window else None, "achievable": self.achievable,
        }


def _check_bank(embeddings: torch.Tensor, batch_size: int, drop_last: bool, chunk: int = 65_536) -> None:
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"Bank embeddings must be a (N, d) tensor, got {shape}.")
    n = embeddings.shape[0]
    if n == 0:
        raise ValueError("The data set is empty: there is nothing to put in batches.")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 for in-batch negatives, got {batch_size}.")
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) is larger than the data set ({n} rows); use a batch size of "
                         f"at most {n}.")
    for sl in row_chunks(n, chunk):
        bad = ~torch.isfinite(embeddings[sl]).all(1)
        if bool(bad.any()):
            rows = (torch.nonzero(bad).squeeze(1) + sl.start).tolist()
            raise ValueError(f"The bank has NaN/Inf embeddings at rows {rows[:10]}{'...' if len(rows) > 10 else ''}; "
                             "re-encode those rows (bank.refresh) or drop them from the data set.")


INFEASIBLE_ACTIONS = {"error": "error", "raise": "error", "closest": "closest"}
"""Accepted ``on_infeasible`` spellings → action (``"raise"`` is what :class:`DivCLTrainingArguments` documents)."""


def _resolve_window(ctx: PlanContext, on_infeasible: str) -> tuple[DiversityWindow | None, tuple[float, float]]:
    window = ctx.window
    window.check_feasible_range(ctx.batch_size, ctx.dim)
    lo, hi = calibrate_target(ctx)["achievable"]
    if window.high >= lo and window.low <= hi:
        return window, (lo, hi)
    msg = (f"The window [{window.low:.3f}, {window.high:.3f}] of {window.metric} is not achievable on this data "
           f"with B = {ctx.batch_size}: measured batches range over [{lo:.3f}, {hi:.3f}]")
    if on_infeasible == "error":
        raise ValueError(msg + ". Calibrate the window on this data (calibrate_window) or pass "
                         "on_infeasible='closest'.")
    width = window.high - window.low
    new_lo = min(max(window.low, lo), hi - width) if width < hi - lo else lo
    new = DiversityWindow(max(new_lo, lo), min(max(new_lo, lo) + width, hi), window.metric)
    warnings.warn(msg + f"; using the closest achievable window [{new.low:.3f}, {new.high:.3f}].", stacklevel=3)
    ctx.window = new
    return new, (lo, hi)


def plan_epoch(
    embeddings: torch.Tensor,
    batch_size: int,
    *,
    builder: str | type[BatchBuilder] | BatchBuilder = "greedy",
    window: DiversityWindow | None = None,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    groups: torch.Tensor | None = None,
    on_infeasible: str = "error",
    shuffle_batches: bool = True,
    refine_passes: int = 4,
    progress: bool | None = None,
    calibration: dict[str, Any] | None = None,
    **builder_kwargs: Any,
) -> EpochPlan:
    """Partition rows ``0..N-1`` into batches of ``batch_size`` for one epoch.

    Args:
        embeddings (`torch.Tensor` of shape `(N, d)`): one unit embedding per row (the bank, float16 is fine).
        batch_size (`int`): rows per batch (the *global* batch when negatives are gathered across processes).
        builder: ``"random"``, ``"greedy"``, ``"pool"``, ``"cluster"``, a :class:`BatchBuilder` class or instance.
        window (:class:`DiversityWindow`, *optional*): target diversity; required by all but ``random``.
        seed, epoch (`int`): the plan is a pure function of (embeddings, seed, epoch, arguments).
        drop_last (`bool`): drop the ``N mod B`` leftover rows instead of a last partial batch.
        groups (`torch.Tensor` of shape `(N,)`, *optional*): duplicate groups (:func:`duplicate_groups`); rows of
            one group never share a batch.
        on_infeasible (`str`): ``"error"`` (default; ``"raise"`` is the same) or ``"closest"`` (warn and move the
            window into the range measured on the data).
        shuffle_batches (`bool`): shuffle the order of the planned batches.
        refine_passes (`int`, defaults to 4): after the builder, passes of exact pairwise swaps between batches
            that move both batches' mean squared cosine towards the window's target (see :func:`refine_swaps`);
            they mostly cut the batch-to-batch spread. 0 turns them off.
        progress (`bool`, *optional*): progress bars; default on from 100,000 rows.
        calibration (`dict`, *optional*): the target calibration of an earlier plan of rows drawn from the same
            data with the same window and batch size (:attr:`EpochPlan.calibration`): reused instead of measured
            again, so that planning the rows in parts costs the measurement once.
        **builder_kwargs: passed to the builder class (e.g. ``m=64`` for greedy, ``p=3`` for pool).
    """
    t0 = time.perf_counter()
    if on_infeasible not in INFEASIBLE_ACTIONS:
        raise ValueError(f"on_infeasible must be 'error' (or its alias 'raise') or 'closest', got {on_infeasible!r}.")
    on_infeasible = INFEASIBLE_ACTIONS[on_infeasible]
    if isinstance(embeddings, int):  # no embeddings: only builders that ignore the window can plan
        if get_builder(builder, **builder_kwargs).uses_window:
            raise ValueError(f"The {builder!r} builder needs the bank's embeddings, not just a row count.")
        embeddings, n = None, embeddings
        _check_bank(torch.zeros(n, 1), batch_size, drop_last)
    else:
        _check_bank(embeddings, batch_size, drop_last)
        n = embeddings.shape[0]
    if groups is not None:
        if groups.ndim != 1 or groups.shape[0] != n:
            raise ValueError(f"groups must have one id per row: expected shape ({n},), got {tuple(groups.shape)}.")
        n_batches_total = n // batch_size + (0 if drop_last or n % batch_size == 0 else 1)
        dense = torch.unique(groups, return_inverse=True)[1]
        sizes = torch.bincount(dense)
        if int(sizes.max()) > n_batches_total:
            rows = torch.nonzero(dense == int(sizes.argmax())).squeeze(1).tolist()
            raise ValueError(f"{len(rows)} rows {rows[:10]}{'...' if len(rows) > 10 else ''} are duplicates of each "
                             f"other but there are only {n_batches_total} batches, so some would share a batch "
                             "(false negatives). Deduplicate the data set or use a smaller batch size.")
    b_obj = get_builder(builder, **builder_kwargs)
    if window is None and b_obj.requires_window:
        raise ValueError(f"The {b_obj.name!r} builder needs a DiversityWindow (or use builder='random').")
    gen = torch.Generator().manual_seed(mix_seed(seed, epoch))

    n_full = n // batch_size
    perm = torch.randperm(n, generator=gen)
    rest = perm[n_full * batch_size:]  # leftover rows → last partial batch
    body = perm[: n_full * batch_size].sort().values  # rows to assign (sorted: builders shuffle themselves)
    ctx = PlanContext(embeddings, body, batch_size, window, gen, sketch_dim=getattr(b_obj, "sketch_dim", 32),
                      progress=n >= 100_000 if progress is None else progress, calibration=dict(calibration or {}))
    achievable = None
    if window is not None and b_obj.uses_window:
        window, achievable = _resolve_window(ctx, on_infeasible)
    local = b_obj.assign(ctx, n_full)  # (n_full, B) positions into body
    if refine_passes and window is not None and b_obj.uses_window and n_full >= 2:
        local = refine_swaps(ctx, local, refine_passes)
    full = body[local]
    if shuffle_batches:
        full = full[torch.randperm(n_full, generator=gen)]
    batches = list(full.unbind(0))
    if rest.numel() and not drop_last:
        batches.append(rest)
    if groups is not None:
        batches = repair_duplicates(batches, groups, gen)

    metric = window.metric if window is not None else "effective_rank"
    values = torch.full((len(batches),), float("nan"))
    if n_full and embeddings is not None:
        values[:n_full] = measure_batches(embeddings, torch.stack(batches[:n_full]), metric)
    if len(batches) > n_full and batches[-1].numel() >= 2 and embeddings is not None:
        values[-1] = measure_diversity(embeddings[batches[-1]].unsqueeze(0), metric)[0]
    in_window = window.contains(values) if window is not None else torch.zeros(len(batches), dtype=torch.bool)
    plan = EpochPlan(batches=batches, values=values, in_window=in_window, metric=metric, builder=b_obj.config(),
                     window=window, seconds=time.perf_counter() - t0, achievable=achievable,
                     calibration=ctx.calibration or None)
    logger.info("planned epoch %d with %s: %d batches, %.1f%% in window, %.2f s", epoch, b_obj.name, len(plan),
                100 * plan.in_window_fraction if window else float("nan"), plan.seconds)
    return plan
