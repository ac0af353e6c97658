"""Reading WordNet 3.0's own data files: parsing a synset line and its gloss into a :class:`WordNetSynset`, and
finding and iterating the Debian ``wordnet-base`` files (``data.{noun,verb,adj,adv}``).

Format of a ``data.*`` line (``wndb(5WN)``)::

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...] [frames...] | gloss

``w_cnt`` is two hexadecimal digits, words use ``_`` for spaces and adjectives may end in a
syntactic marker ``(a)``, ``(p)`` or ``(ip)``. The gloss is a definition, then optional example sentences,
each in double quotes and introduced by ``;``. Lines starting with two spaces are the licence header.

Kept apart from :mod:`hf_divcl.data.wordnet`, which turns synsets into training pairs, because the sample
generator and the tests use the parser alone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LEX_FILES", "WORDNET_ROOT", "WordNetSynset", "iter_wordnet_synsets", "parse_gloss", "parse_synset_line"]

WORDNET_ROOT = "/usr/share/wordnet"
"""Where Debian's ``wordnet-base`` puts the data files; the env var ``HF_DIVCL_WORDNET_DIR`` overrides it."""

WORDNET_ENV = "HF_DIVCL_WORDNET_DIR"

LEX_FILES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
"""WordNet 3.0's lexicographer files, indexed by a data line's ``lex_filenum``: each is one semantic domain
(``noun.animal`` holds 7,509 synsets, ``noun.person`` 11,087, ``noun.artifact`` 11,587)."""

# data file → the letter used in synset ids (satellites ``s`` live in data.adj and get ``a``)
_POS_FILES = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_SPACES = re.compile(r"\s+")
# an example starts at a ";" followed by a double quote; ";" inside a quoted example does not split it
_EXAMPLE_START = re.compile(r";\s*(?=\")")
# a definition ending in an example introduced by ":" or "," instead of ";": `move with force, "He pushed..."`
_TRAILING_EXAMPLE = re.compile(r"^(?P<definition>.*\S)\s*[:,]\s*\"(?P<example>[^\"]+)\"$")
# examples run together: `"a", "b"`, `"a" "b"`, `"a;" "b"`, `"a" or "b"`, and `"a"; b"` (b's quote lost)
_EXAMPLE_JOIN = re.compile(r"\"\s*;\s*\"?|[,.;]?\"\s*[,:.]?\s*\"|\"\s+or\s+\"")


@dataclass(frozen=True)
class WordNetSynset:
    """One WordNet synset.

    Args:
        synset_id (`str`): the data file's part-of-speech letter (``n``, ``v``, ``a``, ``r``) and the 8-digit
            byte offset, e.g. ``"n00001740"``; unique, and sorting by it gives file order.
        pos (`str`): WordNet's ``ss_type``: ``n``, ``v``, ``a``, ``s`` (adjective satellite) or ``r``.
        lemmas (`tuple[str, ...]`): the synset's words, with spaces for ``_`` and adjective markers removed.
        definition (`str`): the gloss without its example sentences.
        examples (`tuple[str, ...]`): the example sentences, without their quotes, in gloss order.
        lex_file (`str`): the lexicographer file (semantic domain) the synset lives in, e.g. ``"noun.animal"``
            (see [`LEX_FILES`]); empty when unknown.
    """

    synset_id: str
    pos: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]
    lex_file: str = ""


def _clean(text: str) -> str:
    """Collapse all whitespace (tabs and newlines included) to single spaces."""
    return _SPACES.sub(" ", text).strip()


