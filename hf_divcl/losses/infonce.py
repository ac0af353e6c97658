"""Contrastive losses on the *global* batch: InfoNCE (one-way or symmetric) and NT-Xent, with optional in-batch
whitening, negatives gathered across processes *with* gradient, and the statistics the diversity logger needs.

The pure function :func:`contrastive_loss` does the maths on embeddings; :class:`InfoNCELoss` wraps it as a
sentence-transformers loss (``forward(sentence_features, labels)``) so it plugs into any ST trainer.

This module holds :class:`InfoNCELoss` and its guide model; the parts it is built from live beside it:

- :mod:`hf_divcl.losses.maths` — :func:`contrastive_loss`, :func:`whiten`, :class:`ContrastiveOutput`;
- :mod:`hf_divcl.losses.gather` — :func:`gather_with_grad` (the distributed convention: local anchors against the
  global candidates, gradients summed back onto their owner);
- :mod:`hf_divcl.losses.false_negatives` — :func:`false_negative_mask` and the ``"mask"`` / ``"duplicates"`` rules.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .false_negatives import (
    check_false_negatives,
)
from .gather import distributed_ready
from .maths import LOSS_TYPES, ContrastiveOutput, contrastive_loss

__all__ = ["InfoNCELoss", "check_false_negative_setup", "load_guide_model", "loss_settings", "loss_temperature"]

logger = logging.getLogger(__name__)


class InfoNCELoss(nn.Module):
    """InfoNCE / NT-Xent as a sentence-transformers loss, on the global batch across processes.

    Columns of the dataset are (anchor, positive, *hard negatives); for image–image training the collator makes
    the two augmented views the two columns. With the defaults it equals ``MultipleNegativesRankingLoss`` at
    ``scale = 1/τ = 20`` on one process, and extends it to the global batch on many.

    Args:
        model: the SentenceTransformer being trained.
        temperature: τ (default 0.05).
        learnable_temperature: learn ``log τ`` (clamped to ``[min_temperature, 1]``); the trainer adds it to the
            optimiser.
        loss_type: ``"infonce"`` or ``"nt_xent"``.
        symmetric: average both directions (InfoNCE).
        gather_across_devices: candidates from every process (with gradient).
        whitening, whitening_eps: ZCA-whiten the global batch before normalising (see :func:`whiten`).
        false_negatives (`str`, *optional*, defaults to `"none"`): ``"mask"`` removes from each anchor's softmax
            the in-batch negatives whose reference similarity to it reaches the positive's minus
            ``false_negative_margin`` (GISTEmbed's rule; see :func:`false_negative_mask`); ``"duplicates"`` removes
            only the certain ones, candidates whose row has an identical anchor or positive (set
            ``batch_groups`` before each call — :class:`~hf_divcl.training.trainer.DivCLTrainer` does).
        false_negative_margin (`float`, *optional*, defaults to `0.0`): the margin, in cosine units.
        guide (`SentenceTransformer`, *optional*): reference model for the mask (embeddings under ``no_grad``,
            never trained); default: the model's own embeddings, detached. Text the guide tokenises differently is
            decoded with the model's tokenizer and re-tokenised, as GISTEmbedLoss does. Check it on a few rows with
            :meth:`check_guide` (DivCLTrainer does so before training).
        mask_duplicate_negatives (`bool`, *optional*, defaults to `True`): with hard-negative columns, remove from
            each anchor's softmax every hard negative that is the same text or image as that anchor's own anchor or
            positive (a mined negative of another row in the batch that is this row's positive), whatever
            ``false_negatives`` is. Needs ``batch_contents`` set before each call (DivCLTrainer does); the count
            is ``last_output.duplicate_negatives``.
    """

    def __init__(self, model: nn.Module, temperature: float = 0.05, *, learnable_temperature: bool = False,
                 min_temperature: float = 0.01, loss_type: str = "infonce", symmetric: bool = False,
                 gather_across_devices: bool = True, whitening: bool = False, whitening_eps: float = 0.05,
                 false_negatives: str = "none", false_negative_margin: float = 0.0,
                 guide: nn.Module | None = None, mask_duplicate_negatives: bool = True) -> None:
        super().__init__()
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
        check_false_negatives(false_negatives, false_negative_margin)
        if guide is not None and false_negatives != "mask":
            raise ValueError("A guide model only serves false-negative masking: pass false_negatives='mask' with it.")
        self.model = model
        self.loss_type = loss_type
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices
        self.whitening = whitening
        self.whitening_eps = whitening_eps
        self.min_temperature = min_temperature
        if learnable_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        else:
            self.register_buffer("log_temperature", torch.tensor(math.log(temperature)), persistent=False)
        self.last_output: ContrastiveOutput | None = None
        self.false_negatives = false_negatives
        self.false_negative_margin = float(false_negative_margin)
        self.batch_groups: torch.Tensor | None = None  # (n,) duplicate group per row, for "duplicates"; consumed
        self.mask_duplicate_negatives = bool(mask_duplicate_negatives)
        self.batch_contents: torch.Tensor | None = None  # (n, k) content id per cell, for the above; consumed
        # not a submodule: the guide is never trained, never in the optimiser, never moved or saved with the loss
        self.__dict__["guide"] = guide
        self._retokenize = _must_retokenize(model, guide) if guide is not None else False
        if guide is not None:
            guide.eval()

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(self.min_temperature, 1.0)

    @property
    def citation(self) -> str:
        return ("@inproceedings{oord2018cpc, title={Representation Learning with Contrastive Predictive Coding}, "
                "author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol}, year={2018}}")

    def embed(self, sentence_features: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        return [self.model(f)["sentence_embedding"] for f in sentence_features]

    def guide_embeddings(self, sentence_features: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The guide's embeddings of each column, under ``no_grad`` (re-tokenised when the tokenizers differ)."""
        guide = self.guide
        if guide.training:
            guide.eval()
        out = []
        with torch.no_grad():
            for f in sentence_features:
                if self._retokenize:
                    if "input_ids" not in f or f["input_ids"].ndim != 2:
                        raise ValueError("The guide tokenises differently from the model, so its inputs are rebuilt "
                                         "from the decoded text; these features have no (batch, tokens) input_ids.")
                    texts = self.model.tokenizer.batch_decode(f["input_ids"], skip_special_tokens=True)
                    feats = guide.preprocess(texts)
                else:
                    feats = dict(f)  # a shallow copy: the guide writes its outputs into the dict it is given
                device = _device_of(guide)
                feats = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in feats.items()}
                out.append(guide(feats)["sentence_embedding"])
        return out

    def check_guide(self, columns: Mapping[str, Sequence[Any]]) -> int:
        """Encode a few rows of every input column with the guide exactly as training will (model preprocessing,
        then the guide) and raise a ``ValueError`` saying what is wrong: inputs the guide cannot read (another
        modality, a tokenizer whose text does not survive decoding), a missing or malformed ``sentence_embedding``,
        NaN/Inf or zero vectors, or columns of different dimensions. Returns the guide's dimension."""
        if self.guide is None:
            raise ValueError("check_guide: this loss has no guide model.")
        dims: dict[str, int] = {}
        for name, values in columns.items():
            values = list(values)
            what = f"The guide model cannot encode column {name!r} the way training feeds it"
            try:
                feats = self.model.preprocess(values)
                device = _device_of(self.model)
                feats = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in feats.items()}
                emb = self.guide_embeddings([feats])[0]
            except Exception as err:  # re-raised with what to do
                raise ValueError(f"{what} ({type(err).__name__}: {err}). The guide must read the same inputs as "
                                 "the model: text models with a tokenizer (another vocabulary is fine: the text is "
                                 "decoded and re-tokenised), image models with pixel inputs the model's processor "
                                 "produces.") from err
            if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != len(values) or emb.shape[1] < 1:
                shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
                raise ValueError(f"{what}: its sentence_embedding for {len(values)} rows has shape {shape}; expected "
                                 f"({len(values)}, d) with d >= 1 (a pooled SentenceTransformer).")
            if not bool(torch.isfinite(emb).all()) or bool((emb.abs().amax(dim=-1) == 0).any()):
                raise ValueError(f"{what}: it returns NaN/Inf or all-zero embeddings, which have no direction to "
                                 "compare.")
            dims[name] = emb.shape[1]
        if len(set(dims.values())) > 1:
            raise ValueError(f"The guide model's embedding dimension differs between columns: {dims}; the reference "
                             "similarities compare anchors with positives, so one dimension is needed.")
        return next(iter(dims.values()), 0)

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        sentence_features = list(sentence_features)
        embs = self.embed(sentence_features)
        if len(embs) < 2:
            raise ValueError(f"InfoNCELoss needs at least two columns (anchor, positive); the batch has {len(embs)}. "
                             "For single-image datasets use DivCLDataCollator's two-view augmentation.")
        reference = None
        if self.false_negatives == "mask" and self.guide is not None:
            reference = [r.to(embs[0].device) for r in self.guide_embeddings(sentence_features)]
        groups, self.batch_groups = self.batch_groups, None
        if self.false_negatives == "duplicates" and groups is None:  # no row ids here (e.g. a probe batch)
            if not getattr(self, "_warned_groups", False):
                self._warned_groups = True
                logger.warning("false_negatives='duplicates' without batch_groups: duplicates are unknown for this "
                               "batch, nothing is masked. DivCLTrainer sets them for every training batch.")
            n, rank = embs[0].shape[0], torch.distributed.get_rank() if distributed_ready() else 0
            groups = torch.arange(rank * n, (rank + 1) * n, device=embs[0].device)  # unique across processes
        contents, self.batch_contents = self.batch_contents, None
        if not self.mask_duplicate_negatives:
            contents = None
        out = contrastive_loss(embs[0], embs[1], self.temperature, negatives=embs[2:], loss_type=self.loss_type,
                               symmetric=self.symmetric, whitening=self.whitening, whitening_eps=self.whitening_eps,
                               gather=self.gather_across_devices, false_negatives=self.false_negatives,
                               false_negative_margin=self.false_negative_margin, reference=reference,
                               groups=groups, contents=None if contents is None else contents.to(embs[0].device))
        self.last_output = out
        return out.loss

    def get_config_dict(self) -> dict[str, object]:
        config: dict[str, object] = {
            "temperature": round(float(self.temperature), 6), "loss_type": self.loss_type,
            "symmetric": self.symmetric, "gather_across_devices": self.gather_across_devices,
            "whitening": self.whitening, "learnable_temperature": isinstance(self.log_temperature, nn.Parameter)}
        if not self.mask_duplicate_negatives:
            config["mask_duplicate_negatives"] = False
        if self.false_negatives != "none":
            config.update(false_negatives=self.false_negatives, false_negative_margin=self.false_negative_margin,
                          guide=_model_name(self.guide) if self.guide is not None else "self (detached)")
        return config


