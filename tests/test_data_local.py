"""Local data sets: files and image folders as `datasets.Dataset`, columns mapped by name, clear errors."""

import pytest
from PIL import Image

from hf_divcl.data.local import load_local_dataset


def test_csv_columns_are_mapped_by_name(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("id,question,answer\n1,what is a cat,a small feline\n2,what is a dog,a domestic canine\n")
    ds = load_local_dataset(path, columns={"anchor": "question", "positive": "answer"})
    assert ds.column_names == ["anchor", "positive"]
    assert ds[1] == {"anchor": "what is a dog", "positive": "a domestic canine"}


def test_image_folder_gives_images_and_labels(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    ds = load_local_dataset(tmp_path / "imgs")
    assert len(ds) == 6 and set(ds.column_names) == {"image", "label"}
    assert ds.features["label"].names == ["cats", "dogs"]


def test_missing_column_and_file_are_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"q": "a", "d": "b"}\n')
    with pytest.raises(ValueError, match=r"no column\(s\) \['answer'\]; its columns are \['q', 'd'\]"):
        load_local_dataset(path, columns={"anchor": "q", "positive": "answer"})
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_local_dataset(tmp_path / "nope.csv")
