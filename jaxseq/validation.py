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

from jaxseq import _checks, ctc


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


def _num_classes(arguments) -> int:
    if "logits" in arguments:
        return jnp.shape(arguments["logits"])[-1]
    return jnp.shape(arguments["weight"])[-1]


def _ctc_checks(arguments):
    """[(ok, message, format arguments)] of the value checks of a CTC loss call."""
    logits = arguments["logits"]
    bad_rows = ctc.malformed_rows(
        _checks.index_array(arguments["logit_lengths"], "logit_lengths"),
        _checks.index_array(arguments["labels"], "labels"),
        _checks.index_array(arguments["label_lengths"], "label_lengths"),
        max_t=jnp.shape(logits)[1],
        num_classes=jnp.shape(logits)[2],
        blank=arguments.get("blank", 0),
    )
    problems = (
        "`logit_lengths` outside [0, T]",
        "`label_lengths` outside [0, S]",
        "`labels` outside [0, K) or equal to `blank` within the label length",
    )
    checks = []
    for bad_B, problem in zip(bad_rows, problems):
        if arguments.get("where") is not None:
            bad_B = bad_B & arguments["where"]
        message = "CTC inputs out of range in sequence {i}: " + problem
        checks.append((~jnp.any(bad_B), message, {"i": jnp.argmax(bad_B)}))
    return checks


def _label_checks(arguments):
    """[(ok, message, format arguments)] of the label-range check of a loss call."""
    num_classes = _num_classes(arguments)
    labels = _checks.index_array(arguments["labels"], "labels")
    bad = (labels < 0) | (labels >= num_classes)
    if arguments.get("where") is not None:
        bad = bad & arguments["where"]
    message = "`labels` out of range [0, {num_classes}) at a valid position (flat index {i})"
    fmt = {"num_classes": num_classes, "i": jnp.argmax(bad.reshape(-1))}
    return [(~jnp.any(bad), message, fmt)]


def _raise_if(bad, message: str, **fmt) -> None:
    """Host side of the check: ``bad`` and ``fmt`` may carry a vmap batch axis."""
    bad = np.asarray(bad).reshape(-1)
    if bad.any():
        first = int(np.argmax(bad))
        values = {
            k: int(np.asarray(v).reshape(-1)[first % np.asarray(v).size]) for k, v in fmt.items()
        }
        raise ValueError(message.format(**values))


def _check(ok, message: str, **fmt) -> None:
    """Raise ``ValueError`` where ``ok`` is False: at once for host data, else from a
    host callback when the (jitted, differentiated, vmapped...) computation runs."""
    if all(_checks.is_concrete(x) for x in (ok, *fmt.values())):
        _raise_if(~np.asarray(ok), message, **fmt)
    else:
        jax.debug.callback(functools.partial(_raise_if, message=message), ~ok, **fmt)


def checked(loss_fn):
    """Wrap a jaxseq loss so that out-of-range label values raise instead of giving NaN.

    The wrapped function has the same signature, takes every argument and
    option of ``loss_fn`` as it is, and returns what ``loss_fn`` returns. After
    computing the loss it checks the values the loss would otherwise turn into
    NaN:

    * for losses taking ``labels`` and ``logits`` ``[..., C]`` (e.g.
      :func:`jaxseq.sequence_labeling_loss`) or ``weight`` ``[H, C]``
      (:func:`jaxseq.linear_cross_entropy`): labels in ``[0, C)`` where
      ``where`` is True (every position without ``where``);
    * for :func:`jaxseq.ctc_loss`: ``logit_lengths`` in ``[0, T]``,
      ``label_lengths`` in ``[0, S]`` and, within each label length, labels in
      ``[0, K)`` that are not ``blank``, in the rows where ``where`` is True.
      (An impossible alignment is not an error: it is the loss ``inf``.)

    It raises ``ValueError`` with a message naming the first bad position:

    * at the call, for host (concrete) arrays;
    * inside ``jax.jit``, ``jax.grad``, ``vmap``, ``lax.scan`` and jitted train
      steps, when the compiled computation runs: a host callback raises, and
      JAX reports it as a ``jax.errors.JaxRuntimeError`` carrying the message.
      No ``checkify`` wrapping is needed. The check costs one small
      device-to-host transfer per call; for a check that is functionalized
      into your step's outputs instead, call :func:`check_labels_in_range`
      inside a function you wrap with ``jax.experimental.checkify.checkify``.

    >>> import jax, jax.numpy as jnp, jaxseq as js
    >>> safe_loss = js.checked(js.sequence_classification_loss)
    >>> safe_loss(jnp.zeros((2, 3)), jnp.array([0, 3]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: `labels` out of range [0, 3) at a valid position (flat index 1)
    >>> loss = safe_loss(jnp.zeros((2, 3)), jnp.array([0, 3]), where=jnp.array([True, False]))
    >>> round(float(loss), 4)  # the bad label is at a masked position: log 3
    1.0986
    >>> jax.jit(jax.grad(safe_loss))(jnp.zeros((2, 3)), jnp.array([0, 3]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jax.errors.JaxRuntimeError: ...`labels` out of range [0, 3) at a valid position ...
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {loss_fn!r}")
    signature = inspect.signature(loss_fn)
    parameters = set(signature.parameters)
    if {"logits", "labels", "logit_lengths", "label_lengths"} <= parameters:
        value_checks = _ctc_checks
    elif "labels" in parameters and {"logits", "weight"} & parameters:
        value_checks = _label_checks
    else:
        raise TypeError(
            "`loss_fn` must take `labels` and `logits` (or `weight`) arguments, like the "
            "jaxseq losses, or be jaxseq.ctc_loss"
        )

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        # The loss first: its own checks name a wrong shape or option before this one.
        out = loss_fn(*args, **kwargs)
        for ok, message, fmt in value_checks(bound.arguments):
            _check(ok, message, **fmt)
        return out

    return wrapper
