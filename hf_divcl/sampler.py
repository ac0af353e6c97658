"""``DiversityWindowBatchSampler``: diversity-window batches as a drop-in sentence-transformers batch sampler.

Keeps the Trainer / Accelerate batch-sampler contract: every rank runs the whole sampler and
``BatchSamplerShard`` keeps every ``W``-th batch, so the sampler is a pure function of
``(bank, seed, epoch, arguments)``, yields the same sequence on every rank, has an exact ``__len__``, and
implements ``set_epoch``. With ``W`` processes gathering negatives across devices, the loss sees ``W``
consecutive batches as one global batch: the epoch is planned with global batches of ``W × batch_size`` rows,
each split into ``W`` consecutive local batches, so the window applies to what the loss actually sees.

    >>> args = SentenceTransformerTrainingArguments(output_dir="out", batch_sampler=DiversityWindowBatchSampler)
    >>> # or, with options:
    >>> sampler_cls = DiversityWindowBatchSampler.configure(bank=bank, window=DiversityWindow(12, 20))
    >>> args = SentenceTransformerTrainingArguments(output_dir="out", batch_sampler=sampler_cls)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler

from ._common import mix_seed, world_size
from .diversity.window import DiversityWindow
from .planning.base import BatchBuilder
from .planning.dataset import default_bank, row_duplicate_groups
from .planning.plan import EpochPlan, plan_epoch
from .planning.replan import BackgroundReplanner
from .planning.sources import SourceSplit, plan_sources
from .policies.calibration import calibrate_window

logger = logging.getLogger(__name__)

__all__ = ["DiversityWindowBatchSampler"]


class DiversityWindowBatchSampler(DefaultBatchSampler):
    """Plan each epoch with a batch builder so that batches fall inside a diversity window.

    Args:
        dataset (`datasets.Dataset`): the training data (its string columns define duplicates).
        batch_size (`int`): per-device batch size.
        drop_last (`bool`): drop rows that do not fill a last (global) batch.
        valid_label_columns, generator, seed: as in :class:`DefaultBatchSampler`.
        bank (`EmbeddingBank` or `torch.Tensor` of shape `(N, d)`): one embedding per row, from the model you
            train (e.g. ``EmbeddingBank.from_reference(model, [anchors, positives])``: with a second view,
            ``window="auto"`` calibrates on the real pairs). Required unless ``default_model`` is set.
        default_model (`bool` or `str`, *optional*, defaults to `False`): without a bank, encode the first two text
            columns (anchors, positives) with this model (``True``: the packaged all-MiniLM-L6-v2) once, cached on
            disk by model and data fingerprints (``HF_DIVCL_CACHE`` or ``~/.cache/hf_divcl/banks``). Batches are then
            planned from *that* model's geometry, not the one being trained.
        positives (`torch.Tensor` of shape `(N, d)`, *optional*): the positives' embeddings, for ``window="auto"``
            when ``bank`` is a tensor (an `EmbeddingBank` with two views already has them).
        show_progress (`bool`, *optional*): progress bars while an epoch is planned (default: from 100,000 rows on;
            ``DivCLTrainer`` turns them off with ``disable_tqdm``).
        window (:class:`DiversityWindow`, `str`, or `None`): the target; ``"auto"`` (default) calibrates it on the
            bank at `temperature`.
        builder (`str`, class or :class:`BatchBuilder`): ``"greedy"`` (default), ``"pool"``, ``"cluster"``,
            ``"random"``.
        builder_kwargs (`dict`, *optional*): options of the builder (e.g. ``{"m": 64}``).
        temperature (`float`, *optional*, defaults to 0.05): τ used by ``window="auto"``.
        processes (`int`, *optional*): processes sharing a global batch (default: the distributed world size).
        on_infeasible (`str`, *optional*, defaults to `"closest"`): see :func:`hf_divcl.planning.plan_epoch`.
        dedupe (`bool`, *optional*, defaults to `True`): keep rows with identical text out of the same batch.
        replan_chunk_rows (`int`, *optional*, defaults to 65,536): a mid-epoch re-plan (:meth:`replan`) of more rows
            than this is planned in parts, so that training goes on within about a second of the decision: the
            first few global batches at once, the rest in a background thread, parts of up to this many rows
            (see :meth:`replan`). ``None`` or 0: the rest of the epoch in one go.
        sources (:class:`~hf_divcl.planning.sources.SourceSplit`, *optional*): the rows are several sources one
            after the other: every global batch is planned within one source and the sources' batches are ordered
            proportionally or round robin (and mixed by ``sources.mix``); a source's last partial global batch is
            dropped when ``processes > 1``, so that every global step holds one source on every process.
    """

    _defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        dataset,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        bank: Any = None,
        window: DiversityWindow | str | None = "auto",
        builder: str | type[BatchBuilder] | BatchBuilder = "greedy",
        builder_kwargs: dict[str, Any] | None = None,
        temperature: float = 0.05,
        processes: int | None = None,
        on_infeasible: str = "closest",
        dedupe: bool = True,
        default_model: bool | str = False,
        positives: torch.Tensor | None = None,
        show_progress: bool | None = None,
        replan_chunk_rows: int | None = 65_536,
        sources: SourceSplit | None = None,
    ) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        opts = {"bank": bank, "window": window, "builder": builder, "builder_kwargs": builder_kwargs,
                "temperature": temperature, "processes": processes, "on_infeasible": on_infeasible,
                "dedupe": dedupe, "default_model": default_model, "positives": positives,
                "show_progress": show_progress, "replan_chunk_rows": replan_chunk_rows,
                "sources": sources}
        for key, value in self._defaults.items():  # options bound by configure()
            opts[key] = value
        self.dataset = dataset
        self.num_rows = len(dataset)
        self.builder = opts["builder"]
        self.builder_kwargs = dict(opts["builder_kwargs"] or {})
        self.temperature = opts["temperature"]
        self.processes = int(opts["processes"] or world_size())
        self.on_infeasible = opts["on_infeasible"]
        self._bank = opts["bank"]
        self._window = opts["window"]
        self._dedupe = opts["dedupe"]
        self._default_model = opts["default_model"]
        self._positives = opts["positives"]
        self.show_progress = opts["show_progress"]  # planning progress bars (None: from 100,000 rows on)
        self._groups: torch.Tensor | None = None
        self._plan: tuple[int, EpochPlan] | None = None
        self._skip = 0  # batches to skip at the start of the current epoch (resume)
        # ``(epoch, index, n_batches, planned rows) → rows or None``: hands out another global batch in place of
        # the planned one (``batch_policy="explore"``); ``None`` keeps the plan
        self.batch_source: Callable[[int, int, int, torch.Tensor], torch.Tensor | None] | None = None
        self._sourced_cache: tuple[tuple[int, int], torch.Tensor | None] | None = None
        self.plan_seconds = 0.0  # wall time spent planning epochs (window calibration included)
        self.replan_chunk_rows = int(opts["replan_chunk_rows"] or 0)
        if self.replan_chunk_rows < 0:
            raise ValueError(f"replan_chunk_rows must be >= 0 (0: re-plan in one go), got {self.replan_chunk_rows}.")
        self._replanner = BackgroundReplanner()  # the parts of a re-plan still being planned in the background
        self.background_plan_seconds = 0.0  # planning done in the background thread (not on the training path)
        self.replan_wait_seconds = 0.0  # time the data loader waited for a part planned in the background
        self.sources: SourceSplit | None = opts["sources"]
        if self.num_rows == 0:
            raise ValueError("The training dataset is empty.")
        if self.sources is not None:
            if sum(self.sources.sizes) != self.num_rows:
                raise ValueError(f"The sources hold {sum(self.sources.sizes)} rows but the dataset has "
                                 f"{self.num_rows}.")
            for name, n in zip(self.sources.names, self.sources.sizes, strict=True):
                if n < self.global_batch_size:
                    raise ValueError(f"Source {name!r} has {n} rows, fewer than one global batch ({self.processes} "
                                     f"process(es) × {batch_size}); every batch is drawn from one source. Use a "
                                     "smaller batch size or merge that source into another.")
        if self.global_batch_size > self.num_rows:
            raise ValueError(f"The global batch ({self.processes} process(es) × {batch_size}) is larger than the "
                             f"dataset ({self.num_rows} rows).")
        if isinstance(self._window, str) and self._window != "auto":
            self._window = DiversityWindow.parse(self._window)

    def __call__(self, *args: Any, **kwargs: Any) -> DiversityWindowBatchSampler:
        # sentence-transformers calls `batch_sampler(dataset, batch_size=..., ...)` for every data loader; an
        # instance would otherwise be ignored silently (one row per batch, loss 0)
        raise TypeError("batch_sampler= got a DiversityWindowBatchSampler *instance*; sentence-transformers builds "
                        "one per data loader from a class. Pass the class: batch_sampler=DiversityWindowBatchSampler"
                        ".configure(bank=..., window=...).")

    @classmethod
    def configure(cls, **options: Any) -> type[DiversityWindowBatchSampler]:
        """A subclass with these keyword options bound, to pass as ``batch_sampler=`` (which takes a class)."""
        return type(cls.__name__, (cls,), {"_defaults": {**cls._defaults, **options}})

    # -- the embedding snapshot and the window ------------------------------------------------------------

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.processes

    def embeddings(self) -> torch.Tensor:
        """``(N, d)`` bank snapshot the plan is computed from."""
        if self._bank is None:
            self._bank = default_bank(self.dataset, self.valid_label_columns, self._default_model)
        bank = self._bank
        x = bank.all(view=0, dtype=bank.dtype) if hasattr(bank, "all") and not isinstance(bank, torch.Tensor) else bank
        if x.shape[0] != self.num_rows:
            raise ValueError(f"The bank has {x.shape[0]} rows but the dataset has {self.num_rows}; rebuild the bank "
                             "for this dataset.")
        return x

    def window(self) -> DiversityWindow | None:
        if self._window == "auto":
            x = self.embeddings()
            positives = self._positives
            if positives is None and getattr(self._bank, "num_views", 1) > 1:
                positives = self._bank.all(view=1, dtype=torch.float32)
            if positives is None:
                logger.warning("window='auto' without the positives' embeddings: the anchors stand in as their own "
                               "positives, so the calibration measures almost no gradient and the window is a guess. "
                               "Pass an EmbeddingBank with anchors and positives (EmbeddingBank.from_reference(model, "
                               "[anchors, positives])), positives=..., or an explicit window.")
            elif positives.shape[0] != x.shape[0]:
                raise ValueError(f"positives has {positives.shape[0]} rows but the bank has {x.shape[0]}.")
            cal = calibrate_window(x.float(), self.global_batch_size, self.temperature, seed=self.seed,
                                   positives=None if positives is None else positives.float())
            self._window = cal.window
            logger.info("calibrated window: %s", cal.format())
        return self._window

    def groups(self) -> torch.Tensor | None:
        """Duplicate groups (:meth:`row_groups`) when ``dedupe`` is on, so duplicates never meet in a batch."""
        return self.row_groups() if self._dedupe else None

    def row_groups(self) -> torch.Tensor | None:
        """Duplicate group per row ``(N,)``: rows with the same text in the same column (anchor, positive) or the
        same image bytes share a group (they are false negatives of each other). Hard-negative columns (third and
        later) are not compared: a row's hard negative may well be another row's positive."""
        if self._groups is None:
            self._groups = row_duplicate_groups(self.dataset, self.valid_label_columns)
        return self._groups

    # -- planning -----------------------------------------------------------------------------------------------

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The (cached) global-batch plan of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan is None or self._plan[0] != epoch:
            t0 = time.perf_counter()
            builder = self.builder
            window = self.window() if builder != "random" else None
            # random batches need no embeddings: without a bank, plan from the row count (no encoding pass)
            emb = self.num_rows if builder == "random" and self._bank is None else self.embeddings()
            kwargs = self.builder_kwargs if builder != "random" else {}
            groups = self.groups()
            if self.sources is None:
                plan = plan_epoch(emb, self.global_batch_size, builder=builder, window=window,
                                  seed=self.seed, epoch=epoch, drop_last=self.drop_last, groups=groups,
                                  on_infeasible=self.on_infeasible, progress=self.show_progress, **kwargs)
            else:
                def plan_source(rows: torch.Tensor, s: int) -> EpochPlan:
                    sub = len(rows) if isinstance(emb, int) else emb[rows]
                    return plan_epoch(sub, self.global_batch_size, builder=builder, window=window,
                                      seed=mix_seed(self.seed, 1_000 + s), epoch=epoch,
                                      drop_last=self._source_drop_last, on_infeasible=self.on_infeasible,
                                      groups=None if groups is None else groups[rows],
                                      progress=self.show_progress, **kwargs)
                plan = plan_sources(self.sources, plan_source, self.global_batch_size, seed=self.seed,
                                    epoch=epoch, groups=groups)
            self.plan_seconds += time.perf_counter() - t0
            self._replanner.drop()
            self._plan = (epoch, plan)
            self._check_in_window(plan, epoch)
        return self._plan[1]

    def _check_in_window(self, plan: EpochPlan, epoch: int) -> None:
        """Say so (WARNING) when under half of an epoch's planned batches land inside the window."""
        if plan.window is None or not len(plan.batches) or plan.in_window_fraction >= 0.5:
            return
        reach = (f"; batches of this data range over [{plan.achievable[0]:.3g}, {plan.achievable[1]:.3g}]"
                 if plan.achievable else "")
        logger.warning("Epoch %d: only %.0f%% of the %d planned batches are inside the window %s ∈ [%.3g, %.3g]%s. "
                       "The diversity window is mostly not applied: calibrate it on this data with the model you "
                       "train (window='auto' with a bank holding anchors and positives), widen it, or try another "
                       "builder (greedy with a larger m, pool, cluster).", epoch, 100 * plan.in_window_fraction,
                       len(plan.batches), plan.window.metric, plan.window.low, plan.window.high, reach)

    def local_batches(self, epoch: int | None = None) -> list[list[int]]:
        """Global batches split into ``processes`` consecutive local batches of ``batch_size``."""
        plan = self.plan(epoch)
        applied = self._replanner.applied  # each part put in by the background re-planner changes the batches
        cached = getattr(self, "_local_cache", None)
        if cached is not None and cached[0] is plan and cached[1] == applied:
            return cached[2]
        out = []
        for gb in plan.batches:
            out.extend(gb[i:i + self.batch_size].tolist() for i in range(0, gb.numel(), self.batch_size))
        self._local_cache = (plan, applied, out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        # read the plan afresh at every batch: :meth:`replan` may replace the rest of the epoch mid-iteration
        skip, self._skip = self._skip, 0
        self._yielded = skip
        epoch = self.epoch
        while True:
            self._settle(self._yielded // self.processes)
            batches = self.local_batches(epoch)
            if self._yielded >= len(batches):
                return
            self._yielded += 1
            yield self._sourced(epoch, self._yielded - 1, batches)

    def _sourced(self, epoch: int, k: int, batches: list[list[int]]) -> list[int]:
        """Local batch ``k``, or its part of the global batch that :attr:`batch_source` hands out instead."""
        source = self.batch_source
        if source is None:
            return batches[k]
        index, part = divmod(k, self.processes)
        cached = self._sourced_cache
        if cached is None or cached[0] != (epoch, index):
            plan = self.plan(epoch)
            rows = source(epoch, index, len(plan.batches), plan.batches[index]) if index < len(plan.batches) \
                else None
            cached = ((epoch, index), rows)
            self._sourced_cache = cached
        rows = cached[1]
        if rows is None:
            return batches[k]
        return rows[part * self.batch_size:(part + 1) * self.batch_size].tolist()

    def set_epoch(self, epoch: int) -> None:
        if epoch != getattr(self, "epoch", None):
            self._yielded = 0
        super().set_epoch(epoch)

    def set_bank(self, bank) -> None:
        """Plan from ``bank`` (an :class:`~hf_divcl.bank.EmbeddingBank`) from the next plan or re-plan on: a run that
        started on random batches without one gets it when a window is chosen."""
        self._bank = bank

    def set_policy(self, builder: str, window: DiversityWindow | None) -> None:
        """Change the builder and window used from the next plan on (see :meth:`replan` for the current epoch)."""
        if builder != "random" and window is None:
            raise ValueError(f"builder={builder!r} needs a window.")
        self.builder = builder
        self._window = window

    def replan(self, from_global_batch: int) -> EpochPlan:
        """Re-plan the current epoch's global batches from ``from_global_batch`` on with the current builder and
        window; earlier batches are kept, and so is the set of rows (each row still appears once per epoch).

        When more than ``replan_chunk_rows`` rows are left (and the builder is not ``random``), the rest is planned
        in parts so that the first window batch is ready at once: the first part here, the others by one background
        thread (:class:`~hf_divcl.planning.replan.BackgroundReplanner`). Until a part is ready its rows stay in random
        batches; the data loader waits for a part before handing out its first batch (:attr:`replan_wait_seconds`),
        so the batches never depend on timing. A part that fails to plan is logged and keeps its random batches.

        Deterministic for (plan, seed, epoch, from_global_batch, bank), so every rank computes the same plan.
        """
        if self.sources is not None:
            raise NotImplementedError("Re-planning an epoch mid-way is not supported with several sources.")
        plan = self.plan()
        cut = max(0, min(int(from_global_batch), len(plan.batches)))
        if self.yielded_global() > cut:
            raise RuntimeError(f"Cannot re-plan from global batch {cut}: {self.yielded_global()} were already handed "
                               "to the data loader.")
        self._settle(cut - 1)  # parts that start before the cut are kept: they must be planned first
        self._replanner.drop()
        plan = self.plan()
        if len(plan.batches) - cut < 2:  # nothing left to re-arrange
            return plan
        t0 = time.perf_counter()
        window = self.window() if self.builder != "random" else None
        uses_bank = self.builder != "random" or self._bank is not None
        groups = self.groups()
        new, took = self._replanner.replan(
            plan, cut, embeddings=self.embeddings() if uses_bank else None, bank=self._bank, groups=groups,
            window=window, batch_size=self.global_batch_size, builder=self.builder, builder_kwargs=self.builder_kwargs,
            seed=self.seed, epoch=self.epoch, on_infeasible=self.on_infeasible, chunk_rows=self.replan_chunk_rows,
            progress=self.show_progress, started=t0)
        self.plan_seconds += took
        self._plan = (self._plan[0], new)
        self._local_cache = None
        return new

    # -- parts planned in the background (:class:`~hf_divcl.planning.replan.BackgroundReplanner`) -----------------

    def _settle(self, upto: int | None) -> None:
        """Put into the plan every background part that starts at or before global batch ``upto`` (all with
        ``None``), waiting for those not finished yet."""
        waited, background = self._replanner.settle(self._plan[1] if self._plan is not None else None, upto)
        self.replan_wait_seconds += waited
        self.plan_seconds += waited
        self.background_plan_seconds += background

    def close(self) -> None:
        """Stop background planning (parts not started are cancelled); the sampler still works afterwards."""
        self._replanner.close()

    def __getstate__(self) -> dict[str, Any]:
        self._settle(None)  # a copy carries the whole plan (and no background thread: see BackgroundReplanner)
        return dict(self.__dict__)

    def yielded_global(self) -> int:
        """Global batches of the current epoch handed out so far (a started one counts)."""
        return -(-getattr(self, "_yielded", 0) // self.processes)

    @property
    def _source_drop_last(self) -> bool:
        return self.drop_last or self.processes > 1

    def __len__(self) -> int:
        if self.sources is not None:
            return self.sources.local_batches(self.batch_size, self.processes, self._source_drop_last)
        g = self.global_batch_size
        n_full = self.num_rows // g
        rest = self.num_rows - n_full * g
        extra = 0 if self.drop_last or rest == 0 else -(-rest // self.batch_size)
        return n_full * self.processes + extra

    # -- resume -------------------------------------------------------------------------------------------------

    def state_dict(self, include_plan: bool = True) -> dict[str, Any]:
        """Epoch, seed, how many batches of this epoch were yielded and (optionally) the epoch's plan itself.

        Keeping the plan makes a resume exact even when the bank changed since the epoch began (a bank fed by
        training steps): the resumed run replays the same partition instead of re-planning from newer embeddings.
        """
        self._settle(None)
        state: dict[str, Any] = {"epoch": self.epoch, "seed": self.seed,
                                 "batches_yielded": getattr(self, "_yielded", 0), "num_rows": self.num_rows,
                                 "batch_size": self.batch_size, "processes": self.processes}
        if include_plan and self._plan is not None and self._plan[0] == self.epoch:
            batches = self._plan[1].batches
            state["plan_epoch"] = self._plan[0]
            state["plan_rows"] = torch.cat(batches) if batches else torch.empty(0, dtype=torch.long)
            state["plan_sizes"] = torch.tensor([b.numel() for b in batches], dtype=torch.long)
        return state

    def load_state_dict(self, state: dict[str, Any], skip: bool = True) -> None:
        """Restore a :meth:`state_dict`. With ``skip`` the next iteration starts after the batches already
        yielded; pass ``skip=False`` when the caller skips them itself (the transformers Trainer does)."""
        for key in ("num_rows", "batch_size", "processes"):
            if state[key] != getattr(self, key):
                raise ValueError(f"Cannot resume: the saved sampler had {key}={state[key]}, this one has "
                                 f"{getattr(self, key)}.")
        self.seed = state["seed"]
        self.set_epoch(state["epoch"])
        self._skip = int(state["batches_yielded"]) if skip else 0
        if "plan_rows" in state:
            rows = torch.as_tensor(state["plan_rows"], dtype=torch.long)
            sizes = torch.as_tensor(state["plan_sizes"], dtype=torch.long).tolist()
            batches = list(torch.split(rows, sizes)) if sizes else []
            window = self._window if isinstance(self._window, DiversityWindow) else None
            nan = torch.full((len(batches),), float("nan"))
            self._plan = (int(state["plan_epoch"]), EpochPlan(batches=batches, values=nan,
                                                              in_window=torch.zeros(len(batches), dtype=torch.bool),
                                                              metric=window.metric if window else "effective_rank",
                                                              builder={"name": "restored"}, window=window,
                                                              seconds=0.0))
