"""``batch_policy="auto"`` and ``"mega_batch"``: a window fixed at the start, calibrated or given.

``"auto"`` places the window around the peak of the gradient magnitude over diversity levels of the starting model's
embeddings (the paper's proposal; it trained below random batches in our benchmarks). ``"mega_batch"`` draws M × B
random rows per step and keeps the B whose bank embeddings fit the window best (one epoch then trains on 1/M of
the rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from .._common import agree
from ..diversity.window import DiversityWindow
from ..policies.base import BatchPolicy, SamplerSetup
from ..policies.context import PolicyContext
from ..policies.registry import register_policy
from ..policies.window import (
    calibrate_on_bank,
    check_builder,
    check_on_infeasible,
    check_window,
    resolve_window,
    window_metric,
)
from .selectors import MegaBatchSelector

__all__ = ["AutoWindow", "MegaBatch"]

logger = logging.getLogger(__name__)


def _check_keep_fraction(value: float, policy: str) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"batch_policy={policy!r}: keep_fraction must be in (0, 1], got {value}.")


@register_policy
@dataclass
class AutoWindow(BatchPolicy):
    """The gradient-magnitude window, calibrated on the starting model's embeddings (and, with
    ``recalibrate_every_epochs``, again on the bank as training moves it).

    Args:
        keep_fraction: keep the diversity levels whose mean gradient norm reaches this fraction of the peak.
        builder, builder_kwargs, on_infeasible: as for ``batch_policy="window"``.
        recalibrate_every_epochs: re-calibrate the window at the start of every k-th epoch on the bank as it is then
            (with ``bank_source="training"`` it holds the training steps' own embeddings), so that a window set on
            an encoder trained from scratch follows it; 0: calibrate once.
    """

    keep_fraction: float = 0.9
    builder: str = "greedy"
    builder_kwargs: dict[str, Any] | None = None
    on_infeasible: str = "closest"
    recalibrate_every_epochs: int = 0

    name = "auto"
    experimental = True
    summary = "a window around the gradient-magnitude peak, calibrated at the start (optionally every k epochs)"

    def __post_init__(self) -> None:
        _check_keep_fraction(self.keep_fraction, self.name)
        check_builder(self.builder, self.name)
        check_on_infeasible(self.on_infeasible, self.name)
        if not isinstance(self.recalibrate_every_epochs, int) or self.recalibrate_every_epochs < 0:
            raise ValueError(f"batch_policy='auto': recalibrate_every_epochs must be an integer >= 0 (0: calibrate "
                             f"once), got {self.recalibrate_every_epochs!r}.")

    def start(self, ctx: PolicyContext, dataset: Any, batch_size: int, seed: int) -> SamplerSetup:
        bank = ctx.build_bank(dataset)
        self._window = resolve_window(ctx, bank, batch_size * ctx.processes(), seed, "auto", self.keep_fraction)
        self._bank, self._global_batch, self._seed = bank, batch_size * ctx.processes(), seed
        self.recalibrations: list[dict[str, Any]] = getattr(self, "recalibrations", [])  # kept from a checkpoint
        return SamplerSetup(self.builder, self._window, self.builder_kwargs, bank=bank, logged_window=self._window,
                            on_infeasible=self.on_infeasible)

    def callbacks(self, ctx: PolicyContext) -> list[Any]:
        return [_Recalibrator(self, ctx)] if self.recalibrate_every_epochs > 0 else []

    def recalibrate(self, ctx: PolicyContext, epoch: int) -> DiversityWindow:
        """Calibrate the window on the bank as it is now (on the first process; every process takes its result) and
        plan the coming epoch in it."""
        payload = None
        if ctx.is_world_process_zero():
            cal = calibrate_on_bank(self._bank, self._global_batch, ctx.args.temperature, self._seed + epoch,
                                    self.keep_fraction)
            payload = cal.window.to_dict()
        window = DiversityWindow(**agree(payload))
        self._window = window
        self.recalibrations.append({"epoch": epoch, "window": window.to_dict()})
        logger.info("epoch %d: re-calibrated window %s", epoch, window)
        ctx.apply_window(window, self.builder)
        return window

    def run_info(self, ctx: PolicyContext) -> dict[str, Any]:
        return {"recalibrations": getattr(self, "recalibrations", [])} if self.recalibrate_every_epochs else {}

    def state_dict(self) -> dict[str, Any] | None:
        return {"recalibrations": self.recalibrations} if getattr(self, "recalibrations", None) else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recalibrations = list(state.get("recalibrations", []))

    def describe(self, ctx: PolicyContext) -> dict[str, Any]:
        again = (f", re-calibrated on the bank every {self.recalibrate_every_epochs} epoch(s)"
                 if self.recalibrate_every_epochs else "")
        return {"decision": "window", "reason": "batch_policy='auto': the window around the gradient-magnitude peak, "
                                                f"calibrated on the starting model's embeddings{again}"}


class _Recalibrator(TrainerCallback):
    """Re-calibrates an :class:`AutoWindow` at the start of every ``recalibrate_every_epochs``-th epoch, before the
    sampler plans that epoch."""

    def __init__(self, policy: AutoWindow, ctx: PolicyContext) -> None:
        self.policy, self.ctx = policy, ctx

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = round(state.epoch or 0)
        if abs((state.epoch or 0) - epoch) > 1e-6:
            return  # a run resumed mid-epoch: that epoch keeps the window restored from the checkpoint
        done = {r["epoch"] for r in self.policy.recalibrations}
        if epoch > 0 and epoch % self.policy.recalibrate_every_epochs == 0 and epoch not in done:
            self.policy.recalibrate(self.ctx, epoch)


@register_policy
@dataclass
class MegaBatch(BatchPolicy):
    """Mega-batch selection: from ``factor`` × B random rows per step keep the B closest to the window.

    Args:
        factor: rows drawn per kept row (M ≥ 2).
        window: ``"low:high"``, ``"metric:low:high"`` or ``"auto"`` (the gradient-magnitude window).
        builder: partitions the mega-batch into candidate batches (``"greedy"``, ``"pool"``, ``"cluster"``).
        keep_fraction: ``window="auto"`` only, as for ``batch_policy="auto"``.
    """

    factor: int = 4
    window: str = "auto"
    builder: str = "greedy"
    keep_fraction: float = 0.9

    name = "mega_batch"
    experimental = True
    summary = "keep the B of M × B random rows per step that fit a window best"

    def __post_init__(self) -> None:
        if int(self.factor) < 2:
            raise ValueError(f"batch_policy='mega_batch': factor must be >= 2 (rows drawn per kept row), got "
                             f"{self.factor}.")
        check_window(self.window, self.name)
        check_builder(self.builder, self.name)
        _check_keep_fraction(self.keep_fraction, self.name)

    def dedupe_factor(self) -> int:
        return int(self.factor)

    def metric(self) -> str:
        return window_metric(self.window)

    def start(self, ctx: PolicyContext, dataset: Any, batch_size: int, seed: int) -> SamplerSetup:
        bank = ctx.build_bank(dataset)
        self._window = resolve_window(ctx, bank, batch_size * ctx.processes(), seed, self.window, self.keep_fraction)
        selector = MegaBatchSelector(bank, self._window, batch_size, builder=self.builder, seed=seed)
        return SamplerSetup("random", None, None, int(self.factor), bank, selector, self._window)

    def describe(self, ctx: PolicyContext) -> dict[str, Any]:
        return {"decision": "window", "reason": f"batch_policy='mega_batch': each step keeps the "
                                                f"{ctx.global_batch_size()} of {self.factor} × as many random rows "
                                                "that fit the window best"}
