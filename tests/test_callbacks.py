"""DiversityCallback: hf_divcl's diagnostics in an unchanged SentenceTransformerTrainer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from hf_divcl.diversity.log import format_log_line, read_diversity_log
from hf_divcl.training.callbacks import DiversityCallback

ROOT = Path(__file__).resolve().parents[1]


def plain_trainer(tiny_model_dir, tmp_path, callback, attach=True, **kw):
    """An unchanged SentenceTransformerTrainer with ``callback`` attached (``attach=False``: passed in its
    constructor instead)."""
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    ds = Dataset.from_dict({"anchor": [f"word {i} of kind {i % 7}" for i in range(64)],
                            "positive": [f"meaning {i * 5 % 11} of item {i}" for i in range(64)]})
    args = SentenceTransformerTrainingArguments(**{
        "output_dir": str(tmp_path / "out"), "max_steps": 5, "per_device_train_batch_size": 8, "learning_rate": 1e-3,
        "logging_steps": 2, "report_to": [], "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, **kw})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model),
                                         callbacks=None if attach else [callback])
    if attach:
        callback.attach(trainer)
    return trainer


def test_callback_logs_geometry_bands_and_plots_from_an_unchanged_trainer(tiny_model_dir, tmp_path, capsys):
    cb = DiversityCallback(window="effective_rank:1:6")
    trainer = plain_trainer(tiny_model_dir, tmp_path, cb)
    assert trainer.callback_handler.callbacks.index(cb) == 1  # right after DefaultFlowCallback, before report_to
    trainer.train()
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert [r["step"] for r in log] == [2, 4, 5]  # every logging step, and the last one
    for r in log:
        assert "loss" in r and 1.0 <= r["divcl/effective_rank"] <= 8.0
        assert r["divcl/global_batch_size"] == 8 and r["divcl/temperature"] == pytest.approx(0.05)
        assert r["divcl/band_inside_fraction"] == 1.0  # exact norms always inside their bands
        assert r["divcl/grad_norm_p10"] <= r["divcl/grad_norm_p50"] <= r["divcl/grad_norm_p90"]
        assert 0.0 <= r["divcl/in_window_fraction"] <= 1.0 and r["divcl/window_high"] == 6.0
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert all("divcl/effective_rank" in h for h in history)
    for png in ("diversity_trajectory.png", "gradient_bands.png"):
        assert (tmp_path / "out" / png).stat().st_size > 10_000
    assert not trainer.model._forward_hooks  # the hook is gone after training
    console = capsys.readouterr().out
    assert "step 4/5 · loss " in console and "eff. rank " in console and "'divcl/" not in console
    assert "% of anchors in band" in console


def test_console_line_is_short_and_says_what_matters():
    record = {"loss": 2.01234, "learning_rate": 4.2e-5, "grad_norm": 3.0, "epoch": 0.5,
              "divcl/effective_rank": 18.31, "divcl/window_low": 16.6, "divcl/window_high": 23.9,
              "divcl/in_window_fraction": 0.6, "divcl/grad_norm_p50": 3.21, "divcl/band_lower_mean": 0.37,
              "divcl/band_upper_mean": 32.7, "divcl/band_inside_fraction": 0.75, "divcl/step_seconds": 1.93,
              **{f"divcl/other_{i}": float(i) for i in range(25)}}
    line = format_log_line(record, 20, 60)
    assert line == ("step 20/60 · loss 2.012 · lr 4.2e-05 · eff. rank 18.3 (window 16.6–23.9, 60% of batches in) "
                    "· ‖∇‖ 3.21, 75% of anchors in band · 1.9 s/step")
    # the median norm is never set against the mean of the band's bounds
    assert "0.37" not in line and "32.7" not in line
    without_share = {k: v for k, v in record.items() if k != "divcl/band_inside_fraction"}
    assert "· ‖∇‖ 3.21 · 1.9 s/step" in format_log_line(without_share, 20, 60)
    assert format_log_line({**record, "divcl/collapse_alarm": 1.0}, 20, 60).endswith("COLLAPSE ALARM (see the warning)")
    assert format_log_line({"train_runtime": 9.0, "train_loss": 2.0}, 60, 60) is None  # other logs: unchanged


@pytest.mark.parametrize("disable_tqdm", [False, True], ids=["progress-bar", "printer"])
def test_the_console_callback_is_replaced_in_place_and_prints_the_short_line(tiny_model_dir, tmp_path, capsys,
                                                                             disable_tqdm):
    """attach() puts a readable console callback where the Trainer's own was (same place, same max_str_len),
    built with its public constructor; every training log then prints the short line with the window's metric."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = plain_trainer(tiny_model_dir, tmp_path, TrainerCallback(), attach=False, disable_tqdm=disable_tqdm)
    callbacks = trainer.callback_handler.callbacks
    console_cls = PrinterCallback if disable_tqdm else ProgressCallback
    before = next(c for c in callbacks if type(c) is console_cls)
    if not disable_tqdm:
        before.max_str_len = 37
    where = callbacks.index(before)
    DiversityCallback(window="participation_ratio:1:8", plots=False).attach(trainer)
    callbacks = trainer.callback_handler.callbacks
    after = callbacks[where + 1]  # the DiversityCallback went in before it, right after DefaultFlowCallback
    assert isinstance(after, console_cls) and type(after) is not console_cls and before not in callbacks
    assert [type(c) for c in callbacks].count(type(after)) == 1
    if not disable_tqdm:
        assert after.max_str_len == 37
    trainer.train()
    lines = [line for line in capsys.readouterr().out.splitlines() if " · loss " in line]
    assert [line.split(" · ")[0] for line in lines] == ["step 2/5", "step 4/5", "step 5/5"]
    for line in lines:
        assert "participation ratio " in line and "(window 1–8, " in line
        assert re.search(r"· ‖∇‖ [0-9.e+-]+, 100% of anchors in band · ", line), line


