"""Property-based tests (hypothesis). Shapes come from a few buckets so the number
of compilations stays bounded; values, masks and split points are drawn freely."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxseq as js
from tests import reference_losses as ref

pytestmark = pytest.mark.property
SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)
SHAPES = st.sampled_from([(2, 3, 2), (3, 5, 4), (4, 7, 3)])  # (B, T, C)
REDUCTION = st.sampled_from(["sum_over_time", "mean_over_time", "mean_over_tokens"])


@st.composite
def labeling_batch(draw):
    b, t, c = draw(SHAPES)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    logits = (scale * rng.normal(size=(b, t, c))).astype(np.float32)
    labels = rng.integers(0, c, size=(b, t)).astype(np.int32)
    lengths = np.array(draw(st.lists(st.integers(0, t), min_size=b, max_size=b)))
    where = np.arange(t)[None, :] < lengths[:, None]
    return logits, labels, where, lengths


@SETTINGS
@given(labeling_batch(), REDUCTION)
def test_property_labeling_loss_matches_reference(batch, reduction):
    logits, labels, where, _ = batch
    got = float(js.sequence_labeling_loss(logits, labels, where=where, reduction=reduction))
    want = ref.labeling_loss(logits.astype(np.float64), labels, where, reduction)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@SETTINGS
@given(labeling_batch(), REDUCTION, st.integers(0, 4))
def test_property_loss_terms_any_split_is_exact(batch, reduction, split_at):
    logits, labels, where, _ = batch
    k = min(split_at, logits.shape[0])
    whole = js.sequence_labeling_loss_terms(logits, labels, where=where, reduction=reduction)
    a = js.sequence_labeling_loss_terms(
        logits[:k], labels[:k], where=where[:k], reduction=reduction
    )
    b = js.sequence_labeling_loss_terms(
        logits[k:], labels[k:], where=where[k:], reduction=reduction
    )
    combined = js.LossTerms(a.total + b.total, a.count + b.count)
    np.testing.assert_allclose(float(combined.loss), float(whole.loss), rtol=1e-6, atol=1e-7)
    assert float(combined.count) == float(whole.count)


@SETTINGS
@given(labeling_batch(), REDUCTION, st.integers(1, 3))
def test_property_extra_padding_changes_nothing(batch, reduction, extra):
    logits, labels, where, _ = batch
    b, t, c = logits.shape
    pad = lambda x, v: np.concatenate([x, np.full((b, extra) + x.shape[2:], v, x.dtype)], 1)
    padded = js.sequence_labeling_loss(
        pad(logits, np.nan), pad(labels, -100), where=pad(where, False), reduction=reduction
    )
    plain = js.sequence_labeling_loss(logits, labels, where=where, reduction=reduction)
    np.testing.assert_allclose(float(padded), float(plain), rtol=1e-6, atol=1e-7)


@SETTINGS
@given(labeling_batch(), st.floats(0.1, 10.0))
def test_property_scaling_class_weights_leaves_the_weighted_mean(batch, factor):
    logits, labels, where, _ = batch
    c = logits.shape[-1]
    weights = np.linspace(0.5, 2.0, c).astype(np.float32)
    base = js.sequence_labeling_loss(
        logits, labels, where=where, reduction="mean_over_tokens", class_weights=weights
    )
    scaled = js.sequence_labeling_loss(
        logits,
        labels,
        where=where,
        reduction="mean_over_tokens",
        class_weights=(weights * np.float32(factor)).astype(np.float32),
    )
    np.testing.assert_allclose(float(scaled), float(base), rtol=2e-6, atol=1e-7)


@SETTINGS
@given(labeling_batch(), st.sampled_from(["sum_over_time", "mean_over_time", "mean_over_tokens"]))
def test_property_chunked_equals_materialised_for_sequences_and_flat_tokens(batch, reduction):
    logits, labels, where, _ = batch
    b, t, c = logits.shape
    hidden = logits  # H = C, weight = I: the logits are the hidden states themselves
    weight = np.eye(c, dtype=np.float32)
    tiles = {"token_chunk": 2, "class_chunk": 2}
    got = js.linear_cross_entropy(hidden, weight, labels, where=where, reduction=reduction, **tiles)
    want = js.sequence_labeling_loss(logits, labels, where=where, reduction=reduction)
    np.testing.assert_allclose(float(got), float(want), rtol=2e-5, atol=2e-5)
    # Flat tokens are sequences of one step: every mean is the mean over valid tokens.
    flat = js.linear_cross_entropy(
        hidden.reshape(b * t, c), weight, labels.reshape(-1), where=where.reshape(-1),
        reduction=reduction, **tiles,
    )  # fmt: skip
    per_token = ref.labeling_loss(logits.astype(np.float64), labels, where, "none")
    want_flat = per_token.sum() / where.sum() if where.any() else 0.0
    np.testing.assert_allclose(float(flat), want_flat, rtol=2e-5, atol=2e-5)


@SETTINGS
@given(labeling_batch(), st.floats(-50.0, 50.0))
def test_property_cross_entropy_is_shift_invariant(batch, shift):
    logits, labels, _, _ = batch
    shifted = (logits + np.float32(shift)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(js.cross_entropy(shifted, labels)),
        np.asarray(js.cross_entropy(logits, labels)),
        atol=5e-5,
    )


@SETTINGS
@given(labeling_batch(), st.floats(0.0, 0.9))
def test_property_label_smoothing_is_a_mixture(batch, alpha):
    logits, labels, _, _ = batch
    c = logits.shape[-1]
    smoothed = js.cross_entropy(logits, labels, label_smoothing=alpha)
    hard = js.cross_entropy(logits, labels)
    uniform = sum(js.cross_entropy(logits, np.full_like(labels, k)) for k in range(c)) / c
    np.testing.assert_allclose(
        np.asarray(smoothed), np.asarray((1 - alpha) * hard + alpha * uniform), rtol=1e-5, atol=1e-5
    )


@SETTINGS
@given(labeling_batch())
def test_property_soft_one_hot_equals_integer_labels_and_is_nonnegative(batch):
    logits, labels, where, _ = batch
    one_hot = np.eye(logits.shape[-1], dtype=np.float32)[labels]
    soft = np.asarray(js.soft_cross_entropy(logits, one_hot, where=where))
    hard = np.asarray(js.cross_entropy(logits, labels, where=where))
    np.testing.assert_allclose(soft, hard, rtol=1e-5, atol=1e-6)
    assert np.all(hard >= 0)


@SETTINGS
@given(labeling_batch())
def test_property_reverse_within_length_is_an_involution(batch):
    logits, _, where, lengths = batch
    lengths = lengths.astype(np.int32)
    once = js.reverse_within_length(logits, lengths)
    np.testing.assert_array_equal(np.asarray(js.reverse_within_length(once, lengths)), logits)
    # The first step of the reversed sequence is the last valid step.
    has = lengths > 0
    np.testing.assert_array_equal(
        np.asarray(once)[has, 0], np.asarray(js.last_valid(logits, lengths))[has]
    )
    np.testing.assert_array_equal(
        np.asarray(js.mask_lengths(js.length_mask(lengths, where.shape[1]))), lengths
    )


CELL = js.gru(4)
CELL_PARAMS = CELL.init(jax.random.key(0), 3)


@SETTINGS
@given(st.lists(st.integers(0, 6), min_size=3, max_size=3), st.integers(0, 2**31 - 1))
def test_property_rnn_ignores_how_much_padding_follows(lengths, seed):
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths, np.int32)
    xs = rng.normal(size=(3, 6, 3)).astype(np.float32)
    longer = np.concatenate([xs, np.full((3, 4, 3), np.inf, np.float32)], axis=1)
    carry, hs = js.rnn(CELL, CELL_PARAMS, xs, lengths)
    carry_long, hs_long = js.rnn(CELL, CELL_PARAMS, longer, lengths)
    np.testing.assert_allclose(np.asarray(hs_long[:, :6]), np.asarray(hs), rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(hs_long[:, 6:]) == 0)
    np.testing.assert_allclose(np.asarray(carry_long), np.asarray(carry), rtol=1e-6, atol=1e-7)


@SETTINGS
@given(st.lists(st.integers(0, 6), min_size=3, max_size=3), st.integers(0, 2**31 - 1))
def test_property_reverse_rnn_equals_forward_on_reversed_inputs(lengths, seed):
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths, np.int32)
    xs = rng.normal(size=(3, 6, 3)).astype(np.float32)
    carry_r, hs_r = js.rnn(CELL, CELL_PARAMS, xs, lengths, reverse=True)
    carry_f, hs_f = js.rnn(CELL, CELL_PARAMS, js.reverse_within_length(xs, lengths), lengths)
    np.testing.assert_allclose(
        np.asarray(hs_r), np.asarray(js.reverse_within_length(hs_f, lengths)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(carry_r), np.asarray(carry_f), rtol=1e-5, atol=1e-6)
