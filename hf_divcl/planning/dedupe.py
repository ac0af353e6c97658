"""Duplicate rows (identical text or image): group them and keep each group out of any one batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["content_ids", "duplicate_groups", "repair_duplicates"]


def content_ids(*columns: Sequence[Any]) -> torch.Tensor:
    """``(N, k)`` id of every cell of ``k`` columns in one id space: equal values get equal ids, whichever column
    they are in (a row's hard negative that is another row's positive gets that positive's id)."""
    if not columns:
        raise ValueError("content_ids needs at least one column.")
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"All columns must have the same length; got {[len(c) for c in columns]}.")
    ids: dict[Any, int] = {}
    out = torch.empty(n, len(columns), dtype=torch.long)
    for k, col in enumerate(columns):
        out[:, k] = torch.tensor([ids.setdefault(v if isinstance(v, (str, bytes)) else repr(v), len(ids))
                                  for v in col], dtype=torch.long)
    return out


def duplicate_groups(*columns: Sequence[Any]) -> torch.Tensor:
    """Group id per row ``(N,)``: rows whose value in *any* given column equals another row's share a group.

    E.g. ``duplicate_groups(dataset["anchor"], dataset["positive"])``: two pairs with the same anchor or the same
    positive text would be false negatives for each other. Union–find over equal values.
    """
    if not columns:
        raise ValueError("duplicate_groups needs at least one column.")
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise ValueError(f"All columns must have the same length; got {[len(c) for c in columns]}.")
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[Any, int] = {}
    for col in columns:
        for i, value in enumerate(col):
            key = value if isinstance(value, (str, int, float, bytes, tuple)) else repr(value)
            j = first.setdefault(key, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    roots = torch.tensor([find(i) for i in range(n)], dtype=torch.long)
    return torch.unique(roots, return_inverse=True)[1]


def repair_duplicates(batches: list[torch.Tensor], groups: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """Swap rows between batches until no batch holds two rows of the same group."""
    nb = len(batches)
    gsets: dict[int, dict[int, int]] = {}

    def counts(k: int) -> dict[int, int]:
        if k not in gsets:
            d: dict[int, int] = {}
            for g in groups[batches[k]].tolist():
                d[g] = d.get(g, 0) + 1
            gsets[k] = d
        return gsets[k]

    # find conflicts vectorised over full-size batches
    conflicts: list[tuple[int, int]] = []
    for k, bt in enumerate(batches):
        g = groups[bt]
        s, idx = g.sort()
        dup = torch.nonzero(s[1:] == s[:-1]).squeeze(1)
        conflicts.extend((k, int(idx[p + 1])) for p in dup)
    if not conflicts:
        return batches
    batches = [bt.clone() for bt in batches]
    for k, pos in conflicts:
        g = int(groups[batches[k][pos]])
        if counts(k).get(g, 0) <= 1:
            continue  # already resolved by an earlier swap
        for k2 in torch.randperm(nb, generator=gen).tolist():
            if k2 == k or counts(k2).get(g, 0) > 0:
                continue
            cand = batches[k2]
            ok = [p for p, g2 in enumerate(groups[cand].tolist()) if counts(k).get(g2, 0) == 0]
            if not ok:
                continue
            p2 = ok[int(torch.randint(len(ok), (1,), generator=gen))]
            g2 = int(groups[cand[p2]])
            batches[k][pos], batches[k2][p2] = cand[p2].clone(), batches[k][pos].clone()
            counts(k)[g] -= 1
            counts(k)[g2] = counts(k).get(g2, 0) + 1
            counts(k2)[g2] -= 1
            counts(k2)[g] = 1
            break
        else:
            raise ValueError(f"Cannot keep the {int((groups == g).sum())} duplicate rows of group {g} (rows "
                             f"{torch.nonzero(groups == g).squeeze(1).tolist()[:10]}...) in separate batches: there "
                             f"are only {nb} batches. Deduplicate the data set or use a smaller batch size.")
    return batches
