"""Epoch-planning cost: seconds, peak memory and fraction in window for each builder, N = 10⁴ … 10⁶ rows.

Synthetic clustered 384-d unit embeddings stored as a float16 bank (as :class:`hf_divcl.bank.EmbeddingBank`
keeps them), B = 256. For each N, the window is placed below random batches' diversity (random mean − 2σ … − 0.5σ,
so random batches rarely hit it) and every builder plans one epoch; sentence-transformers'
``NoDuplicatesBatchSampler`` is timed on a dataset of the same N in the same run. Each measurement runs in a
fresh subprocess. Memory: the bank is built first, then the process's peak-RSS mark is reset (Linux
``/proc/self/clear_refs``) and ``extra_mb`` = peak RSS during planning − RSS before planning, i.e. the memory the
planner needs on top of the bank and the libraries (goal: ≤ 0.5 × the float16 bank, so that the whole process stays
≤ 1.5 × the bank beyond its baseline). Where the mark cannot be reset, ``ru_maxrss`` is used and
``memory_method`` says so (the bank's construction then counts towards the peak, overstating ``extra_mb``).

    python benchmarks/plan_epoch.py                       # N = 1e4, 1e5, 1e6
    python benchmarks/plan_epoch.py --sizes 10000 --smoke

``--replan`` measures instead what a window decision in the middle of an epoch costs the training loop
(:meth:`DiversityWindowBatchSampler.replan`): a sampler on random batches hands out ``--cut`` global batches, a
greedy window is chosen, and the rest of the epoch is re-planned either in parts (the default
``replan_chunk_rows``) or in one go (``replan_chunk_rows=0``), each in its own subprocess. It reports the seconds from
the decision to the first window batch in hand (the bank is an in-memory ``EmbeddingBank``, as in the trainer),
then consumes the epoch as fast as it is handed out and records
when each part became available; from those times it computes how long training would wait in all at a given
step time (``--step-times``), and the fraction of re-planned batches inside the window for both ways.

    python benchmarks/plan_epoch.py --replan --sizes 1000000 --output benchmarks/results/plan_replan.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def make_bank(n: int, d: int, seed: int = 0):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(10, n // 1000), d, generator=gen) * 1.5
    out = torch.empty(n, d, dtype=torch.float16)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        lab = torch.randint(centres.shape[0], (e - s,), generator=gen)
        out[s:e] = F.normalize(centres[lab] + torch.randn(e - s, d, generator=gen), dim=-1).half()
    return out


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak_rss() -> str:
    """Reset the peak-RSS mark (VmHWM) so that it covers only what follows; returns the method used."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_mb("VmHWM")
        return "VmHWM after clear_refs"
    except (OSError, KeyError):
        return "ru_maxrss (peak not resettable: includes building the bank)"


