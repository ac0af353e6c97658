"""What a recipe run is configured by, and how the configuration is read.

:class:`RecipeConfig` (what to train on, evaluation, card, push) and
:class:`~hf_divcl.training.arguments.DivCLTrainingArguments` (every training option) are read from one flat YAML mapping
with the command line on top, through the one argument system of :mod:`hf_divcl.cli.parser`. A local data file's
columns are checked before the heavy imports (torch, sentence-transformers); ``--help`` lists the recipe keys and
hf_divcl's own training keys from their dataclass metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import operator
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .parser import config_option, config_parser, parse_config, read_yaml_mapping

__all__ = ["TASKS", "RecipeConfig", "check_keys_early", "find_config", "help_text", "load_recipe_config",
           "parse_recipe_args", "recipe_parser", "remember_keys"]

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
                "local .csv/.tsv/.jsonl/.parquet file with anchor/positive columns (several files, comma-separated "
                "or a YAML list: one source each, named by the file, trained as a DatasetDict); vision/clip: "
                "'fashion_mnist' "
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
    preflight: bool = field(default=True, metadata={
        "help": "Before training, report what random batches of the training rows look like to the model (diversity, "
                "duplicates, likely false negatives, gradient regime) with a recommendation; saved as "
                "divcl_preflight.json and shown in the card."})
    run_evaluation: bool = field(default=True, metadata={"help": "Evaluate before and after training."})
    write_card: bool = field(default=True, metadata={"help": "Write README.md (model card) with the plots."})
    push_repo_id: str | None = field(default=None, metadata={
        "help": "Push the trained model, card, plots and logs to this Hub repo (namespace/name) at the end."})
    hub_endpoint: str | None = field(default=None, metadata={"help": "Hub endpoint (default: HF_ENDPOINT)."})

    def __post_init__(self) -> None:
        if isinstance(self.data, (list, tuple)):  # a YAML list of files
            self.data = ",".join(str(x) for x in self.data)
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
            files = self.data_files()
            return "sources" if len(files) > 1 else _file_name(files[0])
        return "wordnet" if self.task == "text" else self.data

    def data_files(self) -> list[str]:
        """The local data files of ``data`` (one per source; empty for the built-in data sets)."""
        if self.task != "text" or self.data in ("embedded", "wordnet"):
            return []
        return [f.strip() for f in str(self.data).split(",") if f.strip()]

    def source_names(self) -> list[str]:
        """One name per data file (the file name without its extension; numbered when two agree)."""
        names: list[str] = []
        for f in self.data_files():
            name = _file_name(f)
            names.append(name if name not in names else f"{name}_{len(names)}")
        return names


def _file_name(path: str) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(path).stem).strip("_.") or "pairs"


# -- configuration -------------------------------------------------------------------------------------------------

DEFAULTS = {"output_dir": "outputs/divcl"}


def recipe_parser(add_help: bool = False):
    """The ``HfArgumentParser`` over :class:`RecipeConfig` and ``DivCLTrainingArguments`` (imports them)."""
    from ..training.arguments import DivCLTrainingArguments

    return config_parser(RecipeConfig, DivCLTrainingArguments, add_help=add_help)


def load_recipe_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                       argv: list[str] | None = None):
    """``(RecipeConfig, DivCLTrainingArguments)``: dataclass defaults < the YAML file ``path`` (or ``--config`` in
    ``argv``; a packaged recipe's name works too) < ``overrides`` (Python values) < ``argv`` (``--key value``)."""
    from ..training.arguments import DivCLTrainingArguments

    return parse_config(recipe_parser(), (RecipeConfig, DivCLTrainingArguments), list(argv or []), config=path,
                        overrides=overrides, defaults=DEFAULTS, find_config=find_config)


def find_config(p: Path) -> Path:
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


def _key_lines(fields) -> list[str]:
    import textwrap

    lines = []
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else "required"
        lines.append(f"  --{f.name} (default: {default!r})")
        lines.extend(textwrap.wrap(f.metadata.get("help", ""), width=112, initial_indent="      ",
                                   subsequent_indent="      "))
    return lines


def help_text(all_keys: bool = False) -> str:
    """``hf-divcl train --help``: the recipe keys and hf_divcl's training keys (``--help-all``: every
    TrainingArguments key too), each with its help and default, from the dataclass metadata."""
    import textwrap

    from sentence_transformers import SentenceTransformerTrainingArguments

    from .._common import packaged_recipes
    from ..training.arguments import DivCLTrainingArguments

    inherited = {f.name for f in dataclasses.fields(SentenceTransformerTrainingArguments)}
    own = [f for f in dataclasses.fields(DivCLTrainingArguments) if f.init and f.name not in inherited]
    about = ("Train with diversity-window batches, evaluate before and after, write the model card (and push). A "
             "YAML config sets keys, the command line overrides them; keys may be written --max_steps or "
             "--max-steps. Packaged recipes: " + ", ".join(packaged_recipes()) + ".")
    parts = ["usage: hf-divcl train [--config PATH | RECIPE] [--key value ...]",
             "       python recipes/text_wordnet.py [--key value ...]", "", *textwrap.wrap(about, width=118),
             "", "Recipe keys (what to train on, evaluation, card):", *_key_lines(dataclasses.fields(RecipeConfig)),
             "", "Diversity-window training keys (DivCLTrainingArguments):", *_key_lines(own), ""]
    if all_keys:
        rest = [f for f in dataclasses.fields(DivCLTrainingArguments) if f.init and f.name in inherited]
        parts += ["sentence-transformers / transformers TrainingArguments keys:", *_key_lines(rest)]
    else:
        parts += textwrap.wrap("Every sentence-transformers / transformers TrainingArguments key works too "
                               "(--max_steps, --learning_rate, --per_device_train_batch_size, --output_dir, ...); "
                               "--help-all lists them.", width=118)
    return "\n".join(parts)


def _precheck_data(argv: list[str], config: str | None) -> None:
    """Check a local data file and its columns before the heavy imports (a wrong column fails in a second): the
    recipe keys of ``config`` and ``argv`` are parsed alone (their parser imports no torch); the full parse comes
    later."""
    parser = config_parser(RecipeConfig, add_help=False)
    try:
        if config is not None:
            names = {f.name for f in dataclasses.fields(RecipeConfig)}
            parser.set_defaults(**{k: v for k, v in read_yaml_mapping(find_config(Path(config))).items()
                                   if k in names})
        known, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, ValueError, FileNotFoundError):
        return  # reported with context by load_recipe_config
    raw = vars(known)
    task, data = str(raw["task"]), raw["data"]
    if task != "text" or data in ("embedded", "wordnet"):
        return
    files = [str(x) for x in data] if isinstance(data, (list, tuple)) else str(data).split(",")
    for f in files:
        if f.strip():
            _precheck_file(f.strip(), raw)


