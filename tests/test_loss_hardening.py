"""Hardening of the losses and metrics: no silent wrong number from any dtype or value.

* every integer dtype of labels and lengths gives exactly the int32 result (or an error
  naming the argument), eagerly and under jit;
* class weights with label smoothing match PyTorch's ``cross_entropy`` (values and
  gradients, float64 PyTorch as the oracle), for the materialised and the chunked loss;
* a class weight of 0 is exactly masking (NaN/inf logits included) without smoothing,
  and the documented difference with smoothing;
* hyper-parameters that could make a silent number are errors (host) or NaN (traced);
* empty axes (B = 0, T = 0) give the exact answer and C = 0 is an error.

The CTC-specific checks (true losses above 1e5, -inf logits, lengths) are at the end.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxseq as js
from jaxseq import chunked
from tests import reference_losses as ref

INT_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
B, T, C, H = 3, 4, 6, 5
K, S = 5, 3  # CTC classes (blank 0 included) and padded label length
# float32 jaxseq against float64 PyTorch / NumPy on logits of scale ~2.
RTOL, ATOL = 2e-5, 2e-5
GRAD_ATOL = 2e-5
# Class 3 has weight 0 (exercises the zero-weight rules in every combination).
WEIGHTS = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5], np.float32)


def _data(seed: int):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(B, T, C)) * 2.0).astype(np.float32)
    labels = rng.integers(0, C, size=(B, T))
    where = np.arange(T)[None, :] < np.array([T, 2, 0])[:, None]  # a padding row
    hidden = rng.normal(size=(B, T, H)).astype(np.float32)
    weight = rng.normal(size=(H, C)).astype(np.float32)
    bias = rng.normal(size=(C,)).astype(np.float32)
    ctc_logits = rng.normal(size=(B, T + 3, K)).astype(np.float32)
    ctc_labels = rng.integers(1, K, size=(B, S))
    return rng, logits, labels, where, hidden, weight, bias, ctc_logits, ctc_labels


# ---------------------------------------------------------------- integer dtypes


def _every_integer_input(labels_BT, labels_B, ctc_labels, logit_lengths, label_lengths, *, arrays):
    """Every public function that takes integer arrays, on the given integer inputs."""
    _, logits, _, where, hidden, weight, bias, ctc_logits, _ = arrays
    cw = jnp.asarray(WEIGHTS)
    return (
        js.cross_entropy(logits, labels_BT, where=where),
        js.sequence_labeling_loss(logits, labels_BT, where=where, class_weights=cw),
        js.sequence_labeling_loss_terms(logits, labels_BT, where=where, label_smoothing=0.1),
        js.sequence_classification_loss(logits[:, 0], labels_B, class_weights=cw),
        js.sequence_classification_loss_terms(logits[:, 0], labels_B),
        js.linear_cross_entropy(hidden, weight, labels_BT, where=where, bias=bias, class_chunk=4),
        js.linear_cross_entropy_terms(hidden, weight, labels_BT, where=where, token_chunk=5),
        js.ctc_loss(ctc_logits, logit_lengths, ctc_labels, label_lengths, reduction="none"),
        tuple(js.metrics.accuracy(logits, labels_BT, where=where)),
        js.metrics.confusion_matrix(logits, labels_BT, where=where),
    )


def _integer_inputs(arrays, dtype):
    _, _, labels, _, _, _, _, _, ctc_labels = arrays
    return (
        labels.astype(dtype),
        labels[:, 0].astype(dtype),
        ctc_labels.astype(dtype),
        np.array([T + 3, 5, 0]).astype(dtype),
        np.array([S, 2, 0]).astype(dtype),
    )


@pytest.mark.dtype
@pytest.mark.slow  # the bad-input matrix (test_bad_inputs.py) covers each dtype in make test
def test_every_integer_dtype_gives_exactly_the_int32_result_eager_and_under_jit():
    arrays = _data(1)
    want = _every_integer_input(*_integer_inputs(arrays, np.int32), arrays=arrays)
    jitted = jax.jit(lambda *xs: _every_integer_input(*xs, arrays=arrays))
    for dtype in INT_DTYPES:
        inputs = _integer_inputs(arrays, dtype)
        assert all(x.dtype == dtype for x in inputs)
        for how, got in (
            ("eager numpy", _every_integer_input(*inputs, arrays=arrays)),
            ("jit", jitted(*inputs)),
        ):
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_array_equal(
                    np.asarray(g), np.asarray(w), err_msg=f"{dtype} {how}"
                )
    # JAX arrays (a concrete JAX array takes the host path, like NumPy: one small dtype
    # here) and the dtypes whose traced conversion checks the range: uint32, and int64 and
    # uint64, which exist as such under jit only with x64.
    with jax.enable_x64(True):
        jitted64 = jax.jit(lambda *xs: _every_integer_input(*xs, arrays=arrays))
        for dtype in (np.int8, np.uint32, np.int64, np.uint64):
            inputs = tuple(jnp.asarray(x) for x in _integer_inputs(arrays, dtype))
            assert all(x.dtype == dtype for x in inputs)
            runs = [("eager jax", _every_integer_input(*inputs, arrays=arrays))]
            if dtype != np.int8:
                runs.append(("jit x64", jitted64(*inputs)))
            for how, got in runs:
                for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                    np.testing.assert_array_equal(
                        np.asarray(g), np.asarray(w), err_msg=f"{dtype} {how}"
                    )


def _with_big_label(labels, value, dtype):
    big = labels.astype(dtype).copy()
    big[0, 0] = value
    return big


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("dtype", "value"), [(np.int64, 2**32 + 1), (np.uint64, 2**32 + 2), (np.uint32, 2**31 + 3)]
)
def test_a_label_that_does_not_fit_int32_never_wraps_to_a_valid_class(dtype, value):
    arrays = _data(2)
    _, logits, labels, where, hidden, weight, _, ctc_logits, ctc_labels = arrays
    big = _with_big_label(labels, value, dtype)
    assert int(big[0, 0]) == value > np.iinfo(np.int32).max
    # 64 bits: a cast would wrap it to a valid class; uint32: to a negative int32.
    assert value % 2**32 < C if dtype != np.uint32 else big.astype(np.int32)[0, 0] < 0
    assert where[0, 0]
    calls = {
        "cross_entropy": lambda y: js.cross_entropy(logits, y),
        "labeling": lambda y: js.sequence_labeling_loss(logits, y, where=where),
        "classification": lambda y: js.sequence_classification_loss(logits[:, 0], y[:, 0]),
        "chunked": lambda y: chunked.linear_cross_entropy(hidden, weight, y, where=where),
        "ctc": lambda y: js.ctc_loss(ctc_logits, np.full(B, T), y[:, :S], np.full(B, S)),
        "accuracy": lambda y: js.metrics.accuracy(logits, y),
        "confusion": lambda y: js.metrics.confusion_matrix(logits, y),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match="`labels`.*does not fit int32"):
            call(big)  # host data: an error naming the argument
    if dtype == np.uint32:  # traced without x64: the value reaches jaxseq
        traced = {k: jax.jit(v)(big) for k, v in calls.items()}
    else:
        with jax.enable_x64(True):
            traced = {k: jax.jit(v)(jnp.asarray(big)) for k, v in calls.items()}
    for name in ("cross_entropy",):
        out = np.asarray(traced[name])
        assert np.isnan(out[0, 0]) and np.all(np.isfinite(out[1:])), name
    for name in ("labeling", "classification", "chunked"):
        assert np.isnan(float(traced[name])), name
    assert np.isnan(float(traced["ctc"]))
    # Metrics: a label that is no class never counts as correct nor into a cell.
    ratio = traced["accuracy"]
    small = labels.astype(np.int32).copy()
    small[0, 0] = -1
    np.testing.assert_array_equal(
        np.asarray(tuple(ratio)), np.asarray(tuple(js.metrics.accuracy(logits, small)))
    )
    np.testing.assert_array_equal(
        np.asarray(traced["confusion"]), np.asarray(js.metrics.confusion_matrix(logits, small))
    )


@pytest.mark.dtype
def test_label_arithmetic_is_int32_small_dtypes_with_many_classes():
    """int8/uint8 labels with C that does not fit them: nothing is computed in int8."""
    rng = np.random.default_rng(3)
    num_classes = 300
    logits = rng.normal(size=(2, 4, num_classes)).astype(np.float32)
    labels8 = np.array([[127, -1, 5, -100], [0, 3, 100, 126]], np.int8)
    where = np.array([[True, False, True, False], [True, True, True, True]])
    want = js.sequence_labeling_loss(
        logits, labels8.astype(np.int32), where=where, reduction="none"
    )
    got = js.sequence_labeling_loss(logits, labels8, where=where, reduction="none")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # -1 at a valid position is out of range: NaN, never class 255 or a clipped class.
    where_bad = where.copy()
    where_bad[0, 1] = True
    bad = js.sequence_labeling_loss(logits, labels8, where=where_bad, reduction="none")
    assert np.isnan(np.asarray(bad)[0, 1])
    # uint8 tags of a confusion matrix with C = 20: labels * C does not wrap in uint8.
    tags = np.array([19, 18, 13, 0], np.uint8)
    z = np.full((4, 20), -5.0, np.float32)
    z[np.arange(4), [17, 18, 2, 0]] = 5.0
    counts = np.asarray(js.metrics.confusion_matrix(z, tags))
    want_counts = np.zeros((20, 20))
    want_counts[[19, 18, 13, 0], [17, 18, 2, 0]] = 1
    np.testing.assert_array_equal(counts, want_counts)


@pytest.mark.numerics
def test_metrics_are_nan_for_a_bad_label_or_nan_logit_at_a_valid_position_only():
    _, logits, labels, where, *_ = _data(17)
    clean = (js.metrics.accuracy(logits, labels, where=where),
             js.metrics.confusion_matrix(logits, labels, where=where))  # fmt: skip
    assert np.isfinite(float(clean[0].total)) and np.all(np.isfinite(np.asarray(clean[1])))
    masked = ~where
    assert masked.any()
    for bad_label, bad_logit in ((-1, None), (C, None), (None, np.nan)):
        for at, expect_nan in ((where, True), (masked, False)):
            y, z = labels.copy(), logits.copy()
            i = tuple(np.argwhere(at)[0])
            if bad_label is not None:
                y[i] = bad_label
            else:
                z[i] = bad_logit
            for f in (jax.jit(js.metrics.accuracy), js.metrics.accuracy):
                ratio = f(z, y, where=where)
                assert np.isnan(float(ratio.total)) == expect_nan
                assert float(ratio.count) == float(clean[0].count)
                if not expect_nan:
                    assert float(ratio.total) == float(clean[0].total)
            counts = np.asarray(js.metrics.confusion_matrix(z, y, where=where))
            if expect_nan:
                assert np.all(np.isnan(counts))
            else:
                np.testing.assert_array_equal(counts, np.asarray(clean[1]))


# ---------------------------------------------------------------- PyTorch parity


def _torch_cross_entropy(logits_NC, labels_N, valid_N, cw, smoothing, reduction):
    """float64 PyTorch: value and d value / d logits (ignore_index = -100 where not valid)."""
    torch = pytest.importorskip("torch")
    z = torch.tensor(logits_NC, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(np.where(valid_N, labels_N, -100), dtype=torch.long)
    weight = None if cw is None else torch.tensor(cw, dtype=torch.float64)
    out = torch.nn.functional.cross_entropy(
        z, y, weight=weight, label_smoothing=smoothing, ignore_index=-100, reduction=reduction
    )
    out.sum().backward()
    return out.detach().numpy(), z.grad.numpy()


# jaxseq reduction -> torch reduction, per-step losses and per-sequence losses.
LABELING_TORCH = {"mean_over_tokens": "mean", "sum": "sum", "none": "none"}
CLASSIFICATION_TORCH = {"sum_over_time": "mean", "sum": "sum", "none": "none"}
COMBINATIONS = list(itertools.product([None, WEIGHTS], [0.0, 0.1], [False, True]))


@pytest.mark.loss_oracle
def test_labeling_and_classification_equal_torch_for_every_option_combination():
    torch = pytest.importorskip("torch")  # noqa: F841 - skip early without torch
    _, logits, labels, where_some, *_ = _data(4)
    labels_garbage = np.where(where_some, labels, -100)  # masked positions hold -100
    assert not where_some.all() and not where_some[2].any()  # partial row + padding row
    jitted = {}
    for (cw, smoothing, masked), (reduction, torch_reduction) in itertools.product(
        COMBINATIONS, LABELING_TORCH.items()
    ):
        where = where_some if masked else np.ones((B, T), bool)
        y = labels_garbage if masked else labels
        key = (cw is None, smoothing, reduction)
        if key not in jitted:
            jitted[key] = jax.jit(
                jax.value_and_grad(
                    lambda z, w, y, cw, _s=smoothing, _r=reduction, _n=cw is None: jnp.sum(
                        js.sequence_labeling_loss(
                            z, y, where=w, reduction=_r, label_smoothing=_s,
                            class_weights=None if _n else cw,
                        )
                    )
                )
            )  # fmt: skip
        value, grad = jitted[key](logits, where, y, WEIGHTS)
        want, want_grad = _torch_cross_entropy(
            logits.reshape(-1, C), y.reshape(-1), where.reshape(-1), cw, smoothing,
            torch_reduction,
        )  # fmt: skip
        msg = f"cw={cw is not None} a={smoothing} masked={masked} {reduction}"
        np.testing.assert_allclose(float(value), want.sum(), rtol=RTOL, atol=ATOL, err_msg=msg)
        np.testing.assert_allclose(
            np.asarray(grad).reshape(-1, C), want_grad, atol=GRAD_ATOL, err_msg=msg
        )
        if reduction == "none":  # the per-token values themselves
            per_token = js.sequence_labeling_loss(
                logits, y, where=where, reduction="none", label_smoothing=smoothing,
                class_weights=cw,
            )  # fmt: skip
            np.testing.assert_allclose(
                np.asarray(per_token).reshape(-1), want, rtol=RTOL, atol=ATOL, err_msg=msg
            )
    # Classification: one label per row.
    logits_BC, labels_B = logits[:, 0], labels[:, 0]
    where_B = np.array([True, False, True])
    for (cw, smoothing, masked), (reduction, torch_reduction) in itertools.product(
        COMBINATIONS, CLASSIFICATION_TORCH.items()
    ):
        where = where_B if masked else np.ones(B, bool)

        def loss(z, cw=cw, smoothing=smoothing, reduction=reduction, where=where):
            out = js.sequence_classification_loss(
                z, labels_B, where=where, reduction=reduction, label_smoothing=smoothing,
                class_weights=cw,
            )  # fmt: skip
            return jnp.sum(out), out

        (_, value), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(logits_BC))
        want, want_grad = _torch_cross_entropy(
            logits_BC, labels_B, where, cw, smoothing, torch_reduction
        )
        msg = f"classification cw={cw is not None} a={smoothing} masked={masked} {reduction}"
        np.testing.assert_allclose(np.asarray(value), want, rtol=RTOL, atol=ATOL, err_msg=msg)
        np.testing.assert_allclose(np.asarray(grad), want_grad, atol=GRAD_ATOL, err_msg=msg)


def _torch_linear(hidden, weight, bias, labels, valid, cw, smoothing, reduction):
    torch = pytest.importorskip("torch")
    h, w, b = (
        torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (hidden, weight, bias)
    )
    logits = (h.reshape(-1, H) @ w + b).reshape(-1, C)
    y = torch.tensor(np.where(valid, labels, -100).reshape(-1), dtype=torch.long)
    weight_c = None if cw is None else torch.tensor(cw, dtype=torch.float64)
    out = torch.nn.functional.cross_entropy(
        logits, y, weight=weight_c, label_smoothing=smoothing, ignore_index=-100,
        reduction=reduction,
    )  # fmt: skip
    out.sum().backward()
    return out.detach().numpy(), tuple(x.grad.numpy() for x in (h, w, b))


@pytest.mark.loss_oracle
def test_chunked_equals_torch_for_every_option_combination():
    pytest.importorskip("torch")
    _, _, labels, where_some, hidden, weight, bias, *_ = _data(5)
    jitted = {}
    for (cw, smoothing, masked), (reduction, torch_reduction), fused in itertools.product(
        COMBINATIONS, LABELING_TORCH.items(), [False, True]
    ):
        if fused and reduction == "none":
            continue  # not available with grad_in_forward
        where = where_some if masked else np.ones((B, T), bool)
        key = (cw is None, smoothing, reduction, fused)
        if key not in jitted:

            def loss(h, w, b, where, cw, _s=smoothing, _r=reduction, _n=cw is None, _f=fused):
                out = chunked.linear_cross_entropy(
                    h, w, labels, where=where, bias=b, reduction=_r, label_smoothing=_s,
                    class_weights=None if _n else cw, token_chunk=5, class_chunk=4,
                    grad_in_forward=_f,
                )  # fmt: skip
                return jnp.sum(out)

            jitted[key] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        value, grads = jitted[key](hidden, weight, bias, where, WEIGHTS)
        want, want_grads = _torch_linear(
            hidden, weight, bias, labels, where, cw, smoothing, torch_reduction
        )
        msg = f"cw={cw is not None} a={smoothing} masked={masked} {reduction} fused={fused}"
        np.testing.assert_allclose(float(value), want.sum(), rtol=RTOL, atol=ATOL, err_msg=msg)
        for name, g, w in zip(("hidden", "weight", "bias"), grads, want_grads):
            np.testing.assert_allclose(
                np.asarray(g), w, rtol=1e-4, atol=GRAD_ATOL, err_msg=f"{msg} d{name}"
            )


@pytest.mark.loss_oracle
def test_all_zero_weight_targets_give_zero_where_torch_gives_nan():
    """The documented difference: nothing counted in the normaliser -> 0 (gradient 0)."""
    _, logits, labels, *_ = _data(6)
    labels = np.full((B, T), 3)  # every target has weight 0
    for smoothing in (0.0, 0.1):
        value, grad = jax.value_and_grad(
            lambda z, a=smoothing: js.sequence_labeling_loss(
                z, labels, reduction="mean_over_tokens", class_weights=WEIGHTS, label_smoothing=a
            )
        )(jnp.asarray(logits))
        assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)
        want, _ = _torch_cross_entropy(
            logits.reshape(-1, C), labels.reshape(-1), np.ones(B * T, bool), WEIGHTS, smoothing,
            "mean",
        )  # fmt: skip
        assert not np.isfinite(want)  # PyTorch: 0 / 0 (or x / 0)


# ---------------------------------------------------------------- class weight 0 == masking


POISON_LOGITS = (np.nan, np.inf, -np.inf)


def _poisoned(logits, labels, value):
    """Logits with ``value`` at every position whose label is class 3 (weight 0)."""
    hit = labels == 3
    assert hit.any()
    out = logits.copy()
    out[hit, 0] = value
    out[hit, 3] = value  # the target's own logit too
    return out


@pytest.mark.padding_invariance
def test_class_weight_zero_is_exactly_masking_values_and_gradients():
    _, logits, labels, where, hidden, weight, bias, *_ = _data(7)
    labels = labels.copy()
    labels[0, :2] = 3
    labels[1, 1] = 3
    zero = where & (labels == 3)
    assert zero.any() and (where & ~zero).any()
    for value, reduction in itertools.product(POISON_LOGITS, js.REDUCTIONS):
        z = jnp.asarray(_poisoned(logits, labels, value))

        def weighted(z, r=reduction):
            return js.sequence_labeling_loss(z, labels, where=where, reduction=r,
                                             class_weights=WEIGHTS)  # fmt: skip

        def masked(z, r=reduction):
            cw = np.where(WEIGHTS == 0, 1.0, WEIGHTS).astype(np.float32)  # any weight
            return js.sequence_labeling_loss(z, labels, where=where & ~zero, reduction=r,
                                             class_weights=cw)  # fmt: skip

        for fn in (weighted, masked):
            assert np.all(np.isfinite(np.asarray(fn(z))))
        np.testing.assert_array_equal(np.asarray(weighted(z)), np.asarray(masked(z)))
        g_w = jax.grad(lambda z: jnp.sum(weighted(z)))(z)
        g_m = jax.grad(lambda z: jnp.sum(masked(z)))(z)
        np.testing.assert_array_equal(np.asarray(g_w), np.asarray(g_m))
        assert np.all(np.asarray(g_w)[zero] == 0.0)
    # Classification, and the chunked loss with NaN hidden states at zero-weight tokens.
    z = _poisoned(logits, labels, np.nan)[:, 0]
    any_cw = np.where(WEIGHTS == 0, 1.0, WEIGHTS).astype(np.float32)
    assert (labels[:, 0] == 3).any() and (labels[:, 0] != 3).any()
    for reduction in js.SEQUENCE_REDUCTIONS:
        got = jax.value_and_grad(lambda z, r=reduction: jnp.sum(js.sequence_classification_loss(
            z, labels[:, 0], reduction=r, class_weights=WEIGHTS)))(jnp.asarray(z))  # fmt: skip
        want = jax.value_and_grad(lambda z, r=reduction: jnp.sum(js.sequence_classification_loss(
            z, labels[:, 0], where=labels[:, 0] != 3, reduction=r, class_weights=any_cw)))(
            jnp.asarray(z))  # fmt: skip
        assert np.isfinite(float(got[0]))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    poisoned_hidden = hidden.copy()
    poisoned_hidden[zero] = np.nan
    for fused, reduction in itertools.product((False, True), js.losses.TERM_REDUCTIONS):
        args = (jnp.asarray(poisoned_hidden), jnp.asarray(weight), jnp.asarray(bias))

        def chunk(h, w, b, where, cw, r=reduction, f=fused):
            return chunked.linear_cross_entropy(
                h, w, labels, where=where, bias=b, reduction=r, class_weights=cw,
                grad_in_forward=f, token_chunk=5, class_chunk=4,
            )  # fmt: skip

        step = jax.value_and_grad(chunk, argnums=(0, 1, 2))
        got = step(*args, where, WEIGHTS)
        want = step(*args, where & ~zero, np.where(WEIGHTS == 0, 1.0, WEIGHTS).astype(np.float32))
        assert np.isfinite(float(got[0]))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)


@pytest.mark.numerics
def test_an_out_of_range_label_is_never_mistaken_for_a_zero_weight_class():
    _, logits, labels, where, hidden, weight, *_ = _data(18)
    labels = labels.copy()
    labels[0, 0] = C  # clipped, it would be class C - 1; with -1 it would be class 0
    cw = WEIGHTS.copy()
    cw[C - 1] = 0.0
    for bad in (C, -1):
        labels[0, 0] = bad
        cw_bad = cw if bad == C else np.where(np.arange(C) == 0, 0.0, cw).astype(np.float32)
        assert cw_bad[np.clip(bad, 0, C - 1)] == 0.0 and where[0, 0]
        for reduction in js.REDUCTIONS:
            out = js.sequence_labeling_loss(logits, labels, where=where, reduction=reduction,
                                            class_weights=cw_bad)  # fmt: skip
            assert np.isnan(np.asarray(out)).any(), (bad, reduction)
        assert np.isnan(float(chunked.linear_cross_entropy(hidden, weight, labels, where=where,
                                                           class_weights=cw_bad)))  # fmt: skip


@pytest.mark.numerics
def test_every_valid_token_with_weight_zero_gives_zero_and_zero_gradient():
    _, logits, _, where, hidden, weight, bias, *_ = _data(8)
    labels = np.full((B, T), 3)
    poisoned = _poisoned(logits, labels, np.nan)
    for reduction in js.REDUCTIONS:

        def loss(z, r=reduction):
            out = js.sequence_labeling_loss(
                z, labels, where=where, reduction=r, class_weights=WEIGHTS
            )
            return jnp.sum(out)

        value, grad = jax.value_and_grad(loss)(jnp.asarray(poisoned))
        assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0), reduction
    h = np.where(where[..., None], np.nan, hidden).astype(np.float32)
    for fused in (False, True):
        value, grads = jax.value_and_grad(
            lambda h, w, b, f=fused: chunked.linear_cross_entropy(
                h, w, labels, where=where, bias=b, class_weights=WEIGHTS, grad_in_forward=f,
                reduction="mean_over_tokens",
            ), argnums=(0, 1, 2),
        )(jnp.asarray(h), jnp.asarray(weight), jnp.asarray(bias))  # fmt: skip
        assert float(value) == 0.0
        assert all(np.all(np.asarray(g) == 0.0) for g in grads)


@pytest.mark.reference
def test_with_smoothing_a_zero_weight_target_keeps_its_smoothing_term():
    """The documented difference: (a / C) sum_c w[c] (-log p_c) stays, the normaliser
    does not count the position."""
    _, logits, labels, where, *_ = _data(9)
    labels = labels.copy()
    labels[0, 1] = 3
    a = 0.1
    per_token = np.asarray(js.sequence_labeling_loss(
        logits, labels, where=where, reduction="none", class_weights=WEIGHTS, label_smoothing=a
    ))  # fmt: skip
    log_p = logits[0, 1].astype(np.float64) - np.log(
        np.sum(np.exp(logits[0, 1].astype(np.float64)))
    )
    want = a / C * np.sum(WEIGHTS.astype(np.float64) * -log_p)
    assert want > 0
    np.testing.assert_allclose(per_token[0, 1], want, rtol=1e-5)
    terms = js.sequence_labeling_loss_terms(
        logits, labels, where=where, reduction="mean_over_tokens", class_weights=WEIGHTS,
        label_smoothing=a,
    )  # fmt: skip
    np.testing.assert_allclose(float(terms.count), float(np.sum(WEIGHTS[labels][where])), rtol=1e-6)
    np.testing.assert_allclose(float(terms.total), per_token.sum(), rtol=1e-5)
    # Against the float64 reference (every reduction).
    for reduction in js.REDUCTIONS:
        got = js.sequence_labeling_loss(
            logits, labels, where=where, reduction=reduction, class_weights=WEIGHTS,
            label_smoothing=a, z_loss=1e-2,
        )  # fmt: skip
        want = ref.labeling_loss(
            logits.astype(np.float64), labels, where, reduction, label_smoothing=a,
            class_weights=WEIGHTS.astype(np.float64), z_loss=1e-2,
        )  # fmt: skip
        np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=ATOL, err_msg=reduction)


# ---------------------------------------------------------------- hyper-parameters


def _option_calls():
    """name -> (call taking the option's value, the argument the message names)."""
    _, logits, labels, where, hidden, weight, *_ = _data(10)
    return {
        "labeling": lambda **o: js.sequence_labeling_loss(logits, labels, where=where, **o),
        "classification": lambda **o: js.sequence_classification_loss(
            logits[:, 0], labels[:, 0], **o
        ),
        "cross_entropy": lambda **o: js.cross_entropy(logits, labels, **o),
        "chunked": lambda **o: chunked.linear_cross_entropy(hidden, weight, labels, **o),
    }


BAD_OPTIONS = {
    "label_smoothing": [
        float("nan"),
        -0.1,
        1.0,
        1.5,
        np.float32("nan"),
        np.float64(1.0),
        jnp.float32(-0.5),
        np.array(float("nan")),
    ],
    "z_loss": [
        float("nan"),
        -1e-3,
        float("inf"),
        np.float32("nan"),
        np.float64(-1.0),
        np.float32("inf"),
        jnp.float32(float("nan")),
        jnp.array(-1.0),
    ],
    "class_weights": [
        np.array([1, 1, -1, 1, 1, 1], np.float32),
        np.array([1, 1, np.nan, 1, 1, 1], np.float32),
        np.array([1, 1, np.inf, 1, 1, 1], np.float32),
        jnp.array([1, 1, 1, 1, 1, -0.5], jnp.float32),
    ],
}


@pytest.mark.bad_input
def test_bad_hyper_parameters_are_value_errors_naming_them():
    for (name, values), (_, call) in itertools.product(
        BAD_OPTIONS.items(), _option_calls().items()
    ):
        for value in values:
            with pytest.raises(ValueError, match=f"`{name}`"):
                call(**{name: value})
    # Good NumPy and JAX scalars work and equal the Python float.
    call = _option_calls()["labeling"]
    want = float(call(label_smoothing=0.1, z_loss=1e-2))
    for scalar in (np.float32, np.float64, jnp.float32):
        got = call(label_smoothing=scalar(0.1), z_loss=scalar(1e-2))
        np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # A traced hyper-parameter is a TypeError (they are static), never a silent number.
    for name in ("label_smoothing", "z_loss"):
        with pytest.raises(TypeError, match=f"`{name}`.*traced"):
            jax.jit(lambda v, n=name: call(**{n: v}))(0.1)
    with pytest.raises(TypeError, match="`z_loss`"):
        call(z_loss=np.array([0.1, 0.2]))


@pytest.mark.numerics
def test_traced_bad_class_weights_give_nan():
    for fn_name, call in _option_calls().items():
        f = jax.jit(lambda cw, call=call: call(class_weights=cw))
        for cw in BAD_OPTIONS["class_weights"][:3]:
            assert np.all(np.isnan(np.asarray(f(cw)))), fn_name
        good = WEIGHTS
        np.testing.assert_allclose(
            np.asarray(f(good)), np.asarray(call(class_weights=good)), rtol=1e-6
        )


@pytest.mark.bad_input
def test_other_bad_options_name_the_argument():
    _, logits, labels, where, hidden, weight, *_ = _data(11)
    A, V, TE = AssertionError, ValueError, TypeError
    L = chunked.linear_cross_entropy
    cases = {
        "C = 0 labeling": (lambda: js.sequence_labeling_loss(logits[..., :0], labels), "logits", A),
        "C = 0 classification": (
            lambda: js.sequence_classification_loss(logits[:, 0, :0], labels[:, 0]),
            "logits",
            A,
        ),
        "C = 0 cross_entropy": (lambda: js.cross_entropy(logits[..., :0], labels), "logits", A),
        "C = 0 soft": (
            lambda: js.soft_cross_entropy(logits[..., :0], logits[..., :0]),
            "logits",
            A,
        ),
        "C = 0 chunked": (lambda: L(hidden, weight[:, :0], labels), "weight", A),
        "C = 0 ctc": (
            lambda: js.ctc_loss(logits[..., :0], np.full(B, T), labels[:, :1], np.ones(B, int)),
            "logits",
            A,
        ),
        "C = 0 accuracy": (lambda: js.metrics.accuracy(logits[..., :0], labels), "logits", A),
        "C = 0 confusion": (
            lambda: js.metrics.confusion_matrix(logits[..., :0], labels),
            "logits",
            A,
        ),
        "token_chunk 0": (lambda: L(hidden, weight, labels, token_chunk=0), "token_chunk", V),
        "token_chunk -1": (lambda: L(hidden, weight, labels, token_chunk=-1), "token_chunk", V),
        "token_chunk bool": (
            lambda: L(hidden, weight, labels, token_chunk=True),
            "token_chunk",
            TE,
        ),
        "class_chunk 0": (lambda: L(hidden, weight, labels, class_chunk=0), "class_chunk", V),
        "class_chunk 2.5": (lambda: L(hidden, weight, labels, class_chunk=2.5), "class_chunk", TE),
        "ctc blank = K": (
            lambda: js.ctc_loss(
                logits, np.full(B, T), labels[:, :1] + 1, np.ones(B, int), blank=C
            ),  # fmt: skip
            "blank",
            V,
        ),
        "ctc blank -1": (
            lambda: js.ctc_loss(
                logits, np.full(B, T), labels[:, :1] + 1, np.ones(B, int), blank=-1
            ),  # fmt: skip
            "blank",
            V,
        ),
        "macro_f1 class -1": (
            lambda: js.metrics.macro_f1(np.eye(3), classes=np.array([-1])),
            "classes",
            V,
        ),
        "macro_f1 class = C": (
            lambda: js.metrics.macro_f1(np.eye(3), classes=np.array([3])),
            "classes",
            V,
        ),
        "macro_f1 float classes": (
            lambda: js.metrics.macro_f1(np.eye(3), classes=np.array([1.0])),
            "classes",
            A,
        ),
        "macro_f1 not square": (lambda: js.metrics.macro_f1(np.ones((2, 3))), "confusion", A),
        "macro_f1 negative": (lambda: js.metrics.macro_f1(-np.eye(2)), "confusion", V),
        "reduce weights negative": (
            lambda: js.reduce_sequence_loss(logits[..., 0], weights=-np.ones((B, T), np.float32)),
            "weights",
            V,
        ),
        "reduce weights nan": (
            lambda: js.reduce_sequence_loss(
                logits[..., 0], weights=np.full((B, T), np.nan, np.float32)
            ),
            "weights",
            V,
        ),
    }
    for case, (call, name, error) in cases.items():
        with pytest.raises(error) as info:
            call()
        assert f"`{name}`" in str(info.value), (case, str(info.value))
    # A subset of classes given as uint8 ids works.
    confusion = np.diag([2.0, 0.0, 1.0])
    confusion[0, 2] = 1.0
    assert js.metrics.macro_f1(confusion, classes=np.array([0, 2], np.uint8)) == pytest.approx(
        js.metrics.macro_f1(confusion, classes=[0, 2])
    )


# ---------------------------------------------------------------- empty axes


@pytest.mark.numerics
def test_empty_batch_or_time_gives_the_exact_answer():
    """B = 0 or T = 0: nothing is valid, so every mean is 0 (the all-masked rule), every
    sum 0 and every "none" an empty array of the right shape."""
    rng = np.random.default_rng(12)
    for b, t in ((0, T), (B, 0), (0, 0)):
        logits = rng.normal(size=(b, t, C)).astype(np.float32)
        labels = np.zeros((b, t), np.int32)
        hidden, weight = np.zeros((b, t, H), np.float32), np.ones((H, C), np.float32)
        for reduction in js.REDUCTIONS:
            for got in (
                js.sequence_labeling_loss(logits, labels, reduction=reduction,
                                          class_weights=WEIGHTS, label_smoothing=0.1),
                chunked.linear_cross_entropy(hidden, weight, labels, reduction=reduction),
                js.reduce_sequence_loss(logits[..., 0], reduction=reduction),
            ):  # fmt: skip
                want_shape = (b, t) if reduction == "none" else ()
                assert got.shape == want_shape and np.all(np.asarray(got) == 0.0), (b, t)
        for reduction in js.losses.TERM_REDUCTIONS:
            terms = js.sequence_labeling_loss_terms(logits, labels, reduction=reduction)
            assert float(terms.total) == 0.0 and float(terms.count) == 0.0
        grad = jax.grad(lambda z, y=labels: js.sequence_labeling_loss(z, y))(jnp.asarray(logits))
        assert grad.shape == logits.shape
        assert js.cross_entropy(logits, labels).shape == (b, t)
        assert js.soft_cross_entropy(logits, logits).shape == (b, t)
        ratio = js.metrics.accuracy(logits, labels)
        assert float(ratio.total) == 0.0 and float(ratio.count) == 0.0 and float(ratio.value) == 0
        assert np.all(np.asarray(js.metrics.confusion_matrix(logits, labels)) == 0.0)
        assert js.masked_mean(logits).shape == (b, C) and js.masked_max(logits).shape == (b, C)
        assert np.all(np.asarray(js.masked_max(logits)) == 0.0)
    # CTC: B = 0 gives 0; T = 0 and S = 0 rows are sequences with loss 0 (-log 1).
    for reduction in ("none", "sum", "sum_over_time", "mean_over_labels"):
        empty = js.ctc_loss(
            np.zeros((0, T, K), np.float32), np.zeros(0, np.int32), np.zeros((0, S), np.int32),
            np.zeros(0, np.int32), reduction=reduction,
        )  # fmt: skip
        assert empty.shape == ((0,) if reduction == "none" else ()) and np.all(empty == 0)
    no_frames = js.ctc_loss(
        np.zeros((2, 0, K), np.float32), np.zeros(2, np.int32), np.zeros((2, 0), np.int32),
        np.zeros(2, np.int32), reduction="none",
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(no_frames), [0.0, 0.0])
    assert not np.any(np.signbit(np.asarray(no_frames)))  # +0.0, not -0.0
    for reduction in js.SEQUENCE_REDUCTIONS:
        got = js.sequence_classification_loss(np.zeros((0, C), np.float32), np.zeros(0, int),
                                              reduction=reduction)  # fmt: skip
        assert got.shape == ((0,) if reduction == "none" else ()) and np.all(np.asarray(got) == 0)


# ---------------------------------------------------------------- CTC


def _ctc_torch(logits, logit_lengths, labels, label_lengths, reduction="none", zero_inf=False):
    torch = pytest.importorskip("torch")
    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.ctc_loss(
        z.log_softmax(-1).transpose(0, 1), torch.tensor(labels, dtype=torch.long),
        torch.tensor(logit_lengths, dtype=torch.long),
        torch.tensor(label_lengths, dtype=torch.long), reduction=reduction,
        zero_infinity=zero_inf,
    )  # fmt: skip
    out.sum().backward()
    return out.detach().numpy(), z.grad.numpy()


@pytest.mark.loss_oracle
def test_ctc_returns_losses_far_above_1e5_exactly():
    """Very confident wrong logits: NLLs of ~1.5e5 (optax's log_epsilon=-1e5 caps them
    near 1e5, which jaxseq returned before)."""
    rng = np.random.default_rng(13)
    t = 30
    logits = (rng.normal(size=(3, t, K)) * 3).astype(np.float32)
    logits[:, :, 0] += 5e4  # every frame is sure of the blank
    labels = np.array([[1, 2, 3], [1, 1, 2], [4, 0, 0]])
    logit_lengths, label_lengths = np.array([t, 20, 9]), np.array([3, 3, 1])
    want = [
        ref.ctc_nll(logits[i, : logit_lengths[i]].astype(np.float64), labels[i, : label_lengths[i]])
        for i in range(3)
    ]
    assert min(want) > 4e4 and want[0] > 1.4e5 and want[1] > 1.4e5
    value, grad = jax.value_and_grad(
        lambda z: jnp.sum(js.ctc_loss(z, logit_lengths, labels, label_lengths, reduction="none"))
    )(jnp.asarray(logits))
    got = np.asarray(js.ctc_loss(logits, logit_lengths, labels, label_lengths, reduction="none"))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    torch_value, _ = _ctc_torch(logits, logit_lengths, labels, label_lengths)
    np.testing.assert_allclose(got, torch_value, rtol=1e-6)
    # float32 resolves logits of 5e4 to ~4e-3 only: the gradient is compared in float64.
    assert np.all(np.isfinite(np.asarray(grad)))
    with jax.enable_x64(True):
        logits64 = logits.astype(np.float64)
        _, torch_grad = _ctc_torch(logits64, logit_lengths, labels, label_lengths)
        grad64 = jax.grad(
            lambda z: jnp.sum(
                js.ctc_loss(z, logit_lengths, labels, label_lengths, reduction="none")
            )
        )(jnp.asarray(logits64))
        np.testing.assert_allclose(np.asarray(grad64), torch_grad, atol=1e-9)
        # A loss of ~1e6 exactly.
        big = logits64 * 40
        want64 = ref.ctc_nll(big[0], labels[0])
        assert want64 > 1e6
        got64 = js.ctc_loss(big, logit_lengths, labels, label_lengths, reduction="none")
        np.testing.assert_allclose(float(got64[0]), want64, rtol=1e-12)


@pytest.mark.loss_oracle
def test_ctc_minus_inf_logits_and_every_reduction_against_torch():
    """-inf logits (a class the model rules out) give the true loss or +inf, never NaN."""
    rng = np.random.default_rng(14)
    logits = rng.normal(size=(4, 8, K)).astype(np.float32)
    logits[:, :, 4] = -np.inf  # class 4 is impossible everywhere
    labels = np.array([[1, 2, 2], [4, 1, 0], [3, 3, 3], [1, 0, 0]])
    logit_lengths, label_lengths = np.array([8, 8, 4, 8]), np.array([3, 2, 3, 1])
    # Row 1 needs class 4 (+inf), row 2 needs 5 frames but has 4 (+inf).
    # PyTorch's gradient is NaN for rows with -inf log-probabilities, so its gradient
    # oracle gets -1e4 instead of -inf (exp(-1e4) is 0 in float64) for the feasible rows.
    _, torch_grad = _ctc_torch(
        np.where(np.isinf(logits), -1e4, logits), logit_lengths, labels, label_lengths, "none"
    )
    for reduction, torch_reduction in (
        ("none", "none"), ("sum", "sum"), ("mean_over_labels", "mean")
    ):  # fmt: skip
        for zero_inf in (False, True):

            def f(z, r=reduction, zi=zero_inf):
                return js.ctc_loss(
                    z, logit_lengths, labels, label_lengths, reduction=r, zero_infinity=zi
                )

            got = np.asarray(f(jnp.asarray(logits)))
            grad = np.asarray(jax.grad(lambda z, f=f: jnp.sum(f(z)))(jnp.asarray(logits)))
            want, _ = _ctc_torch(
                logits, logit_lengths, labels, label_lengths, torch_reduction, zero_inf
            )
            np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=reduction)
            assert not np.any(np.isnan(grad)) and np.all(grad[1:3] == 0.0)
            if reduction != "mean_over_labels":
                np.testing.assert_allclose(grad[[0, 3]], torch_grad[[0, 3]], atol=1e-5)
    per_row = np.asarray(
        js.ctc_loss(logits, logit_lengths, labels, label_lengths, reduction="none")
    )
    assert np.isposinf(per_row[1:3]).all() and np.isfinite(per_row[[0, 3]]).all()
    want0 = ref.ctc_nll(logits[0].astype(np.float64), labels[0])
    np.testing.assert_allclose(per_row[0], want0, rtol=1e-6)
    # sum_over_time is torch's sum / B.
    got = float(js.ctc_loss(logits, logit_lengths, labels, label_lengths, zero_infinity=True))
    want, _ = _ctc_torch(logits, logit_lengths, labels, label_lengths, "sum", True)
    np.testing.assert_allclose(got, float(want) / 4, rtol=1e-5)


