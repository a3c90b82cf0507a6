"""The losses against a float64 plain-Python reference, PyTorch, and their own semantics."""

from __future__ import annotations

import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq as js
from tests import reference_losses as ref

B, T, C = 4, 5, 6
# float32 computation against a float64 reference on logits of scale ~3.
RTOL, ATOL = 2e-5, 2e-5

MASK_KINDS = ("full", "partial", "padding_row", "all_padding")
OPTIONS = {
    "plain": {},
    "class_weights": {"class_weights": np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5], np.float32)},
    "smoothing": {"label_smoothing": 0.2},
    "z_loss": {"z_loss": 1e-2},
}


def make_mask(kind: str, rng: np.random.Generator, b: int = B, t: int = T) -> np.ndarray:
    if kind == "full":
        return np.ones((b, t), bool)
    if kind == "all_padding":
        return np.zeros((b, t), bool)
    lengths = rng.integers(1, t + 1, size=b)
    if kind == "padding_row":
        lengths[1] = 0
    return np.arange(t)[None, :] < lengths[:, None]


def make_data(seed: int, b: int = B, t: int = T, c: int = C):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(b, t, c)).astype(np.float32)
    labels = rng.integers(0, c, size=(b, t)).astype(np.int32)
    targets = rng.dirichlet(np.ones(c), size=(b, t)).astype(np.float32)
    return rng, logits, labels, targets


def to_np_options(options):
    return {
        k: (np.asarray(v, np.float64) if k == "class_weights" else v) for k, v in options.items()
    }


# ---------------------------------------------------------------- reference


@pytest.mark.reference
@pytest.mark.parametrize("reduction", js.REDUCTIONS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_labeling_loss_matches_reference(reduction, mask_kind, option):
    rng, logits, labels, _ = make_data(ref.seed_of(reduction, mask_kind, option))
    where = make_mask(mask_kind, rng)
    got = js.sequence_labeling_loss(
        logits, labels, where=where, reduction=reduction, **OPTIONS[option]
    )
    want = ref.labeling_loss(
        logits.astype(np.float64), labels, where, reduction, **to_np_options(OPTIONS[option])
    )
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


@pytest.mark.reference
@pytest.mark.parametrize("reduction", js.REDUCTIONS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_soft_targets_reduced_match_reference(reduction, mask_kind):
    rng, logits, _, targets = make_data(7 + MASK_KINDS.index(mask_kind))
    where = make_mask(mask_kind, rng)
    per_step = js.soft_cross_entropy(logits, targets, where=where)
    got = js.reduce_sequence_loss(per_step, where=where, reduction=reduction)
    want = ref.labeling_loss(logits.astype(np.float64), targets, where, reduction, soft=True)
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)


@pytest.mark.reference
@pytest.mark.parametrize("reduction", js.SEQUENCE_REDUCTIONS)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("where_kind", ["none", "some", "all_false"])
def test_classification_loss_matches_reference(reduction, option, where_kind):
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(8, C)).astype(np.float32)
    labels = rng.integers(0, C, size=8).astype(np.int32)
    where = {"none": None, "some": rng.random(8) < 0.6, "all_false": np.zeros(8, bool)}[where_kind]
    got = js.sequence_classification_loss(
        logits, labels, where=where, reduction=reduction, **OPTIONS[option]
    )
    want = ref.classification_loss(
        logits.astype(np.float64), labels, where, reduction, **to_np_options(OPTIONS[option])
    )
    assert got.dtype == jnp.float32 and got.shape == np.shape(want)
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL)
    if reduction == "sum_over_time":
        terms = js.sequence_classification_loss_terms(
            logits, labels, where=where, **OPTIONS[option]
        )
        np.testing.assert_allclose(float(terms.loss), float(got), rtol=1e-7)


@pytest.mark.reference
@pytest.mark.parametrize("reduction", js.SEQUENCE_REDUCTIONS)
def test_classification_where_false_rows_give_zero_for_every_reduction(reduction):
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(5, C)).astype(np.float32)
    labels = rng.integers(0, C, size=5).astype(np.int32)
    where = np.array([True, False, True, False, True])
    got = np.asarray(
        js.sequence_classification_loss(logits, labels, where=where, reduction=reduction)
    )
    kept = np.asarray(
        js.sequence_classification_loss(logits[where], labels[where], reduction=reduction)
    )
    if reduction == "none":
        assert np.all(got[~where] == 0.0)
        np.testing.assert_array_equal(got[where], kept)
    else:
        np.testing.assert_allclose(got, kept, rtol=1e-6)


