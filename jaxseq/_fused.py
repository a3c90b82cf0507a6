"""The fused engine (private): one loop over the batch with a hand-written VJP.

This is what ``method=jaxseq.Fused()`` runs (the default for the built-in
elman, gru and lstm cells); the front-end in :mod:`jaxseq.recurrence` checks
the arguments and calls :func:`rnn` here. Notation: B batch, T time, D input
features, H hidden, G projected width (H for Elman, 3H for GRU, 4H for LSTM).
Shape suffixes on local names (``xs_BTD``).

The semantics are the front-end's (padded outputs exactly 0, the carry held at
padded steps, the final carry at step ``length - 1``, ``reverse`` within each
sequence's own length, padding sanitised before any arithmetic, float32 state
for bfloat16 inputs). Forward-mode differentiation (``jax.jvp``,
``jax.jacfwd``) is not available, because the recurrence is a
``jax.custom_vjp``; it raises a ``TypeError`` naming ``method=jaxseq.Scan()``.

How it differs from the reference path (``vmap`` of a per-example masked
``lax.scan``, differentiated by JAX):

* One loop over the steps of the whole batch: every step is a ``[B, H] @ [H, G]``
  matmul, not B matrix-vector products. The input projection ``xs @ W_i`` is one
  ``[B*T, D] @ [D, G]`` matmul before the loop. The per-step stacks stay
  ``[B, T, ...]`` (step t is a strided slice): on XLA:CPU that is as fast as a
  time-major layout and saves transposing the inputs, the outputs and their
  gradients.
  Without differentiation (inference) on CPU, each step projects its own inputs
  instead: no ``[B, T, G]`` buffer (6-9% faster at B=64 T=512 H=512 on XLA:CPU,
  a third of the memory).
* A hand-written backward pass (``jax.custom_vjp`` over the whole sequence). The
  forward loop stores, per step, the gate activations (written *over* that step's
  projected inputs, in place) and the states. The backward pass is a reverse
  loop whose only matmul is ``dG @ W_hᵀ``; it writes each step's ``dG`` over
  that step's activations, in place again. ``dW_i``, ``dW_h``, the bias
  gradients and ``dxs`` come after the loop, as ``[B*T]``-row matmuls and sums
  (what cuDNN and oneDNN do). No per-step stacks are zero-filled or copied.
* Masking costs a select per step: every sequence runs on for all T steps on
  zeroed padding, the outputs are zeroed at padded steps as they are written,
  and the final carry is picked at step ``length - 1``. In the backward pass
  the cotangents of padded steps are exactly 0 and the values there finite
  (bounded nonlinearities, zero inputs), so nothing leaks from them.
* Gate nonlinearities are ``tanh`` only (``sigmoid(a) = (1 + tanh(a / 2)) / 2``,
  one ``tanh`` for all four LSTM gates): on XLA:CPU, ``logistic`` fused with a
  dynamic slice, as in a loop body, runs several times slower than ``tanh``.

Memory: the residuals are ``hs`` and one ``[B, T, G]`` buffer (LSTM: also ``cs``;
GRU: one more ``[B, T, H]``); the same buffers then hold the backward pass's
``dG``. ``remat`` is therefore not an option here.

Numerics: the results equal the reference path's up to float rounding (the
tests compare values and gradients at ``1e-5``), not bit for bit: the batched
matmuls sum in a different order.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxseq import cells, masks

Params = Any


class _Plan(NamedTuple):
    """How the core loops run (speed only; every plan computes the same function).

    Attributes:
      unroll: steps per iteration of the forward and backward loops (``fori_loop``'s
        ``unroll``). Only for measuring: above 1 it breaks the in-place updates
        (XLA fuses a step's slice read into the next step's ops, which then may
        run after the write, so it copies the whole buffer every iteration).
      time_major: the core's per-step stacks are ``[T, B, ...]`` (inputs and outputs
        transposed around it) instead of ``[B, T, ...]`` (step t a strided slice).
        Batch-major measured as fast or faster on XLA:CPU and needs no transposes.
      hoist_inference: without differentiation, project the inputs of all steps
        before the loop too (with it, the projection is always hoisted: its buffer
        then holds the gate activations and the gradients). None: per backend,
        False on CPU (measured: per step is faster and needs a third of the
        memory), True elsewhere (one big matmul instead of T small launches on a
        GPU; not measured in this project yet).
    """

    unroll: int = 1
    time_major: bool = False
    hoist_inference: bool | None = None

    @property
    def axis(self) -> int:
        return 0 if self.time_major else 1


DEFAULT_PLAN = _Plan()


# ---------------------------------------------------------------------------- helpers


def _row(v, dtype):
    """A ``[G]`` vector as a ``[1, G]`` array of ``dtype`` (broadcasts against ``[B, G]``)."""
    return jnp.asarray(v, dtype).reshape(1, -1)


def _at(stack, t, axis: int):
    """Step t of a per-step stack (``[B, T, F]`` for axis 1, ``[T, B, F]`` for axis 0)."""
    return jax.lax.dynamic_index_in_dim(stack, t, axis, keepdims=False)


def _put(stack, t, value_BF, axis: int):
    return jax.lax.dynamic_update_index_in_dim(stack, value_BF, t, axis)


def _last(stack, axis: int):
    return _at(stack, stack.shape[axis] - 1, axis)


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


def _forward(kind: str, plan: _Plan, w, xs_BTD, carry0, lengths_B, *, save: bool, restart=None):
    """The forward loop. Returns ``(hs [B, T, H] masked, final carry)`` and the residuals.

    Stacks are ``[B, T, ...]`` (``[T, B, ...]`` with ``plan.time_major``).
    ``buf [B, T, G]`` starts as ``xs @ W_i`` (one matmul for all steps). Step t reads
    its slice from the loop carry, where step t-1 put it; with ``save``, step t writes
    the gate activations over slice t, *then* reads slice t+1 from the updated buffer:
    a loop whose every read of a buffer follows its in-place update is one that XLA
    runs without copying the buffer (a read that may come after the update forces a
    copy of the whole buffer per step).

    ``restart``: None, or ``(resets_BT, initial)``: bool ``[B, T]`` (``[T, B]``) and a
    carry with leaves ``[B, ...]`` that replaces the carry before each marked step.
    """
    axis = plan.axis
    steps = xs_BTD.shape[axis]
    step = _STEPS[kind]
    # Without a backward pass to reuse it, the projection buffer only costs memory.
    hoist_inference = plan.hoist_inference
    if hoist_inference is None:
        hoist_inference = jax.default_backend() != "cpu"
    hoist = save or hoist_inference
    buf_BTG = xs_BTD @ w["W_i"] if hoist else xs_BTD
    h0_BH = carry0[0] if kind == "lstm" else carry0
    hs_BTH = jnp.zeros(buf_BTG.shape[:2] + h0_BH.shape[-1:], h0_BH.dtype)
    extra_BTH = hs_BTH if save and kind != "elman" else None

    def body(t, state):
        carry, final, xp_BG, buf_BTG, hs_BTH, extra_BTH = state
        if not hoist:
            xp_BG = xp_BG @ w["W_i"]  # xp_BG holds x_t [B, D] here
        if restart is not None:
            reset_B1 = _at(restart[0], t, axis)[:, None]
            carry = jax.tree.map(lambda i, c: jnp.where(reset_B1, i, c), restart[1], carry)
        carry, h_BH, act_BG, extra_BH = step(w, carry, xp_BG)
        valid_B1, last_B1 = _steps(t, lengths_B)
        if save and act_BG is not None:
            buf_BTG = _put(buf_BTG, t, act_BG, axis)
            extra_BTH = _put(extra_BTH, t, extra_BH, axis)
        xp_BG = _at(buf_BTG, jnp.minimum(t + 1, steps - 1), axis)
        zero = jnp.zeros((), h_BH.dtype)
        hs_BTH = _put(hs_BTH, t, jnp.where(valid_B1, h_BH, zero), axis)
        final = jax.tree.map(lambda n, f: jnp.where(last_B1, n, f), carry, final)
        return carry, final, xp_BG, buf_BTG, hs_BTH, extra_BTH

    state = (carry0, carry0, _at(buf_BTG, 0, axis), buf_BTG, hs_BTH, extra_BTH)
    _, final, _, buf_BTG, hs_BTH, extra_BTH = jax.lax.fori_loop(
        0, steps, body, state, unroll=plan.unroll
    )
    return (hs_BTH, final), (buf_BTG, hs_BTH, extra_BTH)


def _reverse_loop(body, carry, buf_BTG, plan: _Plan):
    """``body(t, carry, act_BG) -> (carry, d_BG)`` for t = T-1 .. 0; ``d`` is written over
    slice t of ``buf`` and slice t-1 is read after the write (see :func:`_forward`)."""
    steps = buf_BTG.shape[plan.axis]

    def loop_body(j, state):
        carry, act_BG, buf_BTG = state
        t = steps - 1 - j
        carry, d_BG = body(t, carry, act_BG)
        buf_BTG = _put(buf_BTG, t, d_BG, plan.axis)
        return carry, _at(buf_BTG, jnp.maximum(t - 1, 0), plan.axis), buf_BTG

    carry, _, buf_BTG = jax.lax.fori_loop(
        0, steps, loop_body, (carry, _last(buf_BTG, plan.axis), buf_BTG), unroll=plan.unroll
    )
    return carry, buf_BTG


def _previous(t, stack_BTH, first_BH, axis: int):
    """The state before step t: step t-1 of ``stack``, or ``first`` at t = 0."""
    return jnp.where(t == 0, first_BH, _at(stack_BTH, jnp.maximum(t - 1, 0), axis))


def _restart_at(t, restart, axis: int):
    """``reset [B, 1]`` at step t (the carry restarted before it)."""
    return _at(restart[0], t, axis)[:, None]


def _cut(reset_B1, d_BH, dinit_BH):
    """At a restart, the state gradient leaves for the initial carry: ``(d, dinit)``."""
    zero = jnp.zeros((), d_BH.dtype)
    return jnp.where(reset_B1, zero, d_BH), dinit_BH + jnp.where(reset_B1, d_BH, zero)


def _output_cotangent(t, lengths_B, dhs_BTH, dfinal_BH, axis: int):
    """d loss / d h_t from the outputs (valid steps only) and the final carry (at its step)."""
    valid_B1, last_B1 = _steps(t, lengths_B)
    zero = jnp.zeros((), dhs_BTH.dtype)
    dout_BH = _at(dhs_BTH, t, axis)
    return jnp.where(valid_B1, dout_BH, zero) + jnp.where(last_B1, dfinal_BH, zero)


def _elman_backward(plan, w, carry0, lengths_B, residuals, cotangents, restart=None):
    """The reverse loop; with ``restart`` also returns the initial carry's gradient."""
    buf_BTG, hs_BTH, _ = residuals
    dhs_BTH, dfinal_BH = cotangents
    w_hT = w["W_h"].T

    def body(t, dh_BH, _):
        h_BH = _at(hs_BTH, t, plan.axis)
        dh_BH = dh_BH + _output_cotangent(t, lengths_B, dhs_BTH, dfinal_BH, plan.axis)
        da_BH = dh_BH * (1.0 - h_BH * h_BH)
        return da_BH @ w_hT, da_BH

    if restart is None:
        dh0_BH, da_BTG = _reverse_loop(body, jnp.zeros_like(carry0), buf_BTG, plan)
        return da_BTG, da_BTG, dh0_BH, dfinal_BH

    def restart_body(t, state, act_BG):
        dh_BH, dinit_BH = state
        dh_BH, da_BH = body(t, dh_BH, act_BG)
        return _cut(_restart_at(t, restart, plan.axis), dh_BH, dinit_BH), da_BH

    zeros = jnp.zeros_like(carry0)
    (dh0_BH, dinit_BH), da_BTG = _reverse_loop(restart_body, (zeros, zeros), buf_BTG, plan)
    return da_BTG, da_BTG, dh0_BH, dfinal_BH, dinit_BH


