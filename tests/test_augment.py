"""Two-view kornia augmentation, image → tensor conversion, and views → model inputs."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer

from hf_divcl.data.images import FASHION_MNIST_ROOT, digits, fashion_mnist
from hf_divcl.models.augment import TwoViewAugment, images_to_tensor, to_model_inputs
from hf_divcl.models.vision import build_tiny_clip_sentence_transformer, build_tiny_vit_sentence_transformer


@pytest.fixture(scope="module")
def images() -> list:
    """32 real 28×28 grey images: Fashion-MNIST test rows, or upscaled digits without the Debian package."""
    try:
        return list(fashion_mnist("test", limit=32)["image"])
    except FileNotFoundError:
        assert not __import__("os").path.isdir(FASHION_MNIST_ROOT)
        return [im.resize((28, 28)) for im in digits("test", limit=32)["image"]]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    return {
        "vit": SentenceTransformer(build_tiny_vit_sentence_transformer(tmp_path_factory.mktemp("vit")), device="cpu"),
        "clip": SentenceTransformer(build_tiny_clip_sentence_transformer(tmp_path_factory.mktemp("clip")),
                                    device="cpu"),
    }


def test_images_to_tensor_converts_modes_and_sizes(images):
    x = images_to_tensor(images, 28)
    assert x.shape == (32, 3, 28, 28) and x.dtype == torch.float32
    expected = torch.from_numpy(np.array(images[0])).float() / 255
    for c in range(3):  # grey → the channel repeated
        assert torch.equal(x[0, c], expected)

    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 10))
    mixed = images_to_tensor([digits("test", limit=1)["image"][0], rgba, images[0].convert("RGB")], 28)
    assert mixed.shape == (3, 3, 28, 28) and 0 <= mixed.min() and mixed.max() <= 1
    assert torch.allclose(mixed[1, 0], torch.ones(28, 28)) and mixed[1, 1:].abs().max() == 0  # alpha dropped
    assert torch.equal(mixed[2], x[0])

    batch = torch.from_numpy(np.stack([np.asarray(im) for im in images]))[:, None]  # (n, 1, 28, 28) uint8
    assert torch.equal(images_to_tensor(batch, 28), x)
    assert torch.equal(images_to_tensor(batch.float() / 255, 28), x)
    buf = io.BytesIO()
    images[0].save(buf, format="PNG")
    assert torch.equal(images_to_tensor([buf.getvalue(), {"bytes": buf.getvalue(), "path": None}], 28), x[[0, 0]])


def test_views_have_the_right_shape_range_and_differ(images):
    view1, view2 = TwoViewAugment(32, seed=0)(images)
    for view in (view1, view2):
        assert view.shape == (32, 3, 32, 32) and view.dtype == torch.float32
        assert view.min() >= 0 and view.max() <= 1
        assert torch.allclose(view[:, 0], view[:, 1], atol=1e-5) and torch.allclose(view[:, 0], view[:, 2], atol=1e-5)
    assert not torch.allclose(view1, view2)


def test_same_seed_same_views_other_seed_other_views(images):
    state = torch.get_rng_state()
    a1, a2 = TwoViewAugment(28, seed=7)(images)
    b1, b2 = TwoViewAugment(28, seed=7)(images)
    c1, _ = TwoViewAugment(28, seed=8)(images)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, c1)
    assert torch.equal(torch.get_rng_state(), state)  # seeded calls leave the global RNG alone

    augment = TwoViewAugment(28, seed=7)
    first, second = augment(images)[0], augment(images)[0]
    assert torch.equal(first, a1) and not torch.allclose(first, second)  # a seeded sequence, not a fixed view

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    from_generator = TwoViewAugment(28)(images, generator=g1)[1]
    assert torch.equal(from_generator, TwoViewAugment(28, seed=99)(images, generator=g2)[1])  # generator wins


def _first_views(images, epochs: int) -> list[torch.Tensor]:
    augment = TwoViewAugment(28, seed=0)
    same = [images[0]] * 4  # one image everywhere: any difference comes from the augmentation
    loader = torch.utils.data.DataLoader(same, batch_size=2, num_workers=2, collate_fn=lambda b: augment(b)[0])
    return [batch for _ in range(epochs) for batch in loader]


def test_dataloader_workers_and_epochs_get_different_views(images):
    torch.manual_seed(0)
    run = _first_views(images, epochs=2)  # epoch 1: worker 0, worker 1; epoch 2: worker 0, worker 1
    assert not torch.allclose(run[0], run[1])  # the two workers do not repeat each other
    assert not torch.allclose(run[0], run[2])  # a new epoch does not repeat the last one
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(run, _first_views(images, epochs=2), strict=True))


def test_grayscale_p_and_colour_jitter_on_rgb():
    rgb = torch.rand(16, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    grey1, _ = TwoViewAugment(28, grayscale_p=1.0, seed=0)(rgb)
    assert torch.allclose(grey1[:, 0], grey1[:, 1], atol=1e-6)
    plain, _ = TwoViewAugment(28, scale=(1.0, 1.0), flip=False, p_jitter=0.0, seed=0)(rgb)
    jittered, _ = TwoViewAugment(28, scale=(1.0, 1.0), flip=False, p_jitter=1.0, seed=0)(rgb)
    assert torch.allclose(plain, rgb, atol=1e-5)  # full-area crop at the same size, no flip, no jitter: identity
    assert not torch.allclose(jittered, rgb, atol=1e-2)


def test_bad_images_are_named_by_index(images, tmp_path):
    with pytest.raises(ValueError, match="Image 1 is None"):
        TwoViewAugment(28, seed=0)([images[0], None, images[1]])
    with pytest.raises(ValueError, match=r"Image 2 \(5 bytes\) cannot be read by PIL"):
        images_to_tensor([images[0], images[1], b"\x89PNGx"], 28)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"Image 0 \(file .*broken\.png'\) cannot be read"):
        images_to_tensor([str(broken)], 28)
    with pytest.raises(ValueError, match=r"Image 1 has shape \(1, 1, 28, 28\)"):
        images_to_tensor([torch.zeros(3, 28, 28), torch.zeros(1, 1, 28, 28)], 28)
    with pytest.raises(ValueError, match=r"Image 3 holds float values in \[0, 255\]"):
        batch = torch.zeros(4, 3, 28, 28)
        batch[3, 0, 0, 0] = 255.0
        images_to_tensor(batch, 28)
    with pytest.raises(ValueError, match=r"must be \(n, C, H, W\).*got shape \(3, 28, 28\)"):
        images_to_tensor(torch.zeros(3, 28, 28), 28)
    with pytest.raises(ValueError, match="Empty batch"):
        images_to_tensor([], 28)


@pytest.mark.parametrize("name", ["vit", "clip"])
def test_to_model_inputs_equals_the_processor_without_augmentation(models, images, name):
    model = models[name]
    expected = model.preprocess(images)["pixel_values"]
    views = images_to_tensor(images, 28)
    features = to_model_inputs(model, views)
    assert features["modality"] == "image"
    assert features["pixel_values"].shape == expected.shape
    assert torch.allclose(features["pixel_values"], expected, atol=1e-6)
    with torch.no_grad():
        embeddings = model(features)["sentence_embedding"]
    assert np.allclose(embeddings.numpy(), model.encode(images), atol=1e-5)
    uint8 = (views * 255).round().to(torch.uint8)
    assert torch.allclose(to_model_inputs(model, uint8)["pixel_values"], expected, atol=1e-6)


def test_processor_rescales_float_views_again(models, images):
    """Why to_model_inputs exists: the processor multiplies float [0, 1] input by 1/255 as well."""
    model = models["vit"]
    views = images_to_tensor(images[:4], 28)
    via_processor = model.preprocess(list(views))["pixel_values"]
    assert via_processor.max() < -0.99  # (x / 255 - 0.5) / 0.5 ≈ -1 everywhere
    assert to_model_inputs(model, views)["pixel_values"].max() > 0


def test_to_model_inputs_resizes_other_sizes(models, images):
    model = models["vit"]
    big = [im.resize((56, 56), Image.BILINEAR) for im in images[:8]]
    expected = model.preprocess(big)["pixel_values"]
    got = to_model_inputs(model, images_to_tensor(big, 56))["pixel_values"]
    assert got.shape == (8, 3, 28, 28)
    assert (got - expected).abs().max() < 0.03  # torch vs PIL resampling filters; 0.03 ≈ 4/255 before normalising
    with pytest.raises(ValueError, match=r"views must be a \(n, 3, H, W\) tensor"):
        to_model_inputs(model, torch.zeros(2, 1, 28, 28))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_match_cpu_views(images, models):
    cpu1, cpu2 = TwoViewAugment(28, seed=0)(images)
    batch = images_to_tensor(images, 28, device="cuda")
    gpu1, gpu2 = TwoViewAugment(28, seed=0)(batch)
    assert gpu1.device.type == "cuda"
    assert torch.allclose(gpu1.cpu(), cpu1, atol=1e-4) and torch.allclose(gpu2.cpu(), cpu2, atol=1e-4)
    features = to_model_inputs(models["vit"], gpu1)
    assert features["pixel_values"].device.type == "cuda"
