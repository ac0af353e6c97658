"""`hf-divcl diagnose`: measured vs predicted gradients, the diversity sweep, report, plot, JSON, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hf_divcl.cli.diagnose import DiagnoseConfig, diagnose_embeddings, format_report, plot_report
from hf_divcl.cli.main import main


def synthetic_pairs(n=800, d=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, d, generator=gen)
    u = centres[torch.arange(n) % 10] + 0.7 * torch.randn(n, d, generator=gen)
    return u, u + 0.5 * torch.randn(n, d, generator=gen)


def test_report_on_embeddings_is_exact_and_consistent(tmp_path):
    u, v = synthetic_pairs()
    cfg = DiagnoseConfig(batch_size=16, n_batches=8, max_pairs=800, temperatures=[0.05, 0.5])
    rep = diagnose_embeddings(u, v, cfg, model_name="synthetic", data_label="clusters", progress=False)
    for tau in ("0.05", "0.5"):
        s = rep.random_bands[tau]
        assert s["max_rel_err_exact_vs_autograd"] < 1e-8
        assert s["inside_fraction"] == 1.0
        assert s["lower_mean"] <= s["grad_norm_mean"] <= s["upper_mean"]
        assert s["measured_grad_norm_mean"] == pytest.approx(s["grad_norm_mean"], rel=1e-10)
    # the sweep is sorted by diversity and spans tight neighbourhoods to spread batches
    ranks = [r["effective_rank"] for r in rep.sweep]
    assert ranks == sorted(ranks)
    assert {r["level"] for r in rep.sweep} >= {"local:16", "random", "spread:2"}
    assert ranks[0] < rep.random_diversity["effective_rank"] < ranks[-1]
    for r in rep.sweep:
        assert r["tau=0.05"]["inside_fraction"] == 1.0
    for tau, peak in rep.peaks.items():
        best = max(r[f"tau={tau}"]["grad_norm_mean"] for r in rep.sweep)
        assert peak["grad_norm_mean"] == best and peak["max_over_min"] >= 1.0
    text = format_report(rep)
    assert "Random batches (B = 16, 8 batches)" in text and "strongest gradients at" in text
    png = plot_report(rep, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(rep.to_dict())  # serialisable


def test_cli_diagnose_with_tiny_model_on_a_local_file(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "pairs.tsv"
    rows = [f"word{i} alpha{i % 7}\tdefinition number {i} about topic {i % 5}" for i in range(80)]
    data.write_text("anchor\tpositive\n" + "\n".join(rows) + "\n")
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["diagnose", "--quiet", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "8",
               "--n-batches", "4", "--max-pairs", "64", "--temperatures", "0.1", "0.5",
               "--output-json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "hf-divcl diagnose" in printed and "64 pairs, d = 32" in printed
    rep = json.loads(out_json.read_text())
    assert rep["n_pairs"] == 64 and rep["dim"] == 32 and set(rep["random_bands"]) == {"0.1", "0.5"}
    assert rep["random_bands"]["0.1"]["max_rel_err_exact_vs_autograd"] < 1e-8
    assert out_png.stat().st_size > 1000


@pytest.mark.parametrize("content,match", [
    ("anchor\tpositive\nhello\tworld\n \tsecond\n", r"row 1, column 'anchor' is empty"),
    ("anchor\tother\nhello\tworld\n", r"has no column\(s\) \['positive'\]"),
])
def test_cli_diagnose_names_bad_rows_and_columns(tiny_model_dir, tmp_path, capsys, content, match):
    data = tmp_path / "bad.tsv"
    data.write_text(content)
    rc = main(["diagnose", "--quiet", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "2",
               "--max-pairs", "2"])
    assert rc == 2
    import re

    assert re.search(match, capsys.readouterr().err)


def test_cli_reports_missing_model_clearly(tmp_path, capsys):
    rc = main(["diagnose", "--quiet", "--model", str(tmp_path / "nope"), "--batch-size", "4", "--max-pairs", "8"])
    assert rc == 2
    assert "Could not load model" in capsys.readouterr().err


def test_cli_help_is_fast_and_lists_diagnose():
    out = subprocess.run([sys.executable, "-m", "hf_divcl.cli.main", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "diagnose" in out


@pytest.mark.slow
def test_diagnose_real_minilm_on_embedded_wordnet(tmp_path):
    """The default model and data: exact gradients on real embeddings, bands hold for every anchor."""
    from hf_divcl.cli.diagnose import run_diagnose

    cfg = DiagnoseConfig(max_pairs=400, batch_size=32, n_batches=8, output_json=str(tmp_path / "r.json"))
    rep = run_diagnose(cfg, progress=False)
    assert rep.dim == 384 and rep.n_pairs == 400
    assert "WordNet" in rep.data
    for tau in ("0.05", "0.1", "0.5"):
        assert rep.random_bands[tau]["max_rel_err_exact_vs_autograd"] < 1e-8
        assert rep.random_bands[tau]["inside_fraction"] == 1.0
    for row in rep.sweep:
        assert all(row[f"tau={t}"]["inside_fraction"] == 1.0 for t in ("0.05", "0.1", "0.5"))
    # real sentence embeddings are anisotropic: random batches sit well below full rank
    assert 1 < rep.random_diversity["effective_rank"] < 32


@pytest.mark.slow
def test_spectral_cost_benchmark_smoke(tmp_path):
    out = tmp_path / "cost.json"
    subprocess.run([sys.executable, "benchmarks/spectral_cost.py", "--smoke", "--output", str(out)], check=True,
                   capture_output=True, text=True)
    res = json.loads(out.read_text())["results"][0]
    assert res["batch_size"] == 16 and res["step_seconds"] > 0 and res["diagnostics_seconds"] > 0


def test_cli_calibrate_with_tiny_model(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "pairs.csv"
    rows = [f"word{i} alpha{i % 7},definition {i} topic {i % 5}" for i in range(120)]
    data.write_text("anchor,positive\n" + "\n".join(rows) + "\n")
    out = tmp_path / "cal.json"
    rc = main(["calibrate", "--quiet", "--model", tiny_model_dir, "--data", str(data), "--batch-size", "8",
               "--n-batches", "4", "--temperatures", "0.05", "0.5", "--output-json", str(out),
               "--plot", str(tmp_path / "cal.png")])
    assert rc == 0
    assert "window: effective_rank in" in capsys.readouterr().out
    res = json.loads(out.read_text())["results"]
    assert [r["temperature"] for r in res] == [0.05, 0.5]
    for r in res:
        assert 1 <= r["window"]["low"] <= r["window"]["high"] <= 8
    assert (tmp_path / "cal_tau0.05.png").exists() and (tmp_path / "cal_tau0.5.png").exists()
