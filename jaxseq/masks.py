"""Lengths and masks: conversions, the last valid step, reversal within length.

Notation: B batch, T time. A ``mask`` is always boolean, True at valid steps,
and a valid prefix (``mask[b, t]`` is True exactly for ``t < lengths[b]``). A
length vector is always ``lengths``: integer ``[B]``, with ``0 <= lengths <= T``.
``length_mask(lengths, T)`` is what the losses and the pooling functions take as
their keyword ``where=``.

Every function here takes ``lengths`` of any integer dtype (int8 ... int64,
uint8 ... uint64) and computes in int32, exactly.
Concrete (host) lengths outside ``[0, T]`` are a ``ValueError`` naming ``lengths``.
Under ``jit`` the values are not visible; a length outside ``[0, T]`` (or one that
does not fit int32) then gives NaN in every float output of its row (see each
function for outputs that cannot hold NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseq import _checks


def _is_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.inexact)


def lengths_array(lengths, max_len: int, name: str = "lengths") -> jax.Array:
    """``lengths`` as int32, exactly (any integer dtype); concrete values outside
    ``[0, max_len]`` are a ``ValueError`` naming ``name``. Traced values are not
    checked here: see :func:`out_of_range` (a value that does not fit int32 is -1)."""
    return _checks.index_array(lengths, name, low=0, high=max_len, what=" (T)")


def out_of_range(lengths: jax.Array, max_len: int) -> jax.Array | None:
    """bool ``[...]``: the int32 ``lengths`` outside ``[0, max_len]``, or None for
    concrete lengths (already checked on the host by :func:`lengths_array`)."""
    if _checks.is_concrete(lengths):
        return None
    return (lengths < 0) | (lengths > max_len)


def poison(tree, bad_B: jax.Array | None):
    """NaN in every float leaf ``[B, ...]`` of ``tree`` at the rows where ``bad_B`` is
    True (a traced length out of range); non-float leaves and ``bad_B=None`` pass."""
    if bad_B is None:
        return tree

    def leaf(x):
        if not _is_float(x.dtype):
            return x
        bad = bad_B.reshape(bad_B.shape + (1,) * (x.ndim - bad_B.ndim))
        return jnp.where(bad, jnp.full((), jnp.nan, x.dtype), x)

    return jax.tree.map(leaf, tree)


def _mask(lengths: jax.Array, max_len: int) -> jax.Array:
    """``t < lengths[..., None]`` for int32 ``lengths`` (unchecked)."""
    steps = jnp.arange(max_len, dtype=jnp.int32).reshape((1,) * lengths.ndim + (max_len,))
    return steps < lengths[..., None]


def length_mask(lengths: jax.Array, max_len: int) -> jax.Array:
    """Boolean mask of the valid steps.

    Args:
      lengths: integer ``[...]`` (usually ``[B]``) in ``[0, max_len]``, the number
        of valid steps of each sequence; any integer dtype (computed in int32).
      max_len: the padded length ``T`` (a Python int, static under ``jit``).

    Returns:
      bool ``[..., T]``: ``mask[..., t] = t < lengths[...]``.

    Raises:
      ValueError: concrete ``lengths`` outside ``[0, max_len]`` (or ``max_len``
        not a non-negative Python int).

    Under ``jit`` the lengths are not checked, and a bool mask cannot hold NaN:
    the formula is applied as it stands, so a length above T gives an all-True
    row and a negative length an all-False row (so does a value that does not
    fit int32, e.g. a uint32 above 2**31 - 1, which becomes -1). Validate traced
    lengths with :func:`jaxseq.validate_lengths` on the host, or use the
    recurrence, which turns such a row into NaN.

    >>> import jaxseq as js, jax.numpy as jnp
    >>> js.length_mask(jnp.array([2, 0, 3]), 3).astype(int).tolist()
    [[1, 1, 0], [0, 0, 0], [1, 1, 1]]
    """
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 0:
        raise ValueError(f"`max_len` must be a non-negative Python int, got {max_len!r}")
    return _mask(lengths_array(lengths, max_len), max_len)


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
      lengths: integer ``[B]`` in ``[0, T]``, any integer dtype.

    Returns:
      ``[B, ...]``: ``hs[b, lengths[b] - 1]``, and zeros where ``lengths[b] == 0``
      (never the padding at index -1).

    Raises:
      ValueError: concrete ``lengths`` outside ``[0, T]``.

    Under ``jit`` a length outside ``[0, T]`` gives a NaN row for floating ``hs``;
    integer or bool ``hs`` cannot hold NaN, and such a row is 0 (False), as for a
    length of 0.

    >>> import jaxseq as js, jax.numpy as jnp
    >>> hs = jnp.array([[[1.0], [2.0], [9.0]], [[3.0], [9.0], [9.0]], [[9.0], [9.0], [9.0]]])
    >>> js.last_valid(hs, jnp.array([2, 1, 0])).tolist()
    [[2.0], [3.0], [0.0]]
    """
    hs = _checks.as_array(hs, "hs")
    _checks.check_min_rank(hs, 2, "hs", "[B, T, ...]")
    lengths = _checks.as_array(lengths, "lengths")
    _checks.check_integer(lengths, "lengths")
    _checks.check_shape(lengths, (hs.shape[0],), "lengths", "[B] (B from `hs`)")
    steps = hs.shape[1]
    lengths = lengths_array(lengths, steps)
    bad_B = out_of_range(lengths, steps)
    if steps == 0:
        return poison(jnp.zeros((hs.shape[0],) + hs.shape[2:], hs.dtype), bad_B)
    index_B = jnp.clip(lengths - 1, 0, steps - 1)
    picked = jnp.take_along_axis(
        hs, index_B.reshape((-1, 1) + (1,) * (hs.ndim - 2)), axis=1
    ).squeeze(1)
    has_step = (lengths > 0) & (lengths <= steps)
    has_step = has_step.reshape((-1,) + (1,) * (hs.ndim - 2))
    return poison(jnp.where(has_step, picked, jnp.zeros((), hs.dtype)), bad_B)