@pytest.mark.reference
def test_cross_entropy_unreduced_matches_reference():
    rng, logits, labels, targets = make_data(11)
    where = make_mask("partial", rng)
    got = np.asarray(js.cross_entropy(logits, labels, where=where, label_smoothing=0.1))
    got_soft = np.asarray(js.soft_cross_entropy(logits, targets, where=where))
    for i, j in itertools.product(range(B), range(T)):
        if where[i, j]:
            want, _ = ref.token_loss(
                logits[i, j].astype(np.float64), labels[i, j], label_smoothing=0.1
            )
            np.testing.assert_allclose(got[i, j], want, rtol=RTOL, atol=ATOL)
            want_soft = ref.soft_token_loss(logits[i, j].astype(np.float64), targets[i, j])
            np.testing.assert_allclose(got_soft[i, j], want_soft, rtol=RTOL, atol=ATOL)
        else:
            assert got[i, j] == 0.0 and got_soft[i, j] == 0.0


@pytest.mark.loss_oracle
def test_design_worked_examples():
    # Two classes, true label positive, prediction (0.7, 0.3): -log 0.7.
    p = jnp.array([0.7, 0.3])
    np.testing.assert_allclose(js.cross_entropy(jnp.log(p), jnp.array(0)), -np.log(0.7), rtol=1e-6)
    np.testing.assert_allclose(
        js.soft_cross_entropy(jnp.log(p), jnp.array([1.0, 0.0])), 0.356675, rtol=1e-5
    )
    # Three valid steps with losses L1, L2, L3: sum_over_time = L1+L2+L3, mean_over_time = /3.
    probs = np.array([[[0.7, 0.3], [0.4, 0.6], [0.9, 0.1], [0.5, 0.5]]], np.float32)
    labels = np.array([[0, 1, 0, 1]], np.int32)
    where = np.array([[True, True, True, False]])
    l123 = -np.log(0.7) - np.log(0.6) - np.log(0.9)
    logits = jnp.log(probs)
    np.testing.assert_allclose(
        js.sequence_labeling_loss(logits, labels, where=where), l123, rtol=1e-6
    )
    np.testing.assert_allclose(
        js.sequence_labeling_loss(logits, labels, where=where, reduction="mean_over_time"),
        l123 / 3,
        rtol=1e-6,
    )


# ---------------------------------------------------------------- PyTorch parity


@pytest.mark.loss_oracle
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("option", ["plain", "class_weights", "smoothing"])
def test_mean_over_tokens_equals_torch_ignore_index(seed, option):
    torch = pytest.importorskip("torch")
    rng, logits, labels, _ = make_data(100 + seed, b=6, t=9, c=C)
    where = make_mask("padding_row", rng, b=6, t=9)
    torch_labels = np.where(where, labels, -100).reshape(-1)
    kwargs = {}
    if option == "class_weights":
        kwargs["weight"] = torch.tensor(OPTIONS["class_weights"]["class_weights"])
    if option == "smoothing":
        kwargs["label_smoothing"] = 0.2
    want = torch.nn.functional.cross_entropy(
        torch.tensor(logits.reshape(-1, C)),
        torch.tensor(torch_labels, dtype=torch.long),
        ignore_index=-100,
        **kwargs,
    ).item()
    got = js.sequence_labeling_loss(
        logits, labels, where=where, reduction="mean_over_tokens", **OPTIONS[option]
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.loss_oracle
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("option", ["plain", "class_weights", "smoothing", "ignore_index"])
@pytest.mark.parametrize(
    ("reduction", "torch_reduction"), [("sum_over_time", "mean"), ("sum", "sum"), ("none", "none")]
)
def test_classification_loss_equals_torch(seed, option, reduction, torch_reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(200 + seed)
    logits = rng.normal(scale=3.0, size=(16, C)).astype(np.float32)
    labels = rng.integers(0, C, size=16).astype(np.int32)
    where = rng.random(16) < 0.7 if option == "ignore_index" else None
    torch_labels = labels if where is None else np.where(where, labels, -100)
    kwargs = {}
    if option == "class_weights":
        kwargs["weight"] = torch.tensor(OPTIONS["class_weights"]["class_weights"])
    if option == "smoothing":
        kwargs["label_smoothing"] = 0.2
    want = torch.nn.functional.cross_entropy(
        torch.tensor(logits),
        torch.tensor(torch_labels, dtype=torch.long),
        ignore_index=-100,
        reduction=torch_reduction,
        **kwargs,
    ).numpy()
    js_option = OPTIONS.get(option, {})
    got = js.sequence_classification_loss(
        logits, labels, where=where, reduction=reduction, **js_option
    )
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- semantics


@pytest.mark.padding_invariance
@pytest.mark.parametrize(
    "reduction", ["sum_over_time", "mean_over_time", "mean_over_tokens", "sum"]
)
def test_masking_equals_removal(reduction):
    rng, logits, labels, _ = make_data(21, b=5, t=7)
    lengths = np.array([7, 3, 0, 1, 5])
    where = np.arange(7)[None, :] < lengths[:, None]
    padded = js.sequence_labeling_loss(logits, labels, where=where, reduction=reduction)
    # Remove the padding: every sequence on its own, unpadded, then combine by the formula.
    parts = [
        js.sequence_labeling_loss_terms(
            logits[i : i + 1, :n],
            labels[i : i + 1, :n],
            where=np.ones((1, n), bool),
            reduction=reduction if reduction != "sum" else "sum_over_time",
        )
        for i, n in enumerate(lengths)
        if n > 0
    ]
    total = sum(float(p.total) for p in parts)
    count = sum(float(p.count) for p in parts)
    want = total if reduction == "sum" else total / count
    np.testing.assert_allclose(float(padded), want, rtol=1e-6)


@pytest.mark.padding_invariance
def test_classification_masking_equals_removal():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(9, C)).astype(np.float32)
    labels = rng.integers(0, C, size=9).astype(np.int32)
    where = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0], bool)
    got = js.sequence_classification_loss(logits, labels, where=where)
    want = js.sequence_classification_loss(logits[where], labels[where])
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


