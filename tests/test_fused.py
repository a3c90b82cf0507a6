"""The fused engine (``method=jaxseq.Fused()``) against the NumPy reference and the Scan path.

Two levels: the front-end with ``method=js.Fused()`` (what users run), and the
private engine ``jaxseq._fused.rnn`` with each of its loop plans (``_Plan``:
unrolled loops, a time-major layout, inference with the projection hoisted or
per step), which must all compute the same function.

Tolerances: float32 against the float64 reference loop over the UNPADDED
sequences, ``atol = rtol = 1e-5``; float32 fused against float32 ``Scan()``
(values and gradients), ``atol = rtol = 1e-5`` (the batched matmuls sum in
another order); two fused runs that should agree (jit, vmap), ``atol = 1e-6``;
padded outputs and padded input gradients exactly 0.

The gradient tests use a loss that reads ``hs`` at the valid steps AND the
final carry (every leaf): a hand-written backward pass that mishandles the
carry at held (padded) steps is invisible to a loss on the outputs alone.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq as js
from jaxseq import _fused, cells, models, recurrence
from tests import reference_rnn as ref
from tests.test_cells import random_carry, random_params

B, T, D, H = 4, 6, 3, 5
TOL = dict(atol=1e-5, rtol=1e-5)
SAME = dict(atol=1e-6, rtol=1e-6)
CELLS = {"elman": cells.elman(H), "gru": cells.gru(H), "lstm": cells.lstm(H)}
PATTERNS = {  # name: (T, lengths)
    "full": (T, [6, 6, 6, 6]),
    "mixed": (T, [6, 3, 5, 2]),
    "with_0_and_1": (T, [1, 0, 6, 3]),
    "T1": (1, [1, 0, 1, 1]),
}
DIRECTIONS = ("forward", "reverse", "bidirectional")
FUSED, SCAN = js.Fused(), js.Scan()
PLANS = {
    "default": _fused.DEFAULT_PLAN,
    "unroll3": _fused._Plan(unroll=3),
    "time_major": _fused._Plan(time_major=True),
    "hoist_inference": _fused._Plan(hoist_inference=True),  # the GPU default
    "per_step_inference": _fused._Plan(hoist_inference=False),  # the CPU default
}


def bidi_params(name, dtype=jnp.float32):
    cell = CELLS[name]
    return {
        "forward": random_params(cell, jax.random.key(10), D, dtype),
        "backward": random_params(cell, jax.random.key(11), D, dtype),
    }


PARAMS = {name: bidi_params(name) for name in CELLS}


def make_batch(pattern="mixed", padding=7.0):
    """``xs [B, T, D]`` with ``padding`` at every padded step (never 0: masking must work)."""
    max_len, lengths = PATTERNS[pattern]
    lengths = np.asarray(lengths, np.int32)
    xs = np.random.default_rng(0).normal(size=(B, max_len, D))
    valid = np.arange(max_len)[None, :] < lengths[:, None]
    xs = np.where(valid[:, :, None], xs, padding)
    return jnp.asarray(xs, jnp.float32), jnp.asarray(lengths), valid


def run(method, cell, params, xs, lengths, direction, carry=None):
    """``(final, hs)`` of one direction (``params`` bidirectional) through the front-end."""
    if direction == "bidirectional":
        carry = None if carry is None else (carry, carry)
        return recurrence.bidirectional(cell, params, xs, lengths, carry=carry, method=method)
    reverse = direction == "reverse"
    return recurrence.rnn(
        cell, params["forward"], xs, lengths, carry=carry, reverse=reverse, method=method
    )


def engine(plan, cell, params, xs, lengths, direction, carry=None):
    """``run`` on the private engine with a loop plan (the front-end's bidirectional)."""
    if direction == "bidirectional":
        carry_f, carry_b = (None, None) if carry is None else (carry, carry)
        final_f, hs_f = _fused.rnn(
            cell, params["forward"], xs, lengths, carry_f, reverse=False, plan=plan
        )
        final_b, hs_b = _fused.rnn(
            cell, params["backward"], xs, lengths, carry_b, reverse=True, plan=plan
        )
        return (final_f, final_b), jnp.concatenate([hs_f, hs_b], axis=-1)
    reverse = direction == "reverse"
    return _fused.rnn(cell, params["forward"], xs, lengths, carry, reverse=reverse, plan=plan)


RUN = jax.jit(run, static_argnums=(0, 1, 5))
ENGINE = jax.jit(engine, static_argnums=(0, 1, 5))


def carry_for(name, batch=B):
    return jax.vmap(lambda k: random_carry(CELLS[name], k))(
        jax.random.split(jax.random.key(3), batch)
    )


def loss(runner, how, cell, params, xs, carry, lengths, weights, direction):
    """``hs`` at every step (padded ones are 0 in value and gradient) + every final-carry leaf."""
    final, hs = runner(how, cell, params, xs, lengths, direction, carry=carry)
    finals = sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(final))
    return jnp.sum(hs * weights[..., : hs.shape[-1]]) + finals


