"""DivCLTrainer with a fixed window: a gradient-window (batch_policy="auto") run, logging, other losses, bad input,
collapse alarm, kill + resume, 2 processes.

These runs set batch_policy="auto" (the gradient-magnitude window, calibrated once at the start) so that a window is
in force from the first step; the default run (batch_policy="random") is tested in
test_random_builder_pays_no_reference_encoding, batch_policy="progress" in tests/test_progress_trainer.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_divcl.data.validation import DatasetError
from hf_divcl.data.wordnet import wordnet_pairs
from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.trainer import DivCLTrainer

ROOT = Path(__file__).resolve().parents[1]

LOGGED = ["divcl/effective_rank", "divcl/participation_ratio", "divcl/lambda_max", "divcl/mean_sq_cosine",
          "divcl/in_window_fraction", "divcl/window_low", "divcl/window_high", "divcl/grad_norm_mean",
          "divcl/grad_norm_p10", "divcl/grad_norm_p50", "divcl/grad_norm_p90", "divcl/band_lower_mean",
          "divcl/band_upper_mean", "divcl/spectral_lower_mean", "divcl/spectral_upper_mean",
          "divcl/band_inside_fraction", "divcl/step_seconds", "divcl/selection_seconds_total",
          "divcl/bank_staleness_mean", "divcl/bank_staleness_max", "divcl/global_batch_size", "loss"]


def pairs(n=160):
    return wordnet_pairs(kind="example", source="embedded").select(range(n)).select_columns(["anchor", "positive"])


def fixed_set_loss(model, ds, n=128) -> float:
    """InfoNCE (τ = 0.05) of the first n pairs as one batch: comparable before and after training."""
    from hf_divcl.losses.maths import contrastive_loss

    model.eval()
    with torch.no_grad():
        a = model.encode(list(ds["anchor"])[:n], convert_to_tensor=True)
        p = model.encode(list(ds["positive"])[:n], convert_to_tensor=True)
    model.train()
    return contrastive_loss(a, p, 0.05).loss.item()


def make_args(tmp_path, **kw):
    """Small-run arguments with batch_policy="auto" (not the default "random"): the batches aim at a window at
    once."""
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=1e-3,
                batch_policy="auto", logging_steps=2, report_to=[], disable_tqdm=True, collapse_threshold=0,
                bank_cache_dir=str(tmp_path / "cache"), save_strategy="no")
    base.update(kw)
    return DivCLTrainingArguments(**base)


def test_gradient_window_trainer_trains_with_window_batches_and_logs_everything(tiny_model_dir, tmp_path):
    """A batch_policy="auto" run (gradient-calibrated window, Greedy builder): it learns, logs every diversity and band
    key, plans its batches in the window and saves a model that reloads identically."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    args = DivCLTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=12, logging_steps=3,
                                  learning_rate=1e-3, report_to=[], disable_tqdm=True, batch_policy="auto",
                                  bank_cache_dir=str(tmp_path / "cache"))
    data = pairs()
    before = fixed_set_loss(model, data)
    trainer = DivCLTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert fixed_set_loss(model, data) < before
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert [r["step"] for r in log] == [3, 6, 9, 12]
    for record in log:
        missing = [k for k in LOGGED if k not in record]
        assert not missing, missing
        assert record["divcl/band_inside_fraction"] == 1.0  # exact norms always inside their bands
        assert record["divcl/grad_norm_p10"] <= record["divcl/grad_norm_p50"] <= record["divcl/grad_norm_p90"]
    assert trainer.divcl_sampler is not None and trainer.divcl_sampler.builder == "greedy"
    assert json.loads((tmp_path / "out" / "divcl_window.json").read_text())["window"]["metric"] == "effective_rank"
    assert trainer.bank.source == "training" and (trainer.bank.last_update_step > 0).any()
    assert trainer.bank.num_views == 2  # anchors plan the batches; positives give calibration its real pairs
    trainer.save_model(str(tmp_path / "final"))
    reloaded = SentenceTransformer(str(tmp_path / "final"), device="cpu")
    texts = ["a cold morning", "the gloss of a word"]
    model.eval()
    assert torch.allclose(model.encode(texts, convert_to_tensor=True), reloaded.encode(texts, convert_to_tensor=True),
                          atol=1e-6)


