"""Sizing numbers quoted in the docs are the planners' own: recomputed here, so a change to a planner that moves
them fails until the docs say the new number."""

from pathlib import Path

from hf_divcl.batch_policy.explorer import explore_min_steps, plan_exploration
from hf_divcl.batch_policy.follower import plan_calibrations

DOCS = Path(__file__).resolve().parents[1] / "docs"


def first_steps(ok) -> int:
    return next(t for t in range(1, 20_000) if ok(t))


def progress_plan(total: int):
    return plan_calibrations(total_steps=total, steps_per_epoch=10**9, batch_size=32, train_rows=47_000,
                             probe_rows=64)


def test_progress_sizing_in_the_docs_matches_the_planner():
    one = first_steps(lambda t: bool(progress_plan(t).steps))
    eight = first_steps(lambda t: progress_plan(t).n_pairs == 8)
    assert f"under {one} steps at B = 32" in (DOCS / "usage.md").read_text()
    assert f"≥ {eight:,} steps at B = 32" in (DOCS / "results.md").read_text()


def test_explore_sizing_in_the_docs_matches_the_planner():
    need = explore_min_steps(32)
    assert all(plan_exploration(total_steps=t, batch_size=32, train_rows=47_000, probe_rows=256).max_blocks > 0
               for t in range(need, 4 * need))
    assert plan_exploration(total_steps=need - 1, batch_size=32, train_rows=47_000, probe_rows=256).max_blocks == 0
    for doc in (DOCS / "usage.md", DOCS.parent / "README.md"):
        assert f"at least {need:,} steps at B = 32" in " ".join(doc.read_text().split()), doc.name
