"""A mid-epoch re-plan in parts: the first part planned at once, the following ones by one background thread.

:class:`BackgroundReplanner` is what :meth:`hf_divcl.sampler.DiversityWindowBatchSampler.replan` runs on: it plans
the rows left in an epoch (the first global batches right away, the rest in parts of growing size from a snapshot of
the bank), hands back the new plan with random placeholder batches where parts are still being planned, and puts
each part into the plan when the data loader reaches it (:meth:`BackgroundReplanner.settle`), so the batches never
depend on timing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from .._common import mix_seed
from ..diversity.window import DiversityWindow
from .base import BatchBuilder
from .plan import EpochPlan, plan_epoch

logger = logging.getLogger("hf_divcl.sampler")  # the sampler's logger, as before the split

__all__ = ["BackgroundReplanner"]

# parts still being planned: (plan they belong to, [(first global batch, end, future)], the bank snapshot they read)
Pending = tuple[EpochPlan, list[tuple[int, int, Future]], Any]


class BackgroundReplanner:
    """Plans the rest of an epoch in parts and keeps the parts still being planned in one background thread.

    Holds the pending parts, the thread pool (started on the first part, see :meth:`close`) and :attr:`applied`,
    the number of parts put into a plan so far (a plan's batches change with it). A copy (pickle, deepcopy) has no
    pending part and no thread.
    """

    def __init__(self) -> None:
        self.pending: Pending | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.applied = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(executor=None, pending=None)
        return state

    def replan(self, plan: EpochPlan, cut: int, *, embeddings: torch.Tensor | None, bank: Any,
               groups: torch.Tensor | None, window: DiversityWindow | None, batch_size: int,
               builder: str | type[BatchBuilder] | BatchBuilder, builder_kwargs: dict[str, Any], seed: int,
               epoch: int, on_infeasible: str, chunk_rows: int, progress: bool | None,
               started: float) -> tuple[EpochPlan, float]:
        """Re-plan ``plan``'s global batches from ``cut`` on → (the new plan, seconds spent since ``started``).

        ``embeddings`` is the ``(N, d)`` bank snapshot (``None`` when the random builder plans without a bank) and
        ``bank`` the bank it comes from (watched with ``on_write`` while parts read it). Batches before ``cut`` are
        kept. With more than ``chunk_rows`` rows left (and a builder other than ``random``) the rows left are
        shuffled, the first part (about 4,096 rows) is planned here, and the following parts (each twice the
        previous, up to ``chunk_rows`` rows) are planned in order by the background thread from a snapshot of the
        bank taken now, reusing the first part's target calibration; their random batches stand in until
        :meth:`settle` puts them in. A part that fails to plan is logged and keeps its random batches.
        Deterministic for (plan, seed, epoch, cut, bank).
        """
        rest = torch.cat(plan.batches[cut:])
        g = batch_size
        head_values = plan.values[:cut] if plan.metric == (window.metric if window else plan.metric) \
            else torch.full((cut,), float("nan"))
        head_in = plan.in_window[:cut] if window is not None and plan.window == window \
            else torch.zeros(cut, dtype=torch.bool)
        chunked = builder != "random" and 0 < chunk_rows < rest.numel()
        snap, order = None, None
        if chunked:
            # the parts take the rows left in a seeded random order, ``rest = snap_rows[order]``, and read their
            # embeddings as they are now from a snapshot (kept in row order: a sorted gather is ~2x faster)
            snap_rows = rest.sort().values
            order = torch.randperm(rest.numel(), generator=torch.Generator().manual_seed(
                mix_seed(mix_seed(seed, epoch), cut)))
            rest = snap_rows[order]
            snap = _Snapshot(bank, embeddings, snap_rows) if embeddings is not None else None
        elif embeddings is not None:
            snap = embeddings[rest]
        grp = groups[rest] if groups is not None else None
        bounds = _part_bounds(rest.numel(), g, chunk_rows) if chunked else [(0, rest.numel())]
        opts = {"batch_size": g, "builder": builder, "seed": seed,
                "on_infeasible": on_infeasible, "progress": False if chunked else progress,
                "builder_kwargs": builder_kwargs if builder != "random" else {}}

        key = mix_seed(epoch, cut)  # fixed now: the background thread must not read the sampler's state

        def part(k: int, window, calibration) -> tuple[EpochPlan, list[torch.Tensor]]:
            lo, hi = bounds[k]
            emb = None if snap is None else snap.take(order[lo:hi]) if chunked else snap
            return _plan_rows(rest[lo:hi], emb,
                              None if grp is None else grp[lo:hi], window=window, calibration=calibration,
                              epoch=mix_seed(key, k) if chunked else key,
                              **opts)

        try:
            first, batches = part(0, window, None)
        except BaseException:
            if isinstance(snap, _Snapshot):
                snap.release()
            raise
        window = first.window if window is not None else None  # ``on_infeasible="closest"`` may have moved it
        values, in_window = [head_values, first.values], [head_in, first.in_window]
        batches = list(plan.batches[:cut]) + batches
        spans = []
        for k in range(1, len(bounds)):
            lo, hi = bounds[k]
            placeholder = list(torch.split(rest[lo:hi], g))  # random batches of the part's rows until it is planned
            spans.append((len(batches), len(batches) + len(placeholder)))
            batches += placeholder
            values.append(torch.full((len(placeholder),), float("nan")))
            in_window.append(torch.zeros(len(placeholder), dtype=torch.bool))
        metric = window.metric if window is not None else plan.metric
        took = time.perf_counter() - started
        new = EpochPlan(batches=batches, values=torch.cat(values), in_window=torch.cat(in_window), metric=metric,
                        builder={**first.builder, "replanned_from": cut, "replan_parts": len(bounds),
                                 "replan_part_batches": [-(-(hi - lo) // g) for lo, hi in bounds]}, window=window,
                        seconds=plan.seconds + took, achievable=first.achievable, calibration=first.calibration)
        if spans:  # submitted last, so the background thread does not compete with the work above
            parts = [(a, b, self._background().submit(_timed, part, k, window, first.calibration))
                     for k, (a, b) in enumerate(spans, start=1)]
            self.pending = (new, parts, snap)
            logger.info("re-planned global batches %d-%d of epoch %d in %.2f s; %d more parts (%d rows) are being "
                        "planned in the background", cut, parts[0][0] - 1, epoch, took, len(parts),
                        rest.numel() - bounds[0][1])
        elif isinstance(snap, _Snapshot):
            snap.release()
        return new, took

    def _background(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf_divcl-replan")
        return self.executor

    def settle(self, current: EpochPlan | None, upto: int | None) -> tuple[float, float]:
        """Put into ``current`` (the plan in use) every pending part that starts at or before global batch ``upto``
        (all with ``None``), waiting for those not finished yet → (seconds the caller waited, seconds the parts took
        to plan in the background). Parts of another plan than ``current`` are dropped."""
        pending = self.pending
        if pending is None:
            return 0.0, 0.0
        plan, parts, snap = pending
        if current is not plan:
            self.drop()
            return 0.0, 0.0
        keep, waited_total, background = [], 0.0, 0.0
        for first, end, fut in parts:
            if upto is not None and first > upto:
                keep.append((first, end, fut))
                continue
            t0 = time.perf_counter()
            was_done = fut.done()
            result = fut.result()
            if not was_done:
                waited_total += time.perf_counter() - t0
            if result is None:
                continue  # the part failed to plan (logged): its random batches stay
            sub, rows, seconds = result
            background += seconds
            if len(rows) != end - first:
                raise RuntimeError(f"A background part planned {len(rows)} batches for global batches {first}-"
                                   f"{end - 1} ({end - first} expected).")
            plan.batches[first:end] = rows
            if sub.metric == plan.metric:
                plan.values[first:end] = sub.values
            plan.in_window[first:end] = sub.in_window
            self.applied += 1
        self.pending = (plan, keep, snap) if keep else None
        if not keep and isinstance(snap, _Snapshot):
            snap.release()
        return waited_total, background

    def drop(self) -> None:
        """Forget parts still being planned (their plan was replaced); those not started are cancelled."""
        pending, self.pending = self.pending, None
        if pending is not None:
            for _, _, fut in pending[1]:
                fut.cancel()
            if isinstance(pending[2], _Snapshot):
                pending[2].release()

    def close(self) -> None:
        """Stop background planning (parts not started are cancelled); a later re-plan starts a new thread."""
        self.drop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


class _Abandoned(Exception):
    """A background part whose re-plan was replaced reads rows no longer kept."""


class _Snapshot:
    """Rows ``rows`` (sorted) of the bank as they are at a re-plan, for the parts planned later.

    With an :class:`~hf_divcl.bank.EmbeddingBank` nothing is copied until the bank is about to change (its
    ``on_write`` hook): until then the parts read the live rows, which still hold the values of the re-plan. Any
    other bank (a tensor the caller owns) is copied at once. Either way every part sees the rows as they were.
    """

    def __init__(self, bank: Any, live: torch.Tensor, rows: torch.Tensor) -> None:
        self.rows = rows
        self._live: torch.Tensor | None = live
        self._copy: torch.Tensor | None = None
        self._lock = threading.Lock()
        self._remove = bank.on_write(self.freeze) if hasattr(bank, "on_write") else None
        if self._remove is None:
            self.freeze()

    def freeze(self) -> None:
        """Copy the rows now (the bank is about to change)."""
        with self._lock:
            if self._copy is None and self._live is not None:
                self._copy, self._live = self._live[self.rows], None

    def take(self, positions: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` embeddings of ``rows[positions]`` as they were at the re-plan."""
        with self._lock:
            if self._copy is not None:
                return self._copy[positions]
            if self._live is None:
                raise _Abandoned
            return self._live[self.rows[positions]]

    def release(self) -> None:
        """No part needs the rows any more: stop watching the bank and drop the copy."""
        if self._remove is not None:
            self._remove()
            self._remove = None
        with self._lock:
            self._live = self._copy = None


def _part_bounds(n_rows: int, global_batch: int, chunk_rows: int, first_rows: int = 4096) -> list[tuple[int, int]]:
    """Row ranges of the parts of a re-plan: whole global batches, the first about ``first_rows`` rows, each next
    one twice the previous up to ``chunk_rows``; the last part takes what is left (a partial batch included)."""
    n_full = n_rows // global_batch
    cap = max(2, chunk_rows // global_batch)
    size = min(cap, max(2, -(-first_rows // global_batch)))
    bounds, start = [], 0
    while n_full - (start + size) >= 2:  # a further part of at least two batches remains
        bounds.append((start * global_batch, (start + size) * global_batch))
        start, size = start + size, min(cap, 2 * size)
    bounds.append((start * global_batch, n_rows))
    return bounds


def _plan_rows(rows: torch.Tensor, emb: torch.Tensor | None, groups: torch.Tensor | None, *, batch_size: int,
               builder, window: DiversityWindow | None, seed: int, epoch: int, on_infeasible: str,
               builder_kwargs: dict[str, Any], calibration: dict[str, Any] | None,
               progress: bool | None = False) -> tuple[EpochPlan, list[torch.Tensor]]:
    """Plan ``rows`` (their embeddings ``emb``, in the same order) into batches → (the plan, batches of row ids)."""
    sub = plan_epoch(emb if emb is not None else rows.numel(), batch_size, builder=builder, window=window, seed=seed,
                     epoch=epoch, drop_last=False, groups=groups, on_infeasible=on_infeasible, progress=progress,
                     calibration=calibration, **builder_kwargs)
    return sub, [rows[b] for b in sub.batches]


def _timed(part: Callable[..., tuple[EpochPlan, list[torch.Tensor]]], k: int, *args: Any):
    """Run ``part(k, ...)`` in the background thread → (plan, batches, seconds), or ``None`` (logged) if it failed."""
    t0 = time.perf_counter()
    try:
        sub, rows = part(k, *args)
    except _Abandoned:
        return None
    except Exception:  # the part keeps its random batches; training goes on
        logger.warning("Planning part %d of a re-plan failed; its rows stay in random batches.", k, exc_info=True)
        return None
    return sub, rows, time.perf_counter() - t0
