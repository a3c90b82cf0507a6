"""The masked recurrence: one sequence with ``lax.scan``, a batch with ``vmap``, stacks.

Notation: B batch, T time, D input features, H hidden, G projected width, L
layers. ``lengths`` is integer ``[B]`` with ``0 <= lengths <= T`` (``length``,
a scalar, for one sequence): the valid steps of a sequence are a prefix.

Semantics (every function here):

* Padded inputs are sanitised first: ``xs`` is replaced by 0 at padded steps
  (``jnp.where``) before any arithmetic, so NaN/inf/1e30 padding reaches
  neither a value nor a gradient.
* At a padded step the carry is held unchanged and the output is exactly 0.
  The final carry is therefore the carry after step ``length - 1`` (the
  initial carry when ``length == 0``).
* ``reverse=True`` runs each sequence backwards *within its own length*: the
  first step processed is the last valid one (``length - 1``), never padding,
  and ``hs`` is returned in the original time order (``hs[t]`` is the state
  after reading ``xs[length-1], ..., xs[t]``).
* ``resets`` (optional bool ``[B, T]``) packs several segments into a row: before a
  marked step the carry is replaced by ``cell.initial_carry(params)``, so each segment
  gives what it gives alone (outputs, gradients; the final carry is the last
  segment's). Resets at padded steps are ignored; with ``reverse`` each segment runs
  backwards within itself (see :func:`rnn`).
* Dtypes: the carry and ``hs`` are float32 (float64 if ``xs`` or the params
  are float64). bfloat16/float16 inputs and params are upcast, so the state
  is always accumulated in float32.

Lengths (``lengths``, ``length``) may have any integer dtype (int8 ... int64,
uint8 ... uint64); they are converted to int32 exactly. Concrete (host) lengths
outside ``[0, T]`` are a ``ValueError`` naming the argument. Under ``jit`` the
values are not visible: a row whose length is outside ``[0, T]`` (or does not
fit int32) comes back as NaN, in ``hs`` and in every leaf of its final carry,
with every method; the other rows are unaffected.

Cells, methods and flags are Python values (static): close over them, or mark
them static when you ``jit`` the front-end itself
(``jax.jit(jaxseq.rnn, static_argnums=0, static_argnames=("method", "reverse"))``).

How it runs is one keyword, ``method=`` (:mod:`jaxseq.methods`):
``Scan(unroll, remat, hoist_projection)``, ``Fused()`` or ``Parallel(remat)``;
``None`` (the default) picks the fastest correct engine for the cell and the
backend (:func:`jaxseq.resolve_method`). Every method has the semantics above,
equal up to float rounding.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks, _fused, cells, masks, parallel_cells
from jaxseq._compiled import compiled
from jaxseq.methods import Fused, Method, Parallel, Scan, _check_cell, resolve_method

Params = Any


# ---------------------------------------------------------------------------- checks


def _check_xs(xs, rank: int, doc: str):
    xs = _checks.as_array(xs, "xs")
    _checks.check_rank(xs, rank, "xs", doc)
    _checks.check_floating(xs, "xs")
    return xs


def _check_lengths(
    lengths, batch: int, max_len: int, name: str = "lengths", doc=None
) -> tuple[jax.Array, jax.Array | None]:
    """``(lengths as int32 clipped to [0, T], bad)``: ``bad`` marks the traced lengths
    outside ``[0, T]`` (their rows become NaN, :func:`jaxseq.masks.poison`), None for
    concrete lengths, which are checked on the host (ValueError naming ``name``)."""
    lengths = _checks.as_array(lengths, name)
    _checks.check_integer(lengths, name)
    shape = (batch,) if doc is None else ()
    _checks.check_shape(lengths, shape, name, doc or "[B] (B from `xs`)")
    lengths = masks.lengths_array(lengths, max_len, name)
    bad = masks.out_of_range(lengths, max_len)
    if bad is not None:
        lengths = jnp.clip(lengths, 0, max_len)
    return lengths, bad


_RESETS_DOC = "[B, T] (B, T from `xs`)"


def _check_resets(resets, shape: tuple[int, ...], doc: str):
    """``resets`` as a bool array of ``shape`` (checked, naming ``resets``), or None."""
    if resets is None:
        return None
    resets = _checks.as_array(resets, "resets")
    if resets.dtype != jnp.bool_:
        raise TypeError(
            f"`resets` must be boolean (True = the carry restarts from the cell's initial "
            f"carry before that step), got dtype {resets.dtype}; convert with "
            "`resets.astype(bool)`"
        )
    _checks.check_shape(resets, shape, "resets", doc)
    return resets


def _step_resets(resets_BT, mask_BT, *, reverse: bool):
    """Where the carry restarts before a step is computed, in the direction of the run.

    ``resets_BT`` marks the first step of each segment; resets at padded steps are
    dropped. Forward, the carry restarts at those steps. Reversed, a segment is entered
    at its LAST step, so the carry restarts at ``t`` when ``t + 1`` is a segment start
    inside the length; the row's last valid step starts from ``carry`` (the initial
    carry by default), as without resets, and a reset at step 0 has no effect.
    Returns bool ``[B, T]``.
    """
    resets_BT = resets_BT & mask_BT
    if reverse and resets_BT.shape[1] > 0:
        resets_BT = jnp.concatenate([resets_BT[:, 1:], jnp.zeros_like(resets_BT[:, :1])], axis=1)
    return resets_BT


def _check_input_width(cell, params, x, name: str, doc: str, layer: int | None = None) -> None:
    """The cell's input width against ``x``'s last axis, at trace time (nothing runs).

    The cells name their own argument ``x``; the front-end's is ``xs`` (or, in a stack,
    the outputs of the layer below), so their width error is re-raised naming it.
    """
    try:
        jax.eval_shape(cell.project, params, jax.ShapeDtypeStruct(x.shape[-1:], x.dtype))
    except cells.InputWidthError as e:
        if layer is None or layer == 0:
            message = (
                f"`{name}` must have shape {doc} with D = {e.expected} (from "
                f"`params['{e.weight}']` of the {e.cell_name} cell), got {tuple(x.shape)}"
            )
        else:
            message = (
                f"`layer_params[{layer}]` expects inputs of width {e.expected} (its "
                f"`{e.weight}` of the {e.cell_name} cell), but layer {layer - 1} outputs "
                f"{x.shape[-1]} features; build the stack with jaxseq.init_stack"
            )
        raise _checks.shape_error(message) from None


def _check_carry(cell, params, carry, batch: int | None, name: str = "carry"):
    """``carry`` as the compute dtype, checked against the cell's carry (with a leading B)."""
    expected = cell.initial_carry(params)
    lead = () if batch is None else (batch,)
    doc = "for ONE example" if batch is None else "with a leading B"
    want = jax.tree.map(lambda e: lead + e.shape, expected)
    try:
        got = jax.tree.map(lambda e, c: tuple(_checks.as_array(c, name).shape), expected, carry)
    except (ValueError, TypeError):
        got = None
    if got != want:
        raise _checks.shape_error(
            f"`{name}` must have the structure and shapes of the {cell.name} cell's carry "
            f"{doc}: {want}, got {jax.tree.map(lambda c: tuple(np.shape(c)), carry)}"
        )
    for leaf in jax.tree.leaves(carry):
        _checks.check_floating(_checks.as_array(leaf, name), name)
    return carry


