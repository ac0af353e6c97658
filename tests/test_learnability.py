"""Learnability selection (batch_policy='learnability' / 'hard'): the scores against float64 references, the joint
chunk-by-chunk choice, determinism, the window, the trainer wiring and its bad-input errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from hf_divcl.bank import EmbeddingBank
from hf_divcl.diversity.window import DiversityWindow, measure_diversity
from hf_divcl.experimental.learnability import LearnabilitySelector, _gains, batch_losses, joint_select


def _unit(k: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(k, d, generator=g, dtype=dtype), dim=-1)


def _set_loss(a: torch.Tensor, p: torch.Tensor, tau: float, members: list[int]) -> float:
    """Σ_{i∈S} −log softmax_{j∈S}(a_i·p_j/τ)[i], written out row by row."""
    total = 0.0
    for i in members:
        logits = torch.stack([a[i] @ p[j] / tau for j in members])
        total += float(-(logits[members.index(i)] - torch.logsumexp(logits, 0)))
    return total


def test_batch_losses_match_the_summed_infonce_of_each_set():
    a, p = _unit(12, 5, 0), _unit(12, 5, 1)
    sets = [[0, 3, 5, 7], [1, 2, 4, 6, 8, 9, 10, 11], [2, 11]]
    members = torch.zeros(3, 12, dtype=torch.bool)
    for g, s in enumerate(sets):
        members[g, s] = True
    got = batch_losses(a, p, 0.1, members)
    want = torch.tensor([_set_loss(a, p, 0.1, s) for s in sets], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


def test_gain_of_each_candidate_is_the_change_of_the_summed_loss():
    a, p, tau = _unit(10, 4, 2), _unit(10, 4, 3), 0.2
    z = a @ p.T / tau
    chosen_rows = [[1, 4, 7], [0, 2]]
    chosen = torch.zeros(2, 10, dtype=torch.bool)
    for g, s in enumerate(chosen_rows):
        chosen[g, s] = True
    lse = torch.logsumexp(z[None] + torch.log(chosen.double())[:, None, :], dim=-1)
    gains = _gains(z, chosen, lse)
    for g, s in enumerate(chosen_rows):
        for c in range(10):
            if c in s:
                continue
            want = _set_loss(a, p, tau, [*s, c]) - _set_loss(a, p, tau, s)
            assert abs(float(gains[g, c]) - want) < 1e-10


def test_one_row_per_chunk_without_sampling_is_exact_greedy_learnability():
    k, b, tau = 14, 5, 0.1
    la, lp, ra, rp = _unit(k, 6, 4), _unit(k, 6, 5), _unit(k, 3, 6), _unit(k, 3, 7)
    picks = joint_select((la, lp), (ra, rp), b, tau, chunks=b, sample=False)[0].tolist()

    def learnability(rows):
        return _set_loss(la, lp, tau, rows) - _set_loss(ra, rp, tau, rows)

    def own(a, p):  # each row's loss in the whole super-batch: the first chunk's score
        z = a @ p.T / tau
        return torch.logsumexp(z, -1) - z.diagonal()

    full = list(range(k))
    first = int((own(la, lp) - own(ra, rp)).argmax())
    greedy = [first]
    while len(greedy) < b:
        rest = [c for c in full if c not in greedy]
        greedy.append(max(rest, key=lambda c: learnability([*greedy, c]) - learnability(greedy)))
    assert picks == greedy


def test_sampled_selection_gives_distinct_rows_and_is_reproducible():
    a, p = _unit(64, 8, 8, torch.float32), _unit(64, 8, 9, torch.float32)
    ref = (_unit(64, 8, 10, torch.float32), _unit(64, 8, 11, torch.float32))
    out1 = joint_select((a, p), ref, 16, 0.05, chunks=4, draws=3, generator=torch.Generator().manual_seed(1))
    out2 = joint_select((a, p), ref, 16, 0.05, chunks=4, draws=3, generator=torch.Generator().manual_seed(1))
    assert out1.shape == (3, 16)
    assert torch.equal(out1, out2)
    assert all(len(set(row.tolist())) == 16 for row in out1)
    assert not torch.equal(out1[0], out1[1])  # independent draws


def test_hard_selection_picks_batches_with_higher_learner_loss_than_random():
    k, b, tau = 64, 16, 0.1
    wins = 0
    for seed in range(10):
        a = _unit(k, 8, 100 + seed, torch.float32)
        p = torch.nn.functional.normalize(a + 0.8 * _unit(k, 8, 200 + seed, torch.float32), dim=-1)
        pick = joint_select((a, p), None, b, tau, chunks=4, sample=False)[0]
        members = torch.zeros(2, k, dtype=torch.bool)
        members[0, pick] = True
        members[1, :b] = True
        hard, rand = batch_losses(a, p, tau, members).tolist()
        wins += hard > rand
    assert wins == 10


def _bank(n: int, d: int, seed: int, views: int = 2) -> EmbeddingBank:
    bank = EmbeddingBank(n, d, num_views=views)
    emb = torch.stack([_unit(n, d, seed + v, torch.float32) for v in range(views)], dim=1)
    bank.update(torch.arange(n), emb, step=0)
    return bank


def test_selector_is_a_pure_function_of_seed_and_rows_and_logs_its_scores():
    learner, reference = _bank(200, 16, 0), _bank(200, 8, 10)
    rows = torch.randperm(200, generator=torch.Generator().manual_seed(0))[:64]
    s1 = LearnabilitySelector(learner, 16, 0.05, reference=reference, seed=3)
    s2 = LearnabilitySelector(learner, 16, 0.05, reference=reference, seed=3)
    keep = s1(rows)
    assert torch.equal(keep, s2(rows))
    assert keep.shape == (16,) and len(set(keep.tolist())) == 16 and int(keep.max()) < 64
    summary = s1.summary()
    assert set(summary) == {"learnability_selected", "learnability_random", "learner_stale_fraction"}
    assert summary["learner_stale_fraction"] == 1.0  # every row still holds the starting encoding (step 0)
    assert s1.summary() == {}  # reset after reading
    assert LearnabilitySelector(learner, 16, 0.05, reference=None).mode == "hard"


def test_selector_keeps_the_batch_inside_the_window():
    learner = _bank(400, 16, 20)
    rows = torch.arange(128)
    probe = LearnabilitySelector(learner, 16, 0.05, seed=0, draws=12)
    picks = joint_select(tuple(t.float() for t in (learner.get(rows), learner.get(rows, view=1))), None, 16, 0.05,
                         draws=12, generator=probe._generator(rows))
    values = measure_diversity(learner.get(rows)[picks], "effective_rank")
    low, high = float(values.median()) - 1e-3, float(values.max()) + 1e-3
    sel = LearnabilitySelector(learner, 16, 0.05, window=DiversityWindow(low, high), seed=0, draws=12)
    keep = sel(rows)
    value = float(measure_diversity(learner.get(rows[keep])[None], "effective_rank")[0])
    assert low <= value <= high


def test_selector_refuses_a_reference_of_other_rows():
    with pytest.raises(ValueError, match="reference bank has 10 rows but the learner's bank has 20"):
        LearnabilitySelector(_bank(20, 4, 0), 4, 0.1, reference=_bank(10, 4, 1))


def test_a_bank_never_updated_by_training_is_reported(caplog):
    sel = LearnabilitySelector(_bank(64, 8, 0), 8, 0.1, reference=_bank(64, 8, 5))
    rows = torch.arange(32)
    with caplog.at_level(logging.WARNING, logger="hf_divcl.experimental.learnability"):
        for _ in range(200):
            sel(rows)
    assert "was ever updated by training" in caplog.text


# -- the trainer ----------------------------------------------------------------------------------------------


def _pairs(n: int):
    from hf_divcl.data.wordnet import wordnet_split

    return wordnet_split(kind="example", split="train", source="embedded").select_columns(
        ["anchor", "positive"]).select(range(n))


def _args(tmp_path: Path, **kw):
    from hf_divcl.training.arguments import DivCLTrainingArguments

    return DivCLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=6,
                                  logging_steps=3, report_to=[], save_strategy="no", disable_tqdm=True,
                                  bank_cache_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("policy", ["learnability", "hard"])
def test_trainer_selects_from_super_batches_and_never_trains_on_the_reference_rows(tiny_model_dir, tmp_path, policy):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.training.trainer import DivCLTrainer

    trained: list[list[int]] = []

    class Recording(DivCLTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if inputs.get("row_ids") is not None and model.training:
                trained.append(inputs["row_ids"].tolist())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = Recording(model=SentenceTransformer(tiny_model_dir, device="cpu"),
                        args=_args(tmp_path, batch_policy=policy), train_dataset=_pairs(240))
    trainer.train()
    assert trainer.divcl_sampler.batch_size == 32  # super-batches of 4 × B rows ...
    assert [len(rows) for rows in trained] == [8] * 6  # ... of which B are trained on
    run = json.loads((tmp_path / "out" / "divcl_run.json").read_text())
    window = json.loads((tmp_path / "out" / "divcl_window.json").read_text())
    assert window["policy"] == policy and run["selection"]["mode"] == policy
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert all(f"divcl/{policy}_selected" in r for r in logs)
    assert not trainer.model._forward_hooks  # the capture hook lives only while training
    from hf_divcl.publish.card import write_model_card

    card = write_model_card(tmp_path / "out", base_model="tiny-bert", dataset="WordNet pairs",
                            train_rows=len(trainer.train_dataset)).read_text()
    assert f"### Batch selection: {policy}" in card and "4 × the batch size" in card
    assert ("learner loss − reference loss" if policy == "learnability" else "hard-example selection") in card
    if policy == "learnability":
        held = set(trainer.policy.reference_rows_dataset["anchor"])
        assert run["selection"]["reference_rows"] == len(trainer.policy.reference_rows_dataset) == 32
        assert len(trainer.train_dataset) == 240 - 32
        assert held.isdisjoint(trainer.train_dataset.select([r for rows in trained for r in rows])["anchor"])
        assert trainer.policy.reference_result.steps == 10


def test_learnability_arguments_fail_early_with_what_to_do(tmp_path):
    from hf_divcl.policies.registry import available_policies

    with pytest.raises(ValueError, match=r"needs loss_kwargs=\{'guide'"):
        _args(tmp_path, batch_policy="learnability", batch_policy_kwargs={"reference": "guide"})
    with pytest.raises(ValueError, match="neither"):
        _args(tmp_path, batch_policy="learnability", batch_policy_kwargs={"reference": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="is not a folder"):
        _args(tmp_path, loss_kwargs={"false_negatives": "mask", "guide": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="batch_policy='hard': chunks must be >= 1"):
        _args(tmp_path, batch_policy="hard", batch_policy_kwargs={"chunks": 0})
    assert {"learnability", "hard"} <= set(available_policies()["experimental"])


def test_a_reference_slice_too_large_for_the_data_is_refused(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.training.trainer import DivCLTrainer

    with pytest.raises(ValueError, match="needs 30 held-out rows"):
        DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"),
                     args=_args(tmp_path, batch_policy="learnability", batch_policy_kwargs={"reference_rows": 30}),
                     train_dataset=_pairs(40))


def test_the_reference_is_fine_tuned_by_a_small_trainer_and_leaves_the_run_alone(tiny_model_dir, tmp_path):
    """The held-out reference: a copy of the starting model trained for the asked steps on the reference rows only;
    the model being trained, the global RNG and the collator's augmentation state are untouched."""
    from sentence_transformers import SentenceTransformer

    from hf_divcl.experimental.learnability import train_reference_model
    from hf_divcl.training.trainer import DivCLTrainer

    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"),
                           args=_args(tmp_path, batch_policy="learnability"), train_dataset=_pairs(240))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    rng = torch.get_rng_state()
    ref = train_reference_model(trainer, trainer.policy.reference_rows_dataset, steps=4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    moved = [not torch.equal(a, b) for a, b in zip(before, ref.parameters(), strict=True)]
    assert sum(moved) > len(moved) // 2 and not ref.training
