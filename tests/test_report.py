"""The results table in docs/results.md is rendered from benchmarks/results/*.json and cannot drift from them."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(load_benchmark):
    return load_benchmark("report")


def test_results_table_matches_the_result_files(report):
    assert report.RESULTS_DOC == ROOT / "docs" / "results.md"
    assert report.START in report.RESULTS_DOC.read_text(encoding="utf-8"), "docs/results.md lost its results markers"
    assert report.main(["--check"]) == 0, "run: python benchmarks/report.py --write"


def test_the_table_has_a_row_per_paired_result(report):
    table = report.doc_table(report.RESULTS_DOC.read_text(encoding="utf-8"))
    rows = report.collect()
    assert rows and len(table.splitlines()) == len(rows) + 4  # the correction's note, a blank line, the header


def test_a_significant_difference_is_marked_with_its_sign(report):
    fmt = report._fmt
    assert fmt({"mean": 0.03, "ci95": [0.02, 0.04], "n": 8}, True).endswith("▲")
    assert fmt({"mean": -0.03, "ci95": [-0.04, -0.02], "n": 8}, True).endswith("▼")
    assert fmt({"mean": 0.03, "ci95": [0.02, 0.04], "n": 8}) == "+0.0300 [+0.0200, +0.0400]"
    assert fmt({"mean": 0.01, "ci95": None, "n": 1}) == "+0.0100 (n = 1)"


def test_p_values_are_recovered_from_the_stored_t_interval(report):
    """The benchmarks store a Student-t 95 % interval: its p-value is exactly 0.05 when the interval touches zero."""
    from scipy import stats

    p = report.p_value
    n, se = 8, 0.01
    half = stats.t.ppf(0.975, n - 1) * se
    assert abs(p({"mean": half, "ci95": [0.0, 2 * half], "n": n}) - 0.05) < 1e-12
    assert p({"mean": 0.0, "ci95": [-half, half], "n": n}) == 1.0
    assert p({"mean": 0.01, "ci95": None, "n": 1}) is None


def test_holm_corrects_over_the_whole_family(report):
    holm = report.holm
    # three p-values at 0.02: each significant alone, none after the correction (0.02 > 0.05 / 3)
    assert holm([0.02, 0.02, 0.02]) == [False, False, False]
    # step-down: 0.001 < 0.05/4, 0.013 < 0.05/3, 0.03 > 0.05/2 stops the rest; untested entries never count
    assert holm([0.03, 0.001, None, 0.013, 0.04]) == [False, True, False, True, False]


def test_the_table_marks_fewer_rows_than_its_uncorrected_intervals_would(report):
    rows = report.collect()
    uncorrected = sum(1 for r in rows if r["final"] and r["final"].get("ci95")
                      and (r["final"]["ci95"][0] > 0 or r["final"]["ci95"][1] < 0))
    corrected = sum(report.holm([report.p_value(r["final"]) for r in rows]))
    assert 0 < corrected < uncorrected


def test_a_stale_table_is_caught(report, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(f"x\n{report.START}\n| old |\n{report.END}\ny\n")
    assert report.main(["--check", "--doc", str(doc)]) == 1
    assert report.main(["--write", "--doc", str(doc)]) == 0
    assert report.main(["--check", "--doc", str(doc)]) == 0
    assert doc.read_text().startswith("x\n") and doc.read_text().endswith("\ny\n")


def test_a_file_without_markers_is_refused(report, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("no table here\n")
    assert report.main(["--check", "--doc", str(doc)]) == 1
    assert report.main(["--write", "--doc", str(doc)]) == 1
    assert doc.read_text() == "no table here\n"