# ---------------------------------------------------------------------------- core


def _scan(cell, params, xs_TD, mask_T, carry, *, reverse: bool, method: Scan, resets_T=None):
    """The unchecked masked ``lax.scan`` of ONE sequence through a non-linear cell.

    ``resets_T``: None, or bool ``[T]`` from :func:`_step_resets`: the carry is replaced by
    ``cell.initial_carry(params)`` before each marked step. Returns (final carry, hs [T, H]).
    """
    hoist_projection = bool(method.hoist_projection)
    dtype = cells.compute_dtype(xs_TD.dtype, *cells.param_dtypes(params))
    if carry is None:
        carry = cell.initial_carry(params, dtype)
    else:
        carry = jax.tree.map(lambda c: jnp.asarray(c).astype(dtype), carry)
    # Sanitise before any math: padding values never reach a value or a gradient.
    xs_TD = jnp.where(mask_T[:, None], xs_TD, jnp.zeros((), xs_TD.dtype))
    inputs_T = cell.project(params, xs_TD) if hoist_projection else xs_TD

    def body(carry, inputs):
        x_t, valid = inputs
        xp_t = x_t if hoist_projection else cell.project(params, x_t)
        new = cell.step(params, carry, xp_t)
        carry = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, carry)
        h_t = cell.output(new)
        return carry, jnp.where(valid, h_t, jnp.zeros_like(h_t))

    scanned: tuple = (inputs_T, mask_T)
    if resets_T is not None:
        initial = cell.initial_carry(params, dtype)
        plain = body

        def body(carry, inputs):  # the carry restarts before a marked step
            x_t, valid, reset = inputs
            carry = jax.tree.map(lambda i, c: jnp.where(reset, i, c), initial, carry)
            return plain(carry, (x_t, valid))

        scanned = (inputs_T, mask_T, resets_T)
    if method.remat:
        body = jax.checkpoint(body, prevent_cse=False)
    # reverse=True scans t = T-1 .. 0: the padded steps come first and hold the initial
    # carry, so the first step that changes it is the last valid one, as if the sequence
    # had been reversed within its length; lax.scan returns hs in the original order.
    return jax.lax.scan(body, carry, scanned, reverse=reverse, unroll=method.unroll)


