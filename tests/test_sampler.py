"""DiversityWindowBatchSampler: the Trainer/Accelerate contract, global batches, resume, drop-in training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_divcl.diversity.window import DiversityWindow
from hf_divcl.sampler import DiversityWindowBatchSampler

ROOT = Path(__file__).resolve().parents[1]


def make_data(n=600, d=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, d, generator=gen)
    bank = F.normalize(centres[torch.arange(n) % 12] + torch.randn(n, d, generator=gen), dim=-1)
    ds = Dataset.from_dict({"anchor": [f"a{i}" for i in range(n)], "positive": [f"p{i}" for i in range(n)]})
    return ds, bank


@pytest.fixture(scope="module")
def data():
    return make_data()


def sampler(data, **kw):
    ds, bank = data
    opts = {"bank": bank, "window": DiversityWindow(1, 16), "builder": "greedy", "processes": 1, **kw}
    cls = DiversityWindowBatchSampler.configure(**opts)
    return cls(ds, batch_size=kw.pop("batch_size", 16), drop_last=kw.pop("drop_last", False), seed=3)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_len_is_exact_and_rows_partition(data, drop_last, processes):
    ds, bank = data
    cls = DiversityWindowBatchSampler.configure(bank=bank, window=DiversityWindow(1, 16 * processes),
                                                processes=processes)
    s = cls(ds, batch_size=16, drop_last=drop_last, seed=0)
    batches = list(s)
    assert len(batches) == len(s)
    rows = [r for b in batches for r in b]
    assert len(rows) == len(set(rows))
    if not drop_last:
        assert sorted(rows) == list(range(len(ds)))
    assert all(len(b) == 16 for b in batches[: len(ds) // (16 * processes) * processes])


def test_same_sequence_each_time_and_new_order_per_epoch(data):
    s = sampler(data)
    first, again = list(s), list(s)
    assert first == again
    s.set_epoch(1)
    assert list(s) != first


def test_global_batches_are_consecutive_local_batches(data):
    ds, bank = data
    s = DiversityWindowBatchSampler.configure(bank=bank, window=DiversityWindow(1, 32), processes=2)(
        ds, batch_size=16, drop_last=True, seed=0)
    local = list(s)
    plan = s.plan()
    for k, gb in enumerate(plan.batches):
        assert local[2 * k] + local[2 * k + 1] == gb.tolist()
    assert plan.in_window_fraction == 1.0


def test_resume_mid_epoch_gives_exactly_the_remaining_rows(data):
    s = sampler(data)
    s.set_epoch(2)
    it = iter(s)
    seen = [next(it) for _ in range(7)]
    state = s.state_dict()
    resumed = sampler(data)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert seen + rest == list(sampler_at_epoch(data, 2))
    assert resumed.state_dict()["batches_yielded"] == len(s)


def sampler_at_epoch(data, epoch):
    s = sampler(data)
    s.set_epoch(epoch)
    return s


def test_resume_refuses_a_different_dataset(data):
    state = sampler(data).state_dict()
    ds, bank = make_data(n=500)
    other = DiversityWindowBatchSampler.configure(bank=bank, window=DiversityWindow(1, 16), processes=1)(
        ds, batch_size=16, drop_last=False)
    with pytest.raises(ValueError, match="num_rows=600"):
        other.load_state_dict(state)


def test_duplicate_texts_never_share_a_batch():
    ds, bank = make_data(n=200)
    anchors = list(ds["anchor"])
    anchors[1] = anchors[2] = anchors[0]
    ds = ds.remove_columns("anchor").add_column("anchor", anchors)
    s = DiversityWindowBatchSampler.configure(bank=bank, window=DiversityWindow(1, 16), processes=1)(
        ds, batch_size=16, drop_last=False)
    for b in s:
        texts = [anchors[i] for i in b]
        assert len(texts) == len(set(texts))


def test_bank_length_mismatch_and_oversized_batches_are_named(data):
    ds, bank = data
    with pytest.raises(ValueError, match="bank has 599 rows but the dataset has 600"):
        list(DiversityWindowBatchSampler.configure(bank=bank[:599], window=DiversityWindow(1, 16), processes=1)(
            ds, batch_size=16, drop_last=False))
    with pytest.raises(ValueError, match=r"global batch \(2 process\(es\) × 400\) is larger than the dataset"):
        DiversityWindowBatchSampler.configure(bank=bank, processes=2)(ds, batch_size=400, drop_last=False)


def test_auto_window_is_calibrated_on_the_bank(data):
    s = sampler(data, window="auto")
    w = s.window()
    assert isinstance(w, DiversityWindow) and 1 <= w.low <= w.high <= 16
    assert len(list(s)) == len(s)


def test_drop_in_sentence_transformer_trainer_trains(tiny_model_dir, tmp_path):
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    n = 64
    ds = Dataset.from_dict({"anchor": [f"word number {i} of {i % 5}" for i in range(n)],
                            "positive": [f"meaning {i * 7 % 13} item {i}" for i in range(n)]})
    bank = model.encode(ds["anchor"], convert_to_tensor=True, normalize_embeddings=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        batch_sampler=DiversityWindowBatchSampler.configure(bank=bank, window="auto", builder="greedy"),
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(trainer.get_train_dataloader().batch_sampler, DiversityWindowBatchSampler)


DIST_SCRIPT = r'''
import json, sys, torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import Dataset
from torch.utils.data import DataLoader
from hf_divcl.sampler import DiversityWindowBatchSampler
from hf_divcl import end_distributed
from hf_divcl.diversity.window import DiversityWindow

acc = Accelerator(cpu=True)
n = 300
gen = torch.Generator().manual_seed(0)
bank = F.normalize(torch.randn(n, 16, generator=gen), dim=-1)
ds = Dataset.from_dict({"idx": list(range(n))})
s = DiversityWindowBatchSampler.configure(bank=bank, window=DiversityWindow(1, 16), dedupe=False)(
    ds, batch_size=8, drop_last=True, seed=1)
assert s.processes == acc.num_processes
dl = acc.prepare(DataLoader(ds, batch_sampler=s, collate_fn=lambda rows: [r["idx"] for r in rows]))
out = {"rank": acc.process_index, "world": acc.num_processes, "full_plan": [list(b) for b in s],
       "shard": [list(b) for b in dl]}
json.dump(out, open(sys.argv[1] + f"/rank{acc.process_index}.json", "w"))
end_distributed()
'''


@pytest.mark.slow
def test_two_real_processes_share_the_plan_and_get_disjoint_shards(tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(DIST_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    str(script), str(tmp_path)], check=True, env=env, cwd=tmp_path, timeout=300)
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["full_plan"] == r1["full_plan"]  # same sequence on every rank
    rows0 = {x for b in r0["shard"] for x in b}
    rows1 = {x for b in r1["shard"] for x in b}
    assert not rows0 & rows1  # disjoint shards
    plan = r0["full_plan"]
    assert r0["shard"] == plan[0::2] and r1["shard"] == plan[1::2]
    # each global batch (one local batch per rank) is a planned 16-row batch
    assert len(rows0 | rows1) == len(plan) * 8 == (300 // 16) * 16


def test_sampler_reads_an_embedding_bank(data):
    from hf_divcl.bank import EmbeddingBank

    ds, emb = data
    bank = EmbeddingBank(len(ds), emb.shape[1], num_views=2)
    bank.update(torch.arange(len(ds)), torch.stack([emb, emb], 1), step=0)
    s = DiversityWindowBatchSampler.configure(bank=bank, window=DiversityWindow(1, 16), processes=1)(
        ds, batch_size=16, drop_last=False, seed=3)
    assert s.embeddings().dtype == torch.float16
    rows = sorted(r for b in s for r in b)
    assert rows == list(range(len(ds)))


@pytest.mark.slow
def test_default_model_drop_in_trains_minilm_on_wordnet(tmp_path, monkeypatch):
    """`configure(default_model=True)`: the bank (anchors and positives) comes from the packaged MiniLM, cached."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.models.loading import load_sentence_transformer

    ds = wordnet_pairs("example", source="embedded", limit=256).select_columns(["anchor", "positive"])
    model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=16, learning_rate=5e-5,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        batch_sampler=DiversityWindowBatchSampler.configure(default_model=True))
    monkeypatch.setenv("HF_DIVCL_CACHE", str(tmp_path / "cache"))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=MultipleNegativesRankingLoss(model))
    before = next(model.parameters()).detach().clone()
    trainer.train()
    sampler = trainer.get_train_dataloader().batch_sampler
    assert isinstance(sampler, DiversityWindowBatchSampler)
    assert isinstance(sampler.window(), DiversityWindow) and 0 <= sampler.plan().in_window_fraction <= 1
    assert sampler._bank.num_views == 2 and sampler._bank.source == "cache"  # encoded once, then from the cache
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses)
    assert not torch.equal(before, next(model.parameters()).detach())


