"""Linear-chain conditional random field (CRF): log-likelihood, loss, Viterbi, marginals.

Notation: B batch, T time, K tags. ``params`` is a dict (:func:`crf_init`)::

    {"transitions": [K, K], "start": [K], "end": [K]}

``transitions[i, j]`` scores a move from tag i to tag j. With T_i valid steps, the
score of a tag path ``y`` of row i is

    start[y_0] + sum_{t < T_i} emissions[t, y_t]
               + sum_{1 <= t < T_i} transitions[y_{t-1}, y_t] + end[y_{T_i - 1}]

and ``log p(y | x) = score(y) - log Z`` with ``log Z`` the log-sum-exp of the scores
of every path of length T_i. The specification is ``docs/crf.md``:

* ``where`` (bool ``[B, T]``, keyword-only, None = every step valid) must be a
  prefix mask, as :func:`jaxseq.length_mask` makes. Emissions and tags at padded
  steps are replaced by constants before any arithmetic: they may hold anything
  (NaN, inf, -100) and change neither values nor gradients. A row with no valid
  step has log-likelihood 0 with gradient 0, and a decoded path of -1s.
* Computed in log space with exact ``-inf``: a ``-inf`` transition, start or end
  score (a forbidden move, :func:`crf_constrain`) rules those paths out, and
  log-sum-exps over nothing but ``-inf`` have gradient 0, never NaN. Emissions of
  float32, bfloat16 and float16 are computed (and returned) in float32; float64
  stays float64.
* ``method="sequential"`` (``lax.scan``, O(T) depth, O(T K^2) work) or
  ``"parallel"`` (``lax.associative_scan`` over log-semiring K x K matrix
  products, O(log T) depth, O(T K^3) work and memory): the same values up to
  float rounding.
* Checks: shapes and dtypes are a chex ``AssertionError`` naming the argument.
  On host data, a ``where`` row that is not a prefix and a tag outside ``[0, K)``
  at a valid step are a ``ValueError`` naming ``where`` / ``tags``; under ``jit``
  (values not visible) such a row gives NaN in every float output of that row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq._compiled import compiled
from jaxseq._reductions import REDUCTIONS, TERM_REDUCTIONS, LossTerms, compute_dtype, safe_divide

__all__ = [
    "CRF_METHODS",
    "CRF_REDUCTIONS",
    "crf_allowed_transitions",
    "crf_constrain",
    "crf_decode",
    "crf_init",
    "crf_log_likelihood",
    "crf_loss",
    "crf_loss_terms",
    "crf_marginals",
]

#: The forward algorithms: ``"sequential"`` (``lax.scan``) and ``"parallel"``
#: (``lax.associative_scan``, O(log T) depth).
CRF_METHODS = ("sequential", "parallel")
#: The reductions of :func:`crf_loss`: the names of ``jaxseq.losses.REDUCTIONS``
#: (``"none"`` is per sequence, ``[B]``).
CRF_REDUCTIONS = REDUCTIONS
_PARAM_SHAPES = {"transitions": "[K, K]", "start": "[K]", "end": "[K]"}
_SCHEMES = {"BIO": "BI", "BIOES": "BIES"}


def crf_init(key: jax.Array, num_tags: int) -> dict[str, jax.Array]:
    """CRF parameters, each drawn from U(-0.1, 0.1) in float32 (as ``torchcrf.CRF``).

    Args:
      key: a JAX PRNG key.
      num_tags: K >= 1.

    Returns:
      ``{"transitions": [K, K], "start": [K], "end": [K]}``; ``transitions[i, j]``
      scores a move from tag i to tag j.

    >>> import jax
    >>> from jaxseq.crf import crf_init
    >>> {k: v.shape for k, v in crf_init(jax.random.key(0), 3).items()}
    {'transitions': (3, 3), 'start': (3,), 'end': (3,)}
    """
    _checks.check_int(num_tags, "num_tags", 1)
    k_trans, k_start, k_end = jax.random.split(key, 3)
    uniform = lambda k, shape: jax.random.uniform(k, shape, jnp.float32, -0.1, 0.1)
    return {
        "transitions": uniform(k_trans, (num_tags, num_tags)),
        "start": uniform(k_start, (num_tags,)),
        "end": uniform(k_end, (num_tags,)),
    }


# ------------------------------------------------------------------------ checks


class _Inputs(NamedTuple):
    """Checked inputs in the compute dtype: emissions ``[B, T, K]`` with 0 at padded
    steps, the prefix mask ``valid`` ``[B, T]``, ``lengths`` int32 ``[B]``, the params,
    and ``bad`` bool ``[B]`` (rows to return as NaN) or None."""

    emissions: jax.Array
    valid: jax.Array
    lengths: jax.Array
    transitions: jax.Array
    start: jax.Array
    end: jax.Array
    bad: jax.Array | None


def _check_param_keys(params) -> None:
    if not isinstance(params, Mapping) or set(_PARAM_SHAPES) - set(params):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise TypeError(
            "`params` must be a dict with keys 'transitions', 'start' and 'end' "
            f"(see crf_init), got {got}"
        )


def _check_params(params, num_tags: int, dtype):
    _check_param_keys(params)
    out = []
    for key, doc in _PARAM_SHAPES.items():
        name = f"params['{key}']"
        x = _checks.as_array(params[key], name)
        _checks.check_floating(x, name)
        shape = (num_tags, num_tags) if key == "transitions" else (num_tags,)
        _checks.check_shape(x, shape, name, f"{doc} (K = {num_tags} from `emissions`)")
        out.append(jnp.asarray(x).astype(dtype))
    return out


def _check_prefix(where) -> None:
    """``ValueError`` naming ``where`` for a concrete row that is not a valid prefix."""
    host = np.asarray(where)
    if host.size == 0:
        return
    bad = np.any(host[:, 1:] & ~host[:, :-1], axis=1)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"`where` must be a prefix mask (the valid steps first, as jaxseq.length_mask "
            f"makes), but row {i} is {host[i].astype(int).tolist()}"
        )


class _Checked(NamedTuple):
    """The arguments after the host-side checks: JAX arrays of the right shapes."""

    emissions: jax.Array  # [B, T, K], its own dtype
    params: tuple[jax.Array, jax.Array, jax.Array]  # transitions, start, end (compute dtype)
    where: jax.Array | None  # bool [B, T]
    tags: jax.Array | None  # int32 [B, T]


def _check_args(emissions, params, where, tags=None) -> _Checked:
    """Every check that needs no arithmetic: shapes and dtypes (chex ``AssertionError``
    naming the argument) and, on host data, a ``where`` row that is not a prefix or a
    tag outside ``[0, K)`` at a valid step (``ValueError``). Traced values are checked
    inside the computation instead (their rows become NaN)."""
    emissions = _checks.as_array(emissions, "emissions")
    _checks.check_floating(emissions, "emissions")
    _checks.check_rank(emissions, 3, "emissions", "[B, T, K]")
    batch, steps, num_tags = emissions.shape
    if num_tags < 1:
        raise _checks.shape_error(
            f"`emissions` must have at least one tag (K >= 1 in its last axis), "
            f"got shape {tuple(emissions.shape)}"
        )
    # As JAX arrays first: a NumPy float64 array is float32 without jax_enable_x64.
    emissions = jnp.asarray(emissions)
    params = tuple(_check_params(params, num_tags, compute_dtype(emissions.dtype)))
    where = _checks.optional_mask(where, (batch, steps), "where", "[B, T] (= emissions.shape[:2])")
    host_valid = None
    if where is None:
        host_valid = np.ones((batch, steps), bool)
    elif _checks.is_concrete(where):
        _check_prefix(where)
        host_valid = np.asarray(where)
    if tags is not None:
        tags = _check_tags(tags, (batch, steps, num_tags), host_valid)
    return _Checked(emissions, params, where, tags)


def _check_tags(tags, shape: tuple[int, int, int], host_valid):
    """``tags`` as int32 ``[B, T]``; on host data, a tag outside ``[0, K)`` at a valid
    step (``host_valid``, None when ``where`` is traced) is a ``ValueError``. Padded
    steps may hold any integer, even one beyond int32."""
    batch, steps, num_tags = shape
    if _checks.is_concrete(tags) and host_valid is not None:
        host = np.asarray(tags)
        _checks.check_integer(host, "tags")
        _checks.check_shape(host, (batch, steps), "tags", "[B, T] (= emissions.shape[:2])")
        out = host_valid & ((host < 0) | (host >= num_tags))
        if out.any():
            index = tuple(int(i) for i in np.argwhere(out)[0])
            raise ValueError(
                f"`tags` must be in [0, K) = [0, {num_tags}) at valid steps, got "
                f"{int(host[index])} at index {index}"
            )
        return jnp.asarray(np.where(host_valid, host, 0).astype(np.int32))
    tags = _checks.index_array(tags, "tags")
    _checks.check_shape(tags, (batch, steps), "tags", "[B, T] (= emissions.shape[:2])")
    return tags


def _prepare(checked: _Checked) -> _Inputs:
    """The unchecked inputs of the algorithms (inside the compiled core)."""
    emissions, (transitions, start, end), where = checked.emissions, checked.params, checked.where
    batch, steps, _ = emissions.shape
    if where is None:
        lengths = jnp.full((batch,), steps, jnp.int32)
    else:
        lengths = jnp.sum(where, axis=1, dtype=jnp.int32)
    valid = jnp.arange(steps, dtype=jnp.int32)[None, :] < lengths[:, None]
    # A traced row that is not a prefix (host rows were checked) becomes NaN.
    bad = None if where is None else jnp.any(where != valid, axis=1)
    # First where: nothing at a padded step (NaN, inf) enters the arithmetic.
    emissions = jnp.where(valid[..., None], emissions.astype(transitions.dtype), 0.0)
    return _Inputs(emissions, valid, lengths, transitions, start, end, bad)


def _tags_in_range(tags, inputs: _Inputs):
    """``tags`` with 0 at padded steps and at bad tags, and the updated ``bad`` rows (a
    traced tag outside ``[0, K)`` at a valid step; host tags were checked)."""
    num_tags = inputs.emissions.shape[-1]
    in_range = (tags >= 0) & (tags < num_tags)
    bad_tags = jnp.any(inputs.valid & ~in_range, axis=1)
    bad = bad_tags if inputs.bad is None else inputs.bad | bad_tags
    return jnp.where(inputs.valid & in_range, tags, 0), bad


def _poison(x, bad):
    """NaN in the rows ``[B, ...]`` of float ``x`` where ``bad`` ``[B]`` is True."""
    if bad is None:
        return x
    return jnp.where(bad.reshape(bad.shape + (1,) * (x.ndim - 1)), jnp.nan, x)


# ------------------------------------------------------------------- semirings


def _logsumexp(x, axis: int):
    """``log sum exp`` over ``axis``; ``-inf`` with gradient 0 (never NaN) where every
    entry is ``-inf`` (``jax.nn.logsumexp``'s gradient there is 0/0). NaN stays NaN."""
    m = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    dead = m == -jnp.inf
    m = jnp.where(dead, 0.0, m)
    total = jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True)
    out = jnp.where(dead, -jnp.inf, m + jnp.log(jnp.where(dead, 1.0, total)))
    return jnp.squeeze(out, axis=axis)


