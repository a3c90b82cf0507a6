"""Static argument checks shared by the public functions.

Every check runs on shapes and dtypes only, so it costs nothing under ``jit``
(it runs once, at trace time) and raises ``ValueError``/``TypeError`` whose
message names the offending argument. Value checks (label ranges, lengths
within bounds) need concrete arrays: see :mod:`jaxseq.validation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def as_array(x, name: str):
    """``x`` as an array (NumPy and JAX arrays and tracers pass through)."""
    if x is None:
        raise TypeError(f"`{name}` must be an array, got None")
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    try:
        return jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"`{name}` must be an array, got {type(x).__name__}") from e


def check_rank(x, rank: int | Sequence[int], name: str, shape_doc: str = "") -> None:
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if x.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        doc = f" {shape_doc}" if shape_doc else ""
        raise ValueError(
            f"`{name}` must have rank {want}{doc}, got rank {x.ndim} (shape {tuple(x.shape)})"
        )


def check_min_rank(x, rank: int, name: str, shape_doc: str = "") -> None:
    if x.ndim < rank:
        doc = f" {shape_doc}" if shape_doc else ""
        raise ValueError(
            f"`{name}` must have rank >= {rank}{doc}, got rank {x.ndim} (shape {tuple(x.shape)})"
        )


def check_shape(x, shape: Sequence[int | None], name: str, shape_doc: str = "") -> None:
    """``None`` in ``shape`` matches any size."""
    ok = x.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape))
    if not ok:
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        doc = f" {shape_doc}" if shape_doc else ""
        raise ValueError(f"`{name}` must have shape {want}{doc}, got {tuple(x.shape)}")


def check_integer(x, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        raise TypeError(f"`{name}` must have an integer dtype, got {x.dtype}")


def check_floating(x, name: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype, got {x.dtype}")


def check_bool(x, name: str) -> None:
    if x.dtype != jnp.bool_:
        raise TypeError(
            f"`{name}` must be boolean (True = valid step), got dtype {x.dtype}; "
            f"convert with `{name}.astype(bool)` or build one with `jaxseq.length_mask`"
        )


def optional_mask(where, shape: Sequence[int | None], name: str, shape_doc: str = ""):
    """``where`` as a boolean array of ``shape`` (checked), or None if it is None."""
    if where is None:
        return None
    where = as_array(where, name)
    check_bool(where, name)
    check_shape(where, shape, name, shape_doc)
    return where


def check_choice(value, choices: Sequence[str], name: str) -> None:
    if value not in choices:
        raise ValueError(
            f"unknown `{name}` {value!r}; expected one of: " + ", ".join(repr(c) for c in choices)
        )


def is_concrete(x) -> bool:
    """True for host data (NumPy arrays, committed JAX arrays), False for tracers."""
    try:
        np.asarray(x)
    except Exception:  # noqa: BLE001 - any tracer error means "not concrete"
        return False
    return True
