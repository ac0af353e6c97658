"""Bad training data, case by case: each case names its exact outcome, either an error that names the row / column /
line and the fix, or the documented accepted behaviour (a warning with counts and rows, and what is trained).

The table in ``docs/reliability_bad_data.md`` lists the same cases with these test ids. Most cases call
``validate_training_dataset`` or the local loaders directly; the ``test_trainer_*`` cases go through
``DivCLTrainer(...)`` to show the trainer refuses (or reports) them at construction, before any training.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import zlib

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as HFImage
from PIL import Image
from test_trainer import _rows, make_args  # tests/ is on sys.path (its conftest.py)
from test_trainer_vision import make_args as vision_args

from hf_divcl.data.images import fashion_mnist
from hf_divcl.data.local import load_local_dataset, load_pair_file
from hf_divcl.data.truncation import truncation_report
from hf_divcl.data.validation import DatasetError, validate_training_dataset
from hf_divcl.evaluation.probes import knn_accuracy_from_embeddings
from hf_divcl.training.trainer import DivCLTrainer

# -- helpers ------------------------------------------------------------------------------------------------------


def _ds(**overrides) -> Dataset:
    """20 anchor/positive pairs with single cells replaced: ``_ds(positive=(7, None))``."""
    return Dataset.from_dict(_rows(**overrides))


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(mode: str = "RGB", size=(16, 16), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8), mode)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width × height`` (nothing is decoded before the size check)."""
    data = bytearray(_encode(Image.new("L", (1, 1))))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _images(cells: list, n: int = 12) -> Dataset:
    """An image data set: the given cells first, then distinct 16×16 RGB noise images up to ``n`` rows."""
    cells = list(cells) + [_encode(_noise(seed=100 + i)) for i in range(n - len(cells))]
    cells = [c if isinstance(c, dict) or c is None else {"bytes": c, "path": None} for c in cells]
    return Dataset.from_dict({"image": cells}, features=Features({"image": HFImage()}))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("hf_divcl")]


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory) -> str:
    from hf_divcl.models.vision import build_tiny_vit_sentence_transformer

    return build_tiny_vit_sentence_transformer(tmp_path_factory.mktemp("vit"))


# -- in-memory data sets refused by validate_training_dataset --------------------------------------------------------

