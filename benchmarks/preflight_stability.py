"""How often each pre-flight recommendation comes out the same when its samples are redrawn.

The pre-flight (`hf_divcl.policies.preflight`) encodes a seeded sample of rows and measures random batches of
them. This benchmark encodes each data set once, then for every seed redraws the row sample, the batches and the
general-domain reference sample, and counts the recommendations. Two data sets: a fine-grained subset (WordNet
lemma → gloss pairs of the `noun.animal` lexicographer file, where the rule should say "outside the evidence") and
a general sample of WordNet lemma pairs (where it should say "random batches are fine").

    python benchmarks/preflight_stability.py --output benchmarks/results/preflight_stability.json
    python benchmarks/preflight_stability.py --smoke --output /tmp/p.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ANIMAL_LEXFILE = "05"  # noun.animal in WordNet's data.noun


def animal_synsets(root: str = "/usr/share/wordnet") -> set[str]:
    ids = set()
    with open(os.path.join(root, "data.noun"), encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.split(" ", 3)
            if not line.startswith("  ") and len(fields) > 2 and fields[1] == ANIMAL_LEXFILE:
                ids.add("n" + fields[0])
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--rows", type=int, default=2048, help="rows per pre-flight sample (its max_rows)")
    ap.add_argument("--pool", type=int, default=7000, help="rows encoded per data set")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--smoke", action="store_true", help="3 seeds, 256 rows of 600 (CI)")
    ap.add_argument("--output", default=None)
    a = ap.parse_args()
    if a.smoke:
        a.seeds, a.rows, a.pool = 3, 256, 600

    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.models.loading import load_sentence_transformer
    from hf_divcl.planning.dedupe import duplicate_groups
    from hf_divcl.policies.preflight import duplicate_rows_per_batch, random_batch_stats, recommend

    t0 = time.perf_counter()
    model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")

    def encode(texts):
        return model.encode(list(texts), batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                            show_progress_bar=False).float().cpu()

    source = "debian" if os.path.isdir("/usr/share/wordnet") else "embedded"
    lemmas = wordnet_pairs(kind="lemma", source=source)
    if source == "debian":
        ids = animal_synsets()
        animals = lemmas.filter(lambda r: r["synset_id"] in ids)
    else:  # no Debian files: the embedded sample's lemma pairs of the same synsets, if any (smoke runs only)
        animals = lemmas
    sets = {"animals": animals.shuffle(seed=0).select(range(min(a.pool, len(animals)))),
            "general": lemmas.shuffle(seed=0).select(range(min(a.pool, len(lemmas))))}
    reference = encode(wordnet_pairs(kind="example", source="embedded")["anchor"][:max(a.rows, 512)])
    out = {"benchmark": "preflight_stability", "source": source, "seeds": a.seeds, "rows": a.rows,
           "batch_size": a.batch_size, "sets": {}}
    for name, ds in sets.items():
        anchors, positives = encode(ds["anchor"]), encode(ds["positive"])
        dup = duplicate_rows_per_batch(duplicate_groups(list(ds["anchor"]), list(ds["positive"])), a.batch_size)
        decisions, ratios = [], []
        for seed in range(a.seeds):
            gen = torch.Generator().manual_seed(seed)
            keep = torch.randperm(anchors.shape[0], generator=gen)[:a.rows]
            stats = random_batch_stats(anchors[keep], positives[keep], a.batch_size, 0.05, 64, gen)
            stats["duplicate_rows"] = dup
            rkeep = torch.randperm(reference.shape[0], generator=gen)[:512]
            ref = random_batch_stats(reference[rkeep], reference[rkeep], a.batch_size, 0.05, 64,
                                     gen)["effective_rank"]
            decisions.append(recommend(stats, min(a.batch_size, anchors.shape[1]), ref)[1])
            ratios.append(stats["effective_rank"] / ref)
        out["sets"][name] = {"rows": len(ds), "duplicate_rows": dup,
                             "decisions": {d: decisions.count(d) for d in sorted(set(decisions))},
                             "rank_over_reference": [min(ratios), max(ratios)]}
        print(name, json.dumps(out["sets"][name]), flush=True)
    out["seconds"] = time.perf_counter() - t0
    if a.output:
        with open(a.output, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