def test_collapse_alarm_stops_an_unchanged_trainer(tiny_model_dir, tmp_path):
    cb = DiversityCallback(collapse_threshold=100.0, collapse_patience=2, collapse_action="stop", plots=False)
    trainer = plain_trainer(tiny_model_dir, tmp_path, cb, max_steps=8, logging_steps=2)
    trainer.train()
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert cb.alarm and log[-1]["divcl/collapse_alarm"] == 1.0 and trainer.state.global_step == 2


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DiversityCallback(temperature=0)
    with pytest.raises(ValueError, match="collapse_action"):
        DiversityCallback(collapse_action="panic")


def test_a_callback_passed_in_the_constructor_says_how_to_reach_report_to(tiny_model_dir, tmp_path, caplog):
    cb = DiversityCallback(plots=False)
    with caplog.at_level("WARNING", logger="hf_divcl.training.callbacks"):
        trainer = plain_trainer(tiny_model_dir, tmp_path, cb, attach=False, report_to=["tensorboard"])
    assert "attach(trainer)" in caplog.text
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("DiversityCallback") > names.index("TensorBoardCallback")  # where the Trainer put it
    cb.attach(trainer)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("DiversityCallback") == 1 < names.index("TensorBoardCallback")


LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.slow
def test_under_two_processes_the_callback_measures_the_global_batch(tiny_model_dir, tmp_path):
    """`accelerate launch` with 2 processes: each logged effective rank is the mean over the logged steps of the
    effective rank of the *global* batch (both processes' anchors), recomputed here from embeddings each process
    saved on its own; τ comes from the loss (MultipleNegativesRankingLoss scale 10 → 0.1)."""
    import torch

    from hf_divcl.diversity.metrics import batch_diversity

    out = tmp_path / "out"
    done = subprocess.run([*LAUNCH, str(ROOT / "tests" / "callback_run.py"), tiny_model_dir, str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(out / f"steps_rank{r}.pt") for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    n = ranks[0][0].shape[0] // 2
    global_rank = [batch_diversity(torch.cat([r[s][:n] for r in ranks]).double())["effective_rank"].item()
                   for s in range(4)]
    local_rank = [batch_diversity(ranks[0][s][:n].double())["effective_rank"].item() for s in range(4)]
    records = [r for r in read_diversity_log(out / "diversity_log.jsonl") if "divcl/effective_rank" in r]
    assert [r["step"] for r in records] == [2, 4]
    for record, steps in zip(records, ([0, 1], [2, 3]), strict=True):
        assert record["divcl/global_batch_size"] == 2 * n
        assert record["divcl/temperature"] == pytest.approx(0.1)
        expected = sum(global_rank[s] for s in steps) / 2
        assert record["divcl/effective_rank"] == pytest.approx(expected, rel=1e-4)
        assert record["divcl/effective_rank"] != pytest.approx(sum(local_rank[s] for s in steps) / 2, rel=1e-3)
    assert records[0]["loss_config"]["loss"] == "MultipleNegativesRankingLoss"
