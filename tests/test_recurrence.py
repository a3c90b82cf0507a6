"""The masked recurrence against the NumPy reference, with every method; options, stacks, checks.

Every test that computes runs with every method that applies to the cell
(:data:`NONLINEAR_METHODS`: ``Scan()``, ``Scan(unroll=3)``, ``Scan(remat=True)``,
``Scan(hoist_projection=True)``, ``Fused()`` and the default ``None``).

Tolerances: float32 JAX against the float64 reference loop over the UNPADDED
sequences, ``atol = rtol = 1e-5``; a method against ``Scan()`` (:func:`agreement`):
the ``Scan`` variants (unroll, remat, hoist, jit, vmap) ``atol = 1e-6``, ``Fused()``
``1e-5`` (its batched matmuls sum in another order), ``Parallel()`` ``1e-5`` for
values and ``1e-4`` for gradients (another summation order over T); padded
outputs exactly 0. Compiled functions are module-level jits with the cell and the
method static, so every shape compiles once per method.
"""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq as js
from jaxseq import cells, masks, methods, parallel_cells, pooling, recurrence
from tests import reference_rnn as ref
from tests.test_cells import random_params

B, T, D, H = 4, 6, 3, 5
TOL = dict(atol=1e-5, rtol=1e-5)
SAME = dict(atol=1e-6, rtol=1e-6)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)
CELLS = {"elman": cells.elman(H), "gru": cells.gru(H), "lstm": cells.lstm(H)}
PATTERNS = {  # name: (T, lengths)
    "full": (T, [6, 6, 6, 6]),
    "mixed": (T, [6, 3, 5, 2]),
    "with_0": (T, [3, 0, 6, 0]),
    "with_1": (T, [1, 6, 1, 4]),
    "T1": (1, [1, 0, 1, 1]),
}

# ---------------------------------------------------------------------------- methods

# Every method (and option) that applies to a non-linear cell; "default" is method=None.
NONLINEAR_METHODS = {
    "Scan": js.Scan(),
    "Scan_unroll3": js.Scan(unroll=3),
    "Scan_remat": js.Scan(remat=True),
    "Scan_hoist": js.Scan(hoist_projection=True),
    "Fused": js.Fused(),
    "default": None,
}
# ... and to a cell linear in its state (mingru, minlstm, lru).
LINEAR_METHODS = {
    "Scan": js.Scan(),
    "Scan_unroll3": js.Scan(unroll=3),
    "Scan_remat": js.Scan(remat=True),
    "Parallel": js.Parallel(),
    "Parallel_remat": js.Parallel(remat=True),
    "default": None,
}


def methods_for(cell) -> dict:
    """The methods that apply to ``cell``, by id (``Fused`` only for the built-in cells)."""
    if parallel_cells.is_linear(cell):
        return LINEAR_METHODS
    if methods._is_built_in(cell):
        return NONLINEAR_METHODS
    return {name: m for name, m in NONLINEAR_METHODS.items() if not isinstance(m, js.Fused)}


def agreement(cell, method) -> tuple[dict, dict]:
    """``(value_tol, grad_tol)`` of ``method`` against ``Scan()`` on ``cell`` (module doc)."""
    resolved = js.resolve_method(cell, method)
    if isinstance(resolved, js.Fused):
        return TOL, TOL
    if isinstance(resolved, js.Parallel):
        return TOL, GRAD_TOL
    return SAME, SAME


def cell_methods(cell_names=tuple(CELLS), *, slow_options=False):
    """``(name, method)`` parameters: every cell with every applicable method.

    ``slow_options``: only ``Scan()`` and the default run with ``make test``; the
    other methods (Scan's options, Fused, Parallel), which the other tests here
    compare with ``Scan()``, run with ``make test-slow``.
    """
    return [
        pytest.param(
            name,
            method,
            id=f"{name}-{method_id}",
            marks=(pytest.mark.slow,)
            if slow_options and method_id not in ("Scan", "default")
            else (),
        )
        for name in cell_names
        for method_id, method in methods_for(CELLS[name]).items()
    ]