def _gru_backward(plan, w, carry0, lengths_B, residuals, cotangents, restart=None):
    act_BTG, hs_BTH, hp_n_BTH = residuals
    dhs_BTH, dfinal_BH = cotangents
    size = carry0.shape[-1]
    w_hT = w["W_h"].T
    # dxp = [d_r, d_z, d_n] goes over the activations; the n block of dhp (d_n * r) goes
    # over hp_n, with the same read-after-write order as the activations.
    axis = plan.axis
    steps = act_BTG.shape[axis]

    def loop_body(j, state):
        dh_BH, act_BG, hp_n_BH, act_BTG, hp_n_BTH = state[:5]
        t = steps - 1 - j
        r, z, n = act_BG[:, :size], act_BG[:, size : 2 * size], act_BG[:, 2 * size :]
        dh_BH = dh_BH + _output_cotangent(t, lengths_B, dhs_BTH, dfinal_BH, axis)
        # h' = n + z (h - n)
        d_n = dh_BH * (1.0 - z) * (1.0 - n * n)
        h_prev_BH = _previous(t, hs_BTH, carry0, axis)
        if restart is not None:
            reset_B1 = _restart_at(t, restart, axis)
            h_prev_BH = jnp.where(reset_B1, restart[1], h_prev_BH)
        d_z = dh_BH * (h_prev_BH - n) * z * (1.0 - z)
        d_r = d_n * hp_n_BH * r * (1.0 - r)
        d_hn = d_n * r
        dh_BH = dh_BH * z + jnp.concatenate([d_r, d_z, d_hn], axis=1) @ w_hT
        act_BTG = _put(act_BTG, t, jnp.concatenate([d_r, d_z, d_n], axis=1), axis)
        hp_n_BTH = _put(hp_n_BTH, t, d_hn, axis)
        previous = jnp.maximum(t - 1, 0)
        act_BG, hp_n_BH = _at(act_BTG, previous, axis), _at(hp_n_BTH, previous, axis)
        if restart is None:
            return dh_BH, act_BG, hp_n_BH, act_BTG, hp_n_BTH
        dh_BH, dinit_BH = _cut(reset_B1, dh_BH, state[5])
        return dh_BH, act_BG, hp_n_BH, act_BTG, hp_n_BTH, dinit_BH

    state = (
        jnp.zeros_like(carry0),
        _last(act_BTG, axis),
        _last(hp_n_BTH, axis),
        act_BTG,
        hp_n_BTH,
    )
    if restart is not None:
        state += (jnp.zeros_like(carry0),)
    state = jax.lax.fori_loop(0, steps, loop_body, state, unroll=plan.unroll)
    dh0_BH, _, _, dxp_BTG, d_hn_BTH = state[:5]
    dhp_BTG = jnp.concatenate([dxp_BTG[..., : 2 * size], d_hn_BTH], axis=-1)
    if restart is None:
        return dxp_BTG, dhp_BTG, dh0_BH, dfinal_BH
    return dxp_BTG, dhp_BTG, dh0_BH, dfinal_BH, state[5]


