"""A grid's best random configuration, and every policy of the grid against it (the decision rule's comparison).

    python benchmarks/best_random.py --grid benchmarks/results/time_to_quality_text_domain_animal.json \\
        --sweep benchmarks/results/time_to_quality_text_domain_animal_tau*.json \\
        --output benchmarks/results/best_random_text_domain_animal.json

Inputs are ``benchmarks/time_to_quality.py`` result files: the grid (policies at one τ; several ``--grid`` files
for policies at several τ) and a τ sweep of random batches (``--policies random --temperature T``, one τ per file,
same steps and data). Random runs of all files are pooled by τ and compared with random at the (first) grid's τ,
paired by seed; the best τ is the one with the highest mean final score over the seeds every τ shares
(``best.at_edge`` says when it is the lowest or highest τ tried: then the sweep does not bracket the best). Every
policy of the grid is then paired by seed against random batches at the best τ: final score, area (the mean score
along the run) and the paper's measure, steps (and seconds) to a target, ``--target-fraction`` (95 %) of random's
mean final score at the best τ (``--target-kind gain``: 95 % of the way from its step-0 score to its final
score). Final and area form one family under Holm's correction (every policy × both metrics), steps to target
another; the smallest effect the table could detect is the corrected half-width of each final interval (half-width
× t(1 − 0.025/m, n − 1) / t(0.975, n − 1), Bonferroni's bound, the strictest step of Holm's). The markdown printed
cites the output file in ``docs/results.md``'s convention. ``--adapter`` does the same for the truth tables of
``benchmarks/calibrator_power.py`` (every level at every τ against random at the best τ):

    python benchmarks/best_random.py --adapter benchmarks/results/calibrator_power.json \\
        benchmarks/results/calibrator_power_low_tau.json --output benchmarks/results/best_random_adapter.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stats import auc, reach, t_interval
from report import DEFAULT_TAU, holm, p_value


def _tau(result: dict) -> float:
    t = result["config"].get("temperature")
    return DEFAULT_TAU[result.get("task", "text")] if t is None else float(t)


def _corrected_half_width(stat: dict, m: int) -> float | None:
    from scipy import stats as st

    if not stat.get("ci95") or stat["n"] < 2:
        return None
    n = stat["n"]
    half = (stat["ci95"][1] - stat["ci95"][0]) / 2
    return half * st.t.ppf(1 - 0.025 / m, n - 1) / st.t.ppf(0.975, n - 1)


def _final(run: dict) -> float:
    return run["curve"][-1]["score"]


def _to_target(runs: dict[int, dict], base: dict[int, dict], target: float, key: str) -> tuple[dict, int]:
    """Paired ``key`` (step / seconds) to reach ``target``, run − random, over the seeds where both reach it; and
    how many of the runs never reach it."""
    diffs, never = [], 0
    for s in sorted(runs):
        if s not in base:
            continue
        mine, ref = reach(runs[s]["curve"], target, key), reach(base[s]["curve"], target, key)
        never += mine is None
        if mine is not None and ref is not None:
            diffs.append(mine - ref)
    return t_interval(diffs), never


def best_random(grids: dict | list[dict], sweeps: list[dict], target_fraction: float = 0.95,
                target_kind: str = "level") -> dict:
    """The sweep of random batches, the best τ, and every grid policy against random at that τ (see module doc).

    ``grids``: one result file or several (policies at other τ, or other seeds); ``sweeps``: files of random
    batches. Runs of every file are pooled by (policy, τ) (the same policy, τ and seed twice is refused); the first
    grid's τ is the reference of the sweep's "− random at the grid's τ" column."""
    grids = [grids] if isinstance(grids, dict) else list(grids)
    grid_tau = _tau(grids[0])
    randoms: dict[float, dict[int, dict]] = {}
    for res in [*grids, *sweeps]:
        tau = _tau(res)
        for r in res["runs"]:
            if r["policy"] != "random":
                continue
            if r["seed"] in randoms.setdefault(tau, {}):
                raise SystemExit(f"random batches at τ = {tau:g}, seed {r['seed']} appears twice (in two files)")
            randoms[tau][r["seed"]] = r
    if grid_tau not in randoms:
        raise SystemExit(f"no random runs at the grid's τ = {grid_tau:g}")
    steps = {r["curve"][-1]["step"] for res in [*grids, *sweeps] for r in res["runs"]}
    if len(steps) != 1:
        raise SystemExit(f"the files end at different steps {sorted(steps)}; compare runs of the same length")
    common = sorted(set.intersection(*(set(runs) for runs in randoms.values())))
    if not common:
        raise SystemExit("no seed is shared by every τ")
    sweep = {}
    for tau in sorted(randoms):
        runs = randoms[tau]
        base = randoms[grid_tau]
        pairs = [s for s in sorted(runs) if s in base]
        sweep[f"{tau:g}"] = {
            "seeds": sorted(runs), "finals": [_final(runs[s]) for s in sorted(runs)],
            "final_mean": statistics.fmean(_final(runs[s]) for s in runs),
            "area_mean": statistics.fmean(auc(runs[s]["curve"]) for s in runs),
            "final_mean_common": statistics.fmean(_final(runs[s]) for s in common),
            "mean_curve": [{"step": p["step"], "score": statistics.fmean(runs[s]["curve"][i]["score"] for s in runs)}
                           for i, p in enumerate(runs[sorted(runs)[0]]["curve"])],
            "final_minus_grid_tau": t_interval([_final(runs[s]) - _final(base[s]) for s in pairs])
            if tau != grid_tau else None,
            "area_minus_grid_tau": t_interval([auc(runs[s]["curve"]) - auc(base[s]["curve"]) for s in pairs])
            if tau != grid_tau else None}
    best = max(randoms, key=lambda t: sweep[f"{t:g}"]["final_mean_common"])
    taus = sorted(randoms)
    base = randoms[best]
    final = statistics.fmean(_final(r) for r in base.values())
    if target_kind == "level":  # a fraction of random's final score
        target = target_fraction * final
    elif target_kind == "gain":  # a fraction of the way from random's step-0 score to its final score
        start = statistics.fmean(r["curve"][0]["score"] for r in base.values())
        target = start + target_fraction * (final - start)
    else:
        raise SystemExit(f"target_kind must be 'level' or 'gain', got {target_kind!r}")
    arms: dict[tuple[str, float], dict[int, dict]] = {}
    for tau in dict.fromkeys(_tau(g) for g in grids):
        if tau != best:
            arms[(f"random@{tau:g}", tau)] = randoms[tau]
    for g in grids:  # a policy's runs at one τ pooled over the grid files (e.g. seeds added later)
        for r in g["runs"]:
            if r["policy"] == "random":
                continue
            runs = arms.setdefault((r["policy"], _tau(g)), {})
            if r["seed"] in runs:
                raise SystemExit(f"{r['policy']} at τ = {_tau(g):g}, seed {r['seed']} appears twice (in two files)")
            runs[r["seed"]] = r
    rows, stats, time_stats = [], [], []
    for (policy, tau), runs in arms.items():
        pairs = [s for s in sorted(runs) if s in base]
        final = t_interval([_final(runs[s]) - _final(base[s]) for s in pairs])
        area = t_interval([auc(runs[s]["curve"]) - auc(base[s]["curve"]) for s in pairs])
        steps_to, never = _to_target(runs, base, target, "step")
        seconds_to, _ = _to_target(runs, base, target, "seconds") if all(
            "seconds" in runs[s]["curve"][-1] and "seconds" in base[s]["curve"][-1] for s in pairs) else (None, 0)
        rows.append({"policy": policy, "tau": tau, "seeds": pairs,
                     "final_mean": statistics.fmean(_final(runs[s]) for s in pairs),
                     "final_minus_best_random": final, "area_minus_best_random": area,
                     "steps_to_target_minus_best_random": steps_to, "seconds_to_target_minus_best_random": seconds_to,
                     "runs_never_reaching_target": never,
                     "wins": sum(_final(runs[s]) > _final(base[s]) for s in pairs)})
        stats += [final, area]
        time_stats.append(steps_to)
    significant = holm([p_value(s) for s in stats])
    time_significant = holm([p_value(s) for s in time_stats])
    m = len(stats)
    for i, row in enumerate(rows):
        row["final_holm_significant"], row["area_holm_significant"] = significant[2 * i], significant[2 * i + 1]
        row["steps_to_target_holm_significant"] = time_significant[i]
        row["final_detectable"] = _corrected_half_width(row["final_minus_best_random"], m)
    base_steps = [reach(r["curve"], target, "step") for r in base.values()]
    return {"grid_tau": grid_tau, "taus": taus, "common_seeds": common, "sweep": sweep,
            "best": {"tau": best, "at_edge": best in (taus[0], taus[-1]), "seeds": sorted(base),
                     "final_mean": sweep[f"{best:g}"]["final_mean"]},
            "target": {"kind": target_kind, "fraction": target_fraction, "score": target,
                       "best_random_steps_mean": statistics.fmean(s for s in base_steps if s is not None)
                       if any(s is not None for s in base_steps) else None,
                       "best_random_runs_never_reaching": sum(s is None for s in base_steps)},
            "correction": f"Holm over {m} tests (each policy × final and area)",
            "time_correction": f"Holm over {len(time_stats)} tests (each policy, steps to target)", "rows": rows}


def adapter_best_random(results: list[dict]) -> dict:
    """The same comparison for ``calibrator_power.py`` truth tables (final ndcg@10 per arm over seeds 0..n−1, one
    file or several with other τ): random batches at every τ, the best τ, and every level at every τ against random
    at the best τ, paired by seed, Holm over the table."""
    finals: dict[float, dict[str, list[float]]] = {}
    for res in results:
        for tau, entry in res.get("truth", {}).items():
            if float(tau) in finals:
                raise SystemExit(f"τ = {tau} appears twice")
            finals[float(tau)] = entry["finals"]
    if not finals:
        raise SystemExit("no truth tables in these files")
    taus = sorted(finals)
    sweep = {f"{t:g}": {"final_mean": statistics.fmean(finals[t]["random"]), "finals": finals[t]["random"]}
             for t in taus}
    best = max(taus, key=lambda t: sweep[f"{t:g}"]["final_mean"])
    base = finals[best]["random"]
    rows, stats = [], []
    for t in taus:
        for arm, values in finals[t].items():
            if arm == "random" and t == best:
                continue
            pairs = list(zip(values, base, strict=True))
            diff = t_interval([x - b for x, b in pairs])
            rows.append({"policy": arm, "tau": t, "final_mean": statistics.fmean(values),
                         "final_minus_best_random": diff, "wins": sum(x > b for x, b in pairs)})
            stats.append(diff)
    significant = holm([p_value(x) for x in stats])
    for row, sig in zip(rows, significant, strict=True):
        row["final_holm_significant"] = sig
        row["final_detectable"] = _corrected_half_width(row["final_minus_best_random"], len(stats))
    return {"taus": taus, "sweep": sweep, "best": {"tau": best, "at_edge": best in (taus[0], taus[-1]),
                                                     "final_mean": sweep[f"{best:g}"]["final_mean"]},
            "correction": f"Holm over {len(stats)} tests (every level × τ, final)", "rows": rows}


def _cell(stat: dict | None, significant: bool, cite: str, lower_is_better: bool = False, fmt: str = "+.4f") -> str:
    if not stat or stat["mean"] is None:
        return "–"
    mean, ci = stat["mean"], stat.get("ci95")
    if not ci:
        return f"{mean:{fmt}}<!-- {cite} --> (n = {stat['n']})"
    better = mean < 0 if lower_is_better else mean > 0
    mark = (" ▲" if better else " ▼") if significant else ""
    return f"{mean:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]<!-- {cite} -->{mark}"


def markdown(result: dict, name: str) -> str:
    out = ["| τ of random batches | seeds | final | area | final − random at the grid's τ |", "|---|---|---|---|---|"]
    for tau, entry in result["sweep"].items():
        diff = entry["final_minus_grid_tau"]
        out.append(f"| {tau} | {len(entry['seeds'])} | {entry['final_mean']:.4f}"
                   f"<!-- {name}: sweep[{tau}].final_mean --> | {entry['area_mean']:.4f}"
                   f"<!-- {name}: sweep[{tau}].area_mean --> | "
                   + (_cell(diff, False, f"{name}: sweep[{tau}].final_minus_grid_tau") if diff else "–") + " |")
    best, target = result["best"], result.get("target")
    out += ["", f"Best τ: {best['tau']:g}{' (at the edge of the sweep)' if best['at_edge'] else ''}."]
    if target:
        steps = target["best_random_steps_mean"]
        at = "–" if steps is None else f"{steps:.0f}<!-- {name}: target.best_random_steps_mean -->"
        what = ("of the way from its step-0 score to its mean final score" if target.get("kind") == "gain"
                else "of its mean final score")
        missed = target.get("best_random_runs_never_reaching") or 0
        misses = (f" (the {len(result['best']['seeds']) - missed} runs that reach it; "
                  f"{missed}<!-- {name}: target.best_random_runs_never_reaching --> never do)" if missed else "")
        out.append(f"Target: {target['fraction']:.0%} {what}, {target['score']:.4f}<!-- {name}: "
                   f"target.score -->; random batches at the best τ reach it at step {at} on average{misses}.")
    out += ["", "| policy (τ) − random at the best τ | seeds | final | area | steps to target | seconds to target | "
            "never reached | detectable (final) |", "|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(result["rows"]):
        cite = f"{name}: rows.{i}"
        det = row["final_detectable"]
        final = _cell(row["final_minus_best_random"], row["final_holm_significant"], f"{cite}.final_minus_best_random")
        area = _cell(row["area_minus_best_random"], row["area_holm_significant"], f"{cite}.area_minus_best_random")
        steps = _cell(row.get("steps_to_target_minus_best_random"), row.get("steps_to_target_holm_significant", False),
                      f"{cite}.steps_to_target_minus_best_random", lower_is_better=True, fmt="+.0f")
        seconds = _cell(row.get("seconds_to_target_minus_best_random"), False,
                        f"{cite}.seconds_to_target_minus_best_random", lower_is_better=True, fmt="+.1f")
        out.append(f"| {row['policy']} ({row.get('tau', result['grid_tau']):g}) | {len(row['seeds'])} | {final} | "
                   f"{area} | {steps} | {seconds} | {row.get('runs_never_reaching_target', '–')} | "
                   f"{'–' if det is None else f'{det:.3f}'} |")
    out.append(f"\n▲/▼: significant at 5 % after {result['correction']}"
               + (f"; steps to target after {result['time_correction']} (▲: sooner). Seconds: wall-clock of "
                  "training with selection and calibration, evaluation excluded, not corrected." if target else "."))
    return "\n".join(out)


def adapter_markdown(result: dict, name: str) -> str:
    out = ["| arm | τ | final | − random at the best τ | wins | detectable |", "|---|---|---|---|---|---|"]
    for tau, entry in result["sweep"].items():
        out.append(f"| random | {tau} | {entry['final_mean']:.4f}<!-- {name}: sweep[{tau}].final_mean --> | | | |")
    for i, row in enumerate(result["rows"]):
        cell = _cell(row["final_minus_best_random"], row["final_holm_significant"],
                     f"{name}: rows.{i}.final_minus_best_random")
        n = row["final_minus_best_random"]["n"]
        out.append(f"| {row['policy']} | {row['tau']:g} | {row['final_mean']:.4f} | {cell} | {row['wins']}/{n} | "
                   f"{row['final_detectable']:.3f} |")
    out.append(f"\nBest τ of random batches: {result['best']['tau']:g}"
               f"{' (at the edge of the sweep)' if result['best']['at_edge'] else ''}; ▲/▼: significant at 5 % after "
               f"{result['correction']}.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", nargs="+", help="time_to_quality result files with the policies (one τ per file)")
    p.add_argument("--sweep", nargs="+", help="time_to_quality files of random batches, one τ each")
    p.add_argument("--adapter", nargs="+", help="instead: calibrator_power.py files whose truth tables make the sweep")
    p.add_argument("--target-fraction", type=float, default=0.95,
                   help="time to target: this fraction of random's mean final score at the best τ (level), or of "
                        "the way from its step-0 score to it (gain)")
    p.add_argument("--target-kind", choices=["level", "gain"], default="level",
                   help="level: a fraction of the final score; gain: a fraction of what training adds (for runs "
                        "that start close to their final score)")
    p.add_argument("--output", required=True)
    a = p.parse_args(argv)
    if a.adapter:
        results = [json.loads(Path(f).read_text()) for f in a.adapter]
        result = {"files": a.adapter, **adapter_best_random(results)}
        Path(a.output).write_text(json.dumps(result, indent=2))
        print(adapter_markdown(result, Path(a.output).name))
        return
    if not a.grid or not a.sweep:
        p.error("pass --grid and --sweep (time_to_quality files), or --adapter (calibrator_power files)")
    grids = [json.loads(Path(g).read_text()) for g in a.grid]
    sweeps = [json.loads(Path(s).read_text()) for s in a.sweep]
    result = {"grid": a.grid[0] if len(a.grid) == 1 else a.grid, "sweep_files": a.sweep,
              **best_random(grids, sweeps, a.target_fraction, a.target_kind)}
    Path(a.output).write_text(json.dumps(result, indent=2))
    print(markdown(result, Path(a.output).name))


if __name__ == "__main__":
    main()
