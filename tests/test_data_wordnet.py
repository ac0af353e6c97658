"""WordNet pairs: the parser on the real file format, the embedded sample, `limit`, and clear errors."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pytest

from hf_divcl.data.wordnet import embedded_sample_path, synset_pairs, wordnet_pairs, wordnet_split
from hf_divcl.data.wordnet_files import (
    WORDNET_ROOT,
    WordNetSynset,
    iter_wordnet_synsets,
    parse_gloss,
    parse_synset_line,
)

# the licence header as in the real files: two spaces, a line number, the text, two trailing blanks
HEADER = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  \n"
    "  3   \n"
    "  4 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  \n"
)
NOUN = [
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which is "
    "perceived or known or inferred to have its own distinct existence (living or nonliving)  \n",
    "00002684 03 n 02 object 0 physical_object 0 001 @ 00001930 n 0000 | a tangible and visible entity; "
    'an entity that can cast a shadow; "it was full of rackets, balls and other objects"  \n',
]
VERB = [  # w_cnt "0a" = 10 words; verb frames after the pointers; an attribution after the example
    "00001740 29 v 0a w_zero 0 w1 0 w2 0 w3 0 w4 0 w5 0 w6 0 w7 0 w8 0 w9 1 001 $ 00002325 v 0000 "
    "02 + 02 00 + 08 00"
    ' | draw air into, and expel out of, the lungs; "I can breathe better; the air is clean"- A. Poet; '
    '"The patient is respiring"  \n',
]
ADJ = [  # markers (a), (p), (ip); a satellite (ss_type s); an example introduced by ":"
    "00001740 00 a 02 able(a) 0 able_bodied(p) 1 001 ! 00002098 a 0101 | (usually followed by `to') "
    "having the necessary means or skill or know-how or authority to do something; "
    '"able to swim"; "she was able to program her computer"; "we were at last able to buy a car"  \n',
    '00002312 00 s 01 galore(ip) 0 001 & 00001740 a 0000 | in great numbers:"there were bugs galore"  \n',
]
ADV = [
    '00001740 02 r 01 a_cappella 0 000 | without musical accompaniment; "they performed a cappella"  \n',
]


@pytest.fixture
def wordnet_dir(tmp_path: Path) -> Path:
    for name, lines in (("noun", NOUN), ("verb", VERB), ("adj", ADJ), ("adv", ADV)):
        (tmp_path / f"data.{name}").write_text(HEADER + "".join(lines), encoding="utf-8")
    return tmp_path


def test_parse_synset_line_reads_hex_word_count_markers_and_underscores():
    verb = parse_synset_line(VERB[0], file_pos="v")
    assert verb.synset_id == "v00001740" and verb.pos == "v"
    assert len(verb.lemmas) == 10 and verb.lemmas[0] == "w zero" and verb.lemmas[-1] == "w9"
    assert verb.definition == "draw air into, and expel out of, the lungs"
    # the ";" inside the quotes does not split; the attribution after the closing quote is dropped
    assert verb.examples == ("I can breathe better; the air is clean", "The patient is respiring")

    able = parse_synset_line(ADJ[0], file_pos="a")
    assert able.lemmas == ("able", "able bodied")
    assert able.definition.startswith("(usually followed by `to') having")
    assert able.definition.endswith("authority to do something")
    assert able.examples == ("able to swim", "she was able to program her computer",
                             "we were at last able to buy a car")

    galore = parse_synset_line(ADJ[1], file_pos="a")
    expected = WordNetSynset("a00002312", "s", ("galore",), "in great numbers", ("there were bugs galore",),
                             "adj.all")
    assert galore == expected


@pytest.mark.parametrize(
    "gloss,definition,examples",
    [
        ("a definition only  ", "a definition only", ()),
        ('a thing; another sense; "ex one"; "ex two"', "a thing; another sense", ("ex one", "ex two")),
        ('d; "a", "b"; "c" or "d"', "d", ("a", "b", "c", "d")),
        ('d; "drop a hint"; drop names"', "d", ("drop a hint", "drop names")),
        ('close in; darkness enclosed him"', "close in", ("darkness enclosed him",)),
        ('progress (in the phrase "make strides")', 'progress (in the phrase "make strides")', ()),
        ('a list; e.g. "a news roundup"', 'a list; e.g. "a news roundup"', ()),
        ('d; "open-ended', "d", ("open-ended",)),
        ('d; "same"; "same"', "d", ("same",)),
    ],
)
def test_parse_gloss_edge_cases_from_wordnet(gloss, definition, examples):
    assert parse_gloss(gloss) == (definition, examples)


def test_iter_skips_the_licence_header_and_sorts_by_synset_id(wordnet_dir):
    synsets = list(iter_wordnet_synsets(wordnet_dir))
    assert [s.synset_id for s in synsets] == ["a00001740", "a00002312", "n00001740", "n00002684", "r00001740",
                                              "v00001740"]
    assert synsets[4].lemmas == ("a cappella",)


def test_pairs_from_a_directory(wordnet_dir):
    ex = wordnet_pairs("example", source="debian", root=wordnet_dir)
    assert ex.column_names == ["anchor", "positive", "kind", "synset_id"]
    assert ex["anchor"] == ["able to swim", "she was able to program her computer",
                            "we were at last able to buy a car", "there were bugs galore",
                            "it was full of rackets, balls and other objects",
                            "they performed a cappella", "I can breathe better; the air is clean",
                            "The patient is respiring"]
    assert set(ex["kind"]) == {"example"} and ex["positive"][3] == "in great numbers"
    lemma = wordnet_pairs("lemma", source="debian", root=wordnet_dir)
    assert len(lemma) == 6 and lemma["positive"][0].endswith("authority to do something")
    assert lemma["anchor"][0] == "able, able bodied" and lemma["anchor"][3] == "object, physical object"
    both = wordnet_pairs("both", source="debian", root=wordnet_dir)
    assert len(both) == 6 + 8
    assert both["kind"][:5] == ["lemma", "example", "example", "example", "lemma"]  # per synset: lemma first
    assert both["synset_id"] == sorted(both["synset_id"])


def test_domains_keep_one_lexicographer_file(wordnet_dir):
    tops = wordnet_pairs("lemma", source="debian", root=wordnet_dir, domains=["noun.Tops"])
    assert tops["anchor"] == ["entity", "object, physical object"]
    body = wordnet_pairs("example", source="debian", root=wordnet_dir, domains="verb.body")
    assert body["synset_id"] == ["v00001740", "v00001740"]
    split = wordnet_split("lemma", "test", source="debian", root=wordnet_dir, test_size=1, domains=["noun.Tops"])
    assert set(split["synset_id"]) <= {"n00001740", "n00002684"} and len(split) == 1


def test_domains_errors_name_the_fix(wordnet_dir):
    with pytest.raises(ValueError, match=r"Unknown WordNet domain\(s\) \['noun\.animals'\].*noun\.animal"):
        wordnet_pairs("lemma", source="debian", root=wordnet_dir, domains=["noun.animals"])
    with pytest.raises(ValueError, match=r"needs the Debian WordNet files.*wordnet-base"):
        wordnet_pairs("lemma", source="embedded", domains=["noun.animal"])


def test_env_var_points_at_the_data(wordnet_dir, monkeypatch, caplog):
    monkeypatch.setenv("HF_DIVCL_WORDNET_DIR", str(wordnet_dir))
    with caplog.at_level(logging.INFO, logger="hf_divcl.data.wordnet"):
        assert len(wordnet_pairs("lemma")) == 6
    assert "Debian" in caplog.text and str(wordnet_dir) in caplog.text


def test_missing_debian_files_say_how_to_install(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_DIVCL_WORDNET_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        wordnet_pairs(source="debian")
    message = str(err.value)
    assert "sudo apt-get install wordnet-base" in message and "bash scripts/setup.sh" in message
    assert "HF_DIVCL_WORDNET_DIR" in message and str(tmp_path) in message
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        list(iter_wordnet_synsets(tmp_path / "nowhere"))
    with caplog.at_level(logging.INFO, logger="hf_divcl.data.wordnet"):
        assert len(wordnet_pairs(source="auto")) == 2500  # falls back to the embedded sample
    assert "embedded sample" in caplog.text


def test_embedded_sample_counts_columns_and_uniqueness():
    path = embedded_sample_path()
    assert path.is_file() and path.stat().st_size < 600_000
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "kind\tsynset_id\tanchor\tpositive" and all(line.count("\t") == 3 for line in lines)
    with path.open(encoding="utf-8", newline="") as fh:  # a CSV reader splits it the same way
        assert [row for row in csv.reader(fh, delimiter="\t")] == [line.split("\t") for line in lines]
    ex, lemma = wordnet_pairs("example", source="embedded"), wordnet_pairs("lemma", source="embedded")
    assert (len(ex), len(lemma)) == (2500, 1500)
    assert ex.column_names == ["anchor", "positive", "kind", "synset_id"]
    both = wordnet_pairs("both", source="embedded")
    assert len(both) == 4000 and both["synset_id"] == sorted(both["synset_id"])
    anchors, positives = both["anchor"], both["positive"]
    assert len(set(anchors)) == len(anchors) and len(set(positives)) == len(positives)
    assert all(a.strip() and p.strip() for a, p in zip(anchors, positives, strict=True))
    assert all(sid[0] in "anvr" and len(sid) == 9 and sid[1:].isdigit() for sid in both["synset_id"])


def test_licence_ships_next_to_the_sample():
    licence = (embedded_sample_path().parent / "LICENSE.wordnet").read_text(encoding="utf-8")
    assert "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved." in licence
    assert 'THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS"' in licence


def test_limit_is_a_deterministic_sorted_subset():
    a = wordnet_pairs("example", source="embedded", limit=100, seed=1)
    b = wordnet_pairs("example", source="embedded", limit=100, seed=1)
    c = wordnet_pairs("example", source="embedded", limit=100, seed=2)
    assert len(a) == 100 and a["anchor"] == b["anchor"] and a["anchor"] != c["anchor"]
    assert a["synset_id"] == sorted(a["synset_id"])
    full = wordnet_pairs("example", source="embedded")["anchor"]
    assert set(a["anchor"]) <= set(full)
    assert len(wordnet_pairs("example", source="embedded", limit=10**6)) == len(full)
    empty = wordnet_pairs("example", source="embedded", limit=0)
    assert len(empty) == 0 and empty.column_names == ["anchor", "positive", "kind", "synset_id"]


@pytest.mark.parametrize(
    "kwargs,match",
    [({"kind": "gloss"}, "'example', 'lemma', 'both'"), ({"source": "web"}, "'auto', 'debian', 'embedded'"),
     ({"limit": -1}, "limit")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wordnet_pairs(**kwargs)


@pytest.mark.skipif(not Path(WORDNET_ROOT, "data.noun").is_file(), reason="Debian wordnet-base not installed")
def test_full_debian_wordnet_counts():
    synsets = list(iter_wordnet_synsets(WORDNET_ROOT))
    assert len(synsets) == 117_659 and len({s.synset_id for s in synsets}) == 117_659
    assert [s.synset_id for s in synsets] == sorted(s.synset_id for s in synsets)
    assert all(s.definition and s.lemmas for s in synsets)
    # 32,884 = synsets whose gloss has an example introduced by `; "`; 35 more introduce their
    # only example with ":" or "," (`move with force, "He pushed the table into a corner"`) or lost a quote
    raw = 0
    for name in ("noun", "verb", "adj", "adv"):
        with Path(WORDNET_ROOT, f"data.{name}").open(encoding="utf-8") as fh:
            raw += sum(bool(re.search(r';\s*"', line.partition(" | ")[2])) for line in fh if line[:2] != "  ")
    assert raw == 32_884
    assert sum(1 for s in synsets if s.examples) == 32_919
    assert sum(len(s.examples) for s in synsets) == 48_336
    lemma, example = synset_pairs(synsets, "lemma"), synset_pairs(synsets, "example")
    assert (len(lemma["anchor"]), len(example["anchor"])) == (117_659, 48_336)
