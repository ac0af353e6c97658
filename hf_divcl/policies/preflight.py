"""Pre-flight: does batch composition matter for *this* data, model, batch size and τ — before training.

:func:`preflight` looks at random batches the way training would draw them and reports what a user needs to choose a
batch policy: how diverse random batches are (effective rank of the anchors, against a general-domain reference),
how many rows per batch share a text (or image) with another row of the batch, how many are near-duplicates by the
model, how many in-batch negatives sit closer to an anchor than its own positive (likely false negatives), and the
gradient regime at τ from the exact InfoNCE gradient bands. It ends with one recommendation and its reason, tied to
the paired benchmark evidence the project has (``docs/results.md``).

Cost: the duplicate count reads every row (hashing; the expected count per batch is exact); the model encodes at
most ``max_rows`` sampled rows (two views); the rest is a few batched matrix products. Pure functions of embeddings
(:func:`random_batch_stats`) do the maths.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .._common import input_columns, is_image_feature
from ..diversity.bands import gradient_bands
from ..diversity.metrics import batch_diversity
from ..planning.dedupe import duplicate_groups

__all__ = ["PREFLIGHT_FILE", "PreflightReport", "duplicate_rows_per_batch", "preflight", "random_batch_stats",
           "recommend"]

PREFLIGHT_FILE = "divcl_preflight.json"  # in output_dir: read by the model card

SATURATED_P_POS = 0.9  # mean softmax mass on the positive above which the gradient has little left to push
CROWDED_FRACTION = 0.3  # random batches below this fraction of the reachable effective rank are crowded
DUPLICATE_ROWS = 0.05  # exact-duplicate rows per random batch from which NO_DUPLICATES batches are advised
NEAR_DUPLICATE_ROWS = 0.5  # near-duplicate rows per random batch from which deduplicating the data is advised
BELOW_REFERENCE = 0.85  # effective rank under this fraction of the general-domain reference's: outside the evidence


@dataclass
class PreflightReport:
    """What random batches of this data look like to this model; :meth:`format` prints it, :meth:`to_dict` saves it.

    Counts are means over the sampled random batches: ``duplicate_rows`` rows per batch that share a text (or
    image bytes) with another row of the batch, ``near_duplicate_rows`` rows whose anchor has cosine ≥
    ``near_threshold`` with another anchor of the batch, ``false_negatives`` in-batch negatives per anchor at least
    as close to the anchor as its own positive."""

    data: str
    rows: int
    sampled_rows: int
    batches: int
    batch_size: int
    temperature: float
    dimension: int
    effective_rank: float
    effective_rank_std: float
    reachable_rank: int
    reference_effective_rank: float | None
    duplicate_rows: float
    near_duplicate_rows: float
    near_threshold: float
    false_negatives: float
    p_pos: float
    grad_norm: float
    bands_hold: float
    regime: str
    recommendation: str
    reason: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        ref = (f" (general-domain reference: {self.reference_effective_rank:.1f})"
               if self.reference_effective_rank is not None else "")
        return "\n".join([
            f"Pre-flight: {self.data}: {self.rows} rows ({self.sampled_rows} encoded), B = {self.batch_size}, "
            f"τ = {self.temperature:g}, d = {self.dimension}",
            f"  random batches' diversity: effective rank {self.effective_rank:.1f} ± {self.effective_rank_std:.1f} "
            f"of {self.reachable_rank}{ref}",
            f"  exact duplicates: {self.duplicate_rows:.2f} rows per batch share a text or image with another row",
            f"  near duplicates (cosine ≥ {self.near_threshold:g}): {self.near_duplicate_rows:.2f} rows per batch",
            f"  in-batch negatives at least as close to the anchor as its positive: {self.false_negatives:.2f} per "
            "anchor (by this model: likely false negatives, and pairs it cannot yet tell apart)",
            f"  gradient regime at τ = {self.temperature:g}: {self.regime} (mean p₊ = {self.p_pos:.2f}, "
            f"‖∇‖ = {self.grad_norm:.3g}, bands hold for {self.bands_hold:.0%} of anchors)",
            f"  recommendation: {self.recommendation} — {self.reason}",
            f"  ({self.seconds:.1f} s)"])


def duplicate_rows_per_batch(groups: torch.Tensor, batch_size: int) -> float:
    """Expected number of rows per random batch of ``batch_size`` whose duplicate group (``(N,)`` ids, see
    :func:`~hf_divcl.planning.dedupe.duplicate_groups`) has another member in the same batch — exact, no sampling: a
    row of a group of ``g`` misses all ``g − 1`` others with probability ``∏_{k<B−1} (N − g − k) / (N − 1 − k)``."""
    n = groups.shape[0]
    _, counts = torch.unique(groups, return_counts=True)
    sizes, rows_of_size = torch.unique(counts, return_counts=True)  # group size → groups of that size
    k = torch.arange(batch_size - 1, dtype=torch.float64)
    alone = torch.stack([((n - s - k).clamp_min(0) / (n - 1 - k)).prod() for s in sizes.double()])
    return float(batch_size / n * (sizes.double() * rows_of_size.double() * (1 - alone)).sum())


def random_batch_stats(anchors: torch.Tensor, positives: torch.Tensor, batch_size: int, temperature: float,
                       n_batches: int, generator: torch.Generator, near_threshold: float = 0.95) -> dict[str, float]:
    """Statistics of ``n_batches`` random batches drawn from the rows of ``anchors`` / ``positives`` (``(N, d)``,
    normalised inside): effective rank (mean, std), near-duplicate rows per batch, likely false negatives per
    anchor, and from the exact gradient bands at ``temperature`` the mean softmax mass on the positive, the mean
    per-anchor gradient norm and the fraction of anchors inside their bands."""
    u_all = torch.nn.functional.normalize(anchors.double(), dim=-1)
    v_all = torch.nn.functional.normalize(positives.double(), dim=-1)
    n = u_all.shape[0]
    idx = torch.stack([torch.randperm(n, generator=generator)[:batch_size] for _ in range(n_batches)])
    u, v = u_all[idx], v_all[idx]  # (R, B, d)
    eye = torch.eye(u.shape[1], dtype=torch.bool)
    rank = batch_diversity(u, spectrum=True, validate=False)["effective_rank"]
    uv = u @ v.transpose(-1, -2)  # anchor i against every positive j of the batch
    false_neg = ((uv >= uv.diagonal(dim1=-2, dim2=-1)[..., None]) & ~eye).sum(-1).double()
    near = ((u @ u.transpose(-1, -2) >= near_threshold) & ~eye).any(-1).sum(-1).double()
    bands = gradient_bands(u, v, temperature, validate=False)
    return {"effective_rank": rank.mean().item(), "effective_rank_std": rank.std().item() if n_batches > 1 else 0.0,
            "near_duplicate_rows": near.mean().item(), "false_negatives": false_neg.mean().item(),
            "p_pos": bands.p_pos.mean().item(), "grad_norm": bands.grad_norm.mean().item(),
            "bands_hold": bands.inside().double().mean().item()}


def recommend(stats: dict[str, float], reachable_rank: int,
              reference_rank: float | None = None) -> tuple[str, str, str]:
    """``(regime, recommendation, reason)`` from :func:`random_batch_stats` plus ``duplicate_rows`` (and the
    general-domain reference's effective rank, when measured); the reasons quote the paired benchmark results
    behind them (``docs/results.md``), or say that none covers the case."""
    crowded = stats["effective_rank"] < CROWDED_FRACTION * reachable_rank
    if stats["p_pos"] >= SATURATED_P_POS:
        regime = "saturated (the softmax already sits on the positive: little gradient left)"
    elif crowded:
        regime = "crowded (the batch's embeddings are alike: gradients vanish)"
    else:
        regime = "healthy"
    if stats["duplicate_rows"] >= DUPLICATE_ROWS:
        return regime, "use NO_DUPLICATES batches (hf_divcl's default dedupe=True)", (
            f"{stats['duplicate_rows']:.2f} rows per random batch share a text or image with another row; each such "
            "pair is a false negative the loss pushes apart")
    if crowded:
        return regime, ("batches are crowded: try a spread window (batch_policy=\"window\" above random's "
                        "effective rank) against the default random batches"), (
            f"random batches reach an effective rank of {stats['effective_rank']:.1f} of {reachable_rank}; where "
            "random batches were this crowded (from-scratch Fashion-MNIST), steering toward more diversity gained "
            "+0.0056 k-NN accuracy (4 of 5 seeds, not significant) and tight batches lost 0.021 (significant)")
    if stats["near_duplicate_rows"] >= NEAR_DUPLICATE_ROWS:
        return regime, "deduplicate near-identical rows before training", (
            f"{stats['near_duplicate_rows']:.2f} rows per random batch have an anchor the model can hardly tell from "
            "another row's (likely false negatives); exact-text NO_DUPLICATES batches do not catch them, and masking "
            "by the model itself lost quality in our paired benchmarks")
    if reference_rank is not None and stats["effective_rank"] < BELOW_REFERENCE * reference_rank:
        return regime, ("random batches (the default); the experimental batch_policy=\"explore\" can "
                        "measure a spread window on the run itself"), (
            f"random batches are less diverse than the general-domain reference (effective rank "
            f"{stats['effective_rank']:.1f} against {reference_rank:.1f}), as in fine-grained domain data; no paired "
            "benchmark of ours covers this regime yet, so keep random batches unless the run's own measurement "
            "finds a level that beats them")
    return regime, "random batches are fine here", (
        f"random batches are already diverse (effective rank {stats['effective_rank']:.1f} of {reachable_rank}); "
        "in paired benchmarks in this regime (all-MiniLM-L6-v2 on dictionary example → definition pairs) no batch "
        "policy beat random batches, the default (batch_policy=\"random\")")


def _row_keys(dataset, column: str) -> list[str]:
    """Hashable identity of each row's value: the text, or the image's bytes (read without decoding)."""
    if is_image_feature(dataset.features[column]):
        from datasets import Image

        raw = dataset.cast_column(column, Image(decode=False))[column]
        return [hashlib.blake2b(r["bytes"] or (r["path"] or "").encode(), digest_size=16).hexdigest() for r in raw]
    return [str(x) for x in dataset[column]]


def _embed(model, dataset, columns: list[str], rows: list[int], batch_size: int, augment,
           show_progress_bar: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(anchors, positives)`` unit embeddings ``(S, d)`` of ``rows``: the two columns (texts or images), or two
    augmented views of a single image column (as training sees them)."""
    sub = dataset.select(rows)
    if len(columns) >= 2:
        a = model.encode(list(sub[columns[0]]), batch_size=batch_size, convert_to_tensor=True,
                         normalize_embeddings=True, show_progress_bar=show_progress_bar)
        p = model.encode(list(sub[columns[1]]), batch_size=batch_size, convert_to_tensor=True,
                         normalize_embeddings=True, show_progress_bar=show_progress_bar)
        return a.float().cpu(), p.float().cpu()
    from ..models.augment import TwoViewAugment, to_model_inputs
    from ..models.vision import processor_image_size

    augment = augment or TwoViewAugment(processor_image_size(model) or 224, seed=0)
    images = list(sub[columns[0]])
    out: list[list[torch.Tensor]] = [[], []]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(images), batch_size):
                for k, views in enumerate(augment(images[s:s + batch_size])):
                    emb = model(to_model_inputs(model, views))["sentence_embedding"]
                    out[k].append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out[0]), torch.cat(out[1])


