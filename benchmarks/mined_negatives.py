"""Mined hard negatives: hf_divcl's trainer against plain sentence-transformers on the same mined data, paired seeds.

The data is what a sentence-transformers user builds: WordNet lemma → gloss pairs of one domain (Debian
``wordnet-base``, split by synset), with one hard negative per pair mined by the starting model itself
(``sentence_transformers.util.mine_hard_negatives``, n-tuple format). all-MiniLM-L6-v2 is fine-tuned on it by:

- ``st_mnrl``:          ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` (scale 1/τ), ``NO_DUPLICATES``
                         batches — the usual sentence-transformers recipe;
- ``st_mnrl_hardness``: the same with ``hardness_mode="hard_negatives"`` (``--hardness-strength``);
- ``divcl``:            ``DivCLTrainer`` with its defaults (random duplicate-free batches, InfoNCE at τ; hard negatives
                         equal to an in-batch row's own anchor or positive masked, and counted);
- ``divcl_nomask``:     the same with ``loss_kwargs={"mask_duplicate_negatives": False}`` (the masking's own effect).

Held-out ndcg@10 (the domain's held-out pairs) along the run, SimLex-999 / WordSim-353 at the end; paired
differences against ``st_mnrl`` (and ``divcl`` against ``divcl_nomask``) with 95 % t-intervals, final and area.

    python benchmarks/mined_negatives.py --seeds 0 1 2 3 4 5 6 7 --output benchmarks/results/mined_negatives.json
    python benchmarks/mined_negatives.py --smoke      # embedded WordNet sample, tiny run: < 2 minutes

A τ sweep runs one ``--temperature`` per file; ``--merge`` joins files of the same data and settings (other τ, seeds
or arms) and adds ``best_tau``: each arm at its own best τ (highest mean final ndcg@10 over the seeds its τ share;
``at_edge`` when that is the lowest or highest τ tried) and every arm there against ``st_mnrl`` at its best τ, paired
by seed, with the guards (SimLex-999 / WordSim-353) of both:

    python benchmarks/mined_negatives.py --arms st_mnrl divcl --temperature 0.1 --output tau0.1.json
    python benchmarks/mined_negatives.py --merge benchmarks/results/mined_negatives.json tau0.1.json --output all.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _clock import eval_clock
from _merge import merged_from, read_parts
from _stats import auc, best_of_sweep, t_interval

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARMS = ("st_mnrl", "st_mnrl_hardness", "divcl", "divcl_nomask")


def build_data(a):
    """``(train n-tuples, held-out pairs, mining seconds)``: the domain's pairs, negatives mined by the start model."""
    from sentence_transformers.util import mine_hard_negatives

    from hf_divcl.data.wordnet import wordnet_split
    from hf_divcl.models.loading import load_sentence_transformer

    domains = a.domain.split(",") if a.domain else None
    test_size = 0.2 if a.source == "embedded" else a.test_size
    train = wordnet_split(kind=a.kind, split="train", source=a.source, domains=domains, test_size=test_size)
    test = wordnet_split(kind=a.kind, split="test", source=a.source, domains=domains, test_size=test_size)
    train = train.select_columns(["anchor", "positive"])
    if a.rows:
        train = train.shuffle(seed=0).select(range(min(a.rows, len(train))))
    t0 = time.perf_counter()
    model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
    mined = mine_hard_negatives(train, model, num_negatives=a.negatives, output_format="n-tuple",
                                batch_size=64, verbose=False)
    return mined, test, time.perf_counter() - t0


def evaluate(model, test, word_sim: bool) -> dict:
    from hf_divcl.evaluation.retrieval import retrieval_metrics
    from hf_divcl.evaluation.word_similarity import word_similarity

    scores = retrieval_metrics(model, list(test["anchor"]), list(test["positive"]), name="heldout")
    out = {"score": scores["heldout_ndcg@10"]}
    if word_sim:
        out.update({k: v for k, v in word_similarity(model).items() if k.endswith("spearman")})
    model.train()
    return out


def run_one(arm: str, seed: int, mined, test, a, workdir: Path) -> dict:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from hf_divcl.models.loading import load_sentence_transformer
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
    curve = [{"step": 0, "seconds": 0.0, **evaluate(model, test, False)}]
    clock = eval_clock(lambda last: evaluate(model, test, last), a.eval_every, curve, start_on_train_begin=True)

    common = dict(output_dir=str(workdir / f"{arm}-{seed}"), per_device_train_batch_size=a.batch_size,
                  max_steps=a.steps, warmup_steps=max(1, a.steps // 10), seed=seed, report_to=[], disable_tqdm=True,
                  save_strategy="no", logging_steps=max(1, a.eval_every), learning_rate=a.lr)
    if arm.startswith("st_"):
        hardness = {"hardness_mode": "hard_negatives", "hardness_strength": a.hardness_strength} \
            if arm == "st_mnrl_hardness" else {}
        loss = MultipleNegativesRankingLoss(model, scale=1.0 / a.temperature, **hardness)
        args = SentenceTransformerTrainingArguments(**common, batch_sampler=BatchSamplers.NO_DUPLICATES)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=mined, loss=loss,
                                             callbacks=[clock])
    else:
        loss_kwargs = {"temperature": a.temperature}
        if arm == "divcl_nomask":
            loss_kwargs["mask_duplicate_negatives"] = False
        args = DivCLTrainingArguments(**common, collapse_threshold=0, loss_kwargs=loss_kwargs)
        trainer = DivCLTrainer(model=model, args=args, train_dataset=mined, callbacks=[clock])
    trainer.train()
    logs = [r for r in trainer.state.log_history if "divcl/duplicate_negatives_masked_total" in r
            or "divcl/duplicate_negatives_unmasked_total" in r]
    duplicates = None
    if logs:
        last = logs[-1]
        duplicates = last.get("divcl/duplicate_negatives_masked_total",
                              last.get("divcl/duplicate_negatives_unmasked_total"))
    return {"arm": arm, "seed": seed, "temperature": a.temperature, "curve": curve,
            "total_seconds": time.perf_counter() - clock.t0, "duplicate_negatives": duplicates}


