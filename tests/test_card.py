"""Model cards: plots from the diversity log, sentence-transformers metadata kept, hostile text escaped."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from hf_divcl.publish.card import md_escape, write_model_card


def fake_run(out, steps=(5, 10, 15)):
    """A diversity log and window files as a DivCLTrainer run writes them (values from a real tiny run)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "diversity_log.jsonl").open("w") as fh:
        for i, s in enumerate(steps):
            fh.write(json.dumps({"step": s, "epoch": s / 20, "loss": 2.9 - 0.1 * i,
                                 "divcl/effective_rank": 12.0 + i, "divcl/window_low": 11.0, "divcl/window_high": 14.0,
                                 "divcl/in_window_fraction": 0.8, "divcl/grad_norm_p10": 2.0,
                                 "divcl/grad_norm_p50": 3.0 - 0.1 * i, "divcl/grad_norm_p90": 4.0,
                                 "divcl/band_lower_mean": 0.3, "divcl/band_upper_mean": 37.0,
                                 "divcl/spectral_upper_mean": 37.5, "divcl/band_inside_fraction": 1.0}) + "\n")
    (out / "divcl_window.json").write_text(json.dumps({
        "window": {"low": 11.0, "high": 14.0, "metric": "effective_rank"}, "builder": "greedy",
        "temperature": 0.05, "global_batch_size": 32}))
    (out / "divcl_calibration.json").write_text(json.dumps({"keep_fraction": 0.9, "curve": [
        {"level": "local:8", "metric": 6.1, "grad_norm": 7.2}, {"level": "random", "metric": 12.5, "grad_norm": 9.9}]}))


