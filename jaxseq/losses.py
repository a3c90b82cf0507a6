"""Cross-entropy and the masked sequence losses.

Notation: B batch, T time, C classes. ``logits`` are pre-softmax scores,
``labels`` integer class ids, ``mask``/``where`` boolean with True at the
positions that count.

Semantics (the specification is ``design.md``):

* Cross-entropy is computed from logits as ``logsumexp(z) - z[label]`` in
  float32 for float32, bfloat16 and float16 inputs (float64 for float64), and
  returned in that dtype.
* Masked positions contribute exactly zero to the value AND the gradient, even
  when their logits are NaN/inf or their labels are out of range: they are
  replaced by safe values *before* any arithmetic ("double where").
* ``class_weights`` scale each position's whole loss by ``w[label]``; the
  normalisers of the mean reductions count ``w[label]`` instead of 1, so a
  class weight of 0 is the same as masking that position (PyTorch's
  ``CrossEntropyLoss(weight=...)`` semantics for ``mean_over_tokens``).
* N, the number of sequences averaged over, counts only sequences with a
  positive (weighted) number of valid steps: all-padding rows change nothing,
  and a batch with nothing valid gives loss 0 and gradient 0, never NaN.
* Fast path: label values are not checked. An out-of-range label at a valid
  position gives NaN (never a plausible number). Use
  :func:`jaxseq.validate_labels` on host arrays or :func:`jaxseq.checked` under
  ``jit`` to get an error instead.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxseq import _checks

REDUCTIONS = ("sum_over_time", "mean_over_time", "mean_over_tokens", "sum", "none")
TERM_REDUCTIONS = ("sum_over_time", "mean_over_time", "mean_over_tokens")


class LossTerms(NamedTuple):
    """A loss as ``total / count``, both float32 scalars.

    Sum the terms of the parts of a batch (microbatches, devices, hosts) and
    divide once to get exactly the loss of the whole batch.
    """

    total: jax.Array
    count: jax.Array

    @property
    def loss(self) -> jax.Array:
        return safe_divide(self.total, self.count)


def safe_divide(total: jax.Array, count: jax.Array) -> jax.Array:
    """``total / count``, and 0 (with gradient 0) where ``count == 0``."""
    nonzero = count != 0
    return jnp.where(nonzero, total / jnp.where(nonzero, count, 1.0), 0.0)


def compute_dtype(dtype) -> jnp.dtype:
    """float32 for float32/bfloat16/float16 inputs, float64 for float64 inputs."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def _check_settings(label_smoothing, z_loss, class_weights, num_classes):
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise TypeError(f"`label_smoothing` must be a Python float, got {label_smoothing!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing}")
    if isinstance(z_loss, bool) or not isinstance(z_loss, (int, float)):
        raise TypeError(f"`z_loss` must be a Python float, got {z_loss!r}")
    if z_loss < 0:
        raise ValueError(f"`z_loss` must be >= 0, got {z_loss}")
    if class_weights is not None:
        class_weights = _checks.as_array(class_weights, "class_weights")
        _checks.check_shape(class_weights, (num_classes,), "class_weights", "[C] (C from `logits`)")
        _checks.check_floating(class_weights, "class_weights")
    return class_weights


def _check_logits_labels(logits, labels, *, logits_doc: str, labels_doc: str):
    logits = _checks.as_array(logits, "logits")
    labels = _checks.as_array(labels, "labels")
    _checks.check_floating(logits, "logits")
    _checks.check_integer(labels, "labels")
    if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"`labels` must have shape {labels_doc} = logits.shape[:-1] = "
            f"{tuple(logits.shape[:-1])} for `logits` {logits_doc} of shape "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    return logits, labels


