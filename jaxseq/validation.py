"""Value checks: host-side validators and a checkify-based checked variant.

The fast paths (every loss, every scan) check shapes and dtypes only; they do
not look at values, which would need a device-to-host sync. Use these where a
wrong value must be an error:

* :func:`validate_labels` / :func:`validate_lengths` on host (NumPy) arrays,
  e.g. once per data set or per batch before it is sent to the device;
* :func:`checked` to wrap a loss function so that, under ``jit``, an
  out-of-range label at a valid position raises instead of giving NaN.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxseq import _checks


def _host(x, name: str) -> np.ndarray:
    if not _checks.is_concrete(x):
        raise TypeError(
            f"`{name}` must be a concrete (host) array; under jit use `jaxseq.checked` instead"
        )
    return np.asarray(x)


def validate_labels(labels, num_classes: int, mask=None) -> None:
    """Raise ``ValueError`` if a label at a valid position is outside ``[0, num_classes)``.

    Args:
      labels: integer array ``[...]`` (host data).
      num_classes: C.
      mask: optional bool ``[...]``; positions where it is False are not checked
        (padding may hold any value, e.g. -100).
    """
    labels_np = _host(labels, "labels")
    if not np.issubdtype(labels_np.dtype, np.integer):
        raise TypeError(f"`labels` must have an integer dtype, got {labels_np.dtype}")
    bad = (labels_np < 0) | (labels_np >= num_classes)
    if mask is not None:
        mask_np = _host(mask, "mask")
        if mask_np.dtype != np.bool_ or mask_np.shape != labels_np.shape:
            raise ValueError(
                f"`mask` must be bool with the shape of `labels` {labels_np.shape}, "
                f"got {mask_np.dtype} {mask_np.shape}"
            )
        bad &= mask_np
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`labels` has {int(bad.sum())} out-of-range value(s) at valid positions; "
            f"first at index {index}: {int(labels_np[index])} not in [0, {num_classes})"
        )


def validate_lengths(lengths, max_len: int) -> None:
    """Raise ``ValueError`` unless every length is in ``[0, max_len]`` (host data)."""
    lengths_np = _host(lengths, "lengths")
    if not np.issubdtype(lengths_np.dtype, np.integer):
        raise TypeError(f"`lengths` must have an integer dtype, got {lengths_np.dtype}")
    bad = (lengths_np < 0) | (lengths_np > max_len)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`lengths` must be in [0, {max_len}] (T), "
            f"got {int(lengths_np[index])} at index {index}"
        )


def check_labels_in_range(labels: jax.Array, num_classes: int, valid=None) -> None:
    """A ``checkify.check`` that labels at valid positions lie in ``[0, num_classes)``.

    Call it inside a function that is (or will be) wrapped by
    ``checkify.checkify``, e.g. your own checked train step.
    """
    bad = (labels < 0) | (labels >= num_classes)
    if valid is not None:
        bad = bad & valid
    flat_index = jnp.argmax(bad.reshape(-1))
    checkify.check(
        ~jnp.any(bad),
        "`labels` out of range [0, {num_classes}) at a valid position (flat index {i})",
        num_classes=jnp.asarray(num_classes),
        i=flat_index,
    )


def checked(loss_fn):
    """Wrap a jaxseq loss so that out-of-range labels at valid positions raise.

    The wrapped function has the same signature; it runs ``loss_fn`` jitted
    under ``checkify`` and raises ``checkify.JaxRuntimeError`` naming the first
    bad position. It works with any function taking ``logits`` and ``labels``
    (and optionally ``where`` or ``mask``) arguments.

    >>> import jax.numpy as jnp, jaxseq as js
    >>> safe_loss = js.checked(js.sequence_classification_loss)
    >>> safe_loss(jnp.zeros((2, 3)), jnp.array([0, 3]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jax._src.checkify.JaxRuntimeError: `labels` out of range [0, 3) at a valid position ...
    """
    signature = inspect.signature(loss_fn)
    for required in ("logits", "labels"):
        if required not in signature.parameters:
            raise TypeError(f"`loss_fn` must take a `{required}` argument")

    def with_check(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        arguments = bound.arguments
        logits, labels = arguments["logits"], arguments["labels"]
        valid = arguments.get("where", arguments.get("mask"))
        check_labels_in_range(jnp.asarray(labels), jnp.shape(logits)[-1], valid)
        return loss_fn(*args, **kwargs)

    static = [
        name
        for name, p in signature.parameters.items()
        if p.kind == inspect.Parameter.KEYWORD_ONLY and name in ("reduction",)
    ]
    checked_fn = jax.jit(checkify.checkify(with_check), static_argnames=static)

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        error, out = checked_fn(*args, **kwargs)
        error.throw()
        return out

    return wrapper