@pytest.mark.loss_oracle
@pytest.mark.parametrize("reduction", js.losses.TERM_REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_terms_split_batch_is_exact(reduction, weighted):
    rng, logits, labels, _ = make_data(31, b=7, t=6)
    where = make_mask("padding_row", rng, b=7, t=6)
    options = OPTIONS["class_weights"] if weighted else {}
    whole = js.sequence_labeling_loss_terms(
        logits, labels, where=where, reduction=reduction, **options
    )
    np.testing.assert_allclose(
        float(whole.loss),
        float(
            js.sequence_labeling_loss(logits, labels, where=where, reduction=reduction, **options)
        ),
        rtol=1e-7,
    )
    splits = [(0, 2), (2, 3), (3, 7)]
    parts = [
        js.sequence_labeling_loss_terms(
            logits[a:b], labels[a:b], where=where[a:b], reduction=reduction, **options
        )
        for a, b in splits
    ]
    total = sum(p.total for p in parts)
    count = sum(p.count for p in parts)
    np.testing.assert_allclose(float(total / count), float(whole.loss), rtol=1e-6)
    np.testing.assert_allclose(float(count), float(whole.count), rtol=0)


@pytest.mark.loss_oracle
@pytest.mark.parametrize("reduction", js.losses.TERM_REDUCTIONS)
def test_class_weight_zero_equals_masking(reduction):
    rng, logits, labels, _ = make_data(41)
    where = make_mask("partial", rng)
    weights = np.ones(C, np.float32)
    weights[2] = 0.0
    weighted = js.sequence_labeling_loss(
        logits, labels, where=where, reduction=reduction, class_weights=weights
    )
    masked = js.sequence_labeling_loss(
        logits, labels, where=where & (labels != 2), reduction=reduction
    )
    np.testing.assert_allclose(float(weighted), float(masked), rtol=1e-6)


@pytest.mark.numerics
@pytest.mark.parametrize("reduction", js.REDUCTIONS)
def test_all_padding_gives_zero_loss_and_zero_gradient(reduction):
    _, logits, labels, _ = make_data(51)
    where = np.zeros((B, T), bool)

    def loss_fn(z):
        return jnp.sum(js.sequence_labeling_loss(z, labels, where=where, reduction=reduction))

    value, grad = jax.value_and_grad(loss_fn)(jnp.asarray(logits))
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0.0)
    if reduction in js.losses.TERM_REDUCTIONS:
        terms = js.sequence_labeling_loss_terms(logits, labels, where=where, reduction=reduction)
        assert float(terms.count) == 0.0 and float(terms.total) == 0.0


POISONS = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf, "1e30": 1e30}


@pytest.mark.padding_invariance
@pytest.mark.parametrize("poison", list(POISONS))
@pytest.mark.parametrize("reduction", ["sum_over_time", "mean_over_time", "mean_over_tokens"])
def test_poisoned_padding_changes_nothing(poison, reduction):
    rng, logits, labels, _ = make_data(61)
    where = make_mask("padding_row", rng)
    poisoned_logits = np.where(where[..., None], logits, POISONS[poison]).astype(np.float32)
    garbage = rng.choice(np.array([-100, -1, C, 10**6], np.int32), size=labels.shape)
    poisoned_labels = np.where(where, labels, garbage).astype(np.int32)
    options = {
        "class_weights": OPTIONS["class_weights"]["class_weights"],
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
    }

    def loss_fn(z, y):
        return js.sequence_labeling_loss(z, y, where=where, reduction=reduction, **options)

    clean_value, clean_grad = jax.value_and_grad(loss_fn)(jnp.asarray(logits), labels)
    value, grad = jax.value_and_grad(loss_fn)(jnp.asarray(poisoned_logits), poisoned_labels)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    assert float(value) == float(clean_value)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(clean_grad))
    assert np.all(np.asarray(grad)[~where] == 0.0)