def _tiny_trainer(tiny_model_dir, tmp_path, batch_sampler):
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    ds = Dataset.from_dict({"anchor": [f"word {i}" for i in range(32)], "positive": [f"gloss {i}" for i in range(32)]})
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                                                report_to=[], save_strategy="no", use_cpu=True,
                                                batch_sampler=batch_sampler)
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                      loss=MultipleNegativesRankingLoss(model))


def test_a_sampler_instance_instead_of_the_class_is_a_clear_error(data, tiny_model_dir, tmp_path):
    instance = sampler(data)
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, batch_sampler=instance)
    with pytest.raises(TypeError, match=r"got a DiversityWindowBatchSampler \*instance\*.*Pass the class"):
        trainer.train()


def test_no_bank_and_no_default_model_asks_for_a_bank(tiny_model_dir, tmp_path):
    trainer = _tiny_trainer(tiny_model_dir, tmp_path, batch_sampler=DiversityWindowBatchSampler)
    with pytest.raises(ValueError, match=r"needs a bank .*EmbeddingBank\.from_reference.*default_model=True"):
        trainer.train()


def test_auto_window_is_calibrated_on_the_real_positives(data):
    from hf_divcl.bank import EmbeddingBank
    from hf_divcl.policies.calibration import calibrate_window

    ds, anchors = data
    gen = torch.Generator().manual_seed(1)
    positives = F.normalize(anchors.float() + 0.3 * torch.randn(anchors.shape, generator=gen), dim=-1)
    bank = EmbeddingBank(len(ds), anchors.shape[1], num_views=2)
    bank.update(torch.arange(len(ds)), torch.stack([anchors, positives], 1), step=0)
    s = DiversityWindowBatchSampler.configure(bank=bank, window="auto", processes=1)(ds, batch_size=16,
                                                                                      drop_last=False, seed=3)
    x = bank.all(view=0, dtype=torch.float32)
    paired = calibrate_window(x, 16, 0.05, seed=3, positives=bank.all(view=1, dtype=torch.float32))
    assert s.window() == paired.window
    by_tensor = DiversityWindowBatchSampler.configure(bank=anchors, positives=positives, window="auto", processes=1)(
        ds, batch_size=16, drop_last=False, seed=3)
    assert by_tensor.window() == calibrate_window(anchors.float(), 16, 0.05, seed=3, positives=positives).window


