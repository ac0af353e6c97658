"""Held-out evaluation: WordNet splits by synset, retrieval and word-similarity metrics, k-NN / linear probe, and
the `evaluate` metric modules loaded offline by path. Real tiny models and real data; MiniLM only in the slow test."""

from __future__ import annotations

import math
import os
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from hf_divcl.data.images import digits
from hf_divcl.data.wordnet import split_key, wordnet_pairs, wordnet_split
from hf_divcl.diversity.metrics import batch_diversity
from hf_divcl.evaluation import metrics
from hf_divcl.evaluation.probes import (
    encode_images,
    knn_accuracy,
    knn_accuracy_from_embeddings,
    knn_predict,
    linear_probe_accuracy,
    linear_probe_accuracy_from_embeddings,
)
from hf_divcl.evaluation.retrieval import RETRIEVAL_METRICS, retrieval_metrics
from hf_divcl.evaluation.tasks import evaluate_text, evaluate_vision
from hf_divcl.evaluation.word_similarity import read_word_pairs, spearman, word_similarity, word_similarity_path
from hf_divcl.models.vision import build_tiny_vit_sentence_transformer


def build_char_bert(path: Path, letters: str = string.ascii_lowercase) -> str:
    """A random 2-layer BERT (hidden 32) whose WordPiece vocabulary is single characters, saved as a
    SentenceTransformer. Unlike a ``vocab_file=`` tokenizer (ignored by transformers 5, which then maps every word
    to [UNK]) the vocabulary is passed as ``vocab=``, so distinct texts get distinct inputs. Words holding a letter
    outside ``letters`` become [UNK]."""
    import transformers
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    hf_dir = path / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    chars = letters + string.digits + string.punctuation
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    tokenizer = transformers.BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(hf_dir)
    config = transformers.BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.BertModel(config).save_pretrained(hf_dir)
    word = Transformer(str(hf_dir), max_seq_length=128)
    pooling = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(path / "st"))
    return str(path / "st")


@pytest.fixture(scope="module")
def char_model(tmp_path_factory) -> SentenceTransformer:
    return SentenceTransformer(build_char_bert(tmp_path_factory.mktemp("char-bert")), device="cpu")


@pytest.fixture(scope="module")
def example_test() -> object:
    return wordnet_split("example", "test", source="embedded")


# --------------------------------------------------------------------------------------------------------------
# splits


@pytest.mark.parametrize("kind, n_train, n_test", [("example", 2000, 500), ("lemma", 1000, 500), ("both", 3500, 500)])
def test_split_is_by_synset_complete_and_sized_as_documented(kind, n_train, n_test):
    full = wordnet_pairs(kind, source="embedded")
    train = wordnet_split(kind, "train", source="embedded")
    test = wordnet_split(kind, "test", source="embedded")
    assert (len(train), len(test)) == (n_train, n_test)
    assert not set(train["synset_id"]) & set(test["synset_id"])
    assert not set(train["positive"]) & set(test["positive"])  # test glosses are unseen
    rows = sorted(zip([*train["anchor"], *test["anchor"]], [*train["synset_id"], *test["synset_id"]], strict=True))
    assert rows == sorted(zip(full["anchor"], full["synset_id"], strict=True))
    assert train.column_names == full.column_names
    assert list(test["synset_id"]) == sorted(test["synset_id"])  # keeps wordnet_pairs' order


def test_split_is_deterministic_and_seeded():
    a = wordnet_split("example", "test", source="embedded", seed=0)
    b = wordnet_split("example", "test", source="embedded", seed=0)
    c = wordnet_split("example", "test", source="embedded", seed=1)
    assert a.to_dict() == b.to_dict()
    assert set(a["synset_id"]) != set(c["synset_id"]) and len(c) == 500
    # the int test size takes the synsets with the smallest keys
    keys = sorted(split_key(s, 0) for s in wordnet_pairs("example", source="embedded")["synset_id"])
    assert max(split_key(s, 0) for s in a["synset_id"]) == keys[499]


@pytest.mark.parametrize("fraction, sizes", [(0.2, {"example": 549, "lemma": 334, "both": 883}),
                                             (0.1, {"example": 253, "lemma": 164, "both": 417})])
