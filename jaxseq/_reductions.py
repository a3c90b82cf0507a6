"""The reductions and loss helpers shared by every loss module (private).

:mod:`jaxseq.losses`, :mod:`jaxseq.chunked`, :mod:`jaxseq.ctc` and
:mod:`jaxseq.metrics` all import from here, so each reduction is written once.
The public names (``REDUCTIONS``, ``TERM_REDUCTIONS``, ``SEQUENCE_REDUCTIONS``,
``LossTerms``, ``safe_divide``, ``compute_dtype``) are re-exported by
:mod:`jaxseq.losses`; the specification is ``docs/semantics.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks

#: Reductions of the per-step losses (``sequence_labeling_loss``,
#: ``reduce_sequence_loss``, ``linear_cross_entropy``).
REDUCTIONS = ("sum_over_time", "mean_over_time", "mean_over_tokens", "sum", "none")
#: The reductions a ``*_terms`` function of a per-step loss takes (the means).
TERM_REDUCTIONS = ("sum_over_time", "mean_over_time", "mean_over_tokens")
#: Reductions of the losses with one number per sequence (``sequence_classification_loss``,
#: ``ctc_loss``); CTC adds ``"mean_over_labels"``.
SEQUENCE_REDUCTIONS = ("sum_over_time", "sum", "none")


class LossTerms(NamedTuple):
    """A loss as ``total / count``, both float32 scalars.

    Sum the terms of the parts of a batch (microbatches, devices, hosts) and
    divide once to get exactly the loss of the whole batch.
    """

    total: jax.Array
    # The field shadows tuple.count (a method) on purpose: ``terms.count`` is the API.
    count: jax.Array  # type: ignore[assignment]

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


def all_valid(where, shape):
    """``where``, or an all-True mask of ``shape`` when it is None."""
    return jnp.ones(shape, bool) if where is None else where


def scalar_option(value, name: str) -> float:
    """A finite scalar hyper-parameter as a Python float.

    Python numbers, NumPy scalars and concrete 0-d NumPy/JAX arrays are accepted
    (``TypeError`` otherwise, a traced value included: hyper-parameters are static);
    NaN and +-inf are a ``ValueError`` naming ``name``.
    """
    if isinstance(value, (jax.Array, np.ndarray)) and not isinstance(value, np.generic):
        if value.ndim != 0 or not (
            jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
        ):
            raise TypeError(
                f"`{name}` must be a Python float (or a 0-d float array), got an array of "
                f"shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        if not _checks.is_concrete(value):
            raise TypeError(
                f"`{name}` must be a concrete Python float, not a traced value: it is a static "
                f"hyper-parameter (close over it or mark it static under jit)"
            )
        value = np.asarray(value).item()
    _checks.check_float(value, name)
    return float(value)


def check_num_classes(num_classes: int, name: str, shape) -> None:
    """C >= 1: zero classes is an error (a shape error, like chex's), not a silent 0."""
    if num_classes < 1:
        raise _checks.shape_error(
            f"`{name}` must have at least one class (C >= 1 in its last axis), "
            f"got shape {tuple(shape)}"
        )


def check_loss_options(label_smoothing, z_loss, class_weights, num_classes: int):
    """Check the options shared by the cross-entropy losses.

    Returns ``(label_smoothing, z_loss, class_weights)`` with the scalars as Python
    floats. ``label_smoothing`` must be in ``[0, 1)`` and ``z_loss`` finite and
    ``>= 0`` (``ValueError``; NumPy and concrete JAX scalars are accepted).
    ``class_weights`` is a float ``[C]`` array (``AssertionError`` otherwise); when
    it is host data, a negative, NaN or infinite weight is a ``ValueError``. Under
    ``jit`` such weights make every weight NaN (see :func:`class_weight_vector`).
    """
    label_smoothing = scalar_option(label_smoothing, "label_smoothing")
    _checks.check_rate(label_smoothing, "label_smoothing")
    z_loss = scalar_option(z_loss, "z_loss")
    if z_loss < 0:
        raise ValueError(f"`z_loss` must be >= 0, got {z_loss}")
    if class_weights is not None:
        class_weights = _checks.as_array(class_weights, "class_weights")
        _checks.check_floating(class_weights, "class_weights")
        _checks.check_shape(
            class_weights, (num_classes,), "class_weights", "[C] (the number of classes)"
        )
        if _checks.is_concrete(class_weights):
            host = np.asarray(class_weights, np.float64)
            bad = ~np.isfinite(host) | (host < 0)
            if bad.any():
                c = int(np.argwhere(bad)[0][0])
                raise ValueError(
                    f"`class_weights` must be finite and >= 0, got {host[c]} for class {c}"
                )
    return label_smoothing, z_loss, class_weights


def class_weight_vector(class_weights, dtype):
    """``class_weights`` ``[C]`` in ``dtype``; all NaN if any weight is negative, NaN or
    infinite (only a traced array can get here with one: host data raised already), so
    the loss is NaN rather than a plausible number."""
    weights = jnp.asarray(class_weights, dtype)
    good = jnp.all(jnp.isfinite(weights) & (weights >= 0))
    return jnp.where(good, weights, jnp.nan)


def class_weight_of(labels, class_weights, dtype):
    """What each position's target counts for: ``class_weights[label]`` (1 without
    weights), NaN for a label outside ``[0, C)`` (so a bad label is never mistaken for
    a zero-weight one). ``labels`` int32; ``class_weights`` from
    :func:`class_weight_vector` or None."""
    if class_weights is None:
        return jnp.ones(labels.shape, dtype)
    num_classes = class_weights.shape[0]
    safe = jnp.clip(labels, 0, max(num_classes - 1, 0))
    return jnp.where((labels >= 0) & (labels < num_classes), class_weights[safe], jnp.nan)


def labeling_terms(loss_BT, weight_BT, reduction: str) -> LossTerms:
    """``LossTerms`` of a per-step loss for one of ``TERM_REDUCTIONS``.

    ``loss_BT`` is already weighted and 0 at masked steps; ``weight_BT`` is what
    each step counts for (0 at masked steps). N counts the rows whose weights
    sum to more than 0.
    """
    weight_B = jnp.sum(weight_BT, axis=1)
    # != 0, not > 0: a NaN weight (bad traced class weights) counts, so the loss is NaN.
    num_sequences = jnp.sum((weight_B != 0).astype(weight_B.dtype))
    if reduction == "sum_over_time":
        return LossTerms(jnp.sum(loss_BT), num_sequences)
    if reduction == "mean_over_time":
        per_sequence_B = safe_divide(jnp.sum(loss_BT, axis=1), weight_B)
        return LossTerms(jnp.sum(per_sequence_B), num_sequences)
    if reduction == "mean_over_tokens":
        return LossTerms(jnp.sum(loss_BT), jnp.sum(weight_B))
    raise ValueError(f"not a term reduction: {reduction!r}")


def reduce_labeling(loss_BT, weight_BT, reduction: str) -> jax.Array:
    """A per-step loss ``[B, T]`` reduced by one of ``REDUCTIONS``."""
    if reduction == "none":
        return loss_BT
    if reduction == "sum":
        return jnp.sum(loss_BT)
    return labeling_terms(loss_BT, weight_BT, reduction).loss


def reduce_sequences(loss_B, weight_B, reduction: str) -> jax.Array:
    """A per-sequence loss ``[B]`` reduced by one of ``SEQUENCE_REDUCTIONS``.

    ``loss_B`` is already weighted and 0 at rows that are not valid; ``weight_B``
    is what each row counts for in the mean (0 at rows that are not valid).
    """
    if reduction == "none":
        return loss_B
    if reduction == "sum":
        return jnp.sum(loss_B)
    if reduction == "sum_over_time":
        return safe_divide(jnp.sum(loss_B), jnp.sum(weight_B))
    raise ValueError(f"not a sequence reduction: {reduction!r}")