def _log_matmul(a, b):
    """Log-semiring matrix product ``[..., K, K] x [..., K, K]``:
    ``out[i, j] = logsumexp_k(a[i, k] + b[k, j])``."""
    return _logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)


def _log_identity(num_tags: int, dtype):
    """The log-semiring identity ``[K, K]``: 0 on the diagonal, ``-inf`` off it."""
    return jnp.where(jnp.eye(num_tags, dtype=bool), 0.0, -jnp.inf).astype(dtype)


# --------------------------------------------------------------- the algorithms


def _steps_first(x):
    """``[B, T, ...]`` -> ``[T, B, ...]`` (what ``lax.scan`` walks over)."""
    return jnp.swapaxes(x, 0, 1)


def _forward_sequential(inputs: _Inputs, alpha0):
    """``alpha`` ``[B, K]`` after the last valid step, by ``lax.scan`` over steps 1..T-1."""
    trans = inputs.transitions[None]

    def step(alpha, xs):
        emissions_BK, valid_B = xs
        new = _logsumexp(alpha[:, :, None] + trans, axis=1) + emissions_BK
        # A padded step is the identity: alpha passes through unchanged.
        return jnp.where(valid_B[:, None], new, alpha), None

    xs = (_steps_first(inputs.emissions[:, 1:]), _steps_first(inputs.valid[:, 1:]))
    alpha, _ = jax.lax.scan(step, alpha0, xs)
    return alpha


