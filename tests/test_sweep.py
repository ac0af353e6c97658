"""Controlled-diversity batches: valid indices, deterministic, ordered from tight to spread."""

import pytest
import torch
import torch.nn.functional as F

from hf_divcl.diversity.levels import SweepLevel, default_levels, draw_level, parse_level
from hf_divcl.diversity.metrics import batch_diversity


@pytest.fixture
def clustered():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(12, 24, generator=gen)
    x = centres[torch.arange(600) % 12] + 0.6 * torch.randn(600, 24, generator=gen)
    return F.normalize(x, dim=-1)


@pytest.mark.parametrize("level", ["local:16", "local:100", "random", "spread:2", "spread:8"])
def test_batches_are_valid_index_sets(clustered, level):
    idx = draw_level(clustered, parse_level(level), 16, 10, torch.Generator().manual_seed(1))
    assert idx.shape == (10, 16) and idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < 600
    for row in idx:  # no row twice in a batch
        assert row.unique().numel() == 16


def test_same_seed_same_batches(clustered):
    a = draw_level(clustered, SweepLevel("spread", 4), 16, 5, torch.Generator().manual_seed(3))
    b = draw_level(clustered, SweepLevel("spread", 4), 16, 5, torch.Generator().manual_seed(3))
    c = draw_level(clustered, SweepLevel("spread", 4), 16, 5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_levels_order_diversity_from_tight_to_spread(clustered):
    gen = torch.Generator().manual_seed(2)
    erank = {}
    for name in ["local:16", "local:128", "random", "spread:8"]:
        idx = draw_level(clustered, parse_level(name), 16, 32, gen)
        erank[name] = batch_diversity(clustered[idx])["effective_rank"].mean().item()
    assert erank["local:16"] < erank["local:128"] < erank["random"] < erank["spread:8"], erank


def test_default_levels_cover_tight_random_and_spread():
    names = [lv.name for lv in default_levels(1000, 64)]
    assert names == ["local:64", "local:128", "local:256", "local:512", "random", "spread:2", "spread:4",
                     "spread:8"]


@pytest.mark.parametrize("bad", ["local", "local:x", "spread:0", "uniform", "random:3"])
def test_bad_level_names_are_rejected(bad):
    with pytest.raises(ValueError, match="Bad sweep level"):
        parse_level(bad)


def test_batch_larger_than_data_is_rejected(clustered):
    with pytest.raises(ValueError, match=r"batch_size must be in \[2, 600\]"):
        draw_level(clustered, SweepLevel("random"), 601, 1, torch.Generator())
