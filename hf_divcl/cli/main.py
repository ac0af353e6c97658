"""The ``hf-divcl`` command line: ``hf-divcl {train,preflight,diagnose,calibrate,push} [--config x.yaml] [--flags]``.

Every command parses its options the same way (:mod:`hf_divcl.cli.parser`: a config dataclass, YAML underneath the
flags). Heavy libraries (torch, sentence-transformers) are imported only inside the command that needs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._common import DIVERSITY_LOG_FILE
from .parser import config_parser, parse_config

__all__ = ["PushConfig", "command_parser", "main", "make_parser"]


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


@dataclass
class PushConfig:
    """``hf-divcl push``: upload a trained output folder (weights, tokenizer, card, plots, diversity log as JSONL and
    Parquet, training arguments) to the Hub. The token comes from ``HF_TOKEN`` or ``hf auth login``, never from the
    command line."""

    output_dir: str = field(default="", metadata={"help": "Folder written by a DivCLTrainer run or a recipe "
                                                          "(also the first positional argument)."})
    repo_id: str = field(default="", metadata={"help": "namespace/name on the Hub (also the second positional "
                                                       "argument)."})
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    endpoint: str | None = field(default=None, metadata={"help": "Hub endpoint (default: HF_ENDPOINT or "
                                                                 "huggingface.co)."})
    message: str = field(default="Upload model trained with diversity-window batches (hf_divcl)",
                         metadata={"help": "Commit message."})
    diversity_log_file: str = field(default=DIVERSITY_LOG_FILE, metadata={
        "help": "The run's diversity log in output_dir (also uploaded as Parquet)."})

    def __post_init__(self) -> None:
        if not self.output_dir or not self.repo_id:
            raise ValueError("push needs the output folder and the repo id: hf-divcl push OUTPUT_DIR NAMESPACE/NAME "
                             "(or --output_dir / --repo_id, or both keys in --config).")


def _push(args: argparse.Namespace, cfg: PushConfig) -> int:
    from ..publish.hub import push_to_hub

    url = push_to_hub(cfg.output_dir, cfg.repo_id, private=cfg.private, endpoint=cfg.endpoint,
                      commit_message=cfg.message, log_file=cfg.diversity_log_file)
    print(f"pushed {cfg.output_dir} to {url}")
    return 0


def _config_classes() -> dict[str, tuple[type, Callable[[argparse.Namespace, Any], int], str]]:
    from .calibrate import CalibrateConfig
    from .diagnose import DiagnoseConfig

    return {
        "diagnose": (DiagnoseConfig, _diagnose, "Embed random and diversity-controlled batches with a model and "
                     "report diversity, measured vs. predicted gradient norms and the gradient-vs-diversity curve."),
        "calibrate": (CalibrateConfig, _calibrate, "Choose the diversity window around the batch diversity that "
                      "maximises the InfoNCE gradient for a model, data set, batch size and temperature."),
        "push": (PushConfig, _push, PushConfig.__doc__.split("\n\n")[0].replace("\n    ", " ")),
    }


def command_parser(command: str):
    """The parser of one command (``diagnose``, ``calibrate``, ``push``): an ``HfArgumentParser`` over its config
    dataclass with ``--config`` (:func:`hf_divcl.cli.parser.config_parser`) and ``--quiet``."""
    cls, _, about = _config_classes()[command]
    parser = config_parser(cls, prog=f"hf-divcl {command}", description=about)
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    return parser


def make_parser() -> argparse.ArgumentParser:
    """The ``hf-divcl`` parser: ``--log-level`` and the command; the command's own options go to its parser
    (:func:`command_parser`; ``train``: :func:`hf_divcl.cli.recipe_config.parse_recipe_args`)."""
    parser = argparse.ArgumentParser(prog="hf-divcl", description="Diversity-window batches for contrastive "
                                     "encoders: measure batch diversity and InfoNCE gradient bands, train, publish.",
                                     allow_abbrev=False)
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (default: WARNING).")
    parser.add_argument("command", choices=["train", "preflight", "diagnose", "calibrate", "push"],
                        help="train: run a recipe (`hf-divcl train --help` lists its keys); preflight: what random "
                        "batches of your data look like to your model, with a recommendation; diagnose, calibrate: "
                        "measure a model's batches; push: upload an output folder. `hf-divcl COMMAND --help`.")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the command's options")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser().parse_args(argv)
    if args.command == "train":  # the recipe's own entry point parses, reports errors and sets up logging
        from .steps import run_cli

        return run_cli(args.options)
    if args.command == "preflight":
        from .preflight import run_preflight_cli

        return run_preflight_cli(args.options)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    cls, func, _ = _config_classes()[args.command]
    parser = command_parser(args.command)
    options = list(args.options)
    if args.command == "push" and len(options) >= 2 and not any(o.startswith("-") for o in options[:2]):
        options = ["--output_dir", options[0], "--repo_id", options[1], *options[2:]]  # hf-divcl push OUT REPO
    try:
        (cfg,) = parse_config(parser, [cls], options)
        args.quiet = parser.parse_known_args(options)[0].quiet
        return func(args, cfg)
    except (ValueError, FileNotFoundError, OSError, ImportError, RuntimeError) as err:
        print(f"hf-divcl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
