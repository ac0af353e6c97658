"""Exploration on the training steps: block orders, the step score, the retrieval probe, the sequential test."""

import math

import pytest
import torch

from hf_divcl.experimental.preconditioner import preconditioned_score, preconditioner, step_score
from hf_divcl.experimental.probe import label_probe_loss, retrieval_probe_loss
from hf_divcl.experimental.sequential import RANDOM_ARM, SequentialTest, block_order, look_schedule, recheck_verdict

LEVELS = ["local:32", "spread:4"]


def test_each_block_holds_every_arm_once_in_an_order_fixed_by_seed_and_block():
    arms = [RANDOM_ARM, *LEVELS]
    orders = [block_order(arms, b, seed=3) for b in range(40)]
    assert all(sorted(o) == sorted(arms) for o in orders)
    assert orders == [block_order(arms, b, seed=3) for b in range(40)]  # every process computes the same
    assert len({tuple(o) for o in orders}) > 1 and orders != [block_order(arms, b, seed=4) for b in range(40)]
    assert sum(o[0] == RANDOM_ARM for o in orders) not in (0, 40)  # random is not always first


def test_looks_grow_geometrically_and_end_at_the_budget():
    assert look_schedule(10, 80) == [10, 20, 40, 80]
    assert look_schedule(6, 60, growth=1.5) == [6, 9, 14, 21, 32, 48, 60]
    assert look_schedule(4, 4) == [4]
    with pytest.raises(ValueError, match="min_blocks must be >= 2"):
        look_schedule(1, 10)
    with pytest.raises(ValueError, match="max_blocks"):
        look_schedule(8, 4)


def test_retrieval_probe_is_cross_entropy_against_every_probe_positive():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(300, 16, generator=g, dtype=torch.float64), torch.randn(300, 16, generator=g,
                                                                               dtype=torch.float64)
    un, vn = u / u.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True)
    logits = un @ vn.T / 0.1
    ref = -(logits.diagonal() - logits.logsumexp(-1)).mean()
    assert torch.allclose(retrieval_probe_loss(u, v, 0.1), ref, rtol=1e-12)


def test_label_probe_is_a_soft_knn_over_the_other_probe_rows_of_each_label():
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(40, 8, generator=g, dtype=torch.float64), torch.randn(40, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(4, (40,), generator=g)
    labels[0] = 9  # a label of one row: that anchor has no neighbour of its class and is left out
    un, vn = u / u.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True)
    terms = []
    for i in range(40):
        others = [j for j in range(40) if j != i]
        same = [j for j in others if labels[j] == labels[i]]
        if same:
            w = {j: math.exp(float(un[i] @ vn[j]) / 0.2) for j in others}
            terms.append(-math.log(sum(w[j] for j in same) / sum(w.values())))
    assert label_probe_loss(u, v, labels, 0.2).item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    # what k-NN rewards: pulling same-class rows together lowers it, pushing them apart raises it
    centres = torch.randn(4, 8, generator=g, dtype=torch.float64)
    clustered = centres[labels.clamp(max=3)] + 0.1 * u
    assert label_probe_loss(clustered, clustered, labels, 0.2) < label_probe_loss(u, v, labels, 0.2)
    with pytest.raises(ValueError, match="every label occurs once"):
        label_probe_loss(u[:4], v[:4], torch.arange(4), 0.2)
    with pytest.raises(ValueError, match="one per probe row"):
        label_probe_loss(u, v, labels[:5], 0.2)


def _adam_setup(betas=(0.0, 0.999)):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
    opt = torch.optim.Adam([w], lr=0.01, betas=betas, eps=1e-8)
    return w, opt


@pytest.mark.parametrize("warm_steps", [0, 3])
def test_adam_preconditioner_is_the_step_adam_takes(warm_steps):
    w, opt = _adam_setup()  # β1 = 0: Adam's update is exactly lr·g/(√v̂_t + ε)
    for _ in range(warm_steps):
        opt.zero_grad()
        (w.sin().sum() * 3).backward()
        opt.step()
    opt.zero_grad()
    (w.cos().square().sum()).backward()
    g = w.grad.clone()
    precond, name = preconditioner(opt, [w], [g])
    before = w.detach().clone()
    opt.step()
    assert name == "adam"
    assert torch.allclose(before - w.detach(), 0.01 * g * precond[0], rtol=1e-10, atol=1e-15)


def test_sgd_uses_the_identity_and_says_so():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = torch.ones(3)
    opt.step()
    assert preconditioner(opt, [w], [w.grad]) == (None, "identity")
    assert preconditioner(None, [w], [w.grad]) == (None, "identity")


