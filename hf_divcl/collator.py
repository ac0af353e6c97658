"""``DivCLDataCollator``: rows → model inputs for text pairs, image pairs (two augmented views of one image) and
image–text pairs, carrying each row's index so that the trainer can feed the step's embeddings back to the bank.

Built on sentence-transformers' data collator (``model.preprocess`` does the tokenising / image processing), so
prompts, router mappings and label columns keep working.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from ._common import ROW_ID_COLUMN, input_columns

__all__ = ["DivCLDataCollator"]


def _is_image(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") or (isinstance(value, torch.Tensor) and value.ndim == 3)


@dataclass
class DivCLDataCollator(SentenceTransformerDataCollator):
    """Sentence-transformers collator plus row ids, two-view image augmentation and optional mega-batch selection.

    Args:
        preprocess_fn: ``model.preprocess``.
        augment: callable ``images -> (view_1, view_2)`` (e.g. :class:`hf_divcl.models.augment.TwoViewAugment`); used
        when a
            batch has a single image column, which then becomes the two columns ``view_1`` / ``view_2``.
        to_inputs: callable ``(views (n, 3, S, S) float in [0, 1]) -> dict`` of model inputs (``pixel_values``);
            defaults to ``preprocess_fn`` on the list of view tensors.
        select: optional callable ``row_ids (M·B,) -> positions (B,)`` that keeps the B rows of an M×B mega-batch
            whose bank embeddings best fit the window (:class:`MegaBatchSelector`).
        row_id_column: column holding each row's index in the training set.
        sources: a :class:`~hf_divcl.planning.sources.SourceSplit` when the rows are several sources: the batch
            gets ``dataset_name`` (its first row's source), which sentence-transformers reads for per-source losses,
            prompts and router mappings.

    The returned batch has ``row_ids`` (LongTensor ``(B,)``) next to the usual ``{column}_{input}`` tensors.
    """

    augment: Callable[[list[Any]], tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)
    to_inputs: Callable[[torch.Tensor], dict[str, Any]] | None = field(default=None, repr=False)
    select: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    row_id_column: str = ROW_ID_COLUMN
    sources: Any = field(default=None, repr=False)
    selection_seconds: float = field(default=0.0, init=False, repr=False)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            return {}
        row_ids = None
        if self.row_id_column in features[0]:
            row_ids = torch.tensor([f[self.row_id_column] for f in features], dtype=torch.long)
            if self.select is not None:
                t0 = time.perf_counter()
                keep = self.select(row_ids)
                features = [features[i] for i in keep.tolist()]
                row_ids = row_ids[keep]
                self.selection_seconds += time.perf_counter() - t0
            features = [{k: v for k, v in f.items() if k != self.row_id_column} for f in features]
        name = None
        if self.sources is not None and row_ids is not None:
            name = self.sources.names[int(self.sources.source_of(row_ids[:1])[0])]
            features = [{**f, "dataset_name": name} for f in features]
        inputs = input_columns(features[0], self.valid_label_columns)
        image_cols = [c for c in inputs if _is_image(features[0][c])]
        if self.augment is not None and len(inputs) == 1 and image_cols == inputs:
            batch = self._two_views(features, inputs[0])
            if name is not None:
                batch["dataset_name"] = name
        else:
            batch = super().__call__(features)
        if row_ids is not None:
            batch["row_ids"] = row_ids
        return batch

    def _two_views(self, features: list[dict[str, Any]], column: str) -> dict[str, Any]:
        images = [f[column] for f in features]
        view_1, view_2 = self.augment(images)
        batch: dict[str, Any] = {}
        for label_column in self.valid_label_columns:
            if label_column in features[0]:
                batch["label"] = torch.tensor([f[label_column] for f in features])
                break
        for name, views in (("view_1", view_1), ("view_2", view_2)):
            inputs = self.to_inputs(views) if self.to_inputs is not None else self.preprocess_fn(list(views))
            for key, value in inputs.items():
                batch[f"{name}_{key}"] = value
        return batch
