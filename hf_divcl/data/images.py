"""Image data sets that work offline: Fashion-MNIST (Debian files) and scikit-learn's digits.

Both come back as a `datasets.Dataset` with an ``image`` column (`datasets.Image()`, decoded to PIL ``L`` mode)
and a ``label`` column (`datasets.ClassLabel`), so they feed the same collators and image models.

- Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` puts the four IDX files (gzip-compressed) in
  [`FASHION_MNIST_ROOT`]: 60,000 training and 10,000 test images, 28×28 grey levels, 10 classes (6,000 and
  1,000 per class). The IDX files are parsed with numpy and checked (magic number, dimensions, length).
- digits: scikit-learn's ``load_digits()`` (shipped inside scikit-learn): 1,797 images of 8×8 pixels, kept at
  8×8 (values 0..16 scaled to 0..255, ``round(v * 255 / 16)``); the image processors and
  :func:`hf_divcl.models.augment.images_to_tensor` resize them. Split: the first [`DIGITS_TRAIN_SIZE`] rows are
  ``train``, the other 297 are ``test`` (the rows cycle through the digits, so both splits are near balanced).

Images are stored in the Arrow table as binary PGM (``P5``) bytes: building them is a numpy concatenation
(60,000 rows in under a second, most of it gunzip) where PNG encoding takes 5 to 9 s; PIL decodes both, and
``encoding="png"`` gives PNG bytes for data sets you mean to share.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DIGITS_TRAIN_SIZE",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "class_descriptions",
    "digits",
    "fashion_mnist",
    "fashion_mnist_image_text",
    "read_idx",
]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` puts the IDX files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST class names, indexed by label id 0..9."""

_DESCRIPTIONS = (
    "a photo of a T-shirt or top",
    "a photo of a pair of trousers",
    "a photo of a pullover",
    "a photo of a dress",
    "a photo of a coat",
    "a photo of a sandal",
    "a photo of a shirt",
    "a photo of a sneaker",
    "a photo of a bag",
    "a photo of an ankle boot",
)

DIGITS_TRAIN_SIZE = 1500
"""Rows ``[0, 1500)`` of scikit-learn's digits are the ``train`` split, rows ``[1500, 1797)`` the ``test`` split."""

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}  # unsigned byte data, 1 or 3 dimensions
_ENCODINGS = ("pgm", "png")


