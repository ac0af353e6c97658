"""Batches of controlled diversity, from near-duplicates to more spread out than random.

Used to measure how the InfoNCE gradient varies with batch diversity on real embeddings (``hf-divcl diagnose``)
and, later, to calibrate a diversity window. A *level* is a recipe for drawing batches:

* ``local:w`` — pick a random seed row, take its ``w`` nearest neighbours (cosine, seed included) and draw the
  batch from them: ``w = B`` is the tightest neighbourhood, ``w = N`` is plain random sampling;
* ``random`` — uniform without replacement;
* ``spread:f`` — draw ``f·B`` random candidates and greedily keep the ``B`` with the smallest running sum of
  squared cosines to those already kept (farthest-point style): more diverse than random.

All ``R`` batches of a level are drawn at once (tensor ops over ``(R, N)`` or ``(R, f·B)``); only the greedy
``spread`` fill steps over the ``B`` slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SweepLevel", "default_levels", "draw_level", "parse_level"]


@dataclass(frozen=True)
class SweepLevel:
    """One diversity level: ``kind`` in {"local", "random", "spread"} and its parameter."""

    kind: str
    param: int = 0

    @property
    def name(self) -> str:
        return self.kind if self.kind == "random" else f"{self.kind}:{self.param}"


def parse_level(text: str) -> SweepLevel:
    """Parse ``"local:128"``, ``"random"`` or ``"spread:4"``."""
    kind, _, param = text.partition(":")
    if kind == "random" and not param:
        return SweepLevel("random")
    if kind in ("local", "spread") and param.isdigit() and int(param) >= 1:
        return SweepLevel(kind, int(param))
    raise ValueError(f"Bad sweep level {text!r}; use 'local:<pool size>', 'random' or 'spread:<factor>' "
                     "(e.g. local:64, random, spread:4).")


def default_levels(n_rows: int, batch_size: int) -> list[SweepLevel]:
    """Neighbourhoods doubling from ``B`` up to the data size, random, then spread factors 2, 4, 8."""
    levels = []
    w = batch_size
    while w < n_rows:
        levels.append(SweepLevel("local", w))
        w *= 2
    levels.append(SweepLevel("random"))
    for f in (2, 4, 8):
        if f * batch_size <= n_rows:
            levels.append(SweepLevel("spread", f))
    return levels


def _random_subsets(r: int, pool: int, k: int, gen: torch.Generator, device) -> torch.Tensor:
    """``(r, k)`` indices into ``range(pool)``, each row without replacement."""
    keys = torch.rand(r, pool, generator=gen, device=device)
    return keys.topk(k, dim=-1).indices


def draw_level(
    embeddings: torch.Tensor,
    level: SweepLevel,
    batch_size: int,
    n_batches: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Row indices ``(n_batches, batch_size)`` of batches drawn at ``level`` from unit ``embeddings`` ``(N, d)``.

    `generator` must live on the embeddings' device; the result is deterministic for its seed.
    """
    n = embeddings.shape[0]
    if batch_size < 2 or batch_size > n:
        raise ValueError(f"batch_size must be in [2, {n}] for {n} rows, got {batch_size}.")
    dev = embeddings.device
    if level.kind == "random":
        return _random_subsets(n_batches, n, batch_size, generator, dev)
    if level.kind == "local":
        w = min(max(level.param, batch_size), n)
        seeds = torch.randint(n, (n_batches,), generator=generator, device=dev)
        sims = embeddings[seeds] @ embeddings.T  # (R, N)
        sims[torch.arange(n_batches, device=dev), seeds] = float("inf")  # the seed is always in its neighbourhood
        neigh = sims.topk(w, dim=-1).indices  # (R, w)
        pick = _random_subsets(n_batches, w, batch_size, generator, dev)
        return neigh.gather(1, pick)
    if level.kind == "spread":
        p = min(level.param * batch_size, n)
        cand = _random_subsets(n_batches, n, p, generator, dev)  # (R, P)
        x = embeddings[cand]  # (R, P, d)
        cos2 = (x @ x.mT).square()  # (R, P, P)
        score = torch.zeros(n_batches, p, dtype=x.dtype, device=dev)
        taken = torch.zeros(n_batches, p, dtype=torch.bool, device=dev)
        rows = torch.arange(n_batches, device=dev)
        chosen = torch.empty(n_batches, batch_size, dtype=torch.long, device=dev)
        nxt = torch.zeros(n_batches, dtype=torch.long, device=dev)  # candidates are random: start with the first
        for slot in range(batch_size):
            chosen[:, slot] = nxt
            taken[rows, nxt] = True
            score += cos2[rows, nxt]
            nxt = score.masked_fill(taken, float("inf")).argmin(dim=-1)
        return cand.gather(1, chosen)
    raise ValueError(f"Unknown sweep level kind {level.kind!r}.")