def peak_rss_mb(method: str) -> float:
    if method.startswith("VmHWM"):
        return _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    bank = make_bank(args.n, args.dim)
    method = reset_peak_rss()
    base_rss = _status_mb("VmRSS") if method.startswith("VmHWM") else peak_rss_mb(method)
    t0 = time.perf_counter()
    if args.builder == "no_duplicates":
        from datasets import Dataset
        from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

        ds = Dataset.from_dict({"anchor": [f"a{i}" for i in range(args.n)],
                                "positive": [f"p{i}" for i in range(args.n)]})
        t0 = time.perf_counter()
        sampler = NoDuplicatesBatchSampler(ds, batch_size=args.batch_size, drop_last=False, seed=0)
        n_batches = sum(1 for _ in sampler)
        res = {"n_batches": n_batches, "in_window_fraction": None}
    else:
        from hf_divcl.diversity.window import DiversityWindow
        from hf_divcl.planning.plan import plan_epoch

        window = DiversityWindow(args.low, args.high) if args.builder != "random" else None
        plan = plan_epoch(bank, args.batch_size, builder=args.builder, window=window, seed=0,
                          on_infeasible="closest", refine_passes=args.refine)
        res = plan.summary()
        res.pop("window", None)
        if args.low is not None:
            w = DiversityWindow(args.low, args.high)
            full = plan.values[: args.n // args.batch_size]
            res["in_window_fraction"] = w.contains(full).float().mean().item()
    res["seconds"] = time.perf_counter() - t0
    res["peak_rss_mb"] = peak_rss_mb(method)
    res["bank_mb"] = bank.numel() * 2 / 2**20
    res["rss_before_mb"] = base_rss
    res["extra_mb"] = res["peak_rss_mb"] - base_rss
    res["extra_over_bank"] = res["extra_mb"] / res["bank_mb"]
    res["memory_method"] = method
    return res


def replan_child(args) -> dict:
    """One mid-epoch decision on a sampler of ``args.n`` rows; ``args.chunk_rows`` 0 re-plans in one go."""
    import torch
    from datasets import Dataset

    from hf_divcl.bank import EmbeddingBank
    from hf_divcl.diversity.window import DiversityWindow
    from hf_divcl.sampler import DiversityWindowBatchSampler

    torch.set_num_threads(args.threads)
    x = make_bank(args.n, args.dim)
    bank = EmbeddingBank(args.n, args.dim, dtype=torch.float16, mmap_threshold_bytes=2**40)  # as the trainer's
    for lo in range(0, args.n, 100_000):
        bank.update(torch.arange(lo, min(lo + 100_000, args.n)), x[lo:lo + 100_000])
    del x
    ds = Dataset.from_dict({"row": list(range(args.n))})
    s = DiversityWindowBatchSampler(ds, batch_size=args.batch_size, drop_last=False, seed=0, bank=bank, window=None,
                                    builder="random", processes=1, dedupe=False, show_progress=False,
                                    replan_chunk_rows=args.chunk_rows)
    s.set_epoch(0)
    it = iter(s)
    for _ in range(args.cut):
        next(it)
    s.set_policy("greedy", DiversityWindow(args.low, args.high))
    t0 = time.perf_counter()
    s.replan(args.cut)
    replan_seconds = time.perf_counter() - t0
    next(it)
    first_batch = time.perf_counter() - t0
    ready = [first_batch]  # when each global batch was in hand, from the decision on
    for _ in it:
        ready.append(time.perf_counter() - t0)
    plan = s.plan()
    parts = plan.builder.get("replan_part_batches", [len(plan.batches) - args.cut])
    starts = [sum(parts[:k]) for k in range(len(parts))]
    part_ready = [ready[k] for k in starts]  # a part is in hand when its first batch is
    full = torch.tensor([b.numel() == args.batch_size for b in plan.batches[args.cut:]])
    inw = DiversityWindow(args.low, args.high).contains(plan.values[args.cut:][full]).float().mean().item()
    rows = torch.cat(plan.batches)
    return {"chunk_rows": args.chunk_rows, "n": args.n, "cut": args.cut, "replan_seconds": replan_seconds,
            "first_window_batch_seconds": first_batch, "epoch_done_seconds": ready[-1],
            "background_plan_seconds": s.background_plan_seconds, "wait_seconds": s.replan_wait_seconds,
            "part_batches": parts, "part_ready_seconds": part_ready, "in_window_fraction": inw,
            "every_row_once": bool(rows.numel() == args.n and torch.unique(rows).numel() == args.n)}


def stall(r: dict, step_seconds: float) -> float:
    """Seconds a training loop taking ``step_seconds`` per global batch would wait for the plan after the decision
    (the first window batch included), from the measured times at which the parts became available."""
    waited, clock = 0.0, 0.0
    for size, ready in zip(r["part_batches"], r["part_ready_seconds"], strict=True):
        if ready > clock:
            waited += ready - clock
            clock = ready
        clock += size * step_seconds
    return waited


def replan_main(args) -> dict:
    rows = []
    load_at_start = list(os.getloadavg())
    for n in args.sizes:
        rnd = run_child(n=n, builder="random", batch_size=args.batch_size, dim=args.dim, threads=args.threads)
        mean, std = rnd["metric_mean"], rnd["metric_std"]
        low, high = mean - 2 * std, mean - 0.5 * std
        cut = min(args.cut, n // args.batch_size // 4)
        for chunk in (65_536 if not args.smoke else 256, 0):
            r = run_child(n=n, builder="replan", batch_size=args.batch_size, dim=args.dim, threads=args.threads,
                          low=low, high=high, cut=cut, chunk_rows=chunk)
            if "error" not in r:
                r["stall_seconds"] = {str(t): stall(r, t) for t in args.step_times}
            r["window"] = [low, high]
            rows.append(r)
            how = f"in parts of <= {chunk} rows" if chunk else "in one go"
            print(f"N={n:>8} re-plan {how:>24}: first window batch after {r.get('first_window_batch_seconds', 0):6.2f}"
                  f" s, epoch planned after {r.get('epoch_done_seconds', 0):6.1f} s, in window "
                  f"{r.get('in_window_fraction', float('nan')):.3f}; wait at "
                  + ", ".join(f"{t} s/step {v:.1f} s" for t, v in r.get("stall_seconds", {}).items())
                  + f" {r.get('error', '')}", flush=True)
    return write_result(args, "plan_replan", load_at_start, rows, step_times=args.step_times,
                        stall="computed from the measured times at which each part became available: a loop taking "
                              "t s per global batch waits whenever it reaches a part that is not ready yet")


def write_result(args, name: str, load_at_start: list[float], rows: list[dict], **extra) -> dict:
    """Write the benchmark's JSON (settings, machine, load average at start and end, rows) to ``args.output``."""
    out = {"benchmark": name, "batch_size": args.batch_size, "dim": args.dim, "threads": args.threads,
           "machine": platform.machine(), "load_average_at_start": load_at_start,
           "load_average_at_end": list(os.getloadavg()), **extra, "rows": rows}
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written {path}")
    return out


def run_child(**kw) -> dict:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items() if v is not None]
    cmd = [sys.executable, __file__, "--child", *flags]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc={out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--builders", nargs="+", default=["random", "greedy", "pool", "cluster", "no_duplicates"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--refine", type=int, default=4, help="Exact swap-refinement passes (library default 4).")
    p.add_argument("--smoke", action="store_true", help="N = 2000, B = 64, d = 32: checks the script runs.")
    p.add_argument("--output", default="benchmarks/results/plan_epoch.json")
    p.add_argument("--replan", action="store_true", help="measure a mid-epoch re-plan (see above)")
    p.add_argument("--cut", type=int, default=100, help="--replan: global batches handed out before the decision")
    p.add_argument("--step-times", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5],
                   help="--replan: seconds per training step at which to report the wait")
    p.add_argument("--chunk-rows", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--builder", help=argparse.SUPPRESS)
    p.add_argument("--low", type=float, help=argparse.SUPPRESS)
    p.add_argument("--high", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(replan_child(args) if args.builder == "replan" else child(args)))
        return {}
    if args.smoke:
        args.sizes, args.batch_size, args.dim = [2000], 64, 32
    if args.replan:
        if args.smoke:
            args.batch_size, args.cut = 16, 4
        return replan_main(args)
    rows = []
    load_at_start = list(os.getloadavg())
    for n in args.sizes:
        rnd = run_child(n=n, builder="random", batch_size=args.batch_size, dim=args.dim,
                        threads=args.threads)
        mean, std = rnd["metric_mean"], rnd["metric_std"]
        low, high = mean - 2 * std, mean - 0.5 * std
        for b in args.builders:
            r = rnd if b == "random" else run_child(n=n, builder=b, batch_size=args.batch_size,
                                                    dim=args.dim, threads=args.threads, low=low, high=high,
                                                    refine=args.refine)
            if b == "random":
                r = run_child(n=n, builder="random", batch_size=args.batch_size, dim=args.dim,
                              threads=args.threads, low=low, high=high)
            r.update({"n": n, "builder_name": b, "window": [low, high]})
            rows.append(r)
            iw = r.get("in_window_fraction")
            print(f"N={n:>8} {b:>14}: {r.get('seconds', float('nan')):8.2f} s  extra memory "
                  f"{r.get('extra_mb', float('nan')):6.0f} MB = {r.get('extra_over_bank', float('nan')):4.2f} x bank "
                  f"({r.get('bank_mb', 0):4.0f} MB)  in window {'-' if iw is None else f'{iw:.3f}'}  "
                  f"{r.get('error', '')}", flush=True)
    return write_result(args, "plan_epoch", load_at_start, rows,
                        memory="extra_mb = peak RSS while planning (VmHWM, reset after building the bank) - RSS "
                               "before planning")


if __name__ == "__main__":
    main()
