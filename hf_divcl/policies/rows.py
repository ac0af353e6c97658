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


def prepare_source_rows(sources, args: Any, policy: BatchPolicy, infonce: bool = True, model=None,
                        losses: dict[str, Any] | None = None):
    """Several sources (a ``datasets.DatasetDict``) as one set of training rows: each source validated on its own
    (errors name the source), columns matched by position, the sources concatenated in order with a row-id column.

    Returns ``(rows, split)``: the concatenated ``datasets.Dataset`` and the
    :class:`~hf_divcl.planning.sources.SourceSplit` that says which rows are which source and how batches draw
    from them (``args.multi_dataset_batch_sampler``, ``args.source_mix``). ``losses``: the per-source losses when
    the loss is a dict (its keys must be the sources)."""
    import datasets

    from ..planning.sources import SourceSplit

    if isinstance(sources, datasets.IterableDatasetDict) or any(
            isinstance(d, datasets.IterableDataset) for d in sources.values()):
        raise DatasetError("Several streaming sources (IterableDatasetDict) cannot be trained together: each batch is "
                           "drawn from one source, which needs a length per source. Load them without "
                           "streaming=True, or interleave them into one stream with datasets.interleave_datasets.")
    if not len(sources):
        raise DatasetError("train_dataset is an empty DatasetDict: give it at least one source.")
    if not policy.multi_source:
        raise DatasetError(f"batch_policy={policy.name!r} does not train on several sources yet; use "
                           "batch_policy='random' or 'window' (planned within each source), or pass one source.")
    if losses is not None and set(losses) != set(sources):
        missing, extra = sorted(set(sources) - set(losses)), sorted(set(losses) - set(sources))
        raise DatasetError(f"The loss dict's keys must be the sources' names {sorted(sources)}: "
                           + "; ".join(x for x in (f"no loss for {missing}" if missing else "",
                                                   f"no source named {extra}" if extra else "") if x) + ".")
    order = str(getattr(args.multi_dataset_batch_sampler, "value", args.multi_dataset_batch_sampler))
    if order not in ("proportional", "round_robin"):
        raise DatasetError(f"multi_dataset_batch_sampler={order!r}: hf_divcl orders the sources' batches "
                           "'proportional' or 'round_robin'.")
    global_batch = global_batch_size(args)
    planned = args.dedupe and args.batch_sampler == BatchSamplers.BATCH_SAMPLER
    first_name, first_cols, parts = None, None, []
    for name, ds in sources.items():
        if not isinstance(ds, datasets.Dataset):
            raise DatasetError(f"Source {name!r} is a {type(ds).__name__}, not a datasets.Dataset.")
        if ROW_ID_COLUMN in ds.column_names:
            ds = ds.remove_columns(ROW_ID_COLUMN)
        try:
            cols = validate_training_dataset(ds, min_rows=max(2, global_batch), ignore=(ROW_ID_COLUMN,),
                                             model=model, dedupe_batch_size=global_batch if planned else None)
        except DatasetError as err:
            raise DatasetError(f"Source {name!r}: {err}") from None
        if infonce and len(cols) < 2 and not (len(cols) == 1 and is_image_feature(ds.features[cols[0]])):
            raise DatasetError(f"Source {name!r}: the contrastive loss needs 2 input columns (anchor, positive"
                               f"[, negatives...]); it has {len(cols)}: {cols}.")
        if first_cols is None:
            first_name, first_cols = name, cols
        else:
            _check_same_columns(first_name, first_cols, sources[first_name], name, cols, ds)
        extra = [c for c in ds.column_names if c not in cols]  # labels: kept only where every source has them
        ds = ds.select_columns(cols + extra).rename_columns(
            {c: f for c, f in zip(cols, first_cols, strict=True) if c != f})
        parts.append(ds)
    common = [c for c in parts[0].column_names if all(c in p.column_names for p in parts)]
    parts = [p.select_columns(common) for p in parts]
    features = parts[0].features
    parts = [p.cast(features) if p.features != features else p for p in parts]
    rows = datasets.concatenate_datasets(parts)
    rows = rows.add_column(ROW_ID_COLUMN, np.arange(len(rows), dtype=np.int64))
    split = SourceSplit(tuple(sources), tuple(len(p) for p in parts), order=order, mix=float(args.source_mix))
    return rows, split


def _check_same_columns(first: str, first_cols: list[str], first_ds, name: str, cols: list[str], ds) -> None:
    """Sources share one loss and one batch layout: the same number of input columns, of the same kind."""
    if len(cols) != len(first_cols):
        raise DatasetError(f"Source {name!r} has {len(cols)} input columns {cols} but source {first!r} has "
                           f"{len(first_cols)} {first_cols}; every batch of a run feeds the same columns to the loss. "
                           "Give every source the same columns (e.g. drop the extra negatives column with "
                           "dataset.remove_columns), or train them in separate runs.")
    for a, b in zip(first_cols, cols, strict=True):
        ka, kb = is_image_feature(first_ds.features[a]), is_image_feature(ds.features[b])
        if ka != kb:
            raise DatasetError(f"Source {name!r}, column {b!r} holds {'images' if kb else 'text'} but the column in "
                               f"the same position of source {first!r} ({a!r}) holds {'images' if ka else 'text'}; "
                               "columns are matched by position. Reorder the columns so that they agree.")
