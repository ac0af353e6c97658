"""Batch policies: one option chooses them, each owns its settings, the trainer drives every one the same way.

A new policy is one file: a ``BatchPolicy`` dataclass (registered, or passed as a class or instance); nothing in
``hf_divcl.training`` knows which policy runs.
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from hf_divcl._common import RENAMED
from hf_divcl.data.wordnet import wordnet_pairs
from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.policies.base import BatchPolicy, SamplerSetup
from hf_divcl.policies.registry import POLICIES, available_policies, resolve_policy
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.trainer import DivCLTrainer

ROOT = Path(__file__).resolve().parents[1]

# every option DivCLTrainingArguments had before the batch policies took their settings
OLD_OPTIONS = [
    "window", "window_keep_fraction", "calibration_budget", "calibration_pairs", "calibration_levels",
    "calibration_estimate", "calibration_confidence", "calibration_probe_rows", "calibration_sample_rows",
    "recalibrate_every", "recalibrate_early", "explore_alpha", "explore_max_fraction", "explore_min_blocks",
    "explore_probe_temperature", "explore_probe", "explore_probe_label_column", "explore_recheck_blocks",
    "explore_recheck_rule", "builder", "builder_kwargs", "on_infeasible", "replan_chunk_rows", "mega_batch_factor",
    "learnability_reference", "learnability_reference_rows", "learnability_reference_steps", "learnability_chunks",
    "temperature", "learnable_temperature", "loss_type", "symmetric_loss", "gather_across_devices", "whitening",
    "whitening_eps", "false_negatives", "false_negative_margin", "false_negative_guide"]


def pairs(n=160):
    return wordnet_pairs(kind="example", source="embedded").select(range(n)).select_columns(["anchor", "positive"])


def args(tmp_path, **kw) -> DivCLTrainingArguments:
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=1e-3, logging_steps=2,
                report_to=[], disable_tqdm=True, collapse_threshold=0, bank_cache_dir=str(tmp_path / "cache"),
                save_strategy="no", max_steps=4)
    base.update(kw)
    return DivCLTrainingArguments(**base)


# -- choosing a policy --------------------------------------------------------------------------------------------

def test_the_default_is_random_batches_and_every_registered_policy_says_what_it_is():
    a = DivCLTrainingArguments(output_dir="x")
    assert a.batch_policy == "random" and type(a.policy).__name__ == "RandomBatches"
    names = available_policies()
    assert names == {"stable": ["random", "window"],
                     "experimental": ["auto", "explore", "hard", "learnability", "mega_batch", "progress"]}
    for name, cls in POLICIES.items():
        assert cls.name == name and cls.summary, name
        assert cls.experimental == (name in names["experimental"])
        assert cls.__module__.startswith("hf_divcl.experimental." if cls.experimental else "hf_divcl.policies.")


@pytest.mark.parametrize("name, kwargs", [
    ("random", {}), ("window", {"window": "effective_rank:12:20", "builder": "pool", "builder_kwargs": {"p": 3}}),
    ("auto", {"keep_fraction": 0.8}), ("progress", {"budget": 0.1, "pairs": 4, "levels": "local:64,spread:4"}),
    ("explore", {"alpha": 0.1, "recheck_blocks": 0}), ("learnability", {"chunks": 2, "factor": 3}),
    ("hard", {"window": "10:20"}), ("mega_batch", {"factor": 2, "window": "10:20"})])
def test_settings_round_trip_through_the_arguments_json_and_yaml_style_strings(name, kwargs):
    a = DivCLTrainingArguments(output_dir="x", batch_policy=name, batch_policy_kwargs=json.dumps(kwargs))
    assert a.batch_policy == name and (a.batch_policy_kwargs or {}) == kwargs
    settings = a.policy.settings()
    assert {k: settings[k] for k in kwargs} == kwargs
    again = resolve_policy(name, json.loads(json.dumps(settings)))
    assert again == a.policy
    assert (json.loads(a.to_json_string())["batch_policy_kwargs"] or {}) == kwargs


def test_a_policy_class_or_instance_works_as_batch_policy_and_serialises_as_its_name():
    from hf_divcl.policies.window import FixedWindow

    a = DivCLTrainingArguments(output_dir="x", batch_policy=FixedWindow(window="8:12", builder="cluster"))
    assert (a.batch_policy, a.batch_policy_kwargs["window"], a.batch_policy_kwargs["builder"]) == \
        ("window", "8:12", "cluster")
    assert json.loads(a.to_json_string())["batch_policy"] == "window"
    b = DivCLTrainingArguments(output_dir="x", batch_policy=FixedWindow, batch_policy_kwargs={"window": "8:12"})
    assert b.policy == FixedWindow(window="8:12")
    with pytest.raises(ValueError, match="holds its own settings"):
        DivCLTrainingArguments(output_dir="x", batch_policy=FixedWindow(window="8:12"),
                               batch_policy_kwargs={"builder": "pool"})


def test_an_unknown_name_or_a_misspelt_setting_fails_at_argument_time_with_suggestions():
    with pytest.raises(ValueError, match=r"Unknown batch_policy 'explor'\. Did you mean 'explore'\?.*random, window"):
        DivCLTrainingArguments(output_dir="x", batch_policy="explor")
    with pytest.raises(ValueError, match=r"no setting 'recheck_block' \(did you mean 'recheck_blocks'"):
        DivCLTrainingArguments(output_dir="x", batch_policy="explore", batch_policy_kwargs={"recheck_block": 4})
    with pytest.raises(ValueError, match="needs a window"):
        DivCLTrainingArguments(output_dir="x", batch_policy="window")
    with pytest.raises(ValueError, match="builder must be one of"):
        DivCLTrainingArguments(output_dir="x", batch_policy="window", batch_policy_kwargs={"window": "1:2",
                                                                                           "builder": "random"})
    with pytest.raises(ValueError, match="JSON object"):
        DivCLTrainingArguments(output_dir="x", batch_policy="window", batch_policy_kwargs="{window: 1:2}")
    with pytest.raises(ValueError, match=r"loss_kwargs has no option 'temprature' \(did you mean 'temperature'"):
        DivCLTrainingArguments(output_dir="x", loss_kwargs={"temprature": 0.1})


@pytest.mark.parametrize("old", OLD_OPTIONS)
def test_every_old_option_fails_naming_its_new_spelling(old):
    assert old in RENAMED
    with pytest.raises(TypeError, match=rf"{old}=\.\.\. is now .*(batch_policy|loss_kwargs)"):
        DivCLTrainingArguments(output_dir="x", **{old: None})


def test_options_added_to_sentence_transformers_are_few():
    from sentence_transformers import SentenceTransformerTrainingArguments

    ours = [n for n in DivCLTrainingArguments.__annotations__
            if n not in SentenceTransformerTrainingArguments.__dataclass_fields__]
    assert len(ours) <= 30, ours
    assert "batch_policy" in ours and "loss_kwargs" in ours and not set(ours) & set(OLD_OPTIONS)


# -- the trainer drives a policy it does not know --------------------------------------------------------------------

@dataclass
class EveryOtherRow(BatchPolicy):
    """A policy written outside hf_divcl: super-batches of ``factor`` × B random rows, of which each step keeps every
    ``factor``-th row; counts the steps it saw and keeps the count in checkpoints."""

    factor: int = 2

    name: ClassVar[str] = "every_other_row_test"
    summary: ClassVar[str] = "keeps every factor-th row of a random super-batch"

    def start(self, ctx, dataset, batch_size, seed) -> SamplerSetup:
        self.seen = getattr(self, "seen", 0)
        return SamplerSetup("random", factor=self.factor, selector=lambda rows: torch.arange(0, rows.numel(),
                                                                                             self.factor))

    def on_batch(self, row_ids) -> None:
        self.seen = getattr(self, "seen", 0) + 1

    def logs(self) -> dict[str, float]:
        return {"steps_seen": float(getattr(self, "seen", 0))}

    def describe(self, ctx) -> dict[str, Any]:
        return {"decision": "random", "reason": f"every {self.factor}-th row of a super-batch"}

    def state_dict(self) -> dict[str, Any]:
        return {"seen": getattr(self, "seen", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]


def test_a_policy_defined_in_one_file_trains_logs_describes_and_resumes(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    a = args(tmp_path, batch_policy=EveryOtherRow, batch_policy_kwargs={"factor": 2}, save_strategy="steps",
             save_steps=2)
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=a, train_dataset=pairs())
    trainer.train()
    assert trainer.divcl_sampler.batch_size == 32  # the sampler hands out super-batches of 2 × B
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert [r["divcl/steps_seen"] for r in log] == [2.0, 4.0]
    assert all(r["divcl/global_batch_size"] == 16 for r in log)  # the selector kept B rows
    info = json.loads((tmp_path / "out" / "divcl_window.json").read_text())
    assert (info["policy"], info["settings"], info["reason"]) == \
        ("every_other_row_test", {"factor": 2}, "every 2-th row of a super-batch")
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "divcl_state" / "policy.json").read_text())
    assert state == {"seen": 2}
    resumed = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"),
                           args=args(tmp_path, batch_policy="every_other_row_test", max_steps=4),
                           train_dataset=pairs())
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.policy.seen == 4  # 2 restored from the checkpoint + the 2 steps after it


def test_the_default_run_encodes_no_bank_and_says_random_batches(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=args(tmp_path),
                           train_dataset=pairs())
    trainer.train()
    assert trainer.bank is None and not (tmp_path / "cache").exists()
    info = json.loads((tmp_path / "out" / "divcl_window.json").read_text())
    assert (info["policy"], info["decision"], info["experimental"]) == ("random", "random", False)


def test_an_experimental_policy_says_so_when_the_trainer_is_built(tiny_model_dir, tmp_path, caplog):
    from sentence_transformers import SentenceTransformer

    with caplog.at_level(logging.WARNING, logger="hf_divcl.training.trainer"):
        DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"),
                     args=args(tmp_path, batch_policy="auto"), train_dataset=pairs())
    assert "batch_policy='auto' is experimental" in caplog.text


def test_nothing_in_training_or_cli_knows_a_policy_class():
    """The trainer and the command line reach policies only through the protocol: no import of the experimental
    package or of a concrete policy module, no branch on a policy's name."""
    concrete = ("hf_divcl.experimental", "hf_divcl.policies.random", "hf_divcl.policies.window")
    for folder in ("training", "cli"):
        for path in (ROOT / "hf_divcl" / folder).glob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    module = node.module if node.level == 0 else "hf_divcl." + node.module.lstrip(".")
                    assert not module.startswith(concrete), f"{path.name}:{node.lineno} imports {module}"
                if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in POLICIES
                                                         for c in node.comparators):
                    raise AssertionError(f"{path.name}:{node.lineno} compares with a policy name")