def test_fraction_split_puts_each_synset_on_one_side_for_every_kind(fraction, sizes):
    tests = {k: set(wordnet_split(k, "test", source="embedded", test_size=fraction)["synset_id"]) for k in sizes}
    assert {k: len(v) for k, v in tests.items()} == sizes  # one pair per synset in the sample
    assert tests["both"] == tests["example"] | tests["lemma"]
    both_train = set(wordnet_split("both", "train", source="embedded", test_size=fraction)["synset_id"])
    assert not both_train & tests["example"]  # train on "both", test on "example": no leak
    assert all(split_key(s, 0) < fraction for s in tests["both"])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"split": "valid"}, ValueError, "split must be one of"),
    ({"test_size": 0}, ValueError, "test_size=0"),
    ({"test_size": 1.0}, ValueError, "strictly between 0 and 1"),
    ({"test_size": True}, TypeError, "test_size must be an int"),
    ({"test_size": "500"}, TypeError, "test_size must be an int"),
    ({"test_size": 2500}, ValueError, "leaves no training pairs"),
    ({"test_size": 1e-9}, ValueError, "split .* is empty"),
])
def test_split_errors_name_the_value(kwargs, error, match):
    kwargs = {"split": "test", **kwargs}
    with pytest.raises(error, match=match):
        wordnet_split("example", source="embedded", **kwargs)


# --------------------------------------------------------------------------------------------------------------
# retrieval


def test_retrieval_is_perfect_when_anchor_and_positive_are_the_same_text(char_model, example_test):
    texts = list(example_test["positive"])
    result = retrieval_metrics(char_model, texts, texts, name="same")
    assert result == {f"same_{m}": 1.0 for m in RETRIEVAL_METRICS}


def test_retrieval_matches_a_brute_force_ranking(char_model, example_test):
    anchors, positives = list(example_test["anchor"]), list(example_test["positive"])
    result = retrieval_metrics(char_model, anchors, positives, name="", batch_size=64)
    assert set(result) == set(RETRIEVAL_METRICS)
    # the same encode calls as the evaluator, then the rank of each anchor's positive among all positives
    corpus = list(dict.fromkeys(positives))
    q = char_model.encode(anchors, batch_size=64, convert_to_tensor=True)
    d = char_model.encode(corpus, batch_size=64, convert_to_tensor=True)
    scores = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T
    target = torch.tensor([corpus.index(p) for p in positives])
    own = scores.gather(1, target[:, None])
    rank = 1 + (scores > own).sum(1) + ((scores == own) & (torch.arange(len(corpus)) < target[:, None])).sum(1)
    rank = rank.double()
    expected = {
        "accuracy@1": (rank <= 1).double().mean(),
        "accuracy@5": (rank <= 5).double().mean(),
        "accuracy@10": (rank <= 10).double().mean(),
        "mrr@10": torch.where(rank <= 10, 1 / rank, 0).mean(),
        "ndcg@10": torch.where(rank <= 10, 1 / torch.log2(rank + 1), 0).mean(),
    }
    assert result == pytest.approx({k: v.item() for k, v in expected.items()}, abs=1e-6)
    # one relevant document: acc@1 <= MRR <= nDCG <= acc@10, and acc@k grows with k
    r = result
    assert 0 <= r["accuracy@1"] <= r["mrr@10"] <= r["ndcg@10"] <= r["accuracy@10"] <= 1
    assert r["accuracy@1"] <= r["accuracy@5"] <= r["accuracy@10"]


def test_retrieval_shares_a_document_between_pairs_with_one_positive(char_model):
    anchors = ["a tall tree", "a short tree", "a red car"]
    positives = ["woody plant", "woody plant", "motor vehicle"]
    assert retrieval_metrics(char_model, positives, positives)["wordnet_accuracy@1"] == 1.0
    result = retrieval_metrics(char_model, anchors, positives)
    assert result["wordnet_accuracy@5"] == 1.0  # a corpus of 2 unique documents


