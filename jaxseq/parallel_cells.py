"""Parallel-in-time cells: minGRU, minLSTM and the LRU, with their associative scans.

Notation: T time, D input features, H hidden (the cell's output width), N the
LRU's state size, S the width of the linear state (H for minGRU/minLSTM, N for
the LRU), G the projected width. Row-vector convention as in
:mod:`jaxseq.cells` (``x @ W``).

Every cell here has a state recurrence that is *linear in the state*::

    s_t = a_t * s_{t-1} + b_t        (elementwise; a_t, b_t depend on x_t only)

so a whole sequence can be evaluated with :func:`jax.lax.associative_scan`
(O(log T) depth) instead of a ``lax.scan`` of T dependent steps: the pairs
``(a_t, b_t)`` compose associatively, ``(a1, b1) then (a2, b2) = (a1 a2,
a2 b1 + b2)``, with identity ``(1, 0)``. :mod:`jaxseq.recurrence` evaluates
them either way (``method=jaxseq.Scan()`` for a sequential loop,
``method=jaxseq.Parallel()`` for the associative scan; see :mod:`jaxseq.methods`);
padded steps become the identity element, so the carry is held there, exactly as
the sequential scan does.

The cells are ordinary :class:`jaxseq.cells.Cell` values (``init``,
``initial_carry``, ``project``, ``step``, ``output``), so they work wherever
elman/gru/lstm do. What makes them parallel is their ``step``: a
:class:`LinearStep`, which computes ``a * s + b`` and also exposes the pieces
a whole-sequence evaluation needs (``coefficients``, ``log_coefficients``,
``to_state``, ``readout``). :func:`is_linear` tells whether a cell has one.
:mod:`jaxseq.recurrence` uses those pieces with both methods: it computes
every step's ``(a_t, b_t)`` at once and then scans them, sequentially
(``Scan``) or in parallel (``Parallel``).

=========  ===================================  ==============================
cell       paper                                parallel scan
=========  ===================================  ==============================
minGRU     Feng et al. 2024, "Were RNNs All     log space (default) or linear
           We Needed?"                          space
minLSTM    same                                 log space (default) or linear
LRU        Orvieto et al. 2023, "Resurrecting   linear space, complex state
           Recurrent Neural Networks for Long
           Sequences"
=========  ===================================  ==============================

Log space (minGRU/minLSTM with ``log_space=True``, the paper's stable
formulation): the candidate state goes through ``g(x) = x + 0.5`` for
``x >= 0``, ``sigmoid(x)`` otherwise, so every ``a_t`` and ``b_t`` is
positive, and the scan combines ``(log a, log b)`` pairs with
``(la1, lb1) then (la2, lb2) = (la1 + la2, logaddexp(la2 + lb1, lb2))``, a
logcumsumexp-style combination that neither under- nor overflows on long
sequences. The initial carry enters afterwards, linearly
(``s_t = exp(LA_t) s_0 + exp(LB_t)``), so it may have any sign.

Dtypes: as :mod:`jaxseq.cells`: projections in float32 (float64 for float64
inputs or params), the recurrence in the carry's dtype. The LRU's state is
complex inside the computation (complex64 for float32) but its carry holds
real arrays ``(Re h, Im h, y)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxseq import _checks
from jaxseq.cells import (
    Cell,
    InputWidthError,
    _bind,
    _check_hidden_size,
    _check_input_size,
    _check_param_dtype,
    _check_params,
    _glorot_blocks,
    _identity,
    _project,
    _zeros_carry,
    compute_dtype,
)

__all__ = [
    "LinearStep",
    "g",
    "is_linear",
    "linear_scan",
    "log_g",
    "log_linear_scan",
    "lru",
    "mingru",
    "minlstm",
    "segmented_log_linear_scan",
]

# log(0) stand-in for the identity element of the log-space scan: finite, so that no
# gradient meets inf - inf, and so small that exp() of it (or of it plus any log a) is 0.
_LOG_ZERO = -1e30


# ---------------------------------------------------------------------------- linear steps


@dataclasses.dataclass(frozen=True)
class LinearStep:
    """The ``step`` of a cell whose state follows ``s_t = a_t * s_{t-1} + b_t``.

    Calling it is an ordinary :class:`jaxseq.cells.Cell` step,
    ``(params, carry, xp_t [G]) -> carry``; the fields are the pieces that
    :mod:`jaxseq.recurrence` needs to evaluate a whole sequence in parallel.
    Frozen and compared by value, so equal cells stay equal (static under ``jit``).

    Attributes:
      width: G, the width of ``xp_t``.
      coefficients: ``(params, xp [..., G], dtype) -> (a [..., S], b [..., S])``
        in ``dtype`` (complex for a complex state).
      log_coefficients: None, or ``(params, xp [..., G], dtype) -> (log a,
        log b)`` for cells whose ``a`` and ``b`` are positive;
        ``method=Parallel()`` then scans in log space.
      to_state: ``(carry) -> s [S]``: the linear state of ONE example's carry
        (checks the carry's structure and shapes).
      readout: ``(params, s [..., S], xp [..., G]) -> carry``: the carry
        after a step whose new state is ``s``, on any leading dims.
    """

    width: int
    coefficients: Callable
    log_coefficients: Callable | None
    to_state: Callable
    readout: Callable

    def __call__(self, params, carry, xp_t):
        s = self.to_state(carry)
        xp_t = _checks.as_array(xp_t, "xp_t")
        if xp_t.shape != (self.width,):
            raise _checks.shape_error(
                f"`xp_t` must have shape [G] = [{self.width}] (the output of `project` for "
                f"one step), got {tuple(xp_t.shape)}"
            )
        dtype = jax.tree.leaves(carry)[0].dtype
        a, b = self.coefficients(params, xp_t, dtype)
        return self.readout(params, a * s + b, xp_t)


def is_linear(cell: Cell) -> bool:
    """True when ``cell``'s recurrence is linear in its state (``cell.step`` is a
    :class:`LinearStep`), i.e. when it can run with ``method=jaxseq.Parallel()``."""
    return isinstance(cell, Cell) and isinstance(cell.step, LinearStep)


def _combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _log_combine(earlier, later):
    la1, lb1 = earlier
    la2, lb2 = later
    return la1 + la2, jnp.logaddexp(la2 + lb1, lb2)


def linear_scan(a: jax.Array, b: jax.Array, *, reverse: bool = False):
    """All compositions of ``s_t = a_t * s_{t-1} + b_t`` along axis 0, in O(log T) depth.

    Args:
      a, b: ``[T, ...]`` of one dtype (real or complex).
      reverse: compose from ``T - 1`` down to ``t`` (``s_t = a_t s_{t+1} + b_t``).

    Returns:
      ``(A, B)``, each ``[T, ...]``, such that ``s_t = A_t * s_init + B_t``
      (``s_init`` is the state before the first step processed).

    >>> import jax.numpy as jnp
    >>> A, B = linear_scan(jnp.array([0.5, 0.5, 1.0]), jnp.array([1.0, 2.0, 0.0]))
    >>> A.tolist(), B.tolist()  # s = 1, then 0.5 * 1 + 2 = 2.5, then held
    ([0.5, 0.25, 0.25], [1.0, 2.5, 2.5])
    """
    return jax.lax.associative_scan(_combine, (a, b), reverse=reverse)


def log_linear_scan(log_a: jax.Array, log_b: jax.Array, *, reverse: bool = False):
    """:func:`linear_scan` in log space, for positive ``a`` and ``b``.

    Args:
      log_a, log_b: real ``[T, ...]``; ``log_b`` may hold a very negative
        finite number (e.g. ``-1e30``) for ``b = 0``.
      reverse: as in :func:`linear_scan`.

    Returns:
      ``(log A, log B)`` with ``s_t = exp(log A_t) s_init + exp(log B_t)``.
    """
    return jax.lax.associative_scan(_log_combine, (log_a, log_b), reverse=reverse)


def _segmented_log_combine(earlier, later):
    f1, la1, lb1 = earlier
    f2, la2, lb2 = later
    # A later restart discards what came before it.
    log_a = jnp.where(f2, la2, la1 + la2)
    log_b = jnp.where(f2, lb2, jnp.logaddexp(la2 + lb1, lb2))
    return f1 | f2, log_a, log_b


def segmented_log_linear_scan(
    restart: jax.Array, log_a: jax.Array, log_b: jax.Array, *, reverse: bool = False
):
    """:func:`log_linear_scan` with restarts: a marked step starts from a fixed state.

    At a step where ``restart`` is True the recurrence ignores the incoming state and
    starts from a given state ``s_r`` (the cell's initial state):
    ``s_t = a_t * s_r + b_t``. ``s_r`` may have any sign, so it stays out of the log
    space: the scan composes the pairs of each segment only (a restart element
    discards everything before it) and reports where a restart occurred.

    Args:
      restart: bool ``[T, ...]`` broadcastable against ``log_a`` (e.g. ``[T, B, 1]``).
      log_a, log_b: real ``[T, ...]``, as in :func:`log_linear_scan`.
      reverse: as in :func:`linear_scan`.

    Returns:
      ``(restarted, log A, log B)``: ``restarted_t`` is True when a restart lies
      between the first step processed and ``t`` (inclusive), and
      ``s_t = exp(log A_t) * (s_r if restarted_t else s_init) + exp(log B_t)``.
    """
    return jax.lax.associative_scan(
        _segmented_log_combine, (restart, log_a, log_b), reverse=reverse
    )


# ---------------------------------------------------------------------------- shared pieces


def _check_width(xp, width: int, cell_name: str) -> None:
    if xp.ndim < 1 or xp.shape[-1] != width:
        raise _checks.shape_error(
            f"`xp` of a {cell_name} cell must have shape [..., G] = [..., {width}] (the output "
            f"of `project`), got {tuple(xp.shape)}"
        )


def _h_state(carry, *, hidden_size, cell_name):
    h = _checks.as_array(carry, "carry")
    if h.shape != (hidden_size,):
        raise _checks.shape_error(
            f"`carry` of a {cell_name} cell must be an [H] = [{hidden_size}] array for ONE "
            f"example, got {tuple(h.shape)} (use `jax.vmap` or `recurrence.rnn` for a batch)"
        )
    return h


def _h_readout(params, s, xp):
    del params, xp
    return s


def g(x: jax.Array) -> jax.Array:
    """The paper's positive activation: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x: jax.Array) -> jax.Array:
    """``log(g(x))``, computed stably (no ``log`` of a sigmoid that underflowed)."""
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), jax.nn.log_sigmoid(x))


