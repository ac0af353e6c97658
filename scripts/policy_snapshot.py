"""Every batch policy run through ``DivCLTrainer`` with fixed settings: the rows of each training step, each step's
loss and the final weights, saved for a bit-identical comparison across a refactor of the configuration.

    python scripts/policy_snapshot.py /tmp/before.pt      # on the old commit
    python scripts/policy_snapshot.py /tmp/after.pt       # on the new one
    python scripts/policy_snapshot.py --compare /tmp/before.pt /tmp/after.pt

Each policy is spelled in the configuration it is run with (``SPECS``: the current spelling; ``OLD``: the spelling
before ``batch_policy`` existed, used only when the installed ``DivCLTrainingArguments`` has no ``batch_policy``).
A tiny randomly initialised BERT (built from a config, seeded) on 400 pairs of the embedded WordNet sample; one thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# name → (settings in today's spelling, settings before batch_policy existed)
SPECS: dict[str, tuple[dict, dict]] = {
    "random": ({"batch_policy": "random"}, {"window": "none", "builder": "random"}),
    "window_greedy": ({"batch_policy": "window", "batch_policy_kwargs": {"window": "effective_rank:8:12"}},
                      {"window": "effective_rank:8:12", "builder": "greedy"}),
    "window_pool": ({"batch_policy": "window", "batch_policy_kwargs": {"window": "effective_rank:8:12",
                                                                       "builder": "pool",
                                                                       "builder_kwargs": {"p": 3}}},
                    {"window": "effective_rank:8:12", "builder": "pool", "builder_kwargs": {"p": 3}}),
    "window_cluster": ({"batch_policy": "window", "batch_policy_kwargs": {"window": "effective_rank:8:12",
                                                                          "builder": "cluster"}},
                       {"window": "effective_rank:8:12", "builder": "cluster"}),
    "auto": ({"batch_policy": "auto"}, {"window": "auto"}),
    "progress": ({"batch_policy": "progress", "batch_policy_kwargs": {"pairs": 3, "budget": 1.0}},
                 {"window": "progress", "calibration_pairs": 3, "calibration_budget": 1.0}),
    "explore": ({"batch_policy": "explore", "max_steps": 60,
                 "batch_policy_kwargs": {"budget": 1.0, "min_blocks": 2, "max_fraction": 0.9, "recheck_blocks": 4}},
                {"window": "explore", "max_steps": 60, "calibration_budget": 1.0, "explore_min_blocks": 2,
                 "explore_max_fraction": 0.9, "explore_recheck_blocks": 4}),
    "learnability": ({"batch_policy": "learnability", "batch_policy_kwargs": {"reference_rows": 40,
                                                                             "reference_steps": 4}},
                     {"builder": "learnability", "window": "none", "learnability_reference_rows": 40,
                      "learnability_reference_steps": 4}),
    "hard": ({"batch_policy": "hard"}, {"builder": "hard", "window": "none"}),
    "mega_batch": ({"batch_policy": "mega_batch", "batch_policy_kwargs": {"factor": 2,
                                                                         "window": "effective_rank:8:12"}},
                   {"mega_batch_factor": 2, "window": "effective_rank:8:12", "builder": "greedy"}),
    "masking": ({"batch_policy": "random", "loss_kwargs": {"false_negatives": "mask", "temperature": 0.1}},
                {"window": "none", "builder": "random", "false_negatives": "mask", "temperature": 0.1}),
}


def run(name: str, model_dir: str, work: Path) -> dict:
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    new = "batch_policy" in DivCLTrainingArguments.__dataclass_fields__
    settings = SPECS[name][0 if new else 1]
    out = work / name
    args = DivCLTrainingArguments(output_dir=str(out), per_device_train_batch_size=16, learning_rate=1e-3,
                                  logging_steps=1, report_to=[], disable_tqdm=True, collapse_threshold=0,
                                  bank_cache_dir=str(work / "cache"), save_strategy="no", seed=3,
                                  **{"max_steps": 24, **settings})
    data = wordnet_pairs(kind="example", source="embedded").select(range(400)).select_columns(["anchor", "positive"])
    steps: list[list[int]] = []
    losses: list[float] = []

    class Recording(DivCLTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            rows = inputs.get("row_ids")
            training = model.training and rows is not None
            if training:
                steps.append(rows.tolist())
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if training:
                losses.append(float((result[0] if return_outputs else result).detach()))
            return result

    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    trainer = Recording(model=model, args=args, train_dataset=data)
    trainer.train()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {"rows": steps, "losses": losses, "weights": weights}


def compare(before: Path, after: Path) -> int:
    a, b = torch.load(before), torch.load(after)
    bad = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name:15s} only in {'after' if name not in a else 'before'}")
            bad += 1
            continue
        same_rows = a[name]["rows"] == b[name]["rows"]
        same_loss = a[name]["losses"] == b[name]["losses"]
        same_weights = torch.equal(a[name]["weights"], b[name]["weights"])
        ok = same_rows and same_loss and same_weights
        bad += not ok
        print(f"{name:15s} steps {len(a[name]['rows']):3d}  rows {'same' if same_rows else 'DIFFER'}  "
              f"losses {'same' if same_loss else 'DIFFER'}  weights {'same' if same_weights else 'DIFFER'}")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--only", nargs="*", help="policies to run (default: all of SPECS)")
    ns = parser.parse_args()
    if ns.compare:
        return compare(Path(ns.compare[0]), Path(ns.compare[1]))
    torch.set_num_threads(1)
    from conftest import build_tiny_sentence_transformer

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_tiny_sentence_transformer(work / "model")
        for name in ns.only or SPECS:
            result[name] = run(name, model_dir, work)
            print(f"{name}: {len(result[name]['rows'])} steps, last loss {result[name]['losses'][-1]:.6f}",
                  flush=True)
    torch.save(result, ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
