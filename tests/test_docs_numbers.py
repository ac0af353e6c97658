"""Numbers quoted in the docs are the planners' own, recomputed here, so a change to a planner that moves them fails
until the docs say the new number; and the README stays a short front door that quotes no statistics."""

import re
from pathlib import Path

from hf_divcl.experimental.explore_plan import explore_min_steps, plan_exploration
from hf_divcl.experimental.follower import plan_calibrations

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def _text(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8").split())


def first_steps(ok) -> int:
    return next(t for t in range(1, 20_000) if ok(t))


def progress_plan(total: int):
    return plan_calibrations(total_steps=total, steps_per_epoch=10**9, batch_size=32, train_rows=47_000,
                             probe_rows=64)


def test_progress_sizing_in_the_docs_matches_the_planner():
    one = first_steps(lambda t: bool(progress_plan(t).steps))
    eight = first_steps(lambda t: progress_plan(t).n_pairs == 8)
    assert f"under {one} steps at B = 32" in _text(DOCS / "usage.md")
    assert f"≥ {eight:,} steps at B = 32" in _text(DOCS / "results.md")


def test_explore_sizing_in_the_docs_matches_the_planner():
    need = explore_min_steps(32)
    assert all(plan_exploration(total_steps=t, batch_size=32, train_rows=47_000, probe_rows=256).max_blocks > 0
               for t in range(need, 4 * need))
    assert plan_exploration(total_steps=need - 1, batch_size=32, train_rows=47_000, probe_rows=256).max_blocks == 0
    for doc in (DOCS / "usage.md", DOCS / "results.md"):
        assert f"at least {need:,} steps at B = 32" in _text(doc), doc.name


def _code_blocks(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first line, last line, language) of every fenced block, 1-based line numbers of the fences."""
    blocks, start, lang = [], None, ""
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start, lang = number, line[3:].strip()
            else:
                blocks.append((start, number, lang))
                start = None
    assert start is None, f"README.md: the code block opened on line {start} is never closed"
    return blocks


def test_readme_is_a_short_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; it is the front door (≤ 150), details go to docs/"
    blocks = _code_blocks(lines)
    start, end, lang = blocks[0]
    first = [line.split("#")[0].strip() for line in lines[start:end - 1]]
    assert lang == "bash" and first == ["bash scripts/run.sh", "bash scripts/test.sh"], lines[start - 1:end]
    quick = [(s, e) for s, e, lang in blocks if lang == "python" and e <= 40]
    assert quick, "README.md: no Python quick start within the first 40 lines"
    s, e = quick[0]
    code = "\n".join(lines[s:e - 1])
    assert e - s - 1 <= 15 and "DivCLTrainer(" in code and ".train()" in code, code
    cli = [(s, e) for s, e, lang in blocks if lang == "bash" and e <= 40 and "hf-divcl train" in "\n".join(lines[s:e])]
    assert cli, "README.md: no hf-divcl train command within the first 40 lines"


def test_readme_quotes_no_benchmark_numbers():
    text = README.read_text(encoding="utf-8")
    assert "results:start" not in text, "the results table lives in docs/results.md"
    statistic = re.compile(r"(?<![\w.])[+−-]\d+\.\d+|\[\s*[+−-]?\d+\.\d+\s*,|\d+(\.\d+)?\s?%|\d+ of \d+ (seeds|runs)")
    found = [m.group(0) for m in statistic.finditer(text)]
    assert not found, f"README.md quotes statistics {found}: they belong in docs/results.md"
