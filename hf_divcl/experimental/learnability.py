"""Learnability selection: JEST-style joint example selection, adapted to fine-tuning.

Each step the sampler draws a *super-batch* of ``M × B`` random rows; :class:`LearnabilitySelector` keeps ``B`` of
them, chosen chunk by chunk so that each chunk is scored *given* the rows already chosen (the contrastive loss of a
row depends on the whole batch). The other rows are skipped for this step (selection filters, as in JEST).

The score of a set ``S`` is its summed InfoNCE loss under the learner minus under a reference model::

    ℓ_i(S) = −z_ii + log Σ_{j∈S} exp z_ij,      z_ij = a_i · p_j / τ,
    learnability(S) = Σ_{i∈S} ℓ_i^learner(S) − ℓ_i^reference(S)

(with one view per row the anchors stand in for the positives, so ``z_ii = 1/τ`` and only the negatives
matter). Adding candidate ``c`` to the chosen set ``C`` changes the learner's summed loss by::

    Δ_c = −z_cc + log(e^{L_c} + e^{z_cc}) + Σ_{r∈C} [log(e^{L_r} + e^{z_rc}) − L_r],   L_r = log Σ_{j∈C} e^{z_rj}

and likewise for the reference; a chunk takes the candidates with the largest ``Δ^learner − Δ^reference``
(sampled without replacement in proportion to ``exp(score)`` — Gumbel top-k — or the top ones with
``sample=False``). The first chunk, with nothing chosen yet, uses each row's loss in the whole super-batch.
``reference=None`` is plain hard-example selection (the learner's loss alone), the baseline JEST beats.

The learner side comes from the training-fed bank (no extra forward passes): a row's embedding is as fresh as its
last training step, or the starting model's encoding for rows not trained on yet. With a window, ``draws``
batches are sampled this way and the one inside (or nearest) the window is kept, the most learnable among ties —
learnability *within* the window.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from .._common import HOLD_OUT_SEED, hold_out, mix_seed, total_training_steps
from ..diversity.window import DiversityWindow, measure_diversity

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..bank import EmbeddingBank
    from ..policies.context import PolicyContext

__all__ = ["LearnabilitySelector", "batch_losses", "build_reference_bank", "hold_out_reference_rows", "joint_select"]

"""Seed of the reference's held-out rows and its fine-tune: fixed, so every training seed of a run compares against
the same reference (a property of the data, cached on disk with its bank)."""


def _views(bank: Any, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(anchors, positives)`` float32 unit rows ``(K, d)`` of ``rows``; one view stands in for both."""
    two = not isinstance(bank, torch.Tensor) and bank.num_views > 1
    a = bank[rows] if isinstance(bank, torch.Tensor) else bank.get(rows, view=0)
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    return a, torch.nn.functional.normalize(bank.get(rows, view=1).float(), dim=-1) if two else a


def batch_losses(anchors: torch.Tensor, positives: torch.Tensor, temperature: float,
                 members: torch.Tensor) -> torch.Tensor:
    """Summed InfoNCE loss of each member set.

    Args:
        anchors, positives: ``(K, d)`` unit rows of the super-batch.
        members: ``(G, K)`` bool, the rows of each of ``G`` sets.

    Returns:
        ``(G,)`` float ``Σ_{i∈S} (−z_ii + log Σ_{j∈S} exp z_ij)``.
    """
    z = anchors @ positives.T / temperature  # (K, K)
    m = members.to(z.dtype)
    lse = torch.logsumexp(z[None] + torch.log(m)[:, None, :], dim=-1)  # (G, K); −inf outside: masked below
    per_row = torch.where(members, lse - z.diagonal()[None], torch.zeros_like(lse))
    return per_row.sum(-1)