def summarise(runs: list[dict]) -> dict:
    by: dict[str, dict[int, dict]] = {}
    for r in runs:
        by.setdefault(r["arm"], {})[r["seed"]] = r
    out: dict = {"arms": {}, "paired": {}}
    for arm, rs in by.items():
        rs_list = list(rs.values())
        out["arms"][arm] = {
            "final_mean": statistics.fmean(r["curve"][-1]["score"] for r in rs_list),
            "auc_mean": statistics.fmean(auc(r["curve"]) for r in rs_list),
            "simlex999_mean": statistics.fmean(r["curve"][-1].get("simlex999_spearman", float("nan"))
                                                for r in rs_list),
            "wordsim353_mean": statistics.fmean(r["curve"][-1].get("wordsim353_spearman", float("nan"))
                                                 for r in rs_list),
            "seconds_mean": statistics.fmean(r["total_seconds"] for r in rs_list),
            "duplicate_negatives_per_run": [r["duplicate_negatives"] for r in rs_list], "seeds": sorted(rs)}
    for arm, base in itertools.product(by, ("st_mnrl", "divcl_nomask")):
        if arm == base or base not in by:
            continue
        seeds = sorted(set(by[arm]) & set(by[base]))
        if not seeds:
            continue
        d_final = [by[arm][s]["curve"][-1]["score"] - by[base][s]["curve"][-1]["score"] for s in seeds]
        d_auc = [auc(by[arm][s]["curve"]) - auc(by[base][s]["curve"]) for s in seeds]
        out["paired"][f"{arm} - {base}"] = {"final": t_interval(d_final), "auc": t_interval(d_auc),
                                            "final_diffs": d_final, "wins": sum(d > 0 for d in d_final)}
    return out


GUARDS = ("simlex999_spearman", "wordsim353_spearman")


