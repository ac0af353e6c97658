"""Batch diversity, measured: the maths every other part reads.

In: a batch of embeddings ``(..., B, d)`` (and its positives, the temperature τ). Out: diversity metrics
(:mod:`.metrics`: effective rank, participation ratio, λ_max, mean cos²), exact per-anchor InfoNCE gradient norms and
their spectral bands (:mod:`.bands`), the shared input checks (:mod:`.checks`), batches of controlled diversity
(:mod:`.levels`), the :class:`~.window.DiversityWindow` (an interval of one metric) and the ``diversity_log.jsonl``
format (:mod:`.log`). Pure torch, any device; depends on nothing else in hf_divcl.
"""
