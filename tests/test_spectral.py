"""Specification of hf_divcl.diversity.metrics: exact gradients, valid bands, diversity formulas, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_divcl.diversity.bands import gradient_bands, infonce_loss
from hf_divcl.diversity.metrics import batch_diversity, participation_ratio

TAUS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
F64 = torch.float64


# ----------------------------------------------------------------------------------------------------
# float64 references


def autograd_anchor_grad_norms(u_raw, v_raw, tau, negatives=None):
    """‖∂ℓ_i/∂u_i‖ by autograd, with u_i the *unit* anchor (normalisation outside the graph).

    The loss is written as softplus(logsumexp((c − a)/τ)), which is InfoNCE exactly and, unlike
    cross_entropy's p − 1, does not cancel when the positive takes nearly all the mass.
    """
    u = F.normalize(u_raw.to(F64), dim=-1).detach().requires_grad_(True)
    v = F.normalize(v_raw.to(F64), dim=-1)
    a = (u * v).sum(-1, keepdim=True)
    if negatives is None:
        c = u @ v.mT
        eye = torch.eye(c.shape[-1], dtype=torch.bool)
        diff = ((c - a) / tau).masked_fill(eye, float("-inf"))
    else:
        z = F.normalize(negatives.to(F64), dim=-1)
        c = u @ z.mT if z.ndim == u.ndim else (z @ u.unsqueeze(-1)).squeeze(-1)
        diff = (c - a) / tau
    loss = F.softplus(torch.logsumexp(diff, dim=-1)).sum()
    (grad,) = torch.autograd.grad(loss, u)
    return grad.norm(dim=-1), loss


def cross_entropy_grad_norms(u_raw, v_raw, tau):
    """The textbook form (MultipleNegativesRankingLoss): cross-entropy over u·vᵀ/τ with labels = arange."""
    u = F.normalize(u_raw.to(F64), dim=-1).detach().requires_grad_(True)
    v = F.normalize(v_raw.to(F64), dim=-1)
    loss = F.cross_entropy(u @ v.T / tau, torch.arange(u.shape[0]), reduction="sum")
    (grad,) = torch.autograd.grad(loss, u)
    return grad.norm(dim=-1), loss


def make_batch(kind: str, b: int, d: int, gen: torch.Generator, eps: float = 1e-3):
    """Anchors and positives of a given geometry, float64."""
    if kind == "isotropic":
        u = torch.randn(b, d, generator=gen, dtype=F64)
    elif kind == "near_collapse":
        u = torch.randn(1, d, generator=gen, dtype=F64) + eps * torch.randn(b, d, generator=gen, dtype=F64)
    elif kind == "near_orthogonal":
        q, _ = torch.linalg.qr(torch.randn(max(b, d), max(b, d), generator=gen, dtype=F64))
        u = q[:b, :d] + eps * torch.randn(b, d, generator=gen, dtype=F64)
    elif kind == "clustered":
        centres = torch.randn(3, d, generator=gen, dtype=F64)
        u = centres[torch.arange(b) % 3] + 0.2 * torch.randn(b, d, generator=gen, dtype=F64)
    else:
        raise AssertionError(kind)
    v = u + 0.3 * u.norm(dim=-1, keepdim=True) / math.sqrt(d) * torch.randn(b, d, generator=gen, dtype=F64)
    return u, v


def rel_err(x, ref):
    return ((x - ref).abs() / ref.abs().clamp_min(1e-300)).max().item()


# ----------------------------------------------------------------------------------------------------
# exact gradient == autograd


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("kind", ["isotropic", "near_collapse", "near_orthogonal", "clustered"])
def test_analytic_gradient_norm_matches_autograd(kind, tau):
    gen = torch.Generator().manual_seed(1)
    for b, d in [(2, 3), (16, 8), (64, 64), (128, 32)]:
        u, v = make_batch(kind, b, d, gen)
        ref, loss = autograd_anchor_grad_norms(u, v, tau)
        bands = gradient_bands(u, v, tau)
        assert rel_err(bands.grad_norm, ref) < 1e-8, (kind, b, d, tau)
        assert torch.allclose(bands.loss.sum(), loss, rtol=1e-12)
        assert bool(bands.inside().all())


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_near_collapse_to_high_relative_precision(eps):
    gen = torch.Generator().manual_seed(2)
    u, v = make_batch("near_collapse", 32, 16, gen, eps=eps)
    for tau in TAUS:
        ref, _ = autograd_anchor_grad_norms(u, v, tau)
        assert rel_err(gradient_bands(u, v, tau).grad_norm, ref) < 1e-8


def test_autograd_reference_equals_textbook_cross_entropy():
    """Our reference is MNRL's loss: where the textbook form is well conditioned, gradients agree to 1e-10."""
    gen = torch.Generator().manual_seed(3)
    u, v = make_batch("isotropic", 32, 16, gen)
    for tau in (0.5, 1.0):
        ours, l1 = autograd_anchor_grad_norms(u, v, tau)
        ce, l2 = cross_entropy_grad_norms(u, v, tau)
        assert torch.allclose(l1, l2, rtol=1e-12)
        assert rel_err(ce, ours) < 1e-10
        assert rel_err(gradient_bands(u, v, tau).grad_norm, ce) < 1e-10


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_explicit_negatives_match_autograd(shared, tau):
    gen = torch.Generator().manual_seed(4)
    u, v = make_batch("clustered", 24, 16, gen)
    shape = (40, 16) if shared else (24, 7, 16)
    z = torch.randn(*shape, generator=gen, dtype=F64)
    ref, loss = autograd_anchor_grad_norms(u, v, tau, negatives=z)
    bands = gradient_bands(u, v, tau, negatives=z)
    assert rel_err(bands.grad_norm, ref) < 1e-8
    assert torch.allclose(bands.loss.sum(), loss, rtol=1e-12)
    assert torch.allclose(infonce_loss(u, v, tau, negatives=z).sum(), loss, rtol=1e-12)
    assert bool(bands.inside().all())
    assert bands.lambda_max_neg.shape == (() if shared else (24,))