def _lstm_backward(plan, w, carry0, lengths_B, residuals, cotangents, restart=None):
    act_BTG, hs_BTH, cs_BTH = residuals
    dhs_BTH, (dh_final_BH, dc_final_BH) = cotangents
    h0_BH, c0_BH = carry0
    size = h0_BH.shape[-1]
    _, _, m, sk, inv_s = _lstm_gate_constants(size, h0_BH.dtype)
    w_hT = w["W_h"].T
    zero = jnp.zeros((), h0_BH.dtype)

    def body(t, carry, act_BG):
        dh_BH, dc_BH = carry[:2]
        i, f, g, o = (act_BG[:, j * size : (j + 1) * size] for j in range(4))
        c_BH = _at(cs_BTH, t, plan.axis)
        c_prev_BH = _previous(t, cs_BTH, c0_BH, plan.axis)
        if restart is not None:
            reset_B1 = _restart_at(t, restart, plan.axis)
            c_prev_BH = jnp.where(reset_B1, restart[1][1], c_prev_BH)
        _, last_B1 = _steps(t, lengths_B)
        dh_BH = dh_BH + _output_cotangent(t, lengths_B, dhs_BTH, dh_final_BH, plan.axis)
        tc = jnp.tanh(c_BH)
        # c' = f c + i g, h' = o tanh(c')
        dc_BH = dc_BH + jnp.where(last_B1, dc_final_BH, zero) + dh_BH * o * (1.0 - tc * tc)
        dact_BG = jnp.concatenate([dc_BH * g, dc_BH * c_prev_BH, dc_BH * i, dh_BH * tc], axis=1)
        u = (act_BG - m) * inv_s
        da_BG = dact_BG * sk * (1.0 - u * u)
        if restart is None:
            return (da_BG @ w_hT, dc_BH * f), da_BG
        dh_BH, dinit_h_BH = _cut(reset_B1, da_BG @ w_hT, carry[2])
        dc_BH, dinit_c_BH = _cut(reset_B1, dc_BH * f, carry[3])
        return (dh_BH, dc_BH, dinit_h_BH, dinit_c_BH), da_BG

    zeros = jnp.zeros_like(h0_BH)
    init = (zeros, zeros) if restart is None else (zeros,) * 4
    dstate, da_BTG = _reverse_loop(body, init, act_BTG, plan)
    dcarry0 = (dstate[0], dstate[1])
    if restart is None:
        return da_BTG, da_BTG, dcarry0, (dh_final_BH, dc_final_BH)
    return da_BTG, da_BTG, dcarry0, (dh_final_BH, dc_final_BH), (dstate[2], dstate[3])


