"""Whole-run wall clock: the default ``DivCLTrainer`` against a plain ``SentenceTransformerTrainer`` with
MultipleNegativesRankingLoss (scale 20 = τ 0.05) on a one-epoch fine-tune, side by side in one process.

Everything a user waits for is on the clock: building the trainer (validation, duplicate groups), any reference
encoding of the bank, calibrations, planning, the training steps and logging. Runs alternate (plain, divcl,
plain, divcl, …) so that machine drift hits both alike; the ratio of medians is reported.

    python benchmarks/whole_run.py                 # MiniLM, 6,400 WordNet pairs, B = 32: one epoch of 200 steps
    python benchmarks/whole_run.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def one_run(kind: str, data, a, workdir: Path) -> dict:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from hf_divcl.models.loading import load_sentence_transformer
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
    common = dict(output_dir=str(workdir / f"{kind}-{time.perf_counter_ns()}"),
                  per_device_train_batch_size=a.batch_size,
                  num_train_epochs=1, learning_rate=5e-5, report_to=[], disable_tqdm=True, save_strategy="no",
                  seed=0, logging_steps=10)
    t0 = time.perf_counter()
    if kind == "plain":
        trainer = SentenceTransformerTrainer(model=model, args=SentenceTransformerTrainingArguments(**common),
                                             train_dataset=data, loss=MultipleNegativesRankingLoss(model, scale=20.0))
    else:
        trainer = DivCLTrainer(model=model, args=DivCLTrainingArguments(
            **common, bank_cache_dir=str(workdir / f"cache-{time.perf_counter_ns()}")), train_dataset=data)
    trainer.train()
    seconds = time.perf_counter() - t0
    out = {"kind": kind, "seconds": seconds, "steps": trainer.state.global_step}
    if kind == "divcl":
        plan = getattr(trainer.policy, "plan", None)  # batch_policy="progress" / "explore" only
        runner = getattr(trainer.policy, "runner", None)
        out.update({"batch_policy": trainer.policy.name, "bank_encoded": trainer.bank is not None,
                    "calibration_seconds": runner.seconds if runner else 0.0,
                    "calibrations": [(h["step"], h["decision"]) for h in runner.history] if runner else [],
                    "calibration_plan": plan.to_dict() if plan else None})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=6400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1, help="runs of each kind (alternating)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    if a.smoke:
        a.rows, a.batch_size = 64, 8
    out = Path(a.output or (Path(tempfile.gettempdir()) / "whole_run_smoke.json" if a.smoke
                            else "benchmarks/results/whole_run.json"))

    import torch

    from hf_divcl.data.wordnet import wordnet_split

    source = "embedded" if a.smoke else "auto"
    data = wordnet_split(kind="example", split="train", source=source).select_columns(["anchor", "positive"])
    data = data.shuffle(seed=0).select(range(min(a.rows, len(data))))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeats):
            for kind in ("plain", "divcl"):
                r = one_run(kind, data, a, Path(tmp))
                runs.append(r)
                print(f"{kind:6s} {r['seconds']:.1f} s for {r['steps']} steps"
                      + (f" (bank encoded: {r['bank_encoded']}, calibration {r['calibration_seconds']:.1f} s, "
                         f"{r['calibrations']})" if kind == "divcl" else ""), flush=True)
    med = {k: statistics.median(r["seconds"] for r in runs if r["kind"] == k) for k in ("plain", "divcl")}
    result = {"config": vars(a), "runs": runs, "median_seconds": med, "ratio_divcl_over_plain": med["divcl"] /
              med["plain"], "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                        "python": sys.version.split()[0], "platform": platform.platform()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"whole-run ratio DivCLTrainer / plain: {result['ratio_divcl_over_plain']:.3f}; wrote {out}")


if __name__ == "__main__":
    main()
