"""Model cards for diversity-window runs: two plots from ``diversity_log.jsonl`` and a README rendered from the
Jinja template in ``model_cards/``.

The YAML header is sentence-transformers' own card metadata (``model.model_card_data``: base model, library,
pipeline tag, tags, …, so the Hub keeps treating the model as a sentence-transformers model) plus hf_divcl's
tags. The body is rendered in a sandboxed Jinja environment; every untrusted string (data set names, texts,
repo ids, user names) goes through the ``md`` filter, which escapes Markdown and HTML, so no data can inject
markup, links or template code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .._common import DIVERSITY_LOG_FILE, RUN_INFO_FILE, WINDOW_FILE, atomic_write_text, resource_path
from ..diversity.log import PREFIX, read_diversity_log
from .plots import pyplot, save_figure

logger = logging.getLogger(__name__)

__all__ = ["TEMPLATE_PATH", "md_escape", "plot_diversity_trajectory", "plot_gradient_bands", "write_model_card"]

TEMPLATE_PATH = Path(os.environ.get("HF_DIVCL_CARD_TEMPLATE") or
                     resource_path("model_cards", "divcl_model_card.md.jinja"))
TRAJECTORY_PNG = "diversity_trajectory.png"
BANDS_PNG = "gradient_bands.png"
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~>])")


def md_escape(value: Any) -> str:
    """Text safe to place in Markdown: HTML metacharacters become entities, Markdown syntax is backslash-escaped,
    line breaks become spaces (a table row stays one row)."""
    text = str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return re.sub(r"[\r\n]+", " ", text)


def _series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and finite values of the logged ``divcl/<key>``."""
    xs, ys = [], []
    for r in records:
        v = r.get(PREFIX + key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def plot_diversity_trajectory(records: Sequence[dict], path: str | Path, metric: str = "effective_rank",
                              calibrations: Sequence[dict] = ()) -> Path:
    """Batch diversity per logged step with the window shaded, the fraction of batches inside it, and (with
    ``batch_policy="progress"`` / ``"explore"``) a marker at each decision."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs, ys = _series(records, f"{metric}")
    ax.plot(xs, ys, marker="o", ms=3, color="tab:blue", label=f"training batch {metric.replace('_', ' ')}")
    for i, c in enumerate(calibrations):
        w = c.get("window") or {}
        ax.axvline(c.get("step", 0), color="tab:gray", lw=0.8, ls=":", label="calibration" if i == 0 else None)
        text = f"{w['low']:.1f}–{w['high']:.1f}" if w else "random"
        ax.annotate(text, (c.get("step", 0), 1.0), xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                    va="top", ha="right", color="tab:gray")
    lows, highs = _series(records, "window_low")[1], _series(records, "window_high")[1]
    if lows and highs:
        ax.fill_between(_series(records, "window_low")[0], lows, highs, color="tab:green", alpha=0.18,
                        label="diversity window")
    ax.set_xlabel("step")
    ax.set_ylabel(metric.replace("_", " "))
    fx, fy = _series(records, "in_window_fraction")
    if fy:
        ax2 = ax.twinx()
        ax2.plot(fx, fy, color="tab:orange", lw=1, ls="--", label="fraction of batches in window")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel("fraction in window")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
    else:
        ax.legend(fontsize=8)
    ax.set_title("Batch diversity during training")
    return save_figure(fig, path)


def plot_gradient_bands(records: Sequence[dict], path: str | Path) -> Path:
    """Measured per-anchor gradient norms (median, 10–90 % range) against the predicted bands, log scale."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x, p50 = _series(records, "grad_norm_p50")
    _, p10 = _series(records, "grad_norm_p10")
    _, p90 = _series(records, "grad_norm_p90")
    if p50:
        ax.fill_between(x, p10, p90, color="tab:blue", alpha=0.2, label="measured ‖∇‖, 10–90 %")
        ax.plot(x, p50, color="tab:blue", marker="o", ms=3, label="measured ‖∇‖, median")
    for key, style, label in (("band_lower_mean", ("tab:red", "--"), "lower band (mean)"),
                              ("band_upper_mean", ("tab:purple", "--"), "upper band (mean)"),
                              ("spectral_upper_mean", ("tab:gray", ":"), "spectral upper (mean)")):
        bx, by = _series(records, key)
        by_pos = [(a, b) for a, b in zip(bx, by, strict=True) if b > 0]
        if by_pos:
            ax.plot([a for a, _ in by_pos], [b for _, b in by_pos], color=style[0], ls=style[1], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("per-anchor gradient norm")
    ax.set_title("InfoNCE gradient norms vs. spectral bands")
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def _metadata(model, tags: Sequence[str]) -> str:
    data: dict[str, Any] = {}
    if model is not None and getattr(model, "model_card_data", None) is not None:
        try:
            data = yaml.safe_load(model.model_card_data.to_yaml()) or {}
        except Exception as err:  # card data of exotic models; the card is still useful without it
            logger.warning("sentence-transformers card metadata unavailable (%s); writing a minimal header", err)
    data.setdefault("library_name", "sentence-transformers")
    data["tags"] = list(dict.fromkeys([*(data.get("tags") or []), *tags]))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).strip()


def _policy_context(out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The batch policy for the card: its name and, with ``batch_policy="progress"`` or ``"explore"``, each
    decision and its evidence (from ``divcl_calibrations.jsonl`` / ``divcl_explore.jsonl``)."""
    rows, raw = [], []
    for path in (out / "divcl_calibrations.jsonl", out / "divcl_explore.jsonl"):  # "progress" / "explore"
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                c = json.loads(line)
            except json.JSONDecodeError:
                continue
            raw.append(c)
            best = max(c.get("levels") or [{}], key=lambda r: r.get("gain_vs_random", float("-inf")) or 0.0)
            w = c.get("window") or {}
            recheck = " (re-check)" if c.get("estimate") == "recheck" else ""
            rows.append({"step": c.get("step"), "decision": c.get("decision", "?") + recheck,
                         "window": f"[{_fmt(w.get('low'))}, {_fmt(w.get('high'))}]" if w else "random batches",
                         "best_level": best.get("level", "–"), "gain": _fmt(best.get("gain_vs_random"), 3),
                         "interval": f"[{_fmt(best.get('ci_low'), 3)}, {_fmt(best.get('ci_high'), 3)}]"
                         if best else "–", "reason": c.get("reason", ""),
                         "seconds": _fmt(c.get("wall_seconds"), 3)})
    progress = info.get("policy") in ("progress", "explore")
    decision = info.get("decision", "window" if info.get("window") else "random")
    why = info.get("reason", "")
    start = ("The first steps explored: blocks of steps on random batches and each candidate diversity level, "
             "compared by the held-out progress each step bought." if info.get("policy") == "explore" else
             "Batches were random until a measured diversity level beat random batches.")
    if any(c.get("estimate") == "recheck" for c in raw):
        start += " The chosen window was re-checked against random batches as the model moved."
    summary = (f"{start} Final decision: {'a diversity window' if decision == 'window' else 'random batches'} — "
               f"{why}." if progress else "")
    return {"policy": info.get("policy", "window"), "experimental": bool(info.get("experimental")),
            "policy_reason": info.get("reason", ""), "policy_summary": summary, "calibrations": rows,
            "random_batches": decision != "window", "raw_calibrations": raw}


def _mean(records: Sequence[dict], key: str) -> float | None:
    ys = _series(records, key)[1]
    return sum(ys) / len(ys) if ys else None


def _selection_context(records: Sequence[dict], run: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Per-step selection (batch_policy='learnability'/'hard') and false-negative masking, with their logged
    effect."""
    out: dict[str, Any] = {"selection": None, "false_negatives": None}
    sel = run.get("selection")
    if sel:
        mode = sel.get("mode", "learnability")
        chosen, rand = _mean(records, f"{mode}_selected"), _mean(records, f"{mode}_random")
        stale = _mean(records, "learner_stale_fraction")
        ref = sel.get("reference")
        ref_text = ("the starting model fine-tuned for {} steps on {} held-out training rows (never trained on by "
                    "this run)".format(sel.get("reference_steps"), sel.get("reference_rows"))
                    if ref == "held_out" else "the guide model" if ref == "guide" else f"`{ref}`" if ref else
                    "none (hard-example selection: the learner's loss alone)")
        out["selection"] = {
            "mode": mode, "factor": sel.get("super_batch_factor"), "chunks": sel.get("chunks"), "reference": ref_text,
            "within_window": bool(sel.get("within_window")),
            "score": "learner loss − reference loss" if mode == "learnability" else "learner loss",
            "selected": _fmt(chosen, 3), "random": _fmt(rand, 3),
            "stale": f"{stale:.0%}" if stale is not None else "n/a"}
    fn = run.get("false_negatives")
    if fn:
        out["false_negatives"] = {"margin": fn.get("margin"), "reference": fn.get("reference"),
                                  "per_anchor": _fmt(_mean(records, "masked_negatives_mean"), 3),
                                  "all_masked": _fmt(_mean(records, "anchors_all_masked"), 3)}
    return out


def _loss_text(records: Sequence[dict], run: dict[str, Any]) -> str:
    """The loss and its settings: from the run file (DivCLTrainer) or the log (DiversityCallback)."""
    config = dict(run.get("loss_config") or next((r["loss_config"] for r in records if r.get("loss_config")), {}))
    name = config.get("loss") or run.get("loss") or "not recorded"
    settings = [f"{k}={_fmt(v)}" for k, v in config.items()
                if k not in ("loss", "temperature", "scale") and v not in (None, [], "")]
    return name + (f" ({', '.join(settings)})" if settings else "")


def _preflight_context(out: Path) -> dict[str, Any] | None:
    """The pre-flight report (``divcl_preflight.json``, written before training by the recipes or
    ``hf-divcl preflight --output_dir``) as card rows, Markdown-escaped; ``None`` without one."""
    path = out / "divcl_preflight.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text(encoding="utf-8"))
    ref = r.get("reference_effective_rank")
    rank = (f"{_fmt(r['effective_rank'], 3)} ± {_fmt(r['effective_rank_std'], 2)} of {r['reachable_rank']}"
            + (f" (general-domain reference: {_fmt(ref, 3)})" if ref is not None else ""))
    rows = [("effective rank of the anchors", rank),
            ("rows sharing a text or image with another row of the batch", _fmt(r["duplicate_rows"], 3)),
            (f"near-duplicate rows (anchor cosine ≥ {_fmt(r['near_threshold'])})", _fmt(r["near_duplicate_rows"], 3)),
            ("negatives at least as close to the anchor as its positive, per anchor", _fmt(r["false_negatives"], 3)),
            (f"gradient regime at τ = {_fmt(r['temperature'])}", md_escape(f"{r['regime']}; mean p₊ = "
                                                                          f"{_fmt(r['p_pos'], 3)}"))]
    return {"rows": r["rows"], "sampled_rows": r["sampled_rows"], "batches": r["batches"],
            "batch_size": r["batch_size"], "rows_table": rows, "recommendation": md_escape(r["recommendation"]),
            "reason": md_escape(r["reason"])}


def _sources_context(out: Path, records: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any] | None:
    """Several sources: one card row per source (rows, steps trained, mean effective rank of its batches, its
    pre-flight regime), Markdown-escaped; ``None`` for a one-source run."""
    info = run.get("sources")
    if not info:
        return None
    path = out / "divcl_preflight.json"
    pre = json.loads(path.read_text(encoding="utf-8")).get("sources", {}) if path.is_file() else {}
    rows = []
    for name in info["names"]:
        key = f"source/{name}/"
        steps = [r.get(PREFIX + key + "steps", 0.0) for r in records]
        ranks = [r.get(PREFIX + key + "effective_rank") for r in records]
        weighted = [(n, x) for n, x in zip(steps, ranks, strict=True) if n and x is not None]
        total = sum(n for n, _ in weighted)
        rank = sum(n * x for n, x in weighted) / total if total else None
        p = pre.get(name)
        rows.append({"name": md_escape(name), "rows": info["rows"].get(name), "steps": int(sum(steps)),
                     "effective_rank": _fmt(rank, 3) if rank is not None else "–",
                     "loss": md_escape((info.get("losses") or {}).get(name, "")) or "the run's loss",
                     "preflight": md_escape(f"{_fmt(p['effective_rank'], 3)}; {p['regime']}") if p else "–"})
    order = "one source per batch" if not info.get("mix") else f"{info['mix']:.0%} of each batch dealt across sources"
    return {"rows": rows, "order": md_escape(f"{info['order']}, {order}")}


def _settings_rows(records, run, info, policy, cal, base_model, dataset, train_rows, temperature, metric,
                   in_window) -> list[tuple[str, str]]:
    """The card's settings table, Markdown-escaped: only rows whose value the run recorded (never a placeholder)."""
    esc = md_escape
    window = info.get("window") or {}
    steps, epoch = records[-1]["step"], records[-1].get("epoch")
    global_batch = info.get("global_batch_size") or (_series(records, "global_batch_size")[1] or [None])[-1]
    rows = [("base model", esc(base_model)), ("training data", f"{esc(dataset)} ({train_rows} rows)"),
            ("loss", esc(_loss_text(records, run)) + (f", τ = {_fmt(temperature)}" if temperature is not None
                                                      else ""))]
    if global_batch:
        processes = run.get("processes", 1)
        rows.append(("global batch size", f"{_fmt(global_batch)} ({processes} process(es) × "
                                          f"{run.get('batch_size') or _fmt(global_batch / processes)})"
                     if run else _fmt(global_batch)))
    rows.append(("steps / epochs", f"{steps} / {_fmt(epoch, 3)}" if epoch is not None else str(steps)))
    if info.get("policy"):
        rows.append(("batch policy", f"`{esc(info['policy'])}`" + (" (experimental)" if info.get("experimental")
                                                                   else "")))
    rows.append(("batch builder", esc(info.get("builder") or "the Trainer's own sampler (random batches)")))
    if window.get("low") is not None and not policy["random_batches"]:
        rows.append(("diversity window", f"{esc(metric)} ∈ [{_fmt(window['low'])}, {_fmt(window['high'])}]"))
        rows.append(("how the window was chosen",
                     f"measured held-out progress per step against random batches (batch_policy="
                     f"\"{policy['policy']}\")"
                     if policy["policy"] in ("progress", "explore") else
                     "calibrated on the starting model's embeddings of this data set" if cal else "set by the user"))
        if in_window is not None:
            rows.append(("batches inside the window", f"{in_window:.1%}"))
    else:
        rows.append(("diversity window", "none in force at the end: random batches"
                     + (f" (batch_policy=\"{policy['policy']}\": no measured level beat them)"
                        if policy["policy"] in ("progress", "explore") else "")))
    if run.get("bank_source") and run.get("dimension"):
        rows.append(("embedding bank", esc(run["bank_source"])))
    return rows


def write_model_card(output_dir: str | Path, *, model=None, base_model: str, dataset: str, train_rows: int,
                     repo_id: str | None = None, evaluation: dict[str, tuple[float | None, float | None]] | None = None,
                     evaluation_note: str = "", usage_inputs: Sequence[str] | None = None,
                     template_path: str | Path | None = None, log_file: str = DIVERSITY_LOG_FILE) -> Path:
    """Write ``README.md``, ``diversity_trajectory.png`` and ``gradient_bands.png`` into ``output_dir``.

    Reads the diversity log (``log_file``, the run's ``diversity_log_file``), ``divcl_window.json``,
    ``divcl_calibration.json`` (when the window was
    calibrated) and ``training_args.json`` / ``trainer_state.json`` when present. ``evaluation`` maps a metric name
    to ``(before, after)``.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    out = Path(output_dir)
    template = Path(template_path or TEMPLATE_PATH)
    if not template.is_file():  # checked first: a missing template must not leave a half-written card folder
        raise FileNotFoundError(f"Model card template {str(template)!r} not found; pass template_path= or set "
                                "HF_DIVCL_CARD_TEMPLATE.")
    log_path = out / log_file
    if not log_path.is_file():
        raise FileNotFoundError(f"{str(log_path)!r} is missing: write_model_card needs the diversity log of a "
                                "DivCLTrainer run in output_dir.")
    records = read_diversity_log(log_path)
    if not records:
        raise ValueError(f"{str(log_path)!r} has no records; train for at least `logging_steps` steps.")
    info = json.loads((out / WINDOW_FILE).read_text()) if (out / WINDOW_FILE).is_file() else {}
    cal = json.loads((out / "divcl_calibration.json").read_text()) if (out / "divcl_calibration.json").is_file() \
        else None
    run = json.loads((out / RUN_INFO_FILE).read_text()) if (out / RUN_INFO_FILE).is_file() else {}
    window = info.get("window") or {}
    metric = window.get("metric", "effective_rank")
    policy = _policy_context(out, info)
    policy.update(_selection_context(records, run, info))
    plot_diversity_trajectory(records, out / TRAJECTORY_PNG, metric=metric, calibrations=policy["raw_calibrations"])
    plot_gradient_bands(records, out / BANDS_PNG)

    fractions = _series(records, "in_window_fraction")[1]
    ranks = _series(records, f"{metric}")[1]
    inside = _series(records, "band_inside_fraction")[1]
    p50 = _series(records, "grad_norm_p50")[1]
    in_window = sum(fractions) / len(fractions) if fractions else None
    trajectory_summary = (f"Over {len(records)} logs, {metric.replace('_', ' ')} went from {_fmt(ranks[0])} to "
                          f"{_fmt(ranks[-1])}" + (f"; on average {in_window:.0%} of the batches were inside the window."
                                                  if in_window is not None else ".") if ranks else "")
    bands_summary = (f"Median gradient norm from {_fmt(p50[0])} to {_fmt(p50[-1])}; "
                     f"{min(inside):.0%}–{max(inside):.0%} of the anchors inside their bands (the bands are exact "
                     "inequalities, so this is 100 % up to rounding)." if p50 and inside else "")
    temperature = info.get("temperature") or run.get("temperature") or (_series(records, "temperature")[1] or
                                                                          [None])[-1]
    curve = None
    if cal:
        curve = {"keep_fraction_pct": f"{cal.get('keep_fraction', 0.9):.0%}",
                 "curve": [{"level": r["level"], "metric": _fmt(r["metric"]), "grad_norm": _fmt(r["grad_norm"])}
                           for r in cal.get("curve", [])]}
    eval_rows = [{"name": k, "before": _fmt(b) if b is not None else "–", "after": _fmt(a) if a is not None else "–"}
                 for k, (b, a) in (evaluation or {}).items()]
    dimension = model.get_embedding_dimension() if model is not None and hasattr(model, "get_embedding_dimension") \
        else run.get("dimension", "?")
    modalities = getattr(model, "modalities", ["text"]) if model is not None else ["text"]
    usage = list(usage_inputs or (["The weather is lovely today.", "It's so sunny outside!"]
                                  if "text" in modalities else []))
    base_model_link = (f"[{md_escape(base_model)}](https://huggingface.co/{base_model})"
                       if re.fullmatch(r"[\w.-]+/[\w.-]+", base_model) else md_escape(base_model))
    context = {
        "metadata_yaml": _metadata(model, ["hf_divcl", "diversity-window", "contrastive-learning"]),
        "model_name": (repo_id or out.name), "base_model": base_model, "base_model_link": base_model_link,
        "dataset": dataset, "modality": " and ".join(modalities), "dimension": dimension,
        "repo_id": repo_id or str(out), "usage_inputs": usage, "usage_count": len(usage),
        "train_rows": train_rows, "temperature": _fmt(temperature) if temperature is not None else None,
        "window_metric": metric, "settings": _settings_rows(records, run, info, policy, cal, base_model, dataset,
                                                            train_rows, temperature, metric, in_window),
        "calibration": curve, "trajectory_png": TRAJECTORY_PNG, "bands_png": BANDS_PNG,
        "trajectory_summary": trajectory_summary, "bands_summary": bands_summary,
        "evaluation": eval_rows, "evaluation_note": evaluation_note, "preflight": _preflight_context(out),
        "sources": _sources_context(out, records, run), **policy,
    }
    env = ImmutableSandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
    env.filters["md"] = md_escape
    # a Python literal that cannot close the code fence or open HTML (escapes only occur inside string literals)
    env.filters["pyrepr"] = lambda v: repr(v).replace("`", "\\x60").replace("<", "\\x3c").replace(">", "\\x3e")
    text = env.from_string(template.read_text(encoding="utf-8")).render(**context)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return atomic_write_text(out / "README.md", text)
