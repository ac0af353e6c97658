"""A small residual convolutional image encoder for 28×28-sized images, as a sentence-transformers model.

The encoder (:class:`SmallResNet`) is a sentence-transformers input module (modality ``image``), so
``hf_divcl.DivCLTrainer`` trains it on an image column exactly as it trains the tiny ViT of
:mod:`hf_divcl.models.vision`: two augmented views per image (:func:`hf_divcl.models.views.image_views`), fed through
:func:`hf_divcl.models.augment.to_model_inputs`, which uses the module's image processor (``model[0].processor``;
mean = std = 0.5 per channel, grey images converted to 3 channels).

Architecture, for ``(n, 3, S, S)`` pixel values (S = ``image_size``, default 28)::

    stem     3×3 conv (stride ``stem_stride``) → BatchNorm → ReLU          (n, widths[0], S/stem_stride, ·)
    stage i  ``blocks[i]`` basic residual blocks of width ``widths[i]``    (the first block of stage i > 0 halves
             (two 3×3 conv + BatchNorm, ReLU; 1×1 conv shortcut on change)   the side with stride 2)
    pool     global average pooling                                     (n, widths[-1])
    norm     with ``output_norm="batchnorm"``: BatchNorm1d without affine parameters (batch statistics in training,
             running statistics in eval mode), so the embeddings are centred rather than all positive

With the builder's defaults (widths 32-64-128, one block each, stem stride 2) a 28×28 image goes 28 → 14 → 14 → 7 → 4
and the embedding is 128-d: about 10 M multiply-adds per image, 0.5 to 0.7 s per training step of 256 images (two
views) on one CPU thread; stem stride 1 (28 → 28 → 14 → 7) costs about 4× as much.
:func:`build_small_resnet_sentence_transformer` optionally appends a SimCLR projection head (two
sentence-transformers ``Dense`` modules, ``d → d`` ReLU → ``d → projection_dim``): the contrastive loss then trains
the head's output (``model.encode``), while the SimCLR convention evaluates the pre-head features, which
:func:`backbone_embeddings` gives (the output of ``model[0]``).

Saves with ``model.save(dir)`` and reloads with ``SentenceTransformer(dir)`` (the module's class is recorded in
``modules.json`` as ``hf_divcl.models.convnet.SmallResNet``; its weights and config sit in ``0_SmallResNet/``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from sentence_transformers.base.modules.input_module import InputModule
from torch import nn

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["SmallResNet", "backbone_embeddings", "build_small_resnet_sentence_transformer", "pixel_values"]

_MEAN_STD = [0.5, 0.5, 0.5]


class _BasicBlock(nn.Module):
    """Two 3×3 conv + BatchNorm with a residual connection (1×1 conv + BatchNorm when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(InputModule):
    """Narrow ResNet image encoder: ``{"pixel_values": (n, 3, S, S)}`` → ``{"sentence_embedding": (n, widths[-1])}``.

    Args:
        image_size: side S the image processor resizes every image to.
        widths: channels of each stage (the embedding dimension is ``widths[-1]``).
        blocks: residual blocks per stage (one int for all stages, or one per stage).
        stem_stride: stride of the stem convolution (2 quarters the cost of the first stage).
        in_channels: channels of the pixel values (3: the processor converts grey images to RGB).
        output_norm: ``"none"`` or ``"batchnorm"`` (an affine-free BatchNorm1d after the pooling).

    The weights are initialised from torch's global RNG (seed it, or use
    :func:`build_small_resnet_sentence_transformer` with ``seed=``). ``modalities`` is ``["image"]``; ``preprocess``
    runs the module's `transformers.ViTImageProcessorPil` (resize to S, rescale 1/255, mean = std = 0.5).
    """

    config_keys: ClassVar[list[str]] = ["image_size", "widths", "blocks", "stem_stride", "in_channels", "output_norm"]
    save_in_root = False

    def __init__(self, image_size: int = 28, widths: Sequence[int] = (32, 64, 128), blocks: int | Sequence[int] = 1,
                 stem_stride: int = 1, in_channels: int = 3, output_norm: str = "none") -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        blocks = [int(blocks)] * len(widths) if isinstance(blocks, int) else [int(b) for b in blocks]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths={widths}: pass at least one positive channel count per stage.")
        if len(blocks) != len(widths) or min(blocks) < 1:
            raise ValueError(f"blocks={blocks}: pass one positive block count, or one per stage ({len(widths)}).")
        if output_norm not in ("none", "batchnorm"):
            raise ValueError(f"output_norm={output_norm!r}: use 'none' or 'batchnorm'.")
        if int(image_size) < 1 or int(stem_stride) < 1:
            raise ValueError(f"image_size={image_size}, stem_stride={stem_stride}: both must be positive.")
        self.image_size, self.widths, self.blocks = int(image_size), widths, blocks
        self.stem_stride, self.in_channels, self.output_norm = int(stem_stride), int(in_channels), output_norm
        self.stem = nn.Sequential(nn.Conv2d(self.in_channels, widths[0], 3, stride=self.stem_stride, padding=1,
                                            bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        previous = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for b in range(count):
                layers.append(_BasicBlock(previous, width, stride=2 if stage > 0 and b == 0 else 1))
                previous = width
        self.stages = nn.Sequential(*layers)
        self.norm = nn.BatchNorm1d(widths[-1], affine=False) if output_norm == "batchnorm" else nn.Identity()
        self.processor = _image_processor(self.image_size)

    @property
    def modalities(self) -> list[str]:
        return ["image"]

    def get_embedding_dimension(self) -> int:
        return self.widths[-1]

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs) -> dict[str, Any]:
        """Images (PIL, numpy ``(H, W[, C])`` uint8, …) → ``{"pixel_values": (n, 3, S, S), "modality": "image"}``."""
        if any(isinstance(x, str) for x in inputs):
            raise ValueError("SmallResNet encodes images only; got text. Pass PIL images or image arrays.")
        pixels = self.processor(list(inputs), return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "modality": "image"}

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        x = features["pixel_values"]
        x = x.to(device=self.stem[0].weight.device, dtype=self.stem[0].weight.dtype)
        features["sentence_embedding"] = self.norm(self.stages(self.stem(x)).mean(dim=(-2, -1)))
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             init_defaults: dict[str, Any] | None = None, **kwargs) -> SmallResNet:
        hub_kwargs = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
                      "local_files_only": local_files_only}
        config = cls.load_config(model_name_or_path, **hub_kwargs)
        for key, value in (init_defaults or {}).items():
            config.setdefault(key, value)
        module = cls(**config)
        return cls.load_torch_weights(model_name_or_path, model=module, **hub_kwargs)


