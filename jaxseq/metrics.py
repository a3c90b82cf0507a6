"""Metrics as exact (sum, count) pairs.

Every metric here is a sum: a ``Ratio(total, count)`` summed over the parts of
a data set (batches, devices, hosts) and divided once gives exactly the metric
of the whole, unlike an average of per-batch averages. Confusion matrices are
counts, so macro-F1 computed from their sum is exact too.

A dict of metric sums (what a loss function returns beside its loss) is typed:
the *type* of each value decides how :func:`summarize` reports it, under the
value's own key (the name is the user's):

* :class:`Ratio` -> ``total / count`` (0 when the count is 0);
* :class:`Perplexity` (a Ratio of per-token cross-entropy) -> ``exp(total / count)``;
* :class:`Confusion` (counts ``[C, C]``) -> macro-F1 (:func:`macro_f1`);
* a plain scalar -> its sum.

Any other value (e.g. a bare ``[C, C]`` array) is a ``TypeError`` naming the key::

    {"accuracy": accuracy(logits, labels), "macro_f1": Confusion(confusion_matrix(logits, labels)),
     "token_loss": Ratio(terms.total, terms.count),
     "perplexity": Perplexity(terms.total, terms.count)}

Notation: B batch, T time, C classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq._reductions import all_valid, check_num_classes, safe_divide


class Ratio(NamedTuple):
    """A metric as ``total / count`` (float32 scalars, or arrays for vmapped use)."""

    total: jax.Array
    count: jax.Array

    @property
    def value(self) -> jax.Array:
        return safe_divide(self.total, self.count)


class Perplexity(Ratio):
    """A :class:`Ratio` of per-token cross-entropy (nats): ``total`` the summed
    token losses, ``count`` the tokens. :func:`summarize` reports
    ``exp(total / count)`` (:func:`perplexity`); sums like any Ratio.

    >>> import jax.numpy as jnp
    >>> round(summarize({"ppl": Perplexity(jnp.float32(2.0), jnp.float32(2.0))})["ppl"], 4)
    2.7183
    """

    __slots__ = ()


class Confusion(NamedTuple):
    """Confusion counts ``[C, C]`` (row = true class, column = predicted; from
    :func:`confusion_matrix`) as a metric sum: :func:`summarize` reports their
    macro-F1 (:func:`macro_f1`) under the metric's key.

    >>> import jax.numpy as jnp
    >>> summarize({"macro_f1": Confusion(jnp.array([[2.0, 0.0], [1.0, 1.0]]))})
    {'macro_f1': 0.7333333333333334}
    """

    counts: jax.Array


def _check_logits_labels(logits, labels):
    """``logits`` ``[..., C]`` with C >= 1; ``labels`` ``[...]`` converted to int32 exactly
    (any integer dtype; a value that does not fit int32 is an error, or -1 under jit)."""
    logits = _checks.as_array(logits, "logits")
    _checks.check_min_rank(logits, 1, "logits", "[..., C]")
    check_num_classes(logits.shape[-1], "logits", logits.shape)
    labels = _checks.index_array(labels, "labels")
    _checks.check_shape(labels, logits.shape[:-1], "labels", "[...] (= logits.shape[:-1])")
    return logits, labels


def _where(where, shape):
    where = _checks.optional_mask(where, shape, "where", "[...] (= labels.shape)")
    return all_valid(where, shape)


def _any_bad(logits, labels, where):
    """True if a valid position has a label outside ``[0, C)`` or a NaN logit: the metric
    is then NaN (loud), never a count that silently leaves the position out."""
    num_classes = logits.shape[-1]
    bad = (labels < 0) | (labels >= num_classes)
    if jnp.issubdtype(logits.dtype, jnp.floating):
        bad = bad | jnp.any(jnp.isnan(logits), axis=-1)
    return jnp.any(bad & where)


def accuracy(logits: jax.Array, labels: jax.Array, *, where: jax.Array | None = None) -> Ratio:
    """Correct argmax predictions over valid positions.

    Args:
      logits: ``[..., C]`` (``[B, C]`` for classification, ``[B, T, C]`` for token
        accuracy), C >= 1.
      labels: integer ``[...]`` (any integer dtype, converted to int32 exactly).
      where: optional bool ``[...]``, True at the positions that count (default:
        all).

    Returns:
      ``Ratio(number correct, number of valid positions)``. ``total`` is NaN when a
      valid position has a label outside ``[0, C)`` or a NaN logit (never a count
      that treats it as a plain miss); masked positions may hold anything.

    >>> import jax.numpy as jnp, jaxseq as js
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])   # predicts 0, 1, 0
    >>> where = jnp.array([True, True, False])
    >>> ratio = js.metrics.accuracy(logits, jnp.array([0, 0, 1]), where=where)
    >>> float(ratio.total), float(ratio.count), float(ratio.value)
    (1.0, 2.0, 0.5)
    """
    logits, labels = _check_logits_labels(logits, labels)
    where = _where(where, labels.shape)
    correct = (jnp.argmax(logits, axis=-1).astype(jnp.int32) == labels) & where
    total = jnp.sum(correct, dtype=jnp.float32)
    total = jnp.where(_any_bad(logits, labels, where), jnp.nan, total)
    return Ratio(total, jnp.sum(where, dtype=jnp.float32))


def confusion_matrix(
    logits: jax.Array, labels: jax.Array, *, where: jax.Array | None = None
) -> jax.Array:
    """Counts ``[C, C]`` (float32): row = true class, column = predicted class.

    Positions where ``where`` (optional bool ``[...]``, default all True) is False
    are not counted. Labels of any integer dtype are converted to int32 exactly and
    the cell is indexed by ``(label, prediction)`` in int32. If a valid position
    has a label outside ``[0, C)`` or a NaN logit, every count is NaN (loud, never
    a matrix that silently leaves it out).
    """
    logits, labels = _check_logits_labels(logits, labels)
    num_classes = logits.shape[-1]
    where = _where(where, labels.shape)
    counted = where & (labels >= 0) & (labels < num_classes)
    predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # Two int32 indices (no flat labels * C + predicted that could overflow).
    rows = jnp.where(counted, labels, 0).reshape(-1)
    cols = jnp.where(counted, predicted, 0).reshape(-1)
    weights = counted.reshape(-1).astype(jnp.float32)
    counts = jnp.zeros((num_classes, num_classes), jnp.float32).at[rows, cols].add(weights)
    return jnp.where(_any_bad(logits, labels, where), jnp.nan, counts)


def macro_f1(confusion: np.ndarray, *, classes: np.ndarray | None = None) -> float:
    """Unweighted mean of per-class F1 from a confusion matrix ``[C, C]``.

    Classes that neither occur nor are predicted are left out of the mean (their
    F1 is undefined); ``classes`` restricts the mean to a subset of classes.
    """
    confusion = np.asarray(confusion, np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise _checks.shape_error(
            f"`confusion` must have shape [C, C], got {tuple(confusion.shape)}"
        )
    if not np.all(np.isfinite(confusion)) or np.any(confusion < 0):
        raise ValueError("`confusion` must hold finite counts >= 0")
    true_positive = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    denominator = support + predicted
    present = denominator > 0
    if classes is not None:
        # Class ids in [0, C): a negative id would silently index from the end.
        classes = np.asarray(
            _checks.index_array(classes, "classes", low=0, high=len(present) - 1)
        ).reshape(-1)
        keep = np.zeros_like(present)
        keep[classes] = True
        present &= keep
    if not present.any():
        return 0.0
    f1 = 2.0 * true_positive[present] / denominator[present]
    return float(f1.mean())


def perplexity(mean_token_loss: float) -> float:
    """``exp`` of the mean per-token cross-entropy (nats)."""
    return float(math.exp(mean_token_loss)) if mean_token_loss < 700 else math.inf


def add(a: Mapping, b: Mapping) -> dict:
    """Sum two metric pytrees with the same structure (Ratios, Confusions, scalars)."""
    return jax.tree.map(lambda x, y: x + y, dict(a), dict(b))


def _kind(value) -> str:
    shape = getattr(value, "shape", None)
    return f"an array of shape {tuple(shape)}" if shape is not None else type(value).__name__


def _is_scalar(value) -> bool:
    return (
        value is not None
        and not isinstance(value, (tuple, Mapping, str, bytes))
        and np.ndim(value) == 0
    )


def check_sums(sums: Mapping, what: str = "metric sums") -> None:
    """Check the types of metric sums (see the module doc) without reading their values
    (no device-to-host transfer): ``TypeError`` naming the key of a value
    :func:`summarize` cannot report."""
    if not isinstance(sums, Mapping):
        raise TypeError(f"{what} must be a dict name -> metric sum, got {type(sums).__name__}")
    for name, value in sums.items():
        _check_sum(name, value)


def _check_sum(name, value) -> None:
    if isinstance(value, Ratio):
        for part in ("total", "count"):
            item = getattr(value, part)
            if not _is_scalar(item):
                raise TypeError(
                    f"metric {name!r} is a {type(value).__name__} whose {part} is "
                    f"{_kind(item)}; summarize reports host scalars: sum a vmapped "
                    "Ratio's total and count over the mapped axes first"
                )
    elif isinstance(value, Confusion):
        if np.ndim(value.counts) != 2:
            raise TypeError(
                f"metric {name!r} is a Confusion of {_kind(value.counts)}; its counts "
                "must be [C, C] (sum a vmapped Confusion over the mapped axes first)"
            )
    elif not _is_scalar(value):
        raise TypeError(
            f"metric {name!r} is {_kind(value)}; a metric sum is a jaxseq.metrics.Ratio, "
            f"Perplexity, Confusion (confusion counts [C, C]) or a scalar"
        )


def summarize(sums: Mapping) -> dict[str, float]:
    """Host-side values of metric sums, each under its own key, as its type says
    (see the module doc): :class:`Perplexity` -> ``exp(total / count)``,
    :class:`Ratio` -> ``total / count`` (0 for a count of 0), :class:`Confusion`
    -> macro-F1 (NaN when a count is not finite, as :func:`confusion_matrix` makes
    it for an out-of-range label, like :func:`accuracy`'s NaN), a plain scalar ->
    itself. For host scalars: a vmapped Ratio (arrays) is summed first.

    Raises:
      TypeError: a value of another kind (e.g. a bare confusion matrix: wrap it
        in :class:`Confusion`; a Ratio of arrays; None), naming its key.
      ValueError: a Confusion with negative counts, naming its key.
    """
    check_sums(sums)
    out: dict[str, float] = {}
    for name, value in sums.items():
        if isinstance(value, Ratio):
            total, count = float(value.total), float(value.count)
            mean = total / count if count else 0.0
            out[name] = perplexity(mean) if isinstance(value, Perplexity) else mean
        elif isinstance(value, Confusion):
            counts = np.asarray(value.counts, np.float64)
            if not np.all(np.isfinite(counts)):
                out[name] = math.nan
                continue
            try:
                out[name] = macro_f1(counts)
            except ValueError as e:
                raise ValueError(f"metric {name!r}: {e}") from e
        else:
            out[name] = float(np.asarray(value))
    return out
