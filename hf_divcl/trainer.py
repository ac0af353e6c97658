"""``DivCLTrainer``: diversity-aware contrastive training by swapping one class (its arguments are in
:mod:`hf_divcl.training_args`).

    >>> trainer = DivCLTrainer(model=SentenceTransformer(...), args=DivCLTrainingArguments(output_dir="out"),
    ...                        train_dataset=pairs)
    >>> trainer.train()

With no hf_divcl-specific argument this trains on random batches until a measured diversity window beats them
(``window="progress"``, see :mod:`hf_divcl.following`), with the project's InfoNCE on the global batch and full
diversity logging. The data flow per run: dataset → (validated, row ids) → bank (reference encoding when a builder
needs one, then updated from each step's embeddings) → builder (:mod:`hf_divcl.planning`) →
:class:`~hf_divcl.sampler.DiversityWindowBatchSampler` → :class:`~hf_divcl.collator.DivCLDataCollator` (per-step
selection with ``builder="learnability" | "hard"``) → model → loss → :class:`~hf_divcl.callbacks.DiversityLogger`.
Checkpoints carry the bank and the epoch plan, so ``resume_from_checkpoint`` continues the same plan.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import BatchSamplers
from transformers import TrainerCallback

from ._common import (
    RUN_INFO_FILE,
    WINDOW_FILE,
    atomic_write_text,
    banks_cache_dir,
    hold_out,
    input_columns,
    is_image_feature,
    world_size,
)
from .bank import EmbeddingBank
from .callbacks import PREFIX, DiversityLogger, use_readable_console
from .checkpoints import complete_checkpoints, resolve_resume_checkpoint, start_run, write_checkpoint_identity
from .collator import ROW_ID_COLUMN, DivCLDataCollator, MegaBatchSelector
from .following import CalibrationPlan, WindowFollower, plan_calibrations
from .guards import NonFiniteLossError, OutOfMemoryAdvice, is_out_of_memory, nonfinite_rows, out_of_memory_advice
from .learnability import LearnabilitySelector, build_reference_bank, hold_out_reference_rows
from .losses import InfoNCELoss, gather_with_grad
from .progress import ProgressCalibration
from .sampler import DiversityWindowBatchSampler
from .training_args import SELECTORS, DivCLTrainingArguments
from .validation import DatasetError, validate_training_dataset
from .window import DiversityWindow, calibrate_window

logger = logging.getLogger(__name__)

__all__ = ["DivCLTrainer", "DivCLTrainingArguments"]

STATE_DIR = "divcl_state"




class _DivCLControl(TrainerCallback):
    """Epoch-end bank maintenance and the learnable temperature's gradient across processes."""

    def __init__(self, trainer: DivCLTrainer) -> None:
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.flush_bank()
        k = args.bank_refresh_epochs
        if k and state.epoch is not None and round(state.epoch) % k == 0:
            self.trainer.refresh_bank()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        loss = self.trainer.loss
        p = getattr(loss, "log_temperature", None)
        if isinstance(p, torch.nn.Parameter) and p.grad is not None and torch.distributed.is_available() \
                and torch.distributed.is_initialized():
            torch.distributed.all_reduce(p.grad)
            p.grad /= torch.distributed.get_world_size()


