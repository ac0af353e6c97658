"""Dataclass configs from YAML and flags: precedence, unknown keys, safe parsing."""

import pytest

from hf_divcl.cli.diagnose import DiagnoseConfig
from hf_divcl.cli.parser import config_parser, parse_config


def parse(argv):
    (cfg,) = parse_config(config_parser(DiagnoseConfig), [DiagnoseConfig], argv)
    return cfg


def test_defaults_then_yaml_then_flags(tmp_path):
    assert parse([]) == DiagnoseConfig()
    cfg_file = tmp_path / "d.yaml"
    cfg_file.write_text("batch_size: 16\ntemperatures: [0.2, 0.3]\nmax-pairs: 100\n")
    cfg = parse(["--config", str(cfg_file), "--batch-size", "8"])
    assert cfg.batch_size == 8 and cfg.temperatures == [0.2, 0.3] and cfg.max_pairs == 100


def test_list_and_optional_flags():
    cfg = parse(["--temperatures", "0.01", "1", "--levels", "local:64", "random", "--plot", "x.png"])
    assert cfg.temperatures == [0.01, 1.0] and cfg.levels == ["local:64", "random"] and cfg.plot == "x.png"


def test_unknown_yaml_key_fails_with_valid_keys(tmp_path):
    cfg_file = tmp_path / "d.yaml"
    cfg_file.write_text("batch_sise: 16\n")
    with pytest.raises(ValueError, match=r"d.yaml: unknown key 'batch_sise'. Did you mean 'batch_size'"):
        parse(["--config", str(cfg_file)])


def test_yaml_cannot_construct_python_objects(tmp_path):
    cfg_file = tmp_path / "evil.yaml"
    cfg_file.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(Exception, match="python/object"):
        parse(["--config", str(cfg_file)])


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 1}, "batch_size must be >= 2"),
    ({"temperatures": [0.1, 0.0]}, "temperatures must be finite numbers > 0"),
    ({"max_pairs": 10, "batch_size": 32}, r"max_pairs \(10\) must be at least batch_size"),
    ({"levels": ["local:x"]}, "Bad sweep level"),
])
def test_invalid_values_fail_early(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiagnoseConfig(**kwargs)