def _token_losses(logits, labels, valid, label_smoothing, class_weights, z_loss):
    """Per-position weighted losses and weights, both float32 ``labels.shape``.

    ``valid`` (bool, ``labels.shape``) or None. Invalid positions get exactly 0
    in value and gradient.
    """
    num_classes = logits.shape[-1]
    dtype = compute_dtype(logits.dtype)
    logits = logits.astype(dtype)
    if valid is not None:
        # First where: no NaN/inf from a masked position can enter the math.
        logits = jnp.where(valid[..., None], logits, 0.0)
        labels = jnp.where(valid, labels, 0)
    in_range = (labels >= 0) & (labels < num_classes)
    safe_labels = jnp.clip(labels, 0, max(num_classes - 1, 0)).astype(jnp.int32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    true_logit = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
    # An out-of-range label at a valid position is loud, never a plausible number.
    true_logit = jnp.where(in_range, true_logit, jnp.nan)
    if label_smoothing:
        # Target (1 - a) * one_hot + a / C:  L = lse - (1 - a) z_y - (a / C) sum_c z_c.
        mean_logit = jnp.mean(logits, axis=-1)
        loss = lse - (1.0 - label_smoothing) * true_logit - label_smoothing * mean_logit
    else:
        loss = lse - true_logit
    if z_loss:
        loss = loss + z_loss * jnp.square(lse)
    if class_weights is not None:
        weight = jnp.asarray(class_weights, dtype)[safe_labels]
    else:
        weight = jnp.ones(labels.shape, dtype)
    if valid is not None:
        # Second where: the value and gradient at masked positions are exactly 0.
        weight = jnp.where(valid, weight, 0.0)
        loss = jnp.where(valid, weight * loss, 0.0)
    else:
        loss = weight * loss
    return loss, weight


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

    ``L = w[y] * (logsumexp(z) - sum_c t_c z_c + z_loss * logsumexp(z)**2)`` with
    target ``t = (1 - label_smoothing) * one_hot(y) + label_smoothing / C``.

    Args:
      logits: float ``[..., C]`` (float32, bfloat16 or float16).
      labels: integer ``[...]``, class ids in ``[0, C)``.
      where: optional bool ``[...]``; positions where it is False give exactly 0
        (value and gradient), whatever their logits and labels hold.
      label_smoothing: in ``[0, 1)``.
      class_weights: optional float ``[C]``; the loss at a position is scaled by
        ``class_weights[label]``.
      z_loss: coefficient of the ``logsumexp(z)**2`` auxiliary term (>= 0).

    Returns:
      float32 ``[...]`` (``labels.shape``).

    >>> import jax.numpy as jnp, jaxseq as js
    >>> p = jnp.array([0.7, 0.3])  # the model's prediction; the true class is 0
    >>> round(float(js.cross_entropy(jnp.log(p), jnp.array(0))), 4)  # -log 0.7
    0.3567
    """
    logits, labels = _check_logits_labels(logits, labels, logits_doc="[..., C]", labels_doc="[...]")
    class_weights = _check_settings(label_smoothing, z_loss, class_weights, logits.shape[-1])
    where = _checks.optional_mask(where, labels.shape, "where", "[...] (= labels.shape)")
    loss, _ = _token_losses(logits, labels, where, label_smoothing, class_weights, z_loss)
    return loss


def soft_cross_entropy(
    logits: jax.Array, targets: jax.Array, *, where: jax.Array | None = None
) -> jax.Array:
    """Per-position cross-entropy against a target distribution, unreduced.

    ``L = -sum_c y_c log softmax(z)_c``, computed as ``sum_c y_c (logsumexp(z) - z_c)``
    with ``0 * log 0 = 0`` (a class with target 0 contributes nothing even when
    its logit is ``-inf``).

    Args:
      logits: float ``[..., C]``.
      targets: float ``[..., C]``, a distribution over the C classes (not checked
        to sum to 1).
      where: optional bool ``[...]``; False positions give exactly 0.

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
    if targets.shape != logits.shape:
        raise ValueError(
            f"`targets` must have the shape of `logits` {tuple(logits.shape)} [..., C], "
            f"got {tuple(targets.shape)}"
        )
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


def sequence_classification_loss_terms(
    logits: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
) -> LossTerms:
    """:func:`sequence_classification_loss` as exact ``LossTerms(total, count)``.

    ``total`` is the sum of the (weighted) per-sequence losses over valid
    sequences, ``count`` the number of valid sequences (the sum of their
    ``class_weights[label]`` when weighted).
    """
    logits, labels = _check_logits_labels(logits, labels, logits_doc="[B, C]", labels_doc="[B]")
    _checks.check_rank(logits, 2, "logits", "[B, C]")
    class_weights = _check_settings(label_smoothing, z_loss, class_weights, logits.shape[-1])
    where = _checks.optional_mask(where, labels.shape, "where", "[B] (B from `logits`)")
    loss_B, weight_B = _token_losses(logits, labels, where, label_smoothing, class_weights, z_loss)
    return LossTerms(jnp.sum(loss_B), jnp.sum(weight_B))


def sequence_classification_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
) -> jax.Array:
    """Mean cross-entropy over sequences, one label per sequence.

    ``loss = (1/N) sum_i L_i`` over the valid sequences (``where`` True); with
    ``class_weights``, ``sum_i w[y_i] L_i / sum_i w[y_i]`` (PyTorch's weighted
    mean). No valid sequence gives 0.

    Args:
      logits: float ``[B, C]``, e.g. computed from the RNN state at each
        sequence's last valid step.
      labels: integer ``[B]``.
      where: optional bool ``[B]``; False marks padding rows of a batch.
      label_smoothing, class_weights, z_loss: as in :func:`cross_entropy`.

    Returns:
      float32 scalar.

    >>> import jax.numpy as jnp, jaxseq as js
    >>> logits = jnp.log(jnp.array([[0.7, 0.3], [0.2, 0.8]]))
    >>> round(float(js.sequence_classification_loss(logits, jnp.array([0, 1]))), 4)
    0.2899
    """
    return sequence_classification_loss_terms(
        logits,
        labels,
        where=where,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
        z_loss=z_loss,
    ).loss