def _reference_rank(model, batch_size: int, n_batches: int, generator: torch.Generator, rows: int = 512) -> float:
    """Effective rank of random batches of the general-domain reference (the dictionary example sentences shipped
    with hf_divcl: the embedded WordNet sample) under ``model``."""
    from ..data.wordnet import wordnet_pairs

    ds = wordnet_pairs(kind="example", source="embedded")
    keep = torch.randperm(len(ds), generator=generator)[:rows].tolist()
    emb = model.encode(list(ds.select(keep)["anchor"]), convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False).double().cpu()
    return random_batch_stats(emb, emb, min(batch_size, rows), 0.05, n_batches, generator)["effective_rank"]


def preflight(model, dataset, batch_size: int = 32, temperature: float = 0.05, *, data: str = "the data set",
              max_rows: int = 2048, n_batches: int = 64, near_threshold: float = 0.95, seed: int = 0,
              encode_batch_size: int = 64, augment=None, reference: bool | None = None,
              show_progress_bar: bool = False) -> PreflightReport:
    """Random batches of ``dataset`` (a ``datasets.Dataset`` of (anchor, positive) text pairs or of images) as
    ``model`` (a SentenceTransformer) sees them at ``batch_size`` (the global batch) and τ = ``temperature``.

    Args:
        data: how the report names the data.
        max_rows: rows encoded (a seeded sample; duplicates are counted over every row).
        n_batches: random batches measured.
        near_threshold: anchor cosine from which two rows count as near-duplicates.
        augment: for image data, the two-view augmentation (default: the trainer's, at the processor's size).
        reference: also measure the general-domain reference (default: for text models).
    """
    t0 = time.perf_counter()
    columns = input_columns(dataset.column_names, ("label", "labels", "score"))
    if not columns:
        raise ValueError(f"preflight needs an input column; the data set has {dataset.column_names}.")
    image = any(is_image_feature(dataset.features[c]) for c in columns[:2])
    single_image = len(columns) == 1 and image
    columns = columns[:1] if single_image else columns[:2]
    if not single_image and len(columns) < 2:
        raise ValueError(f"preflight needs (anchor, positive) columns or one image column; got {columns}.")
    n = len(dataset)
    if n < batch_size:
        raise ValueError(f"The data set has {n} rows, fewer than one batch of {batch_size}.")
    gen = torch.Generator().manual_seed(seed)
    groups = duplicate_groups(*[_row_keys(dataset, c) for c in columns])
    dup = duplicate_rows_per_batch(groups, batch_size)
    rows = torch.randperm(n, generator=gen)[:min(max_rows, n)].sort().values.tolist()
    anchors, positives = _embed(model, dataset, columns, rows, encode_batch_size, augment, show_progress_bar)
    stats = random_batch_stats(anchors, positives, batch_size, temperature, n_batches, gen, near_threshold)
    stats["duplicate_rows"] = dup
    reachable = min(batch_size, anchors.shape[1])
    ref = None
    if reference if reference is not None else not image:
        ref = _reference_rank(model, batch_size, n_batches, gen)
    regime, recommendation, reason = recommend(stats, reachable, ref)
    return PreflightReport(
        data=data, rows=n, sampled_rows=len(rows), batches=n_batches, batch_size=batch_size,
        temperature=float(temperature),
        dimension=int(anchors.shape[1]), effective_rank=stats["effective_rank"],
        effective_rank_std=stats["effective_rank_std"], reachable_rank=reachable, reference_effective_rank=ref,
        duplicate_rows=dup, near_duplicate_rows=stats["near_duplicate_rows"], near_threshold=near_threshold,
        false_negatives=stats["false_negatives"], p_pos=stats["p_pos"], grad_norm=stats["grad_norm"],
        bands_hold=stats["bands_hold"], regime=regime, recommendation=recommendation, reason=reason,
        seconds=time.perf_counter() - t0)