@pytest.mark.padding_invariance
@pytest.mark.parametrize("poison", list(POISONS))
def test_poisoned_padding_soft_and_classification(poison):
    rng, logits, _, targets = make_data(62)
    where = make_mask("partial", rng)
    bad = np.where(where[..., None], logits, POISONS[poison]).astype(np.float32)
    bad_targets = np.where(where[..., None], targets, np.nan).astype(np.float32)
    soft = lambda z, y: js.reduce_sequence_loss(
        js.soft_cross_entropy(z, y, where=where), where=where
    )
    v0, g0 = jax.value_and_grad(soft)(jnp.asarray(logits), targets)
    v1, g1 = jax.value_and_grad(soft)(jnp.asarray(bad), bad_targets)
    assert float(v0) == float(v1)
    np.testing.assert_array_equal(np.asarray(g0), np.asarray(g1))
    where = np.array([True, False, True, False])
    cls_logits = np.where(where[:, None], logits[:, 0], POISONS[poison]).astype(np.float32)
    cls_labels = np.where(where, np.arange(4), -100).astype(np.int32)
    value, grad = jax.value_and_grad(
        lambda z: js.sequence_classification_loss(z, cls_labels, where=where)
    )(jnp.asarray(cls_logits))
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.asarray(grad)[~where] == 0.0)


@pytest.mark.numerics
def test_nan_in_a_valid_logit_propagates():
    rng, logits, labels, _ = make_data(71)
    where = make_mask("full", rng)
    logits[1, 2, 3] = np.nan
    for reduction in ("sum_over_time", "mean_over_tokens"):
        loss = js.sequence_labeling_loss(logits, labels, where=where, reduction=reduction)
        assert np.isnan(float(loss))


@pytest.mark.numerics
def test_out_of_range_label_at_valid_position_is_nan_on_the_fast_path():
    logits = np.zeros((2, C), np.float32)
    for bad in (-1, C, -100):
        loss = js.sequence_classification_loss(logits, np.array([0, bad], np.int32))
        assert np.isnan(float(loss)), bad


@pytest.mark.numerics
@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_shift_invariance_at_large_logits(shift):
    rng, logits, labels, _ = make_data(81)
    where = make_mask("partial", rng)
    base = js.sequence_labeling_loss(logits, labels, where=where, reduction="mean_over_tokens")
    shifted = js.sequence_labeling_loss(
        (logits + np.float32(shift)).astype(np.float32),
        labels,
        where=where,
        reduction="mean_over_tokens",
    )
    # float32 spacing at 1e4 is ~1e-3: the shifted logits carry that rounding, nothing more.
    np.testing.assert_allclose(float(shifted), float(base), atol=5e-3)
    assert np.isfinite(float(shifted))


@pytest.mark.numerics
def test_extreme_but_finite_valid_logits_are_finite():
    logits = np.array([[1e30, -1e30, 0.0], [-1e30, 1e30, 0.0]], np.float32)
    labels = np.array([0, 0], np.int32)
    value, grad = jax.value_and_grad(lambda z: js.sequence_classification_loss(z, labels))(logits)
    np.testing.assert_allclose(float(value), 1e30, rtol=1e-6)  # (0 + 2e30) / 2
    assert np.all(np.isfinite(np.asarray(grad)))


# ---------------------------------------------------------------- dtypes


@pytest.mark.dtype
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    "reduction", ["sum_over_time", "mean_over_time", "mean_over_tokens", "none"]
)
def test_low_precision_inputs_give_float32(dtype, reduction):
    rng, logits, labels, _ = make_data(91)
    where = make_mask("padding_row", rng)
    low = jnp.asarray(logits).astype(dtype)
    got = js.sequence_labeling_loss(low, labels, where=where, reduction=reduction)
    assert got.dtype == jnp.float32
    # Computed in float32 on the rounded inputs: equal to the float64 reference on those
    # same (exactly representable) values within float32 tolerance...
    rounded = np.asarray(low.astype(jnp.float32), np.float64)
    np.testing.assert_allclose(
        np.asarray(got), ref.labeling_loss(rounded, labels, where, reduction), rtol=RTOL, atol=ATOL
    )
    # ...and within the input rounding (|dz| <= 2^-8 |z| for bf16) of the float32 result.
    full = js.sequence_labeling_loss(logits, labels, where=where, reduction=reduction)
    np.testing.assert_allclose(np.asarray(got), np.asarray(full), rtol=0.05, atol=0.1)


