"""Pooling of per-step outputs over the valid steps of each sequence.

Notation: B batch, T time, H features. Every function takes ``hs [B, T, H]``
and integer ``lengths [B]`` and returns ``[B, H]``, looking only at the valid
steps ``t < lengths[b]``: padded steps may hold anything (NaN included) and get
a gradient of exactly 0. A sequence of length 0 pools to 0 (never NaN or
-inf), with a zero gradient.

* :func:`masked_mean`: the mean over valid steps;
* :func:`masked_max`: the elementwise max over valid steps;
* :func:`last_valid` (from :mod:`jaxseq.masks`): the output at the last valid
  step, ``hs[b, lengths[b] - 1]``.

Sums are accumulated in float32 (float64 for float64 ``hs``) and the result has
the dtype of ``hs``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseq import _checks, cells, masks, validation
from jaxseq.masks import last_valid

__all__ = ["last_valid", "masked_max", "masked_mean"]


def _check(hs, lengths):
    hs = _checks.as_array(hs, "hs")
    lengths = _checks.as_array(lengths, "lengths")
    _checks.check_rank(hs, 3, "hs", "[B, T, H]")
    _checks.check_floating(hs, "hs")
    _checks.check_integer(lengths, "lengths")
    _checks.check_shape(lengths, (hs.shape[0],), "lengths", "[B] (B from `hs`)")
    if _checks.is_concrete(lengths):
        validation.validate_lengths(lengths, hs.shape[1])
    mask_BT1 = masks.length_mask(lengths, hs.shape[1])[:, :, None]
    return hs, lengths, mask_BT1


def masked_mean(hs: jax.Array, lengths: jax.Array) -> jax.Array:
    """Mean of ``hs [B, T, H]`` over the valid steps of each sequence -> ``[B, H]``.

    ``out[b] = sum_{t < lengths[b]} hs[b, t] / lengths[b]``, and 0 where
    ``lengths[b] == 0``.

    >>> import jax.numpy as jnp
    >>> from jaxseq import pooling
    >>> hs = jnp.array([[[1.0], [3.0], [99.0]], [[5.0], [7.0], [9.0]]])
    >>> pooling.masked_mean(hs, jnp.array([2, 0])).tolist()
    [[2.0], [0.0]]
    """
    hs, lengths, mask_BT1 = _check(hs, lengths)
    dtype = cells.compute_dtype(hs.dtype)
    # First where: padding (even NaN) never enters the sum or its gradient.
    total_BH = jnp.sum(jnp.where(mask_BT1, hs, jnp.zeros((), hs.dtype)), axis=1, dtype=dtype)
    # The number of valid steps, from the mask: lengths outside [0, T] under jit act as
    # their clipped value, as everywhere else in jaxseq.
    count_B1 = jnp.sum(mask_BT1, axis=1, dtype=jnp.int32)
    has_step_B1 = count_B1 > 0
    count_B1 = jnp.where(has_step_B1, count_B1, 1).astype(dtype)
    mean_BH = jnp.where(has_step_B1, total_BH / count_B1, jnp.zeros((), dtype))
    return mean_BH.astype(hs.dtype)


def masked_max(hs: jax.Array, lengths: jax.Array) -> jax.Array:
    """Elementwise max of ``hs [B, T, H]`` over the valid steps -> ``[B, H]``; 0 for length 0.

    >>> import jax.numpy as jnp
    >>> from jaxseq import pooling
    >>> hs = jnp.array([[[1.0], [3.0], [99.0]], [[5.0], [7.0], [9.0]]])
    >>> pooling.masked_max(hs, jnp.array([2, 0])).tolist()
    [[3.0], [0.0]]
    """
    hs, lengths, mask_BT1 = _check(hs, lengths)
    if hs.shape[1] == 0:
        return jnp.zeros((hs.shape[0], hs.shape[2]), hs.dtype)
    # A finite fill (not -inf): a length-0 row's max is this constant, replaced by 0 below,
    # and no inf ever enters the computation or its gradient.
    fill = jnp.asarray(jnp.finfo(hs.dtype).min, hs.dtype)
    max_BH = jnp.max(jnp.where(mask_BT1, hs, fill), axis=1)
    has_step_B1 = jnp.any(mask_BT1, axis=1)
    return jnp.where(has_step_B1, max_BH, jnp.zeros((), hs.dtype))
