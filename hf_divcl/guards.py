"""Run guards: a non-finite loss and running out of memory are reported with the rows and what to do.

``NonFiniteLossError`` names the step and the offending batch's row ids (and which rows' embeddings were NaN/Inf);
``OutOfMemoryAdvice`` turns an allocation failure into advice for the phase it happened in. Earlier checkpoints
and logs are never touched by either.
"""

from __future__ import annotations

import torch

__all__ = ["NonFiniteLossError", "OutOfMemoryAdvice", "is_out_of_memory", "nonfinite_rows", "out_of_memory_advice"]


class NonFiniteLossError(FloatingPointError):
    """The loss of a training step was NaN/Inf; ``step``, ``row_ids`` (the batch) and ``bad_rows`` (rows whose
    embeddings were NaN/Inf) say where."""

    def __init__(self, message: str, *, step: int, row_ids: list[int], bad_rows: list[int]) -> None:
        super().__init__(message)
        self.step, self.row_ids, self.bad_rows = step, row_ids, bad_rows


class OutOfMemoryAdvice(MemoryError):
    """Memory ran out; the message says in which phase, where the last complete checkpoint is, and what to change."""


def nonfinite_rows(embeddings: torch.Tensor, row_ids: torch.Tensor) -> list[int]:
    """Row ids whose embedding row ``(n, d)`` holds a NaN or Inf (``row_ids`` ``(n,)``)."""
    bad = ~torch.isfinite(embeddings.detach()).all(dim=-1)
    return row_ids.detach().cpu()[bad.cpu()].tolist()


def is_out_of_memory(err: BaseException) -> bool:
    """True for Python's MemoryError, torch's OutOfMemoryError and allocator RuntimeErrors."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text
                                              or "cannot allocate memory" in text)


_ADVICE = {
    "bank": ["lower bank_encode_batch_size", "pass a smaller or memory-mapped bank (EmbeddingBank(path=...))",
             "use builder='random' (no bank)"],
    "training": ["lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the batch)",
                 "lower the model's max_seq_length", "set gradient_checkpointing=True",
                 "use bf16/fp16 on a GPU", "use CachedMultipleNegativesRankingLoss for very large batches",
                 "for millions of rows use builder='pool' or 'random' (lighter epoch planning)"],
}


def out_of_memory_advice(err: BaseException, *, phase: str, step: int, checkpoint: str | None) -> OutOfMemoryAdvice:
    """An :class:`OutOfMemoryAdvice` for a failure in ``phase`` ('bank' or 'training')."""
    where = {"bank": "while building the embedding bank and the window",
             "training": f"at training step {step + 1} (or planning its epoch)"}.get(phase, f"in {phase}")
    resume = (f"The last complete checkpoint is {checkpoint!r}; after the change, resume with "
              "trainer.train(resume_from_checkpoint=True)." if checkpoint else "No checkpoint was written yet.")
    tips = "; ".join(_ADVICE.get(phase, _ADVICE["training"]))
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return OutOfMemoryAdvice(f"Out of memory {where} ({first}). Try: {tips}. {resume}")