_BACKWARDS = {"elman": _elman_backward, "gru": _gru_backward, "lstm": _lstm_backward}


@functools.cache
def _core(kind: str, plan: _Plan):
    """``core(w, xs_BTD, carry0, lengths_B) -> (hs_BTH, final_carry)`` with its VJP.

    The recurrence over all T steps (``[T, B, ...]`` in and out with
    ``plan.time_major``): ``hs`` is 0 at padded steps and the
    final carry is the carry after step ``length - 1`` (``carry0`` for length 0).
    """

    def run(w, xs_BTD, carry0, lengths_B):
        return _forward(kind, plan, w, xs_BTD, carry0, lengths_B, save=False)[0]

    def run_fwd(w, xs_BTD, carry0, lengths_B):
        outputs, residuals = _forward(kind, plan, w, xs_BTD, carry0, lengths_B, save=True)
        return outputs, (w, xs_BTD, carry0, lengths_B, residuals)

    def run_bwd(saved, cotangents):
        w, xs_BTD, carry0, lengths_B, residuals = saved
        dxp_BTG, dhp_BTG, dcarry0, dfinal = _BACKWARDS[kind](
            plan, w, carry0, lengths_B, residuals, cotangents
        )
        # The final carry is carry0 itself where a sequence is empty.
        empty_B1 = (lengths_B == 0)[:, None]
        dcarry0 = jax.tree.map(
            lambda d, df: d + jnp.where(empty_B1, df, jnp.zeros((), df.dtype)), dcarry0, dfinal
        )
        hs_BTH = residuals[1]
        h0_BH = carry0[0] if kind == "lstm" else carry0
        if plan.time_major:
            prev_BTH = jnp.concatenate([h0_BH[None], hs_BTH[:-1]], axis=0)
        else:
            prev_BTH = jnp.concatenate([h0_BH[:, None], hs_BTH[:, :-1]], axis=1)
        grads, dxs_BTD = _weight_grads(w, xs_BTD, prev_BTH, dxp_BTG, dhp_BTG)
        return grads, dxs_BTD, dcarry0, None

    core = jax.custom_vjp(run)
    core.defvjp(run_fwd, run_bwd)
    return core


