"""Batch builders: plan one epoch as a partition of the rows into batches whose diversity sits in a window.

Every builder is a strategy with one method, :meth:`BatchBuilder.assign`, that splits ``M`` rows into
``n`` full batches; :func:`plan_epoch` wraps it with what all builders share:

* the rows left over when ``N`` is not a multiple of ``B`` form a last partial batch (or are dropped with
  ``drop_last``), chosen at random;
* rows with the same *group* (identical text/image, see :func:`duplicate_groups`) never share a batch —
  they would be false negatives;
* the exact diversity metric of every batch and whether it lies in the window are recorded;
* deterministic for ``(seed, epoch)``; an infeasible window fails fast with the range measured on the data, or
  moves to the closest achievable one with a warning (``on_infeasible="closest"``).

Builders (chosen by name, class or instance):

* ``random`` — a uniform permutation (the baseline);
* ``greedy`` (Greedy-m) — all batches are filled in parallel, one slot at a time; each batch scores ``m`` fresh
  candidates from the unused pool by how they move its running mean squared cosine towards the window's target
  (incremental second-moment statistics in a ``sketch_dim``-dimensional PCA sketch, never recomputed), and
  takes the best. Filling every batch at once keeps the pool balanced across the epoch (no clumped remainder);
* ``pool`` (Pool-P) — rounds of random candidate batches from the remaining rows; each round keeps the best
  ``1/P`` (inside or closest to the window) and returns the rest to the pool;
* ``cluster`` (TAS-Balanced-like) — k-means over the bank (faiss when installed, torch otherwise); each batch
  mixes ``c`` clusters, with ``c`` chosen on the data so that batches land in the window.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .sweep import SweepLevel, draw_level
from .window import DiversityWindow, measure_batches, measure_diversity

logger = logging.getLogger(__name__)

__all__ = [
    "BUILDERS",
    "BatchBuilder",
    "ClusterBuilder",
    "EpochPlan",
    "GreedyBuilder",
    "PoolBuilder",
    "RandomBuilder",
    "duplicate_groups",
    "get_builder",
    "plan_epoch",
]


# ------------------------------------------------------------------------------------------------------------
# shared context


@dataclass
class PlanContext:
    """What a builder may use: the rows' embeddings, a sketch, the window and its target, the generator."""

    bank: torch.Tensor  # (N, d) unit rows of the whole bank, its own dtype (float16/32); never copied
    rows: torch.Tensor  # (M,) the bank rows being assigned; builders work on positions 0..M-1 into it
    batch_size: int
    window: DiversityWindow | None
    generator: torch.Generator
    _sketch: torch.Tensor | None = None
    _inv_norm: torch.Tensor | None = None
    sketch_dim: int = 32
    calibration: dict[str, Any] = field(default_factory=dict)
    progress: bool = False

    @property
    def num_rows(self) -> int:
        return self.rows.numel()

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    def emb(self, positions: torch.Tensor) -> torch.Tensor:
        """Embeddings of positions (any shape ``S``) → ``(*S, d)`` in the bank dtype."""
        return self.bank[self.rows[positions]]

    @property
    def inv_norm(self) -> torch.Tensor:
        """``(N,)`` float32 inverse norms of the bank's rows (unit up to float16 rounding), computed once."""
        if self._inv_norm is None:
            self._inv_norm = torch.cat([self.bank[sl].float().norm(dim=-1).reciprocal()
                                        for sl in _chunks(self.bank.shape[0], 65_536)])
        return self._inv_norm

    @property
    def sketch(self) -> torch.Tensor:
        """``(M, r)`` float32 projection onto the top-``r`` eigenvectors of the uncentred second moment."""
        if self._sketch is None:
            self._sketch = make_sketch(self.bank, self.rows, self.sketch_dim, self.generator)
        return self._sketch


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


def make_sketch(bank: torch.Tensor, rows: torch.Tensor, r: int, gen: torch.Generator, sample: int = 20_000,
                chunk: int = 16_384) -> torch.Tensor:
    """Project bank rows ``rows`` onto the top-``r`` principal directions of ``XᵀX`` (estimated on a sample).

    Inner products in the sketch approximate cosines along the directions where the data has most energy —
    the ones that dominate squared cosines — at ``r/d`` of the cost. Returns ``(M, r)`` float32.
    """
    m, d = rows.numel(), bank.shape[1]
    r = min(r, d)
    xs = bank[rows[torch.randperm(m, generator=gen)[: min(sample, m)]]].float()
    _, evecs = torch.linalg.eigh(xs.T @ xs)
    basis = evecs[:, -r:].flip(-1).contiguous()  # (d, r)
    out = torch.empty(m, r, dtype=torch.float32)
    for sl in _chunks(m, chunk):
        out[sl] = bank[rows[sl]].float() @ basis
    return out