@pytest.mark.parametrize("loss_name", ["mnrl", "cached_mnrl"])
def test_sentence_transformers_losses_are_logged_and_feed_the_bank(tiny_model_dir, tmp_path, loss_name):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    loss = MultipleNegativesRankingLoss(model) if loss_name == "mnrl" else \
        CachedMultipleNegativesRankingLoss(model, mini_batch_size=4)
    trainer = DivCLTrainer(model=model, args=make_args(tmp_path, max_steps=4), train_dataset=pairs(), loss=loss)
    trainer.train()
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert [r["step"] for r in log] == [2, 4]
    assert log[-1]["divcl/temperature"] == pytest.approx(0.05)  # 1 / scale
    assert log[-1]["divcl/global_batch_size"] == 16
    assert (trainer.bank.last_update_step > 0).sum() == 64  # 4 steps × 16 rows written back


def test_hard_negative_column_and_symmetric_loss_train(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    ds = pairs(96)
    ds = ds.add_column("negative", list(ds["positive"])[1:] + list(ds["positive"])[:1])
    model = SentenceTransformer(tiny_model_dir, device="cpu")
    args = make_args(tmp_path, max_steps=2, loss_kwargs={"symmetric": True}, batch_policy_kwargs={"builder": "pool"})
    trainer = DivCLTrainer(model=model, args=args, train_dataset=ds)
    assert trainer.loss.symmetric and trainer.policy.builder == "pool"
    trainer.train()
    assert trainer.divcl_sampler.builder == "pool"
    assert read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")[-1]["step"] == 2


def _rows(n=20, **columns):
    data = {"anchor": [f"a{i}" for i in range(n)], "positive": [f"p{i}" for i in range(n)]}
    for name, (row, value) in columns.items():
        data.setdefault(name, [f"{name}{i}" for i in range(n)])[row] = value
    return data


@pytest.mark.parametrize("data, message", [
    (_rows(positive=(7, None)), r"Row 7, column 'positive' is missing"),
    (_rows(anchor=(3, "  ")), r"Row 3, column 'anchor' is empty"),
    ({"anchor": [f"a{i}" for i in range(20)], "positive": list(range(20))}, r"Column 'positive' holds other \(int64\)"),
    (_rows(n=2), r"has 2 rows but one global batch needs 16"),
    ({"return_loss": ["a"] * 20, "positive": ["x"] * 20}, r"reserved"),
])
def test_bad_data_is_named_before_training(tiny_model_dir, tmp_path, data, message):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    with pytest.raises(DatasetError, match=message):
        DivCLTrainer(model=model, args=make_args(tmp_path, max_steps=1), train_dataset=Dataset.from_dict(data))


def test_single_text_column_with_infonce_is_refused_before_training(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(40)]})
    with pytest.raises(DatasetError, match=r"needs 2 input columns .*'text'"):
        DivCLTrainer(model=model, args=make_args(tmp_path, max_steps=1), train_dataset=ds)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_policy_kwargs must be a JSON object"):
        DivCLTrainingArguments(output_dir="x", batch_policy="window", batch_policy_kwargs='{"window": "12:20", m: 3')
    with pytest.raises(ValueError, match="builder_kwargs must be a dict"):
        DivCLTrainingArguments(output_dir="x", batch_policy="window",
                               batch_policy_kwargs={"window": "12:20", "builder_kwargs": "{m: 3"})
    with pytest.raises(ValueError, match="Bad window"):
        DivCLTrainingArguments(output_dir="x", batch_policy="window", batch_policy_kwargs={"window": "wide"})
    with pytest.raises(ValueError, match="bank_source"):
        DivCLTrainingArguments(output_dir="x", bank_source="disk")


