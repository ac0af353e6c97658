"""SimCLR from scratch on Fashion-MNIST with a small ResNet, trained by ``hf_divcl.DivCLTrainer``: does the encoder
learn more than raw pixels give, and how soon does each batch policy get there?

Every arm trains the same encoder (:func:`hf_divcl.models.convnet.build_small_resnet_sentence_transformer`, same
seed → same initial weights) on the first ``--rows`` Fashion-MNIST training images with two augmented views per image
(random resized crop ``--scale-min``..1, horizontal flip, brightness/contrast jitter ``--jitter``: the trainer's
``augment_*`` settings) and NT-Xent at each ``--temperature``; only the batch policy differs:

    random   batch_policy="random" (hf_divcl's duplicate-free random batches)
    greedy   batch_policy="window", Greedy-64 in the gradient-calibrated ("auto") window
    pool     batch_policy="window", Pool-P3 in the gradient-calibrated window
    greedy_follow / pool_follow   the same builders with batch_policy="auto" re-calibrating the window on the bank
             at every epoch start (a window calibrated on the untrained encoder goes stale as it learns)
    NAME=POLICY[:JSON]   any registered batch policy with its batch_policy_kwargs, e.g.
             'greedy_fixed=window:{"window": "40:80", "builder": "greedy", "builder_kwargs": {"m": 64}}'

Evaluation, every ``--eval-every`` steps and at step 0, on a fixed split: memory = the first ``--memory`` (2,000)
training images, queries = the first ``--queries`` (1,000) test images. Scores: cosine k-NN accuracy (k = 20,
majority vote, :func:`hf_divcl.evaluation.probes.knn_accuracy_from_embeddings`) and a linear probe
(:func:`~hf_divcl.evaluation.probes.linear_probe_accuracy_from_embeddings`: logistic regression on standardised unit
embeddings), both on the encoder's pre-head features (the SimCLR convention); with a projection head the k-NN
accuracy of the head output is recorded too (``knn_head``). The same split gives the baselines stored in the result
file: k-NN on raw pixels, k-NN on centred raw pixels (memory mean subtracted, then L2-normalised) and the linear probe
on raw pixels. A run *clears the bar* when its plateau k-NN accuracy is at least centred raw pixels + 0.03 and its
plateau linear probe beats the raw-pixel probe.

Each curve point holds ``step``, ``seconds`` (wall clock of the run without the evaluations: bank encoding, window
calibration, selection, augmentation and training steps included), ``wall_seconds`` (evaluations included),
``knn``, ``probe`` (and ``knn_head``, ``loss``). The summary gives per arm the plateau (mean of the points in the last
20 % of the steps, averaged over seeds), and the steps and seconds to reach a target, paired by seed against random
at the same τ: the target is ``--target-fraction`` (95 %) of random's plateau (``level``), and, because a random
encoder already scores well above chance, also 95 % of the way from random's step-0 score to its plateau
(``gain``). Results are written after every run.

    OMP_NUM_THREADS=1 python benchmarks/vision_simclr.py --steps 600 --eval-every 50 --policies random
    python benchmarks/vision_simclr.py --temperature 0.1 0.2 0.5 --policies random --seeds 0
    python benchmarks/vision_simclr.py --policies random greedy pool --seeds 0 1 2 3 4 5 6 7
    python benchmarks/vision_simclr.py --smoke
    python benchmarks/vision_simclr.py --merge seed0.json seed1.json --output grid.json   # runs made apart
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _clock import eval_clock
from _merge import merged_from, read_parts
from _stats import reach, t_interval

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARMS = {  # DivCLTrainingArguments batch policy per arm
    "random": ("random", None),
    "greedy": ("window", {"window": "auto", "builder": "greedy", "builder_kwargs": {"m": 64}}),
    "pool": ("window", {"window": "auto", "builder": "pool", "builder_kwargs": {"p": 3}}),
    "greedy_follow": ("auto", {"builder": "greedy", "builder_kwargs": {"m": 64}, "recalibrate_every_epochs": 1}),
    "pool_follow": ("auto", {"builder": "pool", "builder_kwargs": {"p": 3}, "recalibrate_every_epochs": 1}),
}
K = 20
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def parse_arm(spec: str) -> tuple[str, str, dict | None]:
    """A name of :data:`ARMS`, or ``NAME=POLICY[:JSON]`` → ``(name, batch_policy, batch_policy_kwargs)``."""
    if spec in ARMS:
        return (spec, *ARMS[spec])
    if "=" not in spec:
        raise SystemExit(f"--policies {spec!r}: use one of {sorted(ARMS)} or NAME=POLICY[:JSON kwargs].")
    name, rest = spec.split("=", 1)
    policy, _, kwargs = rest.partition(":")
    try:
        parsed = json.loads(kwargs) if kwargs else None
    except json.JSONDecodeError as err:
        raise SystemExit(f"--policies {spec!r}: the batch_policy_kwargs are not JSON ({err}).") from None
    return name, policy, parsed


# -- data and baselines --------------------------------------------------------------------------------------------

def split_pixels(memory: int, queries: int):
    """Memory (first training images) and queries (first test images) as uint8 arrays, with their labels."""
    import numpy as np

    from hf_divcl.data.images import fashion_mnist

    out = []
    for split, n in (("train", memory), ("test", queries)):
        ds = fashion_mnist(split, limit=n)
        out += [np.stack([np.asarray(im, dtype=np.uint8) for im in ds["image"]]), np.asarray(ds["label"])]
    return tuple(out)


def raw_pixel_baselines(mem_x, mem_y, qry_x, qry_y) -> dict[str, float]:
    """k-NN on raw and on centred raw pixels, and the linear probe on raw pixels, on the evaluation split."""
    import torch

    from hf_divcl.evaluation.probes import knn_accuracy_from_embeddings, linear_probe_accuracy_from_embeddings

    mem = torch.from_numpy(mem_x.reshape(len(mem_x), -1)).double() / 255.0
    qry = torch.from_numpy(qry_x.reshape(len(qry_x), -1)).double() / 255.0
    mean = mem.mean(dim=0, keepdim=True)
    t0 = time.perf_counter()
    out = {"raw_knn": knn_accuracy_from_embeddings(mem, mem_y.tolist(), qry, qry_y.tolist(), k=K),
           "centred_knn": knn_accuracy_from_embeddings(mem - mean, mem_y.tolist(), qry - mean, qry_y.tolist(), k=K),
           "raw_probe": linear_probe_accuracy_from_embeddings(mem, mem_y.tolist(), qry, qry_y.tolist())}
    out["seconds"] = time.perf_counter() - t0
    return out


def make_evaluate(model, mem_px, mem_y, qry_px, qry_y, head: bool, probe: bool):
    """Scores of the model on the fixed split (pre-head features; ``knn_head`` on the head output)."""
    from hf_divcl.evaluation.probes import knn_accuracy_from_embeddings, linear_probe_accuracy_from_embeddings
    from hf_divcl.models.convnet import backbone_embeddings

    def evaluate() -> dict[str, float]:
        mem, qry = backbone_embeddings(model, mem_px), backbone_embeddings(model, qry_px)
        centre = mem.mean(dim=0, keepdim=True)  # diagnostic only: k-NN on features centred by the memory mean
        out = {"knn": knn_accuracy_from_embeddings(mem, mem_y, qry, qry_y, k=K),
               "knn_centred": knn_accuracy_from_embeddings(mem - centre, mem_y, qry - centre, qry_y, k=K)}
        if probe:
            out["probe"] = linear_probe_accuracy_from_embeddings(mem, mem_y, qry, qry_y)
        if head:
            mem_h = backbone_embeddings(model, mem_px, head=True)
            qry_h = backbone_embeddings(model, qry_px, head=True)
            out["knn_head"] = knn_accuracy_from_embeddings(mem_h, mem_y, qry_h, qry_y, k=K)
        return out

    return evaluate


# -- one run -------------------------------------------------------------------------------------------------------

def run_one(arm: tuple[str, str, dict | None], seed: int, temperature: float, a, data, workdir: Path) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from hf_divcl.models.convnet import build_small_resnet_sentence_transformer, pixel_values
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    name, policy, kwargs = arm
    train, mem_x, mem_y, qry_x, qry_y = data
    path = build_small_resnet_sentence_transformer(workdir / f"model-{name}-{seed}-{temperature}", widths=a.widths,
                                                   blocks=a.blocks, stem_stride=a.stem_stride,
                                                   projection_dim=a.projection_dim or None,
                                                   output_norm=a.output_norm, seed=seed)
    model = SentenceTransformer(path, device=a.device, trust_remote_code=True)
    mem_px, qry_px = (pixel_values(model, torch.from_numpy(x[:, None])) for x in (mem_x, qry_x))
    evaluate = make_evaluate(model, mem_px, mem_y.tolist(), qry_px, qry_y.tolist(), head=bool(a.projection_dim),
                             probe=not a.no_probe)
    curve: list[dict] = []
    losses: dict[int, float] = {}
    e0 = time.perf_counter()
    curve.append({"step": 0, "seconds": 0.0, "wall_seconds": 0.0, **evaluate()})
    first_eval = time.perf_counter() - e0
    clock = eval_clock(lambda last: evaluate(), a.eval_every, curve, losses, verbose=True)
    args = DivCLTrainingArguments(
        output_dir=str(workdir / f"{name}-{seed}-{temperature}"), per_device_train_batch_size=a.batch_size,
        max_steps=a.steps, learning_rate=a.lr, weight_decay=a.weight_decay, warmup_steps=max(1, a.steps // 20),
        lr_scheduler_type=SCHEDULES[a.schedule], seed=seed, report_to=[], disable_tqdm=True, save_strategy="no",
        logging_steps=a.eval_every, collapse_threshold=0, bank_cache_dir=str(workdir / "cache" / name),
        augment_scale_min=a.scale_min, augment_jitter=a.jitter, batch_policy=policy, batch_policy_kwargs=kwargs,
        loss_kwargs={"temperature": temperature, "loss_type": "nt_xent"}, dataloader_num_workers=0,
        use_cpu=a.device == "cpu")
    clock.restart()
    trainer = DivCLTrainer(model=model, args=args, train_dataset=train, callbacks=[clock])
    trainer.train()
    total = time.perf_counter() - clock.t0
    for point in curve:
        point["loss"] = losses.get(point["step"])
    train_seconds = curve[-1]["seconds"]
    return {"arm": name, "policy": policy, "policy_kwargs": kwargs, "seed": seed, "temperature": temperature,
            "curve": curve, "train_seconds": train_seconds, "wall_seconds": total, "eval_seconds": clock.eval_seconds,
            "eval_seconds_each": first_eval, "seconds_per_step": train_seconds / max(1, a.steps),
            "selection_seconds": trainer.selection_seconds(), "bank_seconds": getattr(trainer, "bank_seconds", 0.0)}


# -- summary -------------------------------------------------------------------------------------------------------

def plateau(curve: list[dict], score: str = "knn", tail: float = 0.2) -> float:
    """Mean score over the evaluations in the last ``tail`` of the steps (at least the last one)."""
    last = curve[-1]["step"]
    points = [p[score] for p in curve if p["step"] >= (1 - tail) * last and p["step"] > 0] or [curve[-1][score]]
    return statistics.fmean(points)


def time_to_target(runs: list[dict], fraction: float = 0.95, score: str = "knn") -> dict:
    """Steps and seconds to reach the targets set by the random arm at the same τ, per arm and paired by seed.

    ``level`` target: ``fraction`` × random's plateau (mean over seeds). ``gain`` target: random's step-0 score plus
    ``fraction`` × (plateau − step-0 score). Per arm and target: per seed steps/seconds (None: never reached), and
    for the other arms the paired difference arm − random on the seeds where both reached it.
    """
    out: dict[str, dict] = {}
    for tau in sorted({r["temperature"] for r in runs}):
        at = [r for r in runs if r["temperature"] == tau]
        base = {r["seed"]: r for r in at if r["arm"] == "random"}
        if not base:
            continue
        top = statistics.fmean(plateau(r["curve"], score) for r in base.values())
        start = statistics.fmean(r["curve"][0][score] for r in base.values())
        targets = {"level": fraction * top, "gain": start + fraction * (top - start)}
        entry: dict[str, dict] = {"random_plateau": top, "random_start": start, "targets": targets, "arms": {}}
        for arm in dict.fromkeys(r["arm"] for r in at):
            rs = [r for r in at if r["arm"] == arm]
            per: dict[str, dict] = {}
            for kind, target in targets.items():
                steps = {r["seed"]: reach(r["curve"], target, "step", score) for r in rs}
                secs = {r["seed"]: reach(r["curve"], target, "seconds", score) for r in rs}
                item = {"steps": steps, "seconds": secs,
                        "never_reached": sum(v is None for v in steps.values())}
                if arm != "random":
                    pairs = [s for s in steps if s in base and steps[s] is not None
                             and reach(base[s]["curve"], target, "step", score) is not None]
                    item["steps_minus_random"] = t_interval(
                        [steps[s] - reach(base[s]["curve"], target, "step", score) for s in pairs])
                    item["seconds_minus_random"] = t_interval(
                        [secs[s] - reach(base[s]["curve"], target, "seconds", score) for s in pairs])
                per[kind] = item
            entry["arms"][arm] = per
        out[f"tau={tau:g}"] = entry
    return out


def summarise(runs: list[dict], baselines: dict, fraction: float) -> dict:
    arms: dict[str, dict] = {}
    for key in dict.fromkeys((r["arm"], r["temperature"]) for r in runs):
        rs = [r for r in runs if (r["arm"], r["temperature"]) == key]
        knn = [plateau(r["curve"]) for r in rs]
        entry = {"seeds": [r["seed"] for r in rs], "plateau_knn": knn, "plateau_knn_mean": statistics.fmean(knn),
                 "final_knn_mean": statistics.fmean(r["curve"][-1]["knn"] for r in rs),
                 "max_knn_mean": statistics.fmean(max(p["knn"] for p in r["curve"]) for r in rs),
                 "seconds_per_step_mean": statistics.fmean(r["seconds_per_step"] for r in rs),
                 "knn_minus_centred": statistics.fmean(knn) - baselines["centred_knn"]}
        if "probe" in rs[0]["curve"][-1]:
            probe = [plateau(r["curve"], "probe") for r in rs]
            entry.update(plateau_probe=probe, plateau_probe_mean=statistics.fmean(probe),
                         probe_minus_raw=statistics.fmean(probe) - baselines["raw_probe"])
            entry["clears_bar"] = (entry["knn_minus_centred"] >= 0.03 and entry["probe_minus_raw"] > 0)
        if "knn_head" in rs[0]["curve"][-1]:
            entry["plateau_knn_head_mean"] = statistics.fmean(plateau(r["curve"], "knn_head") for r in rs)
        arms[f"{key[0]}@tau={key[1]:g}"] = entry
    return {"arms": arms, "time_to_target": time_to_target(runs, fraction)}


def merge(paths: list[str], out: Path) -> None:
    """One result file from several made apart (other seeds, arms or τ; same data, encoder and schedule), with the
    summary computed over all their runs."""
    parts, runs = read_parts(paths, ("policies", "seeds", "temperature", "threads", "device", "output", "merge",
                                     "merged_from"), {"arm": "arm", "τ": "temperature", "seed": "seed"})
    for path, part in zip(paths[1:], parts[1:], strict=True):
        if part["baselines"]["centred_knn"] != parts[0]["baselines"]["centred_knn"]:
            raise SystemExit(f"{path}: other baselines than {paths[0]} (another evaluation split).")
    config = {**parts[0]["config"], "policies": list(dict.fromkeys(r["arm"] for r in runs)),
              "seeds": sorted({r["seed"] for r in runs}), "temperature": sorted({r["temperature"] for r in runs}),
              "output": str(out), "merged_from": merged_from(paths, parts)}
    baselines = parts[0]["baselines"]
    result = {"task": parts[0]["task"], "config": config, "baselines": baselines,
              "summary": summarise(runs, baselines, config["target_fraction"]), "runs": runs,
              "machines": [p["machine"] for p in parts]}
    out.write_text(json.dumps(result, indent=2))
    print(f"merged {len(runs)} runs from {len(paths)} files into {out}")


# -- main ----------------------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", nargs="+", default=["random"],
                   help="arms: random, greedy, pool, greedy_follow, pool_follow, or NAME=POLICY[:JSON "
                        "batch_policy_kwargs]")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--temperature", type=float, nargs="+", default=[0.2], help="τ of NT-Xent (several: a sweep)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rows", type=int, default=8192, help="training images (the first N of the training split)")
    p.add_argument("--memory", type=int, default=2000, help="k-NN memory / probe training set: first N train images")
    p.add_argument("--queries", type=int, default=1000, help="k-NN queries / probe test set: first N test images")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="constant",
                   help="after a 5 %% linear warm-up: constant, linear decay to 0, or cosine decay")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--blocks", type=int, nargs="+", default=[1])
    p.add_argument("--stem-stride", type=int, default=2)
    p.add_argument("--projection-dim", type=int, default=64, help="0: no projection head")
    p.add_argument("--output-norm", choices=["none", "batchnorm"], default="none",
                   help="batchnorm: an affine-free BatchNorm1d after the encoder's pooling")
    p.add_argument("--scale-min", type=float, default=0.3, help="augment_scale_min (random resized crop)")
    p.add_argument("--jitter", type=float, default=0.4, help="augment_jitter (brightness/contrast)")
    p.add_argument("--target-fraction", type=float, default=0.95)
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe at each evaluation")
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads")
    p.add_argument("--device", default="auto", help="cpu, cuda[:N], or auto (cuda when visible, else cpu)")
    p.add_argument("--smoke", action="store_true", help="tiny run (< 1 minute), for CI")
    p.add_argument("--output", default=None)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="combine the runs of these result files (same data and settings) into --output")
    a = p.parse_args()
    if a.merge:
        if not a.output:
            raise SystemExit("--merge needs --output")
        merge(a.merge, Path(a.output))
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    if a.smoke:
        a.seeds, a.steps, a.eval_every, a.batch_size, a.rows = a.seeds[:1], 4, 2, 16, 64
        a.memory, a.queries, a.widths, a.temperature = 200, 100, [8, 16], a.temperature[:1]
    a.blocks = a.blocks[0] if len(a.blocks) == 1 else a.blocks
    out = Path(a.output or (Path(tempfile.gettempdir()) / "vision_simclr_smoke.json" if a.smoke
                            else "benchmarks/results/vision_simclr.json"))

    import torch
    from threadpoolctl import threadpool_limits

    from hf_divcl.data.images import fashion_mnist

    torch.set_num_threads(a.threads)
    threadpool_limits(a.threads)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    arms = [parse_arm(s) for s in a.policies]
    if "random" not in [n for n, _, _ in arms]:
        print("note: no random arm, so no time-to-target summary", file=sys.stderr)
    train = fashion_mnist("train", limit=a.rows).select_columns(["image"])
    mem_x, mem_y, qry_x, qry_y = split_pixels(a.memory, a.queries)
    baselines = raw_pixel_baselines(mem_x, mem_y, qry_x, qry_y)
    print(f"baselines: raw k-NN {baselines['raw_knn']:.4f}, centred raw k-NN {baselines['centred_knn']:.4f}, "
          f"raw linear probe {baselines['raw_probe']:.4f}", flush=True)
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
               "torch": torch.__version__, "platform": platform.platform(),
               "device": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "cpu"}
    config = {k: v for k, v in vars(a).items()}
    runs: list[dict] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            for tau in a.temperature:
                for arm in arms:  # interleaved: machine drift hits every arm alike
                    r = run_one(arm, seed, tau, a, (train, mem_x, mem_y, qry_x, qry_y), Path(tmp))
                    runs.append(r)
                    last = r["curve"][-1]
                    print(f"seed {seed} τ={tau:g} {arm[0]:10s} step {last['step']} k-NN {last['knn']:.4f} "
                          f"probe {last.get('probe', float('nan')):.4f} "
                          f"({r['train_seconds']:.0f} s training, {r['seconds_per_step']:.3f} s/step, "
                          f"{r['eval_seconds']:.0f} s evaluating)", flush=True)
                    result = {"task": "fashion-mnist simclr", "config": config, "baselines": baselines,
                              "summary": summarise(runs, baselines, a.target_fraction), "runs": runs,
                              "machine": machine}
                    out.write_text(json.dumps(result, indent=2))  # partial results survive an interrupted run
    summary = summarise(runs, baselines, a.target_fraction)
    print(json.dumps(summary["arms"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
