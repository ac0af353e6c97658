"""SimCLR-style two-view image augmentation (kornia) and the bridge from augmented views to a model's inputs.

Pipeline per view, batched with per-image random parameters: random resized crop (area fraction ``scale``,
aspect ratio 3/4..4/3) → horizontal flip (p = 0.5) → colour jitter (torchvision semantics, applied with
probability ``p_jitter``) → random grayscale (``grayscale_p``). Views are float ``(n, 3, S, S)`` in [0, 1].

Feeding views to a model: the image processors of the models in :mod:`hf_divcl.models.vision` (and of most Hugging
Face image models) rescale **every** input by ``rescale_factor`` (1/255), float tensors included, so
``model.preprocess(list(views))`` silently turns a [0, 1] view into values near ``-1`` after normalisation
(checked numerically in ``tests/test_augment.py``). Use [`to_model_inputs`], which applies the processor's
resize / centre-crop / normalisation to the float batch in torch (on the views' device) and skips the rescale.

Reproducibility: kornia samples its parameters from torch's global CPU generator. With ``seed=`` or a
``generator=`` each call draws one seed from that generator and runs the pipeline under it inside
``torch.random.fork_rng`` (so the global RNG is left untouched); without either, the global RNG is used
(reproducible under ``torch.manual_seed``). Parameters are always sampled on the CPU, so a CUDA batch gets
the same crops, flips and jitter as the same batch on the CPU.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["TwoViewAugment", "images_to_tensor", "to_model_inputs"]

_RANGE_TOL = 1e-4  # float inputs may exceed [0, 1] by this much (rounding) before they are rejected


def _decode_item(item: Any, index: int) -> torch.Tensor:
    """One image → ``(C, H, W)`` tensor (uint8 or float in [0, 1]) with C in {1, 3, 4}; errors name ``index``."""
    from PIL import Image, UnidentifiedImageError

    if item is None:
        raise ValueError(f"Image {index} is None; drop that row or fill it with a real image.")
    if isinstance(item, dict):  # datasets.Image(decode=False) rows: {"bytes": ..., "path": ...}
        item = item.get("bytes") or item.get("path")
        if item is None:
            raise ValueError(f"Image {index} is a dict without 'bytes' or 'path'.")
    if isinstance(item, (bytes, bytearray, str, os.PathLike)):
        source = io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item
        try:
            with Image.open(source) as opened:
                item = opened.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            what = f"file {str(item)!r}" if isinstance(item, (str, os.PathLike)) else f"{len(item)} bytes"
            raise ValueError(f"Image {index} ({what}) cannot be read by PIL: {exc}. Replace or drop it.") from exc
    if isinstance(item, Image.Image):
        try:
            rgb = item.convert("RGB")  # L, P, RGBA (alpha dropped), CMYK ... → RGB
        except (OSError, ValueError) as exc:
            raise ValueError(f"Image {index} (PIL mode {item.mode!r}, size {item.size}) cannot be decoded: {exc}. "
                             "Replace or drop it.") from exc
        return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
    if isinstance(item, np.ndarray):
        if item.ndim == 3 and item.shape[-1] in (1, 3, 4):
            item = torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1)  # numpy images are HWC
        else:
            item = torch.from_numpy(np.ascontiguousarray(item))
    if not isinstance(item, torch.Tensor):
        raise ValueError(f"Image {index} is a {type(item).__name__}; pass PIL images, numpy arrays (H, W[, C]), "
                         "tensors (C, H, W), encoded bytes or file paths.")
    if item.ndim == 2:
        item = item.unsqueeze(0)
    if item.ndim != 3 or item.shape[0] not in (1, 3, 4) or min(item.shape[1:]) < 1:
        raise ValueError(f"Image {index} has shape {tuple(item.shape)}; a tensor image must be (C, H, W) with C in "
                         "1, 3 or 4 (a numpy array (H, W) or (H, W, C)).")
    return item


def _to_unit_float(x: torch.Tensor, first_index: int = 0) -> torch.Tensor:
    """uint8 → /255; float → checked to lie in [0, 1]; ``(..., C, H, W)`` → float32 with 3 channels."""
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    elif x.is_floating_point():
        x = x.to(torch.float32)
        flat = x.reshape(x.shape[0], -1) if x.ndim == 4 else x.reshape(1, -1)
        bad = ~torch.isfinite(flat).all(dim=1) | (flat.amin(dim=1) < -_RANGE_TOL) | (flat.amax(dim=1) > 1 + _RANGE_TOL)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            lo, hi = float(flat[i].min()), float(flat[i].max())
            raise ValueError(f"Image {first_index + i} holds float values in [{lo:.4g}, {hi:.4g}]; float images must "
                             "be finite and in [0, 1]. Divide 0..255 images by 255 (or pass uint8).")
    else:
        raise ValueError(f"Image {first_index} has dtype {x.dtype}; pass uint8 (0..255) or float (0..1) images.")
    channels = x.shape[-3]
    if channels == 1:
        x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    elif channels == 4:
        x = x[..., :3, :, :]  # RGBA → RGB: alpha dropped, as PIL's convert("RGB") does
    return x


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``(n, C, H, W)`` → ``(n, C, *size)`` with anti-aliasing; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True).clamp_(0.0, 1.0)


def images_to_tensor(images: Sequence[Any] | torch.Tensor, image_size: int,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Convert a batch of images to float ``(n, 3, image_size, image_size)`` in [0, 1].

    Args:
        images: a ``(n, C, H, W)`` tensor (uint8 0..255 or float 0..1, C in 1/3/4), or a sequence of PIL images
            (any mode, any size), numpy arrays ``(H, W[, C])``, tensors ``(C, H, W)``, encoded image bytes, file
            paths, or ``{"bytes", "path"}`` dicts (`datasets.Image(decode=False)` rows).
        image_size: output side S; images of another size are resized (bilinear, anti-aliased; the aspect
            ratio is not kept).
        device: where the result goes; defaults to the input tensor's device (CPU for PIL images).

    Grey images get their channel repeated 3 times; alpha channels are dropped.

    Raises:
        `ValueError`: empty batch, or an unreadable/ill-shaped/out-of-range image (the message names its index).
    """
    size = (int(image_size), int(image_size))
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
            raise ValueError(f"A tensor batch must be (n, C, H, W) with C in 1, 3 or 4; got shape "
                             f"{tuple(images.shape)}. Add a batch dimension with x.unsqueeze(0) for one image.")
        if len(images) == 0:
            raise ValueError("Empty batch: pass at least one image.")
        x = _to_unit_float(images.to(device) if device is not None else images)
        return _resize(x, size).contiguous()
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise ValueError(f"Pass a list of images or a (n, C, H, W) tensor, not a {type(images).__name__}.")
    if len(images) == 0:
        raise ValueError("Empty batch: pass at least one image.")
    decoded = [_decode_item(item, i) for i, item in enumerate(images)]
    if device is None:
        device = next((t.device for t in decoded if t.device.type != "cpu"), torch.device("cpu"))
    out = []
    for i, item in enumerate(decoded):
        x = _to_unit_float(item.to(device).unsqueeze(0), first_index=i)
        out.append(_resize(x, size))
    return torch.cat(out).contiguous()


