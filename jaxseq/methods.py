"""How a recurrence runs: the ``method=`` values of :func:`jaxseq.rnn` and friends.

A method is a small immutable value, passed to the one front-end
(:func:`jaxseq.rnn`, :func:`jaxseq.bidirectional`, :func:`jaxseq.stack`,
:func:`jaxseq.scan_rnn`). Every method computes the same function (values and
gradients equal up to float rounding, tested); they differ in speed, memory and
which transformations they support:

=========================================  ====================  ==================================
method                                     cells                 what runs
=========================================  ====================  ==================================
``Scan(unroll, remat, hoist_projection)``  any                   ``vmap`` of a per-example masked
                                                                 ``lax.scan``, differentiated by
                                                                 JAX; forward mode (``jvp``) works
``Fused()``                                elman, gru, lstm      one loop over the batch with a
                                                                 hand-written backward pass
                                                                 (``custom_vjp``: reverse mode only)
``Parallel(remat)``                        mingru, minlstm, lru  ``lax.associative_scan`` over the
                                                                 linear recurrence, O(log T) depth
=========================================  ====================  ==================================

``method=None`` (the default) picks per cell and backend (:func:`resolve_method`):
``Fused()`` for the built-in elman/gru/lstm cells (those made by
:func:`jaxseq.elman`, :func:`jaxseq.gru`, :func:`jaxseq.lstm`; a cell of your
own is not one of them, whatever its name) (measured fastest on CPU; the
choice on a backend not yet measured), ``Parallel()`` for the linear cells on GPU
and TPU and ``Scan()`` for them on CPU (where ``benchmarks/parallel_scan.py``
measured the sequential loop faster at every T), ``Scan()`` for any other cell.

An option that does not apply is an error, never ignored: ``Fused()`` or
``Parallel()`` on a cell they do not support, and ``Scan(hoist_projection=...)``
on a linear cell (whose projection is always hoisted).
"""

from __future__ import annotations

import dataclasses

import jax

from jaxseq import _checks, cells, parallel_cells

__all__ = ["FUSED_CELLS", "Fused", "Method", "Parallel", "Scan", "resolve_method"]

