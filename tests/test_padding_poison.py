"""Poisoned padding changes nothing, under every method and option.

The padded steps of ``xs`` hold NaN, +inf, -inf or 1e30. Against the same batch with
zero padding, every output (``hs`` at valid steps, zeros at padded steps, every final
carry) and every gradient (w.r.t. the params and ``xs``) must be exactly equal, and the
gradients finite, with ``rnn`` in reverse, ``bidirectional`` (a forward and a reverse
pass) and a 2-layer ``stack`` in one function. The batch has a length-0 row and a full
row.

Methods: for elman/gru/lstm, ``Fused()`` and ``Scan`` with each value of ``unroll``
(1, 2), ``remat`` (False, True) and ``hoist_projection`` (None, True, False) in four
combinations; for the linear cells (mingru, minlstm, lru), ``Scan`` (unroll 1 and 2,
remat False and True) and ``Parallel`` (remat False and True). One compiled function
per case, called once per padding value.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js
from tests.test_cells import random_params

B, T, D, H = 3, 4, 2, 3
LENGTHS = np.array([T, 0, 2], np.int32)
POISONS = (np.nan, np.inf, -np.inf, 1e30)

NONLINEAR = {
    "Fused": js.Fused(),
    "Scan": js.Scan(),  # unroll 1, remat False, hoist None
    "Scan_u2_hoist": js.Scan(unroll=2, hoist_projection=True),
    "Scan_remat_hoist": js.Scan(remat=True, hoist_projection=True),
    "Scan_u2_remat_nohoist": js.Scan(unroll=2, remat=True, hoist_projection=False),
}
LINEAR = {
    "Scan": js.Scan(),
    "Scan_u2_remat": js.Scan(unroll=2, remat=True),
    "Parallel": js.Parallel(),
    "Parallel_remat": js.Parallel(remat=True),
}
CELLS = {
    "elman": js.elman(H),
    "gru": js.gru(H),
    "lstm": js.lstm(H),
    "mingru": js.mingru(H),
    "minlstm": js.minlstm(H),
    "lru": js.lru(H),
}
CASES = [
    pytest.param(name, method_id, id=f"{name}-{method_id}")
    for name in CELLS
    for method_id in (LINEAR if name in ("mingru", "minlstm", "lru") else NONLINEAR)
]


def _params(cell):
    def pair(seed, width):
        return {
            "forward": random_params(cell, jax.random.key(seed), width),
            "backward": random_params(cell, jax.random.key(seed + 1), width),
        }

    return {"one": pair(0, D)["forward"], "bidi": pair(2, D), "stack": [pair(4, D), pair(6, H)]}


def _total(tree, seed):
    """A scalar that weighs every element of every leaf differently (so no gradient cancels)."""
    leaves = jax.tree.leaves(tree)
    return sum(jnp.sum(jnp.cos(leaf * (seed + i + 1))) for i, leaf in enumerate(leaves))


def _run(cell, method, params, xs):
    lengths = jnp.asarray(LENGTHS)
    outputs = {
        "reverse": js.rnn(cell, params["one"], xs, lengths, reverse=True, method=method),
        "bidirectional": js.bidirectional(cell, params["bidi"], xs, lengths, method=method),
        "stack": js.stack(
            cell, [p["forward"] for p in params["stack"]], xs, lengths, method=method
        ),
    }
    loss = sum(_total(out, seed) for seed, out in enumerate(outputs.values()))
    return loss, outputs


GRAD = jax.jit(jax.value_and_grad(_run, argnums=(2, 3), has_aux=True), static_argnums=(0, 1))


@pytest.mark.parametrize("name, method_id", CASES)
@pytest.mark.padding_invariance
def test_poisoned_padding_changes_nothing(name, method_id):
    cell = CELLS[name]
    method = (LINEAR if name in ("mingru", "minlstm", "lru") else NONLINEAR)[method_id]
    params = _params(cell)
    valid = np.arange(T)[None, :] < LENGTHS[:, None]
    assert not valid[1].any() and valid[0].all()  # a length-0 row and a full-length row
    xs = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
    clean_xs = jnp.asarray(np.where(valid[..., None], xs, 0.0))
    clean = GRAD(cell, method, params, clean_xs)
    (_, outputs), _ = clean
    for key in ("reverse", "bidirectional", "stack"):
        assert not np.asarray(outputs[key][1])[~valid].any()  # padded outputs are 0
    for poison in POISONS:
        poisoned = jnp.asarray(np.where(valid[..., None], xs, poison))
        assert (np.asarray(poisoned)[~valid] == poison).all() or np.isnan(poison)  # poisoned
        assert not np.isfinite(np.asarray(poisoned)[~valid]).any() or poison == 1e30
        got = GRAD(cell, method, params, poisoned)
        (_, _), (grad_params, grad_xs) = got
        for leaf in jax.tree.leaves((got[0], grad_params, grad_xs)):
            assert np.isfinite(np.asarray(leaf)).all(), poison
        assert not np.asarray(grad_xs)[~valid].any()  # exactly 0 at padded steps
        chex.assert_trees_all_equal(got, clean)