TEXT_CELLS = [
    pytest.param(_ds(anchor=(3, "")), r"Row 3, column 'anchor' is empty or whitespace only \(''\)", id="empty-string"),
    pytest.param(_ds(positive=(4, " \t\n ")), r"Row 4, column 'positive' is empty or whitespace only \(' \\t\\n '\)",
                 id="whitespace-only"),
    pytest.param(_ds(anchor=(5, "\u00a0\u3000\u2003")), r"Row 5, column 'anchor' is empty or whitespace only",
                 id="unicode-spaces-only"),
    pytest.param(_ds(anchor=(6, "\u200b\u200d\ufeff")),
                 r"Row 6, column 'anchor' holds only invisible characters \('\\u200b\\u200d\\ufeff': control, "
                 r"zero-width", id="zero-width-only"),
    pytest.param(_ds(positive=(2, "\x01\x02\x7f")), r"Row 2, column 'positive' holds only invisible characters",
                 id="control-chars-only"),
    pytest.param(_ds(anchor=(9, "cat\x00dog")),
                 r"Row 9, column 'anchor' contains a NUL character at position 3 \('cat\\x00dog'\).*replace\('\\x00'",
                 id="nul-byte-in-text"),
    pytest.param(_ds(positive=(7, None)), r"Row 7, column 'positive' is missing \(None\).*dataset\.filter",
                 id="none-value"),
    pytest.param(Dataset.from_dict({**_rows(), "negative": [None] * 20}),
                 r"Column 'negative' is None in every row \(Arrow type null\): fill it or remove it",
                 id="all-none-column"),
    pytest.param(Dataset.from_dict({**_rows(), "positive": list(range(20))}),
                 r"Column 'positive' holds other \(int64\) values \(row 0: 0\).*cast_column\('positive', "
                 r"datasets\.Value\('string'\)\)", id="int-column"),
    pytest.param(Dataset.from_dict({**_rows(), "positive": [0.5, math.nan] * 10}),
                 r"Column 'positive' holds other \(float64\) values \(row 0: 0\.5\).*rename it to 'label' \(or "
                 r"'score'\)", id="float-column-with-nan"),
    pytest.param(Dataset.from_dict({**_rows(), "positive": [["a", "b"]] * 20}),
                 r"Column 'positive' holds list values \(row 0: \['a', 'b'\]\).*one text per cell", id="list-column"),
    pytest.param(Dataset.from_dict({**_rows(), "positive": [{"text": "a"}] * 20}),
                 r"Column 'positive' holds dict values \(row 0: \{'text': 'a'\}\).*dataset\.flatten\(\)",
                 id="dict-column"),
    pytest.param(Dataset.from_dict({**_rows(), "positive": [b"caf\xc3\xa9"] * 20}),
                 r"Column 'positive' holds raw bytes \(binary\), not text \(row 0: b'caf\\xc3\\xa9'\)\. They are "
                 r"valid UTF-8: cast it with dataset\.cast_column\('positive', datasets\.Value\('string'\)\)",
                 id="bytes-column-utf8"),
    pytest.param(Dataset.from_dict({**_rows(), "positive": [b"ok"] * 2 + [b"caf\xe9"] + [b"ok"] * 17}),
                 r"Column 'positive' holds raw bytes \(binary\), not text, and row 2 \(b'caf\\xe9'\) is not valid "
                 r"UTF-8.*decode\('latin-1'\)", id="bytes-column-not-utf8"),
    pytest.param(Dataset.from_dict({"anchor": [f"photo {i}" for i in range(20)],
                                    "image": [f"img/{i}.JPG" for i in range(20)]}),
                 r"Column 'image' holds text that looks like image file paths \(row 0: 'img/0\.JPG'\).*"
                 r"cast_column\('image', datasets\.Image\(\)\)", id="image-paths-as-text"),
]

STRUCTURE = [
    pytest.param(Dataset.from_dict({"anchor": [], "positive": []}, features=Features(
        {"anchor": Value("string"), "positive": Value("string")})),
                 r"The training data set is empty \(0 rows; columns: \['anchor', 'positive'\]\)", id="zero-rows"),
    pytest.param(_ds(n=1), r"has 1 row but one global batch needs 2", id="single-row"),
    pytest.param(Dataset.from_dict({**_rows(), "dataset_name": ["x"] * 20}),
                 r"Column name\(s\) \['dataset_name'\] are reserved by sentence-transformers; rename them, e\.g\. "
                 r"dataset\.rename_column\('dataset_name', 'source'\)", id="reserved-column-name"),
    pytest.param(Dataset.from_dict({"label": [0, 1] * 10, "score": [0.5] * 20}),
                 r"no input columns \(columns: \['label', 'score'\]\); label columns .* are not inputs",
                 id="no-input-columns"),
    pytest.param(pd.DataFrame(_rows()),
                 r"got DataFrame\. Convert it with datasets\.Dataset\.from_pandas\(df, preserve_index=False\)",
                 id="pandas-dataframe"),
    pytest.param([{"anchor": "a", "positive": "b"}] * 20,
                 r"got list\. Convert it with datasets\.Dataset\.from_list", id="list-of-dicts"),
    pytest.param(_rows(), r"got dict\. Convert it with datasets\.Dataset\.from_dict", id="dict-of-lists"),
    pytest.param(_ds().to_iterable_dataset(),
                 r"got IterableDataset\. A streaming data set trains with batch_policy='random' only.*without "
                 r"streaming=True",
                 id="iterable-dataset"),
    pytest.param(datasets.DatasetDict({"train": _ds(), "test": _ds()}),
                 r"got DatasetDict\. Check one split at a time, e\.g\. ds\['train'\] "
                 r"\(splits: \['train', 'test'\]\); DivCLTrainer takes a DatasetDict",
                 id="dataset-dict"),
]

