"""The ``hf-divcl`` command line: ``hf-divcl {diagnose,calibrate,train} [--config x.yaml] [--flags]``.

Heavy libraries (torch, transformers) are imported only inside the command that needs them, so ``--help``
answers instantly.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .parser import add_config_option, parse_with_config

__all__ = ["main"]


def _diagnose(args: argparse.Namespace, cfg) -> int:
    from .diagnose import format_report, run_diagnose

    report = run_diagnose(cfg, progress=not args.quiet)
    print(format_report(report))
    if cfg.plot:
        print(f"\nplot written to {cfg.plot}")
    if cfg.output_json:
        print(f"report written to {cfg.output_json}")
    return 0


def _calibrate(args: argparse.Namespace, cfg) -> int:
    from .calibrate import run_calibrate

    for res in run_calibrate(cfg, progress=not args.quiet):
        print(res.format())
        print()
    if cfg.plot:
        print(f"plot(s) written next to {cfg.plot}")
    if cfg.output_json:
        print(f"windows written to {cfg.output_json}")
    return 0


def _train(args: argparse.Namespace, cfg=None) -> int:
    from .steps import run_cli as train_main

    return train_main(args.rest)


def _push(args: argparse.Namespace, cfg=None) -> int:
    from ..publish.hub import push_to_hub

    url = push_to_hub(args.output_dir, args.repo_id, private=args.private, endpoint=args.endpoint,
                      commit_message=args.message)
    print(f"pushed {args.output_dir} to {url}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    """The ``hf-divcl`` parser; ``diagnose`` and ``calibrate`` are ``HfArgumentParser`` s over their config
    dataclasses (``parser.configs``: command → (config class, its parser))."""
    from transformers import HfArgumentParser

    from .calibrate import CalibrateConfig
    from .diagnose import DiagnoseConfig

    parser = argparse.ArgumentParser(prog="hf-divcl", description="Diversity-window batches for contrastive "
                                     "encoders: measure batch diversity and InfoNCE gradient bands.")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (default: WARNING).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    parser.configs = {}
    for name, cls, func, about in (
            ("diagnose", DiagnoseConfig, _diagnose, "Embed random and diversity-controlled batches with a model "
             "and report diversity, measured vs. predicted gradient norms and the gradient-vs-diversity curve."),
            ("calibrate", CalibrateConfig, _calibrate, "Choose the diversity window around the batch diversity that "
             "maximises the InfoNCE gradient for a model, data set, batch size and temperature.")):
        p = sub.add_parser(name, dataclass_types=[cls], allow_abbrev=False, help=about)
        add_config_option(p)
        p.add_argument("--quiet", action="store_true", help="No progress bars.")
        p.set_defaults(func=func)
        parser.configs[name] = (cls, p)
    p = sub.add_parser("train", dataclass_types=[], add_help=False,
                       help="Run a recipe: train with diversity-window batches, evaluate, write the model card "
                       "(and push). `hf-divcl train --config recipes/text_wordnet.yaml "
                       "--max_steps 20`; `hf-divcl train --help` lists the keys.")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_train)
    p = sub.add_parser("push", dataclass_types=[],
                       help="Upload a trained output folder (weights, tokenizer, card, plots, diversity log "
                       "as JSONL and Parquet, training arguments) to the Hub. The token comes from HF_TOKEN or "
                       "`huggingface-cli login`, never from the command line.")
    p.add_argument("output_dir", help="Folder written by a DivCLTrainer run or a recipe.")
    p.add_argument("repo_id", help="namespace/name on the Hub.")
    p.add_argument("--private", action="store_true", help="Create the repo as private.")
    p.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co).")
    p.add_argument("--message", default="Upload model trained with diversity-window batches (hf_divcl)",
                   help="Commit message.")
    p.set_defaults(func=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # recipe keys are free-form (--any_config_key value): hand them over untouched
        from .steps import run_cli as train_main

        return train_main(argv[1:])
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = None
        if args.command in parser.configs:  # again, with the --config YAML underneath the flags
            cls, sub = parser.configs[args.command]
            (cfg,) = parse_with_config(sub, [cls], argv[argv.index(args.command) + 1:])
        return args.func(args, cfg)
    except (ValueError, FileNotFoundError, OSError, ImportError, RuntimeError) as err:
        print(f"hf-divcl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