def _linear_rnn(
    cell, params, xs_BTD, mask_BT, carry, *, reverse: bool, method: Scan | Parallel, resets_BT=None
):
    """The masked scan of a batch through a linear cell (``s_t = a_t s_{t-1} + b_t``).

    Batched by hand (not a ``vmap`` of one example) and time-major inside:

    * padded inputs are zeroed, then projected with ONE 2-D matmul
      ``[B*T, D] @ [D, G]`` (on XLA:CPU the weight gradient of the 3-D
      ``dot_general`` that a vmapped projection becomes ran ~15x slower);
    * the coefficients of every step are computed at once, outside any loop, and
      padded steps become the identity ``(a, b) = (1, 0)``, so the state is held
      there and a reverse scan meets the padded tail first and leaves the
      initial state alone;
    * ``[T, B, S]`` coefficients are composed with an associative scan
      (``parallel``) or a ``lax.scan`` of ``s = a * s + b`` over contiguous
      ``[B, S]`` slices;
    * the final carry is picked at the last valid step processed (the initial
      carry when there is none);
    * ``resets_BT`` (None, or bool ``[B, T]`` from :func:`_step_resets`): a marked step
      ignores the incoming state and starts from the initial state ``s0`` of
      ``cell.initial_carry(params)``: ``s_t = a_t s0 + b_t``, i.e. its element becomes
      ``(0, a_t s0 + b_t)``; in log space (where ``s0`` may have any sign) a segmented
      scan restarts the composition there and adds ``s0`` afterwards, linearly.

    Returns (final carry with leaves ``[B, ...]``, hs ``[B, T, H]``).
    """
    linear = cell.step  # a parallel_cells.LinearStep
    parallel = isinstance(method, Parallel)
    batch, steps = xs_BTD.shape[:2]
    dtype = cells.compute_dtype(xs_BTD.dtype, *cells.param_dtypes(params))
    if carry is None:
        carry = jax.tree.map(
            lambda c: jnp.broadcast_to(c, (batch,) + c.shape), cell.initial_carry(params, dtype)
        )
    else:
        carry = jax.tree.map(lambda c: jnp.asarray(c).astype(dtype), carry)

    def run(params, xs_BTD, carry):
        # Sanitise before any math: padding values never reach a value or a gradient.
        xs_BTD = jnp.where(mask_BT[:, :, None], xs_BTD, jnp.zeros((), xs_BTD.dtype))
        xp_NG = cell.project(params, xs_BTD.reshape((batch * steps, xs_BTD.shape[2])))
        xp_TBG = jnp.swapaxes(xp_NG.reshape((batch, steps, xp_NG.shape[-1])), 0, 1)
        s0_BS = jax.vmap(linear.to_state)(carry)
        valid_TB1 = jnp.swapaxes(mask_BT, 0, 1)[:, :, None]
        if resets_BT is not None:
            reset_TB1 = jnp.swapaxes(resets_BT, 0, 1)[:, :, None]
            h0_11S = linear.to_state(cell.initial_carry(params, dtype))[None, None]
        if parallel and linear.log_coefficients is not None:
            log_a, log_b = linear.log_coefficients(params, xp_TBG, dtype)
            log_a = jnp.where(valid_TB1, log_a, jnp.zeros((), log_a.dtype))
            log_b = jnp.where(valid_TB1, log_b, jnp.full((), parallel_cells._LOG_ZERO, log_b.dtype))
            if resets_BT is None:
                log_A, log_B = parallel_cells.log_linear_scan(log_a, log_b, reverse=reverse)
                # The initial state enters linearly, so it may have any sign (or be 0).
                s_TBS = jnp.exp(log_A) * s0_BS[None] + jnp.exp(log_B)
            else:
                restarted_TB1, log_A, log_B = parallel_cells.segmented_log_linear_scan(
                    reset_TB1, log_a, log_b, reverse=reverse
                )
                # After a restart the composition starts from the cell's initial state.
                start_TBS = jnp.where(restarted_TB1, h0_11S, s0_BS[None])
                s_TBS = jnp.exp(log_A) * start_TBS + jnp.exp(log_B)
        else:
            a_TBS, b_TBS = linear.coefficients(params, xp_TBG, dtype)
            a_TBS = jnp.where(valid_TB1, a_TBS, jnp.ones((), a_TBS.dtype))
            b_TBS = jnp.where(valid_TB1, b_TBS, jnp.zeros((), b_TBS.dtype))
            if resets_BT is not None:
                # A restart step ignores the incoming state: s_t = a_t s0 + b_t.
                b_TBS = jnp.where(reset_TB1, a_TBS * h0_11S + b_TBS, b_TBS)
                a_TBS = jnp.where(reset_TB1, jnp.zeros((), a_TBS.dtype), a_TBS)
            if parallel:
                A_TBS, B_TBS = parallel_cells.linear_scan(a_TBS, b_TBS, reverse=reverse)
                s_TBS = A_TBS * s0_BS[None] + B_TBS
            else:

                def body(s_BS, ab):
                    s_BS = ab[0] * s_BS + ab[1]
                    return s_BS, s_BS

                scan = jax.lax.scan(
                    body, s0_BS, (a_TBS, b_TBS), reverse=reverse, unroll=method.unroll
                )
                s_TBS = scan[1]
        carries_BT = linear.readout(params, jnp.swapaxes(s_TBS, 0, 1), jnp.swapaxes(xp_TBG, 0, 1))
        h_BTH = cell.output(carries_BT)
        hs_BTH = jnp.where(mask_BT[:, :, None], h_BTH, jnp.zeros((), h_BTH.dtype))
        if steps == 0:
            return carry, hs_BTH
        # The last valid step processed: forward the last valid t, reverse the first.
        if reverse:
            last_B = jnp.argmax(mask_BT, axis=1)
        else:
            last_B = steps - 1 - jnp.argmax(mask_BT[:, ::-1], axis=1)
        any_B = jnp.any(mask_BT, axis=1)

        def pick(c_BT, c0_B):
            any_b = any_B.reshape((batch,) + (1,) * (c0_B.ndim - 1))
            return jnp.where(any_b, c_BT[jnp.arange(batch), last_B], c0_B)

        return jax.tree.map(pick, carries_BT, carry), hs_BTH

    if method.remat:
        run = jax.checkpoint(run, prevent_cse=False)
    return run(params, xs_BTD, carry)