def reverse_index(length: jax.Array, max_len: int) -> jax.Array:
    """Gather indices ``[T]`` that reverse the first ``length`` steps and keep the rest."""
    steps_T = jnp.arange(max_len, dtype=jnp.int32)
    # Internal: callers pass lengths in [0, T]; anything else acts as its clipped value.
    length = jnp.clip(jnp.asarray(length, jnp.int32), 0, max_len)
    return jnp.where(steps_T < length, length - 1 - steps_T, steps_T)


def reverse_within_length(xs: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reverse each sequence within its own length; padding stays where it is.

    Args:
      xs: ``[B, T, ...]``.
      lengths: integer ``[B]`` in ``[0, T]``, any integer dtype.

    Returns:
      ``[B, T, ...]`` with ``out[b, t] = xs[b, lengths[b] - 1 - t]`` for
      ``t < lengths[b]`` and ``out[b, t] = xs[b, t]`` otherwise. It is its own
      inverse.

    Raises:
      ValueError: concrete ``lengths`` outside ``[0, T]``.

    Under ``jit`` a length outside ``[0, T]`` gives a row of NaN for floating
    ``xs``; integer or bool ``xs`` cannot hold NaN, and such a row is returned
    unchanged (not reversed).

    >>> import jaxseq as js, jax.numpy as jnp
    >>> xs = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])
    >>> js.reverse_within_length(xs, jnp.array([3, 2])).tolist()
    [[3, 2, 1, 0], [5, 4, 0, 0]]
    """
    xs = _checks.as_array(xs, "xs")
    _checks.check_min_rank(xs, 2, "xs", "[B, T, ...]")
    lengths = _checks.as_array(lengths, "lengths")
    _checks.check_integer(lengths, "lengths")
    _checks.check_shape(lengths, (xs.shape[0],), "lengths", "[B] (B from `xs`)")
    steps = xs.shape[1]
    lengths = lengths_array(lengths, steps)
    bad_B = out_of_range(lengths, steps)
    if bad_B is not None:
        # Integer xs: a row with a length out of range is left as it is (length 0).
        lengths = jnp.where(bad_B, 0, lengths)
    index_BT = jax.vmap(lambda n: reverse_index(n, steps))(lengths)
    index = index_BT.reshape(index_BT.shape + (1,) * (xs.ndim - 2))
    return poison(jnp.take_along_axis(xs, index, axis=1), bad_B)
