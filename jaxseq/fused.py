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
``lax.scan`` differentiated by JAX):

* One time-major loop over ``[T, B, ...]``: every step is a ``[B, H] @ [H, G]``
  matmul, not B matrix-vector products.
* No mask work inside the loop. Padded inputs are zeroed, and every sequence
  simply runs on for all T steps. Outputs are masked afterwards, and the final
  carry is *picked* at step ``length - 1`` (the initial carry when the length is
  0). This is the same function as holding the carry: the steps after
  ``length - 1`` never reach an output or the final carry, so their
  cotangents are exactly zero, and their values stay finite (bounded
  nonlinearities, zero inputs), so ``0 * value`` is 0 in the backward pass.
* A hand-written backward pass (``jax.custom_vjp`` over the whole sequence).
  The forward pass stores only the states (``h``; LSTM also ``c``), which
  are its outputs anyway. The backward pass rebuilds the gate activations for
  all steps at once with one ``[T*B, H] @ [H, G]`` matmul, folds them into
  per-step coefficients, and runs a reverse loop whose only matmul is
  ``dG @ W_hᵀ``. ``dW_i``, ``dW_h``, the bias gradients and ``dxs`` come after
  the loop, as ``[T*B]``-row matmuls and sums (what cuDNN and oneDNN do).
* The input projection ``xs @ W_i + b`` is one ``[T*B, D] @ [D, G]`` matmul
  before the loop. Each step's slice is fetched into the loop carry one step
  ahead, because on XLA:CPU an elementwise fusion that reads a dynamic slice of
  a stacked array runs several times slower than one that reads a plain buffer.

Memory: the residuals are ``hs`` (and ``cs``) plus the projected inputs
``[T, B, G]``; no per-step gate stacks. ``remat`` is therefore not an option
here.

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
    """How the core loops are laid out (speed only; every plan computes the same function).

    Private: the benchmarks use it to measure each lever.

    Attributes:
      hoist: project the inputs of all steps before the loop (True) or one step
        at a time inside it (False).
      prefetch: fetch step t+1's per-step inputs into the loop carry during step t.
      save_gates: the forward loop also stores each step's recurrent matmul
        output (True) instead of the backward pass recomputing it with one big
        matmul (False).
      unroll: ``lax.scan``'s unroll of both loops.
    """

    hoist: bool = True
    prefetch: bool = True
    save_gates: bool = False
    unroll: int = 1


DEFAULT_PLAN = _Plan()


# ---------------------------------------------------------------------------- helpers


def _bias(b_G, ndim: int):
    """``b [G]`` reshaped to broadcast against a rank-``ndim`` array (no rank promotion)."""
    return b_G.reshape((1,) * (ndim - 1) + b_G.shape)


def _proj(x, w, b):
    """``x [..., K] @ w [K, G] + b [G]``."""
    out = x @ w
    return out + _bias(b, out.ndim)


def _rows(x):
    """``[T, B, F]`` -> ``[T*B, F]``."""
    return x.reshape((-1, x.shape[-1]))


def _shift_in(first_BF, stack_TBF):
    """``[first, stack[0], ..., stack[T-2]]``: each step's previous state."""
    return jnp.concatenate([first_BF[None], stack_TBF[:-1]], axis=0)


def _tile(x_BH, n: int):
    """``[B, H]`` -> ``[B, n*H]``, ``x`` repeated n times along the features."""
    return jnp.concatenate([x_BH] * n, axis=-1)


def _loop(body, carry, seqs, *, reverse: bool, plan: _Plan):
    """``lax.scan(body, carry, seqs, reverse=reverse)``; with ``plan.prefetch`` the
    per-step slices of ``seqs`` for the next step are fetched into the carry."""
    if not plan.prefetch:
        return jax.lax.scan(body, carry, seqs, reverse=reverse, unroll=plan.unroll)
    steps = jax.tree.leaves(seqs)[0].shape[0]

    def take(t):
        return jax.tree.map(lambda s: jax.lax.dynamic_index_in_dim(s, t, 0, keepdims=False), seqs)

    def fetch_body(state, t):
        carry, current = state
        following = take(jnp.clip(t - 1 if reverse else t + 1, 0, steps - 1))
        carry, out = body(carry, current)
        return (carry, following), out

    first = take(steps - 1 if reverse else 0)
    (carry, _), outs = jax.lax.scan(
        fetch_body,
        (carry, first),
        jnp.arange(steps, dtype=jnp.int32),
        reverse=reverse,
        unroll=plan.unroll,
    )
    return carry, outs


# ---------------------------------------------------------------------------- cells
#
# Each kind has:
#   forward(w, x_or_xp_t, carry) -> (carry, out_t)          one step of the forward loop
#   backward(...)                                           the custom VJP of the whole core
# The weights ``w`` are a dict: "W_i" [D, G], "W_h" [H, G], "b_i" [G] (+ "b_h" [3H] for gru).


def _elman_cell(w, xp_BG, h_BH):
    h_BH = jnp.tanh(xp_BG + h_BH @ w["W_h"])
    return h_BH, (h_BH, None)