def test_few_planned_batches_in_the_window_is_a_warning_that_says_what_to_do(data, caplog):
    s = sampler(data, window=DiversityWindow(9.0, 9.02))  # inside the reachable range, but a sliver
    with caplog.at_level("WARNING", logger="hf_divcl.sampler"):
        plan = s.plan()
    assert plan.in_window_fraction < 0.5
    assert f"only {100 * plan.in_window_fraction:.0f}% of the {len(plan.batches)} planned batches" in caplog.text
    assert "calibrate it on this data" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_divcl.sampler"):
        sampler(data, window=DiversityWindow(1, 16)).plan()
    assert "planned batches" not in caplog.text


# -- a mid-epoch re-plan in parts (a window chosen during training) ---------------------------------------------------

def switched_sampler(bank, ds, chunk_rows=128, yielded=4, poison_row=None):
    """A sampler on random batches that has handed out ``yielded`` batches, then re-plans towards a window (with
    ``poison_row``: after that row's embedding turned NaN)."""
    s = DiversityWindowBatchSampler(ds, batch_size=16, drop_last=False, seed=5, bank=bank, window=None,
                                    builder="random", processes=1, replan_chunk_rows=chunk_rows)
    s.set_epoch(0)
    it = iter(s)
    head = [next(it) for _ in range(yielded)]
    if poison_row is not None:
        bank[poison_row] = float("nan")
    s.set_policy("greedy", DiversityWindow(8, 14))
    s.replan(yielded)
    return s, it, head


def test_a_replan_in_parts_keeps_every_row_once_and_plans_every_part():
    ds, bank = make_data(n=1200)
    s, it, head = switched_sampler(bank, ds)
    plan = s.plan()
    assert plan.builder["replan_parts"] > 2  # 1,136 rows left in parts of at most 128 rows
    rest = list(it)
    batches = head + rest
    assert sorted(x for b in batches for x in b) == list(range(1200))
    assert batches[:4] == [b.tolist() for b in plan.batches[:4]]  # the batches already handed out are kept
    full = [i for i, b in enumerate(plan.batches) if i >= 4 and b.numel() == 16]
    assert not plan.values[full].isnan().any()  # every part was planned and measured, none left random
    assert plan.in_window[full].float().mean() > 0.5
    assert s.background_plan_seconds > 0