def test_step_score_predicts_the_probe_loss_drop_to_first_order():
    torch.manual_seed(1)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    a, b = torch.randn(8, 8, dtype=torch.float64), torch.randn(8, 8, dtype=torch.float64)

    def train_loss(x):
        return (a @ x).tanh().square().sum()

    def probe_loss(x):
        return (b @ x).sin().sum()

    g = torch.autograd.grad(train_loss(w), w)[0]
    q = torch.autograd.grad(probe_loss(w), w)[0]
    c = torch.rand(8, dtype=torch.float64) + 0.5
    lr = 1e-6
    score = step_score([g], [c], [q], lr)
    with torch.no_grad():
        drop = probe_loss(w) - probe_loss(w - lr * g * c)
    assert score.dtype == torch.float64 and score.dim() == 0
    assert score.item() == pytest.approx(drop.item(), rel=1e-4)


@pytest.mark.parametrize("optim", ["adam_fresh", "adam_warm", "adamw_groups", "adamw_fused", "adam_uneven_steps",
                                   "sgd"])
def test_the_fused_score_is_the_step_score_under_the_optimizers_preconditioner(optim):
    torch.manual_seed(2)
    ws = [torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64)), torch.nn.Parameter(torch.randn(4,
                                                                                                   dtype=torch.float64))]
    opt = {"adam_fresh": lambda: torch.optim.Adam(ws, lr=0.01),
           "adam_warm": lambda: torch.optim.Adam(ws, lr=0.01, betas=(0.5, 0.9), eps=1e-6),
           "adamw_groups": lambda: torch.optim.AdamW([{"params": ws[:1], "betas": (0.9, 0.95)},
                                                       {"params": ws[1:], "eps": 1e-3}], lr=0.01),
           "adamw_fused": lambda: torch.optim.AdamW(ws, lr=0.01, fused=True),  # the Trainer's default optimizer
           "adam_uneven_steps": lambda: torch.optim.Adam(ws, lr=0.01),
           "sgd": lambda: torch.optim.SGD(ws, lr=0.1, momentum=0.9)}[optim]()
    for k in range(0 if optim == "adam_fresh" else 3):
        opt.zero_grad()
        skip = optim == "adam_uneven_steps" and k > 0  # the second parameter then lags two steps behind
        (ws[0].sin().sum() + (0 if skip else ws[1].exp().sum())).backward()
        if skip:
            ws[1].grad = None
        opt.step()
    if optim in ("adamw_fused", "adam_uneven_steps"):
        steps = [opt.state[w]["step"] for w in ws]
        assert all(isinstance(t, torch.Tensor) for t in steps)  # kept as tensors: the score never reads them
        assert [float(t) for t in steps] == ([3.0, 1.0] if optim == "adam_uneven_steps" else [3.0, 3.0])
    grads = [torch.randn_like(w) for w in ws]
    probe = [torch.randn_like(w) for w in ws]
    precond, name = preconditioner(opt, ws, grads)
    score, fused_name = preconditioned_score(opt, ws, grads, probe, 0.01)
    assert fused_name == name == ("identity" if optim == "sgd" else "adam")
    assert score.dtype == torch.float64 and score.dim() == 0
    assert score.item() == pytest.approx(step_score(grads, precond, probe, 0.01).item(), rel=1e-12)
    # float32 gradients against a float32 probe gradient: the same score to float32 accuracy
    score32, _ = preconditioned_score(opt, ws, [g.float() for g in grads], [q.float() for q in probe], 0.01)
    assert score32.item() == pytest.approx(score.item(), rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_fused_score_never_syncs_with_the_host_under_fused_adamw_on_the_gpu():
    ws = [torch.nn.Parameter(torch.randn(64, 32, device="cuda")) for _ in range(3)]
    opt = torch.optim.AdamW(ws, lr=0.01, fused=True)  # keeps its step counts on the GPU
    for _ in range(2):
        opt.zero_grad()
        sum(w.sin().sum() for w in ws).backward()
        opt.step()
    grads, probe = [torch.randn_like(w) for w in ws], [torch.randn_like(w) for w in ws]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        score, _ = preconditioned_score(opt, ws, grads, probe, 0.01)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    reference = step_score(grads, preconditioner(opt, ws, grads)[0], probe, 0.01)
    assert score.item() == pytest.approx(reference.item(), rel=1e-5)


def _run(test: SequentialTest, mean: dict[str, float], seed: int, sd: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    while not test.done:
        base = torch.randn(1, generator=g).item()
        scores = {RANDOM_ARM: base, **{n: base + mean.get(n, 0.0) + sd * torch.randn(1, generator=g).item()
                                       for n in test.arms[1:]}}
        test.add_block(scores)
    return test.decision


def test_a_level_clearly_ahead_wins_at_an_early_look():
    d = _run(SequentialTest(LEVELS, min_blocks=6, max_blocks=60), {"spread:4": 3.0}, seed=0)
    assert d.status == "window" and d.level == "spread:4" and d.blocks <= 14
    assert d.levels["spread:4"]["low"] > 0 and "ahead of random" in d.reason


def test_levels_confidently_behind_are_dropped_and_then_random_wins():
    test = SequentialTest(LEVELS, min_blocks=6, max_blocks=60)
    d = _run(test, {"local:32": -3.0, "spread:4": -3.0}, seed=0)
    assert d.status == "random" and "every level is behind" in d.reason and test.arms == [RANDOM_ARM]


def test_a_per_look_level_above_one_half_is_capped_so_a_negative_mean_is_never_ahead():
    test = SequentialTest(["local:32"], alpha=0.9, min_blocks=2, max_blocks=2)  # one look, one level: 0.9 → 0.5
    assert test.alpha_look == 0.5
    for d in (-0.01, -0.03):
        test.add_block({RANDOM_ARM: 0.0, "local:32": d})
    stats = test.statistics("local:32")
    assert stats["low"] <= stats["mean"] <= stats["high"] and test.decision.status == "random"


def _recheck(diffs, blocks=4):
    test = SequentialTest(["local:32"], alpha=0.05, min_blocks=max(2, blocks // 2), max_blocks=blocks)
    for d in diffs[:blocks]:
        test.add_block({RANDOM_ARM: 0.0, "local:32": d})
    return test.decision


@pytest.mark.parametrize(("diffs", "ahead", "behind"), [
    ([1.0, 1.1, 0.9, 1.0], "keep", "keep"),  # confidently ahead: kept under both rules
    ([-1.0, -1.1, -0.9, -1.0], "behind", "behind"),  # confidently behind: dropped under both
    ([1.0, -1.2, 0.8, -0.9], "not_ahead", "keep"),  # inconclusive: only the strict rule drops it
])
def test_a_recheck_keeps_or_drops_the_window_by_its_rule(diffs, ahead, behind):
    decision = _recheck(diffs)
    assert recheck_verdict(decision, "ahead") == ahead and recheck_verdict(decision, "behind") == behind
    nan = _recheck([float("nan")] * 4, blocks=2)  # two bad blocks of a 2-block budget: the scores failed
    assert recheck_verdict(nan, "behind") == "failed"
    with pytest.raises(ValueError, match="rule"):
        recheck_verdict(decision, "sometimes")


def test_false_window_rate_under_the_null_is_at_most_alpha():
    windows = sum(_run(SequentialTest(LEVELS, alpha=0.1, min_blocks=6, max_blocks=40), {}, seed=s).status == "window"
                  for s in range(300))
    assert windows / 300 <= 0.1  # Bonferroni over looks and levels: well below α in practice


def test_nan_scores_end_exploration_with_the_reason_after_a_quarter_of_the_budget():
    test = SequentialTest(LEVELS, min_blocks=2, max_blocks=8)
    for _ in range(3):
        d = test.add_block({RANDOM_ARM: 1.0, "local:32": math.nan, "spread:4": 1.0})
    assert d.status == "random" and "NaN/inf in 3 blocks" in d.reason and "local:32" in d.reason
    with pytest.raises(ValueError, match=r"no score for arm\(s\) \['spread:4'\]"):
        SequentialTest(LEVELS).add_block({RANDOM_ARM: 1.0, "local:32": 1.0})


def test_resume_mid_exploration_continues_identically():
    full = SequentialTest(LEVELS, min_blocks=4, max_blocks=30)
    half = SequentialTest(LEVELS, min_blocks=4, max_blocks=30)
    g = torch.Generator().manual_seed(5)
    blocks = [{RANDOM_ARM: 0.0, "local:32": torch.randn(1, generator=g).item() + 0.4,
               "spread:4": torch.randn(1, generator=g).item()} for _ in range(30)]
    for b in blocks[:7]:
        half.add_block(b)
    resumed = SequentialTest(LEVELS, min_blocks=4, max_blocks=30)
    resumed.load_state_dict(half.state_dict())
    for b in blocks:
        full.add_block({k: v for k, v in b.items() if k in full.arms})
    for b in blocks[7:]:
        resumed.add_block({k: v for k, v in b.items() if k in resumed.arms})
    assert resumed.decision == full.decision
    with pytest.raises(ValueError, match="Resume with the same exploration settings"):
        SequentialTest(["local:32"], min_blocks=4, max_blocks=30).load_state_dict(half.state_dict())


def test_the_preconditioner_without_a_gradient_is_adams_second_moment_as_the_optimizer_holds_it():
    """What ``"progress"`` scores a step on another batch with: ``1/(√v̂ + ε)``, ``v̂ = v/(1 − β2^t)`` from Adam's
    state as it is (no update by a new gradient); nothing before Adam's first step; the identity for SGD."""
    from hf_divcl.experimental.preconditioner import preconditioner

    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    adam = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.99), eps=1e-6)
    assert preconditioner(adam, [p]) == (None, "identity")
    for _ in range(3):
        p.grad = torch.randn(5, dtype=torch.float64)
        adam.step()
    v, t = adam.state[p]["exp_avg_sq"], float(adam.state[p]["step"])
    got, name = preconditioner(adam, [p])
    assert name == "adam" and torch.equal(got[0], 1.0 / ((v / (1 - 0.99 ** t)).sqrt() + 1e-6))
    assert preconditioner(torch.optim.SGD([p], lr=0.1), [p]) == (None, "identity")
