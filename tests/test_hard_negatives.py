"""Mined hard negatives end to end: a row's negatives always train in its batch; a hard negative that is the same
text as another in-batch row's anchor or positive — for that row's anchor, a false negative — is masked out of
hf_divcl's loss (counted when another loss is used); every row is used once per epoch under each policy."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from hf_divcl.data.wordnet import wordnet_pairs
from hf_divcl.diversity.log import read_diversity_log
from hf_divcl.losses.false_negatives import duplicate_negative_mask
from hf_divcl.losses.maths import contrastive_loss
from hf_divcl.planning.dedupe import content_ids
from hf_divcl.training.arguments import DivCLTrainingArguments
from hf_divcl.training.trainer import DivCLTrainer


def test_content_ids_share_one_id_space_across_columns():
    ids = content_ids(["a", "b", "c"], ["p", "q", "a"], ["q", "x", "p"])
    assert ids[0, 0] == ids[2, 1]  # "a" as an anchor and as a positive
    assert ids[1, 1] == ids[0, 2] and ids[0, 1] == ids[2, 2]
    assert len({int(ids[1, 2]), int(ids[1, 0]), int(ids[2, 0])}) == 3


def test_duplicate_negative_mask_marks_exactly_the_negatives_equal_to_the_query_rows_own_texts():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (9, 4), generator=gen)  # 9 rows: anchor, positive, 2 negatives
    got = duplicate_negative_mask(ids)
    n = ids.shape[0]
    want = torch.zeros(n, 3 * n, dtype=torch.bool)
    for i, j, c in itertools.product(range(n), range(n), range(2, 4)):
        want[i, (c - 1) * n + j] = bool(ids[j, c] == ids[i, 0] or ids[j, c] == ids[i, 1])
    assert torch.equal(got, want)
    assert not got[:, :n].any()  # the positives' block is never marked


def test_masked_loss_equals_the_float64_softmax_without_those_negatives():
    gen = torch.Generator().manual_seed(1)
    n, d = 6, 8
    cols = [torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    ids = torch.stack([torch.arange(n), torch.arange(n) + 100, torch.arange(n) + 200], 1)
    ids[2, 2] = ids[4, 1]  # row 2's negative is row 4's positive: a false negative of anchor 4
    ids[5, 2] = ids[0, 0]  # row 5's negative is anchor 0 itself
    out = contrastive_loss(cols[0], cols[1], 0.1, negatives=[cols[2]], gather=False, contents=ids)
    assert int(out.duplicate_negatives) == 2
    u, v, w = (F.normalize(c, dim=-1) for c in cols)
    logits = torch.cat([u @ v.T, u @ w.T], 1) / 0.1
    logits[4, n + 2] = float("-inf")
    logits[0, n + 5] = float("-inf")
    ref = F.cross_entropy(logits, torch.arange(n))
    assert torch.allclose(out.loss, ref)
    g = torch.autograd.grad(out.loss, cols)
    g_ref = torch.autograd.grad(ref, cols)
    assert all(torch.allclose(a, b) for a, b in zip(g, g_ref, strict=True))
    plain = contrastive_loss(cols[0], cols[1], 0.1, negatives=[cols[2]], gather=False)
    assert plain.duplicate_negatives is None and not torch.allclose(plain.loss, out.loss)


@pytest.fixture(scope="module")
def mined(tiny_model_dir):
    """Real mined data: sentence-transformers' own miner, n-tuples of 2 negatives per row."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    pairs = wordnet_pairs(kind="example", source="embedded").select(range(160)).select_columns(["anchor", "positive"])
    model = SentenceTransformer(tiny_model_dir, device="cpu")
    return mine_hard_negatives(pairs, model, num_negatives=2, output_format="n-tuple", verbose=False, batch_size=64)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=1e-3,
                logging_steps=2, report_to=[], disable_tqdm=True, collapse_threshold=0, save_strategy="no",
                num_train_epochs=1)
    base.update(kw)
    return DivCLTrainingArguments(**base)


def _recorded(trainer):
    steps = []
    inner = trainer.compute_loss

    def compute_loss(m, inputs, *a, **k):
        steps.append(inputs["row_ids"].tolist())
        return inner(m, inputs, *a, **k)

    trainer.compute_loss = compute_loss
    return steps


def _expected_duplicates(data, steps) -> int:
    ids = content_ids(*(data[c] for c in ("anchor", "positive", "negative_1", "negative_2")))
    return sum(int(duplicate_negative_mask(ids[torch.tensor(rows)]).sum()) for rows in steps)


@pytest.mark.parametrize("policy", [{"batch_policy": "random"},
                                    {"batch_policy": "window", "batch_policy_kwargs": {"window": "1.1:1.6"}}])
def test_mined_ntuples_train_every_row_once_and_their_duplicate_negatives_are_masked_and_logged(
        tiny_model_dir, tmp_path, mined, policy):
    from sentence_transformers import SentenceTransformer

    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=_args(tmp_path, **policy),
                           train_dataset=mined)
    steps = _recorded(trainer)
    trainer.train()
    counts = Counter(r for rows in steps for r in rows)
    assert sorted(counts) == list(range(len(mined))) and set(counts.values()) == {1}  # none skipped or repeated
    expected = _expected_duplicates(mined, steps)
    assert expected > 0  # mined negatives are other rows' positives: some meet their row in a batch
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert log[-1]["divcl/duplicate_negatives_masked_total"] == expected
    assert sum(r.get("divcl/duplicate_negatives_masked", 0) for r in log) == expected


def test_another_loss_gets_the_duplicate_negatives_counted_not_masked(tiny_model_dir, tmp_path, mined):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    trainer = DivCLTrainer(model=model, args=_args(tmp_path, max_steps=6), train_dataset=mined,
                           loss=MultipleNegativesRankingLoss(model))
    steps = _recorded(trainer)
    trainer.train()
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert log[-1]["divcl/duplicate_negatives_unmasked_total"] == _expected_duplicates(mined, steps)
    assert not any("divcl/duplicate_negatives_masked" in r for r in log)


def test_masking_can_be_turned_off_and_is_then_counted(tiny_model_dir, tmp_path, mined):
    from sentence_transformers import SentenceTransformer

    a = _args(tmp_path, max_steps=4, loss_kwargs={"mask_duplicate_negatives": False})
    trainer = DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=a, train_dataset=mined)
    steps = _recorded(trainer)
    trainer.train()
    log = read_diversity_log(tmp_path / "out" / "diversity_log.jsonl")
    assert log[-1]["divcl/duplicate_negatives_unmasked_total"] == _expected_duplicates(mined, steps)


def test_a_missing_mined_negative_is_named_before_training(tiny_model_dir, tmp_path, mined):
    from sentence_transformers import SentenceTransformer

    from hf_divcl.data.validation import DatasetError

    broken = mined.map(lambda r, i: {"negative_2": None if i == 7 else r["negative_2"]}, with_indices=True)
    with pytest.raises(DatasetError, match=r"Row 7, column 'negative_2' is missing"):
        DivCLTrainer(model=SentenceTransformer(tiny_model_dir, device="cpu"), args=_args(tmp_path),
                     train_dataset=broken)
