"""Batch diversity and InfoNCE gradient bands.

Two measurements everything else in hf_divcl rests on:

* :func:`batch_diversity` — how spread out a batch of embeddings is (effective rank, participation ratio,
  top eigenvalue of the trace-1 second moment, mean (squared) cosine);
* :func:`gradient_bands` — the exact norm of the InfoNCE gradient at every anchor and the analytic bands that
  bound it from the softmax statistics and the spectrum of the negatives (see ``docs/maths.md``).

Everything is pure torch, works on any device and dtype (half precision is promoted to float32; pass float64
for reference-grade numbers), and accepts leading batch dimensions: a ``(R, B, d)`` input evaluates ``R``
batches at once. No Python loop runs over the rows of a batch.

This module holds the diversity measures; the gradient bands live in :mod:`hf_divcl.diversity.bands` (with the notation)
and the input checks in :mod:`hf_divcl.diversity.checks`.
"""

from __future__ import annotations

import torch

from .checks import check_embeddings, float_dtype, normalize_rows

__all__ = ["DIVERSITY_METRICS", "batch_diversity", "participation_ratio"]

DIVERSITY_METRICS = ("effective_rank", "participation_ratio", "lambda_max", "mean_cosine", "mean_sq_cosine")
"""The batch-diversity measures :func:`batch_diversity` returns (one value per batch each)."""


def participation_ratio(similarity: torch.Tensor) -> torch.Tensor:
    """Participation-ratio rank ``n² / ‖G‖_F²`` of a ``(..., n, n)`` cosine-similarity matrix.

    Equals ``(tr Σ)² / tr(Σ²)`` of the trace-1 second moment without any eigendecomposition. Shape ``(...)``.
    """
    n = similarity.shape[-1]
    return n * n / similarity.square().sum(dim=(-2, -1))


def batch_diversity(
    embeddings: torch.Tensor | None = None,
    *,
    similarity: torch.Tensor | None = None,
    spectrum: bool = True,
    validate: bool = True,
) -> dict[str, torch.Tensor]:
    """Diversity of one batch (or of ``R`` batches at once) of embeddings.

    Args:
        embeddings (`torch.Tensor` of shape `(..., B, d)`, *optional*):
            The batch; rows are L2-normalised inside.
        similarity (`torch.Tensor` of shape `(..., B, B)`, *optional*):
            An already computed cosine-similarity matrix of unit rows (e.g. the loss's own, *before* dividing by
            the temperature). Use instead of `embeddings` to avoid recomputing it.
        spectrum (`bool`, *optional*, defaults to `True`):
            Compute the eigenvalue spectrum (needed for `effective_rank`, `lambda_max`, `spectrum`). With `False`
            only the eigendecomposition-free metrics are returned — the cheapest option for per-step logging.
        validate (`bool`, *optional*, defaults to `True`):
            Check shapes and finiteness (one host sync). Turn off in hot loops on trusted inputs.

    Returns:
        `dict[str, torch.Tensor]`, each value of shape `(...)` unless noted (call `.item()` for a float):
            - `effective_rank`: ``exp(H(p))`` with ``p`` the normalised eigenvalues of the second moment.
            - `participation_ratio`: ``B² / ‖G‖_F²`` (from the Gram matrix, no eigendecomposition).
            - `lambda_max`: largest eigenvalue of the trace-1 second moment ``XᵀX / B``.
            - `mean_cosine`, `mean_sq_cosine`: mean of ``cos`` and ``cos²`` over ordered pairs ``i ≠ j``.
            - `spectrum`: shape `(..., min(B, d))`, eigenvalues of the trace-1 second moment, descending.
            - `batch_size`: ``B`` as a tensor.
    """
    if (embeddings is None) == (similarity is None):
        raise ValueError("Pass exactly one of `embeddings` (shape (..., B, d)) or `similarity` (shape (..., B, B)).")

    if embeddings is not None:
        x = check_embeddings(embeddings, "embeddings") if validate else float_dtype(embeddings)
        x = normalize_rows(x)
        b, d = x.shape[-2], x.shape[-1]
        # The smaller of XXᵀ (B×B) and XᵀX (d×d) carries the same non-zero spectrum and Frobenius norm.
        small = x.mT @ x if d < b else x @ x.mT
        sum_all = torch.linalg.vector_norm(x.sum(dim=-2), dim=-1).square()  # Σ_ij cos_ij = ‖Σ x_i‖²
        frob2 = small.square().sum(dim=(-2, -1))  # ‖G‖_F²
        trace = torch.full_like(frob2, float(b))
    else:
        g = similarity
        if validate:
            if not isinstance(g, torch.Tensor) or g.ndim < 2 or g.shape[-1] != g.shape[-2]:
                shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
                raise ValueError(f"`similarity` must be a square (..., B, B) tensor, got {shape}.")
            if g.shape[-1] < 2:
                raise ValueError(f"`similarity` needs B >= 2 rows, got B = {g.shape[-1]}.")
            g = float_dtype(g)
            if not bool(torch.isfinite(g).all()):
                raise ValueError("`similarity` contains NaN or Inf.")
            diag = torch.diagonal(g, dim1=-2, dim2=-1)
            if not bool(torch.allclose(diag, torch.ones_like(diag), atol=1e-3)):
                raise ValueError("`similarity` must be the cosine matrix of unit rows (diagonal = 1); if it is the "
                                 "loss's logits, multiply by the temperature first.")
        else:
            g = float_dtype(g)
        b = g.shape[-1]
        small = g
        sum_all = g.sum(dim=(-2, -1))
        frob2 = g.square().sum(dim=(-2, -1))
        trace = torch.diagonal(g, dim1=-2, dim2=-1).sum(-1)

    pairs = b * (b - 1)
    out: dict[str, torch.Tensor] = {
        "participation_ratio": trace.square() / frob2,
        "mean_cosine": (sum_all - trace) / pairs,
        # Σ_{i≠j} cos² = ‖G‖_F² − Σ_i cos_ii² (= B for unit rows)
        "mean_sq_cosine": (frob2 - (trace if embeddings is not None else
                                    torch.diagonal(small, dim1=-2, dim2=-1).square().sum(-1))) / pairs,
        "batch_size": torch.tensor(b, device=small.device),
    }
    if spectrum:
        evals = torch.linalg.eigvalsh(small).flip(-1).clamp_min(0)  # descending, (..., min(B, d))
        p = evals / evals.sum(-1, keepdim=True)
        out["spectrum"] = p
        out["lambda_max"] = p[..., 0]
        out["effective_rank"] = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return out
