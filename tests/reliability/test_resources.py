"""Resource limits: a bank several times larger than the memory a process may use is memory-mapped and works;
a training run that runs out of memory stops at once with advice (phase, what to change, where to resume)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LARGE_BANK = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import numpy as np, torch
    from hf_divcl.bank import EmbeddingBank

    d = Path(sys.argv[1])
    rows, views, dim = 1_500_000, 2, 384                     # 2.2 GB of float16
    d.mkdir(parents=True)
    np.lib.format.open_memmap(d / "embeddings.npy", mode="w+", dtype=np.float16, shape=(rows, views, dim)).flush()
    np.save(d / "last_update_step.npy", np.zeros(rows, dtype=np.int64))
    (d / "bank.json").write_text(json.dumps({"format": "hf_divcl.bank/1", "num_rows": rows, "num_views": views,
                                             "dim": dim, "dtype": "float16", "source": "test"}))
    vmdata = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmData"))
    cap = vmdata + 300 * 2**20                               # 300 MiB more private memory than now
    resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.RLIM_INFINITY))
    try:
        np.load(d / "embeddings.npy")
        print("LOADED WHOLE")
    except MemoryError:
        print("whole load refused")                          # the bank really exceeds what the process may use
    bank = EmbeddingBank.load(d)
    print("memmapped", bank.is_memmapped, bank.nbytes // 2**20)
    x = bank.get(torch.arange(0, rows, 1000), view=1)
    print("read", tuple(x.shape), float(x.abs().sum()))
    fresh = EmbeddingBank(rows, dim, num_views=views)        # a new bank of this size goes to disk too
    fresh.update(torch.arange(10_000), torch.randn(10_000, views, dim), step=1)
    print("fresh", fresh.is_memmapped, round(float(fresh.get(torch.arange(10_000)).norm(dim=-1).mean()), 2))
""")


def test_bank_larger_than_the_memory_cap_is_memory_mapped_not_loaded(tmp_path):
    env = {"HF_DIVCL_CACHE": str(tmp_path / "scratch"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", LARGE_BANK, str(tmp_path / "bank")], capture_output=True, text=True,
                         timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines == ["whole load refused", "memmapped True 2197", "read (1500, 384) 0.0", "fresh True 1.0"]


@pytest.mark.slow
def test_out_of_memory_mid_training_stops_with_advice_and_the_run_resumes(tiny_model_dir, tmp_path):
    """At step 5 an allocation fails under a memory cap (RLIMIT_DATA): the run stops at once with advice naming
    the phase and the last complete checkpoint; resuming from it finishes the epoch with every row used once."""
    out = tmp_path / "run"
    script = [sys.executable, str(ROOT / "tests" / "divcl_run.py"), tiny_model_dir, str(out), "--save-steps", "2"]
    run = subprocess.run([*script, "--oom-at-step", "5"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("hf_divcl.training.guards.OutOfMemoryAdvice: Out of memory at training step 5 ")
    assert "can't allocate memory" in last and "Try: lower per_device_train_batch_size" in last
    assert f"The last complete checkpoint is '{out / 'checkpoint-4'}'" in last
    assert "resume_from_checkpoint=True" in last
    done = [json.loads(line) for line in (out / "rows_rank0.jsonl").read_text().splitlines()]
    (out / "rows_rank0.jsonl").unlink()
    again = subprocess.run([*script, "--resume"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    after = [json.loads(line) for line in (out / "rows_rank0.jsonl").read_text().splitlines()]
    assert after[0]["step"] == 5
    rows = Counter(x for r in done if r["step"] <= 4 for x in r["rows"]) + Counter(x for r in after for x in r["rows"])
    assert sorted(rows) == list(range(200)) and set(rows.values()) == {1}
