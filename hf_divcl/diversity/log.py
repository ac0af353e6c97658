"""The ``divcl/*`` training records as a person or a later tool reads them: the key prefix, reading
``diversity_log.jsonl`` back (tolerating only a torn last line), and one short console line per training log in
place of the Trainer's dict of every key.

Apart from :mod:`hf_divcl.training.callbacks`, which produces the records, because the card, the hub upload and the
reports read them without any training loop.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from transformers.trainer_callback import CallbackHandler, PrinterCallback, ProgressCallback

__all__ = ["PREFIX", "format_log_line", "read_diversity_log", "use_readable_console"]

PREFIX = "divcl/"


def read_diversity_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``diversity_log.jsonl``. A torn *last* line (a crash mid-write) is skipped; a bad line
    anywhere else means the file was damaged and raises a ``ValueError`` naming it."""
    out = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{str(path)!r} line {i + 1} is not JSON ({err.msg}): {line[:80]!r}. Only a torn last "
                             "line is expected after a crash; remove or repair that line.") from None
    return out


def format_log_line(logs: dict[str, Any], step: int, max_steps: int, metric: str = "effective_rank") -> str | None:
    """One line a person can follow for a training log with ``divcl/*`` keys (``None`` for any other log):
    loss, learning rate, the batch diversity against the window and the share of batches inside it, the median
    per-anchor gradient norm and the share of anchors whose exact norm lies inside their own band
    (``divcl/band_inside_fraction``), seconds per step, and the collapse alarm when it fires."""
    if "loss" not in logs or not any(k.startswith(PREFIX) for k in logs):
        return None

    def num(key: str) -> float | None:
        v = logs.get(key)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    parts = [f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}", f"loss {logs['loss']:.4g}"]
    if num("learning_rate") is not None:
        parts.append(f"lr {num('learning_rate'):.2g}")
    value, low, high = num(PREFIX + metric), num(PREFIX + "window_low"), num(PREFIX + "window_high")
    if value is not None:
        name = "eff. rank" if metric == "effective_rank" else metric.replace("_", " ")
        text = f"{name} {value:.3g}"
        if low is not None and high is not None:
            frac = num(PREFIX + "in_window_fraction")
            text += f" (window {low:.3g}–{high:.3g}" + (f", {frac:.0%} of batches in)" if frac is not None else ")")
        parts.append(text)
    g, inside = num(PREFIX + "grad_norm_p50"), num(PREFIX + "band_inside_fraction")
    if g is not None:
        parts.append(f"‖∇‖ {g:.3g}" + (f", {inside:.0%} of anchors in band" if inside is not None else ""))
    if num(PREFIX + "step_seconds") is not None:
        parts.append(f"{num(PREFIX + 'step_seconds'):.2g} s/step")
    if num(PREFIX + "collapse_alarm"):
        parts.append("COLLAPSE ALARM (see the warning)")
    return " · ".join(parts)


class _ReadableProgress(ProgressCallback):
    """The Trainer's progress bar, printing :func:`format_log_line` for training logs (the full record still
    goes to ``report_to``, ``state.log_history`` and ``diversity_log.jsonl``)."""

    def __init__(self, metric: str = "effective_rank") -> None:
        super().__init__()
        self.metric = metric

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = format_log_line(logs or {}, state.global_step, state.max_steps, self.metric)
        if line is None:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(line)


class _ReadablePrinter(PrinterCallback):
    """:class:`PrinterCallback` (``disable_tqdm=True``) printing :func:`format_log_line` for training logs."""

    def __init__(self, metric: str = "effective_rank") -> None:
        super().__init__()
        self.metric = metric

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = format_log_line(logs or {}, state.global_step, state.max_steps, self.metric)
        if line is None:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        if state.is_local_process_zero:
            print(line)


def use_readable_console(handler: CallbackHandler, metric: str = "effective_rank") -> None:
    """Swap the Trainer's console callback (progress bar or printer) for one that prints one short line per
    training log instead of the dict of every key: a subclass built with its public constructor takes the place of
    the Trainer's own in ``handler.callbacks``, so the callbacks keep their order (``remove_callback`` /
    ``add_callback`` would move it to the end), with the same ``max_str_len``."""
    for i, cb in enumerate(handler.callbacks):
        if type(cb) is ProgressCallback:
            new: ProgressCallback | PrinterCallback = _ReadableProgress(metric)
            if hasattr(cb, "max_str_len"):  # a documented setting of the progress bar (transformers >= 4.47)
                new.max_str_len = cb.max_str_len
        elif type(cb) is PrinterCallback:
            new = _ReadablePrinter(metric)
        else:
            continue
        handler.callbacks[i] = new
