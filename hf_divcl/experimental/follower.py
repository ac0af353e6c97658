"""A window that follows the model: progress calibrations scheduled over a run, sized to a wall-clock budget.

:class:`DivCLTrainer` with ``batch_policy="progress"`` starts on random batches and calibrates at the
steps that :func:`plan_calibrations` schedules — at the start, early (``recalibrate_early`` of the run) and at
every epoch start, as far as ``budget`` affords — with
:func:`hf_divcl.experimental.progress.calibrate_progress`.
Each calibration either places a window (the builder then plans the rest of the epoch inside it) or keeps random
batches, with the reason. :class:`WindowFollower` runs them from Trainer callbacks; the trajectory of decisions
goes to ``divcl_calibrations.jsonl``, the Trainer logs, the checkpoint and the card.

Cost model, in *batch equivalents* (one forward + backward of a training batch = 1, a forward alone ≈ 1/3):
encoding the candidate sample ``S/(3B)``, the probe gradient ``P/B``, ``n·(1 + A)`` scored batches for ``A``
levels and ``n`` pairs; ``"lookahead"`` adds two probe forwards per scored batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sentence_transformers import SentenceTransformerTrainer
from transformers import TrainerCallback

from .._common import HOLD_OUT_SEED, agree, append_jsonl, hold_out, mix_seed, total_training_steps
from ..diversity.levels import parse_level
from ..losses.infonce import InfoNCELoss
from .cost import calibration_cost
from .progress import ProgressCalibration, StepGain, calibrate_progress, default_progress_levels

if TYPE_CHECKING:
    from ..policies.context import PolicyContext

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATIONS_FILE",
    "CalibrationPlan",
    "ProbeEnv",
    "WindowFollower",
    "calibration_sample",
    "plan_calibrations",
    "probe_losses",
    "rows_loss",
    "schedule_progress",
    "seeded_rows",
]

CALIBRATIONS_FILE = "divcl_calibrations.jsonl"
MIN_PAIRS, MAX_PAIRS = 3, 8


@dataclass
class CalibrationPlan:
    """When to calibrate and how large each calibration is (``steps`` empty: no calibration fits the budget)."""

    steps: list[int]
    n_pairs: int
    levels: list[str]
    probe_rows: int
    sample_rows: int
    cost_per_calibration: float  # batch equivalents
    total_batches: float  # the run's training batches (the budget's denominator)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("steps", "n_pairs", "levels", "probe_rows", "sample_rows",
                                              "cost_per_calibration", "total_batches", "reason")}


def schedule(total_steps: int, steps_per_epoch: int, recalibrate_every: str | int = "epoch",
             recalibrate_early: float = 0.1) -> list[int]:
    """Steps at which to calibrate: the start, early (``recalibrate_early`` of the run), and every epoch start
    (``"epoch"``) or every ``N`` steps."""
    steps = [0]
    if recalibrate_early > 0 and total_steps >= 10:
        steps.append(max(1, round(recalibrate_early * total_steps)))
    if recalibrate_every == "epoch":
        steps += list(range(steps_per_epoch, total_steps, steps_per_epoch)) if steps_per_epoch > 0 else []
    elif isinstance(recalibrate_every, int) and recalibrate_every > 0:
        steps += list(range(recalibrate_every, total_steps, recalibrate_every))
    return sorted(set(s for s in steps if s < total_steps))


def plan_calibrations(*, total_steps: int, steps_per_epoch: int, batch_size: int, train_rows: int,
                      budget: float = 0.05, n_pairs: int | None = None, levels: list[str] | None = None,
                      probe_rows: int = 0, sample_rows: int = 0, recalibrate_every: str | int = "epoch",
                      recalibrate_early: float = 0.1, estimate: str = "first_order",
                      gradient_accumulation_steps: int = 1) -> CalibrationPlan:
    """Schedule the calibrations of a run and size them so that together they cost at most ``budget`` of the
    run's training batches (``n_pairs`` fixed: no budget check). Later calibrations are dropped first; with too
    small a budget for even one, ``steps`` is empty and ``reason`` says how many steps would be needed."""
    probe_rows = probe_rows or 2 * batch_size
    sample_rows = min(train_rows, sample_rows or 8 * batch_size)
    lv = levels or [x.name for x in default_progress_levels(sample_rows, batch_size)]
    for name in lv:
        parse_level(name)  # fail early on a typo
    a = len([x for x in lv if x != "random"])
    steps = sorted(set(s for s in schedule(total_steps, steps_per_epoch, recalibrate_every, recalibrate_early)))
    total_batches = float(total_steps * gradient_accumulation_steps)
    common = {"levels": lv, "probe_rows": probe_rows, "sample_rows": sample_rows, "total_batches": total_batches}
    if n_pairs is not None:
        return CalibrationPlan(steps, n_pairs, cost_per_calibration=calibration_cost(
            batch_size, n_pairs, a, probe_rows, sample_rows, estimate), reason="n_pairs set explicitly", **common)
    while steps:
        per = budget * total_batches / len(steps)
        fixed = calibration_cost(batch_size, 0, a, probe_rows, sample_rows, estimate)
        per_pair = calibration_cost(batch_size, 1, a, probe_rows, sample_rows, estimate) - fixed
        n = min(MAX_PAIRS, math.floor((per - fixed) / per_pair))
        if n >= MIN_PAIRS:
            return CalibrationPlan(steps, n, cost_per_calibration=fixed + n * per_pair,
                                   reason=f"{len(steps)} calibration(s) within {budget:.0%} of the run", **common)
        steps = steps[:-1]
    one = calibration_cost(batch_size, MIN_PAIRS, a, probe_rows, sample_rows, estimate)
    need = math.ceil(one / max(budget, 1e-9) / gradient_accumulation_steps)
    return CalibrationPlan([], 0, cost_per_calibration=one, reason=(
        f"the run is too short for a measured calibration: {total_steps} steps at budget={budget:g} "
        f"afford {budget * total_batches:.1f} batch equivalents, one calibration needs {one:.1f} "
        f"(≥ {need} steps); batches stay random"), **common)


def schedule_progress(dataset, args, settings, global_batch: int):
    """``(training rows, probe rows or None, plan)`` for ``batch_policy="progress"`` (``settings``: the policy):
    schedule the calibrations and, when one fits the budget, hold out the probe rows (never trained on)."""
    n = len(dataset)
    ga = max(1, args.gradient_accumulation_steps)
    s = settings
    probe = s.probe_rows or max(2, min(2 * global_batch, n // 20))
    rest = n - probe
    steps_per_epoch = max(1, math.ceil(max(rest, 1) / global_batch) // ga)
    total = total_training_steps(args, rest, global_batch)
    every = s.recalibrate_every
    plan = plan_calibrations(
        total_steps=total, steps_per_epoch=steps_per_epoch, batch_size=global_batch, train_rows=max(rest, 0),
        budget=s.budget, n_pairs=s.pairs, levels=s.level_list(), probe_rows=probe, sample_rows=s.sample_rows,
        recalibrate_every=int(every) if every.isdigit() else every, recalibrate_early=s.recalibrate_early,
        estimate=s.estimate, gradient_accumulation_steps=ga)
    if plan.steps and rest < max(4 * global_batch, plan.sample_rows // 2):
        plan.steps, plan.reason = [], (f"the training set ({n} rows) is too small to hold out {probe} probe rows "
                                       f"and still draw candidate batches of {global_batch}; batches stay random")
    if not plan.steps:
        logger.warning("batch_policy='progress': %s.", plan.reason)
        return dataset, None, plan
    dataset, probe_dataset = hold_out(dataset, probe, int(args.seed) + HOLD_OUT_SEED)
    logger.info("batch_policy='progress': %d probe rows held out; calibrations at steps %s with %d pairs per level "
                "(%.1f batch equivalents each, %s)", probe, plan.steps, plan.n_pairs, plan.cost_per_calibration,
                plan.reason)
    return dataset, probe_dataset, plan


# -- what a calibration measures on the trainer's model -------------------------------------------------------------

def seeded_rows(n: int, size: int, seed: int) -> torch.Tensor:
    """``min(size, n)`` distinct rows of ``range(n)`` drawn from ``seed``, sorted ``(S,)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(size, n)].sort().values


