"""Right-padded, length-bucketed batches of fixed shape (host-side NumPy).

Notation: B batch, T padded time, N examples.

Every batch of one epoch has exactly ``batch_size`` rows and is padded to one of
a few bucket lengths, so a jitted step compiles once per bucket and never again:
the number of distinct batch shapes is at most ``len(buckets)``. Rows that do
not hold an example (only in the last, partial batch) have length 0, an
all-False ``label_mask``, labels 0 and index -1; losses ignore rows with no
valid step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple, cast

import numpy as np

from jaxseq import _checks
from jaxseq.data.dataset import SequenceDataset


class Batch(NamedTuple):
    """One padded batch (a pytree of NumPy arrays; pass it straight to a jitted step).

    Attributes:
      inputs: ``[B, T, ...]`` the sequences, right-padded with ``pad_value``.
      labels: int32 ``[B]`` (classification) or ``[B, T]`` (labeling), 0 where
        padded.
      lengths: int32 ``[B]`` valid steps per row; 0 for padding rows.
      label_mask: bool, True where a label counts: ``[B]`` for classification
        (``lengths > 0``), ``[B, T]`` for labeling (within length and, when the
        data set has ``label_masks``, only the steps they mark).
      indices: int32 ``[B]`` each row's position in the data set, -1 for padding
        rows.
      extras: name -> ``[B, T, ...]`` the data set's extra per-step inputs,
        zero-padded.
    """

    inputs: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    label_mask: np.ndarray
    indices: np.ndarray
    extras: dict[str, np.ndarray]


def pad_sequences(
    seqs: Sequence[np.ndarray],
    max_len: int | None = None,
    pad_value: float | int | bool = 0,
    dtype: np.typing.DTypeLike | None = None,
) -> np.ndarray:
    """Right-pad sequences ``[T_i, ...]`` into one array ``[B, max_len, ...]``.

    Args:
      seqs: B arrays (or lists) ``[T_i, ...]`` with the same trailing shape.
      max_len: the padded length ``T``; default ``max_i T_i``. A sequence longer
        than ``max_len`` raises (nothing is truncated silently).
      pad_value: the value of padded steps.
      dtype: the output dtype; default int32 for integer sequences (of any
        integer dtype), else the sequences' common dtype. Integer values (and
        ``pad_value``) that do not fit the output dtype raise ``ValueError``;
        nothing wraps around.

    Returns:
      ``[B, T, ...]``: ``out[b, :T_b] = seqs[b]`` and ``pad_value`` after.

    >>> pad_sequences([[1, 2, 3], [4]], pad_value=-1).tolist()
    [[1, 2, 3], [4, -1, -1]]
    """
    _checks.check_int(max_len, "max_len", 0, optional=True)
    arrays = [np.asarray(s) for s in seqs]
    if not arrays:
        raise ValueError("pad_sequences needs at least one sequence")
    trailing = arrays[0].shape[1:]
    for i, a in enumerate(arrays):
        if a.ndim == 0 or a.shape[1:] != trailing:
            raise ValueError(
                f"sequence {i} has shape {a.shape}; every sequence must be [T_i, *{trailing}]"
            )
    lengths = [len(a) for a in arrays]
    if max_len is None:
        max_len = max(lengths)
    if max(lengths) > max_len:
        raise ValueError(f"a sequence of length {max(lengths)} does not fit max_len={max_len}")
    integer_input = all(np.issubdtype(a.dtype, np.integer) for a in arrays)
    if dtype is None:
        # Integer sequences (token ids) of any dtype pad to int32, the dtype jaxseq
        # computes ids in; other dtypes keep their common dtype.
        dtype = np.int32 if integer_input else np.result_type(*arrays)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if integer_input:
            # Values that do not fit the output dtype raise instead of wrapping around.
            for i, a in enumerate(arrays):
                if np.can_cast(a.dtype, dtype) or not a.size:
                    continue  # every value of a.dtype fits
                if int(a.min()) < info.min or int(a.max()) > info.max:
                    bad = int(a.min()) if int(a.min()) < info.min else int(a.max())
                    raise ValueError(
                        f"sequence {i} holds {bad}, which does not fit the output dtype {dtype} "
                        f"(range [{info.min}, {info.max}])"
                    )
        if not float(pad_value).is_integer() or not info.min <= int(pad_value) <= info.max:
            raise ValueError(
                f"`pad_value` {pad_value!r} is not a value of the output dtype {dtype} "
                f"(integers in [{info.min}, {info.max}])"
            )
    out = np.full((len(arrays), max_len, *trailing), pad_value, dtype=dtype)
    for b, a in enumerate(arrays):
        out[b, : len(a)] = a
    return out


def bucket_boundaries(
    lengths: Sequence[int] | np.ndarray, num_buckets: int, *, multiple_of: int = 1
) -> tuple[int, ...]:
    """Bucket lengths holding about equally many sequences each.

    Args:
      lengths: ``[N]`` sequence lengths (e.g. ``dataset.lengths`` of train), any
        integer dtype; non-negative and within int32.
      num_buckets: how many buckets at most (duplicates are merged).
      multiple_of: round every bucket length up to a multiple of this (e.g. 8
        for friendlier matmul shapes).

    Returns:
      increasing bucket lengths; the last covers the longest sequence.

    >>> bucket_boundaries([3, 5, 7, 9, 11, 20], 2)
    (7, 20)
    >>> bucket_boundaries([3, 5, 7, 9, 11, 20], 2, multiple_of=8)
    (8, 24)
    """
    _checks.check_int(num_buckets, "num_buckets", 1)
    _checks.check_int(multiple_of, "multiple_of", 1)
    lengths_N = np.asarray(lengths)
    _checks.check_rank(lengths_N, 1, "lengths", "[N]")
    if lengths_N.size == 0:
        raise ValueError("`lengths` must hold at least one length, got none")
    lengths_N = np.asarray(_checks.index_array(lengths_N, "lengths", low=0))  # exact int32
    qs = np.arange(1, num_buckets + 1) / num_buckets
    edges = np.quantile(lengths_N, qs, method="inverted_cdf")
    edges = {max(1, math.ceil(int(e) / multiple_of) * multiple_of) for e in edges}
    return tuple(sorted(edges))


def _bucket_of(lengths_N: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
    """int ``[N]``: index of the smallest bucket >= each length."""
    too_long = lengths_N > buckets[-1]
    if too_long.any():
        raise ValueError(
            f"sequence {int(np.argmax(too_long))} has length {int(lengths_N[too_long][0])}, "
            f"longer than the largest bucket {buckets[-1]}"
        )
    return np.searchsorted(np.asarray(buckets), lengths_N, side="left")


def _check_buckets(buckets: Sequence[int] | None, dataset: SequenceDataset) -> tuple[int, ...]:
    if buckets is None:
        return (max(1, int(dataset.lengths.max(initial=0))),)
    out = tuple(int(b) for b in buckets)
    if not out or any(b < 1 for b in out) or list(out) != sorted(set(out)):
        raise ValueError(f"`buckets` must be strictly increasing positive ints, got {buckets!r}")
    return out


def _plan(
    lengths_N: np.ndarray,
    batch_size: int,
    buckets: tuple[int, ...],
    rng: np.random.Generator | None,
    drop_remainder: bool,
) -> list[tuple[np.ndarray, int]]:
    """The epoch's batches as (example indices, bucket length), in order."""
    bucket_N = _bucket_of(lengths_N, buckets)
    batches: list[tuple[np.ndarray, int]] = []
    leftovers = []
    for k, bucket_len in enumerate(buckets):
        idx = np.flatnonzero(bucket_N == k)
        if rng is not None:
            idx = rng.permutation(idx)
        n_full = len(idx) // batch_size
        for j in range(n_full):
            batches.append((idx[j * batch_size : (j + 1) * batch_size], bucket_len))
        leftovers.append(idx[n_full * batch_size :])
    # Remainders of all buckets are batched together (shortest buckets first), each
    # batch padded to the bucket of its longest member: at most one partial batch.
    rest = np.concatenate(leftovers) if leftovers else np.zeros(0, dtype=np.int64)
    for start in range(0, len(rest), batch_size):
        chunk = rest[start : start + batch_size]
        if len(chunk) < batch_size and drop_remainder:
            break
        batches.append((chunk, buckets[int(bucket_N[chunk].max())]))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def count_batches(
    dataset: SequenceDataset,
    batch_size: int,
    *,
    buckets: Sequence[int] | None = None,
    drop_remainder: bool = False,
) -> int:
    """How many batches :func:`iterate_batches` yields per epoch (any seed or epoch)."""
    _checks.check_int(batch_size, "batch_size", 1)
    _checks.check_flag(drop_remainder, "drop_remainder")
    bucket_t = _check_buckets(buckets, dataset)
    return len(_plan(dataset.lengths, batch_size, bucket_t, None, drop_remainder))


