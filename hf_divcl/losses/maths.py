"""The contrastive maths on embeddings: InfoNCE (one-way or symmetric) and NT-Xent on the *global* batch, with
optional in-batch whitening, and what the loss computed (:class:`ContrastiveOutput`) for the diversity logger.

:func:`contrastive_loss` is a pure function of embeddings; :class:`~hf_divcl.losses.infonce.InfoNCELoss` wraps it as a
sentence-transformers loss. Candidates come from every process through :func:`~hf_divcl.losses.gather.gather_with_grad`;
false-negative masks from :mod:`hf_divcl.losses.false_negatives`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .false_negatives import (
    FALSE_NEGATIVE_MODES,
    duplicate_masks,
    duplicate_negative_mask,
    false_negative_mask,
    reference_view,
)
from .gather import gather_with_grad

__all__ = ["LOSS_TYPES", "ContrastiveOutput", "contrastive_loss", "whiten"]

LOSS_TYPES = ("infonce", "nt_xent")


def whiten(x: torch.Tensor, eps: float = 0.05) -> torch.Tensor:
    """ZCA-whiten the rows of ``x`` ``(n, d)`` with shrinkage: ``(x − μ) (Σ + εσ̄²I)^{-1/2}``.

    ``Σ = (x − μ)ᵀ(x − μ)/n`` and ``σ̄² = tr Σ / d``; ``eps`` sets the shrinkage relative to the mean variance so
    the transform stays well conditioned when ``n < d``. When ``n < d`` the push-through identity
    ``X(XᵀX/n + cI)^{-1/2} = (XXᵀ/n + cI)^{-1/2}X`` works on the ``n × n`` Gram matrix instead of ``d × d``.
    Computed in float64 (eigendecomposition, differentiable) and returned in ``x``'s dtype.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"whiten expects (n, d) with n >= 2 rows, got shape {tuple(x.shape)}.")
    xd = x.double()
    xc = xd - xd.mean(dim=0, keepdim=True)
    n, d = xc.shape
    if n < d:
        small = xc @ xc.T / n  # (n, n)
    else:
        small = xc.T @ xc / n  # (d, d)
    shrink = eps * small.diagonal().sum() / d
    evals, evecs = torch.linalg.eigh(small + shrink * torch.eye(small.shape[0], dtype=xd.dtype, device=xd.device))
    inv_sqrt = (evecs * evals.clamp_min(1e-12).rsqrt()) @ evecs.T
    out = inv_sqrt @ xc if n < d else xc @ inv_sqrt
    return out.to(x.dtype)


@dataclass
class ContrastiveOutput:
    """What the loss computed, kept for logging without recomputation (all but `loss` detached).

    Attributes:
        loss: scalar, mean over this process's anchors (with autograd graph).
        anchors: `(N, d)` unit anchors of the global batch, as the loss saw them (after whitening).
        positives: `(N, d)` unit positives of the global batch.
        logits: `(n, C)` this process's anchors against all candidates, divided by τ.
        offset: index of this process's first anchor in the global batch.
        temperature: τ used.
        sizes: `(W,)` rows per process.
        negative_mask: with false-negative masking, `(N, C)` bool, True = kept: every anchor of the global batch
            against the candidates (InfoNCE: positives then hard negatives; NT-Xent: anchors then positives).
        masked_stats: with false-negative masking, `(3,)` float tensor on the loss's device: masked negatives per
            query, masked negatives in total and queries with every negative masked, over every softmax row of the
            global batch (the N anchors; with ``symmetric`` or NT-Xent also the N positives as queries).
        loss_type: ``"infonce"`` or ``"nt_xent"``.
        duplicate_negatives: with ``contents``, the scalar count of hard negatives masked in the global batch for
            being equal to their query row's anchor or positive (a device tensor; no host sync).
    """

    loss: torch.Tensor
    anchors: torch.Tensor
    positives: torch.Tensor
    logits: torch.Tensor
    offset: int
    temperature: float
    sizes: torch.Tensor
    negative_mask: torch.Tensor | None = None
    masked_stats: torch.Tensor | None = None
    loss_type: str = "infonce"
    duplicate_negatives: torch.Tensor | None = None

    def inbatch_negative_mask(self) -> torch.Tensor | None:
        """`(N, N)` True = kept: each anchor against the global batch's positives — the in-batch negatives of
        :func:`~hf_divcl.diversity.metrics.gradient_bands` (diagonal: the anchor's own positive). ``None`` without
        masking."""
        if self.negative_mask is None:
            return None
        n = self.anchors.shape[0]
        return self.negative_mask[:, n:2 * n] if self.loss_type == "nt_xent" else self.negative_mask[:, :n]

    def softmax_stats(self) -> dict[str, torch.Tensor]:
        """Mean softmax mass on the positive and mean top-1 accuracy of this process's anchors (device tensors)."""
        n = self.logits.shape[0]
        target = torch.arange(n, device=self.logits.device) + self.offset
        p = torch.softmax(self.logits.float(), dim=-1)
        return {"p_pos": p.gather(1, target[:, None]).mean(), "top1": (p.argmax(-1) == target).float().mean()}