@pytest.mark.dtype
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_cross_entropy_and_soft(dtype):
    rng, logits, labels, targets = make_data(92)
    low = jnp.asarray(logits).astype(dtype)
    assert js.cross_entropy(low, labels).dtype == jnp.float32
    assert js.soft_cross_entropy(low, jnp.asarray(targets).astype(dtype)).dtype == jnp.float32
    assert js.sequence_classification_loss(low[:, 0], labels[:, 0]).dtype == jnp.float32
    grad = jax.grad(lambda z: js.sequence_classification_loss(z, labels[:, 0]))(low[:, 0])
    assert grad.dtype == dtype


# ---------------------------------------------------------------- transformations


@pytest.mark.gradcheck
@pytest.mark.parametrize("reduction", ["sum_over_time", "mean_over_time", "mean_over_tokens"])
def test_check_grads_labeling(reduction):
    with jax.enable_x64(True):
        rng, logits, labels, _ = make_data(101, b=3, t=4, c=5)
        where = make_mask("padding_row", rng, b=3, t=4)
        weights = np.array([0.5, 1.0, 2.0, 1.0, 0.3])
        f = lambda z: js.sequence_labeling_loss(
            z,
            labels,
            where=where,
            reduction=reduction,
            label_smoothing=0.1,
            class_weights=weights,
            z_loss=1e-2,
        )
        check_grads(f, (jnp.asarray(logits, jnp.float64),), order=2, modes=["rev", "fwd"])


@pytest.mark.gradcheck
def test_check_grads_classification_and_soft():
    with jax.enable_x64(True):
        rng = np.random.default_rng(102)
        logits = jnp.asarray(rng.normal(size=(5, 4)))
        labels = rng.integers(0, 4, 5).astype(np.int32)
        targets = jnp.asarray(rng.dirichlet(np.ones(4), 5))
        check_grads(lambda z: js.sequence_classification_loss(z, labels), (logits,), order=2)
        check_grads(lambda z, y: jnp.sum(js.soft_cross_entropy(z, y)), (logits, targets), order=2)


@pytest.mark.variants
@pytest.mark.parametrize("reduction", js.REDUCTIONS)
def test_jit_equals_eager(reduction):
    rng, logits, labels, _ = make_data(111)
    where = make_mask("padding_row", rng)
    f = lambda z, y, m: js.sequence_labeling_loss(
        z, y, where=m, reduction=reduction, label_smoothing=0.1
    )
    np.testing.assert_allclose(
        np.asarray(jax.jit(f)(logits, labels, where)),
        np.asarray(f(logits, labels, where)),
        rtol=1e-6,
    )


@pytest.mark.variants
def test_vmap_over_examples_equals_loop():
    rng, logits, labels, _ = make_data(121)
    where = make_mask("padding_row", rng)
    per_example = lambda z, y, m: js.sequence_labeling_loss(
        z[None], y[None], where=m[None], reduction="sum"
    )
    batched = jax.vmap(per_example)(logits, labels, where)
    looped = [per_example(logits[i], labels[i], where[i]) for i in range(B)]
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-6)
    per_token = jax.vmap(lambda z, y: js.cross_entropy(z, y))(logits, labels)
    np.testing.assert_allclose(
        np.asarray(per_token), np.asarray(js.cross_entropy(logits, labels)), rtol=1e-6
    )


@pytest.mark.variants
def test_grad_under_jit_equals_eager():
    rng, logits, labels, _ = make_data(131)
    where = make_mask("partial", rng)
    f = lambda z: js.sequence_labeling_loss(z, labels, where=where, reduction="mean_over_time")
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.grad(f))(logits)), np.asarray(jax.grad(f)(logits)), rtol=1e-6
    )


# ---------------------------------------------------------------- where= omitted


@pytest.mark.padding_invariance
@pytest.mark.parametrize("reduction", js.REDUCTIONS)
def test_where_omitted_equals_all_true(reduction):
    _, logits, labels, targets = make_data(161)
    all_true = np.ones((B, T), bool)
    options = {"class_weights": OPTIONS["class_weights"]["class_weights"], "z_loss": 1e-3}
    for fn in (js.sequence_labeling_loss, js.reduce_sequence_loss):
        args = (
            (logits, labels)
            if fn is js.sequence_labeling_loss
            else (js.cross_entropy(logits, labels),)
        )
        kw = options if fn is js.sequence_labeling_loss else {}
        np.testing.assert_array_equal(
            np.asarray(fn(*args, reduction=reduction, **kw)),
            np.asarray(fn(*args, where=all_true, reduction=reduction, **kw)),
        )
    if reduction in js.losses.TERM_REDUCTIONS:
        for a, b in zip(
            js.sequence_labeling_loss_terms(logits, labels, reduction=reduction, **options),
            js.sequence_labeling_loss_terms(
                logits, labels, where=all_true, reduction=reduction, **options
            ),
        ):
            assert float(a) == float(b)
        per_step = js.cross_entropy(logits, labels)
        assert js.sequence_loss_terms(per_step, reduction=reduction) == js.sequence_loss_terms(
            per_step, where=all_true, reduction=reduction
        )


