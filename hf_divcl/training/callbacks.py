"""Diversity logging and the collapse alarm.

:class:`DiversityLogger` keeps, per training step, the global batch's diversity metrics as device tensors (no
host sync in the step) and the last batch's embeddings; at every logging step it summarises them — diversity
means, fraction of batches inside the window, exact per-anchor gradient norms (mean, percentiles) against the
predicted bands, time spent in selection versus training, bank staleness — into the Trainer's ``log`` (hence
every ``report_to`` integration) and one line of ``diversity_log.jsonl``. The collapse alarm fires when the
effective rank stays below a threshold for ``patience`` consecutive steps.

The log file's format (reader, console line) lives in :mod:`hf_divcl.diversity.log`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback

from .._common import DIVERSITY_LOG_FILE
from ..diversity.bands import gradient_bands
from ..diversity.log import (
    PREFIX,
    read_diversity_log,
    use_readable_console,
)
from ..diversity.metrics import DIVERSITY_METRICS, batch_diversity
from ..losses.gather import distributed_ready
from ..losses.infonce import loss_settings, loss_temperature

logger = logging.getLogger(__name__)

__all__ = ["DiversityCallback", "DiversityLogger", "gather_steps"]

_STEP_METRICS = DIVERSITY_METRICS


class DiversityLogger(TrainerCallback):
    """Per-step batch geometry → per-logging-step summary (see module docstring).

    Args:
        metric: the window's diversity metric (one of :data:`hf_divcl.diversity.window.METRICS`).
        log_bands: compute gradient bands of the last batch at each logging step.
        log_file: path of the JSONL log (written by the main process only); ``None`` disables it.
        collapse_threshold: effective rank under which a step counts as collapsed (``0`` disables the alarm).
        collapse_patience: consecutive collapsed steps that trigger the alarm.
        collapse_action: ``"warn"`` or ``"stop"`` (ends training cleanly after the current step, saving as usual).
    """

    def __init__(self, *, metric: str = "effective_rank", log_bands: bool = True, log_file: str | None = None,
                 collapse_threshold: float = 0.0, collapse_patience: int = 20, collapse_action: str = "warn",
                 is_main_process: bool = True) -> None:
        if collapse_action not in ("warn", "stop"):
            raise ValueError(f"collapse_action must be 'warn' or 'stop', got {collapse_action!r}.")
        self.metric = metric
        self.log_bands = log_bands
        self.log_file = Path(log_file) if log_file else None
        self.collapse_threshold = collapse_threshold
        self.collapse_patience = collapse_patience
        self.collapse_action = collapse_action
        self.is_main_process = is_main_process
        self.window = None
        self._steps: list[torch.Tensor] = []
        self.source: str | None = None  # the current step's source (several sources), set by the trainer
        self._step_sources: list[str | None] = []
        self._duplicates: dict[bool, list[torch.Tensor]] = {True: [], False: []}  # masked / only counted
        self.duplicate_negatives_total = {True: 0.0, False: 0.0}
        self._masked: list[torch.Tensor] = []
        self._last: tuple[torch.Tensor, torch.Tensor, float] | None = None
        self._last_mask: torch.Tensor | None = None
        self._low_run = 0
        self.alarm = False
        self._stop = False
        self._step_t0: float | None = None
        self._step_seconds: list[float] = []
        self.bookkeeping_seconds = 0.0
        self._truncated = False

    # -- per step (no host sync) ---------------------------------------------------------------------------------

    def record(self, anchors: torch.Tensor, positives: torch.Tensor, temperature: float, *,
               negative_mask: torch.Tensor | None = None, masked_stats: torch.Tensor | None = None) -> None:
        """Record the global batch of one step: ``anchors``/``positives`` ``(N, d)`` unit rows (detached).

        With false-negative masking, ``negative_mask`` `(N, N)` (True = kept; each anchor against the positives)
        makes the gradient bands those of the masked softmax, and ``masked_stats`` `(3,)` (masked negatives per
        query, in total, queries with all masked; see :class:`~hf_divcl.losses.infonce.ContrastiveOutput`) is logged."""
        t0 = time.perf_counter()
        d = batch_diversity(anchors, spectrum=True, validate=False)
        self._steps.append(torch.stack([d[k].float() for k in _STEP_METRICS]))
        self._step_sources.append(self.source)
        if masked_stats is not None:
            self._masked.append(masked_stats.detach().float())
        self._last = (anchors, positives, temperature)
        self._last_mask = negative_mask
        self.bookkeeping_seconds += time.perf_counter() - t0

    def count_duplicate_negatives(self, count: torch.Tensor, masked: bool = False) -> None:
        """A step's hard negatives equal to their query row's anchor or positive (scalar, no host sync): masked by
        the loss, or only counted (another loss)."""
        self._duplicates[masked].append(count.detach().float().reshape(()))

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_t0 is not None:
            self._step_seconds.append(time.perf_counter() - self._step_t0)
        # The last step is always logged (a run shorter than logging_steps, or ending between two logs, would
        # otherwise leave its last steps out of the log and the card). Decided from the step counter only, so every
        # process takes the same branch (the Trainer's log gathers the loss across processes).
        if (state.max_steps > 0 and state.global_step >= state.max_steps and args.logging_strategy == "steps"
                and state.logging_steps and state.global_step % state.logging_steps != 0):
            control.should_log = True
        if self._stop:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._stop:  # the alarm fired in this log: stop now, and save unless saving is off
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"

    # -- per logging step ----------------------------------------------------------------------------------------

    def summary(self, *, step: int, bank=None, selection_seconds: float = 0.0) -> dict[str, float]:
        """Metrics since the last call, keyed ``divcl/...`` (one host sync). Empty when no step was recorded."""
        if not self._steps:
            return {}
        t0 = time.perf_counter()
        per_step = torch.stack(self._steps).cpu()  # (steps, metrics)
        self._steps.clear()
        sources, self._step_sources = self._step_sources, []
        out: dict[str, float] = {}
        for i, key in enumerate(_STEP_METRICS):
            out[PREFIX + key] = per_step[:, i].mean().item()
        values = per_step[:, _STEP_METRICS.index(self.metric)] if self.metric in _STEP_METRICS else None
        if self.window is not None and values is not None:
            out[PREFIX + "in_window_fraction"] = self.window.contains(values).float().mean().item()
            out[PREFIX + "window_low"] = float(self.window.low)
            out[PREFIX + "window_high"] = float(self.window.high)
        for name in dict.fromkeys(s for s in sources if s is not None):  # per source, in order of first step
            rows = torch.tensor([s == name for s in sources])
            key = f"{PREFIX}source/{name}/"
            out[key + "steps"] = float(rows.sum())
            out[key + "effective_rank"] = per_step[rows, _STEP_METRICS.index("effective_rank")].mean().item()
            if self.window is not None and values is not None:
                out[key + "in_window_fraction"] = self.window.contains(values[rows]).float().mean().item()
        if self._masked:  # per-step values, averaged over the steps since the last log
            masked = torch.stack(self._masked).cpu().mean(0)
            self._masked.clear()
            out[PREFIX + "masked_negatives_mean"] = masked[0].item()
            out[PREFIX + "masked_negatives_total"] = masked[1].item()
            out[PREFIX + "anchors_all_masked"] = masked[2].item()
        for masked, counts in self._duplicates.items():
            if counts:
                total = torch.stack(counts).sum().item()
                counts.clear()
                self.duplicate_negatives_total[masked] += total
                name = "duplicate_negatives_masked" if masked else "duplicate_negatives_unmasked"
                out[PREFIX + name] = total
                out[PREFIX + name + "_total"] = self.duplicate_negatives_total[masked]
        if self.log_bands and self._last is not None:
            u, v, tau = self._last
            bands = gradient_bands(u.double(), v.double(), tau, negative_mask=self._last_mask, validate=False)
            g = bands.grad_norm.float().cpu()
            q = torch.quantile(g, torch.tensor([0.1, 0.5, 0.9]))
            out.update({
                PREFIX + "grad_norm_mean": g.mean().item(),
                PREFIX + "grad_norm_p10": q[0].item(), PREFIX + "grad_norm_p50": q[1].item(),
                PREFIX + "grad_norm_p90": q[2].item(),
                PREFIX + "band_lower_mean": bands.lower.mean().item(),
                PREFIX + "band_upper_mean": bands.upper.mean().item(),
                PREFIX + "spectral_lower_mean": bands.spectral_lower.mean().item(),
                PREFIX + "spectral_upper_mean": bands.spectral_upper.mean().item(),
                PREFIX + "band_inside_fraction": bands.inside().float().mean().item(),
                PREFIX + "p_pos_mean": bands.p_pos.mean().item(),
                PREFIX + "k_eff_mean": bands.k_eff.mean().item(),
                PREFIX + "temperature": float(tau),
                PREFIX + "global_batch_size": float(u.shape[0]),
            })
        step_time = sum(self._step_seconds)
        self._step_seconds.clear()
        self.bookkeeping_seconds += time.perf_counter() - t0
        out[PREFIX + "step_seconds"] = step_time / max(1, per_step.shape[0])
        out[PREFIX + "selection_seconds_total"] = float(selection_seconds)
        out[PREFIX + "bookkeeping_seconds_total"] = float(self.bookkeeping_seconds)
        if bank is not None:
            st = bank.staleness(step)
            out[PREFIX + "bank_staleness_mean"] = st["mean"]
            out[PREFIX + "bank_staleness_max"] = st["max"]
            out[PREFIX + "bank_never_updated_fraction"] = st["never_filled_fraction"]
        self._check_collapse(per_step[:, 0], step, out)
        return out

    def _check_collapse(self, eff_rank: torch.Tensor, step: int, out: dict[str, float]) -> None:
        if self.collapse_threshold <= 0:
            return
        for r in eff_rank.tolist():
            self._low_run = self._low_run + 1 if r < self.collapse_threshold else 0
        out[PREFIX + "collapsed_steps"] = float(self._low_run)
        if self._low_run >= self.collapse_patience:
            msg = (f"Collapse alarm at step {step}: the effective rank of the training batch has stayed below "
                   f"{self.collapse_threshold} for {self._low_run} consecutive steps (last mean "
                   f"{eff_rank.mean().item():.2f}). The embeddings are converging to a few directions: lower the "
                   "learning rate, raise the temperature, or check the data for near-duplicates.")
            self.alarm = True
            out[PREFIX + "collapse_alarm"] = 1.0
            if self.collapse_action == "stop":
                logger.error(msg + " Stopping training (collapse_action='stop').")
                self._stop = True
            else:
                logger.warning(msg)

    def write(self, record: dict[str, Any]) -> None:
        """Append one JSON line (main process). The first write of a run drops lines at or after its step, so a
        resumed run leaves no duplicate steps from the attempt it replaces."""
        if self.log_file is None or not self.is_main_process:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if not self._truncated:
            self._truncated = True
            if self.log_file.exists():
                keep = [r for r in read_diversity_log(self.log_file) if r.get("step", -1) < record["step"]]
                tmp = self.log_file.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
                os.replace(tmp, self.log_file)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.log_file.open("a") as fh:
            fh.write(json.dumps(clean) + "\n")
            fh.flush()


class DiversityCallback(DiversityLogger):
    """hf_divcl's diagnostics for an *unchanged* ``SentenceTransformerTrainer`` (or any Trainer of a
    sentence-transformers model): the batch geometry, exact per-anchor InfoNCE gradient norms against their bands,
    the collapse alarm, ``diversity_log.jsonl`` and, at the end, the card plots — without changing how batches are
    built or how the loss is computed.

        >>> trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=loss)
        >>> DiversityCallback().attach(trainer)   # τ read from the loss

    A forward hook on the model captures the ``sentence_embedding`` of each training forward pass (nothing is
    recomputed): the first ``per_device_train_batch_size`` rows are the step's anchors, the next as many its
    positives (the column order of sentence-transformers losses, including the cached ones). A step that captured
    fewer rows (the last, partial batch of an epoch) is not measured. With several processes the steps' local
    batches are gathered once per logging step, so every measured step is the *global* batch (the processes' local
    batches in rank order); a step is measured only when every process captured it.

    The ``divcl/*`` keys go into every logging step's record — so the console, ``state.log_history`` and every
    ``report_to`` backend see them (with :meth:`attach`) — and into ``output_dir/diversity_log.jsonl``;
    ``diversity_trajectory.png`` and ``gradient_bands.png`` are written to ``output_dir`` when training ends (with
    matplotlib installed).

    Args:
        temperature (`float`, *optional*): τ of the loss, for the gradient norms and bands. Default: read from the
            trainer's loss by :meth:`attach` (``temperature`` of InfoNCELoss / GISTEmbedLoss, ``1 / scale`` of
            MultipleNegativesRankingLoss and its cached variant), else 0.05.
        window (:class:`~hf_divcl.diversity.window.DiversityWindow` or `str`, *optional*): a window (``"low:high"`` or
            ``"metric:low:high"``) whose hit rate to report (``divcl/in_window_fraction``).
        log_file (`str`, *optional*, defaults to `"diversity_log.jsonl"`): in ``output_dir``; ``None`` disables it.
        plots (`bool`, *optional*, defaults to `True`): write the two plots at the end of training.
        collapse_threshold, collapse_patience, collapse_action, log_bands: as in :class:`DiversityLogger`.
    """

    def __init__(self, *, temperature: float | None = None, window: Any = None,
                 log_file: str | None = DIVERSITY_LOG_FILE,
                 plots: bool = True, log_bands: bool = True, collapse_threshold: float = 1.5,
                 collapse_patience: int = 20, collapse_action: str = "warn") -> None:
        from ..diversity.window import DiversityWindow

        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        if isinstance(window, str):
            window = DiversityWindow.parse(window)
        if window is not None and not isinstance(window, DiversityWindow):
            raise ValueError(f"window must be a DiversityWindow or 'low:high', got {window!r}.")
        super().__init__(metric=window.metric if window is not None else "effective_rank", log_bands=log_bands,
                         log_file=None, collapse_threshold=collapse_threshold, collapse_patience=collapse_patience,
                         collapse_action=collapse_action)
        self.window = window
        self.temperature = None if temperature is None else float(temperature)
        self.loss_info: dict[str, Any] | None = None
        self.log_file_name = log_file
        self.plots = plots
        self._captured: list[torch.Tensor] = []
        self._hook = None
        self._pending: dict[str, float] = {}
        self._buffer: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []  # steps not yet gathered
        self._wrote_loss_info = False

    # -- wiring ----------------------------------------------------------------------------------------------

    def attach(self, trainer) -> DiversityCallback:
        """Add this callback to ``trainer`` where every ``report_to`` integration sees the ``divcl/*`` keys: right
        after the Trainer's ``DefaultFlowCallback`` (the integrations come before callbacks added later, and the
        Trainer hands ``on_log`` to callbacks in order); the console then prints one short line per log.

            >>> DiversityCallback(temperature=1 / loss.scale).attach(trainer)
        """
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        first = [i for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)]
        callbacks.insert(first[0] + 1 if first else 0, self)
        use_readable_console(trainer.callback_handler, self.metric)
        self._attached = True
        loss = getattr(trainer, "loss", None)
        if loss is not None:
            self.loss_info = loss_settings(loss)
            if self.temperature is None and (t := loss_temperature(loss)) is not None:
                self.temperature = t
                logger.info("DiversityCallback: τ = %g from %s.", t, type(loss).__name__)
        return self

    def on_init_end(self, args, state, control, **kwargs):
        if not getattr(self, "_attached", False):
            logger.warning("DiversityCallback was passed in callbacks=[...]: the report_to integrations run before it "
                           "and will not see the divcl/* keys (diversity_log.jsonl and state.log_history still get "
                           "them). Use DiversityCallback(...).attach(trainer) after building the trainer instead.")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.temperature is None:
            self.temperature = 0.05
            logger.warning("DiversityCallback: τ unknown (pass temperature=, or attach(trainer) with a loss that has "
                           "a temperature or scale); the bands use τ = 0.05.")
        self.is_main_process = state.is_world_process_zero
        self.log_file = Path(args.output_dir, self.log_file_name) if self.log_file_name else None
        if model is None:
            raise ValueError("DiversityCallback needs the Trainer's model to capture the embeddings.")
        if self._hook is None:
            self._hook = model.register_forward_hook(self._capture_hook)

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.plots and self.is_main_process and self.log_file is not None and self.log_file.is_file():
            try:
                from ..publish.card import BANDS_PNG, TRAJECTORY_PNG, plot_diversity_trajectory, plot_gradient_bands
            except ImportError as err:  # matplotlib is the optional `plot` extra
                logger.warning("DiversityCallback: no plots (%s); pip install 'hf_divcl[plot]'.", err)
                return
            records = read_diversity_log(self.log_file)
            if records:
                plot_diversity_trajectory(records, Path(args.output_dir, TRAJECTORY_PNG), metric=self.metric)
                plot_gradient_bands(records, Path(args.output_dir, BANDS_PNG))

    def _capture_hook(self, module, inputs, output) -> None:
        if module.training and isinstance(output, dict) and "sentence_embedding" in output:
            self._captured.append(output["sentence_embedding"].detach())

    # -- per step --------------------------------------------------------------------------------------------

    def on_step_begin(self, args, state, control, **kwargs):
        self._captured.clear()
        super().on_step_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        n = args.per_device_train_batch_size
        flat = torch.cat(self._captured) if self._captured else None
        self._captured.clear()
        pair = None
        if flat is not None and flat.shape[0] >= 2 * n and n >= 2:
            pair = torch.nn.functional.normalize(flat[:2 * n].float(), dim=-1).split(n)
        if distributed_ready():
            self._buffer.append(pair if pair is not None else (None, None))
        elif pair is not None:
            self.record(*pair, self.temperature)
        super().on_step_end(args, state, control, **kwargs)
        if control.should_log:  # the same decision on every process (the Trainer's logging schedule)
            if distributed_ready():
                for anchors, positives in gather_steps(self._buffer):
                    self.record(anchors, positives, self.temperature)
                self._buffer.clear()
            self._pending = self.summary(step=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending and logs is not None and "loss" in logs:
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            extra = {"loss_config": self.loss_info} if self.loss_info and not self._wrote_loss_info else {}
            self.write({"step": state.global_step, "epoch": state.epoch, **logs, **extra})
            self._wrote_loss_info = self._wrote_loss_info or bool(extra)
            self._pending = {}
        return super().on_log(args, state, control, logs=logs, **kwargs)


def gather_steps(steps: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> list[tuple[torch.Tensor, ...]]:
    """The global batches of the buffered steps: each process's ``(anchors, positives)`` of shape ``(n, d)`` per
    step (``(None, None)`` where it captured none) → per step, ``(W·n, d)`` anchors and positives in rank order. One
    ``all_gather`` for all the steps; a step that some process did not capture is left out. Every process must call
    it with the same number of steps."""
    import torch.distributed as dist

    if not steps:
        return []
    shape = next((a.shape for a, _ in steps if a is not None), None)
    meta = torch.tensor([len(steps), *(shape if shape is not None else (0, 0))], dtype=torch.long)
    metas = [torch.zeros_like(meta) for _ in range(dist.get_world_size())]
    dist.all_gather(metas, meta)  # processes may differ in which steps they captured, never in how many
    n, d = max(int(m[1]) for m in metas), max(int(m[2]) for m in metas)
    if n == 0:
        return []
    device = next((a.device for a, _ in steps if a is not None), torch.device("cpu"))
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    local = torch.zeros(len(steps), 2, n, d, device=device)
    valid = torch.zeros(len(steps), device=device)
    for i, (a, p) in enumerate(steps):
        if a is not None and a.shape == (n, d):
            local[i, 0], local[i, 1], valid[i] = a, p, 1.0
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    flags = [torch.empty_like(valid) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    dist.all_gather(flags, valid)
    every = torch.stack(flags).min(0).values.bool().tolist()
    both = torch.cat(parts, dim=2)  # (S, 2, W·n, d), rank order
    return [(both[i, 0], both[i, 1]) for i in range(len(steps)) if every[i]]
