"""False-negative-aware InfoNCE: the masked softmax against an explicit float64 reference (one process and 2 real
processes), the all-masked anchor, the gradient bands of the masked softmax, the guide model, and the trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_divcl.diversity.bands import gradient_bands, infonce_loss
from hf_divcl.losses.infonce import InfoNCELoss
from hf_divcl.losses.maths import contrastive_loss

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


# ----------------------------------------------------------------------------------------------------
# float64 reference: the masked softmax built row by row, with the rule written out


def clustered(n=12, d=6, seed=0, k=3, columns=2):
    """Columns of rows drawn around k shared centres, so that near-duplicates (false negatives) exist."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=F64)
    which = torch.arange(n) % k
    return [centres[which] + 0.45 * torch.randn(n, d, generator=g, dtype=F64) for _ in range(columns)]


def ref_query_loss(q, cands, pos, ref_q, ref_cands, margin, tau, exclude=None):
    """−log softmax of one query over its kept candidates; candidate j is kept unless
    ref(q, j) > ref(q, pos) − margin (the positive and `exclude` never masked). Returns (loss, masked count)."""
    pos_ref = float(ref_q @ ref_cands[pos])
    kept, masked = [], 0
    for j in range(cands.shape[0]):
        if j == exclude:
            continue
        if j != pos and float(ref_q @ ref_cands[j]) >= pos_ref - margin:
            masked += 1
            continue
        kept.append(j)
    logits = torch.stack([q @ cands[j] for j in kept]) / tau
    return -(logits[kept.index(pos)] - torch.logsumexp(logits, 0)), masked


def reference_loss(cols, tau, margin, kind="infonce", reference=None):
    """Mean masked loss of the global batch (float64, explicit loops) and the masked count per query."""
    z = [F.normalize(c, dim=-1) for c in cols]
    r = [F.normalize(c, dim=-1).detach() for c in (reference if reference is not None else cols)]
    n = z[0].shape[0]
    losses, counts = [], []
    if kind in ("infonce", "symmetric"):
        cand, ref_cand = torch.cat(z[1:]), torch.cat(r[1:])
        for i in range(n):
            loss, m = ref_query_loss(z[0][i], cand, i, r[0][i], ref_cand, margin, tau)
            losses.append(loss)
            counts.append(m)
        total = torch.stack(losses).mean()
        if kind == "symmetric":
            back = []
            for i in range(n):
                loss, m = ref_query_loss(z[1][i], z[0], i, r[1][i], r[0], margin, tau)
                back.append(loss)
                counts.append(m)
            total = 0.5 * (total + torch.stack(back).mean())
        return total, counts
    views, ref_views = torch.cat(z[:2]), torch.cat(r[:2])
    for i in range(2 * n):
        loss, m = ref_query_loss(views[i], views, (i + n) % (2 * n), ref_views[i], ref_views, margin, tau, exclude=i)
        losses.append(loss)
        counts.append(m)
    return torch.stack(losses).mean(), counts


KINDS = {"infonce": {}, "symmetric": {"symmetric": True}, "nt_xent": {"loss_type": "nt_xent"}}


def group_one_hot(groups: torch.Tensor) -> torch.Tensor:
    """A reference view in which two rows have similarity 1 if they share a group and 0 otherwise: masking at
    margin 0 then removes exactly the same-group candidates (the rule of ``false_negatives="duplicates"``)."""
    return F.one_hot(groups, int(groups.max()) + 1).to(F64)


@pytest.mark.parametrize("kind", ["infonce", "symmetric", "nt_xent"])
def test_duplicate_masking_removes_exactly_the_same_group_candidates(kind):
    cols = clustered(seed=4)
    groups = torch.tensor([0, 1, 2, 0, 3, 4, 1, 5, 6, 0, 7, 8])
    mine = [c.clone().requires_grad_(True) for c in cols]
    out = contrastive_loss(mine[0], mine[1], 0.1, false_negatives="duplicates", groups=groups, **KINDS[kind])
    out.loss.backward()
    theirs = [c.clone().requires_grad_(True) for c in cols]
    ref_loss, counts = reference_loss(theirs, 0.1, 0.0, kind, [group_one_hot(groups)] * 2)
    ref_loss.backward()
    assert abs(out.loss.item() - ref_loss.item()) < 1e-10
    for a, b in zip(mine, theirs, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-10, rtol=0)
    # rows 0, 3, 9 share group 0 and rows 1, 6 group 1: 3·2 + 2·1 masked pairs per direction (NT-Xent: 4 per pair)
    per_direction = {"infonce": 8, "symmetric": 16, "nt_xent": 32}[kind]
    assert out.masked_stats[1].item() == sum(counts) == per_direction


