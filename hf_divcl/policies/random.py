"""``batch_policy="random"`` (the default): random, duplicate-free batches with every diagnostic.

Random batches read no embeddings, so nothing is encoded before training (a bank passed by the user is still used
for the bank-staleness logs). What the run gives beyond sentence-transformers is the measurement: the diversity log,
gradient bands, collapse alarm, the pre-flight report in the recipes and the card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import BatchPolicy, SamplerSetup
from .context import PolicyContext
from .registry import register_policy

__all__ = ["RandomBatches"]


@register_policy
@dataclass
class RandomBatches(BatchPolicy):
    """Random batches (the sampler's seeded shuffle; rows with identical text never share one when ``dedupe``)."""

    name = "random"
    streams = True
    multi_source = True
    summary = "random duplicate-free batches with every diagnostic (the default)"

    def start(self, ctx: PolicyContext, dataset: Any, batch_size: int, seed: int) -> SamplerSetup:
        bank = ctx.build_bank(dataset) if ctx.user_bank is not None else None
        return SamplerSetup("random", bank=bank)

    def describe(self, ctx: PolicyContext) -> dict[str, Any]:
        return {"decision": "random", "reason": "batch_policy='random': random batches, no diversity window"}
