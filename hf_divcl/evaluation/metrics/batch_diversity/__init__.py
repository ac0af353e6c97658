"""The ``batch_diversity`` `evaluate` metric: load it with ``hf_divcl.evaluation.metrics.load("batch_diversity")``."""
