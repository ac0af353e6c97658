"""Run guards: a non-finite loss and running out of memory are reported with the rows and what to do.

``NonFiniteLossError`` names the step and the offending batch's row ids (and which rows' embeddings were NaN/Inf);
``OutOfMemoryAdvice`` turns an allocation failure into advice for the phase it happened in. Earlier checkpoints
and logs are never touched by either.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .host import TrainerHost

logger = logging.getLogger(__name__)

__all__ = ["NonFiniteLossError", "OutOfMemoryAdvice", "handle_nonfinite_loss", "is_out_of_memory", "nonfinite_rows",
           "out_of_memory_advice"]

NONFINITE_FILE = "divcl_nonfinite.jsonl"  # in output_dir: one record per non-finite training step


class NonFiniteLossError(FloatingPointError):
    """The loss of a training step was NaN/Inf; ``step``, ``row_ids`` (the batch) and ``bad_rows`` (rows whose
    embeddings were NaN/Inf) say where."""

    def __init__(self, message: str, *, step: int, row_ids: list[int], bad_rows: list[int]) -> None:
        super().__init__(message)
        self.step, self.row_ids, self.bad_rows = step, row_ids, bad_rows


class OutOfMemoryAdvice(MemoryError):
    """Memory ran out; the message says in which phase, where the last complete checkpoint is, and what to change."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file-size or quota limit, folder gone); the message names the
    newest complete checkpoint, which resumes the run."""


def checkpoint_write_error(err: OSError, folder: Path, complete: list[Path]) -> CheckpointWriteError:
    """The error a run stops with when writing ``folder`` failed; ``complete``: the complete checkpoints, oldest
    first (the half-written ``folder`` is never among them, and a resume sets it aside)."""
    why = f"{err.strerror or err}" + (f" ({err.filename})" if getattr(err, "filename", None) else "")
    if complete:
        then = (f"Nothing earlier is lost: {complete[-1].name} is the newest complete checkpoint. Free disk space (or "
                "point output_dir at a larger disk) and resume with train(resume_from_checkpoint=True) or "
                "--resume_from_checkpoint true.")
    else:
        then = "No complete checkpoint exists yet: free disk space (or point output_dir at a larger disk) and rerun."
    return CheckpointWriteError(err.errno, f"Writing {folder.name} failed: {why}; training stopped. {then}")


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
             "use batch_policy='random' (no bank)"],
    "training": ["lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the batch)",
                 "lower the model's max_seq_length", "set gradient_checkpointing=True",
                 "use bf16/fp16 on a GPU", "use CachedMultipleNegativesRankingLoss for very large batches",
                 "for millions of rows use the 'pool' builder or batch_policy='random' (lighter epoch planning)"],
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


def handle_nonfinite_loss(trainer: TrainerHost, model: torch.nn.Module, loss: torch.Tensor, row_ids: torch.Tensor,
                          captured: list[torch.Tensor] | None) -> torch.Tensor:
    """A NaN/Inf training loss: record the batch's rows (and those with NaN/Inf embeddings) in
    ``divcl_nonfinite.jsonl``, then raise :class:`NonFiniteLossError` (``nonfinite_action="stop"``, or too many
    skips) or return a zero loss that still touches every trainable parameter (``"skip"``)."""
    from ..losses.infonce import InfoNCELoss

    args = trainer.args
    n = row_ids.shape[0]
    views: list[torch.Tensor] = []
    loss_fn = trainer.step_loss
    out = loss_fn.last_output if isinstance(loss_fn, InfoNCELoss) else None
    if out is not None:
        loss_fn.last_output = None
        views = [out.anchors[out.offset:out.offset + n], out.positives[out.offset:out.offset + n]]
    elif captured:
        flat = torch.cat(captured)
        views = list(flat[:(flat.shape[0] // n) * n].split(n))
    bad = sorted({r for v in views for r in nonfinite_rows(v, row_ids)})
    step = trainer.state.global_step + 1
    ids = row_ids.detach().cpu().tolist()
    record = {"step": step, "rank": args.process_index, "loss": float(loss.detach().float().reshape(-1)[0]),
              "row_ids": ids, "nonfinite_embedding_rows": bad, "action": args.nonfinite_action}
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    with open(os.path.join(args.output_dir, NONFINITE_FILE), "a") as fh:
        fh.write(json.dumps(record) + "\n")
    what = (f"rows with NaN/Inf embeddings: {bad}" if bad else
            "every embedding is finite (look at the learning rate or the temperature)")
    msg = f"Non-finite loss ({record['loss']}) at step {step}; the batch's rows: {ids}; {what}."
    trainer.nonfinite_skipped += 1
    if args.nonfinite_action == "stop" or trainer.nonfinite_skipped > args.nonfinite_max_skips:
        why = ("Training stopped (nonfinite_action='stop')" if args.nonfinite_action == "stop" else
               f"Training stopped after {trainer.nonfinite_skipped} non-finite batches (nonfinite_max_skips="
               f"{args.nonfinite_max_skips})")
        raise NonFiniteLossError(f"{msg} {why}; earlier checkpoints and logs are intact. Fix or drop those "
                                 "rows, lower learning_rate, or set nonfinite_action='skip'.",
                                 step=step, row_ids=ids, bad_rows=bad)
    logger.warning("%s Skipped: the batch contributes a zero gradient (nonfinite_action='skip').", msg)
    return sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
