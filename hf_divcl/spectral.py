"""Batch diversity and InfoNCE gradient bands.

Two measurements everything else in hf_divcl rests on:

* :func:`batch_diversity` — how spread out a batch of embeddings is (effective rank, participation ratio,
  top eigenvalue of the trace-1 second moment, mean (squared) cosine);
* :func:`gradient_bands` — the exact norm of the InfoNCE gradient at every anchor and the analytic bands that
  bound it from the softmax statistics and the spectrum of the negatives (see ``docs/maths.md``).

Everything is pure torch, works on any device and dtype (half precision is promoted to float32; pass float64
for reference-grade numbers), and accepts leading batch dimensions: a ``(R, B, d)`` input evaluates ``R``
batches at once. No Python loop runs over the rows of a batch.

Notation (one anchor): ``u`` anchor, ``v`` its positive, ``z_j`` the negatives, all unit-norm; ``a = u·v``,
``c_j = u·z_j``; softmax over ``[a, c_1..c_K] / τ`` gives ``p₊`` (positive's mass) and ``q_j = p_j / (1 − p₊)``
(the softmax over negatives only); ``m = Σ q_j z_j``; ``V_q = Σ q_j ‖z_j − m‖² = 1 − ‖m‖²``;
``K_eff = 1 / Σ q_j²``. Then ``∇_u ℓ = ((1 − p₊)/τ)(m − v)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

__all__ = [
    "DIVERSITY_METRICS",
    "GradientBands",
    "batch_diversity",
    "gradient_bands",
    "infonce_loss",
    "participation_ratio",
]

DIVERSITY_METRICS = ("effective_rank", "participation_ratio", "lambda_max", "mean_cosine", "mean_sq_cosine")
"""The batch-diversity measures :func:`batch_diversity` returns (one value per batch each)."""

# Relative slack used when testing band containment: the bands are exact inequalities, so only rounding of
# the last bits can put a measured norm outside them.
BAND_RTOL = 1e-6


# --------------------------------------------------------------------------------------------------------------
# input checks


def _float_dtype(x: torch.Tensor) -> torch.Tensor:
    """Promote integer and half-precision inputs to float32; keep float32/float64 as they are."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.to(torch.float32)


def _first_bad_row(mask: torch.Tensor) -> str:
    """Human-readable index of the first True entry of a ``(..., B)`` mask, e.g. ``"row 3"`` or ``"[2, 5]"``."""
    idx = torch.nonzero(mask, as_tuple=False)[0].tolist()
    return f"row {idx[0]}" if len(idx) == 1 else f"row {idx[-1]} of batch {tuple(idx[:-1])}"


def _check_embeddings(x: torch.Tensor, name: str, min_rows: int = 2) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (..., B, d), got {type(x).__name__}.")
    if x.ndim < 2:
        raise ValueError(f"`{name}` must have shape (..., B, d) with B rows of dimension d; got shape "
                         f"{tuple(x.shape)}.")
    if x.shape[-2] < min_rows:
        raise ValueError(f"`{name}` needs at least {min_rows} rows (B >= {min_rows}); got B = {x.shape[-2]}. "
                         "Diversity and in-batch negatives are undefined for a single row.")
    if x.shape[-1] < 1:
        raise ValueError(f"`{name}` has embedding dimension 0; expected d >= 1.")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"`{name}` must be a real floating tensor, got dtype {x.dtype}.")
    x = _float_dtype(x)
    finite = torch.isfinite(x).all(dim=-1)
    if not bool(finite.all()):
        raise ValueError(f"`{name}` contains NaN or Inf at {_first_bad_row(~finite)}; "
                         "check the model output (e.g. fp16 overflow) before measuring it.")
    zero = (x.abs().amax(dim=-1) == 0)
    if bool(zero.any()):
        raise ValueError(f"`{name}` has an all-zero embedding at {_first_bad_row(zero)}; a zero vector has no "
                         "direction and cannot be normalised. Drop or fix that row.")
    return x


