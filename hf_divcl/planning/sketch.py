"""PCA sketch of the bank and k-means in it: the cheap geometry the builders score candidates in."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["kmeans", "make_sketch", "sketch_mean_sq_cosine"]


def row_chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


def make_sketch(bank: torch.Tensor, rows: torch.Tensor, r: int, gen: torch.Generator, sample: int = 20_000,
                chunk: int = 16_384) -> torch.Tensor:
    """Project bank rows ``rows`` onto the top-``r`` principal directions of ``XᵀX`` (estimated on a sample).

    Inner products in the sketch approximate cosines along the directions where the data has most energy —
    the ones that dominate squared cosines — at ``r/d`` of the cost. Returns ``(M, r)`` float32.
    """
    m, d = rows.numel(), bank.shape[1]
    r = min(r, d)
    xs = bank[rows[torch.randperm(m, generator=gen)[: min(sample, m)]]].float()
    _, evecs = torch.linalg.eigh(xs.T @ xs)
    basis = evecs[:, -r:].flip(-1).contiguous()  # (d, r)
    out = torch.empty(m, r, dtype=torch.float32)
    for sl in row_chunks(m, chunk):
        out[sl] = bank[rows[sl]].float() @ basis
    return out


def sketch_mean_sq_cosine(s: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal inner product of sketched batches ``(R, B, r)`` → ``(R,)``."""
    b = s.shape[-2]
    frob = (s.mT @ s).square().sum((-2, -1))
    diag = s.square().sum(-1).square().sum(-1)
    return (frob - diag) / (b * (b - 1))


def kmeans(x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 15, chunk: int = 16_384,
           per_cluster: int = 64, backend: str = "torch") -> torch.Tensor:
    """Cluster ids ``(M,)`` of rows ``(M, r)`` by spherical k-means.

    ``backend="torch"`` (default) gives the same clusters on every machine; ``"faiss"`` (needs ``faiss-cpu``) is
    faster on very large samples but its clusters differ, so a plan depends on the backend: builders record it in
    their config. The backend is never switched silently by what happens to be installed.

    Rows need not be unit: the fitting sample is normalised, and the nearest unit centroid (largest inner product)
    does not depend on a row's norm — so no normalised copy of all ``M`` rows is made. The centroids are fitted
    on a seeded sample of ``per_cluster · k`` rows (at least 65,536; all rows when fewer),
    then every row is assigned to its nearest centroid in one pass — the cost of the iterations does not grow with
    ``M``, and the similarity blocks are computed ``chunk`` rows at a time.
    """
    m = x.shape[0]
    k = max(1, min(k, m))
    n_fit = min(m, max(65_536, per_cluster * k))
    fit = torch.nn.functional.normalize(x[torch.randperm(m, generator=gen)[:n_fit].to(x.device)] if n_fit < m else x,
                                        dim=-1)

    def nearest(cent: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = torch.empty(rows.shape[0], dtype=torch.long, device=rows.device)
        for sl in row_chunks(rows.shape[0], chunk):
            out[sl] = (rows[sl] @ cent.T).argmax(1)
        return out

    if backend not in ("torch", "faiss"):
        raise ValueError(f"kmeans backend must be 'torch' or 'faiss', got {backend!r}.")
    if backend == "faiss":
        try:
            import faiss
        except ImportError as err:
            raise ImportError("kmeans backend='faiss' needs faiss: pip install faiss-cpu (or use 'torch').") from err
        import numpy as np

        seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, spherical=True, verbose=False)
        km.train(np.ascontiguousarray(fit.cpu().numpy(), dtype=np.float32))
        return nearest(torch.from_numpy(km.centroids).to(x.device, x.dtype), x)
    cent = fit[torch.randperm(n_fit, generator=gen)[:k].to(x.device)].clone()
    for _ in range(iters):
        assign = nearest(cent, fit)
        sums = torch.zeros_like(cent).index_add_(0, assign, fit)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        cent = torch.nn.functional.normalize(sums, dim=-1)
        if bool(empty.any()):  # re-seed empty clusters on random rows
            cent[empty] = fit[torch.randint(n_fit, (int(empty.sum()),), generator=gen).to(x.device)]
    return nearest(cent, x)
