"""Memory budgets (compiled temp sizes), run-to-run determinism and extra dtype cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq import models
from jaxseq.training import steps
from tests import reference_losses as ref


def temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def _long_sequence_grad(method, cell=None):
    cell = js.lstm(64) if cell is None else cell
    params = cell.init(jax.random.key(0), 16)
    xs = jnp.ones((4, 1024, 16))
    lengths = jnp.full((4,), 1024, jnp.int32)

    def loss(params):
        _, hs = js.rnn(cell, params, xs, lengths, method=method)
        return jnp.sum(hs**2)

    return jax.grad(loss), params


@pytest.mark.perf_budget
def test_remat_cuts_the_backward_memory_of_long_sequences():
    grad_plain, params = _long_sequence_grad(js.Scan())
    grad_remat, _ = _long_sequence_grad(js.Scan(remat=True))
    plain, rematted = temp_bytes(grad_plain, params), temp_bytes(grad_remat, params)
    # remat saves only the carry per step instead of every gate activation.
    assert rematted < 0.75 * plain, (rematted, plain)


@pytest.mark.perf_budget
def test_fused_path_stores_no_more_than_the_scan_path():
    grad_scan, params = _long_sequence_grad(js.Scan())
    for method in (js.Fused(), None):  # the default for an LSTM is the fused engine
        grad_fused, _ = _long_sequence_grad(method)
        scan, fused_bytes = temp_bytes(grad_scan, params), temp_bytes(grad_fused, params)
        assert fused_bytes <= 1.05 * scan, (method, fused_bytes, scan)


CONFIG = models.SequenceModelConfig(
    num_classes=3,
    hidden_size=8,
    cell="lstm",
    vocab_size=12,
    embed_dim=6,
    num_layers=2,
    dropout_rate=0.3,
    embed_dropout_rate=0.1,
)


def _train_params(seed: int, num_steps: int = 5):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 12, size=(6, 7)).astype(np.int32)
    lengths = np.array([7, 3, 0, 5, 1, 7], np.int32)
    labels = (ids % 3).astype(np.int32)
    mask = np.asarray(js.length_mask(lengths, 7))

    def loss_fn(params, batch, key, is_training):
        logits = models.labeler_apply(params, CONFIG, ids, lengths, key=key, train=is_training)
        return js.sequence_labeling_loss_terms(logits, labels, where=mask), {}

    optimizer = optax.adam(1e-2)
    state = steps.create_train_state(models.labeler_init(jax.random.key(seed), CONFIG), optimizer)
    step = steps.make_train_step(loss_fn, optimizer)
    for _ in range(num_steps):
        state, _ = step(state, None, jax.random.key(seed))
    return jax.tree.map(np.asarray, state.params)


@pytest.mark.determinism
def test_same_seed_gives_bitwise_identical_parameters_with_dropout():
    a, b = _train_params(seed=3), _train_params(seed=3)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = _train_params(seed=4)
    differs = jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.any(x != y)), a, c))
    assert any(differs)


@pytest.mark.dtype
def test_bfloat16_classification_logits_match_reference_on_the_rounded_values():
    rng = np.random.default_rng(5)
    logits = jnp.asarray(rng.normal(scale=4.0, size=(9, 5)), jnp.bfloat16)
    labels = rng.integers(0, 5, size=9).astype(np.int32)
    got = js.sequence_classification_loss(logits, labels, label_smoothing=0.1)
    want = ref.classification_loss(
        np.asarray(logits.astype(jnp.float32), np.float64), labels, label_smoothing=0.1
    )
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=2e-6)


@pytest.mark.dtype
def test_float16_soft_targets_and_class_weights_stay_float32():
    rng = np.random.default_rng(6)
    logits = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float16)
    targets = jnp.asarray(rng.dirichlet(np.ones(3), size=(2, 4)), jnp.float16)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    soft = js.soft_cross_entropy(logits, targets, where=mask)
    assert soft.dtype == jnp.float32
    weights = jnp.asarray([1.0, 2.0, 0.5], jnp.float16)
    labels = rng.integers(0, 3, size=(2, 4)).astype(np.int32)
    weighted = js.sequence_labeling_loss(
        logits, labels, where=mask, reduction="mean_over_tokens", class_weights=weights
    )
    want = ref.labeling_loss(
        np.asarray(logits, np.float64),
        labels,
        mask,
        "mean_over_tokens",
        class_weights=np.asarray(weights, np.float64),
    )
    assert weighted.dtype == jnp.float32
    np.testing.assert_allclose(float(weighted), want, rtol=1e-5)
