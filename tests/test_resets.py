"""Resets inside sequences (packed segments) and truncated BPTT (:mod:`jaxseq.streaming`).

A row holding several packed segments must give exactly what running each segment
alone gives. Two independent oracles:

* values: the float64 NumPy references (``tests/reference_rnn.py``,
  ``tests/reference_parallel.py``) run on every segment alone
  (:func:`tests.reference_rnn.run_packed`), ``atol = rtol = 1e-5``;
* gradients (params, inputs, the given carry): the same objective computed by
  *unpacking* the rows, every segment its own row of a batch without resets, run
  with ``Scan()`` (the path tested against the references in test_recurrence.py);
  the gradients w.r.t. the packed inputs come back through the gather. Tolerances
  are those of a method against ``Scan()`` (:func:`tests.test_recurrence.agreement`).

The batch has random segment starts and, by construction, a reset at step 0, two
consecutive resets, resets at padded steps and an empty row with resets. Compiled
functions are module-level jits with the cell and method static.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxseq as js
from jaxseq import cells, parallel_cells, recurrence, streaming
from tests import reference_parallel as ref_par
from tests import reference_rnn as ref
from tests.test_cells import random_params as random_nonlinear_params
from tests.test_recurrence import agreement

B, T, D, H, N = 4, 8, 3, 4, 3
TOL = dict(atol=1e-5, rtol=1e-5)
LENGTHS = np.array([8, 6, 7, 0], np.int32)
RING = dict(r_min=0.5, r_max=0.95, max_phase=math.pi)


def _h0(params, dtype=jnp.float32, *, key):
    """An initial carry that depends on the params (signed, non-zero)."""
    return jnp.tanh(params[key][:H]).astype(dtype)


def _with_h0(cell, key):
    return cell._replace(initial_carry=cells._bind(_h0, key=key))


CELLS = {
    "elman": cells.elman(H),
    "gru": cells.gru(H),
    "lstm": cells.lstm(H),
    "mingru": parallel_cells.mingru(H),
    "minlstm": parallel_cells.minlstm(H),
    "lru": parallel_cells.lru(H, state_size=N, **RING),
    # Initial carries that depend on the params: the gradient reaches them at every
    # segment start. The GRU one runs with Scan (not a built-in cell any more); the
    # log-space minGRU exercises the segmented log scan with a signed initial state, the
    # linear-space one the (0, a h0 + b) element of the linear scan.
    "gru_h0": _with_h0(cells.gru(H), "b_h"),
    "mingru_h0": _with_h0(parallel_cells.mingru(H), "b"),
    "mingru_linear_h0": _with_h0(parallel_cells.mingru(H, log_space=False), "b"),
}
LINEAR = ("mingru", "minlstm", "lru", "mingru_h0", "mingru_linear_h0")
REF_KIND = {"mingru_h0": "mingru", "mingru_linear_h0": "mingru_linear", "gru_h0": "gru"}


def _params(name, key):
    cell = CELLS[name]
    if name in LINEAR:
        params = cell.init(key, D)
        return {
            k: (
                v
                + (0.5 if k == "b" else 0.05)
                * jax.random.normal(jax.random.fold_in(key, i), v.shape)
            )
            for i, (k, v) in enumerate(sorted(params.items()))
        }
    return random_nonlinear_params(cell, key, D)


PARAMS = {name: _params(name, jax.random.key(3)) for name in CELLS}

SCAN_OPTIONS = {"Scan_unroll3": js.Scan(unroll=3), "Scan_remat": js.Scan(remat=True)}


def methods_for(name):
    """``(id, method, slow)``: Scan() and the cell's engine in the fast set, options slow."""
    cell = CELLS[name]
    out = [("Scan", js.Scan(), False)]
    if parallel_cells.is_linear(cell):
        out += [
            ("Parallel", js.Parallel(), False),
            ("Parallel_remat", js.Parallel(remat=True), True),
        ]
    else:
        if js.resolve_method(cell) == js.Fused():
            out.append(("Fused", js.Fused(), False))
        out.append(("Scan_hoist", js.Scan(hoist_projection=True), True))
    out += [(k, m, True) for k, m in SCAN_OPTIONS.items()]
    return out


def cell_method_params(names=tuple(CELLS), fast=None):
    """Every cell with every method; ``fast``: the ``(name, method id)`` pairs that run
    with ``make test`` (default: the fast ones of :func:`methods_for`), the rest slow."""
    return [
        pytest.param(
            name,
            method,
            id=f"{name}-{mid}",
            marks=(pytest.mark.slow,)
            if (slow if fast is None else (name, mid) not in fast)
            else (),
        )
        for name in names
        for mid, method, slow in methods_for(name)
    ]


# Scan() with resets runs in the fast set for one cell of each kind (its code is shared
# by the cells); every engine (Fused, Parallel) for every cell.
FAST = {
    ("elman", "Fused"),
    ("gru", "Fused"),
    ("lstm", "Fused"),
    ("lstm", "Scan"),
    ("mingru", "Parallel"),
    ("mingru", "Scan"),
    ("minlstm", "Parallel"),
    ("lru", "Parallel"),
    ("lru", "Scan"),
    ("gru_h0", "Scan"),
    ("mingru_h0", "Parallel"),
    ("mingru_linear_h0", "Parallel"),
}


