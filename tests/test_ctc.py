"""CTC loss: parity with torch.nn.CTCLoss and a float64 forward-algorithm reference, exact
impossibility, masking, checks, the G2P experiment's decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from jaxseq.ctc import CTC_REDUCTIONS, ctc_loss, required_lengths, validate_ctc_inputs
from tests import reference_losses as ref

B, T, K, S = 6, 12, 5, 6
# jaxseq's float32 forward algorithm vs PyTorch's float32 CPU kernel.
LOSS_ATOL, LOSS_RTOL = 1e-4, 1e-5
GRAD_ATOL = 1e-5


def make_data(seed: int, *, impossible: bool, blank: int = 0, b=B, t=T, k=K, s=S):
    """Random logits and labels (never `blank`) with lengths covering the edge cases.

    Rows: a full-length one, one exactly as long as it must be (labels with repeats),
    a short one, one with no labels, one of length 0 with no labels, and (when
    ``impossible``) one whose labels need more frames than it has.
    """
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(b, t, k)) * 2.0).astype(np.float32)
    non_blank = np.array([c for c in range(k) if c != blank])
    labels = rng.choice(non_blank, size=(b, s)).astype(np.int32)
    logit_lengths = np.array([t, 7, 5, 9, 0, 4])
    label_lengths = np.array([s, 4, 2, 0, 0, 3])
    labels[1, :4] = non_blank[0]  # 4 labels, 3 repeats: needs exactly 7 frames
    labels[5, :3] = [non_blank[1], non_blank[1], non_blank[2]]  # needs 4 frames: exactly 4
    if impossible:
        logit_lengths[5] = 3  # 3 labels + 1 repeat > 3 frames
    return logits, logit_lengths, labels, label_lengths


def torch_ctc(logits, logit_lengths, labels, label_lengths, *, blank=0, reduction, zero_infinity):
    """torch.nn.CTCLoss on log_softmax(logits) in its (T, B, K) layout; loss and d loss/d logits."""
    torch = pytest.importorskip("torch")
    z = torch.tensor(logits, requires_grad=True)
    log_probs = z.log_softmax(-1).transpose(0, 1)
    loss = torch.nn.CTCLoss(blank=blank, reduction=reduction, zero_infinity=zero_infinity)(
        log_probs,
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(logit_lengths, dtype=torch.long),
        torch.tensor(label_lengths, dtype=torch.long),
    )
    loss.sum().backward()
    return loss.detach().numpy(), z.grad.numpy()


def jax_ctc(logits, logit_lengths, labels, label_lengths, **kwargs):
    fn = lambda z: ctc_loss(z, logit_lengths, labels, label_lengths, **kwargs)
    value = fn(jnp.asarray(logits))
    grad = jax.grad(lambda z: jnp.sum(fn(z)))(jnp.asarray(logits))
    return np.asarray(value), np.asarray(grad)


# ---------------------------------------------------------------- PyTorch parity


# jaxseq's reduction -> torch.nn.CTCLoss's.
TORCH_REDUCTIONS = {"mean_over_labels": "mean", "sum": "sum", "none": "none"}


@pytest.mark.loss_oracle
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("reduction", list(TORCH_REDUCTIONS))
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_equals_torch_ctc_loss(seed, reduction, zero_infinity):
    data = make_data(seed, impossible=True)
    want, want_grad = torch_ctc(
        *data, reduction=TORCH_REDUCTIONS[reduction], zero_infinity=zero_infinity
    )
    got, grad = jax_ctc(*data, reduction=reduction, zero_infinity=zero_infinity)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=LOSS_RTOL, atol=LOSS_ATOL)  # inf == inf
    if reduction == "none":
        assert np.isposinf(got[5]) != zero_infinity and (zero_infinity == (got[5] == 0.0))
    assert np.all(np.isfinite(grad))
    if zero_infinity:
        # PyTorch zeroes the impossible row's gradient too: the whole gradient matches.
        np.testing.assert_allclose(grad, want_grad, atol=GRAD_ATOL)
    assert np.all(grad[5] == 0.0)


@pytest.mark.loss_oracle
@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("reduction", list(TORCH_REDUCTIONS))
def test_gradients_equal_torch_without_impossible_rows(seed, reduction):
    data = make_data(seed, impossible=False)
    want, want_grad = torch_ctc(*data, reduction=TORCH_REDUCTIONS[reduction], zero_infinity=False)
    got, grad = jax_ctc(*data, reduction=reduction)
    np.testing.assert_allclose(got, want, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    np.testing.assert_allclose(grad, want_grad, atol=GRAD_ATOL)


@pytest.mark.loss_oracle
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_mean_over_labels_is_torch_functional_mean(zero_infinity):
    torch = pytest.importorskip("torch")
    logits, logit_lengths, labels, label_lengths = make_data(15, impossible=True)
    want = torch.nn.functional.ctc_loss(
        torch.tensor(logits).log_softmax(-1).transpose(0, 1),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(logit_lengths, dtype=torch.long),
        torch.tensor(label_lengths, dtype=torch.long),
        reduction="mean",
        zero_infinity=zero_infinity,
    ).item()
    got = ctc_loss(
        logits, logit_lengths, labels, label_lengths, reduction="mean_over_labels",
        zero_infinity=zero_infinity,
    )  # fmt: skip
    np.testing.assert_allclose(float(got), want, rtol=LOSS_RTOL, atol=LOSS_ATOL)  # inf == inf


@pytest.mark.loss_oracle
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_sum_over_time_is_torch_sum_over_batch(zero_infinity):
    data = make_data(4, impossible=True)
    want, _ = torch_ctc(*data, reduction="sum", zero_infinity=zero_infinity)
    got = ctc_loss(*data, reduction="sum_over_time", zero_infinity=zero_infinity)
    np.testing.assert_allclose(float(got), want / B, rtol=LOSS_RTOL)
    assert float(ctc_loss(*data, zero_infinity=zero_infinity)) == float(got)  # the default


# ---------------------------------------------------------------- float64 reference


def reference_nlls(logits, logit_lengths, labels, label_lengths, *, blank=0, zero_infinity):
    nlls = np.array(
        [
            ref.ctc_nll(
                logits[b, : logit_lengths[b]].astype(np.float64),
                labels[b, : label_lengths[b]],
                blank=blank,
            )
            for b in range(len(logits))
        ]
    )
    return np.where(np.isinf(nlls) & zero_infinity, 0.0, nlls)


@pytest.mark.reference
@pytest.mark.parametrize("seed", [16, 17])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_per_sequence_nll_matches_reference(seed, zero_infinity):
    data = make_data(seed, impossible=True)
    want = reference_nlls(*data, zero_infinity=zero_infinity)
    got = np.asarray(ctc_loss(*data, reduction="none", zero_infinity=zero_infinity))
    np.testing.assert_allclose(got, want, rtol=LOSS_RTOL, atol=LOSS_ATOL)


@pytest.mark.reference
@pytest.mark.parametrize("reduction", CTC_REDUCTIONS)
@pytest.mark.parametrize("where_kind", ["none", "some", "all_false"])
def test_reductions_match_numpy_of_reference_nlls(reduction, where_kind):
    logits, logit_lengths, labels, label_lengths = make_data(18, impossible=True)
    where = {
        "none": None,
        "some": np.array([True, False, True, True, False, True]),
        "all_false": np.zeros(B, bool),
    }[where_kind]
    rows = np.ones(B, bool) if where is None else where
    nll = reference_nlls(logits, logit_lengths, labels, label_lengths, zero_infinity=True)
    per_row = np.where(rows, nll, 0.0)
    count = rows.sum()
    want = {
        "none": per_row,
        "sum": per_row.sum(),
        # The mean over the N valid rows of their NLL (each a sum over the sequence's frames).
        "sum_over_time": per_row.sum() / count if count else 0.0,
        "mean_over_labels": (per_row / np.maximum(label_lengths, 1)).sum() / count
        if count
        else 0.0,
    }[reduction]
    got = ctc_loss(
        logits, logit_lengths, labels, label_lengths, where=where, reduction=reduction,
        zero_infinity=True,
    )  # fmt: skip
    assert got.dtype == jnp.float32 and got.shape == np.shape(want)
    np.testing.assert_allclose(np.asarray(got), want, rtol=LOSS_RTOL, atol=LOSS_ATOL)


@pytest.mark.loss_oracle
@pytest.mark.parametrize("blank", [2, K - 1])
def test_other_blank_ids_equal_torch(blank):
    data = make_data(5, impossible=True, blank=blank)
    want, want_grad = torch_ctc(*data, blank=blank, reduction="none", zero_infinity=True)
    got, grad = jax_ctc(*data, blank=blank, reduction="none", zero_infinity=True)
    np.testing.assert_allclose(got, want, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    np.testing.assert_allclose(grad, want_grad, atol=GRAD_ATOL)


@pytest.mark.loss_oracle
def test_hand_computed_values():
    uniform = jnp.zeros((1, 2, 3))  # p = 1/3 for every class at both steps
    one = lambda labels, n: float(ctc_loss(uniform, jnp.array([2]), jnp.array([labels]),
                                           jnp.array([n]), reduction="sum"))  # fmt: skip
    np.testing.assert_allclose(one([1, 0], 1), np.log(3.0), rtol=1e-6)  # aa, a_, _a: 3/9
    np.testing.assert_allclose(one([1, 2], 2), np.log(9.0), rtol=1e-6)  # only (a, b)
    np.testing.assert_allclose(one([0, 0], 0), np.log(9.0), rtol=1e-6)  # only (_, _)
    assert one([1, 1], 2) == np.inf  # a _ a needs 3 frames


# ---------------------------------------------------------------- impossibility


@pytest.mark.numerics
def test_impossibility_is_exact_at_the_boundary():
    labels = jnp.array([[1, 1, 2, 2, 2]] * 2)
    label_lengths = jnp.array([5, 5])
    assert np.asarray(required_lengths(labels, label_lengths)).tolist() == [8, 8]
    logits = jnp.asarray(np.random.default_rng(6).normal(size=(2, 9, 3)), jnp.float32)
    losses = ctc_loss(logits, jnp.array([8, 7]), labels, label_lengths, reduction="none")
    assert np.isfinite(float(losses[0])) and float(losses[1]) == np.inf
    # optax.ctc_loss returns a finite ~1e5 sentinel there (its log_epsilon floor, which
    # jaxseq's own forward recursion does not have).
    pads = (jnp.arange(9)[None, :] >= jnp.array([8, 7])[:, None]).astype(jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        sentinel = optax.ctc_loss(logits, pads, labels, jnp.zeros((2, 5)))
    assert np.isfinite(float(sentinel[1])) and float(sentinel[1]) > 1e4


@pytest.mark.numerics
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_impossible_rows_have_exactly_zero_gradient(zero_infinity):
    logits, logit_lengths, labels, label_lengths = make_data(7, impossible=True)
    fn = lambda z: jnp.sum(
        ctc_loss(z, logit_lengths, labels, label_lengths, reduction="none",
                 zero_infinity=zero_infinity)[jnp.array([0, 1, 2, 3, 4])]
    )  # fmt: skip
    full = lambda z: ctc_loss(
        z, logit_lengths, labels, label_lengths, reduction="sum", zero_infinity=zero_infinity
    )
    grad = np.asarray(jax.grad(full)(jnp.asarray(logits)))
    assert np.all(grad[5] == 0.0)
    # The other rows' gradient is that of the loss without the impossible row.
    np.testing.assert_array_equal(grad[:5], np.asarray(jax.grad(fn)(jnp.asarray(logits)))[:5])


@pytest.mark.numerics
def test_large_logits_and_long_sequences_are_finite():
    rng = np.random.default_rng(8)
    logits = (rng.normal(size=(2, 400, 6)) * 30.0).astype(np.float32)
    labels = rng.integers(1, 6, size=(2, 50)).astype(np.int32)
    value, grad = jax.value_and_grad(
        lambda z: ctc_loss(z, jnp.array([400, 250]), labels, jnp.array([50, 40]))
    )(jnp.asarray(logits))
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.numerics
def test_malformed_values_under_jit_give_nan():
    logits, logit_lengths, labels, label_lengths = make_data(9, impossible=False)
    f = jax.jit(lambda z, tl, y, ul: ctc_loss(z, tl, y, ul, reduction="none"))
    bad_labels = labels.copy()
    bad_labels[0, 0] = 0  # the blank at a valid position
    out = np.asarray(f(logits, logit_lengths, bad_labels, label_lengths))
    assert np.isnan(out[0]) and np.all(np.isfinite(out[1:]))
    bad_labels[0, 0] = K  # out of range
    assert np.isnan(np.asarray(f(logits, logit_lengths, bad_labels, label_lengths))[0])
    too_long = label_lengths.copy()
    too_long[2] = S + 1
    assert np.isnan(np.asarray(f(logits, logit_lengths, labels, too_long))[2])


# ---------------------------------------------------------------- masking


@pytest.mark.padding_invariance
@pytest.mark.parametrize(
    ("reduction", "poison"), list(zip(CTC_REDUCTIONS, [np.nan, np.inf, -1e30, np.nan]))
)
def test_padding_beyond_the_lengths_changes_nothing(reduction, poison):
    logits, logit_lengths, labels, label_lengths = make_data(10, impossible=True)
    beyond_t = np.arange(T)[None, :] >= logit_lengths[:, None]
    beyond_s = np.arange(S)[None, :] >= label_lengths[:, None]
    poisoned = np.where(beyond_t[..., None], np.float32(poison), logits).astype(np.float32)
    garbage = np.where(beyond_s, np.int32(-7), labels).astype(np.int32)

    @jax.jit
    def value_and_grad(z, y):
        return jax.value_and_grad(
            lambda z: jnp.sum(
                ctc_loss(z, logit_lengths, y, label_lengths, reduction=reduction,
                         zero_infinity=True)
            )
        )(z)  # fmt: skip

    v0, g0 = value_and_grad(logits, labels)
    v1, g1 = value_and_grad(poisoned, garbage)
    assert float(v0) == float(v1)
    np.testing.assert_array_equal(np.asarray(g0), np.asarray(g1))
    assert np.all(np.asarray(g1)[beyond_t] == 0.0)


@pytest.mark.padding_invariance
def test_batch_padding_equals_removal():
    logits, logit_lengths, labels, label_lengths = make_data(11, impossible=False)
    batched = ctc_loss(logits, logit_lengths, labels, label_lengths, reduction="none")
    for b in range(B):
        t, u = int(logit_lengths[b]), int(label_lengths[b])
        alone = ctc_loss(
            logits[b : b + 1, : max(t, 1)], np.array([t]), labels[b : b + 1, : max(u, 1)],
            np.array([u]), reduction="none",
        )  # fmt: skip
        np.testing.assert_allclose(float(alone[0]), float(batched[b]), rtol=1e-6, atol=1e-6)


@pytest.mark.padding_invariance
@pytest.mark.parametrize("reduction", CTC_REDUCTIONS)
def test_where_false_rows_change_nothing_whatever_they_hold(reduction):
    logits, logit_lengths, labels, label_lengths = make_data(19, impossible=True)
    where = np.array([True, True, False, True, False, True])
    # Rows that are not valid hold NaN logits, lengths out of range and blank labels.
    poisoned = np.where(where[:, None, None], logits, np.nan).astype(np.float32)
    bad_logit_lengths = np.where(where, logit_lengths, T + 5)
    bad_label_lengths = np.where(where, label_lengths, -3)
    bad_labels = np.where(where[:, None], labels, 0).astype(np.int32)

    def value_and_grad(z, tl, y, ul):
        return jax.value_and_grad(
            lambda z: jnp.sum(ctc_loss(z, tl, y, ul, where=where, reduction=reduction,
                                       zero_infinity=True))
        )(jnp.asarray(z))  # fmt: skip

    v0, g0 = value_and_grad(logits, logit_lengths, labels, label_lengths)
    v1, g1 = value_and_grad(poisoned, bad_logit_lengths, bad_labels, bad_label_lengths)
    assert np.isfinite(float(v1)) and float(v0) == float(v1)
    np.testing.assert_array_equal(np.asarray(g0), np.asarray(g1))
    assert np.all(np.asarray(g1)[~where] == 0.0)
    # ...and equal the loss of the valid rows alone.
    alone = ctc_loss(
        logits[where], logit_lengths[where], labels[where], label_lengths[where],
        reduction=reduction, zero_infinity=True,
    )  # fmt: skip
    got = ctc_loss(
        logits, logit_lengths, labels, label_lengths, where=where, reduction=reduction,
        zero_infinity=True,
    )  # fmt: skip
    if reduction == "none":
        np.testing.assert_array_equal(np.asarray(got)[where], np.asarray(alone))
        assert np.all(np.asarray(got)[~where] == 0.0)
    else:
        np.testing.assert_allclose(float(got), float(alone), rtol=1e-6)


@pytest.mark.padding_invariance
@pytest.mark.parametrize("reduction", CTC_REDUCTIONS)
def test_where_omitted_equals_all_true(reduction):
    data = make_data(20, impossible=True)
    omitted = ctc_loss(*data, reduction=reduction)
    all_true = ctc_loss(*data, where=np.ones(B, bool), reduction=reduction)
    np.testing.assert_array_equal(np.asarray(omitted), np.asarray(all_true))


@pytest.mark.numerics
@pytest.mark.parametrize("reduction", CTC_REDUCTIONS)
def test_no_valid_row_gives_zero_loss_and_zero_gradient(reduction):
    logits, logit_lengths, labels, label_lengths = make_data(21, impossible=True)
    where = np.zeros(B, bool)
    value, grad = jax.value_and_grad(
        lambda z: jnp.sum(ctc_loss(z, logit_lengths, labels, label_lengths, where=where,
                                   reduction=reduction))
    )(jnp.asarray(logits))  # fmt: skip
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


# ---------------------------------------------------------------- transformations


@pytest.mark.gradcheck
def test_check_grads_float64():
    with jax.enable_x64(True):
        logits, logit_lengths, labels, label_lengths = make_data(12, impossible=True, t=6, s=3)
        label_lengths = np.minimum(label_lengths, 3)
        logit_lengths = np.minimum(logit_lengths, 6)
        f = jax.jit(lambda z: ctc_loss(z, logit_lengths, labels[:, :3], label_lengths,
                                       zero_infinity=True))  # fmt: skip
        z = jnp.asarray(logits[:, :6], jnp.float64)
        assert f(z).dtype == jnp.float64
        check_grads(f, (z,), order=1, modes=["rev"])


@pytest.mark.variants
def test_jit_equals_eager_and_bfloat16_is_float32():
    data = make_data(13, impossible=True)
    eager = ctc_loss(*data, reduction="none")
    jitted = jax.jit(lambda *a: ctc_loss(*a, reduction="none"))(*data)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
    low = ctc_loss(jnp.asarray(data[0], jnp.bfloat16), *data[1:], reduction="none")
    assert low.dtype == jnp.float32


# ---------------------------------------------------------------- validation


def _bad_calls():
    """name -> (call, the argument its message must name, the exception raised)."""
    logits, logit_lengths, labels, label_lengths = make_data(14, impossible=False)
    L = ctc_loss
    A, V, TE = AssertionError, ValueError, TypeError
    data = (logits, logit_lengths, labels, label_lengths)
    return {
        "logits rank": (lambda: L(logits[0], logit_lengths, labels, label_lengths), "logits", A),
        "logits int": (
            lambda: L(logits.astype(np.int32), logit_lengths, labels, label_lengths),
            "logits",
            A,
        ),
        "labels rank": (lambda: L(logits, logit_lengths, labels[0], label_lengths), "labels", A),
        "labels batch": (lambda: L(logits, logit_lengths, labels[:2], label_lengths), "labels", A),
        "labels float": (
            lambda: L(logits, logit_lengths, labels.astype(np.float32), label_lengths),
            "labels",
            A,
        ),
        "logit_lengths shape": (
            lambda: L(logits, logit_lengths[:2], labels, label_lengths),
            "logit_lengths",
            A,
        ),
        "logit_lengths float": (
            lambda: L(logits, logit_lengths.astype(np.float32), labels, label_lengths),
            "logit_lengths",
            A,
        ),
        "label_lengths shape": (
            lambda: L(logits, logit_lengths, labels, label_lengths[None]),
            "label_lengths",
            A,
        ),
        "where shape": (lambda: L(*data, where=np.ones(B + 1, bool)), "where", A),
        "where int": (lambda: L(*data, where=np.ones(B, np.int32)), "where", A),
        "blank out of range": (lambda: L(*data, blank=K), "blank", V),
        "blank negative": (lambda: L(*data, blank=-1), "blank", V),
        "blank bool": (lambda: L(*data, blank=True), "blank", TE),
        "unknown reduction": (lambda: L(*data, reduction="mean_over_tokens"), "reduction", V),
        "old name mean": (lambda: L(*data, reduction="mean"), "reduction", V),
        "old name mean_over_sequences": (
            lambda: L(*data, reduction="mean_over_sequences"),
            "reduction",
            V,
        ),
        "zero_infinity not bool": (lambda: L(*data, zero_infinity=1), "zero_infinity", TE),
        "logit_lengths > T": (
            lambda: L(logits, logit_lengths + T, labels, label_lengths),
            "logit_lengths",
            V,
        ),
        "logit_lengths negative": (
            lambda: L(logits, logit_lengths - 100, labels, label_lengths),
            "logit_lengths",
            V,
        ),
        "label_lengths > S": (
            lambda: L(logits, logit_lengths, labels, label_lengths + S),
            "label_lengths",
            V,
        ),
        "blank label": (
            lambda: L(logits, logit_lengths, np.zeros_like(labels), label_lengths),
            "labels",
            V,
        ),
        "label >= K": (lambda: L(logits, logit_lengths, labels + K, label_lengths), "labels", V),
        "validate impossible": (
            lambda: validate_ctc_inputs(
                np.array([3]), np.array([[1, 1, 2]]), np.array([3]), num_classes=3
            ),
            "label_lengths",
            V,
        ),
        "validate blank label": (
            lambda: validate_ctc_inputs(
                np.array([5]), np.array([[1, 0, 2]]), np.array([3]), num_classes=3
            ),
            "labels",
            V,
        ),
        "validate labels rank": (
            lambda: validate_ctc_inputs(
                np.array([5]), np.array([1, 2]), np.array([2]), num_classes=3
            ),
            "labels",
            A,
        ),
        "validate lengths shape": (
            lambda: validate_ctc_inputs(
                np.array([5, 5]), np.array([[1, 2]]), np.array([2]), num_classes=3
            ),
            "logit_lengths",
            A,
        ),
        "validate where shape": (
            lambda: validate_ctc_inputs(
                np.array([5]),
                np.array([[1, 2]]),
                np.array([2]),
                num_classes=3,
                where=np.ones(2, bool),
            ),
            "where",
            A,
        ),
        "validate blank": (
            lambda: validate_ctc_inputs(
                np.array([5]), np.array([[1, 2]]), np.array([2]), num_classes=3, blank=3
            ),
            "blank",
            V,
        ),
    }


@pytest.mark.bad_input
@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_input_raises_naming_the_argument(case):
    call, name, error = _bad_calls()[case]
    with pytest.raises(error) as info:
        call()
    assert f"`{name}`" in str(info.value), str(info.value)


@pytest.mark.bad_input
def test_rows_where_false_are_not_checked():
    logits, logit_lengths, labels, label_lengths = make_data(22, impossible=True)
    where = np.ones(B, bool)
    where[2] = False
    bad_labels = labels.copy()
    bad_labels[2, 0] = 0  # the blank, at a valid position of a row that is not valid
    bad_lengths = logit_lengths.copy()
    bad_lengths[2] = T + 1
    ctc_loss(logits, bad_lengths, bad_labels, label_lengths, where=where)  # no error
    with pytest.raises(ValueError, match="`logit_lengths`"):
        ctc_loss(logits, bad_lengths, bad_labels, label_lengths)
    where[5] = False  # the impossible row
    validate_ctc_inputs(bad_lengths, bad_labels, label_lengths, num_classes=K, where=where)
    with pytest.raises(ValueError, match="sequence 5"):
        validate_ctc_inputs(logit_lengths, labels, label_lengths, num_classes=K)


@pytest.mark.bad_input
def test_validate_accepts_good_data_and_names_the_sequence():
    validate_ctc_inputs(np.array([4, 0]), np.array([[1, 1, 2], [0, 0, 0]]), np.array([3, 0]),
                        num_classes=3)  # fmt: skip
    with pytest.raises(ValueError, match=r"sequence 1 has 2 labels with 1 adjacent repeat"):
        validate_ctc_inputs(np.array([4, 2]), np.array([[1, 2], [2, 2]]), np.array([2, 2]),
                            num_classes=3)  # fmt: skip


# ---------------------------------------------------------------- the G2P experiment
# (its smoke run is one of the runs of tests/test_experiments.py)


@pytest.mark.training_smoke
def test_g2p_decoding_and_edit_distance():
    from experiments import cmudict_g2p_ctc as g2p

    edit_distance = g2p.edit_distance
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 5]) == 2
    assert edit_distance([1, 2, 3, 4], [2, 1, 3, 5]) == 3
    # the experiment's decoding path (make_predict -> js.ctc_greedy_decode -> error_rates)
    # on hand-made argmax paths; "params" are the logits themselves. Frames past a row's
    # length and the padding row (index -1) hold NaN: never read.
    assert g2p.BLANK == 0
    paths = [
        [0, 3, 3, 0, 3, 5, 5, 0, 9],  # length 8: 3 3 5 (the 9 is past the end)
        [2, 2, 0, 4, 4, 1, 1, 1, 1],  # length 5: 2 4
        [6, 6, 6, 6, 6, 6, 6, 6, 6],  # length 0: nothing
        [0, 7, 7, 7, 0, 0, 8, 0, 7],  # length 9: 7 8 7
        [1, 1, 1, 1, 1, 1, 1, 1, 1],  # padding
    ]
    lengths = np.array([8, 5, 0, 9, 3], np.int32)
    logits = np.eye(10, dtype=np.float32)[np.array(paths)]  # one-hot [5, 9, 10]
    for row, n in enumerate(lengths):
        logits[row, n:] = np.nan
    logits[4] = np.nan
    batch = g2p.CTCBatch(
        inputs=np.zeros((5, 9), np.int32),
        lengths=lengths,
        targets=np.zeros((5, 1), np.int32),  # not read by error_rates
        target_lengths=np.zeros((5,), np.int32),
        indices=np.array([2, 0, 3, 1, -1], np.int32),
    )
    # the words by index: index 0 is row 1, 1 row 3, 2 row 0, 3 row 2
    phonemes = ([2, 4], [7, 8], [3, 5], [1])
    words = g2p.Words(("ab", "cd", "ef", "gh"), tuple(np.array(p, np.int32) for p in phonemes))
    # distances: row 0 [3 3 5] vs [3 5]: 1; row 1 [2 4] vs [2 4]: 0; row 2 [] vs [1]: 1;
    # row 3 [7 8 7] vs [7 8]: 1 -> PER 3 / (2 + 2 + 1 + 2), WER 3 / 4
    predict = g2p.make_predict(lambda params, inputs, lengths: params)
    tokens, counts = predict(logits, batch.inputs, lengths, batch.indices >= 0)
    assert counts.tolist() == [3, 2, 0, 3, 0] and tokens.shape == (5, 9)
    assert tokens[0, :3].tolist() == [3, 3, 5] and tokens[3, :3].tolist() == [7, 8, 7]
    assert not np.any(tokens[4] != -1)
    rates = g2p.error_rates(predict, logits, [batch], words)
    assert rates == {"per": 3 / 7, "wer": 3 / 4, "words": 4}
    # NaN in a valid frame of a word: loud, not a silent argmax
    bad = logits.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN logits for the word 'ab'"):
        g2p.error_rates(predict, bad, [batch], words)
