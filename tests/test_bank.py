"""EmbeddingBank: compact storage, validated updates, staleness, atomic persistence, reference encoding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_divcl.bank import EmbeddingBank

ROOT = Path(__file__).resolve().parents[1]


def test_update_get_round_trip_normalises_and_stamps():
    bank = EmbeddingBank(10, 4, num_views=2)
    x = torch.randn(3, 2, 4)
    bank.update([1, 5, 7], x, step=3)
    got = bank.get([1, 5, 7], view=1)
    assert torch.allclose(got, F.normalize(x[:, 1], dim=-1), atol=1e-3)
    assert bank.last_update_step.tolist() == [-1, 3, -1, -1, -1, 3, -1, 3, -1, -1]
    bank.update(torch.tensor([2]), torch.randn(1, 4), view=1, step=4)
    assert bank.get([2], view=0).abs().sum() == 0 and bank.get([2], view=1).norm() == pytest.approx(1, abs=1e-3)
    assert bank.all().dtype == torch.float16 and bank.all().shape == (10, 4)
    assert bank.filled_fraction == pytest.approx(0.4)


def test_bad_rows_are_named_and_nothing_is_written():
    bank = EmbeddingBank(6, 3)
    bank.update(torch.arange(6), torch.randn(6, 3), step=0)
    before = bank.all().clone()
    x = torch.randn(3, 3)
    x[1, 0] = float("nan")
    x[2] = 0
    with pytest.raises(ValueError, match=r"rows \[4, 5\] are NaN/Inf or zero; nothing was written"):
        bank.update([3, 4, 5], x, step=1)
    assert torch.equal(bank.all(), before) and bank.last_update_step.tolist() == [0] * 6
    with pytest.raises(ValueError, match=r"Row indices \[6\] are out of range for a bank of 6 rows"):
        bank.update([6], torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        bank.update([0, 1], torch.randn(2, 5))
    with pytest.raises(ValueError, match="view 2 out of range"):
        bank.update([0], torch.randn(1, 3), view=2)


def test_staleness():
    bank = EmbeddingBank(4, 2)
    bank.update([0, 1], torch.randn(2, 2), step=10)
    bank.update([2], torch.randn(1, 2), step=4)
    s = bank.staleness(12)
    assert s["mean"] == pytest.approx((2 + 2 + 8) / 3) and s["max"] == 8 and s["never_filled_fraction"] == 0.25


def test_memmapped_bank_behaves_like_ram_and_lives_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DIVCL_CACHE", str(tmp_path))
    ram = EmbeddingBank(50, 8)
    mm = EmbeddingBank(50, 8, mmap_threshold_bytes=100)
    assert mm.is_memmapped and mm.path.parent == tmp_path and mm.path.is_file() and not ram.is_memmapped
    x = torch.randn(50, 8)
    for b in (ram, mm):
        b.update(torch.arange(50), x, step=1)
    assert torch.equal(ram.all(), mm.all())


def test_save_load_round_trip_and_atomicity(tmp_path):
    bank = EmbeddingBank(20, 6, num_views=2)
    bank.update(torch.arange(20), torch.randn(20, 2, 6), step=7)
    bank.save(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["bank.json", "embeddings.npy",
                                                                 "last_update_step.npy"]
    for mmap in (False, True):
        back = EmbeddingBank.load(tmp_path / "b", mmap=mmap)
        assert torch.equal(back.all(view=1), bank.all(view=1)) and back.last_update_step.tolist() == [7] * 20
        assert back.is_memmapped == mmap
    # an interrupted save: data written, metadata never renamed into place → not a bank
    (tmp_path / "half").mkdir()
    np.save(tmp_path / "half" / "embeddings.npy", np.zeros((2, 1, 3), np.float16))
    (tmp_path / "half" / ".bank.json.tmp").write_text("{")
    with pytest.raises(FileNotFoundError, match="holds no complete bank"):
        EmbeddingBank.load(tmp_path / "half")


def test_corrupt_bank_gives_a_clear_error(tmp_path):
    bank = EmbeddingBank(5, 3)
    bank.save(tmp_path)
    (tmp_path / "embeddings.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="is corrupt"):
        EmbeddingBank.load(tmp_path)


def test_bank_files_are_never_unpickled(tmp_path):
    bank = EmbeddingBank(3, 2)
    bank.save(tmp_path)
    np.save(tmp_path / "embeddings.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="is corrupt"):
        EmbeddingBank.load(tmp_path)


def test_one_million_rows_fit_in_768_mb_float16():
    bank = EmbeddingBank(1_000_000, 384, path=None, mmap_threshold_bytes=2**40)
    assert bank.nbytes == 768_000_000


def test_from_reference_encodes_once_then_uses_the_cache(tiny_model_dir, tmp_path):
    from hf_divcl.models.loading import load_sentence_transformer

    model = load_sentence_transformer(tiny_model_dir, device="cpu")
    anchors = [f"word {i} topic {i % 3}" for i in range(30)]
    positives = [f"meaning number {i}" for i in range(30)]
    bank = EmbeddingBank.from_reference(model, [anchors, positives], batch_size=8, cache_dir=tmp_path,
                                        show_progress_bar=False)
    assert bank.source == "reference" and bank.num_views == 2 and bank.num_rows == 30
    ref = model.encode(positives, convert_to_tensor=True, normalize_embeddings=True)
    assert torch.allclose(bank.all(view=1, dtype=torch.float32), ref, atol=2e-3)
    again = EmbeddingBank.from_reference(model, [anchors, positives], cache_dir=tmp_path, show_progress_bar=False)
    assert again.source == "cache" and torch.equal(again.all(view=1), bank.all(view=1))
    other = EmbeddingBank.from_reference(model, [anchors, positives[::-1]], cache_dir=tmp_path,
                                         show_progress_bar=False)
    assert other.source == "reference"
    bank.refresh(model, [anchors, positives], step=5, show_progress_bar=False)
    assert bank.last_update_step.tolist() == [5] * 30 and bank.source == "refresh"


DIST = r'''
import json, sys, torch
import torch.distributed as dist
from hf_divcl import end_distributed
from hf_divcl.bank import EmbeddingBank
from hf_divcl.models.loading import load_sentence_transformer
dist.init_process_group("gloo")
model = load_sentence_transformer(sys.argv[1], device="cpu")
texts = [f"sentence number {i} about {i % 4}" for i in range(23)]
bank = EmbeddingBank.from_reference(model, texts, batch_size=4, show_progress_bar=False)
torch.save(bank.all(dtype=torch.float32), f"{sys.argv[2]}/rank{dist.get_rank()}.pt")
end_distributed()  # barrier first: a rank tearing down while another still saves can abort
'''


@pytest.mark.slow
def test_two_processes_encode_shards_and_end_with_the_same_bank(tiny_model_dir, tmp_path):
    from hf_divcl.models.loading import load_sentence_transformer

    script = tmp_path / "d.py"
    script.write_text(DIST)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), tiny_model_dir, str(tmp_path)],
                          env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(r0, r1)
    model = load_sentence_transformer(tiny_model_dir, device="cpu")
    single = EmbeddingBank.from_reference(model, [f"sentence number {i} about {i % 4}" for i in range(23)],
                                          show_progress_bar=False).all(dtype=torch.float32)
    assert torch.allclose(r0, single, atol=2e-3)