def _forward_parallel(inputs: _Inputs, alpha0):
    """``alpha`` ``[B, K]`` after the last valid step: the log-semiring product of the
    step matrices ``M_t[i, j] = transitions[i, j] + emissions[t, j]`` (t = 1..T-1; the
    identity at padded steps) by ``lax.associative_scan``, applied to ``alpha0``."""
    num_tags = inputs.emissions.shape[-1]
    step_BTKK = inputs.transitions[None, None] + inputs.emissions[:, 1:, None, :]
    identity = _log_identity(num_tags, step_BTKK.dtype)[None, None]
    step_BTKK = jnp.where(inputs.valid[:, 1:, None, None], step_BTKK, identity)
    product_BKK = jax.lax.associative_scan(_log_matmul, step_BTKK, axis=1)[:, -1]
    return _logsumexp(alpha0[:, :, None] + product_BKK, axis=1)


def _log_partition(inputs: _Inputs, method: str):
    """``log Z`` ``[B]``: 0 for a row with no valid step (with gradient 0)."""
    batch, steps, _ = inputs.emissions.shape
    if steps == 0:
        return jnp.zeros((batch,), inputs.emissions.dtype)
    alpha = inputs.start[None, :] + inputs.emissions[:, 0]
    if steps > 1:
        forward = _forward_parallel if method == "parallel" else _forward_sequential
        alpha = forward(inputs, alpha)
    log_z = _logsumexp(alpha + inputs.end[None, :], axis=1)
    return jnp.where(inputs.lengths > 0, log_z, 0.0)