def make_resets(lengths=LENGTHS, max_len=T, seed=0):
    """Random segment starts plus: a reset at step 0 (row 0), consecutive resets
    (row 1), resets at padded steps (rows 1, 2 and the empty row 3), none at step 0
    (rows 1, 2: their first segment continues the given carry)."""
    rng = np.random.default_rng(seed)
    resets = rng.random((len(lengths), max_len)) < 0.3
    resets[0, 0] = True
    resets[1, 0], resets[1, 2], resets[1, 3] = False, True, True
    resets[1, 6:] = True
    resets[2, 0], resets[2, 7] = False, True
    resets[3, :] = True
    return resets


RESETS = make_resets()
XS = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, D)), jnp.float32)
W_HS = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, 2 * H)), jnp.float32)


def initial_np(name, params):
    """The cell's initial carry of ONE example, float64 NumPy."""
    init = CELLS[name].initial_carry(params)
    return jax.tree.map(lambda a: np.asarray(a, np.float64), init)


def random_carry(name, key, batch=B):
    leaves, treedef = jax.tree.flatten(CELLS[name].initial_carry(PARAMS[name]))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, (batch,) + x.shape) for k, x in zip(keys, leaves)]
    )


def np_sequence_runner(name, params):
    """``run(xs, reverse, carry)`` of the float64 reference, with the cell's own initial carry."""
    kind = REF_KIND.get(name, name)
    init = initial_np(name, params)

    def run(xs, *, reverse, carry):
        carry = init if carry is None else carry
        if name in LINEAR:
            return ref_par.run_sequence(kind, params, xs, H, N, reverse=reverse, carry=carry)
        return ref.run_sequence(kind, params, xs, H, reverse=reverse, carry=carry)

    return run


def example(tree, b):
    return jax.tree.map(lambda a: np.asarray(a[b], np.float64), tree)


def assert_finals_close(got, expected_list, **tol):
    for b, expected in enumerate(expected_list):
        jax.tree.map(
            lambda a, e: np.testing.assert_allclose(a, np.asarray(e), **tol),
            example(got, b),
            tuple(expected) if isinstance(expected, tuple) else expected,
        )


# ---------------------------------------------------------------------------- unpacking


def unpack_plan(lengths, resets, *, reverse):
    """Every segment as its own row: ``(src [J], start [J], length [J], receives [J],
    final_of [B])``: row j reads ``xs[src_j, start_j : start_j + length_j]``; it starts
    from the given carry when ``receives_j`` (else from the initial carry); row
    ``final_of[b]`` holds the final carry of packed row b (an empty row: its own empty
    segment)."""
    src, start, length, receives, final_of = [], [], [], [], []
    for b in range(len(lengths)):
        spans = ref.segments(int(lengths[b]), resets[b]) or [(0, 0)]
        for i, (s, e) in enumerate(spans):
            if reverse:
                gets = i == len(spans) - 1
                is_final = i == 0
            else:
                gets = i == 0 and not (int(lengths[b]) > 0 and resets[b][0])
                is_final = i == len(spans) - 1
            if is_final:
                final_of.append(len(src))
            src.append(b)
            start.append(s)
            length.append(e - s)
            receives.append(gets)
    return tuple(np.asarray(a) for a in (src, start, length, receives, final_of))


def unpack(x_BT, plan):
    """``x [B, T, ...]`` -> ``[J, T, ...]``: each segment at the start of its own row."""
    src, start, length, _, _ = plan
    steps = x_BT.shape[1]
    index = np.minimum(start[:, None] + np.arange(steps)[None, :], steps - 1)
    valid = np.arange(steps)[None, :] < length[:, None]
    out = x_BT[src[:, None], index]
    return jnp.where(valid.reshape(valid.shape + (1,) * (out.ndim - 2)), out, 0.0)


def _objective(finals, hs, w_hs, w_final):
    """A loss that weighs every output and every leaf of the final carries."""
    total = jnp.sum(hs * w_hs)
    for leaf in jax.tree.leaves(finals):
        total = total + jnp.sum(jnp.sin(leaf) * w_final[:, : leaf.shape[-1]])
    return total


W_FINAL = jnp.asarray(np.random.default_rng(3).normal(size=(B, max(H, N))), jnp.float32)


def _packed(cell, method, reverse, params, xs, lengths, resets, carry):
    finals, hs = recurrence.rnn(
        cell, params, xs, lengths, carry=carry, reverse=reverse, method=method, resets=resets
    )
    return _objective(finals, hs, W_HS[..., :H], W_FINAL), (finals, hs)


STATIC = ("reverse", "method")
RNN = jax.jit(recurrence.rnn, static_argnums=0, static_argnames=STATIC)
SCAN_RNN = jax.jit(recurrence.scan_rnn, static_argnums=0, static_argnames=STATIC)
PACKED = jax.jit(
    jax.value_and_grad(_packed, argnums=(3, 4, 7), has_aux=True), static_argnums=(0, 1, 2)
)


def _unpacked(cell, reverse, plan, params, xs, carry):
    src, _, length, receives, final_of = plan
    init = jax.tree.map(
        lambda i: jnp.broadcast_to(i, (len(src),) + i.shape), cell.initial_carry(params)
    )
    given = jax.tree.map(lambda c: c[src], carry)
    start_carry = jax.tree.map(
        lambda g, i: jnp.where(receives.reshape((-1,) + (1,) * (g.ndim - 1)), g, i), given, init
    )
    finals, hs = recurrence.rnn(
        cell,
        params,
        unpack(xs, plan),
        jnp.asarray(length, jnp.int32),
        carry=start_carry,
        reverse=reverse,
        method=js.Scan(),
    )
    finals = jax.tree.map(lambda f: f[final_of], finals)
    return _objective(finals, hs, unpack(W_HS[..., :H], plan), W_FINAL)


@functools.cache
def unpacked_grads(name, reverse):
    """The gradients of the unpacked objective at ``PARAMS[name]``, ``XS`` and
    :func:`given_carry` (shared by the methods of a cell)."""
    plan = unpack_plan(LENGTHS, RESETS, reverse=reverse)
    grad = jax.jit(
        jax.grad(lambda p, x, c: _unpacked(CELLS[name], reverse, plan, p, x, c), (0, 1, 2))
    )
    return grad(PARAMS[name], XS, given_carry(name))


def given_carry(name):
    return random_carry(name, jax.random.key(4))


# ---------------------------------------------------------------------------- rnn


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("name, method", cell_method_params(fast=FAST))
@pytest.mark.reference
def test_packed_rows_match_segments_run_alone(name, method, reverse):
    cell, params = CELLS[name], PARAMS[name]
    carry = given_carry(name)
    (_, (finals, hs)), grads = PACKED(
        cell, method, reverse, params, XS, jnp.asarray(LENGTHS), jnp.asarray(RESETS), carry
    )
    # Values: the float64 reference, every segment alone.
    carries = [example(carry, b) for b in range(B)]
    expected_finals, expected_hs = ref.run_packed(
        np_sequence_runner(name, params), XS, LENGTHS, RESETS, H, reverse=reverse, carries=carries
    )
    np.testing.assert_allclose(np.asarray(hs, np.float64), expected_hs, **TOL)
    assert_finals_close(finals, expected_finals, **TOL)
    # Gradients (params, xs, carry): the unpacked batch, every segment its own row.
    expected = unpacked_grads(name, reverse)
    _, grad_tol = agreement(cell, method)
    chex.assert_trees_all_close(grads, expected, **grad_tol)
    # The given carry reaches the rows whose first segment (in processing order)
    # continues it, and the empty row (its final carry); row 0 resets at step 0.
    state_grad = np.asarray(jax.tree.leaves(grads[2])[0])
    receiving = [1, 2, 3] if not reverse else [0, 1, 2, 3]
    assert np.all(state_grad[receiving] != 0)
    if not reverse:
        assert np.all(state_grad[0] == 0)


@pytest.mark.parametrize(
    "name, method",
    cell_method_params(
        ("gru", "lstm", "mingru", "lru"),
        fast={("gru", "Fused"), ("lstm", "Scan"), ("mingru", "Parallel"), ("lru", "Scan")},
    ),
)
@pytest.mark.variants
def test_no_resets_and_all_false_give_todays_result(name, method):
    cell, params = CELLS[name], PARAMS[name]
    carry = random_carry(name, jax.random.key(5))
    lengths = jnp.asarray(LENGTHS)
    for reverse in (False, True):
        # resets=None is the code path without resets. All-False runs the resets path:
        # the same arithmetic (every select keeps the carry), compiled as another XLA
        # program, which may round differently (seen: 1 ulp for the LSTM with Scan).
        base = PACKED(cell, method, reverse, params, XS, lengths, None, carry)
        false = PACKED(cell, method, reverse, params, XS, lengths, jnp.zeros((B, T), bool), carry)
        chex.assert_trees_all_close(false, base, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name, method", [("gru", js.Fused()), ("minlstm", js.Parallel())])
@pytest.mark.padding_invariance
def test_resets_at_padded_steps_are_ignored(name, method):
    cell, params = CELLS[name], PARAMS[name]
    carry = random_carry(name, jax.random.key(6))
    valid = np.arange(T)[None, :] < LENGTHS[:, None]
    flipped = np.where(valid, RESETS, ~RESETS)
    padded_nan = jnp.where(jnp.asarray(valid)[..., None], XS, jnp.nan)
    for reverse in (False, True):
        a = PACKED(cell, method, reverse, params, XS, jnp.asarray(LENGTHS), RESETS, carry)
        b = PACKED(cell, method, reverse, params, padded_nan, jnp.asarray(LENGTHS), flipped, carry)
        chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize(
    "name, method",
    [("lstm", js.Fused()), pytest.param("lru", js.Parallel(), marks=pytest.mark.slow)],
)
@pytest.mark.variants
def test_jit_and_no_jit_agree(name, method):
    cell, params = CELLS[name], PARAMS[name]
    args = (params, XS, jnp.asarray(LENGTHS))
    eager = recurrence.rnn(cell, *args, method=method, resets=jnp.asarray(RESETS), reverse=True)
    jitted = jax.jit(
        lambda p, x, n, r: recurrence.rnn(cell, p, x, n, method=method, resets=r, reverse=True)
    )(*args, jnp.asarray(RESETS))
    chex.assert_trees_all_close(eager, jitted, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "name, method",
    [("gru", js.Scan()), pytest.param("mingru", js.Parallel(), marks=pytest.mark.slow)],
)
@pytest.mark.variants
def test_scan_rnn_is_rnn_of_one_row(name, method):
    cell, params = CELLS[name], PARAMS[name]
    for reverse in (False, True):
        finals, hs = recurrence.rnn(
            cell, params, XS, jnp.asarray(LENGTHS), method=method, reverse=reverse, resets=RESETS
        )
        for b in range(B):
            final_b, hs_b = SCAN_RNN(
                cell,
                params,
                XS[b],
                jnp.asarray(LENGTHS[b]),
                method=method,
                reverse=reverse,
                resets=jnp.asarray(RESETS[b]),
            )
            chex.assert_trees_all_close(hs_b, hs[b], atol=1e-6, rtol=1e-6)
            chex.assert_trees_all_close(
                final_b, jax.tree.map(lambda f, b=b: f[b], finals), atol=1e-6, rtol=1e-6
            )


@pytest.mark.parametrize(
    "name, method",
    [
        pytest.param("elman", js.Fused(), marks=pytest.mark.slow),
        ("gru", js.Fused()),
        ("lstm", js.Fused()),
        pytest.param("gru", js.Scan(), marks=pytest.mark.slow),
        pytest.param("mingru_h0", js.Parallel(), marks=pytest.mark.slow),
    ],
)
@pytest.mark.gradcheck
def test_check_grads_float64_with_resets(name, method):
    # The fused engine's hand-written backward pass with restarts, numerically.
    cell = CELLS[name]
    rng = np.random.default_rng(7)
    resets = jnp.asarray([[True, False, True, True, False], [False, False, True, False, True]])
    lengths = jnp.asarray([5, 4], jnp.int32)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), PARAMS[name])
        xs = jnp.asarray(rng.normal(size=(2, 5, D)))
        leaves, treedef = jax.tree.flatten(cell.initial_carry(params, jnp.float64))
        carry = jax.tree.unflatten(
            treedef, [jnp.asarray(rng.normal(size=(2,) + x.shape)) for x in leaves]
        )

        @jax.jit
        def f(params, xs, carry):
            out = []
            for reverse in (False, True):
                final, hs = recurrence.rnn(
                    cell,
                    params,
                    xs,
                    lengths,
                    carry=carry,
                    method=method,
                    resets=resets,
                    reverse=reverse,
                )
                assert hs.dtype == jnp.float64
                out.append((final, hs))
            return out

        modes = ["rev"] if isinstance(method, js.Fused) else ["fwd", "rev"]
        check_grads(f, (params, xs, carry), order=1, modes=modes)


@pytest.mark.parametrize(
    "name, method", [("gru", js.Scan()), ("lstm", js.Fused()), ("lru", js.Parallel())]
)
@pytest.mark.padding_invariance
def test_no_steps_at_all_returns_the_given_carry(name, method):
    cell, params = CELLS[name], PARAMS[name]
    carry = given_carry(name)
    for reverse in (False, True):
        final, hs = recurrence.rnn(
            cell,
            params,
            jnp.zeros((B, 0, D)),
            jnp.zeros((B,), jnp.int32),
            carry=carry,
            method=method,
            reverse=reverse,
            resets=jnp.zeros((B, 0), bool),
        )
        assert hs.shape == (B, 0, H)
        chex.assert_trees_all_equal(final, carry)


# ---------------------------------------------------------------------------- bidirectional, stack


def _bidi_params(name):
    return {"forward": PARAMS[name], "backward": _params(name, jax.random.key(8))}


@pytest.mark.parametrize(
    "name, method",
    cell_method_params(
        ("gru", "lstm", "minlstm", "lru"), fast={("lstm", "Fused"), ("lru", "Parallel")}
    ),
)
@pytest.mark.reference
def test_bidirectional_runs_each_segment_both_ways(name, method):
    cell, params = CELLS[name], _bidi_params(name)

    def loss(params, xs):
        (final_f, final_b), hs = recurrence.bidirectional(
            cell, params, xs, jnp.asarray(LENGTHS), method=method, resets=jnp.asarray(RESETS)
        )
        return _objective((final_f, final_b), hs, W_HS, W_FINAL), (final_f, final_b, hs)

    (_, (final_f, final_b, hs)), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
        params, XS
    )
    exp_f, hs_f = ref.run_packed(
        np_sequence_runner(name, params["forward"]), XS, LENGTHS, RESETS, H
    )
    exp_b, hs_b = ref.run_packed(
        np_sequence_runner(name, params["backward"]), XS, LENGTHS, RESETS, H, reverse=True
    )
    np.testing.assert_allclose(np.asarray(hs, np.float64), np.concatenate([hs_f, hs_b], -1), **TOL)
    assert_finals_close(final_f, exp_f, **TOL)
    assert_finals_close(final_b, exp_b, **TOL)

    plan_f = unpack_plan(LENGTHS, RESETS, reverse=False)
    plan_b = unpack_plan(LENGTHS, RESETS, reverse=True)

    def unpacked(params, xs):
        out = []
        for direction, plan, reverse in (("forward", plan_f, False), ("backward", plan_b, True)):
            finals, hs = recurrence.rnn(
                cell,
                params[direction],
                unpack(xs, plan),
                jnp.asarray(plan[2], jnp.int32),
                reverse=reverse,
                method=js.Scan(),
            )
            w = W_HS[..., :H] if direction == "forward" else W_HS[..., H:]
            out.append(
                (jax.tree.map(lambda f, i=plan[4]: f[i], finals), jnp.sum(hs * unpack(w, plan)))
            )
        return _objective((out[0][0], out[1][0]), jnp.zeros(()), jnp.zeros(()), W_FINAL) + (
            out[0][1] + out[1][1]
        )

    expected = jax.grad(unpacked, (0, 1))(params, XS)
    chex.assert_trees_all_close(grads, expected, **agreement(cell, method)[1])


@pytest.mark.parametrize(
    "name, method, bidirectional",
    [
        pytest.param("lstm", js.Fused(), True, id="lstm-Fused-bidi"),
        pytest.param("mingru", js.Parallel(), False, id="mingru-Parallel-uni"),
        pytest.param("lstm", js.Scan(), False, id="lstm-Scan-uni", marks=pytest.mark.slow),
        pytest.param("lstm", js.Fused(), False, id="lstm-Fused-uni", marks=pytest.mark.slow),
        pytest.param("mingru", js.Scan(), True, id="mingru-Scan-bidi", marks=pytest.mark.slow),
        pytest.param(
            "mingru", js.Parallel(), True, id="mingru-Parallel-bidi", marks=pytest.mark.slow
        ),
    ],
)
@pytest.mark.reference
def test_two_layer_stack_runs_each_segment_alone(name, method, bidirectional):
    cell = CELLS[name]
    width = 2 * H if bidirectional else H
    layers = recurrence.init_stack(
        jax.random.key(9), cell, D, num_layers=2, bidirectional=bidirectional
    )

    def loss(layers, xs, lengths, resets):
        finals, hs = recurrence.stack(
            cell, layers, xs, lengths, bidirectional=bidirectional, method=method, resets=resets
        )
        return jnp.sum(hs * W_HS[..., :width]), (finals, hs)

    grad_fn = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))
    (_, (finals, hs)), grads = grad_fn(layers, XS, jnp.asarray(LENGTHS), jnp.asarray(RESETS))

    # Values: layer by layer, every segment alone, in float64.
    inputs = np.asarray(XS, np.float64)
    for layer, params in enumerate(layers):
        if bidirectional:
            fin_f, out_f = ref.run_packed(
                np_sequence_runner(name, params["forward"]), inputs, LENGTHS, RESETS, H
            )
            fin_b, out_b = ref.run_packed(
                np_sequence_runner(name, params["backward"]),
                inputs,
                LENGTHS,
                RESETS,
                H,
                reverse=True,
            )
            assert_finals_close(finals[layer][0], fin_f, **TOL)
            assert_finals_close(finals[layer][1], fin_b, **TOL)
            inputs = np.concatenate([out_f, out_b], -1)
        else:
            fin, inputs = ref.run_packed(
                np_sequence_runner(name, params), inputs, LENGTHS, RESETS, H
            )
            assert_finals_close(finals[layer], fin, **TOL)
    np.testing.assert_allclose(np.asarray(hs, np.float64), inputs, **TOL)

    # Gradients: the unpacked batch through the same stack, without resets.
    plan = unpack_plan(LENGTHS, RESETS, reverse=False)

    def unpacked(layers, xs):
        _, hs = recurrence.stack(
            cell,
            layers,
            unpack(xs, plan),
            jnp.asarray(plan[2], jnp.int32),
            bidirectional=bidirectional,
            method=js.Scan(),
        )
        return jnp.sum(hs * unpack(W_HS[..., :width], plan))

    expected = jax.grad(unpacked, (0, 1))(layers, XS)
    chex.assert_trees_all_close(grads, expected, **agreement(cell, method)[1])


# ---------------------------------------------------------------------------- bad input


