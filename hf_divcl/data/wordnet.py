"""WordNet 3.0 text pairs: lemmas → definition and example sentence → definition.

Two sources:

- the Debian package ``wordnet-base`` (``/usr/share/wordnet/data.{noun,verb,adj,adv}``; set
  ``HF_DIVCL_WORDNET_DIR`` to read another folder holding those four files), parsed directly: 117,659 synsets
  and so 117,659 lemma pairs, and 48,336 example sentences (in 32,919 synsets) and so 48,336 example pairs;
- a sample shipped inside this package, ``hf_divcl/data/wordnet_sample.tsv`` (2,500 example and 1,500 lemma
  pairs, all anchors distinct and all positives distinct), regenerated deterministically by
  ``scripts/make_wordnet_sample.py``.

WordNet 3.0 is Copyright 2006 by Princeton University and is used under its licence, which requires the
copyright notice and disclaimer to appear on all copies: the notice is shipped next to the sample as
``hf_divcl/data/LICENSE.wordnet`` (copied verbatim from the header of the WordNet data files).

The WordNet data files are read by :mod:`hf_divcl.data.wordnet_files` (the line format, the parser, the Debian
files).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .wordnet_files import (
    LEX_FILES,
    WordNetSynset,
    have_debian_wordnet,
    iter_wordnet_synsets,
    missing_wordnet_error,
    resolve_wordnet_root,
)

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

__all__ = ["embedded_sample_path", "split_key", "wordnet_pairs", "wordnet_split"]

KINDS = ("example", "lemma", "both")
SOURCES = ("auto", "debian", "embedded")
SPLITS = ("train", "test")
COLUMNS = ("anchor", "positive", "kind", "synset_id")
SAMPLE_HEADER = ("kind", "synset_id", "anchor", "positive")
SAMPLE_NAME = "wordnet_sample.tsv"


def embedded_sample_path() -> Path:
    """Path of the WordNet sample shipped in ``hf_divcl/data`` (licence: ``LICENSE.wordnet`` beside it)."""
    return Path(str(resources.files("hf_divcl.data").joinpath(SAMPLE_NAME)))


def _empty_columns() -> dict[str, list[str]]:
    return {name: [] for name in COLUMNS}


def synset_pairs(synsets: Iterable[WordNetSynset], kind: str = "example") -> dict[str, list[str]]:
    """Columns ``anchor``, ``positive``, ``kind``, ``synset_id`` of the pairs of ``synsets``, in their order.

    Each synset gives its lemma pair first (``kind`` ``"lemma"`` or ``"both"``), then one pair per example
    sentence in gloss order; pairs with an empty anchor or positive are left out.
    """
    out = _empty_columns()
    for s in synsets:
        if not s.definition:
            continue
        rows: list[tuple[str, str]] = []
        if kind in ("lemma", "both"):
            rows.append(("lemma", ", ".join(s.lemmas)))
        if kind in ("example", "both"):
            rows.extend(("example", e) for e in s.examples)
        for k, anchor in rows:
            if anchor:
                out["anchor"].append(anchor)
                out["positive"].append(s.definition)
                out["kind"].append(k)
                out["synset_id"].append(s.synset_id)
    return out


def read_sample(path: str | os.PathLike | None = None, kind: str = "both") -> dict[str, list[str]]:
    """Columns of the pairs in a sample TSV (default: the embedded one), by synset id, lemma pair first."""
    path = Path(path) if path is not None else embedded_sample_path()
    rows = []
    with path.open(encoding="utf-8") as fh:
        header = tuple(fh.readline().rstrip("\r\n").split("\t"))
        if header != SAMPLE_HEADER:
            raise ValueError(f"{path}: header {header} is not {SAMPLE_HEADER}; regenerate it with "
                             "scripts/make_wordnet_sample.py or reinstall hf_divcl.")
        for number, line in enumerate(fh, start=2):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != len(SAMPLE_HEADER):
                raise ValueError(f"{path}, line {number}: {len(fields)} tab-separated fields, expected 4.")
            k, synset_id, anchor, positive = fields
            if kind in (k, "both") and anchor and positive:
                rows.append((synset_id, k != "lemma", anchor, positive, k))
    rows.sort(key=lambda r: (r[0], r[1]))  # stable: examples keep their file order
    out = _empty_columns()
    for synset_id, _, anchor, positive, k in rows:
        out["anchor"].append(anchor)
        out["positive"].append(positive)
        out["kind"].append(k)
        out["synset_id"].append(synset_id)
    return out


def wordnet_pairs(
    kind: str = "example",
    source: str = "auto",
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    domains: Iterable[str] | None = None,
) -> datasets.Dataset:
    """WordNet 3.0 text pairs as a `datasets.Dataset` for contrastive training.

    Args:
        kind (`str`, defaults to `"example"`): ``"example"`` (an example sentence → its synset's definition),
            ``"lemma"`` (the synset's lemmas joined with ``", "`` → the definition) or ``"both"``.
        source (`str`, defaults to `"auto"`): ``"debian"`` (the full WordNet from Debian's ``wordnet-base``),
            ``"embedded"`` (the 4,000-pair sample shipped with hf_divcl) or ``"auto"`` (Debian's files when
            present, else the sample; logged at INFO).
        root (`str` or `os.PathLike`, *optional*): folder of the Debian data files; defaults to
            ``$HF_DIVCL_WORDNET_DIR`` or ``/usr/share/wordnet``.
        limit (`int`, *optional*): keep a random subset of this many pairs, drawn with
            ``numpy.random.default_rng(seed)`` and kept in the original order.
        seed (`int`, defaults to 0): seed of that subset.
        domains (*optional*): keep only synsets of these lexicographer files (semantic domains, e.g.
            ``["noun.animal"]``; see :data:`hf_divcl.data.wordnet_files.LEX_FILES`): low-diversity domain data.
            Needs the Debian files (the embedded sample does not record domains).

    Returns:
        `datasets.Dataset`: string columns ``anchor``, ``positive``, ``kind`` and ``synset_id``, sorted by
        synset id (per synset: the lemma pair, then the examples in gloss order).

    Raises:
        `ValueError`: unknown ``kind``, ``source`` or domain, a negative ``limit``, or ``domains`` with
            ``source="embedded"``.
        `FileNotFoundError`: ``source="debian"`` and the data files are missing (the message says how to
            install them).

    Example:

    ```python
    >>> from hf_divcl.data import wordnet_pairs
    >>> ds = wordnet_pairs("example", source="embedded", limit=256)
    >>> ds.column_names
    ['anchor', 'positive', 'kind', 'synset_id']
    ```
    """
    import datasets
    import numpy as np

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}.")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}; got {source!r}.")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0; got {limit}.")
    wanted = check_domains(domains)
    base = resolve_wordnet_root(root)
    if source == "embedded":
        use_debian = False
    elif have_debian_wordnet(base):
        use_debian = True
    elif source == "debian":
        raise missing_wordnet_error(base)
    else:
        use_debian = False
    if wanted and not use_debian:
        raise ValueError(f"domains={sorted(wanted)} needs the Debian WordNet files (the embedded sample does not "
                         f"record domains), and none were found in {base}: `sudo apt-get install wordnet-base` or "
                         "`bash scripts/setup.sh`, or drop domains.")
    if use_debian:
        logger.info("WordNet %s pairs: reading the Debian WordNet 3.0 files in %s%s.", kind, base,
                    f" (domains {', '.join(sorted(wanted))})" if wanted else "")
        synsets = iter_wordnet_synsets(base)
        cols = synset_pairs((s for s in synsets if s.lex_file in wanted) if wanted else synsets, kind)
    else:
        why = "" if source == "embedded" else (
            f" (no WordNet data files in {base}; for the full WordNet: `sudo apt-get install wordnet-base`)")
        logger.info("WordNet %s pairs: using the embedded sample %s%s.", kind, embedded_sample_path(), why)
        cols = read_sample(kind=kind)
    n = len(cols["anchor"])
    if limit is not None and limit < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
        cols = {name: [values[i] for i in keep] for name, values in cols.items()}
    features = datasets.Features({name: datasets.Value("string") for name in COLUMNS})
    return datasets.Dataset.from_dict(cols, features=features)


def check_domains(domains: Iterable[str] | None) -> set[str]:
    """The set of lexicographer files asked for (empty: all); an unknown name raises with the valid ones."""
    if domains is None:
        return set()
    if isinstance(domains, str):
        domains = [d.strip() for d in domains.split(",") if d.strip()]
    wanted = set(domains)
    unknown = sorted(wanted - set(LEX_FILES))
    if unknown:
        raise ValueError(f"Unknown WordNet domain(s) {unknown}; choose lexicographer files from: "
                         f"{', '.join(LEX_FILES)}.")
    return wanted


def split_key(synset_id: str, seed: int = 0) -> float:
    """A synset's place in the held-out order of [`wordnet_split`]: a number in ``[0, 1)`` from BLAKE2b of
    ``f"{seed}:{synset_id}"``, so it is the same in every process, for every kind and every source."""
    digest = hashlib.blake2b(f"{seed}:{synset_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _check_test_size(test_size: int | float) -> None:
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise TypeError(f"test_size must be an int (test pairs) or a float in (0, 1) (fraction of synsets); "
                        f"got {test_size!r} ({type(test_size).__name__}).")
    if isinstance(test_size, int) and test_size < 1:
        raise ValueError(f"test_size={test_size}: pass a number of test pairs >= 1 or a fraction in (0, 1).")
    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size={test_size}: a float test_size is the fraction of synsets held out and must "
                         "lie strictly between 0 and 1; pass an int for a number of test pairs.")


def wordnet_split(
    kind: str = "example",
    split: str = "train",
    source: str = "auto",
    root: str | os.PathLike | None = None,
    test_size: int | float = 500,
    seed: int = 0,
    domains: Iterable[str] | None = None,
) -> datasets.Dataset:
    """A fixed train/test split of [`wordnet_pairs`] made BY SYNSET: no synset (hence no definition) is on both
    sides, so test glosses are never seen in training.

    Synsets are ordered by [`split_key`] ``(synset_id, seed)``, a hash that depends on nothing else:

    - ``test_size`` an `int` (default 500): the test split takes whole synsets in that order until it holds at
      least ``test_size`` pairs of ``kind`` (exactly ``test_size`` when every synset gives one pair, as in the
      embedded sample; a few more otherwise);
    - ``test_size`` a `float` in ``(0, 1)``: a synset is in the test split iff its key is below ``test_size``.
      Membership then depends only on ``(seed, synset_id)``: every kind and both sources put a synset on the same
      side, and the embedded sample's test synsets are exactly the Debian test synsets it contains. Use a
      fraction when training on one kind (e.g. ``"both"``) and testing on another; with an int, test sets of
      different kinds are nested prefixes of one order, so a longer test prefix can overlap another kind's train.

    Both splits keep the order of [`wordnet_pairs`] (by synset id).

    Sizes for the embedded sample (2,500 example + 1,500 lemma pairs, one pair per synset), ``seed=0``:

    ===========  ===============  ===============  ===============
    kind         test_size=500    test_size=0.2    test_size=0.1
    ===========  ===============  ===============  ===============
    ``example``  2,000 / 500      1,951 / 549      2,247 / 253
    ``lemma``    1,000 / 500      1,166 / 334      1,336 / 164
    ``both``     3,500 / 500      3,117 / 883      3,583 / 417
    ===========  ===============  ===============  ===============

    (train / test pairs.) Debian WordNet 3.0 (``source="debian"``), ``seed=0``: ``example`` 47,836 / 500 with
    ``test_size=500`` (356 test synsets) and 43,345 / 4,991 with ``0.1``; ``lemma`` 117,159 / 500 and
    105,564 / 12,095.

    Args:
        kind (`str`, defaults to `"example"`): ``"example"``, ``"lemma"`` or ``"both"``, as in [`wordnet_pairs`].
        split (`str`, defaults to `"train"`): ``"train"`` or ``"test"``.
        source (`str`, defaults to `"auto"`): ``"debian"``, ``"embedded"`` or ``"auto"``, as in [`wordnet_pairs`].
        root (`str` or `os.PathLike`, *optional*): folder of the Debian data files.
        test_size (`int` or `float`, defaults to 500): pairs in the test split (int) or fraction of synsets (float).
        seed (`int`, defaults to 0): seed of the synset order; another seed gives another split.
        domains (*optional*): only these lexicographer files, as in [`wordnet_pairs`] (Debian files only).

    Returns:
        `datasets.Dataset`: columns ``anchor``, ``positive``, ``kind``, ``synset_id``.

    Raises:
        `ValueError`: unknown ``split``/``kind``/``source``, a bad ``test_size``, or a split that would be empty.
        `TypeError`: ``test_size`` is neither an int nor a float.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}; got {split!r}.")
    _check_test_size(test_size)
    ds = wordnet_pairs(kind=kind, source=source, root=root, domains=domains)
    synset_ids = ds["synset_id"]
    counts: dict[str, int] = {}
    for sid in synset_ids:
        counts[sid] = counts.get(sid, 0) + 1
    keys = {sid: split_key(sid, seed) for sid in counts}
    if isinstance(test_size, float):
        test_synsets = {sid for sid, key in keys.items() if key < test_size}
    else:
        if test_size >= len(synset_ids):
            raise ValueError(f"test_size={test_size} leaves no training pairs: the {kind} pairs of source "
                             f"{source!r} number {len(synset_ids)}. Pass a smaller int or a fraction.")
        test_synsets, held = set(), 0
        for sid in sorted(counts, key=lambda s: (keys[s], s)):
            if held >= test_size:
                break
            test_synsets.add(sid)
            held += counts[sid]
    rows = [i for i, sid in enumerate(synset_ids) if (sid in test_synsets) == (split == "test")]
    if not rows:
        other = "test" if split == "train" else "train"
        raise ValueError(f"The {split} split of the {kind} pairs (source {source!r}, test_size={test_size}, "
                         f"seed={seed}) is empty: all {len(synset_ids)} pairs fell in {other}. Change test_size.")
    logger.info("WordNet %s pairs, %s split: %d of %d pairs (%d test synsets, seed %d).", kind, split, len(rows),
                len(synset_ids), len(test_synsets), seed)
    return ds.select(rows)
