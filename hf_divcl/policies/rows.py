"""A run's batch policy: which builder and window plan the sampler's batches, whether the sampler hands out
super-batches from which a per-step selector keeps B rows, and what that needs (the bank, a calibrated window, a
reference model). Decided once, when training starts (``DivCLTrainer.get_batch_sampler``), from the arguments,
a resumed checkpoint's state and, with ``window="progress"``, the latest calibration.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from sentence_transformers.base.sampler import BatchSamplers

from .._common import ROW_ID_COLUMN, global_batch_size, is_image_feature
from ..data.validation import DatasetError, validate_training_dataset
from ..diversity.window import DiversityWindow
from .calibration import calibrate_window
from .explorer import ExplorePlan, schedule_exploration
from .follower import CalibrationPlan, schedule_progress
from .learnability import LearnabilitySelector, ReferenceBank, build_reference_bank, hold_out_reference_rows
from .selectors import SELECTORS, MegaBatchSelector

if TYPE_CHECKING:
    from ..bank import EmbeddingBank
    from .host import PolicyArguments, PolicyHost

logger = logging.getLogger(__name__)

__all__ = ["CALIBRATION_FILE", "BatchPolicy", "TrainingRows", "decide_batch_policy", "prepare_training_rows",
           "resolve_window"]

CALIBRATION_FILE = "divcl_calibration.json"  # in output_dir: the window="auto" calibration curve


class TrainingRows(NamedTuple):
    """What :func:`prepare_training_rows` hands back: the rows to train on and what the policy held out."""

    dataset: Any
    probe_dataset: Any = None
    reference_dataset: Any = None
    calibration_plan: CalibrationPlan | ExplorePlan | None = None


def prepare_training_rows(dataset, args: PolicyArguments, infonce: bool = True, model=None) -> TrainingRows:
    """The training set a :class:`DivCLTrainer` trains on: the rows validated, probe (``window="progress"``) or
    reference (``builder="learnability"``) rows held out when the policy needs them, and a row-id column added."""
    global_batch = global_batch_size(args)
    planned = args.dedupe and args.batch_sampler == BatchSamplers.BATCH_SAMPLER
    cols = validate_training_dataset(dataset, min_rows=max(2, global_batch), ignore=(ROW_ID_COLUMN,), model=model,
                                     dedupe_batch_size=global_batch * max(1, args.mega_batch_factor) if planned
                                     else None)
    single_image = len(cols) == 1 and is_image_feature(dataset.features[cols[0]])
    if infonce and len(cols) < 2 and not single_image:
        raise DatasetError(f"The contrastive loss needs 2 input columns (anchor, positive[, negatives...]); the "
                           f"data set has {len(cols)}: {cols}. Add a positive column, or pass a loss that "
                           "works on single texts.")
    probe = reference = plan = None
    if args.builder in SELECTORS:
        if args.builder == "learnability" and args.learnability_reference == "held_out":
            dataset, reference = hold_out_reference_rows(dataset, args, global_batch)
    elif args.window == "progress":
        dataset, probe, plan = schedule_progress(dataset, args, global_batch)
    elif args.window == "explore":
        dataset, probe, plan = schedule_exploration(dataset, args, global_batch)
    if ROW_ID_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(ROW_ID_COLUMN)
    dataset = dataset.add_column(ROW_ID_COLUMN, np.arange(len(dataset), dtype=np.int64))
    return TrainingRows(dataset, probe, reference, plan)


class BatchPolicy(NamedTuple):
    """How the sampler draws its batches, and what the trainer must hold for it.

    ``builder`` and ``window`` plan each sampler batch of ``factor`` × B rows (``factor > 1``: ``selector`` keeps B
    of them in the collator); ``builder_kwargs`` go to the builder; ``bank`` is the embedding bank (``None`` when
    nothing reads embeddings); ``logged_window`` is the window whose hit rate the diversity log reports;
    ``reference`` the learnability
    reference bank and its cost."""

    builder: str
    window: DiversityWindow | None
    factor: int
    builder_kwargs: dict[str, Any] | None
    bank: EmbeddingBank | None = None
    selector: Callable[[torch.Tensor], torch.Tensor] | None = None
    logged_window: DiversityWindow | None = None
    reference: ReferenceBank | None = None


def decide_batch_policy(host: PolicyHost, dataset, batch_size: int, seed: int) -> BatchPolicy:
    """Decide the run's batches and build what they need: the bank (only when a builder or selector reads
    embeddings), the window (given, calibrated, restored or measured by progress calibration), and the per-step
    selector when the sampler hands out super-batches. Nothing on ``host`` is changed: the trainer applies the
    returned policy."""
    a = host.args
    global_batch = batch_size * host.processes()
    selecting = a.builder in SELECTORS
    mega = (int(a.mega_batch_factor) if a.mega_batch_factor > 1 else 4) if selecting \
        else max(1, int(a.mega_batch_factor))
    builder = a.builder
    progress = a.window in ("progress", "explore") and not selecting
    current = None
    if progress:  # random until a calibration measures a level that beats random batches
        if host.follower is not None and (saved := host.saved.json("progress")) is not None:
            host.follower.load_state_dict(saved)
        current = host.follower.current if host.follower is not None else None
        if current is None or current.decision != "window":
            builder = "random"
    # random batches read no embeddings: skip the reference encoding unless the bank is wanted anyway
    need_bank = selecting or builder != "random" or mega > 1 or host.user_bank is not None
    bank = host.build_bank(dataset) if need_bank else None
    if progress:
        window = current.window if builder != "random" else None
        builder = host.window_builder() if window is not None else "random"
    elif selecting:
        window = resolve_window(host, bank, global_batch, seed) if a.window not in ("progress", "explore", "none") \
            else None
    else:
        window = resolve_window(host, bank, global_batch, seed) if builder != "random" or mega > 1 else None
    selector = None
    if selecting:
        reference = build_reference_bank(host, dataset) if a.builder == "learnability" else None
        selector = LearnabilitySelector(bank, batch_size, a.temperature,
                                        reference=reference.bank if reference is not None else None,
                                        chunks=a.learnability_chunks, window=window, seed=seed)
    elif mega > 1:
        if window is None:
            raise ValueError("mega_batch_factor > 1 needs a window (window='auto' or 'low:high').")
        selector = MegaBatchSelector(bank, window, batch_size, builder=builder if builder != "random" else "greedy",
                                     seed=seed)
    if selecting:
        return BatchPolicy("random", None, mega, None, bank, selector, window, reference)
    return BatchPolicy("random" if mega > 1 else builder, None if mega > 1 else window, mega, a.builder_kwargs,
                       bank, selector, window)


def resolve_window(host: PolicyHost, bank: EmbeddingBank, global_batch: int, seed: int) -> DiversityWindow | None:
    """The run's window: restored from a checkpoint, given, or calibrated on the bank (curve saved in
    ``output_dir/divcl_calibration.json``)."""
    saved = host.saved.json("window")
    if saved is not None:
        return DiversityWindow(**saved)
    window = host.args.parsed_window()
    if window != "auto":
        return window
    positives = bank.all(view=1, dtype=torch.float32) if bank.num_views > 1 else None
    cal = calibrate_window(bank.all(dtype=torch.float32), global_batch, host.args.temperature, seed=seed,
                           positives=positives, keep_fraction=host.args.window_keep_fraction)
    logger.info("calibrated window: %s", cal.format())
    if host.is_world_process_zero():
        Path(host.args.output_dir).mkdir(parents=True, exist_ok=True)
        Path(host.args.output_dir, CALIBRATION_FILE).write_text(json.dumps(cal.to_dict(), indent=2))
    return cal.window
