"""The small ResNet image encoder: builds fast, encodes images, saves/reloads to identical embeddings, and trains
through DivCLTrainer's two-view image path."""

from __future__ import annotations

import json
import time

import pytest
import torch

from hf_divcl.data.images import fashion_mnist
from hf_divcl.models.convnet import (
    SmallResNet,
    backbone_embeddings,
    build_small_resnet_sentence_transformer,
    pixel_values,
)
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.trainer import DivCLTrainer

SMALL = {"widths": (8, 16), "blocks": 1}


def load(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", trust_remote_code=True)


@pytest.fixture(scope="module")
def images():
    return list(fashion_mnist("test", limit=6)["image"])


def test_builds_fast_and_encodes_images_with_and_without_head(tmp_path, images):
    t0 = time.perf_counter()
    headed = load(build_small_resnet_sentence_transformer(tmp_path / "a", projection_dim=12, **SMALL))
    assert time.perf_counter() - t0 < 2.0
    assert headed.modalities == ["image"]
    assert headed.encode(images, convert_to_tensor=True).shape == (6, 12)
    pixels = pixel_values(headed, images)
    assert pixels.shape == (6, 3, 28, 28)
    assert torch.allclose(pixels, headed[0].preprocess(images)["pixel_values"], atol=1e-6)  # torch path = processor
    assert backbone_embeddings(headed, pixels).shape == (6, 16)  # pre-head features
    assert torch.allclose(backbone_embeddings(headed, pixels, head=True), headed.encode(images, convert_to_tensor=True),
                          atol=1e-5)
    plain = load(build_small_resnet_sentence_transformer(tmp_path / "b", **SMALL))
    assert len(plain) == 1 and plain.encode(images, convert_to_tensor=True).shape == (6, 16)


def test_same_seed_same_weights_and_global_rng_untouched(tmp_path, images):
    state = torch.random.get_rng_state()
    paths = [build_small_resnet_sentence_transformer(tmp_path / name, seed=seed, **SMALL)
             for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    assert torch.equal(torch.random.get_rng_state(), state)  # building does not draw from the global RNG
    a, b, c = (load(path) for path in paths)
    ea, eb, ec = (m.encode(images, convert_to_tensor=True) for m in (a, b, c))
    assert torch.equal(ea, eb) and not torch.allclose(ea, ec)


@pytest.mark.parametrize("output_norm", ["none", "batchnorm"])
def test_save_and_reload_give_identical_embeddings(tmp_path, images, output_norm):
    model = load(build_small_resnet_sentence_transformer(tmp_path / "m", projection_dim=8, output_norm=output_norm,
                                                         **SMALL))
    with torch.no_grad():  # move the BatchNorm running statistics away from their initial values
        model.train()
        model(model.preprocess(images))
    model.save(str(tmp_path / "saved"), create_model_card=False)
    modules = json.loads((tmp_path / "saved" / "modules.json").read_text())
    assert modules[0]["type"] == "hf_divcl.models.convnet.SmallResNet"
    again = load(str(tmp_path / "saved"))
    model.eval()
    assert torch.equal(model.encode(images, convert_to_tensor=True), again.encode(images, convert_to_tensor=True))


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="blocks"):
        SmallResNet(widths=(8, 16), blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="widths"):
        SmallResNet(widths=())
    with pytest.raises(ValueError, match="output_norm"):
        SmallResNet(output_norm="layer")


def test_two_steps_of_divcl_trainer_on_fashion_mnist(tmp_path):
    model = load(build_small_resnet_sentence_transformer(tmp_path / "m", projection_dim=8, **SMALL))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = fashion_mnist("train", limit=64).select_columns(["image"])
    args = DivCLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, max_steps=2,
                                  learning_rate=1e-3, logging_steps=1, report_to=[], disable_tqdm=True,
                                  save_strategy="no", collapse_threshold=0, bank_cache_dir=str(tmp_path / "cache"),
                                  augment_scale_min=0.3, loss_kwargs={"temperature": 0.2, "loss_type": "nt_xent"})
    trainer = DivCLTrainer(model=model, args=args, train_dataset=data)
    collator = trainer.data_collator
    assert collator.augment is not None and collator.to_inputs is not None  # the two-view image path
    trainer.train()
    assert trainer.state.global_step == 2
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    after = model.state_dict()
    assert not torch.equal(before["0.stem.0.weight"], after["0.stem.0.weight"])