def test_retrieval_errors_name_the_row(char_model):
    with pytest.raises(ValueError, match="3 anchors and 2 positives"):
        retrieval_metrics(char_model, ["a", "b", "c"], ["x", "y"])
    with pytest.raises(ValueError, match=r"positives\[1\] = ' '"):
        retrieval_metrics(char_model, ["a", "b"], ["x", " "])


# --------------------------------------------------------------------------------------------------------------
# word similarity


def test_word_similarity_uses_every_pair_of_both_benchmarks(char_model):
    result = word_similarity(char_model)
    assert (result["wordsim353_pairs"], result["wordsim353_skipped"]) == (353, 0)
    assert (result["simlex999_pairs"], result["simlex999_skipped"]) == (999, 0)
    for name in ("wordsim353", "simlex999"):
        assert -1 <= result[f"{name}_spearman"] <= 1


def test_word_similarity_skips_pairs_with_out_of_vocabulary_words(tmp_path):
    model = SentenceTransformer(build_char_bert(tmp_path, letters=string.ascii_lowercase.replace("q", "")),
                                device="cpu")
    result = word_similarity(model, benchmarks=("wordsim353",))
    rows = read_word_pairs(word_similarity_path("wordsim353"))
    with_q = sum("q" in a.lower() or "q" in b.lower() for a, b, _ in rows)
    assert with_q > 0
    assert (result["wordsim353_pairs"], result["wordsim353_skipped"]) == (len(rows) - with_q, with_q)


def test_word_similarity_equals_the_embedding_similarity_metric(char_model):
    rows = read_word_pairs(word_similarity_path("simlex999"))
    left = char_model.encode([a for a, _, _ in rows], convert_to_tensor=True).double()
    right = char_model.encode([b for _, b, _ in rows], convert_to_tensor=True).double()
    metric = metrics.load("embedding_similarity", keep_in_memory=True)
    out = metric.compute(predictions=left.tolist(), references=right.tolist(), scores=[s for _, _, s in rows])
    assert out["pairs"] == 999
    assert out["spearman"] == pytest.approx(word_similarity(char_model, ("simlex999",))["simlex999_spearman"],
                                            abs=1e-6)


def test_word_similarity_files_come_from_the_gensim_wheel_and_bad_rows_are_named(tmp_path, monkeypatch):
    path = word_similarity_path("wordsim353")
    assert path.parent.parts[-3:] == ("gensim", "test", "test_data") and path.name == "wordsim353.tsv"
    assert len(read_word_pairs(path)) == 353 and len(read_word_pairs(word_similarity_path("simlex999"))) == 999
    bad = tmp_path / "bad.tsv"
    bad.write_text("# header\nold\tnew\t1.5\nsmart\tclever\tten\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv, line 3: score 'ten'"):
        read_word_pairs(bad)
    with pytest.raises(ValueError, match="Unknown word-similarity benchmark"):
        word_similarity_path("men3000")
    # a gensim without its test data (here: an empty package earlier on sys.path) gets the pip line
    (tmp_path / "gensim").mkdir()
    (tmp_path / "gensim" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pip install gensim==4\.4\.0"):
        word_similarity_path("simlex999")


def test_spearman_matches_a_rank_formula():
    x, y = [0.1, 0.4, 0.2, 0.9], [1.0, 3.0, 2.0, 10.0]
    assert spearman(x, y) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1.0], [2.0]))


def test_evaluate_text_combines_retrieval_and_word_similarity(char_model, example_test):
    result = evaluate_text(char_model, example_test.select(range(100)), name="wn")
    assert {f"wn_{m}" for m in RETRIEVAL_METRICS} <= set(result)
    assert {"wn_seconds", "word_similarity_seconds", "wordsim353_spearman", "simlex999_pairs"} <= set(result)
    with pytest.raises(KeyError, match="no column 'query'"):
        evaluate_text(char_model, example_test, anchor_column="query")


# --------------------------------------------------------------------------------------------------------------
# k-NN and linear probe


