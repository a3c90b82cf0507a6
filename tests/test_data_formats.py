"""File-format readers (.ts, CoNLL-U, two-column tagged), vocabularies and the dataset container
on small hand-written inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxseq.data import vocab
from jaxseq.data.cmudict import parse_cmudict
from jaxseq.data.conllu_reader import parse_conllu, parse_tagged, read_conllu
from jaxseq.data.dataset import SequenceDataset, feature_stats, standardize
from jaxseq.data.tagging import tagging_splits
from jaxseq.data.ts_format import parse_ts

TS = """#comment line
# another
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true x y
@data
1.5,2,3:-1,-2,-3:y
0.25,?:7,8:x
"""

CONLLU = """# sent_id = doc1:S1
# text = Vámonos al mar.
1-2\tVámonos\t_\t_\t_\t_\t_\t_\t_\t_
1\tVamos\tir\tVERB\tV\t_\t0\troot\t_\t_
2\tnos\tnosotros\tPRON\tP\t_\t1\tobj\t_\t_
3-4\tal\t_\t_\t_\t_\t_\t_\t_\t_
3\ta\ta\tADP\tS\t_\t5\tcase\t_\t_
4\tel\tel\tDET\tD\t_\t5\tdet\t_\t_
5\tmar\tmar\tNOUN\tN\t_\t1\tobl\t_\t_
5.1\tllegamos\tllegar\tVERB\tV\t_\t_\t_\t1:conj\t_
6\t.\t.\tPUNCT\tF\t_\t1\tpunct\t_\t_

