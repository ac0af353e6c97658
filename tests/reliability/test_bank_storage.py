"""A bank loaded from a saved copy (cache entry or checkpoint) never writes back to it; scratch files go away; a
cache folder that cannot be written costs the cache, never the run."""

from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path

import pytest
import torch

from hf_divcl.bank import EmbeddingBank


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_updating_a_memory_mapped_checkpoint_bank_leaves_the_checkpoint_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DIVCL_CACHE", str(tmp_path / "scratch"))
    saved = EmbeddingBank(64, 8, num_views=2)
    saved.update(torch.arange(64), torch.randn(64, 2, 8), step=3)
    saved.save(tmp_path / "checkpoint" / "bank")
    before = _digest(tmp_path / "checkpoint" / "bank" / "embeddings.npy")

    bank = EmbeddingBank.load(tmp_path / "checkpoint" / "bank", mmap=True)
    assert bank.is_memmapped and bank.path.parent == tmp_path / "checkpoint" / "bank"
    new = torch.randn(8, 2, 8)
    bank.update(torch.arange(8), new, step=9)  # a training step's embeddings
    assert bank.path.parent == tmp_path / "scratch"  # writes went to a private copy
    assert torch.allclose(bank.get(torch.arange(8), view=1), torch.nn.functional.normalize(new[:, 1], dim=-1),
                          atol=1e-3)
    assert torch.equal(bank.get(torch.arange(8, 64)), saved.get(torch.arange(8, 64)))
    assert _digest(tmp_path / "checkpoint" / "bank" / "embeddings.npy") == before
    assert torch.equal(EmbeddingBank.load(tmp_path / "checkpoint" / "bank").all(), saved.all())

    scratch = bank.path
    del bank
    gc.collect()
    assert not scratch.exists()  # the private copy is removed with the bank


def test_refresh_of_a_cached_bank_does_not_change_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DIVCL_CACHE", str(tmp_path / "scratch"))
    cached = EmbeddingBank(32, 4)
    cached.update(torch.arange(32), torch.randn(32, 4), step=0)
    cached.save(tmp_path / "cache" / "key")
    before = _digest(tmp_path / "cache" / "key" / "embeddings.npy")
    bank = EmbeddingBank.load(tmp_path / "cache" / "key", mmap=True)
    bank.load_state_dict({"embeddings": torch.zeros(32, 1, 4), "last_update_step": torch.zeros(32, dtype=torch.long)})
    assert _digest(tmp_path / "cache" / "key" / "embeddings.npy") == before
    assert float(bank.all().abs().sum()) == 0.0


def unwritable_folders(tmp_path):
    """Cache folders the kernel refuses to create, for any user (root included): a path below a regular file, and
    one on sysfs (read-only for directories)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return {"below_a_regular_file": blocker / "bank_cache", "on_read_only_sysfs": "/sys/fs/hf_divcl_bank_cache"}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["below_a_regular_file", "on_read_only_sysfs"])
def test_an_unwritable_bank_cache_folder_costs_the_cache_not_the_run(where, tiny_model_dir, tmp_path, caplog):
    """batch_policy="auto" needs a bank: with a cache folder that cannot be written, training runs to the end on a
    freshly encoded bank and a warning names the folder and what to do."""
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    cache = unwritable_folders(tmp_path)[where]
    with pytest.raises(OSError):  # the kernel really refuses it
        os.makedirs(Path(cache) / "probe")
    pairs = wordnet_pairs(kind="example", source="embedded").select(range(96)).select_columns(["anchor", "positive"])
    args = DivCLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, max_steps=4,
                                  logging_steps=2, report_to=[], disable_tqdm=True, save_strategy="no",
                                  batch_policy="auto", collapse_threshold=0, bank_cache_dir=str(cache))
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=args, train_dataset=pairs)
    with caplog.at_level("WARNING", logger="hf_divcl.bank"):
        trainer.train()
    assert trainer.state.global_step == 4 and trainer.bank is not None and not Path(cache).exists()
    assert f"Could not write the bank cache to {cache}" in caplog.text and "bank_cache_dir" in caplog.text
