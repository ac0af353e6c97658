"""A run's batch policy: which builder and window plan the sampler's batches, whether the sampler hands out
super-batches from which a per-step selector keeps B rows, and what that needs (the bank, a calibrated window, a
reference model). Decided once, when training starts (:meth:`DivCLTrainer.get_batch_sampler`), from the arguments,
a resumed checkpoint's state and, with ``window="progress"``, the latest calibration.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from sentence_transformers.base.sampler import BatchSamplers

from .._common import ROW_ID_COLUMN, is_image_feature, world_size
from ..data.validation import DatasetError, validate_training_dataset
from ..diversity.window import DiversityWindow
from ..training.arguments import DivCLTrainingArguments
from .calibration import calibrate_window
from .follower import schedule_progress
from .learnability import LearnabilitySelector, build_reference_bank, hold_out_reference_rows
from .selectors import SELECTORS, MegaBatchSelector

if TYPE_CHECKING:
    from ..training.trainer import DivCLTrainer

logger = logging.getLogger(__name__)

__all__ = ["CALIBRATION_FILE", "BatchPolicy", "decide_batch_policy", "prepare_training_rows", "resolve_window"]

CALIBRATION_FILE = "divcl_calibration.json"  # in output_dir: the window="auto" calibration curve


def prepare_training_rows(trainer: DivCLTrainer, dataset, args: DivCLTrainingArguments, infonce: bool = True,
                          model=None):
    """The training set a :class:`DivCLTrainer` trains on: the rows validated, probe (``window="progress"``) or
    reference (``builder="learnability"``) rows held out when the policy needs them, and a row-id column added."""
    global_batch = args.per_device_train_batch_size * (world_size() if args.gather_across_devices else 1)
    planned = args.dedupe and args.batch_sampler == BatchSamplers.BATCH_SAMPLER
    cols = validate_training_dataset(dataset, min_rows=max(2, global_batch), ignore=(ROW_ID_COLUMN,), model=model,
                                     dedupe_batch_size=global_batch * max(1, args.mega_batch_factor) if planned
                                     else None)
    single_image = len(cols) == 1 and is_image_feature(dataset.features[cols[0]])
    if infonce and len(cols) < 2 and not single_image:
        raise DatasetError(f"The contrastive loss needs 2 input columns (anchor, positive[, negatives...]); the "
                           f"data set has {len(cols)}: {cols}. Add a positive column, or pass a loss that "
                           "works on single texts.")
    if args.builder in SELECTORS:
        if args.builder == "learnability" and args.learnability_reference == "held_out":
            dataset, trainer.reference_dataset = hold_out_reference_rows(dataset, args, global_batch)
    elif args.window == "progress" and trainer.calibration_plan is None:
        dataset, trainer.probe_dataset, trainer.calibration_plan = schedule_progress(dataset, args, global_batch)
    if ROW_ID_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(ROW_ID_COLUMN)
    return dataset.add_column(ROW_ID_COLUMN, np.arange(len(dataset), dtype=np.int64))



class BatchPolicy(NamedTuple):
    """How the sampler draws its batches: ``builder`` and ``window`` per sampler batch of ``factor`` × B rows
    (``factor > 1``: the collator's selector keeps B of them); ``builder_kwargs`` for the builder."""

    builder: str
    window: DiversityWindow | None
    factor: int
    builder_kwargs: dict[str, Any] | None


def decide_batch_policy(trainer: DivCLTrainer, dataset, batch_size: int, seed: int) -> BatchPolicy:
    """Decide the run's batches and set up what they need: the bank (only when a builder or selector reads
    embeddings), the window (given, calibrated, restored or measured by progress calibration), and the
    collator's per-step selector when the sampler hands out super-batches."""
    a = trainer.args
    global_batch = batch_size * trainer.processes()
    selecting = a.builder in SELECTORS
    mega = (int(a.mega_batch_factor) if a.mega_batch_factor > 1 else 4) if selecting \
        else max(1, int(a.mega_batch_factor))
    builder = a.builder
    progress = a.window == "progress" and not selecting
    current = None
    if progress:  # random until a calibration measures a level that beats random batches
        if trainer.follower is not None and (saved := trainer.saved.json("progress")) is not None:
            trainer.follower.load_state_dict(saved)
        current = trainer.follower.current if trainer.follower is not None else None
        if current is None or current.decision != "window":
            builder = "random"
    trainer._phase = "bank"
    # random batches read no embeddings: skip the reference encoding unless the bank is wanted anyway
    need_bank = selecting or builder != "random" or mega > 1 or trainer._user_bank is not None
    trainer.bank = trainer.build_bank(dataset) if need_bank else None
    if progress:
        window = current.window if builder != "random" else None
        builder = trainer.window_builder() if window is not None else "random"
    elif selecting:
        window = resolve_window(trainer, global_batch, seed) if a.window not in ("progress", "none") else None
    else:
        window = resolve_window(trainer, global_batch, seed) if builder != "random" or mega > 1 else None
    if selecting:
        reference = build_reference_bank(trainer, dataset) if a.builder == "learnability" else None
        trainer.selector = LearnabilitySelector(trainer.bank, batch_size, a.temperature, reference=reference,
                                                chunks=a.learnability_chunks, window=window, seed=seed)
    elif mega > 1:
        if window is None:
            raise ValueError("mega_batch_factor > 1 needs a window (window='auto' or 'low:high').")
        trainer.selector = MegaBatchSelector(trainer.bank, window, batch_size,
                                             builder=builder if builder != "random" else "greedy", seed=seed)
    trainer._phase = "training"
    # the collator is built in __init__, before the bank exists: the selector is wired in here
    trainer.data_collator.select = trainer.selector
    trainer.diversity.window = window
    if selecting:
        return BatchPolicy("random", None, mega, None)
    return BatchPolicy("random" if mega > 1 else builder, None if mega > 1 else window, mega, a.builder_kwargs)


def resolve_window(trainer: DivCLTrainer, global_batch: int, seed: int) -> DiversityWindow | None:
    """The run's window: restored from a checkpoint, given, or calibrated on the bank (curve saved in
    ``output_dir/divcl_calibration.json``)."""
    saved = trainer.saved.json("window")
    if saved is not None:
        return DiversityWindow(**saved)
    window = trainer.args.parsed_window()
    if window != "auto":
        return window
    positives = trainer.bank.all(view=1, dtype=torch.float32) if trainer.bank.num_views > 1 else None
    cal = calibrate_window(trainer.bank.all(dtype=torch.float32), global_batch, trainer.args.temperature, seed=seed,
                           positives=positives, keep_fraction=trainer.args.window_keep_fraction)
    logger.info("calibrated window: %s", cal.format())
    if trainer.is_world_process_zero():
        Path(trainer.args.output_dir).mkdir(parents=True, exist_ok=True)
        Path(trainer.args.output_dir, CALIBRATION_FILE).write_text(json.dumps(cal.to_dict(), indent=2))
    return cal.window