def _check_params(cell, params, xs_BTD) -> None:
    """The cell's own checks of ``params`` (keys, widths) on abstract values: nothing runs.

    The fused engine reads the weights directly, so without this a wrong params dict
    would fail there with a KeyError or a matmul shape error instead of the cell's own
    errors naming `params` (ValueError) or `xp_t` (shape AssertionError), which is what
    the Scan method raises (an input width that does not fit is caught before, by
    :func:`_check_input_width`, naming `xs`). It runs at trace time only.
    """
    dtype = cells.compute_dtype(xs_BTD.dtype, *cells.param_dtypes(params))

    def one_step(params, x_D):
        return cell.step(params, cell.initial_carry(params, dtype), cell.project(params, x_D))

    jax.eval_shape(one_step, params, jax.ShapeDtypeStruct(xs_BTD.shape[2:], xs_BTD.dtype))


_OPTION_TYPES = (bool, int, float, complex, str, type, np.dtype, type(None))


def _library_function(fn) -> bool:
    """A module-level function of jaxseq's (no closure), possibly bound to plain options."""
    if fn is None:
        return True
    if isinstance(fn, cells._Bound):
        options = [value for _, value in fn.options]
        return _library_function(fn.fn) and all(isinstance(v, _OPTION_TYPES) for v in options)
    return (
        inspect.isfunction(fn)
        and fn.__module__.startswith("jaxseq.")
        and fn.__closure__ is None
        and fn.__name__ != "<lambda>"
    )


def _is_library_cell(cell) -> bool:
    """True for the cells jaxseq builds (:func:`jaxseq.gru`, :func:`jaxseq.mingru`, ...):
    every function is jaxseq's own, so its results depend on its arguments only and a
    compiled program of it may be cached. A cell of your own runs uncompiled (eagerly),
    so it always sees the current value of any state it reads and nothing it closes
    over is kept alive by a cache."""
    parts = [cell.init, cell.initial_carry, cell.project, cell.step, cell.output]
    step = cell.step
    if isinstance(step, parallel_cells.LinearStep):
        parts[3:4] = [step.coefficients, step.log_coefficients, step.to_state, step.readout]
    return all(_library_function(part) for part in parts)


def _compiled_cell_core(*static_argnames: str):
    """:func:`jaxseq._compiled.compiled` for a core taking ``cell``: only jaxseq's cells."""
    return compiled(*static_argnames, eligible=lambda cell, **_: _is_library_cell(cell))


