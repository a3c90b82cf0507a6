"""The masked recurrence: one sequence with ``lax.scan``, a batch with ``vmap``, stacks.

Notation: B batch, T time, D input features, H hidden, G projected width, L
layers. ``mask`` is bool ``[T]`` with True at valid steps and must be a valid
prefix; ``lengths`` is integer ``[B]`` with ``0 <= lengths <= T``.

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
* Dtypes: the carry and ``hs`` are float32 (float64 if ``xs`` or the params
  are float64). bfloat16/float16 inputs and params are upcast, so the state
  is always accumulated in float32.

The mask is checked to be a valid prefix only when it is concrete (host data,
outside ``jit``); under ``jit`` or ``vmap`` it is unchecked, and the steps
where it is False are simply skipped. Lengths are checked against ``[0, T]``
with :func:`jaxseq.validation.validate_lengths` when they are concrete; under
``jit`` a length above T acts as T and a negative one as 0.

Cells are Python objects (static): close over them or mark them static when
you ``jit`` (``jax.jit(recurrence.rnn, static_argnums=0)``).

Evaluation modes (``mode=``, every function here):

* ``"sequential"``: ``lax.scan`` over the steps, one ``cell.step`` each (any cell).
* ``"parallel"``: only for cells whose recurrence is linear in the state,
  ``s_t = a_t * s_{t-1} + b_t`` (:mod:`jaxseq.parallel_cells`: minGRU, minLSTM,
  LRU): the sequence is evaluated with ``lax.associative_scan`` in O(log T)
  depth. A padded step becomes the identity element ``(a, b) = (1, 0)``, so
  the carry is held there, and a ``reverse`` pass is a reverse associative
  scan (the padded tail, all identities, leaves the state untouched until the
  last valid step). Same semantics as the sequential mode, equal up to float
  rounding. ``unroll`` is ignored.

  For linear cells both modes compute every step's ``(a_t, b_t)`` at once,
  before the scan (``hoist_projection`` is implied), and ``"sequential"``
  loops over ``s = a * s + b`` only; ``remat`` checkpoints the whole
  evaluation.
* ``"auto"`` (the default): ``"sequential"`` for non-linear cells (elman, gru,
  lstm: nothing changes for them); for linear cells ``"parallel"`` on GPU and
  TPU and ``"sequential"`` on CPU, where it measured faster (see
  :func:`resolve_mode` and ``benchmarks/parallel_scan.py``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks, cells, masks, parallel_cells, validation

Params = Any

MODES = ("auto", "sequential", "parallel")
# The backends on which "auto" runs linear cells with the parallel scan. Not CPU: there
# benchmarks/parallel_scan.py (train step, fwd + bwd, T = 256..4096) measured the
# sequential lax.scan faster at every T (XLA:CPU's loop costs well under a microsecond
# per step, while the associative scan does ~2x the work with strided memory access).
AUTO_PARALLEL_BACKENDS = ("gpu", "tpu")


# ---------------------------------------------------------------------------- checks


def _check_cell(cell) -> None:
    if not isinstance(cell, cells.Cell):
        raise TypeError(f"`cell` must be a jaxseq.cells.Cell, got {type(cell).__name__}")


def _check_unroll(unroll) -> None:
    ok = isinstance(unroll, bool) or (isinstance(unroll, int) and unroll >= 1)
    if not ok:
        raise ValueError(f"`unroll` must be a positive Python int (or bool), got {unroll!r}")


def _check_flag(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a Python bool, got {value!r}")


def _check_options(cell, unroll, remat, hoist_projection) -> None:
    _check_cell(cell)
    _check_unroll(unroll)
    _check_flag(remat, "remat")
    _check_flag(hoist_projection, "hoist_projection")


def resolve_mode(cell: cells.Cell, mode: str = "auto", *, backend: str | None = None) -> str:
    """The evaluation mode that ``mode`` means for ``cell``.

    Args:
      cell: a :class:`jaxseq.cells.Cell`.
      mode: ``"auto"``, ``"sequential"`` or ``"parallel"`` (see the module doc).
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``; default ``jax.default_backend()``.

    Returns:
      ``"sequential"`` or ``"parallel"``. ``"auto"`` is ``"sequential"`` for a
      cell that is not linear in its state; for a linear one it is
      ``"parallel"`` on the backends in ``AUTO_PARALLEL_BACKENDS`` (GPU, TPU)
      and ``"sequential"`` on CPU.

    Raises:
      ValueError: unknown ``mode``, or ``"parallel"`` for a non-linear cell.

    >>> from jaxseq import cells, parallel_cells, recurrence
    >>> recurrence.resolve_mode(cells.gru(4))
    'sequential'
    >>> cell = parallel_cells.mingru(4)
    >>> recurrence.resolve_mode(cell, backend="gpu"), recurrence.resolve_mode(cell, backend="cpu")
    ('parallel', 'sequential')
    """
    _check_cell(cell)
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(
            f"unknown `mode` {mode!r}; expected one of: " + ", ".join(repr(m) for m in MODES)
        )
    linear = parallel_cells.is_linear(cell)
    if mode == "parallel" and not linear:
        raise ValueError(
            f"`mode`='parallel' needs a cell whose recurrence is linear in its state "
            f"(jaxseq.parallel_cells: mingru, minlstm, lru); the {cell.name} cell is not: "
            "use mode='sequential' or 'auto'"
        )
    if mode != "auto":
        return mode
    if not linear:
        return "sequential"
    backend = jax.default_backend() if backend is None else backend
    return "parallel" if backend in AUTO_PARALLEL_BACKENDS else "sequential"


def _check_xs(xs, rank: int, doc: str):
    xs = _checks.as_array(xs, "xs")
    _checks.check_rank(xs, rank, "xs", doc)
    _checks.check_floating(xs, "xs")
    return xs


def _check_lengths(lengths, batch: int, max_len: int):
    lengths = _checks.as_array(lengths, "lengths")
    _checks.check_integer(lengths, "lengths")
    _checks.check_shape(lengths, (batch,), "lengths", "[B] (B from `xs`)")
    if _checks.is_concrete(lengths):
        validation.validate_lengths(lengths, max_len)
    return lengths


def _check_mask(mask, max_len: int):
    mask = _checks.as_array(mask, "mask")
    _checks.check_bool(mask, "mask")
    _checks.check_shape(mask, (max_len,), "mask", "[T] (T from `xs`)")
    if _checks.is_concrete(mask):
        mask_np = np.asarray(mask)
        if np.any(mask_np[1:] & ~mask_np[:-1]):
            raise ValueError(
                "`mask` must be a valid prefix (True for t < length, False after), got "
                f"{mask_np.astype(int).tolist()}; build it with `jaxseq.length_mask`"
            )
    return mask


def _param_dtypes(params) -> list:
    return [leaf.dtype for leaf in jax.tree.leaves(params)]


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
        raise ValueError(
            f"`{name}` must have the structure and shapes of the {cell.name} cell's carry "
            f"{doc}: {want}, got {jax.tree.map(lambda c: tuple(np.shape(c)), carry)}"
        )
    for leaf in jax.tree.leaves(carry):
        _checks.check_floating(_checks.as_array(leaf, name), name)
    return carry


# ---------------------------------------------------------------------------- core


def _scan(
    cell,
    params,
    xs_TD,
    mask_T,
    carry,
    *,
    reverse,
    unroll,
    remat,
    hoist_projection,
    mode="sequential",
):
    """The unchecked masked scan of ONE sequence. Returns (final carry, hs [T, H]).

    ``mode`` is resolved already: ``"sequential"`` or ``"parallel"``.
    """
    if parallel_cells.is_linear(cell):
        final, hs = _linear_rnn(
            cell,
            params,
            xs_TD[None],
            mask_T[None],
            None if carry is None else jax.tree.map(lambda c: jnp.asarray(c)[None], carry),
            parallel=mode == "parallel",
            reverse=reverse,
            unroll=unroll,
            remat=remat,
        )
        return jax.tree.map(lambda c: c[0], final), hs[0]
    dtype = cells.compute_dtype(xs_TD.dtype, *_param_dtypes(params))
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

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    # reverse=True scans t = T-1 .. 0: the padded steps come first and hold the initial
    # carry, so the first step that changes it is the last valid one, as if the sequence
    # had been reversed within its length; lax.scan returns hs in the original order.
    return jax.lax.scan(body, carry, (inputs_T, mask_T), reverse=reverse, unroll=unroll)


def _linear_rnn(cell, params, xs_BTD, mask_BT, carry, *, parallel, reverse, unroll, remat):
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
      carry when there is none).

    Returns (final carry with leaves ``[B, ...]``, hs ``[B, T, H]``).
    """
    linear = cell.step  # a parallel_cells.LinearStep (checked by resolve_mode)
    batch, steps = xs_BTD.shape[:2]
    dtype = cells.compute_dtype(xs_BTD.dtype, *_param_dtypes(params))
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
        if parallel and linear.log_coefficients is not None:
            log_a, log_b = linear.log_coefficients(params, xp_TBG, dtype)
            log_a = jnp.where(valid_TB1, log_a, jnp.zeros((), log_a.dtype))
            log_b = jnp.where(valid_TB1, log_b, jnp.full((), parallel_cells._LOG_ZERO, log_b.dtype))
            log_A, log_B = parallel_cells.log_linear_scan(log_a, log_b, reverse=reverse)
            # The initial state enters linearly, so it may have any sign (or be 0).
            s_TBS = jnp.exp(log_A) * s0_BS[None] + jnp.exp(log_B)
        else:
            a_TBS, b_TBS = linear.coefficients(params, xp_TBG, dtype)
            a_TBS = jnp.where(valid_TB1, a_TBS, jnp.ones((), a_TBS.dtype))
            b_TBS = jnp.where(valid_TB1, b_TBS, jnp.zeros((), b_TBS.dtype))
            if parallel:
                A_TBS, B_TBS = parallel_cells.linear_scan(a_TBS, b_TBS, reverse=reverse)
                s_TBS = A_TBS * s0_BS[None] + B_TBS
            else:

                def body(s_BS, ab):
                    s_BS = ab[0] * s_BS + ab[1]
                    return s_BS, s_BS

                scan = jax.lax.scan(body, s0_BS, (a_TBS, b_TBS), reverse=reverse, unroll=unroll)
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

    if remat:
        run = jax.checkpoint(run, prevent_cse=False)
    return run(params, xs_BTD, carry)


