"""Progress calibration: paired intervals, the decision rule, the step-gain measurement and the budgeted schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from hf_divcl.experimental.cost import calibration_cost
from hf_divcl.experimental.follower import plan_calibrations
from hf_divcl.experimental.progress import ProgressCalibration, StepGain, calibrate_progress, decide
from hf_divcl.experimental.sequential import paired_interval
from hf_divcl.policies.calibration import calibrate_window


def clustered(n=512, d=16, k=8, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=-1)
    x = centres[torch.randint(k, (n,), generator=g)] + 0.35 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=-1)


def test_paired_interval_equals_the_student_t_interval_in_float64():
    d = torch.tensor([0.3, -0.1, 0.5, 0.2, 0.05], dtype=torch.float64)
    mean, low, high = paired_interval(d, 0.9)
    ref_low, ref_high = stats.t.interval(0.9, len(d) - 1, loc=float(d.mean()), scale=stats.sem(d.numpy()))
    assert mean == pytest.approx(float(d.mean()), abs=1e-12)
    assert low == pytest.approx(ref_low, abs=1e-10) and high == pytest.approx(ref_high, abs=1e-10)
    assert paired_interval(torch.tensor([1.0]), 0.9)[1:] == (-math.inf, math.inf)  # one pair says nothing


def test_decide_takes_the_level_whose_interval_is_above_zero_else_none():
    winner, st = decide({"a": torch.tensor([1.0, 1.1, 0.9, 1.2]), "b": torch.tensor([0.5, -2.0, 3.0, 0.1])})
    assert winner == "a" and st["a"][1] > 0 and st["b"][1] < 0
    assert decide({"b": torch.tensor([0.5, -2.0, 3.0, 0.1])})[0] is None


def mean_sq_cos(u, rows):
    x = u[rows]
    return (x @ x.T).square().mean().item()


def test_progress_calibration_finds_the_level_that_truly_trains_better():
    u = clustered()
    # synthetic "held-out gain": tight batches (high mean cos²) gain more, plus a little noise
    noise = iter(torch.randn(1000, generator=torch.Generator().manual_seed(1)).tolist())
    cal = calibrate_progress(u, 16, 0.1, lambda rows: mean_sq_cos(u, rows) + 0.01 * next(noise), n_pairs=6,
                             levels=["local:32", "spread:4"])
    assert cal.decision == "window" and cal.level == "local:32"
    tight = next(r for r in cal.levels if r["level"] == "local:32")
    assert tight["ci_low"] > 0 and tight["metric"] < cal.random_metric  # lower effective rank than random
    assert cal.window.low <= tight["metric"] <= cal.window.high
    # … and the opposite preference picks the spread level
    cal = calibrate_progress(u, 16, 0.1, lambda rows: -mean_sq_cos(u, rows), n_pairs=4,
                             levels=["local:32", "spread:4"])
    assert cal.level == "spread:4"


def test_no_level_beats_random_keeps_random_batches_and_says_why():
    u = clustered()
    noise = iter(torch.randn(1000, generator=torch.Generator().manual_seed(2)).tolist())
    cal = calibrate_progress(u, 16, 0.1, lambda rows: next(noise), n_pairs=4)
    assert cal.decision == "random" and cal.window is None and "no level beat random" in cal.reason
    assert "random batches" in cal.format()


def test_a_nan_gain_falls_back_to_random_naming_the_level():
    u = clustered()
    calls = iter(range(100))  # measured pair by pair: random, then local:32 — the second call is local:32's
    cal = calibrate_progress(u, 16, 0.1, lambda rows: float("nan") if next(calls) == 1 else 1.0,
                             n_pairs=3, levels=["local:32"])
    assert cal.decision == "random" and "NaN" in cal.reason and "local:32" in cal.reason


def test_calibration_round_trips_through_json_and_calibrate_window_is_only_the_gradient_calibration():
    u = clustered()
    cal = calibrate_progress(u, 16, 0.1, lambda rows: mean_sq_cos(u, rows), n_pairs=3, levels=["local:32"])
    again = ProgressCalibration.from_dict({**cal.to_dict(), "wall_seconds": 1.0})
    assert again.window == cal.window and again.levels == cal.levels
    with pytest.raises(TypeError, match="gain"):
        calibrate_progress(u, 16, 0.1)  # the progress calibration needs the gain of a step
    for method in ("progress", "largest"):  # the progress calibration lives in hf_divcl.experimental.progress
        with pytest.raises(TypeError, match="method"):
            calibrate_window(u, 16, 0.1, method=method)


def tiny_regression(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    px, py = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)

    def loss_of(rows):
        return torch.nn.functional.mse_loss(net(x[rows]), y[rows])

    def probe():
        return [torch.nn.functional.mse_loss(net(px[:16]), py[:16]), torch.nn.functional.mse_loss(net(px[16:]),
                                                                                                 py[16:])]
    return net, loss_of, probe


def test_lookahead_restores_the_weights_bit_for_bit_and_first_order_matches_it_for_small_steps():
    net, loss_of, probe = tiny_regression()
    before = [p.detach().clone() for p in net.parameters()]
    rows = torch.arange(16)
    look = StepGain(net.parameters(), loss_of, probe, lr=1e-6, estimate="lookahead")
    first = StepGain(net.parameters(), loss_of, probe, lr=1e-6, estimate="first_order")
    g_look, g_first = look(rows), first(rows)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert g_first == pytest.approx(g_look, rel=1e-3)  # first-order term of the same step
    # the step itself: sign(g) · lr when the optimizer has no state (Adam's first step)
    grads = torch.autograd.grad(loss_of(rows), list(net.parameters()))
    with torch.no_grad():
        for p, g in zip(net.parameters(), grads, strict=True):
            p.sub_(1e-6 * g.sign())
    after = torch.stack(probe()).mean().item()
    with torch.no_grad():
        for p, b in zip(net.parameters(), before, strict=True):
            p.copy_(b)
    assert g_look == pytest.approx(torch.stack(probe()).mean().item() - after, rel=1e-9, abs=1e-15)


def test_the_step_direction_uses_adams_second_moment_when_the_optimizer_has_one():
    net, loss_of, probe = tiny_regression()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    for _ in range(3):
        opt.zero_grad()
        loss_of(torch.arange(64)).backward()
        opt.step()
    gain = StepGain(net.parameters(), loss_of, probe, lr=1e-3, optimizer=opt)
    g = [torch.ones_like(p) for p in net.parameters()]
    d = gain.direction(g)
    p0 = next(iter(net.parameters()))
    st = opt.state[p0]
    v_hat = st["exp_avg_sq"] / (1 - 0.99 ** float(st["step"]))
    torch.testing.assert_close(d[0], 1.0 / (v_hat.sqrt() + 1e-8), rtol=1e-12, atol=0)


def test_step_gain_refuses_a_zero_learning_rate_and_a_frozen_model():
    net, loss_of, probe = tiny_regression()
    with pytest.raises(ValueError, match="learning rate > 0"):
        StepGain(net.parameters(), loss_of, probe, lr=0.0)
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="trainable parameters"):
        StepGain(net.parameters(), loss_of, probe, lr=1e-3)


def test_calibrations_fit_the_budget_and_a_short_run_says_how_long_it_would_need():
    kw = dict(steps_per_epoch=100, batch_size=32, train_rows=3200, budget=0.05)
    plan = plan_calibrations(total_steps=1000, **kw)
    assert plan.steps and plan.steps[0] == 0 and plan.n_pairs >= 3
    assert len(plan.steps) * plan.cost_per_calibration <= 0.05 * 1000 + 1e-9
    assert plan.cost_per_calibration == pytest.approx(calibration_cost(32, plan.n_pairs, len(plan.levels),
                                                                       plan.probe_rows, plan.sample_rows))
    big = plan_calibrations(total_steps=10_000, **kw)
    assert {0, 100, 200, 1000} <= set(big.steps)  # start, every epoch start, early (10 %); later ones dropped
    short = plan_calibrations(total_steps=60, **kw)
    assert short.steps == [] and "too short" in short.reason and "steps" in short.reason
    need = int(short.reason.split("(≥ ")[1].split(" steps")[0])
    assert plan_calibrations(total_steps=need, **kw).steps == [0]
    fixed = plan_calibrations(total_steps=60, n_pairs=4, **kw)
    assert fixed.steps and fixed.n_pairs == 4


def test_bad_calibration_arguments_are_refused_before_training():
    from hf_divcl.training.arguments import DivCLTrainingArguments

    for kw, match in [({"budget": 2.0}, "budget"), ({"pairs": 1}, "pairs"),
                      ({"recalibrate_every": "weekly"}, "recalibrate_every"),
                      ({"levels": "local:x"}, "sweep level"),
                      ({"confidence": 1.0}, "confidence"),
                      ({"factor": 2}, "factor")]:  # a super-batch factor is not a progress setting
        with pytest.raises(ValueError, match=match):
            DivCLTrainingArguments(output_dir="x", batch_policy="progress", batch_policy_kwargs=kw)


def test_measured_gains_are_deterministic_for_a_seed():
    u = clustered()
    f = lambda rows: mean_sq_cos(u, rows)  # noqa: E731
    a = calibrate_progress(u, 16, 0.1, f, n_pairs=3, seed=5)
    b = calibrate_progress(u, 16, 0.1, f, n_pairs=3, seed=5)
    assert np.allclose([r["gain_mean"] for r in a.levels], [r["gain_mean"] for r in b.levels], rtol=0, atol=0)
