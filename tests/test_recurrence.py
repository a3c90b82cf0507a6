"""The masked recurrence against the NumPy reference, plus padding, options, stacks, checks.

Tolerances: float32 JAX against the float64 reference loop over the UNPADDED
sequences, ``atol = rtol = 1e-5``; two float32 JAX paths that should agree
(unroll, remat, hoist, jit, vmap), ``atol = 1e-6``; padded outputs exactly 0.
Compiled functions are module-level jits with the cell static, so every shape
compiles once.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxseq import cells, masks, pooling, recurrence
from tests import reference_rnn as ref
from tests.test_cells import random_params

B, T, D, H = 4, 6, 3, 5
TOL = dict(atol=1e-5, rtol=1e-5)
SAME = dict(atol=1e-6, rtol=1e-6)
CELLS = {"elman": cells.elman(H), "gru": cells.gru(H), "lstm": cells.lstm(H)}
PATTERNS = {  # name: (T, lengths)
    "full": (T, [6, 6, 6, 6]),
    "mixed": (T, [6, 3, 5, 2]),
    "with_0": (T, [3, 0, 6, 0]),
    "with_1": (T, [1, 6, 1, 4]),
    "T1": (1, [1, 0, 1, 1]),
}
OPTIONS = ("reverse", "unroll", "remat", "hoist_projection")
RNN = jax.jit(recurrence.rnn, static_argnums=0, static_argnames=OPTIONS)
BIDI = jax.jit(recurrence.bidirectional, static_argnums=0, static_argnames=OPTIONS[1:])
SCAN = jax.jit(recurrence.scan_rnn, static_argnums=0, static_argnames=OPTIONS)
STACK = jax.jit(
    recurrence.stack,
    static_argnums=0,
    static_argnames=("bidirectional", "dropout_rate", "train") + OPTIONS[1:],
)


def bidi_params(name, input_size=D, dtype=jnp.float32):
    cell = CELLS[name]
    return {
        "forward": random_params(cell, jax.random.key(10), input_size, dtype),
        "backward": random_params(cell, jax.random.key(11), input_size, dtype),
    }


PARAMS = {name: bidi_params(name) for name in CELLS}


def make_batch(pattern="mixed", padding=7.0, dtype=jnp.float32):
    """``xs [B, T, D]`` with ``padding`` at every padded step (never 0: masking must work)."""
    max_len, lengths = PATTERNS[pattern]
    lengths = np.asarray(lengths, np.int32)
    xs = np.random.default_rng(0).normal(size=(B, max_len, D))
    valid = np.arange(max_len)[None, :] < lengths[:, None]
    xs = np.where(valid[:, :, None], xs, padding)
    return jnp.asarray(xs, dtype), jnp.asarray(lengths), valid


def example(tree, b):
    return jax.tree.map(lambda a: np.asarray(a[b], np.float64), tree)


def assert_finals_close(got, expected_list, **tol):
    for b, expected in enumerate(expected_list):
        jax.tree.map(
            lambda a, e: np.testing.assert_allclose(a, e, **tol), example(got, b), expected
        )


# ---------------------------------------------------------------------------- reference


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.reference
def test_matches_reference(name, direction, pattern):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, valid = make_batch(pattern)
    if direction == "bidirectional":
        (final_f, final_b), hs = BIDI(cell, params, xs, lengths)
        expected_f, expected_b, expected_hs = ref.run_bidirectional(name, params, xs, lengths, H)
        assert hs.shape == (B, xs.shape[1], 2 * H)
        assert_finals_close(final_f, expected_f, **TOL)
        assert_finals_close(final_b, expected_b, **TOL)
    else:
        reverse = direction == "reverse"
        final, hs = RNN(cell, params["forward"], xs, lengths, reverse=reverse)
        expected, expected_hs = ref.run_batch(
            name, params["forward"], xs, lengths, H, reverse=reverse
        )
        assert hs.shape == (B, xs.shape[1], H)
        assert_finals_close(final, expected, **TOL)
    assert hs.dtype == jnp.float32
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert not np.asarray(hs)[~valid].any()  # padded outputs are exactly 0


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.reference
def test_initial_carry_argument(name):
    cell, params = CELLS[name], PARAMS[name]["forward"]
    xs, lengths, _ = make_batch("with_0")
    leaves, treedef = jax.tree.flatten(cell.initial_carry(params))
    carry = jax.tree.unflatten(
        treedef, [jax.random.normal(jax.random.key(i), (B, H)) for i in range(len(leaves))]
    )
    final, hs = RNN(cell, params, xs, lengths, carry=carry, reverse=True)
    carries = [example(carry, b) for b in range(B)]
    expected, expected_hs = ref.run_batch(
        name, params, xs, lengths, H, reverse=True, carries=carries
    )
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert_finals_close(final, expected, **TOL)
    for leaf, leaf0 in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
        np.testing.assert_array_equal(leaf[1], leaf0[1])  # length 0: the initial carry


# ---------------------------------------------------------------------------- padding


def _loss(cell, params, xs, lengths, weights, **options):
    (final_f, final_b), hs = recurrence.bidirectional(cell, params, xs, lengths, **options)
    finals = sum(jnp.sum(leaf) for leaf in jax.tree.leaves((final_f, final_b)))
    return jnp.sum(hs * weights) + finals


GRAD = jax.jit(
    jax.value_and_grad(_loss, argnums=(1, 2)),
    static_argnums=0,
    static_argnames=OPTIONS[1:],
)
WEIGHTS = jax.random.normal(jax.random.key(5), (B, T, 2 * H))


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.padding_invariance
def test_poison_padding_changes_nothing(name):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, valid = make_batch("with_1", padding=0.0)
    clean = GRAD(cell, params, xs, lengths, WEIGHTS)
    for poison in (np.nan, np.inf, -np.inf, 1e30):
        poisoned = jnp.where(jnp.asarray(valid)[:, :, None], xs, poison)
        value, (grad_params, grad_xs) = GRAD(cell, params, poisoned, lengths, WEIGHTS)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad_params))
        assert not np.asarray(grad_xs)[~valid].any()  # exactly 0 at padded steps
        chex.assert_trees_all_equal((value, (grad_params, grad_xs)), clean)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_remat_and_hoist_gradients_agree(name):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, _ = make_batch("mixed")
    base = GRAD(cell, params, xs, lengths, WEIGHTS)
    other = GRAD(cell, params, xs, lengths, WEIGHTS, remat=True, hoist_projection=True)
    chex.assert_trees_all_close(other, base, **SAME)


@pytest.mark.parametrize(
    "name, direction", [("elman", "forward"), ("gru", "reverse"), ("lstm", "bidirectional")]
)
@pytest.mark.gradcheck
def test_scan_check_grads_float64(name, direction):
    # One direction per cell keeps it fast; the scan code is shared by all cells.
    cell = CELLS[name]
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), PARAMS[name])
        xs = jnp.asarray(rng.normal(size=(2, 3, D)))
        lengths = jnp.array([3, 1], jnp.int32)
        leaves, treedef = jax.tree.flatten(cell.initial_carry(None, jnp.float64))
        carry = jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(size=(2, H))) for _ in leaves])

        @jax.jit
        def f(params, xs, carry):
            if direction == "bidirectional":
                return recurrence.bidirectional(cell, params, xs, lengths, carry=(carry, carry))
            reverse = direction == "reverse"
            return recurrence.rnn(
                cell, params["forward"], xs, lengths, carry=carry, reverse=reverse
            )

        check_grads(f, (params, xs, carry), order=1, modes=["rev"])


# ---------------------------------------------------------------------------- equivalences

VARIANTS = {
    "unroll4": dict(unroll=4),
    "unrollT": dict(unroll=T),
    "remat": dict(remat=True),
    "hoist": dict(hoist_projection=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_options_agree_with_default(name, variant):
    # reverse=True: the padded steps come first in the loop, the case where unrolling
    # could go wrong. (Forward with all options at once: test_remat_and_hoist_gradients_agree.)
    cell, params = CELLS[name], PARAMS[name]["backward"]
    xs, lengths, _ = make_batch("with_0")
    base = RNN(cell, params, xs, lengths, reverse=True)
    got = RNN(cell, params, xs, lengths, reverse=True, **VARIANTS[variant])
    chex.assert_trees_all_close(got, base, **SAME)


@pytest.mark.variants
def test_jit_agrees_with_eager():
    cell, params = CELLS["lstm"], PARAMS["lstm"]["forward"]
    xs, lengths, _ = make_batch("with_1")
    eager = recurrence.rnn(cell, params, xs, lengths)
    chex.assert_trees_all_close(eager, RNN(cell, params, xs, lengths), **SAME)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_rnn_is_a_loop_over_scan_rnn(name, reverse):
    cell, params = CELLS[name], PARAMS[name]["forward"]
    xs, lengths, valid = make_batch("with_0")
    final, hs = RNN(cell, params, xs, lengths, reverse=reverse)
    for b in range(B):
        final_b, hs_b = SCAN(cell, params, xs[b], jnp.asarray(valid[b]), reverse=reverse)
        np.testing.assert_allclose(hs[b], hs_b, **SAME)
        chex.assert_trees_all_close(jax.tree.map(lambda a, b=b: a[b], final), final_b, **SAME)


@pytest.mark.retrace
def test_traces_once_for_same_shapes():
    params = PARAMS["gru"]["forward"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(params, xs, lengths):
        return recurrence.rnn(CELLS["gru"], params, xs, lengths)

    def apply_cell(cell, params, xs, lengths):
        return recurrence.rnn(cell, params, xs, lengths)

    apply_static = jax.jit(chex.assert_max_traces(apply_cell, n=1), static_argnums=0)
    for pattern in ("full", "mixed", "with_0"):
        xs, lengths, _ = make_batch(pattern)
        apply(params, xs, lengths)
        # A freshly built but equal cell is the same static argument: no retrace.
        apply_static(cells.gru(H), params, xs, lengths)


@pytest.mark.dtype
def test_bfloat16_inputs_keep_a_float32_carry():
    cell = CELLS["lstm"]
    params_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), PARAMS["lstm"]["forward"])
    xs, lengths, _ = make_batch("mixed", dtype=jnp.bfloat16)
    (h, c), hs = RNN(cell, params_bf16, xs, lengths)
    assert hs.dtype == h.dtype == c.dtype == jnp.float32
    # The same bfloat16 values upcast: the computation itself runs in float32.
    params_f32 = jax.tree.map(lambda a: a.astype(jnp.float32), params_bf16)
    expected = RNN(cell, params_f32, xs.astype(jnp.float32), lengths)
    chex.assert_trees_all_close(((h, c), hs), expected, **SAME)


# ---------------------------------------------------------------------------- stacks


@pytest.mark.variants
def test_init_stack_shapes():
    cell = CELLS["lstm"]
    layers = recurrence.init_stack(jax.random.key(0), cell, D, num_layers=3, bidirectional=True)
    assert len(layers) == 3
    assert layers[0]["forward"]["W_i"].shape == (D, 4 * H)
    assert layers[1]["backward"]["W_i"].shape == layers[2]["forward"]["W_i"].shape == (2 * H, 4 * H)
    assert not np.allclose(layers[1]["forward"]["W_h"], layers[1]["backward"]["W_h"])
    layers = recurrence.init_stack(jax.random.key(0), cell, D, num_layers=2)
    assert layers[0]["W_i"].shape == (D, 4 * H) and layers[1]["W_i"].shape == (H, 4 * H)


def stack_params(name, bidirectional, num_layers=2):
    cell = CELLS[name]
    layers = recurrence.init_stack(
        jax.random.key(1), cell, D, num_layers=num_layers, bidirectional=bidirectional
    )
    # Random biases as well, so that every parameter is exercised.
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda a: a + jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype), layers)


@pytest.mark.parametrize("name, bidirectional", [("elman", True), ("gru", False), ("lstm", True)])
@pytest.mark.reference
def test_stack_matches_reference(name, bidirectional):
    cell = CELLS[name]
    layers = stack_params(name, bidirectional)
    xs, lengths, valid = make_batch("with_0")
    # train=False: dropout_rate is ignored.
    finals, hs = STACK(cell, layers, xs, lengths, bidirectional=bidirectional, dropout_rate=0.5)
    expected_hs = np.asarray(xs, np.float64)
    for layer, params in enumerate(layers):
        if bidirectional:
            exp_f, exp_b, expected_hs = ref.run_bidirectional(name, params, expected_hs, lengths, H)
            assert_finals_close(finals[layer][0], exp_f, **TOL)
            assert_finals_close(finals[layer][1], exp_b, **TOL)
        else:
            expected, expected_hs = ref.run_batch(name, params, expected_hs, lengths, H)
            assert_finals_close(finals[layer], expected, **TOL)
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert not np.asarray(hs)[~valid].any()


@pytest.mark.determinism
def test_variational_dropout_mask_is_shared_over_time():
    hs = jnp.ones((64, 5, 32))
    out = np.asarray(recurrence.variational_dropout(hs, rate=0.25, key=jax.random.key(0)))
    assert set(np.unique(out).tolist()) == {0.0, np.float32(1.0) / np.float32(0.75)}
    np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1], out.shape))  # constant in t
    assert not np.array_equal(out[0, 0], out[1, 0])  # differs across sequences
    assert abs(out.mean() - 1.0) < 0.06  # inverted scaling keeps the expectation
    other = np.asarray(recurrence.variational_dropout(hs, rate=0.25, key=jax.random.key(1)))
    assert not np.array_equal(out, other)  # differs across keys
    assert recurrence.variational_dropout(hs, rate=0.0, key=jax.random.key(0)) is hs


@pytest.mark.determinism
def test_stack_dropout_between_layers_only():
    cell = CELLS["gru"]
    layers = stack_params("gru", False, num_layers=3)
    xs, lengths, valid = make_batch("mixed")
    key = jax.random.key(3)
    _, hs = STACK(cell, layers, xs, lengths, dropout_rate=0.5, key=key, train=True)
    # The same computation by hand: dropout on the inputs of layers 1 and 2 only,
    # with keys fold_in(key, layer).
    manual = xs
    for layer, params in enumerate(layers):
        if layer > 0:
            manual = recurrence.variational_dropout(
                manual, rate=0.5, key=jax.random.fold_in(key, layer)
            )
        _, manual = RNN(cell, params, manual, lengths)
    np.testing.assert_allclose(hs, manual, **SAME)
    # No dropout on the output: no feature is zero over all valid steps of a sequence.
    assert all(np.all(np.asarray(hs)[b, : lengths[b]] != 0, axis=0).all() for b in range(B))
    _, other_key = STACK(
        cell, layers, xs, lengths, dropout_rate=0.5, key=jax.random.key(4), train=True
    )
    assert not np.allclose(hs, other_key)
    _, eval_hs = STACK(cell, layers, xs, lengths, dropout_rate=0.5, key=key, train=False)
    _, no_dropout = STACK(cell, layers, xs, lengths)
    np.testing.assert_array_equal(eval_hs, no_dropout)


# ---------------------------------------------------------------------------- pooling


@pytest.mark.reference
def test_pooling_over_valid_steps_only():
    xs, lengths, valid = make_batch("with_0")
    hs = jnp.where(jnp.asarray(valid)[:, :, None], xs, jnp.nan)
    mean, maximum = pooling.masked_mean(hs, lengths), pooling.masked_max(hs, lengths)
    for b in range(B):
        n = int(lengths[b])
        expected_mean = np.asarray(xs[b, :n]).mean(0) if n else np.zeros(D)
        expected_max = np.asarray(xs[b, :n]).max(0) if n else np.zeros(D)
        np.testing.assert_allclose(mean[b], expected_mean, **TOL)
        np.testing.assert_array_equal(maximum[b], expected_max)
    grad = jax.grad(
        lambda h: jnp.sum(pooling.masked_mean(h, lengths)) + jnp.sum(pooling.masked_max(h, lengths))
    )(hs)
    assert bool(jnp.all(jnp.isfinite(grad))) and not np.asarray(grad)[~valid].any()
    assert pooling.last_valid is masks.last_valid


# ---------------------------------------------------------------------------- bad inputs


def _bad_calls():
    cell, params = CELLS["gru"], PARAMS["gru"]
    xs, lengths, valid = make_batch("mixed")
    p = params["forward"]
    mask = jnp.asarray(valid[0])
    layers = [p, random_params(cell, jax.random.key(0), H)]
    return {
        "xs_rank": (lambda: recurrence.rnn(cell, p, xs[0], lengths), ValueError, "`xs`.*rank 3"),
        "xs_int": (
            lambda: recurrence.rnn(cell, p, xs.astype(jnp.int32), lengths),
            TypeError,
            "`xs`",
        ),
        "lengths_float": (
            lambda: recurrence.rnn(cell, p, xs, lengths.astype(jnp.float32)),
            TypeError,
            "`lengths`.*integer",
        ),
        "lengths_size": (
            lambda: recurrence.bidirectional(cell, params, xs, lengths[:3]),
            ValueError,
            r"`lengths` must have shape \[4\]",
        ),
        "lengths_above_T": (
            lambda: recurrence.rnn(cell, p, xs, np.array([7, 1, 1, 1])),
            ValueError,
            r"`lengths` must be in \[0, 6\]",
        ),
        "lengths_negative": (
            lambda: recurrence.stack(cell, [p], xs, np.array([1, -1, 1, 1])),
            ValueError,
            r"`lengths` must be in \[0, 6\]",
        ),
        "mask_not_bool": (
            lambda: recurrence.scan_rnn(cell, p, xs[0], mask.astype(jnp.int32)),
            TypeError,
            "`mask` must be boolean",
        ),
        "mask_not_prefix": (
            lambda: recurrence.scan_rnn(cell, p, xs[0], jnp.array([1, 0, 1, 0, 0, 0], bool)),
            ValueError,
            "`mask` must be a valid prefix",
        ),
        "mask_size": (
            lambda: recurrence.scan_rnn(cell, p, xs[0], mask[:4]),
            ValueError,
            "`mask` must have shape",
        ),
        "scan_xs_rank": (
            lambda: recurrence.scan_rnn(cell, p, xs, mask),
            ValueError,
            "`xs`.*rank 2",
        ),
        "dropout_without_key": (
            lambda: recurrence.stack(cell, layers, xs, lengths, dropout_rate=0.5, train=True),
            ValueError,
            "`key` is required",
        ),
        "dropout_rate": (
            lambda: recurrence.stack(cell, layers, xs, lengths, dropout_rate=1.0),
            ValueError,
            "`dropout_rate`",
        ),
        "bidirectional_params": (
            lambda: recurrence.bidirectional(cell, p, xs, lengths),
            ValueError,
            "`params`.*'forward' and 'backward'",
        ),
        "carry_shape": (
            lambda: recurrence.rnn(cell, p, xs, lengths, carry=jnp.zeros((H,))),
            ValueError,
            "`carry`.*leading B",
        ),
        "not_a_cell": (lambda: recurrence.rnn("gru", p, xs, lengths), TypeError, "`cell`"),
        "unroll": (lambda: recurrence.rnn(cell, p, xs, lengths, unroll=0), ValueError, "`unroll`"),
        "layer_params": (
            lambda: recurrence.stack(cell, [], xs, lengths),
            ValueError,
            "`layer_params`",
        ),
        "pool_hs_rank": (lambda: pooling.masked_mean(xs[0], lengths), ValueError, "`hs`"),
        "pool_lengths_float": (
            lambda: pooling.masked_max(xs, lengths.astype(jnp.float32)),
            TypeError,
            "`lengths`",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
@pytest.mark.bad_input
def test_bad_inputs_raise_naming_the_argument(case):
    call, error, match = _bad_calls()[case]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.numerics
def test_non_prefix_mask_is_unchecked_under_jit():
    cell, params = CELLS["elman"], PARAMS["elman"]["forward"]
    xs, _, _ = make_batch("full")
    mask = jnp.array([1, 0, 1, 0, 0, 0], bool)
    _, hs = SCAN(cell, params, xs[0], mask)  # documented: no error, masked steps skipped
    assert not np.asarray(hs)[~np.asarray(mask)].any()
