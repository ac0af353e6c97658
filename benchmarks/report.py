"""Render every paired result in ``benchmarks/results/*.json`` into the results table of ``docs/results.md``.

One row per (benchmark file, policy): the task and regime, τ, steps × batch size, seeds, and policy − random on the
same seeds — final quality and area under the quality curve (mean quality along the run) — each with its 95 %
t-interval and the number of seeds the policy won. Rows whose interval excludes zero are marked (▲ above, ▼ below).

    python benchmarks/report.py            # print the table
    python benchmarks/report.py --write    # replace the table between the markers in docs/results.md
    python benchmarks/report.py --check    # exit 1 when that table differs from the results (tests do this)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_DOC = ROOT / "docs" / "results.md"
START, END = "<!-- results:start (benchmarks/report.py --write) -->", "<!-- results:end -->"
DEFAULT_TAU = {"text": 0.05, "vision": 0.2, "clip": 0.07}
METRIC = {"text": "ndcg@10", "vision": "k-NN acc.", "clip": "zero-shot acc."}


def p_value(stat: dict | None) -> float | None:
    """Two-sided p-value of a paired mean difference, recovered from its 95 % t-interval and ``n`` (the Student-t
    interval the benchmarks store: half-width = t₀.₉₇₅,ₙ₋₁ · se); ``None`` without an interval."""
    from scipy import stats as st

    if not stat or stat.get("mean") is None or not stat.get("ci95") or (stat.get("n") or 0) < 2:
        return None
    n, (lo, hi) = int(stat["n"]), stat["ci95"]
    se = (hi - lo) / 2 / st.t.ppf(0.975, n - 1)
    if se <= 0:
        return 0.0 if stat["mean"] != 0 else 1.0
    return float(2 * st.t.sf(abs(stat["mean"]) / se, n - 1))


def holm(pvalues: list[float | None], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down correction over one family: which hypotheses are rejected at family-wise level ``alpha``
    (``None``: not tested, never rejected)."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, rejected = len(order), [False] * len(pvalues)
    for k, (p, i) in enumerate(order):
        if p > alpha / (m - k):
            break
        rejected[i] = True
    return rejected


def _fmt(stat: dict | None, significant: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    mean, ci = stat["mean"], stat.get("ci95")
    if not ci:
        return f"{mean:+.4f} (n = {stat.get('n', 1)})"
    mark = (" ▲" if mean > 0 else " ▼") if significant else ""
    return f"{mean:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]{mark}"


def _regime(task: str, c: dict) -> str:
    parts = []
    if task == "text":
        parts.append(f"WordNet {c['domain']} ({c.get('kind', 'example')})" if c.get("domain") else
                     f"WordNet {c.get('kind', 'example')} pairs" + (f", {c['rows']:,} rows" if c.get("rows") else ""))
    elif task == "vision":
        parts.append("tiny ViT SimCLR, Fashion-MNIST")
    else:
        parts.append("tiny CLIP, Fashion-MNIST")
    if c.get("optim") and c["optim"] != "adamw":
        parts.append(c["optim"])
    if c.get("schedule") == "plateau":
        parts.append("plateau schedule")
    return ", ".join(parts)


def time_to_quality_rows(path: Path) -> list[dict]:
    r = json.loads(path.read_text())
    c, task = r["config"], r["task"]
    rows = []
    for policy, entry in r["summary"]["policies"].items():
        paired = entry.get("paired_vs_random")
        if not paired or not paired["final_minus_random"].get("n"):
            continue  # no random arm on these seeds in this file (e.g. policies at a τ swept elsewhere)
        final = paired["final_minus_random"]
        wins = paired.get("wins", sum(d > 0 for d in paired.get("final_diffs", [])))
        rows.append({"source": path.stem, "task": task, "regime": _regime(task, c),
                     "tau": c.get("temperature") or DEFAULT_TAU[task], "steps": f"{c['steps']} × {c['batch_size']}",
                     "seeds": final.get("n", 0), "policy": policy, "metric": METRIC[task], "final": final,
                     "auc": paired.get("auc_minus_random"), "wins": f"{wins}/{final.get('n', 0)}"})
    return rows


def calibrator_rows(path: Path) -> list[dict]:
    r = json.loads(path.read_text())
    c = r["config"]
    rows = []
    truths, planted_all = r.get("truth", {}), r.get("planted", {})
    for tau in sorted(truths.keys() | planted_all.keys(), key=float):
        truth = truths.get(tau, {"levels": {}})
        common = {"source": path.stem, "task": "adapter", "regime": f"MiniLM + adapter, WordNet {c['domain']} "
                  f"({c['kind']}), {c.get('optim', 'adamw')}", "tau": float(tau),
                  "steps": f"{c['steps']} × {c['batch_size']}",
                  "metric": "ndcg@10", "auc": None}
        oneshot = c.get("calibrator") == "oneshot"
        for level, stat in ([] if oneshot else truth["levels"].items()):
            rows.append({**common, "seeds": stat["n"], "policy": f"fixed {level}", "final": stat,
                         "wins": f"{stat.get('wins', '?')}/{stat['n']}"})
        planted = r.get("planted", {}).get(tau)
        if planted:
            stat = planted["final_minus_random"]
            name = "one-shot calibration (window=progress)" if oneshot else "explore (hf_divcl.experimental.sequential)"
            if c.get("as_planned"):
                name += (f", as planned for {c['steps']} steps: up to {c['max_blocks']} blocks, probe refreshed "
                         f"every {c['refresh_blocks']}")
            if c.get("recheck_blocks"):
                name += f", re-checks ({c['recheck_blocks']} blocks, rule '{c.get('recheck_rule', 'behind')}')"
            rows.append({**common, "seeds": stat["n"], "policy": name,
                         "final": stat, "wins": f"{stat.get('wins', '?')}/{stat['n']}"})
    return rows


def collect(results: Path = RESULTS) -> list[dict]:
    rows = []
    for path in sorted(results.glob("time_to_quality*.json")):
        rows += time_to_quality_rows(path)
    for path in sorted(results.glob("calibrator_power*.json")):
        if "_v1" not in path.stem:  # the first design of the test, kept for the record in docs/results.md
            rows += calibrator_rows(path)
    return rows


def render(rows: list[dict]) -> str:
    """The table; ▲/▼ mark the differences that stay significant after Holm's correction, the final-quality column
    and the AUC column each one family over every row of the table."""
    final_p = [p_value(r["final"]) for r in rows]
    auc_p = [p_value(r["auc"]) for r in rows]
    final_sig, auc_sig = holm(final_p), holm(auc_p)
    tested_final, tested_auc = sum(p is not None for p in final_p), sum(p is not None for p in auc_p)
    note = (f"▲ / ▼: significant at 5 % after Holm's correction over the table's {tested_final} final-quality "
            f"comparisons (and, for AUC, its {tested_auc}); an interval that excludes zero without a mark is "
            "significant only uncorrected.")
    head = ("| task | regime | τ | steps × B | seeds | policy | policy − random, final (95 % CI) | "
            "policy − random, AUC (95 % CI) | wins |\n|---|---|---|---|---|---|---|---|---|")
    body = [f"| {r['task']} ({r['metric']}) | {r['regime']} | {r['tau']:g} | {r['steps']} | {r['seeds']} | "
            f"{r['policy']} | {_fmt(r['final'], fs)} | {_fmt(r['auc'], a_s)} | {r['wins']} |"
            for r, fs, a_s in zip(rows, final_sig, auc_sig, strict=True)]
    return "\n".join([note, "", head, *body])


def doc_table(text: str) -> str | None:
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write", action="store_true", help="replace the table between the markers in --doc")
    p.add_argument("--check", action="store_true", help="exit 1 when the table in --doc is out of date")
    p.add_argument("--doc", default=str(RESULTS_DOC), help="the Markdown file holding the markers")
    a = p.parse_args(argv)
    table = render(collect())
    doc = Path(a.doc)
    text = doc.read_text(encoding="utf-8")
    current = doc_table(text)
    if a.check:
        if current is None:
            print(f"{doc} has no results markers ({START} … {END})", file=sys.stderr)
            return 1
        if current != table:
            print(f"{doc}'s results table is out of date: run python benchmarks/report.py --write",
                  file=sys.stderr)
            return 1
        return 0
    if a.write:
        if current is None:
            print(f"{doc} has no results markers ({START} … {END}); add them where the table goes",
                  file=sys.stderr)
            return 1
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        doc.write_text(f"{before}{START}\n{table}\n{END}{after}", encoding="utf-8")
        print(f"wrote {len(table.splitlines()) - 2} rows into {doc}")
        return 0
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
