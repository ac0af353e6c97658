"""A NaN/Inf loss is caught at the step it happens: with nonfinite_action='stop' the run ends naming the step,
the batch's rows and the row whose embedding was NaN, earlier checkpoints intact; with 'skip' the batch gives no
gradient, the run finishes with finite weights and every skip is on record."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.training.checkpoints import checkpoint_problem

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(model: str, out: Path, *flags: str):
    return subprocess.run([sys.executable, str(ROOT / "tests" / "divcl_run.py"), model, str(out), *flags],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_nan_embedding_stops_the_run_naming_the_step_and_rows(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    step = 7
    done = run(tiny_model_dir, out, "--nan-at-step", str(step), "--save-steps", "2")
    assert done.returncode == 1
    trained = [json.loads(line)["step"] for line in (out / "rows_rank0.jsonl").read_text().splitlines()]
    assert trained == list(range(1, step))
    record = json.loads((out / "divcl_nonfinite.jsonl").read_text())
    bad = record["row_ids"][0]  # the row whose embedding was made NaN
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"hf_divcl.training.guards.NonFiniteLossError: Non-finite loss (nan) at step {step}; ")
    assert f"rows with NaN/Inf embeddings: [{bad}]" in last and "earlier checkpoints and logs are intact" in last
    assert f"the batch's rows: {record['row_ids']}" in last
    assert record["step"] == step and len(record["row_ids"]) == 16
    assert record["nonfinite_embedding_rows"] == [bad] and record["action"] == "stop"
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert saved == list(range(2, step, 2))
    assert all(checkpoint_problem(out / f"checkpoint-{s}") is None for s in saved)


def test_nan_batches_are_skipped_and_counted(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    done = run(tiny_model_dir, out, "--nan-row", "5", "--nonfinite-action", "skip", "--epochs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "divcl_nonfinite.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["action"] == "skip" and r["nonfinite_embedding_rows"] == [5] for r in records)
    assert records[0]["step"] <= 13 < records[1]["step"]  # row 5 once per epoch of 13 steps
    assert "Skipped: the batch contributes a zero gradient" in done.stderr
    weights = load_file(out / "final" / "model.safetensors")
    assert all(bool(w.isfinite().all()) for w in weights.values())
    log = read_diversity_log(out / "diversity_log.jsonl")
    assert log[-1]["divcl/nonfinite_skipped"] == 2.0
    assert all(math.isfinite(r["loss"]) for r in log)
