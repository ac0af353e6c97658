"""The ``batch_diversity`` `evaluate` metric: load it with ``hf_divcl.metrics.load("batch_diversity")``."""
