"""Gathering a batch across processes *with* gradient, so a contrastive loss sees the global batch.

Distributed convention (as in CLIP-style training): every process computes the loss of its *local* anchors
against the *global* candidates; :func:`gather_with_grad` sums the candidates' gradients from every process
back onto their owner, and DDP's gradient averaging then yields the gradient of the global mean loss. Kept apart
from the loss maths because the false-negative masks and the trainer gather through it too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gather_with_grad"]


def distributed_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of equally shaped ``(n, d)`` tensors; backward sums every process's gradient (all_reduce) and
    returns the slice of this process — only all_gather and all_reduce, so it runs on gloo as well as NCCL."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Concatenate ``x`` ``(n_r, d)`` of every process in rank order, keeping the autograd graph.

    Processes may hold different numbers of rows (the last batch of an epoch): rows are padded to the largest
    count for the collective and the padding is removed again. Returns ``(gathered (N, d), sizes (W,), offset)``
    where ``offset`` is the first row of this process. Without ``torch.distributed`` it returns ``x`` itself.
    """
    if not distributed_ready() or torch.distributed.get_world_size() == 1:
        return x, torch.tensor([x.shape[0]]), 0
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(n) for _ in range(world)]
    torch.distributed.all_gather(sizes, n)
    sizes_list = [int(s) for s in torch.cat(sizes).tolist()]  # one small sync, needed for unequal last batches
    top = max(sizes_list)
    padded = F.pad(x, (0, 0, 0, top - x.shape[0])) if x.shape[0] < top else x
    full = _GatherWithGrad.apply(padded)
    if all(s == top for s in sizes_list):
        out = full
    else:
        out = torch.cat([full[r * top:r * top + s] for r, s in enumerate(sizes_list)], dim=0)
    return out, torch.tensor(sizes_list), sum(sizes_list[:rank])
