"""``PlanContext``: what a builder may use (the bank's rows, a sketch, the window and its target, the generator)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..diversity.window import DiversityWindow
from .sketch import make_sketch, row_chunks

__all__ = ["PlanContext"]


@dataclass
class PlanContext:
    """What a builder may use: the rows' embeddings, a sketch, the window and its target, the generator."""

    bank: torch.Tensor  # (N, d) unit rows of the whole bank, its own dtype (float16/32); never copied
    rows: torch.Tensor  # (M,) the bank rows being assigned; builders work on positions 0..M-1 into it
    batch_size: int
    window: DiversityWindow | None
    generator: torch.Generator
    _sketch: torch.Tensor | None = None
    _inv_norm: torch.Tensor | None = None
    sketch_dim: int = 32
    calibration: dict[str, Any] = field(default_factory=dict)
    progress: bool = False

    @property
    def num_rows(self) -> int:
        return self.rows.numel()

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    def emb(self, positions: torch.Tensor) -> torch.Tensor:
        """Embeddings of positions (any shape ``S``) → ``(*S, d)`` in the bank dtype."""
        return self.bank[self.rows[positions]]

    @property
    def inv_norm(self) -> torch.Tensor:
        """``(N,)`` float32 inverse norms of the bank's rows (unit up to float16 rounding), computed once."""
        if self._inv_norm is None:
            self._inv_norm = torch.cat([self.bank[sl].float().norm(dim=-1).reciprocal()
                                        for sl in row_chunks(self.bank.shape[0], 65_536)])
        return self._inv_norm

    @property
    def sketch(self) -> torch.Tensor:
        """``(M, r)`` float32 projection onto the top-``r`` eigenvectors of the uncentred second moment."""
        if self._sketch is None:
            self._sketch = make_sketch(self.bank, self.rows, self.sketch_dim, self.generator)
        return self._sketch
