"""Held-out quality: retrieval (ndcg@10, MRR, accuracy@k), word similarity (WordSim-353, SimLex-999), k-NN and
linear-probe accuracy (:mod:`.retrieval`, :mod:`.word_similarity`, :mod:`.probes`; :mod:`.tasks` runs the text or
vision set). In: a model and held-out data; out: a dict of scores. :mod:`.metrics` holds ``evaluate`` modules
loadable offline by path.
"""
