"""Markdown tables of the multi-source and mined-negatives benchmarks, every number cited to its result file.

    python benchmarks/sources_table.py benchmarks/results/multi_source_main.json
    python benchmarks/sources_table.py benchmarks/results/mined_negatives.json
    python benchmarks/sources_table.py benchmarks/results/mined_negatives_tau.json   # a merged τ sweep

Multi-source: every arm against each end configuration (``mixed``, ``single``), per-source mean and pooled ndcg@10,
final and area; mined negatives: every paired comparison (a merged τ sweep: each arm at its best τ against
``st_mnrl`` at its own, with the SimLex-999 / WordSim-353 guards). Paired mean and 95 % t-interval (uncorrected);
▲/▼ where the difference stays significant at 5 % after Holm's correction over the table (one family), as in the
main table of docs/results.md. The citations follow docs/results.md's convention (``<!-- FILE: path -->``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import holm, p_value


def _cell(stat: dict, significant: bool, cite: str) -> str:
    mean, ci = stat["mean"], stat.get("ci95")
    if not ci:
        return f"{mean:+.4f}<!-- {cite} --> (n = {stat['n']})"
    mark = (" ▲" if mean > 0 else " ▼") if significant else ""
    return f"{mean:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]<!-- {cite} -->{mark}"


def multi_source(path: Path) -> str:
    res = json.loads(path.read_text())
    name = path.name
    rows, stats = [], []
    for tau, arms in res["summary"].items():
        for arm, entry in arms.items():
            for end in ("mixed", "single"):
                block = entry.get(f"minus_{end}")
                if not block or (arm, end) == ("single", "mixed"):  # the mirror of mixed − single
                    continue
                cells = []
                for metric in ("ndcg@10/source_mean", "ndcg@10/pooled"):
                    for kind in ("final", "auc"):
                        stat = block[metric][kind]
                        cite = f"{name}: summary[{tau}][{arm}].minus_{end}[{metric}].{kind}"
                        cells.append((stat, cite))
                        stats.append(stat)
                rows.append((tau, arm, end, len(entry["seeds"]), cells))
    significant = iter(holm([p_value(s) for s in stats]))
    out = ["| τ | arm − end | seeds | per-source mean, final | per-source mean, area | pooled, final | pooled, area |",
           "|---|---|---|---|---|---|---|"]
    for tau, arm, end, n, cells in rows:
        rendered = [_cell(stat, next(significant), cite) for stat, cite in cells]
        out.append(f"| {tau.split('=')[1]} | {arm} − {end} | {n} | " + " | ".join(rendered) + " |")
    means = ["", "| τ | arm | per-source mean (final) | pooled (final) | SimLex-999 | WordSim-353 |",
             "|---|---|---|---|---|---|"]
    for tau, arms in res["summary"].items():
        for arm, entry in arms.items():
            vals = []
            for key in ("ndcg@10/source_mean", "ndcg@10/pooled", "simlex999_spearman", "wordsim353_spearman"):
                vals.append(f"{entry['final_mean'][key]:.4f}<!-- {name}: summary[{tau}][{arm}].final_mean[{key}] -->")
            means.append(f"| {tau.split('=')[1]} | {arm} | " + " | ".join(vals) + " |")
    untrained = res["untrained"]
    means.append(f"| – | untrained | {untrained['ndcg@10/source_mean']:.4f}<!-- {name}: "
                 f"untrained[ndcg@10/source_mean] --> | {untrained['ndcg@10/pooled']:.4f}<!-- {name}: "
                 f"untrained[ndcg@10/pooled] --> | {untrained['simlex999_spearman']:.4f}<!-- {name}: "
                 f"untrained.simlex999_spearman --> | {untrained['wordsim353_spearman']:.4f}<!-- {name}: "
                 f"untrained.wordsim353_spearman --> |")
    return "\n".join(out + means + best_tau_table(res, name))


def best_tau_table(res: dict, name: str) -> list[str]:
    """Each arm at its own best τ and the arms against each end there, when the file holds a τ sweep (Holm over
    this table's family)."""
    best = res.get("best_tau") or {}
    if len(res["summary"]) < 2 or not best:
        return []
    out = ["", "| metric | arm | final by τ (seeds every τ shares) | best τ |", "|---|---|---|---|"]
    for metric, block in best.items():
        for arm, e in block["arms"].items():
            by_tau = ", ".join(f"{t}: {v:.4f}<!-- {name}: best_tau[{metric}].arms[{arm}].final_by_tau[{t}] -->"
                               for t, v in e["final_by_tau"].items())
            edge = " (not swept)" if not e.get("swept", True) else " (at the edge)" if e["at_edge"] else ""
            out.append(f"| {metric} | {arm} | {by_tau} ({len(e['common_seeds'])} seeds) | {e['tau']:g}{edge} |")
    stats = [entry[kind] for block in best.values() for entry in block["paired"].values() for kind in ("final", "auc")]
    significant = iter(holm([p_value(s) for s in stats]))
    out += ["", "| metric | arm − end, each at its best τ | τ | seeds | final | area |", "|---|---|---|---|---|---|"]
    for metric, block in best.items():
        for key, entry in block["paired"].items():
            cells = [_cell(entry[kind], next(significant), f"{name}: best_tau[{metric}].paired[{key}].{kind}")
                     for kind in ("final", "auc")]
            taus = " / ".join(f"{t:g}" for t in entry["taus"])
            out.append(f"| {metric} | {key.replace(' - ', ' − ')} | {taus} | {len(entry['seeds'])} | "
                       + " | ".join(cells) + " |")
    return out


def mined_sweep(res: dict, name: str) -> str:
    """A merged τ sweep (``mined_negatives.py --merge``): each arm's final ndcg@10 by τ with its best τ, then each
    arm at its best τ against ``st_mnrl`` at its own, with the guards."""
    best = res["best_tau"]
    out = ["| arm | final by τ (seeds every τ shares) | best τ | SimLex-999 | WordSim-353 |", "|---|---|---|---|---|"]
    for arm, e in best["arms"].items():
        by_tau = ", ".join(f"{t}: {v:.4f}<!-- {name}: best_tau.arms[{arm}].final_by_tau[{t}] -->"
                           for t, v in e["final_by_tau"].items())
        edge = " (not swept)" if not e["swept"] else " (at the edge)" if e["at_edge"] else ""
        guards = [f"{e[g + '_mean']:.4f}<!-- {name}: best_tau.arms[{arm}].{g}_mean -->"
                  for g in ("simlex999_spearman", "wordsim353_spearman")]
        out.append(f"| {arm} | {by_tau} ({len(e['common_seeds'])} seeds) | {e['tau']:g}{edge} | "
                   + " | ".join(guards) + " |")
    kinds = ("final", "auc", "simlex999_spearman", "wordsim353_spearman")
    stats = [entry[kind] for entry in best["paired"].values() for kind in kinds]
    significant = iter(holm([p_value(s) for s in stats]))
    out += ["", "| arm − st_mnrl, each at its best τ | τ | seeds | final | area | SimLex-999 | WordSim-353 |",
            "|---|---|---|---|---|---|---|"]
    for key, entry in best["paired"].items():
        cells = [_cell(entry[kind], next(significant), f"{name}: best_tau.paired[{key}].{kind}") for kind in kinds]
        taus = " / ".join(f"{t:g}" for t in entry["taus"])
        out.append(f"| {key} | {taus} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def mined(path: Path) -> str:
    res = json.loads(path.read_text())
    name = path.name
    if "best_tau" in res:
        return mined_sweep(res, name)
    pairs = {k: v for k, v in res["summary"]["paired"].items() if k != "st_mnrl - divcl_nomask"}  # a mirror
    stats = [pairs[k][kind] for k in pairs for kind in ("final", "auc")]
    significant = iter(holm([p_value(s) for s in stats]))
    out = ["| comparison | seeds | ndcg@10, final | ndcg@10, area |", "|---|---|---|---|"]
    for key, entry in pairs.items():
        cells = [_cell(entry[kind], next(significant), f"{name}: summary.paired[{key}].{kind}")
                 for kind in ("final", "auc")]
        out.append(f"| {key} | {entry['final']['n']} | " + " | ".join(cells) + " |")
    out += ["", "| arm | ndcg@10, final | SimLex-999 | WordSim-353 | s per run |", "|---|---|---|---|---|"]
    for arm, entry in res["summary"]["arms"].items():
        cells = [f"{entry[k]:.4f}<!-- {name}: summary.arms.{arm}.{k} -->"
                 for k in ("final_mean", "simlex999_mean", "wordsim353_mean")]
        out.append(f"| {arm} | " + " | ".join(cells) + f" | {entry['seconds_mean']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    for arg in argv if argv is not None else sys.argv[1:]:
        path = Path(arg)
        kind = json.loads(path.read_text()).get("benchmark")
        print(multi_source(path) if kind == "multi_source" else mined(path))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
