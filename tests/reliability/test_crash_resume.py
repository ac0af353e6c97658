"""Crash and resume: SIGKILL mid-step, after a step, mid-checkpoint-write, mid-bank-refresh and at random times, a disk
that fills up mid-checkpoint, then resume. The resumed run starts from the newest complete checkpoint (a
half-written one is set aside, never loaded), no row of the epoch is skipped or repeated, the diversity log has no gap
or duplicate step, and on CPU every loss after the resume equals the uninterrupted run's bit for bit. A rank dying in a
2-process run ends the launch with an error naming the dead rank (no hang), and the run resumes from its last
complete checkpoint.

Every run is tests/divcl_run.py (tiny BERT, 200 WordNet pairs, B = 16, checkpoints every 5 steps) in a subprocess.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.training.checkpoints import checkpoint_problem

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "tests" / "divcl_run.py")
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
SIGKILL = -9

pytestmark = pytest.mark.slow


def run(model: str, out: Path, *flags: str, launch: list[str] | None = None, timeout: int = 300):
    cmd = [*(launch or [sys.executable]), SCRIPT, model, str(out), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def records(out: Path, rank: int = 0) -> list[dict]:
    path = out / f"rows_rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def take_attempt(out: Path, k: int) -> list[dict]:
    """Move this attempt's per-step records aside (the next attempt writes a fresh file)."""
    rec = records(out)
    (out / "rows_rank0.jsonl").rename(out / f"attempt{k}_rank0.jsonl")
    return rec


def stitch(attempts: list[list[dict]]) -> list[dict]:
    """The steps that count: each attempt's records up to where the next attempt resumed."""
    kept = []
    for cur, nxt in zip(attempts, [*attempts[1:], None], strict=True):
        resumed_at = nxt[0]["step"] if nxt else float("inf")
        kept += [r for r in cur if r["step"] < resumed_at]
    return kept


