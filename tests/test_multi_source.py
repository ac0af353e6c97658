"""Several sources in one run (a ``DatasetDict``), sentence-transformers' way: every batch from one source, the
sources' batches in proportional or round-robin order, a loss per source where given, and ``source_mix`` to move
between one source per batch and fully mixed batches. Each row is used once per epoch; logs and run files name the
sources; bad sources are refused before the model steps, naming the source."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset, DatasetDict

from hf_divcl.data.validation import DatasetError
from hf_divcl.data.wordnet import wordnet_pairs
from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.planning.sources import SourceSplit
from hf_divcl.sampler import DiversityWindowBatchSampler
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.trainer import DivCLTrainer


def sources(sizes=(96, 64, 48)) -> DatasetDict:
    pairs = wordnet_pairs(kind="example", source="embedded").select_columns(["anchor", "positive"])
    out, start = {}, 0
    for name, n in zip(("nouns", "verbs", "adjectives"), sizes, strict=False):
        out[name] = pairs.select(range(start, start + n))
        start += n
    return DatasetDict(out)


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=1e-3, logging_steps=2,
                report_to=[], disable_tqdm=True, collapse_threshold=0, save_strategy="no", num_train_epochs=1)
    base.update(kw)
    return DivCLTrainingArguments(**base)


def model(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


class RecordBatches:
    """Wraps a trainer's ``compute_loss`` to keep each step's row ids and source name."""

    def __init__(self, trainer):
        self.steps: list[tuple[str, list[int]]] = []
        inner = trainer.compute_loss

        def compute_loss(m, inputs, *a, **k):
            self.steps.append((inputs.get("dataset_name"), inputs["row_ids"].tolist()))
            return inner(m, inputs, *a, **k)

        trainer.compute_loss = compute_loss


# -- planning ---------------------------------------------------------------------------------------------------


def _plan(order, mix, processes=1, sizes=(50, 33, 20), batch_size=4):
    n = sum(sizes)
    data = Dataset.from_dict({"a": [f"a{i}" for i in range(n)], "p": [f"p{i}" for i in range(n)]})
    split = SourceSplit(tuple("xyz"[:len(sizes)]), sizes, order=order, mix=mix)
    sampler = DiversityWindowBatchSampler(data, batch_size=batch_size, drop_last=False, window=None,
                                          builder="random", processes=processes, sources=split)
    return split, sampler, list(iter(sampler))


@pytest.mark.parametrize("processes", [1, 2])
def test_proportional_order_uses_every_row_once_and_each_global_batch_holds_one_source(processes):
    split, sampler, batches = _plan("proportional", 0.0, processes)
    assert len(batches) == len(sampler)
    rows = torch.tensor([r for b in batches for r in b])
    assert rows.unique().numel() == rows.numel()
    if processes == 1:
        assert rows.numel() == 103  # every row, partial last batches included
    for k in range(0, len(batches), processes):
        step = torch.tensor([r for b in batches[k:k + processes] for r in b])
        assert split.source_of(step).unique().numel() == 1
    counts = torch.bincount(torch.tensor([int(split.source_of(torch.tensor(b[:1]))[0])
                                          for b in batches[::processes]]))
    g = 4 * processes
    expected = [n // g + (1 if processes == 1 and n % g else 0) for n in split.sizes]
    assert counts.tolist() == expected  # batches in proportion to each source's rows


def test_round_robin_cycles_through_the_sources_until_the_smallest_runs_out():
    split, sampler, batches = _plan("round_robin", 0.0)
    order = [int(split.source_of(torch.tensor(b[:1]))[0]) for b in batches]
    assert order == [0, 1, 2] * 5 and len(batches) == len(sampler)


def test_source_mix_deals_that_fraction_of_each_batch_across_the_epoch_and_keeps_rows_once():
    split, _, single = _plan("proportional", 0.0, sizes=(400, 400), batch_size=20)
    _, _, mixed = _plan("proportional", 0.5, sizes=(400, 400), batch_size=20)

    def foreign(batches):  # share of each batch not from its majority source
        out = []
        for b in batches:
            s = split.source_of(torch.tensor(b))
            out.append(1 - torch.bincount(s).max().item() / len(b))
        return sum(out) / len(out)

    assert foreign(single) == 0.0
    assert 0.15 < foreign(mixed) < 0.35  # expected 0.5 × (1 − 1/2) = 0.25
    rows = sorted(r for b in mixed for r in b)
    assert rows == list(range(800))


def test_a_source_smaller_than_one_global_batch_is_named():
    data = Dataset.from_dict({"a": [f"a{i}" for i in range(40)], "p": [f"p{i}" for i in range(40)]})
    with pytest.raises(ValueError, match="Source 'small' has 8 rows, fewer than one global batch"):
        DiversityWindowBatchSampler(data, batch_size=16, drop_last=False, window=None, builder="random",
                                    processes=1, sources=SourceSplit(("big", "small"), (32, 8)))


# -- training ---------------------------------------------------------------------------------------------------


def test_a_dataset_dict_trains_one_source_per_batch_with_per_source_logs_and_run_file(tiny_model_dir, tmp_path):
    trainer = DivCLTrainer(model=model(tiny_model_dir), args=args(tmp_path), train_dataset=sources())
    seen = RecordBatches(trainer)
    trainer.train()
    assert [n for n, _ in seen.steps].count("nouns") == 6 and len(seen.steps) == 6 + 4 + 3
    offsets = {"nouns": range(0, 96), "verbs": range(96, 160), "adjectives": range(160, 208)}
    for name, rows in seen.steps:
        assert all(r in offsets[name] for r in rows)
    used = [r for _, rows in seen.steps for r in rows]
    assert sorted(used) == list(range(208))  # each row once in the epoch
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    per_source = {k.split("/")[2] for r in log for k in r if k.startswith("divcl/source/")}
    assert per_source == {"nouns", "verbs", "adjectives"}
    assert sum(r.get(f"divcl/source/{n}/steps", 0) for r in log for n in per_source) == 13
    run = json.loads((tmp_path / "out" / "divcl_run.json").read_text())
    assert run["sources"]["rows"] == {"nouns": 96, "verbs": 64, "adjectives": 48}
    assert run["sources"]["order"] == "proportional"


def test_a_loss_per_source_is_used_for_that_source_batches(tiny_model_dir, tmp_path):
    from hf_divcl.losses.infonce import InfoNCELoss

    m = model(tiny_model_dir)
    losses = {"nouns": InfoNCELoss(m, temperature=0.05), "verbs": InfoNCELoss(m, temperature=0.5),
              "adjectives": InfoNCELoss(m, temperature=0.1)}
    calls = {k: 0 for k in losses}
    for name, loss in losses.items():
        loss.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    trainer = DivCLTrainer(model=m, args=args(tmp_path), train_dataset=sources(), loss=losses)
    trainer.train()
    assert calls == {"nouns": 6, "verbs": 4, "adjectives": 3}


def test_window_policy_plans_within_each_source(tiny_model_dir, tmp_path):
    a = args(tmp_path, batch_policy="window", batch_policy_kwargs={"window": "1.1:1.6"}, max_steps=4)
    trainer = DivCLTrainer(model=model(tiny_model_dir), args=a, train_dataset=sources())
    seen = RecordBatches(trainer)
    trainer.train()
    split = trainer.sources
    for name, rows in seen.steps:
        assert {split.names[int(s)] for s in split.source_of(torch.tensor(rows))} == {name}
    assert trainer.bank is not None and trainer.bank.num_rows == 208


def test_resume_continues_the_same_multi_source_plan(tiny_model_dir, tmp_path):
    full = DivCLTrainer(model=model(tiny_model_dir), args=args(tmp_path / "a", seed=3), train_dataset=sources())
    seen_full = RecordBatches(full)
    full.train()
    first = DivCLTrainer(model=model(tiny_model_dir), args=args(tmp_path / "b", seed=3, save_strategy="steps",
                                                               save_steps=5, max_steps=5), train_dataset=sources())
    seen_first = RecordBatches(first)
    first.train()
    resumed = DivCLTrainer(model=model(tiny_model_dir), args=args(tmp_path / "b", seed=3),
                           train_dataset=sources())
    seen_rest = RecordBatches(resumed)
    resumed.train(resume_from_checkpoint=True)
    assert seen_first.steps + seen_rest.steps == seen_full.steps


# -- bad sources --------------------------------------------------------------------------------------------------


def test_bad_sources_are_named_before_any_step(tiny_model_dir, tmp_path):
    m = model(tiny_model_dir)
    data = sources()
    empty = DatasetDict({**data, "empty": data["nouns"].select([])})
    with pytest.raises(DatasetError, match="Source 'empty'"):
        DivCLTrainer(model=m, args=args(tmp_path), train_dataset=empty)
    three = data["verbs"].add_column("negative", data["verbs"]["positive"][::-1])
    with pytest.raises(DatasetError, match=r"Source 'verbs' has 3 input columns .* source 'nouns' has 2"):
        DivCLTrainer(model=m, args=args(tmp_path), train_dataset=DatasetDict({**data, "verbs": three}))
    missing = data["verbs"].map(lambda r, i: {"positive": None if i == 5 else r["positive"]}, with_indices=True)
    with pytest.raises(DatasetError, match=r"Source 'verbs': Row 5, column 'positive' is missing"):
        DivCLTrainer(model=m, args=args(tmp_path), train_dataset=DatasetDict({**data, "verbs": missing}))
    from hf_divcl.losses.infonce import InfoNCELoss

    with pytest.raises(DatasetError, match=r"no loss for \['verbs'\]; no source named \['verb'\]"):
        DivCLTrainer(model=m, args=args(tmp_path), train_dataset=data,
                     loss={"nouns": InfoNCELoss(m), "verb": InfoNCELoss(m), "adjectives": InfoNCELoss(m)})
    with pytest.raises(DatasetError, match="batch_policy='progress' does not train on several sources"):
        DivCLTrainer(model=m, args=args(tmp_path, batch_policy="progress"), train_dataset=data)
    assert not (tmp_path / "out").exists()  # nothing written


def test_columns_with_other_names_are_matched_by_position(tiny_model_dir, tmp_path):
    data = sources()
    renamed = data["verbs"].rename_columns({"anchor": "query", "positive": "answer"})
    trainer = DivCLTrainer(model=model(tiny_model_dir), args=args(tmp_path, max_steps=2),
                           train_dataset=DatasetDict({**data, "verbs": renamed}))
    assert trainer.train_dataset.column_names[:2] == ["anchor", "positive"]
    assert trainer.train_dataset[96]["anchor"] == data["verbs"][0]["anchor"]


@pytest.mark.slow
@pytest.mark.parametrize("gather", [False, True])
def test_two_accelerate_processes_share_one_source_per_step_on_disjoint_rows(tiny_model_dir, tmp_path, gather):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(root / "tests" / "divcl_run.py"), tiny_model_dir, str(out), "--batch", "8", "--builder", "random",
           "--sources", "3", *(["--gather"] if gather else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    read = [[json.loads(x) for x in (out / f"rows_rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    r0, r1 = read
    # 200 rows as sources of 100, 50 and 50 rows; each source's global batches of 2 × 8 rows: 6 + 3 + 3 steps
    assert [r["step"] for r in r0] == [r["step"] for r in r1] == list(range(1, 13))
    for a, b in zip(r0, r1, strict=True):
        assert a["source"] == b["source"]  # one source per global step, on both processes
    offsets = {"s0": range(0, 100), "s1": range(100, 150), "s2": range(150, 200)}
    for r in r0 + r1:
        assert all(x in offsets[r["source"]] for x in r["rows"])
    rows = [x for r in r0 + r1 for x in r["rows"]]
    assert len(rows) == len(set(rows)) == 192
    log = read_diversity_log(out / "diversity_log.jsonl")
    assert {k.split("/")[2] for r in log for k in r if k.startswith("divcl/source/")} == {"s0", "s1", "s2"}


def test_hf_divcl_train_takes_several_files_as_sources_with_a_per_source_card(tiny_model_dir, tmp_path):
    from hf_divcl.cli.steps import run_cli

    data = sources(sizes=(120, 90, 0))
    files = []
    for name in ("nouns", "verbs"):
        path = tmp_path / f"{name}.jsonl"
        data[name].to_json(str(path))
        files.append(str(path))
    recipe = tmp_path / "two.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ndata:\n  - {files[0]}\n  - {files[1]}\nmax_steps: 6\n"
                      f"per_device_train_batch_size: 16\nlogging_steps: 2\ndisable_tqdm: true\nreport_to: none\n"
                      f"output_dir: {tmp_path / 'out'}\nmax_eval_rows: 40\n")
    assert run_cli(["--config", str(recipe)]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "divcl_summary.json").read_text())
    assert {"nouns_ndcg@10", "verbs_ndcg@10", "sources_ndcg@10"} <= set(summary["after"])
    assert summary["train_rows"] == 100 + 72  # max_eval_rows shared out: at most 20 per source and a fifth
    pre = json.loads((out / "divcl_preflight.json").read_text())
    assert set(pre["sources"]) == {"nouns", "verbs"}
    card = (out / "README.md").read_text()
    section = card[card.index("### Sources"):card.index("### Pre-flight")]
    assert "| nouns | 100 |" in section and "| verbs | 72 |" in section