@_compiled_cell_core("cell", "reverse", "method")
def _rnn(cell, params, xs_BTD, lengths_B, carry, *, reverse: bool, method: Method, resets=None):
    """The unchecked batched recurrence; ``method`` is resolved; ``resets`` None or bool
    ``[B, T]`` (segment starts, unmasked). Returns (final, hs [B, T, H])."""
    if resets is not None:
        return _rnn_resets(cell, params, xs_BTD, lengths_B, carry, reverse, method, resets)
    if isinstance(method, Fused):
        _check_params(cell, params, xs_BTD)
        return _fused.rnn(cell, params, xs_BTD, lengths_B, carry, reverse=reverse)
    mask_BT = masks._mask(lengths_B, xs_BTD.shape[1])
    if parallel_cells.is_linear(cell):
        return _linear_rnn(cell, params, xs_BTD, mask_BT, carry, reverse=reverse, method=method)

    def one(x_TD, m_T, c):
        return _scan(cell, params, x_TD, m_T, c, reverse=reverse, method=method)

    return jax.vmap(one, in_axes=(0, 0, None if carry is None else 0))(xs_BTD, mask_BT, carry)


def _rnn_resets(cell, params, xs_BTD, lengths_B, carry, reverse, method, resets_BT):
    """:func:`_rnn` with segment starts ``resets_BT`` (bool ``[B, T]``, unmasked)."""
    mask_BT = masks._mask(lengths_B, xs_BTD.shape[1])
    step_resets_BT = _step_resets(resets_BT, mask_BT, reverse=reverse)
    if isinstance(method, Fused):
        _check_params(cell, params, xs_BTD)
        return _fused.rnn(
            cell, params, xs_BTD, lengths_B, carry, reverse=reverse, resets=step_resets_BT
        )
    if parallel_cells.is_linear(cell):
        return _linear_rnn(
            cell,
            params,
            xs_BTD,
            mask_BT,
            carry,
            reverse=reverse,
            method=method,
            resets_BT=step_resets_BT,
        )

    def one(x_TD, m_T, r_T, c):
        return _scan(cell, params, x_TD, m_T, c, reverse=reverse, method=method, resets_T=r_T)

    in_axes = (0, 0, 0, None if carry is None else 0)
    return jax.vmap(one, in_axes=in_axes)(xs_BTD, mask_BT, step_resets_BT, carry)


@_compiled_cell_core("cell", "reverse", "method")
def _scan_one(cell, params, xs_TD, length, carry, resets_T, *, reverse: bool, method: Scan):
    """:func:`_scan` of one sequence from its ``length`` and segment starts ``resets_T``."""
    mask_T = masks._mask(length, xs_TD.shape[0])
    if resets_T is not None:
        resets_T = _step_resets(resets_T[None], mask_T[None], reverse=reverse)[0]
    return _scan(
        cell, params, xs_TD, mask_T, carry, reverse=reverse, method=method, resets_T=resets_T
    )


def scan_rnn(
    cell: cells.Cell,
    params: Params,
    xs: jax.Array,
    length: jax.Array | int,
    *,
    carry=None,
    reverse: bool = False,
    method: Method | None = None,
    resets: jax.Array | None = None,
):
    """Run a cell over ONE padded sequence: :func:`rnn` for a single example.

    Write per-example code with it and ``vmap`` it, or use :func:`rnn` for a
    batch (the same function, batched).

    Args:
      cell: a :class:`jaxseq.cells.Cell` (static).
      params: the cell's params.
      xs: float ``[T, D]``; padded steps (``t >= length``) may hold anything
        (NaN, inf, 1e30).
      length: integer scalar in ``[0, T]`` (any integer dtype), the number of valid
        steps (checked when concrete; under ``jit`` a length outside ``[0, T]`` makes
        every float output NaN).
      carry: the initial carry for ONE example (default: ``cell.initial_carry``,
        zeros); cast to the compute dtype.
      reverse: run backwards within the sequence's own length (see the module doc);
        ``hs`` stays in the original time order.
      method: how the recurrence runs (:mod:`jaxseq.methods`); None picks the
        fastest correct engine for the cell and backend.
      resets: optional bool ``[T]``, the first step of each packed segment: see
        :func:`rnn`.

    Returns:
      ``(final_carry, hs)``: the carry after the last valid step (the initial
      carry when no step is valid) and float32 ``hs [T, H]`` with zeros at padded
      steps.

    >>> import jax, jax.numpy as jnp, jaxseq as js
    >>> cell = js.gru(5)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> carry, hs = js.scan_rnn(cell, params, jnp.ones((4, 3)), 2)
    >>> hs.shape, bool(jnp.all(hs[2:] == 0)), bool(jnp.all(carry == hs[1]))
    ((4, 5), True, True)
    """
    _check_cell(cell)
    _checks.check_flag(reverse, "reverse")
    xs = _check_xs(xs, 2, "[T, D]")
    method = resolve_method(cell, method)
    length, bad = _check_lengths(length, 1, xs.shape[0], "length", "(a scalar)")
    resets = _check_resets(resets, xs.shape[:1], "[T] (T from `xs`)")
    _check_input_width(cell, params, xs, "xs", "[T, D]")
    if carry is not None:
        carry = _check_carry(cell, params, carry, None)
    if isinstance(method, Scan) and not parallel_cells.is_linear(cell):
        out = _scan_one(cell, params, xs, length, carry, resets, reverse=reverse, method=method)
        return masks.poison(out, bad)
    carry_1 = None if carry is None else jax.tree.map(lambda c: jnp.asarray(c)[None], carry)
    resets_1 = None if resets is None else resets[None]
    final, hs = _rnn(
        cell,
        params,
        xs[None],
        length.reshape(1),
        carry_1,
        reverse=reverse,
        method=method,
        resets=resets_1,
    )
    return masks.poison((jax.tree.map(lambda c: c[0], final), hs[0]), bad)


