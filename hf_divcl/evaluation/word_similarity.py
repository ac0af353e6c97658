"""Word similarity: Spearman correlation between the cosine of two single-word embeddings and human ratings on
WordSim-353 and SimLex-999, read from the test data shipped in the ``gensim`` wheel (``gensim`` is never imported,
only its files are read: ``pip install gensim==4.4.0``).

One of the held-out evaluations :mod:`hf_divcl.evaluation.tasks` runs; it logs to
``hf_divcl.evaluation.tasks`` like the rest of them.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger("hf_divcl.evaluation.tasks")  # the evaluation logger, as before the split

__all__ = [
    "GENSIM_REQUIREMENT",
    "WORD_SIMILARITY_FILES",
    "read_word_pairs",
    "spearman",
    "word_similarity",
    "word_similarity_path",
]

GENSIM_REQUIREMENT = "gensim==4.4.0"
WORD_SIMILARITY_FILES = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
"""Benchmark name → file in ``gensim/test/test_data`` (353 and 999 rated word pairs; ``#`` lines are comments)."""


def word_similarity_path(benchmark: str) -> Path:
    """Path of a word-similarity file inside the installed ``gensim`` wheel (found without importing gensim).

    Raises:
        `ValueError`: unknown benchmark. `ImportError`: gensim is not installed. `FileNotFoundError`: the wheel
        has no such file (another gensim version).
    """
    if benchmark not in WORD_SIMILARITY_FILES:
        raise ValueError(f"Unknown word-similarity benchmark {benchmark!r}; use one of "
                         f"{sorted(WORD_SIMILARITY_FILES)}.")
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"Word similarity reads WordSim-353 and SimLex-999 from the gensim wheel's test data, and "
                          f"gensim is not installed: `pip install {GENSIM_REQUIREMENT}`.")
    tried = []
    for location in spec.submodule_search_locations:
        path = Path(location) / "test" / "test_data" / WORD_SIMILARITY_FILES[benchmark]
        if path.is_file():
            return path
        tried.append(str(path))
    raise FileNotFoundError(f"{benchmark}: no file at {', '.join(tried)}. The installed gensim lacks its test data; "
                            f"install the version this was written for: `pip install {GENSIM_REQUIREMENT}`.")


def read_word_pairs(path: str | Path) -> list[tuple[str, str, float]]:
    """Rows ``(word1, word2, human score)`` of a tab-separated word-similarity file; ``#`` lines are comments.

    Raises:
        `ValueError`: a row without three tab-separated fields or with a non-numeric score (file and line named).
    """
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 3 or not fields[0].strip() or not fields[1].strip():
                raise ValueError(f"{path}, line {number}: expected 'word1<TAB>word2<TAB>score', got {line!r}.")
            try:
                score = float(fields[2])
            except ValueError:
                raise ValueError(f"{path}, line {number}: score {fields[2]!r} is not a number.") from None
            rows.append((fields[0].strip(), fields[1].strip(), score))
    return rows


def _unknown_words(model: SentenceTransformer, words: Iterable[str]) -> set[str]:
    """Words the model's tokenizer turns into nothing but unknown tokens (empty when it has no tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor (e.g. CLIP's) holds its tokenizer
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not callable(tokenizer):
        return set()
    words = list(words)
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    return {word for word, tokens in zip(words, ids, strict=True) if all(t == unk for t in tokens)}


def spearman(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``, average ranks for ties); NaN when either side is
    constant or there are fewer than 2 values."""
    import warnings

    from scipy import stats

    x = torch.as_tensor(x, dtype=torch.float64).tolist()
    y = torch.as_tensor(y, dtype=torch.float64).tolist()
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}; they must pair up.")
    if len(x) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(x, y).statistic)


def word_similarity(
    model: SentenceTransformer,
    benchmarks: Sequence[str] = ("wordsim353", "simlex999"),
    batch_size: int = 256,
    show_progress_bar: bool = False,
) -> dict[str, float | int]:
    """Spearman correlation of cosine similarity with human ratings on WordSim-353 and SimLex-999.

    Each word is embedded alone (one encode call for the unique words of all benchmarks). A pair is skipped when
    the model's tokenizer maps one of its words to unknown tokens only (the word is out of vocabulary); every
    other pair is used. Files come from the gensim wheel ([`word_similarity_path`]).

    Returns:
        `dict[str, float | int]`: per benchmark ``f"{name}_spearman"`` (in ``[-1, 1]``, NaN with fewer than 2 pairs),
        ``f"{name}_pairs"`` (pairs used) and ``f"{name}_skipped"`` (pairs skipped), e.g. ``wordsim353_spearman``.

    Raises:
        `ImportError`: gensim is not installed (the message gives the ``pip install`` line).
    """
    tables = {name: read_word_pairs(word_similarity_path(name)) for name in benchmarks}
    words = sorted({w for rows in tables.values() for a, b, _ in rows for w in (a, b)})
    unknown = _unknown_words(model, words)
    embeddings = model.encode(words, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                              show_progress_bar=show_progress_bar).double().cpu()
    index = {w: i for i, w in enumerate(words)}
    out: dict[str, float | int] = {}
    for name, rows in tables.items():
        used = [(a, b, s) for a, b, s in rows if a not in unknown and b not in unknown]
        left = torch.tensor([index[a] for a, _, _ in used], dtype=torch.long)
        right = torch.tensor([index[b] for _, b, _ in used], dtype=torch.long)
        cosine = (embeddings[left] * embeddings[right]).sum(-1)
        out[f"{name}_spearman"] = spearman(cosine, [s for _, _, s in used])
        out[f"{name}_pairs"] = len(used)
        out[f"{name}_skipped"] = len(rows) - len(used)
        if len(used) < len(rows):
            logger.info("%s: skipped %d pairs with out-of-vocabulary words", name, len(rows) - len(used))
    return out