def test_leading_batch_dimensions_equal_separate_calls():
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(3, 10, 6, generator=gen, dtype=F64)
    v = u + 0.5 * torch.randn(3, 10, 6, generator=gen, dtype=F64)
    batched = gradient_bands(u, v, 0.1)
    div = batch_diversity(u)
    for r in range(3):
        single = gradient_bands(u[r], v[r], 0.1)
        for name in ("grad_norm", "lower", "upper", "p_pos", "k_eff", "nt_xent_grad_norm", "lambda_max_neg"):
            assert torch.allclose(getattr(batched, name)[r], getattr(single, name), rtol=1e-12), name
        assert torch.allclose(div["effective_rank"][r], batch_diversity(u[r])["effective_rank"], rtol=1e-12)


# ----------------------------------------------------------------------------------------------------
# batch-level NT-Xent


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
def test_nt_xent_loss_and_gradient_match_autograd(tau):
    gen = torch.Generator().manual_seed(6)
    u, v = make_batch("clustered", 20, 12, gen)
    un, vn = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    z = torch.cat([un, vn]).requires_grad_(True)
    n2 = z.shape[0]
    logits = (z @ z.T / tau).masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    labels = torch.arange(n2).roll(n2 // 2)
    loss = F.cross_entropy(logits, labels)
    (g,) = torch.autograd.grad(loss, z)
    bands = gradient_bands(u, v, tau)
    assert torch.allclose(bands.nt_xent_loss, loss, rtol=1e-12)
    assert rel_err(bands.nt_xent_grad_norm, g.norm()) < 1e-10
    assert bands.nt_xent_grad_norm <= bands.nt_xent_grad_upper * (1 + 1e-12)


def test_full_collapse_gives_zero_gradient_and_no_nan():
    u = torch.ones(8, 5, dtype=F64)
    for tau in TAUS:
        bands = gradient_bands(u, u.clone(), tau)
        for f in ("grad_norm", "lower", "upper", "k_eff", "v_q", "p_pos", "loss"):
            assert torch.isfinite(getattr(bands, f)).all(), f
        assert bands.grad_norm.abs().max() < 1e-12
        assert bands.nt_xent_grad_norm.abs() < 1e-12
        assert torch.allclose(bands.k_eff, torch.full((8,), 7.0, dtype=F64))
        assert bool(bands.inside().all())
    div = batch_diversity(u)
    assert div["effective_rank"].item() == pytest.approx(1.0, abs=1e-9)
    assert div["participation_ratio"].item() == pytest.approx(1.0, abs=1e-12)
    assert div["lambda_max"].item() == pytest.approx(1.0, abs=1e-12)
    assert div["mean_cosine"].item() == pytest.approx(1.0, abs=1e-12)


def test_perfectly_orthogonal_batch_is_finite_and_maximally_diverse():
    b = 16
    u = torch.eye(b, dtype=F64)
    for tau in TAUS:
        bands = gradient_bands(u, u.clone(), tau)
        assert torch.isfinite(bands.grad_norm).all() and bool(bands.inside().all())
        # every negative is orthogonal: c = 0, a = 1 → 1 − p₊ = (B−1)/(B−1 + e^{1/τ}), ‖m − v‖² = 1 + 1/(B−1)
        expect = (b - 1) / (b - 1 + math.exp(1 / tau)) / tau * math.sqrt(1 + 1 / (b - 1))
        assert rel_err(bands.grad_norm, torch.full((b,), expect, dtype=F64)) < 1e-12
    div = batch_diversity(u)
    assert div["effective_rank"].item() == pytest.approx(b, rel=1e-12)
    assert div["participation_ratio"].item() == pytest.approx(b, rel=1e-12)
    assert div["mean_sq_cosine"].item() == pytest.approx(0.0, abs=1e-15)


# ----------------------------------------------------------------------------------------------------
# bands hold everywhere (property-based)


def random_batches(data, r: int, b: int, d: int, gen: torch.Generator):
    """R batches of a geometry drawn by hypothesis: isotropic, low-rank, clustered, near-collapsed, orthogonal."""
    kind = data.draw(st.sampled_from(["isotropic", "low_rank", "clustered", "collapse", "orthogonal"]))
    if kind == "isotropic":
        u = torch.randn(r, b, d, generator=gen, dtype=F64)
    elif kind == "low_rank":
        k = data.draw(st.integers(1, min(d, 8)))
        u = torch.randn(r, b, k, generator=gen, dtype=F64) @ torch.randn(r, k, d, generator=gen, dtype=F64)
    elif kind == "clustered":
        k = data.draw(st.integers(1, 6))
        spread = data.draw(st.floats(0.01, 1.0))
        centres = torch.randn(r, k, d, generator=gen, dtype=F64)
        u = centres[:, torch.arange(b) % k] + spread * torch.randn(r, b, d, generator=gen, dtype=F64)
    elif kind == "collapse":
        eps = data.draw(st.floats(1e-6, 1e-1))
        u = torch.randn(r, 1, d, generator=gen, dtype=F64) + eps * torch.randn(r, b, d, generator=gen, dtype=F64)
    else:
        n = max(b, d)
        q, _ = torch.linalg.qr(torch.randn(r, n, n, generator=gen, dtype=F64))
        u = q[:, :b, :d] + 1e-9 * torch.randn(r, b, d, generator=gen, dtype=F64)
    noise = data.draw(st.sampled_from([0.0, 0.05, 0.5, 2.0, "independent"]))
    if noise == "independent":
        v = torch.randn(r, b, d, generator=gen, dtype=F64)
    else:
        v = u + noise * u.norm(dim=-1, keepdim=True) / math.sqrt(d) * torch.randn(r, b, d, generator=gen, dtype=F64)
    # guard against an exactly-zero row (probability ~0, but then the input would be invalid by contract)
    u = torch.where(u.norm(dim=-1, keepdim=True) == 0, torch.ones_like(u), u)
    v = torch.where(v.norm(dim=-1, keepdim=True) == 0, torch.ones_like(v), v)
    return u, v


SIZES = st.integers(1, 10).map(lambda k: 2**k)  # 2 … 1024


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), b=st.one_of(SIZES, st.integers(2, 300)), d=st.one_of(SIZES, st.integers(2, 300)),
       tau=st.floats(0.01, 1.0), seed=st.integers(0, 2**31 - 1))
