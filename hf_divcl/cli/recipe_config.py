"""What a recipe run is configured by, and how the configuration is read.

:class:`RecipeConfig` (what to train on, evaluation, card, push) and
:class:`~hf_divcl.training.arguments.DivCLTrainingArguments` (every training option) are read from one flat YAML mapping
(``yaml.safe_load``, plain data only) with the command line on top, parsed by transformers' ``HfArgumentParser``
(YAML values are its defaults, ``--key value`` and ``--key-value`` override them). Unknown keys and wrong types fail
before anything runs, blamed on the file or the flag. ``--help`` is answered from the source, without importing
transformers, and a local data file's columns are checked before the heavy imports.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .parser import read_yaml_mapping

__all__ = ["TASKS", "RecipeConfig", "help_text", "load_recipe_config", "parse_recipe_args", "recipe_parser"]

TASKS = ("text", "vision", "clip")


@dataclass
class RecipeConfig:
    """What a recipe trains on and what it does after training."""

    task: str = field(default="text", metadata={
        "help": "text (sentence pairs), vision (SimCLR-style two views of one image) or clip (image–text pairs).",
        "choices": list(TASKS)})
    model: str = field(default="all-MiniLM-L6-v2", metadata={
        "help": "SentenceTransformer folder or name ('all-MiniLM-L6-v2' is packaged); 'tiny-vit' / 'tiny-clip' "
                "build a small randomly initialised encoder from a config (no download)."})
    data: str = field(default="embedded", metadata={
        "help": "text: 'embedded' (WordNet sample shipped with hf_divcl), 'wordnet' (Debian wordnet-base) or a "
                "local .csv/.tsv/.jsonl/.parquet file with anchor/positive columns; vision/clip: 'fashion_mnist' "
                "(Debian dataset-fashion-mnist) or 'digits' (scikit-learn)."})
    pair_kind: str = field(default="example", metadata={
        "help": "WordNet pairs: example (sentence → gloss), lemma (lemmas → gloss) or both.",
        "choices": ["example", "lemma", "both"]})
    dataset_name: str | None = field(default=None, metadata={
        "help": "Name of the training data in the console, divcl_summary.json, the metric keys (<name>_ndcg@10) "
                "and the card's metadata (model-index); default: 'wordnet' for WordNet, the file name without its "
                "extension for a local file (pairs.tsv → pairs)."})
    anchor_column: str = field(default="anchor", metadata={"help": "Anchor column of a local data file."})
    positive_column: str = field(default="positive", metadata={"help": "Positive column of a local data file."})
    max_train_rows: int = field(default=0, metadata={"help": "Use at most this many training rows (0: all)."})
    max_eval_rows: int = field(default=500, metadata={"help": "Held-out rows used for evaluation."})
    hidden_size: int = field(default=64, metadata={"help": "tiny-vit / tiny-clip: hidden size."})
    layers: int = field(default=2, metadata={"help": "tiny-vit / tiny-clip: transformer layers."})
    run_evaluation: bool = field(default=True, metadata={"help": "Evaluate before and after training."})
    write_card: bool = field(default=True, metadata={"help": "Write README.md (model card) with the plots."})
    push_repo_id: str | None = field(default=None, metadata={
        "help": "Push the trained model, card, plots and logs to this Hub repo (namespace/name) at the end."})
    hub_endpoint: str | None = field(default=None, metadata={"help": "Hub endpoint (default: HF_ENDPOINT)."})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
        if self.dataset_name is not None and not re.fullmatch(r"[\w.-]+", self.dataset_name):
            raise ValueError(f"dataset_name must be letters, digits, '_', '-' or '.', got {self.dataset_name!r} "
                             "(it prefixes metric keys and goes into the card's metadata).")

    def data_name(self) -> str:
        """The training data's short name (see ``dataset_name``)."""
        if self.dataset_name:
            return self.dataset_name
        if self.task == "text" and self.data not in ("embedded", "wordnet"):
            return re.sub(r"[^\w.-]+", "_", Path(self.data).stem).strip("_.") or "pairs"
        return "wordnet" if self.task == "text" else self.data


# -- configuration -------------------------------------------------------------------------------------------------


def recipe_parser():
    """``HfArgumentParser`` over :class:`RecipeConfig` and ``DivCLTrainingArguments`` (``--key value`` and
    ``--key-value``; errors raise instead of exiting, so they are reported as one line)."""
    from transformers import HfArgumentParser

    from ..training.arguments import DivCLTrainingArguments

    return HfArgumentParser((RecipeConfig, DivCLTrainingArguments), add_help=False, exit_on_error=False,
                            allow_abbrev=False)


def _field_types() -> dict[str, tuple[type, Any]]:
    from ..training.arguments import DivCLTrainingArguments

    out: dict[str, tuple[type, Any]] = {}
    for cls in (RecipeConfig, DivCLTrainingArguments):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                out[f.name] = (cls, hints.get(f.name))
    return out