def test_a_replan_in_parts_does_not_depend_on_timing_and_resumes_exactly():
    ds, bank = make_data(n=1200)
    a, it_a, _ = switched_sampler(bank, ds)
    rest_a = list(it_a)  # the data loader waits for each part as it reaches it
    b, _, _ = switched_sampler(bank, ds)
    state = b.state_dict()  # a checkpoint right after the decision waits for every part
    assert torch.equal(state["plan_rows"], torch.cat(a.plan().batches))
    c = DiversityWindowBatchSampler(ds, batch_size=16, drop_last=False, seed=5, bank=bank, window=None,
                                    builder="random", processes=1, replan_chunk_rows=128)
    c.load_state_dict(state)
    assert list(c) == rest_a


def test_a_part_that_cannot_be_planned_keeps_random_batches_and_says_so(caplog):
    ds, bank = make_data(n=1200)
    probe, _, _ = switched_sampler(bank, ds)
    planned_now = set(torch.cat(probe.plan().batches[:4 + 8]).tolist())  # handed out + the first part (8 batches)
    bad = next(r for r in range(1200) if r not in planned_now)
    with caplog.at_level("WARNING", logger="hf_divcl.sampler"):
        s, it, head = switched_sampler(bank.clone(), ds, poison_row=bad)
        rest = list(it)
    assert "Planning part" in caplog.text and "stay in random batches" in caplog.text
    assert sorted(x for b in head + rest for x in b) == list(range(1200))  # no row lost or repeated
    assert s.plan().values[4:12].isnan().sum() == 0  # the first part was planned
    assert s.plan().values[12:].isnan().any()  # the failed part kept its (unmeasured) random batches


def test_a_bank_that_changes_after_the_decision_does_not_change_the_parts():
    """An EmbeddingBank is read live by the background parts and copied only when it is about to change: a bank
    updated right after the decision (as training steps update it) gives the same plan as an untouched one."""
    from hf_divcl.bank import EmbeddingBank

    ds, x = make_data(n=1200)

    def bank():
        b = EmbeddingBank(1200, x.shape[1], dtype=torch.float32)
        b.update(torch.arange(1200), x)
        return b

    _, it_still, _ = switched_sampler(bank(), ds)
    rest_still = list(it_still)
    moving_bank = bank()
    _, it_moving, _ = switched_sampler(moving_bank, ds)
    moving_bank.update(torch.arange(1200), torch.randn(1200, x.shape[1]), step=5)  # every row moves
    assert list(it_moving) == rest_still
    assert not moving_bank.__dict__.get("_write_listeners")  # the re-plan is done: the bank is not watched


def test_a_copy_during_a_replan_in_parts_carries_the_whole_plan_and_close_keeps_the_sampler_working():
    """A pickled or deep-copied sampler whose re-plan is still being planned in the background waits for every part
    and hands out the same epoch as the original; ``close`` stops the background thread and the sampler goes on."""
    import copy
    import pickle

    ds, bank = make_data(n=1200)
    s, it, head = switched_sampler(bank, ds)
    clone, deep = pickle.loads(pickle.dumps(s)), copy.deepcopy(s)
    epoch = head + list(it)
    assert list(clone) == list(deep) == epoch
    assert clone.plan().builder["replan_parts"] > 2 and not clone.plan().values[4:-1].isnan().any()
    s.close()
    assert list(s) == epoch
    s.set_epoch(1)
    assert sorted(x for b in s for x in b) == list(range(1200))


def test_image_duplicate_groups_follow_a_selected_or_shuffled_dataset():
    """Rows with the same image bytes share a duplicate group in the order the sampler sees the rows, also after
    ``select`` / ``shuffle`` (an index mapping over the Arrow table)."""
    import io

    from datasets import Features, Image
    from PIL import Image as PILImage

    from hf_divcl.planning.dataset import row_duplicate_groups

    def png(value):
        buf = io.BytesIO()
        PILImage.new("L", (4, 4), value).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    shades = [1, 2, 1, 3, 4, 2]
    ds = Dataset.from_dict({"image": [png(v) for v in shades]}, features=Features({"image": Image()}))
    for view in (ds, ds.select([5, 4, 3, 2, 1, 0]), ds.shuffle(seed=3)):
        values = [row["image"].getpixel((0, 0)) for row in view]  # each row's shade, as the sampler sees the row
        groups = row_duplicate_groups(view).tolist()
        same = {(i, j) for i in range(6) for j in range(6) if values[i] == values[j]}
        assert {(i, j) for i in range(6) for j in range(6) if groups[i] == groups[j]} == same
