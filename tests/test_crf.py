"""The linear-chain CRF (jaxseq.crf): a float64 brute-force reference over every tag path,
parity with pytorch-crf, padding, the two forward algorithms, constraints, dtypes, checks."""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxseq.crf import (
    CRF_METHODS,
    CRF_REDUCTIONS,
    crf_allowed_transitions,
    crf_constrain,
    crf_decode,
    crf_init,
    crf_log_likelihood,
    crf_loss,
    crf_loss_terms,
    crf_marginals,
)
from jaxseq.losses import TERM_REDUCTIONS
from tests.reference_losses import seed_of

PARAM_KEYS = ("transitions", "start", "end")
# float32 forward algorithm vs float64 sums over a few dozen paths of scores of size ~10:
# a few float32 ulps of the largest intermediate (log Z ~ 10: ulp ~ 1e-6).
ATOL, RTOL = 2e-5, 1e-5


# ------------------------------------------------------------ float64 reference
# Plain loops straight from the definition (docs/crf.md): every path enumerated.


def ref_logsumexp(values) -> float:
    m = max(values)
    if m == -math.inf:
        return -math.inf
    return m + math.log(sum(math.exp(v - m) for v in values))


def ref_score(em, path, trans, start, end) -> float:
    """start[y_0] + sum_t em[t, y_t] + sum_{t>=1} trans[y_{t-1}, y_t] + end[y_last]."""
    score = float(start[path[0]]) + float(end[path[-1]])
    for t, y in enumerate(path):
        score += float(em[t, y])
    for t in range(1, len(path)):
        score += float(trans[path[t - 1], path[t]])
    return score


def ref_row(em, tags, length, params):
    """One row (em [T, K], tags [T], its length): log-likelihood, its gradients, the
    marginals, the Viterbi path (-1 padded) and score, by enumerating the K**length paths.

    Gradients of log p(y) = score(y) - log Z: the gold path's counts minus their
    expectations under p (d log Z / d score_term = the probability of the term's use).
    Ties: among the best paths, the one that read backwards is lexicographically smallest.
    """
    trans, start, end = (np.asarray(params[k], np.float64) for k in PARAM_KEYS)
    steps, num_tags = em.shape
    out = {
        "ll": 0.0,
        "marginals": np.zeros((steps, num_tags)),
        "d_em": np.zeros((steps, num_tags)),
        "d_transitions": np.zeros((num_tags, num_tags)),
        "d_start": np.zeros(num_tags),
        "d_end": np.zeros(num_tags),
        "path": [-1] * steps,
        "best": 0.0,
    }
    if length == 0:
        return out
    paths = list(itertools.product(range(num_tags), repeat=length))
    scores = [ref_score(em, p, trans, start, end) for p in paths]
    log_z = ref_logsumexp(scores)
    gold = tuple(int(y) for y in tags[:length])
    out["ll"] = ref_score(em, gold, trans, start, end) - log_z
    probs = [math.exp(s - log_z) for s in scores]  # exp(-inf) = 0: a forbidden path
    for path, prob in zip(paths, probs):
        for t, y in enumerate(path):
            out["marginals"][t, y] += prob
    # The gold path's counts with weight 1, every path's with weight -p(path).
    for path, weight in [(gold, 1.0)] + [(p, -prob) for p, prob in zip(paths, probs)]:
        for t, y in enumerate(path):
            out["d_em"][t, y] += weight
        for t in range(1, length):
            out["d_transitions"][path[t - 1], path[t]] += weight
        out["d_start"][path[0]] += weight
        out["d_end"][path[-1]] += weight
    best = max(scores)
    out["best"] = best
    best_paths = [p for p, s in zip(paths, scores) if s == best]
    out["path"] = list(min(best_paths, key=lambda p: p[::-1])) + [-1] * (steps - length)
    return out


def ref_batch(em, tags, lengths, params):
    rows = [ref_row(em[b], tags[b], int(lengths[b]), params) for b in range(len(lengths))]
    out = {key: np.array([r[key] for r in rows]) for key in ("ll", "marginals", "d_em", "path")}
    out["best"] = np.array([r["best"] for r in rows])
    for key in PARAM_KEYS:
        out[f"d_{key}"] = sum((r[f"d_{key}"] for r in rows), np.zeros_like(rows[0][f"d_{key}"]))
    return out


