"""InfoNCE gradient bands: the exact norm of the InfoNCE gradient at every anchor and the analytic bands that
bound it from the softmax statistics and the spectrum of the negatives (see ``docs/maths.md``).

Pure torch, any device and dtype, leading batch dimensions allowed (the diversity measures are in
:mod:`hf_divcl.diversity.metrics`).

Notation (one anchor): ``u`` anchor, ``v`` its positive, ``z_j`` the negatives, all unit-norm; ``a = u·v``,
``c_j = u·z_j``; softmax over ``[a, c_1..c_K] / τ`` gives ``p₊`` (positive's mass) and ``q_j = p_j / (1 − p₊)``
(the softmax over negatives only); ``m = Σ q_j z_j``; ``V_q = Σ q_j ‖z_j − m‖² = 1 − ‖m‖²``;
``K_eff = 1 / Σ q_j²``. Then ``∇_u ℓ = ((1 − p₊)/τ)(m − v)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .checks import check_embeddings, check_temperature, float_dtype, normalize_rows

__all__ = ["BAND_RTOL", "GradientBands", "gradient_bands", "infonce_loss"]

# Relative slack used when testing band containment: the bands are exact inequalities, so only rounding of
# the last bits can put a measured norm outside them.
BAND_RTOL = 1e-6


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
    u, v = float_dtype(anchors), float_dtype(positives)
    if normalize:
        u, v = normalize_rows(u), normalize_rows(v)
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
    z = normalize_rows(float_dtype(negatives))
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
    tau = check_temperature(temperature) if validate else temperature
    if validate:
        anchors = check_embeddings(anchors, "anchors")
        positives = check_embeddings(positives, "positives")
        if anchors.shape != positives.shape:
            raise ValueError(f"`anchors` {tuple(anchors.shape)} and `positives` {tuple(positives.shape)} must have "
                             "the same shape (..., B, d): row i of `positives` is anchor i's positive.")
        if negatives is not None:
            negatives = check_embeddings(negatives, "negatives", min_rows=1)
            lead, d = anchors.shape[:-2], anchors.shape[-1]
            ok = negatives.shape[-1] == d and (
                negatives.shape[:-2] == lead
                or (negatives.ndim == anchors.ndim + 1 and negatives.shape[:-2] == anchors.shape[:-1])
            )
            if not ok:
                raise ValueError(f"`negatives` must have shape (..., K, d) (shared) or (..., B, K, d) (per anchor) "
                                 f"matching anchors {tuple(anchors.shape)}; got {tuple(negatives.shape)}.")
    dtype = torch.promote_types(float_dtype(anchors).dtype, float_dtype(positives).dtype)
    u = normalize_rows(anchors.to(dtype))
    v = normalize_rows(positives.to(dtype))
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
