"""benchmarks/best_random.py: the best τ of random batches is found from the files, and policies are paired against
random batches at that τ, not at the grid's (synthetic result files; no training)."""

import pytest


@pytest.fixture(scope="module")
def best_random(load_benchmark):
    return load_benchmark("best_random")


def _runs(policy: str, finals: list[float]) -> list[dict]:
    return [{"policy": policy, "seed": s, "curve": [{"step": 0, "score": 0.3}, {"step": 10, "score": f}]}
            for s, f in enumerate(finals)]


def _file(tau: float | None, *groups: list[dict]) -> dict:
    return {"config": {"temperature": tau}, "runs": [r for g in groups for r in g]}


def test_policies_are_paired_against_random_at_the_best_tau_not_the_grids(best_random):
    noise = [0.001, -0.002, 0.0015, -0.0005, 0.002, -0.001, 0.0, 0.0005]
    grid = _file(None, _runs("random", [0.40 + e for e in noise]),  # τ = 0.05, the text default
                 _runs("tight", [0.42 + e / 2 for e in noise]))
    low = _file(0.02, _runs("random", [0.45 - e for e in noise]))
    high = _file(0.1, _runs("random", [0.38 + e for e in noise]))
    out = best_random.best_random(grid, [low, high])
    assert out["best"]["tau"] == 0.02 and out["best"]["at_edge"]  # 0.02 is the lowest τ tried
    assert out["taus"] == [0.02, 0.05, 0.1]
    rows = {r["policy"]: r for r in out["rows"]}
    assert set(rows) == {"random@0.05", "tight"}  # the grid's own random arm is a row when it is not the best
    tight = rows["tight"]["final_minus_best_random"]
    assert tight["mean"] == pytest.approx(0.42 - 0.45 + sum(e / 2 + e for e in noise) / 8)
    assert tight["ci95"][1] < 0 and rows["tight"]["final_holm_significant"]  # beats random at 0.05, loses at 0.02
    assert out["sweep"]["0.02"]["final_minus_grid_tau"]["mean"] == pytest.approx(0.05 - 2 * sum(noise) / 8)
    assert rows["tight"]["final_detectable"] > (tight["ci95"][1] - tight["ci95"][0]) / 2  # corrected: wider


def test_an_interior_best_is_not_at_the_edge_and_mismatched_lengths_are_refused(best_random):
    grid = _file(0.05, _runs("random", [0.44, 0.45, 0.46]), _runs("spread", [0.43, 0.45, 0.44]))
    low = _file(0.02, _runs("random", [0.41, 0.42, 0.40]))
    high = _file(0.1, _runs("random", [0.42, 0.43, 0.44]))
    out = best_random.best_random(grid, [low, high])
    assert out["best"]["tau"] == 0.05 and not out["best"]["at_edge"]
    assert [r["policy"] for r in out["rows"]] == ["spread"]
    longer = _file(0.2, [{**r, "curve": r["curve"] + [{"step": 20, "score": 0.5}]}
                         for r in _runs("random", [0.4, 0.4, 0.4])])
    with pytest.raises(SystemExit, match="different steps"):
        best_random.best_random(grid, [longer])
    with pytest.raises(SystemExit, match="appears twice"):
        best_random.best_random(grid, [_file(0.05, _runs("random", [0.4]))])


def test_adapter_truth_tables_are_compared_with_random_at_their_best_tau(best_random):
    def truth(random, tight):
        return {"finals": {"random": random, "local:32": tight}}

    high = {"truth": {"0.05": truth([0.40, 0.41, 0.42], [0.41, 0.42, 0.43]),
                      "0.5": truth([0.20, 0.22, 0.24], [0.36, 0.37, 0.38])}}
    low = {"truth": {"0.02": truth([0.45, 0.46, 0.47], [0.44, 0.45, 0.46])}}
    out = best_random.adapter_best_random([high, low])
    assert out["best"]["tau"] == 0.02 and out["best"]["at_edge"]
    rows = {(r["policy"], r["tau"]): r for r in out["rows"]}
    assert ("random", 0.02) not in rows and ("random", 0.05) in rows
    # tight at τ = 0.5 beats random at 0.5 by 0.14 but loses 0.09 to random at the best τ
    assert rows[("local:32", 0.5)]["final_minus_best_random"]["mean"] == pytest.approx(-0.09)
    assert rows[("local:32", 0.5)]["wins"] == 0
    with pytest.raises(SystemExit, match="twice"):
        best_random.adapter_best_random([high, high])


