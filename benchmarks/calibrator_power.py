"""Calibrator power and error: does exploring on the training steps find a level that truly beats random batches,
and does it stay on random batches when no level does?

The setting is cheap enough for many seeds and still real: an adapter (a residual MLP, zero-initialised so it
starts as the identity) fine-tuned with InfoNCE on frozen all-MiniLM-L6-v2 embeddings of WordNet pairs (the
noun.animal lemma → definition domain by default), scored by held-out retrieval ndcg@10 (500 test pairs held out
by synset). Every step is a real AdamW step on a real batch.

Three experiments:

1. **Truth** (fixed arms, long runs): each arm — random and each candidate level (``local:B``, ``local:8B``,
   ``spread:4``) — trains alone for ``--steps`` steps on ``--truth-seeds`` seeds; final held-out ndcg@10 paired
   against random (95 % t-interval). This says which level truly beats random, and by how much.
2. **Real effects of several sizes**: the effect is not built in; it comes from the temperature. At τ = 0.05
   random batches are as good as any level here; the larger τ, the more tight batches (``local:B``) beat random
   ones (the truth table measures it per τ). The explorer (``hf_divcl.experimental.sequential``) runs on
   ``--seeds`` seeds per τ: decision rate per level with a 95 % Wilson interval, blocks needed, and the run's
   final ndcg@10 against random on the same seed. (``--dup m`` repeats every training pair m times: random
   batches crowded with identical rows. Measured: no level gains from that here, so it is off by default.)
3. **Null**: the "levels" are random batches under other generators; every window decision is a false one.

    python benchmarks/calibrator_power.py                    # ~25 min on 2 cores
    python benchmarks/calibrator_power.py --smoke            # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

LEVELS = ("local:{B}", "spread:4")  # the trainer's default levels for a candidate sample of 8B rows


def features(a) -> dict[str, torch.Tensor]:
    """Frozen MiniLM embeddings of the train / test pairs (cached on disk)."""
    from hf_divcl._common import cache_root
    from hf_divcl.data.wordnet import wordnet_split
    from hf_divcl.models.loading import load_sentence_transformer

    key = f"{a.source}-{a.domain or 'all'}-{a.kind}-{a.limit}"
    path = cache_root() / "benchmarks" / f"calibrator_power-{key}.pt"
    if path.exists():
        return torch.load(path)
    domains = [a.domain] if a.domain else None
    train = wordnet_split(kind=a.kind, split="train", source=a.source, domains=domains)
    test = wordnet_split(kind=a.kind, split="test", source=a.source, domains=domains)
    if a.limit:
        train = train.select(range(min(a.limit, len(train))))
        test = test.select(range(min(a.limit // 4, len(test))))
    model = load_sentence_transformer("all-MiniLM-L6-v2", device="cpu")
    out = {}
    with torch.no_grad():
        for name, ds in (("train", train), ("test", test)):
            for col in ("anchor", "positive"):
                out[f"{name}_{col}"] = model.encode(list(ds[col]), convert_to_tensor=True, batch_size=128,
                                                    normalize_embeddings=True).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


class Adapter(torch.nn.Module):
    """``x + W2·gelu(W1·x)`` with ``W2 = 0`` at the start: the base model's embedding, then learned."""

    def __init__(self, d: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.w1 = torch.nn.Linear(d, d)
        self.w2 = torch.nn.Linear(d, d)
        torch.nn.init.zeros_(self.w2.weight)
        torch.nn.init.zeros_(self.w2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x + self.w2(torch.nn.functional.gelu(self.w1(x))), dim=-1)


def ndcg10(model: Adapter, anchors: torch.Tensor, positives: torch.Tensor) -> float:
    with torch.no_grad():
        s = model(anchors) @ model(positives).T
    rank = (s > s.diagonal()[:, None]).sum(-1)  # 0 = first
    return torch.where(rank < 10, 1.0 / torch.log2(rank.double() + 2), torch.zeros_like(rank.double())).mean().item()


class Run:
    """One training run of the adapter: the data, the batch draws per arm, a step, the probe gradient."""

    def __init__(self, feats, a, seed: int, dup: int, levels: list[str]) -> None:
        from hf_divcl.diversity.levels import parse_level

        gen = torch.Generator().manual_seed(seed)
        n = feats["train_anchor"].shape[0]
        perm = torch.randperm(n, generator=gen)
        probe, rest = perm[:a.probe_rows], perm[a.probe_rows:]
        unique = rest[:a.unique] if a.unique else rest
        self.rows = unique.repeat(dup)  # every training pair m times
        self.A, self.P = feats["train_anchor"], feats["train_positive"]
        self.probe = probe
        self.test = feats["test_anchor"], feats["test_positive"]
        self.model = Adapter(self.A.shape[1], seed)
        params = self.model.parameters()
        self.opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0) if getattr(a, "optim", "adamw") == "adamw" \
            else torch.optim.SGD(params, lr=a.lr, momentum=0.9)
        self.params = [p for p in self.model.parameters()]
        self.a, self.B = a, a.batch_size
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.levels = {name: parse_level(name) for name in levels if not name.startswith("random")}
        self.null_gens = {name: torch.Generator().manual_seed(seed * 31 + i + 2) for i, name in enumerate(levels)}

    def batch(self, arm: str, null: bool) -> torch.Tensor:
        from hf_divcl.diversity.levels import draw_level

        if arm == "random" or null:
            g = self.gen if arm == "random" else self.null_gens[arm]
            return self.rows[torch.randperm(len(self.rows), generator=g)[:self.B]]
        sample = self.rows[torch.randperm(len(self.rows), generator=self.gen)[:8 * self.B]]
        with torch.no_grad():
            u = self.model(self.A[sample])
        return sample[draw_level(u, self.levels[arm], self.B, 1, self.gen)[0]]

    def lr(self, step: int) -> float:
        warm = max(1, self.a.steps // 20)
        return self.a.lr * min(1.0, (step + 1) / warm)

    def step(self, rows: torch.Tensor, step: int) -> list[torch.Tensor]:
        from hf_divcl.losses.maths import contrastive_loss

        for gr in self.opt.param_groups:
            gr["lr"] = self.lr(step)
        self.opt.zero_grad(set_to_none=True)
        loss = contrastive_loss(self.model(self.A[rows]), self.model(self.P[rows]), self.a.temperature).loss
        loss.backward()
        return [p.grad.detach().clone() for p in self.params]

    def probe_gradient(self) -> list[torch.Tensor]:
        from hf_divcl.experimental.probe import retrieval_probe_loss

        loss = retrieval_probe_loss(self.model(self.A[self.probe]), self.model(self.P[self.probe]),
                                    self.a.probe_temperature)
        return [g.detach() for g in torch.autograd.grad(loss, self.params)]

    def final(self) -> float:
        return ndcg10(self.model, *self.test)


def fixed_arm(feats, a, seed: int, dup: int, arm: str, levels: list[str]) -> float:
    run = Run(feats, a, seed, dup, levels)
    for t in range(a.steps):
        run.step(run.batch(arm, False), t)
        run.opt.step()
    return run.final()


def explore(feats, a, seed: int, dup: int, levels: list[str], null: bool) -> dict:
    """Explore on the training steps until the test decides, then train on the decided arm to ``a.steps``."""
    from hf_divcl.experimental.preconditioner import preconditioner, step_score
    from hf_divcl.experimental.sequential import SequentialTest, block_order, recheck_verdict

    run = Run(feats, a, seed, dup, levels)
    test = SequentialTest(levels, alpha=a.alpha, min_blocks=a.min_blocks, max_blocks=a.max_blocks,
                          growth=a.growth)
    t, block, probe_grad = 0, 0, None
    t0 = time.perf_counter()
    score_seconds = 0.0
    while not test.done and t < a.steps:
        s0 = time.perf_counter()
        if block % a.refresh_blocks == 0 or probe_grad is None:
            probe_grad = run.probe_gradient()
        score_seconds += time.perf_counter() - s0
        scores = {}
        for arm in block_order(test.arms, block, seed):
            grads = run.step(run.batch(arm, null), t)
            s0 = time.perf_counter()
            precond, _ = preconditioner(run.opt, run.params, grads)
            scores[arm] = step_score(grads, precond, probe_grad, run.lr(t))
            score_seconds += time.perf_counter() - s0
            run.opt.step()
            t += 1
        test.add_block({k: v.item() for k, v in scores.items()})  # one host sync per block
        block += 1
    d = test.decision
    arm = d.level if d.status == "window" else "random"
    explore_steps = t
    def fits(at: int) -> bool:
        allowed = a.max_rechecks is None or len(rechecks) < a.max_rechecks
        return allowed and 2 * at + 2 * a.recheck_blocks + 2 <= a.steps

    rechecks: list[dict] = []

    next_check = 2 * t if arm != "random" and a.recheck_blocks and fits(t) else None
    while t < a.steps:
        if next_check is not None and t >= next_check:
            # a re-check as the trainer's (explorer.py): the window's arm against random batches, up to
            # --recheck-blocks blocks; --recheck-rule says what keeps the window
            check = SequentialTest([arm], alpha=a.alpha, min_blocks=max(2, a.recheck_blocks // 2),
                                   max_blocks=a.recheck_blocks)
            probe_grad, k = run.probe_gradient(), 0
            while not check.done and t < a.steps:
                scores = {}
                for which in block_order(check.arms, 1_000_003 * (len(rechecks) + 1) + k, seed):
                    grads = run.step(run.batch(which, null), t)
                    precond, _ = preconditioner(run.opt, run.params, grads)
                    scores[which] = step_score(grads, precond, probe_grad, run.lr(t)).item()
                    run.opt.step()
                    t += 1
                check.add_block(scores)
                k += 1
            keep = recheck_verdict(check.decision, a.recheck_rule) == "keep"
            rechecks.append({"step": t, "kept": keep, "blocks": check.blocks,
                             "mean": check.statistics(arm)["mean"]})
            if not keep:
                arm, next_check = "random", None
            else:
                next_check = 2 * t if fits(t) else None
            continue
        run.step(run.batch(arm, null), t)
        run.opt.step()
        t += 1
    return {"seed": seed, "temperature": a.temperature, "null": null, "status": d.status, "level": d.level,
            "reason": d.reason, "rechecks": rechecks, "final_arm": arm,
            "blocks": d.blocks, "explore_steps": explore_steps, "final": run.final(),
            "score_seconds": score_seconds, "seconds": time.perf_counter() - t0,
            "levels": {k: {kk: v[kk] for kk in ("mean", "se", "low", "high", "active", "blocks")}
                       for k, v in d.levels.items()}}


def oneshot(feats, a, seed: int, dup: int, levels: list[str], null: bool) -> dict:
    """The one-shot progress calibration of ``batch_policy="progress"`` for comparison: at step 0 and after 10 % of the
    steps, ``a.oneshot_pairs`` extra scored batches per level, each paired with a random one, scored by the
    first-order gain on InfoNCE over random in-batch negatives of the probe; a level wins when the lower end of its
    90 % paired interval is above 0 (``hf_divcl.experimental.progress.decide``)."""
    from hf_divcl.experimental.progress import StepGain, decide
    from hf_divcl.losses.maths import contrastive_loss

    run = Run(feats, a, seed, dup, levels)
    B = a.batch_size

    def loss_of(rows):
        return contrastive_loss(run.model(run.A[rows]), run.model(run.P[rows]), a.temperature).loss

    def probe_loss_of():
        u, v = run.model(run.A[run.probe]), run.model(run.P[run.probe])
        return [contrastive_loss(u[i:i + B], v[i:i + B], a.temperature).loss for i in range(0, len(u) - B + 1, B)]

    arm, decisions, extra = "random", [], 0
    for t in range(a.steps):
        if t in (0, a.steps // 10):
            gain = StepGain(run.params, loss_of, probe_loss_of, run.lr(t), optimizer=run.opt if t else None)
            diffs = {lv: torch.tensor([gain(run.batch(lv, null)) - gain(run.batch("random", null))
                                       for _ in range(a.oneshot_pairs)], dtype=torch.float64) for lv in levels}
            extra += gain.backward_passes
            winner, _ = decide(diffs, 0.9)
            arm = winner or "random"
            decisions.append(arm)
        run.step(run.batch(arm, null), t)
        run.opt.step()
    return {"seed": seed, "null": null, "decisions": decisions, "status": "window" if arm != "random" else "random",
            "level": arm if arm != "random" else None, "final": run.final(), "extra_backward": extra}


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, c - h), min(1.0, c + h)]


def t_interval(values: list[float]) -> dict:
    from hf_divcl.experimental.sequential import paired_interval

    mean, low, high = paired_interval(torch.tensor(values, dtype=torch.float64), 0.95)
    return {"mean": mean, "ci95": [low, high] if len(values) > 1 else None, "n": len(values),
            "wins": sum(v > 0 for v in values)}


def apply_plan(a, levels: list[str], train_rows: int) -> None:
    """Size the exploration as the trainer would for a run of ``a.steps`` steps (``plan_exploration`` with the
    default budget and re-checks): its block counts, probe refresh interval and re-checks replace the flags."""
    from hf_divcl.experimental.explore_plan import RECHECK_BLOCKS, plan_exploration

    plan = plan_exploration(total_steps=a.steps, batch_size=a.batch_size, train_rows=train_rows,
                            probe_rows=a.probe_rows, min_blocks=a.min_blocks, alpha=a.alpha, levels=levels,
                            recheck_blocks=a.recheck_blocks or RECHECK_BLOCKS, recheck_rule=a.recheck_rule,
                            probe_temperature=a.probe_temperature)
    if not plan.max_blocks:
        raise SystemExit(f"--as-planned: the trainer would not explore a {a.steps}-step run: {plan.reason}")
    a.max_blocks, a.refresh_blocks = plan.max_blocks, plan.refresh_blocks
    a.recheck_blocks, a.max_rechecks = plan.recheck_blocks, plan.max_rechecks
    a.plan = plan.reason
    print(f"as planned for {a.steps} steps: {plan.reason}", flush=True)


def run_null(feats, a, tau: float, decide_run, null_levels: list[str], result: dict, save) -> None:
    """The null at ``tau``: every arm is random batches under its own generator; count the false windows."""
    nulls = [decide_run(feats, a, 5000 + s, a.dup, null_levels, null=True) for s in range(a.seeds)]
    false = sum(r["status"] == "window" for r in nulls)
    result["null"][str(tau)] = {"false_windows": false, "rate": false / a.seeds, "wilson95": wilson(false, a.seeds),
                                "blocks_median": statistics.median(r.get("blocks", 0) for r in nulls),
                                "runs": nulls}
    print(f"τ={tau}: null false windows {false} of {a.seeds}", flush=True)
    save()


def fill_random_finals(paths: list[str]) -> None:
    """Re-run the random arms of older result files (seeds 1000 + s, the explorer's seeds) and store their finals
    as ``planted[τ]["random_finals"]``, so every ``final_minus_random`` interval can be recomputed from the file.

    The random arm depends only on the data, the seed and the run's settings, so it is re-run as it was; the file's
    stored mean difference is checked against the recomputed one (``random_check``, within 1e-4: most files
    reproduce to the last digit, some differ by ~1e-6 from float noise) before anything is written.
    """
    torch.set_num_threads(1)
    done: dict[str, list[float]] = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        a = argparse.Namespace(**result["config"])
        levels = result["levels"]
        feats = features(a)  # the exploration plan (--as-planned) does not touch the random arm: not re-applied
        for tau, entry in result.get("planted", {}).items():
            a.temperature = float(tau)
            seeds = [r["seed"] for r in entry["runs"]]
            key = json.dumps([a.source, a.domain, a.kind, a.limit, a.unique, a.dup, a.probe_rows, a.batch_size,
                              a.steps, a.lr, getattr(a, "optim", "adamw"), tau, seeds])
            if key not in done:
                done[key] = [fixed_arm(feats, a, s, a.dup, "random", levels) for s in seeds]
            rnd = done[key]
            again = t_interval([r["final"] - b for r, b in zip(entry["runs"], rnd, strict=True)])
            stored = entry["final_minus_random"]["mean"]
            if abs(again["mean"] - stored) > 1e-4:  # float noise of a re-run (thread count, BLAS) moves it ~1e-6
                raise SystemExit(f"{path} τ={tau}: the re-run random arms give final − random {again['mean']:+.6f}, "
                                 f"the file says {stored:+.6f}; not written.")
            entry["random_finals"] = rnd
            entry["random_check"] = {"stored_mean": stored, "recomputed_mean": again["mean"]}
            print(f"{path} τ={tau}: {len(rnd)} random finals, final − random {again['mean']:+.4f} (file "
                  f"{stored:+.4f})", flush=True)
        Path(path).write_text(json.dumps(result, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="debian")
    p.add_argument("--domain", default="noun.animal")
    p.add_argument("--kind", default="lemma")
    p.add_argument("--limit", type=int, default=0, help="train rows kept (0: all)")
    p.add_argument("--unique", type=int, default=0, help="unique training pairs before duplication (0: all)")
    p.add_argument("--dup", type=int, default=1, help="copies of each training pair")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5])
    p.add_argument("--probe-rows", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--probe-temperature", type=float, default=0.05)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--levels", default=",".join(LEVELS), help="candidate levels ({B}: batch size, {B8}: 8 × B)")
    p.add_argument("--min-blocks", type=int, default=10)
    p.add_argument("--max-blocks", type=int, default=80)
    p.add_argument("--growth", type=float, default=2.0, help="ratio between the test's looks")
    p.add_argument("--refresh-blocks", type=int, default=1, help="probe gradient refreshed every N blocks")
    p.add_argument("--recheck-blocks", type=int, default=0,
                   help="re-check a chosen window at 2s, 4s, … with up to N blocks (0: none, as in the results; with "
                        "--as-planned 0 means the trainer's default)")
    p.add_argument("--recheck-rule", choices=["ahead", "behind"], default="ahead",
                   help="behind: drop the window when it is behind random with confidence; ahead: keep it only "
                        "while it is ahead with confidence")
    p.add_argument("--skip-truth", action="store_true", help="no fixed-arm truth runs (the truth tables exist)")
    p.add_argument("--skip-null", action="store_true", help="no null runs")
    p.add_argument("--skip-planted", action="store_true", help="no runs on the real levels (only the null)")
    p.add_argument("--truth-seeds", type=int, default=8)
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--optim", choices=["adamw", "sgd"], default="adamw", help="sgd: momentum 0.9 (set --lr)")
    p.add_argument("--truth-only", action="store_true", help="only the fixed-arm runs (no explorer, no null)")
    p.add_argument("--calibrator", choices=["explore", "oneshot"], default="explore",
                   help="oneshot: batch_policy='progress''s one-shot calibration, for comparison")
    p.add_argument("--oneshot-pairs", type=int, default=3, help="oneshot: scored pairs per level and calibration")
    p.add_argument("--max-rechecks", type=int, default=None, help="re-checks after a decision at most (default: "
                   "as many as fit in the steps)")
    p.add_argument("--as-planned", action="store_true",
                   help="blocks, refreshes and re-checks as the trainer's plan_exploration sizes them for a run of "
                        "--steps steps with --recheck-blocks' re-checks (overrides --max-blocks/--refresh-blocks)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--output", default=None)
    p.add_argument("--fill-random", nargs="+", default=None, metavar="JSON",
                   help="re-run and store the random arms behind these files' explorer intervals, then stop")
    a = p.parse_args()
    if a.fill_random:
        fill_random_finals(a.fill_random)
        return
    if a.smoke:
        a.source, a.domain, a.kind, a.limit = "embedded", None, "example", 600
        a.temperatures, a.probe_rows, a.batch_size, a.steps = [0.05, 0.5], 64, 8, 40
        a.truth_seeds, a.seeds, a.min_blocks, a.max_blocks = 2, 2, 2, 4
    out = Path(a.output or (Path(tempfile.gettempdir()) / "calibrator_power_smoke.json" if a.smoke
                            else "benchmarks/results/calibrator_power.json"))
    torch.set_num_threads(1)  # a small model: one thread is fastest and leaves the other core alone
    feats = features(a)
    levels = [x.strip().format(B=a.batch_size, B8=8 * a.batch_size) for x in a.levels.split(",")]
    if a.as_planned:
        apply_plan(a, levels, train_rows=feats["train_anchor"].shape[0] - a.probe_rows)
    null_levels = [f"random_{chr(98 + i)}" for i in range(len(levels))]  # as many null arms as levels
    result: dict = {"config": vars(a), "levels": levels, "truth": {}, "planted": {}, "null": {},
                    "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))

    dup = a.dup
    for tau in a.temperatures:
        a.temperature = tau
        if not a.skip_truth:
            finals = {arm: [fixed_arm(feats, a, s, dup, arm, levels) for s in range(a.truth_seeds)]
                      for arm in ["random", *levels]}
            result["truth"][str(tau)] = {
                "untrained": ndcg10(Adapter(feats["train_anchor"].shape[1], 0), feats["test_anchor"],
                                    feats["test_positive"]),
                "random_final_mean": statistics.fmean(finals["random"]),
                "levels": {arm: t_interval([x - r for x, r in zip(finals[arm], finals["random"], strict=True)])
                           for arm in levels}, "finals": finals}
            truth = result["truth"][str(tau)]["levels"]
            print(f"τ={tau}: random {statistics.fmean(finals['random']):.4f}; " + ", ".join(
                f"{k} {v['mean']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]" if v["ci95"]
                else f"{k} {v['mean']:+.4f}" for k, v in truth.items()), flush=True)
        save()
        if a.truth_only:
            continue
        decide_run = explore if a.calibrator == "explore" else oneshot
        if a.skip_planted:
            run_null(feats, a, tau, decide_run, null_levels, result, save)
            continue
        runs = [decide_run(feats, a, 1000 + s, dup, levels, null=False) for s in range(a.seeds)]
        rnd = [fixed_arm(feats, a, 1000 + s, dup, "random", levels) for s in range(a.seeds)]
        chosen = {lv: sum(r["level"] == lv for r in runs) for lv in levels}
        result["planted"][str(tau)] = {
            "decisions": {**{lv: {"count": c, "rate": c / a.seeds, "wilson95": wilson(c, a.seeds)}
                             for lv, c in chosen.items()},
                          "random": {"count": sum(r["status"] == "random" for r in runs),
                                     "rate": sum(r["status"] == "random" for r in runs) / a.seeds}},
            "blocks_median": statistics.median(r.get("blocks", 0) for r in runs),
            "explore_steps_median": statistics.median(r.get("explore_steps", 0) for r in runs),
            "final_minus_random": t_interval([r["final"] - b for r, b in zip(runs, rnd, strict=True)]),
            "random_finals": rnd,
            "score_fraction_of_wall": statistics.fmean(r.get("score_seconds", 0.0) / max(r.get("seconds", 1.0), 1e-9)
                                                       for r in runs),
            "rechecked": sum(bool(r.get("rechecks")) for r in runs),
            "reverted": sum(any(not c["kept"] for c in r.get("rechecks", [])) for r in runs),
            "runs": runs}
        print(f"τ={tau}: explorer chose " + ", ".join(f"{k} {v['count']}" for k, v in
                                                      result["planted"][str(tau)]["decisions"].items())
              + f" of {a.seeds}; blocks median {result['planted'][str(tau)]['blocks_median']}; final − random "
              f"{result['planted'][str(tau)]['final_minus_random']['mean']:+.4f}; re-checked "
              f"{result['planted'][str(tau)]['rechecked']}, reverted {result['planted'][str(tau)]['reverted']}",
              flush=True)
        save()
        if not a.skip_null:
            run_null(feats, a, tau, decide_run, null_levels, result, save)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