def ref_forward(em, length, params) -> float:
    """log Z of one row by the textbook forward recursion in float64 (for long T)."""
    trans, start, end = (np.asarray(params[k], np.float64) for k in PARAM_KEYS)
    if length == 0:
        return 0.0
    alpha = start + em[0]
    for t in range(1, length):
        scores = alpha[:, None] + trans
        m = scores.max(axis=0)
        alpha = m + np.log(np.exp(scores - m).sum(axis=0)) + em[t]
    m = (alpha + end).max()
    return float(m + np.log(np.exp(alpha + end - m).sum()))


# ------------------------------------------------------------------- data

# Most tests share B and T (and K = 3): each jitted helper below compiles once per shape,
# dtype and method, and compiling is most of this file's time.
B, T = 6, 4
LENGTHS = [4, 0, 1, 2, 3, 4]  # every length from 0 to T


def make_data(seed: int, k: int, *, b=B, t=T, lengths=None, scale=1.0):
    """float32 emissions [B, T, K] and params, random tags in [0, K), and the prefix mask
    of ``lengths`` (default: every length from 0 to T)."""
    rng = np.random.default_rng(seed)
    em = (rng.normal(size=(b, t, k)) * scale).astype(np.float32)
    tags = rng.integers(0, k, size=(b, t)).astype(np.int32)
    lengths = np.asarray(LENGTHS if lengths is None else lengths, np.int32)
    params = {
        "transitions": (rng.normal(size=(k, k)) * 0.5 * scale).astype(np.float32),
        "start": (rng.normal(size=k) * 0.5 * scale).astype(np.float32),
        "end": (rng.normal(size=k) * 0.5 * scale).astype(np.float32),
    }
    where = np.arange(t)[None, :] < lengths[:, None]
    return em, tags, where, lengths, params


@functools.partial(jax.jit, static_argnames="method")
def _everything(em, tags, where, params, method):
    def total(e, p):
        ll = crf_log_likelihood(e, tags, p, where=where, method=method)
        return jnp.sum(ll), ll

    (_, ll), (d_em, d_params) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(em, params)
    out = {"ll": ll, "d_em": d_em, **{f"d_{key}": d_params[key] for key in PARAM_KEYS}}
    out["path"], out["best"] = crf_decode(em, params, where=where)
    out["marginals"] = crf_marginals(em, params, where=where, method=method)
    out["loss"] = crf_loss(em, tags, params, where=where, method=method)  # the default
    return out


def run(em, tags, where, params, method):
    """Under jit: log-likelihoods ``ll`` [B], the gradients of their sum (``d_em``,
    ``d_transitions``, ``d_start``, ``d_end``), the Viterbi ``path`` and ``best`` score,
    the ``marginals`` and the default ``loss``, as NumPy arrays."""
    return {k: np.asarray(v) for k, v in _everything(em, tags, where, params, method).items()}


@jax.jit
def all_losses(em, tags, where, params):
    """crf_loss under every reduction, and the gradient of each scalar one."""
    out = {}
    for reduction in CRF_REDUCTIONS:
        fn = lambda e, r=reduction: crf_loss(e, tags, params, where=where, reduction=r)
        out[reduction] = fn(em)
        if reduction != "none":
            out[f"d_{reduction}"] = jax.grad(fn)(em)
    return out


ll_only = jax.jit(crf_log_likelihood, static_argnames="method")


def assert_matches_reference(got, want, *, keys=("ll", "d_em", "marginals", *PARAM_KEYS)):
    for key in keys:
        name = f"d_{key}" if key in PARAM_KEYS else key
        np.testing.assert_allclose(got[name], want[name], atol=ATOL, rtol=RTOL, err_msg=name)


# ------------------------------------------------------------- the reference


