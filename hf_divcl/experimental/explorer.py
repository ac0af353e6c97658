"""``batch_policy="explore"``'s runner: a :class:`DivCLTrainer` run whose first steps are the experiment.

From step 0 the sampler asks :class:`StepExplorer` for each global batch (:meth:`StepExplorer.source`): blocks of
consecutive steps hold every arm once (random batches and each candidate level,
:mod:`hf_divcl.experimental.sequential`),
a level's batch is drawn from a candidate sample of training rows embedded by the current model, a random arm's
batch is the sampler's own planned one. Each step is scored at ``on_pre_optimizer_step`` from the gradient it has
just computed, with the optimizer's preconditioner and the retrieval probe's gradient; the group-sequential test
decides after whole blocks. A window is then applied for the rest of the run (the epoch is re-planned from the
next batch not yet handed out), or the run stays on random batches with the reason.

A chosen window is re-checked as the model moves: when it was chosen at step ``s``, short re-checks start at
``2s``, ``4s``, … (while one fits before the end). A re-check is a small exploration with two arms — the window's
own planned batch and a random batch drawn from a fresh candidate sample — for up to ``recheck_blocks`` blocks,
tested as exploration is. With ``recheck_rule="ahead"`` (the default) the window stays only while it is still ahead
of random batches with confidence; with ``"behind"`` it goes only when it is behind with confidence
(:func:`~hf_divcl.experimental.sequential.recheck_verdict`).

What exploring may spend is planned by :mod:`.explore_plan`; between refreshes the probe gradient is stale but common
to every arm of a block. The seconds actually spent, by kind, are in each record's ``cost``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from .._common import agree, append_jsonl, mix_seed
from ..diversity.levels import draw_level, parse_level
from ..diversity.window import DiversityWindow, measure_diversity
from .explore_plan import EXPLORE_FILE, ExplorePlan
from .follower import ProbeEnv, calibration_sample, seeded_rows
from .preconditioner import preconditioned_score
from .probe import probe_gradient
from .progress import ProgressCalibration
from .recheck import Rechecks
from .sequential import RANDOM_ARM, SequentialTest, block_order

if TYPE_CHECKING:
    from ..policies.context import PolicyContext

logger = logging.getLogger(__name__)

__all__ = ["StepExplorer"]


class StepExplorer(Rechecks, TrainerCallback):
    """Runs a ``batch_policy="explore"`` exploration inside training and applies its decision."""

    def __init__(self, trainer: PolicyContext, plan: ExplorePlan, builder: str, probe) -> None:
        self.trainer = trainer
        self.plan = plan
        self.builder = builder  # plans the window's batches once one is chosen
        self.probe = probe  # the held-out probe rows
        self.test = SequentialTest(plan.levels, alpha=plan.alpha, min_blocks=plan.min_blocks,
                                   max_blocks=plan.max_blocks)
        self.blocks: list[dict[str, Any]] = []  # per block: first slot, arm order, scores by arm
        self.drawn: dict[int, list[int]] = {}  # slot → rows of a level batch handed out, not yet trained on
        self.keys: dict[tuple[int, ...], int] = {}  # a local batch's rows → its slot
        self.slot_now: int | None = None
        self.sample_rows: torch.Tensor | None = None
        self.sample_emb: torch.Tensor | None = None
        self.probe_grad: list[torch.Tensor] | None = None
        self.refreshed_at = -1
        self.preconditioner_name = ""
        self.history: list[dict[str, Any]] = []
        self.passes = {"probe_refreshes": 0, "encoded_rows": 0, "scored_steps": 0}
        self.split = {"refresh": 0.0, "draw": 0.0, "score": 0.0, "test": 0.0, "apply": 0.0}  # seconds by kind
        self.run_before = 0.0  # training wall-clock of earlier processes (a resumed run)
        self.started: float | None = None
        self.finished = False  # no experiment running (exploration over, no re-check under way)
        self.phase = "explore"  # or "recheck"
        self.level: str | None = None  # the level of the window in force
        self.next_check: int | None = None  # the step at which the next re-check starts
        self.rechecks = 0
        self.start_slot = 0  # the experiment's blocks start at or after this step
        self._params: list[torch.nn.Parameter] | None = None

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def current(self) -> ProgressCalibration | None:
        return ProgressCalibration.from_dict(self.history[-1]) if self.history else None

    def state_dict(self) -> dict[str, Any]:
        blocks = [{**b, "scores": {k: float(v) for k, v in b["scores"].items()}} for b in self.blocks]
        return {"kind": "explore", "test": self.test.state_dict(), "blocks": blocks,
                "drawn": {str(k): v for k, v in self.drawn.items()}, "history": self.history,
                "seconds": self.seconds, "passes": self.passes, "split": self.split,
                "run_seconds": self.run_seconds(), "finished": self.finished,
                "refreshed_at": self.refreshed_at, "plan": self.plan.to_dict(), "phase": self.phase,
                "level": self.level, "next_check": self.next_check, "rechecks": self.rechecks,
                "start_slot": self.start_slot}

    def state_arrays(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps beside :meth:`state_dict`: the candidate sample, its embeddings and the
        probe gradient in force (flattened), so a resumed run scores and draws exactly as the original."""
        if self.finished or self.sample_rows is None or self.probe_grad is None:
            return {}
        arrays = {"explore_sample_rows": self.sample_rows, "explore_sample_emb": self.sample_emb,
                  "explore_probe_grad": torch.cat([g.detach().reshape(-1).float().cpu() for g in self.probe_grad])}
        return {k: v for k, v in arrays.items() if v is not None}  # a re-check's sample has no embeddings

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "explore":
            raise ValueError("Cannot resume batch_policy='explore' from a checkpoint of another batch policy; resume "
                             "with the checkpoint's batch_policy.")
        self.phase, self.level = state.get("phase", "explore"), state.get("level")
        self.next_check, self.rechecks = state.get("next_check"), int(state.get("rechecks", 0))
        self.start_slot = int(state.get("start_slot", 0))
        if self.phase == "recheck":
            self.test = self.recheck_test()
        self.test.load_state_dict(state["test"])
        self.blocks = [{**b, "scores": {k: torch.tensor(v, dtype=torch.float64) for k, v in b["scores"].items()}}
                       for b in state["blocks"]]
        self.drawn = {int(k): list(v) for k, v in state["drawn"].items()}
        self.history = list(state["history"])
        self.passes = dict(state["passes"])
        # a checkpoint from before the split by kind keeps its total as one kind
        self.split = {**self.split, **(state.get("split") or {"earlier": float(state["seconds"])})}
        self.run_before = float(state.get("run_seconds", 0.0))
        self.finished = bool(state["finished"])
        self.refreshed_at = int(state["refreshed_at"])
        saved = self.trainer.saved
        rows, emb, grad = (saved.array(f"explore_{k}") for k in ("sample_rows", "sample_emb", "probe_grad"))
        if not self.finished and (rows is None or grad is None or (emb is None and self.phase == "explore")):
            raise ValueError("Cannot resume batch_policy='explore' mid-exploration: the checkpoint lacks its arrays "
                             "(divcl_state/explore_*.npy). Resume from another checkpoint or start afresh.")
        if not self.finished:
            self.sample_rows, self.sample_emb = rows.long(), emb
            params = self.params()
            sizes = [p.numel() for p in params]
            if grad.numel() != sum(sizes):
                raise ValueError(f"Cannot resume batch_policy='explore': the saved probe gradient has {grad.numel()} "
                                 f"values, the model {sum(sizes)} trainable parameters.")
            self.probe_grad = [g.reshape(p.shape).to(device=p.device, dtype=p.dtype)
                               for g, p in zip(torch.split(grad, sizes), params, strict=True)]

    # -- the arms ------------------------------------------------------------------------------------------------

    def _block_of(self, slot: int) -> dict[str, Any] | None:
        for b in reversed(self.blocks):
            if b["start"] <= slot < b["start"] + len(b["order"]):
                return b
            if b["start"] + len(b["order"]) <= slot:
                break
        return None

    def arm_of(self, slot: int) -> tuple[dict[str, Any], str] | None:
        """The block and arm of step ``slot``, opening a new block when ``slot`` is past the last one."""
        if self.finished:
            return None
        b = self._block_of(slot)
        if b is None:
            end = self.blocks[-1]["start"] + len(self.blocks[-1]["order"]) if self.blocks else 0
            if slot < max(end, self.start_slot) or len(self.blocks) >= self.test.looks[-1] + 2:
                return None
            arms = self.test.arms
            b = {"index": len(self.blocks), "start": slot,
                 "order": block_order(arms, self.block_key(len(self.blocks)), int(self.trainer.args.seed)),
                 "scores": {}}
            self.blocks.append(b)
        return b, b["order"][slot - b["start"]]

    def source(self, epoch: int, index: int, n_batches: int, planned: torch.Tensor) -> torch.Tensor | None:
        """The sampler's hook: the rows of global batch ``index`` of ``epoch`` (``None``: the planned batch)."""
        if self.finished or self.sample_rows is None:
            return None
        ga = max(1, int(self.trainer.args.gradient_accumulation_steps))
        slot = (epoch * n_batches + index) // ga
        found = self.arm_of(slot)
        if found is None:
            return None
        arm = found[1]
        rows = planned
        planned_arm = RANDOM_ARM if self.phase == "explore" else self.level  # the arm the sampler's batch serves
        if arm != planned_arm and planned.numel() == self.trainer.global_batch_size():
            if slot not in self.drawn:
                t0 = time.perf_counter()
                gen = torch.Generator().manual_seed(mix_seed(int(self.trainer.args.seed), 7_000_003 + slot))
                if arm == RANDOM_ARM:  # a re-check's random arm: no embeddings needed
                    pick = torch.randperm(len(self.sample_rows), generator=gen)[:planned.numel()]
                else:
                    pick = draw_level(self.sample_emb, parse_level(arm), planned.numel(), 1, gen)[0]
                self.drawn[slot] = self.sample_rows[pick].tolist()
                self.spend("draw", t0)
            rows = torch.tensor(self.drawn[slot], dtype=torch.long)
        b = self.trainer.divcl_sampler.batch_size if self.trainer.divcl_sampler is not None else rows.numel()
        for i in range(0, rows.numel(), b):
            self.keys[tuple(rows[i:i + b].tolist())] = slot
        return rows

    def note(self, row_ids: torch.Tensor) -> None:
        """From the step: which slot the local batch ``row_ids`` was handed out for."""
        slot = self.keys.pop(tuple(row_ids.tolist()), None)
        self.slot_now = slot if (self.slot_now is None or self.slot_now == slot) else -1

    # -- measuring -----------------------------------------------------------------------------------------------

    def params(self) -> list[torch.nn.Parameter]:
        if self._params is None:
            self._params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        return self._params

    def refresh(self, block_index: int) -> None:
        """Draw a new candidate sample and take the probe gradient (one process; broadcast under DDP). Exploration
        embeds the sample (its levels are drawn from the embeddings); a re-check does not (its other arm is random
        batches), which saves the encoding pass."""
        t = self.trainer
        t0 = time.perf_counter()
        payload: list[Any] = [None, None, None]
        if t.is_world_process_zero():
            try:
                with ProbeEnv(t):
                    seed = mix_seed(t.args.seed, self.block_key(block_index))
                    if self.phase == "explore":
                        rows, emb = calibration_sample(t, self.plan.sample_rows, seed=seed)
                    else:
                        rows, emb = seeded_rows(len(t.train_dataset), self.plan.sample_rows, seed), None
                    grad = probe_gradient(t, self.params(), self.plan, self.probe)
                payload = [rows, emb, [g.cpu() for g in grad]]
            except (ValueError, RuntimeError) as err:
                if isinstance(err, RuntimeError) and "out of memory" in str(err).lower():
                    raise
                payload = [None, None, f"{type(err).__name__}: {err}"]
        payload = agree(payload)
        if isinstance(payload[2], str):
            self.finish("random", None, f"exploration failed: {payload[2]}; kept random batches", block_index)
            return
        self.sample_rows, self.sample_emb = payload[0], payload[1]
        device = self.params()[0].device
        self.probe_grad = [g.to(device) for g in payload[2]]
        self.refreshed_at = block_index
        self.passes["probe_refreshes"] += 1
        self.passes["encoded_rows"] += len(self.sample_rows) if self.sample_emb is not None else 0
        self.spend("refresh", t0)

    def spend(self, kind: str, t0: float) -> None:
        self.split[kind] += time.perf_counter() - t0

    @property
    def seconds(self) -> float:
        """Seconds spent exploring and re-checking so far, all kinds together."""
        return sum(self.split.values())

    def run_seconds(self) -> float:
        """Training wall-clock so far, this process's and earlier ones' (resumed runs), exploration included."""
        return self.run_before + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        if not self.finished and self.probe_grad is None:  # a resumed run has its own from the checkpoint
            self.refresh(self.test.blocks)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        slot, self.slot_now = self.slot_now, None
        if self.finished or slot is None or slot < 0:
            return
        t0 = time.perf_counter()
        if self.probe_grad is None:
            return
        found = self.arm_of(slot)
        if found is None:
            return
        block, arm = found
        params = self.params()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        lr = self.trainer.lr_scheduler.get_last_lr()[0] if self.trainer.lr_scheduler is not None \
            else args.learning_rate
        block["scores"][arm], self.preconditioner_name = preconditioned_score(
            self.trainer.optimizer, params, grads, self.probe_grad, float(lr))
        self.drawn.pop(slot, None)
        self.passes["scored_steps"] += 1
        self.spend("score", t0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.finished:
            if self.next_check is not None and state.global_step >= self.next_check:
                self.start_recheck(state.global_step)
            return
        t0 = time.perf_counter()
        done = [b for b in self.blocks if not b.get("tested") and len(b["scores"]) == len(b["order"])]
        for b in done:
            b["tested"] = True
            # one host sync per block; under DDP the first process's scores decide, so every process agrees
            scores = agree({k: float(v) for k, v in b["scores"].items()})
            b["scores"] = {k: torch.tensor(v, dtype=torch.float64) for k, v in scores.items()}
            if args.learning_rate <= 0:
                self.finish("random", None, "the learning rate is 0: no step makes progress to compare; kept "
                            "random batches", state.global_step)
                return
            decision = self.test.add_block(scores)
            if decision.status != "exploring":
                self.spend("test", t0)
                self.conclude(decision, state.global_step)
                return
        self.spend("test", t0)
        if done and self.phase == "explore" and self.test.blocks - self.refreshed_at >= self.plan.refresh_blocks:
            self.refresh(self.test.blocks)
        if len(self.blocks) > self.test.looks[-1] + 1 and not self.finished:
            self.conclude(self.test.decision, state.global_step)

    # -- the decision --------------------------------------------------------------------------------------------

    def level_diversity(self, level: str) -> torch.Tensor | None:
        """Effective rank ``(16,)`` of batches drawn at ``level`` from the current candidate sample (``None`` when
        the sample has no embeddings: a re-check's)."""
        if self.sample_emb is None:
            return None
        gen = torch.Generator().manual_seed(mix_seed(int(self.trainer.args.seed), 99_991))
        idx = draw_level(self.sample_emb, parse_level(level), self.trainer.global_batch_size(), 16, gen)
        return measure_diversity(self.sample_emb[idx], "effective_rank")

    def conclude(self, decision, step: int) -> None:
        if self.phase == "recheck":
            self.end_recheck(decision, step)
            return
        window = None
        if decision.status == "window" and self.sample_emb is not None:
            values = self.level_diversity(decision.level)
            lo, hi = torch.quantile(values, 0.05).item(), torch.quantile(values, 0.95).item()
            window = DiversityWindow(min(lo, hi), max(lo, hi), "effective_rank")
        status = "window" if window is not None else "random"
        reason = decision.reason or "exploration ended without a decision; kept random batches"
        self.finish(status, window, reason, step, decision.level if window is not None else None,
                    levels=decision.levels)

    def finish(self, status: str, window: DiversityWindow | None, reason: str, step: int, level: str | None = None,
               levels: dict[str, Any] | None = None, estimate: str = "explore", apply: bool = True) -> None:
        """Record the outcome of the exploration or re-check, apply it (``apply``: re-plan the epoch from the next
        batch not handed out) and schedule the next re-check while a window is in force."""
        t = self.trainer
        self.finished = True
        self.drawn.clear()
        self.keys.clear()
        diversity = {name: None if (d := self.level_diversity(name)) is None else d.mean().item()
                     for name in [RANDOM_ARM, *(levels or {})]}
        rows = [{"level": name, "metric": diversity[name], "gain_vs_random": s.get("mean", float("nan")),
                 "ci_low": s.get("low", -math.inf), "ci_high": s.get("high", math.inf), "blocks": s.get("blocks", 0),
                 "active": s.get("active", False)} for name, s in (levels or {}).items()]
        cal = ProgressCalibration(status, window, level, reason, temperature=float(t.args.temperature),
                                  batch_size=t.global_batch_size(), estimate=estimate, confidence=1 - self.plan.alpha,
                                  n_pairs=self.test.blocks, step=step, levels=rows,
                                  random_metric=diversity[RANDOM_ARM] or float("nan"))
        before = self.history[-1]["cost"].get("seconds", 0.0) if self.history else 0.0
        record = cal.to_dict()
        self.history.append(record)  # in force before it is applied: the run files read it
        if apply:
            t0 = time.perf_counter()
            sampler = t.divcl_sampler
            replan = window is not None or self.phase == "recheck"
            cut = agree(sampler.yielded_global() if sampler is not None and replan else None)
            t.apply_window(window, self.builder, cut=cut)
            self.spend("apply", t0)
        else:
            t.record_policy()  # the window stays: only its record is new
        run = self.run_seconds()
        record["cost"] = {"seconds": self.seconds, **{k: float(v) for k, v in self.passes.items()},
                          **{f"{k}_seconds": v for k, v in self.split.items()}, "run_seconds": run,
                          "fraction_of_run": self.seconds / run if run > 0 else None,
                          "preconditioner": self.preconditioner_name}
        record["wall_seconds"] = self.seconds - before  # what this exploration or re-check cost
        self.level = level if window is not None else None
        self.schedule_recheck(step)
        logger.warning("batch_policy='explore' at step %d after %d blocks: %s — %s", step, self.test.blocks,
                       f"window {window.metric} in [{window.low:.2f}, {window.high:.2f}] ({level})" if window
                       else "random batches", reason)
        if t.is_world_process_zero():
            blocks = [{"start": b["start"], "order": b["order"],
                       "scores": {k: float(v) for k, v in b["scores"].items()}} for b in self.blocks]
            append_jsonl(Path(t.args.output_dir, EXPLORE_FILE), {**record, "blocks": blocks})