def iterate_batches(
    dataset: SequenceDataset,
    batch_size: int,
    *,
    buckets: Sequence[int] | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    epoch: int | None = None,
    drop_remainder: bool = False,
    pad_value: float | int = 0,
) -> Iterator[Batch]:
    """One epoch of fixed-shape batches ``[batch_size, bucket_len, ...]``.

    Each example goes to the smallest bucket that holds it; full batches are
    drawn within a bucket, and the remainders of all buckets are batched
    together, each such batch padded to the largest bucket among its members.
    So every example appears exactly once, at most one batch is partial, and that
    batch is filled up to ``batch_size`` with padding rows (length 0, index -1).

    Args:
      dataset: the split to batch.
      batch_size: rows per batch ``B`` (fixed, so shapes stay few).
      buckets: increasing padded lengths (see :func:`bucket_boundaries`); default
        one bucket, the data set's longest sequence.
      shuffle: shuffle within buckets and the order of batches, deterministically
        from ``(seed, epoch)`` (NumPy ``Generator``); without it the order is
        fixed: buckets in increasing length, examples in data set order.
      seed: required with ``shuffle``.
      epoch: required with ``shuffle``; each epoch gets its own order.
      drop_remainder: drop the partial batch instead of padding it.
      pad_value: the value of padded input steps (labels and extras pad with 0).

    Returns:
      an iterator of :class:`Batch`.

    >>> import numpy as np
    >>> from jaxseq.data.dataset import SequenceDataset
    >>> ds = SequenceDataset(
    ...     sequences=tuple(np.arange(n, dtype=np.int32) + 1 for n in (2, 5, 3)),
    ...     labels=np.array([0, 1, 0], dtype=np.int32), class_names=("a", "b"))
    >>> [b.inputs.shape for b in iterate_batches(ds, 2, buckets=(3, 6))]
    [(2, 3), (2, 6)]
    >>> last = list(iterate_batches(ds, 2, buckets=(3, 6)))[-1]
    >>> last.lengths.tolist(), last.indices.tolist(), last.label_mask.tolist()
    ([5, 0], [1, -1], [True, False])
    """
    _checks.check_int(batch_size, "batch_size", 1)
    _checks.check_flag(shuffle, "shuffle")
    _checks.check_int(seed, "seed", 0, optional=True)
    _checks.check_int(epoch, "epoch", 0, optional=True)
    _checks.check_flag(drop_remainder, "drop_remainder")
    bucket_t = _check_buckets(buckets, dataset)
    rng = None
    if shuffle:
        if seed is None or epoch is None:
            raise ValueError("shuffle=True needs both `seed` and `epoch` (ints >= 0)")
        rng = np.random.default_rng([int(seed), int(epoch)])
    plan = _plan(dataset.lengths, batch_size, bucket_t, rng, drop_remainder)
    return (_make_batch(dataset, idx, t, batch_size, pad_value) for idx, t in plan)