def assert_same_as_reference(kept: list[dict], ref: list[dict], out: Path, ref_out: Path, epochs: int = 1):
    assert [r["step"] for r in kept] == [r["step"] for r in ref]  # every step once, none skipped
    assert [r["rows"] for r in kept] == [r["rows"] for r in ref]  # the same plan
    assert [r["loss"] for r in kept] == [r["loss"] for r in ref]  # bit-identical losses after the resume
    per_epoch = len(ref) // epochs
    for e in range(epochs):  # each of the 200 rows exactly once per epoch
        counts = Counter(x for r in kept[e * per_epoch:(e + 1) * per_epoch] for x in r["rows"])
        assert sorted(counts) == list(range(200)) and set(counts.values()) == {1}
    log = [r["step"] for r in read_diversity_log(out / "diversity_log.jsonl")]
    assert log == sorted(set(log)) == [r["step"] for r in read_diversity_log(ref_out / "diversity_log.jsonl")]
    mine, theirs = load_file(out / "final" / "model.safetensors"), load_file(ref_out / "final" / "model.safetensors")
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """One uninterrupted run (13 steps)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run(tiny_model_dir, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, records(out)


FAULTS = {
    "sigkill_after_step_7": ["--kill-at", "7"],
    "sigkill_mid_step_8": ["--kill-mid-step", "8"],
    "sigkill_mid_checkpoint_10_after_divcl_state": ["--kill-mid-save", "10:divcl"],
    "sigkill_mid_checkpoint_10_in_optimizer_state": ["--kill-mid-save", "10:optimizer"],
    "sigkill_mid_checkpoint_10_torn_trainer_state": ["--kill-mid-save", "10:state"],
}


def test_a_disk_that_fills_up_mid_checkpoint_stops_the_run_clearly_and_the_last_complete_one_resumes(
        tiny_model_dir, tmp_path, reference):
    """From checkpoint-10 on the kernel refuses every file write over 4 KiB (as a full disk does): the run stops with
    one error that names the failed checkpoint and the one to resume from; the half-written folder is never loaded,
    and the resumed run equals the uninterrupted one bit for bit."""
    ref_out, ref = reference
    out = tmp_path / "run"
    first = run(tiny_model_dir, out, "--disk-full-at-save", "10")
    assert first.returncode not in (0, SIGKILL), first.stderr[-3000:]
    last = first.stderr.strip().splitlines()[-1]
    assert "CheckpointWriteError" in last and "Writing checkpoint-10 failed" in last, last
    assert "checkpoint-5 is the newest complete checkpoint" in last and "resume_from_checkpoint" in last
    assert checkpoint_problem(out / "checkpoint-10") is not None  # half-written, and recognised as such
    assert not list((out / "checkpoint-10").rglob(".*.tmp")), "no half-written temporary is left behind"
    a1 = take_attempt(out, 1)
    second = run(tiny_model_dir, out, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    a2 = records(out)
    assert a2[0]["step"] == 6
    assert_same_as_reference(stitch([a1, a2]), ref, out, ref_out)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_killed_run_resumes_from_last_complete_checkpoint_losing_nothing(fault, tiny_model_dir, tmp_path, reference):
    ref_out, ref = reference
    out = tmp_path / "run"
    first = run(tiny_model_dir, out, *FAULTS[fault])
    assert first.returncode == SIGKILL, first.stderr[-3000:]
    mid_save = "mid_checkpoint" in fault
    if mid_save:
        assert checkpoint_problem(out / "checkpoint-10") is not None  # torn on disk
    a1 = take_attempt(out, 1)
    second = run(tiny_model_dir, out, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    a2 = records(out)
    assert a2[0]["step"] == 6  # resumed from checkpoint-5, the newest complete one
    assert "Resuming from" in second.stderr if mid_save else "Skipping" not in second.stderr
    if mid_save:  # the half-written folder is kept aside and a complete checkpoint-10 is written anew
        assert (out / "checkpoint-10.incomplete").is_dir() and checkpoint_problem(out / "checkpoint-10") is None
    assert_same_as_reference(stitch([a1, a2]), ref, out, ref_out)


def test_killed_mid_bank_refresh_resumes_and_refreshes_again(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("refresh")
    flags = ["--epochs", "2", "--refresh-epochs", "1"]
    ref_out = base / "reference"
    done = run(tiny_model_dir, ref_out, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = records(ref_out)
    assert len(ref) == 26
    out = base / "run"
    first = run(tiny_model_dir, out, *flags, "--kill-mid-refresh")
    assert first.returncode == SIGKILL, first.stderr[-3000:]
    a1 = take_attempt(out, 1)
    assert a1[-1]["step"] == 13  # died at the end of epoch 1, inside the refresh
    second = run(tiny_model_dir, out, *flags, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    a2 = records(out)
    assert a2[0]["step"] == 11
    assert_same_as_reference(stitch([a1, a2]), ref, out, ref_out, epochs=2)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_random_times_then_resume_loses_nothing(seed, tiny_model_dir, tmp_path, reference):
    """Two kills at random moments of training (checkpoints every 2 steps, so some land mid-save), then a run to
    the end: the stitched run equals the uninterrupted one."""
    ref_out, ref = reference
    rng = random.Random(seed)
    out = tmp_path / "run"
    attempts, outcomes = [], []
    for k in range(3):
        cmd = [sys.executable, SCRIPT, tiny_model_dir, str(out), "--save-steps", "2", "--resume-if-any"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        rows = out / "rows_rank0.jsonl"
        deadline = time.monotonic() + 240
        while proc.poll() is None and not (rows.exists() and rows.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.02)
        if k < 2 and proc.poll() is None:
            time.sleep(rng.uniform(0.0, 2.5))
            proc.kill()
        _, err = proc.communicate(timeout=240)
        outcomes.append(proc.returncode)
        attempts.append(take_attempt(out, k) if rows.exists() else [])
        if proc.returncode == 0:
            break
        assert proc.returncode == SIGKILL, err[-3000:]
    assert outcomes[-1] == 0, outcomes
    attempts = [a for a in attempts if a]
    for incomplete in out.glob("checkpoint-*.incomplete*"):
        assert checkpoint_problem(incomplete) is not None  # only torn folders were set aside
    assert_same_as_reference(stitch(attempts), ref, out, ref_out)


def test_rank_death_ends_a_two_process_run_with_a_clear_error_then_it_resumes(tiny_model_dir, tmp_path):
    ref_out = tmp_path / "reference"
    done = run(tiny_model_dir, ref_out, "--batch", "8", "--save-steps", "2", launch=LAUNCH)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "run"
    t0 = time.monotonic()
    died = run(tiny_model_dir, out, "--batch", "8", "--save-steps", "2", "--kill-rank", "1", "--kill-at", "5",
               launch=LAUNCH, timeout=600)
    elapsed = time.monotonic() - t0
    assert died.returncode != 0
    text = died.stdout + died.stderr
    assert "rank      : 1" in text and "Signal 9 (SIGKILL)" in text  # the launcher names the rank that died
    assert elapsed < 300  # rank 0 did not wait for the dead rank forever (the test's own timeout is 600 s)
    resumed_from = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")
                       if p.name.split("-")[1].isdigit() and checkpoint_problem(p) is None)
    a1 = [take_attempt(out, 1), records(out, 1)]
    (out / "rows_rank1.jsonl").unlink()
    again = run(tiny_model_dir, out, "--batch", "8", "--save-steps", "2", "--resume", launch=LAUNCH)
    assert again.returncode == 0, again.stderr[-3000:]
    a2 = [records(out, 0), records(out, 1)]
    assert a2[0][0]["step"] == resumed_from + 1
    refs = [records(ref_out, 0), records(ref_out, 1)]
    for rank in (0, 1):
        kept = stitch([a1[rank], a2[rank]])
        assert [r["rows"] for r in kept] == [r["rows"] for r in refs[rank]]
        assert [r["loss"] for r in kept] == [r["loss"] for r in refs[rank]]
    used = Counter(x for rank in (0, 1) for r in stitch([a1[rank], a2[rank]]) for x in r["rows"])
    assert len(used) == 192 and set(used.values()) == {1}  # 12 global batches of 16, drop_last under DDP
