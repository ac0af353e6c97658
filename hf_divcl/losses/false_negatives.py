"""False-negative masking of in-batch negatives: the masks :func:`~hf_divcl.losses.maths.contrastive_loss` applies.

``false_negatives="mask"`` (GISTEmbed style): an in-batch negative ``c`` of a query ``q`` (anchor, or positive in
the symmetric direction) is removed from that query's softmax when its *reference* similarity is within the margin
of the positive's, ``ref(q, c) ≥ ref(q, p) − margin``. The reference view is the loss's own embeddings, detached
(the current model as its own guide), or a guide model's (:class:`~hf_divcl.losses.infonce.InfoNCELoss` ``guide=``),
computed without gradient. The mask is built once on the gathered global batch — identical on every process — and
applied as ``−∞`` logits, so the gradient is the exact gradient of the masked softmax (the mask is piecewise
constant). The positive is never masked; a query whose negatives are all masked keeps only its positive: its loss
is exactly 0 and its gradient exactly 0, and it is counted.

``false_negatives="duplicates"`` masks only the certain false negatives: candidates whose row shares the query
row's duplicate group. Kept apart from the loss maths: this module decides *which* logits go, the loss applies them.

Whatever the mode, a *hard negative* that is the same text (or image) as a query row's own anchor or positive is a
false negative of that query — e.g. a mined negative of row ``j`` that is row ``i``'s positive, with ``i`` and ``j`` in
one batch: :func:`duplicate_negative_mask` finds them from content ids, and the loss masks them by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .gather import gather_with_grad

__all__ = ["FALSE_NEGATIVE_MODES", "duplicate_negative_mask", "false_negative_mask"]

FALSE_NEGATIVE_MODES = ("none", "mask", "duplicates")


def false_negative_mask(ref_queries: torch.Tensor, ref_candidates: torch.Tensor, target: torch.Tensor,
                        margin: float, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Which candidates are false negatives of each query, from reference embeddings (GISTEmbed's rule).

    Args:
        ref_queries (`torch.Tensor` of shape `(R, d)`): unit reference embeddings of the queries.
        ref_candidates (`torch.Tensor` of shape `(C, d)`): unit reference embeddings of the candidates.
        target (`torch.Tensor` of shape `(R,)`): the column of each query's positive.
        margin (`float`): candidate ``c`` is masked for query ``r`` when
            ``ref(r, c) ≥ ref(r, target_r) − margin`` (so a duplicate of the positive is masked even at margin 0).
        exclude (`torch.Tensor` of shape `(R,)`, *optional*): one more column per query that is not a negative
            (NT-Xent's own view); never marked.

    Returns:
        `(R, C)` bool, True = masked. The positive (and ``exclude``) columns are always False.
    """
    sim = ref_queries @ ref_candidates.T  # (R, C)
    pos = sim.gather(1, target[:, None])  # (R, 1)
    masked = sim >= pos - margin  # ties mask too: an exact duplicate of the positive is a false negative
    rows = torch.arange(sim.shape[0], device=sim.device)
    masked[rows, target] = False
    if exclude is not None:
        masked[rows, exclude] = False
    return masked


def reference_view(glob: torch.Tensor, reference: Sequence[torch.Tensor] | None, n: int, gather: bool
                    ) -> torch.Tensor:
    """`(k, N, d_r)` unit reference embeddings of the global batch's columns (no gradient)."""
    if reference is None:
        return glob.detach()
    ref = [r.detach() for r in reference]
    if len(ref) != glob.shape[0] or any(r.ndim != 2 or r.shape[0] != n for r in ref) or \
            len({r.shape[1] for r in ref}) != 1:
        raise ValueError(f"reference must hold one (n, d_r) tensor per column ({glob.shape[0]} columns of {n} rows, "
                         f"one d_r); got shapes {[tuple(r.shape) for r in ref]}.")
    width = ref[0].shape[1]
    flat = torch.stack(ref, dim=1).reshape(n, -1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    if gather:
        flat = gather_with_grad(flat)[0]
    return F.normalize(flat.reshape(flat.shape[0], len(ref), width).transpose(0, 1), dim=-1)


def duplicate_masks(groups: torch.Tensor | None, n: int, big_n: int, k: int, loss_type: str, symmetric: bool,
                     gather: bool, device: torch.device) -> list[torch.Tensor]:
    """The ``(R, C)`` masks of ``false_negatives="duplicates"``: candidates whose row shares the query row's group."""
    if groups is None or groups.ndim != 1 or groups.shape[0] != n:
        got = None if groups is None else tuple(groups.shape)
        raise ValueError(f"false_negatives='duplicates' needs each row's duplicate group, shape ({n},), got {got}; "
                         "DivCLTrainer passes them, or call contrastive_loss(..., groups=duplicate_groups(...)).")
    with torch.no_grad():
        g = groups.to(device=device, dtype=torch.float64).reshape(n, 1)  # float64: exact ids, gatherable
        if gather:
            g = gather_with_grad(g)[0]
        g = g.reshape(-1)
        same = g[:, None] == g[None, :]  # (N, N); the diagonal (the query's own positive) is cleared below
        same.fill_diagonal_(False)
        if loss_type == "infonce":
            first = torch.cat([same, torch.zeros(big_n, (k - 2) * big_n, dtype=torch.bool, device=device)], dim=1)
            return [first, same] if symmetric else [first]
        both = same.repeat(2, 2)  # NT-Xent over 2N views: view i's partner i ± N and itself are never negatives
        idx = torch.arange(2 * big_n, device=device)
        both[idx, idx] = False
        both[idx, (idx + big_n) % (2 * big_n)] = False
        return [both]


def check_false_negatives(mode: str, margin: float) -> None:
    if mode not in FALSE_NEGATIVE_MODES:
        raise ValueError(f"false_negatives must be one of {FALSE_NEGATIVE_MODES}, got {mode!r}.")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and -2 <= margin <= 2):
        raise ValueError(f"false_negative_margin must be a finite number in [-2, 2] (cosine units), got {margin!r}; "
                         "0 masks the negatives the reference ranks above the positive, 0.1 also those within 0.1 "
                         "of it.")


def duplicate_negative_mask(contents: torch.Tensor, gather: bool = False) -> torch.Tensor:
    """Hard negatives equal to the query row's anchor or positive, for InfoNCE's anchor → candidates softmax.

    Args:
        contents (`torch.Tensor` of shape `(n, k)`): content id of each row's columns (anchor, positive, ``k − 2``
            hard negatives) in one id space (:func:`hf_divcl.planning.dedupe.content_ids`); equal ids = equal content.
        gather: gather the rows of every process first (the loss's global batch).

    Returns:
        `(N, (k − 1) N)` bool, True = masked: query ``i`` against the candidates in the loss's order (the N positives,
        then each hard-negative column's N rows). Only hard-negative columns are ever marked.
    """
    with torch.no_grad():
        ids = contents.to(torch.float64)  # float64: exact ids up to 2**53, gatherable with the other columns
        if gather:
            ids = gather_with_grad(ids)[0]
        big_n, k = ids.shape
        anchor, positive = ids[:, :1], ids[:, 1:2]  # (N, 1) each: the query row's own
        blocks = [torch.zeros(big_n, big_n, dtype=torch.bool, device=ids.device)]  # the positives: never
        for c in range(2, k):  # one (N, N) block per hard-negative column, as the loss lays out its candidates
            neg = ids[:, c][None, :]
            blocks.append((neg == anchor) | (neg == positive))
        return torch.cat(blocks, dim=1)