@pytest.mark.bad_input
def test_bad_resets_raise_naming_resets():
    cell, params = CELLS["gru"], PARAMS["gru"]
    lengths = jnp.asarray(LENGTHS)
    calls = {
        "rnn": lambda r: recurrence.rnn(cell, params, XS, lengths, resets=r),
        "bidirectional": lambda r: recurrence.bidirectional(
            cell, _bidi_params("gru"), XS, lengths, resets=r
        ),
        "stack": lambda r: recurrence.stack(cell, [params], XS, lengths, resets=r),
        "scan_rnn": lambda r: recurrence.scan_rnn(cell, params, XS[0], 8, resets=r[0]),
    }
    for call in calls.values():
        with pytest.raises(AssertionError, match="`resets`"):
            call(jnp.zeros((B, T + 1), bool))
        with pytest.raises(TypeError, match="`resets` must be boolean.*int32"):
            call(jnp.zeros((B, T), jnp.int32))
        with pytest.raises(TypeError, match="`resets` must be boolean.*float32"):
            call(jnp.zeros((B, T), jnp.float32))
    with pytest.raises(AssertionError, match="`resets`"):
        recurrence.rnn(cell, params, XS, lengths, resets=jnp.zeros((T,), bool))


# ---------------------------------------------------------------------------- streaming

K = 3  # window length: T_total = 8 is not a multiple, so the last window is padded
STREAM_LENGTHS = np.array([8, 8, 5, 7], np.int32)


def _window_loss(cell, method, params, xs_w, lengths_w, resets_w, carry):
    finals, hs = recurrence.rnn(
        cell, params, xs_w, lengths_w, carry=carry, method=method, resets=resets_w
    )
    return jnp.sum(hs**2 * W_HS[:, : xs_w.shape[1], :H]), finals


@pytest.mark.parametrize(
    "name, method",
    [("lstm", js.Fused()), pytest.param("mingru", js.Parallel(), marks=pytest.mark.slow)],
)
@pytest.mark.reference
def test_tbptt_forward_equals_one_long_pass_and_grad_the_windowed_objective(name, method):
    cell, params = CELLS[name], PARAMS[name]
    lengths = jnp.asarray(STREAM_LENGTHS)
    resets = jnp.asarray(make_resets(STREAM_LENGTHS, seed=3))
    initial = cell.initial_carry(params)
    (xs_w, resets_w), lengths_w = streaming.windows((XS, resets), K, lengths=lengths)
    assert xs_w.shape == (3, B, K, D) and resets_w.dtype == jnp.bool_
    np.testing.assert_array_equal(lengths_w, [[3, 3, 3, 3], [3, 3, 2, 3], [2, 2, 0, 1]])

    # Forward: carried from window to window, the values of one long pass.
    long_final, long_hs = RNN(cell, params, XS, lengths, method=method, resets=resets)
    carry = jax.tree.map(lambda i: jnp.broadcast_to(i, (B,) + i.shape), initial)
    pieces = []
    for n in range(3):
        carry, hs = RNN(
            cell, params, xs_w[n], lengths_w[n], carry=carry, method=method, resets=resets_w[n]
        )
        pieces.append(hs)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1)[:, :T], long_hs, atol=1e-6)
    chex.assert_trees_all_close(carry, long_final, atol=1e-6, rtol=1e-6)

    # Gradient: windows with tbptt_carry, against an explicitly written windowed loss.
    grad_window = jax.jit(
        jax.grad(lambda p, *a: _window_loss(cell, method, p, *a), has_aux=True),
    )
    carry = jax.tree.map(lambda i: jnp.broadcast_to(i, (B,) + i.shape), initial)
    total = jax.tree.map(jnp.zeros_like, params)
    for n in range(3):
        carry = streaming.tbptt_carry(carry, initial)
        g, carry = grad_window(params, xs_w[n], lengths_w[n], resets_w[n], carry)
        total = jax.tree.map(jnp.add, total, g)

    def explicit(params):
        carry, loss = None, 0.0
        for start in range(0, T, K):
            stop = min(start + K, T)
            window_lengths = jnp.clip(lengths - start, 0, stop - start)
            if carry is not None:
                carry = jax.lax.stop_gradient(carry)
            carry, hs = recurrence.rnn(
                cell,
                params,
                XS[:, start:stop],
                window_lengths,
                carry=carry,
                method=js.Scan(),
                resets=resets[:, start:stop],
            )
            loss = loss + jnp.sum(hs**2 * W_HS[:, : stop - start, :H])
        return loss

    expected = jax.jit(jax.grad(explicit))(params)
    chex.assert_trees_all_close(total, expected, **agreement(cell, method)[1])
    # Truncation matters: the untruncated gradient of the same sum differs.
    w_full = W_HS[:, np.arange(T) % K, :H]
    full = jax.jit(
        jax.grad(
            lambda p: jnp.sum(
                recurrence.rnn(cell, p, XS, lengths, method=js.Scan(), resets=resets)[1] ** 2
                * w_full
            )
        )
    )(params)
    assert not all(
        np.allclose(a, b, atol=1e-4)
        for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(expected))
    )