STATIC = ("reverse", "method")
RNN = jax.jit(recurrence.rnn, static_argnums=0, static_argnames=STATIC)
BIDI = jax.jit(recurrence.bidirectional, static_argnums=0, static_argnames="method")
SCAN = jax.jit(recurrence.scan_rnn, static_argnums=0, static_argnames=STATIC)
STACK = jax.jit(
    recurrence.stack,
    static_argnums=0,
    static_argnames=("bidirectional", "dropout_rate", "train", "method"),
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
@pytest.mark.parametrize("name, method", cell_methods())
@pytest.mark.reference
def test_matches_reference(name, method, direction, pattern):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, valid = make_batch(pattern)
    if direction == "bidirectional":
        (final_f, final_b), hs = BIDI(cell, params, xs, lengths, method=method)
        expected_f, expected_b, expected_hs = ref.run_bidirectional(name, params, xs, lengths, H)
        assert hs.shape == (B, xs.shape[1], 2 * H)
        assert_finals_close(final_f, expected_f, **TOL)
        assert_finals_close(final_b, expected_b, **TOL)
    else:
        reverse = direction == "reverse"
        final, hs = RNN(cell, params["forward"], xs, lengths, reverse=reverse, method=method)
        expected, expected_hs = ref.run_batch(
            name, params["forward"], xs, lengths, H, reverse=reverse
        )
        assert hs.shape == (B, xs.shape[1], H)
        assert_finals_close(final, expected, **TOL)
    assert hs.dtype == jnp.float32
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert not np.asarray(hs)[~valid].any()  # padded outputs are exactly 0


@pytest.mark.parametrize("name, method", cell_methods())
@pytest.mark.reference
def test_initial_carry_argument(name, method):
    cell, params = CELLS[name], PARAMS[name]["forward"]
    xs, lengths, _ = make_batch("with_0")
    leaves, treedef = jax.tree.flatten(cell.initial_carry(params))
    carry = jax.tree.unflatten(
        treedef, [jax.random.normal(jax.random.key(i), (B, H)) for i in range(len(leaves))]
    )
    final, hs = RNN(cell, params, xs, lengths, carry=carry, reverse=True, method=method)
    carries = [example(carry, b) for b in range(B)]
    expected, expected_hs = ref.run_batch(
        name, params, xs, lengths, H, reverse=True, carries=carries
    )
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert_finals_close(final, expected, **TOL)
    for leaf, leaf0 in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
        np.testing.assert_array_equal(leaf[1], leaf0[1])  # length 0: the initial carry


# ---------------------------------------------------------------------------- gradients


def _loss(cell, params, xs, lengths, weights, method):
    (final_f, final_b), hs = recurrence.bidirectional(cell, params, xs, lengths, method=method)
    finals = sum(jnp.sum(leaf) for leaf in jax.tree.leaves((final_f, final_b)))
    return jnp.sum(hs * weights) + finals


GRAD = jax.jit(jax.value_and_grad(_loss, argnums=(1, 2)), static_argnums=(0, 5))
WEIGHTS = jax.random.normal(jax.random.key(5), (B, T, 2 * H))


@pytest.mark.parametrize("name, method", cell_methods())
@pytest.mark.variants
def test_values_and_gradients_agree_with_scan(name, method):
    # Forward and backward direction, each with its own params, and a loss on hs and on
    # every leaf of both final carries.
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, _ = make_batch("mixed")
    value_tol, grad_tol = agreement(cell, method)
    base = GRAD(cell, params, xs, lengths, WEIGHTS, js.Scan())
    other = GRAD(cell, params, xs, lengths, WEIGHTS, method)
    np.testing.assert_allclose(other[0], base[0], **value_tol)
    chex.assert_trees_all_close(other[1], base[1], **grad_tol)


# Fused (the default) has its own float64 oracle per cell and direction
# (test_grad_oracle_fused.py); here Scan() and Scan's options, the options with
# `make test-slow` (they share Scan()'s step code and are compared with it in
# test_values_and_gradients_agree_with_scan).
@pytest.mark.parametrize(
    "method_id",
    [m if m == "Scan" else pytest.param(m, marks=pytest.mark.slow) for m in NONLINEAR_METHODS],
)
@pytest.mark.parametrize(
    "name, direction", [("elman", "forward"), ("gru", "reverse"), ("lstm", "bidirectional")]
)
@pytest.mark.gradcheck
def test_check_grads_float64(name, direction, method_id):
    # One direction per cell keeps it fast; the code of every method is shared by all cells.
    cell, method = CELLS[name], NONLINEAR_METHODS[method_id]
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), PARAMS[name])
        xs = jnp.asarray(rng.normal(size=(3, 4, D)))
        lengths = jnp.array([4, 1, 0], jnp.int32)
        leaves, treedef = jax.tree.flatten(cell.initial_carry(None, jnp.float64))
        carry = jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(size=(3, H))) for _ in leaves])

        @jax.jit
        def f(params, xs, carry):
            if direction == "bidirectional":
                final, hs = recurrence.bidirectional(
                    cell, params, xs, lengths, carry=(carry, carry), method=method
                )
            else:
                final, hs = recurrence.rnn(
                    cell,
                    params["forward"],
                    xs,
                    lengths,
                    carry=carry,
                    reverse=direction == "reverse",
                    method=method,
                )
            assert hs.dtype == jnp.float64
            return final, hs

        # Forward mode too, except through the fused engine (a custom_vjp).
        fused = isinstance(js.resolve_method(cell, method), js.Fused)
        check_grads(f, (params, xs, carry), order=1, modes=["rev"] if fused else ["fwd", "rev"])


# ---------------------------------------------------------------------------- forward mode


def _hs_sum(cell, method, params, xs, lengths):
    final, hs = recurrence.rnn(cell, params, xs, lengths, method=method)
    return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(final))


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.bad_input
def test_forward_mode_through_the_default_names_scan(name):
    cell, params = CELLS[name], PARAMS[name]["forward"]
    xs, lengths, _ = make_batch("mixed")
    assert js.resolve_method(cell) == js.Fused()

    def f(xs):
        return _hs_sum(cell, None, params, xs, lengths)

    match = r"method=jaxseq\.Scan\(\)"
    with pytest.raises(TypeError, match=match):
        jax.jvp(f, (xs,), (jnp.ones_like(xs),))
    with pytest.raises(TypeError, match=match):
        jax.jacfwd(f)(xs)
    with pytest.raises(TypeError, match=match):
        jax.jit(jax.jacfwd(lambda p: _hs_sum(cell, None, p, xs, lengths)))(params)
    # Documented limit: jax.linearize itself returns (it is also how reverse mode starts);
    # its linear function raises JAX's own forward-mode TypeError, which jaxseq cannot reword.
    _, linear = jax.linearize(f, xs)
    with pytest.raises(TypeError, match="forward-mode autodiff"):
        linear(jnp.ones_like(xs))


