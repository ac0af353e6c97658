"""hf_divcl: diversity-window batches for contrastive encoders on the Hugging Face stack.

Data flow: dataset → bank → builder (:mod:`hf_divcl.builders`) → sampler (:mod:`hf_divcl.sampler`) → model →
loss → diversity and gradient bands (:mod:`hf_divcl.spectral`). Submodules import their heavy dependencies
lazily; ``import hf_divcl`` itself only loads torch.
"""

from .spectral import GradientBands, batch_diversity, gradient_bands, infonce_loss, participation_ratio
from .window import DiversityWindow, calibrate_window

__version__ = "0.1.0"

__all__ = [
    "DiversityWindow",
    "GradientBands",
    "__version__",
    "batch_diversity",
    "calibrate_window",
    "gradient_bands",
    "infonce_loss",
    "participation_ratio",
]
