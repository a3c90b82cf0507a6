"""Tests that kill mutants which survived `make mutants` (reports/mutants.md).

Each test names the surviving mutant it kills (module:line of the run that found it,
the operator and the change). They are small, fixed-seed and compare with independent
references (plain NumPy or a value worked out by hand), never with jaxseq itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js


@pytest.mark.bad_input
@pytest.mark.parametrize("fn", ["cross_entropy", "soft_cross_entropy"])
def test_scalar_logits_raise_an_error_that_names_logits(fn):
    """Kills losses.py:82 (before; :95 now, and :237 in soft_cross_entropy) NumberReplacer
    ``check_min_rank(logits, 1, ...)`` -> ``check_min_rank(logits, 0, ...)``: a 0-d
    ``logits`` has no class axis, and the error must say so and name ``logits`` (the
    mutant lets it through to an IndexError from ``logits.shape[-1]``)."""
    logits = jnp.float32(1.5)
    message = r"`logits` must have rank >= 1 \[\.\.\., C\]"
    with pytest.raises(AssertionError, match=message):
        if fn == "cross_entropy":
            js.cross_entropy(logits, jnp.int32(0))
        else:
            js.soft_cross_entropy(logits, jnp.float32(1.0))


@pytest.mark.reference
@pytest.mark.parametrize("shape", [(5,), (2, 5), (3, 2, 4)], ids=["rank1", "rank2", "rank3"])
def test_mask_lengths_counts_along_the_last_axis_for_every_rank(shape):
    """Kills masks.py:108 ReplaceUnaryOperator_USub_UAdd ``jnp.sum(mask, axis=-1)`` ->
    ``axis=+1``: the same axis for the rank-2 masks every other test uses, a different one
    (or none) for rank 1 and rank 3. The lengths of a prefix mask ``[..., T]`` are the
    counts along its last axis, compared with the lengths that built the mask."""
    rng = np.random.default_rng(108)
    steps = shape[-1]
    lengths = rng.integers(0, steps + 1, size=shape[:-1])
    mask = np.arange(steps) < lengths[..., None]  # independent of jaxseq's length_mask
    got = js.mask_lengths(jnp.asarray(mask))
    assert got.dtype == jnp.int32 and got.shape == shape[:-1]
    np.testing.assert_array_equal(np.asarray(got), lengths)


@pytest.mark.bad_input
def test_stack_width_errors_name_the_input_at_layer_0_and_the_layer_above():
    """Kills recurrence.py:89 (after run) ReplaceComparisonOperator_Eq_NotEq ``layer is None
    or layer == 0`` -> ``layer != 0``: a width mismatch at layer 0 is the user's ``xs``
    (its [B, T, D] and the D the first layer wants), one at layer l >= 1 is the stack's own
    ``layer_params[l]`` against layer l - 1's outputs; the mutant swaps the two messages."""
    cell = js.gru(3)
    layers = js.init_stack(jax.random.key(0), cell, 4, num_layers=2)
    lengths = jnp.array([2, 1])
    # Shape errors are AssertionErrors, as chex's are.
    with pytest.raises(AssertionError, match=r"`xs` must have shape \[B, T, D\] with D = 4 "):
        js.stack(cell, layers, jnp.zeros((2, 2, 5)), lengths)
    wrong_second = [layers[0], js.init_stack(jax.random.key(1), cell, 6, num_layers=1)[0]]
    message = r"`layer_params\[1\]` expects inputs of width 6 .* layer 0 outputs 3 features"
    with pytest.raises(AssertionError, match=message):
        js.stack(cell, wrong_second, jnp.zeros((2, 2, 4)), lengths)


@pytest.mark.variants
def test_stack_training_without_dropout_needs_no_key():
    """Kills recurrence.py:551 (after run) ReplaceComparisonOperator_Gt_GtE ``train and
    dropout_rate > 0.0`` -> ``>= 0.0``: training with dropout_rate 0 draws no randomness,
    so it needs no ``key`` and gives exactly the outputs of ``train=False`` (the mutant
    asks for a key)."""
    cell = js.lstm(3)
    layers = js.init_stack(jax.random.key(0), cell, 2, num_layers=2)
    xs = jax.random.normal(jax.random.key(1), (2, 4, 2))
    lengths = jnp.array([4, 2])
    _, trained = js.stack(cell, layers, xs, lengths, train=True, dropout_rate=0.0)
    _, evaluated = js.stack(cell, layers, xs, lengths)
    np.testing.assert_array_equal(np.asarray(trained), np.asarray(evaluated))


