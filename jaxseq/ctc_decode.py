"""Decoding CTC outputs: greedy (best path) and prefix beam search.

Notation: B batch, T input steps (frames), C classes including the blank.

Both decoders take their input the way :func:`jaxseq.ctc.ctc_loss` does:
``logits`` ``[B, T, C]`` (unnormalised scores), ``logit_lengths`` ``[B]`` (the
valid steps of each row, a prefix), the keyword ``where`` ``[B]`` (False marks a
row of the batch that is padding, not a sequence) and ``blank``. Steps beyond a
row's length and every input of a row where ``where`` is False are never read,
so NaN padding changes nothing.

* :func:`ctc_greedy_decode` takes the most probable class at each valid step
  (the best path), merges adjacent repeats and drops blanks. Pure JAX: it runs
  under ``jit`` and ``vmap`` with no host synchronisation, and returns padded
  arrays.
* :func:`ctc_prefix_beam_search` keeps the ``beam_width`` most probable label
  prefixes at each step, each with the probability of its alignments that end
  in a blank and of those that end in its last label (Hannun et al. 2014), so
  alignments that collapse to the same labels are summed, not compared. It runs
  on the host in NumPy float64 (not jit-able) and returns Python lists.

The greedy decoder finds the labels of the most probable alignment; the labels
with the highest total probability (the sum over all their alignments) can
differ, and prefix beam search finds those when its beam is wide enough. See
``docs/ctc_decoding.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq._reductions import all_valid, check_num_classes
from jaxseq.ctc import _check_blank, _check_concrete_logit_lengths, _check_int_vector, _first_bad

__all__ = ["CTCHypothesis", "ctc_greedy_decode", "ctc_prefix_beam_search"]


class CTCHypothesis(NamedTuple):
    """One decoded label sequence of :func:`ctc_prefix_beam_search`.

    ``labels``: the class ids (no blanks, repeats merged); ``log_prob``: the
    natural log of the total probability of the alignments that collapse to
    ``labels``, as tracked by the beam (see :func:`ctc_prefix_beam_search`).
    """

    labels: list[int]
    log_prob: float


def _check_decode_args(logits, logit_lengths, where, blank):
    logits = _checks.as_array(logits, "logits")
    _checks.check_floating(logits, "logits")
    _checks.check_rank(logits, 3, "logits", "[B, T, C]")
    batch, _, num_classes = logits.shape
    check_num_classes(num_classes, "logits", logits.shape)
    logit_lengths = _check_int_vector(logit_lengths, "logit_lengths", batch)
    where = _checks.optional_mask(
        where, (batch,), "where", "[B] (B from `logits`)", _checks.ROW_MEANING
    )
    _check_blank(blank, num_classes)
    return logits, logit_lengths, where


def _check_concrete_lengths(logit_lengths, max_t: int, where) -> None:
    """``ValueError`` for host ``logit_lengths`` outside ``[0, T]`` in a row where ``where``
    is True (traced lengths, or a traced ``where``, are left to the caller)."""
    if where is None:
        rows = np.ones(np.shape(logit_lengths), bool)
    elif _checks.is_concrete(where):
        rows = np.asarray(where)
    else:
        return
    _check_concrete_logit_lengths(logit_lengths, max_t, rows)


# ----------------------------------------------------------------------------- greedy


def ctc_greedy_decode(
    logits: jax.Array,
    logit_lengths: jax.Array,
    *,
    where: jax.Array | None = None,
    blank: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Best-path CTC decoding: argmax per valid step, merge repeats, drop blanks.

    At each step ``t < logit_lengths[b]`` the class with the largest logit is taken
    (ties go to the lowest class id; the argmax of the logits is that of the
    log-probabilities, so no softmax is computed). Runs of the same class are
    merged into one label, then blanks are dropped: ``a a _ a b b`` gives
    ``a a b``. The repeats are merged and the labels compacted with a cumulative
    sum and one scatter: no sort, no host synchronisation; ``jit`` and ``vmap``
    apply.

    Rows that hold no sequence or a bad one come back as follows:

    * ``where[b]`` False: no labels (tokens all -1, length 0); its inputs are not
      read or checked.
    * NaN in a valid step's logits: tokens all -1 and length **-1** (loud, never a
      plausible decoding; ``jnp.argmax`` alone would silently pick the first NaN's
      class). ``+inf`` and ``-inf`` logits are ordinary values (``+inf`` wins).
    * ``logit_lengths[b]`` outside ``[0, T]``: a ``ValueError`` naming
      ``logit_lengths`` for host data; under ``jit`` (not visible) tokens all -1
      and length -1, as for NaN.

    Args:
      logits: float ``[B, T, C]`` scores (logits or log-probabilities); steps
        ``t >= logit_lengths[b]`` may hold anything.
      logit_lengths: integer ``[B]``, valid steps per sequence, in ``[0, T]``.
      where: optional bool ``[B]`` (default: every row).
      blank: the blank's class id, in ``[0, C)``.

    Returns:
      ``(tokens, lengths)``: int32 ``[B, T]`` labels, left aligned and padded with
      -1 (a sequence of T steps has at most T labels), and int32 ``[B]`` label
      counts.

    >>> import jax, jax.numpy as jnp
    >>> from jaxseq.ctc_decode import ctc_greedy_decode
    >>> best = jnp.array([[0, 3, 3, 0, 3, 2, 2, 0, 1]])   # the argmax path; 0 is the blank
    >>> logits = jax.nn.one_hot(best, 4)                  # [1, 9, 4]
    >>> tokens, lengths = ctc_greedy_decode(logits, jnp.array([8]))
    >>> tokens[0, : int(lengths[0])].tolist(), int(lengths[0])
    ([3, 3, 2], 3)
    """
    logits, logit_lengths, where = _check_decode_args(logits, logit_lengths, where, blank)
    batch, max_t, _ = logits.shape
    _check_concrete_lengths(logit_lengths, max_t, where)
    where_B = all_valid(where, (batch,))
    bad_length_B = (logit_lengths < 0) | (logit_lengths > max_t)
    steps_T = jnp.arange(max_t, dtype=jnp.int32)
    valid_BT = (steps_T[None, :] < logit_lengths[:, None]) & (where_B & ~bad_length_B)[:, None]

    best_BT = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    nan_B = jnp.any(valid_BT & jnp.any(jnp.isnan(logits), axis=-1), axis=1)
    # The class of the step before (-1 before the first): validity is a prefix, so a valid
    # step's predecessor is valid too.
    previous_BT = jnp.pad(best_BT, ((0, 0), (1, 0)), constant_values=-1)[:, :max_t]
    keep_BT = valid_BT & (best_BT != blank) & (best_BT != previous_BT)
    # The n-th kept step goes to slot n; the others to slot T, which the scatter drops.
    slot_BT = jnp.where(keep_BT, jnp.cumsum(keep_BT, axis=1, dtype=jnp.int32) - 1, max_t)
    rows_B1 = jnp.arange(batch, dtype=jnp.int32)[:, None]
    tokens_BT = (
        jnp.full((batch, max_t), -1, jnp.int32).at[rows_B1, slot_BT].set(best_BT, mode="drop")
    )
    lengths_B = jnp.sum(keep_BT, axis=1, dtype=jnp.int32)

    broken_B = where_B & (bad_length_B | nan_B)
    tokens_BT = jnp.where(broken_B[:, None], -1, tokens_BT)
    lengths_B = jnp.where(broken_B, -1, lengths_B)
    return tokens_BT, lengths_B


