"""Batch policies by name: what ``batch_policy=`` accepts (a name, a :class:`BatchPolicy` class or an instance).

The stable policies register when :mod:`hf_divcl.policies` is imported; the experimental ones when a name is not
found among them (:mod:`hf_divcl.experimental` is imported by name then, so the stable layers never depend on it).
"""

from __future__ import annotations

import difflib
import importlib
import logging
from typing import Any

from .._common import parse_json_object
from .base import BatchPolicy

logger = logging.getLogger(__name__)

__all__ = ["POLICIES", "available_policies", "get_policy_class", "register_policy", "resolve_policy"]

POLICIES: dict[str, type[BatchPolicy]] = {}
EXPERIMENTAL_PACKAGE = "hf_divcl.experimental"


def register_policy(cls: type[BatchPolicy]) -> type[BatchPolicy]:
    """Class decorator: make ``cls`` available as ``batch_policy=cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, BatchPolicy)) or not cls.name:
        raise TypeError(f"{cls!r} is not a BatchPolicy subclass with a name.")
    known = POLICIES.get(cls.name)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"A batch policy named {cls.name!r} is already registered ({known.__module__}."
                         f"{known.__qualname__}); give {cls.__qualname__} another name.")
    POLICIES[cls.name] = cls
    return cls


def _load_all() -> None:
    importlib.import_module("hf_divcl.policies")
    importlib.import_module(EXPERIMENTAL_PACKAGE)


def available_policies() -> dict[str, list[str]]:
    """``{"stable": [...], "experimental": [...]}``: every registered name."""
    _load_all()
    return {"stable": sorted(n for n, c in POLICIES.items() if not c.experimental),
            "experimental": sorted(n for n, c in POLICIES.items() if c.experimental)}


def get_policy_class(name: str) -> type[BatchPolicy]:
    """The policy class registered as ``name``; an unknown name fails with the closest names and the full list."""
    if name not in POLICIES:
        _load_all()
    if name in POLICIES:
        return POLICIES[name]
    names = available_policies()
    close = difflib.get_close_matches(str(name), list(POLICIES), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown batch_policy {name!r}.{hint} Known: {', '.join(names['stable'])} (stable); "
                     f"{', '.join(names['experimental'])} (experimental, in hf_divcl.experimental).")


def _settings_of(cls: type[BatchPolicy]) -> list[str]:
    fields = getattr(cls, "__dataclass_fields__", {})
    return [name for name, f in fields.items() if f.init]


def build_policy(cls: type[BatchPolicy], kwargs: dict[str, Any]) -> BatchPolicy:
    """``cls(**kwargs)``; a misspelt setting fails with the closest names and every setting of the policy."""
    settings = _settings_of(cls)
    unknown = [k for k in kwargs if k not in settings]
    if unknown:
        parts = []
        for key in unknown:
            close = difflib.get_close_matches(key, settings, n=2, cutoff=0.5)
            parts.append(f"{key!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
        raise ValueError(f"batch_policy={cls.name!r} has no setting {', '.join(parts)}. Its settings: "
                         f"{', '.join(settings) or 'none'}.")
    return cls(**kwargs)


def resolve_policy(policy: str | type[BatchPolicy] | BatchPolicy, kwargs: dict[str, Any] | str | None = None
                   ) -> BatchPolicy:
    """A policy instance from what ``batch_policy`` / ``batch_policy_kwargs`` hold.

    A name is looked up in the registry; a class is registered under its ``name`` and built with ``kwargs``; an
    instance is kept (``kwargs`` must then be empty: its settings are its own)."""
    kw = parse_json_object(kwargs, "batch_policy_kwargs")
    if isinstance(policy, BatchPolicy):
        if kw:
            raise ValueError("batch_policy is a policy instance, which holds its own settings; leave "
                             "batch_policy_kwargs empty (or pass the name or class with batch_policy_kwargs).")
        register_policy(type(policy))
        return policy
    if isinstance(policy, type):
        register_policy(policy)
        return build_policy(policy, kw)
    if not isinstance(policy, str):
        raise ValueError(f"batch_policy must be a name, a BatchPolicy class or instance, got {policy!r}.")
    return build_policy(get_policy_class(policy.strip()), kw)
