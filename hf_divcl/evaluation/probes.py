"""Frozen-embedding classification of image encoders: cosine k-NN with a vectorised vote, and a scikit-learn
logistic-regression linear probe on standardised unit embeddings; each from a model or from precomputed
embeddings.

One of the held-out evaluations :mod:`hf_divcl.evaluation.tasks` runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "encode_images",
    "knn_accuracy",
    "knn_accuracy_from_embeddings",
    "knn_predict",
    "linear_probe_accuracy",
    "linear_probe_accuracy_from_embeddings",
]

VOTES = ("majority", "weighted")


def encode_images(model: SentenceTransformer, images: Iterable[Any], batch_size: int = 64,
                  show_progress_bar: bool = False) -> torch.Tensor:
    """Unit embeddings ``(n, d)`` (float32, CPU) of images (PIL images, e.g. ``ds["image"]``)."""
    images = list(images)
    if not images:
        raise ValueError("No images to encode.")
    emb = model.encode(images, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=show_progress_bar)
    return emb.float().cpu()


def _as_labels(labels: Any, n: int, what: str) -> torch.Tensor:
    out = torch.as_tensor(labels if isinstance(labels, torch.Tensor) else list(labels), dtype=torch.long).flatten()
    if out.numel() != n:
        raise ValueError(f"{what}: {out.numel()} labels for {n} embeddings; pass one integer label per row.")
    if out.numel() and int(out.min()) < 0:
        row = int(torch.nonzero(out < 0)[0])
        raise ValueError(f"{what}[{row}] = {int(out[row])}: labels must be class ids >= 0.")
    return out


def _as_embeddings(x: Any, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{what} must have shape (n, d) with n >= 1; got {tuple(x.shape)}.")
    if not x.is_floating_point():
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        row = int(torch.nonzero(~torch.isfinite(x).all(-1))[0])
        raise ValueError(f"{what}, row {row}: NaN or Inf in the embedding; check the model output.")
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        row = int(torch.nonzero(norms.squeeze(-1) == 0)[0])
        raise ValueError(f"{what}, row {row}: all-zero embedding has no direction for cosine similarity.")
    return x / norms


def knn_predict(
    train_embeddings: torch.Tensor,
    train_labels: Any,
    test_embeddings: torch.Tensor,
    k: int = 20,
    vote: str = "majority",
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Cosine k-NN labels ``(n_test,)`` for test embeddings ``(n_test, d)`` against ``(n_train, d)`` train ones.

    ``vote="majority"``: the label most frequent among the ``k`` nearest neighbours, ties going to the label with
    the larger summed cosine (then the smaller id). ``vote="weighted"``: each neighbour adds
    ``exp(cos / temperature)`` to its label (the InstDisc/DINO k-NN protocol). Test rows are processed
    ``chunk_size`` at a time, so memory is ``O(chunk_size · n_train)``.
    """
    if vote not in VOTES:
        raise ValueError(f"vote must be one of {VOTES}; got {vote!r}.")
    train = _as_embeddings(train_embeddings, "train_embeddings")
    test = _as_embeddings(test_embeddings, "test_embeddings").to(train.dtype)
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train embeddings have dimension {train.shape[1]}, test embeddings {test.shape[1]}; "
                         "embed both with the same model.")
    labels = _as_labels(train_labels, train.shape[0], "train_labels").to(train.device)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= train.shape[0]:
        raise ValueError(f"k={k!r}: pass an int between 1 and the {train.shape[0]} training embeddings.")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0.")
    classes = int(labels.max()) + 1
    out = []
    for start in range(0, test.shape[0], chunk_size):
        sims, idx = (test[start:start + chunk_size] @ train.T).topk(k, dim=1)  # (c, k)
        neighbour_labels = labels[idx]
        if vote == "weighted":
            scores = torch.zeros(sims.shape[0], classes, dtype=sims.dtype, device=sims.device)
            scores.scatter_add_(1, neighbour_labels, torch.exp(sims / temperature))
        else:
            counts = torch.zeros(sims.shape[0], classes, dtype=sims.dtype, device=sims.device)
            counts.scatter_add_(1, neighbour_labels, torch.ones_like(sims))
            cos_sum = torch.zeros_like(counts).scatter_add_(1, neighbour_labels, sims)
            scores = counts + cos_sum / (4 * k)  # |cos_sum| <= k: the tie-break moves a score by <= 1/4
        out.append(scores.argmax(dim=1))
    return torch.cat(out)


def knn_accuracy_from_embeddings(train_embeddings: torch.Tensor, train_labels: Any, test_embeddings: torch.Tensor,
                                 test_labels: Any, k: int = 20, vote: str = "majority",
                                 temperature: float = 0.07) -> float:
    """Fraction of test rows whose [`knn_predict`] label equals ``test_labels``."""
    pred = knn_predict(train_embeddings, train_labels, test_embeddings, k=k, vote=vote, temperature=temperature)
    truth = _as_labels(test_labels, pred.numel(), "test_labels").to(pred.device)
    return (pred == truth).double().mean().item()


def knn_accuracy(model: SentenceTransformer, train_images: Iterable[Any], train_labels: Any,
                 test_images: Iterable[Any], test_labels: Any, k: int = 20, vote: str = "majority",
                 batch_size: int = 64) -> float:
    """Cosine k-NN accuracy of a frozen image encoder: embed both sets, then [`knn_accuracy_from_embeddings`]."""
    train = encode_images(model, train_images, batch_size)
    test = encode_images(model, test_images, batch_size)
    return knn_accuracy_from_embeddings(train, train_labels, test, test_labels, k=k, vote=vote)


def linear_probe_accuracy_from_embeddings(train_embeddings: torch.Tensor, train_labels: Any,
                                          test_embeddings: torch.Tensor, test_labels: Any, c: float = 1.0,
                                          max_iter: int = 1000, seed: int = 0) -> float:
    """Test accuracy of a logistic regression fitted on frozen train embeddings.

    Rows are L2-normalised, then standardised with the training mean and std (``StandardScaler``), then fed to
    ``sklearn.linear_model.LogisticRegression(C=c, max_iter=max_iter, random_state=seed)`` (lbfgs, multinomial):
    deterministic for given inputs.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise ImportError("The linear probe uses scikit-learn: `pip install scikit-learn`.") from None
    train = _as_embeddings(train_embeddings, "train_embeddings").double()
    test = _as_embeddings(test_embeddings, "test_embeddings").double()
    y_train = _as_labels(train_labels, train.shape[0], "train_labels")
    y_test = _as_labels(test_labels, test.shape[0], "test_labels")
    if y_train.unique().numel() < 2:
        raise ValueError(f"The training labels hold a single class ({int(y_train[0])}); a linear probe needs at "
                         "least two. Use more (or shuffled) training rows.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    probe.fit(train.numpy(), y_train.numpy())
    return float((probe.predict(test.numpy()) == y_test.numpy()).mean())


def linear_probe_accuracy(model: SentenceTransformer, train_images: Iterable[Any], train_labels: Any,
                          test_images: Iterable[Any], test_labels: Any, batch_size: int = 64, c: float = 1.0,
                          max_iter: int = 1000, seed: int = 0) -> float:
    """Linear-probe accuracy of a frozen image encoder: embed both sets, then
    [`linear_probe_accuracy_from_embeddings`]."""
    train = encode_images(model, train_images, batch_size)
    test = encode_images(model, test_images, batch_size)
    return linear_probe_accuracy_from_embeddings(train, train_labels, test, test_labels, c=c, max_iter=max_iter,
                                                 seed=seed)
