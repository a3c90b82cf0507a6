"""Cross-entropy and the masked sequence losses.

Notation: B batch, T time, C classes. ``logits`` are pre-softmax scores,
``labels`` integer class ids, ``where`` (keyword-only, every function) boolean
with True at the positions that count; None (the default) counts every position.

Semantics (specified in ``docs/semantics.md``):

* Cross-entropy is computed from logits as ``logsumexp(z) - z[label]`` in
  float32 for float32, bfloat16 and float16 inputs (float64 for float64), and
  returned in that dtype.
* Masked positions contribute exactly zero to the value AND the gradient, even
  when their logits are NaN/inf or their labels are out of range: they are
  replaced by safe values *before* any arithmetic ("double where").
* ``class_weights`` and ``label_smoothing`` follow PyTorch's
  ``cross_entropy(weight=w, label_smoothing=a)``: a position's loss is
  ``(1 - a) w[y] (-log p_y) + (a / C) sum_c w[c] (-log p_c)``, and the
  normalisers of the mean reductions count ``w[y]`` instead of 1. Without
  smoothing, a class weight of 0 is exactly the same as masking the position
  (value and gradient, even with NaN/inf logits there); with smoothing such a
  position keeps its smoothing term (see ``docs/semantics.md``).
* N, the number of sequences averaged over, counts only sequences with a
  positive (weighted) number of valid steps: all-padding rows change nothing,
  and a batch with nothing valid (B = 0 and T = 0 included) gives loss 0 and
  gradient 0, never NaN. Zero classes (C = 0) is an error.
* Integer labels of any dtype (int8 ... uint64) are converted to int32 exactly
  first; a value that does not fit int32 is a ``ValueError`` on host data and
  acts as an out-of-range label (NaN) under ``jit``.
* Hyper-parameters are checked: ``label_smoothing`` in ``[0, 1)``, ``z_loss``
  finite and ``>= 0`` (Python, NumPy or concrete JAX scalars), ``class_weights``
  finite and ``>= 0`` (``ValueError`` on host data; under ``jit`` a bad weight
  makes the loss NaN).
* One vocabulary of reductions, the same names meaning the same thing in
  every loss: ``REDUCTIONS`` for the per-step losses
  (:func:`sequence_labeling_loss`, :func:`reduce_sequence_loss`,
  :func:`jaxseq.linear_cross_entropy`), ``TERM_REDUCTIONS`` (their means) for
  the ``*_terms`` functions, and ``SEQUENCE_REDUCTIONS`` for the losses with
  one number per sequence (:func:`sequence_classification_loss`,
  :func:`jaxseq.ctc_loss`). Each function's docstring gives the PyTorch
  equivalent of each name.
* Fast path: label values are not checked. An out-of-range label at a valid
  position gives NaN (never a plausible number). Use
  :func:`jaxseq.validate_labels` on host arrays or :func:`jaxseq.checked` under
  ``jit`` to get an error instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq._compiled import compiled
from jaxseq._reductions import (
    REDUCTIONS,
    SEQUENCE_REDUCTIONS,
    TERM_REDUCTIONS,
    LossTerms,
    all_valid,
    check_loss_options,
    check_num_classes,
    class_weight_of,
    class_weight_vector,
    compute_dtype,
    labeling_terms,
    reduce_labeling,
    reduce_sequences,
    safe_divide,
)

__all__ = [
    "REDUCTIONS",
    "SEQUENCE_REDUCTIONS",
    "TERM_REDUCTIONS",
    "LossTerms",
    "compute_dtype",
    "cross_entropy",
    "reduce_sequence_loss",
    "safe_divide",
    "sequence_classification_loss",
    "sequence_classification_loss_terms",
    "sequence_labeling_loss",
    "sequence_labeling_loss_terms",
    "sequence_loss_terms",
    "soft_cross_entropy",
]


def _check_logits_labels(logits, labels, *, rank: int | None, logits_doc: str, labels_doc: str):
    """``logits`` float ``[..., C]`` (of ``rank`` when given) with C >= 1, ``labels``
    integer ``[...]``, converted to int32 exactly (``jaxseq._checks.index_array``)."""
    logits = _checks.as_array(logits, "logits")
    _checks.check_floating(logits, "logits")
    if rank is None:
        _checks.check_min_rank(logits, 1, "logits", logits_doc)
    else:
        _checks.check_rank(logits, rank, "logits", logits_doc)
    check_num_classes(logits.shape[-1], "logits", logits.shape)
    labels = _checks.index_array(labels, "labels")
    _checks.check_shape(labels, logits.shape[:-1], "labels", f"{labels_doc} (= logits.shape[:-1])")
    return logits, labels


@compiled("label_smoothing", "z_loss", volatile=("label_smoothing", "z_loss"))
def _token_losses(logits, labels, where, label_smoothing, class_weights, z_loss):
    """Per-position losses and weights, both float32 (float64) ``labels.shape``.

    ``labels`` int32; ``where`` (bool, ``labels.shape``) or None. With ``w = class_weights``
    (1 without), ``a = label_smoothing`` and ``-log p_c = lse - z_c``, the loss of a
    counted position is PyTorch's

        (1 - a) w[y] (-log p_y) + (a / C) sum_c w[c] (-log p_c) + z_loss w[y] lse^2

    and its weight (what it counts for in the normalisers) is ``w[y]``. Positions
    where ``where`` is False, and without smoothing those whose ``w[y]`` is 0, are not
    counted: exactly 0 in value and gradient, whatever their logits hold.
    """
    num_classes = logits.shape[-1]
    dtype = compute_dtype(logits.dtype)
    where = all_valid(where, labels.shape)
    weights_C = None if class_weights is None else class_weight_vector(class_weights, dtype)
    labels = jnp.where(where, labels, 0)
    weight = class_weight_of(labels, weights_C, dtype)
    counted = where
    if weights_C is not None and not label_smoothing:
        # A class weight of 0 is masking (without smoothing nothing else is left).
        counted = where & (weight != 0)
    # First where: no NaN/inf from a position that is not counted can enter the math.
    logits = jnp.where(counted[..., None], logits.astype(dtype), 0.0)
    labels = jnp.where(counted, labels, 0)
    in_range = (labels >= 0) & (labels < num_classes)
    safe_labels = jnp.clip(labels, 0, num_classes - 1)
    lse = jax.nn.logsumexp(logits, axis=-1)
    true_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
    # An out-of-range label at a valid position is loud, never a plausible number.
    true_logit = jnp.where(in_range, true_logit, jnp.nan)
    has_weight = weight != 0
    # where, not multiplication: a zero weight times an infinite -log p is 0, never NaN.
    loss = jnp.where(has_weight, weight * (lse - true_logit), 0.0)
    if label_smoothing:
        if weights_C is None:
            smooth = lse - jnp.mean(logits, axis=-1)  # (1 / C) sum_c -log p_c
        else:
            weights_1C = weights_C.reshape((1,) * (logits.ndim - 1) + (num_classes,))
            class_has_weight = weights_1C != 0
            neg_log_p = jnp.where(
                class_has_weight, lse[..., None] - jnp.where(class_has_weight, logits, 0.0), 0.0
            )
            smooth = jnp.sum(weights_1C * neg_log_p, axis=-1) / num_classes
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    if z_loss:
        loss = loss + z_loss * jnp.where(has_weight, weight * jnp.square(lse), 0.0)
    # Second where: the value and gradient of a position not counted are exactly 0.
    return jnp.where(counted, loss, 0.0), jnp.where(counted, weight, 0.0)


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
) -> jax.Array:
    """Per-position cross-entropy with integer labels, unreduced.

    With ``-log p_c = logsumexp(z) - z_c``, ``a = label_smoothing`` and
    ``w = class_weights`` (1 without)::

        L = (1 - a) w[y] (-log p_y) + (a / C) sum_c w[c] (-log p_c) + z_loss w[y] logsumexp(z)**2

    PyTorch: ``cross_entropy(logits, y, weight=w, label_smoothing=a,
    reduction="none")`` (plus the z-loss term, which PyTorch does not have).
    Without smoothing, a position whose ``w[y]`` is 0 gives exactly 0 (value and
    gradient) whatever its logits hold, like a masked one; with smoothing it
    keeps its smoothing term. A term whose weight is 0 is 0, never ``0 * inf``.

    Args:
      logits: float ``[..., C]`` (float32, bfloat16 or float16).
      labels: integer ``[...]`` (any integer dtype, converted to int32 exactly),
        class ids in ``[0, C)``.
      where: optional bool ``[...]``, True where a position counts (default: all);
        positions where it is False give exactly 0 (value and gradient),
        whatever their logits and labels hold.
      label_smoothing: in ``[0, 1)``.
      class_weights: optional float ``[C]``, finite and ``>= 0``.
      z_loss: coefficient of the ``logsumexp(z)**2`` auxiliary term, finite, ``>= 0``.

    Returns:
      float32 ``[...]`` (``labels.shape``).

    >>> import jax.numpy as jnp, jaxseq as js
    >>> p = jnp.array([0.7, 0.3])  # the model's prediction; the true class is 0
    >>> round(float(js.cross_entropy(jnp.log(p), jnp.array(0))), 4)  # -log 0.7
    0.3567
    """
    logits, labels = _check_logits_labels(
        logits, labels, rank=None, logits_doc="[..., C]", labels_doc="[...]"
    )
    label_smoothing, z_loss, class_weights = check_loss_options(
        label_smoothing, z_loss, class_weights, logits.shape[-1]
    )
    where = _checks.optional_mask(where, labels.shape, "where", "[...] (= labels.shape)")
    loss, _ = _token_losses(logits, labels, where, label_smoothing, class_weights, z_loss)
    return loss


def soft_cross_entropy(
    logits: jax.Array, targets: jax.Array, *, where: jax.Array | None = None
) -> jax.Array:
    """Per-position cross-entropy against a target distribution, unreduced.

    ``L = -sum_c y_c log softmax(z)_c``, computed as ``sum_c y_c (logsumexp(z) - z_c)``
    with ``0 * log 0 = 0`` (a class with target 0 contributes nothing even when
    its logit is ``-inf``). PyTorch: ``CrossEntropyLoss(reduction="none")`` with
    class-probability targets.

    Args:
      logits: float ``[..., C]``.
      targets: float ``[..., C]``, a distribution over the C classes (not checked
        to sum to 1).
      where: optional bool ``[...]`` (default: all valid); False positions give
        exactly 0.

    Returns:
      float32 ``[...]``.

    >>> import jax.numpy as jnp, jaxseq as js
    >>> z = jnp.log(jnp.array([0.7, 0.3]))
    >>> round(float(js.soft_cross_entropy(z, jnp.array([1.0, 0.0]))), 4)
    0.3567
    """
    logits = _checks.as_array(logits, "logits")
    targets = _checks.as_array(targets, "targets")
    _checks.check_floating(logits, "logits")
    _checks.check_floating(targets, "targets")
    _checks.check_min_rank(logits, 1, "logits", "[..., C]")
    check_num_classes(logits.shape[-1], "logits", logits.shape)
    _checks.check_shape(targets, logits.shape, "targets", "[..., C] (= logits.shape)")
    where = _checks.optional_mask(where, logits.shape[:-1], "where", "[...] (= logits.shape[:-1])")
    dtype = compute_dtype(logits.dtype)
    logits = logits.astype(dtype)
    targets = targets.astype(dtype)
    if where is not None:
        logits = jnp.where(where[..., None], logits, 0.0)
        targets = jnp.where(where[..., None], targets, 0.0)
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    has_mass = targets != 0
    # Double where: -inf logits of classes with no target mass stay out of the math.
    neg_log_p = jnp.where(has_mass, lse - jnp.where(has_mass, logits, 0.0), 0.0)
    loss = jnp.sum(targets * neg_log_p, axis=-1)
    if where is not None:
        loss = jnp.where(where, loss, 0.0)
    return loss


def _classification_losses(logits, labels, where, label_smoothing, class_weights, z_loss):
    """Checks, then the per-sequence losses and weights ``[B]``."""
    logits, labels = _check_logits_labels(
        logits, labels, rank=2, logits_doc="[B, C]", labels_doc="[B]"
    )
    label_smoothing, z_loss, class_weights = check_loss_options(
        label_smoothing, z_loss, class_weights, logits.shape[-1]
    )
    where = _checks.optional_mask(
        where, labels.shape, "where", "[B] (B from `logits`)", _checks.ROW_MEANING
    )
    return _token_losses(logits, labels, where, label_smoothing, class_weights, z_loss)


def sequence_classification_loss_terms(
    logits: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
) -> LossTerms:
    """:func:`sequence_classification_loss` (``"sum_over_time"``) as exact
    ``LossTerms(total, count)``.

    ``total`` is the sum of the (weighted) per-sequence losses over valid
    sequences, ``count`` the number of valid sequences (the sum of their
    ``class_weights[label]`` when weighted).
    """
    loss_B, weight_B = _classification_losses(
        logits, labels, where, label_smoothing, class_weights, z_loss
    )
    return LossTerms(jnp.sum(loss_B), jnp.sum(weight_B))


def sequence_classification_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    reduction: str = "sum_over_time",
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
) -> jax.Array:
    """Cross-entropy with one label per sequence, reduced over the batch.

    With ``L_i`` the loss of sequence i as in :func:`cross_entropy` (weighted by
    ``w_i = class_weights[y_i]``, 1 without weights) and only the rows where
    ``where`` is True counted:

    * ``"sum_over_time"`` (default): ``sum_i L_i / sum_i w_i``, the mean over
      the valid sequences (the weighted mean with ``class_weights``). PyTorch:
      ``CrossEntropyLoss(reduction="mean")``, ``weight=`` and
      ``label_smoothing=`` included (0 where PyTorch's total weight is 0 gives NaN).
    * ``"sum"``: ``sum_i L_i``. PyTorch: ``reduction="sum"``.
    * ``"none"``: ``L_i``, float32 ``[B]``, 0 where ``where`` is False.
      PyTorch: ``reduction="none"``.

    (``where`` False is PyTorch's ``ignore_index``.) The per-sequence names of
    the reduction vocabulary shared with :func:`jaxseq.ctc.ctc_loss`: for a
    loss with one number per sequence, ``"sum_over_time"`` is the mean over
    sequences. No valid sequence gives 0.

    Args:
      logits: float ``[B, C]``, e.g. computed from the RNN state at each
        sequence's last valid step.
      labels: integer ``[B]``.
      where: optional bool ``[B]`` (default: all valid); False marks padding
        rows of a batch.
      reduction: one of the names above.
      label_smoothing, class_weights, z_loss: as in :func:`cross_entropy`.

    Returns:
      float32 scalar (``[B]`` for ``"none"``).

    >>> import jax.numpy as jnp, jaxseq as js
    >>> logits = jnp.log(jnp.array([[0.7, 0.3], [0.2, 0.8]]))
    >>> round(float(js.sequence_classification_loss(logits, jnp.array([0, 1]))), 4)
    0.2899
    >>> per_sequence = js.sequence_classification_loss(logits, jnp.array([0, 1]), reduction="none")
    >>> [round(float(x), 4) for x in per_sequence]  # -log 0.7, -log 0.8
    [0.3567, 0.2231]
    """
    _checks.check_choice(reduction, SEQUENCE_REDUCTIONS, "reduction")
    loss_B, weight_B = _classification_losses(
        logits, labels, where, label_smoothing, class_weights, z_loss
    )
    return reduce_sequences(loss_B, weight_B, reduction)


def _labeling_losses(logits, labels, where, label_smoothing, class_weights, z_loss):
    """Checks, then the per-step losses and weights ``[B, T]``."""
    logits, labels = _check_logits_labels(
        logits, labels, rank=3, logits_doc="[B, T, C]", labels_doc="[B, T]"
    )
    where = _checks.optional_mask(where, labels.shape, "where", "[B, T] (= labels.shape)")
    label_smoothing, z_loss, class_weights = check_loss_options(
        label_smoothing, z_loss, class_weights, logits.shape[-1]
    )
    where = all_valid(where, labels.shape)
    return _token_losses(logits, labels, where, label_smoothing, class_weights, z_loss)


def _check_token_losses(token_losses, where, weights):
    token_losses = _checks.as_array(token_losses, "token_losses")
    _checks.check_floating(token_losses, "token_losses")
    _checks.check_rank(token_losses, 2, "token_losses", "[B, T]")
    where = _checks.optional_mask(
        where, token_losses.shape, "where", "[B, T] (= token_losses.shape)"
    )
    where = all_valid(where, token_losses.shape)
    dtype = compute_dtype(token_losses.dtype)
    weight_BT = where.astype(dtype)
    if weights is not None:
        weights = _checks.as_array(weights, "weights")
        _checks.check_floating(weights, "weights")
        _checks.check_shape(weights, token_losses.shape, "weights", "[B, T] (= token_losses.shape)")
        if _checks.is_concrete(weights):
            host = np.asarray(weights, np.float64)
            bad = ~np.isfinite(host) | (host < 0)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise ValueError(
                    f"`weights` must be finite and >= 0, got {host[index]} at index {index}"
                )
        weight_BT = jnp.where(where, weights.astype(dtype), 0.0)
    loss_BT = jnp.where(where, token_losses.astype(dtype), 0.0)
    return loss_BT, weight_BT


def sequence_loss_terms(
    token_losses: jax.Array,
    *,
    where: jax.Array | None = None,
    reduction: str = "sum_over_time",
    weights: jax.Array | None = None,
) -> LossTerms:
    """Reduce any per-step loss ``[B, T]`` to exact ``LossTerms`` (see
    :func:`sequence_labeling_loss_terms` for the table).

    Args:
      token_losses: float ``[B, T]``, already scaled by ``weights`` if any (e.g.
        ``soft_cross_entropy(logits, targets, where=where)``). Compute it with
        the same ``where`` so masked steps are safe: this function zeroes their
        values, but a NaN produced upstream at a masked step would still reach
        the upstream gradient.
      where: optional bool ``[B, T]``, True at valid steps (default: all valid).
      reduction: ``"sum_over_time"``, ``"mean_over_time"`` or ``"mean_over_tokens"``.
      weights: optional float ``[B, T]``, what each valid step counts for in the
        normalisers (1 without it).
    """
    _checks.check_choice(reduction, TERM_REDUCTIONS, "reduction")
    loss_BT, weight_BT = _check_token_losses(token_losses, where, weights)
    return labeling_terms(loss_BT, weight_BT, reduction)


def reduce_sequence_loss(
    token_losses: jax.Array,
    *,
    where: jax.Array | None = None,
    reduction: str = "sum_over_time",
    weights: jax.Array | None = None,
) -> jax.Array:
    """Reduce any per-step loss ``[B, T]`` with the reductions of
    :func:`sequence_labeling_loss` (the same names, semantics and N).

    Args: as in :func:`sequence_loss_terms`; ``reduction`` also takes ``"sum"``
    and ``"none"`` (``[B, T]``, 0 where masked).

    Use it for losses jaxseq does not compute itself, e.g. soft targets:

    >>> import jax.numpy as jnp, jaxseq as js
    >>> logits, where = jnp.zeros((2, 3, 4)), js.length_mask(jnp.array([3, 1]), 3)
    >>> targets = jnp.full((2, 3, 4), 0.25)
    >>> per_step = js.soft_cross_entropy(logits, targets, where=where)
    >>> loss = js.reduce_sequence_loss(per_step, where=where, reduction="mean_over_tokens")
    >>> round(float(loss), 4)
    1.3863
    """
    _checks.check_choice(reduction, REDUCTIONS, "reduction")
    loss_BT, weight_BT = _check_token_losses(token_losses, where, weights)
    return reduce_labeling(loss_BT, weight_BT, reduction)


def sequence_labeling_loss_terms(
    logits: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    reduction: str = "sum_over_time",
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
) -> LossTerms:
    """:func:`sequence_labeling_loss` as exact ``LossTerms(total, count)``.

    ``loss == total / count``, and for any split of a batch into parts,
    ``sum(part.total) / sum(part.count)`` is the loss of the whole batch: use it
    for gradient accumulation and data-parallel training.

    | reduction | total | count |
    |---|---|---|
    | ``sum_over_time`` | ``sum_ij L_ij`` | N |
    | ``mean_over_time`` | ``sum_i (sum_j L_ij / sum_j w_ij)`` | N |
    | ``mean_over_tokens`` | ``sum_ij L_ij`` | ``sum_ij w_ij`` |

    with ``w_ij = class_weights[y_ij]`` (1 without weights) at valid steps and N
    the number of sequences whose ``sum_j w_ij > 0``.
    """
    _checks.check_choice(reduction, TERM_REDUCTIONS, "reduction")
    loss_BT, weight_BT = _labeling_losses(
        logits, labels, where, label_smoothing, class_weights, z_loss
    )
    return labeling_terms(loss_BT, weight_BT, reduction)


def sequence_labeling_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    reduction: str = "sum_over_time",
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
) -> jax.Array:
    """Cross-entropy at every valid time step, reduced over the batch.

    With ``L_ij`` the loss at step j of sequence i and ``T_i`` its number of
    valid steps (``where`` True), N the number of sequences with ``T_i > 0``:

    * ``"sum_over_time"`` (default): ``(1/N) sum_i sum_{j<T_i} L_ij``, the
      textbook definition. PyTorch: none built in
      (``CrossEntropyLoss(reduction="sum")`` divided by N).
    * ``"mean_over_time"``: ``(1/N) sum_i (1/T_i) sum_{j<T_i} L_ij``, every
      sequence weighs the same. PyTorch: none built in.
    * ``"mean_over_tokens"``: ``sum_ij L_ij / sum_i T_i``, every token weighs
      the same. PyTorch: ``CrossEntropyLoss(ignore_index=..., reduction="mean")``.
    * ``"sum"``: ``sum_ij L_ij``. PyTorch: ``reduction="sum"``.
    * ``"none"``: ``L_ij``, float32 ``[B, T]``, 0 where masked. PyTorch:
      ``reduction="none"`` (0 at the ignored positions).

    (``where`` False is PyTorch's ``ignore_index``.) With ``class_weights``,
    ``L_ij`` is PyTorch's weighted (and smoothed) per-token loss (see
    :func:`cross_entropy`) and every ``T_i`` (and the sequence count) counts
    ``w[y_ij]`` instead of 1: ``"mean_over_tokens"`` is then PyTorch's weighted
    mean (``weight=``, ``label_smoothing=`` included). Where PyTorch divides by
    a zero total weight (every valid target of weight 0) and returns NaN,
    jaxseq returns 0 with gradient 0.

    Args:
      logits: float ``[B, T, C]``.
      labels: integer ``[B, T]`` (any integer dtype); any int32 value at masked steps.
      where: optional bool ``[B, T]``, True at valid steps (default: all valid;
        it need not be a prefix, e.g. to count only some steps' labels).
      reduction: one of the names above.
      label_smoothing, class_weights, z_loss: as in :func:`cross_entropy`.

    Returns:
      float32 scalar (``[B, T]`` for ``"none"``).

    >>> import jax.numpy as jnp, jaxseq as js
    >>> p = jnp.array([[[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]]])   # [B=1, T=3, C=2]
    >>> labels, where = jnp.array([[0, 1, 0]]), jnp.array([[True, True, False]])
    >>> loss = js.sequence_labeling_loss(jnp.log(p), labels, where=where)  # -log .7 - log .6
    >>> round(float(loss), 4)
    0.8675
    """
    _checks.check_choice(reduction, REDUCTIONS, "reduction")
    loss_BT, weight_BT = _labeling_losses(
        logits, labels, where, label_smoothing, class_weights, z_loss
    )
    return reduce_labeling(loss_BT, weight_BT, reduction)
