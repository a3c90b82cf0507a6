"""Parallel-in-time cells with every method against the papers' equations and each other.

Every test that computes runs with every method that applies to a linear cell
(``tests.test_recurrence.LINEAR_METHODS``: ``Scan()``, ``Scan(unroll=3)``,
``Scan(remat=True)``, ``Parallel()``, ``Parallel(remat=True)`` and the default
``None``).

Tolerances: float32 JAX against the float64 NumPy loops of
``tests/reference_parallel.py`` (UNPADDED sequences), ``atol = rtol = 1e-5``;
``Parallel`` against ``Scan`` (float32, different summation orders), values
``atol = rtol = 1e-5`` and gradients ``atol = rtol = 1e-4``; the ``remat`` and
``unroll`` variants against their plain method ``atol = rtol = 1e-6``; padded
outputs exactly 0, poisoned padding bitwise identical. The batch mixes lengths
T, 0 and 1. Compiled functions are module-level jits with the cell and the
method static, so every shape compiles once per method.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq as js
from jaxseq import cells, masks, models, parallel_cells, recurrence
from tests import reference_parallel as ref
from tests.test_recurrence import LINEAR_METHODS, agreement

B, T, D, H, N = 5, 6, 3, 4, 3
LENGTHS = np.array([6, 3, 0, 1, 5], np.int32)
TOL = dict(atol=1e-5, rtol=1e-5)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)
RING = dict(r_min=0.5, r_max=0.95, max_phase=math.pi)
CELLS = {
    "mingru": parallel_cells.mingru(H),
    "mingru_linear": parallel_cells.mingru(H, log_space=False),
    "minlstm": parallel_cells.minlstm(H),
    "minlstm_linear": parallel_cells.minlstm(H, log_space=False),
    "lru": parallel_cells.lru(H, state_size=N, **RING),
}
MAIN = ("mingru", "minlstm", "lru")  # the log-space variants and the LRU
SCAN, PARALLEL = js.Scan(), js.Parallel()
STATIC = ("reverse", "method")
RNN = jax.jit(recurrence.rnn, static_argnums=0, static_argnames=STATIC)
BIDI = jax.jit(recurrence.bidirectional, static_argnums=0, static_argnames="method")
SCAN_RNN = jax.jit(recurrence.scan_rnn, static_argnums=0, static_argnames=STATIC)


def cell_methods(kinds=tuple(CELLS)):
    """``(kind, method)`` parameters: every cell with every method that applies."""
    return [
        pytest.param(kind, method, id=f"{kind}-{method_id}")
        for kind in kinds
        for method_id, method in LINEAR_METHODS.items()
    ]


def random_params(kind, key, input_size=D, dtype=jnp.float32):
    """``init`` with every parameter perturbed, so that biases and ``gamma`` are exercised."""
    params = CELLS[kind].init(key, input_size)
    out = {}
    for i, (name, value) in enumerate(sorted(params.items())):
        noise = jax.random.normal(jax.random.fold_in(key, i), value.shape)
        scale = 0.5 if name == "b" else 0.05
        out[name] = (value + scale * noise).astype(dtype)
    return out


PARAMS = {
    kind: {
        "forward": random_params(kind, jax.random.key(10)),
        "backward": random_params(kind, jax.random.key(11)),
    }
    for kind in CELLS
}


def make_batch(padding=7.0, lengths=LENGTHS, max_len=T):
    """``xs [B, T, D]`` with ``padding`` at every padded step, and the valid-step mask."""
    lengths = np.asarray(lengths, np.int32)
    xs = np.random.default_rng(0).normal(size=(len(lengths), max_len, D))
    valid = np.arange(max_len)[None, :] < lengths[:, None]
    xs = np.where(valid[:, :, None], xs, padding)
    return jnp.asarray(xs, jnp.float32), jnp.asarray(lengths), valid


def random_carry(kind, key, batch=B, dtype=jnp.float32):
    leaves, treedef = jax.tree.flatten(CELLS[kind].initial_carry(None, dtype))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [jax.random.normal(k, (batch,) + leaf.shape, dtype) for k, leaf in zip(keys, leaves)],
    )


def example(tree, b):
    return jax.tree.map(lambda a: np.asarray(a[b], np.float64), tree)


def assert_finals_close(got, expected_list, **tol):
    for b, expected in enumerate(expected_list):
        got_b = example(got, b)
        if isinstance(expected, tuple):
            expected = tuple(expected)
        jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **tol), got_b, expected)


def reference(kind, params, xs, lengths, *, reverse=False, carries=None):
    return ref.run_batch(kind, params, xs, lengths, H, N, reverse=reverse, carries=carries)


# ---------------------------------------------------------------------------- reference


@pytest.mark.parametrize("kind, method", cell_methods())
@pytest.mark.reference
def test_matches_reference(kind, method):
    # Bidirectional: the forward and the within-length reversed pass in one call.
    cell, params = CELLS[kind], PARAMS[kind]
    xs, lengths, valid = make_batch()
    (final_f, final_b), hs = BIDI(cell, params, xs, lengths, method=method)
    expected_f, expected_hs_f = reference(kind, params["forward"], xs, lengths)
    expected_b, expected_hs_b = reference(kind, params["backward"], xs, lengths, reverse=True)
    expected_hs = np.concatenate([expected_hs_f, expected_hs_b], axis=-1)
    assert_finals_close(final_f, expected_f, **TOL)
    assert_finals_close(final_b, expected_b, **TOL)
    assert hs.dtype == jnp.float32
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert not np.asarray(hs)[~valid].any()  # padded outputs are exactly 0


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.reference
def test_step_matches_reference(kind):
    # cell.step (the Cell contract; the recurrence itself computes all (a_t, b_t) at once).
    cell, params = CELLS[kind], PARAMS[kind]["forward"]
    carry = jax.tree.map(lambda a: a[0], random_carry(kind, jax.random.key(1)))
    x = jax.random.normal(jax.random.key(2), (D,))
    new = cell.step(params, carry, cell.project(params, x))
    expected = ref.step(kind, params, example(carry, ...), np.asarray(x, np.float64))
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **TOL), new, expected)
    np.testing.assert_allclose(cell.output(new), ref.output(kind, expected), **TOL)


@pytest.mark.parametrize("kind, method", cell_methods(MAIN))
@pytest.mark.reference
def test_initial_carry_and_single_step_sequences(kind, method):
    # A random initial carry (negative entries too: the log-space scan adds it linearly),
    # on sequences of length 0 and 1 with T = 1, on an empty T = 0 batch, and in reverse
    # on the main batch.
    cell, params = CELLS[kind], PARAMS[kind]["forward"]
    cases = (([1, 0, 1, 0, 1], 1, False), ([0] * B, 0, False), (LENGTHS, T, True))
    for lengths, max_len, reverse in cases:
        xs, lengths, _ = make_batch(lengths=lengths, max_len=max_len)
        carry = random_carry(kind, jax.random.key(3))
        final, hs = RNN(cell, params, xs, lengths, carry=carry, reverse=reverse, method=method)
        carries = [example(carry, b) for b in range(B)]
        expected, expected_hs = reference(
            kind, params, xs, lengths, reverse=reverse, carries=carries
        )
        np.testing.assert_allclose(hs, expected_hs, **TOL)
        assert_finals_close(final, expected, **TOL)
        for b in np.flatnonzero(np.asarray(lengths) == 0):  # length 0: the initial carry
            chex.assert_trees_all_equal(example(final, b), example(carry, b))


@pytest.mark.reference
def test_scan_primitives_match_a_loop():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 1.0, (7, 3)), rng.uniform(0.1, 2.0, (7, 3))
    for reverse in (False, True):
        order = range(6, -1, -1) if reverse else range(7)
        big_a, big_b = np.ones(3), np.zeros(3)
        expected_a, expected_b = np.zeros_like(a), np.zeros_like(b)
        for t in order:
            big_a, big_b = a[t] * big_a, a[t] * big_b + b[t]
            expected_a[t], expected_b[t] = big_a, big_b
        got = parallel_cells.linear_scan(jnp.asarray(a), jnp.asarray(b), reverse=reverse)
        np.testing.assert_allclose(got, (expected_a, expected_b), **TOL)
        log_got = parallel_cells.log_linear_scan(
            jnp.log(jnp.asarray(a)), jnp.log(jnp.asarray(b)), reverse=reverse
        )
        np.testing.assert_allclose(jnp.exp(jnp.stack(log_got)), (expected_a, expected_b), **TOL)


# ---------------------------------------------------------------------------- methods agree


def _loss(cell, params, xs, lengths, carry, weights, method):
    (final_f, final_b), hs = recurrence.bidirectional(
        cell, params, xs, lengths, carry=carry, method=method
    )
    finals = sum(jnp.sum(leaf) for leaf in jax.tree.leaves((final_f, final_b)))
    return jnp.sum(hs * weights) + finals


GRAD = jax.jit(jax.value_and_grad(_loss, argnums=(1, 2, 4)), static_argnums=(0, 6))
WEIGHTS = jax.random.normal(jax.random.key(5), (B, T, 2 * H))


def _carries(kind):
    return (random_carry(kind, jax.random.key(1)), random_carry(kind, jax.random.key(2)))


@pytest.mark.parametrize("kind, method", cell_methods())
@pytest.mark.variants
def test_values_and_gradients_agree_with_scan(kind, method):
    cell, params = CELLS[kind], PARAMS[kind]
    xs, lengths, _ = make_batch()
    carry = _carries(kind)
    value_tol, grad_tol = agreement(cell, method)
    seq = GRAD(cell, params, xs, lengths, carry, WEIGHTS, SCAN)
    got = GRAD(cell, params, xs, lengths, carry, WEIGHTS, method)
    np.testing.assert_allclose(got[0], seq[0], **value_tol)
    chex.assert_trees_all_close(got[1], seq[1], **grad_tol)


@pytest.mark.variants
def test_remat_and_unroll_give_the_same_gradients():
    cell, params = CELLS["minlstm"], PARAMS["minlstm"]
    xs, lengths, _ = make_batch()
    carry = _carries("minlstm")
    pairs = (
        (SCAN, js.Scan(remat=True)),
        (SCAN, js.Scan(unroll=4)),
        (PARALLEL, js.Parallel(remat=True)),
    )
    for plain, variant in pairs:
        expected = GRAD(cell, params, xs, lengths, carry, WEIGHTS, plain)
        got = GRAD(cell, params, xs, lengths, carry, WEIGHTS, variant)
        chex.assert_trees_all_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind, method", cell_methods(["lru", "mingru"]))
@pytest.mark.variants
def test_scan_rnn_is_rnn_of_one_example(kind, method):
    # One example with a scalar length = a row of the batch; also vmapped and jitted.
    cell, params = CELLS[kind], PARAMS[kind]["forward"]
    xs, lengths, _ = make_batch()
    final, hs = RNN(cell, params, xs, lengths, reverse=True, method=method)
    for b in (0, 2, 3):  # lengths T, 0, 1
        final_b, hs_b = SCAN_RNN(cell, params, xs[b], lengths[b], reverse=True, method=method)
        np.testing.assert_allclose(hs_b, hs[b], atol=1e-6, rtol=1e-6)
        chex.assert_trees_all_close(final_b, jax.tree.map(lambda a, b=b: a[b], final), atol=1e-6)

    @jax.jit
    def batched(xs, lengths):
        return jax.vmap(
            lambda x, n: recurrence.scan_rnn(cell, params, x, n, reverse=True, method=method)
        )(xs, lengths)

    chex.assert_trees_all_close(batched(xs, lengths), (final, hs), atol=1e-6, rtol=1e-6)


@pytest.mark.variants
def test_default_method_is_backend_aware():
    gru = cells.gru(H)
    assert not parallel_cells.is_linear(gru)
    for kind, cell in CELLS.items():
        assert parallel_cells.is_linear(cell), kind
        for backend, expected in (("gpu", PARALLEL), ("tpu", PARALLEL), ("cpu", SCAN)):
            assert js.resolve_method(cell, backend=backend) == expected, (kind, backend)
        assert js.resolve_method(cell, PARALLEL, backend="cpu") is PARALLEL
        assert js.resolve_method(cell, SCAN, backend="gpu") is SCAN


@pytest.mark.parametrize("kind, head", [("minlstm", "labeler"), ("lru", "classifier")])
@pytest.mark.variants
def test_model_heads_accept_the_new_cells(kind, head):
    xs, lengths, _ = make_batch(padding=np.nan)
    init = models.classifier_init if head == "classifier" else models.labeler_init
    apply = jax.jit(
        models.classifier_apply if head == "classifier" else models.labeler_apply,
        static_argnames="config",
    )

    def config(method):
        return models.SequenceModelConfig(
            num_classes=3,
            hidden_size=H,
            cell=kind,
            input_size=D,
            bidirectional=True,
            num_layers=2,
            method=method,
        )

    params = init(jax.random.key(0), config(None))
    cell = models.make_cell(config(None))
    assert cell == {"minlstm": parallel_cells.minlstm, "lru": parallel_cells.lru}[kind](H)

    @jax.jit
    def by_hand(params, xs, lengths):  # the same computation, with the parallel scan
        clean = jnp.where(masks.length_mask(lengths, T)[:, :, None], xs, 0.0)
        finals, hs = recurrence.stack(
            cell, params["rnn"], clean, lengths, bidirectional=True, method=PARALLEL
        )
        if head == "labeler":
            return hs @ params["output"]["V"] + params["output"]["c"][None, None]
        out = jax.vmap(cell.output)
        pooled = jnp.concatenate([out(finals[-1][0]), out(finals[-1][1])], axis=-1)
        return pooled @ params["output"]["V"] + params["output"]["c"][None]

    # The model with every method (the default: Scan on CPU) against the 2-layer
    # bidirectional stack by hand with Parallel(): stacks across the methods.
    expected = by_hand(params, xs, lengths)
    for method in LINEAR_METHODS.values():
        logits = apply(params, config(method), xs, lengths)
        np.testing.assert_allclose(logits, expected, **TOL, err_msg=str(method))


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("method", [SCAN, PARALLEL], ids=["Scan", "Parallel"])
@pytest.mark.parametrize("kind", MAIN)
@pytest.mark.gradcheck
def test_check_grads_float64(kind, method):
    # Forward mode as well: no method for linear cells has a custom_vjp.
    cell = CELLS[kind]
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), PARAMS[kind])
        xs = jnp.asarray(rng.normal(size=(2, 3, D)))
        lengths = jnp.array([3, 1], jnp.int32)
        carry = random_carry(kind, jax.random.key(4), batch=2, dtype=jnp.float64)

        @jax.jit
        def f(params, xs, carry):
            return recurrence.bidirectional(
                cell, params, xs, lengths, carry=(carry, carry), method=method
            )

        check_grads(f, (params, xs, carry), order=1, modes=["fwd", "rev"])


# ---------------------------------------------------------------------------- padding


# ---------------------------------------------------------------------------- numerics


@pytest.mark.numerics
def test_extreme_gates_stay_accurate():
    # Gates from z ~ 1e-13 (the state is kept for ever) to 1 - 1e-13 (forgotten at once):
    # over 100 steps the log-coefficients of the forgetting units sum to about -3000, where
    # a cumsum-based log-space scan (Heinsen's) would lose 3-4 digits in float32. Every
    # method matches the float64 loop.
    steps, hidden = 100, 6
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(1, steps, 2)).astype(np.float32)
    lengths = jnp.array([steps - 7], jnp.int32)
    cell = parallel_cells.mingru(hidden)
    params = {
        "W": jnp.asarray(0.5 * rng.normal(size=(2, 2 * hidden)), jnp.float32),
        "b": jnp.array([-30, -12, -3, 3, 12, 30, 1, -1, 0, 2, -2, 0.5], jnp.float32),
    }
    _, expected = ref.run_batch("mingru", params, xs, np.asarray(lengths), hidden, 0)
    for method in LINEAR_METHODS.values():
        _, hs = RNN(cell, params, jnp.asarray(xs), lengths, method=method)
        np.testing.assert_allclose(hs, expected, **TOL, err_msg=str(method))

        def loss(params, method=method):
            return jnp.sum(RNN(cell, params, jnp.asarray(xs), lengths, method=method)[1])

        grads = jax.grad(loss)(params)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)), method


@pytest.mark.numerics
def test_lru_initialisation_ring_and_normalisation():
    cell = parallel_cells.lru(8, state_size=512, r_min=0.4, r_max=0.9, max_phase=math.pi / 10)
    params = jax.jit(cell.init, static_argnums=1)(jax.random.key(0), 6)
    shapes = {name: value.shape for name, value in params.items()}
    assert shapes == {
        "nu_log": (512,),
        "theta_log": (512,),
        "gamma_log": (512,),
        "B_re": (6, 512),
        "B_im": (6, 512),
        "C_re": (512, 8),
        "C_im": (512, 8),
        "D": (6, 8),
    }
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    modulus = np.exp(-np.exp(p["nu_log"]))
    phase = np.exp(p["theta_log"])
    assert modulus.min() >= 0.4 - 1e-6 and modulus.max() <= 0.9 + 1e-6
    assert phase.min() >= 0.0 and phase.max() <= math.pi / 10 + 1e-6
    # Uniform on the ring in area: |lambda|^2 is uniform on [r_min^2, r_max^2].
    assert abs(np.mean(modulus**2) - (0.4**2 + 0.9**2) / 2) < 0.03
    np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - modulus**2), rtol=1e-5)


# ---------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("kind, method", cell_methods(["lru", "minlstm"]))
@pytest.mark.dtype
def test_bfloat16_inputs_keep_a_float32_state(kind, method):
    cell = CELLS[kind]
    params_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), PARAMS[kind]["forward"])
    xs, lengths, _ = make_batch()
    xs = xs.astype(jnp.bfloat16)
    final, hs = RNN(cell, params_bf16, xs, lengths, method=method)
    assert hs.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(final))
    params_f32 = jax.tree.map(lambda a: a.astype(jnp.float32), params_bf16)
    expected = RNN(cell, params_f32, xs.astype(jnp.float32), lengths, method=method)
    chex.assert_trees_all_close((final, hs), expected, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- retrace


@pytest.mark.retrace
def test_equal_cells_are_one_static_argument():
    assert parallel_cells.lru(H, state_size=N, **RING) == CELLS["lru"]
    assert hash(parallel_cells.mingru(H)) == hash(CELLS["mingru"])
    assert parallel_cells.mingru(H) != parallel_cells.mingru(H, log_space=False)

    def apply(cell, params, xs, lengths, method):
        return recurrence.rnn(cell, params, xs, lengths, method=method)

    apply = jax.jit(chex.assert_max_traces(apply, n=1), static_argnums=(0, 4))
    xs, lengths, _ = make_batch()
    for _ in range(2):  # equal cells and equal methods, freshly built
        apply(parallel_cells.minlstm(H), PARAMS["minlstm"]["forward"], xs, lengths, js.Parallel())


# ---------------------------------------------------------------------------- bad inputs


def _bad_calls():
    xs, lengths, _ = make_batch()
    gru = cells.gru(H)
    lru, p_lru = CELLS["lru"], PARAMS["lru"]["forward"]
    mingru, p_min = CELLS["mingru"], PARAMS["mingru"]["forward"]
    carry = lru.initial_carry(p_lru)
    return {
        "parallel_gru": (
            lambda: recurrence.rnn(
                gru, gru.init(jax.random.key(0), D), xs, lengths, method=PARALLEL
            ),
            ValueError,
            r"method=Parallel\(\) needs a cell whose recurrence is linear",
        ),
        "fused_mingru": (
            lambda: recurrence.rnn(mingru, p_min, xs, lengths, method=js.Fused()),
            ValueError,
            r"method=Fused\(\) runs the built-in cells",
        ),
        "hoist_lru": (
            lambda: recurrence.bidirectional(
                lru,
                {"forward": p_lru, "backward": p_lru},
                xs,
                lengths,
                method=js.Scan(hoist_projection=True),
            ),
            ValueError,
            r"Scan\(hoist_projection=\.\.\.\) does not apply to the linear 'lru' cell",
        ),
        "string_method": (
            lambda: recurrence.stack(mingru, [p_min], xs, lengths, method="parallel"),
            TypeError,
            "`method` must be jaxseq.Scan",
        ),
        "xs_rank": (
            lambda: recurrence.rnn(mingru, p_min, xs[0], lengths, method=PARALLEL),
            AssertionError,
            r"`xs` must have rank 3",
        ),
        "ring": (lambda: parallel_cells.lru(H, r_min=0.9, r_max=0.5), ValueError, "`r_max`"),
        "ring_one": (lambda: parallel_cells.lru(H, r_max=1.0), ValueError, "`r_max`"),
        "r_min_negative": (lambda: parallel_cells.lru(H, r_min=-0.1), ValueError, "`r_min`"),
        "r_min_one": (lambda: parallel_cells.lru(H, r_min=1.0, r_max=1.5), ValueError, "`r_min`"),
        "r_min_nan": (lambda: parallel_cells.lru(H, r_min=math.nan), ValueError, "`r_min`"),
        "r_max_nan": (lambda: parallel_cells.lru(H, r_max=math.nan), ValueError, "`r_max`"),
        "max_phase_inf": (
            lambda: parallel_cells.lru(H, max_phase=math.inf),
            ValueError,
            "`max_phase`",
        ),
        "max_phase_big": (lambda: parallel_cells.lru(H, max_phase=7.0), ValueError, "`max_phase`"),
        "hidden_size_lru": (lambda: parallel_cells.lru(-1), ValueError, "`hidden_size`"),
        "hidden_size_mingru": (lambda: parallel_cells.mingru(0), ValueError, "`hidden_size`"),
        "param_dtype": (
            lambda: parallel_cells.mingru(H, param_dtype=jnp.int8),
            ValueError,
            "`param_dtype`",
        ),
        "input_size": (lambda: mingru.init(jax.random.key(0), 0), ValueError, "`input_size`"),
        "max_phase": (lambda: parallel_cells.lru(H, max_phase=0.0), ValueError, "`max_phase`"),
        "state_size": (lambda: parallel_cells.lru(H, state_size=0), ValueError, "`state_size`"),
        "log_space": (lambda: parallel_cells.mingru(H, log_space=1), TypeError, "`log_space`"),
        "hidden_size": (lambda: parallel_cells.minlstm(0), ValueError, "`hidden_size`"),
        "params": (
            lambda: recurrence.rnn(mingru, p_lru, xs, lengths, method=PARALLEL),
            ValueError,
            "`params` of a mingru cell",
        ),
        "params_scan": (
            lambda: recurrence.rnn(mingru, p_lru, xs, lengths, method=SCAN),
            ValueError,
            "`params` of a mingru cell",
        ),
        "x_width": (lambda: lru.project(p_lru, jnp.ones((4,))), AssertionError, "`x`"),
        "xp_width": (
            lambda: mingru.step(p_min, jnp.zeros(H), jnp.ones(H)),
            AssertionError,
            "`xp_t`",
        ),
        "lru_carry": (
            lambda: lru.step(p_lru, carry[:2], lru.project(p_lru, jnp.ones(D))),
            ValueError,
            "`carry` of an lru cell",
        ),
        "batched_carry": (
            lambda: mingru.step(p_min, jnp.zeros((2, H)), jnp.ones(2 * H)),
            AssertionError,
            "`carry` of a mingru cell",
        ),
        "rnn_carry": (
            lambda: recurrence.rnn(lru, p_lru, xs, lengths, carry=carry, method=PARALLEL),
            AssertionError,
            "`carry`.*leading B",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
@pytest.mark.bad_input
def test_bad_inputs_raise_naming_the_argument(case):
    call, error, match = _bad_calls()[case]
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------- training


@pytest.mark.gpu
def test_long_sequences_agree_on_gpu():
    # On a GPU the default is Parallel(): check it on a long batch there against Scan().
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(8, 4096, D)), jnp.float32)
    lengths = jnp.asarray(rng.integers(2048, 4097, size=8), jnp.int32)
    for kind in MAIN:
        cell, params = CELLS[kind], PARAMS[kind]["forward"]
        assert js.resolve_method(cell) == PARALLEL
        seq = RNN(cell, params, xs, lengths, method=SCAN)
        par = RNN(cell, params, xs, lengths)
        chex.assert_trees_all_close(par, seq, atol=1e-4, rtol=1e-4)
