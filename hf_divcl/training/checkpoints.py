"""Which checkpoint a resumed run starts from: the last *complete* one, never a half-written one.

The Trainer writes a checkpoint's files in order — hf_divcl state, model, optimizer, scheduler, RNG — and
``trainer_state.json`` last, so a checkpoint is complete when that file exists, parses, and names the checkpoint's
own step (and, when it has hf_divcl state, ``divcl_state/sampler.json`` is there). A process killed mid-save
leaves a folder that fails this test; it is renamed ``checkpoint-N.incomplete`` (kept for inspection, ignored by
the Trainer) and the run resumes from the newest complete checkpoint.

Each checkpoint also records which run wrote it and the training data it was trained on (``divcl_data.json``: run
id, the data set's fingerprint, rows, columns), and ``output_dir/divcl_run_id.json`` names the run last started in
that folder. A resume refuses a checkpoint whose data fingerprint differs from the current training set's (its bank
and epoch plan index the old rows), and ``resume_from_checkpoint=True`` never picks a checkpoint an earlier run left
in the same ``output_dir``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._common import ROW_ID_COLUMN, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["DATA_FILE", "RUN_FILE", "STATE_DIR", "SavedState", "checkpoint_problem", "complete_checkpoints",
           "data_identity", "resolve_resume_checkpoint", "save_divcl_state", "start_run", "write_checkpoint_identity",
           "writing_checkpoint"]

DATA_FILE = "divcl_data.json"  # in each checkpoint: run id and training data identity
RUN_FILE = "divcl_run_id.json"  # in output_dir: the run last started there
STATE_DIR = "divcl_state"  # in each checkpoint: sampler plan, window, the batch policy's state, bank

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete checkpoint, or ``None`` when it is."""
    d = Path(path)
    m = _CHECKPOINT.match(d.name)
    if not d.is_dir():
        return "not a folder"
    state = d / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing (the save was interrupted)"
    try:
        step = json.loads(state.read_text()).get("global_step")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is truncated or corrupt (the save was interrupted)"
    if m is not None and step != int(m.group(1)):
        return f"trainer_state.json is for step {step}, not {m.group(1)}"
    if (d / "divcl_state").is_dir() and not (d / "divcl_state" / "sampler.json").is_file():
        return "divcl_state/sampler.json is missing"
    return None