@pytest.mark.gradcheck
def test_forward_mode_with_scan_matches_finite_differences_and_reverse_mode():
    cell = CELLS["gru"]
    xs, lengths, _ = make_batch("with_0")
    # jvp against central finite differences, in float64.
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), PARAMS["gru"]["forward"])
        xs64 = jnp.asarray(xs, jnp.float64)
        tangent = jnp.asarray(np.random.default_rng(1).normal(size=xs.shape))

        def f(xs):
            return _hs_sum(cell, js.Scan(), params, xs, lengths)

        value, derivative = jax.jvp(f, (xs64,), (tangent,))
        eps = 1e-6
        finite = (f(xs64 + eps * tangent) - f(xs64 - eps * tangent)) / (2 * eps)
        np.testing.assert_allclose(value, f(xs64), rtol=1e-12)
        np.testing.assert_allclose(derivative, finite, rtol=1e-7, atol=1e-9)
    # jacfwd (Scan) against jacrev (the default: the fused engine's hand-written VJP).
    params = PARAMS["gru"]["forward"]
    forward = jax.jit(jax.jacfwd(lambda p: _hs_sum(cell, js.Scan(), p, xs, lengths)))(params)
    reverse = jax.jit(jax.jacrev(lambda p: _hs_sum(cell, None, p, xs, lengths)))(params)
    chex.assert_trees_all_close(forward, reverse, **TOL)


# ---------------------------------------------------------------------------- equivalences

OPTION_VARIANTS = {
    "Scan_unroll4": js.Scan(unroll=4),
    "Scan_unrollT": js.Scan(unroll=T),
    "Scan_remat": js.Scan(remat=True),
    "Scan_hoist": js.Scan(hoist_projection=True),
    "Scan_all": js.Scan(unroll=2, remat=True, hoist_projection=True),
    "Fused": js.Fused(),
}