def calibration_sample(trainer: PolicyContext, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` seeded training rows ``(S,)`` and their anchor embeddings ``(S, d)`` under the current model."""
    rows = seeded_rows(len(trainer.train_dataset), size, seed)
    column = trainer.bank_columns(trainer.train_dataset)[0]
    values = trainer.train_dataset.select(rows.tolist())[column]
    with torch.no_grad():
        emb = trainer.model.encode(values, batch_size=trainer.args.bank_encode_batch_size, convert_to_tensor=True,
                                   normalize_embeddings=True, show_progress_bar=False)
    return rows, emb.float().cpu()


def rows_loss(trainer: PolicyContext, rows: torch.Tensor | list[int], dataset=None) -> torch.Tensor:
    """The training loss on rows of ``dataset`` (default: the training set) as one batch — no step, nothing
    logged, recorded or gathered beyond what the loss itself does."""
    dataset = trainer.train_dataset if dataset is None else dataset
    rows = rows.tolist() if isinstance(rows, torch.Tensor) else rows
    loss = SentenceTransformerTrainer.compute_loss(trainer, trainer.model, trainer.collate_rows(dataset, rows))
    if isinstance(trainer.loss, InfoNCELoss):
        trainer.loss.last_output = None
    return loss


def probe_losses(trainer: PolicyContext, probe) -> list[torch.Tensor]:
    """The loss on each global-batch-sized chunk of the held-out probe set ``probe``."""
    n, b = len(probe), trainer.global_batch_size()
    starts = range(0, n - b + 1, b) if n >= b else [0]
    return [rows_loss(trainer, list(range(s, min(s + b, n))), probe) for s in starts]


class ProbeEnv(contextlib.AbstractContextManager):
    """Model in eval mode, RNG untouched, no cross-process gather, no step recording — restored on exit."""

    def __init__(self, trainer: PolicyContext) -> None:
        self.t = trainer

    def __enter__(self):
        t = self.t
        self.was_training = t.model.training
        self.rng = torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available()
                                         else [])
        self.rng.__enter__()
        t.model.eval()
        self.gather = getattr(t.loss, "gather_across_devices", None)
        if self.gather is not None:
            t.loss.gather_across_devices = False
        aug = getattr(t.data_collator, "augment", None)
        gen = getattr(aug, "_generator", None)
        self.aug_state = (gen, gen.get_state()) if isinstance(gen, torch.Generator) else None
        return self

    def __exit__(self, *exc):
        t = self.t
        if self.aug_state is not None:
            self.aug_state[0].set_state(self.aug_state[1])
        if self.gather is not None:
            t.loss.gather_across_devices = self.gather
        if hasattr(t.loss, "last_output"):
            t.loss.last_output = None
        t.model.train(self.was_training)
        self.rng.__exit__(*exc)
        return False


class WindowFollower(TrainerCallback):
    """Runs the scheduled progress calibrations of a :class:`DivCLTrainer` and applies their decisions."""

    def __init__(self, trainer: PolicyContext, plan: CalibrationPlan, settings, probe) -> None:
        self.trainer = trainer
        self.plan = plan
        self.settings = settings  # the ProgressWindow policy
        self.probe = probe  # the held-out probe rows
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0
        self.passes = {"backward": 0, "probe_forward": 0, "encoded_rows": 0}

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def current(self) -> ProgressCalibration | None:
        return ProgressCalibration.from_dict(self.history[-1]) if self.history else None

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "seconds": self.seconds, "passes": self.passes, "plan": self.plan.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))
        self.seconds = float(state.get("seconds", 0.0))
        self.passes = dict(state.get("passes", self.passes))

    def done_at(self, step: int) -> bool:
        return any(h["step"] == step for h in self.history)

    # -- callbacks -----------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        """Re-place the epoch-start calibrations on the real epoch length (known once the data loader exists:
        under DDP sentence-transformers drops the last partial batch), keeping their number and the budget."""
        if train_dataloader is None or self.settings.recalibrate_every != "epoch" or not self.plan.steps:
            return
        spe = max(1, len(train_dataloader) // max(1, args.gradient_accumulation_steps))
        total = state.max_steps
        planned = schedule(total, spe, "epoch", self.settings.recalibrate_early)
        keep = len(self.plan.steps)
        self.plan.steps = planned[:keep]

    def on_epoch_begin(self, args, state, control, **kwargs):
        step = state.global_step
        if step in self.plan.steps and not self.done_at(step):
            self.calibrate(step, replan=False)  # the new epoch is planned afterwards, with the new policy

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step in self.plan.steps and not self.done_at(step):
            self.calibrate(step, replan=True)

    # -- one calibration -----------------------------------------------------------------------------------------

    def calibrate(self, step: int, replan: bool) -> ProgressCalibration:
        t = self.trainer
        sampler = t.divcl_sampler
        t0 = time.perf_counter()
        payload: list[Any] = [None, None]
        if t.is_world_process_zero():
            cal = self._measure(step)
            payload = [cal.to_dict(), sampler.yielded_global() if (replan and sampler is not None) else None]
        payload = agree(payload)
        cal = ProgressCalibration.from_dict(payload[0])
        record = cal.to_dict()
        self.history.append(record)
        self.apply(cal, cut=payload[1])
        took = time.perf_counter() - t0
        self.seconds += took
        record["wall_seconds"] = took
        logger.warning("%s", cal.format())
        if t.is_world_process_zero():
            append_jsonl(Path(t.args.output_dir, CALIBRATIONS_FILE), record)
        return cal

    def _measure(self, step: int) -> ProgressCalibration:
        t = self.trainer
        a, s = t.args, self.settings
        B = t.global_batch_size()
        common = {"temperature": a.temperature, "batch_size": B, "estimate": s.estimate,
                  "confidence": s.confidence, "step": step}
        try:
            with ProbeEnv(t):
                rows, anchors = calibration_sample(t, self.plan.sample_rows, seed=mix_seed(a.seed, step))
                self.passes["encoded_rows"] += len(rows)
                gain = StepGain([p for p in t.model.parameters() if p.requires_grad],
                                lambda idx: rows_loss(t, rows[idx]), lambda: probe_losses(t, self.probe),
                                a.learning_rate,
                                optimizer=t.optimizer,
                                estimate=s.estimate)
                cal = calibrate_progress(anchors, B, a.temperature, gain, levels=self.plan.levels,
                                         n_pairs=self.plan.n_pairs, confidence=s.confidence,
                                         seed=mix_seed(a.seed, step), estimate=s.estimate, step=step)
                self.passes["backward"] += gain.backward_passes
                self.passes["probe_forward"] += gain.probe_forward_passes
                cal.cost.update({"backward_passes": float(gain.backward_passes),
                                 "probe_forward_passes": float(gain.probe_forward_passes),
                                 "encoded_rows": float(len(rows))})
                return cal
        except (ValueError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and "out of memory" in str(err).lower():
                raise
            logger.warning("Progress calibration at step %d failed (%s); keeping random batches.", step, err)
            return ProgressCalibration("random", None, None, f"calibration failed: {err}", **common)

    def apply(self, cal: ProgressCalibration, cut: int | None = None) -> None:
        """Use a calibration's decision: the trainer switches to the window (with the builder, encoding the bank if
        random batches never needed one) or to random batches; with ``cut``, the current epoch is re-planned from
        that global batch on (earlier ones were already handed out)."""
        self.trainer.apply_window(cal.window if cal.decision == "window" else None, self.settings.builder, cut=cut)
