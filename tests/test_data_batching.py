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