def rnn(
    cell: cells.Cell,
    params: Params,
    xs: jax.Array,
    lengths: jax.Array,
    *,
    carry=None,
    reverse: bool = False,
    method: Method | None = None,
    resets: jax.Array | None = None,
):
    """Run a cell over a batch of padded sequences.

    Args:
      cell: a :class:`jaxseq.cells.Cell` (static).
      params: the cell's params.
      xs: float ``[B, T, D]``; padded steps may hold anything (NaN, inf, 1e30).
      lengths: integer ``[B]`` in ``[0, T]``, any integer dtype (checked when
        concrete; under ``jit`` a row whose length is outside ``[0, T]`` is NaN).
      carry: optional initial carry with a leading B on every leaf.
      reverse: run each sequence backwards within its own length; ``hs`` stays in
        the original time order.
      method: how the recurrence runs: ``jaxseq.Scan(...)``, ``jaxseq.Fused()``,
        ``jaxseq.Parallel(...)`` (:mod:`jaxseq.methods`), or None for the fastest
        correct engine for the cell and backend (:func:`jaxseq.resolve_method`).
      resets: optional bool ``[B, T]``, True at the first step of each segment packed
        in a row (streaming, packed batches): the carry is replaced by
        ``cell.initial_carry(params)`` (not ``carry``) before that step, so each
        segment gives exactly what running it alone gives, in values and gradients.
        Resets at padded steps are ignored. With ``reverse``, each segment runs
        backwards within itself: the carry restarts at the last step of every
        segment but the row's last one, which starts from ``carry`` (the initial
        carry by default); a reset at step 0 then changes nothing. None (the
        default) and all-False are the plain recurrence (all-False: up to float
        rounding, since XLA may fuse the extra select differently).

    Returns:
      ``(final_carry, hs)``: the final carries (leaves ``[B, ...]``; with
      ``resets``, the carry at the end of the last segment processed) and
      ``hs [B, T, H]``, zero at padded steps.

    >>> import jax, jax.numpy as jnp, jaxseq as js
    >>> cell = js.lstm(5)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> xs, lengths = jnp.ones((2, 4, 3)), jnp.array([4, 1])
    >>> (h, c), hs = js.rnn(cell, params, xs, lengths)
    >>> h.shape, c.shape, hs.shape
    ((2, 5), (2, 5), (2, 4, 5))
    >>> _, hs_scan = js.rnn(cell, params, xs, lengths, method=js.Scan(unroll=2))
    >>> bool(jnp.allclose(hs, hs_scan, atol=1e-6))
    True
    """
    _check_cell(cell)
    _checks.check_flag(reverse, "reverse")
    xs = _check_xs(xs, 3, "[B, T, D]")
    method = resolve_method(cell, method)
    lengths, bad = _check_lengths(lengths, xs.shape[0], xs.shape[1])
    resets = _check_resets(resets, xs.shape[:2], _RESETS_DOC)
    _check_input_width(cell, params, xs, "xs", "[B, T, D]")
    if carry is not None:
        carry = _check_carry(cell, params, carry, xs.shape[0])
    out = _rnn(cell, params, xs, lengths, carry, reverse=reverse, method=method, resets=resets)
    return masks.poison(out, bad)


def _check_bidirectional_params(params, name: str = "params") -> None:
    if not isinstance(params, dict) or set(params) != {"forward", "backward"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"`{name}` of a bidirectional layer must be a dict with keys "
            f"'forward' and 'backward', got {got}"
        )


@_compiled_cell_core("cell", "method")
def _bidirectional(cell, params, xs_BTD, lengths_B, carry, *, method: Method, resets=None):
    carry_f, carry_b = (None, None) if carry is None else carry
    final_f, hs_f = _rnn(
        cell,
        params["forward"],
        xs_BTD,
        lengths_B,
        carry_f,
        reverse=False,
        method=method,
        resets=resets,
    )
    final_b, hs_b = _rnn(
        cell,
        params["backward"],
        xs_BTD,
        lengths_B,
        carry_b,
        reverse=True,
        method=method,
        resets=resets,
    )
    return (final_f, final_b), jnp.concatenate([hs_f, hs_b], axis=-1)


