"""Epoch planning: partitions, duplicates, determinism, windows and clear errors, for every builder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_divcl.diversity.window import DiversityWindow
from hf_divcl.planning.cluster import ClusterBuilder
from hf_divcl.planning.dedupe import duplicate_groups
from hf_divcl.planning.plan import plan_epoch
from hf_divcl.planning.registry import BUILDERS, get_builder

ALL = sorted(BUILDERS)


def clustered(n=3000, d=48, k=40, spread=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=gen)
    lab = torch.randint(k, (n,), generator=gen)
    return F.normalize(centres[lab] + spread * torch.randn(n, d, generator=gen), dim=-1)


@pytest.fixture(scope="module")
def bank():
    return clustered()


@pytest.fixture(scope="module")
def window(bank):
    """A window around random batches' diversity: feasible for every builder."""
    plan = plan_epoch(bank, 32, builder="random", seed=123)
    v = plan.values[:-1]
    return DiversityWindow(v.mean().item() - 2 * v.std().item(), v.mean().item() + 2 * v.std().item())


def flat(plan):
    return torch.cat(plan.batches)


@pytest.mark.parametrize("builder", ALL)
@pytest.mark.parametrize("n,b,drop_last", [(3000, 32, False), (3000, 32, True), (3001, 64, False), (100, 7, False)])
def test_every_row_exactly_once_per_epoch(bank, builder, n, b, drop_last):
    x = bank if n <= bank.shape[0] else torch.cat([bank, bank[:1]])
    x = x[:n]
    wide = DiversityWindow(1, b)
    plan = plan_epoch(x, b, builder=builder, window=wide, seed=1, drop_last=drop_last)
    rows = flat(plan)
    n_full = n // b
    sizes = [bt.numel() for bt in plan.batches]
    assert sizes[:n_full] == [b] * n_full
    if drop_last or n % b == 0:
        assert len(plan) == n_full and rows.numel() == n_full * b
    else:
        assert len(plan) == n_full + 1 and sizes[-1] == n % b
        assert sorted(rows.tolist()) == list(range(n))
    assert rows.unique().numel() == rows.numel()  # nothing twice
    assert len(list(plan)) == len(plan)


@pytest.mark.parametrize("builder", ALL)
def test_deterministic_per_seed_and_epoch_and_different_across_epochs(bank, window, builder):
    a = plan_epoch(bank, 32, builder=builder, window=window, seed=5, epoch=2)
    b = plan_epoch(bank, 32, builder=builder, window=window, seed=5, epoch=2)
    c = plan_epoch(bank, 32, builder=builder, window=window, seed=5, epoch=3)
    assert all(torch.equal(x, y) for x, y in zip(a.batches, b.batches, strict=True))
    assert not torch.equal(flat(a), flat(c))


@pytest.mark.parametrize("builder", ALL)
def test_duplicates_never_share_a_batch(bank, window, builder):
    texts = [f"text {i}" for i in range(bank.shape[0])]
    for i in range(0, 600, 3):  # 200 groups of three identical texts, plus shared positives
        texts[i + 1] = texts[i + 2] = texts[i]
    groups = duplicate_groups(texts)
    plan = plan_epoch(bank, 32, builder=builder, window=window, seed=2, groups=groups)
    for bt in plan.batches:
        g = groups[bt]
        assert g.unique().numel() == g.numel()
    assert sorted(flat(plan).tolist()) == list(range(bank.shape[0]))


def test_duplicate_groups_join_across_columns():
    g = duplicate_groups(["a", "b", "c", "d"], ["x", "y", "x", "a"])
    assert g[0] == g[2]  # same positive
    assert g[3] == g[0]  # row 3's positive is row 0's anchor: a false negative too
    assert g[1] != g[0] and g.unique().numel() == 2


def test_too_many_duplicates_for_the_batches_is_an_error(bank):
    groups = torch.arange(64)
    groups[:10] = 1000  # 10 identical rows but only 4 batches
    with pytest.raises(ValueError, match=r"10 rows \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\] are duplicates.*only 4 batches"):
        plan_epoch(bank[:64], 16, builder="random", groups=groups)


@pytest.mark.parametrize("builder", ["greedy", "pool"])
def test_feasible_window_is_met_by_greedy_and_pool_on_clustered_data(bank, window, builder):
    plan = plan_epoch(bank, 32, builder=builder, window=window, seed=3)
    assert plan.in_window_fraction >= 0.95, plan.summary()


