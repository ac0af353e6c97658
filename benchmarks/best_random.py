"""A grid's best random configuration, and every policy of the grid against it (the decision rule's comparison).

    python benchmarks/best_random.py --grid benchmarks/results/time_to_quality_text_domain_animal.json \\
        --sweep benchmarks/results/time_to_quality_text_domain_animal_tau*.json \\
        --output benchmarks/results/best_random_text_domain_animal.json

Inputs are ``benchmarks/time_to_quality.py`` result files: the grid (policies at one τ) and a τ sweep of random
batches (``--policies random --temperature T``, one file per τ, same steps and data). Random batches at every τ are
compared with random at the grid's τ, paired by seed; the best τ is the one with the highest mean final score over
the seeds every τ shares (``best.at_edge`` says when it is the lowest or highest τ tried: then the sweep does not
bracket the best). Every policy of the grid is then paired by seed against random batches at the best τ (final and
area, i.e. the mean score along the run), with Holm's correction over the table (one family: every policy × both
metrics) and the smallest effect the table could detect: the corrected half-width of each interval (half-width ×
t(1 − 0.025/m, n − 1) / t(0.975, n − 1), Bonferroni's bound, the strictest step of Holm's). The markdown printed
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

from report import holm, p_value
from time_to_quality import _t_interval, auc


def _tau(result: dict) -> float:
    t = result["config"].get("temperature")
    return 0.05 if t is None else float(t)  # time_to_quality's text default


def _random_runs(result: dict) -> dict[int, dict]:
    return {r["seed"]: r for r in result["runs"] if r["policy"] == "random"}


def _corrected_half_width(stat: dict, m: int) -> float | None:
    from scipy import stats as st

    if not stat.get("ci95") or stat["n"] < 2:
        return None
    n = stat["n"]
    half = (stat["ci95"][1] - stat["ci95"][0]) / 2
    return half * st.t.ppf(1 - 0.025 / m, n - 1) / st.t.ppf(0.975, n - 1)


def best_random(grid: dict, sweeps: list[dict]) -> dict:
    """The sweep of random batches, the best τ, and every grid policy against random at that τ (see module doc)."""
    grid_tau = _tau(grid)
    randoms: dict[float, dict[int, dict]] = {grid_tau: _random_runs(grid)}
    for s in sweeps:
        tau = _tau(s)
        if tau in randoms:
            raise SystemExit(f"τ = {tau:g} appears twice (grid and sweep files must hold one τ each)")
        randoms[tau] = _random_runs(s)
    for tau, runs in randoms.items():
        if not runs:
            raise SystemExit(f"no random runs at τ = {tau:g}")
    steps = {r["curve"][-1]["step"] for runs in randoms.values() for r in runs.values()}
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
            "seeds": sorted(runs), "finals": [runs[s]["curve"][-1]["score"] for s in sorted(runs)],
            "final_mean": statistics.fmean(runs[s]["curve"][-1]["score"] for s in runs),
            "area_mean": statistics.fmean(auc(runs[s]["curve"]) for s in runs),
            "final_mean_common": statistics.fmean(runs[s]["curve"][-1]["score"] for s in common),
            "mean_curve": [{"step": p["step"], "score": statistics.fmean(runs[s]["curve"][i]["score"] for s in runs)}
                           for i, p in enumerate(runs[sorted(runs)[0]]["curve"])],
            "final_minus_grid_tau": _t_interval([runs[s]["curve"][-1]["score"] - base[s]["curve"][-1]["score"]
                                                 for s in pairs]) if tau != grid_tau else None,
            "area_minus_grid_tau": _t_interval([auc(runs[s]["curve"]) - auc(base[s]["curve"]) for s in pairs])
            if tau != grid_tau else None}
    best = max(randoms, key=lambda t: sweep[f"{t:g}"]["final_mean_common"])
    taus = sorted(randoms)
    base = randoms[best]
    rows, stats = [], []
    policies = list(dict.fromkeys(r["policy"] for r in grid["runs"] if r["policy"] != "random"))
    if best != grid_tau:
        policies.insert(0, f"random@{grid_tau:g}")
    for policy in policies:
        if policy.startswith("random@"):
            runs = randoms[grid_tau]
        else:
            runs = {r["seed"]: r for r in grid["runs"] if r["policy"] == policy}
        pairs = [s for s in sorted(runs) if s in base]
        final = _t_interval([runs[s]["curve"][-1]["score"] - base[s]["curve"][-1]["score"] for s in pairs])
        area = _t_interval([auc(runs[s]["curve"]) - auc(base[s]["curve"]) for s in pairs])
        rows.append({"policy": policy, "tau": grid_tau, "seeds": pairs,
                     "final_mean": statistics.fmean(runs[s]["curve"][-1]["score"] for s in pairs),
                     "final_minus_best_random": final, "area_minus_best_random": area,
                     "wins": sum(runs[s]["curve"][-1]["score"] > base[s]["curve"][-1]["score"] for s in pairs)})
        stats += [final, area]
    significant = holm([p_value(s) for s in stats])
    m = len(stats)
    for i, row in enumerate(rows):
        row["final_holm_significant"], row["area_holm_significant"] = significant[2 * i], significant[2 * i + 1]
        row["final_detectable"] = _corrected_half_width(row["final_minus_best_random"], m)
    return {"grid_tau": grid_tau, "taus": taus, "common_seeds": common, "sweep": sweep,
            "best": {"tau": best, "at_edge": best in (taus[0], taus[-1]), "seeds": sorted(base),
                     "final_mean": sweep[f"{best:g}"]["final_mean"]},
            "correction": f"Holm over {m} tests (every policy × final and area)", "rows": rows}


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
            diff = _t_interval([x - b for x, b in pairs])
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


def _cell(stat: dict, significant: bool, cite: str) -> str:
    mean, ci = stat["mean"], stat.get("ci95")
    if mean is None:
        return "–"
    if not ci:
        return f"{mean:+.4f}<!-- {cite} --> (n = {stat['n']})"
    mark = (" ▲" if mean > 0 else " ▼") if significant else ""
    return f"{mean:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]<!-- {cite} -->{mark}"


def markdown(result: dict, name: str) -> str:
    out = ["| τ of random batches | seeds | final | area | final − random at the grid's τ |", "|---|---|---|---|---|"]
    for tau, entry in result["sweep"].items():
        diff = entry["final_minus_grid_tau"]
        out.append(f"| {tau} | {len(entry['seeds'])} | {entry['final_mean']:.4f}"
                   f"<!-- {name}: sweep[{tau}].final_mean --> | {entry['area_mean']:.4f}"
                   f"<!-- {name}: sweep[{tau}].area_mean --> | "
                   + (_cell(diff, False, f"{name}: sweep[{tau}].final_minus_grid_tau") if diff else "–") + " |")
    best = result["best"]
    out += ["", f"Best τ: {best['tau']:g}{' (at the edge of the sweep)' if best['at_edge'] else ''}.", "",
            "| policy (grid τ) − random at the best τ | seeds | final | area | detectable (final) |",
            "|---|---|---|---|---|"]
    for i, row in enumerate(result["rows"]):
        cite = f"{name}: rows.{i}"
        det = row["final_detectable"]
        final = _cell(row["final_minus_best_random"], row["final_holm_significant"], f"{cite}.final_minus_best_random")
        area = _cell(row["area_minus_best_random"], row["area_holm_significant"], f"{cite}.area_minus_best_random")
        out.append(f"| {row['policy']} | {len(row['seeds'])} | {final} | {area} | "
                   f"{'–' if det is None else f'{det:.3f}'} |")
    out.append(f"\n▲/▼: significant at 5 % after {result['correction']}.")
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
    p.add_argument("--grid", help="time_to_quality result file with the policies (one τ)")
    p.add_argument("--sweep", nargs="+", help="time_to_quality files of random batches, one τ each")
    p.add_argument("--adapter", nargs="+", help="instead: calibrator_power.py files whose truth tables make the sweep")
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
    grid = json.loads(Path(a.grid).read_text())
    sweeps = [json.loads(Path(s).read_text()) for s in a.sweep]
    result = {"grid": a.grid, "sweep_files": a.sweep, **best_random(grid, sweeps)}
    Path(a.output).write_text(json.dumps(result, indent=2))
    print(markdown(result, Path(a.output).name))


if __name__ == "__main__":
    main()
