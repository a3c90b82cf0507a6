"""The chunked linear cross-entropy against the materialised loss, a float64 reference, and
its own semantics (masking, chunking, memory)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq as js
from jaxseq import chunked
from tests import reference_losses as ref

# 3 x 7 = 21 tokens and 23 classes: neither divisible by the tiles used below.
B, T, H, C = 3, 7, 5, 23
TILES = {"token_chunk": 4, "class_chunk": 5}
RTOL, ATOL = 2e-5, 2e-5
# Gradients are sums of ~N*C float32 products in a different order: a little looser.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5

MODES = {"recompute": False, "grad_in_forward": True}
MASK_KINDS = ("full", "partial", "padding_row", "all_padding")


def class_weights():
    # A JAX array: the materialised path (jaxseq.losses) indexes it with traced labels.
    return jnp.asarray(np.random.default_rng(99).uniform(0.0, 2.0, C), jnp.float32)


OPTIONS = {
    "plain": lambda: {},
    "class_weights": lambda: {"class_weights": class_weights()},
    "smoothing": lambda: {"label_smoothing": 0.2},
    "z_loss": lambda: {"z_loss": 1e-2},
    "all": lambda: {"class_weights": class_weights(), "label_smoothing": 0.1, "z_loss": 1e-3},
}


def make_mask(kind, rng, b=B, t=T):
    if kind == "full":
        return np.ones((b, t), bool)
    if kind == "all_padding":
        return np.zeros((b, t), bool)
    lengths = rng.integers(1, t + 1, size=b)
    if kind == "padding_row":
        lengths[1] = 0
    return np.arange(t)[None, :] < lengths[:, None]


def make_data(seed, b=B, t=T, h=H, c=C, dtype=np.float32):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, t, h)).astype(dtype)
    weight = (rng.normal(size=(h, c)) * 1.5).astype(dtype)  # logits of scale ~3
    bias = rng.normal(size=(c,)).astype(dtype)
    labels = rng.integers(0, c, size=(b, t)).astype(np.int32)
    return rng, hidden, weight, bias, labels


def materialised(hidden, weight, bias, labels, where, reduction, **options):
    logits = jnp.matmul(hidden, weight) + bias[None, None, :]
    return js.sequence_labeling_loss(logits, labels, where=where, reduction=reduction, **options)


def value_and_grads(fn, hidden, weight, bias):
    """Jitted (one compilation instead of many op-by-op ones): value and the three gradients."""
    step = jax.jit(jax.value_and_grad(lambda h, w, b: jnp.sum(fn(h, w, b)), argnums=(0, 1, 2)))
    return step(jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(bias))


def mode_reduction_pairs(reductions):
    """Every (mode, reduction) except grad_in_forward with 'none' (not available)."""
    return [
        (mode, reduction)
        for mode in MODES
        for reduction in reductions
        if not (MODES[mode] and reduction == "none")
    ]


def assert_grads_close(got, want):
    for name, g, w in zip(("hidden", "weight", "bias"), got, want):
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(w), rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=name
        )


# ---------------------------------------------------------------- reference


@pytest.mark.reference
@pytest.mark.parametrize(("mode", "reduction"), mode_reduction_pairs(js.REDUCTIONS))
@pytest.mark.parametrize(
    "option",
    # "all" combines the single options; each alone runs with `make test-slow`.
    [o if o in ("plain", "all") else pytest.param(o, marks=pytest.mark.slow) for o in OPTIONS],
)
def test_equals_materialised_loss_and_gradients(mode, reduction, option):
    rng, hidden, weight, bias, labels = make_data(ref.seed_of(reduction, option))
    where = make_mask("padding_row", rng)
    options = OPTIONS[option]()

    def fn(h, w, b):
        return chunked.linear_cross_entropy(
            h, w, labels, where=where, bias=b, reduction=reduction,
            grad_in_forward=MODES[mode], **TILES, **options,
        )  # fmt: skip

    value, grads = value_and_grads(fn, hidden, weight, bias)
    want_value, want_grads = value_and_grads(
        lambda h, w, b: materialised(h, w, b, labels, where, reduction, **options),
        hidden,
        weight,
        bias,
    )
    np.testing.assert_allclose(float(value), float(want_value), rtol=RTOL, atol=ATOL)
    assert_grads_close(grads, want_grads)
    # The value itself against the float64 plain-Python loops of docs/semantics.md.
    logits64 = hidden.astype(np.float64) @ weight.astype(np.float64) + bias.astype(np.float64)
    ref_options = {
        k: (np.asarray(v, np.float64) if k == "class_weights" else v) for k, v in options.items()
    }
    got = fn(hidden, weight, bias)
    assert got.dtype == jnp.float32
    want = ref.labeling_loss(logits64, labels, where, reduction, **ref_options)
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=1e-4)


@pytest.mark.reference
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("reduction", ["sum_over_time", "mean_over_time", "mean_over_tokens"])
def test_mask_kinds_and_class_weight_gradient(mode, mask_kind, reduction):
    rng, hidden, weight, bias, labels = make_data(7 + MASK_KINDS.index(mask_kind))
    where = make_mask(mask_kind, rng)

    def chunked_loss(h, w, cw):
        return chunked.linear_cross_entropy(
            h, w, labels, where=where, reduction=reduction, class_weights=cw,
            grad_in_forward=MODES[mode], **TILES,
        )  # fmt: skip

    def plain_loss(h, w, cw):
        return js.sequence_labeling_loss(
            jnp.matmul(h, w), labels, where=where, reduction=reduction, class_weights=cw
        )

    args = (jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(class_weights()))
    value, grads = jax.value_and_grad(chunked_loss, argnums=(0, 1, 2))(*args)
    want, want_grads = jax.value_and_grad(plain_loss, argnums=(0, 1, 2))(*args)
    np.testing.assert_allclose(float(value), float(want), rtol=RTOL, atol=ATOL)
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.reference
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("reduction", ["sum_over_time", "mean_over_time", "mean_over_tokens"])
def test_terms_equal_materialised_terms(mode, reduction):
    rng, hidden, weight, bias, labels = make_data(17)
    where = make_mask("padding_row", rng)
    options = OPTIONS["all"]()

    def total(h, w):
        terms = chunked.linear_cross_entropy_terms(
            h, w, labels, where=where, bias=bias, reduction=reduction,
            grad_in_forward=MODES[mode], **TILES, **options,
        )  # fmt: skip
        return terms.total, terms

    def want_total(h, w):
        logits = jnp.matmul(h, w) + jnp.asarray(bias)[None, None, :]
        terms = js.sequence_labeling_loss_terms(
            logits, labels, where=where, reduction=reduction, **options
        )
        return terms.total, terms

    args = (jnp.asarray(hidden), jnp.asarray(weight))
    grads, terms = jax.grad(total, argnums=(0, 1), has_aux=True)(*args)
    want_grads, want = jax.grad(want_total, argnums=(0, 1), has_aux=True)(*args)
    np.testing.assert_allclose(float(terms.total), float(want.total), rtol=RTOL, atol=ATOL)
    # The count, from the float64 definition: N sequences (an integer: exact), or for
    # mean_over_tokens the sum of class_weights[y] over the valid tokens, a float32 sum
    # whose rounding depends on the order each program sums in (n terms: n ulps at most).
    token_w = np.asarray(options["class_weights"], np.float64)[labels][where]
    if reduction == "mean_over_tokens":
        bound = token_w.size * np.finfo(np.float32).eps
        for count in (terms.count, want.count):
            np.testing.assert_allclose(float(count), token_w.sum(), rtol=bound, atol=0)
    else:
        rows = int(np.sum(np.any(where, axis=1)))
        assert float(terms.count) == float(want.count) == rows
    for g, w in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.reference
@pytest.mark.parametrize(("mode", "reduction"), mode_reduction_pairs(js.REDUCTIONS))
@pytest.mark.parametrize("option", ["plain", "class_weights"])
def test_flat_tokens_are_sequences_of_one_step(mode, reduction, option):
    # [N, H] input is N sequences of one step: every reduction is defined, and it equals
    # the materialised loss of [N, 1, H] and the float64 per-token reference.
    rng, hidden, weight, bias, labels = make_data(27)
    where = make_mask("partial", rng)
    n = B * T
    h_NH, y_N, where_N = hidden.reshape(n, H), labels.reshape(n), where.reshape(n)
    options = OPTIONS[option]()

    def fn(h, w, b):
        return chunked.linear_cross_entropy(
            h, w, y_N, where=where_N, bias=b, reduction=reduction,
            grad_in_forward=MODES[mode], **TILES, **options,
        )  # fmt: skip

    value, grads = value_and_grads(fn, h_NH, weight, bias)
    want_value, want_grads = value_and_grads(
        lambda h, w, b: materialised(
            h[:, None], w, b, y_N[:, None], where_N[:, None], reduction, **options
        ),
        h_NH,
        weight,
        bias,
    )
    np.testing.assert_allclose(float(value), float(want_value), rtol=RTOL, atol=ATOL)
    assert_grads_close(grads, want_grads)
    got = np.asarray(fn(h_NH, weight, bias))
    assert got.shape == ((n,) if reduction == "none" else ())
    logits64 = h_NH.astype(np.float64) @ weight.astype(np.float64) + bias.astype(np.float64)
    ref_options = {k: np.asarray(v, np.float64) for k, v in options.items()}
    want = ref.labeling_loss(
        logits64[:, None], y_N[:, None], where_N[:, None], reduction, **ref_options
    )
    np.testing.assert_allclose(got, np.reshape(want, got.shape), rtol=RTOL, atol=ATOL)


@pytest.mark.reference
def test_flat_tokens_means_agree_without_class_weights():
    rng, hidden, weight, bias, labels = make_data(28)
    where = make_mask("padding_row", rng)
    n = B * T
    args = (hidden.reshape(n, H), weight, labels.reshape(n))
    means = [
        float(chunked.linear_cross_entropy(*args, where=where.reshape(n), reduction=r, **TILES))
        for r in ("sum_over_time", "mean_over_time", "mean_over_tokens")
    ]
    np.testing.assert_allclose(means, [means[2]] * 3, rtol=1e-6)
    total = chunked.linear_cross_entropy(*args, where=where.reshape(n), reduction="sum", **TILES)
    np.testing.assert_allclose(means[2], float(total) / where.sum(), rtol=1e-6)


@pytest.mark.reference
@pytest.mark.parametrize("mode", list(MODES))
def test_default_reduction_equals_sequence_labeling_loss_default(mode):
    rng, hidden, weight, bias, labels = make_data(29)
    where = make_mask("padding_row", rng)
    got = chunked.linear_cross_entropy(
        hidden, weight, labels, where=where, bias=bias, grad_in_forward=MODES[mode], **TILES
    )
    want = js.sequence_labeling_loss(
        jnp.matmul(hidden, weight) + bias[None, None, :], labels, where=where
    )
    np.testing.assert_allclose(float(got), float(want), rtol=RTOL, atol=ATOL)
    # ...and that default is sum_over_time, for both functions and the terms variant.
    explicit = chunked.linear_cross_entropy(
        hidden, weight, labels, where=where, bias=bias, reduction="sum_over_time", **TILES
    )
    np.testing.assert_allclose(float(got), float(explicit), rtol=1e-6)
    terms = chunked.linear_cross_entropy_terms(hidden, weight, labels, where=where, bias=bias)
    np.testing.assert_allclose(float(terms.loss), float(want), rtol=RTOL, atol=ATOL)
    assert float(terms.count) == float(np.sum(where.any(axis=1)))


@pytest.mark.padding_invariance
@pytest.mark.parametrize("reduction", js.REDUCTIONS)
def test_where_omitted_equals_all_true(reduction):
    _, hidden, weight, bias, labels = make_data(30)
    options = {"bias": bias, "reduction": reduction, **OPTIONS["all"](), **TILES}
    for h, y in ((hidden, labels), (hidden.reshape(-1, H), labels.reshape(-1))):
        omitted = chunked.linear_cross_entropy(h, weight, y, **options)
        all_true = chunked.linear_cross_entropy(
            h, weight, y, where=np.ones(y.shape, bool), **options
        )
        np.testing.assert_array_equal(np.asarray(omitted), np.asarray(all_true))
        if reduction in js.losses.TERM_REDUCTIONS:
            a = chunked.linear_cross_entropy_terms(h, weight, y, **options)
            b = chunked.linear_cross_entropy_terms(
                h, weight, y, where=np.ones(y.shape, bool), **options
            )
            assert float(a.total) == float(b.total) and float(a.count) == float(b.count)


# ---------------------------------------------------------------- chunking


@pytest.mark.variants
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(
    "tiles", [(1, 1), (2, 22), (4, 5), (7, 23), (8, 8), (21, 4), (64, 100), (None, None)]
)
def test_every_tiling_gives_the_same_result(mode, tiles):
    rng, hidden, weight, bias, labels = make_data(37)
    where = make_mask("padding_row", rng)
    options = OPTIONS["all"]()
    reduction = "mean_over_time"
    token_chunk, class_chunk = tiles

    def fn(h, w, b):
        return chunked.linear_cross_entropy(
            h, w, labels, where=where, bias=b, reduction=reduction, token_chunk=token_chunk,
            class_chunk=class_chunk, grad_in_forward=MODES[mode], **options,
        )  # fmt: skip

    value, grads = value_and_grads(fn, hidden, weight, bias)
    want_value, want_grads = value_and_grads(
        lambda h, w, b: materialised(h, w, b, labels, where, reduction, **options),
        hidden,
        weight,
        bias,
    )
    np.testing.assert_allclose(float(value), float(want_value), rtol=RTOL, atol=ATOL)
    assert_grads_close(grads, want_grads)


@pytest.mark.variants
@pytest.mark.parametrize("mode", list(MODES))
def test_jit_vmap_and_no_bias(mode):
    rng, hidden, weight, _, labels = make_data(47)
    where = make_mask("partial", rng)

    def fn(h, y, m):
        return chunked.linear_cross_entropy(
            h, weight, y, where=m, reduction="sum_over_time", grad_in_forward=MODES[mode], **TILES
        )

    eager = fn(hidden, labels, where)
    np.testing.assert_allclose(float(jax.jit(fn)(hidden, labels, where)), float(eager), rtol=1e-6)
    # vmap over a leading axis of independent problems equals a loop over them.
    stacked = [np.stack([x, x[::-1]]) for x in (hidden, labels, where)]
    batched = jax.vmap(fn)(*stacked)
    looped = [fn(stacked[0][i], stacked[1][i], stacked[2][i]) for i in range(2)]
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-6)
    grad = jax.grad(lambda h: fn(h, labels, where))(jnp.asarray(hidden))
    want = jax.grad(
        lambda h: js.sequence_labeling_loss(jnp.matmul(h, weight), labels, where=where)
    )(jnp.asarray(hidden))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(want), rtol=GRAD_RTOL, atol=GRAD_ATOL)


# ---------------------------------------------------------------- masking

POISONS = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf, "1e30": 1e30}


@pytest.mark.padding_invariance
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("poison", list(POISONS))
def test_poisoned_padding_changes_nothing(mode, poison):
    # One reduction per poison (all of them are covered over the four poisons).
    reduction = ["sum_over_time", "mean_over_time", "mean_over_tokens", "sum"][
        list(POISONS).index(poison)
    ]
    rng, hidden, weight, bias, labels = make_data(57)
    where = make_mask("padding_row", rng)
    poisoned = np.where(where[..., None], hidden, POISONS[poison]).astype(np.float32)
    garbage = rng.choice(np.array([-100, -1, C, 10**6], np.int32), size=labels.shape)
    poisoned_labels = np.where(where, labels, garbage).astype(np.int32)
    options = OPTIONS["all"]()

    @jax.jit
    def step(h, w, b, y):
        def fn(h, w, b):
            return chunked.linear_cross_entropy(
                h, w, y, where=where, bias=b, reduction=reduction,
                grad_in_forward=MODES[mode], **TILES, **options,
            )  # fmt: skip

        return jax.value_and_grad(fn, argnums=(0, 1, 2))(h, w, b)

    clean_value, clean_grads = step(hidden, weight, bias, labels)
    value, grads = step(poisoned, weight, bias, poisoned_labels)
    assert np.isfinite(float(value)) and float(value) == float(clean_value)
    for g, clean in zip(grads, clean_grads):  # hidden, weight and bias
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_array_equal(np.asarray(g), np.asarray(clean))
    assert np.all(np.asarray(grads[0])[~where] == 0.0)


@pytest.mark.padding_invariance
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("reduction", ["sum_over_time", "mean_over_time", "mean_over_tokens"])
def test_masking_equals_removal(mode, reduction):
    rng, hidden, weight, bias, labels = make_data(67)
    lengths = np.array([7, 0, 3])
    where = np.arange(T)[None, :] < lengths[:, None]
    kw = {"bias": bias, "reduction": reduction, "grad_in_forward": MODES[mode], **TILES}
    padded = chunked.linear_cross_entropy(hidden, weight, labels, where=where, **kw)
    # Every sequence on its own, unpadded, combined through the exact terms.
    parts = [
        chunked.linear_cross_entropy_terms(
            hidden[i : i + 1, :n], weight, labels[i : i + 1, :n], **kw
        )
        for i, n in enumerate(lengths)
        if n > 0
    ]
    want = sum(float(p.total) for p in parts) / sum(float(p.count) for p in parts)
    np.testing.assert_allclose(float(padded), want, rtol=1e-6)
    if reduction == "mean_over_tokens":  # the valid tokens alone, as flat input
        removed = chunked.linear_cross_entropy(hidden[where], weight, labels[where], **kw)
        np.testing.assert_allclose(float(padded), float(removed), rtol=1e-6)


# ---------------------------------------------------------------- numerics


@pytest.mark.numerics
@pytest.mark.parametrize(("mode", "reduction"), mode_reduction_pairs(js.REDUCTIONS))
def test_all_padding_gives_zero_loss_and_zero_gradient(mode, reduction):
    _, hidden, weight, bias, labels = make_data(77)
    where = np.zeros((B, T), bool)
    poisoned = np.full_like(hidden, np.nan)

    def fn(h, w, b):
        return chunked.linear_cross_entropy(
            h,
            w,
            labels,
            where=where,
            bias=b,
            reduction=reduction,
            grad_in_forward=MODES[mode],
            **TILES,
        )

    value, grads = value_and_grads(fn, poisoned, weight, bias)
    assert float(value) == 0.0
    for g in grads:
        assert np.all(np.asarray(g) == 0.0)


@pytest.mark.numerics
@pytest.mark.parametrize("mode", list(MODES))
def test_nan_or_bad_label_at_a_valid_token_is_nan(mode):
    rng, hidden, weight, bias, labels = make_data(87)
    where = make_mask("full", rng)
    bad_hidden = hidden.copy()
    bad_hidden[1, 2, 3] = np.nan
    kw = {"grad_in_forward": MODES[mode], **TILES}
    assert np.isnan(
        float(chunked.linear_cross_entropy(bad_hidden, weight, labels, where=where, **kw))
    )
    for bad in (-1, C, -100):
        bad_labels = labels.copy()
        bad_labels[0, 1] = bad
        loss = chunked.linear_cross_entropy(hidden, weight, bad_labels, where=where, **kw)
        assert np.isnan(float(loss)), bad


@pytest.mark.numerics
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_large_logits_are_stable(mode, shift):
    rng, hidden, weight, bias, labels = make_data(97)
    where = make_mask("partial", rng)
    kw = {"grad_in_forward": MODES[mode], "reduction": "mean_over_tokens", **TILES}
    base = chunked.linear_cross_entropy(hidden, weight, labels, where=where, bias=bias, **kw)
    shifted_bias = (bias + np.float32(shift)).astype(np.float32)
    value, grad = jax.value_and_grad(
        lambda h: chunked.linear_cross_entropy(
            h, weight, labels, where=where, bias=shifted_bias, **kw
        )
    )(jnp.asarray(hidden))
    np.testing.assert_allclose(float(value), float(base), atol=5e-3)
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.dtype
@pytest.mark.parametrize("mode", list(MODES))
def test_bfloat16_inputs_compute_in_float32(mode):
    rng, hidden, weight, bias, labels = make_data(107)
    where = make_mask("partial", rng)
    h16, w16 = jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(weight, jnp.bfloat16)

    def fn(h, w):
        return chunked.linear_cross_entropy(
            h, w, labels, where=where, grad_in_forward=MODES[mode], **TILES
        )

    value, (gh, gw) = jax.value_and_grad(fn, argnums=(0, 1))(h16, w16)
    assert value.dtype == jnp.float32
    assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    # The same float32 computation on the rounded inputs.
    want = fn(h16.astype(jnp.float32), w16.astype(jnp.float32))
    np.testing.assert_allclose(float(value), float(want), rtol=1e-5)


# ---------------------------------------------------------------- gradcheck


@pytest.mark.gradcheck
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("reduction", ["sum_over_time", "mean_over_time", "mean_over_tokens"])
def test_check_grads_float64(mode, reduction):
    with jax.enable_x64(True):
        rng, hidden, weight, bias, labels = make_data(117, b=2, t=3, h=3, c=7, dtype=np.float64)
        where = make_mask("padding_row", rng, b=3, t=3)[[0, 2]]
        cw = np.array([0.5, 1.0, 2.0, 1.0, 0.3, 1.2, 0.7])

        def fn(h, w, b):
            return chunked.linear_cross_entropy(
                h, w, labels, where=where, bias=b, reduction=reduction, label_smoothing=0.1,
                class_weights=cw, z_loss=1e-2, token_chunk=2, class_chunk=3,
                grad_in_forward=MODES[mode],
            )  # fmt: skip

        args = tuple(jnp.asarray(x) for x in (hidden, weight, bias))
        assert fn(*args).dtype == jnp.float64
        # custom_vjp: reverse mode only. Second order checks that the backward pass is
        # itself differentiable JAX code (grad-of-grad, e.g. gradient penalties).
        order = 2 if reduction == "mean_over_tokens" else 1
        check_grads(jax.jit(fn), args, order=order, modes=["rev"])


# ---------------------------------------------------------------- memory budget


@pytest.mark.perf_budget
@pytest.mark.parametrize("mode", list(MODES))
def test_compiled_temp_memory_is_a_fraction_of_the_plain_path(mode):
    n, h, c = 2048, 64, 8192  # plain logits: 64 MiB; compiled only, never run
    hidden = jax.ShapeDtypeStruct((n, h), jnp.float32)
    weight = jax.ShapeDtypeStruct((h, c), jnp.float32)
    labels = jnp.zeros((n,), jnp.int32)
    where = jnp.ones((n,), bool)

    def plain(hd, w):
        ce = js.cross_entropy(jnp.matmul(hd, w), labels, where=where)
        return jnp.sum(ce) / n

    def tiled(hd, w):
        tiles = {"token_chunk": 128} if MODES[mode] else {"token_chunk": 512, "class_chunk": 1024}
        return chunked.linear_cross_entropy(
            hd, w, labels, where=where, grad_in_forward=MODES[mode], **tiles
        )

    def temp_bytes(fn):
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        analysis = step.lower(hidden, weight).compile().memory_analysis()
        if analysis is None:
            pytest.skip("this backend gives no memory analysis")
        return analysis.temp_size_in_bytes

    plain_bytes, tiled_bytes = temp_bytes(plain), temp_bytes(tiled)
    assert plain_bytes >= n * c * 4  # the logits are materialised
    assert tiled_bytes * 8 < plain_bytes, (tiled_bytes, plain_bytes)


# ---------------------------------------------------------------- validation


def _bad_calls():
    """name -> (call, the argument its message must name, the exception raised)."""
    hidden = np.zeros((2, 3, 4), np.float32)
    weight = np.zeros((4, 5), np.float32)
    labels = np.zeros((2, 3), np.int32)
    where = np.ones((2, 3), bool)
    L = chunked.linear_cross_entropy
    A, V, TE = AssertionError, ValueError, TypeError
    return {
        "hidden rank": (lambda: L(hidden[0, 0], weight, labels[0, 0]), "hidden", A),
        "hidden int": (lambda: L(hidden.astype(np.int32), weight, labels), "hidden", A),
        "weight rank": (lambda: L(hidden, weight[0], labels), "weight", A),
        "weight H": (lambda: L(hidden, weight[:3], labels), "weight", A),
        "weight int": (lambda: L(hidden, weight.astype(np.int32), labels), "weight", A),
        "labels shape": (lambda: L(hidden, weight, labels[:, :2]), "labels", A),
        "labels float": (lambda: L(hidden, weight, labels.astype(np.float32)), "labels", A),
        "where shape": (lambda: L(hidden, weight, labels, where=where[:1]), "where", A),
        "where int": (lambda: L(hidden, weight, labels, where=where.astype(np.int32)), "where", A),
        "flat where shape": (
            lambda: L(hidden[0], weight, labels[0], where=where),
            "where",
            A,
        ),
        "bias shape": (lambda: L(hidden, weight, labels, bias=np.zeros(4)), "bias", A),
        "bias int": (lambda: L(hidden, weight, labels, bias=np.zeros(5, np.int32)), "bias", A),
        "unknown reduction": (lambda: L(hidden, weight, labels, reduction="mean"), "reduction", V),
        "sequence reduction": (
            lambda: L(hidden, weight, labels, reduction="mean_over_labels"),
            "reduction",
            V,
        ),
        "none with grad_in_forward": (
            lambda: L(hidden, weight, labels, reduction="none", grad_in_forward=True),
            "reduction",
            V,
        ),
        "terms reduction sum": (
            lambda: chunked.linear_cross_entropy_terms(hidden, weight, labels, reduction="sum"),
            "reduction",
            V,
        ),
        "token_chunk 0": (lambda: L(hidden, weight, labels, token_chunk=0), "token_chunk", V),
        "class_chunk float": (
            lambda: L(hidden, weight, labels, class_chunk=2.0),
            "class_chunk",
            TE,
        ),
        "grad_in_forward not bool": (
            lambda: L(hidden, weight, labels, grad_in_forward=1),
            "grad_in_forward",
            TE,
        ),
        "smoothing 1": (
            lambda: L(hidden, weight, labels, label_smoothing=1.0),
            "label_smoothing",
            V,
        ),
        "z_loss negative": (lambda: L(hidden, weight, labels, z_loss=-1.0), "z_loss", V),
        "class_weights shape": (
            lambda: L(hidden, weight, labels, class_weights=np.ones(4, np.float32)),
            "class_weights",
            A,
        ),
    }


@pytest.mark.bad_input
@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_input_raises_naming_the_argument(case):
    call, name, error = _bad_calls()[case]
    with pytest.raises(error) as info:
        call()
    assert f"`{name}`" in str(info.value), str(info.value)


@pytest.mark.dtype
def test_mixed_input_dtypes():
    rng, hidden, weight, bias, labels = make_data(127)
    where = make_mask("partial", rng)
    h16 = jnp.asarray(hidden, jnp.bfloat16)
    for mode in MODES.values():
        got = chunked.linear_cross_entropy(
            h16, weight, labels, where=where, bias=bias, grad_in_forward=mode, **TILES
        )
        want = chunked.linear_cross_entropy(
            h16.astype(jnp.float32), weight, labels, where=where, bias=bias, **TILES
        )
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
