"""Input checks shared by the diversity measures and the gradient bands: embeddings (shape, dtype, NaN/Inf,
zero rows — each error names the first bad row), the temperature, and row normalisation.

Kept apart so :mod:`hf_divcl.diversity.metrics` and :mod:`hf_divcl.diversity.bands` refuse bad input with the same
messages.
"""

from __future__ import annotations

import math

import torch


def float_dtype(x: torch.Tensor) -> torch.Tensor:
    """Promote integer and half-precision inputs to float32; keep float32/float64 as they are."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.to(torch.float32)


def _first_bad_row(mask: torch.Tensor) -> str:
    """Human-readable index of the first True entry of a ``(..., B)`` mask, e.g. ``"row 3"`` or ``"[2, 5]"``."""
    idx = torch.nonzero(mask, as_tuple=False)[0].tolist()
    return f"row {idx[0]}" if len(idx) == 1 else f"row {idx[-1]} of batch {tuple(idx[:-1])}"


def check_embeddings(x: torch.Tensor, name: str, min_rows: int = 2) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (..., B, d), got {type(x).__name__}.")
    if x.ndim < 2:
        raise ValueError(f"`{name}` must have shape (..., B, d) with B rows of dimension d; got shape "
                         f"{tuple(x.shape)}.")
    if x.shape[-2] < min_rows:
        raise ValueError(f"`{name}` needs at least {min_rows} rows (B >= {min_rows}); got B = {x.shape[-2]}. "
                         "Diversity and in-batch negatives are undefined for a single row.")
    if x.shape[-1] < 1:
        raise ValueError(f"`{name}` has embedding dimension 0; expected d >= 1.")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"`{name}` must be a real floating tensor, got dtype {x.dtype}.")
    x = float_dtype(x)
    finite = torch.isfinite(x).all(dim=-1)
    if not bool(finite.all()):
        raise ValueError(f"`{name}` contains NaN or Inf at {_first_bad_row(~finite)}; "
                         "check the model output (e.g. fp16 overflow) before measuring it.")
    zero = (x.abs().amax(dim=-1) == 0)
    if bool(zero.any()):
        raise ValueError(f"`{name}` has an all-zero embedding at {_first_bad_row(zero)}; a zero vector has no "
                         "direction and cannot be normalised. Drop or fix that row.")
    return x


def check_temperature(temperature: float | torch.Tensor) -> float | torch.Tensor:
    t = temperature
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"`temperature` must be a scalar, got a tensor of shape {tuple(t.shape)}.")
        tv = float(t.detach())
    else:
        try:
            tv = float(t)
        except (TypeError, ValueError):
            raise ValueError(f"`temperature` must be a positive number, got {t!r}.") from None
    if not math.isfinite(tv) or tv <= 0:
        raise ValueError(f"`temperature` must be a finite number > 0, got {tv}. Typical values are 0.01-1 "
                         "(sentence-transformers' MultipleNegativesRankingLoss uses scale 20, i.e. τ = 0.05).")
    return t if isinstance(t, torch.Tensor) else tv


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Row-normalise in float64-safe fashion (no clamp: zero rows were rejected by the checks)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
