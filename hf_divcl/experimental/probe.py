"""The retrieval probe of ``batch_policy="explore"``: the probe rows' embeddings under the model being trained and the
gradient of the probe loss (:func:`~hf_divcl.experimental.sequential.retrieval_probe_loss`, or
:func:`~hf_divcl.experimental.sequential.label_probe_loss` over the rows' classes) that each step is scored against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .explore_plan import ExplorePlan
from .sequential import label_probe_loss, retrieval_probe_loss

if TYPE_CHECKING:
    from ..policies.context import PolicyContext

__all__ = ["probe_embeddings", "probe_gradient"]


def probe_embeddings(trainer: PolicyContext, data) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor and positive embeddings ``(P, d)`` of the probe rows, with autograd, computed in chunks of the global
    batch size: each chunk is collated (and padded) as a training batch is, so the probe's cost is ``P/B`` training
    batches as the plan counts it, not one batch padded to the longest of all ``P`` rows."""
    n, b = len(data), max(1, trainer.global_batch_size())
    us, vs = [], []
    for lo in range(0, n, b):
        features, _ = trainer.collect_features(trainer.collate_rows(data, list(range(lo, min(lo + b, n)))))
        if len(features) < 2:
            raise ValueError("batch_policy='explore' needs (anchor, positive) pairs (or two image views) for its "
                             "probe.")
        us.append(trainer.model(dict(features[0]))["sentence_embedding"])
        vs.append(trainer.model(dict(features[1]))["sentence_embedding"])
    return torch.cat(us), torch.cat(vs)


def probe_gradient(trainer: PolicyContext, params: list[torch.nn.Parameter], plan: ExplorePlan,
                   data) -> list[torch.Tensor]:
    """Gradient of the probe loss over the whole probe set: :func:`retrieval_probe_loss` (anchors against all probe
    positives) or, with ``plan.probe == "labels"``, :func:`label_probe_loss`."""
    u, v = probe_embeddings(trainer, data)
    if plan.probe == "labels":
        _, codes = np.unique(np.asarray(data[plan.probe_label_column], dtype=object).astype(str), return_inverse=True)
        loss = label_probe_loss(u.float(), v.float(), torch.as_tensor(codes), plan.probe_temperature)
    else:
        loss = retrieval_probe_loss(u.float(), v.float(), plan.probe_temperature)
    if not bool(torch.isfinite(loss.detach())):
        raise ValueError(f"the probe loss is {loss.item()} (not finite)")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]
