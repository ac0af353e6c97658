"""The run files a :class:`~hf_divcl.training.trainer.DivCLTrainer` leaves in ``output_dir`` (read by the model card):

- ``divcl_window.json`` — the batch policy (its name and settings) and what it decided: the window in force (or the
  decision to keep random batches, and why), the builder, temperature and global batch size (the policy's
  ``describe()``); rewritten after every decision a policy takes mid-run;
- ``divcl_run.json`` — the loss, processes, bank, false-negative masking and per-step selection of the run (the
  policy's ``run_info()``).

Both are written at the start of training (:class:`RunFiles`, a ``TrainerCallback.on_train_begin``), by the main
process only, atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from .._common import RUN_INFO_FILE, WINDOW_FILE, atomic_write_text
from ..losses.infonce import InfoNCELoss, loss_settings, loss_temperature

if TYPE_CHECKING:
    from .host import TrainerHost

__all__ = ["RunFiles", "push_run", "write_run_file", "write_window_file"]


class RunFiles(TrainerCallback):
    """Writes ``divcl_window.json`` and ``divcl_run.json`` when training begins (once the sampler is built)."""

    def __init__(self, trainer: TrainerHost) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.divcl_sampler is not None:  # batch_sampler set explicitly: no diversity batches, no files
            write_window_file(self.trainer)
            write_run_file(self.trainer)


def write_run_file(trainer: TrainerHost) -> None:
    """``divcl_run.json``: the loss, processes, bank, false-negative masking and batch selection of the run."""
    if not trainer.is_world_process_zero():
        return
    a, loss = trainer.args, trainer.losses()[0]
    run = {"loss": type(loss).__name__ + (f" ({loss.loss_type}{', symmetric' if loss.symmetric else ''})"
                                          if isinstance(loss, InfoNCELoss) else ""),
           "processes": trainer.processes(), "batch_size": a.train_batch_size, "bank_source": a.bank_source,
           "train_rows": len(trainer.train_dataset), "dimension": trainer.bank.dim if trainer.bank is not None
           else None, "whitening": bool(getattr(loss, "whitening", False)), "loss_config": loss_settings(loss),
           "temperature": loss_temperature(loss, a.temperature)}
    if isinstance(loss, InfoNCELoss) and loss.false_negatives != "none":
        run["false_negatives"] = {"mode": loss.false_negatives, "margin": loss.false_negative_margin,
                                  "reference": loss.get_config_dict()["guide"]}
    split = trainer.sources
    if split is not None:
        per_loss = trainer.loss if isinstance(trainer.loss, dict) else {}
        run["sources"] = {"order": split.order, "mix": split.mix, "names": list(split.names),
                          "rows": dict(zip(split.names, split.sizes, strict=True)),
                          "losses": {k: type(v).__name__ for k, v in per_loss.items()} or None}
    run.update(trainer.policy.run_info(trainer))
    atomic_write_text(Path(a.output_dir, RUN_INFO_FILE), json.dumps(run, indent=2))


def write_window_file(trainer: TrainerHost) -> None:
    """``divcl_window.json``: the window in force, or the decision to keep random batches and why."""
    if not trainer.is_world_process_zero():
        return
    a, window, policy = trainer.args, trainer.diversity.window, trainer.policy
    sampler = trainer.divcl_sampler
    info: dict[str, Any] = {"policy": policy.name, "experimental": policy.experimental,
                            "settings": policy.settings(),
                            "window": window.to_dict() if window is not None else None,
                            "builder": sampler.builder if sampler is not None else None,
                            "temperature": loss_temperature(trainer.losses()[0], a.temperature),
                            "global_batch_size": trainer.global_batch_size(),
                            "mega_batch_factor": sampler.batch_size // a.per_device_train_batch_size
                            if sampler is not None else 1,
                            **policy.describe(trainer)}
    atomic_write_text(Path(a.output_dir, WINDOW_FILE), json.dumps(info, indent=2, default=str))


def push_run(trainer: TrainerHost, repo_id: str | None = None, *, token: str | None = None,
             private: bool | None = None, commit_message: str = "Upload model trained with hf_divcl",
             endpoint: str | None = None, dataset_description: str | None = None, **kwargs: Any) -> str:
    """``DivCLTrainer.push_to_hub``: save the model, write ``training_args.json`` and the model card (with both plots)
    into ``output_dir`` and upload it with :func:`hf_divcl.publish.hub.push_to_hub`. Returns the commit URL ("" on
    processes other than the main one)."""
    from ..publish.card import write_model_card
    from ..publish.hub import push_to_hub as _push

    repo_id = repo_id or trainer.args.hub_model_id
    if not repo_id:
        raise ValueError("push_to_hub needs a repo id: pass repo_id='namespace/name' or set hub_model_id.")
    out = Path(trainer.args.output_dir)
    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return ""
    (out / "training_args.json").write_text(trainer.args.to_json_string())  # token fields are masked
    log = trainer.args.diversity_log_file
    if log and (out / log).is_file():
        card_data = getattr(trainer.model, "model_card_data", None)
        base = getattr(card_data, "base_model", None) or "a sentence-transformers model"
        n = len(trainer.train_dataset) if trainer.train_dataset is not None else 0
        write_model_card(out, model=trainer.model, base_model=base, train_rows=n, repo_id=repo_id,
                         dataset=dataset_description or f"the training set ({n} rows)", log_file=log)
    return _push(out, repo_id, token=token or trainer.args.hub_token,
                 private=bool(trainer.args.hub_private_repo if private is None else private), endpoint=endpoint,
                 commit_message=commit_message, **({"log_file": log} if log else {}),
                 **{k: v for k, v in kwargs.items() if k in ("revision", "retries", "backoff", "timeout")})
