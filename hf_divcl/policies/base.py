"""The batch-policy protocol: one object owns one way of choosing a run's batches.

A policy is a dataclass whose fields are its settings (``batch_policy_kwargs`` from YAML or the command line). The
trainer drives every policy through the same calls and never asks which one it has:

    prepare(dataset, args)                 before training: hold out the rows the policy needs (probe, reference)
    start(ctx, dataset, batch_size, seed)  when the sampler is built: the bank, window, builder, per-step selector
    attach(sampler)                        the sampler exists: hook into it (e.g. hand it rows in place of its plan)
    callbacks(ctx)                         ``TrainerCallback``\\ s that act during training (calibrations, exploring)
    on_batch(row_ids)                      each training step's local batch, before its loss
    logs() / describe(ctx) / run_info(ctx) what the Trainer logs, ``divcl_window.json`` and ``divcl_run.json`` say
    state_dict() / load_state_dict() / state_arrays()   what a checkpoint keeps, so a resume continues exactly

Register a new policy with :func:`hf_divcl.policies.registry.register_policy` (or pass the class or an instance as
``batch_policy``): one file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from ..diversity.window import DiversityWindow
    from .context import PolicyContext

__all__ = ["BatchPolicy", "SamplerSetup"]


@dataclass
class SamplerSetup:
    """How the sampler draws its batches, as a policy's :meth:`BatchPolicy.start` decides.

    Each sampler batch holds ``factor`` × B rows (``factor > 1``: ``selector`` keeps B of them in the collator);
    ``builder`` and ``window`` plan the epoch (``builder_kwargs`` go to the builder); ``bank`` is the embedding bank
    (``None`` when nothing reads embeddings); ``logged_window`` is the window whose hit rate the diversity log
    reports."""

    builder: str = "random"
    window: DiversityWindow | None = None
    builder_kwargs: dict[str, Any] | None = None
    factor: int = 1
    bank: Any = None
    selector: Callable[[torch.Tensor], torch.Tensor] | None = None
    logged_window: DiversityWindow | None = None
    on_infeasible: str = "closest"
    replan_chunk_rows: int = 65_536


class BatchPolicy:
    """Base class of every batch policy; subclasses are ``@dataclass``\\ es whose fields are their settings.

    Class attributes: ``name`` (what ``batch_policy=`` accepts), ``experimental`` (no benchmark supports it yet),
    ``summary`` (one line for help texts). Every method has a do-nothing default except :meth:`start`.
    """

    name: ClassVar[str] = ""
    experimental: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    streams: ClassVar[bool] = False  # trains on an IterableDataset (streaming=True): no bank, no plan, no length
    multi_source: ClassVar[bool] = False  # trains on several sources (a DatasetDict), planning within each source

    # -- settings ----------------------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The policy's settings as ``batch_policy_kwargs`` (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} if dataclasses.is_dataclass(self) \
            else {}

    def fresh(self) -> BatchPolicy:
        """A new instance with the same settings and no run state (one per trainer)."""
        return dataclasses.replace(self) if dataclasses.is_dataclass(self) else type(self)()

    def dedupe_factor(self) -> int:
        """Rows the sampler draws per trained row (super-batches), for the duplicate check before training."""
        return 1

    def metric(self) -> str:
        """The diversity metric the logs report the window's hit rate in."""
        return "effective_rank"

    def uses_guide(self) -> bool:
        """Whether the policy reads the loss's guide model (``loss_kwargs["guide"]``)."""
        return False

    def check(self, args: Any) -> None:
        """Fail at argument time when the settings cannot work with these training arguments."""

    # -- before and at the start of training -------------------------------------------------------------------------

    def prepare(self, dataset: Any, args: Any) -> Any:
        """The rows to train on: ``dataset`` minus any rows the policy holds out for itself."""
        return dataset

    def start(self, ctx: PolicyContext, dataset: Any, batch_size: int, seed: int) -> SamplerSetup:
        """Decide the sampler's batches and build what they need (the bank only when something reads it)."""
        raise NotImplementedError

    def attach(self, sampler: Any) -> None:
        """The sampler built from :meth:`start`'s setup (policies that change it mid-run keep it)."""

    def callbacks(self, ctx: PolicyContext) -> list[Any]:
        """``TrainerCallback``\\ s the policy runs during training."""
        return []

    # -- during training ---------------------------------------------------------------------------------------------

    def on_batch(self, row_ids: torch.Tensor) -> None:
        """A training step's local batch, before its loss is computed."""

    def logs(self) -> dict[str, float]:
        """Extra values for each logging step (keys without the ``divcl/`` prefix)."""
        return {}

    @property
    def window(self) -> DiversityWindow | None:
        """The diversity window in force (for the run files and the card), ``None`` for random batches."""
        return getattr(self, "_window", None)

    # -- what the run files and the card say ---------------------------------------------------------------------

    def describe(self, ctx: PolicyContext) -> dict[str, Any]:
        """``divcl_window.json``'s policy part: at least ``decision`` (``"window"`` or ``"random"``) and ``reason``."""
        return {"decision": "window" if self.window is not None else "random", "reason": ""}

    def run_info(self, ctx: PolicyContext) -> dict[str, Any]:
        """Extra keys for ``divcl_run.json`` (e.g. how per-step selection chose rows)."""
        return {}

    # -- checkpoints -------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` from a checkpoint (called before :meth:`start`)."""

    def state_arrays(self) -> dict[str, torch.Tensor]:
        return {}