def best_tau(runs: list[dict], reference: str = "st_mnrl") -> dict:
    """Each arm at its own best τ (mean final ndcg@10 over the seeds all its τ share), and every arm there against
    ``reference`` at its best τ, paired by seed: final, area and the guards (the end-of-run SimLex / WordSim)."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    best: dict = {}
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        sweep = best_of_sweep({t: {r["seed"]: r["curve"][-1]["score"] for r in rs if r["temperature"] == t}
                               for t in {r["temperature"] for r in rs}})
        if sweep is None:
            continue
        at_tau = [r for r in rs if r["temperature"] == sweep["tau"]]
        best[arm] = {**sweep, "at_edge": sweep["swept"] and sweep["at_edge"],  # one τ only: not "at the edge"
                     "seeds": sorted(r["seed"] for r in at_tau),
                     "final_mean": statistics.fmean(r["curve"][-1]["score"] for r in at_tau),
                     **{f"{g}_mean": statistics.fmean(r["curve"][-1].get(g, float("nan")) for r in at_tau)
                        for g in GUARDS}}
    paired: dict = {}
    if reference in best:
        ref = {r["seed"]: r for r in runs if r["arm"] == reference and r["temperature"] == best[reference]["tau"]}
        for arm in best:
            if arm == reference:
                continue
            mine = {r["seed"]: r for r in runs if r["arm"] == arm and r["temperature"] == best[arm]["tau"]}
            seeds = sorted(mine.keys() & ref.keys())
            paired[f"{arm} - {reference}"] = {
                "taus": [best[arm]["tau"], best[reference]["tau"]], "seeds": seeds,
                "final": t_interval([mine[s]["curve"][-1]["score"] - ref[s]["curve"][-1]["score"] for s in seeds]),
                "auc": t_interval([auc(mine[s]["curve"]) - auc(ref[s]["curve"]) for s in seeds]),
                **{g: t_interval([mine[s]["curve"][-1].get(g) - ref[s]["curve"][-1].get(g) for s in seeds
                                  if g in mine[s]["curve"][-1] and g in ref[s]["curve"][-1]]) for g in GUARDS}}
    return {"arms": best, "paired": paired}


def merge(paths: list[str], out: Path) -> None:
    """One result file from several of the same data and settings (other τ, seeds or arms), with :func:`best_tau`.
    Runs of files written before runs carried their τ take their file's."""
    parts, runs = read_parts(paths, ("seeds", "arms", "temperature", "threads", "output", "resume", "merge",
                                     "merged_from"), {"arm": "arm", "temperature": "temperature", "seed": "seed"},
                             from_config={"temperature": "temperature"})
    for path, part in zip(paths[1:], parts[1:], strict=True):
        if part["train_rows"] != parts[0]["train_rows"] or part["heldout_rows"] != parts[0]["heldout_rows"]:
            raise SystemExit(f"{path}: other data than {paths[0]} (train or held-out rows differ).")
    temperatures = sorted({r["temperature"] for r in runs})
    config = {**parts[0]["config"], "seeds": sorted({r["seed"] for r in runs}), "output": str(out),
              "arms": list(dict.fromkeys(r["arm"] for r in runs)), "temperature": temperatures,
              "merged_from": merged_from(paths, parts), "threads": sorted({p["config"].get("threads") for p in parts})}
    by_tau = {f"{t:g}": summarise([r for r in runs if r["temperature"] == t]) for t in temperatures}
    result = {**{k: v for k, v in parts[0].items() if k not in ("config", "runs", "summary", "machine")},
              "config": config, "summary_by_tau": by_tau, "best_tau": best_tau(runs), "runs": runs,
              "machines": [p.get("machine") for p in parts]}
    out.write_text(json.dumps(result, indent=1))
    print(f"merged {len(runs)} runs from {len(paths)} files into {out}")
    print(json.dumps(result["best_tau"], indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--hardness-strength", type=float, default=9.0)
    p.add_argument("--negatives", type=int, default=1, help="mined negatives per pair (n-tuple columns)")
    p.add_argument("--source", default="debian", help="WordNet: debian (wordnet-base) or embedded")
    p.add_argument("--domain", default="noun.animal", help="lexicographer file(s), comma-separated ('' for all)")
    p.add_argument("--kind", default="lemma", choices=["example", "lemma", "both"])
    p.add_argument("--rows", type=int, default=0, help="training pairs (0: all of the domain)")
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="embedded sample, 2 arms, 1 seed, 6 steps")
    p.add_argument("--output", default=None)
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in --output (same settings) and run only the missing (arm, seed) pairs")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="instead of running: join these result files (other τ, seeds or arms) into --output")
    a = p.parse_args()
    if a.merge:
        if not a.output:
            raise SystemExit("--merge needs --output.")
        merge(a.merge, Path(a.output))
        return
    if a.smoke:
        a.source, a.domain, a.kind, a.rows = "embedded", "", "example", 200
        a.arms, a.seeds, a.steps, a.eval_every, a.batch_size = ["st_mnrl", "divcl"], [0], 6, 3, 16
    import tempfile

    import torch

    torch.set_num_threads(a.threads)
    mined, test, mining_seconds = build_data(a)
    print(f"mined {len(mined)} rows ({mined.column_names}) in {mining_seconds:.0f} s; {len(test)} held out",
          flush=True)
    runs = []
    out_path = Path(a.output) if a.output else None
    if a.resume and out_path is not None and out_path.exists():
        old = json.loads(out_path.read_text())
        free = ("seeds", "arms", "output", "resume")
        diff = sorted(k for k in vars(a).keys() | old["config"].keys()
                      if k not in free and vars(a).get(k) != old["config"].get(k))
        if diff:
            raise SystemExit(f"{out_path} was run with other settings ({', '.join(diff)}); --resume keeps only runs "
                             "of the same settings. Pass them as they were, or another --output.")
        runs = old["runs"]
        print(f"resuming: {len(runs)} runs kept from {out_path}", flush=True)
    done = {(r["arm"], r["seed"]) for r in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for seed, arm in itertools.product(a.seeds, a.arms):  # seed-major: every finished seed is a paired set
            if (arm, seed) in done:
                continue
            r = run_one(arm, seed, mined, test, a, Path(tmp))
            runs.append(r)
            print(f"{arm} seed {seed}: ndcg@10 {r['curve'][0]['score']:.4f} → {r['curve'][-1]['score']:.4f} "
                  f"({r['total_seconds']:.0f} s, duplicate negatives {r['duplicate_negatives']})", flush=True)
            seeds = sorted({r["seed"] for r in runs})
            arms = list(dict.fromkeys(r["arm"] for r in runs))
            config = {**vars(a), "seeds": seeds, "arms": arms}
            result = {"benchmark": "mined_negatives", "config": config, "mining_seconds": mining_seconds,
                      "train_rows": len(mined), "columns": mined.column_names, "heldout_rows": len(test),
                      "runs": runs, "summary": summarise(runs),
                      "machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                                  "platform": platform.platform(), "threads": a.threads}}
            if out_path is not None:  # rewritten after every run: a stopped grid keeps what it finished
                out_path.parent.mkdir(parents=True, exist_ok=True)
                out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps(summarise(runs)["paired"], indent=1))


if __name__ == "__main__":
    main()