LABELS = [
    pytest.param(Dataset.from_dict({**_rows(), "label": ["cat", "dog"] * 10}),
                 r"Column 'label' is a label column .* but holds text \(row 0: 'cat'\).*class_encode_column\('label'\)",
                 id="label-holds-text"),
    pytest.param(Dataset.from_dict({**_rows(), "label": [1] * 12 + [None] + [0] * 7}),
                 r"Row 12, column 'label': the label is missing \(None\)", id="label-none"),
    pytest.param(Dataset.from_dict({**_rows(), "score": [0.5] * 4 + [math.nan] + [0.1] * 15}),
                 r"Row 4, column 'score': the label is nan \(not finite\)", id="score-nan"),
    pytest.param(Dataset.from_dict({**_rows(), "score": [0.5] * 8 + [-math.inf] + [0.1] * 11}),
                 r"Row 8, column 'score': the label is -inf \(not finite\)", id="score-inf"),
    pytest.param(Dataset.from_dict({**_rows(), "label": [0, 1] * 5 + [12] + [0] * 9}).cast_column(
        "label", ClassLabel(names=["neg", "pos"])),
                 r"Row 10, column 'label': label 12 is outside the 2 class names \(ids 0\.\.1, or -1 for 'no label'\)",
                 id="classlabel-out-of-range"),
    pytest.param(Dataset.from_dict({**_rows(), "label": [0, 1] * 5 + [-3] + [0] * 9}).cast_column(
        "label", ClassLabel(names=["neg", "pos"])),
                 r"Row 10, column 'label': label -3 is outside the 2 class names", id="classlabel-negative"),
]


@pytest.mark.parametrize("dataset, message", TEXT_CELLS + STRUCTURE + LABELS)
def test_refused_with_row_column_and_fix(dataset, message):
    with pytest.raises(DatasetError, match=message):
        validate_training_dataset(dataset)


def test_row_numbers_follow_filter_and_shuffle():
    """Rows are numbered as the caller sees the data set, not as they lie in the Arrow table underneath."""
    ds = _ds(positive=(15, "")).filter(lambda _, i: i >= 10, with_indices=True)  # table row 15 is row 5 here
    with pytest.raises(DatasetError, match=r"Row 5, column 'positive' is empty"):
        validate_training_dataset(ds)
    shuffled = _ds(anchor=(0, None)).select([4, 3, 2, 1, 0, 5, 6])
    with pytest.raises(DatasetError, match=r"Row 4, column 'anchor' is missing"):
        validate_training_dataset(shuffled)


def test_duplicate_texts_beyond_the_batch_count_are_refused_when_dedupe_is_on():
    data = _rows()
    for row in (1, 5, 9, 13):
        data["anchor"][row] = "the same question"
    with pytest.raises(DatasetError, match=r"Column 'anchor': the text 'the same question' appears in 4 rows "
                                           r"\(1, 5, 9, 13\) but an epoch has only 3 batches of 8; with dedupe=True"):
        validate_training_dataset(Dataset.from_dict(data), dedupe_batch_size=8)
    validate_training_dataset(Dataset.from_dict(data), dedupe_batch_size=4)  # 5 batches: the copies fit apart


# -- accepted with a warning -----------------------------------------------------------------------------------------


def test_exact_duplicate_pairs_warn_with_counts(caplog):
    caplog.set_level(logging.WARNING)
    data = _rows()
    for row in (6, 11, 17):
        data["anchor"][row], data["positive"][row] = data["anchor"][2], data["positive"][2]
    data["anchor"][19], data["positive"][19] = data["anchor"][4], data["positive"][4]
    assert validate_training_dataset(Dataset.from_dict(data)) == ["anchor", "positive"]
    assert _warnings(caplog) == [
        "4 of 20 rows repeat an earlier row exactly in column(s) ['anchor', 'positive'] (2 distinct row(s) repeated; "
        "e.g. rows 2 and 17, 4 copies). With dedupe=True copies never share a batch, but every copy is trained on, "
        "so repeated pairs weigh more. Drop them to train on each pair once."]