@pytest.mark.parametrize("variant", OPTION_VARIANTS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_options_agree_with_scan_in_reverse(name, variant):
    # reverse=True: the padded steps come first in the loop, the case where unrolling
    # could go wrong.
    cell, params, method = CELLS[name], PARAMS[name]["backward"], OPTION_VARIANTS[variant]
    xs, lengths, _ = make_batch("with_0")
    base = RNN(cell, params, xs, lengths, reverse=True, method=js.Scan())
    got = RNN(cell, params, xs, lengths, reverse=True, method=method)
    chex.assert_trees_all_close(got, base, **agreement(cell, method)[0])


@pytest.mark.parametrize("method_id", list(NONLINEAR_METHODS))
@pytest.mark.variants
def test_jit_agrees_with_eager(method_id):
    cell, params = CELLS["lstm"], PARAMS["lstm"]["forward"]
    method = NONLINEAR_METHODS[method_id]
    xs, lengths, _ = make_batch("with_1")
    eager = recurrence.rnn(cell, params, xs, lengths, method=method)
    chex.assert_trees_all_close(eager, RNN(cell, params, xs, lengths, method=method), **SAME)
    # scan_rnn, with a Python int length.
    eager = recurrence.scan_rnn(cell, params, xs[3], 4, reverse=True, method=method)
    jitted = SCAN(cell, params, xs[3], lengths[3], reverse=True, method=method)
    chex.assert_trees_all_close(eager, jitted, **SAME)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name, method", cell_methods(slow_options=True))
@pytest.mark.variants
def test_scan_rnn_is_rnn_of_one_example(name, method, reverse):
    # scan_rnn (one example, a scalar length) = rnn on a batch of one, = a row of the
    # batched rnn; also under vmap, and with the length a traced scalar under jit.
    cell, params = CELLS[name], PARAMS[name]["forward"]
    xs, lengths, _ = make_batch("with_0")
    final, hs = RNN(cell, params, xs, lengths, reverse=reverse, method=method)
    tol = agreement(cell, method)[0]
    for b in range(B):
        final_b, hs_b = SCAN(cell, params, xs[b], lengths[b], reverse=reverse, method=method)
        one = RNN(cell, params, xs[b : b + 1], lengths[b : b + 1], reverse=reverse, method=method)
        chex.assert_trees_all_close((final_b, hs_b), jax.tree.map(lambda a: a[0], one), **SAME)
        # Another batch size: the same values up to the method's summation order.
        chex.assert_trees_all_close(
            (final_b, hs_b), jax.tree.map(lambda a, b=b: a[b], (final, hs)), **tol
        )

    @jax.jit
    def batched(xs, lengths):
        return jax.vmap(
            lambda x, n: recurrence.scan_rnn(cell, params, x, n, reverse=reverse, method=method)
        )(xs, lengths)

    chex.assert_trees_all_close(batched(xs, lengths), (final, hs), **tol)


def assert_nan_rows(tree, bad_rows, row_axis=0):
    """Every float leaf of ``tree`` is NaN throughout the rows ``bad_rows``."""
    for leaf in jax.tree.leaves(tree):
        rows = np.take(np.asarray(leaf), bad_rows, axis=row_axis)
        assert np.isnan(rows).all(), rows


@pytest.mark.parametrize("name, method", cell_methods())
@pytest.mark.numerics
def test_lengths_out_of_range_under_jit_are_nan(name, method):
    # Documented: under jit a row whose length is outside [0, T] is NaN in hs and in every
    # leaf of its final carry (rnn, scan_rnn); the other rows are those of a valid call.
    cell, params = CELLS[name], PARAMS[name]["forward"]
    xs, _, _ = make_batch("full")
    wild, fine = jnp.array([T + 3, -2, 2, T]), jnp.array([T, 0, 2, T])
    bad = [0, 1]
    assert [int(n) < 0 or int(n) > T for n in wild] == [True, True, False, False]
    for reverse in (False, True):
        got = RNN(cell, params, xs, wild, reverse=reverse, method=method)
        want = RNN(cell, params, xs, fine, reverse=reverse, method=method)
        assert_nan_rows(got, bad)
        chex.assert_trees_all_equal(*(jax.tree.map(lambda a: a[2:], t) for t in (got, want)))
        for b in bad:
            assert_nan_rows(SCAN(cell, params, xs[b], wild[b], reverse=reverse, method=method), [0])


@pytest.mark.numerics
def test_lengths_out_of_range_under_jit_are_nan_in_bidirectional_and_stack():
    # The NaN rows come from the front-end, after whichever method ran: each method once.
    xs, _, _ = make_batch("full")
    wild = jnp.array([T + 1, 3, -1, T], jnp.int32)
    cases = [("elman", js.Fused()), ("gru", js.Scan()), ("mingru", js.Parallel())]
    for name, method in cases:
        cell = CELLS.get(name) or js.mingru(H)
        params = {
            "forward": random_params(cell, jax.random.key(20), D),
            "backward": random_params(cell, jax.random.key(21), D),
        }
        layers = [params, {k: random_params(cell, jax.random.key(22), 2 * H) for k in params}]
        (final_f, final_b), hs = BIDI(cell, params, xs, wild, method=method)
        assert_nan_rows(((final_f, final_b), hs), [0, 2])
        assert np.isfinite(np.asarray(hs)[[1, 3]]).all()
        finals, hs = STACK(cell, layers, xs, wild, bidirectional=True, method=method)
        assert_nan_rows((finals, hs), [0, 2])
        assert np.isfinite(np.asarray(hs)[[1, 3]]).all()


INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


@pytest.mark.dtype
def test_every_integer_dtype_of_lengths_gives_the_int32_result():
    # rnn and scan_rnn, jitted and eager (host data), every dtype against int32;
    # bidirectional and stack (which share rnn's conversion) jitted with uint8 and uint64.
    # int64/uint64 under x64 (without it JAX narrows them before jaxseq sees them).
    cell, params, method = CELLS["elman"], PARAMS["elman"], js.Scan()
    xs, lengths, _ = make_batch("with_0")
    xs, lengths = xs[:3, :5], np.minimum(np.asarray(lengths[:3]), 5)
    assert 0 in lengths.tolist() and 5 in lengths.tolist()  # a length-0 and a full row

    def one(lengths):
        return (
            recurrence.rnn(cell, params["forward"], xs, lengths, reverse=True, method=method),
            recurrence.scan_rnn(cell, params["forward"], xs[0], lengths[0], method=method),
        )

    def everything(lengths):
        return one(lengths) + (
            recurrence.bidirectional(cell, params, xs, lengths, method=method),
            recurrence.stack(cell, [params["forward"]], xs, lengths, method=method),
        )

    jitted = jax.jit(everything)
    want = jitted(jnp.asarray(lengths, jnp.int32))
    for group in (INT_DTYPES[:3] + INT_DTYPES[4:7], INT_DTYPES[3::4]):
        with jax.enable_x64(group[0] == "int64"):
            for dtype in group:
                typed = lengths.astype(dtype)
                assert jnp.asarray(typed).dtype == np.dtype(dtype)  # really that dtype
                if dtype in ("uint8", "uint64"):
                    chex.assert_trees_all_equal(jitted(jnp.asarray(typed)), want)
                else:
                    chex.assert_trees_all_equal(jax.jit(one)(jnp.asarray(typed)), want[:2])
                chex.assert_trees_all_close(one(typed), want[:2], **SAME)
    # Values that do not fit int32: a host error, or NaN under jit.
    big = np.array([0, 2**32 - 1, 5], np.uint32)
    with pytest.raises(ValueError, match="`lengths` holds 4294967295 .* does not fit int32"):
        everything(big)
    got = jitted(jnp.asarray(big))
    for part in (got[0], got[2], got[3]):
        assert_nan_rows(part, [1])
        for leaf in jax.tree.leaves(part):
            assert np.isfinite(np.asarray(leaf)[[0, 2]]).all()


@pytest.mark.numerics
def test_empty_batch_and_time_axes():
    # B = 0 and T = 0 give empty outputs and the initial carry, with Scan, Fused, Parallel.
    for cell, methods_here in (
        (CELLS["lstm"], (js.Fused(), js.Scan(hoist_projection=True))),
        (js.lru(H), (js.Scan(), js.Parallel())),
    ):
        p = random_params(cell, jax.random.key(0), D)
        layers = [p, random_params(cell, jax.random.key(1), H)]
        zeros = cell.initial_carry(p)
        for method in methods_here:
            for batch, steps in ((0, 3), (2, 0), (0, 0)):
                xs, lengths = jnp.ones((batch, steps, D)), np.zeros((batch,), np.int32)
                final, hs = recurrence.rnn(cell, p, xs, lengths, method=method)
                assert hs.shape == (batch, steps, H)
                for leaf, leaf0 in zip(jax.tree.leaves(final), jax.tree.leaves(zeros)):
                    assert leaf.shape == (batch,) + leaf0.shape and not np.asarray(leaf).any()
                if batch == 0 and steps == 0:
                    continue  # bidirectional and stack share rnn's path for the other two
                _, hs = recurrence.bidirectional(
                    cell, {"forward": p, "backward": p}, xs, lengths, method=method
                )
                assert hs.shape == (batch, steps, 2 * H)
                finals, hs = recurrence.stack(cell, layers, xs, lengths, method=method)
                assert hs.shape == (batch, steps, H) and len(finals) == 2
            final, hs = recurrence.scan_rnn(cell, p, jnp.ones((0, D)), 0, method=method)
            assert hs.shape == (0, H)
            assert not any(np.asarray(x).any() for x in jax.tree.leaves(final))


@pytest.mark.retrace
def test_traces_once_for_same_shapes():
    params = PARAMS["gru"]["forward"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(params, xs, lengths):
        return recurrence.rnn(CELLS["gru"], params, xs, lengths)

    def apply_cell(cell, params, xs, lengths, method):
        return recurrence.rnn(cell, params, xs, lengths, method=method)

    used = (None, js.Scan(unroll=2), js.Fused())
    # One trace per method, whatever the lengths.
    apply_static = jax.jit(
        chex.assert_max_traces(apply_cell, n=len(used)),
        static_argnums=0,
        static_argnames="method",
    )
    for pattern in ("full", "mixed", "with_0"):
        xs, lengths, _ = make_batch(pattern)
        apply(params, xs, lengths)
        for method in used:
            # A freshly built but equal cell and method are the same static arguments.
            fresh = None if method is None else type(method)(**vars(method))
            apply_static(cells.gru(H), params, xs, lengths, method=fresh)


def _count_compiles():
    """A list that grows by one for every XLA compilation while it is registered."""
    from jax._src import monitoring  # the event JAX records for each backend compile

    compiles: list[float] = []

    def listener(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    monitoring.register_event_duration_secs_listener(listener)
    return compiles, listener


@pytest.mark.retrace
def test_eager_calls_compile_once_per_shape_and_an_unhashable_cell_still_runs():
    """Outside jit, each front-end runs its core as one cached program: a second call
    with new values (and a freshly built equal cell) compiles nothing."""
    from jax._src import monitoring

    compiles, listener = _count_compiles()
    try:
        xs, lengths, _ = make_batch("mixed")
        p = PARAMS["gru"]
        for method in (js.Scan(), js.Fused()):
            for attempt, inputs in enumerate((xs, xs + 1)):
                one = inputs[0]
                before = len(compiles)
                recurrence.rnn(cells.gru(H), p["forward"], inputs, lengths, method=method)
                recurrence.bidirectional(cells.gru(H), p, inputs, lengths, method=method)
                recurrence.scan_rnn(cells.gru(H), p["forward"], one, 3, method=method)
                if attempt:
                    assert len(compiles) == before, method
                else:
                    assert len(compiles) > before  # the counter sees compilations
    finally:
        monitoring.unregister_event_duration_listener(listener)
    # A cell that cannot be hashed (an unhashable callable inside) runs the same core
    # without the jit.

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __init__(self, fn):
            self.fn = fn

        def __call__(self, *args, **kwargs):
            return self.fn(*args, **kwargs)

    gru = cells.gru(H)
    odd = gru._replace(step=Unhashable(gru.step))
    with pytest.raises(TypeError):
        hash(odd)
    want = recurrence.rnn(gru, p["forward"], xs, lengths, method=js.Scan())
    got = recurrence.rnn(odd, p["forward"], xs, lengths, method=js.Scan())
    chex.assert_trees_all_close(got, want, atol=1e-6)


@pytest.mark.retrace
def test_a_cell_of_your_own_runs_uncompiled_sees_current_state_and_is_not_kept_alive():
    """Only jaxseq's own cells get a cached program: a custom cell's step may read state
    that changes between calls (a cached program would freeze it), and a cache entry
    would keep the cell and what it closes over alive."""
    import gc
    import weakref

    gru = cells.gru(H)
    p = PARAMS["gru"]["forward"]
    xs, lengths, _ = make_batch("mixed")
    config = {"scale": 1.0}

    def step(params, carry, xp):  # reads `config` at every call
        return gru.step(params, carry, config["scale"] * xp)

    mine = gru._replace(step=step)
    for scale in (1.0, -3.0, 0.5):
        config["scale"] = scale
        got = recurrence.rnn(mine, p, xs, lengths, method=js.Scan())
        with jax.disable_jit():
            want = recurrence.rnn(mine, p, xs, lengths, method=js.Scan())
        chex.assert_trees_all_close(got, want, atol=1e-6)
    assert recurrence._is_library_cell(gru) and not recurrence._is_library_cell(mine)
    for make in (js.lstm, js.elman, js.mingru, js.minlstm, js.lru):
        assert recurrence._is_library_cell(make(4)), make
    assert recurrence._is_library_cell(js.lstm(4, forget_bias=2.0, param_dtype=jnp.bfloat16))

    refs = []
    for _ in range(3):
        fresh = gru._replace(step=lambda params, carry, xp: gru.step(params, carry, xp))
        refs.append(weakref.ref(fresh.step))
        recurrence.rnn(fresh, p, xs, lengths, method=js.Scan())
        del fresh
    gc.collect()
    assert not any(ref() is not None for ref in refs)


@pytest.mark.parametrize("name, method", cell_methods(["gru", "lstm"]))
@pytest.mark.dtype
def test_bfloat16_inputs_keep_a_float32_carry(name, method):
    cell = CELLS[name]
    params_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), PARAMS[name]["forward"])
    xs, lengths, _ = make_batch("mixed", dtype=jnp.bfloat16)
    final, hs = RNN(cell, params_bf16, xs, lengths, method=method)
    assert hs.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(final))
    # The same bfloat16 values upcast: the computation itself runs in float32.
    params_f32 = jax.tree.map(lambda a: a.astype(jnp.float32), params_bf16)
    expected = RNN(cell, params_f32, xs.astype(jnp.float32), lengths, method=method)
    chex.assert_trees_all_close((final, hs), expected, **SAME)