def _minimal_init(key, input_size, *, hidden_size, blocks, param_dtype):
    input_size = _check_input_size(input_size)
    return {
        "W": _glorot_blocks(key, input_size, hidden_size, blocks, param_dtype),
        "b": jnp.zeros((blocks * hidden_size,), param_dtype),
    }


# ---------------------------------------------------------------------------- minGRU


def _minimal_project(params, x, *, cell_name):
    _check_params(params, ("W", "b"), cell_name)
    return _project(params, x, weight="W", bias="b", cell_name=cell_name)


def _minimal_cell(
    name, hidden_size, *, blocks, log_space, param_dtype, coefficients, log_coefficients
) -> Cell:
    """minGRU / minLSTM: ``blocks`` gate blocks of ``x W + b``, a linear step in ``h``."""
    hidden_size = _check_hidden_size(hidden_size)
    _checks.check_flag(log_space, "log_space")
    step = LinearStep(
        width=blocks * hidden_size,
        coefficients=_bind(coefficients, hidden_size=hidden_size, log_space=log_space),
        log_coefficients=(_bind(log_coefficients, hidden_size=hidden_size) if log_space else None),
        to_state=_bind(_h_state, hidden_size=hidden_size, cell_name=name),
        readout=_h_readout,
    )
    return Cell(
        name=name,
        hidden_size=hidden_size,
        init=_bind(
            _minimal_init,
            hidden_size=hidden_size,
            blocks=blocks,
            param_dtype=_check_param_dtype(param_dtype),
        ),
        initial_carry=_bind(_zeros_carry, hidden_size=hidden_size),
        project=_bind(_minimal_project, cell_name=name),
        step=step,
        output=_identity,
    )


