"""Fashion-MNIST (Debian IDX files) and scikit-learn digits as `datasets.Dataset`s: real rows, schema, errors."""

import gzip
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest

from hf_divcl.data.images import (
    DIGITS_TRAIN_SIZE,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    class_descriptions,
    digits,
    fashion_mnist,
    fashion_mnist_image_text,
    read_idx,
)

ROOT = Path(FASHION_MNIST_ROOT)
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason="needs `sudo apt-get install dataset-fashion-mnist`")


def _raw(name: str) -> bytes:
    with gzip.open(ROOT / name, "rb") as fh:
        return fh.read()


def test_test_split_has_1000_rows_per_class_and_the_schema():
    ds = fashion_mnist("test")
    assert len(ds) == 10_000
    assert np.bincount(ds["label"], minlength=10).tolist() == [1000] * 10
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == list(FASHION_MNIST_CLASSES)
    image = ds[0]["image"]
    assert (image.mode, image.size) == ("L", (28, 28))


def test_first_train_row_matches_the_gz_bytes():
    images, labels = _raw("train-images-idx3-ubyte.gz"), _raw("train-labels-idx1-ubyte.gz")
    # independent reading: big-endian header fields, labels from byte 8, images from byte 16
    assert int.from_bytes(images[4:8], "big") == 60_000 and int.from_bytes(labels[4:8], "big") == 60_000
    first_pixels = np.frombuffer(images[16 : 16 + 784], dtype=np.uint8).reshape(28, 28)
    ds = fashion_mnist("train")
    assert len(ds) == 60_000
    row = ds[0]
    assert row["label"] == labels[8] == 9  # Ankle boot
    assert np.array_equal(np.asarray(row["image"]), first_pixels)
    last = np.frombuffer(images[16 + 784 * 59_999 :], dtype=np.uint8).reshape(28, 28)
    assert np.array_equal(np.asarray(ds[59_999]["image"]), last) and ds[59_999]["label"] == labels[-1]


def test_limit_takes_the_first_rows_and_png_encoding_gives_the_same_pixels():
    full = fashion_mnist("test")
    small = fashion_mnist("test", limit=20)
    png = fashion_mnist("test", limit=20, encoding="png")
    assert len(small) == 20 and small["label"] == full["label"][:20] == png["label"]
    for a, b, c in zip(small["image"], full.select(range(20))["image"], png["image"], strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), np.asarray(c))
    assert len(fashion_mnist("test", limit=0)) == 0
    assert len(fashion_mnist("test", limit=10**9)) == 10_000


def test_image_text_pairs_use_the_class_description():
    descriptions = class_descriptions()
    assert len(descriptions) == 10 == len(set(descriptions))
    ds = fashion_mnist_image_text("test", limit=50)
    assert ds.column_names == ["image", "text", "label"]
    assert all(text == descriptions[label] for text, label in zip(ds["text"], ds["label"], strict=True))
    assert ds[0]["text"] == "a photo of an ankle boot"


def test_digits_schema_and_fixed_split():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test, everything = digits("train"), digits("test"), digits("all")
    assert (len(train), len(test), len(everything)) == (DIGITS_TRAIN_SIZE, 1797 - DIGITS_TRAIN_SIZE, 1797)
    assert train.features["label"].names == [str(d) for d in range(10)]
    assert train["label"] == bunch.target[:DIGITS_TRAIN_SIZE].tolist()
    assert test["label"] == bunch.target[DIGITS_TRAIN_SIZE:].tolist()
    image = test[3]["image"]
    assert (image.mode, image.size) == ("L", (8, 8))
    expected = np.rint(bunch.images[DIGITS_TRAIN_SIZE + 3] * 255 / 16).astype(np.uint8)
    assert np.array_equal(np.asarray(image), expected)
    assert len(digits("test", limit=7)) == 7


def _copy_test_split(tmp_path: Path) -> Path:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_truncated_gzip_names_the_file(tmp_path):
    root = _copy_test_split(tmp_path)
    path = root / "t10k-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*not a readable gzip"):
        fashion_mnist("test", root=root)


def test_bad_magic_short_data_and_count_mismatch_name_the_file(tmp_path):
    root = _copy_test_split(tmp_path)
    labels = bytearray(_raw("t10k-labels-idx1-ubyte.gz"))
    path = root / "t10k-labels-idx1-ubyte.gz"

    bad_magic = bytearray(labels)
    bad_magic[3] = 0x03
    path.write_bytes(gzip.compress(bytes(bad_magic)))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz.*magic number 0x00000803"):
        fashion_mnist("test", root=root)

    path.write_bytes(gzip.compress(bytes(labels[:-1])))  # header says 10,000, data has 9,999 bytes
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz.*holds 9999 bytes"):
        read_idx(path, 1)

    fewer = bytearray(labels[:-1])
    fewer[4:8] = (9_999).to_bytes(4, "big")  # a consistent file, but one label short of the images
    path.write_bytes(gzip.compress(bytes(fewer)))
    with pytest.raises(ValueError, match=r"10000 images but .*t10k-labels-idx1-ubyte\.gz.* 9999 labels"):
        fashion_mnist("test", root=root)


def test_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sudo apt-get install dataset-fashion-mnist.*scripts/setup\.sh"):
        fashion_mnist("test", root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz"):
        fashion_mnist("test", root=tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split='validation'"):
        fashion_mnist("validation")
    with pytest.raises(ValueError, match="limit=-1"):
        fashion_mnist("test", limit=-1)
    with pytest.raises(ValueError, match="encoding='jpeg'"):
        fashion_mnist("test", limit=1, encoding="jpeg")
    with pytest.raises(ValueError, match="split='dev'"):
        digits("dev")
