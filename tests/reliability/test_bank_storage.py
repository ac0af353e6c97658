"""A bank loaded from a saved copy (cache entry or checkpoint) never writes back to it; scratch files go away."""

from __future__ import annotations

import gc
import hashlib

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