def test_steps_to_target_are_paired_against_random_at_the_best_tau(best_random):
    def curve_runs(policy, reach_steps):  # linear from 0.0 at step 0 to 1.0 at ``r``, then flat at 1.0
        return [{"policy": policy, "seed": s, "curve": [{"step": 0, "score": 0.0, "seconds": 0.0},
                                                         {"step": r, "score": 1.0, "seconds": 2.0 * r},
                                                         {"step": 100, "score": 1.0, "seconds": 200.0}]}
                for s, r in enumerate(reach_steps)]

    grid = {"task": "clip", "config": {"temperature": None}, "runs": curve_runs("random", [40, 50, 60, 50])
            + curve_runs("greedy", [30, 42, 48, 40])}  # τ = 0.07, the CLIP default
    other = {"task": "clip", "config": {"temperature": 0.2},
             "runs": curve_runs("random", [80, 80, 80, 80]) + curve_runs("pool", [70, 90, 60, 80])}
    out = best_random.best_random([grid, other], [], target_fraction=0.5)
    assert out["taus"] == [0.07, 0.2] and out["best"]["tau"] == 0.07  # finals tie at 1.0; the first τ wins
    assert out["target"]["score"] == 0.5 and out["target"]["best_random_steps_mean"] == 25.0
    rows = {(r["policy"], r["tau"]): r for r in out["rows"]}
    assert set(rows) == {("random@0.2", 0.2), ("greedy", 0.07), ("pool", 0.2)}
    greedy = rows[("greedy", 0.07)]
    # half-way is reached at half the step of reaching 1.0: (30 − 40 + 42 − 50 + 48 − 60 + 40 − 50) / 2 / 4
    assert greedy["steps_to_target_minus_best_random"]["mean"] == pytest.approx(-5.0)
    assert greedy["seconds_to_target_minus_best_random"]["mean"] == pytest.approx(-10.0)
    assert greedy["runs_never_reaching_target"] == 0
    pool = rows[("pool", 0.2)]["steps_to_target_minus_best_random"]
    assert pool["mean"] == pytest.approx(12.5)  # half of (70 − 40, 90 − 50, 60 − 60, 80 − 50), averaged


def test_a_policys_seeds_from_several_grid_files_are_pooled_and_duplicates_refused(best_random):
    first = _file(0.05, _runs("random", [0.40, 0.41, 0.42]), _runs("pool", [0.41, 0.42, 0.43])[:2])
    later = _file(0.05, _runs("pool", [0.41, 0.42, 0.43])[2:])  # seed 2 of pool, run later
    out = best_random.best_random([first, later], [])
    (row,) = out["rows"]
    assert (row["policy"], row["seeds"]) == ("pool", [0, 1, 2])
    assert row["final_minus_best_random"]["mean"] == pytest.approx(0.01)
    with pytest.raises(SystemExit, match=r"pool at τ = 0\.05, seed 2 appears twice"):
        best_random.best_random([first, later, later], [])


def test_a_gain_target_counts_what_training_adds(best_random):
    runs = [{"policy": "random", "seed": s, "curve": [{"step": 0, "score": 0.4}, {"step": 10, "score": 0.45},
                                                       {"step": 20, "score": 0.5}]} for s in range(3)]
    out = best_random.best_random(_file(0.05, runs), [], target_fraction=0.5, target_kind="gain")
    assert out["target"]["score"] == pytest.approx(0.45)  # half-way from 0.4 to 0.5, not half of 0.5
    assert out["target"]["best_random_steps_mean"] == pytest.approx(10.0)
    assert out["target"]["best_random_runs_never_reaching"] == 0


def test_random_runs_that_miss_the_target_are_counted_not_averaged(best_random):
    """A target at 95 % of random's mean final can lie above some random runs' own finals: those runs are counted
    apart, and the mean step is over the runs that reach it."""
    finals = [0.40, 0.50, 0.60]
    runs = [{"policy": "random", "seed": s, "curve": [{"step": 0, "score": 0.0}, {"step": 10, "score": f}]}
            for s, f in enumerate(finals)]
    out = best_random.best_random(_file(0.05, runs), [], target_fraction=0.95)
    assert out["target"]["score"] == pytest.approx(0.475)
    assert out["target"]["best_random_runs_never_reaching"] == 1
    assert out["target"]["best_random_steps_mean"] == pytest.approx((9.5 + 0.475 / 0.6 * 10) / 2)
