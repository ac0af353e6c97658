"""Time to quality: does a batch policy reach a held-out score sooner (or end higher) than random batches on the
same seeds, counting the cost of selection and calibration?

Every policy trains the same model on the same data with the same steps, learning rate, τ and batch size; only
the batch sampler differs:

    random           hf_divcl sampler, random batches (duplicate-free; batch_policy="random", the default)
    no_duplicates    sentence-transformers' NoDuplicatesBatchSampler
    gradient         the old default: gradient-magnitude window calibrated once at the start, Greedy-64
    progress         batch_policy="progress": measured progress vs random, 5 % budget (the earlier default)
    progress_follow  progress calibration re-measured every --follow-every steps (budget --follow-budget)
    explore          batch_policy="explore" as configured by default: the first steps are the experiment, a chosen
                     window is re-checked at 2s, 4s… and kept only while it is ahead with confidence
    explore_once     the same without re-checks (recheck_blocks=0)
    explore_labels   explore_behind scored on the label probe (a soft k-NN over the probe rows' classes; images)
    explore_ahead    explore whose re-checks of up to 10 blocks keep the window only while it is ahead with
                     confidence (the default until re-checks grew to 40 blocks)
    explore_ahead20  explore_ahead with re-checks of up to 20 blocks (more power to confirm a window that helps)
    explore_ahead40  explore_ahead with re-checks of up to 40 blocks: today's default, the same as explore
    explore_behind   explore whose re-checks of up to 10 blocks drop the window only when it is behind with
                     confidence
    explore_null     explore whose two candidate levels are random batches too (local:S and local:S+1 over the
                     S = 8B-row candidate sample: every row is in the neighbourhood): what the machinery alone costs
    best_fixed       Greedy-64 in a fixed window (--best-window, e.g. the best level of window_location.py)
    cluster / pool / greedy   TAS-B-like mix, Pool-P3, Greedy-64, each in the gradient-calibrated window
    greedy_follow / pool_follow   Greedy-64 / Pool-P3 in the gradient-calibrated window, re-calibrated on the bank
                     at every epoch start (a window that follows an encoder trained from scratch)
    random_mask      random batches, false-negative masking (false_negatives="mask", margin 0, self-guided)
    tight            one k-means cluster per batch (TAS-Balanced's tight batches: the lowest diversity)
    tight_mask       tight batches with false-negative masking
    window_mask      Greedy-64 in the gradient-calibrated window (= greedy) with false-negative masking
    learnability     JEST-style joint selection from 4×B random rows by learner − reference loss
    hard             the same selection by learner loss alone (hard-example selection)
    learnability_window   learnability-sampled batches kept inside the gradient-calibrated window
    random_mask_strict    random batches, masking only negatives the model ranks 0.1 above the positive
    random_dup / tight_dup / window_dup / learnability_dup   masking only the certain false negatives
                     (false_negatives="duplicates": in-batch rows with an identical anchor or positive)

The held-out score is evaluated every ``--eval-every`` steps (evaluation time excluded from the clock); the clock
includes everything else a run pays: reference encoding of the bank, window calibration, epoch planning,
training steps and logging. Reported per policy: final score (mean ± std) and, **paired by seed against random**,
the mean difference of the final score and of the seconds to reach random's final mean score, each with a 95 %
t-interval; for the progress policies the calibration decisions, their cost as a fraction of the run, and the
in-window fraction of the training batches while a window was in force. Results are written after every run.

    python benchmarks/time_to_quality.py --task text --policies random progress gradient      # τ = 0.05
    python benchmarks/time_to_quality.py --task text --temperature 0.5 --policies random progress
    python benchmarks/time_to_quality.py --task vision
    python benchmarks/time_to_quality.py --task text --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _clock import CLOCK_KEYS, eval_clock
from _merge import merged_from, read_parts
from _stats import auc, reach, t_interval

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_M64 = {"builder": "greedy", "builder_kwargs": {"m": 64}}
_TIGHT = {"builder": "cluster", "builder_kwargs": {"clusters_per_batch": 1}}
_MASK = {"false_negatives": "mask"}
_DUP = {"false_negatives": "duplicates"}
POLICIES = {  # DivCLTrainingArguments options per policy (loss_kwargs add to the task's)
    "random": {"batch_policy": "random"},
    "no_duplicates": {"batch_sampler": "no_duplicates", "batch_policy": "random"},
    "gradient": {"batch_policy": "auto", "batch_policy_kwargs": _M64},
    "progress": {"batch_policy": "progress"},
    "progress_follow": {"batch_policy": "progress", "batch_policy_kwargs": {"builder_kwargs": {"m": 64}}},
    # + recalibrate_every / budget from flags
    "best_fixed": {"batch_policy": "window", "batch_policy_kwargs": _M64},  # + window from --best-window
    "greedy_follow": {"batch_policy": "auto", "batch_policy_kwargs": {**_M64, "recalibrate_every_epochs": 1}},
    "pool_follow": {"batch_policy": "auto", "batch_policy_kwargs": {"builder": "pool", "builder_kwargs": {"p": 3},
                                                                    "recalibrate_every_epochs": 1}},
    "cluster": {"batch_policy": "auto", "batch_policy_kwargs": {"builder": "cluster"}},
    "pool": {"batch_policy": "auto", "batch_policy_kwargs": {"builder": "pool", "builder_kwargs": {"p": 3}}},
    "greedy": {"batch_policy": "auto", "batch_policy_kwargs": _M64},
    "random_mask": {"batch_policy": "random", "loss_kwargs": _MASK},
    "tight": {"batch_policy": "auto", "batch_policy_kwargs": _TIGHT},
    "tight_mask": {"batch_policy": "auto", "batch_policy_kwargs": _TIGHT, "loss_kwargs": _MASK},
    "window_mask": {"batch_policy": "auto", "batch_policy_kwargs": _M64, "loss_kwargs": _MASK},
    "learnability": {"batch_policy": "learnability"},
    "hard": {"batch_policy": "hard"},
    "learnability_window": {"batch_policy": "learnability", "batch_policy_kwargs": {"window": "auto"}},
    "random_mask_strict": {"batch_policy": "random", "loss_kwargs": {**_MASK, "false_negative_margin": -0.1}},
    "random_dup": {"batch_policy": "random", "loss_kwargs": _DUP, "dedupe": False},
    "tight_dup": {"batch_policy": "auto", "batch_policy_kwargs": _TIGHT, "loss_kwargs": _DUP, "dedupe": False},
    "window_dup": {"batch_policy": "auto", "batch_policy_kwargs": _M64, "loss_kwargs": _DUP, "dedupe": False},
    "learnability_dup": {"batch_policy": "learnability", "loss_kwargs": _DUP, "dedupe": False},
    "spread": {"batch_policy": "window", "batch_policy_kwargs": _M64},  # + the window measured in run_one
    "mnrl_hardness": {"batch_policy": "random"},  # + the loss made in run_one
    "spread_hardness": {"batch_policy": "window", "batch_policy_kwargs": _M64},
    "gist_guide": {"batch_policy": "random", "loss_kwargs": _MASK},  # + the guide in run_one
    "explore": {"batch_policy": "explore"},
    "explore_once": {"batch_policy": "explore", "batch_policy_kwargs": {"recheck_blocks": 0}},
    "explore_labels": {"batch_policy": "explore", "batch_policy_kwargs": {"probe": "labels", "recheck_rule": "behind",
                                                                         "recheck_blocks": 10}},
    "explore_ahead": {"batch_policy": "explore", "batch_policy_kwargs": {"recheck_rule": "ahead",
                                                                        "recheck_blocks": 10}},
    "explore_behind": {"batch_policy": "explore", "batch_policy_kwargs": {"recheck_rule": "behind",
                                                                         "recheck_blocks": 10}},
    "explore_ahead20": {"batch_policy": "explore", "batch_policy_kwargs": {"recheck_rule": "ahead",
                                                                          "recheck_blocks": 20}},
    "explore_ahead40": {"batch_policy": "explore", "batch_policy_kwargs": {"recheck_rule": "ahead",
                                                                          "recheck_blocks": 40}},
    "explore_null": {"batch_policy": "explore"},  # + levels that are random batches, set in run_one
}


def text_task(a):
    from hf_divcl.data.wordnet import wordnet_split
    from hf_divcl.evaluation.retrieval import retrieval_metrics
    from hf_divcl.evaluation.word_similarity import word_similarity
    from hf_divcl.models.loading import load_sentence_transformer

    domains = a.domain.split(",") if a.domain else None
    train = wordnet_split(kind=a.kind, split="train", source=a.source, domains=domains).select_columns(
        ["anchor", "positive"])
    test = wordnet_split(kind=a.kind, split="test", source=a.source, domains=domains)
    if a.rows:
        train = train.shuffle(seed=0).select(range(min(a.rows, len(train))))

    def make_model(seed):
        return load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")

    def evaluate(model):
        scores = retrieval_metrics(model, list(test["anchor"]), list(test["positive"]), name="wordnet")
        out = {"score": scores["wordnet_ndcg@10"], "mrr@10": scores.get("wordnet_mrr@10")}
        if a.word_similarity:
            out.update({k: v for k, v in word_similarity(model).items() if k.endswith("spearman")})
        model.train()
        return out

    return train, make_model, evaluate, {"loss_kwargs": {"temperature": a.temperature or 0.05},
                                         "learning_rate": a.lr or 5e-5}, \
        "ndcg@10", {"anchor_column": "anchor", "start_model": lambda: make_model(0)}


def vision_task(a):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.images import fashion_mnist
    from hf_divcl.evaluation.probes import knn_accuracy
    from hf_divcl.models.vision import build_tiny_vit_sentence_transformer

    train = fashion_mnist("train", limit=a.rows or 4096)
    probe_train = fashion_mnist("train", limit=2000)
    test = fashion_mnist("test", limit=1000)
    tmp = Path(tempfile.mkdtemp(prefix="ttq-vit-"))

    def make_model(seed):
        path = build_tiny_vit_sentence_transformer(tmp / f"s{seed}", hidden_size=a.vit_hidden or 64,
                                                   layers=a.vit_layers or 2, seed=seed)
        return SentenceTransformer(path, device="cpu")

    def evaluate(model):
        acc = knn_accuracy(model, list(probe_train["image"]), list(probe_train["label"]), list(test["image"]),
                           list(test["label"]), k=20)
        model.train()
        return {"score": acc}

    extra = {"loss_kwargs": {"temperature": a.temperature or 0.2, "loss_type": "nt_xent"},
             "learning_rate": a.lr or 1e-3, "augment_scale_min": 0.5}
    return train, make_model, evaluate, extra, "k-NN accuracy", {"anchor_column": "image", "start_model": None}


def clip_task(a):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.images import class_descriptions, fashion_mnist_image_text
    from hf_divcl.models.vision import build_tiny_clip_sentence_transformer

    train = fashion_mnist_image_text("train", limit=a.rows or 4000).select_columns(["image", "text"])
    test = fashion_mnist_image_text("test", limit=1000)
    descriptions = class_descriptions()
    tmp = Path(tempfile.mkdtemp(prefix="ttq-clip-"))

    def make_model(seed):
        path = build_tiny_clip_sentence_transformer(tmp / f"s{seed}", image_size=28, hidden_size=64, layers=2,
                                                    seed=seed)
        return SentenceTransformer(path, device="cpu")

    def evaluate(model):
        import torch

        with torch.no_grad():
            img = model.encode(list(test["image"]), convert_to_tensor=True, normalize_embeddings=True)
            txt = model.encode(descriptions, convert_to_tensor=True, normalize_embeddings=True)
        pred = (img @ txt.T).argmax(-1).cpu()
        model.train()
        return {"score": float((pred == torch.tensor(test["label"])).float().mean())}

    extra = {"loss_kwargs": {"temperature": a.temperature or 0.07, "symmetric": True},
             "learning_rate": a.lr or 1e-3, "dedupe": False}
    return train, make_model, evaluate, extra, "zero-shot accuracy", {"anchor_column": "image", "start_model": None}


def random_rank(model, train, column: str, batch_size: int, seed: int, n_batches: int = 32) -> tuple[float, float]:
    """Mean and sd of the effective rank of ``n_batches`` random batches of ``column`` under ``model``."""
    import torch

    from hf_divcl.diversity.metrics import batch_diversity

    gen = torch.Generator().manual_seed(10_000 + seed)
    sample = torch.randperm(len(train), generator=gen)[:min(len(train), 16 * batch_size)].tolist()
    with torch.no_grad():
        emb = model.encode(list(train.select(sample)[column]), convert_to_tensor=True, normalize_embeddings=True,
                           show_progress_bar=False).double().cpu()
    idx = torch.stack([torch.randperm(len(sample), generator=gen)[:batch_size] for _ in range(n_batches)])
    rank = batch_diversity(emb[idx], spectrum=True, validate=False)["effective_rank"]
    model.train()
    return rank.mean().item(), rank.std().item()


def run_one(policy: str, seed: int, task, a, workdir: Path) -> dict:
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    train, make_model, evaluate, extra, _, info = task
    model = make_model(seed)
    results: list[dict] = []
    clock = eval_clock(lambda last: evaluate(model), a.eval_every, results)
    results.append({"step": 0, "seconds": 0.0, **evaluate(model)})
    opts = dict(POLICIES[policy])
    kw = dict(opts.pop("batch_policy_kwargs", None) or {})  # the policy's settings
    loss_kwargs = {**extra["loss_kwargs"], **opts.pop("loss_kwargs", {})}
    if policy == "progress_follow":
        kw.update(recalibrate_every=str(a.follow_every), budget=a.follow_budget)
    if policy == "best_fixed":
        if not a.best_window:
            raise SystemExit("best_fixed needs --best-window low:high (e.g. from window_location.py at this τ)")
        kw["window"] = a.best_window
    if policy.startswith("explore"):
        if a.explore_budget is not None:
            kw["budget"] = a.explore_budget
        if a.explore_probe_rows:
            kw["probe_rows"] = a.explore_probe_rows
    if policy == "explore_null":  # a neighbourhood as large as the sample is a random subset of it
        sample = 8 * a.batch_size
        kw.update(sample_rows=sample, levels=f"local:{sample},local:{sample + 1}")
    loss = None
    measured = {}
    if policy in ("spread", "spread_hardness"):
        mean, sd = random_rank(model, train, info["anchor_column"], a.batch_size, seed)
        kw["window"] = f"{min(mean + sd, a.batch_size - 0.5):.2f}:{a.batch_size}"
        measured = {"random_rank_mean": mean, "random_rank_sd": sd, "window": kw["window"]}
    if policy in ("mnrl_hardness", "spread_hardness"):
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        loss = MultipleNegativesRankingLoss(model, scale=1.0 / loss_kwargs["temperature"],
                                            hardness_mode="in_batch_negatives",
                                            hardness_strength=a.hardness_strength)
    if policy == "gist_guide":
        guide = workdir / "guide"
        if not guide.exists():
            if info["start_model"] is None:
                raise SystemExit("gist_guide needs a pretrained starting model (text task)")
            info["start_model"]().save(str(guide))
        loss_kwargs["guide"] = str(guide)
    schedule = {}
    if a.schedule == "plateau":  # warm-up 5 %, constant, linear decay over the last 10 %
        schedule = {"lr_scheduler_type": "warmup_stable_decay",
                    "lr_scheduler_kwargs": {"num_decay_steps": max(1, a.steps // 10), "decay_type": "linear"}}
    if a.optim != "adamw":
        schedule["optim"] = a.optim
    args = DivCLTrainingArguments(
        output_dir=str(workdir / f"{policy}-{seed}"), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
        warmup_steps=max(1, a.steps // (20 if a.schedule == "plateau" else 10)), seed=seed, report_to=[],
        disable_tqdm=True, save_strategy="no",
        logging_steps=max(1, a.eval_every), collapse_threshold=0,
        bank_cache_dir=str(workdir / "cache" / ("shared" if a.shared_cache else policy)),
        **{**{k: v for k, v in extra.items() if k != "loss_kwargs"}, **opts}, **schedule,  # the policy's own win
        batch_policy_kwargs=kw or None, loss_kwargs=loss_kwargs)
    clock.restart()
    trainer = DivCLTrainer(model=model, args=args, train_dataset=train, loss=loss, callbacks=[clock])
    trainer.train()
    log = [r for r in trainer.state.log_history if "divcl/in_window_fraction" in r]
    follower = getattr(trainer.policy, "runner", None)  # batch_policy="progress" / "explore": the calibrations
    plan = getattr(trainer.policy, "plan", None)
    reference = getattr(trainer.policy, "reference_result", None)  # batch_policy="learnability": its reference
    calibrations = [{k: h.get(k) for k in ("step", "decision", "level", "reason", "window", "levels",
                                             "wall_seconds", "cost", "estimate")} for h in follower.history] \
        if follower else []
    total = clock.seconds()
    return {"policy": policy, "seed": seed, "curve": results, "total_seconds": total, "measured": measured,
            "in_window_fraction": statistics.fmean(r["divcl/in_window_fraction"] for r in log) if log else None,
            # logs with a window in force (only they carry the in-window fraction) over all diversity logs
            "window_active_fraction": len(log) / max(1, sum("divcl/effective_rank" in r
                                                            for r in trainer.state.log_history)),
            "selection_seconds": trainer.selection_seconds(),
            "reference_seconds": reference.seconds if reference is not None else 0.0,
            "bank_seconds": getattr(trainer, "bank_seconds", 0.0),
            "masked": {k: r[k] for r in trainer.state.log_history[-3:] for k in r if "masked_negatives" in k},
            "calibration_seconds": follower.seconds if follower else 0.0,
            "calibration_fraction": (follower.seconds / total if follower and total else 0.0),
            "calibration_plan": plan.to_dict() if plan else None,
            "calibrations": calibrations}


def paired(by: dict[str, list[dict]], target: float | None) -> dict[str, dict]:
    """Per policy, policy − random on the same seed: final score, seconds to random's final mean score and, with
    ``--word-similarity``, the guards at the end (``final_<benchmark>_spearman_minus_random``)."""
    base = {r["seed"]: r for r in by.get("random", [])}
    out = {}
    for policy, rs in by.items():
        if policy == "random":
            continue
        pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
        d_final = [r["curve"][-1]["score"] - b["curve"][-1]["score"] for r, b in pairs]
        d_time, unreached = [], 0
        for r, b in pairs:
            tr, tb = (reach(x["curve"], target, "seconds") if target is not None else None for x in (r, b))
            if tr is None or tb is None:
                unreached += tr is None
                continue
            d_time.append(tr - tb)
        d_auc = [auc(r["curve"]) - auc(b["curve"]) for r, b in pairs]
        out[policy] = {"final_minus_random": t_interval(d_final), "final_diffs": d_final,
                       "auc_minus_random": t_interval(d_auc), "wins": sum(d > 0 for d in d_final),
                       "seconds_to_random_final_minus_random": t_interval(d_time),
                       "runs_never_reaching_random_final": unreached}
        guards = [k for k in (pairs[0][0]["curve"][-1] if pairs else {}) if k.endswith("_spearman")]
        for k in guards:
            out[policy][f"final_{k}_minus_random"] = t_interval(
                [r["curve"][-1][k] - b["curve"][-1][k] for r, b in pairs
                 if r["curve"][-1].get(k) is not None and b["curve"][-1].get(k) is not None])
    return out


def summarise(runs: list[dict]) -> dict:
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["policy"], []).append(r)
    target = statistics.fmean(r["curve"][-1]["score"] for r in by["random"]) if "random" in by else None
    out = {"random_final_mean": target, "policies": {}}
    base_time = None
    for policy, rs in by.items():
        finals = [r["curve"][-1]["score"] for r in rs]
        secs = [reach(r["curve"], target, "seconds") for r in rs] if target is not None else []
        steps = [reach(r["curve"], target, "step") for r in rs] if target is not None else []
        reached = [s for s in secs if s is not None]
        entry = {"final_mean": statistics.fmean(finals), "auc_mean": statistics.fmean(auc(r["curve"]) for r in rs),
                 "final_std": statistics.pstdev(finals) if len(finals) > 1
                 else 0.0, "finals": finals, "seconds_to_random_final": secs, "steps_to_random_final": steps,
                 "median_seconds_to_random_final": statistics.median(reached) if len(reached) == len(rs) else None,
                 "total_seconds_mean": statistics.fmean(r["total_seconds"] for r in rs),
                 "selection_seconds_mean": statistics.fmean(r["selection_seconds"] for r in rs),
                 "in_window_fraction": [r["in_window_fraction"] for r in rs],
                 "calibration_fraction_mean": statistics.fmean(r.get("calibration_fraction", 0.0) for r in rs),
                 "decisions": [[(c["step"], c["decision"], c["level"]) for c in r.get("calibrations", [])]
                               for r in rs]}
        for k in rs[0]["curve"][-1]:
            if k not in (*CLOCK_KEYS, "score") and rs[0]["curve"][-1][k] is not None:
                entry[f"final_{k}_mean"] = statistics.fmean(r["curve"][-1][k] for r in rs)
        out["policies"][policy] = entry
        if policy == "random":
            base_time = entry["median_seconds_to_random_final"]
    for entry in out["policies"].values():
        t = entry["median_seconds_to_random_final"]
        entry["time_ratio_vs_random"] = t / base_time if t is not None and base_time else None
    for policy, stats in paired(by, target).items():
        out["policies"][policy]["paired_vs_random"] = stats
    return out


def plot(runs: list[dict], label: str, path: Path) -> None:
    from hf_divcl.publish.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("tab20")
    colours = {p: cmap(i % 20) for i, p in enumerate(POLICIES)}
    for policy in POLICIES:
        rs = [r for r in runs if r["policy"] == policy]
        if not rs:
            continue
        for i, r in enumerate(rs):
            kw = {"color": colours[policy], "alpha": 0.8, "lw": 1.2, "label": policy if i == 0 else None}
            axes[0].plot([p["step"] for p in r["curve"]], [p["score"] for p in r["curve"]], **kw)
            axes[1].plot([p["seconds"] for p in r["curve"]], [p["score"] for p in r["curve"]], **kw)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("wall-clock seconds (selection included, evaluation excluded)")
    for ax in axes:
        ax.set_ylabel(f"held-out {label}")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def merge(paths: list[str], out: Path) -> None:
    """One result file from several runs of the same settings on different seeds (e.g. seeds added later)."""
    parts, runs = read_parts(paths, ("seeds", "policies", "renamed", "output", "merged_from"),
                             {"policy": "policy", "seed": "seed"})
    sources = merged_from(paths, parts)
    config = {**parts[0]["config"], "seeds": sorted({r["seed"] for r in runs}), "output": str(out),
              "policies": list(dict.fromkeys(r["policy"] for r in runs)), "merged_from": sources}
    result = {"task": parts[0]["task"], "metric": parts[0]["metric"], "config": config, "summary": summarise(runs),
              "runs": runs, "machine": parts[0]["machine"]}
    out.write_text(json.dumps(result, indent=2))
    plot(runs, parts[0]["metric"], out.with_suffix(".png"))
    print(f"merged {len(runs)} runs from {len(paths)} files into {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["text", "vision", "clip"], default="text")
    p.add_argument("--policies", nargs="+", default=None, choices=list(POLICIES), help="default: all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="default: 80 (text) / 320 (vision, 10 epochs)")
    p.add_argument("--eval-every", type=int, default=None, help="default: 10 (text) / 40 (vision)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (text) / 128 (vision)")
    p.add_argument("--rows", type=int, default=0, help="training rows (0: all text pairs / 4096 images)")
    p.add_argument("--vit-hidden", type=int, default=None, help="vision: the ViT's hidden size (default 64)")
    p.add_argument("--vit-layers", type=int, default=None, help="vision: the ViT's layers (default 2)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None, help="default: 0.05 (text) / 0.2 (vision)")
    p.add_argument("--source", default="auto", help="text data: auto (Debian WordNet if installed), embedded, debian")
    p.add_argument("--domain", default=None,
                   help="text: only these WordNet lexicographer files, e.g. noun.animal (low-diversity domain data)")
    p.add_argument("--kind", default="example", choices=["example", "lemma", "both"],
                   help="text pairs: example sentence or lemmas → definition")
    p.add_argument("--explore-budget", type=float, default=None, help="explore: its budget (default 0.05)")
    p.add_argument("--explore-probe-rows", type=int, default=0, help="explore: probe rows (default min(256, N/10))")
    p.add_argument("--hardness-strength", type=float, default=9.0, help="mnrl_hardness: hardness_strength")
    p.add_argument("--schedule", choices=["linear", "plateau"], default="linear",
                   help="plateau: warm-up 5 %%, constant, decay over the last 10 %% (final quality is not the decay)")
    p.add_argument("--optim", default="adamw", help="transformers optim name, e.g. adamw_torch, sgd")
    p.add_argument("--follow-every", type=int, default=100, help="progress_follow: re-calibrate every N steps")
    p.add_argument("--follow-budget", type=float, default=0.3, help="progress_follow: calibration budget")
    p.add_argument("--best-window", default=None, help="best_fixed: 'low:high' effective rank")
    p.add_argument("--word-similarity", action="store_true", help="also WordSim-353 / SimLex-999 at each eval")
    p.add_argument("--shared-cache", action="store_true",
                   help="one bank cache for all policies (the starting model's encoding is paid once, not per policy)")
    p.add_argument("--smoke", action="store_true", help="2 policies, 1 seed, a few steps: < 1 minute")
    p.add_argument("--output", default=None)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="combine the runs of these result files (the same settings, other seeds) into --output")
    a = p.parse_args()
    if a.merge:
        merge(a.merge, Path(a.output))
        return
    text = a.task == "text"
    if not a.smoke:
        a.policies = a.policies or list(POLICIES)
    a.steps = a.steps or (80 if text else 320 if a.task == "vision" else 160)
    a.eval_every = a.eval_every or (10 if text else 40)
    a.batch_size = a.batch_size or (32 if text else 128 if a.task == "vision" else 32)
    if a.smoke:
        a.policies = a.policies or ["random", "progress"]
        a.seeds, a.steps, a.eval_every, a.batch_size = [0], 4, 2, 8
        a.rows = 128 if text else 256
        a.source = "embedded"
    out = Path(a.output or (Path(tempfile.gettempdir()) / f"ttq_{a.task}_smoke.json" if a.smoke
                            else f"benchmarks/results/time_to_quality_{a.task}.json"))

    import torch

    task = text_task(a) if text else vision_task(a) if a.task == "vision" else clip_task(a)
    runs = []
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
               "platform": platform.platform()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            for policy in a.policies:  # interleaved: machine drift hits every policy alike
                r = run_one(policy, seed, task, a, Path(tmp))
                runs.append(r)
                last = r["curve"][-1]
                decided = ", ".join(f"{c['step']}:{c['level'] or 'random'}"
                                    f"{' (re-check)' if c.get('estimate') == 'recheck' else ''}"
                                    for c in r["calibrations"])
                print(f"seed {seed} {policy:15s} final {task[4]} {last['score']:.4f}  {r['total_seconds']:.1f} s "
                      f"(selection {r['selection_seconds']:.1f} s, calibration {r['calibration_seconds']:.1f} s"
                      f"{'; ' + decided if decided else ''})", flush=True)
                result = {"task": a.task, "metric": task[4], "config": vars(a), "summary": summarise(runs),
                          "runs": runs, "machine": machine}
                out.write_text(json.dumps(result, indent=2))  # partial results survive an interrupted run
    summary = summarise(runs)
    plot(runs, task[4], out.with_suffix(".png"))
    print(json.dumps({p: {k: v for k, v in e.items() if k in ("final_mean", "final_std", "paired_vs_random",
                                                                "calibration_fraction_mean", "decisions")}
                      for p, e in summary["policies"].items()}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
