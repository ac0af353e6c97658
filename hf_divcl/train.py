"""Recipes: data → model → ``DivCLTrainer`` → evaluation → model card (→ Hub), from one YAML config.

A config is one flat YAML mapping whose keys are fields of :class:`RecipeConfig` (what to train on, evaluation,
card, push) or of :class:`~hf_divcl.trainer.DivCLTrainingArguments` (every training option). Any key can be
overridden on the command line (``--max_steps 10``); unknown keys and wrong types fail before anything runs.

    python recipes/text_wordnet.py --config recipes/text_wordnet.yaml --max_steps 10
    accelerate launch recipes/text_wordnet.py --config recipes/text_wordnet.yaml
    hf-divcl train --config recipes/vision_fashion_mnist.yaml
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import json
import logging
import os
import re
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ._common import WINDOW_FILE
from .config import _str2bool, safe_load_yaml

logger = logging.getLogger(__name__)

__all__ = ["RecipeConfig", "load_recipe_config", "main", "run_recipe"]

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
    image_size: int = field(default=28, metadata={"help": "tiny-vit / tiny-clip: input image side."})
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


def _field_types() -> dict[str, tuple[type, Any]]:
    from .trainer import DivCLTrainingArguments

    out: dict[str, tuple[type, Any]] = {}
    for cls in (RecipeConfig, DivCLTrainingArguments):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                out[f.name] = (cls, hints.get(f.name))
    return out


def _check_type(key: str, value: Any, tp: Any, source: str) -> None:
    if value is None:
        return
    allowed = _simple_types(tp)
    simple = [a for a in allowed if a in (bool, int, float, str)]
    if not simple or len(simple) < len(allowed):
        return  # complex types (lists, dicts, enums) are checked by the argument classes themselves
    ok = any((isinstance(value, a) and not (a is int and isinstance(value, bool))) or
             (a is float and isinstance(value, int) and not isinstance(value, bool)) for a in simple)
    if not ok:
        names = " or ".join(a.__name__ for a in simple)
        raise ValueError(f"{source}: key {key!r} must be {names}, got {value!r} ({type(value).__name__}).")


def load_recipe_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None):
    """``(RecipeConfig, DivCLTrainingArguments)`` from a YAML file (``yaml.safe_load``) and overrides."""
    from .trainer import DivCLTrainingArguments

    data: dict[str, Any] = {}
    if path is not None:
        p = _find_config(Path(path))
        data = safe_load_yaml(p.read_text(encoding="utf-8"), str(p)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"Config file {str(p)!r} must be a mapping of key: value, got {type(data).__name__}.")
    data.update(overrides or {})
    types_ = _field_types()
    source = str(path) if path is not None else "config"
    for key in list(data):
        if key in types_:
            data[key] = _coerce(key, data[key], types_[key][1])
    for key, value in data.items():
        where = f"command line (--{key})" if key in (overrides or {}) else source  # blame the right place
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}.{hint} Keys are RecipeConfig fields (task, model, data, "
                             "...) or DivCLTrainingArguments / TrainingArguments fields; `hf-divcl train --help` "
                             "lists them.")
        _check_type(key, value, types_[key][1], where)
    rec = {k: v for k, v in data.items() if types_[k][0] is RecipeConfig}
    targs = {k: v for k, v in data.items() if types_[k][0] is not RecipeConfig}
    targs.setdefault("output_dir", "outputs/divcl")
    return RecipeConfig(**rec), DivCLTrainingArguments(**targs)


def _find_config(p: Path) -> Path:
    """``p`` itself, or the packaged recipe of that name (``text_wordnet``, ``recipes/text_wordnet.yaml``) so an
    installed wheel runs its recipes from any directory."""
    if p.is_file():
        return p
    from .resources import packaged_recipes

    recipes = packaged_recipes()
    if p.stem in recipes and p.suffix in ("", ".yaml") and p.parent.name in ("", "recipes"):
        return recipes[p.stem]
    names = ", ".join(recipes) or "none found"
    raise FileNotFoundError(f"Config file {str(p)!r} does not exist. Pass a YAML path, or the name of a packaged "
                            f"recipe ({names}), e.g. --config text_wordnet.")


class _CliValue(str):
    """A command-line value, converted by :func:`_coerce` according to the field it sets."""


def _simple_types(tp: Any) -> tuple[Any, ...]:
    """The non-None members of a (possibly Optional / Union) field type."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Command-line strings become the field's type; YAML 1.1 reads `no`/`yes` as booleans, which go back to
    strings for string fields (e.g. ``save_strategy: no``)."""
    allowed = _simple_types(tp)
    if isinstance(value, bool) and bool not in allowed and str in allowed:
        return "yes" if value else "no"
    if not isinstance(value, _CliValue):
        return value
    raw = str(value)
    if raw.lower() in ("none", "null") and type(None) in typing.get_args(tp):
        return None
    if bool in allowed:
        try:
            return _str2bool(raw)
        except argparse.ArgumentTypeError:
            pass
    for t in (int, float):
        if t in allowed:
            try:
                return t(raw)
            except ValueError:
                if str not in allowed and not any(typing.get_origin(a) in (list, dict) for a in allowed):
                    return raw  # reported by the type check with the key's name
    if str in allowed or not any(typing.get_origin(a) in (list, dict) or a in (list, dict) for a in allowed):
        return raw
    return yaml.safe_load(raw)  # lists / dicts: [a, b] or {"m": 64}


def _parse_cli(argv: list[str], default_config: str | None) -> tuple[str | None, dict[str, Any]]:
    """``--config PATH`` plus ``--key value`` overrides (converted to each field's type)."""
    config, overrides = default_config, {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help", "--help-all"):
            print(help_text(all_keys=arg == "--help-all"))
            raise SystemExit(0)
        if not arg.startswith("--"):
            raise ValueError(f"Unexpected argument {arg!r}; use --config PATH and --key value overrides.")
        key, _, value = arg[2:].partition("=")
        if not value:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            else:
                value = "true"  # a bare flag
        key = key.replace("-", "_")
        if key == "config":
            config = value
        else:
            overrides[key] = _CliValue(value)
        i += 1
    return config, overrides


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
    divcl = _source_fields(Path(__file__).with_name("training_args.py"), "DivCLTrainingArguments")
    import textwrap

    from .resources import packaged_recipes

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
            raw = safe_load_yaml(_find_config(Path(config)).read_text(encoding="utf-8"), str(config)) or {}
        except (ValueError, FileNotFoundError):
            return  # reported with context by load_recipe_config
    raw = {**(raw if isinstance(raw, dict) else {}), **overrides}
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


# -- data and models -----------------------------------------------------------------------------------------------


def load_data(cfg: RecipeConfig, seed: int):
    """``(train, test, description)`` datasets for the task."""
    if cfg.task == "text":
        if cfg.data in ("embedded", "wordnet"):
            from .data import wordnet_split

            source = "embedded" if cfg.data == "embedded" else "debian"
            train = wordnet_split(kind=cfg.pair_kind, split="train", source=source, seed=seed)
            test = wordnet_split(kind=cfg.pair_kind, split="test", source=source, seed=seed)
            which = "embedded sample" if source == "embedded" else "full"
            desc = f"WordNet 3.0 {cfg.pair_kind} → gloss pairs ({which})"
        else:
            from datasets import Dataset

            from .data import load_pair_file

            anchors, positives = load_pair_file(cfg.data, cfg.anchor_column, cfg.positive_column)
            full = Dataset.from_dict({"anchor": anchors, "positive": positives}).shuffle(seed=seed)
            n_test = min(cfg.max_eval_rows, len(full) // 5)
            test, train = full.select(range(n_test)), full.select(range(n_test, len(full)))
            desc = (f"{cfg.dataset_name} (pairs from {Path(cfg.data).name})" if cfg.dataset_name else
                    f"pairs from {Path(cfg.data).name}")
        train = train.select_columns(["anchor", "positive"])
        test = test.select_columns(["anchor", "positive"])
    else:
        from .data import digits, fashion_mnist, fashion_mnist_image_text

        if cfg.data == "fashion_mnist":
            load = fashion_mnist_image_text if cfg.task == "clip" else fashion_mnist
            train, test = load("train"), load("test")
            desc = "Fashion-MNIST" + (" images with class descriptions" if cfg.task == "clip" else "")
        elif cfg.data == "digits" and cfg.task == "vision":
            train, test = digits("train"), digits("test")
            desc = "scikit-learn digits"
        else:
            raise ValueError(f"data={cfg.data!r} is not available for task={cfg.task!r}; use 'fashion_mnist'"
                             + (" or 'digits'" if cfg.task == "vision" else "") + ".")
    if cfg.max_train_rows:
        train = train.select(range(min(cfg.max_train_rows, len(train))))
    test = test.select(range(min(cfg.max_eval_rows, len(test))))
    return train, test, desc


def load_model(cfg: RecipeConfig, output_dir: str, seed: int):
    from sentence_transformers import SentenceTransformer

    from .models import load_sentence_transformer

    if cfg.model in ("tiny-vit", "tiny-clip"):
        from .vision import build_tiny_clip_sentence_transformer, build_tiny_vit_sentence_transformer

        build = build_tiny_vit_sentence_transformer if cfg.model == "tiny-vit" else build_tiny_clip_sentence_transformer
        path = build(Path(output_dir) / "init_model", image_size=cfg.image_size, hidden_size=cfg.hidden_size,
                     layers=cfg.layers, seed=seed)
        return SentenceTransformer(path, device="cpu"), f"{cfg.model} (random init, hidden {cfg.hidden_size})"
    packaged = cfg.model.lower() in ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
    return load_sentence_transformer(cfg.model, device="cpu"), \
        ("sentence-transformers/all-MiniLM-L6-v2" if packaged else cfg.model)


def evaluate_model(cfg: RecipeConfig, model, train, test) -> dict[str, float]:
    from . import evaluation

    if cfg.task == "text":
        return evaluation.evaluate_text(model, test, name=cfg.data_name())
    return evaluation.evaluate_vision(model, train.select_columns(["image", "label"]), test)


# -- the run -------------------------------------------------------------------------------------------------------


def run_recipe(cfg: RecipeConfig, args) -> dict[str, Any]:
    """Train, evaluate, write the card (and push). Returns a summary (also in ``output_dir/divcl_summary.json``)."""
    from .trainer import DivCLTrainer

    t0 = time.perf_counter()
    # evaluation, summary, card and push belong to the main process (RANK is set by accelerate launch / torchrun)
    is_main = int(os.environ.get("RANK", "0")) == 0
    train, test, desc = load_data(cfg, args.seed)
    model, base = load_model(cfg, args.output_dir, args.seed)
    if cfg.run_evaluation and is_main:
        print(f"evaluating the starting model on {len(test)} held-out rows ...", flush=True)
    before = evaluate_model(cfg, model, train, test) if cfg.run_evaluation and is_main else {}
    card_data = getattr(model, "model_card_data", None)
    if card_data is not None:
        card_data.eval_results_dict = {}  # the card's model-index must hold the trained model's scores only
        if base.startswith("sentence-transformers/") and not card_data.base_model:
            card_data.base_model = base
    trainer = DivCLTrainer(model=model, args=args, train_dataset=train)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    if not trainer.is_world_process_zero():
        return {"main_process": False, "steps": trainer.state.global_step}
    if cfg.run_evaluation:
        print(f"evaluating the fine-tuned model on {len(test)} held-out rows ...", flush=True)
    after = evaluate_model(cfg, model, train, test) if cfg.run_evaluation else {}
    summary: dict[str, Any] = {"task": cfg.task, "base_model": base, "dataset_name": cfg.data_name(), "data": desc,
                               "train_rows": len(train),
                               "eval_rows": len(test), "before": before, "after": after,
                               "steps": trainer.state.global_step, "seconds": time.perf_counter() - t0}
    out = Path(args.output_dir)
    (out / "divcl_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "training_args.json").write_text(args.to_json_string())
    if cfg.write_card and not (out / "diversity_log.jsonl").is_file():
        logger.warning("No diversity log in %s (logging_strategy=%r, diversity_log_file=%r): the model card is "
                       "skipped. Keep logging on to get the card.", out,
                       getattr(args.logging_strategy, "value", args.logging_strategy),
                       args.diversity_log_file)
    elif cfg.write_card:
        from .card import write_model_card

        evaluation = {k: (before.get(k), after.get(k)) for k in dict.fromkeys([*before, *after])
                      if not k.endswith(_BOOKKEEPING) and k != "seconds"}
        usage = list(test["anchor"][:2]) if cfg.task == "text" else None
        card = write_model_card(out, model=model, base_model=base, dataset=desc, train_rows=len(train),
                                repo_id=cfg.push_repo_id, evaluation=evaluation, usage_inputs=usage,
                                evaluation_note=f"Held-out set: {len(test)} rows of {desc} (never trained on).")
        summary["card"] = str(card)
    if cfg.push_repo_id:
        from .hub import push_to_hub

        summary["pushed"] = push_to_hub(out, cfg.push_repo_id, endpoint=cfg.hub_endpoint)
    return summary


_BOOKKEEPING = ("_seconds", "_pairs", "_skipped", "_size", "knn_k")  # evaluation keys that are not quality


def _batches_line(out: Path) -> str | None:
    """What the run's batches were: the window and the share of logged training batches inside it."""
    from .callbacks import read_diversity_log

    info = json.loads((out / WINDOW_FILE).read_text()) if (out / WINDOW_FILE).is_file() else {}
    window = info.get("window") or {}
    log = out / "diversity_log.jsonl"
    fractions = [r["divcl/in_window_fraction"] for r in (read_diversity_log(log) if log.is_file() else [])
                 if isinstance(r.get("divcl/in_window_fraction"), (int, float))]
    if window.get("low") is None:
        return f"batches: {info['decision']} ({info.get('reason', '')})" if info.get("decision") else None
    line = (f"diversity window: {window.get('metric', 'effective_rank')} ∈ [{window['low']:.3g}, "
            f"{window['high']:.3g}] ({info.get('builder', '?')} builder)")
    if fractions:
        line += f"; {sum(fractions) / len(fractions):.0%} of the logged training batches inside it"
    return line


def main(argv: list[str] | None = None, default_config: str | None = None) -> int:
    """Entry point of the recipe scripts and of ``hf-divcl train``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, overrides = _parse_cli(argv, default_config)
        _precheck_data(config, {k: str(v) for k, v in overrides.items()})
        cfg, args = load_recipe_config(config, overrides)
    except (ValueError, FileNotFoundError) as err:
        print(f"hf-divcl train: error: {err}", file=sys.stderr)
        return 2
    try:
        summary = run_recipe(cfg, args)
    except (ValueError, FileNotFoundError) as err:  # bad data or settings found while loading: one clear line
        logger.debug("run_recipe failed", exc_info=True)
        print(f"hf-divcl train: error: {err}", file=sys.stderr)
        return 2
    if summary.get("main_process") is False:
        return 0  # the main process evaluates, writes the card and reports (only it knows whether that worked)
    print(f"data: {summary['data']} ({summary['train_rows']} training rows, {summary['eval_rows']} held out)")
    line = _batches_line(Path(args.output_dir))
    if line:
        print(line)
    quality = [k for k in summary.get("after", {}) if not k.endswith(_BOOKKEEPING) and k != "seconds"]
    if quality:
        print("held-out quality, before → after fine-tuning:")
        for key in quality:
            b, a = summary["before"].get(key), summary["after"][key]
            print(f"  {key:28s} {'–' if b is None else f'{b:.4g}':>8} → {a:.4g}")
    written = ["model", *(["card"] if "card" in summary else []),
               *(["diversity log"] if Path(args.output_dir, "diversity_log.jsonl").is_file() else [])]
    print(f"done in {summary['seconds']:.0f} s: {', '.join(written)} in {args.output_dir}")
    return 0
