"""benchmarks/time_to_quality.py: the paired summary of a grid, guards included."""

import pytest


def _run(policy, seed, final, simlex=None):
    last = {"step": 10, "seconds": 1.0, "score": final}
    if simlex is not None:
        last.update(simlex999_spearman=simlex, wordsim353_spearman=0.7)
    return {"policy": policy, "seed": seed, "total_seconds": 1.0, "selection_seconds": 0.0,
            "in_window_fraction": None, "curve": [{"step": 0, "seconds": 0.0, "score": 0.3}, last]}


def test_guards_are_paired_with_random_on_the_same_seed(load_benchmark):
    """With --word-similarity each policy's end-of-run SimLex/WordSim is compared with random's, seed by seed."""
    ttq = load_benchmark("time_to_quality")
    runs = [_run("random", s, 0.40, simlex=0.40 + s / 100) for s in range(3)]
    runs += [_run("spread", s, 0.41, simlex=0.38 + s / 50) for s in range(3)]
    paired = ttq.summarise(runs)["policies"]["spread"]["paired_vs_random"]
    diffs = [0.38 + s / 50 - (0.40 + s / 100) for s in range(3)]
    assert paired["final_simlex999_spearman_minus_random"]["mean"] == pytest.approx(sum(diffs) / 3)
    assert paired["final_wordsim353_spearman_minus_random"]["mean"] == pytest.approx(0.0)
    assert paired["final_minus_random"]["mean"] == pytest.approx(0.01)


def test_a_grid_without_guards_has_no_guard_keys(load_benchmark):
    ttq = load_benchmark("time_to_quality")
    runs = [_run("random", s, 0.40) for s in range(2)] + [_run("spread", s, 0.41) for s in range(2)]
    paired = ttq.summarise(runs)["policies"]["spread"]["paired_vs_random"]
    assert not any(k.endswith("_spearman_minus_random") for k in paired)