def _precheck_file(data: str, raw: dict[str, Any]) -> None:
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
    for key in ("anchor_column", "positive_column"):
        column = str(raw[key])
        if column not in columns:
            raise ValueError(f"{data!r} has no column {column!r} ({key}); its columns are {columns}. Choose them "
                             "with --anchor-column / --positive-column.")


# -- the key check before the heavy imports ------------------------------------------------------------------------
# The valid keys come from DivCLTrainingArguments, whose import pulls in torch and sentence-transformers (seconds).
# The first full parse remembers every key and its simple type in the cache, stamped with the installed versions
# and the two modules' sources; from then on a typo or a wrong type is reported before any heavy import.


def _key_cache_path() -> Path:
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    from .._common import cache_root

    stamp = hashlib.blake2b(digest_size=8)
    for package in ("hf_divcl", "transformers", "sentence-transformers"):
        try:
            stamp.update(version(package).encode())
        except PackageNotFoundError:  # a checkout on PYTHONPATH: the sources below still stamp it
            stamp.update(b"-")
    for source in (Path(__file__), Path(__file__).parents[1] / "training" / "arguments.py"):
        stamp.update(source.read_bytes())
    return cache_root() / "recipe_keys" / f"{stamp.hexdigest()}.json"


def remember_keys() -> None:
    """Write every recipe key with its simple types (``int``, ``float``, ``str``, ``bool``, ``None``; none listed:
    checked later) to the key cache (a read-only cache folder only costs the early check)."""
    from ..training.arguments import DivCLTrainingArguments
    from .parser import field_types

    path = _key_cache_path()
    if path.is_file():
        return
    keys = {}
    for name, tp in field_types((RecipeConfig, DivCLTrainingArguments)).items():
        members = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        simple = [m.__name__ if m is not type(None) else "None" for m in members
                  if m in (int, float, str, bool, type(None))]
        keys[name] = simple if len(simple) == len(members) else []
    try:
        from .._common import atomic_write_text

        atomic_write_text(path, json.dumps(keys, sort_keys=True))
    except OSError:
        pass


def check_keys_early(argv: list[str], config: str | None) -> None:
    """Unknown keys (with suggestions) and values of the wrong simple type, in the config file and on the command
    line, reported as :func:`hf_divcl.cli.parser.parse_config` reports them — without importing transformers'
    training arguments, when the key cache is warm (after one full parse with these versions)."""
    from .parser import check_value, unknown_key

    path = _key_cache_path()
    if not path.is_file():
        return
    keys: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    names = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)}
    if config is not None:
        try:
            data = read_yaml_mapping(find_config(Path(config)))
        except (ValueError, FileNotFoundError):
            return  # reported with context by load_recipe_config
        for raw, value in data.items():
            key = str(raw).replace("-", "_")
            if key not in keys:
                raise unknown_key(key, list(keys), str(find_config(Path(config))))
            if keys[key]:
                check_value(key, value, functools.reduce(operator.or_, [names[t] for t in keys[key]]), str(config))
    for i, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        key, eq, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if key == "config":
            continue
        if key not in keys:
            raise unknown_key(key, list(keys), f"command line (--{key})")
        value = value if eq else (argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None)
        allowed = keys[key]
        if value is None or not allowed or "str" in allowed or "bool" in allowed:
            continue
        if "None" in allowed and value.lower() in ("none", "null"):
            continue
        for name in ("int", "float"):
            if name in allowed:
                try:
                    names[name](value)
                    break
                except ValueError:
                    pass
        else:
            raise ValueError(f"command line (--{key}): invalid {' or '.join(t for t in allowed if t != 'None')} "
                             f"value: {value!r}.")


def parse_recipe_args(argv: list[str], default_config: str | os.PathLike | None = None):
    """``(RecipeConfig, DivCLTrainingArguments)`` from a command line: ``--config PATH`` (or ``default_config``)
    and ``--key value`` overrides; ``--help`` prints the keys and exits. Raises ``ValueError`` /
    ``FileNotFoundError`` with one clear line, before anything heavy is imported when the data file is wrong."""
    if any(a in ("-h", "--help", "--help-all") for a in argv):
        print(help_text(all_keys="--help-all" in argv))
        raise SystemExit(0)
    default = None if default_config is None else str(default_config)
    try:
        config = config_option(argv) or default
    except argparse.ArgumentError:
        config = None  # reported with context by load_recipe_config
    check_keys_early(argv, config)
    _precheck_data(argv, config)
    loaded = load_recipe_config(default, argv=argv)
    remember_keys()
    return loaded
