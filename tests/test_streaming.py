"""Data larger than memory: a streaming ``datasets.IterableDataset`` trains with random batches and every diagnostic;
policies that need a bank say so before any step; bad rows in the stream's head are named before training."""

from __future__ import annotations

import pytest
from datasets import Dataset

from hf_divcl.data.validation import DatasetError
from hf_divcl.data.wordnet import wordnet_pairs
from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.trainer import DivCLTrainer


def stream(n=160, shuffle=True):
    pairs = wordnet_pairs(kind="example", source="embedded").select(range(n)).select_columns(["anchor", "positive"])
    data = pairs.to_iterable_dataset(num_shards=2)
    return data.shuffle(seed=0, buffer_size=64) if shuffle else data


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=1e-3, logging_steps=2,
                report_to=[], disable_tqdm=True, collapse_threshold=0, save_strategy="no", max_steps=6)
    base.update(kw)
    return DivCLTrainingArguments(**base)


def test_a_stream_trains_on_random_batches_with_the_diversity_log(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=args(tmp_path),
                           train_dataset=stream())
    trainer.train()
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert [r["step"] for r in log] == [2, 4, 6]
    assert all(r["divcl/global_batch_size"] == 16 and r["divcl/band_inside_fraction"] == 1.0 for r in log)
    assert all(1.0 <= r["divcl/effective_rank"] <= 16 for r in log)
    assert trainer.bank is None and trainer.divcl_sampler is None  # nothing planned, nothing encoded


def test_a_policy_that_needs_every_row_refuses_a_stream_and_names_what_to_do(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    a = args(tmp_path, batch_policy="window", batch_policy_kwargs={"window": "4:8"})
    with pytest.raises(DatasetError, match=r"batch_policy='window'.*streaming IterableDataset.*batch_policy='random'"):
        DivCLTrainer(model=model, args=a, train_dataset=stream())


def test_a_bad_row_in_the_head_of_a_stream_is_named_before_training(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    rows = [{"anchor": f"anchor {i}", "positive": f"positive {i}"} for i in range(40)]
    rows[7]["positive"] = "   "
    data = Dataset.from_list(rows).to_iterable_dataset()
    with pytest.raises(DatasetError, match=r"Row 7, column 'positive' is empty"):
        DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=args(tmp_path),
                     train_dataset=data)