def test_duplicate_masking_needs_the_groups():
    u, v = clustered()
    with pytest.raises(ValueError, match="needs each row's duplicate group"):
        contrastive_loss(u, v, 0.1, false_negatives="duplicates")


@pytest.mark.parametrize("kind, hard", [("infonce", False), ("infonce", True), ("symmetric", False),
                                        ("symmetric", True), ("nt_xent", False)])
@pytest.mark.parametrize("guide", [False, True])
def test_masked_loss_and_gradient_equal_the_explicit_float64_reference(kind, hard, guide):
    cols = clustered(columns=3 if hard else 2, seed=1)
    reference = clustered(d=9, columns=len(cols), seed=2) if guide else None  # another model's view, dimension 9
    margin, tau = 0.1, 0.1
    mine = [c.clone().requires_grad_(True) for c in cols]
    out = contrastive_loss(mine[0], mine[1], tau, negatives=mine[2:], false_negatives="mask",
                           false_negative_margin=margin, reference=reference, **KINDS[kind])
    out.loss.backward()
    theirs = [c.clone().requires_grad_(True) for c in cols]
    ref_loss, counts = reference_loss(theirs, tau, margin, "infonce" if kind == "infonce" else kind, reference)
    ref_loss.backward()
    assert abs(out.loss.item() - ref_loss.item()) < 1e-10
    for a, b in zip(mine, theirs, strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-10, rtol=0)
    total = sum(counts)
    assert 0 < total < len(counts) * (out.negative_mask.shape[1] - 1)  # the test masks some negatives, not all
    assert out.masked_stats.tolist() == pytest.approx([total / len(counts), total, 0.0])
    unmasked = contrastive_loss(cols[0], cols[1], tau, negatives=cols[2:], **KINDS[kind]).loss
    assert out.loss.item() < unmasked.item()  # removing negatives can only lower each softmax loss


def test_masked_gradient_passes_gradcheck():
    u, v = clustered(n=6, d=4, seed=3)
    u.requires_grad_(True)
    v.requires_grad_(True)
    ref = [u.detach().clone(), v.detach().clone()]  # a fixed reference: the mask is constant under perturbation
    assert torch.autograd.gradcheck(lambda a, b: contrastive_loss(a, b, 0.2, symmetric=True, false_negatives="mask",
                                                                  false_negative_margin=0.2, reference=ref).loss,
                                    (u, v))


def test_no_masking_leaves_the_loss_unchanged():
    u, v = clustered()
    out = contrastive_loss(u, v, 0.1, false_negatives="mask", false_negative_margin=-2.0)
    assert out.loss.item() == pytest.approx(contrastive_loss(u, v, 0.1).loss.item(), abs=1e-12)
    assert out.masked_stats.tolist() == [0.0, 0.0, 0.0] and bool(out.negative_mask.all())


def test_an_anchor_with_every_negative_masked_has_loss_0_and_gradient_0_and_is_counted():
    g = torch.Generator().manual_seed(4)
    u = torch.randn(8, 16, generator=g, dtype=F64, requires_grad=True)
    v = torch.randn(8, 16, generator=g, dtype=F64, requires_grad=True)
    ref_u = torch.randn(8, 64, generator=g, dtype=F64)
    ref_v = ref_u.clone()
    ref_v[0] = -ref_u[0]  # anchor 0: its positive is the reference's least similar candidate → all masked
    out = contrastive_loss(u, v, 0.05, false_negatives="mask", false_negative_margin=0.1, reference=[ref_u, ref_v])
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.equal(u.grad[0], torch.zeros(16, dtype=F64))
    assert torch.isfinite(u.grad).all() and torch.isfinite(v.grad).all()
    assert out.masked_stats[2].item() == 1.0 and out.masked_stats[1].item() == 7.0
    assert out.negative_mask[0].sum().item() == 1 and bool(out.negative_mask[1:].all())
    rest = contrastive_loss(u.detach(), v.detach(), 0.05, false_negatives="mask", false_negative_margin=0.1,
                            reference=[ref_u, ref_v])
    per_anchor = F.cross_entropy(rest.logits, torch.arange(8), reduction="none")
    assert per_anchor[0].item() == 0.0 and out.loss.item() == pytest.approx(per_anchor[1:].sum().item() / 8)

    everything = contrastive_loss(u, v, 0.05, symmetric=True, false_negatives="mask", false_negative_margin=2.0)
    assert everything.loss.item() == 0.0 and everything.masked_stats[2].item() == 16  # both directions
    (gu, gv) = torch.autograd.grad(everything.loss, (u, v))
    assert torch.equal(gu, torch.zeros_like(gu)) and torch.equal(gv, torch.zeros_like(gv))


