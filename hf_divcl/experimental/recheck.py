"""Re-checks of a window ``batch_policy="explore"`` chose: when it was chosen at step ``s``, short re-checks start at
``2s``, ``4s``, … (while one fits before the end), each a small exploration with two arms — the window's own planned
batch and a random batch from a fresh candidate sample — for up to ``recheck_blocks`` blocks, tested as exploration
is, and ended by ``recheck_rule`` (:func:`~hf_divcl.experimental.sequential.recheck_verdict`).

:class:`Rechecks` is the part of :class:`~hf_divcl.experimental.explorer.StepExplorer` that runs them; it reads the
explorer's plan, test, level and trainer, and decides through its ``finish``.
"""

from __future__ import annotations

import logging

from .._common import agree
from .sequential import SequentialTest, recheck_verdict

logger = logging.getLogger(__name__)

__all__ = ["Rechecks"]


class Rechecks:
    """Scheduling, opening and ending the re-checks of a chosen window (mixed into ``StepExplorer``)."""

    def block_key(self, index: int) -> int:
        """A block's key for its arm order and candidate sample: exploration's blocks count from 0, each re-check's
        from its own offset, so no two blocks of a run share one."""
        return index + 1_000_003 * self.rechecks

    def recheck_test(self) -> SequentialTest:
        n = self.plan.recheck_blocks
        return SequentialTest([self.level], alpha=self.plan.alpha, min_blocks=max(2, n // 2), max_blocks=n)

    def next_slot(self) -> int:
        """The first step whose batches the sampler has not handed out yet (the same on every process)."""
        sampler = self.trainer.divcl_sampler
        ga = max(1, int(self.trainer.args.gradient_accumulation_steps))
        plan = sampler.plan()
        return agree(-(-(sampler.epoch * len(plan.batches) + sampler.yielded_global()) // ga))

    def schedule_recheck(self, step: int) -> None:
        """The next re-check at twice ``step``, if it and its blocks fit before the run ends."""
        n = self.plan.recheck_blocks
        at = max(2 * step, step + 1)
        fits = n >= 2 and at + 2 * n + 2 <= self.plan.total_steps and self.rechecks < self.plan.max_rechecks
        self.next_check = at if fits and self.level is not None and self.trainer.divcl_sampler is not None else None

    def start_recheck(self, step: int) -> None:
        """Open a re-check of the window in force: two arms (its planned batch, a random batch from a fresh
        candidate sample) from the next step whose batches are not handed out yet."""
        self.rechecks += 1
        self.phase = "recheck"
        self.next_check = None
        self.test = self.recheck_test()
        self.blocks, self.finished = [], False
        self.drawn.clear()
        self.keys.clear()
        self.start_slot = self.next_slot()
        logger.info("batch_policy='explore': re-check %d of the window (%s) from step %d, up to %d blocks.",
                    self.rechecks, self.level, self.start_slot, self.plan.recheck_blocks)
        self.refresh(0)

    def end_recheck(self, decision, step: int) -> None:
        """Revert to random batches when the window is behind with confidence (``recheck_rule="behind"``) or not
        ahead with confidence (``"ahead"``); keep it otherwise."""
        stats = self.test.statistics(self.level)
        head = (f"re-check {self.rechecks} at step {step} ({self.test.blocks} blocks, window − random "
                f"{stats['mean']:.3g}, one-sided bounds [{stats['low']:.3g}, {stats['high']:.3g}])")
        verdict = recheck_verdict(decision, self.plan.recheck_rule)
        why = {"behind": "fell behind random batches with confidence",
               "not_ahead": "is no longer ahead of random batches with confidence (recheck_rule='ahead')",
               "failed": f"could not be re-checked ({decision.reason})"}
        if verdict != "keep":
            self.finish("random", None, f"{head}: the window ({self.level}) {why[verdict]}; back to random batches",
                        step, levels=decision.levels, estimate="recheck")
            return
        kept = "ahead of random batches" if decision.status == "window" else "not behind random batches with confidence"
        self.finish("window", self.current.window, f"{head}: the window is {kept}; kept", step,
                    self.level, levels=decision.levels, estimate="recheck", apply=False)