def load_guide_model(path: str, device: str | None = None) -> nn.Module:
    """A saved SentenceTransformer to use as the false-negative guide; a clear error when it cannot be loaded."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device)
    except Exception as err:
        raise ValueError(f"Cannot load the guide model from {path!r} ({type(err).__name__}: {err}); give "
                         "the folder of a saved SentenceTransformer.") from err


def check_false_negative_setup(loss: nn.Module, false_negatives: str, dataset=None, columns_of=None) -> None:
    """Before training: ``false_negatives`` other than ``"none"`` needs :class:`InfoNCELoss` (whose own setting
    wins, with a warning, when it differs), and a guide model must encode two rows of every input column of
    ``dataset`` (``columns_of(dataset)``: its input columns), else a clear error."""
    if not isinstance(loss, InfoNCELoss):
        if false_negatives != "none":
            raise ValueError(f"false_negatives={false_negatives!r} needs hf_divcl's InfoNCELoss; the loss is "
                             f"{type(loss).__name__}.")
        return
    if loss.false_negatives != false_negatives:
        logger.warning("false_negatives=%r in the arguments, but the InfoNCELoss passed as loss= has %r: the "
                       "loss's setting is used.", false_negatives, loss.false_negatives)
    if loss.guide is not None and dataset is not None:
        sample = dataset.select(range(min(2, len(dataset))))
        loss.check_guide({c: list(sample[c]) for c in columns_of(sample)})


def _must_retokenize(model: nn.Module, guide: nn.Module) -> bool:
    """Whether the guide needs the text re-tokenised (another vocabulary or a shorter maximum length)."""
    mt, gt = getattr(model, "tokenizer", None), getattr(guide, "tokenizer", None)
    m_text = hasattr(mt, "get_vocab") and hasattr(mt, "batch_decode")
    g_text = hasattr(gt, "get_vocab")
    if m_text != g_text:
        raise ValueError(f"The guide model cannot read this model's inputs: the model is "
                         f"{'a text model' if m_text else 'not a text model'} and the guide "
                         f"{'is a text model' if g_text else 'is not'} ({type(gt).__name__} vs {type(mt).__name__}). "
                         "Use a guide of the same modality.")
    if not m_text:
        return False
    try:
        return mt.get_vocab() != gt.get_vocab() or \
            (getattr(guide, "max_seq_length", None) or 0) < (getattr(model, "max_seq_length", None) or 0)
    except NotImplementedError:
        return True


def _device_of(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _model_name(model: nn.Module) -> str:
    card = getattr(model, "model_card_data", None)
    return str(getattr(card, "base_model", None) or getattr(model, "name_or_path", None) or type(model).__name__)


def loss_temperature(loss, default: float | None = None) -> float | None:
    """τ of a contrastive loss: its ``temperature`` (:class:`InfoNCELoss`, ``GISTEmbedLoss``) or ``1 / scale``
    (``MultipleNegativesRankingLoss`` and its cached variant, whose default scale 20 is τ = 0.05); ``default`` when
    the loss has neither."""
    config = loss.get_config_dict() if hasattr(loss, "get_config_dict") else {}
    temperature = config.get("temperature", getattr(loss, "temperature", None))
    if temperature is not None:
        return float(temperature)
    scale = config.get("scale", getattr(loss, "scale", None))
    return 1.0 / float(scale) if scale else default


def loss_settings(loss) -> dict[str, Any]:
    """What trained the model, JSON-ready for the run file, the log and the card: ``{"loss": class name, **its
    get_config_dict()}`` (sentence-transformers losses and :class:`InfoNCELoss` both have one; a model or a
    function in it is named by its string form)."""
    config = loss.get_config_dict() if hasattr(loss, "get_config_dict") else {}

    def plain(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value)

    return {"loss": type(loss).__name__, **{str(k): plain(v) for k, v in config.items()}}