def bidirectional(
    cell: cells.Cell,
    params: Params,
    xs: jax.Array,
    lengths: jax.Array,
    *,
    carry=None,
    method: Method | None = None,
    resets: jax.Array | None = None,
):
    """A forward and a backward (within-length reversed) :func:`rnn`, concatenated.

    Args:
      cell: the cell of both directions.
      params: ``{"forward": params_f, "backward": params_b}``.
      xs: float ``[B, T, D]``.
      lengths: integer ``[B]`` in ``[0, T]``, as in :func:`rnn` (under ``jit`` a row
        whose length is outside ``[0, T]`` is NaN in every output and final carry).
      carry: optional ``(carry_f, carry_b)``, leaves with a leading B.
      method: as in :func:`rnn`.
      resets: optional bool ``[B, T]``, the first step of each packed segment, as in
        :func:`rnn`: both directions run within each segment (the backward one from
        the segment's last step to its first), as if each segment ran alone.

    Returns:
      ``((carry_f, carry_b), hs [B, T, 2H])``: ``hs[..., :H]`` are the forward
      outputs, ``hs[..., H:]`` the backward ones (each in the original time
      order); 0 at padded steps. ``carry_b`` is the backward state after reading
      the whole valid sequence (i.e. at step 0; with ``resets``, after reading the
      first segment).
    """
    _check_cell(cell)
    _check_bidirectional_params(params)
    xs = _check_xs(xs, 3, "[B, T, D]")
    method = resolve_method(cell, method)
    lengths, bad = _check_lengths(lengths, xs.shape[0], xs.shape[1])
    resets = _check_resets(resets, xs.shape[:2], _RESETS_DOC)
    _check_input_width(cell, params["forward"], xs, "xs", "[B, T, D]")
    _check_input_width(cell, params["backward"], xs, "xs", "[B, T, D]")
    if carry is not None:
        if not isinstance(carry, tuple) or len(carry) != 2:
            raise ValueError("`carry` of a bidirectional layer must be a tuple (carry_f, carry_b)")
        carry = (
            _check_carry(cell, params["forward"], carry[0], xs.shape[0], "carry[0]"),
            _check_carry(cell, params["backward"], carry[1], xs.shape[0], "carry[1]"),
        )
    out = _bidirectional(cell, params, xs, lengths, carry, method=method, resets=resets)
    return masks.poison(out, bad)


# ---------------------------------------------------------------------------- stacks


def init_stack(
    key: jax.Array,
    cell: cells.Cell,
    input_size: int,
    *,
    num_layers: int,
    bidirectional: bool = False,
) -> list:
    """Params of ``num_layers`` stacked layers: a list, one cell params dict per layer.

    Layer 0 reads ``input_size`` features, layer ``l > 0`` reads H (2H when
    bidirectional). A bidirectional layer's params are
    ``{"forward": ..., "backward": ...}``. Layer ``l`` is initialised from
    ``jax.random.split(key, num_layers)[l]``.
    """
    _check_cell(cell)
    _checks.check_flag(bidirectional, "bidirectional")
    _checks.check_int(num_layers, "num_layers", 1)
    width = cell.hidden_size * (2 if bidirectional else 1)
    layers: list[dict[str, Any]] = []
    for layer, layer_key in enumerate(jax.random.split(key, num_layers)):
        size = input_size if layer == 0 else width
        if bidirectional:
            key_f, key_b = jax.random.split(layer_key)
            layers.append({"forward": cell.init(key_f, size), "backward": cell.init(key_b, size)})
        else:
            layers.append(cell.init(layer_key, size))
    return layers


