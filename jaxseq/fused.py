"""A fast path for the batched masked recurrence: time-major, with a hand-written backward.

Notation: B batch, T time, D input features, H hidden, G projected width (H for
Elman, 3H for GRU, 4H for LSTM). Shape suffixes on local names (``xs_TBD``).

:func:`rnn`, :func:`bidirectional` and :func:`stack` have the signatures and
the semantics of their namesakes in :mod:`jaxseq.recurrence` (padded outputs
exactly 0, the carry held at padded steps, the final carry at step
``length - 1``, ``reverse`` within each sequence's own length, padding
sanitised before any arithmetic, float32 state for bfloat16 inputs), and the
same params (``cells.elman``/``gru``/``lstm`` dicts), so a model can switch
between the two. They are pure functions: ``jit``, ``vmap`` and ``grad`` them
as usual. Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) is not
available, because the recurrence is a ``jax.custom_vjp``; use
:mod:`jaxseq.recurrence` for that. Cells other than the three built-in kinds
are rejected (the backward pass is written by hand for each).

How it differs from the reference path (``vmap`` of a per-example masked
``lax.scan``, differentiated by JAX):

* One time-major loop over ``[T, B, ...]``: every step is a ``[B, H] @ [H, G]``
  matmul, not B matrix-vector products. The input projection ``xs @ W_i`` is one
  ``[T*B, D] @ [D, G]`` matmul before the loop.
* A hand-written backward pass (``jax.custom_vjp`` over the whole sequence). The
  forward loop stores, per step, the gate activations (written *over* that step's
  projected inputs, in place) and the states. The backward pass is a reverse
  loop whose only matmul is ``dG @ W_hᵀ``; it writes each step's ``dG`` over
  that step's activations, in place again. ``dW_i``, ``dW_h``, the bias
  gradients and ``dxs`` come after the loop, as ``[T*B]``-row matmuls and sums
  (what cuDNN and oneDNN do). No per-step stacks are zero-filled or copied.
* Masking costs a select per step: every sequence runs on for all T steps on
  zeroed padding, the outputs are zeroed at padded steps as they are written,
  and the final carry is picked at step ``length - 1``. In the backward pass
  the cotangents of padded steps are exactly 0 and the values there finite
  (bounded nonlinearities, zero inputs), so nothing leaks from them.
* Gate nonlinearities are ``tanh`` only (``sigmoid(a) = (1 + tanh(a / 2)) / 2``,
  one ``tanh`` for all four LSTM gates): on XLA:CPU, ``logistic`` fused with a
  dynamic slice, as in a loop body, runs several times slower than ``tanh``.

Memory: the residuals are ``hs`` and one ``[T, B, G]`` buffer (LSTM: also ``cs``;
GRU: one more ``[T, B, H]``); the same buffers then hold the backward pass's
``dG``. ``remat`` is therefore not an option here.

Numerics: the results equal the reference path's up to float rounding (the
tests compare values and gradients at ``1e-5``), not bit for bit: the batched
matmuls sum in a different order.

>>> import jax, jax.numpy as jnp
>>> from jaxseq import cells, fused, recurrence
>>> cell = cells.lstm(5)
>>> params = cell.init(jax.random.key(0), 3)
>>> xs, lengths = jnp.ones((2, 4, 3)), jnp.array([4, 1])
>>> (h, c), hs = fused.rnn(cell, params, xs, lengths)
>>> (h_ref, c_ref), hs_ref = recurrence.rnn(cell, params, xs, lengths)
>>> bool(jnp.allclose(hs, hs_ref, atol=1e-6)), bool(jnp.allclose(c, c_ref, atol=1e-6))
(True, True)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxseq import cells, masks, recurrence

Params = Any

__all__ = ["KINDS", "bidirectional", "rnn", "stack"]

KINDS = ("elman", "gru", "lstm")


class _Plan(NamedTuple):
    """How the core loops run (speed only; every plan computes the same function).

    Attributes:
      unroll: steps per iteration of the forward and backward loops (``fori_loop``'s
        ``unroll``).
    """

    unroll: int = 1


DEFAULT_PLAN = _Plan()


# ---------------------------------------------------------------------------- helpers


def _row(v, dtype):
    """A ``[G]`` vector as a ``[1, G]`` array of ``dtype`` (broadcasts against ``[B, G]``)."""
    return jnp.asarray(v, dtype).reshape(1, -1)


def _at(stack_TBF, t):
    return jax.lax.dynamic_index_in_dim(stack_TBF, t, 0, keepdims=False)


def _put(stack_TBF, t, value_BF):
    return jax.lax.dynamic_update_index_in_dim(stack_TBF, value_BF, t, 0)


def _steps(t, lengths_B):
    """``valid [B, 1]`` (step t is inside the sequence) and ``last [B, 1]`` (t is its last)."""
    return (t < lengths_B)[:, None], (t == lengths_B - 1)[:, None]


def _lstm_gate_constants(size: int, dtype):
    """Per-column ``k, s, m`` with ``act = m + s * tanh(k * a)`` for the 4H LSTM gates.

    ``sigmoid(a) = 0.5 + 0.5 * tanh(a / 2)`` for i, f, o and ``tanh(a)`` for g: one
    ``tanh`` over all four blocks, no ``logistic`` (XLA:CPU runs ``logistic`` several
    times slower than ``tanh`` when it is fused with a dynamic slice, as in a loop).
    ``d act / d a = s k (1 - u²)`` with ``u = (act - m) / s``.
    """
    import numpy as np

    k = np.full(4 * size, 0.5)
    s = np.full(4 * size, 0.5)
    m = np.full(4 * size, 0.5)
    k[2 * size : 3 * size] = 1.0
    s[2 * size : 3 * size] = 1.0
    m[2 * size : 3 * size] = 0.0
    return _row(k, dtype), _row(s, dtype), _row(m, dtype), _row(s * k, dtype), _row(1 / s, dtype)


def _sigmoid(a):
    return 0.5 + 0.5 * jnp.tanh(0.5 * a)


# ---------------------------------------------------------------------------- cells
#
# step(w, carry, xp_BG) -> (new carry, h_BH, act_BG or None, extra_BH or None)
#   act: what the backward pass needs of the gates, written over xp in the projection
#   buffer; extra: one more [B, H] per step (LSTM: c, GRU: the n block of h W_h + b_h).
# The weights ``w`` are a dict: "W_i" [D, G], "W_h" [H, G], "b_i" [G] (+ "b_h" [3H] for gru).


def _elman_step(w, h_BH, xp_BG):
    h_BH = jnp.tanh(xp_BG + h_BH @ w["W_h"] + _row(w["b_i"], h_BH.dtype))
    return h_BH, h_BH, None, None


def _gru_step(w, h_BH, xp_BG):
    size = h_BH.shape[-1]
    b_i, b_h = _row(w["b_i"], h_BH.dtype), _row(w["b_h"], h_BH.dtype)
    hp_BG = h_BH @ w["W_h"]
    rz_B2H = _sigmoid(
        xp_BG[:, : 2 * size] + hp_BG[:, : 2 * size] + b_i[:, : 2 * size] + b_h[:, : 2 * size]
    )
    hp_n_BH = hp_BG[:, 2 * size :] + b_h[:, 2 * size :]
    n_BH = jnp.tanh(xp_BG[:, 2 * size :] + b_i[:, 2 * size :] + rz_B2H[:, :size] * hp_n_BH)
    new_BH = n_BH + rz_B2H[:, size:] * (h_BH - n_BH)
    return new_BH, new_BH, jnp.concatenate([rz_B2H, n_BH], axis=1), hp_n_BH


def _lstm_step(w, carry, xp_BG):
    h_BH, c_BH = carry
    size = h_BH.shape[-1]
    k, s, m, _, _ = _lstm_gate_constants(size, h_BH.dtype)
    a_BG = xp_BG + h_BH @ w["W_h"] + _row(w["b_i"], h_BH.dtype)
    act_BG = m + s * jnp.tanh(k * a_BG)
    i, f, g, o = (act_BG[:, j * size : (j + 1) * size] for j in range(4))
    c_BH = f * c_BH + i * g
    h_BH = o * jnp.tanh(c_BH)
    return (h_BH, c_BH), h_BH, act_BG, c_BH


_STEPS = {"elman": _elman_step, "gru": _gru_step, "lstm": _lstm_step}


def _forward(kind: str, plan: _Plan, w, xs_TBD, carry0, lengths_B, *, save: bool):
    """The forward loop. Returns ``(hs [T, B, H] masked, final carry)`` and the residuals.

    ``buf [T, B, G]`` starts as ``xs @ W_i`` (one matmul for all steps). Step t reads
    its slice from the loop carry, where step t-1 put it; with ``save``, step t writes
    the gate activations over slice t, *then* reads slice t+1 from the updated buffer:
    a loop whose every read of a buffer follows its in-place update is one that XLA
    runs without copying the buffer (a read that may come after the update forces a
    copy of the whole buffer per step).
    """
    steps = xs_TBD.shape[0]
    step = _STEPS[kind]
    buf_TBG = xs_TBD @ w["W_i"]
    h0_BH = carry0[0] if kind == "lstm" else carry0
    hs_TBH = jnp.zeros((steps,) + h0_BH.shape, h0_BH.dtype)
    extra_TBH = hs_TBH if save and kind != "elman" else None

    def body(t, state):
        carry, final, xp_BG, buf_TBG, hs_TBH, extra_TBH = state
        carry, h_BH, act_BG, extra_BH = step(w, carry, xp_BG)
        valid_B1, last_B1 = _steps(t, lengths_B)
        if save and act_BG is not None:
            buf_TBG = _put(buf_TBG, t, act_BG)
            extra_TBH = _put(extra_TBH, t, extra_BH)
        xp_BG = _at(buf_TBG, jnp.minimum(t + 1, steps - 1))
        hs_TBH = _put(hs_TBH, t, jnp.where(valid_B1, h_BH, jnp.zeros((), h_BH.dtype)))
        final = jax.tree.map(lambda n, f: jnp.where(last_B1, n, f), carry, final)
        return carry, final, xp_BG, buf_TBG, hs_TBH, extra_TBH

    state = (carry0, carry0, buf_TBG[0], buf_TBG, hs_TBH, extra_TBH)
    _, final, _, buf_TBG, hs_TBH, extra_TBH = jax.lax.fori_loop(
        0, steps, body, state, unroll=plan.unroll
    )
    return (hs_TBH, final), (buf_TBG, hs_TBH, extra_TBH)


def _reverse_loop(body, carry, first_BG, buf_TBG, plan: _Plan):
    """``body(t, carry, act_BG) -> (carry, d_BG)`` for t = T-1 .. 0; ``d`` is written over
    slice t of ``buf`` and slice t-1 is read after the write (see :func:`_forward`)."""
    steps = buf_TBG.shape[0]

    def loop_body(j, state):
        carry, act_BG, buf_TBG = state
        t = steps - 1 - j
        carry, d_BG = body(t, carry, act_BG)
        buf_TBG = _put(buf_TBG, t, d_BG)
        return carry, _at(buf_TBG, jnp.maximum(t - 1, 0)), buf_TBG

    carry, _, buf_TBG = jax.lax.fori_loop(
        0, steps, loop_body, (carry, first_BG, buf_TBG), unroll=plan.unroll
    )
    return carry, buf_TBG


def _previous(t, stack_TBH, first_BH):
    """The state before step t: ``stack[t - 1]``, or ``first`` at t = 0."""
    return jnp.where(t == 0, first_BH, _at(stack_TBH, jnp.maximum(t - 1, 0)))


def _output_cotangent(t, lengths_B, dhs_TBH, dfinal_BH):
    """d loss / d h_t from the outputs (valid steps only) and the final carry (at its step)."""
    valid_B1, last_B1 = _steps(t, lengths_B)
    zero = jnp.zeros((), dhs_TBH.dtype)
    return jnp.where(valid_B1, _at(dhs_TBH, t), zero) + jnp.where(last_B1, dfinal_BH, zero)


def _elman_backward(plan, w, carry0, lengths_B, residuals, cotangents):
    buf_TBG, hs_TBH, _ = residuals
    dhs_TBH, dfinal_BH = cotangents
    w_hT = w["W_h"].T

    def body(t, dh_BH, _):
        h_BH = _at(hs_TBH, t)
        dh_BH = dh_BH + _output_cotangent(t, lengths_B, dhs_TBH, dfinal_BH)
        da_BH = dh_BH * (1.0 - h_BH * h_BH)
        return da_BH @ w_hT, da_BH

    dh0_BH, da_TBG = _reverse_loop(body, jnp.zeros_like(carry0), buf_TBG[-1], buf_TBG, plan)
    return da_TBG, da_TBG, dh0_BH, dfinal_BH


def _gru_backward(plan, w, carry0, lengths_B, residuals, cotangents):
    act_TBG, hs_TBH, hp_n_TBH = residuals
    dhs_TBH, dfinal_BH = cotangents
    size = carry0.shape[-1]
    w_hT = w["W_h"].T
    # dxp = [d_r, d_z, d_n] goes over the activations; the n block of dhp (d_n * r) goes
    # over hp_n, with the same read-after-write order as the activations.
    steps = act_TBG.shape[0]

    def loop_body(j, state):
        dh_BH, act_BG, hp_n_BH, act_TBG, hp_n_TBH = state
        t = steps - 1 - j
        r, z, n = act_BG[:, :size], act_BG[:, size : 2 * size], act_BG[:, 2 * size :]
        dh_BH = dh_BH + _output_cotangent(t, lengths_B, dhs_TBH, dfinal_BH)
        # h' = n + z (h - n)
        d_n = dh_BH * (1.0 - z) * (1.0 - n * n)
        d_z = dh_BH * (_previous(t, hs_TBH, carry0) - n) * z * (1.0 - z)
        d_r = d_n * hp_n_BH * r * (1.0 - r)
        d_hn = d_n * r
        dh_BH = dh_BH * z + jnp.concatenate([d_r, d_z, d_hn], axis=1) @ w_hT
        act_TBG = _put(act_TBG, t, jnp.concatenate([d_r, d_z, d_n], axis=1))
        hp_n_TBH = _put(hp_n_TBH, t, d_hn)
        previous = jnp.maximum(t - 1, 0)
        return dh_BH, _at(act_TBG, previous), _at(hp_n_TBH, previous), act_TBG, hp_n_TBH

    state = (jnp.zeros_like(carry0), act_TBG[-1], hp_n_TBH[-1], act_TBG, hp_n_TBH)
    dh0_BH, _, _, dxp_TBG, d_hn_TBH = jax.lax.fori_loop(
        0, steps, loop_body, state, unroll=plan.unroll
    )
    dhp_TBG = jnp.concatenate([dxp_TBG[..., : 2 * size], d_hn_TBH], axis=-1)
    return dxp_TBG, dhp_TBG, dh0_BH, dfinal_BH


def _lstm_backward(plan, w, carry0, lengths_B, residuals, cotangents):
    act_TBG, hs_TBH, cs_TBH = residuals
    dhs_TBH, (dh_final_BH, dc_final_BH) = cotangents
    h0_BH, c0_BH = carry0
    size = h0_BH.shape[-1]
    _, _, m, sk, inv_s = _lstm_gate_constants(size, h0_BH.dtype)
    w_hT = w["W_h"].T
    zero = jnp.zeros((), h0_BH.dtype)

    def body(t, carry, act_BG):
        dh_BH, dc_BH = carry
        i, f, g, o = (act_BG[:, j * size : (j + 1) * size] for j in range(4))
        c_BH = _at(cs_TBH, t)
        c_prev_BH = _previous(t, cs_TBH, c0_BH)
        _, last_B1 = _steps(t, lengths_B)
        dh_BH = dh_BH + _output_cotangent(t, lengths_B, dhs_TBH, dh_final_BH)
        tc = jnp.tanh(c_BH)
        # c' = f c + i g, h' = o tanh(c')
        dc_BH = dc_BH + jnp.where(last_B1, dc_final_BH, zero) + dh_BH * o * (1.0 - tc * tc)
        dact_BG = jnp.concatenate([dc_BH * g, dc_BH * c_prev_BH, dc_BH * i, dh_BH * tc], axis=1)
        u = (act_BG - m) * inv_s
        da_BG = dact_BG * sk * (1.0 - u * u)
        return (da_BG @ w_hT, dc_BH * f), da_BG

    zeros = jnp.zeros_like(h0_BH)
    (dh0_BH, dc0_BH), da_TBG = _reverse_loop(body, (zeros, zeros), act_TBG[-1], act_TBG, plan)
    return da_TBG, da_TBG, (dh0_BH, dc0_BH), (dh_final_BH, dc_final_BH)


_BACKWARDS = {"elman": _elman_backward, "gru": _gru_backward, "lstm": _lstm_backward}


@functools.cache
def _core(kind: str, plan: _Plan):
    """``core(w, xs_TBD, carry0, lengths_B) -> (hs_TBH, final_carry)`` with its VJP.

    The time-major recurrence over all T steps: ``hs`` is 0 at padded steps and the
    final carry is the carry after step ``length - 1`` (``carry0`` for length 0).
    """

    def run(w, xs_TBD, carry0, lengths_B):
        return _forward(kind, plan, w, xs_TBD, carry0, lengths_B, save=False)[0]

    def run_fwd(w, xs_TBD, carry0, lengths_B):
        outputs, residuals = _forward(kind, plan, w, xs_TBD, carry0, lengths_B, save=True)
        return outputs, (w, xs_TBD, carry0, lengths_B, residuals)

    def run_bwd(saved, cotangents):
        w, xs_TBD, carry0, lengths_B, residuals = saved
        dxp_TBG, dhp_TBG, dcarry0, dfinal = _BACKWARDS[kind](
            plan, w, carry0, lengths_B, residuals, cotangents
        )
        # The final carry is carry0 itself where a sequence is empty.
        empty_B1 = (lengths_B == 0)[:, None]
        dcarry0 = jax.tree.map(
            lambda d, df: d + jnp.where(empty_B1, df, jnp.zeros((), df.dtype)), dcarry0, dfinal
        )
        hs_TBH = residuals[1]
        h0_BH = carry0[0] if kind == "lstm" else carry0
        prev_TBH = jnp.concatenate([h0_BH[None], hs_TBH[:-1]], axis=0)
        grads, dxs_TBD = _weight_grads(w, xs_TBD, prev_TBH, dxp_TBG, dhp_TBG)
        return grads, dxs_TBD, dcarry0, None

    core = jax.custom_vjp(run)
    core.defvjp(run_fwd, run_bwd)
    return core


def _rows(x):
    """``[T, B, F]`` -> ``[T*B, F]``."""
    return x.reshape((-1, x.shape[-1]))


def _weight_grads(w, xs_TBD, prev_TBH, dxp_TBG, dhp_TBG):
    """The gradients that need no loop: [T*B]-row matmuls and sums after it."""
    dxp = _rows(dxp_TBG)
    dhp = _rows(dhp_TBG)
    grads = {
        "W_i": _rows(xs_TBD).T @ dxp,
        "W_h": _rows(prev_TBH).T @ dhp,
        "b_i": jnp.sum(dxp, axis=0),
    }
    if "b_h" in w:
        grads["b_h"] = jnp.sum(dhp, axis=0)
    dxs_TBD = (dxp @ w["W_i"].T).reshape(xs_TBD.shape)
    return grads, dxs_TBD


# ---------------------------------------------------------------------------- reversal


@jax.custom_vjp
def _flip(x_BTF, index_BT):
    """``x`` gathered along T by a per-row permutation that is its own inverse."""
    return jnp.take_along_axis(x_BTF, index_BT[..., None], axis=1)


def _flip_fwd(x_BTF, index_BT):
    return _flip(x_BTF, index_BT), index_BT


def _flip_bwd(index_BT, dy_BTF):
    # The transpose of a gather by an involution is the same gather (no scatter-add).
    return _flip(dy_BTF, index_BT), None


_flip.defvjp(_flip_fwd, _flip_bwd)


# ---------------------------------------------------------------------------- the batched rnn


def _weights(kind: str, params, dtype):
    cast = {name: value.astype(dtype) for name, value in params.items()}
    if kind == "elman":
        return {"W_i": cast["U"], "W_h": cast["W"], "b_i": cast["b"]}
    if kind == "lstm":
        return {"W_i": cast["W_i"], "W_h": cast["W_h"], "b_i": cast["b"]}
    return cast


def _check_kind(cell) -> None:
    recurrence._check_cell(cell)
    if cell.name not in KINDS:
        raise ValueError(
            f"jaxseq.fused supports the cells {KINDS} (their backward pass is written by "
            f"hand), got a {cell.name!r} cell; use jaxseq.recurrence for other cells"
        )


def _check_plan(plan) -> None:
    if not isinstance(plan, _Plan):
        raise TypeError(f"`plan` must be a jaxseq.fused._Plan, got {type(plan).__name__}")
    recurrence._check_unroll(plan.unroll)


def _rnn(cell, params, xs_BTD, lengths_B, carry, *, reverse: bool, plan: _Plan):
    """The unchecked batched recurrence. Returns (final carry, hs [B, T, H])."""
    batch, steps, _ = xs_BTD.shape
    dtype = cells.compute_dtype(xs_BTD.dtype, *recurrence._param_dtypes(params))
    if carry is None:
        carry = jax.vmap(lambda _: cell.initial_carry(params, dtype))(jnp.arange(batch))
    else:
        carry = jax.tree.map(lambda c: jnp.asarray(c).astype(dtype), carry)
    lengths_B = jnp.clip(lengths_B.astype(jnp.int32), 0, steps)
    if steps == 0:
        return carry, jnp.zeros((batch, 0, cell.hidden_size), dtype)
    mask_BT = masks.length_mask(lengths_B, steps)
    # Sanitise before any math: padding values never reach a value or a gradient.
    xs_BTD = jnp.where(mask_BT[..., None], xs_BTD.astype(dtype), jnp.zeros((), dtype))
    if reverse:
        index_BT = jax.vmap(lambda n: masks.reverse_index(n, steps))(lengths_B)
        xs_BTD = _flip(xs_BTD, index_BT)
    hs_TBH, final_carry = _core(cell.name, plan)(
        _weights(cell.name, params, dtype), jnp.swapaxes(xs_BTD, 0, 1), carry, lengths_B
    )
    hs_BTH = jnp.swapaxes(hs_TBH, 0, 1)
    if reverse:
        hs_BTH = _flip(hs_BTH, index_BT)
    return final_carry, hs_BTH


def rnn(
    cell: cells.Cell,
    params: Params,
    xs: jax.Array,
    lengths: jax.Array,
    *,
    carry=None,
    reverse: bool = False,
    unroll: int = 1,
):
    """The fast path of :func:`jaxseq.recurrence.rnn`: same arguments, same results.

    Args:
      cell: a ``cells.elman``, ``cells.gru`` or ``cells.lstm`` cell (static).
      params: the cell's params.
      xs: float ``[B, T, D]``; padded steps may hold anything (NaN, inf).
      lengths: integer ``[B]`` in ``[0, T]`` (checked when concrete; under
        ``jit`` a length above T acts as T and a negative one as 0).
      carry: optional initial carry, leaves ``[B, H]``.
      reverse: run each sequence backwards within its own length; ``hs`` stays
        in the original time order.
      unroll: steps per loop iteration of the forward and backward loops.

    Returns:
      ``(final_carry, hs)``: the carry after each sequence's last valid step
      (leaves ``[B, H]``; the initial carry for length 0) and ``hs [B, T, H]``,
      zero at padded steps; float32 (float64 for float64 inputs or params).

    >>> import jax, jax.numpy as jnp
    >>> from jaxseq import cells, fused
    >>> cell = cells.gru(5)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> h, hs = fused.rnn(cell, params, jnp.ones((2, 4, 3)), jnp.array([4, 1]))
    >>> h.shape, hs.shape, bool(jnp.all(hs[1, 1:] == 0)), bool(jnp.all(h[1] == hs[1, 0]))
    ((2, 5), (2, 4, 5), True, True)
    """
    return _checked_rnn(
        cell, params, xs, lengths, carry=carry, reverse=reverse, plan=_Plan(unroll=unroll)
    )


def _checked_rnn(cell, params, xs, lengths, *, carry=None, reverse=False, plan=DEFAULT_PLAN):
    _check_kind(cell)
    _check_plan(plan)
    recurrence._check_flag(reverse, "reverse")
    xs = recurrence._check_xs(xs, 3, "[B, T, D]")
    lengths = recurrence._check_lengths(lengths, xs.shape[0], xs.shape[1])
    if carry is not None:
        carry = recurrence._check_carry(cell, params, carry, xs.shape[0])
    return _rnn(cell, params, xs, lengths, carry, reverse=reverse, plan=plan)


def _bidirectional(cell, params, xs_BTD, lengths_B, carry, *, plan: _Plan):
    carry_f, carry_b = (None, None) if carry is None else carry
    final_f, hs_f = _rnn(
        cell, params["forward"], xs_BTD, lengths_B, carry_f, reverse=False, plan=plan
    )
    final_b, hs_b = _rnn(
        cell, params["backward"], xs_BTD, lengths_B, carry_b, reverse=True, plan=plan
    )
    return (final_f, final_b), jnp.concatenate([hs_f, hs_b], axis=-1)


def bidirectional(
    cell: cells.Cell,
    params: Params,
    xs: jax.Array,
    lengths: jax.Array,
    *,
    carry=None,
    unroll: int = 1,
):
    """The fast path of :func:`jaxseq.recurrence.bidirectional`: same arguments, same results.

    Args:
      cell: the cell of both directions (elman, gru or lstm).
      params: ``{"forward": params_f, "backward": params_b}``.
      xs: float ``[B, T, D]``.
      lengths: integer ``[B]``.
      carry: optional ``(carry_f, carry_b)``, leaves ``[B, H]``.
      unroll: as in :func:`rnn`.

    Returns:
      ``((carry_f, carry_b), hs [B, T, 2H])`` as :func:`jaxseq.recurrence.bidirectional`.
    """
    _check_kind(cell)
    recurrence._check_unroll(unroll)
    recurrence._check_bidirectional_params(params)
    xs = recurrence._check_xs(xs, 3, "[B, T, D]")
    lengths = recurrence._check_lengths(lengths, xs.shape[0], xs.shape[1])
    if carry is not None:
        if not isinstance(carry, tuple) or len(carry) != 2:
            raise ValueError("`carry` of a bidirectional layer must be a tuple (carry_f, carry_b)")
        carry = (
            recurrence._check_carry(cell, params["forward"], carry[0], xs.shape[0], "carry[0]"),
            recurrence._check_carry(cell, params["backward"], carry[1], xs.shape[0], "carry[1]"),
        )
    return _bidirectional(cell, params, xs, lengths, carry, plan=_Plan(unroll=unroll))


def stack(
    cell: cells.Cell,
    layer_params: list,
    xs: jax.Array,
    lengths: jax.Array,
    *,
    bidirectional: bool = False,
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    train: bool = False,
    unroll: int = 1,
):
    """The fast path of :func:`jaxseq.recurrence.stack`: same arguments, same results.

    Stacked (optionally bidirectional) layers with
    :func:`jaxseq.recurrence.variational_dropout` between them (key
    ``fold_in(key, l)`` for the input of layer ``l >= 1``), exactly as the
    reference path; the params come from :func:`jaxseq.recurrence.init_stack`.

    Returns:
      ``(final_carries, hs)``: a list with each layer's final carry and the last
      layer's outputs ``[B, T, H]`` (``[B, T, 2H]`` when bidirectional).
    """
    _check_kind(cell)
    recurrence._check_unroll(unroll)
    recurrence._check_flag(bidirectional, "bidirectional")
    recurrence._check_flag(train, "train")
    recurrence._check_rate(dropout_rate, "dropout_rate")
    if not isinstance(layer_params, (list, tuple)) or not layer_params:
        raise ValueError(
            f"`layer_params` must be a non-empty list of per-layer params, got {layer_params!r}"
        )
    use_dropout = train and dropout_rate > 0.0
    if use_dropout and key is None:
        raise ValueError(
            "`key` is required when train=True and dropout_rate > 0 (variational dropout "
            "between layers); pass a PRNG key, e.g. jax.random.key(0)"
        )
    xs = recurrence._check_xs(xs, 3, "[B, T, D]")
    lengths = recurrence._check_lengths(lengths, xs.shape[0], xs.shape[1])
    if bidirectional:
        for layer, params in enumerate(layer_params):
            recurrence._check_bidirectional_params(params, f"layer_params[{layer}]")
    plan = _Plan(unroll=unroll)
    finals = []
    hs = xs
    for layer, params in enumerate(layer_params):
        if layer > 0 and use_dropout:
            hs = recurrence.variational_dropout(
                hs, rate=dropout_rate, key=jax.random.fold_in(key, layer)
            )
        if bidirectional:
            final, hs = _bidirectional(cell, params, hs, lengths, None, plan=plan)
        else:
            final, hs = _rnn(cell, params, hs, lengths, None, reverse=False, plan=plan)
        finals.append(final)
    return finals, hs