def _path_score(inputs: _Inputs, tags):
    """The score ``[B]`` of the paths ``tags`` (int32 ``[B, T]`` in ``[0, K)``)."""
    batch, steps, _ = inputs.emissions.shape
    if steps == 0:
        return jnp.zeros((batch,), inputs.emissions.dtype)
    emitted = jnp.take_along_axis(inputs.emissions, tags[..., None], axis=2)[..., 0]
    moves = inputs.transitions[tags[:, :-1], tags[:, 1:]]
    # where, not multiplication: a padded step's -inf move adds 0, never 0 * -inf.
    moves = jnp.where(inputs.valid[:, 1:], moves, 0.0)
    last = jnp.maximum(inputs.lengths - 1, 0)
    last_tag = jnp.take_along_axis(tags, last[:, None], axis=1)[:, 0]
    score = (
        inputs.start[tags[:, 0]]
        + jnp.sum(emitted, axis=1)
        + jnp.sum(moves, axis=1)
        + inputs.end[last_tag]
    )
    return jnp.where(inputs.lengths > 0, score, 0.0)


@compiled("method")
def _log_likelihood_core(checked: _Checked, *, method: str):
    """``(log-likelihood [B], lengths [B])`` after the host checks."""
    inputs = _prepare(checked)
    tags, bad = _tags_in_range(checked.tags, inputs)
    log_likelihood = _path_score(inputs, tags) - _log_partition(inputs, method)
    return _poison(log_likelihood, bad), inputs.lengths


# ------------------------------------------------------------------------ public


def crf_log_likelihood(
    emissions: jax.Array,
    tags: jax.Array,
    params: Mapping[str, jax.Array],
    *,
    where: jax.Array | None = None,
    method: str = "sequential",
) -> jax.Array:
    """``log p(tags | emissions)`` of each sequence under a linear-chain CRF.

    ``score(tags) - log Z``, with the path score of the module docstring over the
    valid steps and ``log Z`` the log-sum-exp of the scores of all ``K**T_i`` paths
    of the same length. PyTorch: ``torchcrf.CRF(K, batch_first=True)(emissions,
    tags, mask=where, reduction="none")``.

    Args:
      emissions: float ``[B, T, K]`` per-step tag scores (float32, bfloat16,
        float16 or float64); padded steps may hold anything.
      tags: integer ``[B, T]`` (any integer dtype), the gold tags, in ``[0, K)`` at
        valid steps; padded steps may hold anything (e.g. -1 or -100).
      params: ``{"transitions": [K, K], "start": [K], "end": [K]}`` (:func:`crf_init`).
      where: optional bool ``[B, T]`` prefix mask, True at valid steps (default:
        all valid).
      method: ``"sequential"`` or ``"parallel"`` (the forward algorithm for ``log Z``).

    Returns:
      float32 ``[B]`` (float64 for float64 emissions), ``<= 0``; 0 for a row with no
      valid step; ``-inf`` when ``tags`` uses a ``-inf`` (forbidden) score; NaN when
      the constraints forbid every path of the row (``log Z = -inf``: no
      distribution exists).
      Under ``jit``, NaN for a row whose ``where`` is not a prefix or whose ``tags``
      are out of range at a valid step (host data raises ``ValueError`` instead).

    >>> import jax, jax.numpy as jnp
    >>> from jaxseq.crf import crf_init, crf_log_likelihood
    >>> params = {k: jnp.zeros_like(v) for k, v in crf_init(jax.random.key(0), 2).items()}
    >>> # Zero scores: each of the 2**3 paths has probability 1/8.
    >>> ll = crf_log_likelihood(jnp.zeros((1, 3, 2)), jnp.array([[0, 1, 1]]), params)
    >>> round(float(ll[0]), 4), round(float(jnp.log(1 / 8)), 4)
    (-2.0794, -2.0794)
    """
    _checks.check_choice(method, CRF_METHODS, "method")
    checked = _check_args(emissions, params, where, tags)
    return _log_likelihood_core(checked, method=method)[0]


