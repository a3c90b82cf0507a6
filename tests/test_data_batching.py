"""Padding, bucketing and fixed-shape batch iteration (host-side NumPy only)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxseq.data.batching import (
    Batch,
    bucket_boundaries,
    count_batches,
    iterate_batches,
    pad_sequences,
)
from jaxseq.data.dataset import SequenceDataset


def _classification(lengths, dim=None) -> SequenceDataset:
    rng = np.random.default_rng(0)
    if dim is None:
        seqs = tuple(rng.integers(1, 50, size=n).astype(np.int32) for n in lengths)
    else:
        seqs = tuple(rng.normal(size=(n, dim)).astype(np.float32) for n in lengths)
    labels = np.arange(len(lengths), dtype=np.int32) % 3 + 1  # never 0, unlike padding
    return SequenceDataset(seqs, labels, class_names=("a", "b", "c", "d"), name="toy")


def _labeling(lengths) -> SequenceDataset:
    seqs = tuple(np.arange(1, n + 1, dtype=np.int32) for n in lengths)
    labels = tuple(np.full(n, 2, dtype=np.int32) for n in lengths)
    masks = tuple(np.arange(n) % 2 == 0 for n in lengths)  # every other step counts
    chars = tuple(np.ones((n, 4), dtype=np.int32) for n in lengths)
    return SequenceDataset(
        seqs,
        labels,
        class_names=("x", "y", "z"),
        label_masks=masks,
        extras={"chars": chars},
        name="toy-lab",
    )


LENGTHS = [3, 1, 7, 4, 9, 2, 5, 5, 8, 6, 12, 3, 1]


# pad_sequences ------------------------------------------------------------------------


@pytest.mark.data
def test_pad_sequences_values_and_dtype():
    out = pad_sequences([np.array([1, 2, 3], np.int32), np.array([4], np.int32)], pad_value=-7)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, -7, -7]])


@pytest.mark.data
def test_pad_sequences_features_max_len_and_dtype():
    seqs = [np.ones((2, 3), np.float32), np.full((1, 3), 2.0, np.float32)]
    out = pad_sequences(seqs, max_len=4, dtype=np.float64)
    assert out.shape == (2, 4, 3) and out.dtype == np.float64
    np.testing.assert_array_equal(out[1, 0], [2, 2, 2])
    assert (out[0, 2:] == 0).all() and (out[1, 1:] == 0).all()


@pytest.mark.bad_input
def test_pad_sequences_errors():
    with pytest.raises(ValueError, match="max_len"):
        pad_sequences([[1, 2, 3]], max_len=2)
    with pytest.raises(ValueError, match="shape"):
        pad_sequences([np.ones((2, 3)), np.ones((2, 4))])
    with pytest.raises(ValueError, match="at least one"):
        pad_sequences([])


# bucket_boundaries --------------------------------------------------------------------


@pytest.mark.data
def test_bucket_boundaries_cover_and_balance():
    lengths = np.random.default_rng(1).integers(1, 100, size=1000)
    buckets = bucket_boundaries(lengths, 4)
    assert len(buckets) == 4 and buckets[-1] == lengths.max()
    assert list(buckets) == sorted(set(buckets))
    counts = np.bincount(np.searchsorted(buckets, lengths), minlength=4)
    assert counts.min() > 150  # roughly 250 each
    assert all(b % 8 == 0 for b in bucket_boundaries(lengths, 4, multiple_of=8))


@pytest.mark.data
def test_bucket_boundaries_merges_duplicates():
    assert bucket_boundaries([5] * 10, 3) == (5,)


@pytest.mark.bad_input
def test_bucket_boundaries_bad_arguments():
    with pytest.raises(AssertionError, match=r"`lengths` must have rank 1 \[N\]"):
        bucket_boundaries(np.ones((2, 3), np.int32), 2)
    with pytest.raises(ValueError, match="at least one length"):
        bucket_boundaries([], 2)
    with pytest.raises(ValueError, match="num_buckets"):
        bucket_boundaries([3, 4], 0)
    with pytest.raises(TypeError, match="multiple_of"):
        bucket_boundaries([3, 4], 2, multiple_of=2.0)


# iterate_batches ----------------------------------------------------------------------


def _epoch(ds, batch_size, **kw) -> list[Batch]:
    return list(iterate_batches(ds, batch_size, **kw))


@pytest.mark.retrace
def test_fixed_shapes_few_shapes_and_padding_classification():
    ds = _classification(LENGTHS, dim=2)
    buckets = (4, 8, 12)
    batches = _epoch(ds, 4, buckets=buckets)
    shapes = {b.inputs.shape for b in batches}
    assert all(s[0] == 4 and s[2] == 2 and s[1] in buckets for s in shapes)
    assert len(shapes) <= len(buckets)
    for b in batches:
        assert b.labels.shape == (4,) and b.lengths.shape == (4,) and b.label_mask.shape == (4,)
        assert b.lengths.dtype == np.int32 and b.label_mask.dtype == np.bool_
        for r in range(4):
            n = b.lengths[r]
            assert n <= b.inputs.shape[1]
            if b.indices[r] >= 0:
                np.testing.assert_array_equal(b.inputs[r, :n], ds.sequences[b.indices[r]])
                assert b.labels[r] == ds.labels[b.indices[r]]
            assert (b.inputs[r, n:] == 0).all()
    assert len(batches) == count_batches(ds, 4, buckets=buckets)


@pytest.mark.data
def test_every_example_once_and_one_partial_batch():
    ds = _classification(LENGTHS)
    for shuffle in (False, True):
        batches = _epoch(ds, 4, buckets=(4, 8, 12), shuffle=shuffle, seed=3, epoch=0)
        idx = np.concatenate([b.indices for b in batches])
        assert sorted(idx[idx >= 0].tolist()) == list(range(len(ds)))
        partial = [b for b in batches if (b.indices < 0).any()]
        assert len(partial) == 1
        assert (idx < 0).sum() == -len(ds) % 4


@pytest.mark.data
def test_partial_batch_padding_rows():
    ds = _labeling(LENGTHS)
    (last,) = [b for b in _epoch(ds, 5, buckets=(6, 12)) if (b.indices < 0).any()]
    pad = last.indices < 0
    assert pad.sum() == -len(ds) % 5
    assert (last.lengths[pad] == 0).all()
    assert not last.label_mask[pad].any()
    assert (last.labels[pad] == 0).all() and (last.inputs[pad] == 0).all()
    assert (last.extras["chars"][pad] == 0).all()


@pytest.mark.data
def test_drop_remainder():
    ds = _classification(LENGTHS)
    batches = _epoch(ds, 4, buckets=(4, 8, 12), drop_remainder=True)
    assert all((b.indices >= 0).all() for b in batches)
    assert len(batches) == len(ds) // 4
    assert count_batches(ds, 4, buckets=(4, 8, 12), drop_remainder=True) == len(batches)


@pytest.mark.data
def test_labeling_mask_and_labels():
    ds = _labeling(LENGTHS)
    for b in _epoch(ds, 3, buckets=(6, 12)):
        assert b.labels.shape == b.label_mask.shape == b.inputs.shape
        assert b.extras["chars"].shape == (*b.inputs.shape, 4)
        steps = np.arange(b.inputs.shape[1])
        valid = steps[None, :] < b.lengths[:, None]
        np.testing.assert_array_equal(b.label_mask, valid & (steps[None, :] % 2 == 0))
        np.testing.assert_array_equal(b.labels, np.where(valid, 2, 0))


@pytest.mark.data
def test_labeling_without_label_masks_uses_lengths():
    ds = _labeling(LENGTHS)
    ds = SequenceDataset(ds.sequences, ds.labels, ds.class_names)
    for b in _epoch(ds, 4):
        steps = np.arange(b.inputs.shape[1])
        np.testing.assert_array_equal(b.label_mask, steps[None, :] < b.lengths[:, None])
        assert b.inputs.shape[1] == max(LENGTHS)  # default: one bucket


@pytest.mark.determinism
def test_shuffle_deterministic_per_seed_epoch():
    ds = _classification(list(range(1, 41)))

    def order(seed, epoch):
        batches = _epoch(ds, 4, buckets=(10, 20, 40), shuffle=True, seed=seed, epoch=epoch)
        return np.concatenate([b.indices for b in batches]).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    unshuffled = np.concatenate([b.indices for b in _epoch(ds, 4, buckets=(10, 20, 40))])
    assert order(0, 0) != unshuffled.tolist()


@pytest.mark.bad_input
def test_shuffle_needs_seed_and_epoch_and_bad_args():
    ds = _classification(LENGTHS)
    with pytest.raises(ValueError, match="seed"):
        iterate_batches(ds, 4, shuffle=True, seed=0)
    with pytest.raises(ValueError, match="largest bucket"):
        iterate_batches(ds, 4, buckets=(4, 8))
    with pytest.raises(ValueError, match="increasing"):
        iterate_batches(ds, 4, buckets=(8, 4, 12))
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(ds, 0)
    with pytest.raises(TypeError, match="batch_size"):
        iterate_batches(ds, 4.0)
    with pytest.raises(TypeError, match="shuffle"):
        iterate_batches(ds, 4, shuffle=1, seed=0, epoch=0)
    with pytest.raises(ValueError, match="epoch"):
        iterate_batches(ds, 4, shuffle=True, seed=0, epoch=-1)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=60),
    batch_size=st.integers(1, 8),
    num_buckets=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    epoch=st.integers(0, 5),
)
@pytest.mark.property
def test_batching_invariants(lengths, batch_size, num_buckets, seed, epoch):
    ds = _classification(lengths)
    buckets = bucket_boundaries(ds.lengths, num_buckets)
    batches = _epoch(ds, batch_size, buckets=buckets, shuffle=True, seed=seed, epoch=epoch)
    shapes = {b.inputs.shape for b in batches}
    assert len(shapes) <= len(buckets)
    assert all(s[0] == batch_size and s[1] in buckets for s in shapes)
    idx = np.concatenate([b.indices for b in batches])
    assert sorted(idx[idx >= 0].tolist()) == list(range(len(ds)))
    assert (idx < 0).sum() == -len(ds) % batch_size
    for b in batches:
        np.testing.assert_array_equal(b.lengths, np.where(b.indices >= 0, ds.lengths[b.indices], 0))
        np.testing.assert_array_equal(b.label_mask, b.lengths > 0)


# integer dtypes -----------------------------------------------------------------------

INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
DTYPE_IDS = [np.dtype(d).name for d in INT_DTYPES]


@pytest.mark.bad_input
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=DTYPE_IDS)
def test_every_integer_dtype_gives_int32_ids_and_lengths(dtype):
    """Token ids, labels, lengths and indices of any integer dtype become exactly
    the int32 values, in data sets, padding and batches."""
    seqs = [np.array([1, 2, 3], dtype), np.array([4], dtype), np.array([5, 6], dtype)]
    padded = pad_sequences(seqs, pad_value=0)
    assert padded.dtype == np.int32
    np.testing.assert_array_equal(padded, [[1, 2, 3], [4, 0, 0], [5, 6, 0]])
    lengths = np.array([3, 1, 2, 9], dtype)
    assert bucket_boundaries(lengths, 2) == bucket_boundaries(lengths.astype(np.int32), 2)

    labels = tuple(np.array([0, 2, 1][: len(s)], dtype) for s in seqs)
    extras = {"chars": tuple(np.ones((len(s), 2), dtype) for s in seqs)}
    ds = SequenceDataset(tuple(seqs), labels, ("a", "b", "c"), extras=extras, name="ints")
    assert {s.dtype for s in ds.sequences} == {np.dtype(np.int32)}
    assert {v.dtype for v in ds.labels} == {np.dtype(np.int32)}
    assert ds.extras["chars"][0].dtype == np.int32
    (batch,) = iterate_batches(ds, 3)
    for array in (batch.inputs, batch.labels, batch.lengths, batch.indices, batch.extras["chars"]):
        assert array.dtype == np.int32
    np.testing.assert_array_equal(batch.inputs, padded)
    np.testing.assert_array_equal(batch.labels, [[0, 2, 1], [0, 0, 0], [0, 2, 0]])

    classification = SequenceDataset(tuple(seqs), np.array([2, 0, 1], dtype), ("a", "b", "c"))
    assert classification.labels.dtype == np.int32
    sub = classification.select(np.array([2, 0], dtype))
    assert sub.labels.tolist() == [1, 2] and sub.sequences[0].tolist() == [5, 6]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "dtype, big", [(np.int64, 2**31), (np.uint32, 2**31), (np.uint64, 2**64 - 1)], ids=str
)
def test_integer_values_beyond_int32_raise_instead_of_wrapping(dtype, big):
    seqs = (np.array([1, 2], dtype), np.array([big, 1], dtype))
    with pytest.raises(ValueError, match=rf"sequence 1 holds {big}, which does not fit .*int32"):
        pad_sequences(seqs)
    with pytest.raises(ValueError, match=rf"`lengths` holds {big} at index \(1,\).*int32"):
        bucket_boundaries(np.array([3, big], dtype), 2)
    with pytest.raises(ValueError, match=rf"^toy: `sequences\[1\]` holds {big} at index \(0,\)"):
        SequenceDataset(seqs, np.array([0, 0], np.int32), ("a",), name="toy")
    labels = (np.array([0, 0], dtype), np.array([0, big], dtype))
    with pytest.raises(ValueError, match=rf"^toy: `labels\[1\]` holds {big} at index \(1,\)"):
        SequenceDataset(seqs[:1] * 2, labels, ("a",), name="toy")
    with pytest.raises(ValueError, match=rf"`indices` holds {big}"):
        SequenceDataset(seqs[:1], np.array([0], np.int32), ("a",)).select(np.array([big], dtype))


@pytest.mark.bad_input
def test_ids_labels_lengths_and_indices_outside_their_range_raise():
    seqs = (np.array([1, 2], np.uint8), np.array([3], np.uint8))
    vocab = ("<pad>", "<unk>", "a")  # ids 0..2: id 3 has no embedding row
    with pytest.raises(ValueError, match=r"^toy: `sequences\[1\]` must be in \[0, 2\], got 3"):
        SequenceDataset(seqs, np.array([0, 1], np.int8), ("a", "b"), vocab=vocab, name="toy")
    with pytest.raises(ValueError, match=r"^toy: `labels` must be in \[0, 1\], got 2 at index"):
        SequenceDataset(seqs, np.array([0, 2], np.int16), ("a", "b"), name="toy")
    with pytest.raises(ValueError, match=r"`labels\[0\]` must be in \[0, 1\], got -1"):
        SequenceDataset(seqs, (np.array([0, -1], np.int64), np.array([1])), ("a", "b"))
    with pytest.raises(ValueError, match=r"labels must be integer arrays .* labels\[0\] of dtype"):
        SequenceDataset(seqs, (np.array([0.0, 1.0]), np.array([1])), ("a", "b"))
    with pytest.raises(ValueError, match=r"`lengths` must be in \[0, inf\], got -1"):
        bucket_boundaries(np.array([3, -1], np.int8), 2)
    with pytest.raises(AssertionError, match=r"`lengths` must have an integer dtype"):
        bucket_boundaries([3.0, 5.0], 2)
    ds = SequenceDataset(seqs, np.array([0, 1], np.uint64), ("a", "b"))
    with pytest.raises(ValueError, match=r"`indices` must be in \[0, 1\], got -1"):
        ds.select([0, -1])  # not Python's "from the end"
    with pytest.raises(ValueError, match=r"`indices` must be in \[0, 1\], got 2"):
        ds.select(np.array([2], np.uint8))


@pytest.mark.bad_input
def test_pad_value_and_output_dtype_must_hold_the_values():
    with pytest.raises(ValueError, match=r"sequence 0 holds 300, which does not fit .*int8"):
        pad_sequences([np.array([300, 1], np.int64)], dtype=np.int8)
    with pytest.raises(ValueError, match=r"`pad_value` 1099511627776 is not a value of .*int32"):
        pad_sequences([np.array([1], np.int64)], pad_value=2**40)
    with pytest.raises(ValueError, match=r"`pad_value` 0.5 is not a value of .*int32"):
        pad_sequences([np.array([1], np.int64)], pad_value=0.5)
    out = pad_sequences([np.array([1, 2], np.uint8)], max_len=3, pad_value=-1)
    assert out.dtype == np.int32 and out.tolist() == [[1, 2, -1]]
    floats = pad_sequences([np.array([0.5], np.float32)], max_len=2, pad_value=-1)
    assert floats.dtype == np.float32 and floats.tolist() == [[0.5, -1.0]]