def _simple_types(tp: Any) -> tuple[Any, ...]:
    """The non-None members of a (possibly Optional / Union) field type."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _check_value(key: str, value: Any, tp: Any, source: str) -> Any:
    """A YAML / Python value for field ``key``, checked against its type (complex types — lists, dicts, enums — are
    checked by the argument classes themselves). YAML 1.1 reads ``no``/``yes`` as booleans: they go back to strings
    for string fields (``save_strategy: no``)."""
    allowed = _simple_types(tp)
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


def _unknown_key(key: str, keys: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"{where}: unknown key {key!r}.{hint} Keys are RecipeConfig fields (task, model, data, ...) "
                      "or DivCLTrainingArguments / TrainingArguments fields; `hf-divcl train --help` lists them.")


def load_recipe_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                       argv: list[str] | None = None):
    """``(RecipeConfig, DivCLTrainingArguments)``: dataclass defaults < the YAML file ``path`` (``yaml.safe_load``)
    < ``overrides`` (Python values) < ``argv`` (``--key value`` strings, parsed by ``HfArgumentParser``)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(_find_config(Path(path)))
    data.update(overrides or {})
    types_ = _field_types()
    source = str(path) if path is not None else "config"
    for key in list(data):
        where = f"command line (--{key})" if key in (overrides or {}) else source  # blame the right place
        if key not in types_:
            raise _unknown_key(key, list(types_), where)
        data[key] = _check_value(key, data[key], types_[key][1], where)
    data.setdefault("output_dir", "outputs/divcl")
    argv = list(argv or [])
    for key in [k for k, (_, tp) in types_.items() if type(None) in typing.get_args(tp)]:
        argv = _none_flag(argv, key, data)  # `--key none` unsets an optional field (argparse keeps the string)
    parser = recipe_parser()
    parser.set_defaults(**data)
    try:
        cfg, args, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except argparse.ArgumentError as err:
        raise ValueError(f"command line ({err.argument_name}): {err.message}.") from None
    if rest:
        flag = next((r for r in rest if r.startswith("--")), rest[0])
        key = flag[2:].partition("=")[0].replace("-", "_")
        if not flag.startswith("--") or key in types_:
            raise ValueError(f"command line: unexpected argument {flag!r}; use --config PATH and --key value "
                             "overrides.")
        raise _unknown_key(key, list(types_), f"command line (--{key})")
    return cfg, args