def _mingru_coefficients(params, xp, dtype, *, hidden_size, log_space):
    _check_params(params, ("W", "b"), "mingru")
    _check_width(xp, 2 * hidden_size, "mingru")
    k_z, k_h = jnp.split(xp.astype(dtype), 2, axis=-1)
    candidate = g(k_h) if log_space else k_h
    # a = 1 - z = sigmoid(-k_z), b = z * candidate.
    return jax.nn.sigmoid(-k_z), jax.nn.sigmoid(k_z) * candidate


def _mingru_log_coefficients(params, xp, dtype, *, hidden_size):
    _check_params(params, ("W", "b"), "mingru")
    _check_width(xp, 2 * hidden_size, "mingru")
    k_z, k_h = jnp.split(xp.astype(dtype), 2, axis=-1)
    # log(1 - z) = -softplus(k_z), log z = -softplus(-k_z).
    return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_g(k_h)


def mingru(hidden_size: int, *, log_space: bool = True, param_dtype=jnp.float32) -> Cell:
    """minGRU (Feng et al. 2024): a GRU whose gates see only the input.

    ::

        z_t = sigmoid(x_t W_z + b_z)
        h~_t = g(x_t W_h + b_h)        (log_space=True; x_t W_h + b_h otherwise)
        h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

    Params: ``{"W": [D, 2H], "b": [2H]}``, blocks ``(z, h)``. Carry: ``h [H]``;
    output ``h``. Initialisation: each ``[D, H]`` block Glorot-uniform, ``b``
    zero. ``a_t = 1 - z_t`` and ``b_t = z_t h~_t``.

    Args:
      hidden_size: H.
      log_space: the paper's log-space formulation: the candidate goes through
        ``g`` (positive) and ``method=jaxseq.Parallel()`` scans in log space.
        False: the plain formulation, a linear-space scan.
      param_dtype: dtype of the parameters made by ``init``.

    >>> import jax, jax.numpy as jnp, jaxseq as js
    >>> cell = js.mingru(4)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> xs, lengths = jnp.ones((2, 5, 3)), jnp.array([5, 2])
    >>> h_par, hs_par = js.rnn(cell, params, xs, lengths, method=js.Parallel())
    >>> h_seq, hs_seq = js.rnn(cell, params, xs, lengths, method=js.Scan())
    >>> bool(jnp.allclose(hs_par, hs_seq, atol=1e-6)), hs_par.shape
    (True, (2, 5, 4))
    """
    return _minimal_cell(
        "mingru",
        hidden_size,
        blocks=2,
        log_space=log_space,
        param_dtype=param_dtype,
        coefficients=_mingru_coefficients,
        log_coefficients=_mingru_log_coefficients,
    )