def _labeling_checks(logits, labels, mask, label_smoothing, class_weights, z_loss):
    logits, labels = _check_logits_labels(
        logits, labels, logits_doc="[B, T, C]", labels_doc="[B, T]"
    )
    _checks.check_rank(logits, 3, "logits", "[B, T, C]")
    mask = _checks.as_array(mask, "mask")
    _checks.check_bool(mask, "mask")
    _checks.check_shape(mask, labels.shape, "mask", "[B, T] (= labels.shape)")
    class_weights = _check_settings(label_smoothing, z_loss, class_weights, logits.shape[-1])
    return logits, labels, mask, class_weights


def _labeling_terms(loss_BT, weight_BT, reduction):
    weight_B = jnp.sum(weight_BT, axis=1)
    counted_B = weight_B > 0
    num_sequences = jnp.sum(counted_B.astype(weight_B.dtype))
    if reduction == "sum_over_time":
        return LossTerms(jnp.sum(loss_BT), num_sequences)
    if reduction == "mean_over_time":
        per_sequence_B = safe_divide(jnp.sum(loss_BT, axis=1), weight_B)
        return LossTerms(jnp.sum(per_sequence_B), num_sequences)
    return LossTerms(jnp.sum(loss_BT), jnp.sum(weight_B))  # mean_over_tokens


def _check_token_losses(token_losses, mask, weights):
    token_losses = _checks.as_array(token_losses, "token_losses")
    _checks.check_floating(token_losses, "token_losses")
    _checks.check_rank(token_losses, 2, "token_losses", "[B, T]")
    mask = _checks.as_array(mask, "mask")
    _checks.check_bool(mask, "mask")
    _checks.check_shape(mask, token_losses.shape, "mask", "[B, T] (= token_losses.shape)")
    dtype = compute_dtype(token_losses.dtype)
    weight_BT = mask.astype(dtype)
    if weights is not None:
        weights = _checks.as_array(weights, "weights")
        _checks.check_floating(weights, "weights")
        _checks.check_shape(weights, token_losses.shape, "weights", "[B, T] (= token_losses.shape)")
        weight_BT = jnp.where(mask, weights.astype(dtype), 0.0)
    loss_BT = jnp.where(mask, token_losses.astype(dtype), 0.0)
    return loss_BT, weight_BT


def sequence_loss_terms(
    token_losses: jax.Array,
    mask: jax.Array,
    *,
    reduction: str = "sum_over_time",
    weights: jax.Array | None = None,
) -> LossTerms:
    """Reduce any per-step loss ``[B, T]`` to exact ``LossTerms`` (see
    :func:`sequence_labeling_loss_terms` for the table).

    Args:
      token_losses: float ``[B, T]``, already scaled by ``weights`` if any (e.g.
        ``soft_cross_entropy(logits, targets, where=mask)``). Compute it with
        ``where=mask`` so masked steps are safe: this function zeroes their
        values, but a NaN produced upstream at a masked step would still reach
        the upstream gradient.
      mask: bool ``[B, T]``.
      reduction: ``"sum_over_time"``, ``"mean_over_time"`` or ``"mean_over_tokens"``.
      weights: optional float ``[B, T]``, what each valid step counts for in the
        normalisers (1 without it).
    """
    _checks.check_choice(reduction, TERM_REDUCTIONS, "reduction")
    loss_BT, weight_BT = _check_token_losses(token_losses, mask, weights)
    return _labeling_terms(loss_BT, weight_BT, reduction)