@pytest.mark.numerics
def test_ctc_lengths_out_of_range_are_errors_on_host_and_nan_under_jit():
    _, *_, ctc_logits, ctc_labels = _data(15)
    t = ctc_logits.shape[1]
    good_t, good_u = np.array([t, 5, 0]), np.array([S, 2, 0])
    bad = {
        "logit_lengths": [np.array([t + 1, 5, 0]), np.array([-1, 5, 0])],
        "label_lengths": [np.array([S + 1, 2, 0]), np.array([-1, 2, 0])],
    }
    f = jax.jit(lambda tl, ul: js.ctc_loss(ctc_logits, tl, ctc_labels, ul, reduction="none"))
    for name, values in bad.items():
        for value in values:
            lengths = (value, good_u) if name == "logit_lengths" else (good_t, value)
            with pytest.raises(ValueError, match=f"`{name}`"):
                js.ctc_loss(ctc_logits, lengths[0], ctc_labels, lengths[1])
            out = np.asarray(f(*lengths))
            assert np.isnan(out[0]) and np.all(np.isfinite(out[1:])), (name, value)
    # With where=False the row is not a sequence: not checked, contributes 0.
    where = np.array([False, True, True])
    got = js.ctc_loss(ctc_logits, bad["logit_lengths"][1], ctc_labels, good_u, where=where,
                      reduction="none")  # fmt: skip
    assert float(got[0]) == 0.0