def scan_rnn(
    cell: cells.Cell,
    params: Params,
    xs: jax.Array,
    mask: jax.Array,
    *,
    carry=None,
    reverse: bool = False,
    unroll: int = 1,
    remat: bool = False,
    hoist_projection: bool = False,
    mode: str = "auto",
):
    """Run a cell over ONE padded sequence with ``jax.lax.scan`` (or an associative scan).

    Args:
      cell: a :class:`jaxseq.cells.Cell` (static).
      params: the cell's params.
      xs: float ``[T, D]``; padded steps may hold anything (NaN, inf, 1e30).
      mask: bool ``[T]``, True at valid steps, a valid prefix (checked when
        concrete; unchecked under ``jit``/``vmap``).
      carry: the initial carry for ONE example (default: ``cell.initial_carry``,
        zeros); cast to the compute dtype.
      reverse: run backwards within the sequence's own length (see the module doc);
        ``hs`` stays in the original time order.
      unroll: steps per loop iteration, passed to ``lax.scan`` (same result).
      remat: wrap the step in ``jax.checkpoint`` (same result, less memory in the
        backward pass).
      hoist_projection: project all inputs with one ``[T, D] @ [D, G]`` matmul
        before the scan (True) or one step at a time inside it (False); the
        results agree up to float rounding. Which is faster depends on the backend.
      mode: ``"auto"``, ``"sequential"`` or ``"parallel"`` (see the module doc and
        :func:`resolve_mode`); ``"auto"`` changes nothing for elman/gru/lstm.

    Returns:
      ``(final_carry, hs)``: the carry after the last valid step (the initial
      carry when no step is valid) and float32 ``hs [T, H]`` with zeros at padded
      steps.

    >>> import jax, jax.numpy as jnp
    >>> from jaxseq import cells, recurrence
    >>> cell = cells.gru(5)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> xs, mask = jnp.ones((4, 3)), jnp.array([True, True, False, False])
    >>> carry, hs = recurrence.scan_rnn(cell, params, xs, mask)
    >>> hs.shape, bool(jnp.all(hs[2:] == 0)), bool(jnp.all(carry == hs[1]))
    ((4, 5), True, True)
    """
    _check_options(cell, unroll, remat, hoist_projection)
    _check_flag(reverse, "reverse")
    xs = _check_xs(xs, 2, "[T, D]")
    mode = resolve_mode(cell, mode)
    mask = _check_mask(mask, xs.shape[0])
    if carry is not None:
        carry = _check_carry(cell, params, carry, None)
    return _scan(
        cell,
        params,
        xs,
        mask,
        carry,
        reverse=reverse,
        unroll=unroll,
        remat=remat,
        hoist_projection=hoist_projection,
        mode=mode,
    )