def test_the_auto_window_can_be_recalibrated_on_the_bank_every_k_epochs(tiny_model_dir, tmp_path):
    """A window set on an encoder trained from scratch goes stale as it learns: with ``recalibrate_every_epochs``
    it is calibrated again on the bank (the training steps' own embeddings) before the sampler plans the epoch."""
    from sentence_transformers import SentenceTransformer

    a = args(tmp_path, batch_policy="auto", batch_policy_kwargs={"recalibrate_every_epochs": 1}, max_steps=12,
             learning_rate=5e-3)
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=a, train_dataset=pairs(64))
    trainer.train()  # 64 rows at B = 16: 4 steps per epoch, 3 epochs
    policy = trainer.policy
    assert [r["epoch"] for r in policy.recalibrations] == [1, 2]
    last = policy.recalibrations[-1]["window"]
    assert trainer.divcl_sampler.plan(2).window.to_dict() == last  # epoch 2 was planned in the new window
    assert trainer.diversity.window.to_dict() == last  # and the logs and run files report it
    with pytest.raises(ValueError, match="recalibrate_every_epochs must be an integer >= 0"):
        args(tmp_path, batch_policy="auto", batch_policy_kwargs={"recalibrate_every_epochs": -1})


def test_a_resumed_run_keeps_its_recalibrated_window_and_their_record(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    def run(max_steps, resume=None):
        a = args(tmp_path, batch_policy="auto", batch_policy_kwargs={"recalibrate_every_epochs": 1},
                 max_steps=max_steps, learning_rate=5e-3, save_strategy="steps", save_steps=6)
        trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=a,
                               train_dataset=pairs(64))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    first = run(6)  # stops in epoch 1, after its re-calibration at step 4
    (epoch1,) = first.policy.recalibrations
    resumed = run(12, resume=str(tmp_path / "out" / "checkpoint-6"))
    assert resumed.policy.recalibrations[0] == epoch1  # restored from the checkpoint
    assert [r["epoch"] for r in resumed.policy.recalibrations] == [1, 2]
    assert resumed.divcl_sampler.plan(2).window.to_dict() == resumed.policy.recalibrations[1]["window"]
