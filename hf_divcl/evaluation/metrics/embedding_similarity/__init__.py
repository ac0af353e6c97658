"""The ``embedding_similarity`` `evaluate` metric: load it with
``hf_divcl.evaluation.metrics.load("embedding_similarity")``."""
