"""hf_divcl: diversity-window batches for contrastive encoders on the Hugging Face stack.

Data flow: dataset → bank → builder (:mod:`hf_divcl.planning`) → sampler (:mod:`hf_divcl.sampler`) → model →
loss → diversity and gradient bands (:mod:`hf_divcl.spectral`).

The public names are importable from the top level (``from hf_divcl import DivCLTrainer, DivCLTrainingArguments,
DiversityWindowBatchSampler``) and load lazily, as in sentence-transformers and TRL: ``import hf_divcl`` itself
imports neither torch nor transformers; each name imports its submodule on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → submodule that defines it
_LAZY: dict[str, str] = {
    "DivCLTrainer": "trainer",
    "DivCLTrainingArguments": "training_args",
    "DiversityWindowBatchSampler": "sampler",
    "DivCLDataCollator": "collator",
    "MegaBatchSelector": "collator",
    "InfoNCELoss": "losses",
    "contrastive_loss": "losses",
    "EmbeddingBank": "bank",
    "DiversityLogger": "callbacks",
    "DiversityCallback": "callbacks",
    "CollapseError": "callbacks",
    "read_diversity_log": "callbacks",
    "plan_epoch": "planning",
    "duplicate_groups": "planning",
    "DiversityWindow": "window",
    "calibrate_window": "window",
    "GradientBands": "spectral",
    "batch_diversity": "spectral",
    "gradient_bands": "spectral",
    "infonce_loss": "spectral",
    "participation_ratio": "spectral",
    "validate_training_dataset": "validation",
    "DatasetError": "validation",
    "write_model_card": "card",
    "push_to_hub": "hub",
    "load_sentence_transformer": "models",
}

__all__ = [
    "CollapseError",
    "DatasetError",
    "DivCLDataCollator",
    "DivCLTrainer",
    "DivCLTrainingArguments",
    "DiversityCallback",
    "DiversityLogger",
    "DiversityWindow",
    "DiversityWindowBatchSampler",
    "EmbeddingBank",
    "GradientBands",
    "InfoNCELoss",
    "MegaBatchSelector",
    "__version__",
    "batch_diversity",
    "calibrate_window",
    "contrastive_loss",
    "duplicate_groups",
    "gradient_bands",
    "infonce_loss",
    "load_sentence_transformer",
    "participation_ratio",
    "plan_epoch",
    "push_to_hub",
    "read_diversity_log",
    "validate_training_dataset",
    "write_model_card",
]

if TYPE_CHECKING:  # static analysers and IDEs see the real objects
    from .bank import EmbeddingBank
    from .callbacks import CollapseError, DiversityCallback, DiversityLogger, read_diversity_log
    from .card import write_model_card
    from .collator import DivCLDataCollator, MegaBatchSelector
    from .hub import push_to_hub
    from .losses import InfoNCELoss, contrastive_loss
    from .models import load_sentence_transformer
    from .planning import duplicate_groups, plan_epoch
    from .sampler import DiversityWindowBatchSampler
    from .spectral import GradientBands, batch_diversity, gradient_bands, infonce_loss, participation_ratio
    from .trainer import DivCLTrainer
    from .training_args import DivCLTrainingArguments
    from .validation import DatasetError, validate_training_dataset
    from .window import DiversityWindow, calibrate_window


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_divcl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