@pytest.mark.padding_invariance
def test_where_omitted_equals_all_true_unreduced_and_classification():
    _, logits, labels, targets = make_data(162)
    all_true = np.ones((B, T), bool)
    np.testing.assert_array_equal(
        np.asarray(js.cross_entropy(logits, labels, label_smoothing=0.1)),
        np.asarray(js.cross_entropy(logits, labels, where=all_true, label_smoothing=0.1)),
    )
    np.testing.assert_array_equal(
        np.asarray(js.soft_cross_entropy(logits, targets)),
        np.asarray(js.soft_cross_entropy(logits, targets, where=all_true)),
    )
    for reduction in js.SEQUENCE_REDUCTIONS:
        np.testing.assert_array_equal(
            np.asarray(
                js.sequence_classification_loss(logits[:, 0], labels[:, 0], reduction=reduction)
            ),
            np.asarray(
                js.sequence_classification_loss(
                    logits[:, 0], labels[:, 0], where=all_true[:, 0], reduction=reduction
                )
            ),
        )
    terms = js.sequence_classification_loss_terms(logits[:, 0], labels[:, 0])
    assert terms == js.sequence_classification_loss_terms(
        logits[:, 0], labels[:, 0], where=all_true[:, 0]
    )


# ---------------------------------------------------------------- validation


@pytest.mark.bad_input
def test_validate_labels_reports_first_bad_index():
    labels = np.array([[0, 1, 7], [2, -1, 0]], np.int32)
    where = np.array([[True, True, False], [True, True, True]])
    with pytest.raises(ValueError, match=r"index \(1, 1\): -1"):
        js.validate_labels(labels, 3, where=where)
    js.validate_labels(labels, 8, where=np.array([[True] * 3, [True, False, True]]))
    with pytest.raises(ValueError, match=r"index \(0, 2\): 7"):
        js.validate_labels(labels, 3)  # where omitted: every position is checked


@pytest.mark.bad_input
def test_checked_raises_under_jit_and_passes_good_input():
    rng, logits, labels, _ = make_data(141)
    where = make_mask("partial", rng)
    safe = js.checked(js.sequence_labeling_loss)
    good = safe(logits, labels, where=where, reduction="mean_over_tokens")
    want = js.sequence_labeling_loss(logits, labels, where=where, reduction="mean_over_tokens")
    np.testing.assert_allclose(float(good), float(want), rtol=1e-6)
    padded_garbage = np.where(where, labels, -100).astype(np.int32)
    safe(logits, padded_garbage, where=where)  # garbage at masked positions is fine
    bad = labels.copy()
    bad[np.argwhere(where)[0][0], 0] = C
    with pytest.raises(Exception, match="out of range"):
        safe(logits, bad, where=where)
    with pytest.raises(Exception, match="out of range"):
        safe(logits, padded_garbage)  # where omitted: every position is checked


