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


def _run(arm: str, tau: float, seed: int, score: float) -> dict:
    values = {"ndcg@10/source_mean": score, "ndcg@10/pooled": score / 2}
    return {"arm": arm, "temperature": tau, "seed": seed, "final": values, "auc": dict(values)}


def test_each_arm_is_compared_at_its_own_best_tau(load_benchmark):
    """mixed is best at τ = 0.05 (bracketed), single at 0.1 (the sweep's edge); mixed − single pairs mixed@0.05
    with single@0.1 on the seeds both have there, not the two arms at one τ."""
    bench = load_benchmark("multi_source")
    runs = [_run("mixed", 0.03, s, 0.50 + s / 100) for s in range(3)]
    runs += [_run("mixed", 0.05, s, 0.60 + s / 100) for s in range(8)]
    runs += [_run("mixed", 0.1, s, 0.55) for s in range(3)]
    runs += [_run("single", 0.05, s, 0.40) for s in range(8)]
    runs += [_run("single", 0.1, s, 0.45 + s / 50) for s in range(3)]
    best = bench.best_tau(runs)["ndcg@10/source_mean"]
    assert best["arms"]["mixed"]["tau"] == 0.05 and not best["arms"]["mixed"]["at_edge"]
    assert best["arms"]["mixed"]["common_seeds"] == [0, 1, 2]
    assert best["arms"]["mixed"]["final_by_tau"]["0.05"] == pytest.approx(0.61)
    assert best["arms"]["mixed"]["final_mean"] == pytest.approx(0.635)  # all 8 seeds at its best τ
    assert best["arms"]["single"]["tau"] == 0.1 and best["arms"]["single"]["at_edge"]
    assert best["arms"]["single"]["swept"]
    assert not bench.best_tau(runs[3:11])["ndcg@10/pooled"]["arms"]["mixed"]["swept"]  # mixed at τ = 0.05 only
    pair = best["paired"]["mixed - single"]
    assert pair["taus"] == [0.05, 0.1] and pair["seeds"] == [0, 1, 2]
    diffs = [0.60 + s / 100 - (0.45 + s / 50) for s in range(3)]
    assert pair["final"]["n"] == 3 and pair["final"]["mean"] == pytest.approx(sum(diffs) / 3)
    assert "single - mixed" not in best["paired"]  # the mirror is left out
    assert bench.best_tau(runs)["ndcg@10/pooled"]["arms"]["single"]["tau"] == 0.1
