"""``hf-divcl calibrate``: choose the diversity window for a model, data set, batch size and temperature."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..diversity.window import METRICS
from ..models.embed import PairEmbeddingConfig, check_temperatures, embed_pairs
from ..policies.calibration import CalibrationResult, calibrate_window

__all__ = ["CalibrateConfig", "run_calibrate"]


@dataclass
class CalibrateConfig(PairEmbeddingConfig):
    """Configuration of ``hf-divcl calibrate`` (every field is also a ``--flag`` and a YAML key)."""

    batch_size: int = field(default=64, metadata={"help": "Global training batch size B."})
    temperatures: list[float] = field(default_factory=lambda: [0.05], metadata={
        "help": "Loss temperature(s) τ; one window per τ (several show how the window moves with τ)."})
    metric: str = field(default="effective_rank", metadata={
        "help": "Diversity metric of the window.", "choices": sorted(METRICS)})
    n_batches: int = field(default=32, metadata={"help": "Batches drawn per diversity level."})
    keep_fraction: float = field(default=0.9, metadata={
        "help": "Levels whose mean gradient norm is at least this fraction of the peak form the window."})
    plot: str | None = field(default=None, metadata={"help": "Write a PNG of the curve and window (one per τ)."})
    output_json: str | None = field(default=None, metadata={"help": "Write the windows and curves as JSON."})

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}.")
        check_temperatures(self.temperatures)
        if not 0 < self.keep_fraction <= 1:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}.")


def run_calibrate(cfg: CalibrateConfig, progress: bool = True) -> list[CalibrationResult]:
    """Embed the pairs and calibrate one window per temperature; writes the optional plots and JSON."""
    pairs = embed_pairs(cfg, progress=progress, min_pairs=cfg.batch_size)
    results = [calibrate_window(pairs.anchors, cfg.batch_size, tau, positives=pairs.positives, metric=cfg.metric,
                                n_batches=cfg.n_batches, keep_fraction=cfg.keep_fraction, seed=cfg.seed)
               for tau in cfg.temperatures]
    if cfg.plot:
        base = Path(cfg.plot)
        for res in results:
            name = base if len(results) == 1 else base.with_name(f"{base.stem}_tau{res.temperature:g}{base.suffix}")
            res.plot(name)
    if cfg.output_json:
        Path(cfg.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output_json).write_text(json.dumps({"model": cfg.model, "data": pairs.label,
                                                     "results": [r.to_dict() for r in results]}, indent=2))
    return results