def test_greedy_steers_towards_low_and_high_diversity(bank):
    rnd = plan_epoch(bank, 32, builder="random", seed=4).values[:-1].mean().item()
    lo = plan_epoch(bank, 32, builder="greedy", window=DiversityWindow(rnd - 6, rnd - 4), seed=4,
                    on_infeasible="closest")
    hi = plan_epoch(bank, 32, builder="greedy", window=DiversityWindow(rnd + 0.5, rnd + 1.5), seed=4,
                    on_infeasible="closest")
    assert lo.values.nanmean().item() < rnd - 2 < rnd < hi.values.nanmean().item()


def test_cluster_builder_one_cluster_per_batch_is_less_diverse_than_random(bank):
    rnd = plan_epoch(bank, 32, builder="random", seed=4).values.nanmean().item()
    tas = plan_epoch(bank, 32, builder=ClusterBuilder(clusters_per_batch=1), seed=4)
    assert tas.values.nanmean().item() < rnd


def test_infeasible_window_fails_fast_with_the_measured_range(bank):
    with pytest.raises(ValueError, match=r"not achievable on this data .*range over \[[0-9.]+, [0-9.]+\]"):
        plan_epoch(bank, 32, builder="greedy", window=DiversityWindow(31.5, 32.0))
    with pytest.warns(UserWarning, match="closest achievable window"):
        plan = plan_epoch(bank, 32, builder="greedy", window=DiversityWindow(31.5, 32.0), on_infeasible="closest")
    assert plan.window.high < 31.5


@pytest.mark.parametrize("kwargs,match", [
    ({"embeddings": torch.empty(0, 8)}, "data set is empty"),
    ({"batch_size": 5000}, r"batch_size \(5000\) is larger than the data set \(3000 rows\)"),
    ({"batch_size": 1}, "batch_size must be >= 2"),
    ({"builder": "nope"}, "Unknown batch builder 'nope'"),
    ({"builder": "greedy", "window": None}, "needs a DiversityWindow"),
    ({"groups": torch.zeros(10, dtype=torch.long)}, r"groups must have one id per row"),
    ({"window": DiversityWindow(33, 40)}, r"outside what batches of B = 32 in d = 48 can reach"),
])
def test_bad_input_is_named(bank, window, kwargs, match):
    args = {"embeddings": bank, "batch_size": 32, "builder": "random", "window": window, **kwargs}
    if "window" in kwargs and kwargs["window"] is not None and args["builder"] == "random":
        args["builder"] = "greedy"
    with pytest.raises(ValueError, match=match):
        plan_epoch(args.pop("embeddings"), args.pop("batch_size"), **args)


def test_nan_rows_in_the_bank_are_named(bank):
    x = bank.clone()
    x[[17, 42]] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf embeddings at rows \[17, 42\]"):
        plan_epoch(x, 32, builder="random")


def test_builders_by_name_class_and_instance():
    assert get_builder("pool", p=5).p == 5
    assert get_builder(ClusterBuilder, n_clusters=3).n_clusters == 3
    inst = ClusterBuilder()
    assert get_builder(inst) is inst


def test_float16_bank_is_accepted_without_copying_to_float32(bank):
    plan = plan_epoch(bank.half(), 32, builder="greedy", window=DiversityWindow(1, 32), seed=0)
    assert plan.in_window_fraction == 1.0


def test_refinement_keeps_the_partition_and_moves_batches_towards_the_window(bank):
    rnd = plan_epoch(bank, 32, builder="random", seed=4)
    v = rnd.values[:-1]
    target = DiversityWindow(v.mean().item() + 1.0 * v.std().item(), v.mean().item() + 3 * v.std().item())
    plain = plan_epoch(bank, 32, builder="pool", window=target, seed=4, refine_passes=0)
    refined = plan_epoch(bank, 32, builder="pool", window=target, seed=4, refine_passes=8)
    assert sorted(flat(refined).tolist()) == list(range(bank.shape[0]))
    dist = [target.distance(p.values[:-1]).mean().item() for p in (plain, refined)]
    assert dist[1] < dist[0]
    assert refined.in_window_fraction >= plain.in_window_fraction


