"""Pooling of per-step outputs over the valid steps of each sequence.

Notation: B batch, T time, H features. The pooling functions take
``hs [B, T, H]`` and the keyword-only boolean ``where [B, T]`` (True at the
steps that count, e.g. ``jaxseq.length_mask(lengths, T)``; default: every step)
and return ``[B, H]``, looking only at the steps where ``where`` is True: the
others may hold anything (NaN included) and get a gradient of exactly 0. A row
with no valid step pools to 0 (never NaN or -inf), with a zero gradient.

* :func:`masked_mean`: the mean over valid steps;
* :func:`masked_max`: the elementwise max over valid steps;
* :func:`last_valid` (from :mod:`jaxseq.masks`): the output at the last valid
  step, ``hs[b, lengths[b] - 1]`` (it needs ``lengths``: validity is a prefix there).

Sums are accumulated in float32 (float64 for float64 ``hs``) and the result has
the dtype of ``hs``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseq import _checks, cells
from jaxseq.masks import last_valid

__all__ = ["last_valid", "masked_max", "masked_mean"]


def _check(hs, where):
    hs = _checks.as_array(hs, "hs")
    _checks.check_rank(hs, 3, "hs", "[B, T, H]")
    _checks.check_floating(hs, "hs")
    where_BT = _checks.optional_mask(where, hs.shape[:2], "where", "[B, T] (B, T from `hs`)")
    if where_BT is None:
        where_BT = jnp.ones(hs.shape[:2], bool)
    return hs, where_BT[:, :, None]


def masked_mean(hs: jax.Array, *, where: jax.Array | None = None) -> jax.Array:
    """Mean of ``hs [B, T, H]`` over the valid steps of each sequence -> ``[B, H]``.

    ``out[b] = sum_{t: where[b, t]} hs[b, t] / |{t: where[b, t]}|``, and 0 for a
    row with no valid step.

    >>> import jax.numpy as jnp, jaxseq as js
    >>> hs = jnp.array([[[1.0], [3.0], [99.0]], [[5.0], [7.0], [9.0]]])
    >>> js.masked_mean(hs, where=js.length_mask(jnp.array([2, 0]), 3)).tolist()
    [[2.0], [0.0]]
    """
    hs, mask_BT1 = _check(hs, where)
    dtype = cells.compute_dtype(hs.dtype)
    # First where: padding (even NaN) never enters the sum or its gradient.
    total_BH = jnp.sum(jnp.where(mask_BT1, hs, jnp.zeros((), hs.dtype)), axis=1, dtype=dtype)
    count_B1 = jnp.sum(mask_BT1, axis=1, dtype=jnp.int32)
    has_step_B1 = count_B1 > 0
    count_B1 = jnp.where(has_step_B1, count_B1, 1).astype(dtype)
    mean_BH = jnp.where(has_step_B1, total_BH / count_B1, jnp.zeros((), dtype))
    return mean_BH.astype(hs.dtype)


def masked_max(hs: jax.Array, *, where: jax.Array | None = None) -> jax.Array:
    """Elementwise max of ``hs [B, T, H]`` over the valid steps -> ``[B, H]``; 0 for none.

    >>> import jax.numpy as jnp, jaxseq as js
    >>> hs = jnp.array([[[1.0], [3.0], [99.0]], [[5.0], [7.0], [9.0]]])
    >>> js.masked_max(hs, where=js.length_mask(jnp.array([2, 0]), 3)).tolist()
    [[3.0], [0.0]]
    """
    hs, mask_BT1 = _check(hs, where)
    if hs.shape[1] == 0:
        return jnp.zeros((hs.shape[0], hs.shape[2]), hs.dtype)
    # A finite fill (not -inf): a length-0 row's max is this constant, replaced by 0 below,
    # and no inf ever enters the computation or its gradient.
    fill = jnp.asarray(jnp.finfo(hs.dtype).min, hs.dtype)
    max_BH = jnp.max(jnp.where(mask_BT1, hs, fill), axis=1)
    has_step_B1 = jnp.any(mask_BT1, axis=1)
    return jnp.where(has_step_B1, max_BH, jnp.zeros((), hs.dtype))
