"""``greedy`` (Greedy-m): all batches filled in parallel, one slot at a time, towards the window's target."""

from __future__ import annotations

from typing import Any

import torch

from ..diversity.window import measure_batches
from .base import BatchBuilder
from .context import PlanContext
from .sketch import kmeans, row_chunks
from .target import calibrate_target, target_sketch_mcos2

__all__ = ["GreedyBuilder"]


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
            raise ValueError("GreedyBuilder aims at a window and got none; plan with builder='random' instead.")
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
        for sl in row_chunks(n, chunk):
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
