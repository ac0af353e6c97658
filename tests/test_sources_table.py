"""benchmarks/sources_table.py: every number it prints carries a citation that resolves to that number in the file."""

from pathlib import Path

import pytest
from test_docs_claims import citation_errors

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("name", ["multi_source_main.json", "multi_source_tau.json", "mined_negatives.json",
                                  "mined_negatives_tau.json"])
def test_printed_tables_cite_their_numbers(load_benchmark, name):
    table = load_benchmark("sources_table")
    path = RESULTS / name
    text = table.multi_source(path) if name.startswith("multi_source") else table.mined(path)
    cited = text.count("<!--")
    assert cited >= 10, text  # the tables are there, not empty
    assert citation_errors(text) == []