def _check_temperature(temperature: float | torch.Tensor) -> float | torch.Tensor:
    t = temperature
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"`temperature` must be a scalar, got a tensor of shape {tuple(t.shape)}.")
        tv = float(t.detach())
    else:
        try:
            tv = float(t)
        except (TypeError, ValueError):
            raise ValueError(f"`temperature` must be a positive number, got {t!r}.") from None
    if not math.isfinite(tv) or tv <= 0:
        raise ValueError(f"`temperature` must be a finite number > 0, got {tv}. Typical values are 0.01-1 "
                         "(sentence-transformers' MultipleNegativesRankingLoss uses scale 20, i.e. τ = 0.05).")
    return t if isinstance(t, torch.Tensor) else tv


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Row-normalise in float64-safe fashion (no clamp: zero rows were rejected by the checks)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------------------------
# diversity


def participation_ratio(similarity: torch.Tensor) -> torch.Tensor:
    """Participation-ratio rank ``n² / ‖G‖_F²`` of a ``(..., n, n)`` cosine-similarity matrix.

    Equals ``(tr Σ)² / tr(Σ²)`` of the trace-1 second moment without any eigendecomposition. Shape ``(...)``.
    """
    n = similarity.shape[-1]
    return n * n / similarity.square().sum(dim=(-2, -1))


def batch_diversity(
    embeddings: torch.Tensor | None = None,
    *,
    similarity: torch.Tensor | None = None,
    spectrum: bool = True,
    validate: bool = True,
) -> dict[str, torch.Tensor]:
    """Diversity of one batch (or of ``R`` batches at once) of embeddings.

    Args:
        embeddings (`torch.Tensor` of shape `(..., B, d)`, *optional*):
            The batch; rows are L2-normalised inside.
        similarity (`torch.Tensor` of shape `(..., B, B)`, *optional*):
            An already computed cosine-similarity matrix of unit rows (e.g. the loss's own, *before* dividing by
            the temperature). Use instead of `embeddings` to avoid recomputing it.
        spectrum (`bool`, *optional*, defaults to `True`):
            Compute the eigenvalue spectrum (needed for `effective_rank`, `lambda_max`, `spectrum`). With `False`
            only the eigendecomposition-free metrics are returned — the cheapest option for per-step logging.
        validate (`bool`, *optional*, defaults to `True`):
            Check shapes and finiteness (one host sync). Turn off in hot loops on trusted inputs.

    Returns:
        `dict[str, torch.Tensor]`, each value of shape `(...)` unless noted (call `.item()` for a float):
            - `effective_rank`: ``exp(H(p))`` with ``p`` the normalised eigenvalues of the second moment.
            - `participation_ratio`: ``B² / ‖G‖_F²`` (from the Gram matrix, no eigendecomposition).
            - `lambda_max`: largest eigenvalue of the trace-1 second moment ``XᵀX / B``.
            - `mean_cosine`, `mean_sq_cosine`: mean of ``cos`` and ``cos²`` over ordered pairs ``i ≠ j``.
            - `spectrum`: shape `(..., min(B, d))`, eigenvalues of the trace-1 second moment, descending.
            - `batch_size`: ``B`` as a tensor.
    """
    if (embeddings is None) == (similarity is None):
        raise ValueError("Pass exactly one of `embeddings` (shape (..., B, d)) or `similarity` (shape (..., B, B)).")

    if embeddings is not None:
        x = _check_embeddings(embeddings, "embeddings") if validate else _float_dtype(embeddings)
        x = _normalize(x)
        b, d = x.shape[-2], x.shape[-1]
        # The smaller of XXᵀ (B×B) and XᵀX (d×d) carries the same non-zero spectrum and Frobenius norm.
        small = x.mT @ x if d < b else x @ x.mT
        sum_all = torch.linalg.vector_norm(x.sum(dim=-2), dim=-1).square()  # Σ_ij cos_ij = ‖Σ x_i‖²
        frob2 = small.square().sum(dim=(-2, -1))  # ‖G‖_F²
        trace = torch.full_like(frob2, float(b))
    else:
        g = similarity
        if validate:
            if not isinstance(g, torch.Tensor) or g.ndim < 2 or g.shape[-1] != g.shape[-2]:
                shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
                raise ValueError(f"`similarity` must be a square (..., B, B) tensor, got {shape}.")
            if g.shape[-1] < 2:
                raise ValueError(f"`similarity` needs B >= 2 rows, got B = {g.shape[-1]}.")
            g = _float_dtype(g)
            if not bool(torch.isfinite(g).all()):
                raise ValueError("`similarity` contains NaN or Inf.")
            diag = torch.diagonal(g, dim1=-2, dim2=-1)
            if not bool(torch.allclose(diag, torch.ones_like(diag), atol=1e-3)):
                raise ValueError("`similarity` must be the cosine matrix of unit rows (diagonal = 1); if it is the "
                                 "loss's logits, multiply by the temperature first.")
        else:
            g = _float_dtype(g)
        b = g.shape[-1]
        small = g
        sum_all = g.sum(dim=(-2, -1))
        frob2 = g.square().sum(dim=(-2, -1))
        trace = torch.diagonal(g, dim1=-2, dim2=-1).sum(-1)

    pairs = b * (b - 1)
    out: dict[str, torch.Tensor] = {
        "participation_ratio": trace.square() / frob2,
        "mean_cosine": (sum_all - trace) / pairs,
        # Σ_{i≠j} cos² = ‖G‖_F² − Σ_i cos_ii² (= B for unit rows)
        "mean_sq_cosine": (frob2 - (trace if embeddings is not None else
                                    torch.diagonal(small, dim1=-2, dim2=-1).square().sum(-1))) / pairs,
        "batch_size": torch.tensor(b, device=small.device),
    }
    if spectrum:
        evals = torch.linalg.eigvalsh(small).flip(-1).clamp_min(0)  # descending, (..., min(B, d))
        p = evals / evals.sum(-1, keepdim=True)
        out["spectrum"] = p
        out["lambda_max"] = p[..., 0]
        out["effective_rank"] = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return out


