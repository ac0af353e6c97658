"""Contrastive losses on the *global* batch: InfoNCE (one-way or symmetric) and NT-Xent, with optional in-batch
whitening, negatives gathered across processes *with* gradient, and the statistics the diversity logger needs.

The pure function :func:`contrastive_loss` does the maths on embeddings; :class:`InfoNCELoss` wraps it as a
sentence-transformers loss (``forward(sentence_features, labels)``) so it plugs into any ST trainer.

Distributed convention (as in CLIP-style training): every process computes the loss of its *local* anchors
against the *global* candidates; :func:`gather_with_grad` sums the candidates' gradients from every process
back onto their owner, and DDP's gradient averaging then yields the gradient of the global mean loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ContrastiveOutput",
    "InfoNCELoss",
    "contrastive_loss",
    "gather_with_grad",
    "whiten",
]

LOSS_TYPES = ("infonce", "nt_xent")


def _dist_ready() -> bool:
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
    if not _dist_ready() or torch.distributed.get_world_size() == 1:
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
    """

    loss: torch.Tensor
    anchors: torch.Tensor
    positives: torch.Tensor
    logits: torch.Tensor
    offset: int
    temperature: float
    sizes: torch.Tensor

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
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
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

    if loss_type == "infonce":
        cand = glob[1:].reshape(-1, glob.shape[-1])  # positives then hard negatives, ((k−1) N, d)
        logits = u @ cand.T / temperature
        loss = F.cross_entropy(logits, target)
        if symmetric:
            loss = 0.5 * (loss + F.cross_entropy(v @ u_all.T / temperature, target))
    else:
        z = torch.cat([u_all, v_all], dim=0)  # (2N, d)
        local = torch.cat([u, v], dim=0)  # (2n, d)
        rows = torch.cat([target, target + big_n])
        logits_all = local @ z.T / temperature
        logits_all = logits_all.masked_fill(F.one_hot(rows, 2 * big_n).bool(), float("-inf"))
        partner = torch.cat([target + big_n, target])
        loss = F.cross_entropy(logits_all, partner)
        logits = logits_all[:n]

    tau = float(temperature.detach()) if isinstance(temperature, torch.Tensor) else float(temperature)
    return ContrastiveOutput(loss=loss, anchors=u_all.detach(), positives=v_all.detach(), logits=logits.detach(),
                             offset=offset, temperature=tau, sizes=sizes)


class InfoNCELoss(nn.Module):
    """InfoNCE / NT-Xent as a sentence-transformers loss, on the global batch across processes.

    Columns of the dataset are (anchor, positive, *hard negatives); for image–image training the collator makes
    the two augmented views the two columns. With the defaults it equals ``MultipleNegativesRankingLoss`` at
    ``scale = 1/τ = 20`` on one process, and extends it to the global batch on many.

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (default 0.05).
        learnable_temperature: learn ``log τ`` (clamped to ``[min_temperature, 1]``); the trainer adds it to the
            optimiser.
        loss_type: ``"infonce"`` or ``"nt_xent"``.
        symmetric: average both directions (InfoNCE).
        gather_across_devices: candidates from every process (with gradient).
        whitening, whitening_eps: ZCA-whiten the global batch before normalising (see :func:`whiten`).
    """

    def __init__(self, model: nn.Module, temperature: float = 0.05, *, learnable_temperature: bool = False,
                 min_temperature: float = 0.01, loss_type: str = "infonce", symmetric: bool = False,
                 gather_across_devices: bool = True, whitening: bool = False, whitening_eps: float = 0.05) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
        self.model = model
        self.loss_type = loss_type
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices
        self.whitening = whitening
        self.whitening_eps = whitening_eps
        self.min_temperature = min_temperature
        if learnable_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        else:
            self.register_buffer("log_temperature", torch.tensor(math.log(temperature)), persistent=False)
        self.last_output: ContrastiveOutput | None = None

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(self.min_temperature, 1.0)

    @property
    def citation(self) -> str:
        return ("@inproceedings{oord2018cpc, title={Representation Learning with Contrastive Predictive Coding}, "
                "author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol}, year={2018}}")

    def embed(self, sentence_features: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        return [self.model(f)["sentence_embedding"] for f in sentence_features]

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        embs = self.embed(sentence_features)
        if len(embs) < 2:
            raise ValueError(f"InfoNCELoss needs at least two columns (anchor, positive); the batch has {len(embs)}. "
                             "For single-image datasets use DivCLDataCollator's two-view augmentation.")
        out = contrastive_loss(embs[0], embs[1], self.temperature, negatives=embs[2:], loss_type=self.loss_type,
                               symmetric=self.symmetric, whitening=self.whitening, whitening_eps=self.whitening_eps,
                               gather=self.gather_across_devices)
        self.last_output = out
        return out.loss

    def get_config_dict(self) -> dict[str, object]:
        return {"temperature": round(float(self.temperature), 6), "loss_type": self.loss_type,
                "symmetric": self.symmetric, "gather_across_devices": self.gather_across_devices,
                "whitening": self.whitening, "learnable_temperature": isinstance(self.log_temperature, nn.Parameter)}
