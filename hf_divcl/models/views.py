"""Two augmented views per image, as a collator needs them to train an image encoder (SimCLR-style)."""

from __future__ import annotations

from .vision import processor_image_size

__all__ = ["image_views"]


def image_views(model, image_size: int | None, scale_min: float, jitter: float, seed: int):
    """``(augment, to_inputs)`` for a collator training an image ``model`` on two augmented views per image: the
    views at ``image_size`` (default: the model's image processor size, else 224) and how they become model inputs.
    Needs kornia (``pip install 'hf_divcl[vision]'``)."""
    try:
        from .augment import TwoViewAugment, to_model_inputs
    except ImportError as err:  # kornia is an optional extra
        raise ImportError("Image training needs kornia: pip install 'hf_divcl[vision]'.") from err
    size = image_size or processor_image_size(model) or 224
    return (TwoViewAugment(size, scale=(scale_min, 1.0), jitter=jitter, seed=seed),
            lambda views: to_model_inputs(model, views))
