"""``DivCLTrainingArguments``: sentence-transformers' training arguments plus hf_divcl's options.

Every option has a default and help text, and works from Python, YAML recipes and the command line. One option
chooses the batches (``batch_policy``, like sentence-transformers' ``batch_sampler``); the policy's own settings live
on the policy (``batch_policy_kwargs``), the loss's on the loss (``loss_kwargs``). The rest are the bank, the logs
and safety nets, and image views.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformerTrainingArguments

from .._common import DIVERSITY_LOG_FILE, RENAMED, parse_json_object, world_size
from ..losses.false_negatives import check_false_negatives
from ..losses.infonce import LOSS_TYPES, InfoNCELoss
from ..policies.base import BatchPolicy
from ..policies.registry import resolve_policy

__all__ = ["BANK_SOURCES", "LOSS_OPTIONS", "DivCLTrainingArguments", "check_renamed"]

BANK_SOURCES = ("training", "reference")
"""Where the bank's embeddings come from (``bank_source``): the training steps' own, or the starting model's."""

LOSS_OPTIONS: dict[str, Any] = {
    name: p.default for name, p in inspect.signature(InfoNCELoss.__init__).parameters.items()
    if name not in ("self", "model")}
"""What ``loss_kwargs`` accepts (the default :class:`~hf_divcl.losses.infonce.InfoNCELoss`'s options) and their
defaults; ``guide`` is a SentenceTransformer folder here (loaded by the trainer)."""

def check_renamed(options: Any) -> None:
    """Fail, naming the new spelling, when ``options`` (names) hold an option that moved."""
    moved = [name for name in options if name in RENAMED]
    if moved:
        lines = "\n".join(f"  {name}=... is now {RENAMED[name]}" for name in moved)
        raise TypeError(f"DivCLTrainingArguments has no option {', '.join(map(repr, moved))}: batch policies take "
                        f"their settings in batch_policy_kwargs and the loss in loss_kwargs.\n{lines}")


def check_loss_kwargs(kwargs: dict[str, Any]) -> None:
    """Fail at argument time on a loss option InfoNCELoss does not have, or a value it would refuse."""
    import difflib

    unknown = [k for k in kwargs if k not in LOSS_OPTIONS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(LOSS_OPTIONS), n=2, cutoff=0.5)
            hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise ValueError(f"loss_kwargs has no option {', '.join(hints)}; InfoNCELoss takes {', '.join(LOSS_OPTIONS)}.")
    t = kwargs.get("temperature", LOSS_OPTIONS["temperature"])
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"loss_kwargs: temperature must be a finite number > 0, got {t!r}.")
    if kwargs.get("loss_type", "infonce") not in LOSS_TYPES:
        raise ValueError(f"loss_kwargs: loss_type must be one of {LOSS_TYPES}, got {kwargs['loss_type']!r}.")
    mode = kwargs.get("false_negatives", "none")
    margin = kwargs.get("false_negative_margin", 0.0)
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and -2 <= margin <= 2):
        raise ValueError(f"loss_kwargs: false_negative_margin must be a finite number in [-2, 2] (cosine units), "
                         f"got {margin}.")
    check_false_negatives(mode, margin)
    guide = kwargs.get("guide")
    if guide is not None and not Path(str(guide)).is_dir():
        raise ValueError(f"loss_kwargs: guide={guide!r} is not a folder; give the path of a saved SentenceTransformer "
                         "(model.save(path)).")