def class_descriptions() -> list[str]:
    """One short English description per Fashion-MNIST class (label id order), for image–text pairs."""
    return list(_DESCRIPTIONS)


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes.

    Args:
        path: the ``*-ubyte.gz`` file.
        ndim: 1 for a label file (shape ``(n,)``), 3 for an image file (shape ``(n, rows, cols)``).

    Returns:
        `np.ndarray` of ``uint8`` with the shape the header announces.

    Raises:
        `ValueError`: the file is not gzip, is truncated, has the wrong magic number or a length that does not
            match its header (the message names the file).
    """
    path = Path(path)
    hint = "The file is damaged: reinstall it with `sudo apt-get install --reinstall dataset-fashion-mnist`."
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut-off stream is EOFError
        raise ValueError(f"{str(path)!r} is not a readable gzip file ({exc}). {hint}") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{str(path)!r} holds {len(raw)} bytes, fewer than the {header}-byte IDX header. {hint}")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(f"{str(path)!r} has magic number 0x{magic:08x}; an IDX file of unsigned bytes with {ndim} "
                         f"dimension(s) has 0x{_IDX_MAGIC[ndim]:08x}. {hint}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(f"{str(path)!r}: header announces shape {shape} ({expected} bytes of data) but the file "
                         f"holds {len(raw) - header} bytes after the header. {hint}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _check_limit(limit: int | None, total: int) -> int:
    if limit is None:
        return total
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise ValueError(f"limit={limit!r}: pass None (all rows) or a non-negative int.")
    return min(int(limit), total)


def _encode(images: np.ndarray, encoding: str) -> list[bytes]:
    """``(n, h, w)`` uint8 → one encoded image (PGM or PNG bytes) per row."""
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding={encoding!r}: use one of {_ENCODINGS}.")
    _, h, w = images.shape
    if encoding == "png":
        from PIL import Image

        out = []
        for a in images:
            buf = io.BytesIO()
            Image.fromarray(a, "L").save(buf, format="PNG", compress_level=1)
            out.append(buf.getvalue())
        return out
    header = f"P5\n{w} {h}\n255\n".encode("ascii")
    return [header + row.tobytes() for row in np.ascontiguousarray(images)]


def _image_dataset(images: np.ndarray, labels: np.ndarray, names: list[str], encoding: str,
                   texts: list[str] | None = None) -> datasets.Dataset:
    """Build the Arrow table directly (no per-row feature encoding): ``image`` struct{bytes, path}, ``label``."""
    import datasets
    import pyarrow as pa

    columns = {
        "image": pa.StructArray.from_arrays(
            [pa.array(_encode(images, encoding), type=pa.binary()), pa.nulls(len(images), type=pa.string())],
            names=["bytes", "path"],
        )
    }
    spec = {"image": datasets.Image()}
    if texts is not None:
        columns["text"] = pa.array(texts, type=pa.string())
        spec["text"] = datasets.Value("string")
    columns["label"] = pa.array(labels.astype(np.int64))
    spec["label"] = datasets.ClassLabel(names=names)
    features = datasets.Features(spec)
    table = pa.table(columns).cast(features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def _load_fashion_mnist(split: str, limit: int | None, root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split={split!r}: Fashion-MNIST has the splits {sorted(_SPLIT_PREFIX)}.")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST folder {str(base)!r} does not exist. Install it with "
            "`sudo apt-get install dataset-fashion-mnist` (or run `bash scripts/setup.sh`), or pass root= a folder "
            "holding the four *-ubyte.gz IDX files."
        )
    prefix = _SPLIT_PREFIX[split]
    image_path, label_path = base / f"{prefix}-images-idx3-ubyte.gz", base / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (image_path, label_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {str(path)!r} is missing. Reinstall it with "
                "`sudo apt-get install --reinstall dataset-fashion-mnist` (or run `bash scripts/setup.sh`)."
            )
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if len(images) != len(labels):
        raise ValueError(f"{str(image_path)!r} holds {len(images)} images but {str(label_path)!r} holds "
                         f"{len(labels)} labels; they must match. Reinstall dataset-fashion-mnist.")
    bad = np.flatnonzero(labels >= len(FASHION_MNIST_CLASSES))
    if bad.size:
        raise ValueError(f"{str(label_path)!r}: row {int(bad[0])} has label {int(labels[bad[0]])}; Fashion-MNIST "
                         "labels are 0..9. Reinstall dataset-fashion-mnist.")
    n = _check_limit(limit, len(labels))
    return images[:n], labels[:n]


def fashion_mnist(split: str = "train", limit: int | None = None, root: str | os.PathLike = FASHION_MNIST_ROOT,
                  encoding: str = "pgm") -> datasets.Dataset:
    """Fashion-MNIST as a `datasets.Dataset` with columns ``image`` (PIL ``L``, 28×28) and ``label``.

    Args:
        split: ``"train"`` (60,000 rows) or ``"test"`` (10,000 rows).
        limit: keep only the first ``limit`` rows (file order, so deterministic); None keeps all.
        root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
        encoding: how images are stored in the table, ``"pgm"`` (fast) or ``"png"`` (portable, 5 to 9 s for 60k rows).

    Returns:
        `datasets.Dataset` (in memory); ``label`` is a `ClassLabel` over [`FASHION_MNIST_CLASSES`].

    Raises:
        `FileNotFoundError`: the folder or a file is missing (the message says how to install it).
        `ValueError`: a file is corrupt or truncated (the message names it).
    """
    images, labels = _load_fashion_mnist(split, limit, root)
    return _image_dataset(images, labels, list(FASHION_MNIST_CLASSES), encoding)


def fashion_mnist_image_text(split: str = "train", limit: int | None = None,
                             root: str | os.PathLike = FASHION_MNIST_ROOT, encoding: str = "pgm") -> datasets.Dataset:
    """Fashion-MNIST image–text pairs for CLIP-style training: columns ``image``, ``text``, ``label``.

    ``text`` is the [`class_descriptions`] entry of the row's label (e.g. ``"a photo of a sneaker"``), so there are
    only ten distinct texts: in-batch negatives with the same label are false negatives.
    Arguments as in [`fashion_mnist`].
    """
    images, labels = _load_fashion_mnist(split, limit, root)
    texts = [_DESCRIPTIONS[i] for i in labels.tolist()]
    return _image_dataset(images, labels, list(FASHION_MNIST_CLASSES), encoding, texts=texts)


def digits(split: str = "train", limit: int | None = None, encoding: str = "pgm") -> datasets.Dataset:
    """scikit-learn's handwritten digits with the Fashion-MNIST schema: ``image`` (PIL ``L``, 8×8), ``label``.

    Args:
        split: ``"train"`` (rows 0..1499), ``"test"`` (rows 1500..1796) or ``"all"`` (1,797 rows).
        limit: keep only the first ``limit`` rows of the split; None keeps all.
        encoding: ``"pgm"`` or ``"png"``, as in [`fashion_mnist`].

    Returns:
        `datasets.Dataset`; ``label`` is a `ClassLabel` with names ``"0"`` .. ``"9"``.
    """
    spans = {"train": slice(0, DIGITS_TRAIN_SIZE), "test": slice(DIGITS_TRAIN_SIZE, None), "all": slice(None)}
    if split not in spans:
        raise ValueError(f"split={split!r}: digits has the splits {sorted(spans)}.")
    all_images, all_labels = _digits_arrays()
    images, labels = all_images[spans[split]], all_labels[spans[split]]
    n = _check_limit(limit, len(labels))
    return _image_dataset(images[:n], labels[:n], [str(d) for d in range(10)], encoding)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(uint8 images (n, 8, 8) in 0..255, int labels (n,))``, read once per process."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = np.asarray(bunch.target).copy()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels
