"""``batch_policy="window"``: every batch planned inside a fixed diversity window by one of the paper's builders.

``window`` is ``"low:high"`` (effective rank) or ``"metric:low:high"``; ``builder`` is ``"greedy"`` (Greedy-m),
``"pool"`` (Pool-P) or ``"cluster"`` (TAS-B-like), with ``builder_kwargs`` such as ``{"m": 64}`` or ``{"p": 3}``.
The bank (one embedding per row, encoded once by the starting model and then fed by the training steps) is what
the builder plans from. :func:`resolve_window` is shared by every policy that plans against a given window.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..diversity.window import DiversityWindow
from ..planning.registry import BUILDERS
from .base import BatchPolicy, SamplerSetup
from .calibration import calibrate_window
from .context import PolicyContext
from .registry import register_policy

logger = logging.getLogger(__name__)

__all__ = ["CALIBRATION_FILE", "FixedWindow", "check_builder", "check_on_infeasible", "check_window", "resolve_window",
           "window_metric"]

CALIBRATION_FILE = "divcl_calibration.json"  # in output_dir: the "auto" window's calibration curve
ON_INFEASIBLE = ("closest", "raise", "error")


def check_builder(builder: str, policy: str) -> None:
    if builder not in BUILDERS or builder == "random":
        choices = sorted(b for b in BUILDERS if b != "random")
        raise ValueError(f"batch_policy={policy!r}: builder must be one of {choices} (it plans batches inside the "
                         f"window), got {builder!r}. For random batches use batch_policy='random'.")


def check_on_infeasible(value: str, policy: str) -> None:
    if value not in ON_INFEASIBLE:
        raise ValueError(f"batch_policy={policy!r}: on_infeasible must be one of {list(ON_INFEASIBLE)}, got "
                         f"{value!r}.")


def check_window(spec: str | DiversityWindow | None, policy: str) -> None:
    """Fail now, not at the first epoch, on a window setting that does not parse (``None`` and ``"auto"`` pass)."""
    if spec is not None and spec != "auto" and not isinstance(spec, DiversityWindow):
        try:
            DiversityWindow.parse(spec)
        except ValueError as err:
            raise ValueError(f"batch_policy={policy!r}: {err}") from None


def window_metric(spec: str | DiversityWindow | None) -> str:
    """The metric of a window setting (``"auto"`` and ``None``: effective rank)."""
    if isinstance(spec, DiversityWindow):
        return spec.metric
    return DiversityWindow.parse(spec).metric if spec and spec != "auto" else "effective_rank"


def calibrate_on_bank(bank: Any, global_batch: int, temperature: float, seed: int, keep_fraction: float = 0.9):
    """The gradient-peak calibration on an embedding bank's anchors (and its positives, when it holds them)."""
    positives = bank.all(view=1, dtype=torch.float32) if bank.num_views > 1 else None
    return calibrate_window(bank.all(dtype=torch.float32), global_batch, temperature, seed=seed,
                            positives=positives, keep_fraction=keep_fraction)


def resolve_window(ctx: PolicyContext, bank: Any, global_batch: int, seed: int, spec: str | DiversityWindow,
                   keep_fraction: float = 0.9) -> DiversityWindow:
    """The run's window: restored from a checkpoint, given (``spec``), or with ``spec="auto"`` calibrated on the
    bank at the gradient peak (curve saved in ``output_dir/divcl_calibration.json``)."""
    saved = ctx.saved.json("window")
    if saved is not None:
        return DiversityWindow(**saved)
    if isinstance(spec, DiversityWindow):
        return spec
    if spec != "auto":
        return DiversityWindow.parse(spec)
    cal = calibrate_on_bank(bank, global_batch, ctx.args.temperature, seed, keep_fraction)
    logger.info("calibrated window: %s", cal.format())
    if ctx.is_world_process_zero():
        Path(ctx.args.output_dir).mkdir(parents=True, exist_ok=True)
        Path(ctx.args.output_dir, CALIBRATION_FILE).write_text(json.dumps(cal.to_dict(), indent=2))
    return cal.window


@register_policy
@dataclass
class FixedWindow(BatchPolicy):
    """Batches planned inside a fixed diversity window.

    Args:
        window: ``"low:high"`` (effective rank) or ``"metric:low:high"`` (metrics: effective_rank,
            participation_ratio, mean_sq_cosine, lambda_max).
        builder: ``"greedy"`` (Greedy-m), ``"pool"`` (Pool-P) or ``"cluster"``.
        builder_kwargs: the builder's options, e.g. ``{"m": 64}`` (greedy) or ``{"p": 3}`` (pool).
        on_infeasible: a window out of reach: ``"closest"`` (warn, aim as close as possible) or ``"raise"``.
    """

    window: str | None = None
    builder: str = "greedy"
    builder_kwargs: dict[str, Any] | None = None
    on_infeasible: str = "closest"

    name = "window"
    multi_source = True
    summary = "every batch planned inside a fixed diversity window by Greedy-m, Pool-P or cluster"

    def __post_init__(self) -> None:
        if not self.window:
            raise ValueError("batch_policy='window' needs a window: batch_policy_kwargs={'window': 'low:high'} "
                             "(effective rank) or 'metric:low:high', e.g. 'effective_rank:12:24'.")
        check_window(self.window, self.name)
        check_builder(self.builder, self.name)
        check_on_infeasible(self.on_infeasible, self.name)
        if self.builder_kwargs is not None and not isinstance(self.builder_kwargs, dict):
            raise ValueError(f"batch_policy='window': builder_kwargs must be a dict, got {self.builder_kwargs!r}.")

    def metric(self) -> str:
        return window_metric(self.window)

    def start(self, ctx: PolicyContext, dataset: Any, batch_size: int, seed: int) -> SamplerSetup:
        bank = ctx.build_bank(dataset)
        self._window = resolve_window(ctx, bank, batch_size * ctx.processes(), seed, self.window)
        return SamplerSetup(self.builder, self._window, self.builder_kwargs, bank=bank, logged_window=self._window,
                            on_infeasible=self.on_infeasible)

    def describe(self, ctx: PolicyContext) -> dict[str, Any]:
        return {"decision": "window", "reason": f"batch_policy='window': a fixed window ({self.window}) set by the "
                                                f"user, planned by the {self.builder} builder"}
