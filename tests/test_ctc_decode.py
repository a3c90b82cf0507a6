"""CTC decoding: greedy against a plain-Python best path, prefix beam search against
brute-force enumeration of every alignment and against jaxseq's CTC loss, hand-computed
cases where the two decoders differ, padding, transformations and checks."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq.ctc import ctc_loss
from jaxseq.ctc_decode import CTCHypothesis, ctc_greedy_decode, ctc_prefix_beam_search

B, T, C = 8, 9, 5
LENGTHS = np.array([T, 0, 1, 4, T, 7, 2, 5])


def random_logits(seed: int, *, ties: bool, b=B, t=T, c=C) -> np.ndarray:
    """Float32 ``[b, t, c]``; with ``ties``, small integers, so equal maxima (and repeated
    classes) are common."""
    rng = np.random.default_rng(seed)
    if ties:
        return rng.integers(0, 3, size=(b, t, c)).astype(np.float32)
    return (rng.normal(size=(b, t, c)) * 2.0).astype(np.float32)


def poison_padding(logits, lengths, value) -> np.ndarray:
    beyond = np.arange(logits.shape[1])[None, :] >= np.asarray(lengths)[:, None]
    return np.where(beyond[..., None], np.float32(value), logits).astype(logits.dtype)


# ---------------------------------------------------------------- independent references


def reference_greedy(logits_TC, length: int, blank: int) -> list[int]:
    """Plain Python: the first largest logit per step, merge runs, drop blanks."""
    path = []
    for t in range(length):
        row = [float(v) for v in logits_TC[t]]
        best = 0
        for k in range(1, len(row)):
            if row[k] > row[best]:
                best = k
        path.append(best)
    out = []
    for t, k in enumerate(path):
        if k != blank and (t == 0 or path[t - 1] != k):
            out.append(k)
    return out


def collapse(path, blank: int) -> tuple[int, ...]:
    return tuple(k for t, k in enumerate(path) if k != blank and (t == 0 or path[t - 1] != k))


def brute_force_log_probs(logits_TC, blank: int) -> dict[tuple[int, ...], float]:
    """log p(labels) for every labeling with nonzero probability: the sum over all C^T
    alignments (float64, each alignment's probability a product of softmaxes)."""
    z = np.asarray(logits_TC, np.float64)
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(z.shape[1]), repeat=z.shape[0]):
        p = math.prod(float(probs[t, k]) for t, k in enumerate(path))
        if p > 0.0:
            labels = collapse(path, blank)
            totals[labels] = totals.get(labels, 0.0) + p
    return {labels: math.log(p) for labels, p in totals.items()}


def exact_log_probs_by_loss(logits, lengths, hypotheses, blank: int) -> np.ndarray:
    """``-ctc_loss`` (float64, reduction "none") of each row's hypotheses, ``[B, K]`` (NaN
    where a row has fewer than K): every (row, hypothesis) pair is one row of one call, in
    a batch of 64 rows (the rest ``where=False``) with S = T labels, one shape per T and C."""
    pairs = [(b, k, h.labels) for b, row in enumerate(hypotheses) for k, h in enumerate(row)]
    n, s = len(pairs), logits.shape[1]
    assert n <= 64
    pairs += [(0, 0, [])] * (64 - n)
    rows = np.array([b for b, _, _ in pairs])
    labels = np.array([q + [-1] * (s - len(q)) for _, _, q in pairs], np.int32)  # -1: not read
    with jax.enable_x64(True):
        loss = ctc_loss(
            jnp.asarray(logits[rows], jnp.float64),
            np.asarray(lengths)[rows],
            labels,
            np.array([len(q) for _, _, q in pairs]),
            where=np.arange(64) < n,
            blank=blank,
            reduction="none",
        )
        assert loss.dtype == jnp.float64
    out = np.full((len(hypotheses), max(len(row) for row in hypotheses)), np.nan)
    out[rows[:n], [k for _, k, _ in pairs[:n]]] = -np.asarray(loss)[:n]
    return out


def number_of_prefixes(t: int, c: int) -> int:
    """Label sequences of length <= t over c - 1 labels: an upper bound of the prefixes a
    beam can ever hold, so a beam this wide never prunes."""
    return sum((c - 1) ** u for u in range(t + 1))


# ---------------------------------------------------------------- greedy