def test_collapse_alarm_stops_training_cleanly(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    # the randomly initialised tiny model maps every text near one direction: effective rank ≈ 1.2-1.4
    model = SentenceTransformer(tiny_model_dir, device="cpu")
    args = make_args(tmp_path, max_steps=30, logging_steps=1, collapse_threshold=1.9, collapse_patience=3,
                     collapse_action="stop")
    trainer = DivCLTrainer(model=model, args=args, train_dataset=pairs())
    trainer.train()
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert trainer.state.global_step == 3 and log[-1]["divcl/collapse_alarm"] == 1.0
    assert all(r["divcl/effective_rank"] < 1.9 for r in log)


def _run(args, env_extra=None, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    done = subprocess.run(args, env=env, timeout=600, capture_output=True, text=True)
    assert not check or done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def _steps(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_every_row_is_used_exactly_once(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    script = str(ROOT / "tests" / "divcl_run.py")
    first = _run([sys.executable, script, tiny_model_dir, str(out), "--kill-at", "7"], check=False)
    assert first.returncode == -9, first.stderr[-2000:]  # SIGKILL
    assert (out / "checkpoint-5" / "divcl_state" / "plan_rows.npy").is_file()
    assert not (out / "checkpoint-7").exists()
    before = [r for r in _steps(out / "rows_rank0.jsonl") if r["step"] <= 5]
    (out / "rows_rank0.jsonl").unlink()
    _run([sys.executable, script, tiny_model_dir, str(out), "--resume"])
    after = _steps(out / "rows_rank0.jsonl")
    assert [r["step"] for r in after] == list(range(6, 14))  # 200 rows / 16 → 13 steps
    counts = Counter(x for r in before + after for x in r["rows"])
    assert sorted(counts) == list(range(200)) and set(counts.values()) == {1}
    log = read_diversity_log(out / "diversity_log.jsonl")
    steps = [r["step"] for r in log]
    # no gap, no duplicate after the resume; the last step (13) is always logged
    assert steps == sorted(set(steps)) == [2, 4, 6, 8, 10, 12, 13]


@pytest.mark.slow
def test_two_accelerate_processes_train_on_disjoint_rows_of_global_batches(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          str(ROOT / "tests" / "divcl_run.py"), tiny_model_dir, str(out), "--batch", "8"])
    r0, r1 = _steps(out / "rows_rank0.jsonl"), _steps(out / "rows_rank1.jsonl")
    # sentence-transformers sets drop_last under DDP: 200 rows → 12 global batches of 2 × 8 rows
    assert [r["step"] for r in r0] == [r["step"] for r in r1] == list(range(1, 13))
    rows0 = [x for r in r0 for x in r["rows"]]
    rows1 = [x for r in r1 for x in r["rows"]]
    assert not set(rows0) & set(rows1)
    assert len(set(rows0 + rows1)) == len(rows0 + rows1) == 192
    log = read_diversity_log(out / "diversity_log.jsonl")
    assert [r["step"] for r in log] == [2, 4, 6, 8, 10, 12]
    assert all(r["divcl/global_batch_size"] == 16 for r in log)  # the logged geometry is the global batch's
    assert (out / "final" / "modules.json").is_file()


@pytest.mark.slow
def test_minilm_on_wordnet_pairs_loss_goes_down(tmp_path):
    from hf_divcl.models.loading import load_sentence_transformer

    model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
    args = make_args(tmp_path, max_steps=8, per_device_train_batch_size=32, learning_rate=1e-4, logging_steps=4)
    data = pairs(512)
    before = fixed_set_loss(model, data)
    trainer = DivCLTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    after = fixed_set_loss(model, data)
    assert after < before, (before, after)
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert log[-1]["divcl/effective_rank"] > 5  # a pretrained encoder's batches are far from collapsed


def test_random_builder_pays_no_reference_encoding(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"),
                           args=make_args(tmp_path, max_steps=4, batch_policy="random"),
                           train_dataset=pairs())
    trainer.train()
    assert trainer.bank is None and not (tmp_path / "cache").exists()
    assert sorted(x for b in trainer.divcl_sampler.local_batches(0) for x in b) == list(range(160))
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert "divcl/effective_rank" in log[-1] and "divcl/in_window_fraction" not in log[-1]


@pytest.mark.parametrize("token", [None, "hf_user_token"])
def test_plain_sentence_transformers_arguments_keep_their_values_and_the_hub_token(tiny_model_dir, tmp_path,
                                                                                    token):
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    plain = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=3e-5,
                                                 logging_steps=7, report_to=[], hub_token=token,
                                                 hub_model_id="me/model")
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=plain,
                           train_dataset=pairs(40))
    assert isinstance(trainer.args, DivCLTrainingArguments)
    assert trainer.args.hub_token == token  # None stays None, so push_to_hub falls back to HF_TOKEN
    assert (trainer.args.learning_rate, trainer.args.logging_steps, trainer.args.hub_model_id) == (3e-5, 7, "me/model")
    a = trainer.args  # the hf_divcl options take their defaults
    assert (a.batch_policy, a.batch_policy_kwargs, a.loss_kwargs, a.temperature) == ("random", None, None, 0.05)
    assert trainer.policy.name == "random"


def test_on_infeasible_raise_from_the_arguments_reaches_the_planner(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    args = make_args(tmp_path, max_steps=1, batch_policy="window",
                     batch_policy_kwargs={"window": "effective_rank:15.8:16", "on_infeasible": "raise"})
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=args,
                           train_dataset=pairs(64))
    with pytest.raises(ValueError, match=r"window \[15\.800, 16\.000\] of effective_rank is not achievable"):
        trainer.train()


@pytest.mark.slow
def test_resume_refuses_changed_data_and_never_picks_an_earlier_runs_checkpoint(tiny_model_dir, tmp_path, caplog):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.training.checkpoints import DATA_FILE, data_identity

    def trainer(data, **kw):
        args = make_args(tmp_path, **{"save_strategy": "steps", "save_steps": 2, **kw})
        return DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=args, train_dataset=data)

    out = tmp_path / "out"
    first, other = pairs(128).select(range(64)), pairs(128).select(range(64, 128))  # same size, different rows
    trainer(first, max_steps=4).train()
    saved = json.loads((out / "checkpoint-4" / DATA_FILE).read_text())
    changed = trainer(other, max_steps=4)
    new_fp = data_identity(changed.train_dataset)["data_fingerprint"]
    assert saved["rows"] == 64 and saved["data_fingerprint"] != new_fp
    with pytest.raises(ValueError, match=rf"Cannot resume from .*checkpoint-4.*fingerprint {saved['data_fingerprint']}"
                                         rf" \(64 rows.*this training set has fingerprint {new_fp} \(64 rows"):
        changed.train(resume_from_checkpoint=True)

    # a new run in the same output_dir that saves nothing: resume=True must not pick the first run's checkpoints
    trainer(other, max_steps=1, save_strategy="no").train()
    with pytest.raises(ValueError, match=r"checkpoint-2, checkpoint-4\) were left by an earlier run"):
        trainer(other, max_steps=4).train(resume_from_checkpoint=True)
    # ... and when it does save, resume=True takes its own checkpoint, not the earlier run's newer one
    trainer(other, max_steps=2).train()
    resumed = trainer(other, max_steps=3)
    with caplog.at_level("WARNING", logger="hf_divcl.training.checkpoints"):
        resumed.train(resume_from_checkpoint=True)
    assert "Ignoring checkpoint-4" in caplog.text and resumed.state.global_step == 3
    assert json.loads((out / "checkpoint-3" / DATA_FILE).read_text())["data_fingerprint"] == new_fp
    # the earlier run stays resumable by its path, with its own data
    trainer(first, max_steps=4).train(resume_from_checkpoint=str(out / "checkpoint-4"))
