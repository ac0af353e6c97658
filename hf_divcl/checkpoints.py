"""Which checkpoint a resumed run starts from: the last *complete* one, never a half-written one.

The Trainer writes a checkpoint's files in order — hf_divcl state, model, optimizer, scheduler, RNG — and
``trainer_state.json`` last, so a checkpoint is complete when that file exists, parses, and names the checkpoint's
own step (and, when it has hf_divcl state, ``divcl_state/sampler.json`` is there). A process killed mid-save
leaves a folder that fails this test; it is renamed ``checkpoint-N.incomplete`` (kept for inspection, ignored by
the Trainer) and the run resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["checkpoint_problem", "complete_checkpoints", "resolve_resume_checkpoint"]

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
