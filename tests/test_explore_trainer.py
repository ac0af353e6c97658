"""batch_policy="explore": the first training steps are the experiment — arms in blocks, steps scored from their own
gradients, a decision recorded with its evidence, exact resume mid-exploration, and faults that keep random."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from datasets import Value

from hf_divcl.data.wordnet import wordnet_pairs
from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.experimental.cost import SCORE_COST
from hf_divcl.experimental.explore_plan import EXPLORE_FILE, RECHECK_BLOCKS, explore_min_steps, plan_exploration
from hf_divcl.publish.card import write_model_card
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.trainer import DivCLTrainer


def pairs(n=400):
    return wordnet_pairs(kind="example", source="embedded").select(range(n)).select_columns(["anchor", "positive"])


def run(tiny_model_dir, out, resume=None, n=400, policy=None, **kw):
    """A batch_policy="explore" run; ``policy``: batch_policy_kwargs on top of budget 1, min_blocks 2,
    max_fraction 0.9."""
    from sentence_transformers import SentenceTransformer

    base = dict(output_dir=str(out), per_device_train_batch_size=16, learning_rate=1e-3, logging_steps=1,
                report_to=[], disable_tqdm=True, collapse_threshold=0, bank_cache_dir=str(out / "cache"),
                save_strategy="no", seed=3, batch_policy="explore",
                batch_policy_kwargs={"budget": 1.0, "min_blocks": 2, "max_fraction": 0.9, **(policy or {})},
                max_steps=60)
    base.update(kw)
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"),
                           args=DivCLTrainingArguments(**base), train_dataset=pairs(n))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_the_plan_sizes_exploration_to_the_run_and_says_when_it_is_too_short():
    plan = plan_exploration(total_steps=3000, batch_size=32, train_rows=10_000, probe_rows=256)
    refresh = 256 / 96 + 8
    assert plan.levels == ["local:32", "spread:4"] and plan.cost_per_refresh == pytest.approx(refresh)
    # 5 % of 3000 batches = 150 batch equivalents. First what the test needs to see: 80 blocks (looks at 10, 20, 40
    # and 80 with min_blocks = 10) of 3 scored steps, the probe refreshed every 10 blocks (8 refreshes), and
    # one re-check of a chosen window (8 + 2 · 40 · SCORE_COST); then as many blocks as the rest holds, still
    # refreshed every 10 (91: 27.3 + 10 refreshes = 134.0 of 134); then more re-checks (none left)
    recheck = 8 + 2 * RECHECK_BLOCKS * SCORE_COST
    explore = DivCLTrainingArguments(output_dir="x", batch_policy="explore").policy
    assert RECHECK_BLOCKS == 40 and explore.recheck_blocks == RECHECK_BLOCKS
    assert 80 * 3 * SCORE_COST + 8 * refresh + recheck <= 150
    assert plan.max_blocks == 91 and plan.refresh_blocks == 10
    assert plan.max_rechecks == 1 and plan.recheck_cost == pytest.approx(recheck)
    assert plan.planned_cost == pytest.approx(91 * 3 * SCORE_COST + 10 * refresh + recheck)
    assert plan.planned_cost <= 150
    assert 92 * 3 * SCORE_COST + 10 * refresh + recheck > 150  # a 92nd block no longer fits
    # 2,000 steps: 100 batch equivalents do not hold the 80 blocks and their 8 refreshes (109.3)
    short = plan_exploration(total_steps=2000, batch_size=32, train_rows=10_000, probe_rows=256)
    assert short.max_blocks == 0 and "the test needs 80 blocks" in short.reason
    assert "refreshed every 10 blocks" in short.reason and "one re-check of a chosen window" in short.reason
    assert "(recheck_blocks=0 explores without re-checks)" in short.reason
    assert f"≥ {explore_min_steps(32):,} steps" in short.reason
    assert explore_min_steps(32) == 2507  # (24 + 8 · 10.67 + 16) / 5 %
    assert explore_min_steps(32, recheck_blocks=10) == 2387  # (24 + 8 · 10.67 + 10) / 5 %
    once = plan_exploration(total_steps=2200, batch_size=32, train_rows=10_000, probe_rows=256, recheck_blocks=0)
    assert once.max_blocks >= 80 and once.max_rechecks == 0 and once.refresh_blocks <= 10
    long = plan_exploration(total_steps=20_000, batch_size=32, train_rows=10_000, probe_rows=256)
    assert long.max_blocks == 160 and long.refresh_blocks <= 10  # looks up to 160 blocks; the rest: re-checks,
    assert long.max_rechecks > 1  # then fresher probes
    few = plan_exploration(total_steps=20_000, batch_size=32, train_rows=10_000, probe_rows=256, min_blocks=4)
    assert few.refresh_blocks <= 4  # a probe never scores more blocks than the first look holds
    short = plan_exploration(total_steps=600, batch_size=32, train_rows=10_000, probe_rows=256)
    assert short.max_blocks == 0 and short.steps == [] and "too short to explore" in short.reason
    assert "≥ 800 steps" in short.reason and f"≥ {explore_min_steps(32):,} steps" not in short.reason
    cheap = plan_exploration(total_steps=3000, batch_size=32, train_rows=10_000, probe_rows=256, budget=0.01)
    assert cheap.max_blocks == 0 and "within budget=0.01" in cheap.reason
    assert f"≥ {explore_min_steps(32, budget=0.01):,} steps" in cheap.reason


@pytest.mark.parametrize("budget", [0.02, 0.05, 0.2])
def test_everything_the_plan_can_spend_fits_in_the_budget(budget):
    for steps in (300, 500, 1000, 1600, 5000, 40_000):
        for batch, probe in ((16, 64), (32, 256), (128, 256), (512, 1024)):
            plan = plan_exploration(total_steps=steps, batch_size=batch, train_rows=10**6, probe_rows=probe,
                                    budget=budget)
            if plan.max_blocks:
                worst = (SCORE_COST * 3 * plan.max_blocks + plan.max_rechecks * plan.recheck_cost
                         + math.ceil(plan.max_blocks / plan.refresh_blocks) * plan.cost_per_refresh)
                assert worst == pytest.approx(plan.planned_cost) and worst <= budget * steps + 1e-9


@pytest.mark.slow
def test_exploration_trains_each_arm_in_blocks_and_records_the_decision(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    trainer = run(tiny_model_dir, out, policy={"levels": "local:16,spread:4"})
    record = json.loads((out / EXPLORE_FILE).read_text().splitlines()[0])
    assert record["decision"] in ("window", "random") and record["estimate"] == "explore"
    assert record["cost"]["preconditioner"] == "adam" and record["cost"]["scored_steps"] >= 3 * 3
    blocks = record["blocks"]
    assert all(sorted(b["order"]) == ["local:16", "random", "spread:4"] for b in blocks[:3])
    assert [b["start"] for b in blocks[:3]] == [0, 3, 6]  # consecutive steps, one per arm
    # the level batches really were trained on: tight neighbourhoods are less diverse than spread-out batches (in
    # most blocks: the logged rank is the trained model's, the levels were drawn on the embeddings of the last refresh)
    rank = {r["step"]: r["divcl/effective_rank"] for r in read_diversity_log(out / "diversity_log.jsonl")}
    tested = [b for b in blocks if len(b["scores"]) == 3]
    arm_rank = [{a: rank[b["start"] + i + 1] for i, a in enumerate(b["order"])} for b in tested]
    tighter = sum(r["local:16"] < r["spread:4"] for r in arm_rank)
    assert len(arm_rank) >= 8 and tighter >= 0.75 * len(arm_rank), arm_rank
    assert sum(r["local:16"] for r in arm_rank) < sum(r["spread:4"] for r in arm_rank)
    probe = set(trainer.policy.probe_dataset["anchor"])
    assert len(probe) == 40 and not probe & set(trainer.train_dataset["anchor"])
    info = json.loads((out / "divcl_window.json").read_text())
    assert info["decision"] == record["decision"]


@pytest.mark.slow
def test_resume_mid_exploration_is_bit_identical(tiny_model_dir, tmp_path):
    kw = dict(policy={"levels": "local:16,spread:4"}, save_strategy="steps", save_steps=7, max_steps=60)
    full = run(tiny_model_dir, tmp_path / "full", **kw)
    state = json.loads((tmp_path / "full" / "checkpoint-7" / "divcl_state" / "policy.json").read_text())
    assert state["kind"] == "explore" and not state["finished"]  # the checkpoint is mid-exploration
    resumed = run(tiny_model_dir, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-7"), **kw)
    a = {r["step"]: r["loss"] for r in full.state.log_history if "loss" in r}
    b = {r["step"]: r["loss"] for r in resumed.state.log_history if "loss" in r}
    assert [s for s in b if s > 7] == [s for s in a if s > 7] and all(a[s] == b[s] for s in b if s > 7)
    ha, hb = full.policy.runner.history[-1], resumed.policy.runner.history[-1]
    assert (ha["decision"], ha["step"], ha["levels"]) == (hb["decision"], hb["step"], hb["levels"])


@pytest.mark.slow
def test_a_zero_learning_rate_and_a_short_run_keep_random_batches_with_the_reason(tiny_model_dir, tmp_path):
    trainer = run(tiny_model_dir, tmp_path / "lr0", learning_rate=0.0, max_steps=60)
    assert trainer.divcl_sampler.builder == "random"
    assert "learning rate is 0" in trainer.policy.runner.history[-1]["reason"]
    short = run(tiny_model_dir, tmp_path / "short", max_steps=6)
    assert short.policy.runner is None and short.policy.probe_dataset is None and len(short.train_dataset) == 400
    info = json.loads((tmp_path / "short" / "divcl_window.json").read_text())
    assert "too short to explore" in info["reason"]


@pytest.mark.slow
def test_sgd_is_scored_with_the_identity_preconditioner(tiny_model_dir, tmp_path):
    trainer = run(tiny_model_dir, tmp_path / "sgd", optim="sgd", learning_rate=0.05, max_steps=60,
                  policy={"levels": "spread:4"})
    assert trainer.policy.runner.history[-1]["cost"]["preconditioner"] == "identity"


def test_explore_settings_are_checked():
    def explore(**settings):
        return DivCLTrainingArguments(output_dir="x", batch_policy="explore", batch_policy_kwargs=settings)

    with pytest.raises(ValueError, match="batch_policy='explore': alpha must be in"):
        explore(alpha=1.5)
    with pytest.raises(ValueError, match="batch_policy='explore': recheck_blocks must be"):
        explore(recheck_blocks=1)
    with pytest.raises(ValueError, match="batch_policy='explore': recheck_rule must be"):
        explore(recheck_rule="sometimes")
    with pytest.raises(ValueError, match="batch_policy='explore': probe must be"):
        explore(probe="knn")
    # learnability is a policy of its own, not a builder exploring can plan a window with
    with pytest.raises(ValueError, match="batch_policy='explore': builder must be one of"):
        explore(builder="learnability")


@pytest.mark.slow
def test_a_window_chosen_mid_epoch_is_planned_in_parts_and_resumes_exactly(tiny_model_dir, tmp_path, caplog):
    # alpha = 0.9 on this seed makes a decision (not evidence for it) so that the re-plan in parts runs
    kw = dict(policy={"levels": "local:16,spread:4", "alpha": 0.9, "replan_chunk_rows": 32}, seed=5,
              save_strategy="steps", save_steps=15)
    with caplog.at_level("INFO", logger="hf_divcl.sampler"):
        full = run(tiny_model_dir, tmp_path / "full", **kw)
    record = json.loads((tmp_path / "full" / EXPLORE_FILE).read_text().splitlines()[0])
    assert record["decision"] == "window" and record["step"] < 15
    assert "more parts" in caplog.text and "planned in the background" in caplog.text
    assert full.bank.num_views == 1  # encoded for the window: anchors only, nothing reads the positives
    state = tmp_path / "full" / "checkpoint-15" / "divcl_state"
    rows = np.load(state / "plan_rows.npy")  # the checkpoint right after the decision holds the whole plan
    assert sorted(rows.tolist()) == list(range(len(full.train_dataset)))
    resumed = run(tiny_model_dir, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-15"), **kw)
    a = {r["step"]: r["loss"] for r in full.state.log_history if "loss" in r}
    b = {r["step"]: r["loss"] for r in resumed.state.log_history if "loss" in r}
    assert [s for s in b if s > 15] == [s for s in a if s > 15] and all(a[s] == b[s] for s in b if s > 15)


@pytest.mark.slow
def test_a_window_that_falls_behind_at_its_recheck_is_dropped_and_a_resume_mid_recheck_is_exact(tiny_model_dir,
                                                                                                 tmp_path):
    # alpha = 0.9 on this seed chooses the tight level early (no evidence: it makes a decision to re-check);
    # the re-check at twice that step (10 blocks: the default 40 would not fit in 60 steps) then finds the window
    # behind random batches and drops it
    kw = dict(policy={"levels": "local:16", "alpha": 0.9, "recheck_blocks": 10}, seed=0, max_steps=60,
              save_strategy="steps", save_steps=10)
    full = run(tiny_model_dir, tmp_path / "full", **kw)
    explore, recheck = (json.loads(x) for x in (tmp_path / "full" / EXPLORE_FILE).read_text().splitlines())
    assert explore["decision"] == "window" and explore["estimate"] == "explore"
    assert recheck["estimate"] == "recheck" and recheck["decision"] == "random"
    assert "fell behind random batches with confidence" in recheck["reason"]
    starts = [b["start"] for b in recheck["blocks"]]
    assert starts[0] > 2 * explore["step"] - 1 and all(sorted(b["order"]) == ["local:16", "random"]
                                                       for b in recheck["blocks"])
    assert recheck["levels"][0]["ci_high"] < 0 and full.divcl_sampler.builder == "random"
    assert full.policy.runner.next_check is None  # no further re-checks once back on random batches
    info = json.loads((tmp_path / "full" / "divcl_window.json").read_text())
    assert info["decision"] == "random" and info["calibrations"] == 2
    card = write_model_card(tmp_path / "full", base_model="tiny", dataset="pairs", train_rows=400).read_text()
    assert r"| random \(re-check\) |" in card and "re-checked against random batches" in card
    state = json.loads((tmp_path / "full" / "checkpoint-20" / "divcl_state" / "policy.json").read_text())
    assert state["phase"] == "recheck" and not state["finished"]  # this checkpoint is mid-re-check
    resumed = run(tiny_model_dir, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-20"), **kw)
    a = {r["step"]: r["loss"] for r in full.state.log_history if "loss" in r}
    b = {r["step"]: r["loss"] for r in resumed.state.log_history if "loss" in r}
    assert [s for s in b if s > 20] == [s for s in a if s > 20] and all(a[s] == b[s] for s in b if s > 20)
    assert resumed.policy.runner.history[-1]["reason"] == full.policy.runner.history[-1]["reason"]


@pytest.mark.slow
def test_the_label_probe_scores_image_steps_by_soft_knn_and_a_missing_label_column_is_named(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.images import fashion_mnist
    from hf_divcl.models.vision import build_tiny_vit_sentence_transformer

    model = SentenceTransformer(build_tiny_vit_sentence_transformer(tmp_path / "vit"), device="cpu")
    args = DivCLTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=1e-3, logging_steps=5,
        report_to=[], disable_tqdm=True, collapse_threshold=0, bank_cache_dir=str(tmp_path / "cache"),
        save_strategy="no", seed=3, batch_policy="explore", batch_policy_kwargs={
            "budget": 1.0, "min_blocks": 2, "max_fraction": 0.9, "probe": "labels", "levels": "local:16"},
        max_steps=60, loss_kwargs={"loss_type": "nt_xent"})
    trainer = DivCLTrainer(model=model, args=args, train_dataset=fashion_mnist("train", limit=400))
    assert len(set(trainer.policy.probe_dataset["label"])) == 10  # 40 held-out images of every class
    trainer.train()
    record = json.loads((tmp_path / "out" / EXPLORE_FILE).read_text().splitlines()[0])
    assert record["cost"]["scored_steps"] >= 2 * 3 and record["cost"]["probe_refreshes"] >= 1
    assert json.loads((tmp_path / "out" / "divcl_window.json").read_text())["calibration_plan"]["probe"] == "labels"
    with pytest.raises(ValueError, match=r"column 'label'.*Set probe_label_column"):
        run(tiny_model_dir, tmp_path / "text", policy={"probe": "labels"})  # text pairs carry no label column
    unlabelled = fashion_mnist("train", limit=400).cast_column("label", Value("int64"))
    unlabelled = unlabelled.map(lambda r, i: {"label": None if i == 7 else r["label"]}, with_indices=True)
    with pytest.raises(ValueError, match="Row 7, column 'label'"):
        DivCLTrainer(model=model, args=args, train_dataset=unlabelled)
