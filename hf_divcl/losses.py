"""Contrastive losses on the *global* batch: InfoNCE (one-way or symmetric) and NT-Xent, with optional in-batch
whitening, negatives gathered across processes *with* gradient, and the statistics the diversity logger needs.

The pure function :func:`contrastive_loss` does the maths on embeddings; :class:`InfoNCELoss` wraps it as a
sentence-transformers loss (``forward(sentence_features, labels)``) so it plugs into any ST trainer.

Distributed convention (as in CLIP-style training): every process computes the loss of its *local* anchors
against the *global* candidates; :func:`gather_with_grad` sums the candidates' gradients from every process
back onto their owner, and DDP's gradient averaging then yields the gradient of the global mean loss.

False-negative masking (``false_negatives="mask"``, GISTEmbed style): an in-batch negative ``c`` of a query ``q``
(anchor, or positive in the symmetric direction) is removed from that query's softmax when its *reference*
similarity is within the margin of the positive's, ``ref(q, c) ≥ ref(q, p) − margin``. The reference view is the
loss's own embeddings, detached (the current model as its own guide), or a guide model's (:class:`InfoNCELoss`
``guide=``), computed without gradient. The mask is built once on the gathered global batch — identical on every
process — and applied as ``−∞`` logits, so the gradient is the exact gradient of the masked softmax (the mask is
piecewise constant). The positive is never masked; a query whose negatives are all masked keeps only its
positive: its loss is exactly 0 and its gradient exactly 0, and it is counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ContrastiveOutput",
    "InfoNCELoss",
    "contrastive_loss",
    "false_negative_mask",
    "gather_with_grad",
    "whiten",
]

LOSS_TYPES = ("infonce", "nt_xent")
logger = logging.getLogger(__name__)

FALSE_NEGATIVE_MODES = ("none", "mask", "duplicates")


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
        negative_mask: with false-negative masking, `(N, C)` bool, True = kept: every anchor of the global batch
            against the candidates (InfoNCE: positives then hard negatives; NT-Xent: anchors then positives).
        masked_stats: with false-negative masking, `(3,)` float tensor on the loss's device: masked negatives per
            query, masked negatives in total and queries with every negative masked, over every softmax row of the
            global batch (the N anchors; with ``symmetric`` or NT-Xent also the N positives as queries).
        loss_type: ``"infonce"`` or ``"nt_xent"``.
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

    def inbatch_negative_mask(self) -> torch.Tensor | None:
        """`(N, N)` True = kept: each anchor against the global batch's positives — the in-batch negatives of
        :func:`~hf_divcl.spectral.gradient_bands` (diagonal: the anchor's own positive). ``None`` without masking."""
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


def _reference_view(glob: torch.Tensor, reference: Sequence[torch.Tensor] | None, n: int, gather: bool
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
            similarity reaches the positive's minus ``false_negative_margin`` (see the module docstring and
            :func:`false_negative_mask`); the counts are in ``masked_stats``.
        false_negative_margin: the margin (cosine units; default 0: mask what the reference ranks above the positive).
        reference: the reference view, one ``(n, d_r)`` tensor per column (anchors, positives, negatives) of this
            process, e.g. a guide model's embeddings (gathered like the columns, never differentiated). Default: the
            loss's own unit embeddings (after whitening), detached.
        groups (`torch.Tensor` of shape `(n,)`, *optional*): with ``false_negatives="duplicates"``, each row's
            duplicate group (rows sharing an identical anchor or positive, :func:`hf_divcl.planning.duplicate_groups`):
            an in-batch candidate of the same group as the query's row is masked — a certain false negative, e.g.
            another image with the same caption. Hard-negative columns are never masked this way.
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
        masked = _duplicate_masks(groups, n, big_n, len(cols), loss_type, symmetric, gather, u.device)
    elif mask_on:  # built on the global batch, so every process holds the same mask and the same counts
        with torch.no_grad():
            ref = _reference_view(glob, reference, n, gather)  # (k, N, d_r)
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

    if loss_type == "infonce":
        cand = glob[1:].reshape(-1, glob.shape[-1])  # positives then hard negatives, ((k−1) N, d)
        logits = u @ cand.T / temperature  # (n, (k−1) N)
        if mask_on:
            logits = logits.masked_fill(masked[0][offset:offset + n], float("-inf"))
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
                             loss_type=loss_type)