# --------------------------------------------------------------------------------------------------------------
# gradient bands


@dataclass
class GradientBands:
    """Per-anchor InfoNCE gradient norms, their analytic bands and the softmax statistics behind them.

    Per-anchor fields have shape `(..., B)`; batch-level ones shape `(...)`. With ``s = (1 − p₊)/τ``:

    - spread band: ``s(1 − ‖m‖) ≤ ‖∇‖ ≤ s(1 + ‖m‖)``, ``‖m‖ = √(1 − V_q)``;
    - alignment-gap bound: ``‖∇‖ ≥ s·|a − Σ q_j c_j|``;
    - spectral band: ``s·max(0, 1 − ρ) ≤ ‖∇‖ ≤ s(1 + ρ)``, ``ρ = √min(1, λ_max(G_N)/K_eff)``.

    `lower` / `upper` are the tightest of these. For in-batch negatives, ``λ_max(G_N)`` is that of the
    positives' Gram matrix ``VVᵀ``, which by Cauchy interlacing bounds every anchor's own ``(B−1)×(B−1)`` block.
    With a ``negative_mask`` every anchor's statistics (``q``, ``K_eff``, ``V_q``, ``λ_max``) are those of its own
    kept negatives; an anchor with none kept has loss 0, gradient 0, ``K_eff = V_q = λ_max = 0`` and band [0, 0].
    """

    grad_norm: torch.Tensor  # (..., B) exact ‖∇_u ℓ‖
    lower: torch.Tensor  # (..., B) tightest lower bound
    upper: torch.Tensor  # (..., B) tightest upper bound
    spread_lower: torch.Tensor
    spread_upper: torch.Tensor
    alignment_lower: torch.Tensor
    spectral_lower: torch.Tensor
    spectral_upper: torch.Tensor
    scale: torch.Tensor  # (..., B) s = (1 − p₊)/τ
    p_pos: torch.Tensor  # (..., B) softmax mass on the positive
    v_q: torch.Tensor  # (..., B) hardness-weighted spread of the negatives
    k_eff: torch.Tensor  # (..., B) effective number of negatives 1/Σq²
    m_minus_v: torch.Tensor  # (..., B) ‖m − v‖
    alignment: torch.Tensor  # (..., B) a = u·v
    lambda_max_neg: torch.Tensor  # (...) or (..., B) λ_max of the negatives' Gram matrix (kept ones if masked)
    loss: torch.Tensor  # (..., B) per-anchor InfoNCE loss
    nt_xent_loss: torch.Tensor  # (...) symmetric NT-Xent over the 2B views, mean (NaN with a negative mask)
    nt_xent_grad_norm: torch.Tensor  # (...) ‖∇_Z L‖_F, exact
    nt_xent_grad_upper: torch.Tensor  # (...) √(λ_max(G)‖M‖_F²)/(2Bτ)
    temperature: float

    def inside(self, rtol: float = BAND_RTOL) -> torch.Tensor:
        """Boolean `(..., B)`: is each anchor's measured norm within ``[lower, upper]`` (up to rounding)?"""
        slack = rtol * self.scale + torch.finfo(self.scale.dtype).tiny
        return (self.grad_norm >= self.lower - slack) & (self.grad_norm <= self.upper + slack)

    def summary(self) -> dict[str, float]:
        """Batch means of the main quantities as Python floats (one host sync), for reports and logs."""
        ins = self.inside()
        return {
            "grad_norm_mean": self.grad_norm.mean().item(),
            "lower_mean": self.lower.mean().item(),
            "upper_mean": self.upper.mean().item(),
            "spectral_lower_mean": self.spectral_lower.mean().item(),
            "spectral_upper_mean": self.spectral_upper.mean().item(),
            "inside_fraction": ins.to(self.grad_norm.dtype).mean().item(),
            "p_pos_mean": self.p_pos.mean().item(),
            "v_q_mean": self.v_q.mean().item(),
            "k_eff_mean": self.k_eff.mean().item(),
            "loss_mean": self.loss.mean().item(),
            "nt_xent_loss": self.nt_xent_loss.mean().item(),
            "nt_xent_grad_norm": self.nt_xent_grad_norm.mean().item(),
            "nt_xent_grad_upper": self.nt_xent_grad_upper.mean().item(),
        }

    def to(self, *args, **kwargs) -> GradientBands:
        """Move/cast every tensor field (e.g. ``bands.to("cpu")``)."""
        vals = {f.name: getattr(self, f.name) for f in fields(self)}
        return GradientBands(**{k: v.to(*args, **kwargs) if isinstance(v, torch.Tensor) else v
                                for k, v in vals.items()})