# The cells whose backward pass the fused engine writes by hand.
FUSED_CELLS = ("elman", "gru", "lstm")
# The backends on which the default runs linear cells with the associative scan. Not CPU:
# benchmarks/parallel_scan.py (train step, fwd + bwd, T = 256..4096) measured the sequential
# loop faster there at every T (XLA:CPU's loop costs well under a microsecond per step,
# while the associative scan does ~2x the work with strided memory access).
PARALLEL_BACKENDS = ("gpu", "tpu")
BACKENDS = ("cpu", "gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class Scan:
    """A ``lax.scan`` over the steps of one example, ``vmap``-ped over the batch.

    Works for every cell and every JAX transformation, including forward-mode
    differentiation (``jax.jvp``, ``jax.jacfwd``). On a linear cell it is the
    sequential loop ``s = a * s + b`` over coefficients computed before it.

    Attributes:
      unroll: steps per loop iteration (``lax.scan``'s ``unroll``); same result.
      remat: wrap the step (a linear cell: the whole evaluation) in
        ``jax.checkpoint``; same result, less memory in the backward pass.
      hoist_projection: project the inputs of all steps with one matmul before
        the loop (True) or one step at a time inside it (False, the default for
        non-linear cells). Not an option of linear cells, which always hoist it:
        leave it None for them.
    """

    unroll: int = 1
    remat: bool = False
    hoist_projection: bool | None = None

    def __post_init__(self):
        _checks.check_int(self.unroll, "Scan.unroll", 1)
        _checks.check_flag(self.remat, "Scan.remat")
        if self.hoist_projection is not None:
            _checks.check_flag(self.hoist_projection, "Scan.hoist_projection")


@dataclasses.dataclass(frozen=True)
class Fused:
    """The hand-written engine for the built-in elman, gru and lstm cells.

    One loop over the steps of the whole batch (a ``[B, H] @ [H, G]`` matmul per
    step, the input projection hoisted into one ``[B*T, D] @ [D, G]`` matmul),
    and a hand-written whole-sequence backward pass (``jax.custom_vjp``) that
    reuses its buffers in place. Reverse-mode only: ``jax.jvp``/``jax.jacfwd``
    raise and name ``method=jaxseq.Scan()``; ``jax.linearize`` returns, but its
    linear function raises JAX's own forward-mode ``TypeError``. There is no ``remat`` option: the
    engine stores only the states and gate activations.
    """


@dataclasses.dataclass(frozen=True)
class Parallel:
    """``lax.associative_scan`` for cells linear in their state (mingru, minlstm, lru).

    ``s_t = a_t * s_{t-1} + b_t`` composed in O(log T) depth; a padded step is
    the identity ``(a, b) = (1, 0)`` and a reverse pass is a reverse scan.

    Attributes:
      remat: wrap the whole evaluation in ``jax.checkpoint``.
    """

    remat: bool = False

    def __post_init__(self):
        _checks.check_flag(self.remat, "Parallel.remat")


Method = Scan | Fused | Parallel


def _check_cell(cell) -> None:
    if not isinstance(cell, cells.Cell):
        raise TypeError(f"`cell` must be a jaxseq.cells.Cell, got {type(cell).__name__}")


_BUILT_IN = {"elman": cells.elman, "gru": cells.gru, "lstm": cells.lstm}


def _is_built_in(cell: cells.Cell) -> bool:
    """True when ``cell`` was built by :func:`jaxseq.elman`, :func:`jaxseq.gru` or
    :func:`jaxseq.lstm` (any ``hidden_size``, ``forget_bias``, ``param_dtype``): the cells
    whose equations the fused engine hard-codes.

    By value, not by name: a user-defined cell named ``"gru"`` (or a built-in one with
    another ``step``) is not one of them, and runs with ``Scan``.
    """
    make = _BUILT_IN.get(cell.name)
    size = cell.hidden_size
    if make is None or isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return False
    built_in = make(size)
    # `init` depends on forget_bias and param_dtype, which the engine never sees.
    return cell._replace(init=built_in.init) == built_in


def resolve_method(
    cell: cells.Cell, method: Method | None = None, *, backend: str | None = None
) -> Method:
    """The method that runs ``cell``: ``method`` itself (checked), or the default for None.

    Args:
      cell: a :class:`jaxseq.cells.Cell`.
      method: ``Scan(...)``, ``Fused()``, ``Parallel(...)`` or None (the default
        of the front-end: see the module doc).
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default ``jax.default_backend()``.

    Raises:
      TypeError: ``method`` is not a method value.
      ValueError: the method does not apply to the cell.

    >>> import jaxseq as js
    >>> js.resolve_method(js.gru(4))
    Fused()
    >>> js.resolve_method(js.mingru(4), backend="gpu")
    Parallel(remat=False)
    >>> js.resolve_method(js.mingru(4), backend="cpu")
    Scan(unroll=1, remat=False, hoist_projection=None)
    >>> js.resolve_method(js.gru(4)._replace(name="mgu"))  # a cell of your own
    Scan(unroll=1, remat=False, hoist_projection=None)
    """
    _check_cell(cell)
    if backend is not None:
        _checks.check_choice(backend, BACKENDS, "backend")
    linear = parallel_cells.is_linear(cell)
    fused = _is_built_in(cell)
    if method is None:
        if fused:
            return Fused()
        if linear:
            backend = jax.default_backend() if backend is None else backend
            return Parallel() if backend in PARALLEL_BACKENDS else Scan()
        return Scan()
    if isinstance(method, Fused):
        if not fused:
            what = f"a {cell.name!r} cell"
            if cell.name in FUSED_CELLS:
                what += " not built by jaxseq.elman/gru/lstm"
            raise ValueError(
                f"method=Fused() runs the built-in cells {FUSED_CELLS} (their backward pass is "
                f"written by hand), got {what}; use method=jaxseq.Scan()"
                + (" or jaxseq.Parallel()" if linear else "")
            )
    elif isinstance(method, Parallel):
        if not linear:
            raise ValueError(
                f"method=Parallel() needs a cell whose recurrence is linear in its state "
                f"(jaxseq.mingru, minlstm, lru); the {cell.name!r} cell is not: use "
                "method=jaxseq.Scan()" + (" or jaxseq.Fused()" if fused else "")
            )
    elif isinstance(method, Scan):
        if linear and method.hoist_projection is not None:
            raise ValueError(
                f"Scan(hoist_projection=...) does not apply to the linear {cell.name!r} cell: "
                "its projection is always hoisted; leave hoist_projection unset"
            )
    else:
        raise TypeError(
            "`method` must be jaxseq.Scan(...), jaxseq.Fused() or jaxseq.Parallel(...) "
            f"(or None for the default), got {method!r}"
        )
    return method
