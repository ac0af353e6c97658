"""Exact pairwise swaps between planned batches that move both towards the window's target."""

from __future__ import annotations

import torch

from ..diversity.window import measure_batches
from .context import PlanContext
from .sketch import row_chunks
from .target import calibrate_target, target_sketch_mcos2

__all__ = ["refine_swaps", "refine_target"]


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
        for sl in row_chunks(pairs.shape[0], chunk):
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