def _rnn(cell, params, xs_BTD, lengths_B, carry, **options):
    mask_BT = masks.length_mask(lengths_B, xs_BTD.shape[1])
    if parallel_cells.is_linear(cell):
        return _linear_rnn(
            cell,
            params,
            xs_BTD,
            mask_BT,
            carry,
            parallel=options["mode"] == "parallel",
            reverse=options["reverse"],
            unroll=options["unroll"],
            remat=options["remat"],
        )

    def one(x_TD, m_T, c):
        return _scan(cell, params, x_TD, m_T, c, **options)

    return jax.vmap(one, in_axes=(0, 0, None if carry is None else 0))(xs_BTD, mask_BT, carry)


def rnn(
    cell: cells.Cell,
    params: Params,
    xs: jax.Array,
    lengths: jax.Array,
    *,
    carry=None,
    reverse: bool = False,
    unroll: int = 1,
    remat: bool = False,
    hoist_projection: bool = False,
    mode: str = "auto",
):
    """:func:`scan_rnn` over a batch of padded sequences (``vmap`` over examples).

    Args:
      cell, params: as in :func:`scan_rnn`.
      xs: float ``[B, T, D]``.
      lengths: integer ``[B]`` in ``[0, T]`` (checked when concrete).
      carry: optional initial carry with a leading B on every leaf.
      reverse, unroll, remat, hoist_projection, mode: as in :func:`scan_rnn`.

    Returns:
      ``(final_carry, hs)``: the final carries (leaves ``[B, ...]``) and
      ``hs [B, T, H]``, zero at padded steps.

    >>> import jax, jax.numpy as jnp
    >>> from jaxseq import cells, recurrence
    >>> cell = cells.lstm(5)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> (h, c), hs = recurrence.rnn(cell, params, jnp.ones((2, 4, 3)), jnp.array([4, 1]))
    >>> h.shape, c.shape, hs.shape
    ((2, 5), (2, 5), (2, 4, 5))
    """
    _check_options(cell, unroll, remat, hoist_projection)
    _check_flag(reverse, "reverse")
    xs = _check_xs(xs, 3, "[B, T, D]")
    mode = resolve_mode(cell, mode)
    lengths = _check_lengths(lengths, xs.shape[0], xs.shape[1])
    if carry is not None:
        carry = _check_carry(cell, params, carry, xs.shape[0])
    return _rnn(
        cell,
        params,
        xs,
        lengths,
        carry,
        reverse=reverse,
        unroll=unroll,
        remat=remat,
        hoist_projection=hoist_projection,
        mode=mode,
    )


