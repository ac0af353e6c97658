"""DivCLTrainer on images: SimCLR-style two views of Fashion-MNIST with a tiny ViT, CLIP-style image–text pairs,
and bad images named before training."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset, Features, Image
from PIL import Image as PILImage

from hf_divcl.data.images import class_descriptions, fashion_mnist, fashion_mnist_image_text
from hf_divcl.data.validation import DatasetError
from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.models.vision import build_tiny_clip_sentence_transformer, build_tiny_vit_sentence_transformer
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.trainer import DivCLTrainer


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), learning_rate=1e-3, batch_policy="auto", logging_steps=2,
                report_to=[], disable_tqdm=True, collapse_threshold=0, bank_cache_dir=str(tmp_path / "cache"),
                save_strategy="no")
    base.update(kw)
    return DivCLTrainingArguments(**base)


def test_simclr_two_views_of_fashion_mnist_train_a_tiny_vit(tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(build_tiny_vit_sentence_transformer(tmp_path / "vit"), device="cpu")
    data = fashion_mnist("train", limit=256)  # columns: image, label → one image column, two augmented views
    args = make_args(tmp_path, max_steps=12, per_device_train_batch_size=32,
                     loss_kwargs={"loss_type": "nt_xent"})
    trainer = DivCLTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert [r["step"] for r in log] == [2, 4, 6, 8, 10, 12]
    assert all(r["divcl/global_batch_size"] == 32 and r["divcl/band_inside_fraction"] == 1.0 for r in log)
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]  # NT-Xent of a random ViT falls fast on two views
    trainer.save_model(str(tmp_path / "final"))
    images = list(fashion_mnist("test", limit=4)["image"])
    model.eval()
    again = SentenceTransformer(str(tmp_path / "final"), device="cpu")
    assert torch.allclose(model.encode(images, convert_to_tensor=True), again.encode(images, convert_to_tensor=True),
                          atol=1e-6)


def zero_shot_loss(model, images, labels) -> float:
    """Cross-entropy of classifying images against the 10 class descriptions (τ = 0.05)."""
    model.eval()
    with torch.no_grad():
        img = F.normalize(model.encode(images, convert_to_tensor=True), dim=-1)
        txt = F.normalize(model.encode(class_descriptions(), convert_to_tensor=True), dim=-1)
    model.train()
    return F.cross_entropy(img @ txt.T / 0.05, torch.tensor(labels)).item()


def test_clip_style_image_text_pairs_train_both_towers(tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(build_tiny_clip_sentence_transformer(tmp_path / "clip"), device="cpu")
    data = fashion_mnist_image_text("train", limit=256)  # image, text (class description), label
    held = fashion_mnist("test", limit=200)
    before = zero_shot_loss(model, list(held["image"]), list(held["label"]))
    # 10 distinct descriptions: with dedupe on, a batch of ≤ 10 rows holds each class at most once (no false negatives)
    args = make_args(tmp_path, max_steps=16, per_device_train_batch_size=8,
                     loss_kwargs={"symmetric": True})
    trainer = DivCLTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    for batch in trainer.divcl_sampler.local_batches(0):
        labels = [data[i]["label"] for i in batch]
        assert len(labels) == len(set(labels))
    assert zero_shot_loss(model, list(held["image"]), list(held["label"])) < before
    assert read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")[-1]["step"] == 16


def _png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("L", size, 128).save(buf, format="PNG")
    return buf.getvalue()


def test_unreadable_and_huge_images_are_named_before_training(tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(build_tiny_vit_sentence_transformer(tmp_path / "vit"), device="cpu")
    cells = [{"bytes": _png(), "path": None} for _ in range(40)]
    cells[5] = {"bytes": b"definitely not an image", "path": None}
    ds = Dataset.from_dict({"image": cells}, features=Features({"image": Image()}))
    with pytest.raises(DatasetError, match=r"Row 5, column 'image': the image cannot be read"):
        DivCLTrainer(model=model, args=make_args(tmp_path, max_steps=1, per_device_train_batch_size=8),
                     train_dataset=ds)
    cells[5] = {"bytes": _png((5000, 4000)), "path": None}
    ds = Dataset.from_dict({"image": cells}, features=Features({"image": Image()}))
    with pytest.raises(DatasetError, match=r"Row 5, column 'image': image of 5000×4000 pixels exceeds"):
        DivCLTrainer(model=model, args=make_args(tmp_path, max_steps=1, per_device_train_batch_size=8),
                     train_dataset=ds)


def test_views_are_made_at_the_processor_image_size(tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(build_tiny_vit_sentence_transformer(tmp_path / "vit"), device="cpu")
    trainer = DivCLTrainer(model=model, args=make_args(tmp_path, max_steps=1, per_device_train_batch_size=8),
                           train_dataset=fashion_mnist("train", limit=32))
    assert trainer.data_collator.augment.image_size == 28