def test_card_has_both_plots_the_window_and_sentence_transformers_metadata(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "run"
    fake_run(out)
    model = SentenceTransformer(tiny_model_dir, device="cpu")
    readme = write_model_card(out, model=model, base_model="sentence-transformers/all-MiniLM-L6-v2",
                              dataset="WordNet pairs", train_rows=2000, repo_id="me/my-model",
                              evaluation={"ndcg@10": (0.41, 0.52)})
    text = readme.read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["library_name"] == "sentence-transformers"
    assert {"hf_divcl", "diversity-window"} <= set(header["tags"])
    for png in ("diversity_trajectory.png", "gradient_bands.png"):
        assert f"]({png})" in text
        with Image.open(out / png) as img:
            assert img.size[0] > 400 and img.size[1] > 200
    assert "effective\\_rank ∈ [11, 14]" in text and "| random | 12.5 | 9.9 |" in text
    assert "| ndcg@10 | 0.41 | 0.52 |" in text and "SentenceTransformer('me/my-model')" in text
    assert "80%" in text and "2510.05767" in text


HOSTILE = '{{ 7*7 }} {% for x in range(3) %}X{% endfor %} <script>alert(1)</script> [click](http://evil) | ``` `'


def test_hostile_text_is_escaped_and_never_executed(tmp_path):
    out = tmp_path / "run"
    fake_run(out)
    readme = write_model_card(out, base_model=HOSTILE, dataset=HOSTILE, train_rows=3, repo_id=None,
                              evaluation={HOSTILE: (1.0, 2.0)}, usage_inputs=[HOSTILE])
    text = readme.read_text().replace(str(out), "<output_dir>")  # the folder's name may hold any digits
    assert "49" not in text and "XXX" not in text  # template syntax in data is inert
    before, code = text.split("```python")
    code, after = code.split("```", 1)  # the usage code block still closes where it should
    assert "\\x60" in code and "\\x3cscript\\x3e" in code and "<" not in code.split("model.encode")[1]
    prose = before + after
    assert "<script>" not in prose and "&lt;script&gt;" in prose
    assert "[click](http://evil)" not in prose and "\\[click\\]\\(http://evil\\)" in prose


def test_markdown_escape_keeps_table_rows_on_one_line():
    assert md_escape("a|b\nc") == "a\\|b c"
    assert md_escape("*x* _y_ #z") == "\\*x\\* \\_y\\_ \\#z"


def test_card_needs_a_diversity_log(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"diversity_log\.jsonl"):
        write_model_card(tmp_path, base_model="m", dataset="d", train_rows=1)


def test_progress_card_shows_each_calibration_its_decision_and_evidence(tmp_path):
    out = tmp_path / "run"
    fake_run(out)
    (out / "divcl_calibration.json").unlink()
    (out / "divcl_window.json").write_text(json.dumps({
        "policy": "progress", "window": None, "builder": "random", "temperature": 0.05, "global_batch_size": 32,
        "decision": "random", "reason": "no level beat random batches with 90% confidence (3 pairs per level)"}))
    levels = [{"level": "local:32", "metric": 23.9, "gain_vs_random": 0.0034, "ci_low": -0.024, "ci_high": 0.031},
              {"level": "spread:4", "metric": 29.8, "gain_vs_random": -0.0216, "ci_low": -0.040, "ci_high": -0.003}]
    with (out / "divcl_calibrations.jsonl").open("w") as fh:
        fh.write(json.dumps({"step": 0, "decision": "window", "window": {"low": 22.0, "high": 25.0,
                                                                        "metric": "effective_rank"},
                             "levels": levels, "reason": "local:32 beat random", "wall_seconds": 9.4}) + "\n")
        fh.write(json.dumps({"step": 10, "decision": "random", "window": None, "levels": levels,
                             "reason": "no level beat random", "wall_seconds": 8.1}) + "\n")
    text = write_model_card(out, base_model="tiny", dataset="pairs", train_rows=100).read_text()
    assert "Batch policy: measured, not assumed" in text and "no level beat random batches with 90" in text
    assert "| 0 | window | [22, 25] | local:32 | 0.0034 | [-0.024, 0.031] | 9.4 |" in text
    assert "| 10 | random | random batches | local:32 |" in text
    assert "none in force at the end: random batches" in text
    assert "every\ntraining batch was built" not in text  # no claim that batches sat in a window


POLICIES = {
    "random batches (the default)": {},
    "progress": {"batch_policy": "progress"},
    "progress with a forced calibration": {"batch_policy": "progress",
                                           "batch_policy_kwargs": {"pairs": 3, "levels": "local:16,random"}},
    "batch_policy=auto": {"batch_policy": "auto"},
    "fixed window": {"batch_policy": "window", "batch_policy_kwargs": {"window": "effective_rank:2:6"}},
    "learnability": {"batch_policy": "learnability",
                     "batch_policy_kwargs": {"reference_rows": 32, "reference_steps": 2}},
    "hard": {"batch_policy": "hard"},
    "MNRL with hardness_mode": {"batch_policy": "random"},
    "DiversityCallback on an unchanged trainer": None,
}


@pytest.mark.slow
@pytest.mark.parametrize("policy", list(POLICIES))
def test_the_card_of_every_policy_states_the_loss_and_has_no_placeholder(policy, tiny_model_dir, tmp_path):
    """A 6-step run of each batch policy (a sentence-transformers loss with hardness weighting, and DiversityCallback on
    an unchanged trainer too): its card names
    the loss with its settings and τ, and no cell or sentence of it is `nan`, `None` or empty."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer

    if POLICIES[policy] is None:
        from test_callbacks import plain_trainer

        from hf_divcl.training.callbacks import DiversityCallback

        trainer = plain_trainer(tiny_model_dir, tmp_path, DiversityCallback(plots=False, collapse_threshold=0))
        trainer.train()
        model = trainer.model
    else:
        model = SentenceTransformer(tiny_model_dir, device="cpu")
        pairs = Dataset.from_dict({"anchor": [f"word {i} of kind {i % 7}" for i in range(160)],
                                   "positive": [f"meaning {i * 5 % 11} of item {i}" for i in range(160)]})
        train_policy(model, pairs, tmp_path, policy)
    text = write_model_card(tmp_path / "out", model=model, base_model="tiny", dataset="pairs", train_rows=160)\
        .read_text()
    body = text.split("---", 2)[2]
    for bad in ("nan", "None", "| |", "|  |", "n/a"):
        assert bad not in body, (bad, body)
    loss_row = next(line for line in body.splitlines() if line.startswith("| loss |"))
    if "MNRL" in policy:
        assert "MultipleNegativesRankingLoss" in loss_row and "hardness\\_mode=in\\_batch\\_negatives" in loss_row
        assert "hardness\\_strength=9" in loss_row and "τ = 0.1" in loss_row
    elif POLICIES[policy] is None:
        assert "MultipleNegativesRankingLoss" in loss_row and "τ = 0.05" in loss_row
        assert "| batch builder | the Trainer's own sampler" in body
    else:
        assert "InfoNCELoss \\(loss\\_type=infonce, symmetric=False" in loss_row and "τ = 0.05" in loss_row


def train_policy(model, pairs, tmp_path, policy: str) -> None:
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from hf_divcl.training.arguments import DivCLTrainingArguments
    from hf_divcl.training.trainer import DivCLTrainer

    args = DivCLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=6,
                                  logging_steps=2, learning_rate=1e-3, report_to=[], disable_tqdm=True,
                                  save_strategy="no", collapse_threshold=0, bank_cache_dir=str(tmp_path / "cache"),
                                  **POLICIES[policy])
    loss = MultipleNegativesRankingLoss(model, scale=10.0, hardness_mode="in_batch_negatives",
                                        hardness_strength=9.0) if "MNRL" in policy else None
    DivCLTrainer(model=model, args=args, train_dataset=pairs, loss=loss).train()


def test_the_card_shows_the_pre_flight_report_when_the_run_made_one(tmp_path):
    from hf_divcl.policies.preflight import PREFLIGHT_FILE, PreflightReport

    out = tmp_path / "run"
    fake_run(out)
    report = PreflightReport(
        data="pairs", rows=5000, sampled_rows=2048, batches=64, batch_size=32, temperature=0.05, dimension=384,
        effective_rank=26.9, effective_rank_std=0.6, reachable_rank=32, reference_effective_rank=27.0,
        duplicate_rows=0.0, near_duplicate_rows=0.0, near_threshold=0.95, false_negatives=2.53, p_pos=0.44,
        grad_norm=11.3, bands_hold=1.0, regime="healthy", recommendation="random batches are fine here",
        reason="random batches are already diverse", seconds=12.0)
    (out / PREFLIGHT_FILE).write_text(json.dumps(report.to_dict()))
    text = write_model_card(out, base_model="x/y", dataset="pairs", train_rows=5000).read_text()
    section = text[text.index("### Pre-flight"):text.index("### How the batch geometry")]
    assert "2048 of 5000 rows encoded, 64 batches" in section and "| random batches of 32 | value |" in section
    assert "26.9 ± 0.6 of 32 (general-domain reference: 27)" in section
    assert "Recommendation: **random batches are fine here** — random batches are already diverse." in section
    for bad in ("nan", "None", "| |"):
        assert bad not in section
    (out / PREFLIGHT_FILE).unlink()
    assert "### Pre-flight" not in write_model_card(out, base_model="x/y", dataset="pairs", train_rows=5).read_text()
