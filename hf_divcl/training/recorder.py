"""``StepRecorder``: each training step's embeddings → the diversity log, and (buffered) → the embedding bank.

With hf_divcl's :class:`~hf_divcl.losses.infonce.InfoNCELoss` the step's anchors and positives come from the loss itself
(``last_output``, already gathered across processes). With any other loss (MultipleNegativesRankingLoss, ...) a
forward hook captures the model's ``sentence_embedding`` outputs; the hook lives only while ``train()`` runs, so the
model never carries a reference to the trainer afterwards (copies, pickling, memory).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import torch

from ..losses.gather import gather_with_grad
from ..losses.infonce import InfoNCELoss, loss_temperature

if TYPE_CHECKING:
    from ..bank import EmbeddingBank
    from .host import TrainerHost

__all__ = ["StepRecorder"]


class StepRecorder:
    """Records each training step of a :class:`~hf_divcl.training.trainer.DivCLTrainer`.

    Per step: :meth:`start` (other losses: begin capturing), the loss's forward, :meth:`stop` (the captured
    ``(n, d)`` outputs), then :meth:`record` — batch geometry into the trainer's ``DiversityLogger`` and the rows'
    embeddings into a buffer that :meth:`flush` writes to the bank (one host transfer per flush, at logging,
    epoch end and checkpoint time).
    """

    def __init__(self, trainer: TrainerHost) -> None:
        self.trainer = trainer
        self._capture: list[torch.Tensor] | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._hook = None
        self._model = None

    # -- the forward hook (losses other than InfoNCELoss) --------------------------------------------------------

    def attach(self, model: torch.nn.Module) -> None:
        self.detach()
        self._model = model
        self._hook = model.register_forward_hook(self._on_forward)

    @contextlib.contextmanager
    def paused(self):
        """Detach the capture hook for the ``with`` block (e.g. while the model is copied), then attach it again."""
        model = self._model
        self.detach()
        try:
            yield
        finally:
            if model is not None:
                self.attach(model)

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_forward(self, module, args, output) -> None:
        if self._capture is not None and isinstance(output, dict) and "sentence_embedding" in output:
            self._capture.append(output["sentence_embedding"].detach())

    def start(self) -> None:
        self._capture = []

    def stop(self) -> list[torch.Tensor] | None:
        captured, self._capture = self._capture, None
        return captured

    # -- after the loss ------------------------------------------------------------------------------------------

    def record(self, row_ids: torch.Tensor, captured: list[torch.Tensor] | None) -> None:
        """Log the step's batch geometry and buffer its embeddings for the bank (``row_ids``: ``(B,)`` local rows).

        ``DiversityLogger.record`` counts its own time; the whole of this call is counted once instead."""
        diversity = self.trainer.diversity
        t0, before = time.perf_counter(), diversity.bookkeeping_seconds
        self._record(row_ids, captured)
        diversity.bookkeeping_seconds = before + time.perf_counter() - t0

    def _record(self, row_ids: torch.Tensor, captured: list[torch.Tensor] | None) -> None:
        t = self.trainer
        loss = t.step_loss
        if isinstance(loss, InfoNCELoss) and loss.last_output is not None:
            out = loss.last_output
            anchors, positives, tau = out.anchors, out.positives, out.temperature
            mask, masked_stats = out.inbatch_negative_mask(), out.masked_stats
            if out.duplicate_negatives is not None:
                t.diversity.count_duplicate_negatives(out.duplicate_negatives, masked=True)
            if loss.gather_across_devices:
                with torch.no_grad():
                    ids = gather_with_grad(row_ids[:, None])[0][:, 0]
            else:
                ids = row_ids
            loss.last_output = None
        else:
            n = row_ids.shape[0]
            mask = masked_stats = None
            if not captured:
                return
            flat = torch.cat(captured)
            if flat.shape[0] < 2 * n:
                return
            anchors, positives = torch.nn.functional.normalize(flat[:2 * n].float(), dim=-1).split(n)
            tau = loss_temperature(loss, t.args.temperature)
            with torch.no_grad():
                anchors = gather_with_grad(anchors)[0]
                positives = gather_with_grad(positives)[0]
                ids = gather_with_grad(row_ids[:, None])[0][:, 0]
        t.diversity.record(anchors, positives, tau, negative_mask=mask, masked_stats=masked_stats)
        if t.bank is not None and t.args.bank_source == "training":
            rows = anchors if t.bank.num_views == 1 else torch.stack([anchors, positives], dim=1)
            self._pending.append((ids, rows.to(torch.float16)))

    def flush(self, bank: EmbeddingBank | None, step: int) -> None:
        """Write the buffered embeddings into ``bank`` (dropped when there is no bank)."""
        if not self._pending or bank is None:
            self._pending.clear()
            return
        ids = torch.cat([i for i, _ in self._pending]).cpu()
        emb = torch.cat([e for _, e in self._pending]).float().cpu()
        self._pending.clear()
        bank.update(ids, emb, step=step)
        bank.source = "training"