# sent_id = doc1:S2
1\tSí\tsí\tINTJ\tI\t_\t0\troot\t_\t_
"""


# .ts ----------------------------------------------------------------------------------


@pytest.mark.data
def test_parse_ts_variable_length_missing_and_labels():
    data = parse_ts(TS)
    assert data.class_labels == ("x", "y")
    assert data.labels == ("y", "x")
    assert data.header["problemname"] == "Toy" and data.header["dimensions"] == "2"
    assert [s.shape for s in data.series] == [(3, 2), (2, 2)]
    assert data.series[0].dtype == np.float32
    np.testing.assert_array_equal(data.series[0], [[1.5, -1], [2, -2], [3, -3]])
    assert math.isnan(data.series[1][1, 0]) and data.series[1][1, 1] == 8


# Malformed files: tests/test_data_parse_errors.py.


@pytest.mark.data
def test_parse_ts_without_labels():
    data = parse_ts("@classLabel false\n@data\n1,2\n3\n")
    assert data.labels == () and [s.shape for s in data.series] == [(2, 1), (1, 1)]


# CoNLL-U ------------------------------------------------------------------------------


@pytest.mark.data
def test_parse_conllu_skips_multiword_and_empty_nodes():
    s1, s2 = parse_conllu(CONLLU)
    assert s1.words == ("Vamos", "nos", "a", "el", "mar", ".")
    assert s1.tags == ("VERB", "PRON", "ADP", "DET", "NOUN", "PUNCT")
    assert s1.sent_id == "doc1:S1" and s1.metadata["text"] == "Vámonos al mar."
    assert s2.words == ("Sí",) and s2.tags == ("INTJ",) and s2.sent_id == "doc1:S2"
    assert parse_conllu(CONLLU, tag_column="xpos")[0].tags == ("V", "P", "S", "D", "N", "F")


@pytest.mark.data
def test_read_conllu_file(tmp_path):
    path = tmp_path / "toy.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    assert read_conllu(path) == parse_conllu(CONLLU)


@pytest.mark.data
def test_parse_tagged():
    text = "The\tDET\nhttp://a/b\tX\n\n\nRun  VERB\n"
    sents = parse_tagged(text)
    assert [s.words for s in sents] == [("The", "http://a/b"), ("Run",)]
    assert [s.tags for s in sents] == [("DET", "X"), ("VERB",)]
    with pytest.raises(ValueError, match=r"^<string>:2: columns: expected 'word<TAB>TAG'"):
        parse_tagged("a\tX\nno tag here\n")


# vocab and tagging --------------------------------------------------------------------


@pytest.mark.data
def test_build_vocab_and_encode():
    v = vocab.build_vocab(["b", "a", "b", "c", "c", "c"], min_freq=2)
    assert v == ("<pad>", "<unk>", "c", "b")
    index = vocab.token_index(v)
    np.testing.assert_array_equal(vocab.encode(["c", "zzz", "b"], index), [2, 1, 3])
    with pytest.raises(KeyError, match="no <unk>"):
        vocab.encode(["zzz"], vocab.token_index(vocab.build_vocab("ab", unk=False)))


@pytest.mark.data
def test_tagging_splits_vocab_from_train_chars_and_normalize():
    train = parse_tagged("Ev\tNOUN\nev\tNOUN\ngel\tVERB\n")
    test = parse_tagged("EV\tNOUN\nçok\tADV\n")
    s = tagging_splits(train, None, test, min_freq=1, normalize=str.lower, max_word_len=2)
    assert s.dev is None
    assert s.tag_names == ("ADV", "NOUN", "VERB")
    assert s.word_vocab == ("<pad>", "<unk>", "ev", "gel")
    np.testing.assert_array_equal(s.test.sequences[0], [2, 1])  # EV -> ev; çok unseen
    np.testing.assert_array_equal(s.test.labels[0], [1, 0])
    chars = s.test.extras["chars"][0]
    assert chars.shape == (2, 2)  # [T, W], "çok" truncated to 2 characters
    assert chars[1, 0] == vocab.UNK_ID  # 'ç' never seen in train
    np.testing.assert_array_equal(s.test.extras["char_lengths"][0], [2, 2])
    assert s.char_vocab[chars[0, 0]] == "E"  # characters keep their case


@pytest.mark.data
def test_tagging_splits_unknown_tag_with_fixed_tag_set():
    with pytest.raises(ValueError, match="not in"):
        tagging_splits(parse_tagged("a\tX\n"), None, parse_tagged("b\tY\n"), tag_names=("X",))


# dataset container --------------------------------------------------------------------


@pytest.mark.bad_input
def test_sequence_dataset_validation_and_select():
    seqs = (np.zeros(2, np.int32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="length"):
        SequenceDataset(seqs, (np.zeros(2, np.int32), np.zeros(2, np.int32)), ("a",))
    with pytest.raises(ValueError, match="integer"):
        SequenceDataset(seqs, np.zeros(3, np.int32), ("a",))
    ds = SequenceDataset(seqs, np.array([0, 1], np.int32), ("a", "b"), ids=("p", "q"))
    assert ds.task == "classification" and ds.lengths.tolist() == [2, 3]
    sub = ds.select([1])
    assert sub.ids == ("q",) and sub.labels.tolist() == [1] and sub.lengths.tolist() == [3]


@pytest.mark.data
def test_feature_stats_and_standardize():
    seqs = (np.array([[1.0, 5.0], [3.0, 5.0]], np.float32), np.array([[5.0, 5.0]], np.float32))
    ds = SequenceDataset(seqs, np.array([0, 0], np.int32), ("a",))
    mean, std = feature_stats(ds)
    np.testing.assert_allclose(mean, [3.0, 5.0])
    np.testing.assert_allclose(std, [np.sqrt(8 / 3), 1.0])  # constant feature -> std 1
    z = standardize(ds, mean, std)
    frames = np.concatenate(z.sequences)
    np.testing.assert_allclose(frames.mean(0), [0, 0], atol=1e-6)
    assert frames.dtype == np.float32


@pytest.mark.data
def test_parse_cmudict_variants_comments_and_errors():
    entries = parse_cmudict("abc EY1 B IY2 S IY1 # letters\nabc(2) AE1 B K\n\n")
    assert [e.word for e in entries] == ["abc", "abc(2)"]
    assert [e.base for e in entries] == ["abc", "abc"]
    assert entries[0].phonemes == ("EY1", "B", "IY2", "S", "IY1")
    # Malformed lines: tests/test_data_parse_errors.py.