# ---------------------------------------------------------------------------- minLSTM


def _minlstm_gates(params, xp, dtype, hidden_size):
    _check_params(params, ("W", "b"), "minlstm")
    _check_width(xp, 3 * hidden_size, "minlstm")
    k_f, k_i, k_h = jnp.split(xp.astype(dtype), 3, axis=-1)
    # log f' = log f - log(f + i) = -softplus(diff), log i' = -softplus(-diff), with
    # diff = log i - log f = softplus(-k_f) - softplus(-k_i).
    diff = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
    return diff, k_h


def _minlstm_coefficients(params, xp, dtype, *, hidden_size, log_space):
    diff, k_h = _minlstm_gates(params, xp, dtype, hidden_size)
    candidate = g(k_h) if log_space else k_h
    return jax.nn.sigmoid(-diff), jax.nn.sigmoid(diff) * candidate


def _minlstm_log_coefficients(params, xp, dtype, *, hidden_size):
    diff, k_h = _minlstm_gates(params, xp, dtype, hidden_size)
    return -jax.nn.softplus(diff), -jax.nn.softplus(-diff) + log_g(k_h)


def minlstm(hidden_size: int, *, log_space: bool = True, param_dtype=jnp.float32) -> Cell:
    """minLSTM (Feng et al. 2024): an LSTM with input-only, normalised gates and no ``c``.

    ::

        f_t = sigmoid(x_t W_f + b_f),  i_t = sigmoid(x_t W_i + b_i)
        f'_t = f_t / (f_t + i_t),      i'_t = i_t / (f_t + i_t)
        h~_t = g(x_t W_h + b_h)        (log_space=True; x_t W_h + b_h otherwise)
        h_t = f'_t * h_{t-1} + i'_t * h~_t

    Params: ``{"W": [D, 3H], "b": [3H]}``, blocks ``(f, i, h)``. Carry:
    ``h [H]``; output ``h``. Initialisation: each ``[D, H]`` block
    Glorot-uniform, ``b`` zero. The normalised gates are computed from
    ``diff = softplus(-k_f) - softplus(-k_i)`` (``f' = sigmoid(-diff)``), as in
    the paper's code, which is exact and never divides by an underflowed sum.

    Args:
      hidden_size: H.
      log_space: as in :func:`mingru`.
      param_dtype: dtype of the parameters made by ``init``.
    """
    return _minimal_cell(
        "minlstm",
        hidden_size,
        blocks=3,
        log_space=log_space,
        param_dtype=param_dtype,
        coefficients=_minlstm_coefficients,
        log_coefficients=_minlstm_log_coefficients,
    )


# ---------------------------------------------------------------------------- LRU

_LRU_KEYS = ("nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D")