def _duplicate_masks(groups: torch.Tensor | None, n: int, big_n: int, k: int, loss_type: str, symmetric: bool,
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
        false_negatives (`str`, *optional*, defaults to `"none"`): ``"mask"`` removes from each anchor's softmax
            the in-batch negatives whose reference similarity to it reaches the positive's minus
            ``false_negative_margin`` (GISTEmbed's rule; see :func:`false_negative_mask`); ``"duplicates"`` removes
            only the certain ones, candidates whose row has an identical anchor or positive (set
            ``batch_groups`` before each call — :class:`~hf_divcl.trainer.DivCLTrainer` does).
        false_negative_margin (`float`, *optional*, defaults to `0.0`): the margin, in cosine units.
        guide (`SentenceTransformer`, *optional*): reference model for the mask (embeddings under ``no_grad``,
            never trained); default: the model's own embeddings, detached. Text the guide tokenises differently is
            decoded with the model's tokenizer and re-tokenised, as GISTEmbedLoss does. Check it on a few rows with
            :meth:`check_guide` (DivCLTrainer does so before training).
    """

    def __init__(self, model: nn.Module, temperature: float = 0.05, *, learnable_temperature: bool = False,
                 min_temperature: float = 0.01, loss_type: str = "infonce", symmetric: bool = False,
                 gather_across_devices: bool = True, whitening: bool = False, whitening_eps: float = 0.05,
                 false_negatives: str = "none", false_negative_margin: float = 0.0,
                 guide: nn.Module | None = None) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
        _check_false_negatives(false_negatives, false_negative_margin)
        if guide is not None and false_negatives != "mask":
            raise ValueError("A guide model only serves false-negative masking: pass false_negatives='mask' with it.")
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
        self.false_negatives = false_negatives
        self.false_negative_margin = float(false_negative_margin)
        self.batch_groups: torch.Tensor | None = None  # (n,) duplicate group per row, for "duplicates"; consumed
        # not a submodule: the guide is never trained, never in the optimiser, never moved or saved with the loss
        self.__dict__["guide"] = guide
        self._retokenize = _must_retokenize(model, guide) if guide is not None else False
        if guide is not None:
            guide.eval()

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(self.min_temperature, 1.0)

    @property
    def citation(self) -> str:
        return ("@inproceedings{oord2018cpc, title={Representation Learning with Contrastive Predictive Coding}, "
                "author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol}, year={2018}}")

    def embed(self, sentence_features: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        return [self.model(f)["sentence_embedding"] for f in sentence_features]

    def guide_embeddings(self, sentence_features: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The guide's embeddings of each column, under ``no_grad`` (re-tokenised when the tokenizers differ)."""
        guide = self.guide
        if guide.training:
            guide.eval()
        out = []
        with torch.no_grad():
            for f in sentence_features:
                if self._retokenize:
                    if "input_ids" not in f or f["input_ids"].ndim != 2:
                        raise ValueError("The guide tokenises differently from the model, so its inputs are rebuilt "
                                         "from the decoded text; these features have no (batch, tokens) input_ids.")
                    texts = self.model.tokenizer.batch_decode(f["input_ids"], skip_special_tokens=True)
                    feats = guide.preprocess(texts)
                else:
                    feats = dict(f)  # a shallow copy: the guide writes its outputs into the dict it is given
                device = _device_of(guide)
                feats = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in feats.items()}
                out.append(guide(feats)["sentence_embedding"])
        return out

    def check_guide(self, columns: Mapping[str, Sequence[Any]]) -> int:
        """Encode a few rows of every input column with the guide exactly as training will (model preprocessing,
        then the guide) and raise a ``ValueError`` saying what is wrong: inputs the guide cannot read (another
        modality, a tokenizer whose text does not survive decoding), a missing or malformed ``sentence_embedding``,
        NaN/Inf or zero vectors, or columns of different dimensions. Returns the guide's dimension."""
        if self.guide is None:
            raise ValueError("check_guide: this loss has no guide model.")
        dims: dict[str, int] = {}
        for name, values in columns.items():
            values = list(values)
            what = f"The guide model cannot encode column {name!r} the way training feeds it"
            try:
                feats = self.model.preprocess(values)
                device = _device_of(self.model)
                feats = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in feats.items()}
                emb = self.guide_embeddings([feats])[0]
            except Exception as err:  # re-raised with what to do
                raise ValueError(f"{what} ({type(err).__name__}: {err}). The guide must read the same inputs as "
                                 "the model: text models with a tokenizer (another vocabulary is fine: the text is "
                                 "decoded and re-tokenised), image models with pixel inputs the model's processor "
                                 "produces.") from err
            if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != len(values) or emb.shape[1] < 1:
                shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
                raise ValueError(f"{what}: its sentence_embedding for {len(values)} rows has shape {shape}; expected "
                                 f"({len(values)}, d) with d >= 1 (a pooled SentenceTransformer).")
            if not bool(torch.isfinite(emb).all()) or bool((emb.abs().amax(dim=-1) == 0).any()):
                raise ValueError(f"{what}: it returns NaN/Inf or all-zero embeddings, which have no direction to "
                                 "compare.")
            dims[name] = emb.shape[1]
        if len(set(dims.values())) > 1:
            raise ValueError(f"The guide model's embedding dimension differs between columns: {dims}; the reference "
                             "similarities compare anchors with positives, so one dimension is needed.")
        return next(iter(dims.values()), 0)

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        sentence_features = list(sentence_features)
        embs = self.embed(sentence_features)
        if len(embs) < 2:
            raise ValueError(f"InfoNCELoss needs at least two columns (anchor, positive); the batch has {len(embs)}. "
                             "For single-image datasets use DivCLDataCollator's two-view augmentation.")
        reference = None
        if self.false_negatives == "mask" and self.guide is not None:
            reference = [r.to(embs[0].device) for r in self.guide_embeddings(sentence_features)]
        groups, self.batch_groups = self.batch_groups, None
        if self.false_negatives == "duplicates" and groups is None:  # no row ids here (e.g. a probe batch)
            if not getattr(self, "_warned_groups", False):
                self._warned_groups = True
                logger.warning("false_negatives='duplicates' without batch_groups: duplicates are unknown for this "
                               "batch, nothing is masked. DivCLTrainer sets them for every training batch.")
            n, rank = embs[0].shape[0], torch.distributed.get_rank() if _dist_ready() else 0
            groups = torch.arange(rank * n, (rank + 1) * n, device=embs[0].device)  # unique across processes
        out = contrastive_loss(embs[0], embs[1], self.temperature, negatives=embs[2:], loss_type=self.loss_type,
                               symmetric=self.symmetric, whitening=self.whitening, whitening_eps=self.whitening_eps,
                               gather=self.gather_across_devices, false_negatives=self.false_negatives,
                               false_negative_margin=self.false_negative_margin, reference=reference,
                               groups=groups)
        self.last_output = out
        return out.loss

    def get_config_dict(self) -> dict[str, object]:
        config: dict[str, object] = {
            "temperature": round(float(self.temperature), 6), "loss_type": self.loss_type,
            "symmetric": self.symmetric, "gather_across_devices": self.gather_across_devices,
            "whitening": self.whitening, "learnable_temperature": isinstance(self.log_temperature, nn.Parameter)}
        if self.false_negatives != "none":
            config.update(false_negatives=self.false_negatives, false_negative_margin=self.false_negative_margin,
                          guide=_model_name(self.guide) if self.guide is not None else "self (detached)")
        return config


