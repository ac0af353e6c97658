"""Step time of ``DivCLTrainer`` (greedy builder, training-fed bank, full logging) against a plain
``SentenceTransformerTrainer`` (default batch sampler, MultipleNegativesRankingLoss at scale 20 = τ 0.05), same
model, data and batch size, measured in alternating blocks in one process.

Per-step wall time comes from a callback (``on_step_begin`` → ``on_step_end``: forward, backward, optimiser step
and, for DivCL, the per-step bookkeeping); the per-epoch planning and the one-off reference encoding are reported
separately, as are the time inside DivCL's bookkeeping and the logging steps.

    python benchmarks/step_time.py                     # MiniLM, WordNet pairs, B = 32, 4 × 2 blocks of 25 steps
    python benchmarks/step_time.py --smoke             # B = 8, 2 × 2 blocks of 3 steps (< 1 min)
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


def _timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t0)

    return StepTimer()


def run_block(kind: str, data, args_ns, workdir: Path) -> dict:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from hf_divcl.models.loading import load_sentence_transformer
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    model = load_sentence_transformer(args_ns.model, device="cpu")
    timer = _timer()
    common = dict(output_dir=str(workdir / kind), per_device_train_batch_size=args_ns.batch_size,
                  max_steps=args_ns.steps, learning_rate=2e-5, report_to=[], disable_tqdm=True, save_strategy="no",
                  seed=0, logging_steps=args_ns.logging_steps)
    t0 = time.perf_counter()
    if kind == "plain":
        trainer = SentenceTransformerTrainer(model=model, args=SentenceTransformerTrainingArguments(**common),
                                             train_dataset=data, loss=MultipleNegativesRankingLoss(model),
                                             callbacks=[timer])
    else:
        trainer = DivCLTrainer(model=model, args=DivCLTrainingArguments(
            **common, batch_policy="progress", batch_policy_kwargs={"builder": "greedy"}, bank_source="training",
            bank_cache_dir=str(workdir / "bank_cache"), collapse_threshold=1.5), train_dataset=data, callbacks=[timer])
    trainer.train()
    total = time.perf_counter() - t0
    steps = timer.times[1:]  # the first step includes dataloader start-up (and DivCL's planning of the epoch)
    out = {"kind": kind, "median_step_s": statistics.median(steps), "mean_step_s": statistics.fmean(steps),
           "first_step_s": timer.times[0], "wall_s": total, "steps": len(timer.times)}
    if kind == "divcl":
        out["planning_s"] = trainer.divcl_sampler.plan_seconds
        out["bookkeeping_s"] = trainer.diversity.bookkeeping_seconds
        out["bank_seconds"] = getattr(trainer, "bank_seconds", 0.0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--rows", type=int, default=2500)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None, help="default: results/step_time.json; a temp file with --smoke")
    a = p.parse_args()
    smoke_out = str(Path(tempfile.gettempdir()) / "step_time_smoke.json")
    a.output = a.output or (smoke_out if a.smoke else "benchmarks/results/step_time.json")
    if a.smoke:
        a.batch_size, a.steps, a.rounds, a.rows, a.logging_steps = 8, 3, 2, 200, 2

    import torch

    from hf_divcl.data.wordnet import wordnet_pairs

    data = wordnet_pairs(kind="example", source="embedded").select(range(a.rows)).select_columns(
        ["anchor", "positive"])
    results: dict[str, list[dict]] = {"plain": [], "divcl": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for kind in ("plain", "divcl") if r % 2 == 0 else ("divcl", "plain"):
                res = run_block(kind, data, a, Path(tmp))
                results[kind].append(res)
                print(f"round {r} {kind:6s} median step {res['median_step_s']:.3f} s", flush=True)
    med = {k: statistics.median(x["median_step_s"] for x in v) for k, v in results.items()}
    d = results["divcl"]
    summary = {
        "ratio_median_step": med["divcl"] / med["plain"],
        "plain_median_step_s": med["plain"], "divcl_median_step_s": med["divcl"],
        "divcl_planning_s_per_epoch_start": statistics.median(x["planning_s"] for x in d),
        "divcl_bookkeeping_s_per_step": statistics.median(x["bookkeeping_s"] / x["steps"] for x in d),
        "reference_encoding_s_first_run": d[0]["bank_seconds"],
    }
    out = {"config": vars(a), "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                          "python": sys.version.split()[0], "platform": platform.platform()},
           "summary": summary, "blocks": results}
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