@functools.cache
def _restart_core(kind: str, plan: _Plan):
    """``core(w, xs_BTD, carry0, lengths_B, resets_BT, initial) -> (hs_BTH, final_carry)``.

    :func:`_core` where the carry is replaced by ``initial`` (leaves ``[B, ...]``)
    before every step marked in ``resets_BT`` (bool ``[B, T]``, ``[T, B]`` with
    ``plan.time_major``). The backward pass cuts the state gradient there and sends it
    to ``initial`` instead.
    """

    def run(w, xs_BTD, carry0, lengths_B, resets_BT, initial):
        restart = (resets_BT, initial)
        return _forward(kind, plan, w, xs_BTD, carry0, lengths_B, save=False, restart=restart)[0]

    def run_fwd(w, xs_BTD, carry0, lengths_B, resets_BT, initial):
        restart = (resets_BT, initial)
        outputs, residuals = _forward(
            kind, plan, w, xs_BTD, carry0, lengths_B, save=True, restart=restart
        )
        return outputs, (w, xs_BTD, carry0, lengths_B, restart, residuals)

    def run_bwd(saved, cotangents):
        w, xs_BTD, carry0, lengths_B, restart, residuals = saved
        dxp_BTG, dhp_BTG, dcarry0, dfinal, dinitial = _BACKWARDS[kind](
            plan, w, carry0, lengths_B, residuals, cotangents, restart
        )
        # The final carry is carry0 itself where a sequence is empty.
        empty_B1 = (lengths_B == 0)[:, None]
        dcarry0 = jax.tree.map(
            lambda d, df: d + jnp.where(empty_B1, df, jnp.zeros((), df.dtype)), dcarry0, dfinal
        )
        hs_BTH = residuals[1]
        resets_BT, initial = restart
        h0_BH = carry0[0] if kind == "lstm" else carry0
        h_init_BH = initial[0] if kind == "lstm" else initial
        if plan.time_major:
            prev_BTH = jnp.concatenate([h0_BH[None], hs_BTH[:-1]], axis=0)
            h_init_BTH = h_init_BH[None]
        else:
            prev_BTH = jnp.concatenate([h0_BH[:, None], hs_BTH[:, :-1]], axis=1)
            h_init_BTH = h_init_BH[:, None]
        # The state before a restarted step is the initial carry.
        prev_BTH = jnp.where(resets_BT[..., None], h_init_BTH, prev_BTH)
        grads, dxs_BTD = _weight_grads(w, xs_BTD, prev_BTH, dxp_BTG, dhp_BTG)
        return grads, dxs_BTD, dcarry0, None, None, dinitial

    core = jax.custom_vjp(run)
    core.defvjp(run_fwd, run_bwd)
    return core