def _brute_force_knn(train: torch.Tensor, labels: list[int], test: torch.Tensor, k: int, vote: str) -> list[int]:
    train = train / train.norm(dim=1, keepdim=True)
    test = test / test.norm(dim=1, keepdim=True)
    out = []
    for row in test:
        sims = [(float(row @ t), i) for i, t in enumerate(train)]
        nearest = sorted(sims, reverse=True)[:k]
        if vote == "weighted":
            score: dict[int, float] = {}
            for s, i in nearest:
                score[labels[i]] = score.get(labels[i], 0.0) + math.exp(s / 0.07)
            out.append(max(sorted(score), key=lambda c: score[c]))
        else:
            count: dict[int, tuple[int, float]] = {}
            for s, i in nearest:
                n, total = count.get(labels[i], (0, 0.0))
                count[labels[i]] = (n + 1, total + s)
            out.append(max(sorted(count), key=lambda c: count[c]))
    return out


@pytest.mark.parametrize("vote", ["majority", "weighted"])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_knn_predict_equals_brute_force(vote, k):
    gen = torch.Generator().manual_seed(k)
    train, test = torch.randn(40, 5, generator=gen, dtype=torch.float64), torch.randn(25, 5, generator=gen,
                                                                                        dtype=torch.float64)
    labels = torch.randint(0, 4, (40,), generator=gen).tolist()
    pred = knn_predict(train, labels, test, k=k, vote=vote, chunk_size=8)
    assert pred.tolist() == _brute_force_knn(train, labels, test, k, vote)


def test_knn_and_linear_probe_on_raw_digit_pixels():
    train, test = digits("train"), digits("test")

    def pixels(ds) -> torch.Tensor:
        return torch.tensor(np.stack([np.asarray(im, dtype=np.float32).ravel() for im in ds["image"]]))

    x_train, x_test = pixels(train), pixels(test)
    # measured: 0.939 (majority), 0.946 (weighted), 0.909 (linear probe); chance is 0.1
    assert knn_accuracy_from_embeddings(x_train, train["label"], x_test, test["label"], k=20) > 0.9
    assert knn_accuracy_from_embeddings(x_train, train["label"], x_test, test["label"], vote="weighted") > 0.9
    probe = linear_probe_accuracy_from_embeddings(x_train, train["label"], x_test, test["label"])
    assert probe > 0.85
    assert probe == linear_probe_accuracy_from_embeddings(x_train, train["label"], x_test, test["label"])


def test_tiny_vit_knn_and_probe_on_digits(tmp_path):
    model = SentenceTransformer(build_tiny_vit_sentence_transformer(tmp_path), device="cpu")
    train, test = digits("train", limit=600), digits("test")
    train_emb, test_emb = encode_images(model, train["image"]), encode_images(model, test["image"])
    assert train_emb.shape == (600, 32) and torch.allclose(train_emb.norm(dim=1), torch.ones(600))
    knn = knn_accuracy(model, train["image"], train["label"], test["image"], test["label"], k=20)
    assert knn == knn_accuracy_from_embeddings(train_emb, train["label"], test_emb, test["label"], k=20)
    assert knn > 0.2  # a random (seed 0) ViT still separates digits somewhat: measured 0.35 (probe 0.57); chance 0.1
    probe = linear_probe_accuracy(model, train["image"], train["label"], test["image"], test["label"])
    assert probe == linear_probe_accuracy_from_embeddings(train_emb, train["label"], test_emb, test["label"])
    result = evaluate_vision(model, train, test, test_limit=100, k=10)
    assert (result["train_size"], result["test_size"], result["knn_k"]) == (600, 100, 10)
    assert 0 <= result["knn_accuracy"] <= 1 and 0 <= result["linear_probe_accuracy"] <= 1


def test_knn_errors_name_the_problem():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k=6"):
        knn_predict(x, [0, 1, 0, 1, 0], x, k=6)
    with pytest.raises(ValueError, match="4 labels for 5 embeddings"):
        knn_predict(x, [0, 1, 0, 1], x, k=2)
    with pytest.raises(ValueError, match=r"train_labels\[2\] = -1"):
        knn_predict(x, [0, 1, -1, 1, 0], x, k=2)
    with pytest.raises(ValueError, match="row 1: all-zero"):
        knn_predict(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), [0, 1], x[:, :2], k=1)
    with pytest.raises(ValueError, match="dimension 3, test embeddings 2"):
        knn_predict(x, [0, 1, 0, 1, 0], x[:, :2], k=1)
    with pytest.raises(ValueError, match="single class"):
        linear_probe_accuracy_from_embeddings(x, [1] * 5, x, [1] * 5)