def _check_false_negatives(mode: str, margin: float) -> None:
    if mode not in FALSE_NEGATIVE_MODES:
        raise ValueError(f"false_negatives must be one of {FALSE_NEGATIVE_MODES}, got {mode!r}.")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and -2 <= margin <= 2):
        raise ValueError(f"false_negative_margin must be a finite number in [-2, 2] (cosine units), got {margin!r}; "
                         "0 masks the negatives the reference ranks above the positive, 0.1 also those within 0.1 "
                         "of it.")


def _must_retokenize(model: nn.Module, guide: nn.Module) -> bool:
    """Whether the guide needs the text re-tokenised (another vocabulary or a shorter maximum length)."""
    mt, gt = getattr(model, "tokenizer", None), getattr(guide, "tokenizer", None)
    m_text = hasattr(mt, "get_vocab") and hasattr(mt, "batch_decode")
    g_text = hasattr(gt, "get_vocab")
    if m_text != g_text:
        raise ValueError(f"The guide model cannot read this model's inputs: the model is "
                         f"{'a text model' if m_text else 'not a text model'} and the guide "
                         f"{'is a text model' if g_text else 'is not'} ({type(gt).__name__} vs {type(mt).__name__}). "
                         "Use a guide of the same modality.")
    if not m_text:
        return False
    try:
        return mt.get_vocab() != gt.get_vocab() or \
            (getattr(guide, "max_seq_length", None) or 0) < (getattr(model, "max_seq_length", None) or 0)
    except NotImplementedError:
        return True


def _device_of(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _model_name(model: nn.Module) -> str:
    card = getattr(model, "model_card_data", None)
    return str(getattr(card, "base_model", None) or getattr(model, "name_or_path", None) or type(model).__name__)