@dataclass
class DivCLTrainingArguments(SentenceTransformerTrainingArguments):
    r"""
    Configuration class for [`DivCLTrainer`]: sentence-transformers' training arguments plus hf_divcl's options,
    all with defaults.

    Only the options specific to hf_divcl are listed here; every
    [`~sentence_transformers.SentenceTransformerTrainingArguments`] option works too. With
    [`~transformers.HfArgumentParser`] (``hf-divcl train``, the recipes) each one is a command-line flag and a YAML key.
    Options marked *experimental* have no benchmark behind them yet.

    Parameters:
        > Batch policy

        batch_policy (`str`, *optional*, defaults to `"random"`):
            A name (`"random"`, `"window"`; experimental: `"auto"`, `"progress"`, `"explore"`, `"learnability"`,
            `"hard"`, `"mega_batch"`), a `BatchPolicy` class or an instance.
        batch_policy_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            The policy's settings as a dict or JSON, e.g. `{"window": "12:20", "builder": "pool"}`.
        dedupe (`bool`, *optional*, defaults to `True`):
            Keep rows with identical text (or identical image bytes) out of the same batch.
        source_mix (`float`, *optional*, defaults to `0.0`):
            Several sources (a `DatasetDict`): the fraction of each batch's rows dealt out at random across the
            epoch's batches. 0 draws every batch from one source (sentence-transformers' way; the order of the
            sources' batches is `multi_dataset_batch_sampler`: proportional or round robin); 1 mixes them fully.

        > Bank

        bank_source (`str`, *optional*, defaults to `"training"`):
            `"training"` (updated from the training steps' embeddings) or `"reference"` (the starting model's).
        bank_refresh_epochs (`int`, *optional*, defaults to `0`):
            Re-encode the whole data set every k epochs (0: never); *experimental*.
        bank_cache_dir (`str` or `None`, *optional*, defaults to `None`):
            Cache of reference encodings (default: `$HF_DIVCL_CACHE` or `~/.cache/hf_divcl/banks`).
        bank_encode_batch_size (`int`, *optional*, defaults to `64`):
            Batch size of the reference encoding.

        > Loss

        loss_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            Options of the default `InfoNCELoss` as a dict or JSON, e.g. `{"temperature": 0.05, "symmetric": true}`.

        > Logs and safety

        log_bands (`bool`, *optional*, defaults to `True`):
            Log exact per-anchor gradient norms and their spectral bands at every logging step.
        diversity_log_file (`str`, *optional*, defaults to `"diversity_log.jsonl"`):
            JSON-lines log of every logging step, in `output_dir` (`""` disables it).
        collapse_threshold (`float`, *optional*, defaults to `1.5`):
            A batch whose effective rank is below this counts as collapsed (0 disables the alarm).
        collapse_patience (`int`, *optional*, defaults to `20`):
            Collapsed steps in a row that raise the alarm.
        collapse_action (`str`, *optional*, defaults to `"warn"`):
            `"warn"` or `"stop"` (finish the current step, save, and end training).
        nonfinite_action (`str`, *optional*, defaults to `"stop"`):
            A NaN/Inf loss: `"stop"` (raise, naming the step and rows) or `"skip"` (a zero gradient, logged).
        nonfinite_max_skips (`int`, *optional*, defaults to `10`):
            `nonfinite_action="skip"`: stop anyway after this many skipped batches.
        logging_steps (`float`, *optional*, defaults to `10`):
            Log loss, diversity and bands every N steps; a float < 1 is a fraction of the total steps.

        > Images

        image_size (`int` or `None`, *optional*, defaults to `None`):
            Side of augmented image views (default: the model's image processor size).
        augment_scale_min (`float`, *optional*, defaults to `0.3`):
            Smallest random-resized-crop area fraction.
        augment_jitter (`float`, *optional*, defaults to `0.4`):
            Brightness/contrast jitter strength.
    """

    # batch policy
    batch_policy: str = field(default="random", metadata={
        "help": "How batches are chosen: 'random' (default: random duplicate-free batches with every diagnostic), "
                "'window' (every batch planned inside a fixed diversity window by Greedy-m, Pool-P or cluster); "
                "experimental (hf_divcl.experimental, no benchmark supports them yet): 'auto', 'progress', "
                "'explore', 'learnability', 'hard', 'mega_batch'. From Python also a BatchPolicy class or "
                "instance."})
    batch_policy_kwargs: dict | str | None = field(default=None, metadata={
        "help": "The batch policy's settings as a dict or JSON, e.g. '{\"window\": \"12:20\", \"builder\": "
                "\"pool\"}' (batch_policy='window') or '{\"budget\": 0.1}' (batch_policy='explore')."})
    dedupe: bool = field(default=True, metadata={
        "help": "Keep rows with identical text (or identical image bytes) out of the same batch."})
    source_mix: float = field(default=0.0, metadata={
        "help": "Several sources (a DatasetDict): the fraction of each batch's rows dealt out at random across the "
                "epoch's batches; 0 (default) draws every batch from one source, as sentence-transformers does "
                "(multi_dataset_batch_sampler orders the sources' batches), 1 mixes the sources fully."})

    # bank
    bank_source: str = field(default="training", metadata={
        "help": "'training': encode once with the starting model, then update each row from the training steps' "
                "own embeddings (no extra forward passes); 'reference': keep the starting model's encoding.",
        "choices": list(BANK_SOURCES)})
    bank_refresh_epochs: int = field(default=0, metadata={
        "help": "Re-encode the whole data set every k epochs (0: never)."
                " (experimental: no benchmark supports it yet)"})
    bank_cache_dir: str | None = field(default=None, metadata={
        "help": "Cache of reference encodings keyed by model and data fingerprints (default: "
                "$HF_DIVCL_CACHE or ~/.cache/hf_divcl/banks)."})
    bank_encode_batch_size: int = field(default=64, metadata={"help": "Batch size of the reference encoding."})

    # loss
    loss_kwargs: dict | str | None = field(default=None, metadata={
        "help": "Options of the default InfoNCELoss as a dict or JSON: temperature (0.05, MultipleNegativesRanking"
                "Loss's scale 20), learnable_temperature, loss_type ('infonce' or 'nt_xent'), symmetric, "
                "gather_across_devices (true), whitening, whitening_eps, false_negatives ('none', 'mask', "
                "'duplicates'), false_negative_margin, guide (a SentenceTransformer folder for 'mask')."})

    # logs and safety
    log_bands: bool = field(default=True, metadata={
        "help": "Log exact per-anchor gradient norms and their spectral bands at every logging step."})
    diversity_log_file: str = field(default=DIVERSITY_LOG_FILE, metadata={
        "help": "JSON-lines log of every logging step, in output_dir ('' to disable)."})
    collapse_threshold: float = field(default=1.5, metadata={
        "help": "Collapse alarm: effective rank of the training batch below this value counts as collapsed "
                "(0 disables)."})
    collapse_patience: int = field(default=20, metadata={"help": "Collapsed steps in a row that raise the alarm."})
    collapse_action: str = field(default="warn", metadata={
        "help": "'warn' or 'stop' (finish the current step, save, and end training).", "choices": ["warn", "stop"]})
    nonfinite_action: str = field(default="stop", metadata={
        "help": "A NaN/Inf loss: 'stop' (raise NonFiniteLossError naming the step and the batch's row ids; "
                "checkpoints so far stay intact) or 'skip' (the batch contributes a zero gradient; logged in "
                "divcl_nonfinite.jsonl).", "choices": ["stop", "skip"]})
    nonfinite_max_skips: int = field(default=10, metadata={
        "help": "With nonfinite_action='skip': stop anyway after this many skipped batches."})
    logging_steps: float = field(default=10, metadata={
        "help": "Log (loss, diversity, bands) every N steps; a float < 1 is a fraction of the total steps."})

    # images
    image_size: int | None = field(default=None, metadata={
        "help": "Side of augmented image views (default: the model's image processor size); recipes also build "
                "the tiny-vit / tiny-clip encoders for it (default 28)."})
    augment_scale_min: float = field(default=0.3, metadata={"help": "Smallest random-resized-crop area fraction."})
    augment_jitter: float = field(default=0.4, metadata={"help": "Brightness/contrast jitter strength."})

    def __post_init__(self) -> None:
        if world_size() > 1 and not self.use_cpu and not torch.cuda.is_available() \
                and not os.environ.get("ACCELERATE_USE_CPU"):
            # `accelerate launch --multi_gpu` on a machine without GPUs: without this the Trainer would run each
            # process as a separate single-process job (no DDP, every rank saving).
            self.use_cpu = True
        super().__post_init__()
        self.loss_kwargs = parse_json_object(self.loss_kwargs, "loss_kwargs") or None
        check_loss_kwargs(self.loss_kwargs or {})
        policy = resolve_policy(self.batch_policy, self.batch_policy_kwargs)
        if not isinstance(self.batch_policy, str):  # a class or an instance: keep a name and settings that serialise
            self.batch_policy, self.batch_policy_kwargs = policy.name, policy.settings()
        else:
            self.batch_policy = self.batch_policy.strip()
            self.batch_policy_kwargs = parse_json_object(self.batch_policy_kwargs, "batch_policy_kwargs") or None
        self._policy = policy
        for name in ("collapse_action", "nonfinite_action"):
            choices = type(self).__dataclass_fields__[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}.")
        if not (isinstance(self.source_mix, (int, float)) and 0.0 <= self.source_mix <= 1.0):
            raise ValueError(f"source_mix must be in [0, 1] (0: one source per batch, 1: fully mixed), got "
                             f"{self.source_mix!r}.")
        if self.bank_source not in BANK_SOURCES:
            raise ValueError(f"bank_source must be one of {BANK_SOURCES}, got {self.bank_source!r}.")
        if self.loss_option("guide") is not None and self.loss_option("false_negatives") != "mask" \
                and not policy.uses_guide():
            raise ValueError("loss_kwargs['guide'] serves false-negative masking (loss_kwargs={'false_negatives': "
                             "'mask'}) or the learnability reference (batch_policy='learnability' with "
                             "reference='guide'); set one of them.")
        policy.check(self)

    @property
    def policy(self) -> BatchPolicy:
        """The batch policy these arguments choose (a fresh instance per trainer: :meth:`BatchPolicy.fresh`)."""
        return self._policy

    def loss_option(self, name: str) -> Any:
        """The default loss's option ``name``: from ``loss_kwargs``, else InfoNCELoss's default."""
        return (self.loss_kwargs or {}).get(name, LOSS_OPTIONS[name])

    @property
    def temperature(self) -> float:
        """τ of the default loss (``loss_kwargs["temperature"]``, 0.05 unless set)."""
        return float(self.loss_option("temperature"))


_dataclass_init = DivCLTrainingArguments.__init__


@functools.wraps(_dataclass_init)
def _init(self, *args: Any, **kwargs: Any) -> None:
    check_renamed(kwargs)
    _dataclass_init(self, *args, **kwargs)


DivCLTrainingArguments.__init__ = _init
