"""Fingerprints that key the on-disk cache of reference encodings: a model's weights and a data set's texts."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["data_fingerprint", "model_fingerprint"]


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and a float64 checksum of each tensor's values.

    Cheap (one pass over the weights, no serialisation) and changes whenever any weight changes materially.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.is_floating_point() and t.numel():
            td = t.detach().double()
            h.update(np.float64([td.sum().item(), td.square().sum().item(), td.flatten()[::997].sum().item()]))
    return h.hexdigest()[:16]


def data_fingerprint(texts: Sequence[Sequence[str]]) -> str:
    """sha256 of the texts of every view, in order."""
    h = hashlib.sha256()
    for view in texts:
        h.update(b"\x00view")
        for t in view:
            h.update(str(t).encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    return h.hexdigest()[:16]
