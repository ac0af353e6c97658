"""Recipes: data → model → ``DivCLTrainer`` → evaluation → model card (→ Hub), from one YAML config.

The configuration (:class:`RecipeConfig` + ``DivCLTrainingArguments``, YAML under the command line) is read by
:mod:`hf_divcl.cli.recipe_config`. This module holds the steps a recipe runs — :func:`load_data`, :func:`load_model`,
:func:`evaluate_model`, then :func:`finish_run` (summary, model card, push) — and :func:`run_recipe`, which chains
them for any task (``hf-divcl train``). The scripts in ``recipes/`` spell the same steps out for one task each.

    python recipes/text_wordnet.py --config recipes/text_wordnet.yaml --max_steps 10
    accelerate launch recipes/text_wordnet.py --config recipes/text_wordnet.yaml
    hf-divcl train --config recipes/vision_fashion_mnist.yaml
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._common import WINDOW_FILE, end_distributed
from .recipe_config import RecipeConfig, parse_recipe_args

logger = logging.getLogger(__name__)

__all__ = [
    "evaluate_model",
    "finish_run",
    "is_main_process",
    "load_data",
    "load_images",
    "load_model",
    "load_text_pairs",
    "reset_card_scores",
    "run_cli",
    "run_recipe",
]

TINY_IMAGE_SIZE = 28  # tiny-vit / tiny-clip input side when image_size is not set

# -- data and models -----------------------------------------------------------------------------------------------


def load_data(cfg: RecipeConfig, seed: int):
    """``(train, test, description)`` for the task: :func:`load_text_pairs` or :func:`load_images`."""
    return load_text_pairs(cfg, seed) if cfg.task == "text" else load_images(cfg)


def load_text_pairs(cfg: RecipeConfig, seed: int):
    """``(train, test, description)`` anchor/positive pairs: WordNet (``data: embedded | wordnet``, split by
    synset) or a local pair file (shuffled with ``seed``, ``max_eval_rows`` held out, at most a fifth)."""
    if cfg.data in ("embedded", "wordnet"):
        from ..data.wordnet import wordnet_split

        source = "embedded" if cfg.data == "embedded" else "debian"
        train = wordnet_split(kind=cfg.pair_kind, split="train", source=source, seed=seed)
        test = wordnet_split(kind=cfg.pair_kind, split="test", source=source, seed=seed)
        which = "embedded sample" if source == "embedded" else "full"
        desc = f"WordNet 3.0 {cfg.pair_kind} → gloss pairs ({which})"
    elif len(cfg.data_files()) > 1:
        return load_text_sources(cfg, seed)
    else:
        train, test = _split_pair_file(cfg, cfg.data, seed, cfg.max_eval_rows)
        desc = (f"{cfg.dataset_name} (pairs from {Path(cfg.data).name})" if cfg.dataset_name else
                f"pairs from {Path(cfg.data).name}")
    return _limit(cfg, train.select_columns(["anchor", "positive"]), test.select_columns(["anchor", "positive"]),
                  desc)


def load_text_sources(cfg: RecipeConfig, seed: int):
    """``(train, test, description)`` for several pair files: ``DatasetDict``\\ s with one source per file (named by
    :meth:`RecipeConfig.source_names`), each shuffled with ``seed`` and split as one file is; ``max_eval_rows`` is
    shared out over the sources."""
    from datasets import DatasetDict

    files, names = cfg.data_files(), cfg.source_names()
    per_source = max(1, cfg.max_eval_rows // len(files))
    train, test = {}, {}
    for name, path in zip(names, files, strict=True):
        tr, te = _split_pair_file(cfg, path, seed, per_source)
        if cfg.max_train_rows:
            tr = tr.select(range(min(cfg.max_train_rows, len(tr))))
        train[name], test[name] = tr, te
    desc = f"{len(files)} sources: " + ", ".join(f"{n} ({len(train[n])} pairs from {Path(f).name})"
                                                 for n, f in zip(names, files, strict=True))
    return DatasetDict(train), DatasetDict(test), desc


def _split_pair_file(cfg: RecipeConfig, path: str, seed: int, max_test: int):
    from datasets import Dataset

    from ..data.local import load_pair_file

    anchors, positives = load_pair_file(path, cfg.anchor_column, cfg.positive_column)
    full = Dataset.from_dict({"anchor": anchors, "positive": positives}).shuffle(seed=seed)
    n_test = min(max_test, len(full) // 5)
    return full.select(range(n_test, len(full))), full.select(range(n_test))


def rows_of(data) -> int:
    """Rows of a data set, or of all the sources of a ``DatasetDict``."""
    return sum(len(d) for d in data.values()) if hasattr(data, "values") else len(data)


def pooled(data):
    """One data set: ``data`` itself, or the sources of a ``DatasetDict`` one after the other."""
    if not hasattr(data, "values"):
        return data
    from datasets import concatenate_datasets

    return concatenate_datasets(list(data.values()))


def load_images(cfg: RecipeConfig):
    """``(train, test, description)`` images: Fashion-MNIST (with class descriptions for ``task: clip``) or
    scikit-learn digits (``task: vision``)."""
    from ..data.images import digits, fashion_mnist, fashion_mnist_image_text

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
    return _limit(cfg, train, test, desc)


def _limit(cfg: RecipeConfig, train, test, desc: str):
    if cfg.max_train_rows:
        train = train.select(range(min(cfg.max_train_rows, len(train))))
    return train, test.select(range(min(cfg.max_eval_rows, len(test)))), desc


def load_model(cfg: RecipeConfig, args):
    """``(model, base model name)``: a SentenceTransformer folder or the packaged all-MiniLM-L6-v2, or a tiny
    randomly initialised image encoder (``tiny-vit`` / ``tiny-clip``) built from a config (no download)."""
    from sentence_transformers import SentenceTransformer

    from ..models.loading import load_sentence_transformer

    if cfg.model in ("tiny-vit", "tiny-clip"):
        from ..models.vision import build_tiny_clip_sentence_transformer, build_tiny_vit_sentence_transformer

        build = build_tiny_vit_sentence_transformer if cfg.model == "tiny-vit" else build_tiny_clip_sentence_transformer
        path = build(Path(args.output_dir) / "init_model", image_size=args.image_size or TINY_IMAGE_SIZE,
                     hidden_size=cfg.hidden_size, layers=cfg.layers, seed=args.seed)
        return SentenceTransformer(path, device="cpu"), f"{cfg.model} (random init, hidden {cfg.hidden_size})"
    packaged = cfg.model.lower() in ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
    return load_sentence_transformer(cfg.model, device="cpu"), \
        ("sentence-transformers/all-MiniLM-L6-v2" if packaged else cfg.model)


def evaluate_model(cfg: RecipeConfig, model, train, test, stage: str = "fine-tuned",
                   show_progress_bar: bool = True) -> dict[str, float]:
    """Held-out quality: retrieval (and word similarity on WordNet) for text, k-NN / zero-shot accuracy for
    images, with progress bars over the encoding; ``{}`` when ``run_evaluation`` is off."""
    if not cfg.run_evaluation:
        return {}
    from ..evaluation import tasks as evaluation

    print(f"evaluating the {stage} model on {rows_of(test)} held-out rows ...", flush=True)
    if cfg.task == "text" and hasattr(test, "values"):  # several sources: each on its own, then pooled
        out: dict[str, float] = {}
        for name, part in test.items():
            out.update(evaluation.evaluate_text(model, part, name=name, word_sim=False,
                                                show_progress_bar=show_progress_bar))
        out.update(evaluation.evaluate_text(model, pooled(test), name=cfg.data_name(),
                                            show_progress_bar=show_progress_bar))
        return out
    if cfg.task == "text":
        return evaluation.evaluate_text(model, test, name=cfg.data_name(), show_progress_bar=show_progress_bar)
    return evaluation.evaluate_vision(model, train.select_columns(["image", "label"]), test,
                                      show_progress_bar=show_progress_bar)


def preflight_step(cfg: RecipeConfig, args, model, train, description: str, *, max_rows: int = 2048,
                   n_batches: int = 64, near_threshold: float = 0.95, path: str | os.PathLike | None = None,
                   force: bool = False) -> dict[str, Any] | None:
    """Before training, on the main process: random batches of the training rows as the model sees them at the run's
    global batch size and τ (:func:`hf_divcl.policies.preflight.preflight`), printed and saved (default:
    ``output_dir/divcl_preflight.json``, which the model card shows); ``None`` with ``preflight: false`` (unless
    ``force``)."""
    if not (cfg.preflight or force) or not is_main_process():
        return None
    from .._common import atomic_write_text, global_batch_size
    from ..policies.preflight import PREFLIGHT_FILE, preflight

    augment = None
    if "image" in getattr(model, "modalities", ["text"]):
        from ..models.augment import TwoViewAugment
        from ..models.vision import processor_image_size

        augment = TwoViewAugment(args.image_size or processor_image_size(model) or 224,
                                 scale=(args.augment_scale_min, 1.0), jitter=args.augment_jitter, seed=args.seed)
    batch = global_batch_size(args)

    def one(rows, what: str):
        return preflight(model, rows, min(batch, len(rows)), args.temperature, data=what, seed=args.seed,
                         augment=augment, show_progress_bar=not args.disable_tqdm, max_rows=max_rows,
                         n_batches=n_batches, near_threshold=near_threshold)

    report = one(pooled(train), description)
    print(report.format(), flush=True)
    result = report.to_dict()
    if hasattr(train, "values"):  # several sources: training batches come from one source, so each is measured
        result["sources"] = {}
        for name, rows in train.items():
            part = one(rows, f"source {name}")
            print(part.format(), flush=True)
            result["sources"][name] = part.to_dict()
    atomic_write_text(Path(path) if path is not None else Path(args.output_dir, PREFLIGHT_FILE),
                      json.dumps(result, indent=2))
    return result


def reset_card_scores(model, base: str) -> None:
    """After evaluating the starting model: the card's model-index must hold the trained model's scores only."""
    card_data = getattr(model, "model_card_data", None)
    if card_data is not None:
        card_data.eval_results_dict = {}
        if base.startswith("sentence-transformers/") and not card_data.base_model:
            card_data.base_model = base


def is_main_process() -> bool:
    """Whether this process evaluates, summarises, writes the card and pushes (``RANK`` is set by
    ``accelerate launch`` / torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


# -- the run -------------------------------------------------------------------------------------------------------


def run_recipe(cfg: RecipeConfig, args) -> dict[str, Any]:
    """Train, evaluate, write the card (and push), for any task. Returns a summary (also in
    ``output_dir/divcl_summary.json``)."""
    from ..training.trainer import DivCLTrainer

    t0 = time.perf_counter()
    train, test, description = load_data(cfg, args.seed)
    model, base = load_model(cfg, args)
    preflight_step(cfg, args, model, train, description)
    progress = not args.disable_tqdm
    before = evaluate_model(cfg, model, train, test, "starting", progress) if is_main_process() else {}
    reset_card_scores(model, base)
    trainer = DivCLTrainer(model=model, args=args, train_dataset=train)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    main = trainer.is_world_process_zero()
    # no collective follows: every process ends its group now, so the others do not wait for the main process's
    # evaluation, card and push (at a barrier that would time out on a long push)
    end_distributed()
    if not main:
        return {"main_process": False, "steps": trainer.state.global_step}
    after = evaluate_model(cfg, model, train, test, show_progress_bar=progress)
    return finish_run(trainer, cfg, base=base, description=description, train=train, test=test, before=before,
                      after=after, started=t0)


def finish_run(trainer, cfg: RecipeConfig, *, base: str, description: str, train, test, before: dict[str, float],
               after: dict[str, float], started: float) -> dict[str, Any]:
    """On the main process after training: ``divcl_summary.json``, ``training_args.json``, the model card (when
    the diversity log exists) and the push (``push_repo_id``). Returns the summary."""
    args, model = trainer.args, trainer.model
    summary: dict[str, Any] = {"task": cfg.task, "base_model": base, "dataset_name": cfg.data_name(),
                               "data": description, "train_rows": rows_of(train), "eval_rows": rows_of(test),
                               "before": before, "after": after, "steps": trainer.state.global_step,
                               "seconds": time.perf_counter() - started}
    out = Path(args.output_dir)
    summary["diversity_log"] = args.diversity_log_file or None
    (out / "divcl_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "training_args.json").write_text(args.to_json_string())
    log = args.diversity_log_file
    if cfg.write_card and not (log and (out / log).is_file()):
        logger.warning("No diversity log in %s (logging_strategy=%r, diversity_log_file=%r): the model card is "
                       "skipped. Keep logging on to get the card.", out,
                       getattr(args.logging_strategy, "value", args.logging_strategy),
                       args.diversity_log_file)
    elif cfg.write_card:
        from ..publish.card import write_model_card

        evaluation = {k: (before.get(k), after.get(k)) for k in dict.fromkeys([*before, *after])
                      if not k.endswith(_BOOKKEEPING) and k != "seconds"}
        usage = list(pooled(test)["anchor"][:2]) if cfg.task == "text" else None
        note = f"Held-out set: {rows_of(test)} rows of {description} (never trained on)."
        if hasattr(test, "values"):
            note += (f" Each source's metrics (<source>_...) retrieve within its own held-out rows; "
                     f"{cfg.data_name()}_... retrieve among all the sources' held-out rows at once.")
        card = write_model_card(out, model=model, base_model=base, dataset=description, train_rows=rows_of(train),
                                repo_id=cfg.push_repo_id, evaluation=evaluation, usage_inputs=usage,
                                evaluation_note=note, log_file=log)
        summary["card"] = str(card)
    if cfg.push_repo_id:
        from ..publish.hub import push_to_hub

        summary["pushed"] = push_to_hub(out, cfg.push_repo_id, endpoint=cfg.hub_endpoint,
                                        **({"log_file": log} if log else {}))
    return summary


_BOOKKEEPING = ("_seconds", "_pairs", "_skipped", "_size", "knn_k")  # evaluation keys that are not quality


def _batches_line(out: Path, log_file: str | None) -> str | None:
    """What the run's batches were: the window and the share of logged training batches inside it."""
    from ..diversity.log import read_diversity_log

    info = json.loads((out / WINDOW_FILE).read_text()) if (out / WINDOW_FILE).is_file() else {}
    window = info.get("window") or {}
    log = out / log_file if log_file else None
    fractions = [r["divcl/in_window_fraction"] for r in (read_diversity_log(log) if log and log.is_file() else [])
                 if isinstance(r.get("divcl/in_window_fraction"), (int, float))]
    if window.get("low") is None:
        return f"batches: {info['decision']} ({info.get('reason', '')})" if info.get("decision") else None
    line = (f"diversity window: {window.get('metric', 'effective_rank')} ∈ [{window['low']:.3g}, "
            f"{window['high']:.3g}] ({info.get('builder', '?')} builder)")
    if fractions:
        line += f"; {sum(fractions) / len(fractions):.0%} of the logged training batches inside it"
    return line


def report(summary: dict[str, Any], output_dir: str) -> None:
    """The console summary: data, batches, held-out quality before → after, what was written where."""
    print(f"data: {summary['data']} ({summary['train_rows']} training rows, {summary['eval_rows']} held out)")
    log_file = summary.get("diversity_log")
    line = _batches_line(Path(output_dir), log_file)
    if line:
        print(line)
    quality = [k for k in summary.get("after", {}) if not k.endswith(_BOOKKEEPING) and k != "seconds"]
    if quality:
        print("held-out quality, before → after fine-tuning:")
        for key in quality:
            b, a = summary["before"].get(key), summary["after"][key]
            print(f"  {key:28s} {'–' if b is None else f'{b:.4g}':>8} → {a:.4g}")
    written = ["model", *(["card"] if "card" in summary else []),
               *(["diversity log"] if log_file and Path(output_dir, log_file).is_file() else [])]
    print(f"done in {summary['seconds']:.0f} s: {', '.join(written)} in {output_dir}")


def run_cli(argv: list[str] | None = None, default_config: str | os.PathLike | None = None,
         run: Callable[[RecipeConfig, Any], dict[str, Any]] = run_recipe) -> int:
    """Entry point of ``hf-divcl train`` and of the recipe scripts (``run``: the script's steps): parse, run,
    report. Bad settings or data are one ``error:`` line and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg, args = parse_recipe_args(argv, default_config)
    except (ValueError, FileNotFoundError) as err:
        print(f"hf-divcl train: error: {err}", file=sys.stderr)
        return 2
    try:
        summary = run(cfg, args)
    except (ValueError, FileNotFoundError) as err:  # bad data or settings found while loading: one clear line
        logger.debug("the recipe failed", exc_info=True)
        print(f"hf-divcl train: error: {err}", file=sys.stderr)
        return 2
    end_distributed()
    if summary.get("main_process") is False:
        return 0  # the main process evaluates, writes the card and reports (only it knows whether that worked)
    report(summary, args.output_dir)
    return 0
