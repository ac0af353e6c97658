"""The run files a :class:`~hf_divcl.training.trainer.DivCLTrainer` leaves in ``output_dir`` (read by the model card):

- ``divcl_window.json`` — the batch policy in force: the window (or the decision to keep random batches, and why),
  the builder, temperature and global batch size; rewritten after every progress calibration;
- ``divcl_run.json`` — the loss, processes, bank, false-negative masking and per-step selection of the run.

Both are written at the start of training (:class:`RunFiles`, a ``TrainerCallback.on_train_begin``), by the main
process only, atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .._common import RUN_INFO_FILE, WINDOW_FILE, atomic_write_text
from ..batch_policy.selectors import SELECTORS
from ..losses.infonce import InfoNCELoss, loss_settings, loss_temperature

if TYPE_CHECKING:
    from .host import TrainerHost

__all__ = ["RunFiles", "selection_info", "write_run_file", "write_window_file"]


class RunFiles(TrainerCallback):
    """Writes ``divcl_window.json`` and ``divcl_run.json`` when training begins (once the sampler is built)."""

    def __init__(self, trainer: TrainerHost) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.divcl_sampler is not None:  # batch_sampler set explicitly: no diversity batches, no files
            write_window_file(self.trainer)
            write_run_file(self.trainer)


def selection_info(trainer: TrainerHost) -> dict[str, Any]:
    """How per-step selection chose batches (``builder="learnability" | "hard"``), for the run file and the card."""
    a, sel, sampler = trainer.args, trainer.selector, trainer.divcl_sampler
    ref = a.learnability_reference if sel.reference is not None else None
    return {"mode": sel.mode,
            "super_batch_factor": sampler.batch_size // a.per_device_train_batch_size if sampler is not None else None,
            "chunks": sel.chunks, "reference": ref,
            "reference_rows": len(trainer.reference_dataset) if trainer.reference_dataset is not None else None,
            "reference_steps": getattr(trainer, "reference_steps", None), "within_window": sel.window is not None}


def write_run_file(trainer: TrainerHost) -> None:
    """``divcl_run.json``: the loss, processes, bank, false-negative masking and batch selection of the run."""
    if not trainer.is_world_process_zero():
        return
    a, loss = trainer.args, trainer.loss
    run = {"loss": type(loss).__name__ + (f" ({loss.loss_type}{', symmetric' if loss.symmetric else ''})"
                                          if isinstance(loss, InfoNCELoss) else ""),
           "processes": trainer.processes(), "batch_size": a.train_batch_size, "bank_source": a.bank_source,
           "train_rows": len(trainer.train_dataset), "dimension": trainer.bank.dim if trainer.bank is not None
           else None, "whitening": a.whitening, "loss_config": loss_settings(loss),
           "temperature": loss_temperature(loss, a.temperature)}
    if isinstance(loss, InfoNCELoss) and loss.false_negatives != "none":
        run["false_negatives"] = {"mode": loss.false_negatives, "margin": loss.false_negative_margin,
                                  "reference": loss.get_config_dict()["guide"]}
    if a.builder in SELECTORS and trainer.selector is not None:
        run["selection"] = selection_info(trainer)
    atomic_write_text(Path(a.output_dir, RUN_INFO_FILE), json.dumps(run, indent=2))


def write_window_file(trainer: TrainerHost) -> None:
    """``divcl_window.json``: the window in force, or the decision to keep random batches and why."""
    if not trainer.is_world_process_zero():
        return
    a, window = trainer.args, trainer.diversity.window
    policy = a.window if a.window in ("progress", "explore", "auto", "none") else "fixed"
    if a.builder in SELECTORS:  # per-step selection; window='progress' does not apply to it
        policy = a.builder
    info: dict[str, Any] = {"policy": policy,
                            "window": window.to_dict() if window is not None else None,
                            "builder": trainer.divcl_sampler.builder if trainer.divcl_sampler is not None
                            else a.builder,
                            "temperature": loss_temperature(trainer.loss, a.temperature),
                            "global_batch_size": trainer.global_batch_size(),
                            "mega_batch_factor": max(1, int(a.mega_batch_factor))}
    if a.builder in SELECTORS:
        info["selection"] = selection_info(trainer) if trainer.selector is not None else None
        info["reason"] = (f"builder={a.builder!r} selects each step's {trainer.global_batch_size()} rows from a "
                          "random super-batch" + (" inside the window" if window is not None else ""))
    elif a.window in ("progress", "explore"):
        follower, plan = trainer.follower, trainer.calibration_plan
        current = follower.current if follower is not None else None
        info["decision"] = current.decision if current is not None else "random"
        info["reason"] = current.reason if current is not None else (
            plan.reason if plan is not None and not plan.steps else
            "exploring" if a.window == "explore" else "not calibrated yet")
        info["calibration_plan"] = plan.to_dict() if plan else None
        info["calibrations"] = len(follower.history) if follower is not None else 0
    elif window is None:  # window="none": the sampler's random batches
        info["decision"], info["reason"] = "random", "window='none': random batches, no diversity window"
    atomic_write_text(Path(a.output_dir, WINDOW_FILE), json.dumps(info, indent=2))