@pytest.mark.bad_input
@pytest.mark.parametrize("max_len", [True, False, -1, 3.0, np.float32(3)])
def test_length_mask_rejects_a_max_len_that_is_not_a_non_negative_int(max_len):
    """Kills masks.py:91 (full run) ReplaceOrWithAnd in ``not isinstance(max_len, int) or
    isinstance(max_len, bool) or max_len < 0``: each of the three conditions alone must
    reject ``max_len`` (a bool is an int to Python; -1; floats), with the error naming it."""
    with pytest.raises(ValueError, match="`max_len` must be a non-negative Python int"):
        js.length_mask(jnp.array([1, 2]), max_len)


@pytest.mark.bad_input
def test_mask_lengths_of_a_scalar_mask_names_mask():
    """Kills masks.py:107 (full run) NumberReplacer ``check_min_rank(mask, 1, ...)`` -> 0:
    a 0-d mask has no time axis; the error must name ``mask`` and its ``[..., T]`` shape
    (the mutant reaches ``jnp.sum(axis=-1)`` and fails inside JAX)."""
    with pytest.raises(AssertionError, match=r"`mask` must have rank >= 1 \[\.\.\., T\]"):
        js.mask_lengths(jnp.bool_(True))


@pytest.mark.reference
@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("trailing", [(), (3,), (2, 3)], ids=["BT", "BTH", "BTHW"])
def test_last_valid_picks_the_last_valid_step_for_every_rank(trailing, steps):
    """Kills masks.py:135 (full run) NumberReplacer ``check_min_rank(hs, 2, ...)`` -> 3
    (rank-2 ``hs`` [B, T] rejected; every other test used [B, T, H]) and masks.py:142
    NumberReplacer ``if steps == 0`` -> ``steps == 1`` (T = 1 returned zeros; no test had
    T = 1), checked against plain NumPy indexing: the element at step ``length - 1``, 0 for
    length 0."""
    rng = np.random.default_rng(135)
    hs = rng.normal(size=(4, steps, *trailing)).astype(np.float32)
    lengths = np.array([steps, 1, 0, min(3, steps)])
    want = np.stack(
        [hs[b, n - 1] if n else np.zeros(trailing, np.float32) for b, n in enumerate(lengths)]
    )
    got = js.last_valid(jnp.asarray(hs), jnp.asarray(lengths))
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.bad_input
def test_last_valid_of_rank_1_hs_names_hs():
    """Kills masks.py:135 (full run) NumberReplacer ``check_min_rank(hs, 2, ...)`` -> 1: a
    [T] array has no batch axis; the error must name ``hs`` and its ``[B, T, ...]`` shape."""
    with pytest.raises(AssertionError, match=r"`hs` must have rank >= 2 \[B, T, \.\.\.\]"):
        js.last_valid(jnp.zeros((5,)), jnp.array([2]))


@pytest.mark.reference
@pytest.mark.parametrize("trailing", [(), (3,), (2, 3)], ids=["BT", "BTH", "BTHW"])
def test_reverse_within_length_for_every_rank(trailing):
    """Kills masks.py:197 (full run) ``(1,) * (xs.ndim - 2)`` -> ``xs.ndim ^ 2`` and
    ``xs.ndim % 2`` (equal for rank 2 and 3, the ranks other tests used; different for
    rank 4), against a plain loop: ``out[b, t] = xs[b, n_b - 1 - t]`` for ``t < n_b``,
    else ``xs[b, t]``."""
    rng = np.random.default_rng(197)
    xs = rng.normal(size=(4, 5, *trailing)).astype(np.float32)
    lengths = np.array([5, 0, 2, 3])
    want = xs.copy()
    for b, n in enumerate(lengths):
        for t in range(n):
            want[b, t] = xs[b, n - 1 - t]
    got = js.reverse_within_length(jnp.asarray(xs), jnp.asarray(lengths))
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.bad_input
def test_reverse_within_length_of_rank_1_xs_names_xs():
    """Kills masks.py:186 (full run) NumberReplacer ``check_min_rank(xs, 2, ...)`` -> 1: a
    [T] array has no batch axis; the error must name ``xs`` and its ``[B, T, ...]`` shape
    (the mutant fails later, on ``xs.shape[1]``)."""
    with pytest.raises(AssertionError, match=r"`xs` must have rank >= 2 \[B, T, \.\.\.\]"):
        js.reverse_within_length(jnp.zeros((5,)), jnp.array([2]))
