"""Float64 gradient oracle for the fused engine: its hand-written VJP against finite
differences, not only against the scan path.

For each fused cell (elman, gru, lstm), ``jax.test_util.check_grads`` (reverse mode,
order 1) checks the gradients of the forward, the reverse and the bidirectional
recurrence with ``method=jaxseq.Fused()`` w.r.t. the params, ``xs`` and the initial
carry, in float64, on a masked batch with a full row, a short row and a length-0 row.
The three directions are one function (one compilation per cell).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq as js
from tests.test_cells import random_carry, random_params

B, T, D, H = 3, 4, 2, 3
LENGTHS = np.array([T, 1, 0], np.int32)


@pytest.mark.parametrize("name", ["elman", "gru", "lstm"])
@pytest.mark.gradcheck
def test_fused_gradients_match_finite_differences_in_float64(name):
    cell = {"elman": js.elman, "gru": js.gru, "lstm": js.lstm}[name](H)
    assert js.resolve_method(cell, js.Fused()) == js.Fused()
    assert 0 in LENGTHS and T in LENGTHS  # a length-0 row and a full row
    with jax.enable_x64(True):
        params = {
            "forward": random_params(cell, jax.random.key(0), D, jnp.float64),
            "backward": random_params(cell, jax.random.key(1), D, jnp.float64),
        }
        xs = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, D)))
        carry = tuple(
            jax.vmap(lambda k: random_carry(cell, k, jnp.float64))(
                jax.random.split(jax.random.key(seed), B)
            )
            for seed in (3, 4)
        )
        lengths = jnp.asarray(LENGTHS)
        method = js.Fused()

        @jax.jit
        def f(params, xs, carry):
            forward = js.rnn(cell, params["forward"], xs, lengths, carry=carry[0], method=method)
            reverse = js.rnn(
                cell, params["backward"], xs, lengths, carry=carry[1], reverse=True, method=method
            )
            both = js.bidirectional(cell, params, xs, lengths, carry=carry, method=method)
            assert both[1].dtype == jnp.float64
            return forward, reverse, both

        for leaf in jax.tree.leaves((params, xs, carry)):
            assert leaf.dtype == jnp.float64  # the precondition of a float64 oracle
        check_grads(f, (params, xs, carry), order=1, modes=["rev"])