@pytest.mark.reference
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("blank", [0, 2, C - 1])
def test_greedy_matches_plain_python_best_path(ties, blank):
    logits = random_logits(1 + ties, ties=ties)
    tokens, lengths = ctc_greedy_decode(logits, LENGTHS, blank=blank)
    assert tokens.dtype == jnp.int32 and tokens.shape == (B, T)
    assert lengths.dtype == jnp.int32 and lengths.shape == (B,)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    for b in range(B):
        want = reference_greedy(logits[b], int(LENGTHS[b]), blank)
        assert lengths[b] == len(want)
        assert tokens[b, : len(want)].tolist() == want
        assert np.all(tokens[b, len(want) :] == -1)
    assert lengths[1] == 0  # the row with no steps


@pytest.mark.reference
def test_greedy_merges_runs_and_keeps_repeats_split_by_a_blank():
    path = np.array([[2, 0, 1, 1, 0, 0, 1, 3, 3, 2, 0, 2]])  # blank 0
    logits = np.asarray(jax.nn.one_hot(path, 4)) * 5.0
    tokens, lengths = ctc_greedy_decode(logits, np.array([12]))
    assert int(lengths[0]) == 6
    assert np.asarray(tokens)[0].tolist() == [2, 1, 1, 3, 2, 2] + [-1] * 6


@pytest.mark.padding_invariance
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_greedy_padding_and_rows_where_false_change_nothing(poison):
    logits = random_logits(3, ties=True)
    where = np.array([True, True, False, True, True, False, True, True])
    clean = ctc_greedy_decode(logits, LENGTHS, where=where, blank=1)
    poisoned = poison_padding(logits, LENGTHS, poison)
    poisoned[~where] = np.float32(poison)
    bad_lengths = np.where(where, LENGTHS, T + 3)  # rows where False are not checked
    got = jax.jit(lambda z, n: ctc_greedy_decode(z, n, where=where, blank=1))(poisoned, bad_lengths)
    for x, y in zip(clean, got):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    tokens, lengths = (np.asarray(x) for x in got)
    assert np.all(tokens[~where] == -1) and np.all(lengths[~where] == 0)
    # ...and the valid rows decode as they do alone.
    alone = ctc_greedy_decode(logits[where], LENGTHS[where], blank=1)
    np.testing.assert_array_equal(tokens[where], np.asarray(alone[0]))
    np.testing.assert_array_equal(lengths[where], np.asarray(alone[1]))


@pytest.mark.variants
def test_greedy_jit_vmap_and_eager_agree():
    logits = random_logits(4, ties=True)
    eager = ctc_greedy_decode(logits, LENGTHS, blank=3)
    jitted = jax.jit(lambda z, n: ctc_greedy_decode(z, n, blank=3))(logits, LENGTHS)
    # vmap over a leading axis of batches: [2, B, T, C] -> ([2, B, T], [2, B]).
    stacked = np.stack([logits, logits[::-1]])
    lengths2 = np.stack([LENGTHS, LENGTHS[::-1]])
    mapped = jax.vmap(lambda z, n: ctc_greedy_decode(z, n, blank=3))(stacked, lengths2)
    for e, j, m in zip(eager, jitted, mapped):
        np.testing.assert_array_equal(np.asarray(e), np.asarray(j))
        np.testing.assert_array_equal(np.asarray(e), np.asarray(m)[0])
        np.testing.assert_array_equal(np.asarray(e)[::-1], np.asarray(m)[1])


@pytest.mark.numerics
def test_greedy_nan_at_a_valid_step_and_lengths_out_of_range_under_jit_are_loud():
    logits = random_logits(5, ties=False)
    logits[3, 2, 1] = np.nan  # a valid step of row 3 (length 4)
    logits[4, 0, :] = np.inf  # +inf is an ordinary value: ties to the lowest class
    f = jax.jit(lambda z, n: ctc_greedy_decode(z, n))
    tokens, lengths = (np.asarray(x) for x in f(logits, LENGTHS))
    assert lengths[3] == -1 and np.all(tokens[3] == -1)
    assert tokens[4, 0] == reference_greedy(logits[4], T, 0)[0]  # class 1 wins step 0
    others = np.arange(B) != 3
    want = [reference_greedy(logits[b], int(LENGTHS[b]), 0) for b in np.flatnonzero(others)]
    assert lengths[others].tolist() == [len(w) for w in want]
    bad = LENGTHS.copy()
    bad[[0, 2]] = [T + 1, -2]
    tokens, lengths = (np.asarray(x) for x in f(random_logits(6, ties=False), bad))
    assert lengths[[0, 2]].tolist() == [-1, -1] and np.all(tokens[[0, 2]] == -1)
    assert np.all(lengths[[1, 3, 4, 5, 6, 7]] >= 0)