def _gru_cell(w, xp_BG, h_BH):
    hp_BG = _proj(h_BH, w["W_h"], w["b_h"])
    size = h_BH.shape[-1]
    rz_B2H = jax.nn.sigmoid(xp_BG[:, : 2 * size] + hp_BG[:, : 2 * size])
    r_BH, z_BH = rz_B2H[:, :size], rz_B2H[:, size:]
    n_BH = jnp.tanh(xp_BG[:, 2 * size :] + r_BH * hp_BG[:, 2 * size :])
    h_BH = n_BH + z_BH * (h_BH - n_BH)
    return h_BH, (h_BH, hp_BG)


def _lstm_cell(w, xp_BG, carry):
    h_BH, c_BH = carry
    size = h_BH.shape[-1]
    a_BG = xp_BG + h_BH @ w["W_h"]
    ifo = jax.nn.sigmoid(a_BG)
    i_BH, f_BH, o_BH = ifo[:, :size], ifo[:, size : 2 * size], ifo[:, 3 * size :]
    g_BH = jnp.tanh(a_BG[:, 2 * size : 3 * size])
    c_BH = f_BH * c_BH + i_BH * g_BH
    h_BH = o_BH * jnp.tanh(c_BH)
    return (h_BH, c_BH), ((h_BH, c_BH), a_BG)


_CELLS = {"elman": _elman_cell, "gru": _gru_cell, "lstm": _lstm_cell}


def _forward(kind: str, plan: _Plan, w, xs_TBD, carry0):
    """The unmasked forward loop. Returns (states, xp_TBG or None, saved gates or None)."""
    cell = _CELLS[kind]
    if plan.hoist:
        xp_TBG = _proj(xs_TBD, w["W_i"], w["b_i"])
        seqs = xp_TBG

        def body(carry, xp_BG):
            carry, (out, gates) = cell(w, xp_BG, carry)
            return carry, (out, gates if plan.save_gates else None)

    else:
        xp_TBG = None
        seqs = xs_TBD

        def body(carry, x_BD):
            carry, (out, gates) = cell(w, _proj(x_BD, w["W_i"], w["b_i"]), carry)
            return carry, (out, gates if plan.save_gates else None)

    _, (states, gates) = _loop(body, carry0, seqs, reverse=False, plan=plan)
    return states, xp_TBG, gates


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


def _elman_backward(plan, w, xs_TBD, h0_BH, hs_TBH, xp_TBG, gates, dhs_TBH):
    del xp_TBG, gates
    w_hT = w["W_h"].T

    def body(dh_BH, inputs):
        dout_BH, h_BH = inputs
        da_BH = (dout_BH + dh_BH) * (1.0 - h_BH * h_BH)
        return da_BH @ w_hT, da_BH

    dh0_BH, da_TBH = _loop(body, jnp.zeros_like(h0_BH), (dhs_TBH, hs_TBH), reverse=True, plan=plan)
    grads, dxs_TBD = _weight_grads(w, xs_TBD, _shift_in(h0_BH, hs_TBH), da_TBH, da_TBH)
    return grads, dxs_TBD, dh0_BH


def _gru_backward(plan, w, xs_TBD, h0_BH, hs_TBH, xp_TBG, hp_TBG, dhs_TBH):
    size = h0_BH.shape[-1]
    prev_TBH = _shift_in(h0_BH, hs_TBH)
    if xp_TBG is None:
        xp_TBG = _proj(xs_TBD, w["W_i"], w["b_i"])
    if hp_TBG is None:
        hp_TBG = _proj(prev_TBH, w["W_h"], w["b_h"])
    rz = jax.nn.sigmoid(xp_TBG[..., : 2 * size] + hp_TBG[..., : 2 * size])
    r, z = rz[..., :size], rz[..., size:]
    hp_n = hp_TBG[..., 2 * size :]
    n = jnp.tanh(xp_TBG[..., 2 * size :] + r * hp_n)
    # h' = n + z (h - n):  dn = (1 - z) dh',  dz = (h - n) dh',  dh = z dh' + dhp W_hᵀ
    k_n = (1.0 - z) * (1.0 - n * n)  # d a_n / d h'
    k_z = (prev_TBH - n) * z * (1.0 - z)  # d a_z / d h'
    k_r = k_n * hp_n * r * (1.0 - r)  # d a_r / d h'
    coef_TB4H = jnp.concatenate([k_r, k_z, k_n * r, z], axis=-1)
    w_hT = w["W_h"].T

    def body(dh_BH, inputs):
        dout_BH, coef_B4H = inputs
        dh_BH = dout_BH + dh_BH
        dhp_BG = _tile(dh_BH, 3) * coef_B4H[:, : 3 * size]
        return dh_BH * coef_B4H[:, 3 * size :] + dhp_BG @ w_hT, dh_BH

    dh0_BH, dh_TBH = _loop(
        body, jnp.zeros_like(h0_BH), (dhs_TBH, coef_TB4H), reverse=True, plan=plan
    )
    dhp_TBG = jnp.concatenate([dh_TBH * k_r, dh_TBH * k_z, dh_TBH * k_n * r], axis=-1)
    dxp_TBG = jnp.concatenate([dh_TBH * k_r, dh_TBH * k_z, dh_TBH * k_n], axis=-1)
    grads, dxs_TBD = _weight_grads(w, xs_TBD, prev_TBH, dxp_TBG, dhp_TBG)
    return grads, dxs_TBD, dh0_BH


