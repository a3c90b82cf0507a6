"""Lengths and masks at the edges: every integer dtype, lengths outside [0, T] (concrete
and traced), empty batch and time axes.

References are plain NumPy (``t < n`` loops); int64/uint64 run under ``jax.enable_x64``
so that JAX keeps their dtype (without it, JAX itself narrows them to 32 bits).
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js

INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
BIG_T = 300  # above 255: an arange in uint8 would wrap and mark late steps valid


def x64_for(dtype):
    """``jax.enable_x64`` for the 64-bit dtypes (else JAX narrows them), else nothing."""
    return jax.enable_x64(True) if np.dtype(dtype).itemsize == 8 else contextlib.nullcontext()


def ref_mask(lengths, max_len):
    return np.array([[t < int(n) for t in range(max_len)] for n in lengths], bool)


def ref_reverse(xs, lengths):
    out = np.array(xs, copy=True)
    for b, n in enumerate(lengths):
        out[b, : int(n)] = np.asarray(xs)[b, : int(n)][::-1]
    return out


def ref_last(hs, lengths):
    hs = np.asarray(hs)
    return np.stack(
        [
            hs[b, int(n) - 1] if n > 0 else np.zeros(hs.shape[2:], hs.dtype)
            for b, n in enumerate(lengths)
        ]
    )


@pytest.mark.dtype
def test_every_integer_dtype_gives_the_int32_result():
    # Values that fit every dtype, with max_len above 255 (catches arithmetic in the
    # lengths' own dtype).
    lengths_np = np.array([0, 3, 127])
    assert BIG_T > np.iinfo(np.uint8).max  # the precondition of this case
    xs = np.arange(3 * 130, dtype=np.float32).reshape(3, 130, 1)
    ints = np.arange(3 * 130, dtype=np.int32).reshape(3, 130)
    want_mask = ref_mask(lengths_np, BIG_T)
    want_rev, want_rev_int = ref_reverse(xs, lengths_np), ref_reverse(ints, lengths_np)
    want_last = ref_last(xs, lengths_np)

    def all_three(lengths):
        return (
            js.length_mask(lengths, BIG_T),
            js.reverse_within_length(xs, lengths),
            js.reverse_within_length(ints, lengths),
            js.last_valid(xs, lengths),
        )

    jitted = jax.jit(all_three)
    # The 64-bit dtypes together, in one x64 context (JAX narrows them without it).
    for group in (INT_DTYPES[:3] + INT_DTYPES[4:7], ("int64", "uint64")):
        with x64_for(group[0]):
            for dtype in group:
                lengths = lengths_np.astype(dtype)
                for how, fn, arg in (
                    ("eager", all_three, lengths),
                    ("jit", jitted, jnp.asarray(lengths)),
                ):
                    assert arg.dtype == np.dtype(dtype), (dtype, how)  # really that dtype
                    mask, rev, rev_int, last = fn(arg)
                    assert mask.dtype == jnp.bool_
                    np.testing.assert_array_equal(mask, want_mask, err_msg=f"{dtype} {how}")
                    np.testing.assert_array_equal(rev, want_rev, err_msg=f"{dtype} {how}")
                    np.testing.assert_array_equal(rev_int, want_rev_int, err_msg=f"{dtype} {how}")
                    np.testing.assert_array_equal(last, want_last, err_msg=f"{dtype} {how}")


@pytest.mark.bad_input
def test_concrete_lengths_outside_0_t_raise_naming_lengths():
    xs = jnp.array([[1.0, 2.0, 3.0, 0.0]])
    calls = {
        "length_mask": lambda n: js.length_mask(n, 4),
        "reverse_within_length": lambda n: js.reverse_within_length(xs, n),
        "last_valid": lambda n: js.last_valid(xs[..., None], n),
    }
    for name, call in calls.items():
        for bad in (np.array([5]), np.array([-1]), jnp.array([5], jnp.uint8)):
            with pytest.raises(ValueError, match=r"`lengths` must be in \[0, 4\] \(T\)"):
                call(bad)
        # A value that does not fit int32 (uint32 / int64 / uint64 host data).
        for bad in (np.array([2**32 - 1], np.uint32), np.array([2**40], np.int64)):
            with pytest.raises(ValueError, match="`lengths` holds .* does not fit int32"):
                call(bad)
        with pytest.raises(AssertionError, match="`lengths` must have an integer dtype"):
            call(np.array([1.0]))
        with pytest.raises(AssertionError, match="`lengths` must have an integer dtype"):
            call(np.array([True]))
        assert name  # every function was called


@pytest.mark.numerics
def test_traced_lengths_outside_0_t():
    # Float outputs of such a row are NaN; outputs that cannot hold NaN do what the
    # docstrings say: the mask applies t < n as it stands, integer xs stay unreversed,
    # integer last_valid gives 0.
    xs = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 1.0, 2.0, 3.0]])
    ints = xs.astype(jnp.int32)
    wild = np.array([9, -3, 2])
    assert ((wild < 0) | (wild > 4)).tolist() == [True, True, False]  # two bad rows

    @jax.jit
    def run(n):
        return (
            js.length_mask(n, 4),
            js.reverse_within_length(xs, n),
            js.reverse_within_length(ints, n),
            js.last_valid(xs[..., None], n),
            js.last_valid(ints[..., None], n),
        )

    mask, rev, rev_int, last, last_int = run(jnp.asarray(wild))
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]])
    assert bool(jnp.all(jnp.isnan(rev[:2]))) and bool(jnp.all(jnp.isnan(last[:2])))
    np.testing.assert_array_equal(rev[2], [1.0, 9.0, 2.0, 3.0])
    np.testing.assert_array_equal(last[2], [1.0])
    np.testing.assert_array_equal(rev_int[:2], ints[:2])  # unchanged
    np.testing.assert_array_equal(rev_int[2], [1, 9, 2, 3])
    np.testing.assert_array_equal(last_int, [[0], [0], [1]])
    # A traced uint32 that does not fit int32 is out of range too (never a wrapped -1 + 1).
    mask, rev, _, last, _ = run(jnp.array([2**32 - 1, 2**31, 4], jnp.uint32))
    np.testing.assert_array_equal(mask, [[0] * 4, [0] * 4, [1] * 4])
    assert bool(jnp.all(jnp.isnan(rev[:2]))) and bool(jnp.all(jnp.isnan(last[:2])))
    np.testing.assert_array_equal(rev[2], xs[2, ::-1])


@pytest.mark.numerics
def test_empty_batch_and_time_axes():
    for batch, steps in ((0, 3), (2, 0), (0, 0)):
        lengths = np.zeros((batch,), np.int32)
        xs = jnp.ones((batch, steps, 2))
        assert js.length_mask(lengths, steps).shape == (batch, steps)
        assert js.reverse_within_length(xs, lengths).shape == (batch, steps, 2)
        last = js.last_valid(xs, lengths)
        assert last.shape == (batch, 2) and not np.asarray(last).any()
        assert js.mask_lengths(js.length_mask(lengths, steps)).shape == (batch,)
    with pytest.raises(ValueError, match=r"`lengths` must be in \[0, 0\]"):
        js.length_mask(np.array([1]), 0)
    with pytest.raises(ValueError, match="`max_len`"):
        js.length_mask(np.array([1]), -1)