def contrastive_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    temperature: float | torch.Tensor = 0.05,
    *,
    negatives: Iterable[torch.Tensor] = (),
    loss_type: str = "infonce",
    symmetric: bool = False,
    whitening: bool = False,
    whitening_eps: float = 0.05,
    gather: bool = True,
    false_negatives: str = "none",
    false_negative_margin: float = 0.0,
    reference: Sequence[torch.Tensor] | None = None,
    groups: torch.Tensor | None = None,
    contents: torch.Tensor | None = None,
) -> ContrastiveOutput:
    """Contrastive loss of a batch, against the global batch when running distributed.

    Args:
        anchors (`torch.Tensor` of shape `(n, d)`): this process's anchor embeddings (normalised inside).
        positives (`torch.Tensor` of shape `(n, d)`): row ``i`` is anchor ``i``'s positive.
        temperature (`float` or scalar tensor): τ; logits are ``cos / τ``. A tensor may require grad.
        negatives: extra ``(n, d)`` hard-negative columns; they join the candidates of every anchor.
        loss_type: ``"infonce"`` (anchor → all positives, like MultipleNegativesRankingLoss / CLIP) or
            ``"nt_xent"`` (SimCLR: each of the 2N views against the other 2N − 1).
        symmetric: InfoNCE only — average with the positive → anchors direction (CLIP).
        whitening: ZCA-whiten the global batch (anchors, positives, negatives together) before normalising.
        gather: use every process's rows as candidates (with gradient) when ``torch.distributed`` is running.
        false_negatives: ``"none"`` or ``"mask"``: remove from each query's softmax the negatives whose reference
            similarity reaches the positive's minus ``false_negative_margin`` (see
            :mod:`hf_divcl.losses.false_negatives` and
            :func:`false_negative_mask`); the counts are in ``masked_stats``.
        false_negative_margin: the margin (cosine units; default 0: mask what the reference ranks above the positive).
        reference: the reference view, one ``(n, d_r)`` tensor per column (anchors, positives, negatives) of this
            process, e.g. a guide model's embeddings (gathered like the columns, never differentiated). Default: the
            loss's own unit embeddings (after whitening), detached.
        groups (`torch.Tensor` of shape `(n,)`, *optional*): with ``false_negatives="duplicates"``, each row's
            duplicate group (rows sharing an identical anchor or positive, :func:`hf_divcl.planning.duplicate_groups`):
            an in-batch candidate of the same group as the query's row is masked — a certain false negative, e.g.
            another image with the same caption. Hard-negative columns are never masked this way.
        contents (`torch.Tensor` of shape `(n, k)`, *optional*): content id of each row's columns in one id space
            (:func:`hf_divcl.planning.dedupe.content_ids`); InfoNCE with hard negatives then masks, whatever
            ``false_negatives`` is, every hard negative equal to the query row's own anchor or positive (a mined
            negative of one row that is another row's positive): :func:`duplicate_negative_mask`. Their number in
            the global batch is ``duplicate_negatives``.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
    if false_negatives not in FALSE_NEGATIVE_MODES:
        raise ValueError(f"false_negatives must be one of {FALSE_NEGATIVE_MODES}, got {false_negatives!r}.")
    if anchors.shape != positives.shape or anchors.ndim != 2:
        raise ValueError(f"anchors {tuple(anchors.shape)} and positives {tuple(positives.shape)} must both be (n, d).")
    negatives = list(negatives)
    if loss_type == "nt_xent" and negatives:
        raise ValueError("nt_xent uses the other views as negatives; pass hard negatives with loss_type='infonce'.")
    n = anchors.shape[0]
    cols = [anchors, positives, *negatives]
    width = anchors.shape[-1]
    if gather:  # one collective for every column: rows (n, k·d), gathered in process order
        g, sizes, offset = gather_with_grad(torch.stack(cols, dim=1).reshape(n, -1))
        glob = g.reshape(g.shape[0], len(cols), width).transpose(0, 1)  # (k, N, d)
    else:
        glob, sizes, offset = torch.stack(cols, dim=0), torch.tensor([n]), 0
    big_n = glob.shape[1]
    if whitening:
        glob = whiten(glob.reshape(-1, glob.shape[-1]), whitening_eps).reshape(glob.shape)
    glob = F.normalize(glob.float() if glob.dtype in (torch.float16, torch.bfloat16) else glob, dim=-1)
    u_all, v_all = glob[0], glob[1]
    u, v = u_all[offset:offset + n], v_all[offset:offset + n]
    target = torch.arange(n, device=u.device) + offset
    mask_on = false_negatives != "none"
    masked: list[torch.Tensor] = []  # global (R, C) masks, True = masked, one per softmax direction
    if false_negatives == "duplicates":
        masked = duplicate_masks(groups, n, big_n, len(cols), loss_type, symmetric, gather, u.device)
    elif mask_on:  # built on the global batch, so every process holds the same mask and the same counts
        with torch.no_grad():
            ref = reference_view(glob, reference, n, gather)  # (k, N, d_r)
            every = torch.arange(big_n, device=ref.device)
            if loss_type == "infonce":
                masked.append(false_negative_mask(ref[0], ref[1:].reshape(-1, ref.shape[-1]), every,
                                                  false_negative_margin))  # (N, (k−1) N)
                if symmetric:
                    masked.append(false_negative_mask(ref[1], ref[0], every, false_negative_margin))  # (N, N)
            else:
                ref_z = torch.cat([ref[0], ref[1]], dim=0)  # (2N, d_r)
                masked.append(false_negative_mask(ref_z, ref_z, torch.cat([every + big_n, every]),
                                                  false_negative_margin, exclude=torch.arange(2 * big_n,
                                                                                             device=ref.device)))
        masked = [m.to(u.device) for m in masked]

    duplicates = None
    if contents is not None and loss_type == "infonce" and len(cols) > 2:
        if contents.shape != (n, len(cols)):
            raise ValueError(f"contents must hold one id per row and column, shape ({n}, {len(cols)}), got "
                             f"{tuple(contents.shape)}.")
        same = duplicate_negative_mask(contents, gather=gather).to(u.device)  # (N, (k−1) N)
        duplicates = same.sum()
        if mask_on:
            masked[0] = masked[0] | same
        else:
            dup_local = same[offset:offset + n]

    if loss_type == "infonce":
        cand = glob[1:].reshape(-1, glob.shape[-1])  # positives then hard negatives, ((k−1) N, d)
        logits = u @ cand.T / temperature  # (n, (k−1) N)
        if mask_on:
            logits = logits.masked_fill(masked[0][offset:offset + n], float("-inf"))
        elif duplicates is not None:
            logits = logits.masked_fill(dup_local, float("-inf"))
        loss = F.cross_entropy(logits, target)
        if symmetric:
            logits_r = v @ u_all.T / temperature  # (n, N)
            if mask_on:
                logits_r = logits_r.masked_fill(masked[1][offset:offset + n], float("-inf"))
            loss = 0.5 * (loss + F.cross_entropy(logits_r, target))
    else:
        z = torch.cat([u_all, v_all], dim=0)  # (2N, d)
        local = torch.cat([u, v], dim=0)  # (2n, d)
        rows = torch.cat([target, target + big_n])
        logits_all = local @ z.T / temperature  # (2n, 2N)
        logits_all = logits_all.masked_fill(F.one_hot(rows, 2 * big_n).bool(), float("-inf"))
        if mask_on:
            logits_all = logits_all.masked_fill(masked[0][rows], float("-inf"))
        partner = torch.cat([target + big_n, target])
        loss = F.cross_entropy(logits_all, partner)
        logits = logits_all[:n]

    keep = stats = None
    if mask_on:
        # negatives a query can have: every candidate but its positive (NT-Xent: and its own view)
        available = [m.shape[1] - (2 if loss_type == "nt_xent" else 1) for m in masked]
        counts = torch.cat([m.sum(1) for m in masked]).float()  # (R,) masked negatives per query
        full = torch.cat([(m.sum(1) == a) & (a > 0) for m, a in zip(masked, available, strict=True)])
        stats = torch.stack([counts.mean(), counts.sum(), full.float().sum()])
        keep = ~masked[0][:big_n]
    tau = float(temperature.detach()) if isinstance(temperature, torch.Tensor) else float(temperature)
    return ContrastiveOutput(loss=loss, anchors=u_all.detach(), positives=v_all.detach(), logits=logits.detach(),
                             offset=offset, temperature=tau, sizes=sizes, negative_mask=keep, masked_stats=stats,
                             loss_type=loss_type, duplicate_negatives=duplicates)
