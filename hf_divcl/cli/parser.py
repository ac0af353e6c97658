"""One argument system for every ``hf-divcl`` command and recipe: transformers' ``HfArgumentParser`` over config
dataclasses, a safe YAML file (``--config``) underneath the flags.

Every configuration is a ``@dataclass`` whose fields carry ``metadata={"help": ...}`` (and ``"choices"`` where the
values are few). :func:`config_parser` turns such classes into command-line options (``--batch-size 64`` or
``--batch_size 64``, lists as ``--temperatures 0.05 0.1``, ``--key none`` unsets an optional field);
:func:`parse_config` reads the values in this order, later ones winning: dataclass defaults, the caller's defaults,
the YAML file, Python overrides, the command line. Unknown keys (with suggestions) and wrong types fail before
anything runs, as one ``ValueError`` that names the file or the flag to blame. YAML is read with ``yaml.safe_load``
(no object construction).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_CONFIG_NODES", "check_value", "config_option", "config_parser", "field_types", "parse_config",
           "read_yaml_mapping", "safe_load_yaml", "unknown_key"]

MAX_CONFIG_NODES = 10_000
_NONE = ("none", "null")
COMMA_LIST_KEYS = frozenset({"data"})
"""Text keys that a YAML list may give as well: the items are joined with commas (``data``: several files)."""
_UNSET = object()  # not a string: argparse converts string defaults with the option's type


def config_parser(*classes: type, add_help: bool = True, **kwargs):
    """An ``HfArgumentParser`` over ``classes`` with ``--config PATH``; errors raise ``argparse.ArgumentError``
    instead of exiting (:func:`parse_config` turns them into one line), abbreviations are off, and every optional
    field accepts ``none`` / ``null`` for ``None``."""
    from transformers import HfArgumentParser

    # report_to's own "none" means "no integration" (transformers reads the string); every other optional "none"
    # is None
    optional = {name for name, tp in field_types(classes).items() if type(None) in typing.get_args(tp)} - {
        "report_to"}

    class _Parser(HfArgumentParser):
        def add_argument(self, *args, **kw):
            dest = kw.get("dest", args[0].lstrip("-").replace("-", "_") if args else None)
            if dest in optional and "type" in kw:
                kw["type"] = _none_or(kw["type"])
            return super().add_argument(*args, **kw)

    parser = _Parser(classes, add_help=add_help, allow_abbrev=False, exit_on_error=False, **kwargs)
    parser.add_argument("--config", default=None,
                        help="YAML file of key: value (or a packaged recipe's name); flags override it.")
    return parser


def _none_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in _NONE else convert(text)

    parse.__name__ = getattr(convert, "__name__", "str")  # argparse names the type in its errors
    return parse


def field_types(classes: Sequence[type]) -> dict[str, Any]:
    """``{field name: type hint}`` of every init field of ``classes``."""
    out: dict[str, Any] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        out.update({f.name: hints.get(f.name) for f in dataclasses.fields(cls) if f.init})
    return out


def config_option(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config PATH`` or ``--config=PATH``) or ``None``, found without the
    configuration classes (so before their heavy imports); raises ``argparse.ArgumentError`` when it has no value."""
    find = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    find.add_argument("--config", default=None)
    return find.parse_known_args(list(argv))[0].config


def parse_config(parser, classes: Sequence[type], argv: Sequence[str], *, config: str | Path | None = None,
                 overrides: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
                 find_config: Callable[[Path], Path] | None = None) -> tuple[Any, ...]:
    """The dataclass instances of ``classes`` for ``argv``: dataclass defaults < ``defaults`` < the YAML file
    (``--config`` in ``argv``, else ``config``; located by ``find_config``) < ``overrides`` < the flags in ``argv``.

    Only the flags go through argparse's conversions; YAML and Python values keep their types (checked against the
    fields'). Raises ``ValueError`` (one line, blaming the file or the flag) for unknown keys, wrong types and bad
    flags, ``FileNotFoundError`` for a missing config file."""
    argv = list(argv)
    types_ = field_types(classes)
    parser.set_defaults(**dict.fromkeys([*types_, "config"], _UNSET))  # tells the given flags from the rest
    try:
        given, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ValueError(f"command line ({err.argument_name}): {err.message}.") from None
    given = {k: v for k, v in vars(given).items() if v is not _UNSET}
    if rest:
        flag = next((r for r in rest if r.startswith("--")), rest[0])
        key = flag[2:].partition("=")[0].replace("-", "_")
        if not flag.startswith("--") or key in types_:
            raise ValueError(f"command line: unexpected argument {flag!r}; use --config PATH and --key value.")
        raise unknown_key(key, list(types_), f"command line (--{key})")
    path = given.pop("config", None) or config
    values = dict(defaults or {})
    if path is not None:
        path = (find_config or Path)(Path(path))
        values.update(_checked(read_yaml_mapping(path), types_, str(path)))
    for key, value in (overrides or {}).items():
        values.update(_checked({key: value}, types_, f"command line (--{key})"))
    values.update({k: v for k, v in given.items() if k in types_})
    return tuple(cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init and f.name in values})
                 for cls in classes)


def unknown_key(key: str, keys: list[str], where: str) -> ValueError:
    """The error for a key no configuration class has: its new spelling when it moved, else the closest valid ones."""
    from .._common import RENAMED

    if key in RENAMED:
        return ValueError(f"{where}: {key!r} is no longer a key; it is now {RENAMED[key]} (YAML: batch_policy: "
                          "NAME and batch_policy_kwargs: {...}; loss_kwargs: {...}).")
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"{where}: unknown key {key!r}.{hint} `--help` lists the keys.")


def _checked(values: dict[str, Any], types_: dict[str, Any], where: str) -> dict[str, Any]:
    out = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key == "config":
            raise ValueError(f"{where}: 'config' cannot be set inside a config file.")
        if key not in types_:
            raise unknown_key(key, list(types_), where)
        out[key] = check_value(key, value, types_[key], where)
    return out


def _simple_types(tp: Any) -> tuple[Any, ...]:
    """The non-None members of a (possibly Optional / Union) field type."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def check_value(key: str, value: Any, tp: Any, source: str) -> Any:
    """A YAML / Python value for field ``key``, checked against its type (complex types — lists, dicts, enums — are
    checked by the configuration classes themselves). YAML 1.1 reads ``no``/``yes`` as booleans: they go back to
    strings for string fields (``save_strategy: no``)."""
    allowed = _simple_types(tp)
    if key in COMMA_LIST_KEYS and isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if isinstance(value, bool) and bool not in allowed and str in allowed:
        return "yes" if value else "no"
    simple = [a for a in allowed if a in (bool, int, float, str)]
    if value is None or not simple or len(simple) < len(allowed):
        return value
    ok = any((isinstance(value, a) and not (a is int and isinstance(value, bool))) or
             (a is float and isinstance(value, int) and not isinstance(value, bool)) for a in simple)
    if not ok:
        names = " or ".join(a.__name__ for a in simple)
        raise ValueError(f"{source}: key {key!r} must be {names}, got {value!r} ({type(value).__name__}).")
    return value


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
