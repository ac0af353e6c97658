"""Pairs of texts → embeddings with a SentenceTransformer: the shared first step of ``diagnose`` and ``calibrate``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .loading import DEFAULT_TEXT_MODEL, load_sentence_transformer, resolve_device

__all__ = ["EmbeddedPairs", "PairEmbeddingConfig", "check_temperatures", "embed_pairs", "load_pairs"]


@dataclass
class PairEmbeddingConfig:
    """Which model embeds which pairs (fields shared by the ``hf-divcl`` commands)."""

    model: str = field(default=DEFAULT_TEXT_MODEL, metadata={
        "help": "SentenceTransformer folder or name; 'all-MiniLM-L6-v2' loads the packaged offline copy."})
    data: str = field(default="embedded", metadata={
        "help": "'embedded' (WordNet sample shipped with hf_divcl), 'wordnet' (Debian wordnet-base, full), "
                "or a local .csv/.tsv/.jsonl/.parquet file of pairs."})
    pair_kind: str = field(default="example", metadata={
        "help": "WordNet pairs: 'example' (example sentence -> gloss), 'lemma' (lemmas -> gloss) or 'both'.",
        "choices": ["example", "lemma", "both"]})
    anchor_column: str = field(default="anchor", metadata={"help": "Anchor text column of a local data file."})
    positive_column: str = field(default="positive", metadata={"help": "Positive text column of a local file."})
    max_pairs: int = field(default=2500, metadata={"help": "Embed at most this many pairs (seeded subset)."})
    encode_batch_size: int = field(default=64, metadata={"help": "Batch size used to embed the texts."})
    seed: int = field(default=0, metadata={"help": "Seed for the pair subset and the batches."})
    device: str = field(default="auto", metadata={"help": "'auto', 'cpu', 'cuda', 'cuda:1', ..."})


def check_temperatures(temperatures: list[float]) -> None:
    """Raise unless ``temperatures`` is a non-empty list of finite numbers > 0."""
    if not temperatures or any(not (t > 0 and math.isfinite(t)) for t in temperatures):
        raise ValueError(f"temperatures must be finite numbers > 0, got {temperatures}.")


@dataclass
class EmbeddedPairs:
    """Unit embeddings of the anchors and positives, ``(N, d)`` float64 each, and where they came from."""

    anchors: torch.Tensor
    positives: torch.Tensor
    label: str
    seconds: float


def load_pairs(cfg: PairEmbeddingConfig, min_pairs: int = 2) -> tuple[list[str], list[str], str]:
    """``(anchors, positives, description)``; a seeded subset of at most ``cfg.max_pairs`` pairs."""
    if cfg.data in ("embedded", "wordnet"):
        from ..data.wordnet import wordnet_pairs

        source = "embedded" if cfg.data == "embedded" else "debian"
        ds = wordnet_pairs(kind=cfg.pair_kind, source=source)
        label = f"WordNet 3.0 {cfg.pair_kind} pairs ({'embedded sample' if source == 'embedded' else 'Debian'})"
        anchors, positives = list(ds["anchor"]), list(ds["positive"])
    else:
        from ..data.local import load_pair_file

        anchors, positives = load_pair_file(cfg.data, cfg.anchor_column, cfg.positive_column)
        label = cfg.data
    if len(anchors) < min_pairs:
        raise ValueError(f"{label} has {len(anchors)} pairs, fewer than the batch size {min_pairs}.")
    if len(anchors) > cfg.max_pairs:
        gen = torch.Generator().manual_seed(cfg.seed)
        keep = torch.randperm(len(anchors), generator=gen)[: cfg.max_pairs].sort().values.tolist()
        anchors = [anchors[i] for i in keep]
        positives = [positives[i] for i in keep]
    return anchors, positives, label


def embed_pairs(cfg: PairEmbeddingConfig, progress: bool = True, min_pairs: int = 2) -> EmbeddedPairs:
    """Load the pairs and the model, and embed both sides (progress bar), normalised, float64."""
    anchors, positives, label = load_pairs(cfg, min_pairs)
    model = load_sentence_transformer(cfg.model, device=cfg.device)
    t0 = time.perf_counter()
    emb = model.encode(anchors + positives, batch_size=cfg.encode_batch_size, show_progress_bar=progress,
                       convert_to_tensor=True, normalize_embeddings=True)
    seconds = time.perf_counter() - t0
    emb = emb.to(resolve_device(cfg.device)).double()
    n = len(anchors)
    return EmbeddedPairs(emb[:n], emb[n:], label, seconds)
