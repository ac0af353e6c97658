"""One CLI style: both flag spellings everywhere, `train --help` with descriptions and defaults without importing
transformers, data and key errors as one clear line before any heavy import, blamed on the right source."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from hf_divcl.cli.main import make_parser
from hf_divcl.cli.recipe_config import _parse_cli
from hf_divcl.cli.steps import run_cli as main

ROOT = Path(__file__).resolve().parents[1]

LIGHT = textwrap.dedent("""
    import sys
    from hf_divcl.cli.main import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit_:
        code = exit_.code
    heavy = [m for m in ("torch", "transformers", "sentence_transformers", "datasets") if m in sys.modules]
    print("EXIT", code, "HEAVY", heavy)
""")


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_train_help_describes_keys_with_defaults_without_importing_transformers():
    run = cli("train", "--help")
    assert "EXIT 0 HEAVY []" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout
    assert "--max_train_rows (default: 0)" in out and "Use at most this many training rows" in out
    assert "--builder (default: 'greedy')" in out and "Batch builder: greedy" in out  # DivCLTrainingArguments
    assert "--help-all" in out and "--max-steps" in out
    assert max(len(line) for line in out.splitlines()) <= 120


def test_wrong_column_is_one_line_before_heavy_imports(tmp_path):
    data = tmp_path / "pairs.tsv"
    data.write_text("query\tdoc\na cold day\tlow temperature\n")
    run = cli("train", "--data", str(data), "--anchor-column", "question", "--positive-column", "doc")
    assert "EXIT 2 HEAVY []" in run.stdout, run.stdout + run.stderr
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
    assert "has no column 'question' (anchor_column); its columns are ['query', 'doc']" in run.stderr


def test_override_typo_is_blamed_on_the_command_line_not_the_config(capsys):
    assert main(["--max_stepz", "3"], default_config=str(ROOT / "recipes" / "text_wordnet.yaml")) == 2
    err = capsys.readouterr().err
    assert "command line (--max_stepz): unknown key 'max_stepz'. Did you mean 'max_steps'" in err
    assert "text_wordnet.yaml" not in err


def test_both_flag_spellings_everywhere():
    assert _parse_cli(["--max-steps", "3", "--max_train_rows", "5"], None)[1] == {"max_steps": "3",
                                                                                 "max_train_rows": "5"}
    for flag in ("--batch-size", "--batch_size"):
        assert make_parser().parse_args(["diagnose", flag, "8"]).batch_size == 8
        assert make_parser().parse_args(["calibrate", flag, "8"]).batch_size == 8