def test_bad_options_are_named(tiny_model_dir):
    u, v = clustered()
    with pytest.raises(ValueError, match="false_negatives must be one of"):
        contrastive_loss(u, v, 0.1, false_negatives="drop")
    with pytest.raises(ValueError, match="one \\(n, d_r\\) tensor per column"):
        contrastive_loss(u, v, 0.1, false_negatives="mask", reference=[u])
    with pytest.raises(ValueError, match="false_negative_margin"):
        InfoNCELoss(torch.nn.Identity(), false_negatives="mask", false_negative_margin=float("nan"))
    with pytest.raises(ValueError, match="only serves false-negative masking"):
        InfoNCELoss(torch.nn.Identity(), guide=torch.nn.Identity())


# ----------------------------------------------------------------------------------------------------
# gradient bands of the masked softmax


def _autograd_masked_norms(u, v, tau, negatives, keep):
    un = F.normalize(u, dim=-1).detach().requires_grad_(True)
    vn = F.normalize(v, dim=-1)
    loss = infonce_loss(un, vn, tau, negatives, normalize=False, negative_mask=keep).sum()
    (grad,) = torch.autograd.grad(loss, un)
    return grad.norm(dim=-1)


@pytest.mark.parametrize("layout", ["in_batch", "shared_k_le_d", "shared_k_gt_d", "per_anchor"])
@pytest.mark.parametrize("seed", range(6))
def test_bands_contain_every_anchor_of_the_masked_softmax(layout, seed):
    g = torch.Generator().manual_seed(seed)
    b, d = 10, 5 if layout == "shared_k_gt_d" else 8
    tau = [0.02, 0.05, 0.1, 0.2, 0.5, 1.0][seed]
    centre = torch.randn(d, generator=g, dtype=F64)
    u = centre + (0.3 + seed * 0.2) * torch.randn(b, d, generator=g, dtype=F64)
    v = u + 0.5 * torch.randn(b, d, generator=g, dtype=F64)
    k = {"in_batch": b, "shared_k_le_d": 6, "shared_k_gt_d": 12, "per_anchor": 7}[layout]
    negatives = None if layout == "in_batch" else torch.randn(
        *((b,) if layout == "per_anchor" else ()), k, d, generator=g, dtype=F64) + centre
    keep = torch.rand(b, k, generator=g) < 0.6
    keep[0] = False  # an anchor with nothing left
    keep[1] = True  # one with everything
    bands = gradient_bands(u, v, tau, negatives, negative_mask=keep)
    assert bool(bands.inside().all())
    assert torch.allclose(bands.grad_norm, _autograd_masked_norms(u, v, tau, negatives, keep), atol=1e-10, rtol=1e-9)
    assert bands.grad_norm[0].item() == 0.0 and bands.loss[0].item() == 0.0 and bands.k_eff[0].item() == 0.0
    assert bands.upper[0].item() == 0.0 and torch.isfinite(bands.upper).all() and torch.isfinite(bands.lower).all()
    # every statistic is that of the anchor's kept negatives alone: the unmasked bands on an explicit subset
    un, vn = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    plain = gradient_bands(u, v, tau, negatives)
    for i in range(1, b):
        if negatives is None:
            kept = keep[i].clone()
            kept[i] = False
            z = vn[kept]
            touched = int(kept.sum()) < b - 1
        else:
            z = (negatives[i] if layout == "per_anchor" else negatives)[keep[i]]
            touched = not bool(keep[i].all())
        if z.shape[0] == 0:
            assert bands.grad_norm[i].item() == 0.0
            continue
        one = gradient_bands(un[i:i + 1], vn[i:i + 1], tau, z, validate=False)
        for name in ("grad_norm", "k_eff", "v_q", "p_pos", "loss"):
            assert torch.allclose(getattr(bands, name)[i], getattr(one, name)[0], atol=1e-10), name
        # λ_max of the kept negatives where the mask removed any; elsewhere exactly the unmasked bands
        same = one if touched else plain
        lam = same.lambda_max_neg if touched or plain.lambda_max_neg.ndim == 0 else plain.lambda_max_neg[i]
        assert torch.allclose(bands.lambda_max_neg[i], lam, atol=1e-10)
        for name in ("lower", "upper"):
            assert torch.allclose(getattr(bands, name)[i], getattr(same, name)[0 if touched else i], atol=1e-10), name


