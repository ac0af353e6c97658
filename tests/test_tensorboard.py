"""TensorBoard receives every ``divcl/*`` scalar the diversity log holds, from DivCLTrainer and from
DiversityCallback in an unchanged SentenceTransformerTrainer (read back from the event files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.training.callbacks import DiversityCallback

pytest.importorskip("tensorboard")


def scalars(output_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p for p in (output_dir / "runs").iterdir() if p.is_dir()]  # transformers' default: output_dir/runs/<run>
    assert len(runs) == 1, runs
    acc = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def check_against_the_log(out: Path) -> int:
    events = scalars(out)
    log = read_diversity_log(out / "diversity_log.jsonl")
    keys = {k for r in log for k in r if k.startswith("divcl/") and isinstance(r[k], (int, float))}
    assert len(keys) >= 15
    for record in log:
        for key in keys & set(record):
            tag = f"train/{key}"
            assert tag in events, (tag, sorted(events))
            assert events[tag][record["step"]] == pytest.approx(record[key], rel=1e-5, abs=1e-6)
    return len(keys)


def test_divcl_trainer_scalars_reach_tensorboard(tiny_model_dir, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    out = tmp_path / "out"
    args = DivCLTrainingArguments(output_dir=str(out), max_steps=4, logging_steps=2, per_device_train_batch_size=16,
                                  report_to=["tensorboard"], save_strategy="no", disable_tqdm=True,
                                  bank_cache_dir=str(tmp_path / "cache"))
    pairs = wordnet_pairs(kind="example", source="embedded").select(range(96)).select_columns(["anchor", "positive"])
    DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=args, train_dataset=pairs).train()
    assert check_against_the_log(out) >= 20


def test_diversity_callback_scalars_reach_tensorboard(tiny_model_dir, tmp_path, monkeypatch):
    from test_callbacks import plain_trainer

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    trainer = plain_trainer(tiny_model_dir, tmp_path, DiversityCallback(plots=False), report_to=["tensorboard"],
                            max_steps=4)
    trainer.train()
    assert check_against_the_log(tmp_path / "out") >= 15
