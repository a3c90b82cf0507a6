"""Argument checks shared by every public function (the one place they are written).

Array checks (rank, shape, dtype) are chex assertions: they look at shapes and
dtypes only, so they run once at trace time and cost nothing under ``jit``.
They raise chex's ``AssertionError``, whose message names the argument, the
expected shape in the B/T/C letters of the docstrings and, where there is one,
the fix. Checks of Python scalars and options (sizes, rates, flags, choices)
raise ``TypeError``/``ValueError``. Value checks of arrays (label ranges,
lengths within bounds) need concrete data: see :mod:`jaxseq.validation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import chex
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------- arrays


def as_array(x, name: str):
    """``x`` as an array (NumPy and JAX arrays and tracers pass through)."""
    if x is None:
        raise TypeError(f"`{name}` must be an array, got None")
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:  # a dict, say, is a ValueError in jnp.asarray
        raise TypeError(f"`{name}` must be an array, got {type(x).__name__}") from e


def _doc(shape_doc: str) -> str:
    return f" {shape_doc}" if shape_doc else ""


def check_rank(x, rank: int | Sequence[int], name: str, shape_doc: str = "") -> None:
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    want = " or ".join(str(r) for r in ranks)
    chex.assert_rank(
        x,
        set(ranks) if len(ranks) > 1 else ranks[0],
        custom_message=(
            f"`{name}` must have rank {want}{_doc(shape_doc)}, "
            f"got rank {x.ndim} (shape {tuple(x.shape)})"
        ),
    )


def check_min_rank(x, rank: int, name: str, shape_doc: str = "") -> None:
    chex.assert_rank(
        x,
        set(range(rank, max(rank, x.ndim) + 1)),
        custom_message=(
            f"`{name}` must have rank >= {rank}{_doc(shape_doc)}, "
            f"got rank {x.ndim} (shape {tuple(x.shape)})"
        ),
    )


def check_shape(x, shape: Sequence[int | None], name: str, shape_doc: str = "") -> None:
    """``None`` in ``shape`` matches any size."""
    want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
    chex.assert_shape(
        x,
        tuple(shape),
        custom_message=f"`{name}` must have shape {want}{_doc(shape_doc)}, got {tuple(x.shape)}",
    )


def check_integer(x, name: str) -> None:
    chex.assert_type(
        x, jnp.integer, custom_message=f"`{name}` must have an integer dtype, got {x.dtype}"
    )


_INT32 = np.iinfo(np.int32)


def index_array(x, name: str, *, low: int | None = None, high: int | None = None, what: str = ""):
    """An integer array argument (labels, lengths, class or token ids) as int32, exactly.

    Every public function that takes integer arrays converts them here, so each
    integer dtype (int8 ... int64, uint8 ... uint64) gives exactly the int32
    result or an error, never a wrapped or clipped value:

    * non-integer dtypes (bool, float) are a chex ``AssertionError`` naming ``name``;
    * host data (NumPy arrays, Python lists, concrete JAX arrays) is checked on the
      host: a value that does not fit int32 is a ``ValueError`` naming ``name``,
      the value and its index; so is a value outside ``[low, high]`` when the
      bounds are given (e.g. lengths in ``[0, T]``);
    * under ``jit`` (a tracer) a value that does not fit int32 (possible for uint32,
      or for int64/uint64 with ``jax_enable_x64``) becomes -1, which every caller
      treats as out of range (NaN in the result). Without x64, JAX itself converts
      an int64 argument of a jitted function to int32 before jaxseq sees it: that
      is JAX's conversion, outside jaxseq's reach; validate such data on the host.

    ``what`` names the bounds in the message, e.g. ``" (T)"``.
    """
    if x is None:
        raise TypeError(f"`{name}` must be an array, got None")
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise TypeError(f"`{name}` must be an array, got {type(x).__name__}") from e
        if x.dtype == object:
            raise TypeError(f"`{name}` must be an integer array, got {x.dtype}")
    check_integer(x, name)
    if is_concrete(x):
        host = np.asarray(x)
        if host.size:
            _check_host_range(host, name, low, high, what)
        return jnp.asarray(host.astype(np.int32)) if host.dtype != np.int32 else jnp.asarray(host)
    if x.dtype == jnp.int32:
        return x
    if jnp.iinfo(x.dtype).max > _INT32.max or jnp.iinfo(x.dtype).min < _INT32.min:
        fits = (
            x <= jnp.asarray(_INT32.max, x.dtype)
            if jnp.iinfo(x.dtype).min == 0
            else ((x >= jnp.asarray(_INT32.min, x.dtype)) & (x <= jnp.asarray(_INT32.max, x.dtype)))
        )
        return jnp.where(fits, x.astype(jnp.int32), jnp.int32(-1))
    return x.astype(jnp.int32)


def _check_host_range(host: np.ndarray, name: str, low, high, what: str) -> None:
    lo = int(low) if low is not None else int(_INT32.min)
    hi = int(high) if high is not None else int(_INT32.max)
    # Compare as Python ints: exact for every dtype, uint64 included.
    bad = (host < lo) if lo > np.iinfo(host.dtype).min else np.zeros(host.shape, bool)
    if hi < np.iinfo(host.dtype).max:
        bad = bad | (host > hi)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        value = int(host[index])
        if value < _INT32.min or value > _INT32.max:
            raise ValueError(
                f"`{name}` holds {value} at index {index}, which does not fit int32 "
                f"(dtype {host.dtype}); jaxseq computes {name} in int32"
            )
        raise ValueError(
            f"`{name}` must be in [{low if low is not None else '-inf'}, "
            f"{high if high is not None else 'inf'}]{what}, got {value} at index {index}"
        )


def check_floating(x, name: str) -> None:
    chex.assert_type(
        x, jnp.floating, custom_message=f"`{name}` must have a floating dtype, got {x.dtype}"
    )


#: What True means in a mask with one entry per sequence (``where`` ``[B]``).
ROW_MEANING = "True = the sequence counts"


def check_bool(x, name: str, meaning: str | None = None) -> None:
    """A chex ``AssertionError`` naming ``name`` unless ``x`` is boolean. ``meaning``
    says what True means (default: a step mask, "True = valid step")."""
    if meaning is None:
        hint = f"(True = valid step), got dtype {x.dtype}; convert with `{name}.astype(bool)` "
        hint += "or build one with `jaxseq.length_mask`"
    else:
        hint = f"({meaning}), got dtype {x.dtype}; convert with `{name}.astype(bool)`"
    chex.assert_type(x, bool, custom_message=f"`{name}` must be boolean {hint}")


def shape_error(message: str) -> AssertionError:
    """The error of a shape check that chex has no assertion for (pytree structures,
    sizes that depend on params): the same type as chex's, ``raise shape_error(...)``."""
    return AssertionError(message)


