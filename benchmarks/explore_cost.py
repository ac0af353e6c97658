"""What ``batch_policy="explore"`` costs, measured inside real runs, against the planner's cost model.

Each round trains the same model, data and seed twice in this process, in alternating order: once with
``batch_policy="random"`` (random batches, no exploration) and once with ``batch_policy="explore"`` held in
exploration for most of the run (``alpha`` = 10⁻⁹: the test never decides before ``max_blocks``), so every kind of
its work is exercised many times. The explorer times its own work by kind (probe refreshes, level-batch draws, step
scores, tests, the window's application); a step timer gives the plain run's median step. From these:

- each kind in *batch equivalents* (its seconds over the plain run's median step), next to the planner's model
  (``ExplorePlan.cost_per_refresh``, ``SCORE_COST``);
- the wall-clock the explore run took beyond the plain run, against the seconds the explorer accounted for (the
  rest is work it does not see, e.g. the held-out probe's smaller training set or noise).

    python benchmarks/explore_cost.py --task text      # MiniLM, WordNet pairs, B = 32, 150 steps, 2 rounds
    python benchmarks/explore_cost.py --task vision    # tiny ViT SimCLR, Fashion-MNIST, B = 128, 400 steps
    python benchmarks/explore_cost.py --smoke          # MiniLM, B = 8, 60 steps, 1 round (< 1 min)
    python benchmarks/explore_cost.py --score-only     # the step score alone: reference vs fused on MiniLM

Timings are only meaningful with nothing else running on the machine.
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


def task_setup(a):
    """``(train dataset, make_model(), extra training arguments)``."""
    if a.task == "vision":
        from sentence_transformers import SentenceTransformer

        from hf_divcl.data.images import fashion_mnist
        from hf_divcl.models.vision import build_tiny_vit_sentence_transformer

        train = fashion_mnist("train", limit=a.rows)
        tmp = Path(tempfile.mkdtemp(prefix="explore-cost-vit-"))
        path = build_tiny_vit_sentence_transformer(tmp / "vit", seed=0)
        return train, lambda: SentenceTransformer(path, device="cpu"), {
            "loss_kwargs": {"temperature": 0.2, "loss_type": "nt_xent"}, "learning_rate": 1e-3,
            "augment_scale_min": 0.5}
    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.models.loading import load_sentence_transformer

    train = wordnet_pairs(kind="example", source="embedded")
    train = train.select(range(min(a.rows, len(train)))).select_columns(["anchor", "positive"])
    return train, lambda: load_sentence_transformer("all-MiniLM-L6-v2", device="cpu"), {"learning_rate": 5e-5}


def run_once(window: str, a, setup, workdir: Path) -> dict:
    from step_time import _timer  # this script's folder is on the path when it runs

    from hf_divcl.experimental.explore_plan import POWER_LOOKS
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    train, make_model, extra = setup
    policy = {"batch_policy": "random"}  # window="none": random batches, no exploration
    if window == "explore":
        max_blocks = int(a.max_fraction * a.steps) // 3
        policy = {"batch_policy": "explore", "batch_policy_kwargs": {
            "budget": a.budget, "max_fraction": a.max_fraction, "min_blocks": max(2, max_blocks // POWER_LOOKS),
            "alpha": 1e-9, "recheck_blocks": 0, "levels": f"local:{a.batch_size},spread:4", "builder": "greedy"}}
    timer = _timer()
    args = DivCLTrainingArguments(
        output_dir=str(workdir / window), per_device_train_batch_size=a.batch_size, max_steps=a.steps, seed=0,
        report_to=[], disable_tqdm=True, save_strategy="no", logging_steps=max(1, a.steps // 4),
        collapse_threshold=0, bank_cache_dir=str(workdir / f"cache-{window}"), **policy, **extra)
    trainer = DivCLTrainer(model=make_model(), args=args, train_dataset=train, callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    out = {"window": window, "wall_s": wall, "median_step_s": statistics.median(timer.times[1:]),
           "steps": len(timer.times)}
    if window == "explore":
        ex = trainer.policy.runner
        if ex is None:
            reason = json.loads((workdir / window / "divcl_window.json").read_text()).get("reason", "")
            raise SystemExit(f"the explore run did not explore ({reason}): use more --steps or a larger --budget")
        out.update({"explorer_s": ex.seconds, "split_s": dict(ex.split), "passes": dict(ex.passes),
                    "plan": ex.plan.to_dict(), "decision": ex.history[-1]["decision"] if ex.history else None})
    return out


def summarise(rounds: list[dict], score_cost: float) -> dict:
    """Per round: each kind of work in batch equivalents (over the plain run's median step), and the explore run's
    extra wall-clock against what the explorer accounted for."""
    rows = []
    for r in rounds:
        plain, ex = r["none"], r["explore"]
        step = plain["median_step_s"]
        p, s = ex["passes"], ex["split_s"]
        rows.append({
            "plain_step_s": step,
            "refresh_batch_eq": s["refresh"] / max(1, p["probe_refreshes"]) / step,
            "refresh_model": ex["plan"]["cost_per_refresh"],
            "score_batch_eq": s["score"] / max(1, p["scored_steps"]) / step,
            "score_model": score_cost,
            "draw_batch_eq": s["draw"] / max(1, p["scored_steps"]) / step,
            "test_s": s["test"], "apply_s": s["apply"],
            "explorer_s": ex["explorer_s"],
            "extra_wall_s": ex["wall_s"] - plain["wall_s"],
            "explorer_fraction": ex["explorer_s"] / ex["wall_s"],
            "refreshes": p["probe_refreshes"], "scored_steps": p["scored_steps"],
        })
    keys = [k for k in rows[0] if k not in ("refresh_model", "score_model")]
    return {"rounds": rows, "median": {k: statistics.median(x[k] for x in rows) for k in keys},
            "refresh_model": rows[0]["refresh_model"], "score_model": score_cost}


def score_microbenchmark(a) -> dict:
    """The step score on the model's own parameters, AdamW state after one step: the reference
    (``step_score(grads, preconditioner(...))``) against the fused ``preconditioned_score``, ``--repeats`` each,
    alternating, with the same random gradients."""
    import torch

    from hf_divcl.experimental.preconditioner import preconditioned_score, preconditioner, step_score

    model = task_setup(a)[1]()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    probe = [torch.randn(p.shape, generator=gen) for p in params]
    times: dict[str, list[float]] = {"reference": [], "fused": []}
    values = {}
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        values["reference"] = step_score(grads, preconditioner(opt, params, grads)[0], probe, 1e-4).item()
        times["reference"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        values["fused"] = preconditioned_score(opt, params, grads, probe, 1e-4)[0].item()
        times["fused"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:] or v) for k, v in times.items()}  # the first call warms the allocator
    return {"parameters": sum(p.numel() for p in params), "tensors": len(params), "seconds": times,
            "median_s": med, "speedup": med["reference"] / med["fused"], "values": values,
            "relative_difference": abs(values["fused"] - values["reference"]) / abs(values["reference"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["text", "vision"], default="text")
    p.add_argument("--steps", type=int, default=None, help="per run (text 150, vision 400)")
    p.add_argument("--batch-size", type=int, default=None, help="text 32, vision 128")
    p.add_argument("--rows", type=int, default=None,
                   help="training rows (text: all 2,500 of the embedded sample; vision 8192)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--budget", type=float, default=0.3,
                   help="budget of the explore run: high, so that it refreshes several times")
    p.add_argument("--max-fraction", type=float, default=0.9, help="max_fraction of the explore run")
    p.add_argument("--score-only", action="store_true",
                   help="only time the step score (reference vs fused) on the model's parameters; writes "
                        "benchmarks/results/explore_score_{task}.json")
    p.add_argument("--repeats", type=int, default=6, help="--score-only: timings of each")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None, help="default: benchmarks/results/explore_cost_{task}.json")
    a = p.parse_args(argv)
    a.score_output = a.output if a.score_only else None
    text = a.task == "text"
    a.steps = a.steps or (60 if a.smoke else 150 if text else 400)
    a.batch_size = a.batch_size or (8 if a.smoke else 32 if text else 128)
    a.rows = a.rows or (300 if a.smoke else 2500 if text else 8192)
    a.rounds = 1 if a.smoke else a.rounds
    a.budget = 1.0 if a.smoke else a.budget
    smoke_out = str(Path(tempfile.gettempdir()) / f"explore_cost_{a.task}_smoke.json")
    a.output = a.output or (smoke_out if a.smoke else f"benchmarks/results/explore_cost_{a.task}.json")

    import torch

    from hf_divcl.experimental.cost import SCORE_COST

    machine = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
               "threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    if a.score_only:
        res = score_microbenchmark(a)
        print(f"step score over {res['parameters']:,} parameters ({res['tensors']} tensors): reference "
              f"{res['median_s']['reference']:.4f} s, fused {res['median_s']['fused']:.4f} s "
              f"({res['speedup']:.1f}x), relative difference {res['relative_difference']:.1e}")
        path = Path(a.score_output or f"benchmarks/results/explore_score_{a.task}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task": a.task, "result": res, "machine": machine}, indent=2) + "\n")
        print(f"wrote {path}")
        return 0

    setup = task_setup(a)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            res = {}
            for window in ("none", "explore") if r % 2 == 0 else ("explore", "none"):
                res[window] = run_once(window, a, setup, Path(tmp) / f"r{r}")
                print(f"round {r} {window:7s} wall {res[window]['wall_s']:.1f} s, median step "
                      f"{res[window]['median_step_s']:.3f} s", flush=True)
            rounds.append(res)
    summary = summarise(rounds, SCORE_COST)
    m = summary["median"]
    print(f"plain step {m['plain_step_s']:.3f} s; in batch equivalents (median over {a.rounds} rounds): refresh "
          f"{m['refresh_batch_eq']:.2f} (model {summary['refresh_model']:.2f}), step score {m['score_batch_eq']:.3f} "
          f"(model {SCORE_COST}), level draw {m['draw_batch_eq']:.3f}; explore run +{m['extra_wall_s']:.1f} s "
          f"wall-clock, explorer accounted for {m['explorer_s']:.1f} s")
    out = {"task": a.task, "config": {k: v for k, v in vars(a).items()}, "summary": summary, "runs": rounds,
           "machine": machine}
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
