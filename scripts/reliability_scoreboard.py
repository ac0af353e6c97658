"""Run the reliability suite (tests/reliability/) and print — or write into docs/RELIABILITY.md — the scoreboard:
per category, how many faults and bad inputs were tried and how many were survived (the test's exact outcome held:
right error or recovery, nothing lost).

    .venv/bin/python scripts/reliability_scoreboard.py                 # print the table
    .venv/bin/python scripts/reliability_scoreboard.py --write         # and update docs/RELIABILITY.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RELIABILITY.md"
START, END = "<!-- scoreboard:start -->", "<!-- scoreboard:end -->"
CATEGORIES = {
    "test_crash_resume": "Crash and resume (SIGKILL, rank death)",
    "test_bank_storage": "Crash and resume (SIGKILL, rank death)",
    "test_determinism": "Determinism",
    "test_bad_data": "Bad data",
    "test_nonfinite": "NaN / Inf during training",
    "test_hostile_input": "Hostile input",
    "test_hub_faults": "Hub faults",
    "test_resources": "Resource limits",
}


def run_suite() -> tuple[dict[str, list[int]], float]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={xml}"], cwd=ROOT, check=False)
        seconds = time.monotonic() - t0
        tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # tried, survived
        for case in ET.parse(xml).getroot().iter("testcase"):
            module = case.get("classname", "").rsplit(".", 1)[-1]
            category = CATEGORIES.get(module, module)
            if case.find("skipped") is not None:
                continue
            tally[category][0] += 1
            tally[category][1] += case.find("failure") is None and case.find("error") is None
    return dict(tally), seconds


def table(tally: dict[str, list[int]], seconds: float) -> str:
    order = list(dict.fromkeys(CATEGORIES.values()))
    rows = ["| Category | Tried | Survived, nothing lost |", "|---|---:|---:|"]
    for cat in sorted(tally, key=lambda c: order.index(c) if c in order else len(order)):
        tried, ok = tally[cat]
        rows.append(f"| {cat} | {tried} | {ok} |")
    tried, ok = sum(v[0] for v in tally.values()), sum(v[1] for v in tally.values())
    rows.append(f"| **All** | **{tried}** | **{ok}** |")
    when = time.strftime("%Y-%m-%d")
    return "\n".join(rows) + (f"\n\nMeasured {when} by `python scripts/reliability_scoreboard.py --write` "
                              f"(suite wall time {seconds / 60:.1f} min on this machine).")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help=f"replace the scoreboard block in {DOC.relative_to(ROOT)}")
    a = p.parse_args()
    tally, seconds = run_suite()
    text = table(tally, seconds)
    print(text)
    if a.write:
        doc = DOC.read_text()
        if START not in doc or END not in doc:
            raise SystemExit(f"{DOC} has no {START} ... {END} block to update.")
        head, rest = doc.split(START, 1)
        DOC.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    return 0 if all(ok == tried for tried, ok in tally.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