def complete_checkpoints(output_dir: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(complete, incomplete)`` ``checkpoint-N`` folders of ``output_dir``, oldest first; incomplete ones with
    the reason."""
    d = Path(output_dir)
    found = sorted((int(m.group(1)), p) for p in (d.iterdir() if d.is_dir() else ())
                   if (m := _CHECKPOINT.match(p.name)) and p.is_dir())
    complete, incomplete = [], []
    for _, p in found:
        problem = checkpoint_problem(p)
        (complete.append(p) if problem is None else incomplete.append((p, problem)))
    return complete, incomplete


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume: str | bool | None, *,
                              set_aside: bool = True) -> str | None:
    """The checkpoint ``Trainer.train(resume_from_checkpoint=resume)`` should load.

    ``True``: the newest complete checkpoint of ``output_dir``; incomplete ones newer than it are renamed
    ``checkpoint-N.incomplete`` when ``set_aside`` (the main process). A path: checked, with a clear error when
    incomplete. ``None``/``False``: ``None``.
    """
    if resume is None or resume is False:
        return None
    if isinstance(resume, (str, os.PathLike)):
        problem = checkpoint_problem(resume)
        if problem is not None:
            complete, _ = complete_checkpoints(Path(resume).parent)
            hint = f" The newest complete checkpoint there is {str(complete[-1])!r}." if complete else ""
            raise ValueError(f"Cannot resume from {str(resume)!r}: {problem}.{hint}")
        return str(resume)
    complete, incomplete = complete_checkpoints(output_dir)
    complete = _current_run_only(output_dir, complete)
    newest = complete[-1] if complete else None
    newer = [(p, why) for p, why in incomplete
             if newest is None or int(p.name.split("-")[1]) > int(newest.name.split("-")[1])]
    for p, why in newer:
        logger.warning("Skipping %s: %s.%s", p, why, " Renamed to *.incomplete." if set_aside else "")
        if set_aside:
            target = p.with_name(p.name + ".incomplete")
            k = 1
            while target.exists():
                target, k = p.with_name(f"{p.name}.incomplete{k}"), k + 1
            os.replace(p, target)
    if newest is None:
        listed = "; ".join(f"{p.name}: {why}" for p, why in incomplete) or "none found"
        raise ValueError(f"resume_from_checkpoint=True but {str(output_dir)!r} has no complete checkpoint "
                         f"({listed}). Start without resume_from_checkpoint to train from the beginning.")
    if newer:
        logger.warning("Resuming from %s, the newest complete checkpoint.", newest)
    return str(newest)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _current_run_only(output_dir: str | os.PathLike, complete: list[Path]) -> list[Path]:
    """The checkpoints written by the run last started in ``output_dir`` (all of them when no run is recorded,
    e.g. an output folder from before run ids). Refuses when only an earlier run's checkpoints are there."""
    run = _read_json(Path(output_dir) / RUN_FILE)
    if run is None or not run.get("run_id"):
        return complete
    current = [p for p in complete if (_read_json(p / DATA_FILE) or {}).get("run_id") == run["run_id"]]
    stale = [p for p in complete if p not in current]
    if stale and not current:
        names = ", ".join(p.name for p in stale)
        raise ValueError(f"resume_from_checkpoint=True: the checkpoints in {str(output_dir)!r} ({names}) were left by "
                         f"an earlier run, not by the run last started there (run {run['run_id']}, started "
                         f"{run.get('started', '?')}, which saved no checkpoint). Resuming would silently continue "
                         f"the older run. To continue it anyway pass its path (resume_from_checkpoint="
                         f"{str(stale[-1])!r}); to start over, train without resume_from_checkpoint, ideally in a "
                         "new output_dir.")
    if stale:
        logger.warning("Ignoring %s: left in %s by an earlier run (not run %s).", ", ".join(p.name for p in stale),
                       output_dir, run["run_id"])
    return current


def data_identity(dataset) -> dict[str, Any]:
    """What a checkpoint records about its training data (compared on resume): the fingerprint (``datasets`` keys
    its own cache on this private attribute; no public one exists), the rows and the columns."""
    return {"data_fingerprint": getattr(dataset, "_fingerprint", None),
            "rows": len(dataset) if hasattr(dataset, "__len__") else None,
            "columns": [c for c in getattr(dataset, "column_names", None) or [] if c != ROW_ID_COLUMN]}


@contextlib.contextmanager
def writing_checkpoint(trainer: Any, folder: Path) -> Iterator[None]:
    """Around the Trainer's own checkpoint save: first flush the bank and write hf_divcl's part (the run's identity,
    the sampler plan, the window, the policy's state, the bank) into ``folder``; a failed write (disk full, a quota)
    becomes a :class:`~hf_divcl.training.guards.CheckpointWriteError` naming the checkpoint that resumes the run."""
    from .guards import CheckpointWriteError, checkpoint_write_error

    trainer.flush_bank()
    try:
        if trainer.args.should_save and trainer.run_id is not None:
            write_checkpoint_identity(folder, trainer.run_id, data_identity(trainer.train_dataset))
        sampler = trainer.divcl_sampler
        if trainer.args.should_save and sampler is not None:
            window = trainer.diversity.window
            save_divcl_state(folder, sampler=sampler.state_dict(), bank=trainer.bank,
                             window=window.to_dict() if window is not None else None,
                             policy=trainer.policy.state_dict(), arrays=trainer.policy.state_arrays())
        yield
    except OSError as err:
        if isinstance(err, CheckpointWriteError):
            raise
        raise checkpoint_write_error(err, folder, complete_checkpoints(trainer.args.output_dir)[0]) from err


def write_checkpoint_identity(folder: str | os.PathLike, run_id: str, data: dict[str, Any]) -> None:
    """Record in a checkpoint which run wrote it and on which data (``data``: fingerprint, rows, columns)."""
    atomic_write_text(Path(folder) / DATA_FILE, json.dumps({"run_id": run_id, **data}, indent=2))


def _describe(data: dict[str, Any]) -> str:
    return f"fingerprint {data.get('data_fingerprint')} ({data.get('rows')} rows, columns {data.get('columns')})"


def start_run(output_dir: str | os.PathLike, resume: str | None, data: dict[str, Any], *, write: bool = True) -> str:
    """The run id of a training run about to start, after checking a resumed checkpoint's data.

    ``resume`` (a checkpoint path or ``None``): a resumed run keeps the checkpoint's run id, and refuses when the
    checkpoint was trained on data with another fingerprint; a new run gets a new id, with a warning when
    ``output_dir`` already holds checkpoints (``resume_from_checkpoint=True`` will ignore them). The main process
    (``write``) records the id in ``output_dir/divcl_run_id.json``.
    """
    run_id = None
    if resume is not None:
        saved = _read_json(Path(resume) / DATA_FILE)
        if saved is None:
            logger.warning("%s has no %s (saved by an older hf_divcl): cannot check that the training data is "
                           "unchanged.", resume, DATA_FILE)
        else:
            old, new = saved.get("data_fingerprint"), data.get("data_fingerprint")
            if old is not None and new is not None and (old != new or saved.get("rows") != data.get("rows")):
                raise ValueError(f"Cannot resume from {str(resume)!r}: it was trained on data with {_describe(saved)}, "
                                 f"but this training set has {_describe(data)}. The checkpoint's embedding bank and "
                                 "epoch plan index the old rows, so they would plan batches for other texts. Resume "
                                 "with the training set it was trained on, or start a new run (without "
                                 "resume_from_checkpoint, in a new output_dir).")
            run_id = saved.get("run_id")
    else:
        complete, _ = complete_checkpoints(output_dir)
        if complete:
            logger.warning("%s already holds %s from an earlier run. This run starts from scratch; "
                           "resume_from_checkpoint=True will ignore those checkpoints, but save_total_limit still "
                           "counts them when deleting old checkpoints. Prefer a new output_dir.", output_dir,
                           ", ".join(p.name for p in complete))
    run_id = run_id or uuid.uuid4().hex[:12]
    if write:
        atomic_write_text(Path(output_dir) / RUN_FILE, json.dumps(
            {"run_id": run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "resumed_from": str(resume) if resume else None, **data}, indent=2))
    return run_id


# -- hf_divcl's part of a checkpoint ---------------------------------------------------------------------------------
# Written by ``DivCLTrainer._save_checkpoint`` *before* the Trainer's own files, not in a ``TrainerCallback.on_save``:
# ``on_save`` runs after ``trainer_state.json`` (the mark of a complete checkpoint) and after old checkpoints are
# rotated away, so a crash there would leave a "complete" checkpoint without its plan and bank, and nothing older.


def save_divcl_state(folder: str | os.PathLike, *, sampler: dict[str, Any], window: dict[str, Any] | None,
                     policy: dict[str, Any] | None, bank=None,
                     arrays: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``folder/divcl_state/``: the sampler state (plan as ``.npy``, never pickled; ``sampler.json`` last, so
    a torn save is never read), the window, the batch policy's own state (``policy.json``, with its ``arrays`` as
    ``.npy``) and the bank."""
    state_dir = Path(folder) / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    for name, value in (arrays or {}).items():
        tmp = state_dir / f".{name}.npy.tmp"
        with tmp.open("wb") as fh:
            np.save(fh, value.detach().cpu().numpy(), allow_pickle=False)
        os.replace(tmp, state_dir / f"{name}.npy")
    for key in ("plan_rows", "plan_sizes"):
        if key in sampler:
            tmp = state_dir / f".{key}.npy.tmp"
            with tmp.open("wb") as fh:
                np.save(fh, sampler[key].numpy(), allow_pickle=False)
            os.replace(tmp, state_dir / f"{key}.npy")
    scalars = {k: v for k, v in sampler.items() if k not in ("plan_rows", "plan_sizes")}
    tmp = state_dir / ".sampler.json.tmp"
    tmp.write_text(json.dumps(scalars, indent=2))
    os.replace(tmp, state_dir / "sampler.json")
    if window is not None:
        (state_dir / "window.json").write_text(json.dumps(window))
    if policy is not None:
        (state_dir / "policy.json").write_text(json.dumps(policy))
    if bank is not None:
        bank.save(state_dir / "bank")


class SavedState:
    """The hf_divcl state of the checkpoint a run resumes from; every read is ``None`` for a fresh run (no
    ``checkpoint``) or a checkpoint that lacks that part."""

    def __init__(self, checkpoint: str | os.PathLike | None = None) -> None:
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.dir = self.checkpoint / STATE_DIR if self.checkpoint is not None else None

    def json(self, name: str) -> dict[str, Any] | None:
        """``divcl_state/{name}.json`` (``"window"``, ``"policy"``) parsed, or ``None``."""
        path = self.dir / f"{name}.json" if self.dir is not None else None
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

    def array(self, name: str) -> torch.Tensor | None:
        """``divcl_state/{name}.npy`` as a tensor, or ``None``."""
        path = self.dir / f"{name}.npy" if self.dir is not None else None
        return torch.from_numpy(np.load(path, allow_pickle=False)) if path is not None and path.is_file() else None

    def sampler(self) -> dict[str, Any] | None:
        """The sampler's ``state_dict`` (plan tensors read back from ``.npy``), or ``None``."""
        state = self.json("sampler")
        if state is not None and "plan_epoch" in state:
            for key in ("plan_rows", "plan_sizes"):
                state[key] = torch.from_numpy(np.load(self.dir / f"{key}.npy", allow_pickle=False))
        return state

    def bank(self):
        """The saved :class:`~hf_divcl.bank.EmbeddingBank`, or ``None``."""
        if self.dir is None or not (self.dir / "bank" / "bank.json").is_file():
            return None
        from ..bank import EmbeddingBank

        bank = EmbeddingBank.load(self.dir / "bank")
        logger.info("bank restored from %s", self.checkpoint)
        return bank