def reduce_sequence_loss(
    token_losses: jax.Array,
    mask: jax.Array,
    *,
    reduction: str = "sum_over_time",
    weights: jax.Array | None = None,
) -> jax.Array:
    """Reduce any per-step loss ``[B, T]`` with the reductions of
    :func:`sequence_labeling_loss` (the same semantics, the same N).

    Use it for losses jaxseq does not compute itself, e.g. soft targets:

    >>> import jax.numpy as jnp, jaxseq as js
    >>> logits, mask = jnp.zeros((2, 3, 4)), js.length_mask(jnp.array([3, 1]), 3)
    >>> targets = jnp.full((2, 3, 4), 0.25)
    >>> per_step = js.soft_cross_entropy(logits, targets, where=mask)
    >>> round(float(js.reduce_sequence_loss(per_step, mask, reduction="mean_over_tokens")), 4)
    1.3863
    """
    _checks.check_choice(reduction, REDUCTIONS, "reduction")
    loss_BT, weight_BT = _check_token_losses(token_losses, mask, weights)
    if reduction == "none":
        return loss_BT
    if reduction == "sum":
        return jnp.sum(loss_BT)
    return _labeling_terms(loss_BT, weight_BT, reduction).loss


def sequence_labeling_loss_terms(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
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
    logits, labels, mask, class_weights = _labeling_checks(
        logits, labels, mask, label_smoothing, class_weights, z_loss
    )
    loss_BT, weight_BT = _token_losses(logits, labels, mask, label_smoothing, class_weights, z_loss)
    return _labeling_terms(loss_BT, weight_BT, reduction)


def sequence_labeling_loss(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    reduction: str = "sum_over_time",
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
) -> jax.Array:
    """Cross-entropy at every valid time step, reduced over the batch.

    With ``L_ij`` the loss at step j of sequence i and ``T_i`` its number of
    valid steps (``mask`` True), N the number of sequences with ``T_i > 0``:

    | reduction | value |
    |---|---|
    | ``"sum_over_time"`` | ``(1/N) sum_i sum_{j<T_i} L_ij`` (the textbook definition) |
    | ``"mean_over_time"`` | ``(1/N) sum_i (1/T_i) sum_{j<T_i} L_ij`` (sequences weigh the same) |
    | ``"mean_over_tokens"`` | ``sum_ij L_ij / sum_i T_i`` (each token weighs the same) |
    | ``"sum"`` | ``sum_ij L_ij`` |
    | ``"none"`` | ``L_ij``, float32 ``[B, T]``, 0 where masked |

    With ``class_weights``, ``L_ij`` is scaled by ``w[y_ij]`` and every ``T_i``
    (and the sequence count) counts ``w[y_ij]`` instead of 1.

    Args:
      logits: float ``[B, T, C]``.
      labels: integer ``[B, T]``; any value at masked steps.
      mask: bool ``[B, T]``, True at valid steps (it need not be a prefix, e.g.
        to count only some steps' labels).
      reduction: one of the names above.
      label_smoothing, class_weights, z_loss: as in :func:`cross_entropy`.

    Returns:
      float32 scalar (``[B, T]`` for ``"none"``).

    >>> import jax.numpy as jnp, jaxseq as js
    >>> p = jnp.array([[[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]]])   # [B=1, T=3, C=2]
    >>> labels, mask = jnp.array([[0, 1, 0]]), jnp.array([[True, True, False]])
    >>> loss = js.sequence_labeling_loss(jnp.log(p), labels, mask)  # -log .7 - log .6
    >>> round(float(loss), 4)
    0.8675
    """
    _checks.check_choice(reduction, REDUCTIONS, "reduction")
    logits, labels, mask, class_weights = _labeling_checks(
        logits, labels, mask, label_smoothing, class_weights, z_loss
    )
    loss_BT, weight_BT = _token_losses(logits, labels, mask, label_smoothing, class_weights, z_loss)
    if reduction == "none":
        return loss_BT
    if reduction == "sum":
        return jnp.sum(loss_BT)
    return _labeling_terms(loss_BT, weight_BT, reduction).loss
