"""The rows a :class:`~hf_divcl.training.trainer.DivCLTrainer` trains on: validated before any model step, minus the
rows the batch policy holds out for itself, with a row-id column (how the bank and the logs name each row)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sentence_transformers.base.sampler import BatchSamplers

from .._common import ROW_ID_COLUMN, global_batch_size, is_image_feature
from ..data.validation import DatasetError, validate_training_dataset
from .base import BatchPolicy

__all__ = ["prepare_training_rows"]


STREAM_CHECK_ROWS = 1000  # rows of a streaming data set checked before training (its head)


def prepare_training_rows(dataset, args: Any, policy: BatchPolicy, infonce: bool = True, model=None):
    """Validate ``dataset`` (rows named on failure), let ``policy`` hold out what it needs (probe or reference rows)
    and add the row-id column. Returns the rows to train on.

    A streaming ``datasets.IterableDataset`` is checked on its first :data:`STREAM_CHECK_ROWS` rows and numbered as
    it streams; only policies that need no bank (``policy.streams``: random batches) take one."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        return _prepare_stream(dataset, args, policy, infonce, model)
    global_batch = global_batch_size(args)
    planned = args.dedupe and args.batch_sampler == BatchSamplers.BATCH_SAMPLER
    cols = validate_training_dataset(dataset, min_rows=max(2, global_batch), ignore=(ROW_ID_COLUMN,), model=model,
                                     dedupe_batch_size=global_batch * policy.dedupe_factor() if planned else None)
    single_image = len(cols) == 1 and is_image_feature(dataset.features[cols[0]])
    if infonce and len(cols) < 2 and not single_image:
        raise DatasetError(f"The contrastive loss needs 2 input columns (anchor, positive[, negatives...]); the "
                           f"data set has {len(cols)}: {cols}. Add a positive column, or pass a loss that "
                           "works on single texts.")
    dataset = policy.prepare(dataset, args)
    if ROW_ID_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(ROW_ID_COLUMN)
    return dataset.add_column(ROW_ID_COLUMN, np.arange(len(dataset), dtype=np.int64))


def _prepare_stream(dataset, args: Any, policy: BatchPolicy, infonce: bool, model):
    import datasets

    if not policy.streams:
        raise DatasetError(f"batch_policy={policy.name!r} plans batches from an embedding of every row, which needs "
                           "a map-style datasets.Dataset (random access and a length); this is a streaming "
                           "IterableDataset. Use batch_policy='random' (random batches with every diagnostic), or "
                           "load the data without streaming=True.")
    if dataset.column_names is None:
        raise DatasetError("The streaming data set does not know its columns; give it features (e.g. "
                           "load_dataset(..., features=...) or dataset.cast(features)) so that the columns can be "
                           "checked before training.")
    head = datasets.Dataset.from_list(list(dataset.take(STREAM_CHECK_ROWS)), features=dataset.features)
    global_batch = global_batch_size(args)
    cols = validate_training_dataset(head, min_rows=max(2, global_batch), ignore=(ROW_ID_COLUMN,), model=model)
    if infonce and len(cols) < 2 and not (len(cols) == 1 and is_image_feature(head.features[cols[0]])):
        raise DatasetError(f"The contrastive loss needs 2 input columns (anchor, positive[, negatives...]); the "
                           f"data set has {len(cols)}: {cols}. Add a positive column, or pass a loss that "
                           "works on single texts.")
    if ROW_ID_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(ROW_ID_COLUMN)
    features = datasets.Features({**dataset.features, ROW_ID_COLUMN: datasets.Value("int64")})
    return dataset.map(lambda row, i: {ROW_ID_COLUMN: i}, with_indices=True, features=features)
