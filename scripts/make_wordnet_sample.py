"""Regenerate ``hf_divcl/data/wordnet_sample.tsv`` from the Debian ``wordnet-base`` files, deterministically.

    .venv/bin/python scripts/make_wordnet_sample.py            # needs /usr/share/wordnet (bash scripts/setup.sh)

Draws (seed 0) 2,500 example→definition and 1,500 lemmas→definition pairs, at most one pair per synset, with
all anchors distinct and all definitions distinct (so in-batch negatives are never identical texts), and
copies WordNet's licence next to it.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from hf_divcl.data.wordnet import _root, iter_wordnet_synsets

OUT = Path(__file__).resolve().parents[1] / "hf_divcl" / "data"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=2500)
    p.add_argument("--lemmas", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    synsets = sorted(iter_wordnet_synsets(), key=lambda s: s.synset_id)
    rng = random.Random(args.seed)
    order = list(range(len(synsets)))
    rng.shuffle(order)
    used_defs: set[str] = set()
    used_anchors: set[str] = set()
    rows: list[tuple[str, str, str, str]] = []
    want = {"example": args.examples, "lemma": args.lemmas}
    for i in order:
        s = synsets[i]
        if not s.definition or s.definition in used_defs or "\t" in s.definition:
            continue
        kind = "example" if s.examples and want["example"] > 0 else ("lemma" if want["lemma"] > 0 else None)
        if kind is None:
            if not any(want.values()):
                break
            continue
        anchor = rng.choice(s.examples) if kind == "example" else ", ".join(s.lemmas)
        if not anchor.strip() or anchor in used_anchors or "\t" in anchor:
            continue
        rows.append((kind, s.synset_id, anchor, s.definition))
        used_defs.add(s.definition)
        used_anchors.add(anchor)
        want[kind] -= 1
    rows.sort(key=lambda r: (r[0], r[1]))
    with (OUT / "wordnet_sample.tsv").open("w", encoding="utf-8") as fh:
        fh.write("kind\tsynset_id\tanchor\tpositive\n")
        for r in rows:
            fh.write("\t".join(x.replace("\n", " ") for x in r) + "\n")
    header = []
    with (_root(None) / "data.noun").open(encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("  "):
                break
            header.append(line[2:].split(" ", 1)[1].rstrip() if " " in line[2:] else "")
    (OUT / "LICENSE.wordnet").write_text("\n".join(header).strip() + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} pairs to {OUT / 'wordnet_sample.tsv'}")


if __name__ == "__main__":
    main()
