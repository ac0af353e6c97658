"""The retrieval probe of ``batch_policy="explore"``: the probe rows' embeddings under the model being trained and the
gradient of the probe loss (:func:`~hf_divcl.experimental.sequential.retrieval_probe_loss`, or
:func:`~hf_divcl.experimental.sequential.label_probe_loss` over the rows' classes) that each step is scored against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .explore_plan import ExplorePlan

if TYPE_CHECKING:
    from ..policies.context import PolicyContext

__all__ = ["label_probe_loss", "probe_embeddings", "probe_gradient", "retrieval_probe_loss"]


def retrieval_probe_loss(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Retrieval loss over a whole probe set: each anchor ``(P, d)`` against *all* ``P`` positives ``(P, d)``
    (cross-entropy of the true positive's rank-softmax at ``temperature``); rows are L2-normalised here.

    With ``P`` in the hundreds this is a smooth stand-in for ranking a corpus (what ndcg@k / k-NN evaluate),
    unlike InfoNCE over ``B`` random in-batch negatives. Returns a 0-dim tensor.
    """
    u = torch.nn.functional.normalize(anchors, dim=-1)
    v = torch.nn.functional.normalize(positives, dim=-1)
    logits = u @ v.T / temperature
    return torch.nn.functional.cross_entropy(logits, torch.arange(u.shape[0], device=u.device))


def label_probe_loss(anchors: torch.Tensor, positives: torch.Tensor, labels: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Soft k-NN loss over a labelled probe set: anchor ``i`` ``(P, d)`` against the positives of every *other* probe
    row ``(P, d)``; the loss is ``−log`` of the softmax mass (at ``temperature``) on rows sharing its label
    ``(P,)``, averaged over anchors that have such a row. Rows are L2-normalised here. Returns a 0-dim tensor.

    This is what k-NN classification rewards (neighbours of the same class), unlike instance retrieval
    (:func:`retrieval_probe_loss`), which also rewards pushing apart two images of one class.
    """
    u = torch.nn.functional.normalize(anchors, dim=-1)
    v = torch.nn.functional.normalize(positives, dim=-1)
    n = u.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per probe row), got {tuple(labels.shape)}.")
    other = ~torch.eye(n, dtype=torch.bool, device=u.device)
    same = (labels[:, None] == labels[None, :]).to(u.device) & other
    has = same.any(dim=1)
    if not bool(has.any()):
        raise ValueError("the label probe needs at least two probe rows of one label; every label occurs once.")
    logits = (u @ v.T / temperature).masked_fill(~other, float("-inf"))
    pos = logits.masked_fill(~same, float("-inf")).logsumexp(dim=1)
    return (logits.logsumexp(dim=1) - pos)[has].mean()


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