def _none_flag(argv: list[str], key: str, data: dict[str, Any]) -> list[str]:
    """``argv`` without ``--key none`` / ``--key=null`` (either spelling of the key); ``data[key]`` becomes None."""
    flags = {f"--{key}", f"--{key.replace('_', '-')}"}
    out, i = [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name not in flags:
            out.append(argv[i])
            i += 1
            continue
        width = 1 if eq else 2
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if value.lower() in ("none", "null"):
            data[key] = None
        else:
            out.extend(argv[i:i + width])
        i += width
    return out


def _find_config(p: Path) -> Path:
    """``p`` itself, or the packaged recipe of that name (``text_wordnet``, ``recipes/text_wordnet.yaml``) so an
    installed wheel runs its recipes from any directory."""
    if p.is_file():
        return p
    from .._common import packaged_recipes

    recipes = packaged_recipes()
    if p.stem in recipes and p.suffix in ("", ".yaml") and p.parent.name in ("", "recipes"):
        return recipes[p.stem]
    names = ", ".join(recipes) or "none found"
    raise FileNotFoundError(f"Config file {str(p)!r} does not exist. Pass a YAML path, or the name of a packaged "
                            f"recipe ({names}), e.g. --config text_wordnet.")


def _parse_cli(argv: list[str], default_config: str | None) -> tuple[str | None, dict[str, str], list[str]]:
    """``(config, {key: raw value}, argv without --config)``, without importing anything heavy: answers
    ``--help`` and lets :func:`_precheck_data` look at the data before transformers loads."""
    config, raw, rest = default_config, {}, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help", "--help-all"):
            print(help_text(all_keys=arg == "--help-all"))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise ValueError(f"Unexpected argument {arg!r}; use --config PATH and --key value overrides.")
        key, eq, value = arg[2:].partition("=")
        taken = [arg]
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                taken.append(value)
                i += 1
            else:
                value = "true"  # a bare flag
        key = key.replace("-", "_")
        if key == "config":
            config = value
        else:
            raw[key] = value
            rest.extend(taken)
        i += 1
    return config, raw, rest


def _source_fields(path: Path, class_name: str) -> list[tuple[str, str, str]]:
    """``(name, help, default)`` of the fields a dataclass declares in ``path``, read from the source (no import:
    the trainer module pulls in transformers, and ``--help`` should answer at once)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, str, str]] = []
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == class_name):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(stmt.value, ast.Call)):
                continue
            kw = {k.arg: k.value for k in stmt.value.keywords}
            help_, default = "", ast.unparse(kw["default"]) if "default" in kw else "?"
            meta = kw.get("metadata")
            if isinstance(meta, ast.Dict):
                for k, v in zip(meta.keys, meta.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "help" and isinstance(v, ast.Constant):
                        help_ = str(v.value)
            out.append((stmt.target.id, help_, default))
    return out


def _key_lines(fields: list[tuple[str, str, str]]) -> list[str]:
    import textwrap

    lines = []
    for name, help_, default in fields:
        lines.append(f"  --{name} (default: {default})")
        lines.extend(textwrap.wrap(help_, width=112, initial_indent="      ", subsequent_indent="      "))
    return lines


def help_text(all_keys: bool = False) -> str:
    """``hf-divcl train --help``: the recipe and diversity-window keys with their help and defaults, read without
    importing transformers; ``--help-all`` adds every TrainingArguments key (imports transformers)."""
    recipe = [(f.name, f.metadata.get("help", ""), repr(f.default)) for f in dataclasses.fields(RecipeConfig)]
    divcl = _source_fields(Path(__file__).parents[1] / "training" / "arguments.py", "DivCLTrainingArguments")
    import textwrap

    from .._common import packaged_recipes

    about = ("Train with diversity-window batches, evaluate before and after, write the model card (and push). A "
             "YAML config sets keys, the command line overrides them; keys may be written --max_steps or "
             "--max-steps. Packaged recipes: " + ", ".join(packaged_recipes()) + ".")
    parts = ["usage: hf-divcl train [--config PATH | RECIPE] [--key value ...]",
             "       python recipes/text_wordnet.py [--key value ...]", "", *textwrap.wrap(about, width=118),
             "", "Recipe keys (what to train on, evaluation, card):", *_key_lines(recipe), "",
             "Diversity-window training keys (DivCLTrainingArguments):", *_key_lines(divcl), ""]
    if all_keys:
        from sentence_transformers import SentenceTransformerTrainingArguments

        own = {name for name, _, _ in divcl}
        rest = [(f.name, f.metadata.get("help", ""), repr(f.default))
                for f in dataclasses.fields(SentenceTransformerTrainingArguments) if f.init and f.name not in own]
        parts += ["sentence-transformers / transformers TrainingArguments keys:", *_key_lines(rest)]
    else:
        parts += textwrap.wrap("Every sentence-transformers / transformers TrainingArguments key works too "
                               "(--max_steps, --learning_rate, --per_device_train_batch_size, --output_dir, ...); "
                               "--help-all lists them.", width=118)
    return "\n".join(parts)


def _precheck_data(config: str | None, overrides: dict[str, Any]) -> None:
    """Check a local data file and its columns before the heavy imports (a wrong column fails in a second)."""
    raw: dict[str, Any] = {}
    if config is not None:
        try:
            raw = read_yaml_mapping(_find_config(Path(config)))
        except (ValueError, FileNotFoundError):
            return  # reported with context by load_recipe_config
    raw = {**raw, **overrides}
    task, data = str(raw.get("task", "text")), str(raw.get("data", "embedded"))
    if task != "text" or data in ("embedded", "wordnet"):
        return
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"data file {data!r} does not exist (data: 'embedded', 'wordnet' or a local "
                                ".csv/.tsv/.jsonl/.parquet file of pairs).")
    columns: list[str] | None = None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        import csv

        with path.open(encoding="utf-8", errors="replace", newline="") as fh:
            columns = next(csv.reader(fh, delimiter="\t" if suffix == ".tsv" else ","), [])
    elif suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
        try:
            row = json.loads(first)
            columns = list(row) if isinstance(row, dict) else None
        except json.JSONDecodeError:
            columns = None  # a JSON array file or a broken line: the full reader names the problem
    if columns is None:
        return
    for key, default in (("anchor_column", "anchor"), ("positive_column", "positive")):
        column = str(raw.get(key, default))
        if column not in columns:
            raise ValueError(f"{data!r} has no column {column!r} ({key}); its columns are {columns}. Choose them "
                             "with --anchor-column / --positive-column.")


def parse_recipe_args(argv: list[str], default_config: str | os.PathLike | None = None):
    """``(RecipeConfig, DivCLTrainingArguments)`` from a command line: ``--config PATH`` (or ``default_config``)
    and ``--key value`` overrides; ``--help`` prints the keys and exits. Raises ``ValueError`` /
    ``FileNotFoundError`` with one clear line, before anything heavy is imported when the data file is wrong."""
    config, raw, rest = _parse_cli(argv, None if default_config is None else str(default_config))
    _precheck_data(config, raw)
    return load_recipe_config(config, argv=rest)