def _lru_init(key, input_size, *, hidden_size, state_size, r_min, r_max, max_phase, param_dtype):
    input_size = _check_input_size(input_size)
    keys = jax.random.split(key, 7)
    dtype = compute_dtype(param_dtype)  # sampled in float32 (float64), then cast
    tiny = jnp.finfo(dtype).tiny
    # Ring initialisation: |lambda| uniform on the ring r_min <= |lambda| <= r_max (in area).
    u1 = jax.random.uniform(keys[0], (state_size,), dtype, minval=tiny)
    u2 = jax.random.uniform(keys[1], (state_size,), dtype, minval=tiny)
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    modulus = jnp.exp(-jnp.exp(nu_log))
    gamma_log = jnp.log(jnp.sqrt(1.0 - modulus**2))

    def normal(k, shape, fan_in):
        return jax.random.normal(k, shape, dtype) / math.sqrt(fan_in)

    params = {
        "nu_log": nu_log,
        "theta_log": theta_log,
        "gamma_log": gamma_log,
        # B ~ N(0, 1/(2D)) per part: E|B x|^2 = |x|^2 / D, as the paper's code.
        "B_re": normal(keys[2], (input_size, state_size), 2 * input_size),
        "B_im": normal(keys[3], (input_size, state_size), 2 * input_size),
        "C_re": normal(keys[4], (state_size, hidden_size), state_size),
        "C_im": normal(keys[5], (state_size, hidden_size), state_size),
        "D": normal(keys[6], (input_size, hidden_size), input_size),
    }
    return {name: value.astype(param_dtype) for name, value in params.items()}


def _lru_project(params, x, *, hidden_size, state_size):
    _check_params(params, _LRU_KEYS, "lru")
    x = _checks.as_array(x, "x")
    _checks.check_floating(x, "x")
    weight = jnp.concatenate([params["B_re"], params["B_im"], params["D"]], axis=1)
    if x.ndim < 1 or x.shape[-1] != weight.shape[0]:
        raise InputWidthError(x.shape, weight.shape[0], "B_re", "lru")
    dtype = compute_dtype(x.dtype, weight.dtype)
    return jnp.tensordot(x.astype(dtype), weight.astype(dtype), axes=1)


def _lru_lambda(params, dtype):
    """``lambda = exp(-exp(nu_log) + i exp(theta_log))`` [N], complex."""
    modulus = jnp.exp(-jnp.exp(params["nu_log"].astype(dtype)))
    phase = jnp.exp(params["theta_log"].astype(dtype))
    return jax.lax.complex(modulus * jnp.cos(phase), modulus * jnp.sin(phase))


def _lru_coefficients(params, xp, dtype, *, hidden_size, state_size):
    _check_params(params, _LRU_KEYS, "lru")
    _check_width(xp, 2 * state_size + hidden_size, "lru")
    xp = xp.astype(dtype)
    gamma = jnp.exp(params["gamma_log"].astype(dtype))
    lead = (1,) * (xp.ndim - 1)
    gamma = gamma.reshape(lead + gamma.shape)
    b_re = gamma * xp[..., :state_size]
    b_im = gamma * xp[..., state_size : 2 * state_size]
    b = jax.lax.complex(b_re, b_im)
    a = jnp.broadcast_to(_lru_lambda(params, dtype).reshape(lead + (state_size,)), b.shape)
    return a, b


def _lru_initial_carry(params, dtype=jnp.float32, *, hidden_size, state_size):
    del params
    zeros = jnp.zeros((state_size,), dtype)
    return (zeros, zeros, jnp.zeros((hidden_size,), dtype))


def _lru_to_state(carry, *, hidden_size, state_size):
    if not isinstance(carry, tuple) or len(carry) != 3:
        raise ValueError(
            "`carry` of an lru cell must be a tuple (h_re [N], h_im [N], y [H]), got "
            f"{type(carry).__name__}"
        )
    h_re, h_im, y = (_checks.as_array(c, "carry") for c in carry)
    want = ((state_size,), (state_size,), (hidden_size,))
    if (h_re.shape, h_im.shape, y.shape) != want:
        raise _checks.shape_error(
            f"`carry` of an lru cell must hold arrays of shapes {want} for ONE example, got "
            f"{(h_re.shape, h_im.shape, y.shape)} (use `jax.vmap` or `recurrence.rnn` for a "
            "batch)"
        )
    return jax.lax.complex(h_re, h_im)


