"""benchmarks/multi_source.py's data: four WordNet sources, split by synset, non-empty (the data only; no training)."""

from pathlib import Path

import pytest

from hf_divcl.data.wordnet_files import WORDNET_ROOT


@pytest.mark.slow
@pytest.mark.skipif(not Path(WORDNET_ROOT, "data.noun").is_file(), reason="Debian wordnet-base not installed")
def test_multi_source_data_is_split_by_synset(load_benchmark):
    bench = load_benchmark("multi_source")
    train, heldout, info = bench.build_sources(rows_per_source=300, heldout_per_source=50)
    assert list(train) == list(heldout) == list(bench.SOURCES)

    def synsets(ds):
        return set(ds["anchor_synset"]) | set(ds["positive_synset"])

    train_synsets = set().union(*(synsets(ds) for ds in train.values()))
    held_synsets = set().union(*(synsets(ds) for ds in heldout.values()))
    assert not train_synsets & held_synsets  # no synset on both sides, in any source
    train_texts = {t.lower() for ds in train.values() for col in ("anchor", "positive") for t in ds[col]}
    held_targets = {t.lower() for ds in heldout.values() for t in ds["positive"]}
    assert not train_texts & held_targets  # a held-out target is never a training text
    assert not {t.lower() for ds in heldout.values() for t in ds["anchor"]} & held_targets
    pairs = [(a.lower(), p.lower()) for ds in train.values() for a, p in zip(ds["anchor"], ds["positive"], strict=True)]
    assert len(set(pairs)) == len(pairs)  # no training pair twice
    for name in bench.SOURCES:
        assert len(train[name]) == info[name]["train_rows"] == 300
        assert len(heldout[name]) == info[name]["heldout_rows"] == 50
        assert all(a.strip() and p.strip() and a != p for a, p in zip(train[name]["anchor"], train[name]["positive"],
                                                                       strict=True))
    hyper = train["hypernym_gloss"]
    assert all(a != p for a, p in zip(hyper["anchor_synset"], hyper["positive_synset"], strict=True))
