"""The optimizer's preconditioner: the factor Adam applies to a gradient, so a step is scored by the direction the
optimizer will really take. One module for every experimental policy that scores steps (``"progress"``'s
:class:`~hf_divcl.experimental.progress.StepGain`, ``"explore"``'s per-step score).

Adam-family optimizers (``exp_avg_sq`` in the state, or a fresh Adam): ``1/(√v̂ + ε)``; anything else (SGD,
Adafactor without ``exp_avg_sq``…): ``None``, the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["preconditioned_score", "preconditioner", "step_score"]


def preconditioner(optimizer, params: Sequence[torch.nn.Parameter],
                   grads: Sequence[torch.Tensor] | None = None) -> tuple[list[torch.Tensor] | None, str]:
    """The factor the optimizer will apply to each gradient, and its name.

    With ``grads`` (the step about to be taken): Adam-family (``exp_avg_sq`` in the state or a fresh Adam):
    ``1/(√v̂_t + ε)`` with ``v_t`` already updated by this step's gradient and bias-corrected — at the first step this
    makes the direction ``sign(g)``, as Adam's. Without ``grads`` (a step on another batch): the second moment as the
    optimizer holds it, ``v̂ = v / (1 − β2^max(t, 1))``, and ``None`` before Adam's first step. Anything else (SGD,
    Adafactor without ``exp_avg_sq``…): ``None`` = the identity (the step is ``lr·g``, up to momentum, which is
    common to every arm of a block).
    """
    states = _adam_states(optimizer, params)
    if states is None:
        return None, "identity"
    out = []
    if grads is None:
        for sq, beta2, eps, step in states:
            if sq is None:
                return None, "identity"
            v_hat = sq / (1 - beta2 ** max(float(step), 1.0))
            out.append(1.0 / (v_hat.sqrt() + eps))
        return out, "adam"
    for (sq, beta2, eps, step), g in zip(states, grads, strict=True):
        v = sq * beta2 + (1 - beta2) * g * g if sq is not None else (1 - beta2) * g * g
        out.append(1.0 / ((v / (1 - beta2 ** (float(step) + 1))).sqrt() + eps))
    return out, "adam"


def step_score(grads: Sequence[torch.Tensor], precond: Sequence[torch.Tensor] | None,
               probe_grad: Sequence[torch.Tensor], lr: float) -> torch.Tensor:
    """``lr·⟨P(g), ∇L_probe⟩`` as a 0-dim float64 tensor on the gradients' device (no host sync): the drop of the
    probe loss the step would buy, to first order."""
    terms = []
    for i, (g, q) in enumerate(zip(grads, probe_grad, strict=True)):
        d = g if precond is None else g * precond[i]
        terms.append((d.double() * q.double()).sum())
    return lr * torch.stack(terms).sum()


def preconditioned_score(optimizer, params: Sequence[torch.nn.Parameter], grads: Sequence[torch.Tensor],
                         probe_grad: Sequence[torch.Tensor], lr: float) -> tuple[torch.Tensor, str]:
    """``step_score(grads, preconditioner(optimizer, params, grads)[0], probe_grad, lr)`` and the preconditioner's
    name, without materialising the preconditioner or float64 copies: per parameter one scratch tensor and five
    passes over it (``v``, its root, ``+ε``, ``q/·``, the dot with ``g``), each tensor's dot in its own dtype, summed
    in float64. No host sync. This is the explorer's per-step cost, so it must stay a small fraction of a step."""
    states = _adam_states(optimizer, params)
    scales = None if states is None else _bias_scales(states)
    terms = []
    for i, (g, q) in enumerate(zip(grads, probe_grad, strict=True)):
        dtype = torch.promote_types(g.dtype, q.dtype)
        g, q = g.reshape(-1).to(dtype), q.reshape(-1).to(dtype)
        if scales is None:
            terms.append(torch.dot(g, q).double())
            continue
        sq, beta2 = states[i][:2]
        # √(v_t/bias) + ε = √(c/bias) · (√w + ε·s) with s = √(bias/c), w = sq + g²·(1-β2)/β2 and c = β2 (w = g²,
        # c = 1-β2 without a second moment yet): five passes, the factor 1/s applied to the tensor's dot at the end
        if sq is not None:
            w = torch.addcmul(sq.reshape(-1).to(dtype), g, g, value=(1 - beta2) / beta2)
        else:
            w = torch.mul(g, g)
        scale, eps_scale = scales[i]
        w.sqrt_().add_(eps_scale)
        torch.div(q, w, out=w)
        terms.append(torch.dot(g, w).double() * scale)
    return lr * torch.stack(terms).sum(), "identity" if states is None else "adam"


def _bias_scales(states: list[tuple[Any, float, float, Any]]) -> list[tuple[Any, Any]]:
    """``(s, ε·s)`` per parameter with ``s = √(bias_t / c)``, ``bias_t = 1 − β2^(t+1)``, ``c = β2`` with a second
    moment (``1 − β2`` without). Adam keeps ``t`` as a tensor, on the parameter's device when fused or capturable
    (the Trainer's default ``adamw_torch_fused``): reading it per parameter would be one host sync each, so tensor
    steps are stacked per ``(β2, c, ε)`` and the factors stay 0-dim float64 tensors on that device."""
    out: list[tuple[Any, Any]] = [(0.0, 0.0)] * len(states)
    groups: dict[tuple[float, float, float, bool], list[int]] = {}
    for i, (sq, beta2, eps, step) in enumerate(states):
        key = (beta2, beta2 if sq is not None else 1 - beta2, eps, isinstance(step, torch.Tensor))
        groups.setdefault(key, []).append(i)
    for (beta2, c, eps, tensor), idx in groups.items():
        if tensor and len({states[i][3].device for i in idx}) == 1:
            t = torch.stack([states[i][3].reshape(()) for i in idx]).double()
            scale = ((1 - torch.pow(beta2, t + 1)) / c).sqrt()
            pairs = zip(scale.unbind(), (eps * scale).unbind(), strict=True)
        else:
            values = [math.sqrt((1 - beta2 ** (float(states[i][3]) + 1)) / c) for i in idx]
            pairs = ((v, eps * v) for v in values)
        for i, pair in zip(idx, pairs, strict=True):
            out[i] = pair
    return out


def _adam_states(optimizer, params: Sequence[torch.nn.Parameter]) -> list[tuple[Any, float, float, Any]] | None:
    """Per parameter ``(exp_avg_sq or None, β2, ε, step)`` of an Adam-family optimizer, ``step`` as the optimizer
    keeps it (a number, or a 0-dim tensor, possibly on the parameter's device: never read here); ``None`` when any
    parameter has no second moment (the identity preconditioner, as :func:`preconditioner`)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    if inner is None:
        return None
    adam = "betas" in inner.defaults and "eps" in inner.defaults
    groups = {id(p): gr for gr in inner.param_groups for p in gr["params"]}
    out = []
    for p in params:
        st = inner.state.get(p, {})
        if "exp_avg_sq" not in st and not (adam and not st):
            return None
        group = groups.get(id(p), inner.defaults)
        out.append((st.get("exp_avg_sq"), group.get("betas", (0.9, 0.999))[1], group.get("eps", 1e-8),
                    st.get("step", 0.0)))
    return out
