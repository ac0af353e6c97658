"""Recipes end to end (train → evaluate → card), their configs, ``hf-divcl train``, and ``trainer.push_to_hub``
over real HTTP to the loopback Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hub_server as loopback
import pytest
import torch
import yaml

from hf_divcl.cli.recipe_config import load_recipe_config
from hf_divcl.cli.steps import run_cli as main
from hf_divcl.data.wordnet import wordnet_pairs
from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.policies.registry import available_policies

ROOT = Path(__file__).resolve().parents[1]
hub_server = loopback.hub_server
hub_client = loopback.hub_client
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def smoke(out, **extra) -> list[str]:
    keys = {"output_dir": str(out), "max_steps": 4, "logging_steps": 2, "save_strategy": "no", "max_eval_rows": 60,
            "bank_cache_dir": str(out / "cache"), "disable_tqdm": True, "collapse_threshold": 0, **extra}
    return [x for k, v in keys.items() for x in (f"--{k}", str(v))]


def check_output(out: Path, steps: int = 4) -> dict:
    summary = json.loads((out / "divcl_summary.json").read_text())
    assert summary["steps"] == steps and summary["after"]
    card = (out / "README.md").read_text()
    assert "](diversity_trajectory.png)" in card and "](gradient_bands.png)" in card
    assert (out / "diversity_trajectory.png").stat().st_size > 10_000 and (out / "gradient_bands.png").is_file()
    assert read_diversity_log(out / "diversity_log.jsonl")[-1]["step"] == steps
    assert "hub_token" in json.loads((out / "training_args.json").read_text())
    return summary


def test_text_recipe_trains_evaluates_and_writes_the_card(tiny_model_dir, tmp_path):
    out = tmp_path / "text"
    code = main(smoke(out, model=tiny_model_dir, max_train_rows=200, per_device_train_batch_size=8),
                default_config=str(ROOT / "recipes" / "text_wordnet.yaml"))
    assert code == 0
    summary = check_output(out)
    assert {"wordnet_ndcg@10", "wordsim353_spearman", "simlex999_spearman"} <= set(summary["after"])
    assert "| wordnet\\_ndcg@10 |" in (out / "README.md").read_text()


def test_vision_recipe_script_trains_a_tiny_vit_exactly_as_hf_divcl_train_does(tmp_path):
    import runpy

    script = runpy.run_path(str(ROOT / "recipes" / "vision_fashion_mnist.py"))  # the script's own steps
    config = str(ROOT / "recipes" / "vision_fashion_mnist.yaml")
    summaries = []
    for name, run in (("script", script["run"]), ("generic", None)):
        out = tmp_path / name
        argv = smoke(out, max_train_rows=256, per_device_train_batch_size=32)
        assert (main(argv, default_config=config, run=run) if run else main(argv, default_config=config)) == 0
        summaries.append(check_output(out))
    script_summary, generic = summaries
    assert 0.0 <= script_summary["after"]["knn_accuracy"] <= 1.0 and "linear_probe_accuracy" in generic["after"]
    for key in ("before", "after"):  # the same scores, to the last bit (timings aside)
        assert {k: v for k, v in script_summary[key].items() if not k.endswith("seconds")} == \
            {k: v for k, v in generic[key].items() if not k.endswith("seconds")}
    same = ("data", "base_model", "train_rows", "eval_rows", "steps")
    assert {k: script_summary[k] for k in same} == {k: generic[k] for k in same}


def test_clip_recipe_trains_image_text_pairs_via_the_cli(tmp_path):
    from hf_divcl.cli.main import main as cli_main

    out = tmp_path / "clip"
    argv = ["train", "--config", str(ROOT / "recipes" / "clip_fashion_mnist.yaml"),
            *smoke(out, max_train_rows=256, per_device_train_batch_size=16)]
    assert cli_main(argv) == 0
    check_output(out)


@pytest.mark.parametrize("overrides, message", [
    ({"max_stepz": 3}, r"unknown key 'max_stepz'\. Did you mean 'max_steps'"),
    ({"learning_rate": "fast"}, r"key 'learning_rate' must be float, got 'fast'"),
    ({"task": "audio"}, r"task must be one of"),
    ({"batch_policy": "window", "batch_policy_kwargs": {"window": "12:20", "builder": "best"}},
     r"batch_policy='window': builder must be one of"),
    ({"builder": "greedy"}, r"'builder' is no longer a key; it is now batch_policy='window'"),
])
def test_bad_configs_fail_before_anything_runs(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_recipe_config(ROOT / "recipes" / "text_wordnet.yaml", {"output_dir": str(tmp_path), **overrides})


def test_every_shipped_config_loads(tmp_path):
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        extra = {} if torch.cuda.is_available() else {"bf16": False}  # the GPU-sized configs ask for bf16
        cfg, args = load_recipe_config(path, {"output_dir": str(tmp_path), **extra})
        assert cfg.task in ("text", "vision", "clip") and args.batch_policy in available_policies()["stable"]
        assert args.policy.name == args.batch_policy and args.temperature > 0


def test_command_line_reports_config_errors(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_text_recipe_under_two_accelerate_processes(tiny_model_dir, tmp_path):
    out = tmp_path / "text2"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(ROOT / "recipes" / "text_wordnet.py"),
                           *smoke(out, model=tiny_model_dir, max_train_rows=200, per_device_train_batch_size=8)],
                          env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    check_output(out)
    log = read_diversity_log(out / "diversity_log.jsonl")
    assert all(r["divcl/global_batch_size"] == 16 for r in log)


def test_run_shorter_than_logging_steps_logs_its_last_step_and_writes_the_card(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "short"
    code = main(smoke(out, model=tiny_model_dir, max_train_rows=120, per_device_train_batch_size=8, max_steps=3,
                      logging_steps=5, run_evaluation=False),
                default_config=str(ROOT / "recipes" / "text_wordnet.yaml"))
    assert code == 0
    log = read_diversity_log(out / "diversity_log.jsonl")
    assert [r["step"] for r in log] == [3] and log[0]["divcl/effective_rank"] > 0 and "loss" in log[0]
    assert "](diversity_trajectory.png)" in (out / "README.md").read_text()
    console = capsys.readouterr().out
    assert "done in" in console and "step 3/3 · loss " in console and "'divcl/" not in console


def test_own_data_is_named_after_the_file_or_dataset_name_never_wordnet(tiny_model_dir, tmp_path, capsys):
    rows = wordnet_pairs(kind="example", source="embedded").select(range(200))
    data = tmp_path / "support-tickets.tsv"
    data.write_text("query\tdoc\n" + "".join(f"{a}\t{p}\n" for a, p in zip(rows["anchor"], rows["positive"],
                                                                          strict=True)))
    assert load_recipe_config(None, {"data": str(data)})[0].data_name() == "support-tickets"
    out = tmp_path / "own"
    argv = ["--data", str(data), "--anchor-column", "query", "--positive-column", "doc", "--dataset_name", "tickets",
            *smoke(out, model=tiny_model_dir, max_eval_rows=30, per_device_train_batch_size=8, max_steps=2)]
    assert main(argv, default_config=str(ROOT / "recipes" / "text_wordnet.yaml")) == 0
    console = capsys.readouterr().out
    summary = json.loads((out / "divcl_summary.json").read_text())
    card = (out / "README.md").read_text()
    assert summary["dataset_name"] == "tickets" and "tickets_ndcg@10" in summary["after"]
    assert "tickets (pairs from support-tickets.tsv)" in summary["data"] and "tickets_ndcg@10" in console
    header = yaml.safe_load(card.split("---")[1])
    assert header["model-index"][0]["results"][0]["dataset"]["name"] == "tickets"
    assert "wordnet" not in (card + console + json.dumps(summary)).lower()
    with pytest.raises(ValueError, match=r"dataset_name must be .* got 'my tickets'"):
        load_recipe_config(None, {"dataset_name": "my tickets"})


def launch_two_processes(tiny_model_dir, out, env_extra=None, **keys) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(ROOT / "recipes" / "text_wordnet.py"),
                           *smoke(out, model=tiny_model_dir, max_train_rows=120, per_device_train_batch_size=8,
                                  **keys)],
                          env=env, timeout=600, capture_output=True, text=True)


@pytest.mark.slow
def test_short_run_under_two_processes_main_process_evaluates_and_reports_once(tiny_model_dir, tmp_path):
    out = tmp_path / "short2"
    run = launch_two_processes(tiny_model_dir, out, max_steps=3, logging_steps=5, max_eval_rows=30)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("done in") == 1 and run.stdout.count("wordnet_ndcg@10") == 1, run.stdout
    assert [r["step"] for r in read_diversity_log(out / "diversity_log.jsonl")] == [3]
    assert (out / "README.md").is_file() and json.loads((out / "divcl_summary.json").read_text())["steps"] == 3

    # the main process fails after training (here: no card template): nobody reports "done", the launch fails
    failed = launch_two_processes(tiny_model_dir, tmp_path / "fails", max_steps=2, logging_steps=5,
                                  run_evaluation=False,
                                  env_extra={"HF_DIVCL_CARD_TEMPLATE": str(tmp_path / "missing.jinja")})
    assert failed.returncode != 0 and "done in" not in failed.stdout + failed.stderr
    assert "missing.jinja" in failed.stderr


def test_trainer_push_to_hub_uploads_model_card_plots_and_logs(hub_client, tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    data = wordnet_pairs(kind="example", source="embedded").select(range(96)).select_columns(["anchor", "positive"])
    model = SentenceTransformer(tiny_model_dir, device="cpu")
    args = DivCLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, max_steps=4,
                                  logging_steps=2, report_to=[], disable_tqdm=True, collapse_threshold=0,
                                  bank_cache_dir=str(tmp_path / "cache"), save_strategy="no",
                                  hub_token=hub_client.token)
    trainer = DivCLTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    url = trainer.push_to_hub("divcl-tester/pushed", endpoint=hub_client.endpoint)
    files = hub_client.server.repo_files("divcl-tester/pushed")
    assert url.endswith(hub_client.server.head("divcl-tester/pushed"))
    for name in ("README.md", "diversity_trajectory.png", "gradient_bands.png", "diversity_log.jsonl",
                 "diversity_log.parquet", "training_args.json", "model.safetensors", "modules.json"):
        assert name in files, name
    assert "training_args.bin" not in files
    assert hub_client.token.encode() not in files["training_args.json"]
    remote = SentenceTransformer("divcl-tester/pushed", device="cpu", token=hub_client.token,
                                 cache_folder=str(tmp_path / "dl"))
    texts = ["a cold morning", "the gloss of a word"]
    model.eval()
    assert torch.equal(remote.encode(texts, convert_to_tensor=True), model.encode(texts, convert_to_tensor=True))
