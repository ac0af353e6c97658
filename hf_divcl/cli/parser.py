"""Dataclass configurations usable from Python, YAML and the command line — one argument system.

Every configuration in hf_divcl is a ``@dataclass`` whose fields carry ``metadata={"help": ...}`` (and ``"choices"``
where the values are few). transformers' ``HfArgumentParser`` turns such classes into command-line options
(``--batch-size 64`` or ``--batch_size 64``, lists as ``--temperatures 0.05 0.1``); :func:`parse_with_config` puts a
YAML file (``--config x.yaml``) underneath the command line: YAML sets values, explicit flags override them,
unknown keys fail with the list of valid ones. YAML is read with ``yaml.safe_load`` (no object construction).
The recipes (``hf-divcl train``, ``recipes/*.py``) read their two classes the same way, see
:mod:`hf_divcl.cli.recipe_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["add_config_option", "dataclass_parser", "load_yaml_config", "parse_with_config", "read_yaml_mapping",
           "safe_load_yaml"]


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML file of field: value; command-line flags override it.")


def dataclass_parser(*classes: type, **kwargs):
    """An ``HfArgumentParser`` for ``classes`` with a ``--config`` option (YAML underneath the flags)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(classes, allow_abbrev=False, **kwargs)
    add_config_option(parser)
    return parser


def parse_with_config(parser, classes: Sequence[type], argv: Sequence[str]) -> tuple[Any, ...]:
    """The dataclass instances for ``argv``: dataclass defaults < the ``--config`` YAML < explicit flags."""
    known, _ = parser.parse_known_args(list(argv))
    if getattr(known, "config", None):
        values: dict[str, Any] = {}
        names = {f.name for cls in classes for f in dataclasses.fields(cls)}
        for cls in classes:
            values.update(load_yaml_config(known.config, cls, extra=names))
        parser.set_defaults(**values)
    namespace = parser.parse_args(list(argv))
    return tuple(cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if f.init})
                 for cls in classes)


MAX_CONFIG_NODES = 10_000


def safe_load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` (plain data only: no Python objects are ever constructed) of a config, refusing one
    whose aliases expand to more than :data:`MAX_CONFIG_NODES` values (a "billion laughs" file)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"Config file {source!r} is not valid plain YAML ({str(err).splitlines()[0]}). Only "
                         "mappings, lists, strings, numbers and booleans are read; tags such as !!python/object "
                         "are refused.") from None
    seen, stack = 0, [data]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise ValueError(f"Config file {source!r} expands to more than {MAX_CONFIG_NODES} values (nested "
                             "aliases?); write the values out.")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return data


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The ``key: value`` mapping of a YAML config file (read with :func:`safe_load_yaml`; empty file: ``{}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    data = safe_load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of key: value, got {type(data).__name__}.")
    return data


def load_yaml_config(path: str | Path, cls: type, extra: set[str] | None = None) -> dict[str, Any]:
    """Read a YAML mapping of field values for ``cls`` (keys in ``extra`` belong to another class read from the same
    file and are left out); unknown keys raise with the valid ones listed."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = {str(k).replace("-", "_"): v for k, v in read_yaml_mapping(path).items()}
    unknown = sorted(set(data) - names - (extra or set()))
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {str(path)!r}; valid keys for {cls.__name__}: {sorted(names)}.")
    return {k: v for k, v in data.items() if k in names}