def test_a_mask_that_keeps_everything_gives_the_unmasked_bands():
    u, v = clustered(n=9, d=7, seed=5)
    plain = gradient_bands(u, v, 0.1)
    masked = gradient_bands(u, v, 0.1, negative_mask=torch.ones(9, 9, dtype=torch.bool))
    for name in ("grad_norm", "lower", "upper", "k_eff", "v_q", "loss"):
        assert torch.allclose(getattr(plain, name), getattr(masked, name), atol=1e-12), name
    assert torch.allclose(masked.lambda_max_neg, plain.lambda_max_neg.expand(9), atol=1e-12)
    batched = gradient_bands(torch.stack([u, v]), torch.stack([v, u]), 0.1,
                             negative_mask=torch.rand(2, 9, 9, generator=torch.Generator().manual_seed(0)) < 0.7)
    assert batched.grad_norm.shape == (2, 9) and bool(batched.inside().all())
    with pytest.raises(ValueError, match="negative_mask"):
        gradient_bands(u, v, 0.1, negative_mask=torch.ones(9, 8, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------------
# the guide model


def _features(model, texts):
    feats = model.preprocess(texts)
    return {k: t for k, t in feats.items() if isinstance(t, torch.Tensor)}


def test_guide_model_gives_the_reference_and_is_never_trained(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    guide = SentenceTransformer(tiny_model_dir, device="cpu")
    guide.max_seq_length = 32  # shorter than the model's: the text is decoded and re-tokenised for the guide
    loss = InfoNCELoss(model, false_negatives="mask", false_negative_margin=0.05, guide=guide)
    assert loss._retokenize and not any(p is q for p in loss.parameters() for q in guide.parameters())
    assert loss.check_guide({"anchor": ["a cold day", "a warm day"], "positive": ["cold", "warm"]}) == 32
    texts = [f"word {i}" for i in range(6)], [f"gloss of word {i}" for i in range(6)]
    feats = [_features(model, t) for t in texts]
    value = loss(feats)
    value.backward()
    assert all(p.grad is None for p in guide.parameters())
    guide.eval()
    with torch.no_grad():
        ref = [F.normalize(guide.encode(list(t), convert_to_tensor=True), dim=-1) for t in texts]
    expected = ~((ref[0] @ ref[1].T) > (ref[0] * ref[1]).sum(-1, keepdim=True) - 0.05)
    expected |= torch.eye(6, dtype=torch.bool)
    assert torch.equal(loss.last_output.negative_mask, expected)
    assert loss.get_config_dict()["false_negatives"] == "mask"


def test_a_guide_that_cannot_be_used_is_refused_with_what_is_wrong(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")

    class NoText(torch.nn.Module):
        def forward(self, features):
            return {"sentence_embedding": torch.ones(2, 3)}

    with pytest.raises(ValueError, match=r"cannot read this model's inputs.*same modality"):
        InfoNCELoss(model, false_negatives="mask", guide=NoText())

    class Broken(torch.nn.Module):  # same tokenizer, but token-level output and a wrong dimension layout
        tokenizer, max_seq_length = model.tokenizer, model.max_seq_length

        def forward(self, features):
            return {"sentence_embedding": torch.ones(features["input_ids"].shape[0], 5, 3)}

    loss = InfoNCELoss(model, false_negatives="mask", guide=Broken())
    with pytest.raises(ValueError, match=r"column 'anchor'.*shape \(2, 5, 3\); expected \(2, d\)"):
        loss.check_guide({"anchor": ["a", "b"], "positive": ["c", "d"]})

    class Fails(Broken):
        def forward(self, features):
            raise RuntimeError("index out of range in self")

    loss = InfoNCELoss(model, false_negatives="mask", guide=Fails())
    with pytest.raises(ValueError, match=r"cannot encode column 'anchor'.*RuntimeError: index out of range"):
        loss.check_guide({"anchor": ["a", "b"]})


# ----------------------------------------------------------------------------------------------------
# the trainer


def _pairs(n=48):
    from hf_divcl.data.wordnet import wordnet_pairs

    return wordnet_pairs(kind="example", source="embedded").select(range(n)).select_columns(["anchor", "positive"])


def _args(tmp_path, **kw):
    from hf_divcl.training.arguments import DivCLTrainingArguments

    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=1e-3,
                batch_policy="random", max_steps=4, logging_steps=2, report_to=[], disable_tqdm=True,
                collapse_threshold=0, save_strategy="no", bank_cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return DivCLTrainingArguments(**base)


def test_trainer_with_masking_trains_and_logs_the_masked_counts(tiny_model_dir, tmp_path):
    import json

    from sentence_transformers import SentenceTransformer

    from hf_divcl.diversity.log import read_diversity_log
    from hf_divcl.training.trainer import DivCLTrainer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    args = _args(tmp_path, loss_kwargs={"false_negatives": "mask", "false_negative_margin": 0.02})
    trainer = DivCLTrainer(model=model, args=args, train_dataset=_pairs())
    assert trainer.loss.false_negatives == "mask" and trainer.loss.false_negative_margin == 0.02
    trainer.train()
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert [r["step"] for r in log] == [2, 4]
    for r in log:
        assert r["divcl/masked_negatives_total"] == pytest.approx(8 * r["divcl/masked_negatives_mean"])
        assert 0 <= r["divcl/anchors_all_masked"] <= 8 and 0 <= r["divcl/masked_negatives_mean"] <= 7
        assert r["divcl/band_inside_fraction"] == 1.0  # bands of the masked softmax
        assert all(v is None or v == v for v in r.values())  # no NaN anywhere
    assert any(r["divcl/masked_negatives_total"] > 0 for r in log)  # the random tiny model sees many look-alikes
    run = json.loads((tmp_path / "out" / "divcl_run.json").read_text())
    assert run["false_negatives"] == {"mode": "mask", "margin": 0.02, "reference": "self (detached)"}


def test_trainer_masks_exactly_the_in_batch_duplicates(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    from hf_divcl.training.trainer import DivCLTrainer

    pairs = _pairs()
    captions = [f"caption {i % 3}" for i in range(len(pairs))]  # 3 distinct positives: duplicates are certain
    data = Dataset.from_dict({"anchor": pairs["anchor"], "positive": captions})
    seen: list[torch.Tensor] = []

    class Recording(DivCLTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.append(self.row_groups()[inputs["row_ids"]])
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = Recording(model=SentenceTransformer(tiny_model_dir, device="cpu"),
                        args=_args(tmp_path, loss_kwargs={"false_negatives": "duplicates"}, dedupe=False,
                                  logging_steps=1),
                        train_dataset=data)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "divcl/masked_negatives_total" in r]
    assert len(logs) == len(seen) == 4
    for groups, r in zip(seen, logs, strict=True):
        same = int((groups[:, None] == groups[None, :]).sum()) - len(groups)  # ordered same-caption pairs
        assert r["divcl/masked_negatives_total"] == same > 0


def test_trainer_refuses_a_bad_margin_and_a_broken_guide_before_training(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    with pytest.raises(ValueError, match="false_negatives must be one of"):
        DivCLTrainingArguments(output_dir=str(tmp_path), loss_kwargs={"false_negatives": "drop"})
    with pytest.raises(ValueError, match="false_negative_margin"):
        DivCLTrainingArguments(output_dir=str(tmp_path), loss_kwargs={"false_negative_margin": 3.0})
    model = SentenceTransformer(tiny_model_dir, device="cpu")

    class Zero(torch.nn.Module):
        tokenizer, max_seq_length = model.tokenizer, model.max_seq_length

        def forward(self, features):
            return {"sentence_embedding": torch.zeros(features["input_ids"].shape[0], 4)}

    loss = InfoNCELoss(model, false_negatives="mask", guide=Zero())
    with pytest.raises(ValueError, match=r"column 'anchor'.*all-zero"):
        DivCLTrainer(model=model, args=_args(tmp_path, loss_kwargs={"false_negatives": "mask"}),
                     train_dataset=_pairs(), loss=loss)


# ----------------------------------------------------------------------------------------------------
# 2 real processes (gloo)


DIST = r'''
import sys, torch
import torch.distributed as dist
from hf_divcl import end_distributed
from hf_divcl.losses.infonce import contrastive_loss
dist.init_process_group("gloo")
rank = dist.get_rank()
sys.path.insert(0, sys.argv[2])
from test_false_negatives import clustered, KINDS
results = {}
CASES = [("even", "infonce", False, 6, False), ("uneven", "infonce", True, 7, False),
         ("symmetric", "symmetric", True, 5, True), ("nt_xent", "nt_xent", False, 6, False),
         ("duplicates", "symmetric", False, 5, False), ("duplicates_nt", "nt_xent", False, 7, False)]
for name, kind, hard, cut, guide in CASES:
    cols = clustered(columns=3 if hard else 2, seed=1)
    reference = clustered(d=9, columns=len(cols), seed=2) if guide else None
    lo, hi = (0, cut) if rank == 0 else (cut, 12)
    mine = [c[lo:hi].clone().requires_grad_(True) for c in cols]
    ref = [r[lo:hi] for r in reference] if guide else None
    mode = "duplicates" if name.startswith("duplicates") else "mask"
    out = contrastive_loss(mine[0], mine[1], 0.1, negatives=mine[2:], false_negatives=mode,
                           false_negative_margin=0.1, reference=ref, groups=(torch.arange(12) % 4)[lo:hi],
                           **KINDS[kind])
    (out.loss * (hi - lo) / 12).backward()  # weighted so the sum over ranks is the global mean
    results[name] = {"loss": out.loss.detach(), "grads": [m.grad for m in mine], "stats": out.masked_stats,
                     "mask": out.negative_mask, "cut": cut}
torch.save(results, f"{sys.argv[1]}/rank{rank}.pt")
end_distributed()  # barrier first: a rank tearing down while another still saves can abort
'''


@pytest.mark.slow
def test_two_processes_get_the_masked_loss_and_gradient_of_the_global_batch(tmp_path):
    script = tmp_path / "d.py"
    script.write_text(DIST)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                          str(tmp_path), str(ROOT / "tests")], env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    specs = {"even": ("infonce", False, False), "uneven": ("infonce", True, False),
             "symmetric": ("symmetric", True, True), "nt_xent": ("nt_xent", False, False),
             "duplicates": ("symmetric", False, False), "duplicates_nt": ("nt_xent", False, False)}
    for name, (kind, hard, guide) in specs.items():
        a, b = r0[name], r1[name]
        cut = a["cut"]
        cols = [c.clone().requires_grad_(True) for c in clustered(columns=3 if hard else 2, seed=1)]
        reference = clustered(d=9, columns=len(cols), seed=2) if guide else None
        margin = 0.1
        if name.startswith("duplicates"):  # same group ⇔ the same one-hot reference row, masked at margin 0
            reference, margin = [group_one_hot(torch.arange(12) % 4)] * 2, 0.0
        ref_loss, counts = reference_loss(cols, 0.1, margin, kind, reference)
        ref_loss.backward()
        weighted = (a["loss"] * cut + b["loss"] * (12 - cut)) / 12
        assert abs(weighted.item() - ref_loss.item()) < 1e-10, name
        for i, col in enumerate(cols):
            assert torch.allclose(torch.cat([a["grads"][i], b["grads"][i]]), col.grad, atol=1e-10, rtol=0), name
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["stats"], b["stats"]), name  # same on every rank
        assert a["stats"][1].item() == sum(counts) > 0, name
