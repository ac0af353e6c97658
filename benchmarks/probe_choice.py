"""Which probe ranks diversity levels the way held-out retrieval does?

In the adapter setting of ``calibrator_power.py`` (frozen all-MiniLM-L6-v2 embeddings of WordNet noun.animal
lemma → definition pairs, a zero-initialised residual adapter trained with InfoNCE), for each training τ:

- **truth**: each arm (random, ``local:B``, ``local:8B``, ``spread:4``) trains alone for ``--steps`` steps on
  ``--truth-seeds`` seeds; a level's effect is its mean final held-out ndcg@10 minus random's;
- **probes**: after ``--warm`` random steps, every arm's batches are scored at the same weights by the step score
  of ``hf_divcl.experimental.sequential`` (``lr·⟨P(g), ∇L_probe⟩``, Adam's preconditioner) under three probes:
  ``infonce_random`` (InfoNCE over random in-batch negatives, B at a time, at the training τ: what the one-shot
  calibrator used), ``retrieval_train_tau`` (each probe anchor against all ``P`` probe positives at the training τ)
  and ``retrieval_sharp`` (the same at τ_probe = 0.05, the explore default); a level's probe effect is its mean
  score minus random's.

Reported: Spearman rank correlation between each probe's level effects and the truth effects over all
(τ, level) points, and within each τ.

    python benchmarks/probe_choice.py            # ~10 min on 2 cores
    python benchmarks/probe_choice.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from calibrator_power import Run, features, fixed_arm

PROBES = ("infonce_random", "retrieval_train_tau", "retrieval_sharp")


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for k, i in enumerate(order):
            r[i] = float(k)
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")


def probe_grad(run: Run, probe: str, tau: float, batch: int) -> list[torch.Tensor]:
    from hf_divcl.experimental.probe import retrieval_probe_loss
    from hf_divcl.losses.maths import contrastive_loss

    u, v = run.model(run.A[run.probe]), run.model(run.P[run.probe])
    if probe == "infonce_random":
        chunks = [contrastive_loss(u[i:i + batch], v[i:i + batch], tau).loss for i in range(0, len(u) - batch + 1,
                                                                                           batch)]
        loss = torch.stack(chunks).mean()
    else:
        loss = retrieval_probe_loss(u, v, tau if probe == "retrieval_train_tau" else 0.05)
    return [g.detach() for g in torch.autograd.grad(loss, run.params)]


def probe_effects(feats, a, seed: int, levels: list[str]) -> dict[str, dict[str, float]]:
    """Per probe, per level: mean step score minus random's, at the weights after ``a.warm`` random steps."""
    from hf_divcl.experimental.preconditioner import preconditioner, step_score

    run = Run(feats, a, seed, 1, levels)
    for t in range(a.warm):
        run.step(run.batch("random", False), t)
        run.opt.step()
    grads_by_probe = {p: probe_grad(run, p, a.temperature, a.batch_size) for p in PROBES}
    scores: dict[str, dict[str, list[float]]] = {p: {arm: [] for arm in ["random", *levels]} for p in PROBES}
    for _ in range(a.batches):
        for arm in ["random", *levels]:
            grads = run.step(run.batch(arm, False), a.warm)
            precond, _ = preconditioner(run.opt, run.params, grads)
            for p in PROBES:
                scores[p][arm].append(step_score(grads, precond, grads_by_probe[p], run.lr(a.warm)).item())
    return {p: {lv: statistics.fmean(scores[p][lv]) - statistics.fmean(scores[p]["random"]) for lv in levels}
            for p in PROBES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="debian")
    p.add_argument("--domain", default="noun.animal")
    p.add_argument("--kind", default="lemma")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--unique", type=int, default=0)
    p.add_argument("--probe-rows", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    p.add_argument("--truth-seeds", type=int, default=4)
    p.add_argument("--warm", type=int, default=20, help="random steps before scoring (Adam's v̂ warms up)")
    p.add_argument("--batches", type=int, default=24, help="scored batches per arm")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    if a.smoke:
        a.source, a.domain, a.kind, a.limit = "embedded", None, "example", 600
        a.temperatures, a.probe_rows, a.batch_size, a.steps = [0.05, 0.5], 64, 8, 30
        a.truth_seeds, a.warm, a.batches = 2, 4, 3
    out = Path(a.output or (Path(tempfile.gettempdir()) / "probe_choice_smoke.json" if a.smoke
                            else "benchmarks/results/probe_choice.json"))
    torch.set_num_threads(1)
    feats = features(a)
    levels = [x.format(B=a.batch_size, B8=8 * a.batch_size) for x in ("local:{B}", "local:{B8}", "spread:4")]
    rows = []
    for tau in a.temperatures:
        a.temperature = tau
        finals = {arm: [fixed_arm(feats, a, s, 1, arm, levels) for s in range(a.truth_seeds)]
                  for arm in ["random", *levels]}
        truth = {lv: statistics.fmean(finals[lv]) - statistics.fmean(finals["random"]) for lv in levels}
        effects = probe_effects(feats, a, 77, levels)
        for lv in levels:
            rows.append({"temperature": tau, "level": lv, "truth": truth[lv], **{pr: effects[pr][lv] for pr in PROBES}})
        print(f"τ={tau}: truth " + ", ".join(f"{lv} {truth[lv]:+.4f}" for lv in levels) + " | " + " | ".join(
            f"{pr}: " + ", ".join(f"{effects[pr][lv]:+.2e}" for lv in levels) for pr in PROBES), flush=True)
    result = {"config": vars(a), "rows": rows, "spearman_all": {
        pr: spearman([r[pr] for r in rows], [r["truth"] for r in rows]) for pr in PROBES},
        "spearman_within_tau_mean": {pr: statistics.fmean(
            spearman([r[pr] for r in rows if r["temperature"] == t],
                     [r["truth"] for r in rows if r["temperature"] == t]) for t in a.temperatures) for pr in PROBES}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("spearman_all", "spearman_within_tau_mean")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
