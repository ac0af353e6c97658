"""``batch_policy="learnability"`` and ``"hard"``: per-step selection from a random super-batch.

The sampler hands out ``factor`` × B random rows per step; the collator keeps B of them, chunk by chunk
(:class:`~hf_divcl.experimental.learnability.LearnabilitySelector`): the most *learnable* (learner loss − reference
loss, JEST-style) or, with ``"hard"``, the hardest (the learner's loss alone). With a ``window`` the kept batch is
also drawn to sit inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._common import global_batch_size
from ..policies.base import BatchPolicy, SamplerSetup
from ..policies.context import PolicyContext
from ..policies.registry import register_policy
from ..policies.window import check_window, resolve_window, window_metric
from .learnability import LearnabilitySelector, build_reference_bank, hold_out_reference_rows

__all__ = ["HardSelection", "Learnability"]


@dataclass
class _Selection(BatchPolicy):
    chunks: int = 4
    factor: int = 4
    window: str | None = None
    keep_fraction: float = 0.9

    def __post_init__(self) -> None:
        if int(self.chunks) < 1:
            raise ValueError(f"batch_policy={self.name!r}: chunks must be >= 1, got {self.chunks}.")
        if int(self.factor) < 2:
            raise ValueError(f"batch_policy={self.name!r}: factor must be >= 2 (super-batch rows per kept row), got "
                             f"{self.factor}.")
        check_window(self.window, self.name)

    def dedupe_factor(self) -> int:
        return int(self.factor)

    def metric(self) -> str:
        return window_metric(self.window)

    def reference_bank(self, ctx: PolicyContext, dataset: Any):
        return None

    def start(self, ctx: PolicyContext, dataset: Any, batch_size: int, seed: int) -> SamplerSetup:
        bank = ctx.build_bank(dataset)
        g = batch_size * ctx.processes()
        self._window = resolve_window(ctx, bank, g, seed, self.window, self.keep_fraction) if self.window else None
        self.reference_result = self.reference_bank(ctx, dataset)
        ref = self.reference_result
        self.selector = LearnabilitySelector(bank, batch_size, ctx.args.temperature,
                                             reference=ref.bank if ref is not None else None,
                                             chunks=int(self.chunks), window=self._window, seed=seed)
        return SamplerSetup("random", None, None, int(self.factor), bank, self.selector, self._window)

    def logs(self) -> dict[str, float]:
        selector = getattr(self, "selector", None)
        return selector.summary() if selector is not None else {}

    def run_info(self, ctx: PolicyContext) -> dict[str, Any]:
        selector = getattr(self, "selector", None)
        if selector is None:
            return {}
        reference = getattr(self, "reference_result", None)
        held = getattr(self, "reference_rows_dataset", None)
        return {"selection": {
            "mode": selector.mode, "super_batch_factor": int(self.factor), "chunks": selector.chunks,
            "reference": getattr(self, "reference", None) if selector.reference is not None else None,
            "reference_rows": len(held) if held is not None else None,
            "reference_steps": reference.steps if reference is not None else None,
            "within_window": selector.window is not None}}

    def describe(self, ctx: PolicyContext) -> dict[str, Any]:
        return {"decision": "window" if self.window else "random",
                "reason": f"batch_policy={self.name!r} selects each step's {ctx.global_batch_size()} rows from a "
                          "random super-batch" + (" inside the window" if self.window else ""),
                **self.run_info(ctx)}


@register_policy
@dataclass
class Learnability(_Selection):
    """JEST-style selection: each step keeps the B rows of the super-batch whose loss is high under the learner and
    low under a reference model.

    Args:
        reference: ``"held_out"`` (a copy of the starting model fine-tuned briefly on held-out training rows),
            ``"guide"`` (the loss's false-negative guide model) or a SentenceTransformer folder.
        reference_rows: ``"held_out"``: rows held out for it (0: 5 %, at least 4 global batches, at most 2000).
        reference_steps: ``"held_out"``: optimizer steps of its fine-tune (0: 20 % of the run's, at least 10).
        chunks: chunks per batch, each scored given the rows chosen before it.
        factor: super-batch rows per kept row.
        window: ``None``, ``"auto"`` or ``"low:high"``: also keep the kept batch inside this window.
        keep_fraction: ``window="auto"`` only.
    """

    reference: str = "held_out"
    reference_rows: int = 0
    reference_steps: int = 0

    name = "learnability"
    experimental = True
    summary = "JEST-style selection of the most learnable B rows of a random super-batch"

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.reference_rows) < 0 or int(self.reference_steps) < 0:
            raise ValueError("batch_policy='learnability': reference_rows and reference_steps must be >= 0 (0: "
                             "automatic).")
        if self.reference not in ("held_out", "guide") and not Path(self.reference).is_dir():
            raise ValueError(f"batch_policy='learnability': reference must be 'held_out', 'guide' or a "
                             f"SentenceTransformer folder; {self.reference!r} is neither (no such folder).")

    def uses_guide(self) -> bool:
        return self.reference == "guide"

    def check(self, args: Any) -> None:
        if self.reference == "guide" and args.loss_option("guide") is None:
            raise ValueError("batch_policy='learnability' with reference='guide' needs loss_kwargs={'guide': "
                             "'path/to/model'} (or use reference='held_out', or a model path).")

    def prepare(self, dataset: Any, args: Any) -> Any:
        if self.reference != "held_out":
            return dataset
        dataset, self.reference_rows_dataset = hold_out_reference_rows(dataset, self, global_batch_size(args))
        return dataset

    def reference_bank(self, ctx: PolicyContext, dataset: Any):
        held = getattr(self, "reference_rows_dataset", None)
        return build_reference_bank(ctx, dataset, self, held)


@register_policy
@dataclass
class HardSelection(_Selection):
    """Hard-example selection: each step keeps the B rows of the super-batch with the highest learner loss (the
    baseline learnability selection is measured against).

    Args:
        chunks, factor, window, keep_fraction: as for ``batch_policy="learnability"``.
    """

    name = "hard"
    experimental = True
    summary = "keep the hardest B rows of a random super-batch (learnability without a reference)"
