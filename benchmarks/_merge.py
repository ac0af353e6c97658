"""Joining result files of one benchmark made apart (other seeds, arms or τ) into one: the checks every ``--merge``
shares."""

from __future__ import annotations

import json
from pathlib import Path


def read_parts(paths: list[str], may_differ: tuple[str, ...], run_key: dict[str, str],
               from_config: dict[str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """The result files at ``paths`` and their runs, all in one list. Every ``config`` setting other than
    ``may_differ`` must agree with the first file's (an absent setting counts as None), and no run may appear twice
    (its identity: ``run_key``, label → run field, e.g. ``{"policy": "policy", "seed": "seed"}``); otherwise
    SystemExit names the file and the settings. ``from_config`` (run field → config setting) fills a field that a
    file's runs lack (files written before runs recorded it) from that file's setting."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    base = {k: v for k, v in parts[0]["config"].items() if k not in may_differ}
    for path, part in zip(paths[1:], parts[1:], strict=True):
        other = {k: v for k, v in part["config"].items() if k not in may_differ}
        diff = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
        if diff:
            allowed = ", ".join(k for k in may_differ if k not in ("output", "merge", "merged_from"))
            raise SystemExit(f"{path}: other settings than {paths[0]} ({', '.join(diff)}); only {allowed} may "
                             "differ.")
    fill = from_config or {}
    runs = [{**{f: part["config"].get(k) for f, k in fill.items() if f not in r}, **r}
            for part in parts for r in part["runs"]]
    seen = [tuple(r[field] for field in run_key.values()) for r in runs]
    if len(set(seen)) != len(seen):
        raise SystemExit(f"the files share ({', '.join(run_key)}) runs; merge files with different runs.")
    return parts, runs


def merged_from(paths: list[str], parts: list[dict]) -> list[str]:
    """The original files behind ``paths``: a merged file names its own sources."""
    return [src for path, part in zip(paths, parts, strict=True)
            for src in (part["config"].get("merged_from") or [path])]