def _make_batch(
    dataset: SequenceDataset,
    idx: np.ndarray,
    max_len: int,
    batch_size: int,
    pad_value: float | int,
) -> Batch:
    rows = [int(i) for i in idx]
    n_pad = batch_size - len(rows)
    first = dataset.sequences[0]

    def padded(values, fill, dtype, template):
        parts = [values[i] for i in rows] + [np.zeros((0, *template.shape[1:]), dtype)] * n_pad
        return pad_sequences(parts, max_len, fill, dtype)

    inputs = padded(dataset.sequences, pad_value, first.dtype, first)
    lengths_B = np.zeros(batch_size, dtype=np.int32)
    lengths_B[: len(rows)] = dataset.lengths[rows]
    valid_BT = np.arange(max_len)[None, :] < lengths_B[:, None]
    if dataset.task == "classification":
        labels = np.zeros(batch_size, dtype=np.int32)
        labels[: len(rows)] = cast(np.ndarray, dataset.labels)[rows]
        label_mask = lengths_B > 0
    else:
        labels = padded(dataset.labels, 0, np.int32, dataset.labels[0])
        if dataset.label_masks is None:
            label_mask = valid_BT
        else:
            label_mask = padded(dataset.label_masks, False, np.bool_, dataset.label_masks[0])
            label_mask &= valid_BT
    indices = np.full(batch_size, -1, dtype=np.int32)
    indices[: len(rows)] = rows
    extras = {k: padded(v, 0, v[0].dtype, v[0]) for k, v in sorted(dataset.extras.items())}
    return Batch(inputs, labels, lengths_B, label_mask, indices, extras)
