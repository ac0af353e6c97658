"""``DivCLTrainer``: diversity-aware contrastive training by swapping one class (its arguments are in
:mod:`hf_divcl.training.arguments`).

    >>> trainer = DivCLTrainer(model=SentenceTransformer(...), args=DivCLTrainingArguments(output_dir="out"),
    ...                        train_dataset=pairs)
    >>> trainer.train()

With no hf_divcl-specific argument this trains on random duplicate-free batches (``batch_policy="random"``) with
the project's InfoNCE on the global batch and full diversity logging. The batch policy
(:mod:`hf_divcl.policies`) decides everything about batches; the trainer only drives it. The data flow per run:
dataset → (validated, rows held out by the policy, row ids) → bank (encoded when the policy reads embeddings, then
updated from each step's embeddings, :mod:`hf_divcl.training.recorder`) → builder (:mod:`hf_divcl.planning`) →
:class:`~hf_divcl.sampler.DiversityWindowBatchSampler` → :class:`~hf_divcl.collator.DivCLDataCollator` (per-step
selection when the policy has a selector) → model → loss → :class:`~hf_divcl.training.callbacks.DiversityLogger` →
run files (:mod:`hf_divcl.training.run_files`) → card → Hub. Checkpoints carry the bank, the epoch plan and the
policy's state (:mod:`hf_divcl.training.checkpoints`), so ``resume_from_checkpoint`` continues the same plan.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import torch
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import BatchSamplers

from .._common import ROW_ID_COLUMN, global_batch_size, input_columns, world_size
from ..bank import EmbeddingBank
from ..collator import DivCLDataCollator
from ..diversity.log import PREFIX, use_readable_console
from ..diversity.window import DiversityWindow
from ..losses.false_negatives import duplicate_negative_mask
from ..losses.infonce import InfoNCELoss, check_false_negative_setup, load_guide_model
from ..models.views import image_views
from ..planning.dataset import row_content_ids
from ..planning.sources import SourceSplit
from ..policies.rows import prepare_source_rows, prepare_training_rows
from ..sampler import DiversityWindowBatchSampler
from .arguments import DivCLTrainingArguments
from .bank_keeper import BankControl, build_bank, encode_bank, refresh_bank
from .callbacks import DiversityLogger
from .checkpoints import (
    SavedState,
    complete_checkpoints,
    data_identity,
    resolve_resume_checkpoint,
    start_run,
    writing_checkpoint,
)
from .guards import OutOfMemoryAdvice, handle_nonfinite_loss, is_out_of_memory, out_of_memory_advice
from .recorder import StepRecorder
from .run_files import RunFiles, push_run, write_window_file

logger = logging.getLogger(__name__)

__all__ = ["DivCLTrainer"]


class DivCLTrainer(SentenceTransformerTrainer):
    """A :class:`SentenceTransformerTrainer` that trains on diversity-window batches and logs batch geometry.

    Args (beyond those of :class:`SentenceTransformerTrainer`):
        bank (:class:`~hf_divcl.bank.EmbeddingBank` or `(N, d)` tensor, *optional*): embeddings to plan from;
            default: encode the first input column with the model being trained (cached on disk).
        loss: default :class:`~hf_divcl.losses.infonce.InfoNCELoss` from the arguments; sentence-transformers losses
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
        self.user_bank = bank  # given by the user; else built when the policy needs one
        self.bank: EmbeddingBank | None = None
        self.divcl_sampler: DiversityWindowBatchSampler | None = None
        self.saved = SavedState()  # the resumed checkpoint's hf_divcl state (set when one is loaded)
        self.recorder = StepRecorder(self)
        self._phase = "setup"
        self.nonfinite_skipped = 0
        self.policy = args.policy.fresh()  # this run's own: a policy holds the run's state
        if self.policy.experimental:
            logger.warning("batch_policy=%r is experimental (hf_divcl.experimental): no benchmark supports it yet, "
                           "and it may change.", self.policy.name)
        losses = loss if isinstance(loss, dict) else None
        infonce = all(x is None or isinstance(x, InfoNCELoss) for x in (losses or {None: loss}).values())
        self.sources: SourceSplit | None = None  # several sources (a DatasetDict): which rows are which
        if isinstance(train_dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            train_dataset, self.sources = prepare_source_rows(train_dataset, args, self.policy, model=model,
                                                              infonce=infonce, losses=losses)
        elif train_dataset is not None:
            if losses is not None:
                raise ValueError("loss is a dict (one loss per source) but train_dataset is one data set: pass a "
                                 "DatasetDict whose keys are the loss dict's keys.")
            train_dataset = prepare_training_rows(train_dataset, args, self.policy, model=model, infonce=infonce)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         loss=None if losses is not None else loss, **kwargs)
        self.args: DivCLTrainingArguments
        if losses is not None:  # one loss per source; the collator names each batch's source (`dataset_name`)
            self.loss = {name: self.prepare_loss(fn, self.model) for name, fn in losses.items()}
        self.data_collator.sources = self.sources
        self.source_name: str | None = None  # the current batch's source
        log_file = os.path.join(args.output_dir, args.diversity_log_file) if args.diversity_log_file else None
        self.diversity = DiversityLogger(
            metric=self.policy.metric(),
            log_bands=args.log_bands, log_file=log_file, collapse_threshold=args.collapse_threshold,
            collapse_patience=args.collapse_patience, collapse_action=args.collapse_action,
            is_main_process=self.is_world_process_zero())
        self.add_callback(self.diversity)
        self.add_callback(BankControl(self))
        self.add_callback(RunFiles(self))
        use_readable_console(self.callback_handler, self.diversity.metric)  # one short console line per log
        for callback in self.policy.callbacks(self):
            self.add_callback(callback)
        self._check_false_negatives()

    # -- data, collator, loss --------------------------------------------------------------------------------------

    def get_data_collator(self, model, args, processing_class=None):
        collator = super().get_data_collator(model=model, args=args, processing_class=processing_class)
        if "image" in getattr(model, "modalities", ["text"]):
            collator.augment, collator.to_inputs = image_views(model, args.image_size, args.augment_scale_min,
                                                               args.augment_jitter, args.seed)
        return collator

    def collate_rows(self, dataset, rows: list[int]) -> dict[str, Any]:
        """Model inputs for rows of ``dataset``, collated as training batches are (no row ids: nothing is recorded)."""
        batch = self.data_collator([{k: v for k, v in dataset[int(i)].items() if k != ROW_ID_COLUMN} for i in rows])
        batch.pop("row_ids", None)
        return _to_device(batch, self.args.device)

    def get_default_loss(self, model) -> torch.nn.Module:
        """:class:`InfoNCELoss` with ``loss_kwargs`` (``guide``, a folder there, loaded as a model)."""
        options = dict(self.args.loss_kwargs or {})
        options.pop("guide", None)
        guide = self.guide_model() if options.get("false_negatives") == "mask" else None
        return InfoNCELoss(model, **options, guide=guide)

    def guide_model(self):
        """The ``loss_kwargs["guide"]`` SentenceTransformer (loaded once, on the model's device), or ``None``."""
        path = self.args.loss_option("guide")
        if path is not None and getattr(self, "_guide", None) is None:
            self._guide = load_guide_model(path, device=str(self.args.device))
        return getattr(self, "_guide", None)

    def _check_false_negatives(self) -> None:
        """Before training: masking needs hf_divcl's loss, and a guide must encode a few rows of every column."""
        for loss in self.losses():
            check_false_negative_setup(loss, self.args.loss_option("false_negatives"), self.train_dataset,
                                       self._input_columns)

    def losses(self) -> list[torch.nn.Module]:
        """Every loss of the run (one per source when ``loss`` is a dict)."""
        return list(self.loss.values()) if isinstance(self.loss, dict) else [self.loss]

    @property
    def step_loss(self) -> torch.nn.Module:
        """The loss of the current batch: ``loss``, or its source's entry when ``loss`` is a dict."""
        if isinstance(self.loss, dict):
            return self.loss[self.source_name] if self.source_name in self.loss else next(iter(self.loss.values()))
        return self.loss

    def _input_columns(self, dataset) -> list[str]:
        return input_columns(dataset.column_names, self.data_collator.valid_label_columns)

    def bank_columns(self, dataset) -> list[str]:
        """Anchor and positive columns (view 0 plans batches; view 1 gives calibration its real positives)."""
        return self._input_columns(dataset)[:2]

    # -- bank ------------------------------------------------------------------------------------------------------

    def build_bank(self, dataset, views: int = 2) -> EmbeddingBank:
        """The bank the sampler plans from (see :func:`~hf_divcl.training.bank_keeper.build_bank`)."""
        return build_bank(self, dataset, views)

    def encode_bank(self, model, dataset, views: int = 2) -> EmbeddingBank:
        """``dataset`` encoded by ``model`` (see :func:`~hf_divcl.training.bank_keeper.encode_bank`)."""
        return encode_bank(self, model, dataset, views)

    def flush_bank(self) -> None:
        """Write the buffered training-step embeddings into the bank (one host transfer per flush)."""
        self.recorder.flush(self.bank, self.state.global_step)

    def refresh_bank(self) -> None:
        """Re-encode every training row with the current model (``bank_refresh_epochs``)."""
        refresh_bank(self)

    # -- batch policy and sampler ----------------------------------------------------------------------------------

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        if ROW_ID_COLUMN not in getattr(dataset, "column_names", []):  # evaluation data: the usual sampler
            return super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        if self.args.batch_sampler != BatchSamplers.BATCH_SAMPLER:
            logger.warning("batch_sampler=%s was set explicitly: diversity-window batches are off; hf_divcl still "
                           "logs the batch geometry.", self.args.batch_sampler)
            return super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        saved = self.saved.json("policy")
        if saved is not None:  # the policy's own state (e.g. a window chosen before the checkpoint)
            self.policy.load_state_dict(saved)
        self._phase = "bank"
        setup = self.policy.start(self, dataset, batch_size, seed)
        self._phase = "training"
        self.bank = setup.bank
        self.data_collator.select = setup.selector  # the collator exists before the bank: its selector comes now
        self.diversity.window = setup.logged_window
        a = self.args
        # several sources: the W processes' batches of a step are planned together, so a step holds one source
        processes = world_size() if self.sources is not None else self.processes()
        sampler = DiversityWindowBatchSampler(
            dataset, batch_size=batch_size * setup.factor, drop_last=drop_last,
            valid_label_columns=valid_label_columns, generator=generator, seed=seed, bank=self.bank,
            window=setup.window, builder=setup.builder, builder_kwargs=setup.builder_kwargs,
            temperature=a.temperature, processes=processes, on_infeasible=setup.on_infeasible,
            dedupe=a.dedupe, show_progress=False if a.disable_tqdm else None,
            replan_chunk_rows=setup.replan_chunk_rows, sources=self.sources)
        state = self.saved.sampler()
        if state is not None:
            sampler.load_state_dict(state, skip=False)
        self.policy.attach(sampler)
        self.divcl_sampler = sampler
        return sampler

    def apply_window(self, window: DiversityWindow | None, builder: str = "greedy", cut: int | None = None) -> None:
        """Switch the running sampler to ``window`` planned by ``builder`` (the bank is encoded if random batches
        never needed one) or, with ``None``, to random batches; with ``cut``, re-plan the current epoch from that
        global batch on. The window file is rewritten.

        A bank encoded here holds the anchors only: the window is given, so nothing calibrates it on the positives,
        and planning reads view 0 (on lemma → definition pairs the definitions are most of the encoding)."""
        sampler = self.divcl_sampler
        if sampler is None:
            return
        if window is not None:
            if self.bank is None:
                self._phase = "bank"
                self.bank = self.build_bank(self.train_dataset, views=1)
                self._phase = "training"
                sampler.set_bank(self.bank)
            sampler.set_policy(builder, window)
        else:
            sampler.set_policy("random", None)
        self.diversity.window = window
        if cut is not None:
            sampler.replan(cut)
        self.record_policy()

    def record_policy(self) -> None:
        """Rewrite the window file (``divcl_window.json``) from the policy in force, e.g. after a decision that keeps
        it."""
        write_window_file(self)

    def model_copy(self) -> torch.nn.Module:
        """A deep copy of the model being trained, without the step recorder's embedding capture."""
        with self.recorder.paused():
            return copy.deepcopy(self.model)

    def processes(self) -> int:
        """Processes whose batches form one global batch (1 without ``gather_across_devices``)."""
        return world_size() if self.args.loss_option("gather_across_devices") else 1

    def global_batch_size(self) -> int:
        return global_batch_size(self.args)

    def row_groups(self) -> torch.Tensor:
        """``(N,)`` duplicate group of every training row (for ``false_negatives="duplicates"``), computed once."""
        if getattr(self, "_row_groups", None) is None:
            groups = self.divcl_sampler.row_groups() if self.divcl_sampler is not None else None
            self._row_groups = groups if groups is not None else torch.arange(len(self.train_dataset))
        return self._row_groups

    def content_ids(self) -> torch.Tensor | None:
        """``(N, k)`` content id of every training row's input columns (one id space), computed once; ``None``
        without hard-negative columns (only a third column or later can be a duplicate negative)."""
        if not hasattr(self, "_content_ids"):
            columns = self._input_columns(self.train_dataset)
            text_or_image = len(columns) > 2 and not isinstance(self.train_dataset, datasets.IterableDataset)
            self._content_ids = row_content_ids(self.train_dataset, columns) if text_or_image else None
        return self._content_ids

    # -- the step --------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        row_ids = inputs.pop("row_ids", None)
        self.source_name = self.diversity.source = inputs.get("dataset_name")
        loss_fn = self.step_loss
        ours = isinstance(loss_fn, InfoNCELoss)
        track = row_ids is not None and self.model.training
        if track and not ours:
            self.recorder.start()
        if track:
            self.policy.on_batch(row_ids)
        if row_ids is not None and ours and loss_fn.false_negatives == "duplicates":
            loss_fn.batch_groups = self.row_groups()[row_ids.cpu()]
        contents = self.content_ids() if track else None
        if contents is not None:
            batch_contents = contents[row_ids.cpu()]
            if ours and loss_fn.mask_duplicate_negatives:
                loss_fn.batch_contents = batch_contents
            else:  # another loss (or masking off): counted, not masked
                self.diversity.count_duplicate_negatives(duplicate_negative_mask(batch_contents).sum())
        try:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            captured = self.recorder.stop()
        loss = result[0] if return_outputs else result
        # one host sync per step, as the Trainer's own logging_nan_inf_filter already does
        if track and not bool(torch.isfinite(loss.detach()).all()):
            zero = handle_nonfinite_loss(self, model, loss, row_ids, captured)
            return (zero, result[1]) if return_outputs else zero
        if track:
            self.recorder.record(row_ids, captured)
        return result

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        extra = [p for loss in self.losses() if isinstance(loss, torch.nn.Module)
                 for p in loss.parameters() if p.requires_grad]
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        extra = [p for p in extra if id(p) not in known]
        if extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    # -- logs ------------------------------------------------------------------------------------------------------

    def selection_seconds(self) -> float:
        s = self.divcl_sampler.plan_seconds if self.divcl_sampler is not None else 0.0
        return s + getattr(self.data_collator, "selection_seconds", 0.0)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "eval_loss" not in logs:
            self.flush_bank()
            logs = {**logs, **self.diversity.summary(step=self.state.global_step, bank=self.bank,
                                                     selection_seconds=self.selection_seconds()),
                    PREFIX + "nonfinite_skipped": float(self.nonfinite_skipped),
                    **{PREFIX + k: v for k, v in self.policy.logs().items()}}
        super().log(logs, start_time)
        if any(k.startswith(PREFIX) for k in logs):
            self.diversity.write({"step": self.state.global_step, "epoch": self.state.epoch, **logs})

    # -- train, checkpoints, Hub -----------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """:meth:`Trainer.train`, resuming from the newest *complete* checkpoint (a half-written one is set
        aside, see :mod:`hf_divcl.training.checkpoints`) and turning out-of-memory failures into advice."""
        resume = resolve_resume_checkpoint(self.args.output_dir, resume_from_checkpoint,
                                           set_aside=self.is_world_process_zero())
        # refuses a checkpoint trained on other data; records this run's id so a later resume never picks another's
        self.run_id = start_run(self.args.output_dir, resume, data_identity(self.train_dataset),
                                 write=self.is_world_process_zero())
        self.recorder.attach(self.model)
        try:
            return super().train(resume_from_checkpoint=resume, trial=trial, **kwargs)
        except Exception as err:
            if isinstance(err, OutOfMemoryAdvice) or not is_out_of_memory(err):
                raise
            complete, _ = complete_checkpoints(self.args.output_dir)
            raise out_of_memory_advice(err, phase=self._phase, step=self.state.global_step,
                                       checkpoint=str(complete[-1]) if complete else None) from err
        finally:
            self.recorder.detach()
            if self.divcl_sampler is not None:
                self.divcl_sampler.close()  # no background planning outlives training

    run_id: str | None = None  # set by train(): checkpoints record it

    def _save_checkpoint(self, model, trial) -> None:
        # hf_divcl's state goes first: trainer_state.json, written last by the Trainer, marks the checkpoint complete
        with writing_checkpoint(self, Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"):
            super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, checkpoint_path, *args, **kwargs) -> None:
        self.saved = SavedState(checkpoint_path)
        return super()._load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save as sentence-transformers does, but the pickled ``training_args.bin`` never holds the Hub token."""
        token = self.args.hub_token
        self.args.hub_token = None if token is None else "<HUB_TOKEN>"
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.args.hub_token = token

    def push_to_hub(self, repo_id: str | None = None, *, token: str | None = None, private: bool | None = None,
                    commit_message: str = "Upload model trained with diversity-window batches (hf_divcl)",
                    endpoint: str | None = None, dataset_description: str | None = None, **kwargs) -> str:
        """Save the model, write ``training_args.json`` and the model card (with both plots) into ``output_dir``
        and upload it (:func:`hf_divcl.training.run_files.push_run`: retries, no pickles, token never written);
        ``revision``, ``retries``, ``backoff`` and ``timeout`` are passed on. Returns the commit URL; a failed upload
        leaves ``output_dir`` as it was: call again to retry."""
        return push_run(self, repo_id, token=token, private=private, commit_message=commit_message,
                        endpoint=endpoint, dataset_description=dataset_description, **kwargs)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with every tensor (at any depth of dicts) on ``device``, as the Trainer moves its own batches."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else _to_device(v, device) if isinstance(v, dict) else v
            for k, v in batch.items()}
