"""The ``embedding_similarity`` `evaluate` metric: load it with ``hf_divcl.metrics.load("embedding_similarity")``."""
