"""Connectionist temporal classification (CTC) loss with lengths, reductions and true infinities.

Notation: B batch, T input steps (frames), K classes including the blank, S the
padded label length, U_i the label length of sequence i.

:func:`ctc_loss` runs the forward algorithm in log space (vectorised over the
batch, differentiated by JAX) with exact ``-inf`` for "no path": no
``log_epsilon`` floor as in ``optax.ctc_loss`` (whose ``-1e5`` caps a loss near
``1e5`` and lets impossible paths leak into possible ones), so a loss above
``1e5`` is returned as it is, ``-inf`` logits (a class ruled out) are exact, and
the log-sum-exp of unreachable states has gradient 0, never NaN. Around it:

* lengths instead of padding indicators (``logit_lengths``, ``label_lengths``),
  and ``where`` [B] to mark rows of a batch that are padding, not sequences;
* the per-sequence reductions shared with
  :func:`jaxseq.sequence_classification_loss` (``jaxseq.SEQUENCE_REDUCTIONS``:
  ``"sum_over_time"``, ``"sum"``, ``"none"``) plus CTC's own
  ``"mean_over_labels"`` (PyTorch's ``CTCLoss(reduction="mean")``); see
  :func:`ctc_loss` for each one's PyTorch equivalent;
* ``+inf`` for an impossible alignment (probability exactly 0: a label
  sequence of length U with R adjacent repeats needs ``U + R`` frames, as a
  blank must separate equal neighbours, or a needed class has a ``-inf``
  logit), or 0 with ``zero_infinity=True``, and a gradient of exactly 0 for
  such a sequence in both cases (PyTorch's ``zero_infinity`` semantics);
* masking: logits beyond ``logit_length``, labels beyond ``label_length`` and
  every input of a row where ``where`` is False are replaced by constants
  before any arithmetic (NaN padding changes nothing);
* checks: shapes and dtypes name the argument (``AssertionError``; K = 0
  classes is one); ``blank`` must lie in ``[0, K)``; labels and lengths of any
  integer dtype are converted to int32 exactly (a value that does not fit is a
  ``ValueError`` on host data, out of range under ``jit``); with concrete
  (host) lengths and labels, lengths out of ``[0, T]`` / ``[0, S]`` and labels
  that are out of range or equal to ``blank`` raise ``ValueError``. Under
  ``jit`` such a sequence's loss is NaN (loud, never a plausible number).
  :func:`validate_ctc_inputs` also reports impossible alignments as errors,
  for data pipelines that want them found before training rather than zeroed.
* empty axes: B = 0 gives 0 (``[0]`` for ``"none"``); T = 0 or S = 0 rows are
  sequences like any other (no frames and no labels: loss 0).

Computed in float32 (float64 for float64 logits).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq._compiled import compiled
from jaxseq._reductions import (
    SEQUENCE_REDUCTIONS,
    all_valid,
    check_num_classes,
    compute_dtype,
    reduce_sequences,
    safe_divide,
)

#: The reductions of :func:`ctc_loss`: the per-sequence ones and CTC's ``"mean_over_labels"``.
CTC_REDUCTIONS = (*SEQUENCE_REDUCTIONS, "mean_over_labels")


def _check_int_vector(x, name: str, batch: int):
    x = _checks.index_array(x, name)
    _checks.check_shape(x, (batch,), name, "[B] (B from `logits`)")
    return x


def _check_blank(blank, num_classes: int) -> None:
    _checks.check_int(blank, "blank", 0)
    if blank >= num_classes:
        raise ValueError(f"`blank` must be in [0, K) = [0, {num_classes}), got {blank}")


def _check_args(logits, logit_lengths, labels, label_lengths, where, blank, reduction, zero_inf):
    _checks.check_choice(reduction, CTC_REDUCTIONS, "reduction")
    _checks.check_flag(zero_inf, "zero_infinity")
    logits = _checks.as_array(logits, "logits")
    _checks.check_floating(logits, "logits")
    _checks.check_rank(logits, 3, "logits", "[B, T, K]")
    batch, _, num_classes = logits.shape
    check_num_classes(num_classes, "logits", logits.shape)
    labels = _checks.index_array(labels, "labels")
    _checks.check_rank(labels, 2, "labels", "[B, S]")
    _checks.check_shape(labels, (batch, None), "labels", "[B, S] (B from `logits`)")
    logit_lengths = _check_int_vector(logit_lengths, "logit_lengths", batch)
    label_lengths = _check_int_vector(label_lengths, "label_lengths", batch)
    where = _checks.optional_mask(
        where, (batch,), "where", "[B] (B from `logits`)", _checks.ROW_MEANING
    )
    _check_blank(blank, num_classes)
    return logits, logit_lengths, labels, label_lengths, where


def _first_bad(bad: np.ndarray) -> int:
    return int(np.argwhere(bad)[0][0])


def _check_concrete_logit_lengths(logit_lengths, max_t: int, rows: np.ndarray) -> None:
    """``ValueError`` for host ``logit_lengths`` outside ``[0, T]`` in the ``rows`` that
    count (bool ``[B]``); traced lengths are left to the caller."""
    if not _checks.is_concrete(logit_lengths):
        return
    lengths = np.asarray(logit_lengths)
    bad = rows & ((lengths < 0) | (lengths > max_t))
    if bad.any():
        i = _first_bad(bad)
        raise ValueError(
            f"`logit_lengths` must be in [0, T] = [0, {max_t}], got {int(lengths[i])} "
            f"for sequence {i}"
        )


def _check_concrete_values(logit_lengths, labels, label_lengths, max_t, num_classes, blank, where):
    """Errors for bad lengths and labels of the rows ``where`` is True, when they are host
    data (not tracers). A traced ``where`` leaves every row unchecked."""
    if where is None:
        rows = np.ones(labels.shape[:1], bool)
    elif _checks.is_concrete(where):
        rows = np.asarray(where)
    else:
        return
    _check_concrete_logit_lengths(logit_lengths, max_t, rows)
    if not _checks.is_concrete(label_lengths):
        return
    lengths = np.asarray(label_lengths)
    max_s = labels.shape[1]
    bad = rows & ((lengths < 0) | (lengths > max_s))
    if bad.any():
        i = _first_bad(bad)
        raise ValueError(
            f"`label_lengths` must be in [0, S] = [0, {max_s}] (S = labels.shape[1]), got "
            f"{int(lengths[i])} for sequence {i}"
        )
    if not _checks.is_concrete(labels):
        return
    labels_np = np.asarray(labels)
    valid = rows[:, None] & (np.arange(max_s)[None, :] < lengths[:, None])
    bad = valid & ((labels_np < 0) | (labels_np >= num_classes) | (labels_np == blank))
    if bad.any():
        i, j = (int(k) for k in np.argwhere(bad)[0])
        raise ValueError(
            f"`labels` must be in [0, K) = [0, {num_classes}) and differ from `blank` "
            f"({blank}) within `label_lengths`; got {int(labels_np[i, j])} at "
            f"sequence {i}, position {j}"
        )


def malformed_rows(logit_lengths, labels, label_lengths, *, max_t, num_classes, blank):
    """Three bool ``[B]`` (traced or not): the rows whose ``logit_lengths`` is outside
    ``[0, T]``, whose ``label_lengths`` is outside ``[0, S]``, and whose labels within the
    label length are outside ``[0, K)`` or equal ``blank`` (labels beyond it are not read)."""
    max_s = labels.shape[1]
    bad_logit_lengths = (logit_lengths < 0) | (logit_lengths > max_t)
    bad_label_lengths = (label_lengths < 0) | (label_lengths > max_s)
    label_valid = jnp.arange(max_s, dtype=jnp.int32)[None, :] < label_lengths[:, None]
    bad_labels = label_valid & ((labels < 0) | (labels >= num_classes) | (labels == blank))
    return bad_logit_lengths, bad_label_lengths, jnp.any(bad_labels, axis=1)


def required_lengths(labels: jax.Array, label_lengths: jax.Array) -> jax.Array:
    """The fewest frames that can emit each label sequence: ``U + repeats``, int32 ``[B]``.

    ``U`` is the label length and ``repeats`` the number of adjacent equal labels
    within it (each needs a blank between the two). Only ``labels[b, :U]`` is read.

    >>> import jax.numpy as jnp
    >>> from jaxseq.ctc import required_lengths
    >>> required_lengths(jnp.array([[1, 1, 2, 2, 2], [3, 3, 0, 0, 0]]), jnp.array([5, 1]))
    Array([8, 1], dtype=int32)
    """
    max_s = labels.shape[1]
    label_lengths = label_lengths.astype(jnp.int32)
    if max_s < 2:
        return label_lengths
    # A pair (n, n + 1) counts when both lie within the length.
    pair_valid = jnp.arange(1, max_s, dtype=jnp.int32)[None, :] < label_lengths[:, None]
    repeats = pair_valid & (labels[:, :-1] == labels[:, 1:])
    return label_lengths + jnp.sum(repeats, axis=1, dtype=jnp.int32)


def ctc_loss(
    logits: jax.Array,
    logit_lengths: jax.Array,
    labels: jax.Array,
    label_lengths: jax.Array,
    *,
    where: jax.Array | None = None,
    blank: int = 0,
    reduction: str = "sum_over_time",
    zero_infinity: bool = False,
) -> jax.Array:
    """CTC loss ``-log p(labels | logits)`` summed over alignments, reduced over the batch.

    With ``L_i`` the negative log-likelihood of sequence i (a sum over its
    frames), ``U_i`` its label length and N the number of rows where ``where``
    is True (every row by default, as PyTorch counts them):

    * ``"sum_over_time"`` (default): ``(1/N) sum_i L_i``, the mean over
      sequences of their NLL (each a sum over the sequence's frames). PyTorch:
      none built in (``CTCLoss(reduction="sum")`` divided by B).
    * ``"mean_over_labels"``: ``(1/N) sum_i L_i / max(U_i, 1)``, each loss
      divided by its label length, then averaged. PyTorch:
      ``CTCLoss(reduction="mean")``.
    * ``"sum"``: ``sum_i L_i``. PyTorch: ``reduction="sum"``.
    * ``"none"``: ``L_i``, float32 ``[B]``, 0 where ``where`` is False.
      PyTorch: ``reduction="none"``.

    A row with no frames and no labels is a sequence with loss 0 (``-log 1``);
    mark rows that are batch padding with ``where=False`` so they are not
    counted. No valid row gives 0.

    Args:
      logits: float ``[B, T, K]`` unnormalised scores (log-softmax is applied
        here); steps ``t >= logit_lengths[b]`` may hold anything.
      logit_lengths: integer ``[B]``, valid steps per sequence, in ``[0, T]``.
      labels: integer ``[B, S]`` class ids in ``[0, K)``, not ``blank``, right
        padded; positions ``>= label_lengths[b]`` may hold anything.
      label_lengths: integer ``[B]``, in ``[0, S]``.
      where: optional bool ``[B]`` (default: every row); the rows where it is
        False contribute exactly 0 (value and gradient) whatever their logits,
        labels and lengths hold, and are not checked.
      blank: the blank's class id, in ``[0, K)``.
      reduction: one of the names above.
      zero_infinity: give impossible alignments loss 0 instead of ``+inf``
        (their gradient is 0 either way), as PyTorch's ``zero_infinity``.

    Returns:
      float32 scalar, or ``[B]`` for ``"none"``.

    >>> import jax.numpy as jnp, jaxseq as js
    >>> logits = jnp.zeros((1, 2, 3))    # uniform over {blank, a, b} at both steps
    >>> # "a" is emitted by (a, a), (a, blank) or (blank, a): p = 3/9, -log p = log 3.
    >>> loss = js.ctc_loss(logits, jnp.array([2]), jnp.array([[1]]), jnp.array([1]))
    >>> round(float(loss), 4)
    1.0986
    >>> float(js.ctc_loss(logits, jnp.array([2]), jnp.array([[1, 1]]), jnp.array([2])))
    inf
    """
    logits, logit_lengths, labels, label_lengths, where = _check_args(
        logits, logit_lengths, labels, label_lengths, where, blank, reduction, zero_infinity
    )
    _, max_t, num_classes = logits.shape
    _check_concrete_values(logit_lengths, labels, label_lengths, max_t, num_classes, blank, where)
    return _ctc_core(
        logits,
        logit_lengths,
        labels,
        label_lengths,
        where,
        blank=blank,
        reduction=reduction,
        zero_infinity=zero_infinity,
    )


@compiled("blank", "reduction", "zero_infinity")
def _ctc_core(
    logits, logit_lengths, labels, label_lengths, where, *, blank, reduction, zero_infinity
):
    """:func:`ctc_loss` after its checks (one compiled program outside ``jit``)."""
    batch, max_t, num_classes = logits.shape
    max_s = labels.shape[1]
    dtype = compute_dtype(logits.dtype)
    where_B = all_valid(where, (batch,))
    # A row that is not valid is run as an empty sequence (no frames, no labels).
    logit_lengths = jnp.where(where_B, logit_lengths, 0)
    label_lengths = jnp.where(where_B, label_lengths, 0)

    # Values only a traced call can carry (concrete ones raised above): NaN, never a number.
    bad_logit_lengths, bad_label_lengths, bad_labels = malformed_rows(
        logit_lengths, labels, label_lengths, max_t=max_t, num_classes=num_classes, blank=blank
    )
    malformed = bad_logit_lengths | bad_label_lengths | bad_labels
    label_valid = jnp.arange(max_s, dtype=jnp.int32)[None, :] < label_lengths[:, None]
    # A malformed row is run as an empty sequence (finite), then replaced by NaN.
    logit_lengths = jnp.where(malformed, 0, logit_lengths)
    label_lengths = jnp.where(malformed, 0, label_lengths)
    label_valid = label_valid & ~malformed[:, None]

    # First where: padding (logits beyond the length, labels beyond theirs) becomes constants.
    logit_valid = jnp.arange(max_t, dtype=jnp.int32)[None, :] < logit_lengths[:, None]
    safe_logits = jnp.where(logit_valid[..., None], logits.astype(dtype), 0.0)
    safe_labels = jnp.where(label_valid, labels, blank)
    per_seq = _forward_nll(
        jax.nn.log_softmax(safe_logits, axis=-1), logit_lengths, safe_labels, label_lengths, blank
    )
    # Second where: the replaced values carry exactly zero gradient to the logits
    # (an impossible row's gradient is 0 already: no path reaches its end).
    if zero_infinity:
        per_seq = jnp.where(per_seq == jnp.inf, 0.0, per_seq)
    per_seq = jnp.where(malformed, jnp.nan, per_seq)
    per_seq = jnp.where(where_B, per_seq, 0.0)

    count_B = where_B.astype(dtype)
    if reduction == "mean_over_labels":
        per_label = per_seq / jnp.maximum(label_lengths, 1).astype(dtype)
        return safe_divide(jnp.sum(per_label), jnp.sum(count_B))
    return reduce_sequences(per_seq, count_B, reduction)


def _logsumexp(*xs):
    """``log sum_i exp(x_i)`` elementwise, ``-inf`` (with gradient 0, never NaN) where
    every ``x_i`` is ``-inf``; NaN stays NaN. Unlike ``jnp.logaddexp``, whose gradient is
    NaN when both arguments are ``-inf``, an unreachable state of the recursion gives
    exactly 0 gradient."""
    m = jax.lax.stop_gradient(functools.reduce(jnp.maximum, xs))
    dead = m == -jnp.inf
    m = jnp.where(dead, 0.0, m)
    total = sum(jnp.exp(x - m) for x in xs)
    return jnp.where(dead, -jnp.inf, m + jnp.log(jnp.where(dead, 1.0, total)))


def _forward_nll(log_probs, logit_lengths, labels, label_lengths, blank):
    """``-log p(labels | log_probs)`` ``[B]`` by the CTC forward algorithm in log space.

    Exact: ``-log 0 = +inf`` stands for "no path", with no ``log_epsilon`` floor (optax's
    ``-1e5`` caps a loss near ``1e5`` and mixes impossible paths into possible ones), so a
    loss above ``1e5`` is returned as it is and an impossible alignment is ``+inf``.
    ``log_probs`` ``[B, T, K]``; ``labels`` ``[B, S]`` int32 in ``[0, K)``;
    lengths int32 ``[B]`` within range.
    """
    batch, max_t, _ = log_probs.shape
    max_s = labels.shape[1]
    num_states = 2 * max_s + 1
    dtype = log_probs.dtype
    # The extended label sequence: blank, l_1, blank, l_2, ..., l_S, blank.
    ext_BL = jnp.full((batch, num_states), blank, jnp.int32).at[:, 1::2].set(labels)
    # State s may be entered from s - 2 when it is a label that differs from the one before.
    prev2 = jnp.concatenate([jnp.full((batch, 2), blank, jnp.int32), ext_BL], axis=1)
    prev2 = prev2[:, :num_states]
    skip_BL = (ext_BL != blank) & (ext_BL != prev2)
    emit_TBL = jnp.take_along_axis(log_probs, ext_BL[:, None, :], axis=2).transpose(1, 0, 2)
    neg_inf = jnp.asarray(-jnp.inf, dtype)
    # Before the first frame: the virtual start, from which states 0 and 1 are entered.
    alpha0 = jnp.full((batch, num_states), neg_inf).at[:, 0].set(0.0)

    def step(alpha, xs):
        emit_BL, t = xs
        shifted = jnp.concatenate([jnp.full((batch, 2), neg_inf), alpha], axis=1)
        from1 = shifted[:, 1 : num_states + 1]
        from2 = jnp.where(skip_BL, shifted[:, :num_states], neg_inf)
        new = _logsumexp(alpha, from1, from2) + emit_BL
        # Frames beyond a row's length leave its alpha as it is.
        return jnp.where((t < logit_lengths)[:, None], new, alpha), None

    alpha, _ = jax.lax.scan(step, alpha0, (emit_TBL, jnp.arange(max_t, dtype=jnp.int32)))
    last = 2 * label_lengths
    end = jnp.take_along_axis(alpha, last[:, None], axis=1)[:, 0]
    before = jnp.take_along_axis(alpha, jnp.maximum(last - 1, 0)[:, None], axis=1)[:, 0]
    before = jnp.where(label_lengths > 0, before, neg_inf)
    return 0.0 - _logsumexp(end, before)  # 0 - x: +0.0, not -0.0, for an empty row


def validate_ctc_inputs(
    logit_lengths,
    labels,
    label_lengths,
    *,
    num_classes: int,
    blank: int = 0,
    where=None,
) -> None:
    """Raise ``ValueError`` for host data :func:`ctc_loss` would score inf or NaN.

    Checks, per sequence (the rows where ``where`` is True, all by default):
    lengths non-negative and ``label_lengths <= S``; labels within the length
    in ``[0, num_classes)`` and not ``blank``; and that the input can emit the
    labels: ``label_length + adjacent repeats <= logit_length``. The message
    names the first offending sequence.

    Args:
      logit_lengths: integer ``[B]``.
      labels: integer ``[B, S]``.
      label_lengths: integer ``[B]``.
      num_classes: K, the blank included.
      blank: the blank's class id, in ``[0, K)``.
      where: optional bool ``[B]``; rows where it is False are not checked.
    """
    _checks.check_int(num_classes, "num_classes", 1)
    _check_blank(blank, num_classes)
    labels = _checks.index_array(labels, "labels")
    _checks.check_rank(labels, 2, "labels", "[B, S]")
    batch = labels.shape[0]
    logit_lengths = _check_int_vector(logit_lengths, "logit_lengths", batch)
    label_lengths = _check_int_vector(label_lengths, "label_lengths", batch)
    where = _checks.optional_mask(
        where, (batch,), "where", "[B] (B from `labels`)", _checks.ROW_MEANING
    )
    for x, name in ((logit_lengths, "logit_lengths"), (labels, "labels"),
                    (label_lengths, "label_lengths"), (where, "where")):  # fmt: skip
        if x is not None and not _checks.is_concrete(x):
            raise TypeError(f"`{name}` must be a concrete (host) array, not a traced value")
    logit_np, labels_np, label_np = (np.asarray(x) for x in (logit_lengths, labels, label_lengths))
    rows = np.ones(batch, bool) if where is None else np.asarray(where)
    max_t = int(logit_np.max(initial=0))
    _check_concrete_values(logit_np, labels_np, label_np, max_t, num_classes, blank, rows)
    needed = np.asarray(required_lengths(jnp.asarray(labels_np), jnp.asarray(label_np)))
    bad = rows & (needed > logit_np)
    if bad.any():
        i = _first_bad(bad)
        raise ValueError(
            f"`label_lengths`: sequence {i} has {int(label_np[i])} labels with "
            f"{int(needed[i] - label_np[i])} adjacent repeat(s), which need {int(needed[i])} "
            f"frames, but its `logit_lengths` is {int(logit_np[i])} (impossible alignment; "
            f"upsample the input or drop the sequence)"
        )