GRAD = jax.jit(jax.value_and_grad(loss, argnums=(3, 4, 5)), static_argnums=(0, 1, 2, 8))
WEIGHTS = jax.random.normal(jax.random.key(5), (B, T, 2 * H))


def assert_finals_close(got, expected_list, **tol):
    for b, expected in enumerate(expected_list):
        jax.tree.map(
            lambda a, e, b=b: np.testing.assert_allclose(np.asarray(a[b], np.float64), e, **tol),
            got,
            expected,
        )


# ---------------------------------------------------------------------------- reference


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.reference
def test_engine_plans_match_reference(name, direction, plan):
    # Inference (no gradient): the plans' hoist_inference choice is what runs here.
    cell, params = CELLS[name], PARAMS[name]
    for pattern in PATTERNS:
        xs, lengths, valid = make_batch(pattern)
        final, hs = ENGINE(PLANS[plan], cell, params, xs, lengths, direction)
        if direction == "bidirectional":
            expected_f, expected_b, expected_hs = ref.run_bidirectional(
                name, params, xs, lengths, H
            )
            assert_finals_close(final[0], expected_f, **TOL)
            assert_finals_close(final[1], expected_b, **TOL)
        else:
            expected, expected_hs = ref.run_batch(
                name, params["forward"], xs, lengths, H, reverse=direction == "reverse"
            )
            assert_finals_close(final, expected, **TOL)
        assert hs.dtype == jnp.float32 and hs.shape == expected_hs.shape
        np.testing.assert_allclose(hs, expected_hs, **TOL, err_msg=pattern)
        assert not np.asarray(hs)[~valid].any()  # padded outputs are exactly 0


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.reference
def test_front_end_matches_reference(name, direction, pattern):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, valid = make_batch(pattern)
    final, hs = RUN(FUSED, cell, params, xs, lengths, direction)
    expected = ENGINE(_fused.DEFAULT_PLAN, cell, params, xs, lengths, direction)
    # The front-end adds checks only: the same computation as the engine.
    chex.assert_trees_all_equal((final, hs), expected)
    if direction == "bidirectional":
        _, _, expected_hs = ref.run_bidirectional(name, params, xs, lengths, H)
    else:
        reverse = direction == "reverse"
        _, expected_hs = ref.run_batch(name, params["forward"], xs, lengths, H, reverse=reverse)
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert not np.asarray(hs)[~valid].any()


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.reference
def test_initial_carry_argument(name, plan):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, _ = make_batch("with_0_and_1")
    carry = carry_for(name)
    final, hs = ENGINE(PLANS[plan], cell, params, xs, lengths, "reverse", carry=carry)
    carries = [jax.tree.map(lambda a, b=b: np.asarray(a[b], np.float64), carry) for b in range(B)]
    expected, expected_hs = ref.run_batch(
        name, params["forward"], xs, lengths, H, reverse=True, carries=carries
    )
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert_finals_close(final, expected, **TOL)
    for leaf, leaf0 in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
        np.testing.assert_array_equal(leaf[1], leaf0[1])  # length 0: the initial carry


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_values_and_gradients_match_the_scan_path(name, plan):
    # Bidirectional: the forward and the reverse pass, each with its own params; the
    # gradients of the params, the inputs and the initial carry.
    direction = "bidirectional"
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, _ = make_batch("with_0_and_1")
    carry = carry_for(name)
    expected = GRAD(run, SCAN, cell, params, xs, carry, lengths, WEIGHTS, direction)
    got = GRAD(engine, PLANS[plan], cell, params, xs, carry, lengths, WEIGHTS, direction)
    chex.assert_trees_all_close(got, expected, **TOL)
    if plan == "default":
        # With host lengths (closed over) the front-end adds only checks: bit for bit the
        # engine. (Traced lengths also get the NaN rows of lengths outside [0, T], a select
        # that may change XLA's fusion; that path is compared with TOL through `expected`.)
        def front_loss(params, xs, carry):
            return loss(run, FUSED, cell, params, xs, carry, lengths, WEIGHTS, direction)

        front = jax.jit(jax.value_and_grad(front_loss, argnums=(0, 1, 2)))(params, xs, carry)
        chex.assert_trees_all_equal(front, got)
        traced = GRAD(run, FUSED, cell, params, xs, carry, lengths, WEIGHTS, direction)
        chex.assert_trees_all_close(traced, expected, **TOL)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_gradient_through_held_carry(name):
    # A loss on the final carry ONLY: its gradient must reach step length-1 through the
    # steps where the carry is held, and the initial carry where the length is 0.
    cell, params = CELLS[name], PARAMS[name]["forward"]
    xs, lengths, _ = make_batch("with_0_and_1")
    carry = carry_for(name)

    def final_only(method, params, xs, carry):
        final, _ = recurrence.rnn(cell, params, xs, lengths, carry=carry, method=method)
        return sum(
            jnp.sum(jnp.cos(leaf) * (i + 1)) for i, leaf in enumerate(jax.tree.leaves(final))
        )

    grad = jax.jit(jax.grad(final_only, argnums=(1, 2, 3)), static_argnums=0)
    got, expected = grad(FUSED, params, xs, carry), grad(SCAN, params, xs, carry)
    chex.assert_trees_all_close(got, expected, **TOL)
    for leaf in jax.tree.leaves(got[2]):  # carry gradient of the empty sequence
        assert np.abs(np.asarray(leaf[1])).sum() > 0


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.padding_invariance
def test_poison_padding_changes_nothing(name):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, valid = make_batch("with_0_and_1", padding=0.0)
    carry = carry_for(name)
    clean = GRAD(run, FUSED, cell, params, xs, carry, lengths, WEIGHTS, "bidirectional")
    for poison in (np.nan, np.inf, -np.inf, 1e30):
        poisoned = jnp.where(jnp.asarray(valid)[:, :, None], xs, poison)
        got = GRAD(run, FUSED, cell, params, poisoned, carry, lengths, WEIGHTS, "bidirectional")
        _, (grad_params, grad_xs, _) = got
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(got))
        assert not np.asarray(grad_xs)[~valid].any()  # exactly 0 at padded steps
        chex.assert_trees_all_equal(got, clean)