@pytest.mark.reference
@pytest.mark.parametrize("method", CRF_METHODS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_log_likelihood_gradients_and_marginals_equal_brute_force(k, method):
    em, tags, where, lengths, params = make_data(seed_of("ref", k), k)
    want = ref_batch(em, tags, lengths, params)
    got = run(em, tags, where, params, method)
    assert got["ll"].dtype == np.float32 and got["marginals"].dtype == np.float32
    assert_matches_reference(got, want)
    # The row with no valid step: log-likelihood 0 and gradient exactly 0.
    assert got["ll"][1] == 0.0 and not got["d_em"][1].any()
    np.testing.assert_allclose(got["marginals"].sum(-1), where.astype(np.float64), atol=ATOL)
    assert not got["marginals"][~where].any()
    np.testing.assert_array_equal(got["path"], want["path"])
    np.testing.assert_allclose(got["best"], want["best"], atol=ATOL, rtol=RTOL)
    nll = -want["ll"]
    np.testing.assert_allclose(got["loss"], nll.sum() / 5, atol=ATOL, rtol=RTOL)


@pytest.mark.reference
def test_no_steps_at_all():
    em, tags, where, lengths, params = make_data(seed_of("T=0"), 3, t=0, lengths=[0] * B)
    assert not np.asarray(crf_log_likelihood(em, tags, params, where=where)).any()
    assert crf_log_likelihood(em, tags, params).shape == (B,)
    path, score = crf_decode(em, params)
    assert path.shape == (B, 0) and path.dtype == jnp.int32 and not np.asarray(score).any()
    assert crf_marginals(em, params, method="parallel").shape == (B, 0, 3)
    assert float(crf_loss(em, tags, params)) == 0.0


@pytest.mark.reference
@pytest.mark.parametrize("k", [2, 3])
def test_viterbi_equals_brute_force_with_exact_ties(k):
    # Scores of small integers: the float32 sums are exact, so tied paths tie exactly in
    # both implementations and the tie-break rule is what decides.
    rng = np.random.default_rng(seed_of("ties", k))
    em, tags, where, lengths, _ = make_data(seed_of("ties", k), k)
    em = rng.integers(-1, 2, size=em.shape).astype(np.float32)
    params = {
        "transitions": rng.integers(-1, 2, size=(k, k)).astype(np.float32),
        "start": rng.integers(-1, 2, size=k).astype(np.float32),
        "end": rng.integers(-1, 2, size=k).astype(np.float32),
    }
    want = ref_batch(em, tags, lengths, params)
    got = run(em, tags, where, params, "sequential")
    np.testing.assert_array_equal(got["path"], want["path"])
    np.testing.assert_array_equal(got["best"], want["best"])
    # All scores equal: every path ties, and the all-0 path is the one.
    zeros = {key: np.zeros_like(v) for key, v in params.items()}
    got = run(np.zeros_like(em), tags, where, zeros, "sequential")
    np.testing.assert_array_equal(got["path"], np.where(where, 0, -1))
    assert not got["best"].any()


@pytest.mark.reference
def test_loss_reductions():
    em, tags, where, lengths, params = make_data(seed_of("reductions"), 3)
    nll = -ref_batch(em, tags, lengths, params)["ll"]
    rows = lengths > 0
    want = {
        "sum_over_time": nll.sum() / rows.sum(),
        "mean_over_time": (nll[rows] / lengths[rows]).sum() / rows.sum(),
        "mean_over_tokens": nll.sum() / lengths.sum(),
        "sum": nll.sum(),
        "none": nll,
    }
    got = all_losses(em, tags, where, params)
    for reduction in CRF_REDUCTIONS:
        assert got[reduction].dtype == jnp.float32
        assert got[reduction].shape == np.shape(want[reduction])
        np.testing.assert_allclose(
            got[reduction], want[reduction], atol=ATOL, rtol=RTOL, err_msg=reduction
        )
    # Nothing valid (and B = 0): 0 with gradient 0, never NaN.
    for outputs in (
        all_losses(em, tags, np.zeros_like(where), params),
        all_losses(em[:0], tags[:0], where[:0], params),
    ):
        for name, value in outputs.items():
            assert not np.asarray(value).any(), name
    assert all_losses(em[:0], tags[:0], where[:0], params)["none"].shape == (0,)


@pytest.mark.reference
def test_loss_terms_are_exact_over_any_split_of_the_batch():
    em, tags, where, lengths, params = make_data(seed_of("terms"), 3)
    nll = -ref_batch(em, tags, lengths, params)["ll"]
    rows = lengths > 0
    want = {  # (total, count) straight from the definitions
        "sum_over_time": (nll.sum(), rows.sum()),
        "mean_over_time": ((nll[rows] / lengths[rows]).sum(), rows.sum()),
        "mean_over_tokens": (nll.sum(), lengths.sum()),
    }
    for reduction in TERM_REDUCTIONS:
        terms = crf_loss_terms(em, tags, params, where=where, reduction=reduction)
        np.testing.assert_allclose(
            [terms.total, terms.count], want[reduction], atol=ATOL, rtol=RTOL, err_msg=reduction
        )
        loss = crf_loss(em, tags, params, where=where, reduction=reduction)
        np.testing.assert_allclose(terms.loss, loss, rtol=1e-6, err_msg=reduction)
        # Microbatches of uneven sizes (one holding only the empty row): summed terms
        # give the whole batch's loss; the mean of the parts' losses does not.
        parts = [slice(0, 1), slice(1, 2), slice(2, None)]  # LENGTHS [4], [0], [1, 2, 3, 4]
        split = [
            crf_loss_terms(em[s], tags[s], params, where=where[s], reduction=reduction)
            for s in parts
        ]
        total = sum(float(part.total) for part in split)
        count = sum(float(part.count) for part in split)
        np.testing.assert_allclose(total / count, loss, rtol=1e-5, err_msg=reduction)
    with pytest.raises(ValueError, match="reduction"):
        crf_loss_terms(em, tags, params, where=where, reduction="sum")


@pytest.mark.gradcheck
def test_check_grads_in_float64():
    em, tags, where, _, params = make_data(seed_of("check_grads"), 3, b=3, lengths=[4, 2, 0])

    @jax.jit
    def both_methods(e, p):
        return jnp.stack(
            [crf_log_likelihood(e, tags, p, where=where, method=m) for m in CRF_METHODS]
        )

    with jax.enable_x64(True):
        em64 = jnp.asarray(em, jnp.float64)
        params64 = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        assert both_methods(em64, params64).dtype == jnp.float64
        check_grads(both_methods, (em64, params64), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ pytorch-crf


def torch_crf(em, tags, lengths, params):
    """pytorch-crf 0.7.2 (`torchcrf.CRF`, batch_first): log-likelihoods, the gradients of
    their sum, the decoded paths, and its reductions of the loss (negated)."""
    torch = pytest.importorskip("torch")
    torchcrf = pytest.importorskip("torchcrf")
    crf = torchcrf.CRF(em.shape[-1], batch_first=True)
    with torch.no_grad():
        crf.transitions.copy_(torch.tensor(params["transitions"]))
        crf.start_transitions.copy_(torch.tensor(params["start"]))
        crf.end_transitions.copy_(torch.tensor(params["end"]))
    mask = torch.tensor(np.arange(em.shape[1])[None, :] < lengths[:, None])
    emissions = torch.tensor(em, requires_grad=True)
    tags_t = torch.tensor(np.where(mask.numpy(), tags, 0), dtype=torch.long)
    ll = crf(emissions, tags_t, mask=mask, reduction="none")
    ll.sum().backward()
    reductions = {"sum_over_time": "mean", "sum": "sum", "mean_over_tokens": "token_mean"}
    losses = {
        name: -crf(emissions, tags_t, mask=mask, reduction=r).item()
        for name, r in reductions.items()
    }
    got = {
        "ll": ll.detach().numpy(),
        "d_em": emissions.grad.numpy(),
        "d_transitions": crf.transitions.grad.numpy(),
        "d_start": crf.start_transitions.grad.numpy(),
        "d_end": crf.end_transitions.grad.numpy(),
    }
    return got, crf.decode(emissions, mask), losses


@pytest.mark.loss_oracle
@pytest.mark.parametrize("method", CRF_METHODS)
def test_equals_pytorch_crf(method):
    # torchcrf requires the first step of every row to be valid: lengths >= 1.
    em, tags, where, lengths, params = make_data(
        seed_of("torchcrf"), 3, lengths=[4, 1, 2, 3, 4, 4], scale=2.0
    )
    want, want_paths, want_losses = torch_crf(em, tags, lengths, params)
    got = run(em, tags, where, params, method)
    assert_matches_reference(got, want, keys=("ll", "d_em", *PARAM_KEYS))
    losses = all_losses(em, tags, where, params)
    for reduction, value in want_losses.items():
        np.testing.assert_allclose(losses[reduction], value, atol=ATOL, rtol=RTOL)
    assert [row[row >= 0].tolist() for row in got["path"]] == want_paths


# ------------------------------------------------------------------- padding


@pytest.mark.padding_invariance
@pytest.mark.parametrize("method", CRF_METHODS)
def test_poisoned_padding_changes_nothing(method):
    em, tags, where, _, params = make_data(seed_of("poison"), 3)
    poisoned_em, poisoned_tags = em.copy(), tags.copy()
    poisons = np.array([np.nan, np.inf, -np.inf, 1e30], np.float32)
    poisoned_em[~where] = np.resize(poisons, poisoned_em[~where].shape)
    poisoned_tags[~where] = np.resize(np.array([-100, -1, 3, 99]), poisoned_tags[~where].shape)
    clean = run(em, tags, where, params, method)
    dirty = run(poisoned_em, poisoned_tags, where, params, method)
    for key, value in clean.items():
        np.testing.assert_array_equal(dirty[key], value, err_msg=key)
    assert not dirty["d_em"][~where].any()
    # More padding steps change nothing either (up to the float rounding of the parallel
    # product's other tree shape; the sequential scan passes alpha through unchanged).
    longer = np.concatenate([poisoned_em, np.full((B, 3, 3), np.nan, np.float32)], axis=1)
    longer_where = np.concatenate([where, np.zeros((B, 3), bool)], axis=1)
    longer_tags = np.concatenate([tags, np.full((B, 3), -1, np.int32)], axis=1)
    ll = ll_only(longer, longer_tags, params, where=longer_where, method=method)
    if method == "sequential":
        np.testing.assert_array_equal(ll, clean["ll"])
    else:
        np.testing.assert_allclose(ll, clean["ll"], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------- the two methods


@pytest.mark.numerics
def test_sequential_equals_parallel_on_long_sequences():
    t = 257
    em, tags, where, lengths, params = make_data(
        seed_of("long"), 5, b=4, t=t, lengths=[t, 0, 1, 130], scale=2.0
    )
    seq, par = (run(em, tags, where, params, m) for m in CRF_METHODS)
    # Both against the float64 forward recursion: |log Z| reaches ~1.3e3 here, where a
    # float32 ulp is 1.2e-4; 257 steps of rounding stay within a few of those ulps.
    log_z = np.array([ref_forward(em[b], lengths[b], params) for b in range(4)])
    score = np.array(
        [
            ref_score(em[b], tags[b, : lengths[b]], *(params[k] for k in PARAM_KEYS))
            if lengths[b]
            else 0.0
            for b in range(4)
        ]
    )
    assert np.abs(log_z).max() > 500  # the regime the tolerance is about
    for got in (seq, par):
        np.testing.assert_allclose(got["ll"], score - log_z, rtol=0, atol=2e-3)
    np.testing.assert_allclose(seq["ll"], par["ll"], rtol=0, atol=2e-3)
    # Gradients are probabilities (marginals minus indicators) and expected transition
    # counts (up to T): differences come from exp() of log-space values accurate to the
    # same absolute error, so relative to their size they agree to ~1e-3 at worst.
    for key in ("d_em", "marginals", *(f"d_{k}" for k in PARAM_KEYS)):
        scale = max(1.0, np.abs(seq[key]).max())
        np.testing.assert_allclose(seq[key], par[key], atol=2e-3 * scale, err_msg=key)
    np.testing.assert_allclose(seq["marginals"].sum(-1), where.astype(np.float32), atol=1e-4)


# ----------------------------------------------------------------- variants


@pytest.mark.variants
@pytest.mark.parametrize("method", CRF_METHODS)
def test_jit_nojit_vmap_agree(method):
    em, tags, where, _, params = make_data(seed_of("variants"), 3)
    jitted = run(em, tags, where, params, method)
    # Eager: host data, so the tags are checked on the host, at valid steps only.
    padded_tags = np.where(where, tags, -100)
    eager = crf_log_likelihood(em, padded_tags, params, where=where, method=method)
    np.testing.assert_allclose(eager, jitted["ll"], rtol=1e-6, atol=1e-6)

    @jax.jit
    @jax.vmap
    def one_row_at_a_time(e, y, w):
        return crf_log_likelihood(e[None], y[None], params, where=w[None], method=method)[0]

    mapped = one_row_at_a_time(jnp.asarray(em), jnp.asarray(tags), jnp.asarray(where))
    np.testing.assert_allclose(mapped, jitted["ll"], rtol=1e-6, atol=1e-6)
    if method == "sequential":  # eager decode (it has no method)
        path, score = crf_decode(em, params, where=where)
        np.testing.assert_array_equal(path, jitted["path"])
        np.testing.assert_allclose(score, jitted["best"], rtol=1e-6)


# -------------------------------------------------------------- constraints

BIO_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.mark.reference
def test_allowed_transitions_of_bio_and_bioes():
    allowed, start, end = crf_allowed_transitions(BIO_TAGS, "BIO")
    # Rows: from; columns: to (O, B-PER, I-PER, B-LOC, I-LOC).
    assert allowed.astype(int).tolist() == [
        [1, 1, 0, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 1, 1],
        [1, 1, 0, 1, 1],
    ]
    assert start.tolist() == [True, True, False, True, False] and end.all()
    allowed, start, end = crf_allowed_transitions(["O", "B-X", "I-X", "E-X", "S-X"], "BIOES")
    assert allowed.astype(int).tolist() == [
        [1, 1, 0, 0, 1],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [1, 1, 0, 0, 1],
        [1, 1, 0, 0, 1],
    ]
    assert start.tolist() == [True, True, False, False, True]
    assert end.tolist() == [True, False, False, True, True]


def _uses_forbidden(path, allowed, start, end):
    path = [int(y) for y in path if y >= 0]
    if not path:
        return False
    moves = [not allowed[a, b] for a, b in zip(path[:-1], path[1:])]
    return (not start[path[0]]) or (not end[path[-1]]) or any(moves)


@jax.jit
def _constrained_loss_and_grads(em, tags, where, raw, allowed, start, end):
    # The constraint applied inside the loss: the raw params train, the forbidden stay -inf.
    loss = lambda e, p: crf_loss(e, tags, crf_constrain(p, allowed, start, end), where=where)
    return jax.value_and_grad(loss, argnums=(0, 1))(em, raw)


@pytest.mark.numerics
@pytest.mark.parametrize("method", CRF_METHODS)
def test_bio_constraints_give_finite_losses_and_gradients(method):
    allowed, start, end = crf_allowed_transitions(BIO_TAGS, "BIO")
    em, _, where, lengths, raw = make_data(seed_of("bio"), 5)
    gold = np.array(
        [
            [1, 2, 0, 3],
            [2, 2, 2, 2],  # garbage, but the row has no valid step
            [3, -1, -1, -1],
            [0, 1, -100, -100],
            [3, 4, 4, 99],
            [1, 2, 2, 0],
        ],
        np.int32,
    )
    assert not any(_uses_forbidden(g[:n], allowed, start, end) for g, n in zip(gold, lengths))
    params = crf_constrain(raw, allowed, start, end)
    assert np.isneginf(np.asarray(params["transitions"])[0, 2])
    want = ref_batch(em, gold, lengths, params)
    got = run(em, gold, where, params, method)
    assert_matches_reference(got, want)
    for key in ("ll", "d_em", "marginals", *(f"d_{k}" for k in PARAM_KEYS)):
        assert np.isfinite(got[key]).all(), key
    assert not got["marginals"][:, 0, ~start].any()  # no path starts with an I- tag
    if method == "sequential":
        value, (d_em, d_raw) = _constrained_loss_and_grads(
            em, gold, where, raw, allowed, start, end
        )
        np.testing.assert_allclose(value, -want["ll"].sum() / 5, atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(d_em, -want["d_em"] / 5, atol=ATOL)
        mask = {"transitions": allowed, "start": start, "end": end}
        for key in PARAM_KEYS:
            # d loss / d raw = -(1/N) d ll / d constrained where allowed, exactly 0 elsewhere.
            np.testing.assert_allclose(d_raw[key], -want[f"d_{key}"] / 5, atol=ATOL, err_msg=key)
            assert not np.asarray(d_raw[key])[~mask[key]].any()
    # Emissions that favour the I- tags everywhere: the decoded paths still never take a
    # forbidden move (and equal the best allowed path).
    favour_i = np.zeros_like(em)
    favour_i[:, :, [2, 4]] = 5.0
    got = run(favour_i, gold, where, params, method)
    assert not any(_uses_forbidden(p, allowed, start, end) for p in got["path"])
    np.testing.assert_array_equal(got["path"], ref_batch(favour_i, gold, lengths, params)["path"])
    assert np.isfinite(got["best"]).all()
    # A gold path through a forbidden move is impossible: log-likelihood -inf (loss +inf),
    # and every gradient stays finite.
    impossible = gold.copy()
    impossible[0, :2] = [0, 2]  # O -> I-PER
    got = run(em, impossible, where, params, method)
    assert np.isneginf(got["ll"][0]) and np.isfinite(got["ll"][1:]).all()
    assert np.isposinf(got["loss"])
    for key in ("d_em", *(f"d_{k}" for k in PARAM_KEYS)):
        assert np.isfinite(got[key]).all(), key


@pytest.mark.numerics
@pytest.mark.parametrize("method", CRF_METHODS)
def test_a_tag_no_path_can_reach_has_zero_probability_and_finite_gradients(method):
    em, tags, where, lengths, raw = make_data(seed_of("unreachable"), 3)
    allowed = np.ones((3, 3), bool)
    allowed[:, 2] = False  # nothing moves into tag 2, and no path starts there
    start = np.array([True, True, False])
    params = crf_constrain(raw, allowed, start, np.ones(3, bool))
    tags = np.minimum(tags, 1)
    want = ref_batch(em, tags, lengths, params)
    got = run(em, tags, where, params, method)
    assert_matches_reference(got, want)
    for key in ("ll", "d_em", *(f"d_{k}" for k in PARAM_KEYS)):
        assert np.isfinite(got[key]).all(), key
    assert not got["d_em"][..., 2].any() and not got["marginals"][..., 2].any()


# --------------------------------------------------------------------- dtypes


@pytest.mark.dtype
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_emissions_are_computed_in_float32(dtype):
    em, tags, where, _, params = make_data(seed_of("half", str(dtype)), 3)
    half = jnp.asarray(em, dtype)
    got = run(half, tags, where, params, "sequential")
    # Exact: every half value is a float32, and the computation is the float32 one.
    want = run(half.astype(jnp.float32), tags, where, params, "sequential")
    for key in ("ll", "best", "marginals", "loss"):
        assert got[key].dtype == np.float32, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got["d_em"].dtype == dtype  # the gradient has the input's dtype


@pytest.mark.determinism
def test_init_is_uniform_in_plus_minus_0_1_and_reproducible():
    params = crf_init(jax.random.key(3), 40)
    again = crf_init(jax.random.key(3), 40)
    other = crf_init(jax.random.key(4), 40)
    for key, shape in [("transitions", (40, 40)), ("start", (40,)), ("end", (40,))]:
        value = np.asarray(params[key])
        assert value.dtype == np.float32 and value.shape == shape
        assert (np.abs(value) <= 0.1).all() and value.std() > 0.04
        np.testing.assert_array_equal(value, again[key])
        assert not np.array_equal(value, other[key])
    assert not np.array_equal(params["start"], params["end"])


# ----------------------------------------------------------------- bad input

EM, TAGS, WHERE, _, PARAMS = make_data(0, 3, b=2, t=3, lengths=[3, 2])


def _params(**changes):
    return {**PARAMS, **changes}


BAD_CALLS = {
    "emissions rank 2": (lambda: crf_log_likelihood(EM[0], TAGS, PARAMS), "`emissions`"),
    "emissions integer": (lambda: crf_decode(EM.astype(np.int32), PARAMS), "`emissions`"),
    "K = 0": (lambda: crf_marginals(EM[..., :0], PARAMS), "`emissions`"),
    "tags shape": (lambda: crf_loss(EM, TAGS[:, :2], PARAMS), "`tags`"),
    "tags float": (lambda: crf_loss(EM, TAGS.astype(np.float32), PARAMS), "`tags`"),
    "params key": (lambda: crf_decode(EM, {"transitions": PARAMS["transitions"]}), "`params`"),
    "params not a dict": (lambda: crf_decode(EM, [PARAMS["transitions"]]), "`params`"),
    "transitions shape": (
        lambda: crf_log_likelihood(EM, TAGS, _params(transitions=np.zeros((3, 2), np.float32))),
        "`params['transitions']`",
    ),
    "start K mismatch": (
        lambda: crf_loss(EM, TAGS, _params(start=np.zeros(4, np.float32))),
        "`params['start']`",
    ),
    "end K mismatch": (
        lambda: crf_marginals(EM, _params(end=np.zeros(2, np.float32))),
        "`params['end']`",
    ),
    "params integer": (
        lambda: crf_decode(EM, _params(end=np.zeros(3, np.int32))),
        "`params['end']`",
    ),
    "where shape": (lambda: crf_decode(EM, PARAMS, where=WHERE[:, :2]), "`where`"),
    "where int": (lambda: crf_loss(EM, TAGS, PARAMS, where=WHERE.astype(int)), "`where`"),
    "where not prefix": (
        lambda: crf_log_likelihood(EM, TAGS, PARAMS, where=np.array([[1, 0, 1], [1, 1, 0]], bool)),
        "`where`",
    ),
    "where not prefix (decode)": (
        lambda: crf_decode(EM, PARAMS, where=np.array([[0, 1, 1], [1, 1, 0]], bool)),
        "`where`",
    ),
    "tag = K": (lambda: crf_loss(EM, np.where(TAGS == 0, 3, TAGS), PARAMS), "`tags`"),
    "tag < 0": (lambda: crf_log_likelihood(EM, np.full_like(TAGS, -1), PARAMS), "`tags`"),
    "tag does not fit int32": (
        lambda: crf_log_likelihood(EM, np.full(TAGS.shape, 2**40, np.int64), PARAMS),
        "`tags`",
    ),
    "method": (lambda: crf_marginals(EM, PARAMS, method="fast"), "`method`"),
    "reduction": (lambda: crf_loss(EM, TAGS, PARAMS, reduction="mean"), "`reduction`"),
    "num_tags": (lambda: crf_init(jax.random.key(0), 0), "`num_tags`"),
    "tag name": (lambda: crf_allowed_transitions(["O", "I-PER", "E-PER"], "BIO"), "`tag_names`"),
    "tag names empty": (lambda: crf_allowed_transitions([], "BIO"), "`tag_names`"),
    "scheme": (lambda: crf_allowed_transitions(["O"], "IOB2"), "`scheme`"),
    "constraint params": (
        lambda: crf_constrain([PARAMS["transitions"]], *crf_allowed_transitions(["O", "B-X"])),
        "`params`",
    ),
    "constraint shape": (
        lambda: crf_constrain(PARAMS, np.ones((3, 3), bool), np.ones(2, bool), np.ones(3, bool)),
        "`allowed_start`",
    ),
    "constraint int mask": (
        lambda: crf_constrain(PARAMS, np.ones((3, 3), int), np.ones(3, bool), np.ones(3, bool)),
        "`allowed` must be boolean (True = an allowed move)",
    ),
    "arguments swapped": (lambda: crf_decode(PARAMS, EM), "`emissions`"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_naming_the_argument(case):
    call, name = BAD_CALLS[case]
    with pytest.raises((AssertionError, TypeError, ValueError)) as info:
        call()
    assert name in str(info.value)


@pytest.mark.bad_input
def test_padded_tags_may_hold_any_integer_even_beyond_int32():
    tags = np.asarray(TAGS, np.int64).copy()
    tags[1, 2] = 2**40  # row 1 has length 2: step 2 is padding
    for reduction in ("none", "sum"):
        np.testing.assert_array_equal(
            crf_loss(EM, tags, PARAMS, where=WHERE, reduction=reduction),
            crf_loss(EM, TAGS, PARAMS, where=WHERE, reduction=reduction),
        )
    tags[1, 1] = 2**40  # a valid step: an error naming the tags
    with pytest.raises(ValueError, match="`tags`"):
        crf_loss(EM, tags, PARAMS, where=WHERE)


@pytest.mark.numerics
def test_a_row_with_no_allowed_path_is_nan_and_decodes_to_score_minus_inf():
    """log p(tags) = score - log Z with log Z = -inf: the distribution is undefined (NaN,
    documented), never a plausible number; the other rows are untouched."""
    params = dict(PARAMS, start=np.array([-np.inf] * 3, np.float32))
    where = np.array([[True] * 3, [False] * 3])  # row 1 has no step: no path needed
    ll = crf_log_likelihood(EM, TAGS, params, where=where)
    assert np.isnan(ll[0]) and ll[1] == 0
    _, score = crf_decode(EM, params, where=where)
    assert score[0] == -np.inf and score[1] == 0


@pytest.mark.retrace
def test_eager_calls_compile_once_per_shape():
    from jax._src import monitoring

    from tests.test_recurrence import _count_compiles

    em, tags, where, _, params = make_data(seed_of("eager compiles"), 3)
    compiles, listener = _count_compiles()
    try:
        for attempt, emissions in enumerate((em, em + 1)):
            before = len(compiles)
            for method in CRF_METHODS:
                crf_log_likelihood(emissions, tags, params, where=where, method=method)
                crf_loss(emissions, tags, params, where=where, method=method)
                crf_marginals(emissions, params, where=where, method=method)
            crf_decode(emissions, params, where=where)
            assert (len(compiles) == before) if attempt else (len(compiles) > before)
    finally:
        monitoring.unregister_event_duration_listener(listener)


@pytest.mark.property
def test_tag_names_may_be_a_numpy_array():
    names = ["O", "B-PER", "I-PER"]
    for got, want in zip(
        crf_allowed_transitions(np.array(names)), crf_allowed_transitions(names), strict=True
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.bad_input
def test_under_jit_a_bad_row_is_nan_and_the_others_are_untouched():
    em, tags, where, _, params = make_data(seed_of("jit bad rows"), 3)
    good = run(em, tags, where, params, "sequential")
    bad_tags = tags.copy()
    bad_tags[0, 1] = 3  # out of range at a valid step of row 0
    got = run(em, bad_tags, where, params, "sequential")
    assert np.isnan(got["ll"][0]) and np.isnan(got["loss"])
    np.testing.assert_array_equal(got["ll"][1:], good["ll"][1:])
    assert np.isnan(all_losses(em, bad_tags, where, params)["sum"])
    non_prefix = where.copy()
    non_prefix[3] = [True, False, True, False]
    got = run(em, tags, non_prefix, params, "parallel")
    rows = np.arange(B) != 3
    assert np.isnan(got["ll"][3]) and np.isnan(got["best"][3])
    assert np.isnan(got["marginals"][3]).all()
    assert got["path"][3].tolist() == [-1] * T
    np.testing.assert_array_equal(got["path"][rows], good["path"][rows])
    np.testing.assert_allclose(got["ll"][rows], good["ll"][rows], rtol=1e-6, atol=1e-6)
    assert np.isfinite(got["marginals"][rows]).all()
