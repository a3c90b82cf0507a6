"""Run the unchecked core of a public function as one compiled program (private).

A jaxseq function called outside ``jit`` checks its arguments on the host, then runs its
core. Run eagerly, that core would dispatch every primitive as a program of its own
(each compiled on first sight of its shapes), and a ``lax.scan`` whose body is a fresh
closure would be compiled again on every call. :func:`compiled` runs the core through
``jax.jit`` instead: one program per static arguments and shapes, compiled once and
cached. Inside a caller's ``jit``, ``grad`` or ``vmap`` the inner ``jit`` is inlined
and changes nothing. A forward-mode differentiation that the core refuses is retraced
without the ``jit``, so the core's own error (naming the fix) is what the caller sees.
Static arguments that cannot be hashed (a custom cell holding a
list, say) fall back to the eager core: same values, only slower.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

import jax

F = TypeVar("F", bound=Callable)


def compiled(*static_argnames: str) -> Callable[[F], F]:
    """Decorate an unchecked core: ``jax.jit`` with ``static_argnames`` (each hashable
    and compared by value), or the plain function when one of them is not hashable."""

    def wrap(fn: F) -> F:
        jitted = jax.jit(fn, static_argnames=static_argnames)
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            try:
                hash(tuple(bound.arguments.get(name) for name in static_argnames))
            except TypeError:
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
