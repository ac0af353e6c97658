"""DivCLDataCollator (row ids, two views of one image) and mega-batch selection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_divcl._common import ROW_ID_COLUMN
from hf_divcl.collator import DivCLDataCollator
from hf_divcl.diversity.window import DiversityWindow, measure_diversity
from hf_divcl.experimental.selectors import MegaBatchSelector


def test_row_ids_travel_next_to_the_model_inputs(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    collator = DivCLDataCollator(preprocess_fn=model.preprocess)
    rows = [{"anchor": f"a {i}", "positive": f"p {i}", ROW_ID_COLUMN: 10 + i} for i in range(3)]
    batch = collator(rows)
    assert batch["row_ids"].tolist() == [10, 11, 12]
    assert "anchor_input_ids" in batch and "positive_input_ids" in batch
    assert not any(k.startswith(ROW_ID_COLUMN) for k in batch)


def test_a_single_image_column_becomes_two_augmented_views(tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.images import fashion_mnist
    from hf_divcl.models.augment import TwoViewAugment, to_model_inputs
    from hf_divcl.models.vision import build_tiny_vit_sentence_transformer

    model = SentenceTransformer(build_tiny_vit_sentence_transformer(tmp_path), device="cpu")
    data = fashion_mnist("test", limit=4)
    collator = DivCLDataCollator(preprocess_fn=model.preprocess, augment=TwoViewAugment(28, seed=0),
                                 to_inputs=lambda v: to_model_inputs(model, v))
    batch = collator([{**data[i], ROW_ID_COLUMN: i} for i in range(4)])
    assert batch["view_1_pixel_values"].shape == batch["view_2_pixel_values"].shape == (4, 3, 28, 28)
    assert not torch.equal(batch["view_1_pixel_values"], batch["view_2_pixel_values"])
    assert batch["label"].tolist() == list(data["label"]) and batch["row_ids"].tolist() == [0, 1, 2, 3]


def clustered(n=960, d=32, k=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 1.5
    return F.normalize(centres[torch.arange(n) % k] + torch.randn(n, d, generator=g), dim=-1)


def test_mega_batch_selection_lands_in_the_window_far_more_often_than_random():
    bank = clustered()
    rand = measure_diversity(bank[torch.randperm(960, generator=torch.Generator().manual_seed(1))].view(-1, 16, 32))
    mu, sd = rand.mean().item(), rand.std().item()
    window = DiversityWindow(mu - 2.5 * sd, mu - 1.0 * sd)  # random 16-row batches rarely fall here
    select = MegaBatchSelector(bank, window, batch_size=16, seed=0)
    hits = []
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        rows = torch.randperm(960, generator=g)[:64]  # a 4 × 16 mega-batch
        keep = select(rows)
        assert keep.shape == (16,) and len(set(keep.tolist())) == 16 and int(keep.max()) < 64
        hits.append(bool(window.contains(measure_diversity(bank[rows[keep]][None]))[0]))
    random_rate = window.contains(rand).float().mean().item()
    assert sum(hits) / 20 >= 0.8 > random_rate + 0.5


def test_mega_batch_training_keeps_b_rows_per_step(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.diversity.log import read_diversity_log
    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    data = wordnet_pairs(kind="example", source="embedded").select(range(192)).select_columns(["anchor", "positive"])
    args = DivCLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_train_epochs=1,
                                  batch_policy="mega_batch", batch_policy_kwargs={"factor": 3, "window": "auto"},
                                  logging_steps=2, report_to=[], disable_tqdm=True,
                                  collapse_threshold=0, bank_cache_dir=str(tmp_path / "cache"), save_strategy="no")
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 192 // 24
    assert trainer.data_collator.select.calls == 8
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert all(r["divcl/global_batch_size"] == 8 for r in log)
