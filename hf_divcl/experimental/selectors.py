"""Per-step selectors: from a sampler's super-batch of ``M × B`` rows keep the ``B`` a policy wants. The collator
calls one (``DivCLDataCollator.select``); :class:`~hf_divcl.experimental.learnability.LearnabilitySelector` is the
other kind."""

from __future__ import annotations

import torch

from ..planning.plan import plan_epoch

__all__ = ["SELECTORS", "MegaBatchSelector"]

SELECTORS = ("learnability", "hard")  # builders that select each step's rows from a super-batch


class MegaBatchSelector:
    """Mega-batch selection: from the ``M × B`` rows of one sampler batch keep the ``B`` whose bank embeddings
    best fit the window.

    The mega-batch is partitioned into ``M`` candidate batches by a builder (greedy by default) aiming at the
    window, and the candidate closest to it (distance 0 when inside, then nearest the window's centre) is kept.
    The other rows are skipped for this epoch, so one epoch trains on ``1/M`` of the rows.

    Args:
        bank: :class:`~hf_divcl.bank.EmbeddingBank` (or ``(N, d)`` tensor) of the training rows.
        window: :class:`~hf_divcl.diversity.window.DiversityWindow` for a batch of ``batch_size`` rows.
        batch_size: rows to keep.
        builder: builder name for the candidate partition.
        seed: base seed; each call uses ``seed + call index`` so runs are reproducible.
    """

    def __init__(self, bank, window, batch_size: int, builder: str = "greedy", seed: int = 0) -> None:
        self.bank, self.window, self.batch_size = bank, window, batch_size
        self.builder, self.seed, self.calls = builder, seed, 0

    def __call__(self, row_ids: torch.Tensor) -> torch.Tensor:
        if row_ids.numel() <= self.batch_size:
            return torch.arange(row_ids.numel())
        emb = self.bank.get(row_ids) if hasattr(self.bank, "get") else self.bank[row_ids].float()
        plan = plan_epoch(emb, self.batch_size, builder=self.builder, window=self.window, seed=self.seed,
                          epoch=self.calls, drop_last=True, on_infeasible="closest", shuffle_batches=False,
                          refine_passes=2, progress=False)
        self.calls += 1
        score = self.window.distance(plan.values) * 1e6 + (plan.values - self.window.center).abs()
        return plan.batches[int(torch.nan_to_num(score, nan=float("inf")).argmin())]