@pytest.mark.numerics
def test_greedy_empty_axes():
    tokens, lengths = ctc_greedy_decode(np.zeros((3, 0, 4), np.float32), np.zeros(3, np.int32))
    assert tokens.shape == (3, 0) and np.asarray(lengths).tolist() == [0, 0, 0]
    tokens, lengths = ctc_greedy_decode(np.zeros((0, 5, 4), np.float32), np.zeros(0, np.int32))
    assert tokens.shape == (0, 5) and lengths.shape == (0,)


# ---------------------------------------------------------------- beam search: oracles


@pytest.mark.reference
@pytest.mark.parametrize(
    ("c", "t", "blank"), [(3, 0, 0), (3, 1, 0), (3, 3, 1), (3, 5, 0), (3, 5, 2), (4, 4, 0)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_unpruned_beam_is_brute_force_enumeration_of_alignments(c, t, blank, seed):
    logits = random_logits(10 + seed, ties=False, b=1, t=t, c=c)
    want = brute_force_log_probs(logits[0], blank)
    width = number_of_prefixes(t, c)
    got = ctc_prefix_beam_search(logits, [t], blank=blank, beam_width=width, top_k=width)[0]
    # Every labeling with nonzero probability, each with its exact total.
    assert sorted(tuple(h.labels) for h in got) == sorted(want)
    for h in got:
        np.testing.assert_allclose(h.log_prob, want[tuple(h.labels)], rtol=1e-12, atol=1e-12)
    best = max(want, key=want.get)
    assert tuple(got[0].labels) == best
    scores = [h.log_prob for h in got]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(np.logaddexp.reduce(scores), 0.0, atol=1e-12)  # sums to 1


@pytest.mark.loss_oracle
@pytest.mark.parametrize("blank", [0, 3])
def test_unpruned_beam_scores_equal_minus_ctc_loss(blank):
    logits = random_logits(20, ties=False, t=5, c=4)
    lengths = np.array([5, 0, 1, 3, 5, 4, 2, 5])
    width = number_of_prefixes(5, 4)
    got = ctc_prefix_beam_search(logits, lengths, blank=blank, beam_width=width, top_k=5)
    assert [len(h) for h in got] == [5, 1, 4, 5, 5, 5, 5, 5]  # 1 step: 3 labels or none
    assert got[1] == [CTCHypothesis([], 0.0)]
    want = exact_log_probs_by_loss(logits, lengths, got, blank)
    scores = np.array([[h.log_prob for h in row] + [np.nan] * (5 - len(row)) for row in got])
    np.testing.assert_allclose(scores, want, rtol=1e-10, atol=1e-10)  # nan == nan


@pytest.mark.loss_oracle
@pytest.mark.parametrize("beam_width", [1, 3, 8])
def test_pruned_beam_scores_are_lower_bounds_of_minus_ctc_loss(beam_width):
    logits = random_logits(21, ties=False, t=14, c=6) * np.float32(0.5)  # flat: much pruning
    lengths = np.array([14, 0, 1, 6, 14, 11, 3, 9])
    got = ctc_prefix_beam_search(logits, lengths, beam_width=beam_width, top_k=beam_width)
    want = exact_log_probs_by_loss(logits, lengths, got, 0)
    for b, row in enumerate(got):
        for k, h in enumerate(row):
            assert h.log_prob <= want[b, k] + 1e-12, (b, k)
    # Rows short enough never to be pruned are exact.
    np.testing.assert_allclose(got[2][0].log_prob, want[2, 0], rtol=1e-10)


@pytest.mark.loss_oracle
def test_beam_search_finds_the_labeling_greedy_misses():
    # p(blank) = 0.6, p(a) = 0.4 at both steps: the best path blank-blank gives "" (0.36);
    # "a" has a a, a _, _ a: 0.16 + 0.24 + 0.24 = 0.64.
    logits = np.log(np.array([[[0.6, 0.4], [0.6, 0.4]]]))
    tokens, lengths = ctc_greedy_decode(logits, np.array([2]))
    assert int(lengths[0]) == 0
    best = ctc_prefix_beam_search(logits, [2], beam_width=2, top_k=2)[0]
    assert [h.labels for h in best] == [[1], []]
    np.testing.assert_allclose(np.exp([h.log_prob for h in best]), [0.64, 0.36], rtol=1e-12)
    # A beam of 1 keeps "" after the first step (0.6 > 0.4) and never sees "a": as greedy.
    (one,) = ctc_prefix_beam_search(logits, [2], beam_width=1)[0]
    assert one.labels == [] and np.isclose(np.exp(one.log_prob), 0.36, rtol=1e-12)


@pytest.mark.loss_oracle
def test_beam_width_one_is_not_greedy():
    # Classes (blank, a, b). Step 0: blank 0.4, a 0.6, b 0 (a -inf logit); step 1: blank
    # 0.44, a 0.10, b 0.46. Exact: "" 0.176, "a" 0.06 + 0.264 + 0.04 = 0.364, "b" 0.184,
    # "ab" 0.276. Greedy takes a then b: "ab". A beam of 1 keeps "a" after step 0 (0.6),
    # then scores "a" with only the alignments from "a": 0.6 * (0.44 + 0.10) = 0.324 (a
    # lower bound of 0.364, as _ a was pruned with "") against "ab" 0.276: it returns "a".
    with np.errstate(divide="ignore"):
        logits = np.log(np.array([[[0.4, 0.6, 0.0], [0.44, 0.10, 0.46]]]))
    tokens, lengths = ctc_greedy_decode(logits, np.array([2]))
    assert np.asarray(tokens)[0, : int(lengths[0])].tolist() == [1, 2]
    (one,) = ctc_prefix_beam_search(logits, [2], beam_width=1)[0]
    assert one.labels == [1]
    np.testing.assert_allclose(np.exp(one.log_prob), 0.324, rtol=1e-12)
    wide = ctc_prefix_beam_search(logits, [2], beam_width=4, top_k=4)[0]
    assert [h.labels for h in wide] == [[1], [1, 2], [2], []]
    np.testing.assert_allclose(
        np.exp([h.log_prob for h in wide]), [0.364, 0.276, 0.184, 0.176], rtol=1e-12
    )


@pytest.mark.determinism
def test_ties_rank_shorter_then_lexicographically_smaller():
    uniform = np.zeros((1, 2, 3), np.float32)  # 1/3 per class per step
    got = ctc_prefix_beam_search(uniform, [2], beam_width=5, top_k=5)[0]
    # "a", "b": 3/9 each; "", "ab", "ba": 1/9 each.
    assert [h.labels for h in got] == [[1], [2], [], [1, 2], [2, 1]]
    assert got[0].log_prob == got[1].log_prob and got[2].log_prob == got[3].log_prob
    # A narrower beam keeps the first of the tied ones in that order.
    assert [h.labels for h in ctc_prefix_beam_search(uniform, [1], beam_width=2, top_k=2)[0]] == [
        [],
        [1],
    ]
    # Two tied new prefixes compete for a beam of one (and beat the blank): the smaller.
    (one,) = ctc_prefix_beam_search(np.log([[[0.2, 0.4, 0.4]]]), [1], beam_width=1)[0]
    assert one.labels == [1] and np.isclose(one.log_prob, np.log(0.4), rtol=1e-12)
    # Step 0 ranks "b" (0.4) above "a" (0.2), so "b a" is made before "a b"; they tie at
    # 0.08 and rank by their labels, not by the order they were made in.
    two = np.log([[[0.4, 0.2, 0.4], [0.4, 0.2, 0.4]]])
    got = ctc_prefix_beam_search(two, [2], beam_width=5, top_k=5)[0]
    assert [h.labels for h in got] == [[2], [1], [], [1, 2], [2, 1]]  # .48 .2 .16 .08 .08
    np.testing.assert_allclose(
        np.exp([h.log_prob for h in got]), [0.48, 0.2, 0.16, 0.08, 0.08], rtol=1e-12
    )
    assert got[3].log_prob == got[4].log_prob


@pytest.mark.padding_invariance
def test_beam_padding_and_rows_where_false_change_nothing():
    logits = random_logits(30, ties=False)
    where = np.array([True, False, True, True, False, True, True, True])
    clean = ctc_prefix_beam_search(logits, LENGTHS, where=where, beam_width=4, top_k=3)
    poisoned = poison_padding(logits, LENGTHS, np.nan)
    poisoned[~where] = np.nan
    bad_lengths = np.where(where, LENGTHS, -4)
    got = ctc_prefix_beam_search(poisoned, bad_lengths, where=where, beam_width=4, top_k=3)
    assert got == clean
    assert [len(h) for h in got] == [3, 0, 3, 3, 0, 3, 3, 3]
    alone = ctc_prefix_beam_search(logits[where], LENGTHS[where], beam_width=4, top_k=3)
    assert [row for row, w in zip(got, where) if w] == alone


@pytest.mark.variants
def test_beam_accepts_log_probabilities_and_jax_arrays():
    logits = random_logits(31, ties=False)
    from_logits = ctc_prefix_beam_search(logits, LENGTHS, beam_width=3, top_k=2)
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    from_log_probs = ctc_prefix_beam_search(log_probs, jnp.asarray(LENGTHS), beam_width=3, top_k=2)
    for a, b in zip(from_logits, from_log_probs):
        assert [h.labels for h in a] == [h.labels for h in b]
        np.testing.assert_allclose([h.log_prob for h in a], [h.log_prob for h in b], atol=1e-5)


# ---------------------------------------------------------------- bad input


def _bad_calls():
    """name -> (call, the argument its message must name, the exception raised)."""
    logits = random_logits(40, ties=False)
    G, S = ctc_greedy_decode, ctc_prefix_beam_search
    A, V, TE = AssertionError, ValueError, TypeError
    nan_valid = logits.copy()
    nan_valid[3, 1, 2] = np.nan
    inf_valid = logits.copy()
    inf_valid[0, 0, 0] = np.inf
    all_neg_inf = logits.copy()
    all_neg_inf[0, 4, :] = -np.inf
    calls = {}
    for name, fn in (("greedy", G), ("beam", S)):
        calls |= {
            f"{name} logits rank": (lambda fn=fn: fn(logits[0], LENGTHS), "logits", A),
            f"{name} logits int": (
                lambda fn=fn: fn(logits.astype(np.int32), LENGTHS),
                "logits",
                A,
            ),
            f"{name} no classes": (lambda fn=fn: fn(logits[..., :0], LENGTHS), "logits", A),
            f"{name} lengths shape": (
                lambda fn=fn: fn(logits, LENGTHS[:3]),
                "logit_lengths",
                A,
            ),
            f"{name} lengths float": (
                lambda fn=fn: fn(logits, LENGTHS.astype(np.float32)),
                "logit_lengths",
                A,
            ),
            f"{name} lengths > T": (lambda fn=fn: fn(logits, LENGTHS + T), "logit_lengths", V),
            f"{name} lengths negative": (
                lambda fn=fn: fn(logits, LENGTHS - T - 1),
                "logit_lengths",
                V,
            ),
            f"{name} where shape": (
                lambda fn=fn: fn(logits, LENGTHS, where=np.ones(3, bool)),
                "where",
                A,
            ),
            f"{name} where int": (
                lambda fn=fn: fn(logits, LENGTHS, where=np.ones(B, int)),
                "where",
                A,
            ),
            f"{name} blank = C": (lambda fn=fn: fn(logits, LENGTHS, blank=C), "blank", V),
            f"{name} blank negative": (lambda fn=fn: fn(logits, LENGTHS, blank=-1), "blank", V),
            f"{name} blank bool": (lambda fn=fn: fn(logits, LENGTHS, blank=True), "blank", TE),
        }
    return calls | {
        "beam_width 0": (lambda: S(logits, LENGTHS, beam_width=0), "beam_width", V),
        "beam_width float": (lambda: S(logits, LENGTHS, beam_width=2.0), "beam_width", TE),
        "top_k 0": (lambda: S(logits, LENGTHS, top_k=0), "top_k", V),
        "top_k > beam_width": (lambda: S(logits, LENGTHS, beam_width=2, top_k=3), "top_k", V),
        "NaN at a valid step": (lambda: S(nan_valid, LENGTHS), "logits", V),
        "+inf at a valid step": (lambda: S(inf_valid, LENGTHS), "logits", V),
        "every class -inf": (lambda: S(all_neg_inf, LENGTHS), "logits", V),
        "traced under jit": (
            lambda: jax.jit(lambda z: jnp.zeros(()) if S(z, LENGTHS) else 0.0)(logits),
            "logits",
            TE,
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
def test_nan_beyond_the_length_or_in_rows_where_false_is_no_error():
    logits = random_logits(41, ties=False)
    logits[3, 6, 0] = np.nan  # row 3 has 4 steps
    logits[0, 2, :] = np.nan  # row 0 is padding
    where = np.ones(B, bool)
    where[0] = False
    ctc_prefix_beam_search(logits, LENGTHS, where=where)
    with pytest.raises(ValueError, match="sequence 0, step 2"):
        ctc_prefix_beam_search(logits, LENGTHS)