# ---------------------------------------------------------------------------- methods


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
@pytest.mark.variants
def test_resolve_method_table(backend):
    gru = cells.gru(H)
    table = {  # cell: the default method on this backend
        cells.elman(H): js.Fused(),
        gru: js.Fused(),
        cells.lstm(H, forget_bias=0.0, param_dtype=jnp.bfloat16): js.Fused(),
        parallel_cells.mingru(H): js.Scan() if backend == "cpu" else js.Parallel(),
        parallel_cells.minlstm(H, log_space=False): (
            js.Scan() if backend == "cpu" else js.Parallel()
        ),
        parallel_cells.lru(H): js.Scan() if backend == "cpu" else js.Parallel(),
        # Cells of one's own: a new name, or a built-in name on a different step.
        gru._replace(name="mgu"): js.Scan(),
        gru._replace(step=lambda params, carry, xp: jnp.tanh(xp[:H])): js.Scan(),
    }
    for cell, expected in table.items():
        got = js.resolve_method(cell, backend=backend)
        assert got == expected and type(got) is type(expected), (cell.name, got)
        # An explicit method that applies is returned as it is, on every backend.
        for method in methods_for(cell).values():
            if method is not None:
                assert js.resolve_method(cell, method, backend=backend) is method
    if backend == jax.default_backend():
        assert js.resolve_method(parallel_cells.lru(H)) == table[parallel_cells.lru(H)]