def _image_processor(image_size: int):
    import transformers

    return transformers.ViTImageProcessorPil(size={"height": image_size, "width": image_size},
                                             image_mean=_MEAN_STD, image_std=_MEAN_STD, do_convert_rgb=True)


def build_small_resnet_sentence_transformer(path: str | os.PathLike, image_size: int = 28,
                                            widths: Sequence[int] = (32, 64, 128), blocks: int | Sequence[int] = 1,
                                            stem_stride: int = 2, projection_dim: int | None = None,
                                            output_norm: str = "none", seed: int = 0) -> str:
    """Save a randomly initialised :class:`SmallResNet` SentenceTransformer at ``path/st`` and return that path.

    ``model.encode(images)`` gives ``(n, widths[-1])`` without a head, ``(n, projection_dim)`` with
    ``projection_dim``: then two ``Dense`` modules follow the encoder (``widths[-1] → widths[-1]`` with ReLU, then
    ``→ projection_dim`` linear), and :func:`backbone_embeddings` gives the pre-head ``(n, widths[-1])`` features.
    The weights depend only on ``seed`` and the sizes (the global torch RNG is left as it was).
    Builds in well under a second on a CPU.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules: list[nn.Module] = [SmallResNet(image_size=image_size, widths=widths, blocks=blocks,
                                                stem_stride=stem_stride, output_norm=output_norm)]
        if projection_dim:
            d = modules[0].get_embedding_dimension()
            modules += [Dense(d, d, activation_function=nn.ReLU()),
                        Dense(d, int(projection_dim), activation_function=nn.Identity())]
    out = Path(path) / "st"
    # No model card: sentence-transformers' card writer runs a text usage snippet, which fails for image-only models.
    SentenceTransformer(modules=modules, device="cpu").save(str(out), create_model_card=False)
    return str(out)


def pixel_values(model: SentenceTransformer, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
    """The ``(n, 3, S, S)`` normalised pixel values the model's first module takes, computed in torch (fast, no PIL
    processor; equal to the processor's output for images already at its size)."""
    from .augment import images_to_tensor, to_model_inputs
    from .vision import processor_image_size

    size = processor_image_size(model) or 224
    return to_model_inputs(model, images_to_tensor(images, size))["pixel_values"]


@torch.no_grad()
def backbone_embeddings(model: SentenceTransformer, pixels: torch.Tensor, batch_size: int = 500,
                        head: bool = False) -> torch.Tensor:
    """Features ``(n, d)`` (float32, CPU, not normalised) of pixel values (see [`pixel_values`]) in eval mode: the
    output of ``model[0]`` (the pre-head features), or with ``head=True`` the output of the whole model (what
    ``model.encode`` gives). The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    modules = list(model) if head else [model[0]]
    out = []
    try:
        for start in range(0, len(pixels), batch_size):
            features: dict[str, Any] = {"pixel_values": pixels[start:start + batch_size].to(device),
                                        "modality": "image"}
            for module in modules:
                features = module(features)
            out.append(features["sentence_embedding"].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