def crf_loss(
    emissions: jax.Array,
    tags: jax.Array,
    params: Mapping[str, jax.Array],
    *,
    where: jax.Array | None = None,
    reduction: str = "sum_over_time",
    method: str = "sequential",
) -> jax.Array:
    """The CRF negative log-likelihood ``L_i = -log p(tags_i | emissions_i)``, reduced.

    ``L_i`` is a sum over the sequence's T_i valid steps (it does not split into
    per-step terms). N counts the rows with at least one valid step (a row with none
    has ``L_i = 0`` and counts nowhere). The reductions of ``jaxseq.REDUCTIONS``:

    * ``"sum_over_time"`` (default): ``(1/N) sum_i L_i``, the mean over sequences
      of their NLL. torchcrf: ``-CRF(...)(..., reduction="mean")`` when every row
      has a valid step (torchcrf requires it).
    * ``"mean_over_time"``: ``(1/N) sum_i L_i / T_i``, each sequence's NLL per step,
      then averaged.
    * ``"mean_over_tokens"``: ``(sum_i L_i) / (sum_i T_i)``, the batch's NLL per valid
      token. torchcrf: ``-CRF(...)(..., reduction="token_mean")``.
    * ``"sum"``: ``sum_i L_i``. torchcrf: ``-CRF(...)(..., reduction="sum")``.
    * ``"none"``: ``L_i``, ``[B]`` (one per sequence, not ``[B, T]``), 0 for a row
      with no valid step. torchcrf: ``-CRF(...)(..., reduction="none")``.

    Nothing valid gives 0 (gradient 0).

    Args:
      emissions, tags, params, where, method: as in :func:`crf_log_likelihood`.
      reduction: one of the names above.

    Returns:
      float32 scalar (``[B]`` for ``"none"``; float64 for float64 emissions).

    >>> import jax, jax.numpy as jnp
    >>> from jaxseq.crf import crf_init, crf_loss
    >>> params = crf_init(jax.random.key(0), 3)
    >>> emissions = jax.random.normal(jax.random.key(1), (2, 4, 3))
    >>> tags = jnp.array([[0, 1, 2, 1], [2, 2, -1, -1]])
    >>> where = tags >= 0
    >>> loss = crf_loss(emissions, tags, params, where=where)
    >>> loss.shape, loss.dtype, bool(loss > 0)
    ((), dtype('float32'), True)
    """
    _checks.check_choice(reduction, CRF_REDUCTIONS, "reduction")
    _checks.check_choice(method, CRF_METHODS, "method")
    checked = _check_args(emissions, params, where, tags)
    return _loss_core(checked, method=method, reduction=reduction)


def crf_loss_terms(
    emissions: jax.Array,
    tags: jax.Array,
    params: Mapping[str, jax.Array],
    *,
    where: jax.Array | None = None,
    reduction: str = "sum_over_time",
    method: str = "sequential",
) -> LossTerms:
    """:func:`crf_loss` as exact ``LossTerms(total, count)``, for the means.

    ``crf_loss(...) == total / count`` (0 when ``count == 0``), and for any split of
    a batch into parts (microbatches, devices), ``sum(part.total) / sum(part.count)``
    is the loss of the whole batch, which a mean of the parts' losses is not.

    | reduction | total | count |
    |---|---|---|
    | ``sum_over_time`` | ``sum_i L_i`` | N |
    | ``mean_over_time`` | ``sum_i L_i / T_i`` | N |
    | ``mean_over_tokens`` | ``sum_i L_i`` | ``sum_i T_i`` |

    with ``L_i`` the NLL of row i, ``T_i`` its valid steps and N the number of rows
    with ``T_i > 0`` (rows with none contribute 0 to both).

    Args:
      emissions, tags, params, where, method: as in :func:`crf_log_likelihood`.
      reduction: one of ``jaxseq.TERM_REDUCTIONS`` (``"sum"`` and ``"none"`` need
        no terms: use :func:`crf_loss`).

    Returns:
      ``LossTerms`` of float32 scalars (float64 for float64 emissions).

    >>> import jax, jax.numpy as jnp
    >>> from jaxseq.crf import crf_init, crf_loss, crf_loss_terms
    >>> params = crf_init(jax.random.key(0), 3)
    >>> emissions = jax.random.normal(jax.random.key(1), (2, 4, 3))
    >>> tags = jnp.array([[0, 1, 2, 1], [2, 2, 0, 0]])
    >>> where = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    >>> kw = dict(where=where, reduction="mean_over_tokens")
    >>> terms = crf_loss_terms(emissions, tags, params, **kw)
    >>> float(terms.count)
    6.0
    >>> bool(jnp.allclose(terms.loss, crf_loss(emissions, tags, params, **kw)))
    True
    """
    _checks.check_choice(reduction, TERM_REDUCTIONS, "reduction")
    _checks.check_choice(method, CRF_METHODS, "method")
    checked = _check_args(emissions, params, where, tags)
    return _loss_core(checked, method=method, reduction=reduction, terms=True)


