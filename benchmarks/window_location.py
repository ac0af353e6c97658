"""Where is the window? On real embeddings, training progress against the diversity of the training batches, at
several temperatures — and does the best level sit where ``calibrate_window`` predicts?

For each τ: calibrate the window on all-MiniLM-L6-v2 embeddings of the WordNet training pairs (predicted: the
window and its centre); then train short runs whose batches are built (greedy builder) inside fixed windows at
diversity levels spread over the achievable range — from tight neighbourhoods to spread-out batches — and
measure the held-out InfoNCE (at the same τ) and ndcg@10 after training, plus the mean per-anchor gradient
norm logged during training. The measured optimum is the level with the best held-out ndcg@10.

    python benchmarks/window_location.py                      # τ = 0.05 0.1 0.5, 4 levels, 30 steps, B = 32
    python benchmarks/window_location.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05, 0.1, 0.5])
    p.add_argument("--levels", type=int, default=4, help="fixed windows spread over the achievable range")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None, help="default: results/window_location.json; a temp file with --smoke")
    a = p.parse_args()
    smoke_out = str(Path(tempfile.gettempdir()) / "window_location_smoke.json")
    a.output = a.output or (smoke_out if a.smoke else "benchmarks/results/window_location.json")
    if a.smoke:
        a.temperatures, a.levels, a.steps, a.batch_size = [0.1], 2, 2, 8

    import torch

    from hf_divcl.data.wordnet import wordnet_split
    from hf_divcl.diversity.levels import default_levels, draw_level
    from hf_divcl.diversity.window import DiversityWindow, measure_diversity
    from hf_divcl.evaluation.retrieval import retrieval_metrics
    from hf_divcl.losses.maths import contrastive_loss
    from hf_divcl.models.loading import load_sentence_transformer
    from hf_divcl.policies.calibration import calibrate_window
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    train = wordnet_split(kind="example", split="train", source="embedded").select_columns(["anchor", "positive"])
    test = wordnet_split(kind="example", split="test", source="embedded")
    if a.smoke:
        train = train.select(range(200))
    base = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
    with torch.no_grad():
        emb = base.encode(list(train["anchor"]), convert_to_tensor=True, normalize_embeddings=True, batch_size=64)
        pos = base.encode(list(train["positive"]), convert_to_tensor=True, normalize_embeddings=True, batch_size=64)

    # the achievable range of batch effective rank on this data: tightest neighbourhoods → most spread out
    gen = torch.Generator().manual_seed(0)
    values = []
    for level in default_levels(emb.shape[0], a.batch_size):
        idx = draw_level(emb, level, a.batch_size, 16, gen)
        values.append(measure_diversity(emb[idx]).mean().item())
    lo, hi = min(values), max(values)
    edges = torch.linspace(lo, hi, a.levels + 1).tolist()
    windows = [DiversityWindow(edges[i], edges[i + 1]) for i in range(a.levels)]

    def held_out(model, tau):
        model.eval()
        with torch.no_grad():
            u = model.encode(list(test["anchor"]), convert_to_tensor=True, batch_size=64)
            v = model.encode(list(test["positive"]), convert_to_tensor=True, batch_size=64)
        ndcg = retrieval_metrics(model, list(test["anchor"]), list(test["positive"]), name="t")["t_ndcg@10"]
        return contrastive_loss(u, v, tau).loss.item(), ndcg

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for tau in a.temperatures:
            cal = calibrate_window(emb, a.batch_size, tau, positives=pos, seed=0)
            row = {"temperature": tau, "predicted_window": cal.window.to_dict(), "predicted_centre": cal.window.center,
                   "calibration_curve": cal.curve, "levels": []}
            for w in windows:
                model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
                args = DivCLTrainingArguments(
                    output_dir=str(Path(tmp) / f"t{tau}-{w.low:.1f}"), per_device_train_batch_size=a.batch_size,
                    max_steps=a.steps, learning_rate=a.lr, warmup_steps=max(1, a.steps // 10),
                    loss_kwargs={"temperature": tau}, batch_policy="window",
                    batch_policy_kwargs={"window": f"{w.low}:{w.high}", "builder": "greedy",
                                         "on_infeasible": "closest"},
                    bank_source="reference", report_to=[], disable_tqdm=True, save_strategy="no",
                    logging_steps=max(1, a.steps // 5), seed=0, bank_cache_dir=str(Path(tmp) / "cache"),
                    collapse_threshold=0)
                trainer = DivCLTrainer(model=model, args=args, train_dataset=train, bank=emb.cpu())
                trainer.train()
                logs = [r for r in trainer.state.log_history if "divcl/effective_rank" in r]
                loss, ndcg = held_out(model, tau)
                level = {"window": w.to_dict(), "centre": w.center,
                         "batch_effective_rank": statistics.fmean(r["divcl/effective_rank"] for r in logs),
                         "in_window_fraction": statistics.fmean(r.get("divcl/in_window_fraction", 0) for r in logs),
                         "grad_norm_mean": statistics.fmean(r["divcl/grad_norm_mean"] for r in logs),
                         "held_out_infonce": loss, "held_out_ndcg@10": ndcg}
                row["levels"].append(level)
                print(f"τ={tau} window {w.low:.1f}-{w.high:.1f}: batch eff. rank {level['batch_effective_rank']:.1f} "
                      f"‖∇‖ {level['grad_norm_mean']:.3f} held-out ndcg@10 {ndcg:.4f} InfoNCE {loss:.4f}", flush=True)
            best = max(row["levels"], key=lambda r: r["held_out_ndcg@10"])
            row["measured_best_centre"] = best["centre"]
            row["prediction_hits_best_level"] = best["window"]["low"] <= cal.window.center <= best["window"]["high"]
            results.append(row)
    untrained = held_out(base, a.temperatures[0])
    out = {"config": vars(a), "achievable_range": [lo, hi], "untrained_ndcg@10": untrained[1], "results": results}
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(out, indent=2))
    for r in results:
        print(f"τ={r['temperature']}: predicted centre {r['predicted_centre']:.1f}, measured best level centre "
              f"{r['measured_best_centre']:.1f} (hit: {r['prediction_hits_best_level']})")
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