def _gains(z: torch.Tensor, chosen: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``(G, K)`` change of the summed loss when each candidate joins each set (formula in the module docstring).

    ``z``: ``(K, K)`` logits; ``chosen``: ``(G, K)`` bool; ``lse``: ``(G, K)`` log-partition over the chosen set
    (``−inf`` for an empty set)."""
    diag = z.diagonal()[None]  # (1, K)
    own = torch.logaddexp(lse, diag) - diag  # the candidate's own loss in C ∪ {c}
    # the members' loss increase: log(e^{L_r} + e^{z_rc}) − L_r for r ∈ C, summed over r
    grow = torch.logaddexp(lse[:, :, None], z[None]) - lse[:, :, None]  # (G, K_r, K_c)
    grow = torch.where(chosen[:, :, None], grow, torch.zeros_like(grow))
    return own + grow.sum(1)


def joint_select(learner: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor] | None,
                 batch_size: int, temperature: float, *, chunks: int = 4, draws: int = 1,
                 generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
    """Choose ``draws`` batches of ``batch_size`` rows from a super-batch of ``K`` rows, chunk by chunk.

    Args:
        learner: ``(anchors, positives)``, each ``(K, d)`` unit rows, from the model being trained.
        reference: the same rows under the reference model (its own dimension is fine), or ``None`` for
            hard-example selection.
        chunks: chunks per batch; each is scored given the rows chosen before it.
        draws: independent batches to sample (only distinct with ``sample=True``).

    Returns:
        ``(draws, batch_size)`` long positions into the super-batch, distinct within each batch.
    """
    k = learner[0].shape[0]
    if not 1 <= batch_size <= k:
        raise ValueError(f"Cannot choose {batch_size} rows from a super-batch of {k}.")
    if reference is not None and reference[0].shape[0] != k:
        raise ValueError(f"The reference has {reference[0].shape[0]} rows, the learner {k}.")
    chunks = max(1, min(int(chunks), batch_size))
    sides = [(learner, 1.0)] + ([(reference, -1.0)] if reference is not None else [])
    zs = [(a @ p.T / temperature, sign) for (a, p), sign in sides]
    chosen = torch.zeros(draws, k, dtype=torch.bool)
    lses = [torch.full((draws, k), float("-inf")) for _ in zs]
    sizes = [batch_size // chunks + (1 if c < batch_size % chunks else 0) for c in range(chunks)]
    order = []
    for c, size in enumerate(sizes):
        if c == 0:  # nothing chosen yet: each row's own loss in the whole super-batch
            score = sum(sign * (torch.logsumexp(z, dim=-1) - z.diagonal()) for z, sign in zs).expand(draws, k)
        else:
            score = sum(sign * _gains(z, chosen, lse) for (z, sign), lse in zip(zs, lses, strict=True))
        if sample:
            u = torch.rand(draws, k, generator=generator).clamp_(1e-12, 1 - 1e-12)
            score = score - torch.log(-torch.log(u))  # Gumbel top-k: sampling ∝ exp(score) without replacement
        score = score.masked_fill(chosen, float("-inf"))
        new = score.topk(size, dim=-1).indices  # (draws, size)
        order.append(new)
        chosen.scatter_(1, new, True)
        for i, (z, _) in enumerate(zs):
            add = torch.logsumexp(z[:, new].permute(1, 0, 2), dim=-1)  # (draws, K): log Σ_{j∈new} e^{z_rj}
            lses[i] = torch.logaddexp(lses[i], add)
    return torch.cat(order, dim=1)


class LearnabilitySelector:
    """Keep ``B`` of the ``M × B`` rows of one sampler batch by joint learnability (see the module docstring).

    Args:
        bank: the learner's :class:`~hf_divcl.bank.EmbeddingBank` (fed by training), or a ``(N, d)`` tensor.
        batch_size: rows to keep.
        temperature: τ of the training loss.
        reference: the reference model's bank over the same rows (any dimension), or ``None`` for hard-example
            selection (learner loss alone).
        chunks: chunks per batch (JEST uses a handful; 1 = independent top-k).
        window: optional :class:`DiversityWindow`: sample ``draws`` batches and keep the one inside (nearest) it.
        draws: candidate batches with a window (default 8).
        seed: the choice is a pure function of (seed, the super-batch's rows), so a resumed run repeats it.
        sample: Gumbel top-k sampling (default) or deterministic top-k.
    """

    def __init__(self, bank, batch_size: int, temperature: float, *, reference=None, chunks: int = 4,
                 window: DiversityWindow | None = None, draws: int = 8, seed: int = 0, sample: bool = True) -> None:
        if reference is not None and len(reference) != len(bank):
            raise ValueError(f"The reference bank has {len(reference)} rows but the learner's bank has {len(bank)}; "
                             "encode the same training rows with the reference model.")
        self.bank, self.reference, self.batch_size = bank, reference, batch_size
        self.temperature, self.chunks, self.window, self.seed, self.sample = temperature, chunks, window, seed, sample
        self.draws = max(1, draws) if window is not None else 1
        self.calls = 0  # since the last summary
        self.total_calls = 0
        self.sums = {"selected": 0.0, "random": 0.0, "stale": 0.0}
        self._warned_stale = False

    @property
    def mode(self) -> str:
        return "hard" if self.reference is None else "learnability"

    def _generator(self, row_ids: torch.Tensor) -> torch.Generator:
        mix = int((row_ids.double() * torch.arange(1, row_ids.numel() + 1).double().sqrt()).sum().item() * 1e3)
        return torch.Generator().manual_seed(mix_seed(self.seed, mix) % (2 ** 63 - 1))

    def __call__(self, row_ids: torch.Tensor) -> torch.Tensor:
        if row_ids.numel() <= self.batch_size:
            return torch.arange(row_ids.numel())
        learner = _views(self.bank, row_ids)
        reference = _views(self.reference, row_ids) if self.reference is not None else None
        picks = joint_select(learner, reference, self.batch_size, self.temperature, chunks=self.chunks,
                             draws=self.draws, generator=self._generator(row_ids), sample=self.sample)
        sets = torch.zeros(picks.shape[0] + 1, row_ids.numel(), dtype=torch.bool)
        sets[torch.arange(picks.shape[0])[:, None], picks] = True
        sets[-1, :self.batch_size] = True  # the sampler's order is random: its first B rows are a random batch
        value = batch_losses(*learner, self.temperature, sets)
        if reference is not None:
            value = value - batch_losses(*reference, self.temperature, sets)
        value = value / self.batch_size  # mean per row, nats
        best = 0
        if self.window is not None:
            div = measure_diversity(learner[0][picks], self.window.metric)  # (draws,)
            dist = self.window.distance(div)
            best = int(torch.where(dist <= dist.min(), value[:-1], torch.full_like(dist, float("-inf"))).argmax())
        self.calls += 1
        self.total_calls += 1
        self.sums["selected"] += float(value[best])
        self.sums["random"] += float(value[-1])
        self.sums["stale"] += self._stale_fraction(row_ids)
        return picks[best]

    def _stale_fraction(self, row_ids: torch.Tensor) -> float:
        """Fraction of the super-batch whose learner embedding was never updated by a training step."""
        steps = getattr(self.bank, "last_update_step", None)
        if steps is None:
            return 1.0
        frac = float((steps[row_ids] <= 0).float().mean())
        if self.total_calls % 200 == 0 and self.total_calls and not self._warned_stale and int(steps.max()) <= 0:
            self._warned_stale = True
            logger.warning("Learnability selection: after %d steps no row of the learner's bank was ever updated by "
                           "training (bank source %r). The learner side is the starting model's encoding, so the "
                           "scores measure starting loss minus reference loss, not what the model can still learn; "
                           "use bank_source='training' (the default) or bank_refresh_epochs.",
                           self.total_calls, getattr(self.bank, "source", "?"))
        return frac

    def summary(self, reset: bool = True) -> dict[str, float]:
        """Means since the last call: the chosen and a random batch's score (learnability or loss, nats per row)
        and the fraction of super-batch rows whose learner embedding is still the starting model's."""
        if not self.calls:
            return {}
        out = {f"{self.mode}_selected": self.sums["selected"] / self.calls,
               f"{self.mode}_random": self.sums["random"] / self.calls,
               "learner_stale_fraction": self.sums["stale"] / self.calls}
        if reset:
            self.calls = 0
            self.sums = dict.fromkeys(self.sums, 0.0)
        return out


# ------------------------------------------------------------------------------------------------------------
# the reference model (batch_policy="learnability")


def hold_out_reference_rows(dataset, settings, global_batch: int):
    """Split off the rows the held-out reference is fine-tuned on; the run never trains on them.

    Returns ``(training rows, reference rows)`` as datasets (fixed split, see :data:`HOLD_OUT_SEED`)."""
    n = len(dataset)
    rows = settings.reference_rows or min(2000, max(4 * global_batch, n // 20))
    if rows < 2 or n - rows < 2 * global_batch:
        raise ValueError(f"batch_policy='learnability' with reference='held_out' needs {rows} held-out rows and at "
                         f"least "
                         f"{2 * global_batch} rows left to train on, but the data set has {n} rows. Set "
                         "reference_rows lower, pass a reference model path, or use batch_policy='hard'.")
    logger.info("batch_policy='learnability': %d rows held out to fine-tune the reference model", rows)
    return hold_out(dataset, rows, HOLD_OUT_SEED)


def train_reference_model(host: PolicyContext, data, steps: int) -> torch.nn.Module:
    """Fine-tune a copy of the starting model on ``data`` (the held-out reference rows) with a small
    ``SentenceTransformerTrainer``: the run's loss, learning rate, weight decay, precision and global batch size, the
    run's collator (image views included), ``steps`` AdamW steps on random batches with a short warm-up. The run's RNG
    and augmentation state are left as they were, so the training run itself is the same as without a reference."""
    import math
    import tempfile

    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from ..losses.infonce import InfoNCELoss
    from .follower import ProbeEnv

    a = host.args
    ref = host.model_copy()
    loss = InfoNCELoss(ref, temperature=a.temperature, loss_type=a.loss_option("loss_type"),
                       symmetric=a.loss_option("symmetric"), gather_across_devices=False)
    batch = max(1, min(host.global_batch_size(), len(data)) // max(1, a.world_size))
    with tempfile.TemporaryDirectory(prefix="divcl-reference-") as out, ProbeEnv(host):
        args = SentenceTransformerTrainingArguments(
            output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=a.learning_rate,
            weight_decay=a.weight_decay, lr_scheduler_type="constant_with_warmup", warmup_steps=max(1, steps // 10),
            seed=HOLD_OUT_SEED, data_seed=HOLD_OUT_SEED, bf16=a.bf16, fp16=a.fp16, use_cpu=a.use_cpu,
            save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=a.disable_tqdm,
            dataloader_drop_last=True)
        trainer = SentenceTransformerTrainer(model=ref, args=args, train_dataset=data, loss=loss,
                                             data_collator=host.data_collator)
        result = trainer.train()
    if not math.isfinite(result.training_loss):
        raise ValueError(f"The learnability reference's fine-tune ended with a non-finite loss "
                         f"({result.training_loss}); lower learning_rate or pass a reference model path.")
    ref.eval()
    return ref


class ReferenceBank(NamedTuple):
    """The reference side of learnability and what it cost: ``steps`` of the held-out fine-tune (``None`` for a given
    reference model), ``seconds`` of wall-clock for the fine-tune and the encoding."""

    bank: EmbeddingBank
    steps: int | None
    seconds: float


def build_reference_bank(host: PolicyContext, dataset, settings, reference_rows=None) -> ReferenceBank:
    """The reference side of learnability: the training rows encoded by the reference model (cached on disk by
    model and data fingerprints, like the learner's bank)."""
    from sentence_transformers import SentenceTransformer

    a, s = host.args, settings
    steps = None
    t0 = time.perf_counter()
    if s.reference == "held_out":
        run_steps = total_training_steps(a, len(dataset), host.global_batch_size())
        steps = s.reference_steps or max(10, round(0.2 * run_steps))
        model = train_reference_model(host, reference_rows, steps)
    elif s.reference == "guide":
        model = host.guide_model()
    else:
        try:
            model = SentenceTransformer(s.reference, device=str(a.device))
        except Exception as err:
            raise ValueError(f"Cannot load the learnability reference from {s.reference!r} "
                             f"({type(err).__name__}: {err}).") from err
    if set(getattr(model, "modalities", ["text"])) != set(getattr(host.model, "modalities", ["text"])):
        raise ValueError(f"The learnability reference reads {getattr(model, 'modalities', ['text'])} but the model "
                         f"trained reads {getattr(host.model, 'modalities', ['text'])}; give a reference of the "
                         "same modality.")
    was_training = model.training
    model.eval()
    try:
        bank = host.encode_bank(model, dataset)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    logger.info("learnability reference (%s): %s (%.1f s)", s.reference, bank, seconds)
    return ReferenceBank(bank, steps, seconds)