def _check_bidirectional_params(params, name: str = "params") -> None:
    if not isinstance(params, dict) or set(params) != {"forward", "backward"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"`{name}` of a bidirectional layer must be a dict with keys "
            f"'forward' and 'backward', got {got}"
        )


def _bidirectional(cell, params, xs_BTD, lengths_B, carry, **options):
    carry_f, carry_b = (None, None) if carry is None else carry
    final_f, hs_f = _rnn(
        cell, params["forward"], xs_BTD, lengths_B, carry_f, reverse=False, **options
    )
    final_b, hs_b = _rnn(
        cell, params["backward"], xs_BTD, lengths_B, carry_b, reverse=True, **options
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
    remat: bool = False,
    hoist_projection: bool = False,
    mode: str = "auto",
):
    """A forward and a backward (within-length reversed) :func:`rnn`, concatenated.

    Args:
      cell: the cell of both directions.
      params: ``{"forward": params_f, "backward": params_b}``.
      xs: float ``[B, T, D]``.
      lengths: integer ``[B]``.
      carry: optional ``(carry_f, carry_b)``, leaves with a leading B.
      unroll, remat, hoist_projection, mode: as in :func:`scan_rnn`.

    Returns:
      ``((carry_f, carry_b), hs [B, T, 2H])``: ``hs[..., :H]`` are the forward
      outputs, ``hs[..., H:]`` the backward ones (each in the original time
      order); 0 at padded steps. ``carry_b`` is the backward state after reading
      the whole valid sequence (i.e. at step 0).
    """
    _check_options(cell, unroll, remat, hoist_projection)
    _check_bidirectional_params(params)
    xs = _check_xs(xs, 3, "[B, T, D]")
    mode = resolve_mode(cell, mode)
    lengths = _check_lengths(lengths, xs.shape[0], xs.shape[1])
    if carry is not None:
        if not isinstance(carry, tuple) or len(carry) != 2:
            raise ValueError("`carry` of a bidirectional layer must be a tuple (carry_f, carry_b)")
        carry = (
            _check_carry(cell, params["forward"], carry[0], xs.shape[0], "carry[0]"),
            _check_carry(cell, params["backward"], carry[1], xs.shape[0], "carry[1]"),
        )
    return _bidirectional(
        cell,
        params,
        xs,
        lengths,
        carry,
        unroll=unroll,
        remat=remat,
        hoist_projection=hoist_projection,
        mode=mode,
    )


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
    _check_flag(bidirectional, "bidirectional")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"`num_layers` must be a positive Python int, got {num_layers!r}")
    width = cell.hidden_size * (2 if bidirectional else 1)
    layers = []
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
    _check_rate(rate, "rate")
    if rate == 0.0:
        return hs
    keep_B1F = jax.random.bernoulli(key, 1.0 - rate, (hs.shape[0], 1, hs.shape[2]))
    return jnp.where(keep_B1F, hs / (1.0 - rate), jnp.zeros((), hs.dtype))


