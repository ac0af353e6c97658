"""Every benchmark script runs in its --smoke configuration, so none can rot (timings are not checked here)."""

import json
import os
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
    run("time_to_quality.py", "--task", "clip", "--policies", "random", "tight_mask", "learnability", "--output",
        str(out))
    res = json.loads(out.read_text())
    assert set(res["summary"]["policies"]) == {"random", "tight_mask", "learnability"}
    learn = next(r for r in res["runs"] if r["policy"] == "learnability")
    assert learn["reference_seconds"] > 0 and learn["selection_seconds"] > 0


@pytest.mark.slow
def test_window_location_smoke(tmp_path):
    out = tmp_path / "l.json"
    run("window_location.py", "--output", str(out))
    assert len(json.loads(out.read_text())["results"][0]["levels"]) == 2


@pytest.mark.slow
def test_plan_epoch_smoke(tmp_path):
    out = tmp_path / "p.json"
    run("plan_epoch.py", "--sizes", "10000", "--output", str(out))
    assert json.loads(out.read_text())


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
