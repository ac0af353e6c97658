"""The cost model of the experimental policies, in *batch equivalents*: one forward + backward of a training batch of
B rows = 1, a forward alone ≈ 1/3. Every plan counts in these units against its ``budget`` (a fraction of the run's
training batches): ``"progress"``'s calibrations (:func:`calibration_cost`), ``"explore"``'s probe refreshes
(:func:`refresh_cost`), scored steps (:data:`SCORE_COST`) and re-checks (:func:`recheck_cost`).
"""

from __future__ import annotations

__all__ = ["SCORE_COST", "calibration_cost", "encode_cost", "gradient_cost", "recheck_cost", "refresh_cost"]

# A scored step's extra work in batch equivalents: the fused score (preconditioned_score) over every trainable
# parameter. Measured 0.07-0.09 on MiniLM at B = 32 on CPU, 0.03-0.05 on the tiny ViT at B = 128
# (benchmarks/explore_cost.py, docs/results.md); rounded up.
SCORE_COST = 0.1


def encode_cost(rows: int, batch_size: int) -> float:
    """Encoding ``rows`` rows (a forward pass each)."""
    return rows / (3 * batch_size)


def gradient_cost(rows: int, batch_size: int) -> float:
    """A gradient over ``rows`` rows (forward and backward)."""
    return rows / batch_size


def calibration_cost(batch_size: int, n_pairs: int, n_levels: int, probe_rows: int, sample_rows: int,
                     estimate: str = "first_order") -> float:
    """One ``"progress"`` calibration: encoding the candidate sample ``S/(3B)``, ``n·(1 + A)`` scored batches for
    ``A`` levels and ``n`` pairs, and the probe: its gradient ``P/B`` (``"first_order"``) or two probe forwards per
    scored batch and one more (``"lookahead"``)."""
    scored = n_pairs * (1 + n_levels)
    cost = encode_cost(sample_rows, batch_size) + scored
    if estimate == "lookahead":
        return cost + encode_cost((2 * scored + 1) * probe_rows, batch_size)
    return cost + gradient_cost(probe_rows, batch_size)


def refresh_cost(sample_rows: int, probe_rows: int, batch_size: int) -> float:
    """One ``"explore"`` refresh: encoding the candidate sample and the probe gradient."""
    return encode_cost(sample_rows, batch_size) + gradient_cost(probe_rows, batch_size)


def recheck_cost(probe_rows: int, batch_size: int, blocks: int) -> float:
    """One re-check of a chosen window: a probe refresh without encoding, and up to ``blocks`` blocks of two scored
    steps."""
    return gradient_cost(probe_rows, batch_size) + 2 * blocks * SCORE_COST
