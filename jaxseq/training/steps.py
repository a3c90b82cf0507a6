"""Training machinery: a train state pytree, pure jitted train/eval steps.

The train step is one pure function ``(state, batch, key) -> (state, metrics)``
jitted with the state donated. The model and task enter through a *loss
function* ``loss_fn(params, batch, key, train)`` that returns one of three forms
(checked when the step is traced; anything else is a ``TypeError`` showing the
three forms and what was returned):

1. ``loss``: a float scalar, the batch's *mean* loss (treated as
   ``LossTerms(loss, 1)``); no metrics besides ``loss`` and ``grad_norm``;
2. ``(loss, metric_sums)``: the same scalar mean and a dict of metric sums;
3. ``(LossTerms, metric_sums)``: the loss as exact ``LossTerms(total, count)``
   (see :func:`jaxseq.sequence_labeling_loss_terms`) and a dict of metric sums
   (:class:`jaxseq.metrics.Ratio`, :class:`jaxseq.metrics.Confusion`, ...).

Gradient semantics. The step minimises ``sum(total) / sum(count)`` over the
whole batch. With ``LossTerms`` the gradient is exact however the batch is
split: across microbatches here, across devices by ``jit``'s SPMD partitioning
of the same code. A scalar loss counts 1: with ``microbatches = k`` the step
minimises the *mean of the k microbatch means* (equal to the batch mean only
when every microbatch holds the same number of counted elements); data
parallelism does not change it (the devices compute the one global scalar).
Return ``LossTerms`` when padding makes the parts unequal.

Per-step randomness comes from ``fold_in(key, step)``, so a resumed run draws
exactly the keys of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseq import _checks, losses
from jaxseq.metrics import Ratio

Batch = Any
Params = Any
MetricSums = dict[str, Any]
LossOutput = jax.Array | tuple[jax.Array, MetricSums] | tuple[losses.LossTerms, MetricSums]
LossFn = Callable[[Params, Batch, jax.Array, bool], LossOutput]

#: The accepted returns of a loss function, as the contract's error message shows them.
LOSS_FN_FORMS = (
    "loss_fn(params, batch, key, train) must return one of:\n"
    "  1. loss                          a float scalar, the batch's mean loss\n"
    "  2. (loss, metric_sums)           that scalar and a dict of metric sums\n"
    "  3. (LossTerms, metric_sums)      jaxseq.LossTerms(total, count) and a dict of "
    "metric sums"
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """What a training run carries from step to step (a pytree of three leaves'
    subtrees, in this order: ``step``, ``params``, ``opt_state``; checkpoints store
    them under these names).

    A frozen dataclass registered with JAX (no flax needed); ``state.replace(...)``
    returns a copy with fields changed.
    """

    step: jax.Array  # int32 scalar: the number of updates applied so far
    params: Params
    opt_state: optax.OptState

    def replace(self, **changes: Any) -> TrainState:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def create_train_state(params: Params, optimizer: optax.GradientTransformation) -> TrainState:
    with _optax_promotion():
        opt_state = optimizer.init(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)


def _optax_promotion():
    """optax mixes Python floats with int32 counters (e.g. Adam's bias correction),
    which ``jax_numpy_dtype_promotion="strict"`` rejects; jaxseq's own code is
    strict-clean, so only the optimizer runs under standard promotion."""
    return jax.numpy_dtype_promotion("standard")


def check_schedule(schedule: Any, name: str = "learning_rate") -> None:
    """``schedule`` is a float rate (finite, > 0) or a callable ``count -> rate``
    (any ``optax.Schedule``) whose rate at count 0 is a finite real scalar >= 0.

    Raises ``TypeError``/``ValueError`` naming ``name``.
    """
    if not callable(schedule):
        _checks.check_float(schedule, name)
        if schedule <= 0:
            raise ValueError(f"`{name}` must be > 0, got {schedule}")
        return
    try:
        with _optax_promotion():
            rate = schedule(jnp.zeros((), jnp.int32))
    except Exception as e:  # noqa: BLE001 - any failure means it is not a schedule
        raise TypeError(
            f"`{name}` is callable but calling it with an update count (int32 0) failed; "
            f"a schedule is `count -> rate` (e.g. optax.cosine_decay_schedule(...)): "
            f"{type(e).__name__}: {e}"
        ) from e
    value = np.asarray(rate)
    if value.shape != () or not (
        np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)
    ):
        raise TypeError(
            f"`{name}` must return a real scalar rate, got {type(rate).__name__} of shape "
            f"{value.shape} and dtype {value.dtype} at count 0"
        )
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must return a finite rate >= 0, got {float(value)} at count 0")


def make_schedule(
    *, learning_rate: float, warmup_steps: int = 0, total_steps: int | None = None
) -> optax.Schedule:
    """The learning rate of each update: ``schedule(count)`` is the rate of update
    ``count + 1`` (optax counts the updates already applied).

    Args:
      learning_rate: peak learning rate.
      warmup_steps: linear warmup from 0 over this many updates.
      total_steps: if given, cosine decay to 0 at ``total_steps`` (after the
        warmup); without a warmup the first update uses the peak rate.

    >>> schedule = make_schedule(learning_rate=1.0, total_steps=4)
    >>> [round(float(schedule(count)), 4) for count in range(5)]
    [1.0, 0.8536, 0.5, 0.1464, 0.0]
    >>> schedule = make_schedule(learning_rate=1.0, warmup_steps=2)
    >>> [float(schedule(count)) for count in range(4)]
    [0.0, 0.5, 1.0, 1.0]
    """
    if callable(learning_rate):
        raise TypeError(
            "`learning_rate` of make_schedule is the peak rate (a float) it shapes; "
            f"{learning_rate!r} is already a schedule: give it to make_optimizer and fit as "
            "it is"
        )
    check_schedule(learning_rate, "learning_rate")
    _checks.check_int(warmup_steps, "warmup_steps", 0)
    _checks.check_int(total_steps, "total_steps", 1, optional=True)
    if total_steps is not None and warmup_steps:
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1)
        )
    if total_steps is not None:
        return optax.cosine_decay_schedule(learning_rate, total_steps)
    if warmup_steps:
        return optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.constant_schedule(learning_rate)


def make_optimizer(
    *,
    learning_rate: float | optax.Schedule,
    clip_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    total_steps: int | None = None,
) -> optax.GradientTransformation:
    """AdamW with gradient clipping by global norm and an optional warmup-cosine schedule.

    Args:
      learning_rate: peak learning rate, shaped by ``warmup_steps`` and
        ``total_steps`` (:func:`make_schedule`); or any schedule ``count -> rate``
        (an ``optax.Schedule``, e.g. from :func:`make_schedule`), used as it is and
        checked with :func:`check_schedule`.
      clip_norm: clip gradients to this global norm (None: no clipping).
      weight_decay: decoupled weight decay (AdamW).
      warmup_steps: linear warmup length (a float ``learning_rate`` only).
      total_steps: if given, cosine decay to 0 at ``total_steps`` (a float
        ``learning_rate`` only).
    """
    if callable(learning_rate):
        check_schedule(learning_rate, "learning_rate")
        _checks.check_int(warmup_steps, "warmup_steps", 0)
        _checks.check_int(total_steps, "total_steps", 1, optional=True)
        if warmup_steps or total_steps is not None:
            raise ValueError(
                f"`warmup_steps` and `total_steps` shape a float `learning_rate`; the schedule "
                f"given as `learning_rate` already has its own, so leave them out (got "
                f"warmup_steps={warmup_steps}, total_steps={total_steps})"
            )
        rate = learning_rate
    else:
        schedule = make_schedule(
            learning_rate=learning_rate, warmup_steps=warmup_steps, total_steps=total_steps
        )
        # A constant rate stays a float: optax then keeps no update count for it.
        rate = learning_rate if not warmup_steps and total_steps is None else schedule
    if clip_norm is not None:
        _checks.check_float(clip_norm, "clip_norm")
        if clip_norm <= 0:
            raise ValueError(f"`clip_norm` must be > 0 or None, got {clip_norm}")
    _checks.check_float(weight_decay, "weight_decay")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay}")
    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.adamw(rate, weight_decay=weight_decay))
    return optax.chain(*parts)


def _describe(value: Any) -> str:
    """A short description of a loss function's output (for the contract's error)."""
    if isinstance(value, tuple):
        inner = ", ".join(_describe(v) for v in value)
        return f"{type(value).__name__}({inner})" if len(value) < 6 else f"a {len(value)}-tuple"
    if isinstance(value, Mapping):
        return f"dict with keys {sorted(map(str, value))}"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"array {dtype}{list(shape)}"
    return type(value).__name__


def _is_scalar_loss(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (float, int)):
        return True
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    return shape == () and dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def loss_terms(output: Any) -> tuple[losses.LossTerms, MetricSums]:
    """A loss function's output in form 3, ``(LossTerms, metric_sums)``.

    Accepts the three forms of the module doc: a scalar mean ``loss`` becomes
    ``LossTerms(loss, 1.0)`` with no metric sums; ``(loss, metric_sums)`` keeps
    the sums. Anything else (checked at trace time, on shapes and types only)
    raises ``TypeError`` listing the accepted forms and what was returned.

    >>> import jax.numpy as jnp
    >>> terms, sums = loss_terms(jnp.float32(0.5))
    >>> float(terms.total), float(terms.count), sums
    (0.5, 1.0, {})
    """
    problem = None
    if isinstance(output, tuple) and not isinstance(output, losses.LossTerms):
        if len(output) != 2:
            problem = f"a tuple of {len(output)} elements (expected 2)"
        else:
            loss, sums = output
            if not isinstance(sums, Mapping):
                problem = "metric_sums (the second element) that is not a dict"
            elif isinstance(loss, losses.LossTerms):
                if not (_is_scalar_loss(loss.total) and _is_scalar_loss(loss.count)):
                    problem = "LossTerms whose total or count is not a float scalar"
                else:
                    return loss, dict(sums)
            elif _is_scalar_loss(loss):
                return _mean_terms(loss), dict(sums)
            else:
                problem = "a first element that is neither a float scalar nor LossTerms"
    elif isinstance(output, losses.LossTerms):
        problem = "a bare LossTerms (return (terms, {}) for no metric sums)"
    elif _is_scalar_loss(output):
        return _mean_terms(output), {}
    else:
        problem = "neither a float scalar nor a pair"
    raise TypeError(f"{LOSS_FN_FORMS}\ngot {_describe(output)}: {problem}")


def _mean_terms(loss: Any) -> losses.LossTerms:
    loss = jnp.asarray(loss, jnp.float32) if isinstance(loss, (float, int)) else loss
    return losses.LossTerms(loss, jnp.ones((), loss.dtype))


def _split_microbatches(batch: Batch, num: int) -> Batch:
    def split(x):
        if not x.ndim:
            raise AssertionError(
                f"every leaf of `batch` must be [B, ...] to split it into microbatches, got a "
                f"scalar leaf of shape {tuple(x.shape)}"
            )
        if x.shape[0] % num:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by `microbatches` = {num}")
        return x.reshape((num, x.shape[0] // num) + x.shape[1:])

    return jax.tree.map(split, batch)


def train_step_fn(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    microbatches: int = 1,
    microbatch_sharding: jax.sharding.Sharding | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, MetricSums]]:
    """The pure (un-jitted) train step; see :func:`make_train_step`.

    ``microbatch_sharding`` (for :mod:`jaxseq.training.distributed`): a sharding of the
    split batch ``[microbatches, B / microbatches, ...]`` to constrain it to, so
    every microbatch stays spread over the devices instead of whole microbatches
    landing on single devices. None (the default) leaves placement to ``jit``.
    """
    _checks.check_int(microbatches, "microbatches", 1)

    def total_and_metrics(params, batch, key):
        terms, metric_sums = loss_terms(loss_fn(params, batch, key, True))
        return terms.total, (terms, metric_sums)

    grad_total = jax.grad(total_and_metrics, has_aux=True)

    def train_step(state: TrainState, batch: Batch, key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)
        if microbatches == 1:
            grads, (terms, metric_sums) = grad_total(state.params, batch, step_key)
        else:
            # Accumulate d(total) and count over microbatches; divide once: the gradient
            # of sum(total) / sum(count) is exactly the whole batch's gradient.
            micro = _split_microbatches(batch, microbatches)
            if microbatch_sharding is not None:
                micro = jax.lax.with_sharding_constraint(micro, microbatch_sharding)

            def accumulate(carry, indexed):
                index, microbatch = indexed
                out = grad_total(state.params, microbatch, jax.random.fold_in(step_key, index))
                return jax.tree.map(jnp.add, carry, out), None

            shapes = jax.eval_shape(
                grad_total, state.params, jax.tree.map(lambda x: x[0], micro), step_key
            )
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            (grads, (terms, metric_sums)), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(microbatches), micro)
            )
        scale = losses.safe_divide(jnp.ones((), terms.count.dtype), terms.count)
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        with _optax_promotion():
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metric_sums = dict(metric_sums, loss=Ratio(terms.total, terms.count))
        # A Ratio, so a log window reports the mean gradient norm over its steps.
        metric_sums["grad_norm"] = Ratio(optax.tree.norm(grads), jnp.ones((), jnp.float32))
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metric_sums

    return train_step


def make_train_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, *, microbatches: int = 1
):
    """A jitted train step ``(state, batch, key) -> (new_state, metric_sums)``.

    ``state`` is donated: do not use it after the call. ``loss_fn`` returns one
    of the three forms of the module doc (checked when the step is traced). The
    update is AdamW (or any optax transformation) on the gradient of
    ``total / count`` over the whole batch; with ``microbatches = k`` the batch's
    leading axis (every leaf ``[B, ...]``, B divisible by k) is split in k parts
    processed one after another (less memory), with the same result for a
    ``LossTerms`` loss and the mean of the k microbatch means for a scalar one.
    ``metric_sums`` holds ``loss`` (a Ratio), ``grad_norm`` and what ``loss_fn``
    returned.
    """
    return jax.jit(train_step_fn(loss_fn, optimizer, microbatches=microbatches), donate_argnums=0)


def eval_step_fn(loss_fn: LossFn) -> Callable[[Params, Batch], MetricSums]:
    """The pure (un-jitted) eval step; see :func:`make_eval_step`."""

    def eval_step(params, batch):
        terms, metric_sums = loss_terms(loss_fn(params, batch, jax.random.key(0), False))
        return dict(metric_sums, loss=Ratio(terms.total, terms.count))

    return eval_step


def make_eval_step(loss_fn: LossFn):
    """A jitted ``(params, batch) -> metric_sums`` (``train=False``, no randomness)."""
    return jax.jit(eval_step_fn(loss_fn))