# --------------------------------------------------------------------------------------------------------------
# evaluate metric modules


def test_metric_modules_load_offline_by_path_and_equal_the_direct_function():
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("HF_DATASETS_OFFLINE") == "1"
    import evaluate

    path = metrics.metric_path("batch_diversity")
    assert Path(path, "batch_diversity.py").is_file()
    module = evaluate.load(path)
    x = torch.randn(24, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = module.compute(embeddings=x.tolist())
    direct = batch_diversity(x)
    assert out["batch_size"] == 24
    for key in ("effective_rank", "participation_ratio", "lambda_max", "mean_cosine", "mean_sq_cosine"):
        assert out[key] == pytest.approx(direct[key].item(), rel=1e-12, abs=1e-15), key
    # rows added in batches form one batch
    module = metrics.load("batch_diversity")
    module.add_batch(embeddings=x[:10].tolist())
    module.add_batch(embeddings=x[10:].tolist())
    assert module.compute()["effective_rank"] == pytest.approx(direct["effective_rank"].item(), rel=1e-12)
    with pytest.raises(ValueError, match="row 1 has 1 values"):
        metrics.load("batch_diversity").compute(embeddings=[[1.0, 0.0], [0.0]])


def test_embedding_similarity_metric_equals_cosine_and_spearman():
    gen = torch.Generator().manual_seed(5)
    u, v = torch.randn(30, 4, generator=gen, dtype=torch.float64), torch.randn(30, 4, generator=gen,
                                                                                dtype=torch.float64)
    human = torch.rand(30, generator=gen, dtype=torch.float64).tolist()
    metric = metrics.load("embedding_similarity")
    out = metric.compute(predictions=u.tolist(), references=v.tolist(), scores=human)
    cosine = torch.nn.functional.cosine_similarity(u, v, dim=1)
    assert out["mean_cosine"] == pytest.approx(cosine.mean().item(), rel=1e-12)
    assert out["spearman"] == pytest.approx(spearman(cosine, human), abs=1e-12)
    assert -1 <= out["pearson"] <= 1 and out["pairs"] == 30
    plain = metric.compute(predictions=u.tolist(), references=v.tolist())
    assert set(plain) == {"mean_cosine", "pairs"}
    with pytest.raises(ValueError, match="2 scores for 30 pairs"):
        metric.compute(predictions=u.tolist(), references=v.tolist(), scores=[1.0, 2.0])
    with pytest.raises(ValueError, match="Unknown hf_divcl metric 'accuracy'"):
        metrics.load("accuracy")


# --------------------------------------------------------------------------------------------------------------
# the real model


@pytest.mark.slow
def test_minilm_on_the_held_out_wordnet_split_and_word_similarity(example_test):
    from hf_divcl.models.loading import load_sentence_transformer

    model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
    result = evaluate_text(model, example_test)
    # measured (CPU): nDCG@10 0.398, MRR@10 0.349, acc@1 0.260, acc@10 0.556; WordSim 0.729, SimLex 0.446
    assert result["wordnet_ndcg@10"] == pytest.approx(0.398, abs=0.02)
    assert result["wordnet_accuracy@1"] == pytest.approx(0.260, abs=0.02)
    assert result["wordsim353_spearman"] == pytest.approx(0.729, abs=0.02)
    assert result["simlex999_spearman"] == pytest.approx(0.446, abs=0.02)
    assert (result["wordsim353_pairs"], result["simlex999_pairs"]) == (353, 999)


@pytest.mark.parametrize("show", [True, False])
def test_evaluation_shows_progress_bars_only_when_asked(show, char_model, example_test, capsys):
    pairs = example_test.select(range(40))
    evaluate_text(char_model, pairs, name="wn", word_sim=False, show_progress_bar=show)
    err = capsys.readouterr().err
    assert ("Batches" in err) is show, err[-500:]
