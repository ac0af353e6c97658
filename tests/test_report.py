"""The results table in docs/results.md is rendered from benchmarks/results/*.json and cannot drift from them."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_table_matches_the_result_files():
    mod = _report()
    assert mod.RESULTS_DOC == ROOT / "docs" / "results.md"
    assert mod.START in mod.RESULTS_DOC.read_text(encoding="utf-8"), "docs/results.md lost its results markers"
    assert mod.main(["--check"]) == 0, "run: python benchmarks/report.py --write"


def test_the_table_has_a_row_per_paired_result():
    mod = _report()
    table = mod.doc_table(mod.RESULTS_DOC.read_text(encoding="utf-8"))
    rows = mod.collect()
    assert rows and len(table.splitlines()) == len(rows) + 2


def test_an_interval_above_or_below_zero_is_marked():
    fmt = _report()._fmt
    assert fmt({"mean": 0.03, "ci95": [0.02, 0.04], "n": 8}).endswith("▲")
    assert fmt({"mean": -0.03, "ci95": [-0.04, -0.02], "n": 8}).endswith("▼")
    assert fmt({"mean": 0.01, "ci95": [-0.01, 0.03], "n": 8}) == "+0.0100 [-0.0100, +0.0300]"
    assert fmt({"mean": 0.01, "ci95": None, "n": 1}) == "+0.0100 (n = 1)"


def test_a_stale_table_is_caught(tmp_path):
    mod = _report()
    doc = tmp_path / "results.md"
    doc.write_text(f"x\n{mod.START}\n| old |\n{mod.END}\ny\n")
    assert mod.main(["--check", "--doc", str(doc)]) == 1
    assert mod.main(["--write", "--doc", str(doc)]) == 0
    assert mod.main(["--check", "--doc", str(doc)]) == 0
    assert doc.read_text().startswith("x\n") and doc.read_text().endswith("\ny\n")


def test_a_file_without_markers_is_refused(tmp_path):
    mod = _report()
    doc = tmp_path / "results.md"
    doc.write_text("no table here\n")
    assert mod.main(["--check", "--doc", str(doc)]) == 1
    assert mod.main(["--write", "--doc", str(doc)]) == 1
    assert doc.read_text() == "no table here\n"
