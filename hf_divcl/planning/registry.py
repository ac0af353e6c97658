"""Builders by name."""

from __future__ import annotations

from typing import Any

from .base import BatchBuilder
from .cluster import ClusterBuilder
from .greedy import GreedyBuilder
from .pool import PoolBuilder
from .random import RandomBuilder

__all__ = ["BUILDERS", "get_builder"]


BUILDERS: dict[str, type[BatchBuilder]] = {
    "random": RandomBuilder, "greedy": GreedyBuilder, "pool": PoolBuilder, "cluster": ClusterBuilder,
}


def get_builder(builder: str | type[BatchBuilder] | BatchBuilder, **kwargs: Any) -> BatchBuilder:
    """A builder from its name (``random``, ``greedy``, ``pool``, ``cluster``), class, or instance."""
    if isinstance(builder, BatchBuilder):
        return builder
    if isinstance(builder, type) and issubclass(builder, BatchBuilder):
        return builder(**kwargs)
    if isinstance(builder, str) and builder in BUILDERS:
        return BUILDERS[builder](**kwargs)
    if callable(builder):
        out = builder(**kwargs)
        if isinstance(out, BatchBuilder):
            return out
    raise ValueError(f"Unknown batch builder {builder!r}; use one of {sorted(BUILDERS)}, a BatchBuilder subclass "
                     "or instance.")
