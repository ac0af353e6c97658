"""Dataclass configurations usable from Python, YAML and the command line.

Every configuration in hf_divcl is a ``@dataclass`` whose fields carry ``metadata={"help": ...}``. This module
turns such a class into ``argparse`` options (``--batch-size 64``, ``--temperatures 0.05 0.1``) and merges a
YAML file (``--config x.yaml``) underneath the command line: YAML sets values, explicit flags override them,
unknown keys fail with the list of valid ones. YAML is read with ``yaml.safe_load`` (no object construction).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

__all__ = ["add_dataclass_arguments", "config_from_args", "load_yaml_config"]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _str2bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--field-name`` option (also spelled ``--field_name``, as ``hf-divcl train`` keys are) per dataclass
    field; defaults stay ``None`` so YAML can fill them."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata.get("help", "")}
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        kwargs["help"] += f" (default: {default})"
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        origin = typing.get_origin(tp)
        if origin in (list, tuple):
            (item,) = typing.get_args(tp)[:1]
            kwargs.update(nargs="+", type=item)
        elif tp is bool:
            kwargs.update(type=_str2bool, nargs="?", const=True, metavar="BOOL")
        else:
            kwargs["type"] = tp
        flags = dict.fromkeys(["--" + f.name.replace("_", "-"), "--" + f.name])  # --batch-size and --batch_size
        parser.add_argument(*flags, **kwargs)


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


def load_yaml_config(path: str | Path, cls: type) -> dict[str, Any]:
    """Read a YAML mapping of field values for ``cls``; unknown keys raise with the valid ones listed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {str(path)!r} does not exist.")
    data = safe_load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of field: value, got {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in {str(path)!r}; valid keys for {cls.__name__}: {sorted(names)}.")
    return data


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from parsed arguments: dataclass defaults < ``--config`` YAML < explicit flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml_config(args.config, cls))
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return cls(**values)
