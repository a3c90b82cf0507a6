"""The host-side container for one split of a sequence data set.

Notation: N examples, example i has length T_i, D input features, C classes.

A :class:`SequenceDataset` holds unpadded NumPy sequences. Two tasks share it:

* classification: ``labels`` is int32 ``[N]`` (one class per sequence);
* labeling: ``labels`` is a tuple of int32 ``[T_i]`` (one class per step), and
  ``label_masks`` (optional) a tuple of bool ``[T_i]`` marking the steps whose
  label counts (e.g. only vowels for lexical stress). ``None`` means every step
  counts.

Padding and batching happen in :mod:`jaxseq.data.batching`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np

from jaxseq import _checks


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceDataset:
    """One split: sequences, labels and the names that decode them.

    Attributes:
      sequences: N arrays ``[T_i, ...]``: int32 token ids ``[T_i]`` or float32
        features ``[T_i, D]``; the trailing shape and dtype are the same for all.
      labels: int32 ``[N]`` (classification) or N int32 arrays ``[T_i]`` (labeling).
      class_names: ``class_names[c]`` names label ``c``.
      vocab: ``vocab[k]`` is the token of input id ``k`` (``None`` for real-valued
        inputs). Id 0 is always ``"<pad>"`` for token inputs.
      label_masks: labeling only: N bool arrays ``[T_i]``, True where the step's
        label counts; ``None`` means all steps count.
      extras: further per-step inputs aligned with ``sequences``, name -> N arrays
        ``[T_i, ...]`` (e.g. character ids per word ``[T_i, W]``); batched and
        padded like the inputs.
      ids: N example identifiers (word, sentence id, file position) for analysis.
      name: e.g. ``"cmudict_stress/train"``.

    Integer arrays of any dtype (int8 ... uint64) are stored as int32, exactly:
    labels must lie in ``[0, C)``, integer sequences (token ids) in ``[0, V)``
    (``V = len(vocab)``, or any non-negative int32 without a vocabulary), integer
    extras must fit int32; a value outside raises ``ValueError`` naming the
    array and the position.
    """

    sequences: tuple[np.ndarray, ...]
    labels: np.ndarray | tuple[np.ndarray, ...]
    class_names: tuple[str, ...]
    vocab: tuple[str, ...] | None = None
    label_masks: tuple[np.ndarray, ...] | None = None
    extras: Mapping[str, tuple[np.ndarray, ...]] = dataclasses.field(default_factory=dict)
    ids: tuple[str, ...] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        n = len(self.sequences)
        classes = len(self.class_names)
        if isinstance(self.labels, np.ndarray):
            if self.labels.shape != (n,) or not np.issubdtype(self.labels.dtype, np.integer):
                raise ValueError(
                    f"{self.name}: classification labels must be integer [N={n}], got "
                    f"{self.labels.dtype} {self.labels.shape}"
                )
            if self.label_masks is not None:
                raise ValueError(f"{self.name}: label_masks are for labeling data sets only")
            (labels,) = _int32_arrays(
                (self.labels,), "labels", self.name, 0, classes - 1, indexed=False
            )
            object.__setattr__(self, "labels", labels)
        else:
            _check_aligned(self.labels, self.sequences, "labels", self.name)
            per_step = _arrays(self.labels)
            for i, v in enumerate(per_step):
                if v.dtype.kind not in "iu":
                    raise ValueError(
                        f"{self.name}: labeling labels must be integer arrays [T_i], got "
                        f"labels[{i}] of dtype {v.dtype}"
                    )
            per_step = _int32_arrays(per_step, "labels", self.name, 0, classes - 1)
            object.__setattr__(self, "labels", per_step)
        sequences = _arrays(self.sequences)
        if sequences and all(s.dtype.kind in "iu" for s in sequences):
            # Token ids: int32, each a row of the embedding table (< len(vocab)).
            high = None if self.vocab is None else len(self.vocab) - 1
            sequences = _int32_arrays(sequences, "sequences", self.name, 0, high)
        object.__setattr__(self, "sequences", sequences)
        if self.label_masks is not None:
            _check_aligned(self.label_masks, self.sequences, "label_masks", self.name)
        extras = {}
        for key, values in self.extras.items():
            _check_aligned(values, self.sequences, f"extras[{key!r}]", self.name)
            values = _arrays(values)
            if values and all(v.dtype.kind in "iu" for v in values):
                values = _int32_arrays(values, f"extras[{key!r}]", self.name, None, None)
            extras[key] = values
        object.__setattr__(self, "extras", extras)
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(f"{self.name}: {len(self.ids)} ids for {n} sequences")

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def task(self) -> Literal["classification", "labeling"]:
        """``"classification"`` when ``labels`` is ``[N]``, else ``"labeling"``."""
        return "classification" if isinstance(self.labels, np.ndarray) else "labeling"

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """int32 ``[N]``: ``T_i`` of every sequence."""
        return np.array([len(s) for s in self.sequences], dtype=np.int32)

    def select(self, indices: Sequence[int] | np.ndarray, name: str | None = None):
        """A new data set with the examples at ``indices`` (ints in ``[0, N)``, any
        integer dtype), in that order."""
        idx: list[int] = []
        if isinstance(indices, np.ndarray) or len(indices):
            indices = np.asarray(indices)
            _checks.check_rank(indices, 1, "indices", "[K]")
            host = _checks.index_array(indices, "indices", low=0, high=len(self) - 1)
            idx = np.asarray(host).tolist()

        def pick(values):
            return tuple(values[i] for i in idx)

        labels = (
            self.labels[np.asarray(idx, dtype=np.int64)]
            if isinstance(self.labels, np.ndarray)
            else pick(self.labels)
        )
        return dataclasses.replace(
            self,
            sequences=pick(self.sequences),
            labels=labels,
            label_masks=None if self.label_masks is None else pick(self.label_masks),
            extras={k: pick(v) for k, v in self.extras.items()},
            ids=None if self.ids is None else pick(self.ids),
            name=self.name if name is None else name,
        )


def _arrays(values) -> tuple[np.ndarray, ...]:
    return tuple(v if isinstance(v, np.ndarray) else np.asarray(v) for v in values)


def _int32_arrays(
    arrays: tuple[np.ndarray, ...],
    what: str,
    name: str,
    low: int | None,
    high: int | None,
    *,
    indexed: bool = True,
) -> tuple[np.ndarray, ...]:
    """Integer arrays (any of int8 ... uint64) as int32, exactly: every value is
    checked (on the host, with :func:`jaxseq._checks.index_array`) to fit int32
    and lie in ``[low, high]``, else a ``ValueError`` names the array and the
    position. int32 arrays are returned as they are."""
    dtypes = {a.dtype for a in arrays}
    for dtype in dtypes:
        group = (
            range(len(arrays))
            if len(dtypes) == 1
            else [i for i, a in enumerate(arrays) if a.dtype == dtype]
        )
        flat = np.concatenate([arrays[i].ravel() for i in group])
        try:
            _checks.index_array(flat, what, low=low, high=high)  # one check for all of them
        except ValueError:
            for i in group:  # find the first offender and name it
                try:
                    label = f"{what}[{i}]" if indexed else what
                    _checks.index_array(arrays[i], label, low=low, high=high)
                except ValueError as e:
                    raise ValueError(f"{name or 'SequenceDataset'}: {e}") from None
            raise
    if dtypes == {np.dtype(np.int32)}:
        return arrays
    return tuple(a if a.dtype == np.int32 else a.astype(np.int32) for a in arrays)


def _check_aligned(values, sequences, what: str, name: str) -> None:
    if len(values) != len(sequences):
        raise ValueError(f"{name}: {len(values)} {what} for {len(sequences)} sequences")
    for i, (v, s) in enumerate(zip(values, sequences, strict=True)):
        if len(v) != len(s):
            raise ValueError(f"{name}: {what}[{i}] has length {len(v)}, sequence has {len(s)}")


class Splits(NamedTuple):
    """Train, dev and test splits of one data set (``dev`` is ``None`` when absent)."""

    train: SequenceDataset
    dev: SequenceDataset | None
    test: SequenceDataset


def feature_stats(dataset: SequenceDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over all steps of all sequences.

    Args:
      dataset: real-valued sequences ``[T_i, D]``.

    Returns:
      ``(mean, std)``, float32 ``[D]`` each; a constant feature gets ``std = 1``
      so that standardising never divides by zero.
    """
    frames_ND = np.concatenate([np.asarray(s, dtype=np.float64) for s in dataset.sequences])
    if frames_ND.ndim != 2:
        raise ValueError(f"feature_stats needs sequences [T_i, D], got frames {frames_ND.shape}")
    mean = frames_ND.mean(axis=0)
    std = frames_ND.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(dataset: SequenceDataset, mean: np.ndarray, std: np.ndarray) -> SequenceDataset:
    """``(x - mean) / std`` at every step; compute ``mean``/``std`` on train only.

    Args:
      dataset: real-valued sequences ``[T_i, D]``.
      mean: ``[D]``.
      std: ``[D]``, positive.
    """
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    sequences = tuple(
        ((np.asarray(s, dtype=np.float32) - mean) / std).astype(np.float32)
        for s in dataset.sequences
    )
    return dataclasses.replace(dataset, sequences=sequences)
