"""hf_divcl: diversity-window batches for contrastive encoders on the Hugging Face stack.

Data flow: dataset → bank → builder (:mod:`hf_divcl.planning`) → sampler (:mod:`hf_divcl.sampler`) → model →
loss → diversity and gradient bands (:mod:`hf_divcl.diversity.metrics`).

The public names are importable from the top level (``from hf_divcl import DivCLTrainer, DivCLTrainingArguments,
DiversityWindowBatchSampler``) and load lazily, as in sentence-transformers and TRL: ``import hf_divcl`` itself
imports neither torch nor transformers; each name imports its submodule on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name → the module that defines it (the one place it is imported from)
_LAZY: dict[str, str] = {
    "end_distributed": "_common",
    "EmbeddingBank": "bank",
    "calibrate_window": "policies.calibration",
    "BatchPolicy": "policies.base",
    "SamplerSetup": "policies.base",
    "register_policy": "policies.registry",
    "DivCLDataCollator": "collator",
    "DatasetError": "data.validation",
    "validate_training_dataset": "data.validation",
    "GradientBands": "diversity.bands",
    "gradient_bands": "diversity.bands",
    "infonce_loss": "diversity.bands",
    "read_diversity_log": "diversity.log",
    "batch_diversity": "diversity.metrics",
    "participation_ratio": "diversity.metrics",
    "DiversityWindow": "diversity.window",
    "InfoNCELoss": "losses.infonce",
    "contrastive_loss": "losses.maths",
    "load_sentence_transformer": "models.loading",
    "duplicate_groups": "planning.dedupe",
    "plan_epoch": "planning.plan",
    "write_model_card": "publish.card",
    "push_to_hub": "publish.hub",
    "DiversityWindowBatchSampler": "sampler",
    "DivCLTrainingArguments": "training.arguments",
    "DiversityCallback": "training.callbacks",
    "DiversityLogger": "training.callbacks",
    "DivCLTrainer": "training.trainer",
}

__all__ = [
    "BatchPolicy",
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
    "SamplerSetup",
    "__version__",
    "batch_diversity",
    "calibrate_window",
    "contrastive_loss",
    "duplicate_groups",
    "end_distributed",
    "gradient_bands",
    "infonce_loss",
    "load_sentence_transformer",
    "participation_ratio",
    "plan_epoch",
    "push_to_hub",
    "read_diversity_log",
    "register_policy",
    "validate_training_dataset",
    "write_model_card",
]

if TYPE_CHECKING:  # static analysers and IDEs see the real objects
    from ._common import end_distributed
    from .bank import EmbeddingBank
    from .collator import DivCLDataCollator
    from .data.validation import DatasetError, validate_training_dataset
    from .diversity.bands import GradientBands, gradient_bands, infonce_loss
    from .diversity.log import read_diversity_log
    from .diversity.metrics import batch_diversity, participation_ratio
    from .diversity.window import DiversityWindow
    from .losses.infonce import InfoNCELoss
    from .losses.maths import contrastive_loss
    from .models.loading import load_sentence_transformer
    from .planning.dedupe import duplicate_groups
    from .planning.plan import plan_epoch
    from .policies.base import BatchPolicy, SamplerSetup
    from .policies.calibration import calibrate_window
    from .policies.registry import register_policy
    from .publish.card import write_model_card
    from .publish.hub import push_to_hub
    from .sampler import DiversityWindowBatchSampler
    from .training.arguments import DivCLTrainingArguments
    from .training.callbacks import DiversityCallback, DiversityLogger
    from .training.trainer import DivCLTrainer


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_divcl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