class TwoViewAugment:
    """Two independently augmented views of a batch, for SimCLR-style contrastive training.

    Args:
        image_size: side S of the output views.
        scale: range of the crop's area as a fraction of the image (``RandomResizedCrop``).
        flip: random horizontal flips (p = 0.5).
        jitter: brightness and contrast strength (factors drawn from ``[1 - jitter, 1 + jitter]``).
        p_jitter: probability that an image gets colour jitter.
        grayscale_p: probability that a view is turned grey.
        seed: seeds a private generator, so two instances with the same seed give the same sequence of views
            (in DataLoader workers the generator is re-seeded per worker and epoch, see ``_own_generator``).
        saturation: saturation strength, default ``jitter``; hue: hue shift, default ``jitter / 4``. On grey
            inputs (three equal channels) saturation and hue leave the image grey, so they only act on colour.

    Call with images (anything [`images_to_tensor`] takes) and optionally ``generator=`` (a CPU
    `torch.Generator`, which then takes precedence over ``seed``); returns ``(view1, view2)``, each float
    ``(n, 3, S, S)`` in [0, 1] on the input's device.
    """

    def __init__(self, image_size: int, scale: tuple[float, float] = (0.3, 1.0), flip: bool = True,
                 jitter: float = 0.4, p_jitter: float = 0.8, grayscale_p: float = 0.0, seed: int | None = None,
                 saturation: float | None = None, hue: float | None = None,
                 ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)) -> None:
        import kornia.augmentation as K

        if image_size < 1:
            raise ValueError(f"image_size={image_size}: must be a positive number of pixels.")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale={scale}: need 0 < low <= high <= 1 (fractions of the image area).")
        for name, p in (("p_jitter", p_jitter), ("grayscale_p", grayscale_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}={p}: a probability must lie in [0, 1].")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed={seed!r}: pass None or a non-negative int.")
        saturation = jitter if saturation is None else saturation
        hue = jitter / 4 if hue is None else hue
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue={hue}: the hue shift must lie in [0, 0.5].")
        self.image_size = int(image_size)
        # cropping_mode="resample": one batched warp (grid_sample) instead of kornia's per-image slice-and-resize
        steps: list[torch.nn.Module] = [K.RandomResizedCrop((self.image_size, self.image_size), scale=scale,
                                                            ratio=ratio, cropping_mode="resample")]
        if flip:
            steps.append(K.RandomHorizontalFlip(p=0.5))
        grey_steps = list(steps)
        if p_jitter > 0 and max(jitter, saturation, hue) > 0:
            steps.append(K.ColorJitter(brightness=jitter, contrast=jitter, saturation=saturation, hue=hue,
                                       p=p_jitter))
        if p_jitter > 0 and jitter > 0:
            grey_steps.append(K.ColorJitter(brightness=jitter, contrast=jitter, p=p_jitter))
        if grayscale_p > 0:
            steps.append(K.RandomGrayscale(p=grayscale_p))
        self.pipeline = torch.nn.Sequential(*steps)  # kept off nn.Module.to(): parameters stay sampled on CPU
        # grey batches (three equal channels): saturation and hue would leave them unchanged, and kornia's HSV
        # round trip is by far the slowest step on CPU (≈ 20× the rest), so grey batches skip it
        self.grey_pipeline = torch.nn.Sequential(*grey_steps)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._worker_seed: int | None = None

    def __repr__(self) -> str:
        return f"TwoViewAugment(image_size={self.image_size}, seed={self.seed}, pipeline={self.pipeline})"

    def _own_generator(self) -> torch.Generator | None:
        """The seeded generator; inside a DataLoader worker it is re-seeded from ``(seed, worker seed)``.

        Each worker holds a copy of this object with the same generator state, and non-persistent workers get a
        fresh copy every epoch; without re-seeding every worker and every epoch would repeat the same views.
        The worker seed is the DataLoader's base seed (drawn from the main process's torch RNG each epoch) plus
        the worker id, so runs stay reproducible under ``torch.manual_seed``.
        """
        info = torch.utils.data.get_worker_info()
        if self._generator is not None and info is not None and info.seed != self._worker_seed:
            mixed = np.random.SeedSequence([self.seed, info.seed]).generate_state(1, np.uint64)[0]
            self._generator = torch.Generator().manual_seed(int(mixed) & (2**63 - 1))
            self._worker_seed = info.seed
        return self._generator

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One augmented view of a float ``(n, 3, H, W)`` batch in [0, 1] (global RNG) → ``(n, 3, S, S)``."""
        grey = bool(torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]))
        return (self.grey_pipeline if grey else self.pipeline)(x).clamp_(0.0, 1.0)

    def __call__(self, images: Sequence[Any] | torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = images_to_tensor(images, self.image_size)
        source = generator if generator is not None else self._own_generator()
        if source is None:
            return self.view(x), self.view(x)
        if source.device.type != "cpu":
            raise ValueError(f"generator is on {source.device}; pass a CPU torch.Generator (parameters are sampled "
                             "on the CPU whatever the images' device).")
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=source))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.view(x), self.view(x)


def _target_size(processor: Any, height: int, width: int) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """``(resize_to, crop_to)`` the processor would apply to a ``height``×``width`` image (None: no such step)."""
    resize_to = crop_to = None
    if getattr(processor, "do_resize", False):
        size = dict(processor.size)
        if "height" in size and "width" in size:
            resize_to = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            edge, short, long = int(size["shortest_edge"]), min(height, width), max(height, width)
            scaled = (edge, int(edge * long / short))
            resize_to = scaled if height <= width else scaled[::-1]
        else:
            raise ValueError(f"{type(processor).__name__} resizes to {size}; to_model_inputs supports "
                             "{'height', 'width'} and {'shortest_edge'} sizes.")
    if getattr(processor, "do_center_crop", False):
        crop = dict(processor.crop_size)
        crop_to = (int(crop["height"]), int(crop["width"]))
    return resize_to, crop_to


def to_model_inputs(model: SentenceTransformer, views: torch.Tensor) -> dict[str, Any]:
    """Model inputs for a batch of float views, equal to what the model's processor gives for the same images.

    Applies the processor's resize, centre crop and ``(x - mean) / std`` normalisation to ``views`` on their
    device, without the processor's 1/255 rescale for float views (uint8 views are rescaled as the processor
    would). Views already at the processor's size match its output to float precision; other sizes are resized
    in torch (anti-aliased bilinear/bicubic), which differs from the processor's PIL filter by up to ~2/255 per
    pixel (measured on 56→28 Fashion-MNIST).

    Args:
        model: an image SentenceTransformer (e.g. from :mod:`hf_divcl.models.vision`).
        views: ``(n, 3, H, W)`` float in [0, 1] (e.g. a [`TwoViewAugment`] view) or uint8.

    Returns:
        ``{"pixel_values": (n, 3, H', W') float32, "modality": "image"}``: pass it to ``model(...)``.
    """
    from .vision import image_processor_of

    processor = image_processor_of(model)
    for flag in ("do_pad", "do_reduce_labels", "do_flip_channel_order"):
        if getattr(processor, flag, False):
            raise ValueError(f"{type(processor).__name__} has {flag}=True, which to_model_inputs does not apply; "
                             "call the processor on uint8 images instead.")
    if not isinstance(views, torch.Tensor) or views.ndim != 4 or views.shape[1] != 3:
        shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
        raise ValueError(f"views must be a (n, 3, H, W) tensor; got {shape}. Convert images with images_to_tensor.")
    if views.dtype == torch.uint8:
        factor = float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else 1.0
        x = views.to(torch.float32) * factor
    else:
        x = _to_unit_float(views)
    resize_to, crop_to = _target_size(processor, x.shape[-2], x.shape[-1])
    if resize_to is not None:
        mode = "bicubic" if int(getattr(processor, "resample", 2)) == 3 else "bilinear"
        x = _resize(x, resize_to, mode)
    if crop_to is not None:
        (h, w), (ch, cw) = x.shape[-2:], crop_to
        if ch > h or cw > w:
            raise ValueError(f"Centre crop {crop_to} is larger than the resized views ({h}, {w}).")
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., top : top + ch, left : left + cw]
    if getattr(processor, "do_normalize", False):
        mean = torch.as_tensor(processor.image_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(processor.image_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
    return {"pixel_values": x.contiguous(), "modality": "image"}
