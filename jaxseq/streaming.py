"""Streaming: long sequences in windows, with truncated backpropagation through time.

Notation: B batch (independent streams), T the stream's length, k the window
length, N = ceil(T / k) windows.

A stream too long to differentiate in one piece is cut into windows of ``k``
steps (:func:`windows`). The recurrence runs window after window, each starting
from the final carry of the one before with the gradient stopped at the
boundary (:func:`tbptt_carry`): the forward values are exactly those of one long
pass, and the gradient of window n's loss reaches back to the first step of
window n only (truncated BPTT, the "windowed objective": the sum over windows of
each window's loss, its incoming carry a constant).

Rows restart in two ways, which combine:

* inside a window, ``resets`` (bool ``[B, k]``, True at the first step of a new
  segment) goes to :func:`jaxseq.rnn` (``resets=``): the carry restarts from the
  cell's initial carry there;
* at a window boundary, ``fresh`` (bool ``[B]``) in :func:`tbptt_carry` starts a
  row from the initial carry instead of the previous window's final carry (a new
  stream in that row).

Training: :func:`make_tbptt_train_step` is :func:`jaxseq.training.steps.make_train_step`
with the carry threaded through: ``(state, carry, batch, key) -> (state,
new_carry, metric_sums)``, one optimizer update per window.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxseq import _checks

__all__ = ["make_tbptt_train_step", "tbptt_carry", "tbptt_train_step_fn", "windows"]

Carry = Any
Params = Any
Batch = Any


def windows(stream, k: int, *, lengths: jax.Array | None = None):
    """Cut a stream into windows of ``k`` steps along axis 1.

    Args:
      stream: a pytree of arrays, every leaf ``[B, T, ...]`` (the same B and T).
      k: the window length, a positive Python int.
      lengths: optional integer ``[B]`` in ``[0, T]``, the valid steps of each row's
        stream (default: all T). Host lengths outside ``[0, T]`` are a ``ValueError``;
        under ``jit`` such a row gets window length -1 in every window, which
        :func:`jaxseq.rnn` turns into NaN (never a silently wrong carry).

    Returns:
      ``(windowed, window_lengths)``: the pytree with every leaf ``[N, B, k, ...]``
      (window n holds steps ``n k .. n k + k - 1``; the last window is padded with
      zeros, False for a bool leaf) and int32 ``window_lengths [N, B]``, the valid
      steps of each row in each window: ``clip(lengths - n k, 0, k)``.

    >>> import jax.numpy as jnp
    >>> w, n = windows({"x": jnp.ones((2, 5, 3))}, 2, lengths=jnp.array([5, 3]))
    >>> w["x"].shape, n.tolist()
    ((3, 2, 2, 3), [[2, 2], [2, 1], [1, 0]])
    """
    _checks.check_int(k, "k", 1)
    leaves = [_checks.as_array(leaf, "stream") for leaf in jax.tree.leaves(stream)]
    if not leaves:
        raise ValueError("`stream` must hold at least one array [B, T, ...]")
    for leaf in leaves:
        _checks.check_min_rank(leaf, 2, "stream", "[B, T, ...]")
    batch, steps = leaves[0].shape[:2]
    for leaf in leaves:
        if leaf.shape[:2] != (batch, steps):
            raise _checks.shape_error(
                "every leaf of `stream` must be [B, T, ...] with the same B and T, got "
                f"{[tuple(x.shape) for x in leaves]}"
            )
    count = math.ceil(steps / k)

    def cut(x):
        x = jnp.asarray(x)
        padding = [(0, 0), (0, count * k - steps)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, padding)
        x = x.reshape((batch, count, k) + x.shape[2:])
        return jnp.swapaxes(x, 0, 1)

    bad_B = None
    if lengths is None:
        lengths_B = jnp.full((batch,), steps, jnp.int32)
    else:
        # Host lengths outside [0, T] are a ValueError naming `lengths`.
        lengths_B = _checks.index_array(lengths, "lengths", low=0, high=steps, what=" (T)")
        _checks.check_shape(lengths_B, (batch,), "lengths", "[B] (B from `stream`)")
        if not _checks.is_concrete(lengths_B):
            bad_B = (lengths_B < 0) | (lengths_B > steps)
    starts_N1 = (jnp.arange(count, dtype=jnp.int32) * k)[:, None]
    window_lengths = jnp.clip(lengths_B[None, :] - starts_N1, 0, k)
    if bad_B is not None:  # traced: -1 in every window, which jaxseq.rnn turns into NaN
        window_lengths = jnp.where(bad_B[None, :], -1, window_lengths)
    return jax.tree.map(cut, stream), window_lengths


def tbptt_carry(carry: Carry, initial: Carry, fresh: jax.Array | None = None) -> Carry:
    """The carry a window starts from: the previous window's, gradient stopped.

    Args:
      carry: the previous window's final carry, leaves ``[B, ...]``.
      initial: the carry of a fresh start, the structure of ``carry`` with leaves
        ``[B, ...]`` or, for every row alike, those of ONE example (e.g.
        ``cell.initial_carry(params)``). Gradients reach it in the fresh rows.
      fresh: optional bool ``[B]``: the rows that start over from ``initial``.

    Returns:
      ``stop_gradient(carry)`` (leaves ``[B, ...]``), with ``initial`` in the rows
      where ``fresh`` is True.
    """
    carry = jax.tree.map(jax.lax.stop_gradient, carry)
    if fresh is None:
        return carry
    fresh = _checks.as_array(fresh, "fresh")
    if fresh.dtype != jnp.bool_:
        raise TypeError(f"`fresh` must be boolean (True = start over), got dtype {fresh.dtype}")
    leaves = jax.tree.leaves(carry)
    batch = leaves[0].shape[0] if leaves else 0
    _checks.check_shape(fresh, (batch,), "fresh", "[B] (B from `carry`)")

    def pick(c, i):
        i = jnp.asarray(i, c.dtype)
        if i.shape != c.shape:
            if i.shape != c.shape[1:]:
                raise _checks.shape_error(
                    f"a leaf of `initial` must be [B, ...] = {tuple(c.shape)} or one example's "
                    f"{tuple(c.shape[1:])}, got {tuple(i.shape)}"
                )
            i = jnp.broadcast_to(i[None], c.shape)
        return jnp.where(fresh.reshape((batch,) + (1,) * (c.ndim - 1)), i, c)

    try:
        return jax.tree.map(pick, carry, initial)
    except ValueError as e:
        raise ValueError(f"`initial` must have the structure of `carry`: {e}") from None


TbpttLossFn = Callable[[Params, Batch, Carry, jax.Array], tuple[Any, tuple[Carry, dict]]]


def tbptt_train_step_fn(loss_fn: TbpttLossFn, optimizer) -> Callable:
    """The pure (un-jitted) truncated-BPTT train step; see :func:`make_tbptt_train_step`."""
    # Imported here: jaxseq.training needs the `train` extra.
    import optax

    from jaxseq.losses import safe_divide
    from jaxseq.metrics import Ratio
    from jaxseq.training import steps

    def total(params, batch, carry, key):
        result = loss_fn(params, batch, carry, key)
        aux = result[1] if isinstance(result, tuple) and len(result) == 2 else None
        if not isinstance(aux, tuple) or len(aux) != 2:
            got = (
                f"a second element of type {type(aux).__name__}"
                if aux is not None
                else f"{type(result).__name__} {getattr(result, 'shape', '')}".rstrip()
            )
            raise TypeError(
                "a truncated-BPTT loss_fn(params, batch, carry, key) must return "
                "(loss, (new_carry, metric_sums)), with loss a float scalar or LossTerms; "
                f"got {got}"
            )
        out = result[0]
        new_carry, metric_sums = aux
        terms, metric_sums = steps.loss_terms((out, metric_sums))
        return terms.total, (terms, new_carry, metric_sums)

    grad_total = jax.grad(total, has_aux=True)

    def train_step(state, carry, batch, key):
        step_key = jax.random.fold_in(key, state.step)
        carry = jax.tree.map(jax.lax.stop_gradient, carry)
        grads, (terms, new_carry, metric_sums) = grad_total(state.params, batch, carry, step_key)
        scale = safe_divide(jnp.ones((), terms.count.dtype), terms.count)
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        with steps._optax_promotion():
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metric_sums = dict(metric_sums, loss=Ratio(terms.total, terms.count))
        metric_sums["grad_norm"] = Ratio(optax.tree.norm(grads), jnp.ones((), jnp.float32))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        # A window with nothing to learn from (count 0: every row's stream has ended,
        # the tail windows of uneven lengths) changes nothing: an optimizer with
        # momentum would otherwise still move the params on its zero gradient.
        learns = terms.count > 0
        new_state = jax.tree.map(lambda n, o: jnp.where(learns, n, o), new_state, state)
        return new_state, new_carry, metric_sums

    return train_step


def make_tbptt_train_step(loss_fn: TbpttLossFn, optimizer) -> Callable:
    """A jitted truncated-BPTT train step ``(state, carry, batch, key) -> (state,
    new_carry, metric_sums)``: one update on one window.

    ``loss_fn(params, batch, carry, key)`` runs the model on one window from
    ``carry`` (the previous window's final carry; pass it through
    :func:`tbptt_carry` to start rows over) and returns ``(loss, (new_carry,
    metric_sums))``: ``loss`` a float scalar mean or :class:`jaxseq.LossTerms`, as
    in :mod:`jaxseq.training.steps`, and ``new_carry`` the window's final carry.
    The step differentiates the window's loss with respect to the params only:
    ``carry`` enters with its gradient stopped (truncated BPTT), and the update is
    ``optimizer`` on ``grad(total) / count``. ``state`` (a
    :class:`jaxseq.training.steps.TrainState`) is donated. A window whose ``LossTerms``
    count is 0 (no valid step in any row, e.g. the tail windows when the streams have
    different lengths) returns ``state`` unchanged: no update, ``state.step`` not
    advanced (a scalar-mean loss always counts as 1). ``metric_sums`` holds
    ``loss``, ``grad_norm`` and the loss function's sums. Needs the ``train``
    extra (it imports :mod:`jaxseq.training`).
    """
    return jax.jit(tbptt_train_step_fn(loss_fn, optimizer), donate_argnums=0)
