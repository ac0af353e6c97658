"""Facts and small helpers several packages share, each defined once: run-file names, seeds, the step count, the
cache root, atomic writes, resource paths."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "DIVERSITY_LOG_FILE",
    "HOLD_OUT_SEED",
    "ROW_ID_COLUMN",
    "RUN_INFO_FILE",
    "WINDOW_FILE",
    "atomic_write_text",
    "banks_cache_dir",
    "cache_root",
    "end_distributed",
    "global_batch_size",
    "hold_out",
    "input_columns",
    "is_image_feature",
    "mix_seed",
    "packaged_recipes",
    "resource_path",
    "total_training_steps",
    "world_size",
]

ROW_ID_COLUMN = "_divcl_row"
"""The column the trainer adds: each training row's index, carried through the collator to feed the bank."""

WINDOW_FILE = "divcl_window.json"
"""The batch policy in force: the window (or the decision to keep random batches) and why."""
RUN_INFO_FILE = "divcl_run.json"
"""The run's loss, processes, bank, false-negative masking and per-step selection."""
DIVERSITY_LOG_FILE = "diversity_log.jsonl"
"""The default name of the per-logging-step diversity log (``DivCLTrainingArguments.diversity_log_file``)."""

HOLD_OUT_SEED = 7919
"""Offset of the seed that draws held-out rows (the progress probe, the learnability reference): fixed, so the split
does not move with anything else the run's seed drives."""


def mix_seed(seed: int, k: int) -> int:
    """One seed per ``(seed, k)`` pair (``k``: an epoch, a step, a call), the same on every process."""
    return int(seed) * 1_000_003 + int(k)