def _check_rate(rate, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"`{name}` must be a Python float, got {rate!r}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {rate}")


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
    remat: bool = False,
    hoist_projection: bool = False,
    mode: str = "auto",
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
      lengths: integer ``[B]``.
      bidirectional: every layer is a :func:`bidirectional` layer.
      dropout_rate: the drop probability ``p`` in ``[0, 1)``.
      key: PRNG key for dropout; required when ``train`` and ``dropout_rate > 0``.
      train: apply dropout.
      unroll, remat, hoist_projection, mode: as in :func:`scan_rnn`.

    Returns:
      ``(final_carries, hs)``: a list with each layer's final carry (a pair
      ``(carry_f, carry_b)`` when bidirectional) and the last layer's outputs
      ``hs [B, T, H]`` (``[B, T, 2H]`` when bidirectional), 0 at padded steps.
    """
    _check_options(cell, unroll, remat, hoist_projection)
    _check_flag(bidirectional, "bidirectional")
    _check_flag(train, "train")
    _check_rate(dropout_rate, "dropout_rate")
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
    mode = resolve_mode(cell, mode)
    lengths = _check_lengths(lengths, xs.shape[0], xs.shape[1])
    if bidirectional:
        for layer, params in enumerate(layer_params):
            _check_bidirectional_params(params, f"layer_params[{layer}]")
    options = dict(unroll=unroll, remat=remat, hoist_projection=hoist_projection, mode=mode)
    finals = []
    hs = xs
    for layer, params in enumerate(layer_params):
        if layer > 0 and use_dropout:
            hs = variational_dropout(hs, rate=dropout_rate, key=jax.random.fold_in(key, layer))
        if bidirectional:
            final, hs = _bidirectional(cell, params, hs, lengths, None, **options)
        else:
            final, hs = _rnn(cell, params, hs, lengths, None, reverse=False, **options)
        finals.append(final)
    return finals, hs