def test_bands_contain_measured_norm_for_every_anchor(data, b, d, tau, seed):
    gen = torch.Generator().manual_seed(seed)
    r = max(1, min(32, 4096 // max(b, d)))  # several batches per example: thousands overall
    u, v = random_batches(data, r, b, d, gen)
    bands = gradient_bands(u, v, tau)
    assert torch.isfinite(bands.grad_norm).all() and torch.isfinite(bands.lower).all()
    assert torch.isfinite(bands.upper).all()
    inside = bands.inside()
    assert bool(inside.all()), (
        f"{int((~inside).sum())} anchors outside the bands; worst lower excess "
        f"{(bands.lower - bands.grad_norm).max().item():.3e}, upper excess "
        f"{(bands.grad_norm - bands.upper).max().item():.3e}"
    )
    # each individual band holds too, and the spread band is never looser than the spectral one
    tol = 1e-6 * bands.scale + 1e-300
    assert bool((bands.spectral_lower <= bands.grad_norm + tol).all())
    assert bool((bands.grad_norm <= bands.spectral_upper + tol).all())
    assert bool((bands.alignment_lower <= bands.grad_norm + tol).all())
    assert bool((bands.spread_upper <= bands.spectral_upper + tol).all())
    assert bool((bands.nt_xent_grad_norm <= bands.nt_xent_grad_upper * (1 + 1e-9) + 1e-300).all())


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), b=st.integers(2, 64), d=st.integers(2, 64), tau=st.floats(0.01, 1.0),
       seed=st.integers(0, 2**31 - 1))