def test_long_texts_report_truncation_rows_and_counts(tiny_model, caplog):
    caplog.set_level(logging.WARNING)
    ds = _ds(positive=(3, "word " * 100), anchor=(7, "abc " * 100))
    ds = Dataset.from_dict({**ds.to_dict(), "negative": ["n" * 30] * 20})  # 32 tokens: under the limit
    validate_training_dataset(ds, model=tiny_model)
    assert tiny_model.max_seq_length == 64
    assert _warnings(caplog) == [
        "Column 'anchor': 1 of 20 rows are longer than the model's max_seq_length of 64 tokens and will be truncated "
        "(rows 7; longest: row 7 with 302 tokens). Raise model.max_seq_length if the model allows it, or split the "
        "long texts.",
        "Column 'positive': 1 of 20 rows are longer than the model's max_seq_length of 64 tokens and will be truncated "
        "(rows 3; longest: row 3 with 402 tokens). Raise model.max_seq_length if the model allows it, or split the "
        "long texts."]
    many = Dataset.from_dict({"anchor": ["y" * 70] * 12 + ["short"] * 8, "positive": [f"p{i}" for i in range(20)]})
    assert truncation_report(many, ["anchor", "positive"], tiny_model) == {"anchor": list(range(12))}
    assert "(rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (12 in all); longest: row 0 with 72 tokens)" in caplog.text


def test_replacement_characters_warn_and_train_as_they_are(caplog):
    caplog.set_level(logging.WARNING)
    validate_training_dataset(_ds(anchor=(3, "caf\ufffd au lait"), positive=(8, "\ufffd\ufffd")))
    assert _warnings(caplog) == [
        "Column 'anchor': 1 row(s) contain U+FFFD replacement characters (rows 3), a sign the text was decoded with "
        "errors='replace' from another encoding; they are trained on as they are. Re-read the source with its real "
        "encoding.",
        "Column 'positive': 1 row(s) contain U+FFFD replacement characters (rows 8), a sign the text was decoded with "
        "errors='replace' from another encoding; they are trained on as they are. Re-read the source with its real "
        "encoding."]


def test_classlabel_minus_one_is_no_label_and_trains_with_a_warning(caplog):
    caplog.set_level(logging.WARNING)
    ds = Dataset.from_dict({**_rows(), "label": [-1, 0, 1, -1] * 5}).cast_column("label", ClassLabel(names=["a", "b"]))
    assert validate_training_dataset(ds) == ["anchor", "positive"]
    assert _warnings(caplog) == [
        "Column 'label': 10 row(s) have label -1 ('no label'; rows 0, 3, 4, 7, 8, 11, 12, 15, 16, 19). The contrastive "
        "loss does not read labels, so they train; k-NN and linear-probe evaluation refuse negative labels."]


def test_negative_labels_are_refused_by_knn_evaluation():
    emb = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"train_labels\[2\] = -1: labels must be class ids >= 0"):
        knn_accuracy_from_embeddings(emb, [0, 1, -1, 0, 1, 0], emb[:2], [0, 1], k=3)


def test_fashion_mnist_style_label_file_with_label_out_of_range(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    labels = np.array([3, 9, 12], dtype=np.uint8)
    header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    header = (0x801).to_bytes(4, "big") + (3).to_bytes(4, "big")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(header + labels.tobytes()))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz': row 2 has label 12; Fashion-MNIST labels are "
                                         r"0\.\.9"):
        fashion_mnist("test", root=tmp_path)


# -- images --------------------------------------------------------------------------------------------------------

_PNG = _encode(_noise(size=(32, 32)))
_JPEG = _encode(_noise(size=(32, 32)), "JPEG")
_GIF = _encode(_noise("L"), "GIF", save_all=True, append_images=[_noise("L", seed=1)], duration=100)

