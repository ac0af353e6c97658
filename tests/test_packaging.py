"""The wheel is self-contained: built from the project files, installed into an empty target (not the checkout),
it writes a model card from its packaged template and finds its packaged recipes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import hf_divcl
    from hf_divcl.publish.card import TEMPLATE_PATH, write_model_card
    from hf_divcl.cli.recipe_config import load_recipe_config

    site = Path(sys.argv[1]).resolve()
    assert Path(hf_divcl.__file__).resolve().is_relative_to(site), hf_divcl.__file__
    assert TEMPLATE_PATH.resolve().is_relative_to(site), TEMPLATE_PATH
    out = Path(sys.argv[2])
    out.mkdir()
    with (out / "diversity_log.jsonl").open("w") as fh:
        for step in (2, 4):
            fh.write(json.dumps({"step": step, "epoch": step / 10, "loss": 2.0, "divcl/effective_rank": 10.0 + step,
                                 "divcl/window_low": 9.0, "divcl/window_high": 13.0,
                                 "divcl/in_window_fraction": 0.5, "divcl/grad_norm_p10": 1.0,
                                 "divcl/grad_norm_p50": 2.0, "divcl/grad_norm_p90": 3.0}) + "\\n")
    readme = write_model_card(out, base_model="sentence-transformers/all-MiniLM-L6-v2", dataset="my pairs",
                              train_rows=100)
    cfg, args = load_recipe_config("text_wordnet", {"output_dir": str(out / "run")})
    print("CARD", readme, readme.stat().st_size, "RECIPE", cfg.task, args.max_steps)
""")


@pytest.mark.slow
def test_installed_wheel_writes_a_model_card_and_finds_its_recipes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("hf_divcl", "model_cards", "recipes"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("hf_divcl-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    assert (site / "hf_divcl" / "_resources" / "model_cards" / "divcl_model_card.md.jinja").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_DIVCL_CARD_TEMPLATE", None)
    run = subprocess.run([sys.executable, "-c", CHECK, str(site), str(tmp_path / "card")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    card = (tmp_path / "card" / "README.md").read_text()
    assert "diversity-window batches" in card and "](diversity_trajectory.png)" in card
    assert "my pairs" in card and (tmp_path / "card" / "gradient_bands.png").is_file()
    assert "RECIPE text" in run.stdout