@pytest.mark.parametrize("plan", ["default", "time_major"])
@pytest.mark.parametrize(
    "name, direction", [("elman", "forward"), ("gru", "reverse"), ("lstm", "bidirectional")]
)
@pytest.mark.gradcheck
def test_check_grads_float64(name, direction, plan):
    cell = CELLS[name]
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), PARAMS[name])
        xs = jnp.asarray(rng.normal(size=(3, 4, D)))
        lengths = jnp.array([4, 1, 0], jnp.int32)
        carry = jax.tree.map(
            lambda a: jnp.asarray(rng.normal(size=(3,) + a.shape)),
            cell.initial_carry(None, jnp.float64),
        )

        @jax.jit
        def f(params, xs, carry):
            final, hs = engine(PLANS[plan], cell, params, xs, lengths, direction, carry=carry)
            assert hs.dtype == jnp.float64
            return final, hs

        check_grads(f, (params, xs, carry), order=1, modes=["rev"])


# ---------------------------------------------------------------------------- variants


@pytest.mark.variants
def test_jit_equals_eager():
    cell, params = CELLS["lstm"], PARAMS["lstm"]
    xs, lengths, _ = make_batch("mixed")
    eager = run(FUSED, cell, params, xs, lengths, "bidirectional")
    jitted = RUN(FUSED, cell, params, xs, lengths, "bidirectional")
    chex.assert_trees_all_close(jitted, eager, **SAME)


@pytest.mark.variants
def test_vmap_over_batches_and_grad_of_vmap():
    cell, params = CELLS["gru"], PARAMS["gru"]["forward"]
    xs, lengths, _ = make_batch("with_0_and_1")
    xs2 = jnp.stack([xs, xs[::-1]])
    lengths2 = jnp.stack([lengths, lengths[::-1]])
    batched = jax.jit(jax.vmap(lambda x, n: recurrence.rnn(cell, params, x, n, method=FUSED)))(
        xs2, lengths2
    )
    for i in range(2):
        one = RUN(FUSED, cell, {"forward": params}, xs2[i], lengths2[i], "forward")
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], batched), one, **SAME)

    def total(method, params):
        return jnp.sum(
            jax.vmap(lambda x, n: recurrence.rnn(cell, params, x, n, method=method)[1])(
                xs2, lengths2
            )
        )

    grad = jax.jit(jax.grad(total, argnums=1), static_argnums=0)
    chex.assert_trees_all_close(grad(FUSED, params), grad(SCAN, params), **TOL)


