"""DiversityWindow semantics and calibration: the window sits at the gradient peak and moves with τ."""

import pytest
import torch
import torch.nn.functional as F

from hf_divcl.diversity.window import DiversityWindow, measure_diversity
from hf_divcl.policies.calibration import calibrate_window


def test_contains_and_distance():
    w = DiversityWindow(10, 20)
    v = torch.tensor([5.0, 10.0, 15.0, 20.0, 26.0])
    assert w.contains(v).tolist() == [False, True, True, True, False]
    assert w.distance(v).tolist() == [5.0, 0.0, 0.0, 0.0, 6.0]
    assert w.center == 15 and w.direction == 1
    assert DiversityWindow(0.01, 0.02, "mean_sq_cosine").direction == -1


@pytest.mark.parametrize("args,match", [
    ((20, 10), "greater than high"),
    ((0.5, 4), "outside the range of effective_rank"),
    ((0.1, 1.5, "mean_sq_cosine"), "outside the range of mean_sq_cosine"),
    ((1, 2, "entropy"), "Unknown diversity metric"),
    ((float("nan"), 2), "must be finite"),
])
def test_invalid_windows_are_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        DiversityWindow(*args)


def test_parse():
    assert DiversityWindow.parse("10:20") == DiversityWindow(10, 20)
    assert DiversityWindow.parse("mean_sq_cosine:0.01:0.03") == DiversityWindow(0.01, 0.03, "mean_sq_cosine")
    with pytest.raises(ValueError, match="Bad window"):
        DiversityWindow.parse("ten:20")


def test_measure_diversity_matches_batch_diversity():
    x = torch.randn(5, 16, 8)
    from hf_divcl.diversity.metrics import batch_diversity

    assert torch.allclose(measure_diversity(x, "participation_ratio"), batch_diversity(x)["participation_ratio"])


def data(n=4000, d=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, d, generator=gen)
    u = F.normalize(centres[torch.randint(40, (n,), generator=gen)] + torch.randn(n, d, generator=gen), dim=-1)
    v = F.normalize(u + 0.3 * torch.randn(n, d, generator=gen), dim=-1)
    return u, v


def test_calibrated_window_contains_the_gradient_peak():
    u, v = data()
    cal = calibrate_window(u, 32, 0.1, positives=v, n_batches=16)
    peak = max(cal.curve, key=lambda r: r["grad_norm"])
    assert peak["level"] == cal.peak_level
    assert cal.window.low <= peak["metric"] <= cal.window.high
    metrics = [r["metric"] for r in cal.curve]
    assert metrics == sorted(metrics)  # low → high diversity
    assert "window: effective_rank in" in cal.format()


def test_window_moves_to_higher_diversity_as_temperature_rises():
    u, v = data()
    centres = [calibrate_window(u, 32, tau, positives=v, n_batches=16).window.center for tau in (0.05, 0.5)]
    assert centres[0] < centres[1]
