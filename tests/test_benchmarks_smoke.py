"""Every benchmark script runs in its --smoke configuration, so none can rot (timings are not checked here)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *args], check=True, env=env,
                   cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_step_time_smoke(tmp_path):
    out = tmp_path / "s.json"
    run("step_time.py", "--output", str(out))
    assert json.loads(out.read_text())["summary"]["ratio_median_step"] > 0


@pytest.mark.slow
def test_whitening_smoke(tmp_path):
    out = tmp_path / "w.json"
    run("whitening.py", "--output", str(out))
    assert len(json.loads(out.read_text())["runs"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("task", ["text", "vision"])
def test_time_to_quality_smoke(tmp_path, task):
    out = tmp_path / "t.json"
    run("time_to_quality.py", "--task", task, "--output", str(out))
    res = json.loads(out.read_text())
    assert set(res["summary"]["policies"]) == {"random", "progress"} and out.with_suffix(".png").is_file()


@pytest.mark.slow
def test_time_to_quality_selection_policies_smoke(tmp_path):
    out = tmp_path / "t.json"
    run("time_to_quality.py", "--task", "clip", "--policies", "random", "tight_mask", "learnability", "random_dup",
        "--output", str(out))
    res = json.loads(out.read_text())
    assert set(res["summary"]["policies"]) == {"random", "tight_mask", "learnability", "random_dup"}
    learn = next(r for r in res["runs"] if r["policy"] == "learnability")
    assert learn["reference_seconds"] > 0 and learn["selection_seconds"] > 0


@pytest.mark.slow
def test_window_location_smoke(tmp_path):
    out = tmp_path / "l.json"
    run("window_location.py", "--output", str(out))
    assert len(json.loads(out.read_text())["results"][0]["levels"]) == 2


@pytest.mark.slow
def test_plan_epoch_replan_smoke(tmp_path):
    """--replan --smoke: a window chosen after 4 of 125 global batches (N = 2000, B = 16), the rest re-planned in
    parts of at most 256 rows and in one go: both hand out every row once and report when each part was ready."""
    out = tmp_path / "r.json"
    run("plan_epoch.py", "--replan", "--output", str(out))
    res = json.loads(out.read_text())
    assert res["benchmark"] == "plan_replan" and [r["chunk_rows"] for r in res["rows"]] == [256, 0]
    for r in res["rows"]:
        assert "error" not in r, r.get("error")
        assert r["every_row_once"] and r["cut"] == 4
        assert sum(r["part_batches"]) == 125 - 4 and len(r["part_ready_seconds"]) == len(r["part_batches"])
        assert 0 < r["first_window_batch_seconds"] <= r["epoch_done_seconds"]
        assert r["stall_seconds"]["0.05"] >= r["stall_seconds"]["0.5"] >= 0
    parts, one_go = res["rows"]
    assert len(parts["part_batches"]) > 2 and one_go["part_batches"] == [121]


@pytest.mark.slow
def test_plan_epoch_smoke(tmp_path):
    """--smoke plans N = 2000 rows (d = 32, B = 64) with every builder, the window placed below random batches'
    diversity (random mean − 2σ … − 0.5σ): each row is complete and finite, and the builders that aim at the window
    land in it more often than random batches do."""
    out = tmp_path / "p.json"
    run("plan_epoch.py", "--output", str(out))
    res = json.loads(out.read_text())
    assert (res["benchmark"], res["batch_size"], res["dim"]) == ("plan_epoch", 64, 32)
    assert len(res["load_average_at_start"]) == len(res["load_average_at_end"]) == 3
    rows = {r["builder_name"]: r for r in res["rows"]}
    assert [r["builder_name"] for r in res["rows"]] == ["random", "greedy", "pool", "cluster", "no_duplicates"]
    n, b, bank_mb = 2000, 64, 2000 * 32 * 2 / 2**20  # float16 bank
    for name, row in rows.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["n"] == n and row["n_batches"] == -(-n // b), name  # the partial last batch is kept
        assert 0 < row["seconds"] < 300 and row["bank_mb"] == pytest.approx(bank_mb), name
        assert math.isfinite(row["extra_mb"]) and row["extra_mb"] >= 0 and row["peak_rss_mb"] >= row["rss_before_mb"]
        assert row["extra_over_bank"] == pytest.approx(row["extra_mb"] / bank_mb), name
        assert row["memory_method"].startswith(("VmHWM", "ru_maxrss")), name
        low, high = row["window"]
        assert math.isfinite(low) and low < high and row["window"] == rows["random"]["window"], name
    assert rows["no_duplicates"]["in_window_fraction"] is None  # sentence-transformers' sampler sees no window
    planned = {name: row for name, row in rows.items() if name != "no_duplicates"}
    for name, row in planned.items():
        assert row["builder"] == name and row["metric"] == "effective_rank", name
        assert 0 < row["metric_mean"] <= 32 and math.isfinite(row["metric_std"]) and row["metric_std"] >= 0, name
        assert 0 <= row["in_window_fraction"] <= 1, name
        assert (row["achievable"] is None) == (name == "random"), name
    mean, std = planned["random"]["metric_mean"], planned["random"]["metric_std"]
    assert rows["random"]["window"] == pytest.approx([mean - 2 * std, mean - 0.5 * std], rel=1e-4)
    for name in ("greedy", "pool", "cluster"):
        low, high = planned[name]["achievable"]
        assert low <= rows[name]["window"][0] and rows[name]["window"][1] <= high, name  # the window is reachable
        assert planned[name]["in_window_fraction"] > planned["random"]["in_window_fraction"], name


@pytest.mark.slow
def test_progress_calibration_smoke(tmp_path):
    out = tmp_path / "c.json"
    run("progress_calibration.py", "--output", str(out))
    row = json.loads(out.read_text())["results"][0]
    assert row["first_order_decision"] in ("random", *row["levels"]) and -1 <= row["pearson_gain"] <= 1


@pytest.mark.slow
def test_whole_run_smoke(tmp_path):
    out = tmp_path / "w.json"
    run("whole_run.py", "--output", str(out))
    res = json.loads(out.read_text())
    assert [r["kind"] for r in res["runs"]] == ["plain", "divcl"] and res["ratio_divcl_over_plain"] > 0


@pytest.mark.slow
def test_selection_cost_smoke(tmp_path):
    out = tmp_path / "c.json"
    run("selection_cost.py", "--output", str(out))
    row = json.loads(out.read_text())["rows"][0]
    assert row["batch_size"] == 8
    assert set(row["fraction_of_step"]) == {"step_mask", "select_hard", "select_learn", "select_window"}


@pytest.mark.slow
def test_preflight_stability_smoke(tmp_path):
    out = tmp_path / "p.json"
    run("preflight_stability.py", "--output", str(out))
    res = json.loads(out.read_text())
    assert set(res["sets"]) == {"animals", "general"}
    for s in res["sets"].values():
        assert sum(s["decisions"].values()) == 3 and 0 < s["rank_over_reference"][0] <= s["rank_over_reference"][1]


@pytest.mark.slow
def test_calibrator_power_smoke(tmp_path):
    out = tmp_path / "p.json"
    run("calibrator_power.py", "--output", str(out))
    res = json.loads(out.read_text())
    assert set(res["truth"]) == set(res["planted"]) == set(res["null"]) == {"0.05", "0.5"}
    for tau in ("0.05", "0.5"):
        runs = res["planted"][tau]["runs"] + res["null"][tau]["runs"]
        assert all(r["status"] in ("window", "random") and r["blocks"] >= 1 for r in runs)
        assert 0 <= res["null"][tau]["rate"] <= 1


@pytest.mark.slow
def test_probe_choice_smoke(tmp_path):
    out = tmp_path / "c.json"
    run("probe_choice.py", "--output", str(out))
    res = json.loads(out.read_text())
    assert len(res["rows"]) == 2 * 3 and set(res["spearman_all"]) == {"infonce_random", "retrieval_train_tau",
                                                                       "retrieval_sharp"}


@pytest.mark.slow
def test_explore_cost_smoke(tmp_path):
    out = tmp_path / "c.json"
    run("explore_cost.py", "--output", str(out))
    summary = json.loads(out.read_text())["summary"]
    kinds = summary["median"]
    assert kinds["refreshes"] >= 1 and kinds["scored_steps"] >= 6 and kinds["plain_step_s"] > 0
    assert summary["score_model"] > 0 and kinds["score_batch_eq"] > 0 and kinds["refresh_batch_eq"] > 0


@pytest.mark.slow
def test_mined_negatives_smoke(tmp_path):
    out = tmp_path / "m.json"
    run("mined_negatives.py", "--output", str(out))
    res = json.loads(out.read_text())
    assert {r["arm"] for r in res["runs"]} == {"st_mnrl", "divcl"}
    assert res["columns"] == ["anchor", "positive", "negative_1"]
    assert "divcl - st_mnrl" in res["summary"]["paired"]


@pytest.mark.slow
def test_multi_source_smoke(tmp_path):
    if not Path("/usr/share/wordnet/data.noun").is_file():
        pytest.skip("Debian wordnet-base not installed")
    out = tmp_path / "ms.json"
    run("multi_source.py", "--output", str(out))
    res = json.loads(out.read_text())
    assert {r["arm"] for r in res["runs"]} == {"mixed", "single", "mix0.5"}
    assert all("ndcg@10/pooled" in r["final"] for r in res["runs"])


@pytest.mark.slow
def test_vision_simclr_smoke_and_a_merge_of_runs_made_apart(tmp_path):
    """Two processes (as on one GPU, seeds side by side), one with a window that follows the encoder; the merged
    file is summarised over both, and a run present twice is refused."""
    first, second, merged = tmp_path / "v0.json", tmp_path / "v1.json", tmp_path / "v.json"
    run("vision_simclr.py", "--policies", "random", "pool_follow", "--seeds", "0", "--output", str(first))
    run("vision_simclr.py", "--seeds", "1", "--output", str(second))
    res = json.loads(first.read_text())
    assert {"raw_knn", "centred_knn", "raw_probe"} <= set(res["baselines"])
    follow = next(r for r in res["runs"] if r["arm"] == "pool_follow")
    assert follow["policy"] == "auto" and follow["policy_kwargs"]["recalibrate_every_epochs"] == 1
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vision_simclr.py"), "--merge", str(first),
                    str(second), "--output", str(merged)], check=True, cwd=ROOT, capture_output=True, text=True)
    out = json.loads(merged.read_text())
    assert sorted((r["arm"], r["seed"]) for r in out["runs"]) == [("pool_follow", 0), ("random", 0), ("random", 1)]
    assert out["summary"]["arms"]["random@tau=0.2"]["seeds"] == [0, 1]
    twice = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vision_simclr.py"), "--merge", str(first),
                            str(first), "--output", str(tmp_path / "bad.json")], cwd=ROOT, capture_output=True,
                           text=True)
    assert twice.returncode != 0 and "share (arm, τ, seed) runs" in twice.stderr


@pytest.mark.slow
def test_the_gpu_script_runs_every_stage(tmp_path):
    """benchmarks/gpu.sh, the one prepared device-machine command, with tiny CPU runs (SMOKE=1) and 2 processes side
    by side: timing → run length, τ of random batches → best τ, the paired grid; each stage's merged file lands."""
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PY": sys.executable, "SMOKE": "1", "SEEDS": "0 1",
           "OUT": str(out)}
    log = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=900).stdout
    assert re.search(r"^best τ of random batches: 0\.[125]$", log, re.M) and re.search(r"^L = \d+ steps$", log, re.M)
    taus = json.loads((out / "vision_simclr_tau_gpu.json").read_text())
    assert sorted(r["temperature"] for r in taus["runs"]) == [0.1, 0.2, 0.5]
    grid = json.loads((out / "vision_simclr_grid_gpu.json").read_text())
    assert sorted((r["arm"], r["seed"]) for r in grid["runs"]) == [
        (arm, s) for arm in ("greedy_follow", "pool_follow", "random") for s in (0, 1)]
    assert (out / "gpu.log").is_file() and (out / "gpu_timing.json").is_file()


@pytest.mark.slow
def test_vision_ceiling_smoke(tmp_path):
    out = tmp_path / "c.json"
    run("vision_ceiling.py", "--output", str(out))
    res = json.loads(out.read_text())
    assert res["bar"] == pytest.approx(res["baselines"]["centred_knn"] + 0.03)
    assert [c["step"] for c in res["curve"]] == [0, 3, 6] and 0 <= res["final_knn"] <= 1
