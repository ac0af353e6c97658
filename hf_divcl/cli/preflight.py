"""``hf-divcl preflight``: before training, what random batches of *your* data look like to *your* model at your
batch size and τ, with a recommendation (:mod:`hf_divcl.policies.preflight`).

    hf-divcl preflight --config text_wordnet --data my_pairs.tsv --per_device_train_batch_size 64

Takes the recipe keys (``hf-divcl train --help``: data, model, batch size, temperature, ...) plus the options below;
the data and model are loaded exactly as ``hf-divcl train`` would load them.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

__all__ = ["PreflightOptions", "run_preflight_cli"]

ABOUT = ("Before training: what random batches of your data look like to your model at your batch size and τ "
         "(diversity, duplicates, likely false negatives, gradient regime), with a recommendation. The data and the "
         "model are loaded as `hf-divcl train` loads them.")


@dataclass
class PreflightOptions:
    """What the pre-flight report samples and where it goes."""

    max_rows: int = field(default=2048, metadata={"help": "Rows encoded by the model (a seeded sample)."})
    n_batches: int = field(default=64, metadata={"help": "Random batches measured."})
    near_threshold: float = field(default=0.95, metadata={
        "help": "Anchor cosine from which two rows of a batch count as near-duplicates."})
    output_json: str | None = field(default=None, metadata={
        "help": "Write the report here (default: output_dir/divcl_preflight.json, which a later run's card shows)."})

    def __post_init__(self) -> None:
        if self.max_rows < 2 or self.n_batches < 1 or not 0 < self.near_threshold <= 1:
            raise ValueError(f"max_rows must be >= 2, n_batches >= 1 and near_threshold in (0, 1]; got "
                             f"{self.max_rows}, {self.n_batches}, {self.near_threshold}.")


def run_preflight_cli(argv: list[str] | None = None) -> int:
    """Parse the recipe keys and the options, load the data and the model as ``hf-divcl train`` does, and print the
    report. Bad settings or data are one ``error:`` line and exit code 2."""
    import dataclasses
    import textwrap

    from .parser import config_parser, parse_config
    from .recipe_config import DEFAULTS, RecipeConfig, find_config, help_text

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        options = [f"  --{f.name} (default: {f.default!r})\n      {f.metadata['help']}"
                   for f in dataclasses.fields(PreflightOptions)]
        print("usage: hf-divcl preflight [--config PATH | RECIPE] [--key value ...]\n\n"
              + "\n".join(textwrap.wrap(ABOUT, width=118))
              + "\n\nPre-flight options:\n" + "\n".join(options) + "\n\n"
              + help_text().split("\n\n", 2)[2])
        return 0
    try:
        from ..training.arguments import DivCLTrainingArguments

        classes = (RecipeConfig, DivCLTrainingArguments, PreflightOptions)
        cfg, args, opts = parse_config(config_parser(*classes, add_help=False), classes, argv, defaults=DEFAULTS,
                                       find_config=find_config)
        from .steps import load_data, load_model, preflight_step

        train, _, description = load_data(cfg, args.seed)
        model, _ = load_model(cfg, args)
        preflight_step(cfg, args, model, train, description, max_rows=opts.max_rows, n_batches=opts.n_batches,
                       near_threshold=opts.near_threshold, path=opts.output_json, force=True)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"hf-divcl preflight: error: {err}", file=sys.stderr)
        return 2
    return 0
