"""Cells: one step against the NumPy reference and PyTorch, init, dtypes, gradients, checks.

Tolerance: float32 JAX against the float64 reference, ``atol = rtol = 1e-5``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxseq import cells
from tests import reference_rnn as ref

D, H = 3, 5
TOL = dict(atol=1e-5, rtol=1e-5)
CELLS = {"elman": cells.elman(H), "gru": cells.gru(H), "lstm": cells.lstm(H)}
BIAS_NAMES = ("b", "b_i", "b_h")


def random_params(cell, key, input_size=D, dtype=jnp.float32):
    """``cell.init`` with the (zero) biases replaced by random values, so biases are tested."""
    params = cell.init(key, input_size)
    out = {}
    for i, (name, value) in enumerate(sorted(params.items())):
        if name in BIAS_NAMES:
            value = 0.5 * jax.random.normal(jax.random.fold_in(key, i), value.shape)
        out[name] = value.astype(dtype)
    return out


def random_carry(cell, key, dtype=jnp.float32):
    leaves, treedef = jax.tree.flatten(cell.initial_carry(None, dtype))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, leaf.shape, dtype) for k, leaf in zip(keys, leaves)]
    )


def to_numpy(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.reference
def test_step_matches_reference(name):
    cell = CELLS[name]
    params = random_params(cell, jax.random.key(0))
    carry = random_carry(cell, jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (D,))
    new = cell.step(params, carry, cell.project(params, x))
    expected = ref.STEPS[name](to_numpy(params), to_numpy(carry), np.asarray(x, np.float64))
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **TOL), new, expected)
    np.testing.assert_allclose(cell.output(new), ref.output(name, expected), **TOL)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_project_on_any_leading_dims(name):
    cell = CELLS[name]
    params = random_params(cell, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (2, 4, D))
    xp = cell.project(params, xs)
    assert xp.shape == (2, 4, {"elman": 1, "gru": 3, "lstm": 4}[name] * H)
    for b in range(2):
        for t in range(4):
            np.testing.assert_allclose(xp[b, t], cell.project(params, xs[b, t]), atol=1e-6)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.numerics
def test_init_shapes_and_statistics(name):
    cell = CELLS[name]
    params = cell.init(jax.random.key(0), 7)
    gates = {"elman": 1, "gru": 3, "lstm": 4}[name]
    expected = {
        "elman": {"U": (7, H), "W": (H, H), "b": (H,)},
        "gru": {"W_i": (7, 3 * H), "W_h": (H, 3 * H), "b_i": (3 * H,), "b_h": (3 * H,)},
        "lstm": {"W_i": (7, 4 * H), "W_h": (H, 4 * H), "b": (4 * H,)},
    }[name]
    assert {k: v.shape for k, v in params.items()} == expected
    assert all(v.dtype == jnp.float32 for v in params.values())
    w_in, w_rec = (params["U"], params["W"]) if name == "elman" else (params["W_i"], params["W_h"])
    # Glorot-uniform per [D, H] gate block, orthogonal per [H, H] block.
    assert float(jnp.max(jnp.abs(w_in))) <= np.sqrt(6.0 / (7 + H)) + 1e-6
    for k in range(gates):
        block = np.asarray(w_rec[:, k * H : (k + 1) * H], np.float64)
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    biases = {k: np.asarray(v) for k, v in params.items() if k in BIAS_NAMES}
    if name == "lstm":  # forget-gate block (i, f, g, o) is 1 by default
        np.testing.assert_array_equal(biases["b"][H : 2 * H], 1.0)
        biases["b"] = np.delete(biases["b"], np.s_[H : 2 * H])
    assert all(not b.any() for b in biases.values())


@pytest.mark.dtype
def test_lstm_forget_bias_option_and_param_dtype():
    params = cells.lstm(H, forget_bias=0.0).init(jax.random.key(0), D)
    assert not np.asarray(params["b"]).any()
    cell = cells.gru(H, param_dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), D)
    assert all(v.dtype == jnp.bfloat16 for v in params.values())
    # bfloat16 params and inputs: projected and stepped in float32 with a float32 carry.
    x = jnp.ones((D,), jnp.bfloat16)
    xp = cell.project(params, x)
    assert xp.dtype == jnp.float32
    assert cell.step(params, cell.initial_carry(params), xp).dtype == jnp.float32


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_initial_carry(name):
    cell = CELLS[name]
    carry = cell.initial_carry(cell.init(jax.random.key(0), D), jnp.bfloat16)
    for leaf in jax.tree.leaves(carry):
        assert leaf.shape == (H,) and leaf.dtype == jnp.bfloat16 and not leaf.any()
    assert cell.output(carry).shape == (H,)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.gradcheck
def test_step_check_grads_float64(name):
    cell = CELLS[name]
    rng = np.random.default_rng(0)
    params = random_params(cell, jax.random.key(0))
    carry = random_carry(cell, jax.random.key(1))
    with jax.enable_x64(True):
        params, carry = jax.tree.map(
            lambda a: jnp.asarray(np.asarray(a, np.float64)), (params, carry)
        )
        x = jnp.asarray(rng.normal(size=(D,)))

        @jax.jit
        def f(params, carry, x):
            return cell.step(params, carry, cell.project(params, x))

        check_grads(f, (params, carry, x), order=1, modes=["rev"])


@pytest.mark.retrace
def test_cells_compare_by_value():
    assert cells.gru(H) == cells.gru(H) and hash(cells.gru(H)) == hash(cells.gru(H))
    assert cells.lstm(H) != cells.lstm(H, forget_bias=0.0)
    assert cells.elman(H) != cells.elman(H + 1)
    assert cells.elman(H) != cells.gru(H)


@pytest.mark.reference
def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    xs = np.random.default_rng(0).normal(size=(2, 6, D)).astype(np.float32)
    for name, module in (
        ("elman", torch.nn.RNN(D, H, batch_first=True)),
        ("gru", torch.nn.GRU(D, H, batch_first=True)),
        ("lstm", torch.nn.LSTM(D, H, batch_first=True)),
    ):
        w = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        if name == "elman":
            params = {"U": w["weight_ih_l0"].T, "W": w["weight_hh_l0"].T}
            params["b"] = w["bias_ih_l0"] + w["bias_hh_l0"]
        elif name == "gru":
            params = {"W_i": w["weight_ih_l0"].T, "W_h": w["weight_hh_l0"].T}
            params.update(b_i=w["bias_ih_l0"], b_h=w["bias_hh_l0"])
        else:
            params = {"W_i": w["weight_ih_l0"].T, "W_h": w["weight_hh_l0"].T}
            params["b"] = w["bias_ih_l0"] + w["bias_hh_l0"]
        params = {k: jnp.asarray(v) for k, v in params.items()}
        with torch.no_grad():
            expected = module(torch.from_numpy(xs))[0].numpy()
        cell = CELLS[name]
        for b in range(2):
            carry = cell.initial_carry(params)
            for t in range(6):
                carry = cell.step(params, carry, cell.project(params, jnp.asarray(xs[b, t])))
                np.testing.assert_allclose(cell.output(carry), expected[b, t], **TOL)


@pytest.mark.bad_input
def test_bad_arguments():
    with pytest.raises(ValueError, match="`hidden_size`"):
        cells.gru(0)
    with pytest.raises(TypeError, match="`forget_bias`"):
        cells.lstm(H, forget_bias="1")
    cell = CELLS["lstm"]
    with pytest.raises(ValueError, match="`input_size`"):
        cell.init(jax.random.key(0), 0)
    params = cell.init(jax.random.key(0), D)
    with pytest.raises(AssertionError, match="`x`.*D = 3"):
        cell.project(params, jnp.ones((4, D + 1)))
    with pytest.raises(AssertionError, match="`x` must have a floating dtype"):
        cell.project(params, jnp.ones((D,), jnp.int32))
    xp = cell.project(params, jnp.ones((D,)))
    batched = (jnp.zeros((2, H)), jnp.zeros((2, H)))
    with pytest.raises(AssertionError, match="`carry`.*ONE example"):
        cell.step(params, batched, xp)
    with pytest.raises(AssertionError, match="`xp_t`"):
        cell.step(params, cell.initial_carry(params), jnp.ones((H,)))
    with pytest.raises(ValueError, match="`params`"):
        CELLS["gru"].project(params, jnp.ones((D,)))


@pytest.mark.bad_input
def test_bad_hyper_parameters_raise_naming_them():
    cases = [
        (lambda: cells.elman(-1), ValueError, "`hidden_size`"),
        (lambda: cells.lstm(0), ValueError, "`hidden_size`"),
        (lambda: cells.gru(2.0), ValueError, "`hidden_size`"),
        (lambda: cells.lstm(H, forget_bias=float("nan")), ValueError, "`forget_bias`"),
        (lambda: cells.lstm(H, forget_bias=float("inf")), ValueError, "`forget_bias`"),
        (lambda: cells.lstm(H, forget_bias=-float("inf")), ValueError, "`forget_bias`"),
        (lambda: cells.gru(H, param_dtype=jnp.int32), ValueError, "`param_dtype`"),
        (lambda: cells.elman(H, param_dtype="not a dtype"), TypeError, "`param_dtype`"),
        (lambda: CELLS["gru"].init(jax.random.key(0), -2), ValueError, "`input_size`"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["elman", "gru", "lstm"])
def test_a_wrongly_shaped_weight_is_an_error_naming_it_with_every_method(name):
    """Before, a recurrent weight one column short reached the matmul: JAX's bare
    dot_general error, naming nothing of the cell's."""
    import jaxseq as js

    cell = getattr(cells, name)(4)
    good = cell.init(jax.random.key(0), 3)
    xs, lengths = jnp.ones((2, 5, 3)), jnp.array([5, 2])
    for key in good:
        params = dict(good)
        params[key] = jnp.zeros(good[key].shape[:-1] + (good[key].shape[-1] + 1,))
        for method in (js.Scan(), js.Fused()):
            with pytest.raises(AssertionError, match=rf"`params\['{key}'\]` of a {name} cell"):
                js.rnn(cell, params, xs, lengths, method=method)