def _rows(x):
    """``[B, T, F]`` -> ``[B*T, F]``."""
    return x.reshape((-1, x.shape[-1]))


def _weight_grads(w, xs_BTD, prev_BTH, dxp_BTG, dhp_BTG):
    """The gradients that need no loop: [B*T]-row matmuls and sums after it."""
    dxp = _rows(dxp_BTG)
    dhp = _rows(dhp_BTG)
    grads = {
        "W_i": _rows(xs_BTD).T @ dxp,
        "W_h": _rows(prev_BTH).T @ dhp,
        "b_i": jnp.sum(dxp, axis=0),
    }
    if "b_h" in w:
        grads["b_h"] = jnp.sum(dhp, axis=0)
    dxs_BTD = (dxp @ w["W_i"].T).reshape(xs_BTD.shape)
    return grads, dxs_BTD


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


def _call(core, *args):
    """``core(*args)``; forward-mode differentiation fails with a message naming the fix."""
    try:
        return core(*args)
    except TypeError as e:
        if "forward-mode" not in str(e):
            raise
        raise TypeError(
            "method=jaxseq.Fused() (the default for elman/gru/lstm cells) has a hand-written "
            "reverse-mode gradient only; for jax.jvp / jax.jacfwd pass method=jaxseq.Scan()"
        ) from e


