"""Lengths and masks at the edges: lengths outside [0, T], concrete and traced."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js


@pytest.mark.bad_input
def test_reverse_within_length_rejects_concrete_lengths_outside_0_t():
    xs = jnp.array([[1.0, 2.0, 3.0, 0.0]])
    for bad in (5, -1):
        with pytest.raises(ValueError, match="`lengths` must be in"):
            js.reverse_within_length(xs, jnp.array([bad]))


@pytest.mark.numerics
def test_reverse_within_length_clips_traced_lengths_like_the_recurrence():
    # Under jit the values are not visible: a length above T acts as T, a negative one as 0.
    xs = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    got = jax.jit(js.reverse_within_length)(xs, jnp.array([9, -3]))
    np.testing.assert_array_equal(np.asarray(got), [[4.0, 3.0, 2.0, 1.0], [5.0, 6.0, 7.0, 8.0]])
    clipped = js.reverse_within_length(xs, jnp.array([4, 0]))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(clipped))
