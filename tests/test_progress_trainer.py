"""DivCLTrainer with batch_policy="progress" (experimental): random until measured otherwise, a window that follows
the model, probe rows never trained on, exact resume between re-calibrations, and faults that fall back to random."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_divcl.data.wordnet import wordnet_pairs
from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.experimental.follower import CALIBRATIONS_FILE
from hf_divcl.publish.card import write_model_card
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.trainer import DivCLTrainer


def pairs(n=160):
    return wordnet_pairs(kind="example", source="embedded").select(range(n)).select_columns(["anchor", "positive"])


def run(tiny_model_dir, out, resume=None, policy=None, **kw):
    """A batch_policy="progress" run; ``policy``: its batch_policy_kwargs."""
    from sentence_transformers import SentenceTransformer

    base = dict(output_dir=str(out), per_device_train_batch_size=16, learning_rate=1e-3, logging_steps=1,
                report_to=[], disable_tqdm=True, collapse_threshold=0, bank_cache_dir=str(out / "cache"),
                save_strategy="no", seed=3, batch_policy="progress", batch_policy_kwargs=policy)
    base.update(kw)
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"),
                           args=DivCLTrainingArguments(**base), train_dataset=pairs())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def losses(trainer) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}


@pytest.mark.slow
def test_default_trainer_on_a_short_run_keeps_random_batches_says_why_and_encodes_no_bank(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    trainer = run(tiny_model_dir, out, max_steps=6)  # the progress policy's defaults, no other hf_divcl argument
    assert trainer.policy.name == "progress" and trainer.policy.settings() == type(trainer.policy)().settings()
    info = json.loads((out / "divcl_window.json").read_text())
    assert info["policy"] == "progress" and info["decision"] == "random" and info["window"] is None
    assert "too short" in info["reason"] and "steps" in info["reason"]
    assert trainer.divcl_sampler.builder == "random" and trainer.bank is None  # no reference encoding paid
    assert trainer.policy.probe_dataset is None and len(trainer.train_dataset) == 160  # nothing held out
    log = read_diversity_log(out / "diversity_log.jsonl")
    assert all(r["divcl/window_active"] == 0.0 and "divcl/effective_rank" in r for r in log)
    card = write_model_card(out, model=trainer.model, base_model="tiny", dataset="pairs", train_rows=160)
    text = card.read_text()
    assert "random batches" in text and "too short" in text


@pytest.mark.slow
def test_a_following_window_recalibrates_on_schedule_and_never_trains_on_the_probe(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    trainer = run(tiny_model_dir, out, num_train_epochs=2, policy={
        "budget": 1.0, "pairs": 3, "confidence": 0.5, "replan_chunk_rows": 32})  # a re-plan in parts of 2 batches
    plan = trainer.policy.plan
    steps_per_epoch = -(-len(trainer.train_dataset) // 16)
    assert plan.steps == [0, 2, steps_per_epoch]  # start, early (10 %), epoch 1
    history = [json.loads(line) for line in (out / CALIBRATIONS_FILE).read_text().splitlines()]
    assert [h["step"] for h in history] == plan.steps
    for h in history:
        assert h["decision"] in ("window", "random") and h["cost"]["backward_passes"] >= 3 * 2
        assert (h["window"] is not None) == (h["decision"] == "window")
    probe = set(trainer.policy.probe_dataset["anchor"])
    assert len(probe) == 8 and not probe & set(trainer.train_dataset["anchor"])  # held out, never trained on
    # the epoch plan in force is still a partition of the training rows, whatever was re-planned
    rows = torch.cat(trainer.divcl_sampler.plan().batches)
    assert sorted(rows.tolist()) == list(range(len(trainer.train_dataset)))
    log = read_diversity_log(out / "diversity_log.jsonl")
    active = {r["step"]: r["divcl/window_active"] for r in log}
    for h, nxt in zip(history, [*plan.steps[1:], 10**9], strict=True):
        expected = 1.0 if h["decision"] == "window" else 0.0
        assert all(v == expected for s, v in active.items() if h["step"] < s <= nxt)
    assert json.loads((out / "divcl_window.json").read_text())["calibrations"] == 3


@pytest.mark.slow
def test_resume_between_recalibrations_restores_the_window_and_repeats_the_next_one_exactly(tiny_model_dir,
                                                                                             tmp_path):
    kw = dict(num_train_epochs=2, policy={"budget": 1.0, "pairs": 3, "confidence": 0.5, "replan_chunk_rows": 32},
              save_strategy="steps", save_steps=6)  # re-plans in parts, saved mid-way
    full = run(tiny_model_dir, tmp_path / "full", **kw)
    # checkpoint-6 sits between the early (step 2) and the epoch-1 (step 10) calibrations
    resumed = run(tiny_model_dir, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-6"), **kw)
    a, b = losses(full), losses(resumed)
    assert [s for s in b if s > 6] == [s for s in a if s > 6]
    assert all(a[s] == b[s] for s in b if s > 6)  # bit-identical on CPU
    history = [json.loads(line) for line in (tmp_path / "full" / CALIBRATIONS_FILE).read_text().splitlines()]
    resumed_history = resumed.policy.runner.history
    assert [h["step"] for h in resumed_history] == [h["step"] for h in history]
    assert [h["decision"] for h in resumed_history] == [h["decision"] for h in history]
    assert [h["window"] for h in resumed_history] == [h["window"] for h in history]


@pytest.mark.slow
def test_a_zero_learning_rate_falls_back_to_random_and_a_tiny_probe_is_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "lr0"
    trainer = run(tiny_model_dir, out, max_steps=4, learning_rate=0.0, policy={"budget": 1.0, "pairs": 2})
    h = json.loads((out / CALIBRATIONS_FILE).read_text().splitlines()[0])
    assert h["decision"] == "random" and "learning rate > 0" in h["reason"]
    assert trainer.divcl_sampler.builder == "random"
    with pytest.raises(ValueError, match="batch_policy='progress': probe_rows must be 0"):
        DivCLTrainingArguments(output_dir="x", batch_policy="progress", batch_policy_kwargs={"probe_rows": 1})


@pytest.mark.slow
def test_two_processes_share_each_calibration_and_plan_the_same_disjoint_global_batches(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(root / "tests" / "divcl_run.py"), tiny_model_dir, str(out), "--batch", "8",
                           "--epochs", "2", "--window", "progress", "--calibration-budget", "1.0",
                           "--calibration-pairs", "2"], timeout=900, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    history = [json.loads(line) for line in (out / CALIBRATIONS_FILE).read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2, 11]  # written once (rank 0): start, early, epoch 1
    ranks = [[json.loads(line) for line in (out / f"rows_rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [x["step"] for x in ranks[0]] == [x["step"] for x in ranks[1]] == list(range(1, 23))
    for epoch in (range(1, 12), range(12, 23)):  # 190 training rows (10 probe rows held out) → 11 × 16 per epoch
        rows = [r for rank in ranks for x in rank if x["step"] in epoch for r in x["rows"]]
        assert len(rows) == len(set(rows)) == 176  # both ranks followed the same (re-)plans: disjoint halves