class DivCLTrainer(SentenceTransformerTrainer):
    """A :class:`SentenceTransformerTrainer` that trains on diversity-window batches and logs batch geometry.

    Args (beyond those of :class:`SentenceTransformerTrainer`):
        bank (:class:`~hf_divcl.bank.EmbeddingBank` or `(N, d)` tensor, *optional*): embeddings to plan from;
            default: encode the first input column with the model being trained (cached on disk).
        loss: default :class:`~hf_divcl.losses.InfoNCELoss` from the arguments; sentence-transformers losses
            (MultipleNegativesRankingLoss, CachedMultipleNegativesRankingLoss, ...) work too — their embeddings
            are captured by a forward hook for logging and the bank.
    """

    training_args_class = DivCLTrainingArguments
    data_collator_class = DivCLDataCollator

    def __init__(self, model=None, args: DivCLTrainingArguments | None = None, train_dataset=None,
                 eval_dataset=None, loss=None, *, bank: EmbeddingBank | torch.Tensor | None = None, **kwargs) -> None:
        if args is None:
            args = DivCLTrainingArguments(output_dir="divcl_output")
        if isinstance(args, SentenceTransformerTrainingArguments) and not isinstance(args, DivCLTrainingArguments):
            # field by field: `to_dict()` would turn every `*_token` into the string "<HUB_TOKEN>" (even None)
            args = DivCLTrainingArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args)
                                             if f.init and f.name in DivCLTrainingArguments.__dataclass_fields__})
        self._user_bank = bank
        self.bank: EmbeddingBank | None = None
        self.divcl_sampler: DiversityWindowBatchSampler | None = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._resume_dir: Path | None = None
        self._capture: list[torch.Tensor] | None = None
        self._phase = "setup"
        self.nonfinite_skipped = 0
        self.probe_dataset = None
        self.reference_dataset = None
        self.selector: LearnabilitySelector | None = None
        self.follower: WindowFollower | None = None
        self.calibration_plan: CalibrationPlan | None = None
        if train_dataset is not None:
            train_dataset = self._prepare_train_dataset(train_dataset, args, infonce=loss is None or
                                                        isinstance(loss, InfoNCELoss), model=model)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, loss=loss,
                         **kwargs)
        self.args: DivCLTrainingArguments
        log_file = os.path.join(args.output_dir, args.diversity_log_file) if args.diversity_log_file else None
        window = args.parsed_window()
        self.diversity = DiversityLogger(
            metric=window.metric if isinstance(window, DiversityWindow) else "effective_rank",
            log_bands=args.log_bands, log_file=log_file, collapse_threshold=args.collapse_threshold,
            collapse_patience=args.collapse_patience, collapse_action=args.collapse_action,
            is_main_process=self.is_world_process_zero())
        self.add_callback(self.diversity)
        self.add_callback(_DivCLControl(self))
        use_readable_console(self.callback_handler, self.diversity.metric)  # one short console line per log
        if self.calibration_plan is not None and self.calibration_plan.steps:
            self.follower = WindowFollower(self, self.calibration_plan)
            self.add_callback(self.follower)
        self._check_false_negatives()

    def _check_false_negatives(self) -> None:
        """Before training: a guide model must encode a few rows of every input column (else a clear error)."""
        loss = self.loss
        if not isinstance(loss, InfoNCELoss):
            if self.args.false_negatives != "none":
                raise ValueError(f"false_negatives={self.args.false_negatives!r} needs hf_divcl's InfoNCELoss; the "
                                 f"loss is {type(loss).__name__}.")
            return
        if loss.false_negatives != self.args.false_negatives:
            logger.warning("false_negatives=%r in the arguments, but the InfoNCELoss passed as loss= has %r: the "
                           "loss's setting is used.", self.args.false_negatives, loss.false_negatives)
        if loss.guide is not None and self.train_dataset is not None:
            sample = self.train_dataset.select(range(min(2, len(self.train_dataset))))
            loss.check_guide({c: list(sample[c]) for c in self._input_columns(sample)})

    # -- data ----------------------------------------------------------------------------------------------------

    def _prepare_train_dataset(self, dataset, args: DivCLTrainingArguments, infonce: bool = True, model=None):
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
                dataset, self.reference_dataset = hold_out_reference_rows(dataset, args, global_batch)
        elif args.window == "progress" and self.calibration_plan is None:
            dataset = self._hold_out_probe(dataset, args, global_batch)
        if ROW_ID_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(ROW_ID_COLUMN)
        return dataset.add_column(ROW_ID_COLUMN, np.arange(len(dataset), dtype=np.int64))

    def _hold_out_probe(self, dataset, args: DivCLTrainingArguments, global_batch: int):
        """Schedule the progress calibrations; when one fits the budget, hold out the probe rows (never trained on)."""
        n = len(dataset)
        ga = max(1, args.gradient_accumulation_steps)
        probe = args.calibration_probe_rows or max(2, min(2 * global_batch, n // 20))
        rest = n - probe
        steps_per_epoch = max(1, math.ceil(max(rest, 1) / global_batch) // ga)
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        every = args.recalibrate_every
        plan = plan_calibrations(
            total_steps=total, steps_per_epoch=steps_per_epoch, batch_size=global_batch, train_rows=max(rest, 0),
            budget=args.calibration_budget, n_pairs=args.calibration_pairs,
            levels=[x.strip() for x in args.calibration_levels.split(",")] if args.calibration_levels else None,
            probe_rows=probe, sample_rows=args.calibration_sample_rows,
            recalibrate_every=int(every) if every.isdigit() else every, recalibrate_early=args.recalibrate_early,
            estimate=args.calibration_estimate, gradient_accumulation_steps=ga)
        if plan.steps and rest < max(4 * global_batch, plan.sample_rows // 2):
            plan.steps, plan.reason = [], (f"the training set ({n} rows) is too small to hold out {probe} probe rows "
                                           f"and still draw candidate batches of {global_batch}; batches stay random")
        self.calibration_plan = plan
        if not plan.steps:
            logger.warning("window='progress': %s.", plan.reason)
            return dataset
        dataset, self.probe_dataset = hold_out(dataset, probe, int(args.seed) + 7919)
        logger.info("window='progress': %d probe rows held out; calibrations at steps %s with %d pairs per level "
                    "(%.1f batch equivalents each, %s)", probe, plan.steps, plan.n_pairs, plan.cost_per_calibration,
                    plan.reason)
        return dataset

    def _input_columns(self, dataset) -> list[str]:
        return input_columns(dataset.column_names, self.data_collator.valid_label_columns)

    def get_data_collator(self, model, args, processing_class=None):
        collator = super().get_data_collator(model=model, args=args, processing_class=processing_class)
        if "image" in getattr(model, "modalities", ["text"]):
            try:
                from .augment import TwoViewAugment, to_model_inputs
            except ImportError as err:  # kornia is an optional extra
                raise ImportError("Image training needs kornia: pip install 'hf_divcl[vision]'.") from err
            size = args.image_size or _processor_image_size(model) or 224
            collator.augment = TwoViewAugment(size, scale=(args.augment_scale_min, 1.0), jitter=args.augment_jitter,
                                              seed=args.seed)
            collator.to_inputs = lambda views: to_model_inputs(model, views)
        return collator

    def get_default_loss(self, model) -> torch.nn.Module:
        a = self.args
        guide = self.guide_model() if a.false_negatives == "mask" else None
        return InfoNCELoss(model, temperature=a.temperature, learnable_temperature=a.learnable_temperature,
                           loss_type=a.loss_type, symmetric=a.symmetric_loss,
                           gather_across_devices=a.gather_across_devices, whitening=a.whitening,
                           whitening_eps=a.whitening_eps, false_negatives=a.false_negatives,
                           false_negative_margin=a.false_negative_margin, guide=guide)

    def guide_model(self):
        """The ``false_negative_guide`` SentenceTransformer (loaded once, on the model's device), or ``None``."""
        path = self.args.false_negative_guide
        if path is None:
            return None
        if getattr(self, "_guide", None) is None:
            from sentence_transformers import SentenceTransformer

            try:
                self._guide = SentenceTransformer(path, device=str(self.args.device))
            except Exception as err:
                raise ValueError(f"Cannot load the guide model from {path!r} ({type(err).__name__}: {err}); give "
                                 "the folder of a saved SentenceTransformer.") from err
        return self._guide

    # -- bank and sampler ----------------------------------------------------------------------------------------

    def build_bank(self, dataset) -> EmbeddingBank:
        """The bank the sampler plans from: the user's, a checkpoint's, or a (cached) reference encoding."""
        if self._resume_dir is not None and (self._resume_dir / STATE_DIR / "bank" / "bank.json").is_file():
            bank = EmbeddingBank.load(self._resume_dir / STATE_DIR / "bank")
            logger.info("bank restored from %s", self._resume_dir)
            return bank
        if self._user_bank is not None:
            b = self._user_bank
            if isinstance(b, torch.Tensor):
                bank = EmbeddingBank(b.shape[0], b.shape[1])
                bank.update(torch.arange(b.shape[0]), b, step=0)
                bank.source = "user"
                b = bank
            if b.num_rows != len(dataset):
                raise ValueError(f"The bank has {b.num_rows} rows but the training set has {len(dataset)}.")
            return b
        t0 = time.perf_counter()
        bank = self.encode_bank(self.model, dataset)
        self.model.train()
        logger.info("bank: %s (%.1f s)", bank, time.perf_counter() - t0)
        self.bank_seconds = time.perf_counter() - t0
        return bank

    def encode_bank(self, model, dataset) -> EmbeddingBank:
        """The bank columns of ``dataset`` encoded by ``model`` (cached on disk by model and data fingerprints)."""
        columns = self._bank_columns(dataset)
        return EmbeddingBank.from_reference(
            model, [list(dataset[c]) for c in columns], batch_size=self.args.bank_encode_batch_size,
            cache_dir=self.args.bank_cache_dir or banks_cache_dir(), show_progress_bar=not self.args.disable_tqdm,
            data_fingerprint_=f"{dataset._fingerprint}-{'-'.join(columns)}")

    def _bank_columns(self, dataset) -> list[str]:
        """Anchor and positive columns (view 0 plans batches; view 1 gives calibration its real positives)."""
        return self._input_columns(dataset)[:2]

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        if ROW_ID_COLUMN not in getattr(dataset, "column_names", []):  # evaluation data: the usual sampler
            return super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        if self.args.batch_sampler != BatchSamplers.BATCH_SAMPLER:
            logger.warning("batch_sampler=%s was set explicitly: diversity-window batches are off; hf_divcl still "
                           "logs the batch geometry.", self.args.batch_sampler)
            return super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        processes = world_size() if self.args.gather_across_devices else 1
        if self.args.builder in SELECTORS:
            return self._selecting_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed,
                                           processes)
        mega = max(1, int(self.args.mega_batch_factor))
        builder = self.args.builder
        progress = self.args.window == "progress"
        if progress:  # random until a calibration measures a level that beats random batches
            state = self._resume_dir / STATE_DIR / "progress.json" if self._resume_dir is not None else None
            if self.follower is not None and state is not None and state.is_file():
                self.follower.load_state_dict(json.loads(state.read_text()))
            current = self.follower.current if self.follower is not None else None
            if current is None or current.decision != "window":
                builder = "random"
        # random batches read no embeddings: skip the reference encoding unless the bank is wanted anyway
        need_bank = builder != "random" or mega > 1 or self._user_bank is not None
        self._phase = "bank"
        self.bank = self.build_bank(dataset) if need_bank else None
        if progress:
            window = current.window if builder != "random" else None
            builder = self._window_builder() if window is not None else "random"
        else:
            window = self._resolve_window(batch_size * processes, seed) if builder != "random" or mega > 1 else None
        self._phase = "training"
        sampler = DiversityWindowBatchSampler(
            dataset, batch_size=batch_size * mega, drop_last=drop_last, valid_label_columns=valid_label_columns,
            generator=generator, seed=seed, bank=self.bank, window=None if mega > 1 else window,
            builder="random" if mega > 1 else builder, builder_kwargs=self.args.builder_kwargs,
            temperature=self.args.temperature, processes=processes, on_infeasible=self.args.on_infeasible,
            dedupe=self.args.dedupe)
        if self._resume_dir is not None and (self._resume_dir / STATE_DIR / "sampler.json").is_file():
            sampler.load_state_dict(_load_sampler_state(self._resume_dir / STATE_DIR), skip=False)
        if mega > 1:
            if window is None:
                raise ValueError("mega_batch_factor > 1 needs a window (window='auto' or 'low:high').")
            self.data_collator.select = MegaBatchSelector(self.bank, window, batch_size,
                                                          builder=builder if builder != "random" else "greedy",
                                                          seed=seed)
        self.diversity.window = window
        self.divcl_sampler = sampler
        self._write_window_file(window)
        self._write_run_file(dataset, processes, batch_size)
        return sampler

    def _selecting_sampler(self, dataset, batch_size, drop_last, valid_label_columns, generator, seed, processes):
        """builder='learnability'/'hard': random super-batches of M × B rows; the collator keeps B per step."""
        a = self.args
        mega = int(a.mega_batch_factor) if a.mega_batch_factor > 1 else 4
        window = None
        self._phase = "bank"
        self.bank = self.build_bank(dataset)
        if a.window not in ("progress", "none"):
            window = self._resolve_window(batch_size * processes, seed)
        reference = None
        if a.builder == "learnability":
            reference = build_reference_bank(self, dataset)
        self._phase = "training"
        sampler = DiversityWindowBatchSampler(
            dataset, batch_size=batch_size * mega, drop_last=drop_last, valid_label_columns=valid_label_columns,
            generator=generator, seed=seed, bank=self.bank, window=None, builder="random",
            temperature=a.temperature, processes=processes, on_infeasible=a.on_infeasible, dedupe=a.dedupe)
        if self._resume_dir is not None and (self._resume_dir / STATE_DIR / "sampler.json").is_file():
            sampler.load_state_dict(_load_sampler_state(self._resume_dir / STATE_DIR), skip=False)
        self.selector = LearnabilitySelector(self.bank, batch_size, a.temperature, reference=reference,
                                             chunks=a.learnability_chunks, window=window, seed=seed)
        self.data_collator.select = self.selector
        self.diversity.window = window
        self.divcl_sampler = sampler
        self._write_window_file(window)
        self._write_run_file(dataset, processes, batch_size)
        return sampler

    def _write_run_file(self, dataset, processes: int, batch_size: int) -> None:
        """``divcl_run.json``: the loss, processes, bank, false-negative masking and batch selection of the run."""
        if self.is_world_process_zero():
            loss = self.loss
            run = {"loss": type(loss).__name__ + (f" ({loss.loss_type}{', symmetric' if loss.symmetric else ''})"
                                                  if isinstance(loss, InfoNCELoss) else ""),
                   "processes": processes, "batch_size": batch_size, "bank_source": self.args.bank_source,
                   "train_rows": len(dataset), "dimension": self.bank.dim if self.bank is not None else None,
                   "whitening": self.args.whitening}
            if isinstance(loss, InfoNCELoss) and loss.false_negatives != "none":
                run["false_negatives"] = {"mode": loss.false_negatives, "margin": loss.false_negative_margin,
                                          "reference": loss.get_config_dict()["guide"]}
            if self.selector is not None:
                run["selection"] = self.selection_info()
            atomic_write_text(Path(self.args.output_dir, RUN_INFO_FILE), json.dumps(run, indent=2))

    def selection_info(self) -> dict[str, Any]:
        """How per-step selection chose batches (builder='learnability'/'hard'), for the run file and the card."""
        a, sel = self.args, self.selector
        ref = a.learnability_reference if sel.reference is not None else None
        return {"mode": sel.mode, "super_batch_factor": self.divcl_sampler.batch_size // a.per_device_train_batch_size
                if self.divcl_sampler is not None else None, "chunks": sel.chunks,
                "reference": ref, "reference_rows": len(self.reference_dataset) if self.reference_dataset is not None
                else None, "reference_steps": getattr(self, "reference_steps", None),
                "within_window": sel.window is not None}

    def row_groups(self) -> torch.Tensor:
        """``(N,)`` duplicate group of every training row (for ``false_negatives="duplicates"``), computed once."""
        if getattr(self, "_row_groups", None) is None:
            groups = self.divcl_sampler.row_groups() if self.divcl_sampler is not None else None
            self._row_groups = groups if groups is not None else torch.arange(len(self.train_dataset))
        return self._row_groups

    def _window_builder(self) -> str:
        return self.args.builder if self.args.builder != "random" else "greedy"

    def global_batch_size(self) -> int:
        processes = world_size() if self.args.gather_across_devices else 1
        return self.args.per_device_train_batch_size * processes

    def _write_window_file(self, window: DiversityWindow | None) -> None:
        """``divcl_window.json``: the window in force (or the decision to keep random batches, and why)."""
        if not self.is_world_process_zero():
            return
        a = self.args
        policy = a.window if a.window in ("progress", "auto", "none") else "fixed"
        if a.builder in SELECTORS:  # per-step selection; window='progress' does not apply to it
            policy = a.builder
        info: dict[str, Any] = {"policy": policy,
                                "window": window.to_dict() if window is not None else None,
                                "builder": self.divcl_sampler.builder if self.divcl_sampler is not None else a.builder,
                                "temperature": a.temperature, "global_batch_size": self.global_batch_size(),
                                "mega_batch_factor": max(1, int(a.mega_batch_factor))}
        if a.builder in SELECTORS:
            info["selection"] = self.selection_info() if self.selector is not None else None
            info["reason"] = (f"builder={a.builder!r} selects each step's {self.global_batch_size()} rows from a "
                              "random super-batch" + (" inside the window" if window is not None else ""))
        elif a.window == "progress":
            current = self.follower.current if self.follower is not None else None
            info["decision"] = current.decision if current is not None else "random"
            info["reason"] = current.reason if current is not None else (
                self.calibration_plan.reason if self.calibration_plan is not None and not self.calibration_plan.steps
                else "not calibrated yet")
            info["calibration_plan"] = self.calibration_plan.to_dict() if self.calibration_plan else None
            info["calibrations"] = len(self.follower.history) if self.follower is not None else 0
        elif window is None:
            return
        atomic_write_text(Path(a.output_dir, WINDOW_FILE), json.dumps(info, indent=2))

    # -- progress calibration (window="progress", see hf_divcl.following) ---------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def encode_calibration_sample(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` seeded training rows ``(S,)`` and their anchor embeddings ``(S, d)`` under the current model."""
        n = len(self.train_dataset)
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(size, n)].sort().values
        column = self._bank_columns(self.train_dataset)[0]
        values = self.train_dataset.select(rows.tolist())[column]
        with torch.no_grad():
            emb = self.model.encode(values, batch_size=self.args.bank_encode_batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return rows, emb.float().cpu()

    def collate_rows(self, dataset, rows: list[int]) -> dict[str, Any]:
        """Model inputs for rows of ``dataset``, collated as training batches are (no row ids: nothing is recorded)."""
        batch = self.data_collator([{k: v for k, v in dataset[int(i)].items() if k != ROW_ID_COLUMN} for i in rows])
        batch.pop("row_ids", None)
        return self._prepare_inputs(batch)

    def _features_loss(self, dataset, rows: list[int]) -> torch.Tensor:
        loss = SentenceTransformerTrainer.compute_loss(self, self.model, self.collate_rows(dataset, rows))
        if isinstance(self.loss, InfoNCELoss):
            self.loss.last_output = None
        return loss

    def loss_on_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch of training rows ``(B,)`` (no step, nothing logged or recorded)."""
        return self._features_loss(self.train_dataset, rows.tolist())

    def probe_losses(self) -> list[torch.Tensor]:
        """The loss on each global-batch-sized chunk of the held-out probe set."""
        n, b = len(self.probe_dataset), self.global_batch_size()
        starts = range(0, n - b + 1, b) if n >= b else [0]
        return [self._features_loss(self.probe_dataset, list(range(s, min(s + b, n)))) for s in starts]

    def apply_calibration(self, cal: ProgressCalibration, cut: int | None = None) -> None:
        """Use a calibration's decision: the window with the builder, or random batches; with ``cut``, re-plan the
        current epoch from that global batch on (earlier ones were already handed out)."""
        sampler = self.divcl_sampler
        if sampler is None:
            return
        if cal.decision == "window" and cal.window is not None:
            if self.bank is None:
                self._phase = "bank"
                self.bank = self.build_bank(self.train_dataset)
                self._phase = "training"
                sampler._bank = self.bank
            sampler.set_policy(self._window_builder(), cal.window)
        else:
            sampler.set_policy("random", None)
        self.diversity.window = cal.window if cal.decision == "window" else None
        if cut is not None:
            sampler.replan(cut)
        self._write_window_file(self.diversity.window)

    def _resolve_window(self, global_batch: int, seed: int) -> DiversityWindow | None:
        """The run's window: restored from a checkpoint, given, or calibrated on the bank (curve saved in
        ``output_dir/divcl_calibration.json``)."""
        saved = self._resume_dir / STATE_DIR / "window.json" if self._resume_dir is not None else None
        if saved is not None and saved.is_file():
            return DiversityWindow(**json.loads(saved.read_text()))
        window = self.args.parsed_window()
        if window != "auto":
            return window
        positives = self.bank.all(view=1, dtype=torch.float32) if self.bank.num_views > 1 else None
        cal = calibrate_window(self.bank.all(dtype=torch.float32), global_batch, self.args.temperature, seed=seed,
                               positives=positives, keep_fraction=self.args.window_keep_fraction)
        logger.info("calibrated window: %s", cal.format())
        if self.is_world_process_zero():
            Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
            Path(self.args.output_dir, "divcl_calibration.json").write_text(json.dumps(cal.to_dict(), indent=2))
        return cal.window

    def flush_bank(self) -> None:
        """Write the buffered training-step embeddings into the bank (one host transfer per flush)."""
        if not self._pending or self.bank is None:
            self._pending.clear()
            return
        ids = torch.cat([i for i, _ in self._pending]).cpu()
        emb = torch.cat([e for _, e in self._pending]).float().cpu()
        self._pending.clear()
        self.bank.update(ids, emb, step=self.state.global_step)
        self.bank.source = "training"

    def refresh_bank(self) -> None:
        if self.bank is None or self.train_dataset is None:
            return
        columns = self._bank_columns(self.train_dataset)[:self.bank.num_views]
        self.bank.refresh(self.model, [list(self.train_dataset[c]) for c in columns], step=self.state.global_step,
                          batch_size=self.args.bank_encode_batch_size, show_progress_bar=not self.args.disable_tqdm)
        self.model.train()

    # -- the step ------------------------------------------------------------------------------------------------

    def _capture_hook(self, module, args, output):
        if self._capture is not None and isinstance(output, dict) and "sentence_embedding" in output:
            self._capture.append(output["sentence_embedding"].detach())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        row_ids = inputs.pop("row_ids", None)
        ours = isinstance(self.loss, InfoNCELoss)
        track = row_ids is not None and self.model.training
        if track and not ours:
            self._capture = []
        if row_ids is not None and ours and self.loss.false_negatives == "duplicates":
            self.loss.batch_groups = self.row_groups()[row_ids.cpu()]
        try:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            captured, self._capture = self._capture, None
        loss = result[0] if return_outputs else result
        # one host sync per step, as the Trainer's own logging_nan_inf_filter already does
        if track and not bool(torch.isfinite(loss.detach()).all()):
            zero = self._nonfinite_loss(model, loss, row_ids, captured)
            return (zero, result[1]) if return_outputs else zero
        if track:  # record() inside counts its own time: count the whole of _after_step once
            t0, before = time.perf_counter(), self.diversity.bookkeeping_seconds
            self._after_step(row_ids, captured)
            self.diversity.bookkeeping_seconds = before + time.perf_counter() - t0
        return result

    def _nonfinite_loss(self, model, loss: torch.Tensor, row_ids: torch.Tensor,
                        captured: list[torch.Tensor] | None) -> torch.Tensor:
        """A NaN/Inf loss: name the batch's rows (and those with NaN/Inf embeddings), then stop or skip."""
        n = row_ids.shape[0]
        views: list[torch.Tensor] = []
        out = self.loss.last_output if isinstance(self.loss, InfoNCELoss) else None
        if out is not None:
            self.loss.last_output = None
            views = [out.anchors[out.offset:out.offset + n], out.positives[out.offset:out.offset + n]]
        elif captured:
            flat = torch.cat(captured)
            views = list(flat[:(flat.shape[0] // n) * n].split(n))
        bad = sorted({r for v in views for r in nonfinite_rows(v, row_ids)})
        step = self.state.global_step + 1
        ids = row_ids.detach().cpu().tolist()
        record = {"step": step, "rank": self.args.process_index, "loss": float(loss.detach().float().reshape(-1)[0]),
                  "row_ids": ids, "nonfinite_embedding_rows": bad, "action": self.args.nonfinite_action}
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "divcl_nonfinite.jsonl"), "a") as fh:
            fh.write(json.dumps(record) + "\n")
        what = (f"rows with NaN/Inf embeddings: {bad}" if bad else
                "every embedding is finite (look at the learning rate or the temperature)")
        msg = f"Non-finite loss ({record['loss']}) at step {step}; the batch's rows: {ids}; {what}."
        self.nonfinite_skipped += 1
        if self.args.nonfinite_action == "stop" or self.nonfinite_skipped > self.args.nonfinite_max_skips:
            why = ("Training stopped (nonfinite_action='stop')" if self.args.nonfinite_action == "stop" else
                   f"Training stopped after {self.nonfinite_skipped} non-finite batches (nonfinite_max_skips="
                   f"{self.args.nonfinite_max_skips})")
            raise NonFiniteLossError(f"{msg} {why}; earlier checkpoints and logs are intact. Fix or drop those "
                                     "rows, lower learning_rate, or set nonfinite_action='skip'.",
                                     step=step, row_ids=ids, bad_rows=bad)
        logger.warning("%s Skipped: the batch contributes a zero gradient (nonfinite_action='skip').", msg)
        return sum((p * 0).sum() for p in model.parameters() if p.requires_grad)

    def _after_step(self, row_ids: torch.Tensor, captured: list[torch.Tensor] | None) -> None:
        if isinstance(self.loss, InfoNCELoss) and self.loss.last_output is not None:
            out = self.loss.last_output
            anchors, positives, tau = out.anchors, out.positives, out.temperature
            mask, masked_stats = out.inbatch_negative_mask(), out.masked_stats
            if self.loss.gather_across_devices:
                with torch.no_grad():
                    ids = gather_with_grad(row_ids[:, None])[0][:, 0]
            else:
                ids = row_ids
            self.loss.last_output = None
        else:
            n = row_ids.shape[0]
            mask = masked_stats = None
            if not captured:
                return
            flat = torch.cat(captured)
            if flat.shape[0] < 2 * n:
                return
            anchors, positives = torch.nn.functional.normalize(flat[:2 * n].float(), dim=-1).split(n)
            scale = getattr(self.loss, "scale", None)
            tau = 1.0 / float(scale) if scale else self.args.temperature
            with torch.no_grad():
                anchors = gather_with_grad(anchors)[0]
                positives = gather_with_grad(positives)[0]
                ids = gather_with_grad(row_ids[:, None])[0][:, 0]
        self.diversity.record(anchors, positives, tau, negative_mask=mask, masked_stats=masked_stats)
        if self.bank is not None and self.args.bank_source == "training":
            rows = anchors if self.bank.num_views == 1 else torch.stack([anchors, positives], dim=1)
            self._pending.append((ids, rows.to(torch.float16)))

    # -- logging and checkpoints ---------------------------------------------------------------------------------

    def selection_seconds(self) -> float:
        s = self.divcl_sampler.plan_seconds if self.divcl_sampler is not None else 0.0
        return s + getattr(self.data_collator, "selection_seconds", 0.0)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "eval_loss" not in logs:
            self.flush_bank()
            logs = {**logs, **self.diversity.summary(step=self.state.global_step, bank=self.bank,
                                                     selection_seconds=self.selection_seconds()),
                    PREFIX + "nonfinite_skipped": float(self.nonfinite_skipped)}
            if self.selector is not None:
                logs.update({PREFIX + k: v for k, v in self.selector.summary().items()})
            if self.args.window == "progress" and self.selector is None:
                logs[PREFIX + "window_active"] = float(self.diversity.window is not None)
                logs[PREFIX + "calibration_seconds"] = self.follower.seconds if self.follower is not None else 0.0
        super().log(logs, start_time)
        if any(k.startswith(PREFIX) for k in logs):
            self.diversity.write({"step": self.state.global_step, "epoch": self.state.epoch, **logs})

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """:meth:`Trainer.train`, resuming from the newest *complete* checkpoint (a half-written one is set
        aside, see :mod:`hf_divcl.checkpoints`) and turning out-of-memory failures into advice."""
        resume = resolve_resume_checkpoint(self.args.output_dir, resume_from_checkpoint,
                                           set_aside=self.is_world_process_zero())
        # refuses a checkpoint trained on other data; records this run's id so a later resume never picks another's
        self._run_id = start_run(self.args.output_dir, resume, self._data_identity(),
                                 write=self.is_world_process_zero())
        # the embedding capture (for losses other than InfoNCELoss) lives only while training: the model must not
        # carry a hook that holds the trainer afterwards (copies, pickling, memory)
        hook = self.model.register_forward_hook(self._capture_hook)
        try:
            return super().train(resume_from_checkpoint=resume, trial=trial, **kwargs)
        except Exception as err:
            if isinstance(err, OutOfMemoryAdvice) or not is_out_of_memory(err):
                raise
            complete, _ = complete_checkpoints(self.args.output_dir)
            raise out_of_memory_advice(err, phase=self._phase, step=self.state.global_step,
                                       checkpoint=str(complete[-1]) if complete else None) from err
        finally:
            hook.remove()

    _run_id: str | None = None

    def _data_identity(self) -> dict[str, Any]:
        """What a checkpoint records about its training data (compared on resume, see :mod:`hf_divcl.checkpoints`)."""
        ds = self.train_dataset
        return {"data_fingerprint": getattr(ds, "_fingerprint", None),
                "rows": len(ds) if hasattr(ds, "__len__") else None,
                "columns": [c for c in getattr(ds, "column_names", None) or [] if c != ROW_ID_COLUMN]}

    def _save_checkpoint(self, model, trial) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        self.flush_bank()
        if self.args.should_save and self._run_id is not None:
            write_checkpoint_identity(folder, self._run_id, self._data_identity())
        if self.args.should_save and self.divcl_sampler is not None:
            state_dir = folder / STATE_DIR
            state_dir.mkdir(parents=True, exist_ok=True)
            _save_sampler_state(self.divcl_sampler.state_dict(), state_dir)
            if self.diversity.window is not None:
                (state_dir / "window.json").write_text(json.dumps(self.diversity.window.to_dict()))
            if self.follower is not None:
                (state_dir / "progress.json").write_text(json.dumps(self.follower.state_dict()))
            if self.bank is not None:
                self.bank.save(state_dir / "bank")
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save as sentence-transformers does, but the pickled ``training_args.bin`` never holds the Hub token."""
        token = self.args.hub_token
        self.args.hub_token = None if token is None else "<HUB_TOKEN>"
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.args.hub_token = token

    def _load_from_checkpoint(self, checkpoint_path, *args, **kwargs) -> None:
        self._resume_dir = Path(checkpoint_path)
        return super()._load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def push_to_hub(self, repo_id: str | None = None, *, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload model trained with diversity-window batches (hf_divcl)",
                    endpoint: str | None = None, dataset_description: str | None = None, **kwargs) -> str:
        """Save the model, write ``training_args.json`` and the model card (with both plots) into ``output_dir``
        and upload it with :func:`hf_divcl.hub.push_to_hub` (retries, no pickles, token never written);
        ``revision``, ``retries``, ``backoff`` and ``timeout`` are passed on to it.

        Returns the commit URL. A failed upload leaves ``output_dir`` as it was; call again to retry.
        """
        from .card import write_model_card
        from .hub import push_to_hub as _push

        repo_id = repo_id or self.args.hub_model_id
        if not repo_id:
            raise ValueError("push_to_hub needs a repo id: pass repo_id='namespace/name' or set hub_model_id.")
        out = Path(self.args.output_dir)
        self.save_model(str(out))
        if not self.is_world_process_zero():
            return ""
        (out / "training_args.json").write_text(self.args.to_json_string())  # token fields are masked
        if (out / "diversity_log.jsonl").is_file():
            card_data = getattr(self.model, "model_card_data", None)
            base = getattr(card_data, "base_model", None) or "a sentence-transformers model"
            n = len(self.train_dataset) if self.train_dataset is not None else 0
            write_model_card(out, model=self.model, base_model=base, train_rows=n, repo_id=repo_id,
                             dataset=dataset_description or f"the training set ({n} rows)")
        return _push(out, repo_id, token=token or self.args.hub_token,
                     private=bool(self.args.hub_private_repo if private is None else private), endpoint=endpoint,
                     commit_message=commit_message,
                     **{k: v for k, v in kwargs.items() if k in ("revision", "retries", "backoff", "timeout")})

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        extra = [p for p in self.loss.parameters() if p.requires_grad] if isinstance(self.loss, torch.nn.Module) \
            else []
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        extra = [p for p in extra if id(p) not in known]
        if extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer


def _processor_image_size(model) -> int | None:
    """Side of the images the model's processor produces (``size`` may be an int, a dict or a ``SizeDict``)."""
    from .vision import image_processor_of

    try:
        size = getattr(image_processor_of(model), "size", None)
    except (ValueError, AttributeError):
        return None
    if isinstance(size, int):
        return size
    for key in ("height", "shortest_edge"):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return None


def _save_sampler_state(state: dict[str, Any], directory: Path) -> None:
    """Scalars as JSON, the plan as ``.npy`` (never pickled); JSON goes last so a torn save is never read."""
    for key in ("plan_rows", "plan_sizes"):
        if key in state:
            tmp = directory / f".{key}.npy.tmp"
            with tmp.open("wb") as fh:
                np.save(fh, state[key].numpy(), allow_pickle=False)
            os.replace(tmp, directory / f"{key}.npy")
    scalars = {k: v for k, v in state.items() if k not in ("plan_rows", "plan_sizes")}
    tmp = directory / ".sampler.json.tmp"
    tmp.write_text(json.dumps(scalars, indent=2))
    os.replace(tmp, directory / "sampler.json")


def _load_sampler_state(directory: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((directory / "sampler.json").read_text())
    if "plan_epoch" in state:
        for key in ("plan_rows", "plan_sizes"):
            state[key] = torch.from_numpy(np.load(directory / f"{key}.npy", allow_pickle=False))
    return state

