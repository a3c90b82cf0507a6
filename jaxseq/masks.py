"""Lengths and masks: conversions, the last valid step, reversal within length.

Notation: B batch, T time. A ``mask`` is always boolean, True at valid steps,
and a valid prefix (``mask[b, t]`` is True exactly for ``t < lengths[b]``). A
length vector is always ``lengths``: integer ``[B]``, with ``0 <= lengths <= T``.
``length_mask(lengths, T)`` is what the losses and the pooling functions take as
their keyword ``where=``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseq import _checks, validation


def length_mask(lengths: jax.Array, max_len: int) -> jax.Array:
    """Boolean mask of the valid steps.

    Args:
      lengths: integer ``[...]`` (usually ``[B]``), the number of valid steps of
        each sequence.
      max_len: the padded length ``T`` (a Python int, static under ``jit``).

    Returns:
      bool ``[..., T]``: ``mask[..., t] = t < lengths[...]``.

    >>> import jaxseq as js, jax.numpy as jnp
    >>> js.length_mask(jnp.array([2, 0, 3]), 3).astype(int).tolist()
    [[1, 1, 0], [0, 0, 0], [1, 1, 1]]
    """
    lengths = _checks.as_array(lengths, "lengths")
    _checks.check_integer(lengths, "lengths")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 0:
        raise ValueError(f"`max_len` must be a non-negative Python int, got {max_len!r}")
    steps = jnp.arange(max_len, dtype=lengths.dtype).reshape((1,) * lengths.ndim + (max_len,))
    return steps < lengths[..., None]


def mask_lengths(mask: jax.Array) -> jax.Array:
    """The length of each sequence of a prefix mask: bool ``[..., T]`` -> int32 ``[...]``.

    The inverse of :func:`length_mask`.

    >>> import jaxseq as js, jax.numpy as jnp
    >>> js.mask_lengths(js.length_mask(jnp.array([2, 0, 3]), 3)).tolist()
    [2, 0, 3]
    """
    mask = _checks.as_array(mask, "mask")
    _checks.check_bool(mask, "mask")
    _checks.check_min_rank(mask, 1, "mask", "[..., T]")
    return jnp.sum(mask, axis=-1, dtype=jnp.int32)


def last_valid(hs: jax.Array, lengths: jax.Array) -> jax.Array:
    """The element at the last valid step of each sequence.

    Args:
      hs: ``[B, T, ...]`` per-step values (e.g. RNN outputs).
      lengths: integer ``[B]``.

    Returns:
      ``[B, ...]``: ``hs[b, lengths[b] - 1]``, and zeros where ``lengths[b] == 0``
      (never the padding at index -1).

    >>> import jaxseq as js, jax.numpy as jnp
    >>> hs = jnp.array([[[1.0], [2.0], [9.0]], [[3.0], [9.0], [9.0]], [[9.0], [9.0], [9.0]]])
    >>> js.last_valid(hs, jnp.array([2, 1, 0])).tolist()
    [[2.0], [3.0], [0.0]]
    """
    hs = _checks.as_array(hs, "hs")
    lengths = _checks.as_array(lengths, "lengths")
    _checks.check_min_rank(hs, 2, "hs", "[B, T, ...]")
    _checks.check_integer(lengths, "lengths")
    _checks.check_shape(lengths, (hs.shape[0],), "lengths", "[B] (B from `hs`)")
    index_B = jnp.clip(lengths - 1, 0, max(hs.shape[1] - 1, 0))
    if hs.shape[1] == 0:
        return jnp.zeros((hs.shape[0],) + hs.shape[2:], hs.dtype)
    picked = jnp.take_along_axis(
        hs, index_B.reshape((-1, 1) + (1,) * (hs.ndim - 2)), axis=1
    ).squeeze(1)
    has_step = (lengths > 0).reshape((-1,) + (1,) * (hs.ndim - 2))
    return jnp.where(has_step, picked, jnp.zeros((), hs.dtype))


def reverse_index(length: jax.Array, max_len: int) -> jax.Array:
    """Gather indices ``[T]`` that reverse the first ``length`` steps and keep the rest."""
    steps_T = jnp.arange(max_len, dtype=jnp.int32)
    # A length outside [0, T] (possible only under jit) acts as its clipped value.
    length = jnp.clip(jnp.asarray(length, jnp.int32), 0, max_len)
    return jnp.where(steps_T < length, length - 1 - steps_T, steps_T)


def reverse_within_length(xs: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reverse each sequence within its own length; padding stays where it is.

    Args:
      xs: ``[B, T, ...]``.
      lengths: integer ``[B]`` in ``[0, T]`` (checked when concrete; under
        ``jit`` a length above T acts as T and a negative one as 0).

    Returns:
      ``[B, T, ...]`` with ``out[b, t] = xs[b, lengths[b] - 1 - t]`` for
      ``t < lengths[b]`` and ``out[b, t] = xs[b, t]`` otherwise. It is its own
      inverse.

    >>> import jaxseq as js, jax.numpy as jnp
    >>> xs = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])
    >>> js.reverse_within_length(xs, jnp.array([3, 2])).tolist()
    [[3, 2, 1, 0], [5, 4, 0, 0]]
    """
    xs = _checks.as_array(xs, "xs")
    lengths = _checks.as_array(lengths, "lengths")
    _checks.check_min_rank(xs, 2, "xs", "[B, T, ...]")
    _checks.check_integer(lengths, "lengths")
    _checks.check_shape(lengths, (xs.shape[0],), "lengths", "[B] (B from `xs`)")
    if _checks.is_concrete(lengths):
        validation.validate_lengths(lengths, xs.shape[1])
    index_BT = jax.vmap(lambda n: reverse_index(n, xs.shape[1]))(lengths)
    index = index_BT.reshape(index_BT.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, index, axis=1)
