"""Small helpers several modules share (private): the cache root and atomic file writes."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["RUN_INFO_FILE", "WINDOW_FILE", "atomic_write_text", "banks_cache_dir", "cache_root"]

WINDOW_FILE = "divcl_window.json"
"""The batch policy in force: the window (or the decision to keep random batches) and why."""
RUN_INFO_FILE = "divcl_run.json"
"""The run's loss, processes, bank, false-negative masking and per-step selection."""


def cache_root() -> Path:
    """``$HF_DIVCL_CACHE`` or ``~/.cache/hf_divcl``."""
    return Path(os.environ.get("HF_DIVCL_CACHE") or Path.home() / ".cache" / "hf_divcl")


def banks_cache_dir() -> str:
    """Where reference encodings of banks are cached by default (``<cache root>/banks``)."""
    return str(cache_root() / "banks")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a hidden temporary file and a rename, so a reader (or a crash) never sees
    a half-written file. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
