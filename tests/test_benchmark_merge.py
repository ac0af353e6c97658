"""benchmarks/_merge.py: result files made apart join only when their settings agree and no run repeats."""

import json

import pytest


def _write(path, config, runs):
    path.write_text(json.dumps({"config": config, "runs": runs}))
    return str(path)


def test_files_join_when_only_the_allowed_settings_differ(load_benchmark, tmp_path):
    merge = load_benchmark("_merge")
    a = _write(tmp_path / "a.json", {"steps": 80, "seeds": [0]}, [{"policy": "random", "seed": 0}])
    b = _write(tmp_path / "b.json", {"steps": 80, "seeds": [1], "merged_from": ["x.json", "y.json"]},
               [{"policy": "random", "seed": 1}])
    parts, runs = merge.read_parts([a, b], ("seeds", "merged_from"), {"policy": "policy", "seed": "seed"})
    assert [r["seed"] for r in runs] == [0, 1] and len(parts) == 2
    assert merge.merged_from([a, b], parts) == [a, "x.json", "y.json"]


def test_other_settings_or_a_repeated_run_are_refused(load_benchmark, tmp_path):
    merge = load_benchmark("_merge")
    key = {"policy": "policy", "seed": "seed"}
    a = _write(tmp_path / "a.json", {"steps": 80, "seeds": [0]}, [{"policy": "random", "seed": 0}])
    b = _write(tmp_path / "b.json", {"steps": 120, "seeds": [1]}, [{"policy": "random", "seed": 1}])
    with pytest.raises(SystemExit, match=r"b\.json: other settings than .*a\.json \(steps\); only seeds may differ"):
        merge.read_parts([a, b], ("seeds",), key)
    with pytest.raises(SystemExit, match=r"share \(policy, seed\) runs"):
        merge.read_parts([a, a], ("seeds",), key)


def test_a_field_older_runs_lack_comes_from_their_files_setting(load_benchmark, tmp_path):
    """Runs written before they recorded their τ take their file's; a run that has it keeps its own, and the same
    (arm, seed) at two τ is two runs, not a repeat."""
    merge = load_benchmark("_merge")
    a = _write(tmp_path / "a.json", {"temperature": 0.05}, [{"arm": "divcl", "seed": 0}])
    b = _write(tmp_path / "b.json", {"temperature": 0.1}, [{"arm": "divcl", "seed": 0, "temperature": 0.1}])
    _, runs = merge.read_parts([a, b], ("temperature",), {"arm": "arm", "temperature": "temperature", "seed": "seed"},
                               from_config={"temperature": "temperature"})
    assert [r["temperature"] for r in runs] == [0.05, 0.1]
    c = _write(tmp_path / "c.json", {"temperature": 0.05}, [{"arm": "divcl", "seed": 0}])
    with pytest.raises(SystemExit, match=r"share \(arm, temperature, seed\) runs"):
        merge.read_parts([a, c], ("temperature",), {"arm": "arm", "temperature": "temperature", "seed": "seed"},
                         from_config={"temperature": "temperature"})
