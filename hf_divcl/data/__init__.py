"""Data sets that work offline: WordNet pairs (Debian files or the embedded sample) and local pair files."""

from .local import load_pair_file, validate_pairs
from .wordnet import WORDNET_ROOT, WordNetSynset, embedded_sample_path, iter_wordnet_synsets, wordnet_pairs

__all__ = [
    "WORDNET_ROOT",
    "WordNetSynset",
    "embedded_sample_path",
    "iter_wordnet_synsets",
    "load_pair_file",
    "validate_pairs",
    "wordnet_pairs",
]
