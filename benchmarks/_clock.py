"""The benchmarks' evaluation clock: a Trainer callback that scores the model every N steps and keeps the time spent
scoring out of the training clock, so "seconds to a target" measures training (selection and overhead included)."""

from __future__ import annotations

import time
from collections.abc import Callable

CLOCK_KEYS = ("step", "seconds", "wall_seconds", "eval_seconds")  # a curve point's keys that are not scores


def eval_clock(evaluate: Callable[[bool], dict], every: int, curve: list[dict], losses: dict[int, float] | None = None,
               start_on_train_begin: bool = False, verbose: bool = False):
    """A ``TrainerCallback`` that appends ``{"step", "seconds", "wall_seconds", "eval_seconds", **scores}`` to
    ``curve`` every ``every`` steps and at the last step.

    ``evaluate(last)`` returns the scores (``last``: this is the run's final step). ``seconds`` is the wall clock
    since the start without the evaluations, ``wall_seconds`` with them, ``eval_seconds`` this evaluation's own
    time. The clock starts when the callback is made (call ``restart()`` to move it), or at ``on_train_begin`` with
    ``start_on_train_begin``. With ``losses`` the logged training loss is kept per step.
    """
    from transformers import TrainerCallback

    class EvalClock(TrainerCallback):
        def __init__(self) -> None:
            self.restart()

        def restart(self) -> None:
            self.t0 = time.perf_counter()
            self.eval_seconds = 0.0

        def seconds(self) -> float:
            return time.perf_counter() - self.t0 - self.eval_seconds

        def on_train_begin(self, args, state, control, **kwargs):
            if start_on_train_begin:
                self.restart()

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if step % every == 0 or step == state.max_steps:
                now = time.perf_counter()
                scores = evaluate(step == state.max_steps)
                spent = time.perf_counter() - now
                curve.append({"step": step, "seconds": now - self.t0 - self.eval_seconds,
                              "wall_seconds": now - self.t0, "eval_seconds": spent, **scores})
                self.eval_seconds += spent
                if verbose:
                    print(f"  eval step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in scores.items()
                                                              if isinstance(v, float)), flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if losses is not None and logs and "loss" in logs:
                losses[state.global_step] = float(logs["loss"])

    return EvalClock()
