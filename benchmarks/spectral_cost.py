"""Cost of the spectral diagnostics relative to one training step of all-MiniLM-L6-v2.

Measures, on the same batch of B WordNet example→gloss pairs (d = 384):
  * one forward + backward of MiniLM with an in-batch InfoNCE loss (τ = 0.05), i.e. a training step minus the
    optimizer update;
  * ``batch_diversity`` (with and without the eigendecomposition) + ``gradient_bands`` on that step's
    embeddings, with and without input validation.
Timings are medians over repeats, measured side by side in one process. Writes JSON (and prints a table).

    python benchmarks/spectral_cost.py                       # B = 256 and 1024, CPU
    python benchmarks/spectral_cost.py --batch-sizes 256 --repeats 3 --output benchmarks/results/x.json
    python benchmarks/spectral_cost.py --smoke               # seconds; used by the test suite
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bench_batch(model, anchors: list[str], positives: list[str], tau: float, args) -> dict:
    """Median step time and diagnostics time on one batch of B pairs."""
    import torch
    import torch.nn.functional as F

    from hf_divcl.diversity.bands import gradient_bands
    from hf_divcl.diversity.metrics import batch_diversity

    b = len(anchors)
    feats_a = {k: t.to(args.device) if hasattr(t, "to") else t for k, t in model.preprocess(anchors).items()}
    feats_p = {k: t.to(args.device) if hasattr(t, "to") else t for k, t in model.preprocess(positives).items()}
    captured = {}

    def step():
        model.zero_grad(set_to_none=True)
        ua = F.normalize(model(dict(feats_a))["sentence_embedding"], dim=-1)
        vp = F.normalize(model(dict(feats_p))["sentence_embedding"], dim=-1)
        loss = F.cross_entropy(ua @ vp.T / tau, torch.arange(b, device=ua.device))
        loss.backward()
        captured["u"], captured["v"] = ua.detach(), vp.detach()

    t_step = _median_time(step, args.repeats)
    u, v = captured["u"], captured["v"]

    def diag(validate: bool, spectrum: bool = True):
        def run():
            batch_diversity(u, spectrum=spectrum, validate=validate)
            gradient_bands(u, v, tau, validate=validate)
            if u.is_cuda:
                torch.cuda.synchronize()
        return run

    t_full = _median_time(diag(True), args.spectral_repeats)
    t_fast = _median_time(diag(False), args.spectral_repeats)
    t_cheap = _median_time(diag(False, spectrum=False), args.spectral_repeats)
    return {
        "batch_size": b, "dim": u.shape[1], "step_seconds": t_step,
        "diagnostics_seconds": t_full, "diagnostics_seconds_no_validation": t_fast,
        "diagnostics_seconds_no_spectrum_no_validation": t_cheap,
        "ratio_percent": 100 * t_full / t_step, "ratio_percent_no_validation": 100 * t_fast / t_step,
        "ratio_percent_no_spectrum": 100 * t_cheap / t_step,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats of the model step.")
    parser.add_argument("--spectral-repeats", type=int, default=20, help="Timed repeats of the diagnostics.")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes, one repeat: checks the script runs.")
    parser.add_argument("--output", default="benchmarks/results/spectral_cost.json")
    args = parser.parse_args(argv)

    import torch

    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.models.loading import load_sentence_transformer

    if args.smoke:
        args.batch_sizes, args.repeats, args.spectral_repeats = [16], 1, 2
    model = load_sentence_transformer(args.model, device=args.device)
    model.train()
    ds = wordnet_pairs(kind="example", source="embedded")
    tau = args.temperature
    results = []
    for b in args.batch_sizes:
        if b > len(ds):
            raise SystemExit(f"batch size {b} exceeds the {len(ds)} pairs available")
        row = _bench_batch(model, ds["anchor"][:b], ds["positive"][:b], tau, args)
        results.append(row)
        print(f"B={b:5d} d={row['dim']}: step {row['step_seconds']:8.3f} s | diagnostics "
              f"{1000 * row['diagnostics_seconds']:8.2f} ms ({row['ratio_percent']:.2f} %), no validation "
              f"{1000 * row['diagnostics_seconds_no_validation']:8.2f} ms "
              f"({row['ratio_percent_no_validation']:.2f} %), "
              f"no spectrum {1000 * row['diagnostics_seconds_no_spectrum_no_validation']:7.2f} ms "
              f"({row['ratio_percent_no_spectrum']:.2f} %)", flush=True)
    out = {
        "benchmark": "spectral_cost", "model": args.model, "temperature": tau, "device": args.device,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "processor": platform.processor(), "smoke": args.smoke, "results": results,
    }
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written {path}")
    return out


if __name__ == "__main__":
    main()