def _lambda_max_gram(z: torch.Tensor) -> torch.Tensor:
    """Largest eigenvalue of ``Z Zᵀ`` for ``(..., K, d)`` unit rows, via the smaller of ``ZZᵀ`` and ``ZᵀZ``."""
    k, d = z.shape[-2], z.shape[-1]
    small = z.mT @ z if d < k else z @ z.mT
    return torch.linalg.eigvalsh(small)[..., -1].clamp_min(0)


def _nt_xent(u: torch.Tensor, v: torch.Tensor, tau: float | torch.Tensor):
    """Symmetric NT-Xent over the 2B views ``Z = [U; V]``: loss, exact ‖∇_Z L‖_F and its spectral upper bound."""
    b = u.shape[-2]
    z = torch.cat([u, v], dim=-2)  # (..., 2B, d)
    n2 = 2 * b
    g = z @ z.mT  # (..., 2B, 2B)
    eye = torch.eye(n2, dtype=torch.bool, device=z.device)
    logits = (g / tau).masked_fill(eye, float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    pos = torch.arange(n2, device=z.device).roll(b)  # view i's positive is i ± B
    loss = -logp.gather(-1, pos.expand(*logp.shape[:-1]).unsqueeze(-1)).squeeze(-1).mean(-1)
    a = logp.exp()
    a = a - F.one_hot(pos, n2).to(a.dtype)  # A = P − Y
    m = a + a.mT  # (..., 2B, 2B)
    grad = (m @ z) / (n2 * tau)  # ∇_Z L, (..., 2B, d)
    grad_norm = torch.linalg.vector_norm(grad, dim=(-2, -1))
    lam = _lambda_max_gram(z)
    upper = torch.sqrt(lam * m.square().sum(dim=(-2, -1))) / (n2 * tau)
    return loss, grad_norm, upper


def infonce_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    negatives: torch.Tensor | None = None,
    *,
    normalize: bool = True,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-anchor InfoNCE loss ``−log softmax([a, c]/τ)[0]``, shape `(..., B)`.

    Same conventions as :func:`gradient_bands` (in-batch positives as negatives unless `negatives` is given;
    ``negative_mask`` `(..., B, K)`, True = kept, removes negatives from an anchor's softmax).
    With ``normalize=False`` the inputs are used as given (already unit rows), so that autograd returns the
    gradient w.r.t. the unit anchor itself rather than its projection through the normalisation.
    """
    u, v = _float_dtype(anchors), _float_dtype(positives)
    if normalize:
        u, v = _normalize(u), _normalize(v)
    a = (u * v).sum(-1)
    neg_logits = _negative_logits(u, v, negatives, temperature)[0]
    none_kept = None
    if negative_mask is not None:
        neg_logits = neg_logits.masked_fill(~negative_mask.to(device=neg_logits.device, dtype=torch.bool),
                                            float("-inf"))
        # an anchor with no negative left has loss 0 and gradient 0: give it finite dummy logits (so autograd of
        # logsumexp over an all −∞ row never forms NaN) and select 0 for it below
        none_kept = torch.isinf(neg_logits).all(-1)
        neg_logits = neg_logits.masked_fill(none_kept.unsqueeze(-1), 0.0)
    # ℓ = log(1 + Σ_j exp((c_j − a)/τ)): exact for tiny losses, and its autograd never forms 1 − p₊ by cancellation.
    loss = F.softplus(torch.logsumexp(neg_logits - (a / temperature).unsqueeze(-1), dim=-1))
    return loss if none_kept is None else torch.where(none_kept, torch.zeros_like(loss), loss)


def _negative_logits(u, v, negatives, tau):
    """Cosines and logits of each anchor against its negatives, plus the negatives' matrix for ``m``.

    Returns ``(logits (..., B, K), cosines (..., B, K), z)`` where ``z`` is ``(..., K, d)`` for shared negatives
    (in-batch: the positives, with the diagonal masked) or ``(..., B, K, d)`` for per-anchor negatives.
    """
    if negatives is None:
        c = u @ v.mT  # (..., B, B)
        eye = torch.eye(c.shape[-1], dtype=torch.bool, device=c.device)
        return (c / tau).masked_fill(eye, float("-inf")), c.masked_fill(eye, 0.0), v
    z = _normalize(_float_dtype(negatives))
    if z.ndim == u.ndim:  # shared (..., K, d)
        c = u @ z.mT  # (..., B, K)
    else:  # per anchor (..., B, K, d)
        c = (z @ u.unsqueeze(-1)).squeeze(-1)  # (..., B, K)
    return c / tau, c, z


def _lambda_max_kept(z: torch.Tensor, keep: torch.Tensor, touched: torch.Tensor) -> torch.Tensor:
    """λ_max of the Gram matrix of the kept negatives of every ``touched`` anchor, shape `(T,)`.

    ``z`` is `(..., K, d)` (shared) or `(..., B, K, d)` (per anchor); ``keep`` and ``touched`` select as in
    :func:`gradient_bands`. Zeroing the dropped rows leaves the non-zero spectrum of the kept rows' Gram matrix
    unchanged, so each anchor's matrix is the smaller of ``Z_iᵀZ_i`` and ``Z_i Z_iᵀ`` of its masked negatives;
    anchors go in chunks so the batched eigendecomposition stays within ~32 MB of matrices per chunk.
    """
    per_anchor = z.ndim == keep.ndim + 1
    zt = z[touched] if per_anchor else z.unsqueeze(-3).expand(*keep.shape, z.shape[-1])[touched]  # (T, K, d)
    kt = keep[touched].to(z.dtype)  # (T, K)
    k, d = z.shape[-2], z.shape[-1]
    step = max(1, 2 ** 22 // max(1, k * min(k, d)))
    out = [_lambda_max_gram(zt[s:s + step] * kt[s:s + step].unsqueeze(-1)) for s in range(0, zt.shape[0], step)]
    return torch.cat(out) if out else zt.new_zeros(0)


def gradient_bands(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    temperature: float | torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    negative_mask: torch.Tensor | None = None,
    validate: bool = True,
) -> GradientBands:
    """Exact per-anchor InfoNCE gradient norms and their analytic bands.

    The loss of anchor ``i`` is ``ℓ_i = −log softmax([a_i, c_i1..c_iK]/τ)[0]`` (positive in the denominator),
    on unit-normalised inputs; the gradient is taken w.r.t. the unit anchor embedding ``u_i``.

    Args:
        anchors (`torch.Tensor` of shape `(..., B, d)`): anchor embeddings (normalised inside).
        positives (`torch.Tensor` of shape `(..., B, d)`): row ``i`` is anchor ``i``'s positive.
        temperature (`float`): τ > 0 (logits are ``cos/τ``).
        negatives (`torch.Tensor`, *optional*):
            `None` (default): every other row's positive is a negative (MultipleNegativesRankingLoss, CLIP).
            Shape `(..., K, d)`: the same ``K`` negatives for every anchor.
            Shape `(..., B, K, d)`: ``K`` negatives of each anchor's own.
        negative_mask (`torch.Tensor` of shape `(..., B, K)` and dtype bool, *optional*):
            True = the negative stays in that anchor's softmax, False = removed (false-negative masking); for
            in-batch negatives ``K = B`` and the diagonal (the anchor's own positive) is ignored. ``q``,
            ``K_eff``, ``V_q`` and ``λ_max`` are then those of each anchor's kept negatives, so the bands hold for
            the masked softmax (an anchor that lost no negative keeps the unmasked bands exactly, including, for
            in-batch negatives, the interlacing bound ``λ_max(VVᵀ)``); ``lambda_max_neg`` has shape `(..., B)`.
            Costs one small eigendecomposition per masked anchor.
        validate (`bool`, *optional*, defaults to `True`): check inputs (one host sync).

    Returns:
        :class:`GradientBands`.
    """
    tau = _check_temperature(temperature) if validate else temperature
    if validate:
        anchors = _check_embeddings(anchors, "anchors")
        positives = _check_embeddings(positives, "positives")
        if anchors.shape != positives.shape:
            raise ValueError(f"`anchors` {tuple(anchors.shape)} and `positives` {tuple(positives.shape)} must have "
                             "the same shape (..., B, d): row i of `positives` is anchor i's positive.")
        if negatives is not None:
            negatives = _check_embeddings(negatives, "negatives", min_rows=1)
            lead, d = anchors.shape[:-2], anchors.shape[-1]
            ok = negatives.shape[-1] == d and (
                negatives.shape[:-2] == lead
                or (negatives.ndim == anchors.ndim + 1 and negatives.shape[:-2] == anchors.shape[:-1])
            )
            if not ok:
                raise ValueError(f"`negatives` must have shape (..., K, d) (shared) or (..., B, K, d) (per anchor) "
                                 f"matching anchors {tuple(anchors.shape)}; got {tuple(negatives.shape)}.")
    dtype = torch.promote_types(_float_dtype(anchors).dtype, _float_dtype(positives).dtype)
    u = _normalize(anchors.to(dtype))
    v = _normalize(positives.to(dtype))
    if negatives is not None:
        negatives = negatives.to(dtype)

    a = (u * v).sum(-1)  # (..., B) alignment
    neg_logits, cos, z = _negative_logits(u, v, negatives, tau)  # (..., B, K)
    keep = None
    if negative_mask is not None:
        if validate and (not isinstance(negative_mask, torch.Tensor) or negative_mask.shape != neg_logits.shape):
            shape = tuple(negative_mask.shape) if isinstance(negative_mask, torch.Tensor) else type(negative_mask)
            raise ValueError(f"`negative_mask` must be a bool tensor of shape {tuple(neg_logits.shape)} (..., B, K), "
                             f"got {shape}.")
        keep = negative_mask.to(device=neg_logits.device, dtype=torch.bool)
        if negatives is None:  # in-batch: the diagonal is the anchor's own positive, never a negative
            keep = keep & ~torch.eye(keep.shape[-1], dtype=torch.bool, device=keep.device)
        neg_logits = neg_logits.masked_fill(~keep, float("-inf"))
        cos = cos.masked_fill(~keep, 0.0)
    # x = log Σ_j exp((c_j − a)/τ); then 1 − p₊ = σ(x), p₊ = σ(−x), ℓ = softplus(x) — never 1 − p₊ by
    # subtraction, which cancels catastrophically when the positive takes nearly all the mass (small τ).
    x = torch.logsumexp(neg_logits - (a / tau).unsqueeze(-1), dim=-1)
    one_minus_p = torch.sigmoid(x)
    p_pos = torch.sigmoid(-x)
    q = torch.softmax(neg_logits, dim=-1)  # (..., B, K) softmax over negatives only
    any_kept = keep.any(-1) if keep is not None else None  # (..., B)
    if any_kept is not None:  # no negative left: q ≡ 0 (the softmax of an all −∞ row would be NaN)
        q = torch.where(any_kept.unsqueeze(-1), q, torch.zeros_like(q))

    m = (q.unsqueeze(-2) @ z).squeeze(-2) if z.ndim == u.ndim + 1 else q @ z  # (..., B, d)
    scale = one_minus_p / tau
    m_minus_v = torch.linalg.vector_norm(m - v, dim=-1)
    grad_norm = scale * m_minus_v
    m_norm = torch.linalg.vector_norm(m, dim=-1).clamp(max=1.0)
    v_q = (1 - m_norm.square()).clamp_min(0)
    k_eff = 1.0 / q.square().sum(-1)
    gap = (a - (q * cos).sum(-1)).abs()

    lam = _lambda_max_gram(z)  # (...) shared/in-batch or (..., B) per anchor
    lam_b = lam if lam.shape == k_eff.shape else lam.unsqueeze(-1)
    if keep is None:
        rho = torch.sqrt((lam_b / k_eff).clamp(max=1.0))
    else:
        # anchors the mask leaves whole keep the unmasked λ_max (for in-batch negatives the interlacing bound
        # λ_max(VVᵀ), as without a mask); every anchor that lost a negative gets that of its kept negatives
        touched = ~keep.all(-1) if negatives is not None else \
            (~keep).sum(-1) > 1  # in-batch: more than the diagonal removed
        lam = lam_b = lam_b.expand_as(k_eff).clone()
        if bool(touched.any()):
            lam[touched] = _lambda_max_kept(z, keep, touched)
        zero = torch.zeros_like(k_eff)
        v_q = torch.where(any_kept, v_q, zero)
        k_eff = torch.where(any_kept, k_eff, zero)
        rho = torch.where(any_kept, torch.sqrt((lam_b / k_eff.clamp_min(1.0)).clamp(max=1.0)), zero)

    spread_lower = scale * (1 - m_norm)
    spread_upper = scale * (1 + m_norm)
    alignment_lower = scale * gap
    spectral_lower = scale * (1 - rho).clamp_min(0)
    spectral_upper = scale * (1 + rho)
    lower = torch.maximum(torch.maximum(spread_lower, alignment_lower), spectral_lower)
    upper = torch.minimum(spread_upper, spectral_upper)

    if negatives is None and keep is None:
        nt_loss, nt_grad, nt_upper = _nt_xent(u, v, tau)
    else:
        nan = torch.full(u.shape[:-2], float("nan"), dtype=u.dtype, device=u.device)
        nt_loss = nt_grad = nt_upper = nan

    return GradientBands(
        grad_norm=grad_norm, lower=lower, upper=upper,
        spread_lower=spread_lower, spread_upper=spread_upper, alignment_lower=alignment_lower,
        spectral_lower=spectral_lower, spectral_upper=spectral_upper,
        scale=scale, p_pos=p_pos, v_q=v_q, k_eff=k_eff, m_minus_v=m_minus_v, alignment=a,
        lambda_max_neg=lam, loss=F.softplus(x),
        nt_xent_loss=nt_loss, nt_xent_grad_norm=nt_grad, nt_xent_grad_upper=nt_upper,
        temperature=float(tau.detach()) if isinstance(tau, torch.Tensor) else float(tau),
    )