def test_gradient_matches_autograd_on_random_geometries(data, b, d, tau, seed):
    gen = torch.Generator().manual_seed(seed)
    u, v = random_batches(data, 1, b, d, gen)
    ref, _ = autograd_anchor_grad_norms(u[0], v[0], tau)
    got = gradient_bands(u[0], v[0], tau).grad_norm
    # relative error is limited by ‖m − v‖'s own conditioning; absolute floor at 1e-12 of the scale
    assert ((got - ref).abs() <= 1e-8 * ref + 1e-12 / tau).all()


# ----------------------------------------------------------------------------------------------------
# diversity


@pytest.mark.parametrize("b,d", [(2, 2), (7, 3), (32, 64), (100, 20), (256, 384)])
def test_participation_ratio_equals_eigenvalue_formula(b, d):
    gen = torch.Generator().manual_seed(b * 1000 + d)
    x = torch.randn(b, d, generator=gen, dtype=F64) @ torch.diag(torch.logspace(0, -2, d, dtype=F64))
    xn = F.normalize(x, dim=-1)
    lam = torch.linalg.eigvalsh(xn.T @ xn / b)  # trace-1 second moment
    expected = (lam.sum() ** 2 / (lam**2).sum()).item()
    div = batch_diversity(x)
    assert div["participation_ratio"].item() == pytest.approx(expected, rel=1e-10, abs=0)
    assert participation_ratio(xn @ xn.T).item() == pytest.approx(expected, rel=1e-10, abs=0)
    assert batch_diversity(similarity=xn @ xn.T)["participation_ratio"].item() == pytest.approx(expected, rel=1e-10)
    # effective rank from its definition, and the identity 1/R_PR ≤ λ_max ≤ 1/√R_PR (docs/maths.md)
    p = lam.clamp_min(0) / lam.clamp_min(0).sum()
    erank = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    assert div["effective_rank"].item() == pytest.approx(erank, rel=1e-10)
    assert div["lambda_max"].item() == pytest.approx(lam.max().item(), rel=1e-10)
    assert 1 / expected <= div["lambda_max"].item() * (1 + 1e-12)
    assert div["lambda_max"].item() <= 1 / math.sqrt(expected) * (1 + 1e-12)


def test_cosine_statistics_and_similarity_input_agree():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(40, 16, generator=gen, dtype=F64) + 0.5
    xn = F.normalize(x, dim=-1)
    g = xn @ xn.T
    off = g[~torch.eye(40, dtype=torch.bool)]
    from_emb, from_sim = batch_diversity(x), batch_diversity(similarity=g)
    for out in (from_emb, from_sim):
        assert out["mean_cosine"].item() == pytest.approx(off.mean().item(), rel=1e-12)
        assert out["mean_sq_cosine"].item() == pytest.approx(off.square().mean().item(), rel=1e-12)
        # R_PR = n / (1 + (n−1)·mean cos²) for unit rows
        assert out["participation_ratio"].item() == pytest.approx(40 / (1 + 39 * off.square().mean().item()),
                                                                  rel=1e-12)
    assert from_emb["effective_rank"].item() == pytest.approx(from_sim["effective_rank"].item(), rel=1e-9)
    assert from_emb["spectrum"].shape == (16,) and from_sim["spectrum"].shape == (40,)
    assert from_emb["spectrum"].sum().item() == pytest.approx(1.0, rel=1e-12)


