"""``hf-divcl diagnose``: how diverse are a model's batches on your data, and what does that do to the gradient?

Steps: load pairs → embed anchors and positives (progress bar) → on random batches, compare the InfoNCE
gradient norm measured by autograd with the exact formula and the analytic bands → sweep batches from low to
high diversity and report the mean gradient norm at each temperature → optional plot and JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..diversity.bands import gradient_bands, infonce_loss
from ..diversity.levels import default_levels, draw_level, parse_level
from ..diversity.metrics import DIVERSITY_METRICS, batch_diversity
from ..models.embed import PairEmbeddingConfig, check_temperatures, embed_pairs
from ..publish.plots import pyplot, save_figure

__all__ = ["DiagnoseConfig", "DiagnoseReport", "diagnose_embeddings", "format_report", "run_diagnose"]


@dataclass
class DiagnoseConfig(PairEmbeddingConfig):
    """Configuration of ``hf-divcl diagnose`` (every field is also a ``--flag`` and a YAML key)."""

    batch_size: int = field(default=64, metadata={"help": "Training batch size B to diagnose."})
    n_batches: int = field(default=32, metadata={"help": "Batches drawn per diversity level."})
    temperatures: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.5], metadata={
        "help": "Temperatures τ to analyse (MultipleNegativesRankingLoss's default scale 20 is τ = 0.05)."})
    levels: list[str] | None = field(default=None, metadata={
        "help": "Diversity levels of the sweep, e.g. local:64 local:256 random spread:4 (default: automatic)."})
    plot: str | None = field(default=None, metadata={"help": "Write a PNG of gradient norm vs diversity here."})
    output_json: str | None = field(default=None, metadata={"help": "Write the full report as JSON here."})

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (in-batch negatives need two rows), got {self.batch_size}.")
        if self.n_batches < 1:
            raise ValueError(f"n_batches must be >= 1, got {self.n_batches}.")
        if self.max_pairs < self.batch_size:
            raise ValueError(f"max_pairs ({self.max_pairs}) must be at least batch_size ({self.batch_size}).")
        check_temperatures(self.temperatures)
        if self.levels:
            for lv in self.levels:
                parse_level(lv)


@dataclass
class DiagnoseReport:
    """Everything ``diagnose`` measured; ``to_dict()`` is what ``--output-json`` writes."""

    model: str
    data: str
    n_pairs: int
    dim: int
    batch_size: int
    n_batches: int
    embed_seconds: float
    random_diversity: dict[str, float]
    random_bands: dict[str, dict[str, float]]  # τ → summary
    sweep: list[dict[str, Any]]  # one row per level
    peaks: dict[str, dict[str, Any]]  # τ → level with the largest mean gradient norm

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _autograd_norms(u: torch.Tensor, v: torch.Tensor, tau: float) -> torch.Tensor:
    """‖∂ℓ_i/∂u_i‖ by backpropagating the InfoNCE loss to the unit anchors, ``(R, B)``."""
    u = u.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(infonce_loss(u, v, tau, normalize=False).sum(), u)
    return g.norm(dim=-1)


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    return x.mean().item(), (x.std().item() if x.numel() > 1 else 0.0)


def diagnose_embeddings(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    cfg: DiagnoseConfig,
    *,
    model_name: str = "",
    data_label: str = "",
    embed_seconds: float = 0.0,
    progress: bool = True,
) -> DiagnoseReport:
    """Run the analysis on already computed ``(N, d)`` embeddings (float64 inside)."""
    from tqdm.auto import tqdm

    u_all = torch.nn.functional.normalize(anchors.double(), dim=-1)
    v_all = torch.nn.functional.normalize(positives.double(), dim=-1)
    n, d = u_all.shape
    b = cfg.batch_size
    gen = torch.Generator(device=u_all.device).manual_seed(cfg.seed)

    # 1. random batches: diversity, and measured (autograd) vs exact vs bands
    idx = draw_level(u_all, parse_level("random"), b, cfg.n_batches, gen)
    u, v = u_all[idx], v_all[idx]  # (R, B, d)
    div = batch_diversity(u)
    random_div = {}
    for key in DIVERSITY_METRICS:
        random_div[key], random_div[key + "_std"] = _mean_std(div[key])
    random_bands = {}
    for tau in cfg.temperatures:
        bands = gradient_bands(u, v, tau)
        measured = _autograd_norms(u, v, tau)
        summary = bands.summary()
        summary["measured_grad_norm_mean"] = measured.mean().item()
        # Anchors whose gradient is zero up to rounding (a fully collapsed batch) have no meaningful relative
        # error; they are counted, and the relative error is taken over the others.
        floor = 1e-10 * bands.scale
        ok = measured > floor
        err = (bands.grad_norm - measured).abs()
        summary["max_rel_err_exact_vs_autograd"] = (err[ok] / measured[ok]).max().item() if bool(ok.any()) else 0.0
        summary["max_abs_err_exact_vs_autograd"] = err.max().item()
        summary["zero_gradient_anchors"] = int((~ok).sum())
        random_bands[f"{tau:g}"] = summary

    # 2. sweep from low to high diversity
    levels = [parse_level(s) for s in cfg.levels] if cfg.levels else default_levels(n, b)
    sweep = []
    for level in tqdm(levels, desc="diversity sweep", disable=not progress):
        idx = draw_level(u_all, level, b, cfg.n_batches, gen)
        u, v = u_all[idx], v_all[idx]
        div = batch_diversity(u)
        row: dict[str, Any] = {"level": level.name}
        for key in ("effective_rank", "participation_ratio", "lambda_max", "mean_sq_cosine"):
            row[key] = div[key].mean().item()
        for tau in cfg.temperatures:
            bands = gradient_bands(u, v, tau, validate=False)
            s = bands.summary()
            row[f"tau={tau:g}"] = {k: s[k] for k in ("grad_norm_mean", "lower_mean", "upper_mean",
                                                     "spectral_lower_mean", "spectral_upper_mean",
                                                     "inside_fraction", "p_pos_mean", "loss_mean")}
        sweep.append(row)
    sweep.sort(key=lambda r: r["effective_rank"])

    peaks = {}
    for tau in cfg.temperatures:
        key = f"tau={tau:g}"
        best = max(sweep, key=lambda r: r[key]["grad_norm_mean"])
        low = min(r[key]["grad_norm_mean"] for r in sweep)
        peaks[f"{tau:g}"] = {"level": best["level"], "effective_rank": best["effective_rank"],
                             "grad_norm_mean": best[key]["grad_norm_mean"],
                             "max_over_min": best[key]["grad_norm_mean"] / max(low, 1e-300)}

    return DiagnoseReport(model=model_name, data=data_label, n_pairs=n, dim=d, batch_size=b,
                          n_batches=cfg.n_batches, embed_seconds=embed_seconds, random_diversity=random_div,
                          random_bands=random_bands, sweep=sweep, peaks=peaks)


def format_report(rep: DiagnoseReport) -> str:
    """Human-readable text report."""
    rd = rep.random_diversity
    lines = [
        f"hf-divcl diagnose: {rep.model}",
        f"  data: {rep.data}, {rep.n_pairs:,} pairs, d = {rep.dim}, embedded in {rep.embed_seconds:.1f} s",
        "",
        f"Random batches (B = {rep.batch_size}, {rep.n_batches} batches): diversity of the anchors",
        f"  effective rank       {rd['effective_rank']:8.2f} ± {rd['effective_rank_std']:.2f}   (of at most "
        f"{min(rep.batch_size, rep.dim)})",
        f"  participation ratio  {rd['participation_ratio']:8.2f} ± {rd['participation_ratio_std']:.2f}",
        f"  λ_max (trace 1)      {rd['lambda_max']:8.4f} ± {rd['lambda_max_std']:.4f}",
        f"  mean cos / cos²      {rd['mean_cosine']:8.4f} / {rd['mean_sq_cosine']:.4f}",
        "",
        "InfoNCE gradient w.r.t. each unit anchor (in-batch negatives): measured by autograd vs predicted",
        f"  {'τ':>6} {'loss':>8} {'autograd':>10} {'exact':>10} {'max rel err':>12} {'band lower':>11} "
        f"{'band upper':>11} {'spectral band':>19} {'inside':>7} {'p₊':>6} {'K_eff':>7}",
    ]
    zero = sum(s["zero_gradient_anchors"] for s in rep.random_bands.values())
    for tau, s in rep.random_bands.items():
        lines.append(
            f"  {tau:>6} {s['loss_mean']:8.4f} {s['measured_grad_norm_mean']:10.4f} {s['grad_norm_mean']:10.4f} "
            f"{s['max_rel_err_exact_vs_autograd']:12.1e} {s['lower_mean']:11.4f} {s['upper_mean']:11.4f} "
            f"  [{s['spectral_lower_mean']:7.4f}, {s['spectral_upper_mean']:7.4f}] "
            f"{100 * s['inside_fraction']:6.1f}% {s['p_pos_mean']:6.3f} {s['k_eff_mean']:7.2f}")
    if zero:
        lines.append(f"  ({zero} anchor gradients are zero to rounding — collapsed batches — and excluded from the "
                     "relative error)")
    taus = list(rep.random_bands)
    lines += ["", "Mean gradient norm against batch diversity (low → high diversity; * marks the peak)",
              f"  {'level':>10} {'eff.rank':>9} {'R_PR':>7} {'mean cos²':>10} "
              + " ".join(f"{'‖∇‖ τ=' + t:>13}" for t in taus)]
    for r in rep.sweep:
        cells = []
        for t in taus:
            g = r[f"tau={t}"]["grad_norm_mean"]
            star = "*" if rep.peaks[t]["level"] == r["level"] else " "
            cells.append(f"{g:12.4f}{star}")
        lines.append(f"  {r['level']:>10} {r['effective_rank']:9.2f} {r['participation_ratio']:7.2f} "
                     f"{r['mean_sq_cosine']:10.4f} " + " ".join(cells))
    lines.append("")
    for t, p in rep.peaks.items():
        lines.append(f"  τ = {t}: strongest gradients at {p['level']} (effective rank {p['effective_rank']:.1f}), "
                     f"{p['max_over_min']:.2f}× the weakest level")
    return "\n".join(lines)


def plot_report(rep: DiagnoseReport, path: str | Path) -> Path:
    """Gradient norm (with bands) against effective rank, one curve per τ; absolute and peak-normalised."""
    plt = pyplot()
    x = [r["effective_rank"] for r in rep.sweep]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for t in rep.random_bands:
        key = f"tau={t}"
        g = [r[key]["grad_norm_mean"] for r in rep.sweep]
        lo = [r[key]["lower_mean"] for r in rep.sweep]
        hi = [r[key]["upper_mean"] for r in rep.sweep]
        (line,) = axes[0].plot(x, g, marker="o", label=f"τ = {t}")
        axes[0].fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        peak = max(g)
        axes[1].plot(x, [gi / peak for gi in g], marker="o", color=line.get_color(), label=f"τ = {t}")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("mean ‖∇_u ℓ‖ (band: mean lower–upper)")
    axes[1].set_ylabel("mean ‖∇_u ℓ‖ / its maximum")
    for ax in axes:
        ax.set_xlabel(f"effective rank of the batch (B = {rep.batch_size})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{rep.model} on {rep.data}")
    return save_figure(fig, path)


def run_diagnose(cfg: DiagnoseConfig, progress: bool = True) -> DiagnoseReport:
    """Load model and data, embed, analyse; writes the optional plot and JSON."""
    pairs = embed_pairs(cfg, progress=progress, min_pairs=cfg.batch_size)
    rep = diagnose_embeddings(pairs.anchors, pairs.positives, cfg, model_name=cfg.model, data_label=pairs.label,
                              embed_seconds=pairs.seconds, progress=progress)
    if cfg.output_json:
        Path(cfg.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output_json).write_text(json.dumps(rep.to_dict(), indent=2))
    if cfg.plot:
        plot_report(rep, cfg.plot)
    return rep