def _every_front_end(cell, params, method):
    """Calls of each front-end (and the model config) with ``method``."""
    xs, lengths, _ = make_batch("mixed")
    bidi = {"forward": params, "backward": params}
    return {
        "resolve_method": lambda: js.resolve_method(cell, method),
        "rnn": lambda: js.rnn(cell, params, xs, lengths, method=method),
        "bidirectional": lambda: js.bidirectional(cell, bidi, xs, lengths, method=method),
        "stack": lambda: js.stack(cell, [bidi], xs, lengths, bidirectional=True, method=method),
        "scan_rnn": lambda: js.scan_rnn(cell, params, xs[0], 3, method=method),
    }


NOT_APPLICABLE = {  # id: (cell, method, what the message names)
    "Fused_mingru": (parallel_cells.mingru(H), js.Fused(), r"method=Fused\(\)"),
    "Fused_minlstm": (parallel_cells.minlstm(H), js.Fused(), r"method=Fused\(\)"),
    "Fused_lru": (parallel_cells.lru(H, state_size=3), js.Fused(), r"method=Fused\(\)"),
    "Fused_own_cell": (cells.gru(H)._replace(name="mgu"), js.Fused(), r"method=Fused\(\)"),
    "Fused_own_gru": (
        cells.gru(H)._replace(step=lambda params, carry, xp: jnp.tanh(xp[:H])),
        js.Fused(),
        r"method=Fused\(\).*'gru' cell not built by jaxseq",
    ),
    "Parallel_elman": (cells.elman(H), js.Parallel(), r"method=Parallel\(\)"),
    "Parallel_gru": (cells.gru(H), js.Parallel(), r"method=Parallel\(\)"),
    "Parallel_remat_lstm": (cells.lstm(H), js.Parallel(remat=True), r"method=Parallel\(\)"),
    "Parallel_own_cell": (cells.gru(H)._replace(name="mgu"), js.Parallel(), r"Parallel\(\)"),
    "Scan_hoist_mingru": (
        parallel_cells.mingru(H),
        js.Scan(hoist_projection=True),
        r"Scan\(hoist_projection=\.\.\.\)",
    ),
    "Scan_no_hoist_minlstm": (
        parallel_cells.minlstm(H),
        js.Scan(hoist_projection=False),
        r"Scan\(hoist_projection=\.\.\.\)",
    ),
    "Scan_hoist_lru": (
        parallel_cells.lru(H, state_size=3),
        js.Scan(unroll=2, hoist_projection=True),
        r"Scan\(hoist_projection=\.\.\.\)",
    ),
}


@pytest.mark.parametrize("case", NOT_APPLICABLE)
@pytest.mark.bad_input
def test_method_that_does_not_apply_raises_naming_it(case):
    cell, method, match = NOT_APPLICABLE[case]
    params = cell.init(jax.random.key(0), D)
    for front_end, call in _every_front_end(cell, params, method).items():
        with pytest.raises(ValueError, match=match):
            call()
            pytest.fail(f"{front_end} accepted {method}")


NOT_METHODS = {
    "string_fused": "fused",
    "string_scan": "scan",
    "string_parallel": "parallel",
    "class_Scan": js.Scan,
    "class_Fused": js.Fused,
    "int": 1,
    "dict": {"unroll": 2},
}