def test_diversity_without_spectrum_skips_eigendecomposition():
    out = batch_diversity(torch.randn(8, 4), spectrum=False)
    assert set(out) == {"participation_ratio", "mean_cosine", "mean_sq_cosine", "batch_size"}


def test_half_precision_is_promoted_and_results_are_finite():
    x = torch.randn(64, 32).half()
    bands = gradient_bands(x, x + 0.1 * torch.randn(64, 32).half(), 0.05)
    assert bands.grad_norm.dtype == torch.float32 and torch.isfinite(bands.grad_norm).all()
    assert batch_diversity(x)["effective_rank"].dtype == torch.float32


def test_learnable_temperature_tensor_is_accepted():
    x = torch.randn(8, 4, dtype=F64)
    t = torch.tensor(0.1, dtype=F64, requires_grad=True)
    assert torch.allclose(gradient_bands(x, x, t).grad_norm, gradient_bands(x, x, 0.1).grad_norm)


# ----------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "anchors,positives,tau,match",
    [
        (torch.randn(8), torch.randn(8), 0.1, r"shape \(\.\.\., B, d\)"),
        (torch.randn(1, 4), torch.randn(1, 4), 0.1, r"at least 2 rows"),
        (torch.randn(8, 4), torch.randn(8, 5), 0.1, r"same shape"),
        (torch.randn(8, 4), torch.randn(7, 4), 0.1, r"same shape"),
        (torch.randn(8, 4).index_fill_(0, torch.tensor([3]), float("nan")), torch.randn(8, 4), 0.1,
         r"`anchors` contains NaN or Inf at row 3"),
        (torch.randn(8, 4), torch.randn(8, 4).index_fill_(0, torch.tensor([5]), float("inf")), 0.1,
         r"`positives` contains NaN or Inf at row 5"),
        (torch.randn(8, 4).index_fill_(0, torch.tensor([2]), 0.0), torch.randn(8, 4), 0.1,
         r"all-zero embedding at row 2"),
        (torch.randn(8, 4), torch.randn(8, 4), 0.0, r"temperature.*> 0"),
        (torch.randn(8, 4), torch.randn(8, 4), -0.1, r"temperature.*> 0"),
        (torch.randn(8, 4), torch.randn(8, 4), float("nan"), r"temperature.*finite"),
        (torch.randn(8, 4), torch.randn(8, 4), "hot", r"temperature"),
    ],
)
def test_gradient_bands_rejects_bad_input_clearly(anchors, positives, tau, match):
    with pytest.raises(ValueError, match=match):
        gradient_bands(anchors, positives, tau)


def test_bad_negatives_and_batched_row_are_named():
    with pytest.raises(ValueError, match=r"`negatives` must have shape"):
        gradient_bands(torch.randn(8, 4), torch.randn(8, 4), 0.1, negatives=torch.randn(5, 3))
    x = torch.randn(3, 8, 4)
    x[1, 6] = float("nan")
    with pytest.raises(ValueError, match=r"row 6 of batch \(1,\)"):
        gradient_bands(x, torch.randn(3, 8, 4), 0.1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, r"exactly one of"),
        ({"embeddings": torch.randn(1, 4)}, r"at least 2 rows"),
        ({"embeddings": torch.zeros(4, 4)}, r"all-zero embedding at row 0"),
        ({"similarity": torch.randn(4, 5)}, r"square"),
        ({"similarity": torch.randn(4, 4) * 5}, r"diagonal = 1"),
        ({"similarity": torch.full((4, 4), float("nan"))}, r"NaN"),
    ],
)
def test_batch_diversity_rejects_bad_input_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        batch_diversity(**kwargs)


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        batch_diversity([[1.0, 0.0], [0.0, 1.0]])