def _lstm_backward(plan, w, xs_TBD, carry0, states, xp_TBG, a_TBG, douts):
    h0_BH, c0_BH = carry0
    hs_TBH, cs_TBH = states
    dhs_TBH, dcs_TBH = douts
    size = h0_BH.shape[-1]
    prev_TBH = _shift_in(h0_BH, hs_TBH)
    if a_TBG is None:
        if xp_TBG is None:
            xp_TBG = _proj(xs_TBD, w["W_i"], w["b_i"])
        a_TBG = xp_TBG + prev_TBH @ w["W_h"]
    i = jax.nn.sigmoid(a_TBG[..., :size])
    f = jax.nn.sigmoid(a_TBG[..., size : 2 * size])
    g = jnp.tanh(a_TBG[..., 2 * size : 3 * size])
    o = jax.nn.sigmoid(a_TBG[..., 3 * size :])
    tc = jnp.tanh(cs_TBH)
    c_prev = _shift_in(c0_BH, cs_TBH)
    # c' = f c + i g, h' = o tanh(c'):  per step, with dc' = dcs + dc + dh' o (1 - tanh²c'),
    # dA = [dc' K_i, dc' K_f, dc' K_g, dh' K_o] and dc = f dc'.
    coef_TB6H = jnp.concatenate(
        [
            g * i * (1.0 - i),  # K_i
            c_prev * f * (1.0 - f),  # K_f
            i * (1.0 - g * g),  # K_g
            tc * o * (1.0 - o),  # K_o
            o * (1.0 - tc * tc),  # d c' / d h'
            f,
        ],
        axis=-1,
    )
    w_hT = w["W_h"].T

    def body(carry, inputs):
        dh_BH, dc_BH = carry
        dout_BH, dcout_BH, coef_B6H = inputs
        dh_BH = dout_BH + dh_BH
        dc_BH = dcout_BH + dc_BH + dh_BH * coef_B6H[:, 4 * size : 5 * size]
        da_BG = jnp.concatenate([dc_BH, dc_BH, dc_BH, dh_BH], axis=-1) * coef_B6H[:, : 4 * size]
        return (da_BG @ w_hT, dc_BH * coef_B6H[:, 5 * size :]), da_BG

    zeros = jnp.zeros_like(h0_BH)
    (dh0_BH, dc0_BH), da_TBG = _loop(
        body, (zeros, zeros), (dhs_TBH, dcs_TBH, coef_TB6H), reverse=True, plan=plan
    )
    grads, dxs_TBD = _weight_grads(w, xs_TBD, prev_TBH, da_TBG, da_TBG)
    return grads, dxs_TBD, (dh0_BH, dc0_BH)


_BACKWARDS = {"elman": _elman_backward, "gru": _gru_backward, "lstm": _lstm_backward}


@functools.cache
def _core(kind: str, plan: _Plan):
    """``core(w, xs_TBD, carry0) -> states``: the unmasked time-major recurrence with its VJP.

    ``states`` is ``hs [T, B, H]`` (LSTM: ``(hs, cs)``), the state after every step
    of running all T steps.
    """

    def run(w, xs_TBD, carry0):
        return _forward(kind, plan, w, xs_TBD, carry0)[0]

    def run_fwd(w, xs_TBD, carry0):
        states, xp_TBG, gates = _forward(kind, plan, w, xs_TBD, carry0)
        return states, (w, xs_TBD, carry0, states, xp_TBG, gates)

    def run_bwd(residuals, dstates):
        w, xs_TBD, carry0, states, xp_TBG, gates = residuals
        grads, dxs_TBD, dcarry0 = _BACKWARDS[kind](
            plan, w, xs_TBD, carry0, states, xp_TBG, gates, dstates
        )
        return grads, dxs_TBD, dcarry0

    core = jax.custom_vjp(run)
    core.defvjp(run_fwd, run_bwd)
    return core


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
    states = _core(cell.name, plan)(
        _weights(cell.name, params, dtype), jnp.swapaxes(xs_BTD, 0, 1), carry
    )
    mask_TB1 = jnp.swapaxes(mask_BT, 0, 1)[..., None]
    last_TB1 = (jnp.arange(steps, dtype=jnp.int32)[:, None] == lengths_B[None, :] - 1)[..., None]
    some_B1 = (lengths_B > 0)[:, None]

    def final(state_TBH, initial_BH):
        picked_BH = jnp.sum(jnp.where(last_TB1, state_TBH, jnp.zeros((), dtype)), axis=0)
        return jnp.where(some_B1, picked_BH, initial_BH)

    final_carry = jax.tree.map(final, states, carry)
    hs_TBH = states[0] if cell.name == "lstm" else states
    hs_BTH = jnp.swapaxes(jnp.where(mask_TB1, hs_TBH, jnp.zeros((), dtype)), 0, 1)
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
