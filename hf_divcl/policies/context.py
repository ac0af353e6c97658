"""What the batch-policy code needs from the trainer that runs it, declared here so that the dependency points one
way: ``DivCLTrainer`` (in :mod:`hf_divcl.training`) satisfies these protocols; nothing in this package imports it.
Type-only: nothing here runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from ..bank import EmbeddingBank
    from ..diversity.window import DiversityWindow

__all__ = ["PolicyArguments", "PolicyHost"]


class PolicyArguments(Protocol):
    """The training arguments the policy reads (``DivCLTrainingArguments`` has them all)."""

    seed: int
    output_dir: str
    per_device_train_batch_size: int
    gather_across_devices: bool
    gradient_accumulation_steps: int
    max_steps: int
    num_train_epochs: float
    learning_rate: float
    temperature: float
    builder: str
    window: str
    mega_batch_factor: int

    def parsed_window(self) -> DiversityWindow | str | None: ...


class PolicyHost(Protocol):
    """The trainer, as the batch policy sees it: its arguments, model, data, bank and the few operations the
    policy asks of it. The policy reads these and returns decisions; the trainer applies them
    (:meth:`apply_window` is the one call that changes the running policy)."""

    args: Any
    model: Any
    loss: Any
    optimizer: Any
    data_collator: Any
    train_dataset: Any
    probe_dataset: Any
    reference_dataset: Any
    bank: EmbeddingBank | None
    user_bank: Any
    follower: Any
    saved: Any
    divcl_sampler: Any  # the DiversityWindowBatchSampler, once training has started

    def processes(self) -> int: ...
    def global_batch_size(self) -> int: ...
    def window_builder(self) -> str: ...
    def is_world_process_zero(self) -> bool: ...
    def build_bank(self, dataset, views: int = 2) -> EmbeddingBank: ...
    def encode_bank(self, model, dataset, views: int = 2) -> EmbeddingBank: ...
    def bank_columns(self, dataset) -> list[str]: ...
    def collate_rows(self, dataset, rows: list[int]) -> dict[str, Any]: ...
    def collect_features(self, inputs: dict[str, Any]) -> tuple[list[dict[str, torch.Tensor]], Any]: ...
    def guide_model(self) -> Any: ...
    def model_copy(self) -> torch.nn.Module: ...
    def apply_window(self, window: DiversityWindow | None, cut: int | None = None) -> None: ...
    def record_policy(self) -> None: ...