def total_training_steps(args, rows: int, global_batch: int) -> int:
    """Optimizer steps of a run on ``rows`` rows: ``args.max_steps`` when set, else epochs × steps per epoch (the
    Trainer's count, before the data loader exists)."""
    import math

    ga = max(1, args.gradient_accumulation_steps)
    per_epoch = max(1, math.ceil(max(rows, 1) / global_batch) // ga)
    return int(args.max_steps) if args.max_steps > 0 else max(1, math.ceil(args.num_train_epochs * per_epoch))


def hold_out(dataset, rows: int, seed: int):
    """Split ``rows`` seeded random rows off a ``datasets.Dataset``: ``(the rest, the held-out rows)``, each in the
    original row order."""
    import torch

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    held, keep = order[:rows].sort().values, order[rows:].sort().values
    return dataset.select(keep.tolist()), dataset.select(held.tolist())


def input_columns(columns, label_columns=()) -> list[str]:
    """The model-input columns among ``columns``: not a label, not the row id, not sentence-transformers'
    ``dataset_name`` routing column (order kept)."""
    skip = {*label_columns, ROW_ID_COLUMN, "dataset_name"}
    return [c for c in columns if c not in skip]


def is_image_feature(feature) -> bool:
    """Whether a ``datasets`` feature is an ``Image`` column (compared by name: no import of ``datasets``)."""
    return type(feature).__name__ == "Image"


def world_size() -> int:
    """Processes in the run: ``torch.distributed``'s world size once it is initialised, before that the launcher's
    ``WORLD_SIZE`` (``accelerate launch`` / ``torchrun``), else 1."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def end_distributed() -> None:
    """Destroy the default process group once a run's work is done (a no-op outside ``accelerate launch``).

    With Gloo (multi-process runs on CPU), a process that exits with its process group alive can abort during
    interpreter shutdown (``terminate called without an active exception``, SIGABRT) after finishing its work, and
    the launcher then reports the whole run as failed. Destroying the group is not enough on its own: a process
    that tears its group down while another is still working (rank 0 saving the final model) aborted in about 1
    run in 15, so every process first waits at a barrier until all are done. Call it on success only (a process
    that failed may leave the others inside a collective, where the barrier would wait for them), and as soon as
    no collective follows: the barrier waits for the slowest process, up to the group's timeout.
    """
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# -- configuration options that moved (no release had the old names: they fail, naming the new spelling). Here, not
# in training.arguments, so that the command line can name them before torch loads.

_PROGRESS = "batch_policy='progress' (or 'explore'), batch_policy_kwargs={{'{}': ...}}"
_EXPLORE = "batch_policy='explore', batch_policy_kwargs={{'{}': ...}}"
_LEARN = "batch_policy='learnability', batch_policy_kwargs={{'{}': ...}}"
_WINDOWED = "batch_policy='window' (or another window policy), batch_policy_kwargs={{'{}': ...}}"
_LOSS = "loss_kwargs={{'{}': ...}}"
RENAMED: dict[str, str] = {
    "window": "batch_policy='window', batch_policy_kwargs={'window': 'low:high'}; window='none' is "
              "batch_policy='random' (the default); 'auto', 'progress' and 'explore' are batch_policy names",
    "builder": "batch_policy='window', batch_policy_kwargs={'builder': ...}; builder='learnability' / 'hard' are "
               "batch_policy names",
    "builder_kwargs": _WINDOWED.format("builder_kwargs"),
    "on_infeasible": _WINDOWED.format("on_infeasible"),
    "replan_chunk_rows": _PROGRESS.format("replan_chunk_rows"),
    "mega_batch_factor": "batch_policy='mega_batch', batch_policy_kwargs={'factor': ...} (or 'factor' of "
                         "batch_policy='learnability' / 'hard')",
    "window_keep_fraction": "batch_policy='auto', batch_policy_kwargs={'keep_fraction': ...}",
    "calibration_budget": _PROGRESS.format("budget"),
    "calibration_pairs": "batch_policy='progress', batch_policy_kwargs={'pairs': ...}",
    "calibration_levels": _PROGRESS.format("levels"),
    "calibration_estimate": "batch_policy='progress', batch_policy_kwargs={'estimate': ...}",
    "calibration_confidence": "batch_policy='progress', batch_policy_kwargs={'confidence': ...}",
    "calibration_probe_rows": _PROGRESS.format("probe_rows"),
    "calibration_sample_rows": _PROGRESS.format("sample_rows"),
    "recalibrate_every": "batch_policy='progress', batch_policy_kwargs={'recalibrate_every': ...}",
    "recalibrate_early": "batch_policy='progress', batch_policy_kwargs={'recalibrate_early': ...}",
    **{f"explore_{k}": _EXPLORE.format(k) for k in ("alpha", "max_fraction", "min_blocks", "probe_temperature",
                                                     "probe", "probe_label_column", "recheck_blocks",
                                                     "recheck_rule")},
    "learnability_reference": _LEARN.format("reference"),
    "learnability_reference_rows": _LEARN.format("reference_rows"),
    "learnability_reference_steps": _LEARN.format("reference_steps"),
    "learnability_chunks": "batch_policy='learnability' (or 'hard'), batch_policy_kwargs={'chunks': ...}",
    **{k: _LOSS.format(k) for k in ("temperature", "learnable_temperature", "loss_type", "gather_across_devices",
                                    "whitening", "whitening_eps", "false_negatives", "false_negative_margin")},
    "symmetric_loss": _LOSS.format("symmetric"),
    "false_negative_guide": _LOSS.format("guide"),
}
"""Options that moved, and their new spelling (no release had them: the old name fails, naming the new one)."""


def agree(value: Any) -> Any:
    """``value`` as the first process has it: broadcast from rank 0 under ``torch.distributed`` (every process must
    call this at the same point of the run), returned unchanged in a single process. How the experimental policies'
    decisions stay the same on every rank."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1:
        payload = [value]
        torch.distributed.broadcast_object_list(payload, src=0)
        return payload[0]
    return value


def parse_json_object(value: Any, name: str) -> dict[str, Any]:
    """An option holding a mapping (``batch_policy_kwargs``, ``loss_kwargs``): a dict, a JSON object string (the
    command line, YAML) or ``None`` (empty) → a new dict; anything else fails naming the option."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} must be a JSON object, got {value!r} ({err}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict (or a JSON object), got {type(value).__name__}.")
    return dict(value)


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (its folder created): the decision logs of the experimental
    policies (``divcl_calibrations.jsonl``, ``divcl_explore.jsonl``). Call it on the main process only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def global_batch_size(args) -> int:
    """Rows in one global batch: the per-device batch times the processes whose batches the loss gathers
    (``gather_across_devices``), else the per-device batch."""
    gather = args.loss_option("gather_across_devices") if hasattr(args, "loss_option") else \
        getattr(args, "gather_across_devices", True)
    return args.per_device_train_batch_size * (world_size() if gather else 1)


def cache_root() -> Path:
    """``$HF_DIVCL_CACHE`` or ``~/.cache/hf_divcl``."""
    return Path(os.environ.get("HF_DIVCL_CACHE") or Path.home() / ".cache" / "hf_divcl")


def banks_cache_dir() -> str:
    """Where reference encodings of banks are cached by default (``<cache root>/banks``)."""
    return str(cache_root() / "banks")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a hidden temporary file and a rename, so a reader (or a crash) never sees
    a half-written file. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- files outside the Python modules: the model-card template and the recipe configs. In a checkout they are the
# top-level model_cards/ and recipes/ folders; a wheel ships copies in hf_divcl/_resources/<folder>/ (see setup.py).

_PACKAGE = Path(__file__).resolve().parent


def resource_path(folder: str, name: str) -> Path:
    """Path of ``folder/name``: the copy inside the installed package, else the checkout's top-level folder (the
    returned path may not exist; callers name it in their error)."""
    packaged = _PACKAGE / "_resources" / folder / name
    if packaged.is_file():
        return packaged
    return _PACKAGE.parent / folder / name


def packaged_recipes() -> dict[str, Path]:
    """Recipe name (``text_wordnet``) → YAML path, from the installed package or the checkout."""
    found: dict[str, Path] = {}
    for base in (_PACKAGE.parent / "recipes", _PACKAGE / "_resources" / "recipes"):
        if base.is_dir():
            found.update({p.stem: p for p in sorted(base.glob("*.yaml"))})
    return found
