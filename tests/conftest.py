"""Shared test set-up: no network, deterministic torch, float64 helpers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


def build_tiny_sentence_transformer(path) -> str:
    """A randomly initialised 2-layer BERT (hidden 32) with a letter-level WordPiece vocab, saved as a
    sentence-transformers folder: loads offline in well under a second."""
    import string

    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    path.mkdir(parents=True, exist_ok=True)
    hf_dir = path / "hf"
    hf_dir.mkdir(exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars)]
    (hf_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok_cls = getattr(transformers, "BertTokenizerFast", transformers.BertTokenizer)
    tokenizer = tok_cls(vocab=str(hf_dir / "vocab.txt"), do_lower_case=True)  # transformers 5 ignores vocab_file=
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(hf_dir)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(hf_dir)
    word = Transformer(str(hf_dir), max_seq_length=64)
    pooling = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    out = path / "st"
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of ``benchmarks/`` by its name (the folder is not a package): ``load_benchmark("report")``."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load