IMAGE_ERRORS = [
    pytest.param([None, b"not an image at all"], {},
                 r"Row 1, column 'image': the image cannot be read \(cannot identify image file", id="corrupt-bytes"),
    pytest.param([_PNG[: len(_PNG) // 2]], {}, r"Row 0, column 'image': the image cannot be read \(",
                 id="truncated-png"),
    pytest.param([_encode(_noise()), _JPEG[: len(_JPEG) // 2]], {},
                 r"Row 1, column 'image': the image cannot be read \(image file is truncated", id="truncated-jpeg"),
    pytest.param([{"bytes": None, "path": "/nonexistent/dir/cat.png"}], {},
                 r"Row 0, column 'image': the image file '/nonexistent/dir/cat\.png' does not exist",
                 id="missing-path"),
    pytest.param([_PNG, _PNG, _png_header(5000, 4000)], {},
                 r"Row 2, column 'image': image of 5000×4000 pixels exceeds the limit of 16777216 pixels",
                 id="huge-image"),
    pytest.param([_png_header(20000, 20000)], {"max_image_pixels": 10**9},
                 r"Row 0, column 'image': the image exceeds the pixel limit \(Image size \(400000000 pixels\) exceeds "
                 r"limit", id="decompression-bomb"),
    pytest.param([_encode(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)))], {},
                 r"Row 0, column 'image': image in PIL mode 'I;16' \(16-bit.*would clip it.*>> 8", id="16-bit-image"),
    pytest.param([_encode(Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)), "TIFF")], {},
                 r"Row 0, column 'image': image in PIL mode 'F'", id="float-tiff-image"),
    pytest.param([_encode(Image.new("RGB", (1, 40)))], {"image_size": 28},
                 r"Row 0, column 'image': image of size 1×40 is too small to train on", id="one-pixel-wide-with-size"),
]


@pytest.mark.parametrize("cells, kwargs, message", IMAGE_ERRORS)
def test_bad_images_are_refused(cells, kwargs, message):
    cells = [_encode(_noise(seed=50)) if c is None else c for c in cells]
    with pytest.raises(DatasetError, match=message):
        validate_training_dataset(_images(cells), **kwargs)


def test_image_none_cell_is_refused():
    cells = [{"bytes": _PNG, "path": None}] * 3 + [None]
    ds = Dataset.from_dict({"image": cells}, features=Features({"image": HFImage()}))
    with pytest.raises(DatasetError, match=r"Row 3, column 'image' has no image \(None\)"):
        validate_training_dataset(ds)


def _odd_images() -> list[bytes]:
    """Every accepted mode and odd size: grey, RGB, RGBA, palette, LA, bilevel, CMYK JPEG, 1×N, N×1, 1×1, thin,
    tiny, non-square."""
    rgb = _noise(size=(12, 12), seed=7)
    return [_encode(_noise("L", seed=1)), _encode(rgb), _encode(_noise("RGBA", (9, 13), seed=2)),
            _encode(rgb.convert("P")), _encode(_noise("L", seed=3).convert("LA")),
            _encode(_noise("L", seed=4).convert("1")),
            _encode(_noise(seed=5).convert("CMYK"), "JPEG"), _encode(_noise("L", (1, 40), seed=6)),
            _encode(_noise(size=(40, 1), seed=8)), _encode(_noise("L", (1, 1), seed=9)),
            _encode(_noise(size=(2, 300), seed=10)), _encode(_noise(size=(3, 2), seed=11)),
            _encode(_noise(size=(64, 17), seed=12))]


def test_modes_and_odd_sizes_pass_validation_and_animated_gif_warns(caplog):
    caplog.set_level(logging.WARNING)
    assert validate_training_dataset(_images([*_odd_images(), _GIF], n=16)) == ["image"]
    assert _warnings(caplog) == ["Column 'image': 1 animated image(s) (rows 13); only the first frame is trained on."]


# -- local files ---------------------------------------------------------------------------------------------------

