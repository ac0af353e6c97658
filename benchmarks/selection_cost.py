"""What false-negative masking and learnability selection cost per step, as a fraction of a training step,
measured side by side in one process (interleaved repetitions, so machine drift hits every variant alike).

For each batch size B it times, on all-MiniLM-L6-v2 and real WordNet pairs:

    step          forward + backward of InfoNCE on B pairs (the training step without the optimizer)
    step_mask     the same with false_negatives="mask" (self-guided: mask from the detached embeddings)
    select_hard   LearnabilitySelector without a reference on a 4×B super-batch from an N-row bank
    select_learn  the same with a reference bank (learnability)
    select_window learnability within a window (8 sampled batches, the one inside kept)

    python benchmarks/selection_cost.py                 # B = 16, 64
    python benchmarks/selection_cost.py --smoke         # B = 8, tiny model, 2 repetitions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _measure(b_size: int, model, pairs, learner, reference, gen, reps: int) -> dict:
    """Median seconds of each variant at batch size ``b_size`` and their fractions of a step."""
    import torch

    from hf_divcl.diversity.window import DiversityWindow, measure_diversity
    from hf_divcl.experimental.learnability import LearnabilitySelector
    from hf_divcl.losses.infonce import InfoNCELoss

    feats = [model.preprocess(list(pairs["anchor"][:b_size])), model.preprocess(list(pairs["positive"][:b_size]))]
    plain = InfoNCELoss(model, temperature=0.05)
    masked = InfoNCELoss(model, temperature=0.05, false_negatives="mask")

    def step(loss):
        model.zero_grad(set_to_none=True)
        loss([dict(f) for f in feats], None).backward()

    super_rows = torch.randperm(learner.num_rows, generator=gen)[:4 * b_size]
    level = float(measure_diversity(learner.get(super_rows[:b_size])[None], "effective_rank")[0])
    hard = LearnabilitySelector(learner, b_size, 0.05)
    learn = LearnabilitySelector(learner, b_size, 0.05, reference=reference)
    windowed = LearnabilitySelector(learner, b_size, 0.05, reference=reference,
                                    window=DiversityWindow(level - 1.0, level + 1.0))
    variants = {"step": lambda: step(plain), "step_mask": lambda: step(masked), "select_hard": lambda: hard(super_rows),
                "select_learn": lambda: learn(super_rows), "select_window": lambda: windowed(super_rows)}
    acc: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(reps):  # interleaved
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            acc[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in acc.items()}
    frac = {k: med[k] / med["step"] for k in med if k != "step"}
    frac["step_mask"] = med["step_mask"] / med["step"] - 1.0  # the extra time of masking
    print(f"B={b_size:4d}  step {med['step']:.3f} s | masking +{frac['step_mask']:.1%} | select hard "
          f"{med['select_hard'] * 1e3:.1f} ms ({frac['select_hard']:.1%}), learnability "
          f"{med['select_learn'] * 1e3:.1f} ms ({frac['select_learn']:.1%}), within window "
          f"{med['select_window'] * 1e3:.1f} ms ({frac['select_window']:.1%})", flush=True)
    return {"batch_size": b_size, "seconds": med, "fraction_of_step": frac}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--bank-rows", type=int, default=50_000)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    import torch

    from hf_divcl.bank import EmbeddingBank
    from hf_divcl.data.wordnet import wordnet_split

    if a.smoke:
        a.batch_sizes, a.reps, a.bank_rows = [8], 2, 2000
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import build_tiny_sentence_transformer
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(build_tiny_sentence_transformer(Path(tempfile.mkdtemp())), device="cpu")
        name = "tiny BERT"
    else:
        from hf_divcl.models.loading import load_sentence_transformer

        model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
        name = "all-MiniLM-L6-v2"
    pairs = wordnet_split(kind="example", split="train", source="embedded")
    dim = model.get_embedding_dimension()
    gen = torch.Generator().manual_seed(0)

    def bank(seed: int) -> EmbeddingBank:
        b = EmbeddingBank(a.bank_rows, dim, num_views=2)
        x = torch.nn.functional.normalize(torch.randn(a.bank_rows, 2, dim, generator=torch.Generator().manual_seed(
            seed)), dim=-1)
        b.update(torch.arange(a.bank_rows), x, step=0)
        return b

    learner, reference = bank(1), bank(2)
    rows = [_measure(b_size, model, pairs, learner, reference, gen, a.reps) for b_size in a.batch_sizes]
    out = Path(a.output or (Path(tempfile.gettempdir()) / "selection_cost_smoke.json" if a.smoke
                            else "benchmarks/results/selection_cost.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": name, "reps": a.reps, "bank_rows": a.bank_rows, "rows": rows,
                               "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
