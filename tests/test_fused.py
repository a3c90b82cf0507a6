"""The fast path (``jaxseq.fused``) against the NumPy reference and the scan path.

Tolerances: float32 against the float64 reference loop over the UNPADDED
sequences, ``atol = rtol = 1e-5``; float32 fused against float32 scan (values
and gradients), ``atol = rtol = 1e-5`` (the batched matmuls sum in another
order); two fused variants that should agree (jit, unroll, vmap),
``atol = 1e-6``; padded outputs and padded input gradients exactly 0.

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

from jaxseq import cells, fused, models, recurrence
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


def run(module, cell, params, xs, lengths, direction, carry=None, **options):
    """``(final, hs)`` of one direction (``params`` bidirectional) with either module."""
    if direction == "bidirectional":
        carry = None if carry is None else (carry, carry)
        return module.bidirectional(cell, params, xs, lengths, carry=carry, **options)
    reverse = direction == "reverse"
    return module.rnn(cell, params["forward"], xs, lengths, carry=carry, reverse=reverse, **options)


RUN = jax.jit(run, static_argnums=(0, 1, 5), static_argnames=("unroll",))


def carry_for(name, batch=B):
    return jax.vmap(lambda k: random_carry(CELLS[name], k))(
        jax.random.split(jax.random.key(3), batch)
    )


def loss(module, cell, params, xs, carry, lengths, weights, direction):
    """``hs`` at every step (padded ones are 0 in value and gradient) + every final-carry leaf."""
    final, hs = run(module, cell, params, xs, lengths, direction, carry=carry)
    finals = sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(final))
    return jnp.sum(hs * weights[..., : hs.shape[-1]]) + finals


GRAD = jax.jit(jax.value_and_grad(loss, argnums=(2, 3, 4)), static_argnums=(0, 1, 7))
WEIGHTS = jax.random.normal(jax.random.key(5), (B, T, 2 * H))


def assert_finals_close(got, expected_list, **tol):
    for b, expected in enumerate(expected_list):
        jax.tree.map(
            lambda a, e, b=b: np.testing.assert_allclose(np.asarray(a[b], np.float64), e, **tol),
            got,
            expected,
        )


# ---------------------------------------------------------------------------- reference


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.reference
def test_matches_reference(name, direction, pattern):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, valid = make_batch(pattern)
    final, hs = RUN(fused, cell, params, xs, lengths, direction)
    if direction == "bidirectional":
        expected_f, expected_b, expected_hs = ref.run_bidirectional(name, params, xs, lengths, H)
        assert_finals_close(final[0], expected_f, **TOL)
        assert_finals_close(final[1], expected_b, **TOL)
    else:
        expected, expected_hs = ref.run_batch(
            name, params["forward"], xs, lengths, H, reverse=direction == "reverse"
        )
        assert_finals_close(final, expected, **TOL)
    assert hs.dtype == jnp.float32 and hs.shape == expected_hs.shape
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert not np.asarray(hs)[~valid].any()  # padded outputs are exactly 0


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.reference
def test_initial_carry_argument(name):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, _ = make_batch("with_0_and_1")
    carry = carry_for(name)
    final, hs = RUN(fused, cell, params, xs, lengths, "reverse", carry=carry)
    carries = [jax.tree.map(lambda a, b=b: np.asarray(a[b], np.float64), carry) for b in range(B)]
    expected, expected_hs = ref.run_batch(
        name, params["forward"], xs, lengths, H, reverse=True, carries=carries
    )
    np.testing.assert_allclose(hs, expected_hs, **TOL)
    assert_finals_close(final, expected, **TOL)
    for leaf, leaf0 in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
        np.testing.assert_array_equal(leaf[1], leaf0[1])  # length 0: the initial carry


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_values_and_gradients_match_the_scan_path(name):
    # Bidirectional: the forward and the reverse pass, each with its own params.
    direction = "bidirectional"
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, _ = make_batch("with_0_and_1")
    carry = carry_for(name)
    expected = GRAD(recurrence, cell, params, xs, carry, lengths, WEIGHTS, direction)
    got = GRAD(fused, cell, params, xs, carry, lengths, WEIGHTS, direction)
    chex.assert_trees_all_close(got, expected, **TOL)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_gradient_through_held_carry(name):
    # A loss on the final carry ONLY: its gradient must reach step length-1 through the
    # steps where the carry is held, and the initial carry where the length is 0.
    cell, params = CELLS[name], PARAMS[name]["forward"]
    xs, lengths, _ = make_batch("with_0_and_1")
    carry = carry_for(name)

    def final_only(module, params, xs, carry):
        final, _ = module.rnn(cell, params, xs, lengths, carry=carry)
        return sum(
            jnp.sum(jnp.cos(leaf) * (i + 1)) for i, leaf in enumerate(jax.tree.leaves(final))
        )

    grad = jax.jit(jax.grad(final_only, argnums=(1, 2, 3)), static_argnums=0)
    got, expected = grad(fused, params, xs, carry), grad(recurrence, params, xs, carry)
    chex.assert_trees_all_close(got, expected, **TOL)
    for leaf in jax.tree.leaves(got[2]):  # carry gradient of the empty sequence
        assert np.abs(np.asarray(leaf[1])).sum() > 0


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.padding_invariance
def test_poison_padding_changes_nothing(name):
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, valid = make_batch("with_0_and_1", padding=0.0)
    carry = carry_for(name)
    clean = GRAD(fused, cell, params, xs, carry, lengths, WEIGHTS, "bidirectional")
    for poison in (np.nan, np.inf, 1e30):
        poisoned = jnp.where(jnp.asarray(valid)[:, :, None], xs, poison)
        got = GRAD(fused, cell, params, poisoned, carry, lengths, WEIGHTS, "bidirectional")
        _, (grad_params, grad_xs, _) = got
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(got))
        assert not np.asarray(grad_xs)[~valid].any()  # exactly 0 at padded steps
        chex.assert_trees_all_equal(got, clean)


@pytest.mark.parametrize(
    "name, direction", [("elman", "forward"), ("gru", "reverse"), ("lstm", "bidirectional")]
)
@pytest.mark.gradcheck
def test_check_grads_float64(name, direction):
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
            final, hs = run(fused, cell, params, xs, lengths, direction, carry=carry)
            assert hs.dtype == jnp.float64
            return final, hs

        check_grads(f, (params, xs, carry), order=1, modes=["rev"])


# ---------------------------------------------------------------------------- variants


@pytest.mark.variants
def test_jit_equals_eager():
    cell, params = CELLS["lstm"], PARAMS["lstm"]
    xs, lengths, _ = make_batch("mixed")
    eager = run(fused, cell, params, xs, lengths, "bidirectional")
    jitted = RUN(fused, cell, params, xs, lengths, "bidirectional")
    chex.assert_trees_all_close(jitted, eager, **SAME)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.variants
def test_unroll_and_layout_plans_agree(name):
    # The public `unroll` is accepted and not applied; the private plans still must agree.
    cell, params = CELLS[name], PARAMS[name]
    xs, lengths, _ = make_batch("with_0_and_1")
    carry = carry_for(name)
    base = GRAD(fused, cell, params, xs, carry, lengths, WEIGHTS, "bidirectional")
    public = RUN(fused, cell, params, xs, lengths, "reverse", unroll=4)
    chex.assert_trees_all_equal(public, RUN(fused, cell, params, xs, lengths, "reverse"))

    def plan_loss(plan, params, xs, carry):
        total = 0.0
        for reverse, p in ((False, params["forward"]), (True, params["backward"])):
            final, hs = fused._checked_rnn(
                cell, p, xs, lengths, carry=carry, reverse=reverse, plan=plan
            )
            total += jnp.sum(
                hs * WEIGHTS[..., : hs.shape[-1]] if not reverse else hs * WEIGHTS[..., H:]
            )
            total += sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(final))
        return total

    grad = jax.jit(jax.value_and_grad(plan_loss, argnums=(1, 2, 3)), static_argnums=0)
    for plan in (fused._Plan(unroll=3), fused._Plan(time_major=True)):
        chex.assert_trees_all_close(grad(plan, params, xs, carry), base, **TOL)
    # Inference with the projection hoisted (the GPU default) or per step (the CPU one).
    value = jax.jit(plan_loss, static_argnums=0)
    for hoist in (False, True):
        got = value(fused._Plan(hoist_inference=hoist), params, xs, carry)
        np.testing.assert_allclose(got, base[0], **TOL)


@pytest.mark.variants
def test_vmap_over_batches_and_grad_of_vmap():
    cell, params = CELLS["gru"], PARAMS["gru"]["forward"]
    xs, lengths, _ = make_batch("with_0_and_1")
    xs2 = jnp.stack([xs, xs[::-1]])
    lengths2 = jnp.stack([lengths, lengths[::-1]])
    batched = jax.jit(jax.vmap(lambda x, n: fused.rnn(cell, params, x, n)))(xs2, lengths2)
    for i in range(2):
        one = RUN(fused, cell, {"forward": params}, xs2[i], lengths2[i], "forward")
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], batched), one, **SAME)

    def total(module, params):
        return jnp.sum(jax.vmap(lambda x, n: module.rnn(cell, params, x, n)[1])(xs2, lengths2))

    grad = jax.jit(jax.grad(total, argnums=1), static_argnums=0)
    chex.assert_trees_all_close(grad(fused, params), grad(recurrence, params), **TOL)


@pytest.mark.variants
def test_lengths_out_of_range_under_jit_act_as_clipped():
    cell, params = CELLS["lstm"], PARAMS["lstm"]["forward"]
    xs, _, _ = make_batch("full")
    wild, clipped = jnp.array([T + 3, -2, 2, T]), jnp.array([T, 0, 2, T])
    rnn = jax.jit(fused.rnn, static_argnums=0)
    chex.assert_trees_all_close(rnn(cell, params, xs, wild), rnn(cell, params, xs, clipped))


@pytest.mark.variants
def test_stack_matches_the_scan_stack():
    bidirectional = True
    cell = CELLS["lstm"]
    layers = recurrence.init_stack(
        jax.random.key(0), cell, D, num_layers=2, bidirectional=bidirectional
    )
    xs, lengths, _ = make_batch("with_0_and_1")
    options = dict(bidirectional=bidirectional, dropout_rate=0.3, key=jax.random.key(1))

    def total(module, layers, train):
        finals, hs = module.stack(cell, layers, xs, lengths, train=train, **options)
        return jnp.sum(hs * hs) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(finals))

    grad = jax.jit(jax.value_and_grad(total, argnums=1), static_argnums=(0, 2))
    chex.assert_trees_all_close(grad(fused, layers, True), grad(recurrence, layers, True), **TOL)


@pytest.mark.variants
def test_bfloat16_inputs_keep_a_float32_state():
    cell, params = CELLS["gru"], PARAMS["gru"]["forward"]
    xs, lengths, _ = make_batch("mixed")
    xs16 = xs.astype(jnp.bfloat16)
    params16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    final, hs = fused.rnn(cell, params16, xs16, lengths)
    expected_final, expected_hs = recurrence.rnn(cell, params16, xs16, lengths)
    assert hs.dtype == final.dtype == jnp.float32
    chex.assert_trees_all_close((final, hs), (expected_final, expected_hs), **TOL)


@pytest.mark.bad_input
def test_unsupported_cell_and_bad_inputs_raise():
    params = PARAMS["gru"]["forward"]
    other = CELLS["gru"]._replace(name="mgu")
    xs, lengths, _ = make_batch("mixed")
    with pytest.raises(ValueError, match="jaxseq.recurrence"):
        fused.rnn(other, params, xs, lengths)
    with pytest.raises(ValueError, match="`xs`"):
        fused.rnn(CELLS["gru"], params, xs[0], lengths)
    with pytest.raises(ValueError, match="`lengths`"):
        fused.rnn(CELLS["gru"], params, xs, jnp.array([1, 2, 3, T + 1]))


@pytest.mark.variants
def test_model_implementation_switch():
    cell = "lstm"

    def config(implementation):
        return models.SequenceModelConfig(
            num_classes=3,
            hidden_size=H,
            cell=cell,
            num_layers=2,
            bidirectional=True,
            vocab_size=11,
            embed_dim=D,
            dropout_rate=0.2,
            implementation=implementation,
        )

    params = models.classifier_init(jax.random.key(0), config("scan"))
    ids = jax.random.randint(jax.random.key(1), (B, T), 0, 11)
    lengths = jnp.asarray(PATTERNS["with_0_and_1"][1])

    def total(params, implementation):
        logits = models.classifier_apply(
            params, config(implementation), ids, lengths, key=jax.random.key(2), train=True
        )
        return jnp.sum(jnp.sin(logits))

    grad = jax.jit(jax.value_and_grad(total), static_argnums=1)
    chex.assert_trees_all_close(grad(params, "fused"), grad(params, "scan"), **TOL)
    with pytest.raises(ValueError, match="remat"):
        models.SequenceModelConfig(
            num_classes=3, hidden_size=H, input_size=D, remat=True, implementation="fused"
        )