FILE_ERRORS = [
    pytest.param("pairs.csv", b"anchor,positive\nhello,world\ncaf\xe9,ok\n", load_local_dataset, DatasetError,
                 r"pairs\.csv': line 3 is not valid UTF-8: byte 0xe9 at byte offset 31 \(column 4\) in b'caf\\xe9,ok"
                 r"\\n'\. Save the file as UTF-8, e\.g\. `iconv -f latin1 -t utf-8 pairs\.csv > utf8\.csv`",
                 id="csv-invalid-utf8"),
    pytest.param("pairs.jsonl", b'{"anchor": "a", "positive": "b"}\n{"anchor": "caf\xe9", "positive": "b"}\n',
                 load_pair_file, DatasetError,
                 r"pairs\.jsonl': row 1, column 'anchor' is not valid UTF-8; line 2 is not valid UTF-8: byte 0xe9 at "
                 r"byte offset 48 \(column 16\)", id="jsonl-invalid-utf8"),
    pytest.param("pairs.tsv", b"anchor\tpositive\n\xff\xfeh\x00i\tx\n", load_pair_file, DatasetError,
                 r"pairs\.tsv': line 2 is not valid UTF-8: byte 0xff at byte offset 16 \(column 1\)",
                 id="tsv-utf16-bytes"),
    pytest.param("pairs.jsonl", b'{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": "d"\n{"anchor": '
                 b'"e", "positive": "f"}\n', load_local_dataset, DatasetError,
                 r"pairs\.jsonl': line 2 is not valid JSON \(Expecting ',' delimiter at column 32\): '\{\"anchor\": "
                 r"\"c\", \"positive\": \"d\"'\. Fix or delete that line", id="jsonl-broken-line"),
    pytest.param("pairs.json", b'[{"anchor": "a", "positive": "b"},\n {"anchor": "c" "positive": "d"}]\n',
                 load_local_dataset, DatasetError,
                 r"pairs\.json': line 2 is not valid JSON \(Expecting ',' delimiter at column 17\)",
                 id="json-array-broken"),
    pytest.param("pairs.jsonl", b'{"anchor": "a", "positive": "b"}\n[1, 2]\n', load_pair_file, DatasetError,
                 r"pairs\.jsonl': line 2 holds a JSON list \('\[1, 2\]'\), not an object", id="jsonl-line-not-object"),
    pytest.param("pairs.csv", b"anchor,positive\na,b\nc,d,e\nf,g\n", load_pair_file, DatasetError,
                 r"pairs\.csv': line 3 has 3 fields but the header has 2 \(\['anchor', 'positive'\]\): 'c,d,e'\. "
                 r"Quote fields that contain commas", id="csv-ragged-row"),
    pytest.param("pairs.csv", b"anchor,positive\na,b\nc\nf,g\n", load_pair_file, ValueError,
                 r"pairs\.csv: row 1, column 'positive' holds None \(NoneType\); every anchor and positive must be a "
                 r"string", id="csv-missing-field"),
    pytest.param("pairs.csv", b"anchor,answer\na,b\nc,d\n", load_pair_file, ValueError,
                 r"pairs\.csv' has no column\(s\) \['positive'\]; its columns are \['anchor', 'answer'\]\. Choose them "
                 r"with --anchor-column / --positive-column", id="csv-missing-column"),
    pytest.param("pairs.csv", b"", load_local_dataset, DatasetError, r"pairs\.csv' is empty \(0 bytes\)",
                 id="empty-file"),
    pytest.param("pairs.csv", b"anchor,positive\n", load_pair_file, DatasetError,
                 r"pairs\.csv': the file has a header \(\['anchor', 'positive'\]\) but no data rows",
                 id="header-only-csv"),
    pytest.param("pairs.parquet", b"anchor,positive\na,b\n", load_local_dataset, DatasetError,
                 r"pairs\.parquet': is not a readable Parquet file \(.*\)\. Write it with "
                 r"pandas\.DataFrame\.to_parquet",
                 id="csv-named-parquet"),
    pytest.param("pairs.txt", b"a\tb\n", load_pair_file, ValueError,
                 r"Unsupported data file '.*pairs\.txt': use one of \['\.csv', '\.json', '\.jsonl', '\.parquet', "
                 r"'\.tsv'\]", id="wrong-extension"),
]


