"""Data sets that work offline: WordNet pairs (Debian files or the embedded sample), local pair files, and images
(Fashion-MNIST from Debian files, scikit-learn's digits)."""

from .images import (
    DIGITS_TRAIN_SIZE,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    class_descriptions,
    digits,
    fashion_mnist,
    fashion_mnist_image_text,
    read_idx,
)
from .local import load_local_dataset, load_pair_file, validate_pairs
from .wordnet import (
    WORDNET_ROOT,
    WordNetSynset,
    embedded_sample_path,
    iter_wordnet_synsets,
    wordnet_pairs,
    wordnet_split,
)

__all__ = [
    "DIGITS_TRAIN_SIZE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "WORDNET_ROOT",
    "WordNetSynset",
    "class_descriptions",
    "digits",
    "embedded_sample_path",
    "fashion_mnist",
    "fashion_mnist_image_text",
    "iter_wordnet_synsets",
    "load_local_dataset",
    "load_pair_file",
    "read_idx",
    "validate_pairs",
    "wordnet_pairs",
    "wordnet_split",
]
