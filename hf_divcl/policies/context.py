"""What a batch policy sees of the trainer that runs it, declared here so that the dependency points one way:
``DivCLTrainer`` (in :mod:`hf_divcl.training`) satisfies this protocol; nothing in the policies imports it.
Type-only: nothing here runs.

The policy reads the run (arguments, model, data, bank, optimizer) and asks for three things: a bank
(:meth:`PolicyContext.build_bank`), model inputs for rows (:meth:`PolicyContext.collate_rows`) and, mid-run, a
different window for the sampler (:meth:`PolicyContext.apply_window`, the one call that changes what is trained on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from ..bank import EmbeddingBank
    from ..diversity.window import DiversityWindow

__all__ = ["PolicyContext"]


class PolicyContext(Protocol):
    """The trainer, as a batch policy sees it."""

    args: Any  # DivCLTrainingArguments
    model: Any
    loss: Any
    optimizer: Any
    lr_scheduler: Any
    data_collator: Any
    train_dataset: Any
    bank: EmbeddingBank | None
    user_bank: Any  # a bank the user passed, or None
    saved: Any  # the resumed checkpoint's hf_divcl state (SavedState)
    divcl_sampler: Any  # the DiversityWindowBatchSampler, once training has started

    def processes(self) -> int: ...
    def global_batch_size(self) -> int: ...
    def is_world_process_zero(self) -> bool: ...
    def build_bank(self, dataset, views: int = 2) -> EmbeddingBank: ...
    def encode_bank(self, model, dataset, views: int = 2) -> EmbeddingBank: ...
    def bank_columns(self, dataset) -> list[str]: ...
    def collate_rows(self, dataset, rows: list[int]) -> dict[str, Any]: ...
    def collect_features(self, inputs: dict[str, Any]) -> tuple[list[dict[str, torch.Tensor]], Any]: ...
    def guide_model(self) -> Any: ...
    def model_copy(self) -> torch.nn.Module: ...
    def apply_window(self, window: DiversityWindow | None, builder: str = "greedy", cut: int | None = None) -> None: ...
    def record_policy(self) -> None: ...
