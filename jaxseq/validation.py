"""Value checks: host-side validators and a checkify-based checked variant.

The fast paths (every loss, every scan) check shapes and dtypes only; they do
not look at values, which would need a device-to-host sync. Use these where a
wrong value must be an error:

* :func:`validate_labels` / :func:`validate_lengths` on host (NumPy) arrays,
  e.g. once per data set or per batch before it is sent to the device;
* :func:`checked` to wrap a loss function so that, under ``jit``, an
  out-of-range label at a valid position raises instead of giving NaN.

Every function here takes the valid-position mask as the keyword-only
``where=`` (default None: every position is valid), like the losses.
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


def validate_labels(labels, num_classes: int, *, where=None) -> None:
    """Raise ``ValueError`` if a label at a valid position is outside ``[0, num_classes)``.

    Args:
      labels: integer array ``[...]`` (host data).
      num_classes: C.
      where: optional bool ``[...]`` (default: every position is checked);
        positions where it is False are not checked (padding may hold any
        value, e.g. -100).

    >>> import numpy as np, jaxseq as js
    >>> js.validate_labels(np.array([[0, 2, -100]]), 3, where=np.array([[True, True, False]]))
    >>> js.validate_labels(np.array([[0, 3]]), 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `labels` has 1 out-of-range value(s) at valid positions; first at index (0, 1): ...
    """
    _checks.check_int(num_classes, "num_classes", 0)
    labels = _checks.as_array(labels, "labels")
    _checks.check_integer(labels, "labels")
    where = _checks.optional_mask(where, labels.shape, "where", "[...] (= labels.shape)")
    labels_np = _host(labels, "labels")
    bad = (labels_np < 0) | (labels_np >= num_classes)
    if where is not None:
        bad &= _host(where, "where")
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`labels` has {int(bad.sum())} out-of-range value(s) at valid positions; "
            f"first at index {index}: {int(labels_np[index])} not in [0, {num_classes})"
        )


def validate_lengths(lengths, max_len: int) -> None:
    """Raise ``ValueError`` unless every length is in ``[0, max_len]`` (host data).

    >>> import numpy as np, jaxseq as js
    >>> js.validate_lengths(np.array([3, 0]), 3)
    >>> js.validate_lengths(np.array([3, 4]), 3)
    Traceback (most recent call last):
    ...
    ValueError: `lengths` must be in [0, 3] (T), got 4 at index (1,)
    """
    _checks.check_int(max_len, "max_len", 0)
    lengths = _checks.as_array(lengths, "lengths")
    _checks.check_integer(lengths, "lengths")
    lengths_np = _host(lengths, "lengths")
    bad = (lengths_np < 0) | (lengths_np > max_len)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`lengths` must be in [0, {max_len}] (T), "
            f"got {int(lengths_np[index])} at index {index}"
        )


def check_labels_in_range(labels: jax.Array, num_classes: int, *, where=None) -> None:
    """A ``checkify.check`` that labels at valid positions lie in ``[0, num_classes)``.

    Call it inside a function that is (or will be) wrapped by
    ``checkify.checkify``, e.g. your own checked train step.

    Args:
      labels: integer ``[...]`` (traced or not).
      num_classes: C.
      where: optional bool ``[...]`` (default: every position is checked);
        positions where it is False are not checked.
    """
    labels = _checks.as_array(labels, "labels")
    _checks.check_integer(labels, "labels")
    where = _checks.optional_mask(where, labels.shape, "where", "[...] (= labels.shape)")
    bad = (labels < 0) | (labels >= num_classes)
    if where is not None:
        bad = bad & where
    flat_index = jnp.argmax(bad.reshape(-1))
    checkify.check(
        ~jnp.any(bad),
        "`labels` out of range [0, {num_classes}) at a valid position (flat index {i})",
        num_classes=jnp.asarray(num_classes),
        i=flat_index,
    )


def _is_static(x) -> bool:
    """Python values (scalars, strings, None, NumPy scalars) are passed as they are;
    arrays and anything unhashable (e.g. a list of class weights) are traced."""
    if isinstance(x, (jax.Array, np.ndarray)):
        return False
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _num_classes(arguments) -> int:
    if "logits" in arguments:
        return jnp.shape(arguments["logits"])[-1]
    return jnp.shape(arguments["weight"])[-1]


def checked(loss_fn):
    """Wrap a jaxseq loss so that out-of-range labels at valid positions raise.

    The wrapped function has the same signature and passes every argument
    through: it runs ``loss_fn`` jitted under ``checkify`` and raises
    ``checkify.JaxRuntimeError`` naming the first bad position. Array
    arguments are traced; every other argument (``reduction``,
    ``label_smoothing``, ``z_loss``, chunk sizes, flags, None) is passed as a
    static Python value, so the function sees it exactly as given (one
    compilation per distinct setting). It works with any function taking
    ``labels`` and either ``logits`` ``[..., C]`` (e.g.
    :func:`jaxseq.sequence_labeling_loss`) or ``weight`` ``[H, C]``
    (:func:`jaxseq.linear_cross_entropy`), and optionally ``where`` shaped like
    ``labels``: only the labels at positions where ``where`` is True are checked.
    Not for :func:`jaxseq.ctc_loss`, whose labels are valid within
    ``label_lengths`` and whose ``where`` is per row: check its inputs with
    :func:`jaxseq.validate_ctc_inputs` on the host.

    >>> import jax.numpy as jnp, jaxseq as js
    >>> safe_loss = js.checked(js.sequence_classification_loss)
    >>> safe_loss(jnp.zeros((2, 3)), jnp.array([0, 3]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jax._src.checkify.JaxRuntimeError: `labels` out of range [0, 3) at a valid position ...
    >>> loss = safe_loss(jnp.zeros((2, 3)), jnp.array([0, 3]), where=jnp.array([True, False]))
    >>> round(float(loss), 4)  # the bad label is at a masked position: log 3
    1.0986
    """
    signature = inspect.signature(loss_fn)
    parameters = signature.parameters
    if "label_lengths" in parameters:
        raise TypeError(
            "`checked` does not wrap losses with `label_lengths` (CTC): their labels are "
            "valid within the label lengths; check them with jaxseq.validate_ctc_inputs"
        )
    if "labels" not in parameters or not ({"logits", "weight"} & set(parameters)):
        raise TypeError(
            "`loss_fn` must take a `labels` argument and a `logits` (or `weight`) argument"
        )

    def with_check(static, dynamic):
        arguments = {**dict(static), **dynamic}
        ordered = {n: arguments[n] for n in parameters if n in arguments}
        bound = inspect.BoundArguments(signature, ordered)
        # The loss first: its own checks name a wrong shape before the range check runs.
        out = loss_fn(*bound.args, **bound.kwargs)
        check_labels_in_range(
            arguments["labels"], _num_classes(arguments), where=arguments.get("where")
        )
        return out

    checked_fn = jax.jit(checkify.checkify(with_check), static_argnums=0)

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        static = tuple((n, v) for n, v in arguments.items() if _is_static(v))
        dynamic = {n: v for n, v in arguments.items() if not _is_static(v)}
        error, out = checked_fn(static, dynamic)
        error.throw()
        return out

    return wrapper