@pytest.mark.reference
def test_tbptt_carry_starts_fresh_rows_over():
    cell, params = CELLS["lstm"], PARAMS["lstm"]
    carry = random_carry("lstm", jax.random.key(11))
    initial = cell.initial_carry(params)
    fresh = jnp.asarray([True, False, False, True])
    out = streaming.tbptt_carry(carry, initial, fresh)
    for leaf_out, leaf_in in zip(jax.tree.leaves(out), jax.tree.leaves(carry)):
        np.testing.assert_array_equal(leaf_out[0], 0.0)
        np.testing.assert_array_equal(leaf_out[3], 0.0)
        np.testing.assert_array_equal(leaf_out[1:3], leaf_in[1:3])
    # The gradient is stopped for the carried rows only; a learnt initial carry gets it.
    h0 = jnp.ones((H,))
    grad_carry, grad_h0 = jax.grad(
        lambda c, i: jnp.sum(streaming.tbptt_carry(c, (i, i), fresh)[0] * 2.0), (0, 1)
    )(carry, h0)
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(grad_carry))
    np.testing.assert_array_equal(grad_h0, 4.0)  # 2 fresh rows x 2.0
    with pytest.raises(TypeError, match="`fresh` must be boolean"):
        streaming.tbptt_carry(carry, initial, jnp.ones((B,), jnp.int32))
    with pytest.raises(AssertionError, match="`fresh`"):
        streaming.tbptt_carry(carry, initial, jnp.ones((B + 1,), bool))


@pytest.mark.bad_input
def test_windows_bad_input():
    with pytest.raises(ValueError, match="`k`"):
        streaming.windows(XS, 0)
    with pytest.raises(AssertionError, match="`stream`"):
        streaming.windows((XS, jnp.zeros((B, T + 1))), 2)
    with pytest.raises(AssertionError, match="`lengths`"):
        streaming.windows(XS, 2, lengths=jnp.zeros((B + 1,), jnp.int32))
    for bad in (T + 1, -1):  # host lengths outside [0, T]: never padding read as data
        lengths = np.full((B,), 2, np.int32)
        lengths[1] = bad
        with pytest.raises(ValueError, match="`lengths`"):
            streaming.windows(XS, 2, lengths=lengths)


@pytest.mark.bad_input
def test_windows_under_jit_turn_a_bad_length_into_nan_rows():
    """Traced lengths outside [0, T]: -1 in every window of that row, which rnn makes NaN;
    the other rows are exact."""
    cell, params = CELLS["gru"], PARAMS["gru"]

    @jax.jit
    def run(lengths):
        xs_w, lengths_w = streaming.windows(XS, K, lengths=lengths)
        carry, outs = None, []
        for n in range(xs_w.shape[0]):
            carry, hs = js.rnn(cell, params, xs_w[n], lengths_w[n], carry=carry)
            outs.append(hs)
        return lengths_w, carry, jnp.concatenate(outs, axis=1)

    good = np.array(STREAM_LENGTHS, np.int32)
    for bad in (T + 1, -1):
        lengths = good.copy()
        lengths[0] = bad
        lengths_w, carry, hs = run(jnp.asarray(lengths))
        assert (np.asarray(lengths_w)[:, 0] == -1).all()
        assert np.isnan(np.asarray(carry)[0]).all() and np.isnan(np.asarray(hs)[0]).all()
        _, carry_ok, hs_ok = run(jnp.asarray(good))
        np.testing.assert_array_equal(np.asarray(carry)[1:], np.asarray(carry_ok)[1:])
        np.testing.assert_array_equal(np.asarray(hs)[1:], np.asarray(hs_ok)[1:])


@pytest.mark.reference
@pytest.mark.parametrize(
    "name, method", [("lstm", js.Fused()), ("gru", js.Scan()), ("mingru", js.Parallel())]
)
def test_stack_carry_threads_windows_like_one_long_pass(name, method):
    """A two-layer stack run window after window, each from the final carries of the one
    before, gives the outputs and final carries of one pass over the whole stream."""
    cell = CELLS[name]
    layers = js.init_stack(jax.random.key(5), cell, D, num_layers=2)
    lengths = jnp.asarray(STREAM_LENGTHS)
    want_finals, want_hs = js.stack(cell, layers, XS, lengths, method=method)
    xs_w, lengths_w = streaming.windows(XS, K, lengths=lengths)
    carry, outs = None, []
    for n in range(xs_w.shape[0]):
        carry, hs = js.stack(cell, layers, xs_w[n], lengths_w[n], method=method, carry=carry)
        outs.append(hs)
    chex.assert_trees_all_close(jnp.concatenate(outs, axis=1)[:, :T], want_hs, **TOL)
    chex.assert_trees_all_close(carry, want_finals, **TOL)


