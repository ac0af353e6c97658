"""Regenerate the WordNet sample shipped with hf_divcl, deterministically, from Debian's WordNet files.

Run from the repository root (needs ``/usr/share/wordnet``: ``sudo apt-get install wordnet-base`` or
``bash scripts/setup.sh``)::

    .venv/bin/python scripts/make_wordnet_sample.py

which is the same as::

    .venv/bin/python scripts/make_wordnet_sample.py --root /usr/share/wordnet --out-dir hf_divcl/data \\
        --examples 2500 --lemmas 1500 --seed 0

It writes

- ``hf_divcl/data/wordnet_sample.tsv``: a header ``kind<TAB>synset_id<TAB>anchor<TAB>positive``, then 2,500
  ``example`` pairs (example sentence → definition) and 1,500 ``lemma`` pairs (lemmas joined with ", " →
  definition), sorted by synset id. At most one pair per synset; all anchors are distinct and all positives
  are distinct (also ignoring case), so in-batch negatives never have the same text as the positive. Pairs
  with an empty text or a double quote in it are skipped (so any CSV reader splits the file the same way).
- ``hf_divcl/data/LICENSE.wordnet``: WordNet 3.0's licence, copied verbatim from the header of ``data.noun``
  (line numbers and trailing blanks removed).

The draw is a seeded hash order (SHA-256 of seed, kind, synset id and anchor), not a NumPy stream, so the
output is byte-identical on any Python/NumPy version. The file must stay under 600 KB.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from hf_divcl.data.wordnet import SAMPLE_HEADER, SAMPLE_NAME
from hf_divcl.data.wordnet_files import WORDNET_ROOT, iter_wordnet_synsets

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 600_000


def _order(seed: int, *fields: str) -> str:
    return hashlib.sha256("\t".join((str(seed), *fields)).encode("utf-8")).hexdigest()


def _key(text: str) -> str:
    return " ".join(text.casefold().split())


def _tsv_safe(text: str) -> str:
    return " ".join(text.replace("\t", " ").replace("\r", " ").replace("\n", " ").split())


def licence_text(data_noun: Path) -> str:
    """WordNet's licence from the header of ``data.noun`` (lines ``"  N text  "``), minus numbers/blanks."""
    lines = []
    with data_noun.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("  "):
                break
            number, _, text = line[2:].partition(" ")
            if not number.isdigit():
                raise ValueError(f"{data_noun}: unexpected licence header line {line!r}")
            lines.append(text.rstrip())
    if not any("Copyright" in line for line in lines):
        raise ValueError(f"{data_noun}: no copyright notice in the licence header")
    return "\n".join(lines).strip() + "\n"


def draw_sample(synsets, n_examples: int, n_lemmas: int, seed: int) -> list[tuple[str, str, str, str]]:
    """``(kind, synset_id, anchor, positive)`` rows: a seeded draw of example pairs, then of lemma pairs."""
    examples, lemmas = [], []
    for s in synsets:
        lemmas.append(("lemma", s.synset_id, ", ".join(s.lemmas), s.definition))
        examples.extend(("example", s.synset_id, e, s.definition) for e in s.examples)
    rows: list[tuple[str, str, str, str]] = []
    used_synsets: set[str] = set()
    used_texts: set[str] = set()  # anchors and positives share one namespace: no text is both
    for pool, want in ((examples, n_examples), (lemmas, n_lemmas)):
        got = 0
        for kind, synset_id, anchor, positive in sorted(pool, key=lambda r: _order(seed, r[0], r[1], r[2])):
            if got == want:
                break
            anchor, positive = _tsv_safe(anchor), _tsv_safe(positive)
            if not anchor or not positive or '"' in anchor + positive or synset_id in used_synsets:
                continue
            if _key(anchor) in used_texts or _key(positive) in used_texts or _key(anchor) == _key(positive):
                continue
            rows.append((kind, synset_id, anchor, positive))
            used_synsets.add(synset_id)
            used_texts.update((_key(anchor), _key(positive)))
            got += 1
        if got < want:
            raise SystemExit(f"only {got} {pool[0][0]} pairs qualify, {want} wanted")
    return sorted(rows, key=lambda r: (r[1], r[0] != "lemma"))


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--root", type=Path, default=Path(WORDNET_ROOT), help="folder of data.{noun,...}")
    parser.add_argument("--out-dir", type=Path, default=REPO / "hf_divcl" / "data")
    parser.add_argument("--examples", type=int, default=2500)
    parser.add_argument("--lemmas", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    synsets = list(iter_wordnet_synsets(args.root))
    rows = draw_sample(synsets, args.examples, args.lemmas, args.seed)
    body = "".join("\t".join(fields) + "\n" for fields in [SAMPLE_HEADER, *rows]).encode("utf-8")
    if len(body) >= MAX_BYTES:
        raise SystemExit(f"sample is {len(body):,} bytes, over the {MAX_BYTES:,}-byte limit")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / SAMPLE_NAME).write_bytes(body)
    (args.out_dir / "LICENSE.wordnet").write_text(licence_text(args.root / "data.noun"), encoding="utf-8")
    n_ex = sum(r[0] == "example" for r in rows)
    print(f"{len(synsets):,} synsets, {sum(len(s.examples) for s in synsets):,} example sentences; wrote "
          f"{n_ex:,} example + {len(rows) - n_ex:,} lemma pairs ({len(body):,} bytes) to "
          f"{args.out_dir / SAMPLE_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
