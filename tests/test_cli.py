"""One CLI style: one parser for every command (both flag spellings, YAML underneath the flags), `train --help` with
descriptions and defaults from the dataclass metadata, data and key errors as one clear line before torch or
sentence-transformers load, blamed on the right source."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from hf_divcl.cli.main import PushConfig, command_parser
from hf_divcl.cli.parser import parse_config
from hf_divcl.cli.steps import run_cli as main

ROOT = Path(__file__).resolve().parents[1]

LIGHT = textwrap.dedent("""
    import sys
    from hf_divcl.cli.main import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit_:
        code = exit_.code
    heavy = [m for m in ("torch", "sentence_transformers", "datasets") if m in sys.modules]
    print("EXIT", code, "HEAVY", heavy)
""")


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_train_help_describes_keys_with_defaults_from_the_dataclasses():
    run = cli("train", "--help")
    assert "EXIT 0" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout
    assert "--max_train_rows (default: 0)" in out and "Use at most this many training rows" in out
    assert "--batch_policy (default: 'random')" in out and "How batches are chosen: 'random'" in out  # DivCL args
    assert "--help-all" in out and "--max-steps" in out
    assert "--diversity_log_file (default: 'diversity_log.jsonl')" in out  # the value, not the constant's name
    assert "--learning_rate (default" not in out  # inherited TrainingArguments keys only with --help-all
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


def test_both_flag_spellings_everywhere(tmp_path):
    from hf_divcl.cli.recipe_config import load_recipe_config

    cfg, args = load_recipe_config(None, argv=["--max-steps", "3", "--max_train_rows", "5"])
    assert (args.max_steps, cfg.max_train_rows) == (3, 5)
    for command in ("diagnose", "calibrate"):
        from hf_divcl.cli.main import _config_classes

        cls = _config_classes()[command][0]
        for flag in ("--batch-size", "--batch_size"):
            assert parse_config(command_parser(command), [cls], [flag, "8"])[0].batch_size == 8


def test_every_command_reads_yaml_underneath_its_flags(tmp_path):
    cfg_file = tmp_path / "push.yaml"
    cfg_file.write_text("output_dir: out\nrepo_id: me/model\nprivate: true\nmessage: from yaml\n")
    (cfg,) = parse_config(command_parser("push"), [PushConfig], ["--config", str(cfg_file), "--message", "flag"])
    assert (cfg.output_dir, cfg.repo_id, cfg.private, cfg.message) == ("out", "me/model", True, "flag")
    run = cli("push", "--config", str(cfg_file), "--privat", "true")
    assert "EXIT 2" in run.stdout and "unknown key 'privat'. Did you mean 'private'" in run.stderr, run.stderr


def test_none_unsets_an_optional_key_on_the_command_line():
    from hf_divcl.cli.recipe_config import load_recipe_config

    _, args = load_recipe_config("text_wordnet", argv=["--image_size", "4"])
    assert args.image_size == 4
    _, args = load_recipe_config(None, {"image_size": 4}, argv=["--image-size", "none"])
    assert args.image_size is None


def test_once_the_keys_are_known_typos_and_bad_values_fail_before_torch_loads(tmp_path):
    """The first full parse remembers the keys (in the cache, stamped with the installed versions and sources); after
    that an unknown key or a value of the wrong type is one line, with suggestions, before torch is imported."""
    import os

    env = {**os.environ, "HF_DIVCL_CACHE": str(tmp_path / "cache")}

    def light(*argv):
        return subprocess.run([sys.executable, "-c", LIGHT, "train", *argv], capture_output=True, text=True,
                              timeout=120, cwd=ROOT, env=env)

    cold = light("--max_stepz", "3")  # no cache yet: the full parse reports it, after the heavy imports
    assert "EXIT 2" in cold.stdout and "HEAVY []" not in cold.stdout
    warm_up = subprocess.run([sys.executable, "-c", "from hf_divcl.cli.recipe_config import parse_recipe_args; "
                              "parse_recipe_args(['--max_steps', '3'], 'text_wordnet')"], capture_output=True,
                             text=True, timeout=120, cwd=ROOT, env=env)
    assert warm_up.returncode == 0, warm_up.stderr[-2000:]
    assert list((tmp_path / "cache" / "recipe_keys").glob("*.json"))
    for argv, message in ((["--max_stepz", "3"], "command line (--max_stepz): unknown key 'max_stepz'. Did you "
                                                 "mean 'max_steps'"),
                          (["--max-steps", "many"], "command line (--max_steps): invalid int value: 'many'."),
                          (["--image_size", "none", "--learning_rate", "fast"],
                           "command line (--learning_rate): invalid float value: 'fast'.")):
        run = light("--config", "text_wordnet", *argv)
        assert "EXIT 2 HEAVY []" in run.stdout, run.stdout + run.stderr
        assert message in run.stderr and run.stderr.strip().count("\n") == 0, run.stderr
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("max_steps: 3\nlearning_rat: 0.001\n")
    run = light("--config", str(bad_yaml))
    assert "EXIT 2 HEAVY []" in run.stdout and "unknown key 'learning_rat'. Did you mean 'learning_rate'" in run.stderr


def test_report_to_none_means_no_integration_not_a_missing_value():
    from hf_divcl.cli.recipe_config import load_recipe_config

    _, args = load_recipe_config(None, argv=["--report_to", "none"])
    assert args.report_to == []
