"""In-batch whitening and gradient variance: the variance of the parameter-gradient norm over the first S steps of
``DivCLTrainer`` with and without ``whitening``, same model, data, seed and batch plan.

The gradient norm is the Trainer's own ``grad_norm`` (before clipping) logged at every step. Reported: variance,
coefficient of variation, the ratio without / with, and the held-out InfoNCE of both runs at the end.

    python benchmarks/whitening.py                     # MiniLM, WordNet example pairs, B = 32, 50 steps, 3 seeds
    python benchmarks/whitening.py --smoke
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


def held_out_loss(model, ds) -> float:
    import torch

    from hf_divcl.losses.maths import contrastive_loss

    model.eval()
    with torch.no_grad():
        a = model.encode(list(ds["anchor"]), convert_to_tensor=True, batch_size=64)
        p = model.encode(list(ds["positive"]), convert_to_tensor=True, batch_size=64)
    return contrastive_loss(a, p, 0.05).loss.item()


def run(whitening: bool, seed: int, train, test, a, tmp: Path) -> dict:
    from hf_divcl.models.loading import load_sentence_transformer
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    model = load_sentence_transformer(a.model, device="cpu")
    args = DivCLTrainingArguments(
        output_dir=str(tmp / f"w{int(whitening)}-s{seed}"), per_device_train_batch_size=a.batch_size,
        max_steps=a.steps, learning_rate=a.lr, logging_steps=1, report_to=[], disable_tqdm=True, save_strategy="no",
        seed=seed, loss_kwargs={"whitening": whitening}, bank_cache_dir=str(tmp / "cache"), log_bands=False)
    trainer = DivCLTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    norms = [r["grad_norm"] for r in trainer.state.log_history if "grad_norm" in r]
    return {"whitening": whitening, "seed": seed, "grad_norms": norms, "variance": statistics.pvariance(norms),
            "cv": statistics.pstdev(norms) / statistics.fmean(norms), "held_out_infonce": held_out_loss(model, test)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None, help="default: results/whitening.json; a temp file with --smoke")
    a = p.parse_args()
    smoke_out = str(Path(tempfile.gettempdir()) / "whitening_smoke.json")
    a.output = a.output or (smoke_out if a.smoke else "benchmarks/results/whitening.json")
    if a.smoke:
        a.batch_size, a.steps, a.seeds = 8, 4, [0]

    from hf_divcl.data.wordnet import wordnet_pairs

    ds = wordnet_pairs(kind="example", source="embedded").select_columns(["anchor", "positive"])
    train, test = ds.select(range(0, 2000)), ds.select(range(2000, 2500))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            for w in (False, True):
                r = run(w, seed, train, test, a, Path(tmp))
                runs.append(r)
                print(f"seed {seed} whitening={w}: var {r['variance']:.4f} cv {r['cv']:.3f} "
                      f"held-out {r['held_out_infonce']:.4f}", flush=True)
    by = {w: [r for r in runs if r["whitening"] == w] for w in (False, True)}
    ratios = [x["variance"] / y["variance"] for x, y in zip(by[False], by[True], strict=True)]
    summary = {"variance_ratio_without_over_with": ratios, "median_ratio": statistics.median(ratios),
               "held_out_without": [r["held_out_infonce"] for r in by[False]],
               "held_out_with": [r["held_out_infonce"] for r in by[True]]}
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps({"config": vars(a), "summary": summary, "runs": runs}, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