@pytest.mark.bad_input
def test_checked_passes_every_keyword_option_through():
    rng, logits, labels, _ = make_data(142)
    where = make_mask("padding_row", rng)
    options = {
        "where": where,
        "reduction": "mean_over_time",
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "class_weights": OPTIONS["class_weights"]["class_weights"],
    }
    got = js.checked(js.sequence_labeling_loss)(logits, labels, **options)
    want = js.sequence_labeling_loss(logits, labels, **options)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    cls = js.checked(js.sequence_classification_loss)
    got = cls(logits[:, 0], labels[:, 0], reduction="none", label_smoothing=0.2)
    want = js.sequence_classification_loss(
        logits[:, 0], labels[:, 0], reduction="none", label_smoothing=0.2
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    # The wrapped function's own checks still name the argument.
    with pytest.raises(ValueError, match="`reduction`"):
        cls(logits[:, 0], labels[:, 0], reduction="mean")
    with pytest.raises(AssertionError, match="`where`"):
        cls(logits[:, 0], labels[:, 0], where=where)


@pytest.mark.bad_input
def test_checked_linear_cross_entropy():
    rng = np.random.default_rng(143)
    hidden = rng.normal(size=(2, 3, 4)).astype(np.float32)
    weight = rng.normal(size=(4, 5)).astype(np.float32)
    labels = np.array([[0, 4, 9], [1, 2, 3]], np.int32)
    where = np.array([[True, True, False], [True, True, True]])
    safe = js.checked(js.linear_cross_entropy)
    got = safe(hidden, weight, labels, where=where, class_chunk=2, reduction="sum")
    want = js.linear_cross_entropy(hidden, weight, labels, where=where, reduction="sum")
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    with pytest.raises(Exception, match="out of range"):
        safe(hidden, weight, labels)


@pytest.mark.bad_input
def test_checked_needs_labels_and_logits():
    with pytest.raises(TypeError, match="`labels`"):
        js.checked(lambda logits, targets: 0.0)


def _bad_calls():
    """name -> (call, the argument its message must name, the exception raised)."""
    logits, labels, where = (
        np.zeros((2, 3, 4), np.float32),
        np.zeros((2, 3), np.int32),
        np.ones((2, 3), bool),
    )
    L, CL = js.sequence_labeling_loss, js.sequence_classification_loss
    A, V, TE = AssertionError, ValueError, TypeError
    return {
        "labeling logits rank": (lambda: L(logits[0], labels[0], where=where[0]), "logits", A),
        "labeling labels shape": (lambda: L(logits, labels[:, :2], where=where), "labels", A),
        "labeling float labels": (
            lambda: L(logits, labels.astype(np.float32), where=where),
            "labels",
            A,
        ),
        "labeling int logits": (
            lambda: L(logits.astype(np.int32), labels, where=where),
            "logits",
            A,
        ),
        "labeling where not bool": (
            lambda: L(logits, labels, where=where.astype(np.int32)),
            "where",
            A,
        ),
        "labeling where shape": (lambda: L(logits, labels, where=where[:, :2]), "where", A),
        "unknown reduction": (lambda: L(logits, labels, reduction="mean"), "reduction", V),
        "old name mean_over_sequences": (
            lambda: L(logits, labels, reduction="mean_over_sequences"),
            "reduction",
            V,
        ),
        "terms reduction sum": (
            lambda: js.sequence_labeling_loss_terms(logits, labels, reduction="sum"),
            "reduction",
            V,
        ),
        "smoothing 1": (lambda: L(logits, labels, label_smoothing=1.0), "label_smoothing", V),
        "smoothing negative": (
            lambda: L(logits, labels, label_smoothing=-0.1),
            "label_smoothing",
            V,
        ),
        "smoothing string": (
            lambda: L(logits, labels, label_smoothing="0.1"),
            "label_smoothing",
            TE,
        ),
        "class weights shape": (
            lambda: L(logits, labels, class_weights=np.ones(3, np.float32)),
            "class_weights",
            A,
        ),
        "class weights int": (
            lambda: L(logits, labels, class_weights=np.ones(4, np.int32)),
            "class_weights",
            A,
        ),
        "z_loss negative": (lambda: L(logits, labels, z_loss=-1.0), "z_loss", V),
        "z_loss nan": (lambda: L(logits, labels, z_loss=float("nan")), "z_loss", V),
        "classification rank": (lambda: CL(logits, labels), "logits", A),
        "classification labels shape": (lambda: CL(logits[:, 0], labels[:1, 0]), "labels", A),
        "classification where shape": (
            lambda: CL(logits[:, 0], labels[:, 0], where=where),
            "where",
            A,
        ),
        "classification where int": (
            lambda: CL(logits[:, 0], labels[:, 0], where=labels[:, 0]),
            "where",
            A,
        ),
        "classification per-step reduction": (
            lambda: CL(logits[:, 0], labels[:, 0], reduction="mean_over_tokens"),
            "reduction",
            V,
        ),
        "classification old name mean": (
            lambda: CL(logits[:, 0], labels[:, 0], reduction="mean"),
            "reduction",
            V,
        ),
        "cross_entropy labels shape": (
            lambda: js.cross_entropy(logits, labels[:, :2]),
            "labels",
            A,
        ),
        "soft targets shape": (
            lambda: js.soft_cross_entropy(logits, logits[..., :3]),
            "targets",
            A,
        ),
        "soft int targets": (lambda: js.soft_cross_entropy(logits, labels), "targets", A),
        "length_mask float": (lambda: js.length_mask(np.array([1.0, 2.0]), 3), "lengths", A),
        "reduce rank": (lambda: js.reduce_sequence_loss(logits), "token_losses", A),
        "reduce where shape": (
            lambda: js.reduce_sequence_loss(labels.astype(np.float32), where=where[:1]),
            "where",
            A,
        ),
        "reduce weights shape": (
            lambda: js.reduce_sequence_loss(labels.astype(np.float32), weights=logits),
            "weights",
            A,
        ),
        "validate lengths": (lambda: js.validate_lengths(np.array([1, 5]), 4), "lengths", V),
        "validate lengths float": (
            lambda: js.validate_lengths(np.array([1.0, 2.0]), 4),
            "lengths",
            A,
        ),
        "validate labels float": (lambda: js.validate_labels(np.zeros(3), 4), "labels", A),
        "validate labels where shape": (
            lambda: js.validate_labels(labels, 4, where=where[0]),
            "where",
            A,
        ),
        "validate labels num_classes": (lambda: js.validate_labels(labels, 4.0), "num_classes", TE),
        "validate labels traced": (
            lambda: jax.jit(lambda y: js.validate_labels(y, 4))(labels),
            "labels",
            TE,
        ),
        "check_labels_in_range where shape": (
            lambda: js.check_labels_in_range(labels, 4, where=where[0]),
            "where",
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


WHERE_FUNCTIONS = [
    js.cross_entropy,
    js.soft_cross_entropy,
    js.sequence_classification_loss,
    js.sequence_classification_loss_terms,
    js.sequence_labeling_loss,
    js.sequence_labeling_loss_terms,
    js.reduce_sequence_loss,
    js.sequence_loss_terms,
    js.linear_cross_entropy,
    js.linear_cross_entropy_terms,
    js.ctc_loss,
    js.validate_ctc_inputs,
    js.metrics.accuracy,
    js.metrics.confusion_matrix,
    js.validate_labels,
    js.check_labels_in_range,
]


@pytest.mark.bad_input
@pytest.mark.parametrize("fn", WHERE_FUNCTIONS, ids=lambda f: f.__name__)
def test_where_is_keyword_only_and_defaults_to_none(fn):
    parameters = inspect.signature(fn).parameters
    assert parameters["where"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["where"].default is None
    assert not {"mask", "valid", "label_mask"} & set(parameters)


@pytest.mark.bad_input
def test_where_passed_positionally_is_a_type_error():
    logits, labels = np.zeros((2, 3, 4), np.float32), np.zeros((2, 3), np.int32)
    with pytest.raises(TypeError, match="positional"):
        js.sequence_labeling_loss(logits, labels, np.ones((2, 3), bool))


@pytest.mark.bad_input
@pytest.mark.parametrize("max_len", [2.5, -1])
def test_length_mask_bad_max_len_names_it(max_len):
    # A Python option: TypeError or ValueError (the scalar checks of jaxseq._checks).
    with pytest.raises((TypeError, ValueError), match="`max_len`"):
        js.length_mask(np.array([1, 2]), max_len)


@pytest.mark.variants
def test_numpy_class_weights_under_jit():
    rng, logits, labels, _ = make_data(151)
    where = make_mask("partial", rng)
    weights = OPTIONS["class_weights"]["class_weights"]  # a NumPy array, closed over
    f = lambda z: js.sequence_labeling_loss(
        z, labels, where=where, reduction="mean_over_tokens", class_weights=weights
    )
    np.testing.assert_allclose(float(jax.jit(f)(logits)), float(f(logits)), rtol=1e-6)


@pytest.mark.retrace
def test_a_changing_label_smoothing_stops_compiling_after_a_few_values():
    """label_smoothing and z_loss are static in the compiled core: an eager schedule that
    changes them every call compiles a program for the first few values only, then runs
    uncompiled (no compilation per new value), with the same numbers."""
    from jax._src import monitoring

    from jaxseq import _compiled
    from tests.test_recurrence import _count_compiles

    rng = np.random.default_rng(7)
    logits = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 6, size=(3, 5)))
    # Values no other test uses: one already seen gets its compiled program.
    values = [0.0031 + 0.01 * k for k in range(2 * _compiled.VOLATILE_LIMIT + 4)]
    compiles, listener = _count_compiles()
    try:
        per_call = []
        for a in values:
            before = len(compiles)
            got = js.sequence_labeling_loss(logits, labels, label_smoothing=a)
            per_call.append(len(compiles) - before)
            with jax.disable_jit():
                want = js.sequence_labeling_loss(logits, labels, label_smoothing=a)
            np.testing.assert_allclose(got, want, rtol=1e-6)
    finally:
        monitoring.unregister_event_duration_listener(listener)
    # At most VOLATILE_LIMIT values per process get a program (other tests in this process
    # may have used some up), plus the first uncompiled call's per-primitive programs;
    # after that a new value compiles nothing.
    assert sum(1 for n in per_call if n) <= _compiled.VOLATILE_LIMIT + 1, per_call
    assert not any(per_call[_compiled.VOLATILE_LIMIT + 2 :]), per_call