def optional_mask(
    where,
    shape: Sequence[int | None],
    name: str = "where",
    shape_doc: str = "",
    meaning: str | None = None,
):
    """``where`` as a boolean array of ``shape`` (checked), or None if it is None;
    ``meaning`` as in :func:`check_bool`."""
    if where is None:
        return None
    where = as_array(where, name)
    check_bool(where, name, meaning)
    check_shape(where, shape, name, shape_doc)
    return where


def is_concrete(x) -> bool:
    """True for host data (NumPy arrays, committed JAX arrays), False for tracers."""
    try:
        np.asarray(x)
    except Exception:  # noqa: BLE001 - any tracer error means "not concrete"
        return False
    return True


# ---------------------------------------------------------------------------- scalars


def check_choice(value, choices: Sequence[str], name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string, got {value!r}")
    if value not in choices:
        raise ValueError(
            f"unknown `{name}` {value!r}; expected one of: " + ", ".join(repr(c) for c in choices)
        )


def check_flag(value, name: str) -> None:
    """``value`` is a Python bool."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a Python bool, got {value!r}")


def check_int(value, name: str, minimum: int, *, optional: bool = False) -> None:
    """``value`` is a Python int ``>= minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        kind = "a Python int or None" if optional else "a Python int"
        raise TypeError(f"`{name}` must be {kind}, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")


def check_float(value, name: str) -> None:
    """``value`` is a finite Python float (or int)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a Python float, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")


def check_rate(value, name: str) -> None:
    """``value`` is a probability in ``[0, 1)`` (dropout rates, label smoothing)."""
    check_float(value, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {value}")
