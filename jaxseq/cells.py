"""Recurrent cells: Elman, GRU and LSTM as pairs of pure functions over a params dict.

Notation: T time, D input features, H hidden, G projected width (H for Elman,
3H for GRU, 4H for LSTM). Row-vector convention: ``x`` is ``[D]`` and a weight is
``[D, G]``, so a step is ``x @ W``.

A :class:`Cell` splits a step into two parts so that the input projection can
be hoisted out of the time loop as one big matmul:

* ``project(params, x [..., D]) -> xp [..., G]``: the input projection *with*
  the input bias, on any leading dims (``[D]``, ``[T, D]``, ``[B, T, D]``);
* ``step(params, carry, xp_t [G]) -> carry``: advance one step from a
  projected input.

``initial_carry(params, dtype)`` is the zero state of ONE example (Elman/GRU:
``h [H]``; LSTM: ``(h [H], c [H])``) and ``output(carry) -> h [H]``.

Dtypes: ``project`` computes in float32 (float64 if the input or the params are
float64), so bfloat16/float16 inputs are projected in float32. ``step`` computes
in the dtype of the carry: keep the carry in float32 (the default
``initial_carry``) and the whole recurrence runs in float32 even for bfloat16
inputs or params.

Cells are equal (and hash equal) when they have the same kind and settings, so
``cells.gru(8) == cells.gru(8)`` and a cell can be a static argument of
``jax.jit`` without retracing. A cell is a NamedTuple and therefore a pytree
whose leaves are not arrays: close over it or mark it static, never pass it to
``jit`` as a traced argument.

PyTorch equivalence (weights transposed because PyTorch multiplies ``W x``):

====== ==================== =============================================
cell   PyTorch               jaxseq params
====== ==================== =============================================
elman  ``nn.RNN`` (tanh)     ``U = weight_ih.T``, ``W = weight_hh.T``,
                             ``b = bias_ih + bias_hh``
gru    ``nn.GRU``            ``W_i = weight_ih.T``, ``W_h = weight_hh.T``,
                             ``b_i = bias_ih``, ``b_h = bias_hh``
lstm   ``nn.LSTM``           ``W_i = weight_ih.T``, ``W_h = weight_hh.T``,
                             ``b = bias_ih + bias_hh``
====== ==================== =============================================

Gate blocks keep PyTorch's order: GRU ``(r, z, n)``, LSTM ``(i, f, g, o)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxseq import _checks

Params = dict[str, jax.Array]
Carry = Any  # jax.Array [H] or a tuple of them (LSTM: (h, c))


class Cell(NamedTuple):
    """A recurrent cell: a name, a hidden size and pure functions (see the module doc).

    Attributes:
      name: ``"elman"``, ``"gru"`` or ``"lstm"`` for the cells made by :func:`elman`,
        :func:`gru`, :func:`lstm` (any name for a cell of your own: the recurrence
        recognises the built-in cells by value, not by name, so a cell of your own
        runs with ``method=jaxseq.Scan()`` even if it is called ``"gru"``).
      hidden_size: H.
      init: ``(key, input_size) -> params`` (a dict of arrays).
      initial_carry: ``(params, dtype=jnp.float32) -> carry`` for ONE example, zeros.
      project: ``(params, x [..., D]) -> xp [..., G]``, input projection incl. input bias.
      step: ``(params, carry, xp_t [G]) -> carry``.
      output: ``(carry) -> h [H]``.
    """

    name: str
    hidden_size: int
    init: Callable[..., Params]
    initial_carry: Callable[..., Carry]
    project: Callable[[Params, jax.Array], jax.Array]
    step: Callable[[Params, Carry, jax.Array], Carry]
    output: Callable[[Carry], jax.Array]


@dataclasses.dataclass(frozen=True)
class _Bound:
    """``functools.partial`` with value equality, so equal cells compare and hash equal."""

    fn: Callable
    options: tuple[tuple[str, Any], ...]

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **dict(self.options), **kwargs)


def _bind(fn: Callable, **options) -> _Bound:
    return _Bound(fn, tuple(sorted(options.items())))


# ---------------------------------------------------------------------------- dtypes & shapes


def compute_dtype(*dtypes) -> jnp.dtype:
    """float64 if any of ``dtypes`` is float64, else float32 (also for bf16/f16)."""
    if any(jnp.dtype(d) == jnp.float64 for d in dtypes):
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def param_dtypes(params) -> list:
    """The dtypes of the leaves of a params pytree (for :func:`compute_dtype`)."""
    return [leaf.dtype for leaf in jax.tree.leaves(params)]


def _check_hidden_size(hidden_size) -> int:
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
        raise ValueError(f"`hidden_size` must be a positive Python int, got {hidden_size!r}")
    return hidden_size


def _check_input_size(input_size) -> int:
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"`input_size` must be a positive Python int, got {input_size!r}")
    return input_size


def _check_param_dtype(param_dtype) -> jnp.dtype:
    try:
        dtype = jnp.dtype(param_dtype)
    except TypeError as e:
        raise TypeError(f"`param_dtype` must be a dtype, got {param_dtype!r}") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"`param_dtype` must be a floating dtype, got {dtype}")
    return dtype


#: The weights of the built-in cells: gates k (G = k H), input weight [D, G], recurrent
#: weight [H, G], biases [G].
_LAYOUTS = {
    "elman": (1, "U", "W", ("b",)),
    "gru": (3, "W_i", "W_h", ("b_i", "b_h")),
    "lstm": (4, "W_i", "W_h", ("b",)),
}


def _check_params(
    params, names: tuple[str, ...], cell_name: str, hidden_size: int | None = None
) -> None:
    """The keys of ``params`` (``ValueError``) and, with ``hidden_size`` (a cell of
    ``_LAYOUTS``), the shape of each weight (a shape ``AssertionError`` naming it)."""
    if not isinstance(params, dict) or set(params) != set(names):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"`params` of a {cell_name} cell must be a dict with keys {names}, got {got}"
        )
    if hidden_size is None:
        return
    gates, w_in, w_rec, biases = _LAYOUTS[cell_name]
    width = gates * hidden_size
    shapes = {w_in: (None, width), w_rec: (hidden_size, width), **{b: (width,) for b in biases}}
    for name, want in shapes.items():
        shape = tuple(jnp.shape(params[name]))
        if len(shape) != len(want) or any(w not in (None, g) for g, w in zip(shape, want)):
            shown = "(" + ", ".join("D" if w is None else str(w) for w in want) + ")"
            raise _checks.shape_error(
                f"`params['{name}']` of a {cell_name} cell of hidden size {hidden_size} "
                f"must have shape {shown}, got {shape}"
            )


def _linear(x, weight, bias, dtype):
    """``x [..., K] @ weight [K, G] + bias [G]`` in ``dtype``, no implicit rank promotion."""
    out = jnp.tensordot(x.astype(dtype), weight.astype(dtype), axes=1)
    return out + bias.astype(dtype).reshape((1,) * (out.ndim - 1) + bias.shape)


class InputWidthError(AssertionError):
    """The shape error of ``project`` when ``x``'s last axis is not the cell's input width.

    An ``AssertionError`` (the type of every shape error) that also carries what the
    front-end needs to name its own argument (``xs``): ``expected`` (D), ``weight``
    (the params entry it comes from) and ``cell_name``.
    """

    def __init__(self, x_shape, expected: int, weight: str, cell_name: str):
        super().__init__(
            f"`x` must have shape [..., D] with D = {expected} (from `params['{weight}']` "
            f"of the {cell_name} cell), got {tuple(x_shape)}"
        )
        self.expected, self.weight, self.cell_name = expected, weight, cell_name


def _project(params, x, *, weight: str, bias: str, cell_name: str):
    x = _checks.as_array(x, "x")
    _checks.check_floating(x, "x")
    w = params[weight]
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise InputWidthError(x.shape, w.shape[0], weight, cell_name)
    return _linear(x, w, params[bias], compute_dtype(x.dtype, w.dtype))


def _check_step(h, xp, width: int, hidden_size: int, cell_name: str) -> None:
    if h.shape != (hidden_size,):
        raise _checks.shape_error(
            f"`carry` of a {cell_name} cell must hold [H] = [{hidden_size}] arrays for ONE "
            f"example, got {tuple(h.shape)} (use `jax.vmap` or `recurrence.rnn` for a batch)"
        )
    if xp.shape != (width,):
        raise _checks.shape_error(
            f"`xp_t` of a {cell_name} cell must have shape [G] = [{width}] (the output of "
            f"`project` for one step), got {tuple(xp.shape)}"
        )


# ---------------------------------------------------------------------------- initialisation


def _glorot_blocks(key, input_size: int, hidden_size: int, blocks: int, dtype):
    """Glorot-uniform ``[D, blocks*H]``, each ``[D, H]`` gate block scaled on its own."""
    init = jax.nn.initializers.glorot_uniform()
    keys = jax.random.split(key, blocks)
    init_dtype = compute_dtype(dtype)  # sampled in float32 (float64), then cast
    weight = jnp.concatenate([init(k, (input_size, hidden_size), init_dtype) for k in keys], 1)
    return weight.astype(dtype)


def _orthogonal_blocks(key, hidden_size: int, blocks: int, dtype):
    """``[H, blocks*H]``: an independent orthogonal ``[H, H]`` matrix per gate block."""
    init = jax.nn.initializers.orthogonal()
    keys = jax.random.split(key, blocks)
    init_dtype = compute_dtype(dtype)  # QR in float32 (float64): no bfloat16 QR on CPU
    weight = jnp.concatenate([init(k, (hidden_size, hidden_size), init_dtype) for k in keys], 1)
    return weight.astype(dtype)


# ---------------------------------------------------------------------------- Elman


def _elman_init(key, input_size, *, hidden_size, param_dtype):
    input_size = _check_input_size(input_size)
    k_u, k_w = jax.random.split(key)
    return {
        "U": _glorot_blocks(k_u, input_size, hidden_size, 1, param_dtype),
        "W": _orthogonal_blocks(k_w, hidden_size, 1, param_dtype),
        "b": jnp.zeros((hidden_size,), param_dtype),
    }


def _zeros_carry(params, dtype=jnp.float32, *, hidden_size):
    del params
    return jnp.zeros((hidden_size,), dtype)


def _elman_project(params, x, *, hidden_size):
    _check_params(params, ("U", "W", "b"), "elman", hidden_size)
    return _project(params, x, weight="U", bias="b", cell_name="elman")


def _elman_step(params, carry, xp, *, hidden_size):
    _check_params(params, ("U", "W", "b"), "elman", hidden_size)
    h = carry
    _check_step(h, xp, hidden_size, hidden_size, "elman")
    dtype = h.dtype
    return jnp.tanh(xp.astype(dtype) + h @ params["W"].astype(dtype))


def _identity(carry):
    return carry


def elman(hidden_size: int, *, param_dtype=jnp.float32) -> Cell:
    """The Elman (vanilla tanh) RNN cell: ``s_t = tanh(x_t U + s_{t-1} W + b)``.

    Params: ``{"U": [D, H], "W": [H, H], "b": [H]}``. Carry: ``s [H]``; output ``s``.

    Same as PyTorch ``nn.RNN(nonlinearity="tanh")`` with ``U = weight_ih_l0.T``,
    ``W = weight_hh_l0.T`` and ``b = bias_ih_l0 + bias_hh_l0``.

    Initialisation: ``U`` Glorot-uniform, ``W`` orthogonal (gradients neither
    explode nor vanish through ``W`` at the start), ``b`` zero.

    Args:
      hidden_size: H.
      param_dtype: dtype of the parameters made by ``init``.

    >>> import jax, jax.numpy as jnp
    >>> from jaxseq import cells
    >>> cell = cells.elman(4)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> carry = cell.step(params, cell.initial_carry(params), cell.project(params, jnp.ones(3)))
    >>> cell.output(carry).shape
    (4,)
    """
    hidden_size = _check_hidden_size(hidden_size)
    return Cell(
        name="elman",
        hidden_size=hidden_size,
        init=_bind(
            _elman_init, hidden_size=hidden_size, param_dtype=_check_param_dtype(param_dtype)
        ),
        initial_carry=_bind(_zeros_carry, hidden_size=hidden_size),
        project=_bind(_elman_project, hidden_size=hidden_size),
        step=_bind(_elman_step, hidden_size=hidden_size),
        output=_identity,
    )


# ---------------------------------------------------------------------------- GRU

_GRU_KEYS = ("W_i", "W_h", "b_i", "b_h")


def _gru_init(key, input_size, *, hidden_size, param_dtype):
    input_size = _check_input_size(input_size)
    k_i, k_h = jax.random.split(key)
    return {
        "W_i": _glorot_blocks(k_i, input_size, hidden_size, 3, param_dtype),
        "W_h": _orthogonal_blocks(k_h, hidden_size, 3, param_dtype),
        "b_i": jnp.zeros((3 * hidden_size,), param_dtype),
        "b_h": jnp.zeros((3 * hidden_size,), param_dtype),
    }


def _gru_project(params, x, *, hidden_size):
    _check_params(params, _GRU_KEYS, "gru", hidden_size)
    return _project(params, x, weight="W_i", bias="b_i", cell_name="gru")


def _gru_step(params, carry, xp, *, hidden_size):
    _check_params(params, _GRU_KEYS, "gru", hidden_size)
    h = carry
    _check_step(h, xp, 3 * hidden_size, hidden_size, "gru")
    dtype = h.dtype
    hp = _linear(h, params["W_h"], params["b_h"], dtype)
    xp = xp.astype(dtype)
    x_r, x_z, x_n = jnp.split(xp, 3)
    h_r, h_z, h_n = jnp.split(hp, 3)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    return (1.0 - z) * n + z * h


def gru(hidden_size: int, *, param_dtype=jnp.float32) -> Cell:
    """The GRU cell with PyTorch ``nn.GRU``'s equations and gate order ``(r, z, n)``::

        r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
        z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
        n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
        h' = (1 - z) * n + z * h

    Params: ``{"W_i": [D, 3H], "W_h": [H, 3H], "b_i": [3H], "b_h": [3H]}`` with
    ``W_i = weight_ih_l0.T``, ``W_h = weight_hh_l0.T``, ``b_i = bias_ih_l0``,
    ``b_h = bias_hh_l0``. ``b_h`` stays separate from ``b_i`` because ``b_hn`` is
    inside ``r * (...)``. Carry: ``h [H]``; output ``h``.

    Initialisation: each ``[D, H]`` block of ``W_i`` Glorot-uniform, each
    ``[H, H]`` block of ``W_h`` orthogonal, biases zero.

    Args:
      hidden_size: H.
      param_dtype: dtype of the parameters made by ``init``.
    """
    hidden_size = _check_hidden_size(hidden_size)
    return Cell(
        name="gru",
        hidden_size=hidden_size,
        init=_bind(_gru_init, hidden_size=hidden_size, param_dtype=_check_param_dtype(param_dtype)),
        initial_carry=_bind(_zeros_carry, hidden_size=hidden_size),
        project=_bind(_gru_project, hidden_size=hidden_size),
        step=_bind(_gru_step, hidden_size=hidden_size),
        output=_identity,
    )


# ---------------------------------------------------------------------------- LSTM

_LSTM_KEYS = ("W_i", "W_h", "b")


def _lstm_init(key, input_size, *, hidden_size, param_dtype, forget_bias):
    input_size = _check_input_size(input_size)
    k_i, k_h = jax.random.split(key)
    b = jnp.zeros((4 * hidden_size,), param_dtype)
    b = b.at[hidden_size : 2 * hidden_size].set(forget_bias)
    return {
        "W_i": _glorot_blocks(k_i, input_size, hidden_size, 4, param_dtype),
        "W_h": _orthogonal_blocks(k_h, hidden_size, 4, param_dtype),
        "b": b,
    }


def _lstm_initial_carry(params, dtype=jnp.float32, *, hidden_size):
    del params
    return (jnp.zeros((hidden_size,), dtype), jnp.zeros((hidden_size,), dtype))


def _lstm_project(params, x, *, hidden_size):
    _check_params(params, _LSTM_KEYS, "lstm", hidden_size)
    return _project(params, x, weight="W_i", bias="b", cell_name="lstm")


def _lstm_step(params, carry, xp, *, hidden_size):
    _check_params(params, _LSTM_KEYS, "lstm", hidden_size)
    if not isinstance(carry, tuple) or len(carry) != 2:
        raise ValueError(f"`carry` of an lstm cell must be a tuple (h, c), got {type(carry)}")
    h, c = carry
    _check_step(h, xp, 4 * hidden_size, hidden_size, "lstm")
    _check_step(c, xp, 4 * hidden_size, hidden_size, "lstm")
    dtype = h.dtype
    gates = xp.astype(dtype) + h @ params["W_h"].astype(dtype)
    i, f, g, o = jnp.split(gates, 4)
    c = jax.nn.sigmoid(f) * c.astype(dtype) + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c)


def _lstm_output(carry):
    return carry[0]


def lstm(hidden_size: int, *, forget_bias: float = 1.0, param_dtype=jnp.float32) -> Cell:
    """The LSTM cell with PyTorch ``nn.LSTM``'s equations and gate order ``(i, f, g, o)``::

        [i, f, g, o] = x W_i + h W_h + b
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')

    Params: ``{"W_i": [D, 4H], "W_h": [H, 4H], "b": [4H]}`` with
    ``W_i = weight_ih_l0.T``, ``W_h = weight_hh_l0.T``,
    ``b = bias_ih_l0 + bias_hh_l0``. Carry: ``(h [H], c [H])``; output ``h``.

    Initialisation: each ``[D, H]`` block of ``W_i`` Glorot-uniform, each
    ``[H, H]`` block of ``W_h`` orthogonal, ``b`` zero except the forget-gate
    block, set to ``forget_bias`` (1.0 by default, so the cell remembers at the
    start of training; 0.0 matches PyTorch's convention of no special bias).

    Args:
      hidden_size: H.
      forget_bias: initial value of the forget-gate bias block ``b[H:2H]``.
      param_dtype: dtype of the parameters made by ``init``.
    """
    hidden_size = _check_hidden_size(hidden_size)
    if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)):
        raise TypeError(f"`forget_bias` must be a Python float, got {forget_bias!r}")
    if not math.isfinite(forget_bias):
        raise ValueError(f"`forget_bias` must be finite, got {forget_bias}")
    return Cell(
        name="lstm",
        hidden_size=hidden_size,
        init=_bind(
            _lstm_init,
            hidden_size=hidden_size,
            param_dtype=_check_param_dtype(param_dtype),
            forget_bias=float(forget_bias),
        ),
        initial_carry=_bind(_lstm_initial_carry, hidden_size=hidden_size),
        project=_bind(_lstm_project, hidden_size=hidden_size),
        step=_bind(_lstm_step, hidden_size=hidden_size),
        output=_lstm_output,
    )
