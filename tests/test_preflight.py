"""Pre-flight: the numbers are what they say (checked against plain loops in float64), the rules recommend what the
evidence supports, and the report runs on text pairs, images and from the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset

from hf_divcl.policies.preflight import (
    DUPLICATE_ROWS,
    duplicate_rows_per_batch,
    preflight,
    random_batch_stats,
    recommend,
)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed),
                                                     dtype=torch.float64), dim=-1)


def test_batch_statistics_equal_plain_loops_in_float64():
    anchors = _unit(40, 6, 0)
    anchors[1] = anchors[0]  # a near-duplicate pair
    positives = torch.nn.functional.normalize(anchors + 0.8 * _unit(40, 6, 1), dim=-1)
    batch, tau, r = 8, 0.2, 5
    stats = random_batch_stats(anchors, positives, batch, tau, r, torch.Generator().manual_seed(3), near_threshold=0.9)
    gen = torch.Generator().manual_seed(3)
    idx = [torch.randperm(40, generator=gen)[:batch].tolist() for _ in range(r)]  # the same draws
    false_neg, near, p_pos = [], [], []
    for rows in idx:
        near.append(sum(any(float(anchors[i] @ anchors[j]) >= 0.9 for j in rows if j != i) for i in rows))
        for i in rows:
            own = float(anchors[i] @ positives[i])
            false_neg.append(sum(float(anchors[i] @ positives[j]) >= own for j in rows if j != i))
            logits = torch.tensor([float(anchors[i] @ positives[j]) / tau for j in rows], dtype=torch.float64)
            p_pos.append(float(torch.softmax(logits, 0)[rows.index(i)]))
    assert stats["false_negatives"] == pytest.approx(sum(false_neg) / len(false_neg), abs=1e-12)
    assert stats["near_duplicate_rows"] == pytest.approx(sum(near) / r, abs=1e-12)
    assert stats["p_pos"] == pytest.approx(sum(p_pos) / len(p_pos), rel=1e-9)
    assert 1 <= stats["effective_rank"] <= 6 and stats["bands_hold"] == 1.0


def test_duplicate_rows_are_counted_per_batch():
    assert duplicate_rows_per_batch(torch.arange(100), 10) == 0.0
    pairs = torch.arange(100) // 2  # every row has exactly one duplicate
    assert duplicate_rows_per_batch(pairs, 100) == 100.0  # the whole set in one batch: every row
    some = duplicate_rows_per_batch(pairs, 10)
    assert some == pytest.approx(10 * 9 / 99, rel=0.15)  # each row's partner is in its batch with p = 9/99


@pytest.mark.parametrize("stats,expected", [
    ({"effective_rank": 27.0, "p_pos": 0.4, "duplicate_rows": 0.0, "near_duplicate_rows": 0.0},
     "random batches are fine here"),
    ({"effective_rank": 27.0, "p_pos": 0.4, "duplicate_rows": 2 * DUPLICATE_ROWS, "near_duplicate_rows": 0.0},
     "use NO_DUPLICATES"),
    ({"effective_rank": 4.0, "p_pos": 0.4, "duplicate_rows": 0.0, "near_duplicate_rows": 0.0},
     "batches are crowded: try a spread window (batch_policy=\"window\""),
    ({"effective_rank": 27.0, "p_pos": 0.4, "duplicate_rows": 0.0, "near_duplicate_rows": 3.0},
     "deduplicate near-identical rows"),
])
def test_the_recommendation_follows_the_measurements(stats, expected):
    regime, recommendation, reason = recommend({"false_negatives": 0.0, **stats}, reachable_rank=32)
    assert recommendation.startswith(expected) and reason
    assert regime.startswith("crowded") == (stats["effective_rank"] < 8)
    assert recommend({**stats, "false_negatives": 0.0, "p_pos": 0.95}, 32)[0].startswith("saturated")


def test_data_less_diverse_than_the_reference_is_said_to_be_outside_the_evidence():
    stats = {"effective_rank": 20.0, "p_pos": 0.4, "duplicate_rows": 0.0, "near_duplicate_rows": 0.0,
             "false_negatives": 0.0}
    assert recommend(stats, 32, reference_rank=21.0)[1] == "random batches are fine here"
    _, recommendation, reason = recommend(stats, 32, reference_rank=27.0)
    assert recommendation.startswith("random batches (the default); the experimental batch_policy=\"explore\" can "
                                     "measure") and "no paired" in reason


def test_text_pairs_with_repeated_texts_are_told_to_use_no_duplicates(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    anchors = [f"query {i % 30}" for i in range(120)]  # every anchor text 4 times
    pairs = Dataset.from_dict({"anchor": anchors, "positive": [f"answer {i}" for i in range(120)],
                               "label": [0] * 120})
    report = preflight(model, pairs, batch_size=16, temperature=0.05, max_rows=64, n_batches=8, data="toy")
    assert report.rows == 120 and report.sampled_rows == 64 and report.dimension == 32
    assert report.duplicate_rows > DUPLICATE_ROWS and report.recommendation.startswith("use NO_DUPLICATES")
    assert report.reference_effective_rank is not None and 1 <= report.effective_rank <= 16
    text = report.format()
    assert "Pre-flight: toy: 120 rows (64 encoded), B = 16" in text and "recommendation: use NO_DUPLICATES" in text
    assert all(math.isfinite(v) for v in report.to_dict().values() if isinstance(v, float))


@pytest.mark.slow
def test_images_are_measured_on_two_augmented_views(tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.images import digits
    from hf_divcl.models.vision import build_tiny_vit_sentence_transformer

    model = SentenceTransformer(build_tiny_vit_sentence_transformer(tmp_path, image_size=28, layers=1), device="cpu")
    images = digits("train").select(range(96)).select_columns(["image", "label"])
    report = preflight(model, images, batch_size=16, temperature=0.1, max_rows=48, n_batches=4, data="digits")
    assert report.reference_effective_rank is None and report.sampled_rows == 48
    assert 1 <= report.effective_rank <= 16 and report.bands_hold == 1.0 and report.recommendation


@pytest.mark.slow
def test_the_command_line_loads_the_data_like_train_and_writes_the_report(tiny_model_dir, tmp_path, capsys):
    from hf_divcl.cli.main import main

    out = tmp_path / "report.json"
    code = main(["preflight", "--config", "text_wordnet", "--model", tiny_model_dir, "--max_rows", "64",
                 "--n_batches", "4", "--output_json", str(out), "--output_dir", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["batch_size"] == 32 and report["temperature"] == 0.05 and report["sampled_rows"] == 64
    assert "recommendation:" in capsys.readouterr().out
    assert main(["preflight", "--config", "text_wordnet", "--max_rowz", "3"]) == 2
    assert "unknown key 'max_rowz'. Did you mean 'max_rows'" in capsys.readouterr().err