def rnn(
    cell,
    params,
    xs_BTD,
    lengths_B,
    carry,
    *,
    reverse: bool,
    plan: _Plan = DEFAULT_PLAN,
    resets=None,
):
    """The batched recurrence of an elman, gru or lstm cell, unchecked (the front-end checks).

    Args:
      cell: a built-in elman, gru or lstm cell.
      params: its params.
      xs_BTD: float ``[B, T, D]``; padded steps may hold anything.
      lengths_B: integer ``[B]``; clipped to ``[0, T]``.
      carry: None (the cell's initial carry) or leaves ``[B, ...]``.
      reverse: run each sequence backwards within its own length.
      plan: how the loops run (speed only).
      resets: None, or bool ``[B, T]``: the carry is replaced by
        ``cell.initial_carry(params)`` before each marked step, in the original time
        order and already in the meaning of the direction (the front-end's
        ``_step_resets``: masked, and shifted for ``reverse``).

    Returns:
      ``(final carry, hs [B, T, H])``.
    """
    batch, steps, _ = xs_BTD.shape
    dtype = cells.compute_dtype(xs_BTD.dtype, *cells.param_dtypes(params))
    if carry is None:
        carry = jax.vmap(lambda _: cell.initial_carry(params, dtype))(jnp.arange(batch))
    else:
        carry = jax.tree.map(lambda c: jnp.asarray(c).astype(dtype), carry)
    lengths_B = jnp.clip(lengths_B.astype(jnp.int32), 0, steps)
    if steps == 0:
        return carry, jnp.zeros((batch, 0, cell.hidden_size), dtype)
    mask_BT = masks._mask(lengths_B, steps)
    # Sanitise before any math: padding values never reach a value or a gradient.
    xs_BTD = jnp.where(mask_BT[..., None], xs_BTD.astype(dtype), jnp.zeros((), dtype))
    if reverse:
        index_BT = jax.vmap(lambda n: masks.reverse_index(n, steps))(lengths_B)
        xs_BTD = _flip(xs_BTD, index_BT)
        if resets is not None:
            resets = jnp.take_along_axis(resets, index_BT, axis=1)
    weights = _weights(cell.name, params, dtype)
    extra: tuple = ()
    if resets is None:
        core = _core(cell.name, plan)
    else:
        core = _restart_core(cell.name, plan)
        initial = jax.vmap(lambda _: cell.initial_carry(params, dtype))(jnp.arange(batch))
        extra = (jnp.swapaxes(resets, 0, 1) if plan.time_major else resets, initial)
    if plan.time_major:
        hs_TBH, final_carry = _call(
            core, weights, jnp.swapaxes(xs_BTD, 0, 1), carry, lengths_B, *extra
        )
        hs_BTH = jnp.swapaxes(hs_TBH, 0, 1)
    else:
        hs_BTH, final_carry = _call(core, weights, xs_BTD, carry, lengths_B, *extra)
    if reverse:
        hs_BTH = _flip(hs_BTH, index_BT)
    return final_carry, hs_BTH
