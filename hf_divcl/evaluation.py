"""Held-out evaluation of trained encoders: text retrieval, word similarity, and k-NN / linear-probe accuracy.

- :func:`retrieval_metrics`: anchors are queries, the unique positives are the corpus and each query's one
  relevant document is its own positive; sentence-transformers' ``InformationRetrievalEvaluator`` ranks the corpus
  by cosine similarity and gives nDCG@10, MRR@10 and accuracy@1/5/10 (use a split from
  :func:`hf_divcl.data.wordnet_split`, whose test glosses are never seen in training).
- :func:`word_similarity`: Spearman correlation between the cosine of two single-word embeddings and human ratings
  on WordSim-353 and SimLex-999, read from the test data shipped in the ``gensim`` wheel (``gensim`` is never
  imported, only its files are read: ``pip install gensim==4.4.0``).
- :func:`knn_accuracy` and :func:`linear_probe_accuracy`: frozen-embedding classification for image encoders
  (cosine k-NN with a vectorised vote; scikit-learn logistic regression on standardised unit embeddings).
- :func:`evaluate_text` and :func:`evaluate_vision` run these together and time them.

Every function takes a ``SentenceTransformer``; the ``*_from_embeddings`` variants take precomputed embeddings.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import datasets
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

__all__ = [
    "GENSIM_REQUIREMENT",
    "RETRIEVAL_METRICS",
    "WORD_SIMILARITY_FILES",
    "encode_images",
    "evaluate_text",
    "evaluate_vision",
    "knn_accuracy",
    "knn_accuracy_from_embeddings",
    "knn_predict",
    "linear_probe_accuracy",
    "linear_probe_accuracy_from_embeddings",
    "read_word_pairs",
    "retrieval_metrics",
    "spearman",
    "word_similarity",
    "word_similarity_path",
]

RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "accuracy@1", "accuracy@5", "accuracy@10")
"""Keys of :func:`retrieval_metrics`, each prefixed with ``f"{name}_"``."""

GENSIM_REQUIREMENT = "gensim==4.4.0"
WORD_SIMILARITY_FILES = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}
"""Benchmark name → file in ``gensim/test/test_data`` (353 and 999 rated word pairs; ``#`` lines are comments)."""

VOTES = ("majority", "weighted")


# --------------------------------------------------------------------------------------------------------------
# text retrieval


def _check_texts(anchors: Sequence[str], positives: Sequence[str]) -> None:
    if len(anchors) != len(positives):
        raise ValueError(f"anchors and positives must pair up row by row; got {len(anchors)} anchors and "
                         f"{len(positives)} positives.")
    if not anchors:
        raise ValueError("No pairs to evaluate: anchors and positives are empty.")
    for column, texts in (("anchors", anchors), ("positives", positives)):
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{column}[{row}] = {text!r} is not a non-empty string; drop or fix that pair.")


def retrieval_metrics(
    model: SentenceTransformer,
    anchors: Sequence[str],
    positives: Sequence[str],
    name: str = "wordnet",
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> dict[str, float]:
    """Retrieve each anchor's positive among all unique positives; nDCG@10, MRR@10 and accuracy@1/5/10.

    Queries are the ``N`` anchors, the corpus is the unique positive texts (pairs that share a positive, e.g. two
    examples of one synset, share one document) and each query has exactly one relevant document. Ranking is by
    cosine similarity whatever the model's ``similarity_fn_name``; ties go to the positive that appears first.
    With one relevant document, ``accuracy@1 <= mrr@10 <= ndcg@10 <= accuracy@10``.

    Runs ``sentence_transformers``' ``InformationRetrievalEvaluator`` (no CSV written); like every
    sentence-transformers evaluator it also records the metrics in ``model.model_card_data``.

    Args:
        model: the encoder; ``model.encode_query`` embeds anchors, ``model.encode_document`` positives.
        anchors, positives (`Sequence[str]`): the pairs, row by row (e.g. ``ds["anchor"]``, ``ds["positive"]``).
        name (`str`, defaults to `"wordnet"`): prefix of the keys.
        batch_size (`int`, defaults to 64): encoding batch size.

    Returns:
        `dict[str, float]`: ``f"{name}_{metric}"`` for each metric in [`RETRIEVAL_METRICS`] (bare metric names
        when ``name`` is empty), each in ``[0, 1]``.
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    anchors, positives = list(anchors), list(positives)
    _check_texts(anchors, positives)
    width = len(str(len(positives)))
    doc_ids: dict[str, str] = {}
    for text in positives:  # zero-padded ids: their string order is the order of first appearance
        doc_ids.setdefault(text, f"d{len(doc_ids):0{width}d}")
    queries = {f"q{i:0{width}d}": text for i, text in enumerate(anchors)}
    relevant = {qid: {doc_ids[positives[i]]} for i, qid in enumerate(queries)}
    evaluator = InformationRetrievalEvaluator(
        queries=queries,
        corpus={doc_id: text for text, doc_id in doc_ids.items()},
        relevant_docs=relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 5, 10],
        precision_recall_at_k=[10],
        map_at_k=[10],
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        name=name,
        write_csv=False,
        score_functions={"cosine": cos_sim},
        main_score_function="cosine",
    )
    raw = evaluator(model)
    prefix = f"{name}_" if name else ""
    out = {}
    for metric in RETRIEVAL_METRICS:
        key = f"{prefix}cosine_{metric}"
        if key not in raw:
            raise KeyError(f"InformationRetrievalEvaluator returned no {key!r} (keys: {sorted(raw)}); its output "
                           "format changed, update hf_divcl.evaluation.retrieval_metrics.")
        out[f"{prefix}{metric}"] = float(raw[key])
    logger.info("retrieval %s: %d queries, %d documents: %s", name, len(queries), len(doc_ids), out)
    return out


# --------------------------------------------------------------------------------------------------------------
# word similarity


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
                              show_progress_bar=False).double().cpu()
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


# --------------------------------------------------------------------------------------------------------------
# k-NN and linear probe


def encode_images(model: SentenceTransformer, images: Iterable[Any], batch_size: int = 64,
                  show_progress_bar: bool = False) -> torch.Tensor:
    """Unit embeddings ``(n, d)`` (float32, CPU) of images (PIL images, e.g. ``ds["image"]``)."""
    images = list(images)
    if not images:
        raise ValueError("No images to encode.")
    emb = model.encode(images, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=show_progress_bar)
    return emb.float().cpu()


def _as_labels(labels: Any, n: int, what: str) -> torch.Tensor:
    out = torch.as_tensor(labels if isinstance(labels, torch.Tensor) else list(labels), dtype=torch.long).flatten()
    if out.numel() != n:
        raise ValueError(f"{what}: {out.numel()} labels for {n} embeddings; pass one integer label per row.")
    if out.numel() and int(out.min()) < 0:
        row = int(torch.nonzero(out < 0)[0])
        raise ValueError(f"{what}[{row}] = {int(out[row])}: labels must be class ids >= 0.")
    return out


def _as_embeddings(x: Any, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{what} must have shape (n, d) with n >= 1; got {tuple(x.shape)}.")
    if not x.is_floating_point():
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        row = int(torch.nonzero(~torch.isfinite(x).all(-1))[0])
        raise ValueError(f"{what}, row {row}: NaN or Inf in the embedding; check the model output.")
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        row = int(torch.nonzero(norms.squeeze(-1) == 0)[0])
        raise ValueError(f"{what}, row {row}: all-zero embedding has no direction for cosine similarity.")
    return x / norms


def knn_predict(
    train_embeddings: torch.Tensor,
    train_labels: Any,
    test_embeddings: torch.Tensor,
    k: int = 20,
    vote: str = "majority",
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Cosine k-NN labels ``(n_test,)`` for test embeddings ``(n_test, d)`` against ``(n_train, d)`` train ones.

    ``vote="majority"``: the label most frequent among the ``k`` nearest neighbours, ties going to the label with
    the larger summed cosine (then the smaller id). ``vote="weighted"``: each neighbour adds
    ``exp(cos / temperature)`` to its label (the InstDisc/DINO k-NN protocol). Test rows are processed
    ``chunk_size`` at a time, so memory is ``O(chunk_size · n_train)``.
    """
    if vote not in VOTES:
        raise ValueError(f"vote must be one of {VOTES}; got {vote!r}.")
    train = _as_embeddings(train_embeddings, "train_embeddings")
    test = _as_embeddings(test_embeddings, "test_embeddings").to(train.dtype)
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train embeddings have dimension {train.shape[1]}, test embeddings {test.shape[1]}; "
                         "embed both with the same model.")
    labels = _as_labels(train_labels, train.shape[0], "train_labels").to(train.device)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= train.shape[0]:
        raise ValueError(f"k={k!r}: pass an int between 1 and the {train.shape[0]} training embeddings.")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0.")
    classes = int(labels.max()) + 1
    out = []
    for start in range(0, test.shape[0], chunk_size):
        sims, idx = (test[start:start + chunk_size] @ train.T).topk(k, dim=1)  # (c, k)
        neighbour_labels = labels[idx]
        if vote == "weighted":
            scores = torch.zeros(sims.shape[0], classes, dtype=sims.dtype, device=sims.device)
            scores.scatter_add_(1, neighbour_labels, torch.exp(sims / temperature))
        else:
            counts = torch.zeros(sims.shape[0], classes, dtype=sims.dtype, device=sims.device)
            counts.scatter_add_(1, neighbour_labels, torch.ones_like(sims))
            cos_sum = torch.zeros_like(counts).scatter_add_(1, neighbour_labels, sims)
            scores = counts + cos_sum / (4 * k)  # |cos_sum| <= k: the tie-break moves a score by <= 1/4
        out.append(scores.argmax(dim=1))
    return torch.cat(out)


def knn_accuracy_from_embeddings(train_embeddings: torch.Tensor, train_labels: Any, test_embeddings: torch.Tensor,
                                 test_labels: Any, k: int = 20, vote: str = "majority",
                                 temperature: float = 0.07) -> float:
    """Fraction of test rows whose [`knn_predict`] label equals ``test_labels``."""
    pred = knn_predict(train_embeddings, train_labels, test_embeddings, k=k, vote=vote, temperature=temperature)
    truth = _as_labels(test_labels, pred.numel(), "test_labels").to(pred.device)
    return (pred == truth).double().mean().item()


def knn_accuracy(model: SentenceTransformer, train_images: Iterable[Any], train_labels: Any,
                 test_images: Iterable[Any], test_labels: Any, k: int = 20, vote: str = "majority",
                 batch_size: int = 64) -> float:
    """Cosine k-NN accuracy of a frozen image encoder: embed both sets, then [`knn_accuracy_from_embeddings`]."""
    train = encode_images(model, train_images, batch_size)
    test = encode_images(model, test_images, batch_size)
    return knn_accuracy_from_embeddings(train, train_labels, test, test_labels, k=k, vote=vote)


def linear_probe_accuracy_from_embeddings(train_embeddings: torch.Tensor, train_labels: Any,
                                          test_embeddings: torch.Tensor, test_labels: Any, c: float = 1.0,
                                          max_iter: int = 1000, seed: int = 0) -> float:
    """Test accuracy of a logistic regression fitted on frozen train embeddings.

    Rows are L2-normalised, then standardised with the training mean and std (``StandardScaler``), then fed to
    ``sklearn.linear_model.LogisticRegression(C=c, max_iter=max_iter, random_state=seed)`` (lbfgs, multinomial):
    deterministic for given inputs.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError("The linear probe uses scikit-learn: `pip install scikit-learn`.") from None
    train = _as_embeddings(train_embeddings, "train_embeddings").double()
    test = _as_embeddings(test_embeddings, "test_embeddings").double()
    y_train = _as_labels(train_labels, train.shape[0], "train_labels")
    y_test = _as_labels(test_labels, test.shape[0], "test_labels")
    if y_train.unique().numel() < 2:
        raise ValueError(f"The training labels hold a single class ({int(y_train[0])}); a linear probe needs at "
                         "least two. Use more (or shuffled) training rows.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    probe.fit(train.numpy(), y_train.numpy())
    return float((probe.predict(test.numpy()) == y_test.numpy()).mean())


def linear_probe_accuracy(model: SentenceTransformer, train_images: Iterable[Any], train_labels: Any,
                          test_images: Iterable[Any], test_labels: Any, batch_size: int = 64, c: float = 1.0,
                          max_iter: int = 1000, seed: int = 0) -> float:
    """Linear-probe accuracy of a frozen image encoder: embed both sets, then
    [`linear_probe_accuracy_from_embeddings`]."""
    train = encode_images(model, train_images, batch_size)
    test = encode_images(model, test_images, batch_size)
    return linear_probe_accuracy_from_embeddings(train, train_labels, test, test_labels, c=c, max_iter=max_iter,
                                                 seed=seed)


# --------------------------------------------------------------------------------------------------------------
# conveniences


def _column(data: datasets.Dataset | Mapping[str, Any], column: str, what: str) -> list:
    names = list(getattr(data, "column_names", None) or data.keys())
    if column not in names:
        raise KeyError(f"{what} has no column {column!r} (columns: {names}); pass the column name.")
    return list(data[column])


def evaluate_text(
    model: SentenceTransformer,
    test_pairs: datasets.Dataset | Mapping[str, Sequence[str]],
    name: str = "wordnet",
    batch_size: int = 64,
    word_sim: bool = True,
    anchor_column: str = "anchor",
    positive_column: str = "positive",
) -> dict[str, float | int]:
    """Retrieval metrics on held-out pairs plus (``word_sim=True``) word similarity, with timings.

    Args:
        test_pairs: a `datasets.Dataset` or mapping with ``anchor`` and ``positive`` columns, e.g.
            ``wordnet_split("example", "test", source="embedded")``.

    Returns:
        `dict[str, float | int]`: [`retrieval_metrics`] keys, ``f"{name}_seconds"``, and with ``word_sim`` the
        [`word_similarity`] keys and ``word_similarity_seconds``.
    """
    anchors = _column(test_pairs, anchor_column, "test_pairs")
    positives = _column(test_pairs, positive_column, "test_pairs")
    start = time.perf_counter()
    out: dict[str, float | int] = dict(retrieval_metrics(model, anchors, positives, name=name, batch_size=batch_size))
    out[f"{name}_seconds" if name else "seconds"] = time.perf_counter() - start
    if word_sim:
        start = time.perf_counter()
        out.update(word_similarity(model))
        out["word_similarity_seconds"] = time.perf_counter() - start
    return out


def evaluate_vision(
    model: SentenceTransformer,
    train_ds: datasets.Dataset,
    test_ds: datasets.Dataset,
    train_limit: int | None = None,
    test_limit: int | None = None,
    k: int = 20,
    vote: str = "majority",
    batch_size: int = 64,
    image_column: str = "image",
    label_column: str = "label",
    seed: int = 0,
) -> dict[str, float | int]:
    """k-NN and linear-probe accuracy of a frozen image encoder; each image set is embedded once.

    Args:
        train_ds, test_ds: image data sets such as ``digits("train")`` / ``fashion_mnist("test", limit=...)``.
        train_limit, test_limit: use only the first rows of each (None: all).

    Returns:
        `dict[str, float | int]`: ``knn_accuracy`` (``k`` nearest, ``vote``), ``linear_probe_accuracy``, ``knn_k``,
        ``train_size``, ``test_size``, ``encode_seconds`` and ``seconds`` (total).
    """
    start = time.perf_counter()
    parts = {}
    for what, ds, limit in (("train_ds", train_ds, train_limit), ("test_ds", test_ds, test_limit)):
        if limit is not None:
            if limit < 1:
                raise ValueError(f"{what} limit={limit}: pass None (all rows) or an int >= 1.")
            ds = ds.select(range(min(limit, len(ds))))
        parts[what] = (_column(ds, image_column, what), _column(ds, label_column, what))
    (train_images, y_train), (test_images, y_test) = parts["train_ds"], parts["test_ds"]
    train = encode_images(model, train_images, batch_size)
    test = encode_images(model, test_images, batch_size)
    encoded = time.perf_counter()
    return {
        "knn_accuracy": knn_accuracy_from_embeddings(train, y_train, test, y_test, k=k, vote=vote),
        "linear_probe_accuracy": linear_probe_accuracy_from_embeddings(train, y_train, test, y_test, seed=seed),
        "knn_k": k,
        "train_size": len(y_train),
        "test_size": len(y_test),
        "encode_seconds": encoded - start,
        "seconds": time.perf_counter() - start,
    }
