"""Contrastive losses: float64 references, autograd, whitening, and the global batch across 2 real processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_divcl.diversity.bands import _nt_xent, infonce_loss
from hf_divcl.losses.infonce import InfoNCELoss
from hf_divcl.losses.maths import contrastive_loss, whiten

ROOT = Path(__file__).resolve().parents[1]


def _pair(n=12, d=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=dtype)
    return u, u + 0.7 * torch.randn(n, d, generator=g, dtype=dtype)


def test_infonce_equals_the_mean_of_the_per_anchor_reference():
    u, v = _pair()
    out = contrastive_loss(u, v, 0.1)
    assert torch.allclose(out.loss, infonce_loss(u, v, 0.1).mean(), atol=1e-12)
    assert out.anchors.shape == (12, 7) and out.logits.shape == (12, 12) and out.offset == 0


def test_infonce_equals_multiple_negatives_ranking_at_scale_20():
    u, v = _pair(n=9, d=5)
    scores = F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T * 20.0  # MNRL: cos_sim × scale, CE to diagonal
    mnrl = F.cross_entropy(scores, torch.arange(9))
    assert torch.allclose(contrastive_loss(u, v, 0.05).loss, mnrl, atol=1e-12)


def test_hard_negatives_join_every_anchors_candidates():
    u, v = _pair(n=6, d=5)
    hard = _pair(n=6, d=5, seed=3)[0]
    out = contrastive_loss(u, v, 0.2, negatives=[hard])
    un, cand = F.normalize(u, dim=-1), F.normalize(torch.cat([v, hard]), dim=-1)
    ref = F.cross_entropy(un @ cand.T / 0.2, torch.arange(6))
    assert out.logits.shape == (6, 12) and torch.allclose(out.loss, ref, atol=1e-12)


def test_symmetric_infonce_averages_both_directions():
    u, v = _pair()
    sym = contrastive_loss(u, v, 0.1, symmetric=True).loss
    both = 0.5 * (infonce_loss(u, v, 0.1).mean() + infonce_loss(v, u, 0.1).mean())
    assert torch.allclose(sym, both, atol=1e-12)


def test_nt_xent_matches_the_spectral_reference():
    u, v = _pair()
    ref = _nt_xent(F.normalize(u, dim=-1), F.normalize(v, dim=-1), 0.3)[0]
    assert torch.allclose(contrastive_loss(u, v, 0.3, loss_type="nt_xent").loss, ref, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"symmetric": True}, {"loss_type": "nt_xent"}, {"whitening": True}])
def test_gradients_pass_autograd_gradcheck(kwargs):
    u, v = _pair(n=5, d=4)
    u.requires_grad_(True)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: contrastive_loss(a, b, 0.2, **kwargs).loss, (u, v))


def test_learnable_temperature_receives_a_gradient():
    u, v = _pair(n=5, d=4)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    contrastive_loss(u, v, tau).loss.backward()
    assert tau.grad is not None and torch.isfinite(tau.grad) and tau.grad != 0


def test_whitening_gives_identity_covariance_when_rows_outnumber_dims():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    w = whiten(x, eps=1e-9)
    cov = (w - w.mean(0)).T @ (w - w.mean(0)) / 500
    assert torch.allclose(cov, torch.eye(6, dtype=torch.float64), atol=1e-6)


def test_whitening_gram_side_equals_covariance_side_when_dims_outnumber_rows():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 9, generator=g, dtype=torch.float64)
    xc = x - x.mean(0)
    cov = xc.T @ xc / 5
    c = 0.1 * cov.trace() / 9
    evals, evecs = torch.linalg.eigh(cov + c * torch.eye(9, dtype=torch.float64))
    direct = xc @ (evecs * evals.rsqrt()) @ evecs.T
    assert torch.allclose(whiten(x, eps=0.1), direct, atol=1e-10)


def test_bad_inputs_are_named():
    u, v = _pair()
    with pytest.raises(ValueError, match="loss_type"):
        contrastive_loss(u, v, 0.1, loss_type="triplet")
    with pytest.raises(ValueError, match=r"must both be \(n, d\)"):
        contrastive_loss(u, v[:3], 0.1)
    with pytest.raises(ValueError, match="hard negatives"):
        contrastive_loss(u, v, 0.1, loss_type="nt_xent", negatives=[u])
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(torch.nn.Identity(), temperature=0)


def test_infonce_loss_module_keeps_its_output_for_the_logger(tiny_model_dir):
    from hf_divcl.models.loading import load_sentence_transformer

    model = load_sentence_transformer(tiny_model_dir, device="cpu")
    loss = InfoNCELoss(model, temperature=0.05)
    feats = [model.preprocess([f"anchor {i}" for i in range(4)]), model.preprocess([f"pos {i}" for i in range(4)])]
    feats = [{k: t for k, t in f.items() if isinstance(t, torch.Tensor)} for f in feats]
    value = loss(feats)
    value.backward()
    assert loss.last_output is not None and loss.last_output.anchors.shape == (4, 32)
    assert torch.allclose(loss.last_output.anchors.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert any(p.grad is not None for p in model.parameters())


DIST = r'''
import sys, torch
import torch.distributed as dist
from hf_divcl import end_distributed
from hf_divcl.losses.infonce import contrastive_loss
dist.init_process_group("gloo")
rank, kind = dist.get_rank(), sys.argv[2]
g = torch.Generator().manual_seed(0)
u = torch.randn(8, 5, generator=g, dtype=torch.float64)
v = u + 0.5 * torch.randn(8, 5, generator=g, dtype=torch.float64)
cut = 5 if kind == "uneven" else 4
lo, hi = (0, cut) if rank == 0 else (cut, 8)
ul, vl = u[lo:hi].clone().requires_grad_(True), v[lo:hi].clone().requires_grad_(True)
opts = {"symmetric": True} if kind == "symmetric" else {"loss_type": "nt_xent"} if kind == "nt_xent" else {}
out = contrastive_loss(ul, vl, 0.1, **opts)
(out.loss * (hi - lo) / 8).backward()  # weight so the sum over ranks is the global mean
torch.save({"loss": out.loss.detach(), "gu": ul.grad, "gv": vl.grad, "anchors": out.anchors, "offset": out.offset,
            "logits": out.logits}, f"{sys.argv[1]}/rank{rank}.pt")
end_distributed()  # barrier first: a rank tearing down while another still saves can abort
'''


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["even", "uneven", "symmetric", "nt_xent"])
def test_two_processes_see_the_global_batch_and_get_its_exact_gradient(tmp_path, kind):
    script = tmp_path / "d.py"
    script.write_text(DIST)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                          str(tmp_path), kind], env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    g = torch.Generator().manual_seed(0)
    u = torch.randn(8, 5, generator=g, dtype=torch.float64)
    v = u + 0.5 * torch.randn(8, 5, generator=g, dtype=torch.float64)
    u.requires_grad_(True)
    v.requires_grad_(True)
    opts = {"symmetric": True} if kind == "symmetric" else {"loss_type": "nt_xent"} if kind == "nt_xent" else {}
    single = contrastive_loss(u, v, 0.1, **opts)
    single.loss.backward()
    cut = 5 if kind == "uneven" else 4
    assert torch.equal(r0["anchors"], r1["anchors"]) and r1["offset"] == cut
    assert torch.allclose(r0["anchors"], single.anchors, atol=1e-12)
    assert torch.allclose(torch.cat([r0["gu"], r1["gu"]]), u.grad, atol=1e-12)
    assert torch.allclose(torch.cat([r0["gv"], r1["gv"]]), v.grad, atol=1e-12)
    weighted = (r0["loss"] * cut + r1["loss"] * (8 - cut)) / 8
    assert torch.allclose(weighted, single.loss.detach(), atol=1e-12)