@pytest.mark.parametrize("case", NOT_METHODS)
@pytest.mark.bad_input
def test_a_value_that_is_not_a_method_is_a_type_error(case):
    value = NOT_METHODS[case]
    for cell in (cells.gru(H), parallel_cells.mingru(H)):
        params = cell.init(jax.random.key(0), D)
        for front_end, call in _every_front_end(cell, params, value).items():
            with pytest.raises(TypeError, match="`method` must be jaxseq.Scan"):
                call()
                pytest.fail(f"{front_end} accepted {value!r}")


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: js.Scan(unroll=0), ValueError, "`Scan.unroll` must be >= 1"),
        (lambda: js.Scan(unroll=2.0), TypeError, "`Scan.unroll`"),
        (lambda: js.Scan(unroll=True), TypeError, "`Scan.unroll`"),
        (lambda: js.Scan(remat=1), TypeError, "`Scan.remat`"),
        (lambda: js.Scan(hoist_projection=0), TypeError, "`Scan.hoist_projection`"),
        (lambda: js.Parallel(remat="yes"), TypeError, "`Parallel.remat`"),
        (lambda: js.Fused(remat=True), TypeError, "remat"),  # the engine has no remat option
        (lambda: js.Parallel(unroll=2), TypeError, "unroll"),
    ],
    ids=[
        "unroll0",
        "unroll_float",
        "unroll_bool",
        "remat_int",
        "hoist_int",
        "parallel_remat_str",
        "fused_remat",
        "parallel_unroll",
    ],
)
@pytest.mark.bad_input
def test_bad_method_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.variants
def test_methods_are_static_values():
    assert js.Scan(unroll=2) == js.Scan(unroll=2) and hash(js.Scan()) == hash(js.Scan())
    assert js.Scan() != js.Scan(remat=True) and js.Fused() == js.Fused()
    assert js.Parallel() != js.Parallel(remat=True) and js.Scan() != js.Parallel()
    with pytest.raises(AttributeError):
        js.Scan().unroll = 2  # type: ignore[misc]


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


@pytest.mark.parametrize("method_id", list(NONLINEAR_METHODS))
@pytest.mark.parametrize("name, bidirectional", [("elman", True), ("gru", False), ("lstm", True)])
@pytest.mark.reference
def test_stack_matches_reference(name, bidirectional, method_id):
    cell, method = CELLS[name], NONLINEAR_METHODS[method_id]
    layers = stack_params(name, bidirectional)
    xs, lengths, valid = make_batch("with_0")
    # train=False: dropout_rate is ignored.
    finals, hs = STACK(
        cell, layers, xs, lengths, bidirectional=bidirectional, dropout_rate=0.5, method=method
    )
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


@pytest.mark.parametrize("method_id", ["Scan", "Fused"])
@pytest.mark.determinism
def test_stack_dropout_between_layers_only(method_id):
    cell, method = CELLS["gru"], NONLINEAR_METHODS[method_id]
    layers = stack_params("gru", False, num_layers=3)
    xs, lengths, valid = make_batch("mixed")
    key = jax.random.key(3)
    _, hs = STACK(cell, layers, xs, lengths, dropout_rate=0.5, key=key, train=True, method=method)
    # The same computation by hand: dropout on the inputs of layers 1 and 2 only,
    # with keys fold_in(key, layer).
    manual = xs
    for layer, params in enumerate(layers):
        if layer > 0:
            manual = recurrence.variational_dropout(
                manual, rate=0.5, key=jax.random.fold_in(key, layer)
            )
        _, manual = RNN(cell, params, manual, lengths, method=method)
    np.testing.assert_allclose(hs, manual, **SAME)
    # No dropout on the output: no feature is zero over all valid steps of a sequence.
    assert all(np.all(np.asarray(hs)[b, : lengths[b]] != 0, axis=0).all() for b in range(B))
    _, other_key = STACK(
        cell, layers, xs, lengths, dropout_rate=0.5, key=jax.random.key(4), train=True
    )
    assert not np.allclose(hs, other_key)
    _, eval_hs = STACK(
        cell, layers, xs, lengths, dropout_rate=0.5, key=key, train=False, method=method
    )
    _, no_dropout = STACK(cell, layers, xs, lengths, method=method)
    np.testing.assert_array_equal(eval_hs, no_dropout)


# ---------------------------------------------------------------------------- pooling


@pytest.mark.reference
def test_pooling_over_valid_steps_only():
    xs, lengths, valid = make_batch("with_0")
    where = masks.length_mask(lengths, T)
    hs = jnp.where(jnp.asarray(valid)[:, :, None], xs, jnp.nan)
    mean, maximum = pooling.masked_mean(hs, where=where), pooling.masked_max(hs, where=where)
    for b in range(B):
        n = int(lengths[b])
        expected_mean = np.asarray(xs[b, :n]).mean(0) if n else np.zeros(D)
        expected_max = np.asarray(xs[b, :n]).max(0) if n else np.zeros(D)
        np.testing.assert_allclose(mean[b], expected_mean, **TOL)
        np.testing.assert_array_equal(maximum[b], expected_max)
    grad = jax.grad(
        lambda h: (
            jnp.sum(pooling.masked_mean(h, where=where))
            + jnp.sum(pooling.masked_max(h, where=where))
        )
    )(hs)
    assert bool(jnp.all(jnp.isfinite(grad))) and not np.asarray(grad)[~valid].any()
    assert pooling.last_valid is masks.last_valid


