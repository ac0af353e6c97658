"""A small DivCLTrainer run used by the tests in subprocesses (plain python, accelerate launch, SIGKILL + resume).

Every rank appends one JSON line per training micro-step to ``<out>/rows_rank<r>.jsonl`` with the global step, the
local row ids it trained on and the loss.

    python tests/divcl_run.py MODEL_DIR OUT_DIR [--rows 200] [--batch 16] [--save-steps 5] [--kill-at 7] [--resume]

The batch policy: ``batch_policy="auto"`` planned by ``--builder`` (default greedy); ``--builder random``:
``batch_policy="random"``; ``--window progress`` / ``explore`` / ``low:high``: ``batch_policy="progress"`` /
``"explore"`` / ``"window"`` with that builder, the ``--calibration-*`` and ``--explore-*`` flags as their
``batch_policy_kwargs`` (``budget``, ``pairs``, ``levels``; ``min_blocks``, ``alpha``, ``max_fraction``,
``recheck_blocks``). ``--batch-policy NAME [--batch-policy-kwargs JSON]`` sets both directly instead.

Fault injection (SIGKILL of this process, on the rank given by --kill-rank): ``--kill-at N`` after step N,
``--kill-mid-step N`` after step N's forward pass and before its backward, ``--kill-mid-save N:PHASE`` while
checkpoint-N is written (PHASE: divcl = after hf_divcl state, before the model; optimizer = after the model, during
the optimizer state; state = half of trainer_state.json written), ``--kill-mid-refresh`` halfway through writing the
re-encoded bank at the first refresh (with --refresh-epochs). ``--disk-full-at-save N``: from checkpoint-N on every
file write over 4 KiB is refused by the kernel (RLIMIT_FSIZE), as on a full disk. Other faults: ``--nan-row R``
makes row R's embedding NaN (``--nan-at-step N``: the first row of step N's), ``--oom-at-step N`` makes an
allocation at step N fail under a memory cap.
"""

import argparse
import dataclasses
import json
import os
import resource
import signal

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from datasets import DatasetDict
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from hf_divcl import end_distributed
from hf_divcl.data.wordnet import wordnet_pairs
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.checkpoints import complete_checkpoints
from hf_divcl.training.trainer import DivCLTrainer