@pytest.mark.bad_input
def test_stack_carry_bad_input_names_the_layer():
    cell = CELLS["gru"]
    layers = js.init_stack(jax.random.key(5), cell, D, num_layers=2)
    good = [jnp.zeros((B, H)), jnp.zeros((B, H))]
    with pytest.raises(ValueError, match="`carry` must be a list with one initial carry per layer"):
        js.stack(cell, layers, XS, LENGTHS, carry=good[:1])
    with pytest.raises(AssertionError, match=r"`carry\[1\]`"):
        js.stack(cell, layers, XS, LENGTHS, carry=[good[0], jnp.zeros((B, H + 1))])
    bidi = js.init_stack(jax.random.key(5), cell, D, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=r"`carry\[0\]` of a bidirectional layer"):
        js.stack(cell, bidi, XS, LENGTHS, bidirectional=True, carry=good)


@pytest.mark.training_smoke
def test_tbptt_window_with_no_valid_step_changes_nothing():
    """Adam's momentum would move the params on an empty window's zero gradient."""
    from jaxseq.training import steps

    cell, params = CELLS["gru"], PARAMS["gru"]

    def loss_fn(params, batch, carry, key):
        del key
        xs, n = batch
        carry, hs = js.rnn(cell, params, xs, n, carry=carry)
        return js.LossTerms(jnp.sum(hs**2), jnp.sum(n).astype(jnp.float32)), (carry, {})

    optimizer = optax.adam(0.1)
    step = streaming.make_tbptt_train_step(loss_fn, optimizer)
    lengths = jnp.array([K, K // 2] + [1] * (B - 2), jnp.int32)  # every row ends in window 0
    xs_w, lengths_w = streaming.windows(XS, K, lengths=lengths)
    assert xs_w.shape[0] >= 3 and not np.asarray(lengths_w[1:]).any()
    state = steps.create_train_state(jax.tree.map(jnp.copy, params), optimizer)
    state, carry, _ = step(state, jnp.zeros((B, H)), (xs_w[0], lengths_w[0]), jax.random.key(0))
    after_first = jax.tree.map(np.asarray, (state.step, state.params, state.opt_state))
    for n in (1, 2):
        state, carry_n, sums = step(state, carry, (xs_w[n], lengths_w[n]), jax.random.key(0))
        assert float(sums["loss"].count) == 0.0
        chex.assert_trees_all_equal(
            jax.tree.map(np.asarray, (state.step, state.params, state.opt_state)), after_first
        )
        chex.assert_trees_all_equal(carry_n, carry)  # nothing valid: the carry is held
    assert int(state.step) == 1


@pytest.mark.bad_input
def test_tbptt_loss_fn_of_the_wrong_form_names_the_form():
    def scalar_only(params, batch, carry, key):
        return jnp.sum(batch)

    def no_carry(params, batch, carry, key):
        return jnp.sum(batch), {}

    from jaxseq.training import steps

    optimizer = optax.sgd(0.1)
    state = steps.create_train_state({"w": jnp.ones(())}, optimizer)
    for loss_fn in (scalar_only, no_carry):
        step = streaming.make_tbptt_train_step(loss_fn, optimizer)
        with pytest.raises(TypeError, match=r"must return \(loss, \(new_carry, metric_sums\)\)"):
            step(state, jnp.zeros((2,)), jnp.ones((2, 3)), jax.random.key(0))


@pytest.mark.training_smoke
def test_tbptt_train_step_updates_per_window_and_threads_the_carry():
    from jaxseq.training import steps

    cell, params = CELLS["gru"], PARAMS["gru"]
    lengths = jnp.asarray(STREAM_LENGTHS)
    (xs_w, resets_w), lengths_w = streaming.windows(
        (XS, jnp.asarray(make_resets(STREAM_LENGTHS, seed=3))), K, lengths=lengths
    )
    lr = 0.1

    def loss_fn(params, batch, carry, key):
        del key
        xs, n, r = batch
        loss, new_carry = _window_loss(cell, js.Fused(), params, xs, n, r, carry)
        count = jnp.sum(n).astype(jnp.float32)
        return js.LossTerms(loss, count), (new_carry, {"steps": count})

    step = streaming.make_tbptt_train_step(loss_fn, optax.sgd(lr))
    state = steps.create_train_state(params, optax.sgd(lr))
    carry = jnp.zeros((B, H))
    expected_params = params
    for n in range(3):
        batch = (xs_w[n], lengths_w[n], resets_w[n])
        (total, expected_carry), g = jax.value_and_grad(
            lambda p, batch=batch, carry=carry: _window_loss(cell, js.Scan(), p, *batch, carry),
            has_aux=True,
        )(expected_params)
        count = float(jnp.sum(lengths_w[n]))
        expected_params = jax.tree.map(
            lambda p, d, count=count: p - lr * d / count, expected_params, g
        )
        state, carry, sums = step(state, carry, batch, jax.random.key(0))
        chex.assert_trees_all_close(carry, expected_carry, **TOL)
        chex.assert_trees_all_close(state.params, expected_params, atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(float(sums["loss"].total), float(total), rtol=1e-5)
        assert float(sums["steps"]) == count
    assert int(state.step) == 3