def sketch_mean_sq_cosine(s: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal inner product of sketched batches ``(R, B, r)`` → ``(R,)``."""
    b = s.shape[-2]
    frob = (s.mT @ s).square().sum((-2, -1))
    diag = s.square().sum(-1).square().sum(-1)
    return (frob - diag) / (b * (b - 1))


def calibrate_target(ctx: PlanContext, n_rows: int = 20_000, n_batches: int = 12) -> dict[str, Any]:
    """Measure on the data how the window metric relates to the sketch's mean cos², and the achievable range.

    Draws batches from tight neighbourhoods to spread-out sets (see :mod:`hf_divcl.sweep`) on a sample of rows.
    Returns ``{"achievable": (lo, hi), "metric": tensor, "sketch_mcos2": tensor}``.
    """
    if ctx.calibration:
        return ctx.calibration
    window, b = ctx.window, ctx.batch_size
    m = ctx.num_rows
    sample = torch.randperm(m, generator=ctx.generator)[: min(n_rows, m)]
    xs = ctx.emb(sample).float()
    ss = ctx.sketch[sample]
    levels = [SweepLevel("local", b), SweepLevel("local", 4 * b), SweepLevel("local", 16 * b),
              SweepLevel("random"), SweepLevel("spread", 2), SweepLevel("spread", 4), SweepLevel("spread", 8)]
    metric = window.metric if window is not None else "effective_rank"
    vals, mc, exact = [], [], []
    for lv in levels:
        if lv.kind != "random" and (lv.param * (b if lv.kind == "spread" else 1)) > xs.shape[0]:
            continue
        # spread levels hold (R, P, P) similarity blocks: draw them two batches at a time to bound the memory
        step = 2 if lv.kind == "spread" else n_batches
        idx = torch.cat([draw_level(xs, lv, b, min(step, n_batches - k), ctx.generator)
                         for k in range(0, n_batches, step)])
        vals.append(measure_diversity(xs[idx], metric))
        mc.append(sketch_mean_sq_cosine(ss[idx]))
        exact.append(measure_diversity(xs[idx], "mean_sq_cosine"))
    v, c, e = torch.cat(vals), torch.cat(mc), torch.cat(exact)
    ctx.calibration = {"achievable": (v.min().item(), v.max().item()), "metric": v, "sketch_mcos2": c,
                       "mean_sq_cosine": e}
    return ctx.calibration


def target_sketch_mcos2(ctx: PlanContext, value: float, key: str = "sketch_mcos2") -> float:
    """The mean cos² (in the sketch, or exact with ``key="mean_sq_cosine"``) that corresponds to a window-metric
    ``value``: a monotone fit on binned calibration batches."""
    cal = calibrate_target(ctx)
    v, c = cal["metric"], cal[key]
    order = v.argsort()
    v, c = v[order], c[order]
    nb = max(2, min(20, v.numel() // 4))
    bins = torch.tensor_split(torch.arange(v.numel()), nb)
    xv = torch.stack([v[i].mean() for i in bins])
    yc = torch.stack([c[i].mean() for i in bins])
    # more diversity ⇒ smaller mean cos²: enforce monotonicity in the metric's direction
    yc = torch.cummin(yc, 0).values if ctx.window.direction > 0 else torch.cummax(yc, 0).values
    x = min(max(value, xv[0].item()), xv[-1].item())
    j = int(torch.searchsorted(xv, torch.tensor(x)).clamp(1, nb - 1))
    x0, x1, y0, y1 = xv[j - 1].item(), xv[j].item(), yc[j - 1].item(), yc[j].item()
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


# ------------------------------------------------------------------------------------------------------------
# builders


class BatchBuilder:
    """Base class: split positions ``0..M-1`` of ``ctx.rows`` into ``n_batches`` full batches."""

    name = "base"
    uses_window = True

    def assign(self, ctx: PlanContext, n_batches: int) -> torch.Tensor:  # (n_batches, B) long
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"builder": self.name}


class RandomBuilder(BatchBuilder):
    """Uniform random partition (the baseline; ignores the window but still reports it)."""

    name = "random"
    uses_window = False

    def assign(self, ctx: PlanContext, n_batches: int) -> torch.Tensor:
        return torch.randperm(ctx.num_rows, generator=ctx.generator)[: n_batches * ctx.batch_size].view(n_batches, -1)


class GreedyBuilder(BatchBuilder):
    """Greedy-m: fill all batches slot by slot, each taking the best of ``m`` fresh candidates.

    Half of each batch's candidates are drawn uniformly from the unused pool (they pull towards *more*
    diversity), half from the unused rows of the k-means cluster (in the sketch) of a random member of the batch
    (they pull towards *less*, spread over the batch's members rather than piled onto one direction); the
    candidate that brings the batch's predicted mean squared cosine closest to the target wins. The prediction is
    exact up to the last checkpoint: at checkpoints (see ``check_every``) each batch's sum of squared cosines over
    its member pairs is extended exactly, in the full dimension, by the rows added since the previous checkpoint;
    only the rows added since then are scored in a ``sketch_dim``-dimensional PCA sketch (each batch's sketch
    second-moment matrix, updated in place) plus the mean squared cosine per pair that the sketch missed, as
    measured at the last checkpoint. Errors of the sketch therefore do not accumulate over a
    batch. The target (an exact mean squared cosine) is read off calibration batches, then corrected on small pilot
    plans (see :meth:`_closed_loop_target`).

    Args:
        m (`int`, *optional*, defaults to 32): candidates scored per batch and slot.
        sketch_dim (`int`, *optional*, defaults to 32): dimension of the PCA sketch used for scoring.
        near_fraction (`float`, *optional*, defaults to 0.5): share of candidates drawn near a batch member.
        pilot_rows (`int`, *optional*, defaults to 8192): rows of the pilot plans that correct the target.
        pilot_steps (`int`, *optional*, defaults to 6): target corrections on pilot plans (0: trust the calibration).
        check_every (`int`, *optional*): slots between exact checkpoints of the batches' sums near the end of the
            fill (default ``clamp(B // 32, 2, 8)``); early on, a checkpoint comes after a quarter of the slots left.
    """

    name = "greedy"

    def __init__(self, m: int = 32, sketch_dim: int = 32, near_fraction: float = 0.5, pilot_rows: int = 8192,
                 pilot_steps: int = 6, check_every: int | None = None) -> None:
        if m < 1 or sketch_dim < 1 or not 0 <= near_fraction < 1 or (check_every is not None and check_every < 1):
            raise ValueError(f"GreedyBuilder needs m >= 1, sketch_dim >= 1, 0 <= near_fraction < 1 and "
                             f"check_every >= 1; got m={m}, sketch_dim={sketch_dim}, near_fraction={near_fraction}, "
                             f"check_every={check_every}.")
        self.m, self.sketch_dim, self.near_fraction = m, sketch_dim, near_fraction
        self.pilot_rows, self.pilot_steps, self.check_every = pilot_rows, pilot_steps, check_every

    def config(self) -> dict[str, Any]:
        return {"builder": self.name, "m": self.m, "sketch_dim": self.sketch_dim, "near_fraction": self.near_fraction,
                "pilot_rows": self.pilot_rows, "pilot_steps": self.pilot_steps, "check_every": self.check_every}

    def assign(self, ctx: PlanContext, n_batches: int) -> torch.Tensor:
        b, gen = ctx.batch_size, ctx.generator
        if ctx.window is None:
            return RandomBuilder().assign(ctx, n_batches)
        s = ctx.sketch  # (M, r)
        m_rows = s.shape[0]
        labels = None
        if self.near_fraction > 0:
            labels = kmeans(s, int(min(512, max(2, m_rows // (2 * b)))), gen, iters=6)
        cal = calibrate_target(ctx)
        residual = (cal["mean_sq_cosine"] - cal["sketch_mcos2"]).mean().item()
        target = self._closed_loop_target(ctx, s, labels, residual)
        pos = torch.arange(m_rows, device=s.device)
        return self._fill(ctx, pos, s, labels, n_batches, target, residual, gen, progress=ctx.progress)

    def _closed_loop_target(self, ctx, s, labels, residual: float) -> float:
        """The exact mean cos² target whose greedy batches hit the window centre, found on pilot plans.

        The calibration map from the window metric to the mean cos² is only approximate for greedy batches (they
        are not shaped like calibration batches, and the last rows of a fill have little choice), so seeded pilot
        subsets of ``pilot_rows`` rows are planned and the target is moved by safeguarded secant steps on the
        pilots' mean metric, inside a bracket that shrinks like bisection's.
        """
        b, window = ctx.batch_size, ctx.window
        target = target_sketch_mcos2(ctx, window.center, key="mean_sq_cosine")
        cal = calibrate_target(ctx)["mean_sq_cosine"]
        lo, hi = cal.min().item(), cal.max().item()
        n_pilot = min(s.shape[0], max(self.pilot_rows, 8 * b)) // b
        if self.pilot_steps == 0 or n_pilot < 2:
            return target
        pgen = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,), generator=ctx.generator)))
        pos = torch.randperm(s.shape[0], generator=pgen)[: n_pilot * b].to(s.device)
        tried: list[tuple[float, float]] = []  # (target, window metric − centre, in "more diverse" units)
        best = (float("inf"), target)
        for _ in range(self.pilot_steps):
            members = self._fill(ctx, pos, s[pos], labels[pos] if labels is not None else None, n_pilot, target,
                                 residual, torch.Generator().manual_seed(0))
            value = measure_batches(ctx.bank, ctx.rows[pos[members]], window.metric).mean().item()
            err = (value - window.center) * window.direction  # > 0: too diverse ⇒ the target mean cos² is too low
            best = min(best, (abs(err), target))
            if abs(err) < 0.1 * (window.high - window.low):
                break
            if err > 0:
                lo = target
            else:
                hi = target
            tried.append((target, err))
            nxt = 0.5 * (lo + hi)
            if len(tried) >= 2 and tried[-1][1] != tried[-2][1]:
                (t0, e0), (t1, e1) = tried[-2], tried[-1]
                sec = t1 - e1 * (t1 - t0) / (e1 - e0)
                if lo < sec < hi:
                    nxt = sec
            target = nxt
        return best[1] if best[0] < float("inf") else target

    @staticmethod
    def _exact_pair_sums(ctx: PlanContext, pos: torch.Tensor, members: torch.Tensor, t0: int, t1: int,
                         chunk: int = 64) -> torch.Tensor:
        """``Σ cos²(x_i, x_j)`` over member pairs ``j < i`` with ``t0 ≤ i < t1``, per batch, in full dimension."""
        n = members.shape[0]
        out = torch.empty(n, device=members.device)
        ar = torch.arange(t1, device=members.device)
        before = ar.unsqueeze(0) < ar[t0:t1].unsqueeze(1)  # (t1 - t0, t1): pair (i, j) with j < i
        for sl in _chunks(n, chunk):
            idx = ctx.rows[pos[members[sl, :t1]]]
            x = ctx.bank[idx].float()
            inv = ctx.inv_norm[idx]  # cosines of the bank's (float16-rounded) rows, as batch_diversity computes
            g = (x[:, t0:t1] @ x.mT) * inv[:, t0:t1].unsqueeze(2) * inv.unsqueeze(1)  # (c, t1 - t0, t1)
            out[sl] = (g.square() * before).sum((-2, -1))
        return out

    def _fill(self, ctx: PlanContext, pos: torch.Tensor, s, labels, n_batches: int, target: float,
              residual: float, gen, progress: bool = False) -> torch.Tensor:
        """Fill ``n_batches`` batches with positions ``0..len(pos)-1`` (rows ``ctx.rows[pos]``, sketched ``s``)
        slot by slot (see the class docstring); returns ``(n_batches, B)`` indices into ``pos``."""
        from tqdm.auto import tqdm

        b, dev = ctx.batch_size, s.device
        m_rows, r = s.shape
        m_near = round(self.m * self.near_fraction) if labels is not None else 0
        m_rand = max(1, self.m - m_near)
        used = torch.zeros(m_rows, dtype=torch.bool, device=dev)
        members = torch.empty(n_batches, b, dtype=torch.long, device=dev)
        second = torch.zeros(n_batches, r, r, device=dev)  # Σ_j x_j x_jᵀ of each batch, in the sketch
        exact = torch.zeros(n_batches, device=dev)  # exact Σ_{i<j} cos² over members up to the last checkpoint
        pending = torch.zeros(n_batches, device=dev)  # predicted Σ cos² of the pairs added since then
        rows = torch.arange(n_batches, device=dev)
        near_index = None
        last, every = 0, self.check_every or min(8, max(2, b // 32))
        for slot in tqdm(range(b), desc="greedy fill (slots)", disable=not progress, leave=False):
            if slot - last == max(every, (b - last) // 4):
                added = self._exact_pair_sums(ctx, pos, members, last, slot)
                n_pairs = n_batches * (slot * (slot - 1) - last * (last - 1)) // 2
                residual += (added - pending).sum().item() / n_pairs  # what the sketch missed, per pair
                exact += added
                pending.zero_()
                last = slot
                near_index = None
            avail = (~used).nonzero().squeeze(1)
            mr = min(m_rand, avail.numel() // n_batches)
            cand = avail[torch.randperm(avail.numel(), generator=gen).to(dev)[: n_batches * mr]].view(n_batches, mr)
            valid = torch.ones_like(cand, dtype=torch.bool)
            if slot > 0 and m_near and mr >= 4:
                if near_index is None:  # unused rows grouped by cluster, rebuilt at each checkpoint
                    near_index = self._near_index(labels, avail)
                anchor = members[rows, (torch.rand(n_batches, generator=gen).to(dev) * slot).long()]
                near_cluster = labels[anchor]  # the cluster of a random member of each batch
                near = self._near_candidates(near_index, near_cluster, m_near, gen)
                cand, valid = torch.cat([cand, near], 1), torch.cat([valid, ~used[near]], 1)
            if slot == 0:
                chosen, gain = cand[:, 0], torch.zeros(n_batches, device=dev)
            else:
                c = s[cand]  # (n, m, r)
                score = ((c @ second) * c).sum(-1)  # (n, m): Σ_{j in batch} (c·x_j)² in the sketch
                score = score + residual * slot  # predicted exact Σ_{j in batch} cos²(c, x_j)
                pred = exact.unsqueeze(1) + pending.unsqueeze(1) + score
                obj = (pred / (slot * (slot + 1) / 2) - target).abs()
                obj = obj.masked_fill(~valid, float("inf"))
                pick = obj.argmin(1)
                chosen, gain = cand[rows, pick], score[rows, pick]
                chosen, gain = self._resolve_conflicts(chosen, gain, cand[:, :mr], obj[:, :mr], score[:, :mr],
                                                       avail, m_rows)
            members[:, slot] = chosen
            used[chosen] = True
            pending += gain
            x = s[chosen]
            second += x.unsqueeze(2) * x.unsqueeze(1)
        return members

    @staticmethod
    def _near_index(labels, avail):
        """The rows ``avail`` sorted by cluster, with each cluster's start and count."""
        lab = labels[avail]
        order = torch.argsort(lab, stable=True)
        counts = torch.bincount(lab, minlength=int(labels.max()) + 1)
        return avail[order], torch.cumsum(counts, 0) - counts, counts

    @staticmethod
    def _near_candidates(near_index, ck, m_near, gen):
        """``m_near`` random rows of cluster ``ck[i]`` for each batch ``i`` from the index: ``(n, m_near)``.

        The index may be a few slots old: rows taken since are masked by the caller; an empty cluster yields row
        ``sorted_avail[start]`` of a neighbour, a valid but not near candidate."""
        sorted_avail, starts, counts = near_index
        cnt = counts[ck].unsqueeze(1)
        offs = (torch.rand(ck.numel(), m_near, generator=gen).to(cnt.device) * cnt).long()
        return sorted_avail[(starts[ck].unsqueeze(1) + offs).clamp(max=sorted_avail.numel() - 1)]

    @staticmethod
    def _resolve_conflicts(chosen, gain, rand_cand, rand_obj, rand_score, avail, m_rows):
        """Near candidates may coincide across batches: the first batch keeps the row, the others fall back to
        their best own (disjoint) random candidate not taken; any still unresolved take free rows."""
        n = chosen.numel()
        ar = torch.arange(n, device=chosen.device)
        first = torch.full((m_rows,), n, dtype=torch.long, device=chosen.device).scatter_reduce_(
            0, chosen, ar, reduce="amin")
        losers = first[chosen] != ar
        if not bool(losers.any()):
            return chosen, gain
        blocked = torch.zeros(m_rows, dtype=torch.bool, device=chosen.device)
        blocked[chosen[~losers]] = True
        obj = rand_obj[losers].masked_fill(blocked[rand_cand[losers]], float("inf"))
        pick = obj.argmin(1)
        li = losers.nonzero().squeeze(1)
        chosen, gain = chosen.clone(), gain.clone()
        chosen[li] = rand_cand[li, pick]
        gain[li] = rand_score[li, pick]
        stuck = li[torch.isinf(obj[torch.arange(li.numel(), device=li.device), pick])]
        if stuck.numel():
            blocked[chosen[~torch.isin(ar, stuck)]] = True
            free = avail[~blocked[avail]][: stuck.numel()]
            chosen[stuck] = free
            gain[stuck] = 0.0  # not scored: these batches' running sums undercount slightly
        return chosen, gain


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
            return RandomBuilder().assign(ctx, n_batches)
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


def kmeans(x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 15, chunk: int = 16_384,
           per_cluster: int = 64) -> torch.Tensor:
    """Cluster ids ``(M,)`` of rows ``(M, r)`` by spherical k-means (faiss when installed, else torch).

    Rows need not be unit: the fitting sample is normalised, and the nearest unit centroid (largest inner product)
    does not depend on a row's norm — so no normalised copy of all ``M`` rows is made. The centroids are fitted
    on a seeded sample of ``per_cluster · k`` rows (at least 65,536; all rows when fewer),
    then every row is assigned to its nearest centroid in one pass — the cost of the iterations does not grow with
    ``M``, and the similarity blocks are computed ``chunk`` rows at a time.
    """
    m = x.shape[0]
    k = max(1, min(k, m))
    n_fit = min(m, max(65_536, per_cluster * k))
    fit = torch.nn.functional.normalize(x[torch.randperm(m, generator=gen)[:n_fit].to(x.device)] if n_fit < m else x,
                                        dim=-1)

    def nearest(cent: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = torch.empty(rows.shape[0], dtype=torch.long, device=rows.device)
        for sl in _chunks(rows.shape[0], chunk):
            out[sl] = (rows[sl] @ cent.T).argmax(1)
        return out

    try:
        import faiss  # optional
        import numpy as np

        seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, spherical=True, verbose=False)
        km.train(np.ascontiguousarray(fit.cpu().numpy(), dtype=np.float32))
        return nearest(torch.from_numpy(km.centroids).to(x.device, x.dtype), x)
    except ImportError:
        pass
    cent = fit[torch.randperm(n_fit, generator=gen)[:k].to(x.device)].clone()
    for _ in range(iters):
        assign = nearest(cent, fit)
        sums = torch.zeros_like(cent).index_add_(0, assign, fit)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        cent = torch.nn.functional.normalize(sums, dim=-1)
        if bool(empty.any()):  # re-seed empty clusters on random rows
            cent[empty] = fit[torch.randint(n_fit, (int(empty.sum()),), generator=gen).to(x.device)]
    return nearest(cent, x)


class ClusterBuilder(BatchBuilder):
    """TAS-Balanced-like: batches made of ``c`` cluster segments, ``c`` chosen on the data to hit the window.

    Args:
        n_clusters (`int`, *optional*): k-means clusters (default ``clamp(M / (4B), 2, 1024)``).
        clusters_per_batch (`int`, *optional*): fix ``c`` (a divisor of B) instead of choosing it from the window;
            without a window the default is 1 (one cluster per batch, as TAS-Balanced).
        sketch_dim (`int`, *optional*, defaults to 32): k-means runs in the PCA sketch.
    """

    name = "cluster"

    def __init__(self, n_clusters: int | None = None, clusters_per_batch: int | None = None,
                 sketch_dim: int = 32) -> None:
        self.n_clusters, self.clusters_per_batch, self.sketch_dim = n_clusters, clusters_per_batch, sketch_dim
        self.chosen_c: int | None = None

    def config(self) -> dict[str, Any]:
        return {"builder": self.name, "n_clusters": self.n_clusters, "clusters_per_batch": self.chosen_c,
                "sketch_dim": self.sketch_dim}

    @staticmethod
    def _mix(order: torch.Tensor, n_batches: int, b: int, c: int, gen: torch.Generator) -> torch.Tensor:
        segs = order[: n_batches * b].view(n_batches * c, b // c)
        return segs[torch.randperm(n_batches * c, generator=gen)].view(n_batches, b)

    def assign(self, ctx: PlanContext, n_batches: int) -> torch.Tensor:
        b, gen = ctx.batch_size, ctx.generator
        ctx.sketch_dim = self.sketch_dim
        m = ctx.num_rows
        k = self.n_clusters or int(min(1024, max(2, m // (4 * b))))
        labels = kmeans(ctx.sketch, k, gen, iters=8)
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


BUILDERS: dict[str, type[BatchBuilder]] = {
    "random": RandomBuilder, "greedy": GreedyBuilder, "pool": PoolBuilder, "cluster": ClusterBuilder,
}


def get_builder(builder: str | type[BatchBuilder] | BatchBuilder, **kwargs: Any) -> BatchBuilder:
    """A builder from its name (``random``, ``greedy``, ``pool``, ``cluster``), class, or instance."""
    if isinstance(builder, BatchBuilder):
        return builder
    if isinstance(builder, type) and issubclass(builder, BatchBuilder):
        return builder(**kwargs)
    if isinstance(builder, str) and builder in BUILDERS:
        return BUILDERS[builder](**kwargs)
    if callable(builder):
        out = builder(**kwargs)
        if isinstance(out, BatchBuilder):
            return out
    raise ValueError(f"Unknown batch builder {builder!r}; use one of {sorted(BUILDERS)}, a BatchBuilder subclass "
                     "or instance.")


# ------------------------------------------------------------------------------------------------------------
# duplicates


def duplicate_groups(*columns: Sequence[Any]) -> torch.Tensor:
    """Group id per row ``(N,)``: rows whose value in *any* given column equals another row's share a group.

    E.g. ``duplicate_groups(dataset["anchor"], dataset["positive"])``: two pairs with the same anchor or the same
    positive text would be false negatives for each other. Union–find over equal values.
    """
    if not columns:
        raise ValueError("duplicate_groups needs at least one column.")
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"All columns must have the same length; got {[len(c) for c in columns]}.")
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[Any, int] = {}
    for col in columns:
        for i, value in enumerate(col):
            key = value if isinstance(value, (str, int, float, bytes, tuple)) else repr(value)
            j = first.setdefault(key, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    roots = torch.tensor([find(i) for i in range(n)], dtype=torch.long)
    return torch.unique(roots, return_inverse=True)[1]


def repair_duplicates(batches: list[torch.Tensor], groups: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """Swap rows between batches until no batch holds two rows of the same group."""
    nb = len(batches)
    gsets: dict[int, dict[int, int]] = {}

    def counts(k: int) -> dict[int, int]:
        if k not in gsets:
            d: dict[int, int] = {}
            for g in groups[batches[k]].tolist():
                d[g] = d.get(g, 0) + 1
            gsets[k] = d
        return gsets[k]

    # find conflicts vectorised over full-size batches
    conflicts: list[tuple[int, int]] = []
    for k, bt in enumerate(batches):
        g = groups[bt]
        s, idx = g.sort()
        dup = torch.nonzero(s[1:] == s[:-1]).squeeze(1)
        conflicts.extend((k, int(idx[p + 1])) for p in dup)
    if not conflicts:
        return batches
    batches = [bt.clone() for bt in batches]
    for k, pos in conflicts:
        g = int(groups[batches[k][pos]])
        if counts(k).get(g, 0) <= 1:
            continue  # already resolved by an earlier swap
        for k2 in torch.randperm(nb, generator=gen).tolist():
            if k2 == k or counts(k2).get(g, 0) > 0:
                continue
            cand = batches[k2]
            ok = [p for p, g2 in enumerate(groups[cand].tolist()) if counts(k).get(g2, 0) == 0]
            if not ok:
                continue
            p2 = ok[int(torch.randint(len(ok), (1,), generator=gen))]
            g2 = int(groups[cand[p2]])
            batches[k][pos], batches[k2][p2] = cand[p2].clone(), batches[k][pos].clone()
            counts(k)[g] -= 1
            counts(k)[g2] = counts(k).get(g2, 0) + 1
            counts(k2)[g2] -= 1
            counts(k2)[g] = 1
            break
        else:
            raise ValueError(f"Cannot keep the {int((groups == g).sum())} duplicate rows of group {g} (rows "
                             f"{torch.nonzero(groups == g).squeeze(1).tolist()[:10]}...) in separate batches: there "
                             f"are only {nb} batches. Deduplicate the data set or use a smaller batch size.")
    return batches


def refine_target(ctx: PlanContext, batches: torch.Tensor, totals: torch.Tensor, sample: int = 128) -> float:
    """The exact mean squared cosine that puts this plan's batches at the window's centre.

    The calibration map from the window metric to the mean cos² (:func:`target_sketch_mcos2`) is measured on
    calibration batches; a builder's batches can sit slightly off it. So the window metric of a seeded sample of the
    plan's own batches is measured, and the target is their achieved mean cos² moved by the map's difference
    between the window centre and their mean metric.
    """
    b, window = ctx.batch_size, ctx.window
    n = batches.shape[0]
    pick = torch.randperm(n, generator=ctx.generator)[: min(sample, n)].to(batches.device)
    value = measure_batches(ctx.bank, ctx.rows[batches[pick]], window.metric).mean().item()
    achieved = (totals[pick] / (b * (b - 1))).mean().item()
    shift = (target_sketch_mcos2(ctx, window.center, key="mean_sq_cosine")
             - target_sketch_mcos2(ctx, value, key="mean_sq_cosine"))
    cal = calibrate_target(ctx)["mean_sq_cosine"]
    return min(max(achieved + shift, cal.min().item()), cal.max().item())


def refine_swaps(ctx: PlanContext, batches: torch.Tensor, passes: int, proposals: int = 32,
                 chunk: int = 64) -> torch.Tensor:
    """Improve a plan ``(n, B)`` (positions) by exact swaps: each pass pairs batches and, per pair, tries
    ``proposals`` row exchanges, keeping the one that most reduces the two batches' distance to the target mean
    squared cosine (exact, full dimension — the participation ratio is a function of it; the target comes from
    :func:`refine_target`). Even passes pair the batches furthest above the target with those furthest below it,
    odd passes pair them at random.

    Each batch's exact sum of squared cosines is computed once and then updated with every swap, so a pass only
    needs the products of the proposed rows with the two batches: ``O(n · proposals · B · d)`` per pass, with
    embeddings gathered per chunk of pairs, so memory stays small.
    """
    from tqdm.auto import tqdm

    gen, b = ctx.generator, ctx.batch_size
    batches = batches.clone()
    n, dev = batches.shape[0], batches.device
    npairs = b * (b - 1)
    totals = measure_batches(ctx.bank, ctx.rows[batches], "mean_sq_cosine") * npairs  # Σ_{i≠j} cos² per batch
    target = refine_target(ctx, batches, totals)
    for it in tqdm(range(passes), desc="refining batches", disable=not ctx.progress, leave=False):
        if it % 2 == 0:
            order = torch.argsort(totals / npairs - target)
            h = n // 2
            pairs = torch.stack([order[:h], order.flip(0)[:h]], 1)
        else:
            pairs = torch.randperm(n, generator=gen).to(dev)[: n // 2 * 2].view(-1, 2)
        for sl in _chunks(pairs.shape[0], chunk):
            pk = pairs[sl]  # (p, 2)
            p = pk.shape[0]
            x = ctx.emb(batches[pk]).float()  # (p, 2, B, d)
            x = x.div_(x.norm(dim=-1, keepdim=True)).view(p, 2 * b, -1)  # batch 0 rows, then batch 1 rows
            i = torch.randint(b, (p, proposals), generator=gen).to(dev)  # leaves batch 0
            j = torch.randint(b, (p, proposals), generator=gen).to(dev)  # leaves batch 1
            xi = x.gather(1, i.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (p, T, d)
            xj = x.gather(1, (j + b).unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            ci = (xi @ x.mT).square()  # (p, T, 2B): cos² of x_i with both batches' rows
            cj = (xj @ x.mT).square()
            cij2 = ci.gather(2, (j + b).unsqueeze(-1)).squeeze(-1)  # (p, T): cos²(x_i, x_j)
            out0 = ci[..., :b].sum(-1) - ci.gather(2, i.unsqueeze(-1)).squeeze(-1)  # x_i against the rest of 0
            out1 = cj[..., b:].sum(-1) - cj.gather(2, (j + b).unsqueeze(-1)).squeeze(-1)
            in0 = cj[..., :b].sum(-1) - cij2  # x_j against batch 0 without x_i
            in1 = ci[..., b:].sum(-1) - cij2
            tot = totals[pk]  # (p, 2)
            new0 = tot[:, :1] + 2 * (in0 - out0)
            new1 = tot[:, 1:] + 2 * (in1 - out1)
            cur = ((tot / npairs) - target).abs().sum(1, keepdim=True)
            gain = cur - ((new0 / npairs - target).abs() + (new1 / npairs - target).abs())
            best = gain.argmax(1)
            ok = gain.gather(1, best.unsqueeze(1)).squeeze(1) > 0
            rows = torch.nonzero(ok).squeeze(1)
            if rows.numel():
                bi, bj = i[rows, best[rows]], j[rows, best[rows]]
                k0, k1 = pk[rows, 0], pk[rows, 1]
                a, c = batches[k0, bi].clone(), batches[k1, bj].clone()
                batches[k0, bi], batches[k1, bj] = c, a
                totals[k0] = new0[rows, best[rows]]
                totals[k1] = new1[rows, best[rows]]
    return batches


# ------------------------------------------------------------------------------------------------------------
# epoch plan


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
    for sl in _chunks(n, chunk):
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
    if window is None and b_obj.uses_window and not isinstance(b_obj, ClusterBuilder):
        raise ValueError(f"The {b_obj.name!r} builder needs a DiversityWindow (or use builder='random').")
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))

    n_full = n // batch_size
    perm = torch.randperm(n, generator=gen)
    rest = perm[n_full * batch_size:]  # leftover rows → last partial batch
    body = perm[: n_full * batch_size].sort().values  # rows to assign (sorted: builders shuffle themselves)
    ctx = PlanContext(embeddings, body, batch_size, window, gen, sketch_dim=getattr(b_obj, "sketch_dim", 32),
                      progress=n >= 100_000 if progress is None else progress)
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
                     window=window, seconds=time.perf_counter() - t0, achievable=achievable)
    logger.info("planned epoch %d with %s: %d batches, %.1f%% in window, %.2f s", epoch, b_obj.name, len(plan),
                100 * plan.in_window_fraction if window else float("nan"), plan.seconds)
    return plan
