"""Data sets that work offline, and the checks rows pass before training.

:mod:`.wordnet` (WordNet pairs from the Debian files or the embedded sample; file format in :mod:`.wordnet_files`),
:mod:`.images` (Fashion-MNIST, scikit-learn digits), :mod:`.local` (CSV/TSV/JSONL/Parquet pair files);
:mod:`.validation` names every bad row and column (helpers in :mod:`.columns`, :mod:`.truncation`). Out: a
``datasets.Dataset`` of input columns.
"""
