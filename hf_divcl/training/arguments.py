"""``DivCLTrainingArguments``: sentence-transformers' training arguments plus the diversity-window options.

Every option has a default and help text, and works from Python, YAML recipes and the command line. The options come
in groups (batch policy: the window, the builder, the per-step selectors; bank; loss; logs and safety; images); the
class docstring documents each one, group by group, in field order.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformerTrainingArguments

from .._common import DIVERSITY_LOG_FILE, world_size
from ..batch_policy.explorer import RECHECK_BLOCKS
from ..batch_policy.selectors import SELECTORS
from ..diversity.window import DiversityWindow

__all__ = ["BANK_SOURCES", "DivCLTrainingArguments"]

BANK_SOURCES = ("training", "reference")
"""Where the bank's embeddings come from (``bank_source``): the training steps' own, or the starting model's."""


@dataclass
class DivCLTrainingArguments(SentenceTransformerTrainingArguments):
    r"""
    Configuration class for [`DivCLTrainer`]: sentence-transformers' training arguments plus the diversity-window
    options, all with defaults.

    Only the options specific to hf_divcl are listed here; every
    [`~sentence_transformers.SentenceTransformerTrainingArguments`] option works too. With
    [`~transformers.HfArgumentParser`] (``hf-divcl train``, the recipes) each one is a command-line flag and a YAML key.
    Options marked *experimental* have no benchmark behind them yet.

    Parameters:
        > Batch policy: the window

        window (`str`, *optional*, defaults to `"progress"`):
            `"progress"` (a window only where it beats random batches), `"explore"` (the first steps are the
            experiment), `"auto"`, `"[metric:]low:high"`, `"none"`.
        window_keep_fraction (`float`, *optional*, defaults to `0.9`):
            `window="auto"`: keep the levels whose mean gradient norm reaches this fraction of the peak.
        calibration_budget (`float`, *optional*, defaults to `0.05`):
            `window="progress"`: the calibrations' cost cap, as a fraction of the run's training batches;
            `window="explore"`: the cap on everything exploring can spend (scored steps, re-checks, probe refreshes).
        calibration_pairs (`int` or `None`, *optional*, defaults to `None`):
            `window="progress"`: scored batches per level, each paired with a random one (default: 3 to 8).
        calibration_levels (`str` or `None`, *optional*, defaults to `None`):
            `window="progress"`: comma-separated candidate levels, e.g. `"local:64,local:256,spread:4"`.
        calibration_estimate (`str`, *optional*, defaults to `"first_order"`):
            `window="progress"`: how a step's gain is estimated, `"first_order"` or `"lookahead"` (step, restore).
        calibration_confidence (`float`, *optional*, defaults to `0.9`):
            `window="progress"`: a level wins only if this two-sided interval of its gain lies above 0.
        calibration_probe_rows (`int`, *optional*, defaults to `0`):
            `window="progress"`: training rows held out as the probe set (0: 2 × the global batch, ≤ 5 % of rows).
        calibration_sample_rows (`int`, *optional*, defaults to `0`):
            `window="progress"`: rows encoded per calibration for candidate batches (0: 8 × the global batch).
        recalibrate_every (`str`, *optional*, defaults to `"epoch"`):
            `window="progress"`: re-calibrate every epoch (`"epoch"`), every N steps (`"N"`) or never (`"none"`).
        recalibrate_early (`float`, *optional*, defaults to `0.1`):
            `window="progress"`: also re-calibrate after this fraction of the steps (0: not).
        explore_alpha (`float`, *optional*, defaults to `0.05`):
            `window="explore"`: chance of a false window over the whole exploration.
        explore_max_fraction (`float`, *optional*, defaults to `0.3`):
            `window="explore"`: the largest fraction of the run's steps spent exploring.
        explore_min_blocks (`int`, *optional*, defaults to `10`):
            `window="explore"`: blocks before the sequential test's first look. A run explores only when its budget
            holds 8 × this many blocks with the probe refreshed at least every `min(this, 10)` blocks.
        explore_probe_temperature (`float`, *optional*, defaults to `0.05`):
            `window="explore"`: temperature of the retrieval probe.
        explore_probe (`str`, *optional*, defaults to `"retrieval"`):
            `window="explore"`: `"retrieval"` (each probe anchor against all probe positives) or `"labels"` (a soft
            k-NN over the probe rows' labels in `explore_probe_label_column`: what class-level k-NN evaluates).
        explore_probe_label_column (`str`, *optional*, defaults to `"label"`):
            `window="explore"` with `explore_probe="labels"`: the column holding each row's class.
        explore_recheck_blocks (`int`, *optional*, defaults to `40`):
            `window="explore"`: after a window is chosen at step s, re-check it against random batches at 2s, 4s…
            for up to this many blocks (first look at half) and keep or drop it by `explore_recheck_rule` (0: never
            re-check). 40 blocks kept twice the gain of 10 where the window truly helps, at 16 batch equivalents a
            re-check instead of 10.
        explore_recheck_rule (`str`, *optional*, defaults to `"ahead"`):
            `window="explore"`: what ends a window at a re-check: `"ahead"` (it is not ahead of random batches with
            confidence: the window must keep earning its place) or `"behind"` (it is behind them with confidence).

        > Batch policy: the builder

        builder (`str`, *optional*, defaults to `"greedy"`):
            `"greedy"`, `"pool"`, `"cluster"`, `"random"` plan the epoch; `"learnability"`, `"hard"` select per step.
        builder_kwargs (`dict`, `str` or `None`, *optional*, defaults to `None`):
            The builder's options as a dict or JSON, e.g. `{"m": 64}` (greedy) or `{"p": 3}` (pool).
        on_infeasible (`str`, *optional*, defaults to `"closest"`):
            A window out of reach: `"closest"` (warn, aim as close as possible) or `"raise"` (alias `"error"`).
        dedupe (`bool`, *optional*, defaults to `True`):
            Keep rows with identical text (or identical image bytes) out of the same batch.
        replan_chunk_rows (`int`, *optional*, defaults to `65536`):
            A window chosen mid-epoch with more rows than this left: the rest of the epoch is planned in parts (the
            first ~4,096 rows at once, the rest in a background thread); 0 plans it in one go.
        mega_batch_factor (`int`, *optional*, defaults to `1`):
            M > 1: draw M × B random rows per step, keep the B that fit the window best (selectors: M = 4).

        > Batch policy: the per-step selectors

        learnability_reference (`str`, *optional*, defaults to `"held_out"`):
            `builder="learnability"`: the reference model, `"held_out"`, `"guide"` or a SentenceTransformer path.
        learnability_reference_rows (`int`, *optional*, defaults to `0`):
            `"held_out"` reference: training rows held out for it (0: 5 %, ≥ 4 global batches, ≤ 2000).
        learnability_reference_steps (`int`, *optional*, defaults to `0`):
            `"held_out"` reference: optimizer steps of its fine-tune (0: 20 % of the run's, at least 10).
        learnability_chunks (`int`, *optional*, defaults to `4`):
            `builder="learnability"` / `"hard"`: chunks per batch, each scored given the rows chosen before it.

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

        temperature (`float`, *optional*, defaults to `0.05`):
            InfoNCE temperature τ (logits = cos/τ); 0.05 is MultipleNegativesRankingLoss's scale 20.
        learnable_temperature (`bool`, *optional*, defaults to `False`):
            Learn log τ (clamped to [0.01, 1]); *experimental*.
        loss_type (`str`, *optional*, defaults to `"infonce"`):
            `"infonce"` (anchor → positives and hard negatives) or `"nt_xent"` (SimCLR, 2N views).
        symmetric_loss (`bool`, *optional*, defaults to `False`):
            InfoNCE in both directions (CLIP-style).
        gather_across_devices (`bool`, *optional*, defaults to `True`):
            Negatives from every process, with gradient: the loss and the window see the global batch.
        whitening (`bool`, *optional*, defaults to `False`):
            ZCA-whiten each global batch before the loss.
        whitening_eps (`float`, *optional*, defaults to `0.05`):
            Whitening shrinkage, relative to the mean variance.
        false_negatives (`str`, *optional*, defaults to `"none"`):
            `"mask"` (GISTEmbed's rule), `"duplicates"` (identical anchor or positive only) or `"none"`.
        false_negative_margin (`float`, *optional*, defaults to `0.0`):
            `"mask"`: mask a negative when ref(anchor, negative) ≥ ref(anchor, positive) − margin.
        false_negative_guide (`str` or `None`, *optional*, defaults to `None`):
            `"mask"`: a SentenceTransformer folder whose embeddings decide the mask; *experimental*.

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

    # batch policy: the window
    window: str = field(default="progress", metadata={
        "help": "Diversity window: 'progress' (default: start on random batches; a window only where measured "
                "held-out progress per step beats random batches with confidence, re-measured as the model moves), "
                "'explore' (the first training steps are the experiment: blocks of steps on random batches and "
                "each candidate level, scored from their own gradients on a retrieval probe, decided by a "
                "sequential test with controlled error), "
                "'auto' (the gradient-magnitude window calibrated once at the start — the paper's proposal, which "
                "trains worse than random batches in our benchmarks), 'low:high' or 'metric:low:high' (metrics: "
                "effective_rank, participation_ratio, mean_sq_cosine, lambda_max), or 'none' (random batches)."})
    window_keep_fraction: float = field(default=0.9, metadata={
        "help": "'auto' window: diversity levels whose mean gradient norm is at least this fraction of the peak."})
    calibration_budget: float = field(default=0.05, metadata={
        "help": "'progress' window: the calibrations together cost at most this fraction of the run's training "
                "batches; 'explore': everything exploring can spend (scored steps, re-checks, probe refreshes) fits "
                "in it. A run too short keeps random batches and says so."})
    calibration_pairs: int | None = field(default=None, metadata={
        "help": "'progress' window: scored batches per level, each paired with a random one (default: as many as "
                "the budget affords, 3 to 8)."})
    calibration_levels: str | None = field(default=None, metadata={
        "help": "'progress' window: comma-separated candidate levels, e.g. 'local:64,local:256,spread:4' "
                "(default: two neighbourhood sizes and one spread level; random is always the baseline)."})
    calibration_estimate: str = field(default="first_order", metadata={
        "help": "'progress' window: 'first_order' (lr·<step direction, probe gradient>) or 'lookahead' (take the "
                "step, evaluate the probe, restore).", "choices": ["first_order", "lookahead"]})
    calibration_confidence: float = field(default=0.9, metadata={
        "help": "'progress' window: a level becomes the window only if the lower end of this two-sided interval "
                "of its gain over random is above 0."})
    calibration_probe_rows: int = field(default=0, metadata={
        "help": "'progress' window: training rows held out as the probe set, never trained on (0: 2 × the global "
                "batch, at most 5 % of the rows)."})
    calibration_sample_rows: int = field(default=0, metadata={
        "help": "'progress' window: rows encoded per calibration to draw candidate batches from (0: 8 × the "
                "global batch)."})
    recalibrate_every: str = field(default="epoch", metadata={
        "help": "'progress' window: re-calibrate at every epoch start ('epoch'), every N steps ('N'), or never "
                "after the early one ('none')."})
    recalibrate_early: float = field(default=0.1, metadata={
        "help": "'progress' window: also re-calibrate after this fraction of the steps (0: not)."})
    explore_alpha: float = field(default=0.05, metadata={
        "help": "'explore' window: the chance, over the whole exploration, of choosing a level when none beats "
                "random batches (Bonferroni over the test's looks and the levels)."})
    explore_max_fraction: float = field(default=0.3, metadata={
        "help": "'explore' window: at most this fraction of the run's steps explores; no decision by then keeps "
                "random batches."})
    explore_min_blocks: int = field(default=10, metadata={
        "help": "'explore' window: blocks (one step per arm each) before the test's first look (>= 2); a run "
                "explores only when calibration_budget holds 8x this many, the probe refreshed at least every "
                "min(this, 10) blocks."})
    explore_probe_temperature: float = field(default=0.05, metadata={
        "help": "'explore' window: temperature of the retrieval probe (each probe anchor against all probe "
                "positives); small values follow ranking metrics such as ndcg@10 closely."})
    explore_probe: str = field(default="retrieval", metadata={
        "help": "'explore' window: the probe the steps are scored on: 'retrieval' (each probe anchor against all "
                "probe positives: what ndcg@k / instance retrieval evaluate) or 'labels' (a soft k-NN over the probe "
                "rows' classes: what class-level k-NN evaluates; needs explore_probe_label_column).",
        "choices": ["retrieval", "labels"]})
    explore_probe_label_column: str = field(default="label", metadata={
        "help": "'explore' window with explore_probe='labels': the column holding each row's class (never an "
                "input of the model)."})
    explore_recheck_blocks: int = field(default=RECHECK_BLOCKS, metadata={
        "help": "'explore' window: after a window is chosen at step s, re-check it at steps 2s, 4s, … with up to "
                "this many blocks (window batch vs random batch, scored like exploration; first look at half); "
                "explore_recheck_rule says when it goes back to random batches (0: never re-check)."})
    explore_recheck_rule: str = field(default="ahead", metadata={
        "help": "'explore' window: what ends a window at a re-check: 'ahead' (default: the window is not ahead of "
                "random batches with confidence) or 'behind' (the window is behind random batches with confidence).",
        "choices": ["ahead", "behind"]})

    # batch policy: the builder
    builder: str = field(default="greedy", metadata={
        "help": "Batch builder: greedy (Greedy-m), pool (Pool-P), cluster (k-means mix) or random, aiming at the "
                "window; or a per-step selector from a super-batch of mega_batch_factor × B random rows: "
                "'learnability' (JEST-style joint selection by learner loss − reference loss; within the window "
                "when window is 'auto' or 'low:high') or 'hard' (learner loss alone).",
        "choices": ["greedy", "pool", "cluster", "random", "learnability", "hard"]})
    builder_kwargs: dict | str | None = field(default=None, metadata={
        "help": "Builder options as a dict or JSON, e.g. '{\"m\": 64}' (greedy) or '{\"p\": 3}' (pool)."})
    on_infeasible: str = field(default="closest", metadata={
        "help": "When the window is out of reach on this data: 'closest' (warn, aim as close as possible) or "
                "'raise' (alias 'error': stop with the measured range).", "choices": ["closest", "raise", "error"]})
    dedupe: bool = field(default=True, metadata={
        "help": "Keep rows with identical text (or identical image bytes) out of the same batch."})
    replan_chunk_rows: int = field(default=65_536, metadata={
        "help": "When a window is chosen mid-epoch and more rows than this are left, the rest of the epoch is "
                "planned in parts (the first ~4,096 rows at once, the rest in a background thread), so training "
                "goes on within about a second; 0: plan the rest in one go."})
    mega_batch_factor: int = field(default=1, metadata={
        "help": "Mega-batch mode (M > 1): the sampler draws M×B random rows per step and the collator keeps the B "
                "whose bank embeddings best fit the window (or, with builder='learnability'/'hard', the most "
                "learnable / hardest; those default to M = 4); one epoch then trains on 1/M of the rows."})

    # batch policy: per-step selectors
    learnability_reference: str = field(default="held_out", metadata={
        "help": "builder='learnability': the reference model. 'held_out' (a copy of the starting model fine-tuned "
                "briefly on a held-out slice of the training rows, never trained on by the run), 'guide' (the "
                "false-negative guide model) or a path to a SentenceTransformer folder."})
    learnability_reference_rows: int = field(default=0, metadata={
        "help": "learnability_reference='held_out': training rows held out for the reference (0: 5 % of the rows, "
                "at least 4 global batches, at most 2000)."})
    learnability_reference_steps: int = field(default=0, metadata={
        "help": "learnability_reference='held_out': optimizer steps of the reference fine-tune (0: 20 % of the "
                "run's steps, at least 10)."})
    learnability_chunks: int = field(default=4, metadata={
        "help": "builder='learnability'/'hard': chunks per batch; each chunk is scored given the rows chosen "
                "before it."})

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
    temperature: float = field(default=0.05, metadata={
        "help": "InfoNCE temperature τ (logits = cos/τ); 0.05 equals MultipleNegativesRankingLoss's scale 20."})
    learnable_temperature: bool = field(default=False, metadata={
        "help": "Learn log τ (clamped to [0.01, 1]). (experimental: no benchmark supports it yet)"})
    loss_type: str = field(default="infonce", metadata={
        "help": "'infonce' (anchor → positives, + hard-negative columns) or 'nt_xent' (SimCLR, 2N views).",
        "choices": ["infonce", "nt_xent"]})
    symmetric_loss: bool = field(default=False, metadata={"help": "InfoNCE in both directions (CLIP-style)."})
    gather_across_devices: bool = field(default=True, metadata={
        "help": "Negatives from every process (with gradient): the loss and the window see the global batch."})
    whitening: bool = field(default=False, metadata={"help": "ZCA-whiten each global batch before the loss."})
    whitening_eps: float = field(default=0.05, metadata={"help": "Whitening shrinkage relative to mean variance."})
    false_negatives: str = field(default="none", metadata={
        "help": "'mask': remove from each anchor's softmax the in-batch negatives whose reference similarity to it "
                "reaches the positive's minus false_negative_margin (GISTEmbed's rule; the reference is the model's "
                "own embeddings, detached, or false_negative_guide); 'duplicates': remove only the certain ones, "
                "in-batch rows with an identical anchor or positive (e.g. the same caption); 'none': keep all.",
        "choices": ["none", "mask", "duplicates"]})
    false_negative_margin: float = field(default=0.0, metadata={
        "help": "false_negatives='mask': a negative is masked when ref(anchor, negative) ≥ ref(anchor, positive) − "
                "margin (cosine units, in [-2, 2]); 0 masks those the reference ranks above the positive, a larger "
                "margin masks more."})
    false_negative_guide: str | None = field(default=None, metadata={
        "help": "false_negatives='mask': path of a SentenceTransformer whose embeddings decide what is masked "
                "(GISTEmbed's guide; checked on a few rows before training). Default: the model's own embeddings, "
                "detached. (experimental: no benchmark supports it yet)"})

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
        if isinstance(self.builder_kwargs, str):
            try:
                self.builder_kwargs = json.loads(self.builder_kwargs) if self.builder_kwargs.strip() else None
            except json.JSONDecodeError as err:
                raise ValueError(f"builder_kwargs must be a JSON object, got {self.builder_kwargs!r} "
                                 f"({err}).") from None
        if self.builder_kwargs is not None and not isinstance(self.builder_kwargs, dict):
            raise ValueError(f"builder_kwargs must be a dict, got {type(self.builder_kwargs).__name__}.")
        for name in ("builder", "loss_type", "on_infeasible", "collapse_action", "nonfinite_action",
                     "calibration_estimate", "false_negatives"):
            choices = type(self).__dataclass_fields__[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}.")
        if self.bank_source not in BANK_SOURCES:
            raise ValueError(f"bank_source must be one of {BANK_SOURCES}, got {self.bank_source!r}.")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if not (math.isfinite(self.false_negative_margin) and -2 <= self.false_negative_margin <= 2):
            raise ValueError(f"false_negative_margin must be a finite number in [-2, 2] (cosine units), got "
                             f"{self.false_negative_margin}.")
        if self.window not in ("auto", "none", "progress", "explore"):
            DiversityWindow.parse(self.window)  # fail now, not at the first epoch
        if self.window == "none" and self.builder not in ("random", *SELECTORS):
            raise ValueError(f"builder={self.builder!r} aims batches at a window; window='none' only goes with "
                             "builder='random'. Use window='progress' to calibrate one.")
        if not 0 <= self.calibration_budget <= 1:
            raise ValueError(f"calibration_budget must be in [0, 1], got {self.calibration_budget}.")
        if self.calibration_pairs is not None and self.calibration_pairs < 2:
            raise ValueError(f"calibration_pairs must be >= 2 (a confidence interval needs two pairs), got "
                             f"{self.calibration_pairs}.")
        if not 0 < self.calibration_confidence < 1:
            raise ValueError(f"calibration_confidence must be in (0, 1), got {self.calibration_confidence}.")
        if self.calibration_probe_rows and self.calibration_probe_rows < 2:
            raise ValueError(f"calibration_probe_rows must be 0 (automatic) or >= 2 (a contrastive loss needs two "
                             f"pairs), got {self.calibration_probe_rows}.")
        if not 0 <= self.recalibrate_early < 1:
            raise ValueError(f"recalibrate_early must be in [0, 1), got {self.recalibrate_early}.")
        every = str(self.recalibrate_every).strip().lower()
        if every not in ("epoch", "none") and not (every.isdigit() and int(every) > 0):
            raise ValueError(f"recalibrate_every must be 'epoch', 'none' or a number of steps > 0, got "
                             f"{self.recalibrate_every!r}.")
        self.recalibrate_every = every
        if self.false_negative_guide is not None and self.false_negatives != "mask" \
                and not (self.builder == "learnability" and self.learnability_reference == "guide"):
            raise ValueError("false_negative_guide serves false-negative masking (false_negatives='mask') or the "
                             "learnability reference (learnability_reference='guide'); set one of them.")
        if self.false_negative_guide is not None and not Path(self.false_negative_guide).is_dir():
            raise ValueError(f"false_negative_guide={self.false_negative_guide!r} is not a folder; give the path of "
                             "a saved SentenceTransformer (model.save(path)).")
        if self.learnability_reference_rows < 0 or self.learnability_reference_steps < 0:
            raise ValueError("learnability_reference_rows and learnability_reference_steps must be >= 0 (0: "
                             "automatic).")
        if self.learnability_chunks < 1:
            raise ValueError(f"learnability_chunks must be >= 1, got {self.learnability_chunks}.")
        if self.builder == "learnability" and self.learnability_reference == "guide" \
                and self.false_negative_guide is None:
            raise ValueError("learnability_reference='guide' needs false_negative_guide='path/to/model' (or use "
                             "'held_out', or a model path).")
        if self.builder == "learnability" and self.learnability_reference not in ("held_out", "guide") \
                and not Path(self.learnability_reference).is_dir():
            raise ValueError(f"learnability_reference must be 'held_out', 'guide' or a SentenceTransformer folder; "
                             f"{self.learnability_reference!r} is neither (no such folder).")
        if self.calibration_levels:
            from ..diversity.levels import parse_level

            for name in self.calibration_levels.split(","):
                parse_level(name.strip())
        if self.replan_chunk_rows < 0:
            raise ValueError(f"replan_chunk_rows must be >= 0 (0: re-plan the rest of an epoch in one go), got "
                             f"{self.replan_chunk_rows}.")
        if self.mega_batch_factor < 1:
            raise ValueError(f"mega_batch_factor must be >= 1, got {self.mega_batch_factor}.")
        if not 0 < self.explore_alpha < 1:
            raise ValueError(f"explore_alpha must be in (0, 1), got {self.explore_alpha}.")
        if not 0 < self.explore_max_fraction <= 1:
            raise ValueError(f"explore_max_fraction must be in (0, 1], got {self.explore_max_fraction}.")
        if self.explore_min_blocks < 2:
            raise ValueError(f"explore_min_blocks must be >= 2 (a paired test needs two blocks), got "
                             f"{self.explore_min_blocks}.")
        if self.explore_recheck_rule not in ("ahead", "behind"):
            raise ValueError(f"explore_recheck_rule must be 'ahead' or 'behind', got {self.explore_recheck_rule!r}.")
        if self.explore_probe not in ("retrieval", "labels"):
            raise ValueError(f"explore_probe must be 'retrieval' or 'labels', got {self.explore_probe!r}.")
        if self.explore_recheck_blocks < 0 or self.explore_recheck_blocks == 1:
            raise ValueError(f"explore_recheck_blocks must be 0 (no re-checks) or >= 2 (a paired test needs two "
                             f"blocks), got {self.explore_recheck_blocks}.")
        if not self.explore_probe_temperature > 0:
            raise ValueError(f"explore_probe_temperature must be > 0, got {self.explore_probe_temperature}.")
        if self.window == "explore" and (self.builder in SELECTORS or self.mega_batch_factor > 1):
            raise ValueError("window='explore' compares whole batches drawn at diversity levels; it does not combine "
                             "with per-step selectors (builder='learnability'/'hard') or mega_batch_factor > 1.")
        if self.mega_batch_factor > 1 and self.window == "progress" and self.builder not in SELECTORS:
            raise ValueError("mega_batch_factor > 1 selects against a fixed window: set window='auto' or "
                             "'low:high' with it (window='progress' starts on random batches).")

    def parsed_window(self) -> DiversityWindow | str | None:
        return None if self.window == "none" else self.window if self.window in ("auto", "progress", "explore") else \
            DiversityWindow.parse(self.window)
