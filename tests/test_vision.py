"""Tiny ViT and CLIP SentenceTransformers built offline: encode, determinism, save/reload."""

import numpy as np
import pytest
from PIL import Image
from sentence_transformers import SentenceTransformer

from hf_divcl.data.images import FASHION_MNIST_ROOT, class_descriptions, digits
from hf_divcl.models.vision import (
    build_tiny_clip_sentence_transformer,
    build_tiny_vit_sentence_transformer,
    image_processor_of,
)


@pytest.fixture(scope="module")
def images() -> list:
    """Real images of two sizes and modes: four 8×8 digits (L) and one Fashion-MNIST-sized RGB copy."""
    ds = digits("test", limit=4)
    pil = list(ds["image"])
    return [*pil, pil[0].resize((28, 28)).convert("RGB")]


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> str:
    return build_tiny_vit_sentence_transformer(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    return build_tiny_clip_sentence_transformer(tmp_path_factory.mktemp("clip"))


def test_vit_encodes_images_and_reloads_identically(vit_dir, images, tmp_path, capfd):
    model = SentenceTransformer(vit_dir, device="cpu")
    assert model.modalities == ["image"]
    embeddings = model.encode(images)
    assert embeddings.shape == (5, 32) and np.isfinite(embeddings).all()
    # a grey image and its RGB copy are the same input once the processor converts to RGB
    assert np.allclose(model.encode([images[0].convert("RGB")]), embeddings[:1], atol=1e-6)

    model.save(str(tmp_path / "again"))
    reloaded = SentenceTransformer(str(tmp_path / "again"), device="cpu")
    assert np.array_equal(reloaded.encode(images), embeddings)
    assert "LOAD REPORT" not in capfd.readouterr().err  # the ViT pooler round-trips: no missing-weights report


def test_vit_is_deterministic_for_a_seed(tmp_path, images):
    same = build_tiny_vit_sentence_transformer(tmp_path / "a", seed=3)
    again = build_tiny_vit_sentence_transformer(tmp_path / "b", seed=3)
    other = build_tiny_vit_sentence_transformer(tmp_path / "c", seed=4)
    encode = [SentenceTransformer(p, device="cpu").encode(images) for p in (same, again, other)]
    assert np.array_equal(encode[0], encode[1])
    assert not np.allclose(encode[0], encode[2])


def test_vit_geometry_is_checked(tmp_path):
    with pytest.raises(ValueError, match="image_size=30 is not a multiple of patch_size=7"):
        build_tiny_vit_sentence_transformer(tmp_path, image_size=30)


def test_clip_text_and_image_share_one_space_and_reload_identically(clip_dir, images, tmp_path):
    model = SentenceTransformer(clip_dir, device="cpu")
    assert sorted(model.modalities) == ["image", "text"]
    texts = class_descriptions()
    text_embeddings = model.encode(texts)
    image_embeddings = model.encode(images)
    assert text_embeddings.shape == (10, 32) and image_embeddings.shape == (5, 32)
    assert len({row.tobytes() for row in text_embeddings}) == 10  # every description gets its own vector
    assert model.similarity(image_embeddings, text_embeddings).shape == (5, 10)

    model.save(str(tmp_path / "again"))
    reloaded = SentenceTransformer(str(tmp_path / "again"), device="cpu")
    assert np.array_equal(reloaded.encode(texts), text_embeddings)
    assert np.array_equal(reloaded.encode(images), image_embeddings)
    assert np.array_equal(SentenceTransformer(clip_dir, device="cpu").encode(texts), text_embeddings)


def test_clip_tokenizer_is_character_level_and_offline(clip_dir):
    model = SentenceTransformer(clip_dir, device="cpu")
    features = model.preprocess(["a bag", "A BAG"])
    ids = features["input_ids"]
    assert ids.shape == (2, 6)  # <start> a b a g <end>: one token per character, lower-cased
    assert ids[0].tolist() == ids[1].tolist()
    assert ids[0, 0].item() == 0 and ids[0, -1].item() == 1


@pytest.mark.skipif(not __import__("os").path.isdir(FASHION_MNIST_ROOT), reason="needs dataset-fashion-mnist")
def test_models_take_fashion_mnist_rows(vit_dir, clip_dir):
    from hf_divcl.data.images import fashion_mnist_image_text

    rows = fashion_mnist_image_text("test", limit=6)
    clip = SentenceTransformer(clip_dir, device="cpu")
    assert clip.encode(rows["image"]).shape == clip.encode(rows["text"]).shape == (6, 32)
    assert SentenceTransformer(vit_dir, device="cpu").encode(rows["image"]).shape == (6, 32)


def test_image_processor_of(vit_dir, clip_dir, tiny_model_dir):
    for path in (vit_dir, clip_dir):
        processor = image_processor_of(SentenceTransformer(path, device="cpu"))
        assert list(processor.image_mean) == [0.5] * 3 and processor.do_rescale
    with pytest.raises(ValueError, match=r"takes \['text'\], not images"):
        image_processor_of(SentenceTransformer(tiny_model_dir, device="cpu"))


def test_pil_modes_reach_the_model(vit_dir):
    model = SentenceTransformer(vit_dir, device="cpu")
    rgba = Image.new("RGBA", (20, 20), (10, 200, 30, 128))
    palette = Image.new("P", (28, 28))
    assert model.encode([rgba, palette]).shape == (2, 32)
