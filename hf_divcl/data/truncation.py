"""Texts longer than the model's ``max_seq_length``: which rows of which columns will be truncated, found
without tokenizing the rows that cannot reach the limit, and reported as one warning per column.

A report, never a refusal: :func:`~hf_divcl.data.validation.validate_training_dataset` runs it (when given the
model) after its checks, and the warning goes to the ``hf_divcl.data.validation`` logger like every data-set warning.
"""

from __future__ import annotations

import logging

from .columns import column_values, feature_kind, format_rows, true_rows

logger = logging.getLogger("hf_divcl.data.validation")  # the documented logger of the data-set warnings

__all__ = ["truncation_report"]


def truncation_report(dataset, columns: list[str], model) -> dict[str, list[int]]:
    """Rows of each text column longer than the model's ``max_seq_length`` (in tokens, special tokens included).

    Only rows whose UTF-8 length could reach the limit are tokenized (a token covers at least half a byte of
    text, and seldom less than one); returns ``{column: rows}`` for the columns with long rows and logs one
    warning per such column: how many rows, which, and the longest.
    """
    import numpy as np
    import pyarrow.compute as pc

    tokenizer, max_len = getattr(model, "tokenizer", None), getattr(model, "max_seq_length", None)
    if tokenizer is None or not max_len or not callable(tokenizer):
        return {}
    try:
        special = int(tokenizer.num_special_tokens_to_add(pair=False))
    except (AttributeError, TypeError, ValueError):
        special = 2
    out: dict[str, list[int]] = {}
    for column in columns:
        if feature_kind(dataset.features[column]) != "text":
            continue
        col = column_values(dataset, column)
        candidates = true_rows(pc.greater(pc.multiply(pc.binary_length(col), 2), max_len - special - 1))
        lengths = np.zeros(len(candidates), dtype=np.int64)
        for start in range(0, len(candidates), 4096):
            chunk = candidates[start:start + 4096]
            texts = col.take(chunk).to_pylist()
            try:
                enc = tokenizer(texts, add_special_tokens=True, truncation=False, return_length=True, verbose=False,
                                return_attention_mask=False, return_token_type_ids=False)
            except Exception as err:  # a processor or exotic tokenizer: no report rather than no training
                logger.debug("truncation report skipped for column %r: %s", column, err)
                return out
            found = enc.get("length")
            lengths[start:start + len(chunk)] = found if found is not None else [len(x) for x in enc["input_ids"]]
        over = lengths > max_len
        if over.any():
            rows = [candidates[i] for i in np.flatnonzero(over)]
            worst = int(np.argmax(lengths))
            out[column] = rows
            logger.warning("Column %r: %d of %d rows are longer than the model's max_seq_length of %d tokens and will "
                           "be truncated (rows %s; longest: row %d with %d tokens). Raise model.max_seq_length if "
                           "the model allows it, or split the long texts.", column, len(rows), len(dataset), max_len,
                           format_rows(rows), candidates[worst], int(lengths[worst]))
    return out
