"""Progress calibration on a real model: does the first-order estimate predict the lookahead, what does each cost,
and which level does each pick at each τ?

On all-MiniLM-L6-v2 and WordNet example → gloss pairs, with the probe set, candidate sample and levels that
``batch_policy="progress"`` uses, every scored batch is measured both ways, side by side:

- ``lookahead``: one step (direction sign(g), length lr), held-out probe loss before − after, weights restored;
- ``first_order``: lr·⟨sign(g), ∇θ L_probe⟩.

Reported per τ: Pearson and Spearman correlation of the two over all scored batches and over the paired
differences (level − random), seconds per scored batch of each, and the decision each estimate reaches (paired
t-intervals, 90 %). Compare the decisions with ``window_location.py``'s measured best level at the same τ.

    python benchmarks/progress_calibration.py                 # τ = 0.05 and 0.5, 8 pairs per level
    python benchmarks/progress_calibration.py --smoke
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05, 0.5])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--sample-rows", type=int, default=0, help="0: as DivCLTrainer (8 × B)")
    p.add_argument("--source", default="auto")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    if a.smoke:
        a.temperatures, a.pairs, a.batch_size, a.source = [0.1], 2, 8, "embedded"
    out = Path(a.output or (Path(tempfile.gettempdir()) / "progress_calibration_smoke.json" if a.smoke
                            else "benchmarks/results/progress_calibration.json"))

    import torch
    from scipy.stats import pearsonr, spearmanr

    from hf_divcl.data.wordnet import wordnet_split
    from hf_divcl.experimental.follower import ProbeEnv, calibration_sample, probe_losses, rows_loss
    from hf_divcl.experimental.progress import StepGain, calibrate_progress, decide
    from hf_divcl.models.loading import load_sentence_transformer
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    train = wordnet_split(kind="example", split="train", source=a.source).select_columns(["anchor", "positive"])
    if a.smoke:
        train = train.select(range(200))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for tau in a.temperatures:
            model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
            args = DivCLTrainingArguments(
                output_dir=str(Path(tmp) / f"t{tau}"), per_device_train_batch_size=a.batch_size, max_steps=300,
                learning_rate=a.lr, loss_kwargs={"temperature": tau}, batch_policy="progress",
                batch_policy_kwargs={"pairs": a.pairs, "sample_rows": a.sample_rows}, report_to=[],
                disable_tqdm=True, save_strategy="no", seed=0)
            trainer = DivCLTrainer(model=model, args=args, train_dataset=train)
            plan, probe = trainer.policy.plan, trainer.policy.probe_dataset
            record: list[dict] = []
            with ProbeEnv(trainer):
                rows, anchors = calibration_sample(trainer, plan.sample_rows, seed=0)
                params = [p for p in trainer.model.parameters() if p.requires_grad]

                def loss_of(idx, rows=rows, trainer=trainer):
                    return rows_loss(trainer, rows[idx])

                probe_of = functools.partial(probe_losses, trainer, probe)
                fo = StepGain(params, loss_of, probe_of, a.lr, estimate="first_order")
                la = StepGain(params, loss_of, probe_of, a.lr, estimate="lookahead")
                fo.probe_gradient()
                la._probe_loss = la.probe_loss()

                def both(idx, fo=fo, la=la, record=record):
                    t0 = time.perf_counter()
                    g_fo = fo(idx)
                    t1 = time.perf_counter()
                    g_la = la(idx)
                    t2 = time.perf_counter()
                    record.append({"first_order": g_fo, "lookahead": g_la, "fo_seconds": t1 - t0,
                                   "la_seconds": t2 - t1})
                    return g_la

                cal = calibrate_progress(anchors, trainer.global_batch_size(), tau, both, levels=plan.levels,
                                         n_pairs=a.pairs, estimate="lookahead")
            names = ["random", *plan.levels]
            k = len(names)
            fo_v = torch.tensor([r["first_order"] for r in record]).view(a.pairs, k)
            la_v = torch.tensor([r["lookahead"] for r in record]).view(a.pairs, k)
            fo_d = {n: fo_v[:, i] - fo_v[:, 0] for i, n in enumerate(names) if i}
            la_d = {n: la_v[:, i] - la_v[:, 0] for i, n in enumerate(names) if i}
            fo_win, fo_stats = decide(fo_d, 0.9)
            la_win, la_stats = decide(la_d, 0.9)
            flat_fo, flat_la = fo_v.flatten().tolist(), la_v.flatten().tolist()
            dfo = torch.cat(list(fo_d.values())).tolist()
            dla = torch.cat(list(la_d.values())).tolist()
            row = {"temperature": tau, "levels": names, "n_pairs": a.pairs,
                   "level_metric": {r["level"]: r["metric"] for r in cal.levels} | {"random": cal.random_metric},
                   "pearson_gain": pearsonr(flat_fo, flat_la).statistic,
                   "spearman_gain": spearmanr(flat_fo, flat_la).statistic,
                   "pearson_paired_diff": pearsonr(dfo, dla).statistic if len(dfo) > 2 else None,
                   "spearman_paired_diff": spearmanr(dfo, dla).statistic if len(dfo) > 2 else None,
                   "first_order_seconds_per_batch": sum(r["fo_seconds"] for r in record) / len(record),
                   "lookahead_seconds_per_batch": sum(r["la_seconds"] for r in record) / len(record),
                   "first_order_decision": fo_win or "random", "lookahead_decision": la_win or "random",
                   "first_order_intervals": {n: list(v) for n, v in fo_stats.items()},
                   "lookahead_intervals": {n: list(v) for n, v in la_stats.items()},
                   "gains": {"first_order": fo_v.tolist(), "lookahead": la_v.tolist()}}
            results.append(row)
            print(f"τ={tau}: corr(first-order, lookahead) pearson {row['pearson_gain']:.3f} spearman "
                  f"{row['spearman_gain']:.3f}; paired diffs pearson {row['pearson_paired_diff']}; s/batch "
                  f"{row['first_order_seconds_per_batch']:.2f} vs {row['lookahead_seconds_per_batch']:.2f}; "
                  f"decision first-order {row['first_order_decision']}, lookahead {row['lookahead_decision']}",
                  flush=True)
            for n in names[1:]:
                print(f"   {n:>10} eff.rank {row['level_metric'][n]:.1f} (random {row['level_metric']['random']:.1f})"
                      f"  first-order {fo_stats[n]}  lookahead {la_stats[n]}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(a), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