def variational_dropout(hs: jax.Array, *, rate: float, key: jax.Array) -> jax.Array:
    """Dropout with one Bernoulli mask per sequence and feature, shared across time.

    Args:
      hs: ``[B, T, F]``.
      rate: drop probability ``p`` in ``[0, 1)``.
      key: a PRNG key.

    Returns:
      ``[B, T, F]``: ``hs * keep[:, None, :] / (1 - p)`` with
      ``keep ~ Bernoulli(1 - p)`` of shape ``[B, F]`` (inverted scaling, so the
      expectation is ``hs``). Zeros (e.g. padding) stay zeros.
    """
    hs = _checks.as_array(hs, "hs")
    _checks.check_rank(hs, 3, "hs", "[B, T, F]")
    _checks.check_rate(rate, "rate")
    if rate == 0.0:
        return hs
    keep_B1F = jax.random.bernoulli(key, 1.0 - rate, (hs.shape[0], 1, hs.shape[2]))
    return jnp.where(keep_B1F, hs / (1.0 - rate), jnp.zeros((), hs.dtype))


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
    method: Method | None = None,
    resets: jax.Array | None = None,
    carry: list | None = None,
):
    """Stacked (optionally bidirectional) layers with variational dropout between them.

    Layer ``l`` reads the outputs of layer ``l - 1``. When ``train`` and
    ``dropout_rate > 0``, the input of every layer ``l >= 1`` goes through
    :func:`variational_dropout` with key ``jax.random.fold_in(key, l)``: one mask
    per sequence and feature, the same at every time step. There is no dropout
    on the input of layer 0 nor on the output of the last layer (apply your own
    if you want it), and none when ``train=False``.

    Args:
      cell: the cell of every layer.
      layer_params: a list of per-layer params, e.g. from :func:`init_stack`.
      xs: float ``[B, T, D]``.
      lengths: integer ``[B]`` in ``[0, T]``, as in :func:`rnn` (under ``jit`` a row
        whose length is outside ``[0, T]`` is NaN in every output and final carry).
      bidirectional: every layer is a :func:`bidirectional` layer.
      dropout_rate: the drop probability ``p`` in ``[0, 1)``.
      key: PRNG key for dropout; required when ``train`` and ``dropout_rate > 0``.
      train: apply dropout.
      method: as in :func:`rnn` (every layer runs with it).
      resets: optional bool ``[B, T]``, the first step of each packed segment, as in
        :func:`rnn`: every layer (both directions when bidirectional) restarts there,
        so each segment goes through the stack as if it ran alone.
      carry: optional list with one initial carry per layer (leaves with a leading B;
        a pair ``(carry_f, carry_b)`` per layer when bidirectional), e.g. the
        ``final_carries`` of the previous window of a stream
        (:mod:`jaxseq.streaming`). Default: every layer starts from
        ``cell.initial_carry``.

    Returns:
      ``(final_carries, hs)``: a list with each layer's final carry (a pair
      ``(carry_f, carry_b)`` when bidirectional) and the last layer's outputs
      ``hs [B, T, H]`` (``[B, T, 2H]`` when bidirectional), 0 at padded steps.
    """
    _check_cell(cell)
    _checks.check_flag(bidirectional, "bidirectional")
    _checks.check_flag(train, "train")
    _checks.check_rate(dropout_rate, "dropout_rate")
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
    xs = _check_xs(xs, 3, "[B, T, D]")
    method = resolve_method(cell, method)
    lengths, bad = _check_lengths(lengths, xs.shape[0], xs.shape[1])
    resets = _check_resets(resets, xs.shape[:2], _RESETS_DOC)
    if bidirectional:
        for layer, params in enumerate(layer_params):
            _check_bidirectional_params(params, f"layer_params[{layer}]")
    if carry is not None and (
        not isinstance(carry, (list, tuple)) or len(carry) != len(layer_params)
    ):
        raise ValueError(
            f"`carry` must be a list with one initial carry per layer ({len(layer_params)}), "
            f"e.g. the final carries stack returned; got {type(carry).__name__}"
            + (f" of length {len(carry)}" if isinstance(carry, (list, tuple)) else "")
        )
    finals = []
    hs = xs
    for layer, params in enumerate(layer_params):
        for one in (params["forward"], params["backward"]) if bidirectional else (params,):
            _check_input_width(cell, one, hs, "xs", "[B, T, D]", layer)
        layer_carry = None
        if carry is not None:
            name = f"carry[{layer}]"
            if bidirectional:
                pair = carry[layer]
                if not isinstance(pair, tuple) or len(pair) != 2:
                    raise ValueError(
                        f"`{name}` of a bidirectional layer must be a tuple (carry_f, carry_b)"
                    )
                layer_carry = (
                    _check_carry(cell, params["forward"], pair[0], xs.shape[0], f"{name}[0]"),
                    _check_carry(cell, params["backward"], pair[1], xs.shape[0], f"{name}[1]"),
                )
            else:
                layer_carry = _check_carry(cell, params, carry[layer], xs.shape[0], name)
        if layer > 0 and use_dropout:
            assert key is not None  # checked above: use_dropout requires a key
            hs = variational_dropout(hs, rate=dropout_rate, key=jax.random.fold_in(key, layer))
        if bidirectional:
            final, hs = _bidirectional(
                cell, params, hs, lengths, layer_carry, method=method, resets=resets
            )
        else:
            final, hs = _rnn(
                cell, params, hs, lengths, layer_carry, reverse=False, method=method, resets=resets
            )
        finals.append(final)
    return masks.poison((finals, hs), bad)
