"""The run's embedding bank: where it comes from (a resumed checkpoint's, the user's, or a cached reference encoding
of the training rows), its optional refresh, and the epoch-end maintenance (:class:`BankControl`)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback

from .._common import banks_cache_dir
from ..bank import EmbeddingBank

if TYPE_CHECKING:
    from .host import TrainerHost

logger = logging.getLogger(__name__)

__all__ = ["BankControl", "build_bank", "encode_bank", "refresh_bank"]


def build_bank(trainer: TrainerHost, dataset, views: int = 2) -> EmbeddingBank:
    """The bank the sampler plans from: a checkpoint's, the user's, or a (cached) reference encoding of the first
    ``views`` bank columns by the model being trained."""
    bank = trainer.saved.bank()
    if bank is not None:
        return bank
    if trainer.user_bank is not None:
        return EmbeddingBank.from_user(trainer.user_bank, len(dataset))
    t0 = time.perf_counter()
    bank = encode_bank(trainer, trainer.model, dataset, views=views)
    trainer.model.train()
    logger.info("bank: %s (%.1f s)", bank, time.perf_counter() - t0)
    trainer.bank_seconds = time.perf_counter() - t0
    return bank


def encode_bank(trainer: TrainerHost, model, dataset, views: int = 2) -> EmbeddingBank:
    """The first ``views`` bank columns of ``dataset`` encoded by ``model`` (cached on disk by model and data
    fingerprints)."""
    args = trainer.args
    columns = trainer.bank_columns(dataset)[:views]
    # `datasets` has no public fingerprint; `_fingerprint` is what its own cache keys on
    return EmbeddingBank.from_reference(
        model, [list(dataset[c]) for c in columns], batch_size=args.bank_encode_batch_size,
        cache_dir=args.bank_cache_dir or banks_cache_dir(), show_progress_bar=not args.disable_tqdm,
        data_fingerprint_=f"{dataset._fingerprint}-{'-'.join(columns)}")


def refresh_bank(trainer: TrainerHost) -> None:
    """Re-encode every training row with the current model (``bank_refresh_epochs``)."""
    bank, data = trainer.bank, trainer.train_dataset
    if bank is None or data is None:
        return
    columns = trainer.bank_columns(data)[:bank.num_views]
    bank.refresh(trainer.model, [list(data[c]) for c in columns], step=trainer.state.global_step,
                 batch_size=trainer.args.bank_encode_batch_size, show_progress_bar=not trainer.args.disable_tqdm)
    trainer.model.train()


class BankControl(TrainerCallback):
    """Epoch-end bank maintenance (flush, refresh every ``bank_refresh_epochs``) and the learnable temperature's
    gradient averaged across processes."""

    def __init__(self, trainer: TrainerHost) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.flush_bank()
        k = args.bank_refresh_epochs
        if k and state.epoch is not None and round(state.epoch) % k == 0:
            self.trainer.refresh_bank()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for loss in self.trainer.losses():
            p = getattr(loss, "log_temperature", None)
            if isinstance(p, torch.nn.Parameter) and p.grad is not None and torch.distributed.is_available() \
                    and torch.distributed.is_initialized():
                torch.distributed.all_reduce(p.grad)
                p.grad /= torch.distributed.get_world_size()