# ----------------------------------------------------------------------------- beam search


#: A beam: ``(prefix, (log_b, log_nb))`` per entry, best first.
_Beam = list[tuple[tuple[int, ...], tuple[float, float]]]


def _host(x, name: str) -> np.ndarray:
    if not _checks.is_concrete(x):
        raise TypeError(
            f"`{name}` must be a concrete (host) array, not a traced value: "
            f"ctc_prefix_beam_search runs on the host (call it outside jit)"
        )
    return np.asarray(x)


def _log_softmax(z_TC: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (NaN where a row has NaN, ``+inf`` or only ``-inf``)."""
    z_TC = z_TC.astype(np.float64)
    with np.errstate(invalid="ignore"):
        top_T1 = np.max(z_TC, axis=-1, keepdims=True) if z_TC.size else z_TC[:, :1]
        shifted = z_TC - top_T1
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _logaddexp(a: float, b: float) -> float:
    return float(np.logaddexp(a, b))


def _rank_key(item):
    """Higher log-probability first; ties: the shorter prefix, then the lexicographically
    smaller one (a deterministic order, whatever order the candidates were made in)."""
    prefix, (log_b, log_nb) = item
    return (-_logaddexp(log_b, log_nb), len(prefix), prefix)


def _beam_step(beam: _Beam, log_p_C: np.ndarray, blank: int, beam_width: int) -> _Beam:
    """One step of prefix beam search.

    ``beam``: list of ``(prefix, (log_b, log_nb))``, ``prefix`` a tuple of class ids,
    ``log_b``/``log_nb`` the log-probabilities of its alignments so far that end in a
    blank / in its last label. Returns the next beam (at most ``beam_width`` entries, each
    with a finite total, best first).
    """
    num_classes = log_p_C.shape[0]
    neg_inf = -np.inf
    log_b_W = np.array([b for _, (b, _) in beam])
    log_nb_W = np.array([nb for _, (_, nb) in beam])
    total_W = np.logaddexp(log_b_W, log_nb_W)
    last_W = np.array([p[-1] if p else -1 for p, _ in beam], dtype=np.int64)
    has_last = last_W >= 0

    # The prefix stays: a blank, or its last label once more (merged with it).
    stay_b_W = total_W + log_p_C[blank]
    stay_nb_W = np.where(has_last, log_nb_W + log_p_C[np.maximum(last_W, 0)], neg_inf)
    candidates = {p: [float(stay_b_W[i]), float(stay_nb_W[i])] for i, (p, _) in enumerate(beam)}

    # The prefix grows by class c: from any alignment, except that repeating its last label
    # needs an alignment that ends in a blank (otherwise the two would merge).
    grow_WC = total_W[:, None] + log_p_C[None, :]
    rows = np.flatnonzero(has_last)
    grow_WC[rows, last_W[rows]] = log_b_W[rows] + log_p_C[last_W[rows]]
    grow_WC[:, blank] = neg_inf
    # Growths that reach a prefix already in the beam add to its mass.
    index = {p: i for i, (p, _) in enumerate(beam)}
    for p, _ in beam:
        if p and p[:-1] in index:
            i, c = index[p[:-1]], p[-1]
            candidates[p][1] = _logaddexp(candidates[p][1], float(grow_WC[i, c]))
            grow_WC[i, c] = neg_inf
    # The other growths are new, distinct prefixes whose score is their growth alone, so
    # only those at or above the beam_width-th best can survive: the rest are not built.
    flat = grow_WC.ravel()
    alive = np.flatnonzero(flat > neg_inf)
    if alive.size > beam_width:
        threshold = np.partition(flat[alive], alive.size - beam_width)[alive.size - beam_width]
        alive = alive[flat[alive] >= threshold]
    for k in alive.tolist():
        i, c = divmod(k, num_classes)
        candidates[beam[i][0] + (c,)] = [neg_inf, float(flat[k])]

    ranked = sorted(
        ((p, (b, nb)) for p, (b, nb) in candidates.items() if max(b, nb) > neg_inf),
        key=_rank_key,
    )
    return ranked[:beam_width]


def _beam_search_row(
    log_p_TC: np.ndarray, blank: int, beam_width: int, top_k: int
) -> list[CTCHypothesis]:
    # Before the first step: the empty prefix, as if after a blank.
    beam: _Beam = [((), (0.0, -np.inf))]
    for log_p_C in log_p_TC:
        beam = _beam_step(beam, log_p_C, blank, beam_width)
    return [CTCHypothesis([int(c) for c in p], _logaddexp(b, nb)) for p, (b, nb) in beam[:top_k]]


def ctc_prefix_beam_search(
    logits,
    logit_lengths,
    *,
    where=None,
    blank: int = 0,
    beam_width: int = 8,
    top_k: int = 1,
) -> list[list[CTCHypothesis]]:
    """CTC prefix beam search (Hannun et al. 2014), on the host in NumPy float64.

    Takes logits (log-softmax is applied here, per step, in float64; log-probabilities
    may be passed too, as log-softmax leaves them as they are). Each step extends the
    beam's label prefixes by a blank, by their last label (merged with it) or by a new
    label, summing the probabilities of alignments that reach the same prefix, with
    separate sums for alignments ending in a blank and in a label (so ``a _ a`` gives
    ``a a`` and ``a a`` gives ``a``); then keeps the ``beam_width`` most probable
    prefixes. Candidates that cannot be reached (probability 0) are dropped.

    Scores: a hypothesis' ``log_prob`` is the log of the total probability of the
    alignments that collapse to its labels and whose every prefix stayed in the beam.
    With no pruning (``beam_width`` at least the number of prefixes with nonzero
    probability) it is exactly ``log p(labels | logits)``, which is
    ``-jaxseq.ctc_loss(..., reduction="none")``; with pruning it is a lower bound of it,
    and the returned labels need not be the most probable ones.

    Ties: prefixes of equal log-probability rank shorter first, then lexicographically
    smaller (by class id), so the result does not depend on the order candidates are made.

    ``beam_width=1`` is not greedy decoding: it keeps the most probable *prefix* (summed
    over its alignments) at each step, greedy the most probable class; the results can
    differ either way.

    Not jit-able: the inputs must be host data (NumPy arrays or concrete JAX arrays);
    the loop runs in Python, about ``T * beam_width * C`` operations per row.

    Args:
      logits: float ``[B, T, C]``; steps ``t >= logit_lengths[b]`` may hold anything,
        valid steps must not hold NaN or ``+inf`` or be ``-inf`` for every class
        (``ValueError`` naming ``logits``).
      logit_lengths: integer ``[B]`` in ``[0, T]``.
      where: optional bool ``[B]`` (default: every row); rows where it is False are
        not read or checked and decode to ``[]`` (no hypotheses).
      blank: the blank's class id, in ``[0, C)``.
      beam_width: prefixes kept per step, ``>= 1``.
      top_k: hypotheses returned per row, in ``[1, beam_width]``.

    Returns:
      For each row, a list of at most ``top_k`` :class:`CTCHypothesis`
      ``(labels, log_prob)``, best first (fewer when fewer prefixes have nonzero
      probability; a row with no steps gives ``[CTCHypothesis([], 0.0)]``).

    >>> import numpy as np
    >>> from jaxseq.ctc_decode import ctc_prefix_beam_search
    >>> # Two steps of p(blank) = 0.6, p(a) = 0.4: the best path is "blank blank" (0.36),
    >>> # but "a" (a a, a _, _ a) has 0.16 + 0.24 + 0.24 = 0.64.
    >>> logits = np.log([[[0.6, 0.4], [0.6, 0.4]]])
    >>> [(h.labels, round(float(np.exp(h.log_prob)), 4))
    ...  for h in ctc_prefix_beam_search(logits, [2], beam_width=2, top_k=2)[0]]
    [([1], 0.64), ([], 0.36)]
    """
    _checks.check_int(beam_width, "beam_width", 1)
    _checks.check_int(top_k, "top_k", 1)
    if top_k > beam_width:
        raise ValueError(
            f"`top_k` must be <= `beam_width` ({beam_width}): the beam holds at most "
            f"beam_width hypotheses, got {top_k}"
        )
    logits, logit_lengths, where = _check_decode_args(logits, logit_lengths, where, blank)
    logits_np = _host(logits, "logits")
    lengths_np = _host(logit_lengths, "logit_lengths")
    rows = np.ones(lengths_np.shape, bool) if where is None else _host(where, "where")
    batch, max_t, _ = logits_np.shape
    _check_concrete_lengths(lengths_np, max_t, rows)

    log_probs: list[np.ndarray | None] = []
    for b in range(batch):
        if not rows[b]:
            log_probs.append(None)
            continue
        log_p_TC = _log_softmax(logits_np[b, : int(lengths_np[b])])
        bad_T = np.any(np.isnan(log_p_TC), axis=-1)
        if bad_T.any():
            t = _first_bad(bad_T)
            raise ValueError(
                f"`logits` at sequence {b}, step {t} (a valid step) hold NaN or +inf, or are "
                f"-inf for every class: no distribution over the classes"
            )
        log_probs.append(log_p_TC)
    return [
        [] if log_p is None else _beam_search_row(log_p, blank, beam_width, top_k)
        for log_p in log_probs
    ]