@pytest.mark.variants
def test_engine_clips_lengths_out_of_range():
    # The engine is unchecked (the front-end checks concrete lengths): it clips to [0, T].
    cell, params = CELLS["lstm"], PARAMS["lstm"]["forward"]
    xs, _, _ = make_batch("full")
    wild, clipped = jnp.array([T + 3, -2, 2, T]), jnp.array([T, 0, 2, T])
    for reverse in (False, True):
        got = _fused.rnn(cell, params, xs, wild, None, reverse=reverse)
        chex.assert_trees_all_equal(
            got, _fused.rnn(cell, params, xs, clipped, None, reverse=reverse)
        )


@pytest.mark.variants
def test_stack_matches_the_scan_stack():
    bidirectional = True
    cell = CELLS["lstm"]
    layers = recurrence.init_stack(
        jax.random.key(0), cell, D, num_layers=2, bidirectional=bidirectional
    )
    xs, lengths, _ = make_batch("with_0_and_1")
    options = dict(bidirectional=bidirectional, dropout_rate=0.3, key=jax.random.key(1))

    def total(method, layers, train):
        finals, hs = recurrence.stack(
            cell, layers, xs, lengths, train=train, method=method, **options
        )
        return jnp.sum(hs * hs) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(finals))

    grad = jax.jit(jax.value_and_grad(total, argnums=1), static_argnums=(0, 2))
    chex.assert_trees_all_close(grad(FUSED, layers, True), grad(SCAN, layers, True), **TOL)


@pytest.mark.dtype
def test_bfloat16_inputs_keep_a_float32_state():
    cell, params = CELLS["gru"], PARAMS["gru"]["forward"]
    xs, lengths, _ = make_batch("mixed")
    xs16 = xs.astype(jnp.bfloat16)
    params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    final, hs = recurrence.rnn(cell, params16, xs16, lengths, method=FUSED)
    expected_final, expected_hs = recurrence.rnn(cell, params16, xs16, lengths, method=SCAN)
    assert hs.dtype == final.dtype == jnp.float32
    chex.assert_trees_all_close((final, hs), (expected_final, expected_hs), **TOL)


@pytest.mark.bad_input
def test_unsupported_cell_and_bad_inputs_raise():
    gru, params = CELLS["gru"], PARAMS["gru"]["forward"]
    xs, lengths, _ = make_batch("mixed")
    with pytest.raises(ValueError, match=r"method=Fused\(\).*'mgu' cell"):
        recurrence.rnn(gru._replace(name="mgu"), params, xs, lengths, method=FUSED)
    # A cell of one's own under a built-in name is not run as the built-in one.
    own_gru = gru._replace(step=lambda params, carry, xp: jnp.tanh(xp[:H]))
    with pytest.raises(ValueError, match=r"method=Fused\(\).*not built by jaxseq"):
        recurrence.rnn(own_gru, params, xs, lengths, method=FUSED)
    own = recurrence.rnn(own_gru, params, xs, lengths)  # the default: Scan
    chex.assert_trees_all_equal(own, recurrence.rnn(own_gru, params, xs, lengths, method=SCAN))
    assert not np.allclose(own[1], recurrence.rnn(gru, params, xs, lengths)[1])
    with pytest.raises(AssertionError, match=r"`xs` must have rank 3"):
        recurrence.rnn(gru, params, xs[0], lengths, method=FUSED)
    with pytest.raises(ValueError, match=r"`lengths` must be in \[0, 6\]"):
        recurrence.rnn(gru, params, xs, jnp.array([1, 2, 3, T + 1]), method=FUSED)
    with pytest.raises(ValueError, match="`params` of a gru cell"):
        recurrence.rnn(gru, PARAMS["lstm"]["forward"], xs, lengths, method=FUSED)


@pytest.mark.variants
def test_model_method_switch():
    def config(method):
        return models.SequenceModelConfig(
            num_classes=3,
            hidden_size=H,
            cell="lstm",
            num_layers=2,
            bidirectional=True,
            vocab_size=11,
            embed_dim=D,
            dropout_rate=0.2,
            method=method,
        )

    params = models.classifier_init(jax.random.key(0), config(SCAN))
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, 11)
    lengths = jnp.asarray(PATTERNS["with_0_and_1"][1])

    def total(params, method):
        logits = models.classifier_apply(
            params, config(method), ids, lengths, key=jax.random.key(2), train=True
        )
        return jnp.sum(jnp.sin(logits))

    grad = jax.jit(jax.value_and_grad(total), static_argnums=1)
    chex.assert_trees_all_close(grad(params, FUSED), grad(params, SCAN), **TOL)
    chex.assert_trees_all_equal(grad(params, None), grad(params, FUSED))  # the default
    with pytest.raises(ValueError, match=r"method=Fused\(\)"):
        models.SequenceModelConfig(
            num_classes=3, hidden_size=H, input_size=D, cell="mingru", method=FUSED
        )
