"""Run the unchecked core of a public function as one compiled program (private).

A jaxseq function called outside ``jit`` checks its arguments on the host, then runs its
core. Run eagerly, that core would dispatch every primitive as a program of its own
(each compiled on first sight of its shapes), and a ``lax.scan`` whose body is a fresh
closure would be compiled again on every call. :func:`compiled` runs the core through
``jax.jit`` instead: one program per static arguments and shapes, compiled once and
cached. Inside a caller's ``jit``, ``grad`` or ``vmap`` the inner ``jit`` is inlined
and changes nothing.

Only values jaxseq itself defines become static: its own cells (checked by the caller
with ``eligible``), methods, and option strings, flags and floats. A cell of your own
runs uncompiled, as plain eager JAX: its functions may read state that changes between
calls (a global, an attribute), which a cached program would have frozen at its first
call, and a cache entry would keep every array the cell closes over alive. A float
option that keeps changing (``volatile``: a label-smoothing schedule called eagerly) is
compiled for its first few values only, then runs uncompiled, so each new value costs
no compilation and the cache stays small. Static arguments that cannot be hashed fall
back to the eager core too: same values, only slower. A forward-mode differentiation
that the core refuses is retraced without the ``jit``, so the core's own error (naming
the fix) is what the caller sees.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

import jax

F = TypeVar("F", bound=Callable)


#: Distinct values of one ``volatile`` argument that get a compiled program each.
VOLATILE_LIMIT = 4


def compiled(
    *static_argnames: str,
    eligible: Callable[..., bool] | None = None,
    volatile: tuple[str, ...] = (),
) -> Callable[[F], F]:
    """Decorate an unchecked core: ``jax.jit`` with ``static_argnames`` (each hashable
    and compared by value), or the plain function when one of them is not hashable,
    when ``eligible(**arguments)`` is False, or for the values of a ``volatile`` argument
    beyond the first :data:`VOLATILE_LIMIT`."""

    def wrap(fn: F) -> F:
        jitted = jax.jit(fn, static_argnames=static_argnames)
        signature = inspect.signature(fn)
        seen: dict[str, set] = {name: set() for name in volatile}

        def use_jit(arguments) -> bool:
            try:
                hash(tuple(arguments.get(name) for name in static_argnames))
            except TypeError:
                return False
            if eligible is not None and not eligible(**arguments):
                return False
            for name in volatile:
                value, values = arguments.get(name), seen[name]
                if value not in values:
                    if len(values) >= VOLATILE_LIMIT:
                        return False
                    values.add(value)
            return True

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if not use_jit(signature.bind(*args, **kwargs).arguments):
                return fn(*args, **kwargs)
            try:
                return jitted(*args, **kwargs)
            except TypeError as error:
                # Forward-mode differentiation of a custom_vjp (the fused engine) fails
                # while jit's jvp rule traces the core, outside the core's own handler;
                # tracing the core directly raises its error, which names the fix.
                if "forward-mode" not in str(error):
                    raise
                return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
