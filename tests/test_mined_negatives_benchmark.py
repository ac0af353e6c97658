"""benchmarks/mined_negatives.py --merge: a τ sweep of the trainers, each compared at its own best τ."""

import json

import pytest


def _run(arm, seed, final, simlex=0.4, tau=None):
    run = {"arm": arm, "seed": seed, "total_seconds": 1.0, "duplicate_negatives": None,
           "curve": [{"step": 0, "seconds": 0.0, "score": 0.30},
                     {"step": 60, "seconds": 1.0, "score": final, "simlex999_spearman": simlex,
                      "wordsim353_spearman": 0.6}]}
    if tau is not None:
        run["temperature"] = tau
    return run


def _file(path, tau, runs):
    config = {"arms": sorted({r["arm"] for r in runs}), "seeds": sorted({r["seed"] for r in runs}), "steps": 60,
              "temperature": tau, "output": str(path), "resume": False, "threads": 1}
    path.write_text(json.dumps({"benchmark": "mined_negatives", "config": config, "mining_seconds": 1.0,
                                "train_rows": 100, "columns": ["anchor", "positive", "negative_1"],
                                "heldout_rows": 20, "runs": runs, "summary": {}, "machine": {}}))
    return str(path)


def test_merge_pairs_each_trainer_at_its_own_best_tau(load_benchmark, tmp_path):
    """st_mnrl is best at τ = 0.05 (bracketed by 0.03 and 0.1), divcl at 0.1 (the sweep's edge): divcl − st_mnrl
    pairs divcl@0.1 with st_mnrl@0.05 by seed, guards included; the per-τ summaries stay in the file."""
    bench = load_benchmark("mined_negatives")
    old = _file(tmp_path / "old.json", 0.05, [_run("st_mnrl", s, 0.40 + s / 100) for s in range(4)]
                + [_run("divcl", s, 0.39) for s in range(4)])  # runs without their τ, as the first grid wrote them
    low = _file(tmp_path / "low.json", 0.03,
                [_run(a, s, 0.35, tau=0.03) for a in ("st_mnrl", "divcl") for s in range(2)])
    high = _file(tmp_path / "high.json", 0.1, [_run("st_mnrl", s, 0.38, tau=0.1) for s in range(2)]
                 + [_run("divcl", s, 0.42 + s / 50, simlex=0.5, tau=0.1) for s in range(2)])
    out = tmp_path / "all.json"
    bench.merge([old, low, high], out)
    result = json.loads(out.read_text())
    best = result["best_tau"]
    assert best["arms"]["st_mnrl"]["tau"] == 0.05 and not best["arms"]["st_mnrl"]["at_edge"]
    assert best["arms"]["st_mnrl"]["common_seeds"] == [0, 1]
    assert best["arms"]["st_mnrl"]["final_mean"] == pytest.approx(0.415)  # all 4 seeds at its best τ
    assert best["arms"]["divcl"]["tau"] == 0.1 and best["arms"]["divcl"]["at_edge"]
    pair = best["paired"]["divcl - st_mnrl"]
    assert pair["taus"] == [0.1, 0.05] and pair["seeds"] == [0, 1]
    assert pair["final"]["mean"] == pytest.approx(((0.42 - 0.40) + (0.44 - 0.41)) / 2)
    assert pair["simlex999_spearman"]["mean"] == pytest.approx(0.1)
    assert sorted(result["summary_by_tau"]) == ["0.03", "0.05", "0.1"]
    assert result["config"]["temperature"] == [0.03, 0.05, 0.1]
    with pytest.raises(SystemExit, match="share"):
        bench.merge([old, old], tmp_path / "twice.json")
