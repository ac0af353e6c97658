"""Tiny, randomly initialised image (ViT) and image–text (CLIP) SentenceTransformers that build offline.

They exist for tests, smoke runs and CPU experiments on Fashion-MNIST-sized images: both build in about a
second, save with ``model.save(dir)`` and reload with ``SentenceTransformer(dir)`` to identical embeddings.

- ViT: a `transformers.ViTModel` + image processor wrapped by sentence-transformers' ``Transformer`` module
  (modality ``image``) and mean ``Pooling`` over the patch and CLS tokens → ``(n, hidden_size)`` embeddings.
  The ViT keeps its (unused) pooler layer: `AutoModel` always builds one for a ViT checkpoint, so a checkpoint
  without it would log a "MISSING pooler" load report on every reload, including after each training save.
  The pooler's 1,056 parameters get no gradient (mean pooling ignores them).
- CLIP: a `transformers.CLIPModel` (text and vision towers) + ``CLIPProcessor``; sentence-transformers 6
  detects CLIP and routes text to ``get_text_features`` and images to ``get_image_features``, so one
  ``Transformer`` module gives ``(n, projection_dim)`` embeddings for either modality (no Pooling module).
  The tokenizer is a character-level CLIP tokenizer (byte-level BPE without merges) generated here, so
  nothing is downloaded.

Image processors use mean = std = 0.5 per channel and ``do_convert_rgb=True`` (grey ``L`` images become 3
channels). They rescale *every* input by 1/255, float tensors included: feed augmented float views through
:func:`hf_divcl.models.augment.to_model_inputs`, not ``model.preprocess``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["build_tiny_clip_sentence_transformer", "build_tiny_vit_sentence_transformer", "image_processor_of",
           "processor_image_size"]

_MEAN_STD = [0.5, 0.5, 0.5]


def _check_geometry(image_size: int, patch_size: int, hidden_size: int, heads: int) -> None:
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}; pick sizes such "
                         "that the image splits into whole patches (e.g. 28 and 7).")
    if hidden_size % heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by heads={heads}.")


def _save_st(model: SentenceTransformer, out: Path) -> str:
    # No model card: sentence-transformers' card writer runs a text usage snippet, which fails (and logs a
    # warning) for an image-only model.
    model.save(str(out), create_model_card=False)
    return str(out)


def build_tiny_vit_sentence_transformer(path: str | os.PathLike, image_size: int = 28, hidden_size: int = 32,
                                        layers: int = 2, heads: int = 2, seed: int = 0,
                                        patch_size: int = 7) -> str:
    """Save a randomly initialised ViT SentenceTransformer (mean pooling) at ``path/st`` and return that path.

    The weights depend only on ``seed`` and the sizes (the global torch RNG is left as it was).
    ``model.encode(images)`` gives ``(n, hidden_size)``; the processor resizes any image to
    ``image_size``×``image_size`` and converts it to RGB.
    """
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    _check_geometry(image_size, patch_size, hidden_size, heads)
    base = Path(path)
    hf_dir = base / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    config = transformers.ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=3,
                                    hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                                    intermediate_size=hidden_size + 5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformers.ViTModel(config).save_pretrained(hf_dir)
    processor = transformers.ViTImageProcessorPil(size={"height": image_size, "width": image_size},
                                                  image_mean=_MEAN_STD, image_std=_MEAN_STD, do_convert_rgb=True)
    processor.save_pretrained(hf_dir)
    module = Transformer(str(hf_dir))
    pooling = Pooling(module.get_embedding_dimension(), pooling_mode="mean")
    return _save_st(SentenceTransformer(modules=[module, pooling], device="cpu"), base / "st")


def _char_clip_vocab() -> dict[str, int]:
    """CLIP BPE vocabulary without merges: the 256 byte-level symbols, alone and with the end-of-word mark."""
    from tokenizers import pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in symbols:
            vocab[symbol + suffix] = len(vocab)
    return vocab


def build_tiny_clip_sentence_transformer(path: str | os.PathLike, image_size: int = 28, hidden_size: int = 32,
                                         layers: int = 2, heads: int = 2, projection_dim: int = 32, seed: int = 0,
                                         patch_size: int = 7, max_text_length: int = 64) -> str:
    """Save a randomly initialised CLIP SentenceTransformer at ``path/st`` and return that path.

    ``model.encode(["a text"])`` and ``model.encode([pil_image])`` both give ``(n, projection_dim)``
    (CLIP's projected text/image features, in one space). Texts are tokenised per character (lower-cased) and
    truncated to ``max_text_length`` tokens; images are resized (shortest edge) and centre-cropped to
    ``image_size``. Weights depend only on ``seed`` and the sizes.
    """
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Transformer

    _check_geometry(image_size, patch_size, hidden_size, heads)
    base = Path(path)
    hf_dir = base / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    vocab = _char_clip_vocab()
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_text_length)
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=_MEAN_STD, image_std=_MEAN_STD, do_convert_rgb=True)
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(hf_dir)
    sizes = {"hidden_size": hidden_size, "intermediate_size": hidden_size + 5, "num_hidden_layers": layers,
             "num_attention_heads": heads, "projection_dim": projection_dim}
    text_config = transformers.CLIPTextConfig(vocab_size=len(vocab), max_position_embeddings=max_text_length,
                                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                              pad_token_id=tokenizer.pad_token_id, **sizes)
    vision_config = transformers.CLIPVisionConfig(image_size=image_size, patch_size=patch_size, num_channels=3,
                                                  **sizes)
    config = transformers.CLIPConfig(text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
                                     projection_dim=projection_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformers.CLIPModel(config).save_pretrained(hf_dir)
    module = Transformer(str(hf_dir))
    missing = {"text", "image"} - set(module.modalities)
    if missing:  # guards against a sentence-transformers release that stops detecting CLIP
        raise RuntimeError(f"sentence-transformers did not detect modalities {sorted(missing)} for the CLIP model "
                           f"in {str(hf_dir)!r} (it reports {module.modalities}); check its CLIP support.")
    return _save_st(SentenceTransformer(modules=[module], device="cpu"), base / "st")


def image_processor_of(model: SentenceTransformer):
    """The image processor inside an image SentenceTransformer (a ``CLIPProcessor``'s ``image_processor``, or the
    first module's processor itself for ViT-style models).

    Raises:
        `ValueError`: the model does not take images.
    """
    if "image" not in getattr(model, "modalities", ()):
        raise ValueError(f"This SentenceTransformer takes {list(getattr(model, 'modalities', []))}, not images; "
                         "build one with build_tiny_vit_sentence_transformer or load an image model.")
    processor = getattr(model[0], "processor", None)
    processor = getattr(processor, "image_processor", processor)
    if processor is None or not hasattr(processor, "do_normalize"):
        raise ValueError(f"The first module of the model ({type(model[0]).__name__}) has no image processor "
                         f"(found {type(processor).__name__}).")
    return processor


def processor_image_size(model) -> int | None:
    """Side of the images the model's processor produces (``size`` may be an int, a dict or a ``SizeDict``)."""
    try:
        size = getattr(image_processor_of(model), "size", None)
    except (ValueError, AttributeError):
        return None
    if isinstance(size, int):
        return size
    for key in ("height", "shortest_edge"):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return None