@compiled("method", "reduction", "terms")
def _loss_core(checked: _Checked, *, method: str, reduction: str, terms: bool = False):
    """The NLL of each row, reduced: ``LossTerms`` when ``terms``, else the loss."""
    log_likelihood, lengths = _log_likelihood_core(checked, method=method)
    nll = 0.0 - log_likelihood  # 0 - x: +0.0, not -0.0, for an empty row
    if reduction == "none":
        return nll
    if reduction == "sum":
        return jnp.sum(nll)
    tokens = lengths.astype(nll.dtype)
    num_sequences = jnp.sum((lengths > 0).astype(nll.dtype))
    if reduction == "mean_over_tokens":
        out = LossTerms(jnp.sum(nll), jnp.sum(tokens))
    elif reduction == "mean_over_time":
        out = LossTerms(jnp.sum(safe_divide(nll, tokens)), num_sequences)
    else:  # "sum_over_time"
        out = LossTerms(jnp.sum(nll), num_sequences)
    return out if terms else out.loss


def crf_decode(
    emissions: jax.Array,
    params: Mapping[str, jax.Array],
    *,
    where: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The highest-scoring tag path of each sequence (Viterbi) and its score.

    Ties are broken toward the lowest tag index, from the last step backwards: the
    last tag is the lowest one that ends a best path, and each earlier tag is the
    lowest best predecessor of the tag after it. Among the best paths this is the
    one whose tag sequence, read backwards, is lexicographically smallest (e.g. all
    0s when every score is equal). PyTorch: ``torchcrf.CRF.decode`` (lists of tags).

    Args:
      emissions: float ``[B, T, K]``; padded steps may hold anything.
      params: as in :func:`crf_log_likelihood`.
      where: optional bool ``[B, T]`` prefix mask (default: all valid).

    Returns:
      ``(tags, scores)``: int32 ``[B, T]`` with -1 at padded steps, and float32
      ``[B]`` (float64 for float64 emissions), the path score of the module
      docstring. A row with no valid step gives all -1 and score 0; a row whose
      every path is forbidden (``-inf`` constraints) gets score ``-inf``, and its
      tags mean nothing. Under ``jit``
      a row whose ``where`` is not a prefix gives all -1 and score NaN.

    >>> import jax.numpy as jnp
    >>> from jaxseq.crf import crf_decode
    >>> params = {"transitions": jnp.array([[0.0, -jnp.inf], [0.0, 0.0]]),
    ...           "start": jnp.zeros(2), "end": jnp.zeros(2)}  # 0 -> 1 is forbidden
    >>> emissions = jnp.array([[[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]])
    >>> tags, score = crf_decode(emissions, params, where=jnp.array([[True, True, False]]))
    >>> tags.tolist(), float(score[0])  # (0, 1) scores 3 but is forbidden; (1, 1) scores 2
    ([[1, 1, -1]], 2.0)
    """
    return _decode_core(_check_args(emissions, params, where))


@compiled()
def _decode_core(checked: _Checked):
    inputs = _prepare(checked)
    batch, steps, num_tags = inputs.emissions.shape
    dtype = inputs.emissions.dtype
    if steps == 0:
        return jnp.zeros((batch, 0), jnp.int32), _poison(jnp.zeros((batch,), dtype), inputs.bad)
    trans = inputs.transitions[None]
    keep = jnp.broadcast_to(jnp.arange(num_tags, dtype=jnp.int32)[None, :], (batch, num_tags))

    def forward(delta, xs):
        emissions_BK, valid_B = xs
        candidates = delta[:, :, None] + trans  # [B, from, to]
        # argmax returns the first maximum: the lowest predecessor among ties.
        pointers = jnp.argmax(candidates, axis=1).astype(jnp.int32)
        new = jnp.max(candidates, axis=1) + emissions_BK
        # A padded step is the identity: delta passes, each tag points to itself.
        valid = valid_B[:, None]
        return jnp.where(valid, new, delta), jnp.where(valid, pointers, keep)

    delta0 = inputs.start[None, :] + inputs.emissions[:, 0]
    xs = (_steps_first(inputs.emissions[:, 1:]), _steps_first(inputs.valid[:, 1:]))
    delta, pointers_TBK = jax.lax.scan(forward, delta0, xs)
    final = delta + inputs.end[None, :]
    last_tag = jnp.argmax(final, axis=1).astype(jnp.int32)
    score = jnp.max(final, axis=1)

    def backward(tag_B, pointers_BK):
        previous = jnp.take_along_axis(pointers_BK, tag_B[:, None], axis=1)[:, 0]
        return previous, previous

    _, earlier_TB = jax.lax.scan(backward, last_tag, pointers_TBK, reverse=True)
    path = jnp.concatenate([_steps_first(earlier_TB), last_tag[:, None]], axis=1)
    valid = inputs.valid if inputs.bad is None else inputs.valid & ~inputs.bad[:, None]
    path = jnp.where(valid, path, -1)
    score = jnp.where(inputs.lengths > 0, score, 0.0)
    return path, _poison(score, inputs.bad)


def crf_marginals(
    emissions: jax.Array,
    params: Mapping[str, jax.Array],
    *,
    where: jax.Array | None = None,
    method: str = "sequential",
) -> jax.Array:
    """Posterior marginals ``p(y_t = k | emissions)`` of each valid step.

    Exactly the gradient of ``log Z`` with respect to the emissions (the
    forward-backward algorithm, by automatic differentiation of the forward one).

    Args:
      emissions, params, where, method: as in :func:`crf_log_likelihood`.

    Returns:
      float32 ``[B, T, K]`` (float64 for float64 emissions): each valid step sums
      to 1 over K; 0 at padded steps and in rows with no valid step. Under ``jit``,
      NaN for a row whose ``where`` is not a prefix.

    >>> import jax.numpy as jnp
    >>> from jaxseq.crf import crf_marginals
    >>> params = {"transitions": jnp.zeros((2, 2)), "start": jnp.zeros(2), "end": jnp.zeros(2)}
    >>> emissions = jnp.log(jnp.array([[[3.0, 1.0], [1.0, 1.0]]]))
    >>> crf_marginals(emissions, params).round(4).tolist()
    [[[0.75, 0.25], [0.5, 0.5]]]
    """
    _checks.check_choice(method, CRF_METHODS, "method")
    return _marginals_core(_check_args(emissions, params, where), method=method)


@compiled("method")
def _marginals_core(checked: _Checked, *, method: str):
    inputs = _prepare(checked)

    def total_log_z(emissions_BTK):
        return jnp.sum(_log_partition(inputs._replace(emissions=emissions_BTK), method))

    marginals = jax.grad(total_log_z)(inputs.emissions)
    return _poison(jnp.where(inputs.valid[..., None], marginals, 0.0), inputs.bad)


# ------------------------------------------------------------------- constraints


def _parse_tag(name, index: int, scheme: str):
    """``("O", "")`` or ``(prefix, type)`` of a tag name of ``scheme``."""
    letters = _SCHEMES[scheme]
    if name == "O":
        return "O", ""
    match = re.fullmatch(rf"([{letters}])-(.+)", name) if isinstance(name, str) else None
    if match is None:
        forms = ", ".join(f"'{p}-TYPE'" for p in letters)
        raise ValueError(
            f"`tag_names` entry {index} ({name!r}) is not a {scheme} tag: expected 'O', {forms}"
        )
    return match.group(1), match.group(2)


def crf_allowed_transitions(
    tag_names: Sequence[str], scheme: str = "BIO"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The moves a ``"BIO"`` or ``"BIOES"`` tagging scheme allows.

    Tag names are ``"O"`` or ``"<prefix>-<TYPE>"`` (``"B-PER"``, ``"I-PER"``, and for
    BIOES ``"E-PER"``, ``"S-PER"``). BIO: ``I-X`` only follows ``B-X`` or ``I-X`` (so
    no path starts with it). BIOES: ``I-X`` and ``E-X`` only follow ``B-X`` or
    ``I-X``, which are only followed by them; a path starts with ``O``, ``B`` or
    ``S`` and ends with ``O``, ``E`` or ``S``.

    Args:
      tag_names: the K tag names, in tag-index order.
      scheme: ``"BIO"`` or ``"BIOES"``.

    Returns:
      ``(allowed, allowed_start, allowed_end)``: NumPy bool ``[K, K]``
      (``allowed[i, j]``: tag j may follow tag i), ``[K]`` and ``[K]``; pass them to
      :func:`crf_constrain`.

    >>> from jaxseq.crf import crf_allowed_transitions
    >>> allowed, start, end = crf_allowed_transitions(["O", "B-PER", "I-PER"])
    >>> allowed.astype(int).tolist(), start.tolist(), end.tolist()
    ([[1, 1, 0], [1, 1, 1], [1, 1, 1]], [True, True, False], [True, True, True])
    """
    _checks.check_choice(scheme, tuple(_SCHEMES), "scheme")
    if isinstance(tag_names, np.ndarray) and tag_names.ndim == 1:
        tag_names = tag_names.tolist()  # e.g. a vocabulary's array of names
    if isinstance(tag_names, str) or not isinstance(tag_names, Sequence) or not tag_names:
        raise TypeError(f"`tag_names` must be a non-empty list of strings, got {tag_names!r}")
    if len(set(tag_names)) != len(tag_names):
        raise ValueError(f"`tag_names` has duplicates: {list(tag_names)}")
    parsed = [_parse_tag(name, i, scheme) for i, name in enumerate(tag_names)]
    opens = ("B", "I")  # prefixes of a span that goes on at the next step (BIOES)
    continues = ("I", "E")  # prefixes that continue the span of the step before

    def follows(a, b) -> bool:
        (pa, ta), (pb, tb) = a, b
        if pb in continues:  # only after the same type's B or I
            return pa in ("B", "I") and ta == tb
        if scheme == "BIOES":  # O, B or S: only after a span has ended
            return pa not in opens
        return True

    allowed = np.array([[follows(a, b) for b in parsed] for a in parsed], bool)
    allowed_start = np.array([p not in continues for p, _ in parsed], bool)
    if scheme == "BIOES":
        allowed_end = np.array([p not in opens for p, _ in parsed], bool)
    else:
        allowed_end = np.ones(len(parsed), bool)
    return allowed, allowed_start, allowed_end


def crf_constrain(
    params: Mapping[str, jax.Array],
    allowed: jax.Array,
    allowed_start: jax.Array,
    allowed_end: jax.Array,
) -> dict[str, jax.Array]:
    """``params`` with the scores of disallowed moves set to ``-inf``.

    Paths through a ``-inf`` score have probability exactly 0: they are never
    decoded and add nothing to ``log Z``; the gradient with respect to those scores
    is 0 (``jnp.where``), so calling this inside the loss function each step keeps
    the constraint while the other scores train. A gold path that uses a forbidden
    move has log-likelihood ``-inf``.

    Args:
      params: as in :func:`crf_log_likelihood`.
      allowed: bool ``[K, K]``; ``allowed_start``, ``allowed_end``: bool ``[K]``
        (e.g. from :func:`crf_allowed_transitions`).

    Returns:
      a new dict with the same keys.
    """
    _check_param_keys(params)
    transitions = _checks.as_array(params["transitions"], "params['transitions']")
    _checks.check_rank(transitions, 2, "params['transitions']", "[K, K]")
    num_tags = transitions.shape[-1]
    out = dict(params)
    for key, mask, name in (
        ("transitions", allowed, "allowed"),
        ("start", allowed_start, "allowed_start"),
        ("end", allowed_end, "allowed_end"),
    ):
        mask = _checks.as_array(mask, name)
        _checks.check_bool(mask, name, "True = an allowed move")
        shape = (num_tags, num_tags) if key == "transitions" else (num_tags,)
        _checks.check_shape(mask, shape, name, _PARAM_SHAPES[key])
        value = _checks.as_array(params[key], f"params['{key}']")
        out[key] = jnp.where(mask, value, jnp.asarray(-jnp.inf, value.dtype))
    return out