@pytest.mark.parametrize("name, content, loader, error, message", FILE_ERRORS)
def test_bad_files_name_the_line(tmp_path, name, content, loader, error, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(error, match=message):
        loader(path)


def test_parquet_with_wrong_schema_names_row_and_column(tmp_path):
    pq.write_table(pa.table({"anchor": [1, 2], "positive": ["a", "b"]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"p\.parquet: row 0, column 'anchor' holds 1 \(int\); every anchor and "
                                         r"positive must be a string"):
        load_pair_file(tmp_path / "p.parquet")
    with pytest.raises(DatasetError, match=r"Column 'anchor' holds other \(int64\) values"):
        validate_training_dataset(load_local_dataset(tmp_path / "p.parquet"))


def test_mixed_types_in_a_jsonl_column_name_the_row(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps({"anchor": f"a{i}", "positive": 5 if i == 3 else f"p{i}"}) for i in range(6)))
    ds = load_local_dataset(path)  # datasets keeps the mixed column as Json
    with pytest.raises(DatasetError, match=r"Row 3, column 'positive' holds 5 \(int\) where the other rows hold text"):
        validate_training_dataset(ds)
    with pytest.raises(ValueError, match=r"row 3, column 'positive' holds 5 \(int\)"):
        load_pair_file(path)


def test_csv_row_with_a_missing_field_is_named_by_validation(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("anchor,positive\na,b\nc\nf,g\n")
    with pytest.raises(DatasetError, match=r"Row 1, column 'positive' is missing \(None\)"):
        validate_training_dataset(load_local_dataset(path))


def test_missing_paths_folders_and_mappings(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*nope\.csv' does not exist"):
        load_pair_file(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match=r"'.*nope\.txt' does not exist"):
        load_local_dataset(tmp_path / "nope.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match=r"'.*folder' is a folder; pass one data file"):
        load_pair_file(tmp_path / "folder")
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"'.*folder' holds no image files: an image folder needs one sub-folder "
                                           r"per class"):
        load_local_dataset(tmp_path / "folder")
    path = tmp_path / "p.csv"
    path.write_text("q,d\na,b\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['answer'\]; its columns are \['q', 'd'\]"):
        load_local_dataset(path, columns={"anchor": "q", "positive": "answer"})
    with pytest.raises(ValueError, match=r"maps several names to \['q'\]"):
        load_local_dataset(path, columns={"anchor": "q", "positive": "q"})


def test_csv_byte_order_mark_and_duplicate_header_are_read_as_documented(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfanchor,positive,positive\na,b,c\n")
    ds = load_local_dataset(path)
    assert ds.column_names == ["anchor", "positive", "positive.1"]  # BOM dropped; a repeated name gets ".1"
    assert ds[0] == {"anchor": "a", "positive": "b", "positive.1": "c"}


# -- through DivCLTrainer: refused or reported at construction, before any training ---------------------------------

TRAINER_ERRORS = [
    pytest.param(lambda: _ds(anchor=(11, "ok\x00")), 16, r"Row 11, column 'anchor' contains a NUL character",
                 id="trainer-nul-byte"),
    pytest.param(lambda: _ds(n=10), 16, r"has 10 rows but one global batch needs 16",
                 id="trainer-fewer-rows-than-batch"),
    pytest.param(lambda: pd.DataFrame(_rows()), 16, r"got DataFrame\. Convert it with datasets\.Dataset\.from_pandas",
                 id="trainer-pandas"),
    pytest.param(lambda: Dataset.from_dict({**_rows(n=40), "label": [0] * 39 + [5]}).cast_column(
        "label", ClassLabel(names=["a", "b"])), 16, r"Row 39, column 'label': label 5 is outside the 2 class names",
                 id="trainer-classlabel-out-of-range"),
    pytest.param(lambda: Dataset.from_dict({**_rows(n=40), "anchor": ["same"] * 4 + [f"a{i}" for i in range(36)]}), 16,
                 r"Column 'anchor': the text 'same' appears in 4 rows \(0, 1, 2, 3\) but an epoch has only 3 batches "
                 r"of 16", id="trainer-dedupe-infeasible"),
    pytest.param(lambda: Dataset.from_dict({"text": [f"t{i}" for i in range(40)]}), 16,
                 r"needs 2 input columns .*'text'", id="trainer-too-few-columns"),
]


@pytest.mark.parametrize("make, batch, message", TRAINER_ERRORS)
def test_trainer_refuses_before_training(tiny_model, tmp_path, make, batch, message):
    with pytest.raises(DatasetError, match=message):
        DivCLTrainer(model=tiny_model, args=make_args(tmp_path, max_steps=1, per_device_train_batch_size=batch),
                     train_dataset=make())
    assert not (tmp_path / "cache").exists()  # no reference encoding was paid for


def test_trainer_reports_truncation_and_duplicates_then_trains(tiny_model_dir, tmp_path, caplog):
    from sentence_transformers import SentenceTransformer

    caplog.set_level(logging.WARNING)
    data = _rows(n=48)
    data["positive"][5] = "a very long gloss " * 20
    for row in (40, 45):
        data["anchor"][row], data["positive"][row] = data["anchor"][9], data["positive"][9]
    model = SentenceTransformer(tiny_model_dir, device="cpu")
    # batch_policy="random" (the default): make_args' experimental "auto" would add its own notice to the warnings
    trainer = DivCLTrainer(model=model, args=make_args(tmp_path, max_steps=3, batch_policy="random"),
                           train_dataset=Dataset.from_dict(data))
    assert _warnings(caplog) == [
        "2 of 48 rows repeat an earlier row exactly in column(s) ['anchor', 'positive'] (1 distinct row(s) repeated; "
        "e.g. rows 9 and 45, 3 copies). With dedupe=True copies never share a batch, but every copy is trained on, "
        "so repeated pairs weigh more. Drop them to train on each pair once.",
        "Column 'positive': 1 of 48 rows are longer than the model's max_seq_length of 64 tokens and will be truncated "
        "(rows 5; longest: row 5 with 282 tokens). Raise model.max_seq_length if the model allows it, or split the "
        "long texts."]
    trainer.train()
    assert trainer.state.global_step == 3
    for batch in trainer.divcl_sampler.local_batches(0):  # the three copies never meet in a batch
        assert len({9, 40, 45} & set(batch)) <= 1


def test_trainer_replaces_a_users_row_id_column_with_a_warning(tiny_model, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    ds = Dataset.from_dict({**_rows(n=32), "_divcl_row": list(range(100, 132))})
    trainer = DivCLTrainer(model=tiny_model, args=make_args(tmp_path, max_steps=1, batch_policy="random"),
                           train_dataset=ds)
    assert trainer.train_dataset["_divcl_row"] == list(range(32))
    assert _warnings(caplog) == ["Column '_divcl_row' is the trainer's row-id column; its values are replaced by the "
                                 "row index 0..31. Rename it if you need it."]


@pytest.mark.slow
def test_trainer_trains_on_every_image_mode_and_odd_size(tiny_vit_dir, tmp_path, caplog):
    from sentence_transformers import SentenceTransformer

    caplog.set_level(logging.WARNING)
    model = SentenceTransformer(tiny_vit_dir, device="cpu")
    ds = _images([*_odd_images(), _GIF], n=16)
    args = vision_args(tmp_path, max_steps=2, per_device_train_batch_size=8,
                       loss_kwargs={"loss_type": "nt_xent"})
    trainer = DivCLTrainer(model=model, args=args, train_dataset=ds)
    trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(trainer.state.log_history[-1]["train_loss"])
    assert "only the first frame is trained on" in caplog.text


def test_trainer_refuses_a_16_bit_image_before_training(tiny_vit_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_vit_dir, device="cpu")
    ds = _images([_encode(Image.fromarray(np.full((8, 8), 999, dtype=np.uint16)))], n=16)
    with pytest.raises(DatasetError, match=r"Row 0, column 'image': image in PIL mode 'I;16'"):
        DivCLTrainer(model=model, args=vision_args(tmp_path, max_steps=1, per_device_train_batch_size=8),
                     train_dataset=ds)
