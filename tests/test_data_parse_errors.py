"""Malformed data files: every parser error is a ``ValueError`` (``ParseError``)
whose message starts ``<source>:<line>: <field>: ``, naming the file (or
``<string>``), the line and the field, for each class of malformation; tiny
in-memory texts and tmp files only."""

from __future__ import annotations

import re

import numpy as np
import pytest

from jaxseq.data import ParseError, cmudict, japanese_vowels, turkish_upos, vocab
from jaxseq.data.cmudict import parse_cmudict
from jaxseq.data.conllu_reader import parse_conllu, parse_tagged, read_conllu, read_tagged
from jaxseq.data.tagging import tagging_splits
from jaxseq.data.ts_format import parse_ts, read_ts

W1 = "1\ta\ta\tX\t_\t_\t0\troot\t_\t_"  # a well-formed first word
W2 = "2\tb\tb\tY\t_\t_\t1\tdep\t_\t_"

# (parser, text, the message's beginning: "<string>:<line>: <field>: <problem>")
MALFORMED = [
    # .ts: header
    (parse_ts, "@dimensions two\n@data\n1\n", r"<string>:1: @dimensions: 'two' is not a positive"),
    (parse_ts, "@classLabel\n@data\n1\n", r"<string>:1: @classLabel: expected true or false"),
    (parse_ts, "@missing maybe\n@data\n1\n", r"<string>:1: @missing: expected true or false"),
    (parse_ts, "@dimensions 1\n1,2\n", r"<string>:2: header: expected an @key value header"),
    (parse_ts, "@timeStamps true\n@data\n(0,1)\n", r"<string>:2: @timeStamps: true is not"),
    (parse_ts, "# only a comment\n@dimensions 1\n", r"<string>: @data: no @data line"),
    (parse_ts, "@data\n1,2\n@dimensions 1\n", r"<string>:3: header: header line '@dim"),
    # .ts: series
    (
        parse_ts,
        "@dimensions 2\n@classLabel true x\n@data\n1,2:x\n",
        r"<string>:4: dimensions: 1 dimensions \(':'-separated\), the header says @dimensions 2",
    ),
    (
        parse_ts,
        "@classLabel true x\n@data\n1,2:3:x\n",
        r"<string>:3: dimensions: the dimensions of one series have different lengths \[2, 1\]",
    ),
    (
        parse_ts,
        "@classLabel false\n@data\n1,2\n3,abc\n",
        r"<string>:4: dimension 1, value 2: 'abc' is not a number",
    ),
    (parse_ts, "@classLabel true x y\n@data\n1,2,3\n", r"<string>:3: class label: missing"),
    (parse_ts, "@classLabel true x y\n@data\n1,2:\n", r"<string>:3: class label: missing"),
    (parse_ts, "@classLabel true x y\n@data\n1,2:z\n", r"<string>:3: class label: 'z' is not one"),
    # CoNLL-U
    (parse_conllu, "1\tonly\tfour\tfields\n", r"<string>:1: columns: expected 10 tab-separated"),
    (parse_conllu, "x" + W1[1:] + "\n", r"<string>:1: ID: 'x' is not a word ID"),
    (parse_conllu, "1-x" + W1[1:] + "\n", r"<string>:1: ID: '1-x' is not a word ID"),
    (parse_conllu, W2 + "\n", r"<string>:1: ID: token ID '2', expected 1"),
    (parse_conllu, f"{W1}\n{W1}\n", r"<string>:2: ID: token ID '1', expected 2"),
    (parse_conllu, f"{W1}\n" + W2.replace("\t1\t", "\tone\t"), r"<string>:2: HEAD: 'one' is not"),
    (
        parse_conllu,
        f"{W1}\n" + W2.replace("\t1\t", "\t3\t"),
        r"<string>:2: HEAD: '3' is not .*1\.\.2",
    ),
    (parse_conllu, f"{W1}\n" + W2.replace("\tb\tb\t", "\t\tb\t"), r"<string>:2: FORM: empty"),
    (parse_conllu, f"{W1}\n" + W2.replace("\tY\t", "\t\t"), r"<string>:2: UPOS: empty"),
    (parse_conllu, f"{W1}\n# late = comment\n", r"<string>:2: comment: a comment after the first"),
    (parse_conllu, "\n\n# sent_id = a\n", r"<string>:3: sentence without token lines"),
    # two-column tagged
    (
        parse_tagged,
        "a\tX\nlonely\n",
        r"<string>:2: TAG: expected 'word<TAB>TAG' \(2 columns\), got 1",
    ),
    (
        parse_tagged,
        "a\tX\tY\n",
        r"<string>:1: columns: expected 'word<TAB>TAG' \(2 columns\), got 3",
    ),
    (parse_tagged, "\n\na\t\n", r"<string>:3: TAG: empty"),
    (parse_tagged, "a\tX\n\t Y\n", r"<string>:2: word: empty"),
    # CMUdict
    (parse_cmudict, "ok OW0\nhmm\n", r"<string>:2: phonemes: 'hmm' has none"),
    (parse_cmudict, "x AH3 B\n", r"<string>:1: phoneme 1: 'AH3' of 'x': bad stress digit '3'"),
    (parse_cmudict, "x B AE\n", r"<string>:1: phoneme 2: 'AE' of 'x': a vowel without its stress"),
    (parse_cmudict, "x B1 AE1\n", r"<string>:1: phoneme 1: 'B1' of 'x': a consonant with a stress"),
    (parse_cmudict, "x QQ1\n", r"<string>:1: phoneme 1: 'QQ1' of 'x': unknown phoneme 'QQ'"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "parse, text, message",
    MALFORMED,
    ids=[f"{p.__name__}-{i}" for i, (p, *_) in enumerate(MALFORMED)],
)
def test_every_malformed_line_names_source_line_and_field(parse, text, message):
    with pytest.raises(ParseError, match="^" + message) as e:
        parse(text)
    assert isinstance(e.value, ValueError) and e.value.source == "<string>"


# The same files on disk: the message names the path; invalid UTF-8 names the line.
READERS = {
    "ts": (read_ts, "@classLabel true x\n@data\n1,2:x\n1,2:x\n"),
    "conllu": (read_conllu, f"{W1}\n{W2}\n\n{W1}\n"),
    "tagged": (read_tagged, "a\tX\nb\tY\n\nc\tX\n"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", sorted(READERS))
def test_invalid_utf8_in_a_file_names_the_path_and_the_line(tmp_path, kind):
    read, good = READERS[kind]
    path = tmp_path / f"bad.{kind}"
    lines = good.encode("utf-8").split(b"\n")
    lines[3] = lines[3].replace(b"1", b"\xff", 1) if kind != "tagged" else b"\xe9t\tX"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ParseError, match=f"^{re.escape(str(path))}:4: encoding: invalid UTF-8"):
        read(path)
    with pytest.raises(FileNotFoundError):
        read(tmp_path / f"missing.{kind}")


@pytest.mark.bad_input
def test_invalid_utf8_bytes_given_to_a_parser_name_the_line():
    with pytest.raises(ParseError, match=r"^<string>:2: encoding: invalid UTF-8 bytes b'\\xff'"):
        parse_cmudict(b"ok OW0\nb\xffd B AE1 D\n")
    assert parse_cmudict(b"ok OW0\n") == parse_cmudict("ok OW0\n")


@pytest.mark.bad_input
def test_a_malformed_line_in_a_file_names_the_path(tmp_path):
    path = tmp_path / "toy.conllu"
    path.write_text(f"{W1}\n" + W2.replace("\t1\t", "\t9\t") + "\n", encoding="utf-8")
    with pytest.raises(ParseError, match=f"^{re.escape(str(path))}:2: HEAD: '9'"):
        read_conllu(path)


@pytest.mark.bad_input
def test_the_data_set_loaders_name_the_file_of_a_malformed_line(tmp_path):
    """verify=False reads a changed file: its errors name that file and line."""
    (tmp_path / "cmudict.dict").write_text("ok OW1 K EY1\nbad AH5\n", encoding="utf-8")
    with pytest.raises(ParseError, match=f"^{re.escape(str(tmp_path))}/cmudict.dict:2: phoneme 1"):
        cmudict.load_stress(path=tmp_path / "cmudict.dict", verify=False)
    (tmp_path / "web.conllu").write_text(f"{W1}\n1\tb\n", encoding="utf-8")
    with pytest.raises(ParseError, match=f"^{re.escape(str(tmp_path))}/web.conllu:2: columns"):
        turkish_upos.load(("web",), path=tmp_path, verify=False)
    header = "@classLabel true 1 2 3 4 5 6 7 8 9\n@data\n"
    (tmp_path / "JapaneseVowels_TRAIN.ts").write_text(header + "1,2:1\n1,x:2\n", encoding="utf-8")
    (tmp_path / "JapaneseVowels_TEST.ts").write_text(header + "1:1\n", encoding="utf-8")
    train = re.escape(str(tmp_path / "JapaneseVowels_TRAIN.ts"))
    with pytest.raises(ParseError, match=f"^{train}:4: dimension 1, value 2: 'x'"):
        japanese_vowels.load(path=tmp_path, verify=False)
    (tmp_path / "JapaneseVowels_TRAIN.ts").write_text(header + "1,2:1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{train}: dimensions: expected 12 per series"):
        japanese_vowels.load(path=tmp_path, verify=False)


@pytest.mark.bad_input
def test_tagging_and_vocabulary_errors_name_the_sentence_and_the_token():
    train = parse_tagged("a\tX\n")
    with pytest.raises(ValueError, match=r"^upos/test sentence 1: tag: \['Z'\] not in the tag set"):
        tagging_splits(train, None, parse_tagged("a\tX\n\nb\tZ\n"), tag_names=("X",), name="upos")
    index = vocab.token_index(vocab.build_vocab("ab", unk=False))
    with pytest.raises(ValueError, match=r"^token 'z' at position 2 is not in the vocabulary"):
        vocab.encode(["a", "b", "z"], index)
    with pytest.raises(KeyError):  # what encode raised before: still caught by `except KeyError`
        vocab.encode(["z"], index)
    np.testing.assert_array_equal(vocab.encode(["b", "a"], index), [2, 1])