# ---------------------------------------------------------------------------- bad inputs


def _bad_calls():
    cell, params = CELLS["gru"], PARAMS["gru"]
    xs, lengths, valid = make_batch("mixed")
    p = params["forward"]
    layers = [p, random_params(cell, jax.random.key(0), H)]
    return {
        "xs_rank": (
            lambda: recurrence.rnn(cell, p, xs[0], lengths),
            AssertionError,
            r"`xs` must have rank 3 \[B, T, D\]",
        ),
        "xs_int": (
            lambda: recurrence.rnn(cell, p, xs.astype(jnp.int32), lengths),
            AssertionError,
            "`xs` must have a floating dtype",
        ),
        "lengths_float": (
            lambda: recurrence.rnn(cell, p, xs, lengths.astype(jnp.float32)),
            AssertionError,
            "`lengths` must have an integer dtype",
        ),
        "lengths_size": (
            lambda: recurrence.bidirectional(cell, params, xs, lengths[:3]),
            AssertionError,
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
        "length_float": (
            lambda: recurrence.scan_rnn(cell, p, xs[0], 3.0),
            AssertionError,
            "`length` must have an integer dtype",
        ),
        "length_bool_mask": (  # the old scan_rnn took a bool mask [T]
            lambda: recurrence.scan_rnn(cell, p, xs[0], jnp.asarray(valid[0])),
            AssertionError,
            "`length` must have an integer dtype",
        ),
        "length_not_scalar": (
            lambda: recurrence.scan_rnn(cell, p, xs[0], lengths[:1]),
            AssertionError,
            r"`length` must have shape \[\] \(a scalar\)",
        ),
        "length_above_T": (
            lambda: recurrence.scan_rnn(cell, p, xs[0], 7),
            ValueError,
            r"`length` must be in \[0, 6\]",
        ),
        "length_negative": (
            lambda: recurrence.scan_rnn(cell, p, xs[0], np.int32(-1)),
            ValueError,
            r"`length` must be in \[0, 6\]",
        ),
        "scan_xs_rank": (
            lambda: recurrence.scan_rnn(cell, p, xs, 3),
            AssertionError,
            r"`xs` must have rank 2 \[T, D\]",
        ),
        "reverse": (
            lambda: recurrence.rnn(cell, p, xs, lengths, reverse=1),
            TypeError,
            "`reverse`",
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
            AssertionError,
            "`carry`.*leading B",
        ),
        "not_a_cell": (lambda: recurrence.rnn("gru", p, xs, lengths), TypeError, "`cell`"),
        "layer_params": (
            lambda: recurrence.stack(cell, [], xs, lengths),
            ValueError,
            "`layer_params`",
        ),
        "pool_hs_rank": (
            lambda: pooling.masked_mean(xs[0], where=jnp.asarray(valid)),
            AssertionError,
            "`hs` must have rank 3",
        ),
        "pool_where_not_bool": (
            lambda: pooling.masked_max(xs, where=lengths),
            AssertionError,
            "`where` must be boolean",
        ),
        "pool_where_shape": (
            lambda: pooling.masked_max(xs, where=jnp.asarray(valid)[:, :4]),
            AssertionError,
            r"`where` must have shape \[4, 6\]",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
@pytest.mark.bad_input
def test_bad_inputs_raise_naming_the_argument(case):
    call, error, match = _bad_calls()[case]
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("method_id", list(NONLINEAR_METHODS))
@pytest.mark.bad_input
def test_params_of_another_cell_raise_with_every_method(method_id):
    # The fused engine reads the weights itself: the cell's own checks run first.
    cell, method = CELLS["gru"], NONLINEAR_METHODS[method_id]
    xs, lengths, _ = make_batch("mixed")
    # A wrong set of keys is a ValueError; a width that does not fit is a shape error.
    cases = {
        "`params` of a gru cell": (ValueError, PARAMS["lstm"]["forward"]),
        r"`xs` must have shape \[B, T, D\] with D = 4": (
            AssertionError,
            random_params(cell, jax.random.key(0), 4),
        ),
        # Params of a wider gru: the first weight whose shape does not fit is named.
        r"`params\['W_i'\]` of a gru cell of hidden size 5 must have shape \(D, 15\)": (
            AssertionError,
            random_params(cells.gru(H + 1), jax.random.key(0)),
        ),
    }
    for match, (error, params) in cases.items():
        with pytest.raises(error, match=match):
            recurrence.rnn(cell, params, xs, lengths, method=method)
        with pytest.raises(error, match=match):
            RNN(cell, params, xs, lengths, method=method)


@pytest.mark.bad_input
def test_the_old_api_is_gone():
    cell, p = CELLS["gru"], PARAMS["gru"]["forward"]
    xs, lengths, _ = make_batch("mixed")
    for old in (dict(mode="parallel"), dict(unroll=2), dict(remat=True)):
        with pytest.raises(TypeError, match="unexpected keyword"):
            recurrence.rnn(cell, p, xs, lengths, **old)
    with pytest.raises(TypeError, match="unexpected keyword"):
        recurrence.stack(cell, [p], xs, lengths, hoist_projection=True)
    for name in ("resolve_mode", "fused", "train", "loop", "checkpoint", "distributed"):
        assert not hasattr(js, name), name
    assert not hasattr(recurrence, "resolve_mode")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("jaxseq.fused")