def _lru_readout(params, s, xp, *, hidden_size, state_size):
    dtype = s.real.dtype
    h_re, h_im = s.real, s.imag
    y = (
        jnp.tensordot(h_re, params["C_re"].astype(dtype), axes=1)
        - jnp.tensordot(h_im, params["C_im"].astype(dtype), axes=1)
        + xp[..., 2 * state_size :].astype(dtype)
    )
    return (h_re, h_im, y)


def _lru_output(carry):
    return carry[2]


def _check_ring(r_min, r_max, max_phase) -> tuple[float, float, float]:
    for value, name in ((r_min, "r_min"), (r_max, "r_max"), (max_phase, "max_phase")):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"`{name}` must be a Python float, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"`{name}` must be finite, got {value}")
    if not 0.0 <= r_min < 1.0:
        raise ValueError(f"`r_min` must be in [0, 1), got {r_min}")
    if not r_min < r_max < 1.0:
        raise ValueError(f"`r_max` must be in (r_min, 1) = ({r_min}, 1), got {r_max}")
    if not 0.0 < max_phase <= 2 * math.pi:
        raise ValueError(f"`max_phase` must be in (0, 2*pi], got {max_phase}")
    return float(r_min), float(r_max), float(max_phase)


def lru(
    hidden_size: int,
    *,
    state_size: int | None = None,
    r_min: float = 0.9,
    r_max: float = 0.999,
    max_phase: float = 2 * math.pi,
    param_dtype=jnp.float32,
) -> Cell:
    """The Linear Recurrent Unit (Orvieto et al. 2023): a complex diagonal linear RNN.

    ::

        lambda = exp(-exp(nu_log) + i exp(theta_log))       [N], |lambda| < 1
        gamma = exp(gamma_log)                               [N]
        h_t = lambda * h_{t-1} + gamma * (x_t B)             complex [N]
        y_t = Re(h_t C) + x_t D                              [H]

    with ``B = B_re + i B_im`` ``[D, N]`` and ``C = C_re + i C_im`` ``[N, H]``.
    The exponential parameterisation keeps ``|lambda| < 1`` for any ``nu_log``;
    ``gamma`` is initialised to the normalisation ``sqrt(1 - |lambda|^2)`` (so
    the state's scale does not blow up as ``|lambda| -> 1``) and then trained,
    as in the paper's code. Ring initialisation: ``|lambda|`` uniform (in area)
    on ``[r_min, r_max]``, phase uniform on ``[0, max_phase]``; ``B`` and ``C``
    Glorot-like normal. ``D`` is a dense ``[D, H]`` skip matrix (the paper's
    ``D`` is diagonal because its input and output widths agree; a dense one
    allows ``D != H``).

    Params: ``nu_log, theta_log, gamma_log [N]``, ``B_re, B_im [D, N]``,
    ``C_re, C_im [N, H]``, ``D [D, H]``. Carry: ``(Re h [N], Im h [N],
    y [H])``; output ``y``. ``project`` gives ``[x B_re, x B_im, x D]``
    (``[..., 2N + H]``).

    Args:
      hidden_size: H, the output width.
      state_size: N (default H).
      r_min, r_max: the ring of the initial eigenvalues, ``0 <= r_min < r_max < 1``.
        Close to 1 (the default 0.9 - 0.999) remembers over long ranges.
      max_phase: the largest initial phase, in ``(0, 2 pi]``.
      param_dtype: dtype of the parameters made by ``init``.
    """
    hidden_size = _check_hidden_size(hidden_size)
    state_size = hidden_size if state_size is None else state_size
    if isinstance(state_size, bool) or not isinstance(state_size, int) or state_size < 1:
        raise ValueError(f"`state_size` must be a positive Python int, got {state_size!r}")
    r_min, r_max, max_phase = _check_ring(r_min, r_max, max_phase)
    sizes = dict(hidden_size=hidden_size, state_size=state_size)
    step = LinearStep(
        width=2 * state_size + hidden_size,
        coefficients=_bind(_lru_coefficients, **sizes),
        log_coefficients=None,
        to_state=_bind(_lru_to_state, **sizes),
        readout=_bind(_lru_readout, **sizes),
    )
    return Cell(
        name="lru",
        hidden_size=hidden_size,
        init=_bind(
            _lru_init,
            **sizes,
            r_min=r_min,
            r_max=r_max,
            max_phase=max_phase,
            param_dtype=_check_param_dtype(param_dtype),
        ),
        initial_carry=_bind(_lru_initial_carry, **sizes),
        project=_bind(_lru_project, **sizes),
        step=step,
        output=_lru_output,
    )