def parse_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """Split a gloss into ``(definition, examples)``.

    The definition runs up to the first ``;`` that is followed by a double quote; each later such ``;`` starts
    another example (a ``;`` inside a quoted example does not). A definition that ends in a quoted sentence
    introduced by ``:`` or ``,`` (``move with force, "He pushed the table into a corner"``) gives that
    sentence as the first example; other quoted text in a definition (``in the phrase "make strides"``,
    ``e.g. "keep clean"``) stays there. Text after an example's closing quote (an attribution such as
    ``- Shakespeare`` or ``(Matthew 7:12)``) is dropped; examples that lost their ``;`` (``"a", "b"``,
    ``"a" or "b"``, ``"a"; b"``) are split apart, and so is a last ``; b"`` that lost its opening quote.

    Args:
        gloss (`str`): the text after ``" | "`` on a synset line.

    Returns:
        `tuple[str, tuple[str, ...]]`: the definition and the example sentences (quotes stripped, none empty).
    """
    parts = _EXAMPLE_START.split(gloss.strip())
    definition = _clean(parts[0]).rstrip(";").rstrip()
    examples: list[str] = []
    trailing = _TRAILING_EXAMPLE.match(definition)
    if trailing:
        definition = trailing["definition"].rstrip(";:,").rstrip()
        parts.insert(1, f'"{trailing["example"]}"')
    elif definition.endswith('"') and definition.count('"') == 1:  # no opening quote: `close in; it shut"`
        head, sep, last = definition.rpartition("; ")
        definition = head if sep else definition[:-1].rstrip()
        if sep:
            parts.insert(1, f'"{last}')
    for part in parts[1:]:
        text = part.strip()
        close = text.rfind('"')
        body = text[1:close] if close > 0 else text[1:]  # no closing quote: the rest of the part
        for sentence in _EXAMPLE_JOIN.split(body):
            sentence = _clean(sentence).strip('" ').rstrip(";:,").rstrip()
            if sentence and sentence not in examples:
                examples.append(sentence)
    return definition, tuple(examples)


def parse_synset_line(line: str, file_pos: str | None = None) -> WordNetSynset:
    """Parse one synset line of a WordNet ``data.*`` file.

    Args:
        line (`str`): the line, with or without its newline.
        file_pos (`str`, *optional*): the data file's letter (``n``, ``v``, ``a``, ``r``) used in the synset
            id; by default the ``ss_type`` with ``s`` (satellite) mapped to ``a``.

    Returns:
        [`WordNetSynset`]
    """
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    if not sep or len(fields) < 6:
        raise ValueError(f"Not a WordNet synset line: {line[:80]!r}")
    offset, ss_type = fields[0], fields[2]
    lex_num = int(fields[1]) if fields[1].isdigit() else -1
    lex_file = LEX_FILES[lex_num] if 0 <= lex_num < len(LEX_FILES) else ""
    w_cnt = int(fields[3], 16)
    words = fields[4 : 4 + 2 * w_cnt : 2]
    if len(words) != w_cnt:
        raise ValueError(f"Synset {offset}: w_cnt {fields[3]} announces {w_cnt} words, found {len(words)}.")
    lemmas = tuple(dict.fromkeys(_clean(_MARKER.sub("", w).replace("_", " ")) for w in words))
    definition, examples = parse_gloss(gloss)
    letter = file_pos or ("a" if ss_type == "s" else ss_type)
    return WordNetSynset(f"{letter}{offset}", ss_type, lemmas, definition, examples, lex_file)


def resolve_wordnet_root(root: str | os.PathLike | None) -> Path:
    return Path(root if root is not None else os.environ.get(WORDNET_ENV) or WORDNET_ROOT)


def _data_files(root: Path) -> dict[str, Path]:
    return {letter: root / f"data.{name}" for name, letter in _POS_FILES.items()}


def have_debian_wordnet(root: Path) -> bool:
    return all(path.is_file() for path in _data_files(root).values())


def missing_wordnet_error(root: Path) -> FileNotFoundError:
    wanted = ", ".join(f"data.{name}" for name in _POS_FILES)
    return FileNotFoundError(
        f"WordNet 3.0 data files ({wanted}) not found in {str(root)!r}. Install them with "
        "`sudo apt-get install wordnet-base` (Debian/Ubuntu; or run `bash scripts/setup.sh`), or set the "
        f"environment variable {WORDNET_ENV} (or pass root=) to a folder holding those files. "
        "source='embedded' reads the sample shipped with hf_divcl instead."
    )


def iter_wordnet_synsets(root: str | os.PathLike | None = None) -> Iterator[WordNetSynset]:
    """Iterate over all synsets of the WordNet data files, sorted by synset id.

    Args:
        root (`str` or `os.PathLike`, *optional*): folder holding ``data.{noun,verb,adj,adv}``; defaults to
            ``$HF_DIVCL_WORDNET_DIR`` or [`WORDNET_ROOT`].

    Returns:
        `Iterator[WordNetSynset]`: adjectives, nouns, adverbs, then verbs, each by byte offset.

    Raises:
        `FileNotFoundError`: a data file is missing (the message says how to install them).
    """
    base = resolve_wordnet_root(root)
    if not have_debian_wordnet(base):
        raise missing_wordnet_error(base)
    for letter, path in sorted(_data_files(base).items()):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("  ") or not line.strip():
                    continue  # licence header
                yield parse_synset_line(line, file_pos=letter)