@pytest.mark.slow
@pytest.mark.parametrize("shift", [(-2.0, -0.5), (0.5, 2.0)])
def test_greedy_meets_a_shifted_window_on_minilm_wordnet_embeddings(shift):
    """Real anisotropic embeddings: a window 1.5σ wide, off random's centre (random hits ~30 %)."""
    from hf_divcl.data.wordnet import wordnet_pairs
    from hf_divcl.models.loading import load_sentence_transformer

    ds = wordnet_pairs("example", source="embedded")
    model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
    emb = model.encode(list(ds["anchor"]), convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False)
    rnd = plan_epoch(emb, 32, builder="random", seed=0).summary()
    window = DiversityWindow(rnd["metric_mean"] + shift[0] * rnd["metric_std"],
                             rnd["metric_mean"] + shift[1] * rnd["metric_std"])
    assert plan_epoch(emb, 32, builder="random", window=window, seed=0).in_window_fraction < 0.5
    plan = plan_epoch(emb, 32, builder="greedy", window=window, seed=0)
    assert plan.in_window_fraction >= 0.95, plan.summary()


def test_measure_batches_equals_measuring_the_gathered_batches(bank):
    from hf_divcl.diversity.window import measure_batches, measure_diversity

    index = torch.randperm(bank.shape[0], generator=torch.Generator().manual_seed(0))[: 40 * 32].view(40, 32)
    for metric in ("effective_rank", "mean_sq_cosine", "lambda_max"):
        assert torch.equal(measure_batches(bank.half(), index, metric, chunk=7),
                           measure_diversity(bank.half()[index], metric))


def test_greedy_checkpoints_add_up_to_the_exact_mean_squared_cosine(bank):
    from hf_divcl.diversity.window import measure_batches
    from hf_divcl.planning.context import PlanContext
    from hf_divcl.planning.greedy import GreedyBuilder

    rows = torch.arange(bank.shape[0])
    ctx = PlanContext(bank.half(), rows, 32, None, torch.Generator().manual_seed(0))
    members = torch.randperm(bank.shape[0], generator=torch.Generator().manual_seed(1))[: 10 * 32].view(10, 32)
    # pairs (i, j), j < i, split over checkpoints 0–5, 5–20, 20–32, sum to all pairs of each batch
    sums = sum(GreedyBuilder._exact_pair_sums(ctx, rows, members, t0, t1) for t0, t1 in [(0, 5), (5, 20), (20, 32)])
    torch.testing.assert_close(sums / (32 * 31 / 2), measure_batches(bank.half(), members, "mean_sq_cosine"))


def test_kmeans_fitted_on_a_sample_labels_every_row_deterministically():
    from hf_divcl.planning.sketch import kmeans

    x = F.normalize(clustered(n=5000, d=16, k=4, spread=0.1, seed=3), dim=-1)
    a = kmeans(x, 4, torch.Generator().manual_seed(0), iters=10, per_cluster=256)
    b = kmeans(x, 4, torch.Generator().manual_seed(0), iters=10, per_cluster=256)
    assert a.shape == (5000,) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 4


@pytest.mark.parametrize("shift", [(-2.0, -0.5), (0.5, 2.0)])
def test_greedy_without_refinement_meets_a_window_off_random_on_clustered_data(shift):
    """The greedy fill alone (no swap refinement) puts most batches in a window random batches rarely hit."""
    x = clustered(n=8192, d=48, k=64, seed=5)
    rnd = plan_epoch(x, 64, builder="random", seed=0).summary()
    window = DiversityWindow(rnd["metric_mean"] + shift[0] * rnd["metric_std"],
                             rnd["metric_mean"] + shift[1] * rnd["metric_std"])
    assert plan_epoch(x, 64, builder="random", window=window, seed=0).in_window_fraction < 0.5
    plan = plan_epoch(x, 64, builder="greedy", window=window, seed=0, refine_passes=0)
    assert plan.in_window_fraction >= 0.9, plan.summary()


@pytest.mark.parametrize("spelling", ["error", "raise"])
def test_both_spellings_of_on_infeasible_stop_with_the_measured_range(bank, spelling):
    with pytest.raises(ValueError, match=r"not achievable on this data .*range over"):
        plan_epoch(bank, 32, builder="greedy", window=DiversityWindow(31.5, 32.0), on_infeasible=spelling)
    with pytest.raises(ValueError, match=r"on_infeasible must be 'error' \(or its alias 'raise'\) or 'closest'"):
        plan_epoch(bank, 32, builder="greedy", window=DiversityWindow(31.5, 32.0), on_infeasible="ignore")
