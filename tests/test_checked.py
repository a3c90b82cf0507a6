"""`js.checked`: value checks that hold eagerly, under jit, under grad and in a jitted
train step, with every option of the wrapped loss; CTC checks respect the label lengths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import jaxseq as js

pytestmark = pytest.mark.bad_input

B, T, C = 3, 4, 5
RNG = np.random.default_rng(20261129)
LOGITS = jnp.asarray(RNG.normal(size=(B, T, C)), jnp.float32)
WHERE = js.length_mask(jnp.array([4, 2, 0]), T)
GOOD = jnp.asarray(RNG.integers(0, C, size=(B, T)), jnp.int32)
# Out of range only at masked positions: valid for the checked loss.
MASKED_BAD = GOOD.at[1, 3].set(C).at[2, 0].set(-7)
# Out of range at a valid position (row 0, step 2).
BAD = GOOD.at[0, 2].set(C + 1)
OPTIONS = {
    "where": WHERE,
    "reduction": "mean_over_tokens",
    "label_smoothing": 0.1,
    "class_weights": jnp.linspace(0.5, 1.5, C),
    "z_loss": 1e-3,
}


def test_preconditions_of_the_cases():
    assert not bool(WHERE[1, 3]) and not bool(WHERE[2, 0])
    assert bool(WHERE[0, 2]) and int(BAD[0, 2]) >= C
    assert int(MASKED_BAD[1, 3]) == C and int(MASKED_BAD[2, 0]) < 0


def test_eager_every_option_passes_through_and_bad_labels_raise():
    safe = js.checked(js.sequence_labeling_loss)
    want = js.sequence_labeling_loss(LOGITS, MASKED_BAD, **OPTIONS)
    got = safe(LOGITS, MASKED_BAD, **OPTIONS)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(ValueError, match=r"out of range \[0, 5\).*flat index 2"):
        safe(LOGITS, BAD, **OPTIONS)
    # Without `where` every position is checked.
    with pytest.raises(ValueError, match="out of range"):
        safe(LOGITS, MASKED_BAD)


def test_under_plain_jit_and_grad_a_bad_label_raises_when_run():
    safe = js.checked(js.sequence_labeling_loss)

    def loss(logits, labels):
        return safe(logits, labels, **OPTIONS)

    step = jax.jit(jax.value_and_grad(loss))
    value, grad = step(LOGITS, MASKED_BAD)
    want_value, want_grad = jax.value_and_grad(
        lambda z: js.sequence_labeling_loss(z, MASKED_BAD, **OPTIONS)
    )(LOGITS)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-7)
    with pytest.raises(Exception, match=r"`labels` out of range \[0, 5\)") as info:
        jax.block_until_ready(step(LOGITS, BAD))
    assert isinstance(info.value, (ValueError, jax.errors.JaxRuntimeError))
    # Eager grad (no jit) raises too.
    with pytest.raises(Exception, match="out of range"):
        jax.grad(loss)(LOGITS, BAD)


def test_under_vmap_and_scan_inside_jit_the_check_runs_per_call():
    safe = js.checked(js.sequence_classification_loss)

    def per_example(logits, label):
        return safe(logits[None], label[None], reduction="sum")

    def scanned(logits_B, labels_B):
        def body(total, xy):
            return total + per_example(*xy), None

        return jax.lax.scan(body, 0.0, (logits_B, labels_B))[0]

    logits_B = LOGITS[:, 0]
    good_B, bad_B = GOOD[:, 0], GOOD[:, 0].at[1].set(C)
    for fn in (jax.vmap(per_example), scanned):
        jitted = jax.jit(fn)
        assert np.all(np.isfinite(np.asarray(jitted(logits_B, good_B))))
        with pytest.raises(jax.errors.JaxRuntimeError, match=r"out of range \[0, 5\)"):
            jax.block_until_ready(jitted(logits_B, bad_B))


def _labeler_setup():
    cfg = js.SequenceModelConfig(
        vocab_size=11, num_classes=C, embed_dim=4, hidden_size=6, cell="gru"
    )
    params = js.labeler_init(jax.random.key(0), cfg)
    tokens = jnp.asarray(RNG.integers(0, 11, size=(B, T)), jnp.int32)
    lengths = jnp.array([4, 2, 0])
    return cfg, params, tokens, lengths


def test_inside_a_jitted_train_step_with_checkify_and_without():
    from jaxseq.training import steps

    cfg, params, tokens, lengths = _labeler_setup()
    safe_terms = js.checked(js.sequence_labeling_loss_terms)

    def loss_fn(params, batch, key, train):
        logits = js.labeler_apply(params, cfg, batch["tokens"], batch["lengths"])
        where = js.length_mask(batch["lengths"], T)
        terms = safe_terms(logits, batch["labels"], where=where, label_smoothing=0.1)
        return terms, {}

    optimizer = optax.adam(1e-2)

    def fresh_state():  # the library's train step donates its state
        return steps.create_train_state(jax.tree.map(jnp.copy, params), optimizer)

    good = {"tokens": tokens, "lengths": lengths, "labels": MASKED_BAD}
    bad = dict(good, labels=BAD)
    key = jax.random.key(1)

    # The library's own jitted train step (state donated): good data trains, bad data raises.
    train_step = steps.make_train_step(loss_fn, optimizer)
    new_state, metrics = train_step(fresh_state(), good, key)
    assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"].total))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"`labels` out of range \[0, 5\)"):
        jax.block_until_ready(train_step(fresh_state(), bad, key))
    # Inside a user's checkify-wrapped step, combined with checkify's own checks.
    checked_step = jax.jit(
        checkify.checkify(steps.train_step_fn(loss_fn, optimizer), errors=checkify.float_checks)
    )
    error, (new_state, _) = checked_step(fresh_state(), good, key)
    assert error.get() is None and int(new_state.step) == 1
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"`labels` out of range \[0, 5\)"):
        jax.block_until_ready(checked_step(fresh_state(), bad, key))


def test_linear_cross_entropy_is_checked_against_the_weight_classes():
    rng = np.random.default_rng(7)
    hidden = jnp.asarray(rng.normal(size=(B, T, 3)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(3, C)), jnp.float32)
    safe = js.checked(js.linear_cross_entropy)
    want = js.linear_cross_entropy(hidden, weight, MASKED_BAD, where=WHERE, class_chunk=2)
    got = safe(hidden, weight, MASKED_BAD, where=WHERE, class_chunk=2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        safe(hidden, weight, BAD, where=WHERE, class_chunk=2)


# ---------------------------------------------------------------------------- CTC

K, S = 4, 3
CTC_LOGITS = jnp.asarray(np.random.default_rng(3).normal(size=(B, 6, K)), jnp.float32)
LOGIT_LENGTHS = jnp.array([6, 4, 0])
LABEL_LENGTHS = jnp.array([3, 1, 0])
# Beyond each label length the labels hold garbage (-5, K + 3, the blank): not checked.
CTC_LABELS = jnp.array([[1, 2, 3], [2, -5, K + 3], [0, 0, 0]])


def test_ctc_checks_respect_label_lengths_and_where():
    safe = js.checked(js.ctc_loss)
    for reduction in ("sum_over_time", "mean_over_labels", "none"):
        want = js.ctc_loss(
            CTC_LOGITS, LOGIT_LENGTHS, CTC_LABELS, LABEL_LENGTHS, reduction=reduction
        )
        got = safe(CTC_LOGITS, LOGIT_LENGTHS, CTC_LABELS, LABEL_LENGTHS, reduction=reduction)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    jitted = jax.jit(safe, static_argnames=("blank", "reduction", "zero_infinity"))
    # (labels, logit_lengths, label_lengths) -> the sequence and argument the error names
    cases = [
        ((CTC_LABELS.at[0, 1].set(0), LOGIT_LENGTHS, LABEL_LENGTHS), "0: `labels`"),
        ((CTC_LABELS.at[1, 0].set(K), LOGIT_LENGTHS, LABEL_LENGTHS), "1: `labels`"),
        ((CTC_LABELS, LOGIT_LENGTHS.at[2].set(7), LABEL_LENGTHS), "2: `logit_lengths`"),
        ((CTC_LABELS, LOGIT_LENGTHS, LABEL_LENGTHS.at[1].set(4)), "1: `label_lengths`"),
        ((CTC_LABELS, LOGIT_LENGTHS, LABEL_LENGTHS.at[1].set(-1)), "1: `label_lengths`"),
    ]
    for (labels, logit_lengths, label_lengths), named in cases:
        with pytest.raises(Exception, match=f"CTC inputs out of range in sequence {named}"):
            jax.block_until_ready(jitted(CTC_LOGITS, logit_lengths, labels, label_lengths, blank=0))
    # A row where `where` is False is not checked.
    labels = CTC_LABELS.at[2, 0].set(K + 9)
    where = jnp.array([True, True, False])
    got = jitted(CTC_LOGITS, LOGIT_LENGTHS, labels, LABEL_LENGTHS.at[2].set(1), where=where)
    assert np.isfinite(float(got))
    # A different blank moves what is forbidden (under jit, where the loss gives NaN).
    with pytest.raises(Exception, match="CTC inputs out of range in sequence 0"):
        jax.block_until_ready(jitted(CTC_LOGITS, LOGIT_LENGTHS, CTC_LABELS, LABEL_LENGTHS, blank=3))


def test_checked_rejects_functions_it_cannot_check():
    with pytest.raises(TypeError, match="must take `labels`"):
        js.checked(lambda logits, targets: 0.0)
    with pytest.raises(TypeError, match="callable"):
        js.checked(3)