@pytest.mark.gradcheck
def test_chunked_float64_gradients_of_every_reduction_and_of_the_class_weights():
    """Float64 finite differences (check_grads, reverse mode) for the reductions the
    chunked test file's gradcheck leaves out (sum, none) and for d/d class_weights, with
    tiles that divide neither N = 10 nor C = 7."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(16)
        hidden = rng.normal(size=(2, 5, 3))
        weight = rng.normal(size=(3, 7)) * 1.5
        bias = rng.normal(size=(7,))
        labels = rng.integers(0, 7, size=(2, 5))
        where = np.arange(5)[None, :] < np.array([5, 3])[:, None]
        cw = np.array([0.5, 1.0, 2.0, 1.0, 0.3, 1.2, 0.7])
        # (reduction, grad_in_forward): sum and none in neither mode of the chunked test
        # file's gradcheck; every reduction here also checks d/d class_weights.
        cases = [
            ("sum", False),
            ("sum", True),
            ("none", False),
            ("mean_over_time", True),
            ("mean_over_tokens", False),
            ("sum_over_time", True),
        ]
        for reduction, fused in cases:

            def fn(h, w, b, cw, r=reduction, f=fused):
                return chunked.linear_cross_entropy(
                    h, w, labels, where=where, bias=b, reduction=r, label_smoothing=0.1,
                    class_weights=cw, z_loss=1e-2, token_chunk=3, class_chunk=4,
                    grad_in_forward=f,
                )  # fmt: skip

            args = tuple(jnp.asarray(x) for x in (hidden, weight, bias, cw))
            assert fn(*args).dtype == jnp.float64
            check_grads(jax.jit(fn), args, order=1, modes=["rev"])
