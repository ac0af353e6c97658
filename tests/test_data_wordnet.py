"""WordNet pairs: the parser on the real file format, the embedded sample, and clear errors."""

from pathlib import Path

import pytest

from hf_divcl.data import embedded_sample_path, iter_wordnet_synsets, wordnet_pairs
from hf_divcl.data.wordnet import parse_synset_line

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2 Princeton University.  \n"
LINES = [
    "00001740 03 n 02 entity 0 thing_one 1 001 ~ 00001930 n 0000 | that which is perceived; \"an entity\"  \n",
    "00002098 00 a 01 able(a) 0 002 = 05207437 n 0000 | (usually followed by `to') having the necessary means; "
    "\"able to swim\"; \"she was able to program her computer\"  \n",
    "00002724 29 v 0a w0 0 w1 0 w2 0 w3 0 w4 0 w5 0 w6 0 w7 0 w8 0 w9 0 000 01 + 02 00 | breathe with difficulty  \n",
]


@pytest.fixture
def wordnet_dir(tmp_path):
    for pos in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text(HEADER + (LINES[{"noun": 0, "adj": 1, "verb": 2}.get(pos, 0)]
                                                        if pos != "adv" else ""))
    return tmp_path


def test_parse_line_with_hex_word_count_markers_and_examples():
    s = parse_synset_line(LINES[1])
    assert s.synset_id == "a00002098" and s.lemmas == ("able",)
    assert s.definition == "(usually followed by `to') having the necessary means"
    assert s.examples == ("able to swim", "she was able to program her computer")
    v = parse_synset_line(LINES[2])
    assert len(v.lemmas) == 10 and v.examples == () and v.definition == "breathe with difficulty"
    n = parse_synset_line(LINES[0])
    assert n.lemmas == ("entity", "thing one")


def test_pairs_from_a_directory_skip_the_licence_header(wordnet_dir):
    assert len(list(iter_wordnet_synsets(wordnet_dir))) == 3
    ex = wordnet_pairs("example", source="debian", root=wordnet_dir)
    assert ex["anchor"][:] == ["able to swim", "she was able to program her computer", "an entity"]
    both = wordnet_pairs("both", source="debian", root=wordnet_dir)
    assert len(both) == 3 + 3 and set(both["kind"]) == {"lemma", "example"}


def test_missing_debian_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DIVCL_WORDNET_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"apt-get install wordnet-base.*HF_DIVCL_WORDNET_DIR"):
        wordnet_pairs(source="debian")
    # auto falls back to the embedded sample
    assert len(wordnet_pairs(source="auto")) == 2500


def test_embedded_sample_is_clean_and_licensed():
    assert embedded_sample_path().stat().st_size < 600_000
    lic = (Path(embedded_sample_path()).parent / "LICENSE.wordnet").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in lic
    ex, lem = wordnet_pairs("example", source="embedded"), wordnet_pairs("lemma", source="embedded")
    assert (len(ex), len(lem)) == (2500, 1500)
    both = wordnet_pairs("both", source="embedded")
    anchors, positives = list(both["anchor"]), list(both["positive"])
    assert len(set(anchors)) == len(anchors) and len(set(positives)) == len(positives)
    assert all(a.strip() and p.strip() for a, p in zip(anchors, positives, strict=True))


def test_limit_is_a_deterministic_subset():
    a = wordnet_pairs("example", source="embedded", limit=100, seed=1)
    b = wordnet_pairs("example", source="embedded", limit=100, seed=1)
    c = wordnet_pairs("example", source="embedded", limit=100, seed=2)
    assert a["anchor"][:] == b["anchor"][:] != c["anchor"][:]
    full = list(wordnet_pairs("example", source="embedded")["anchor"])
    idx = [full.index(x) for x in a["anchor"]]
    assert idx == sorted(idx)


@pytest.mark.parametrize("kwargs,match", [({"kind": "gloss"}, "kind must be one of"),
                                          ({"source": "web"}, "source must be one of")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wordnet_pairs(**kwargs)


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base not installed")
def test_full_debian_wordnet_counts():
    synsets = list(iter_wordnet_synsets("/usr/share/wordnet"))
    assert len(synsets) == 117_659
    assert sum(len(s.examples) for s in synsets) == 48_339
    assert sum(1 for s in synsets if s.examples) == 32_923