RANK = int(os.environ.get("RANK", "0"))
FAULT: dict = {}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class RecordingTrainer(DivCLTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        row_ids = inputs.get("row_ids")
        self.nan_mask = None if row_ids is None or "nan_row" not in FAULT else row_ids == FAULT["nan_row"]
        if row_ids is not None and FAULT.get("nan_at_step") == self.state.global_step + 1:
            self.nan_mask = torch.arange(len(row_ids)) == 0  # the batch's first row
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if row_ids is not None and model.training:
            value = (loss[0] if return_outputs else loss).item()
            with open(os.path.join(self.args.output_dir, f"rows_rank{RANK}.jsonl"), "a") as fh:
                fh.write(json.dumps({"step": self.state.global_step + 1, "rows": row_ids.tolist(),
                                     "loss": value, "source": self.source_name}) + "\n")
            if FAULT.get("mid_step") == self.state.global_step + 1:
                die()
        if FAULT.get("oom_at_step") == self.state.global_step + 1:
            allocate_beyond_a_memory_cap()
        return loss

    def _save_checkpoint(self, model, trial):
        if FAULT.get("disk_full_at_save") == self.state.global_step:  # the kernel refuses any file over 4 KiB
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write is an OSError, not a signal
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        if FAULT.get("mid_save", (None,))[0] == self.state.global_step:
            phase = FAULT["mid_save"][1]
            if phase == "divcl":
                self.save_model = lambda *a, **k: die()
            elif phase == "optimizer":
                self._save_optimizer_and_scheduler = lambda output_dir: (
                    open(os.path.join(output_dir, "optimizer.pt"), "wb").write(b"\x80\x02half"), die())
            elif phase == "state":
                def torn(path):
                    text = json.dumps(dataclasses.asdict(self.state), indent=2, sort_keys=True)
                    with open(path, "w") as fh:
                        fh.write(text[: len(text) // 2])
                    die()
                self.state.save_to_json = torn
        super()._save_checkpoint(model, trial)

    def refresh_bank(self):
        if FAULT.get("mid_refresh") and self.bank is not None:
            update = self.bank.update

            def half_then_die(indices, embeddings, **kw):
                n = len(indices) // 2
                update(indices[:n], embeddings[:n], **kw)
                die()
            self.bank.update = half_then_die
        super().refresh_bank()


def vmdata() -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmData"))


def allocate_beyond_a_memory_cap() -> None:
    """A real allocation failure: cap private memory (RLIMIT_DATA) at what is in use, ask for 256 MiB more."""
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (vmdata(), resource.RLIM_INFINITY))
    try:
        torch.empty(256 * 2**20, dtype=torch.uint8).fill_(0)
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def poison(trainer):
    """Forward hook: the embedding of row FAULT['nan_row'] is NaN whenever that row is in the batch."""

    def hook(module, args, output):
        mask = getattr(trainer, "nan_mask", None)
        if mask is not None and bool(mask.any()) and output["sentence_embedding"].shape[0] == mask.shape[0]:
            emb = output["sentence_embedding"]
            output["sentence_embedding"] = torch.where(mask[:, None], torch.full_like(emb, float("nan")), emb)
        return output
    return hook


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            die()


def policy_options(a: argparse.Namespace) -> dict:
    """``batch_policy`` and ``batch_policy_kwargs`` from the flags (see the module's docstring)."""
    if a.batch_policy:
        return {"batch_policy": a.batch_policy, "batch_policy_kwargs": a.batch_policy_kwargs}
    window = a.window or ("none" if a.builder == "random" else "auto")
    if window == "none":
        return {"batch_policy": "random"}
    if window == "auto":
        return {"batch_policy": "auto", "batch_policy_kwargs": {"builder": a.builder}}
    if window == "progress":
        return {"batch_policy": "progress", "batch_policy_kwargs": {
            "budget": a.calibration_budget, "pairs": a.calibration_pairs, "levels": a.calibration_levels,
            "confidence": 0.5, "builder": a.builder}}
    if window == "explore":
        return {"batch_policy": "explore", "batch_policy_kwargs": {
            "budget": a.calibration_budget, "levels": a.calibration_levels, "min_blocks": a.explore_min_blocks,
            "alpha": a.explore_alpha, "max_fraction": a.explore_max_fraction,
            "recheck_blocks": a.explore_recheck_blocks, "builder": a.builder}}
    return {"batch_policy": "window", "batch_policy_kwargs": {"window": window, "builder": a.builder}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--save-steps", type=int, default=5)
    p.add_argument("--kill-at", type=int, default=0)
    p.add_argument("--kill-rank", type=int, default=None, help="only this rank dies (default: every rank)")
    p.add_argument("--kill-mid-step", type=int, default=0)
    p.add_argument("--kill-mid-save", default=None)
    p.add_argument("--kill-mid-refresh", action="store_true")
    p.add_argument("--disk-full-at-save", type=int, default=0,
                   help="from checkpoint N on, writing a file over 4 KiB fails (RLIMIT_FSIZE), as on a full disk")
    p.add_argument("--refresh-epochs", type=int, default=0)
    p.add_argument("--nan-row", type=int, default=None)
    p.add_argument("--nan-at-step", type=int, default=0, help="the first row of step N's batch gets a NaN embedding")
    p.add_argument("--nonfinite-action", default="stop")
    p.add_argument("--resume", action="store_true", help="resume from the newest complete checkpoint")
    p.add_argument("--resume-if-any", action="store_true", help="--resume when a complete checkpoint exists")
    p.add_argument("--builder", default="greedy")
    p.add_argument("--window", default=None, help="'auto' (default; 'none' with --builder random), 'progress', "
                                                  "'explore' or 'low:high'")
    p.add_argument("--batch-policy", default=None, help="a batch_policy name (overrides --window and --builder)")
    p.add_argument("--batch-policy-kwargs", default=None, help="with --batch-policy: its settings as JSON")
    p.add_argument("--calibration-budget", type=float, default=0.05)
    p.add_argument("--calibration-pairs", type=int, default=None)
    p.add_argument("--calibration-levels", default=None)
    p.add_argument("--explore-min-blocks", type=int, default=10)
    p.add_argument("--explore-max-fraction", type=float, default=0.3)
    p.add_argument("--explore-alpha", type=float, default=0.05)
    p.add_argument("--explore-recheck-blocks", type=int, default=40)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--sources", type=int, default=0, help="split the rows into N sources (a DatasetDict)")
    p.add_argument("--gather", action="store_true", help="loss_kwargs gather_across_devices=True")
    p.add_argument("--oom-at-step", type=int, default=0, help="an allocation fails for lack of memory at step N")
    a = p.parse_args()
    if a.kill_rank is None or a.kill_rank == RANK:
        if a.kill_mid_step:
            FAULT["mid_step"] = a.kill_mid_step
        if a.kill_mid_save:
            step, phase = a.kill_mid_save.split(":")
            FAULT["mid_save"] = (int(step), phase)
        if a.kill_mid_refresh:
            FAULT["mid_refresh"] = True
        if a.disk_full_at_save:
            FAULT["disk_full_at_save"] = a.disk_full_at_save
    if a.nan_row is not None:
        FAULT["nan_row"] = a.nan_row
    if a.oom_at_step:
        FAULT["oom_at_step"] = a.oom_at_step
    ds = wordnet_pairs(kind="example", source="embedded").select(range(a.rows)).select_columns(["anchor", "positive"])
    if a.sources:  # N contiguous sources of unequal sizes (the first takes what the others leave)
        sizes = [a.rows // (a.sources + 1)] * (a.sources - 1)
        sizes.insert(0, a.rows - sum(sizes))
        starts = [sum(sizes[:k]) for k in range(a.sources)]
        ds = DatasetDict({f"s{k}": ds.select(range(st, st + n))
                          for k, (st, n) in enumerate(zip(starts, sizes, strict=True))})
    model = SentenceTransformer(a.model, device="cpu")
    args = DivCLTrainingArguments(
        output_dir=a.out, per_device_train_batch_size=a.batch, num_train_epochs=a.epochs, learning_rate=1e-3,
        logging_steps=2, save_steps=a.save_steps, save_strategy="steps", report_to=[], disable_tqdm=True,
        collapse_threshold=0, **policy_options(a), max_steps=a.max_steps,
        bank_cache_dir=os.path.join(a.out, "bank_cache"), seed=7,
        bank_refresh_epochs=a.refresh_epochs, nonfinite_action=a.nonfinite_action,
        loss_kwargs={"gather_across_devices": True} if a.gather else None)
    callbacks = [KillAt(a.kill_at)] if a.kill_at and (a.kill_rank is None or a.kill_rank == RANK) else []
    trainer = RecordingTrainer(model=model, args=args, train_dataset=ds, callbacks=callbacks)
    if a.nan_at_step:
        FAULT["nan_at_step"] = a.nan_at_step
    if "nan_row" in FAULT or "nan_at_step" in FAULT:
        model.register_forward_hook(poison(trainer))
    resume = a.resume or (a.resume_if_any and bool(complete_checkpoints(a.out)[0]))
    trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.is_world_process_zero():
        trainer.save_model(os.path.join(a.out, "final"))
    end_distributed()


if __name__ == "__main__":
    main()
