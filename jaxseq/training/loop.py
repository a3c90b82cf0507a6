"""The fit loop: steps, periodic evaluation, JSON-lines metrics, checkpoints, resume.

Host-side orchestration only; the math lives in the jitted steps of
:mod:`jaxseq.training.steps`. Metric sums stay on the device between logs (dispatch stays
asynchronous) and are pulled to the host once per log window.

Every line of ``metrics.jsonl`` is one JSON object (:func:`metrics_record`)::

    {"step": 120, "epoch": 2.5, "split": "train", "learning_rate": 0.0028, "loss": 0.41,
     "accuracy": 0.87, ...}

``step`` counts the updates applied; ``epoch`` is the training progress in epochs
(the completed ones plus the fraction of the current one's batches: ``step /
steps_per_epoch`` when the epochs are equally long); ``split`` is ``train`` (the
mean over the steps since the previous train record) or an eval set's name
(evaluated at ``step``); ``learning_rate`` is the rate of the update that
produced ``step`` (``schedule(step - 1)``; null when ``fit`` was not told the
rate); then the metrics, ``loss`` first.

Resuming (``resume=True``) restores the latest checkpoint and replays the data
order deterministically (batches are a function of the epoch), so a run that
is interrupted and resumed ends with the same parameters and the same metrics
file, byte for byte, as one that was not: every record of a step is written
before that step's checkpoint, records after the restored step are dropped, and
the resumed run writes only records of later steps (none if the run was already
finished).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import optax
from tqdm.auto import tqdm

from jaxseq import _checks, metrics
from jaxseq.training import checkpoint
from jaxseq.training.steps import TrainState, _optax_promotion

# Checkpoints fit() keeps on disk (the latest ones).
CHECKPOINTS_KEPT = 2


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How long to train and how often to log, evaluate and checkpoint (in steps)."""

    num_epochs: int = 1
    max_steps: int | None = None
    log_every: int = 50
    eval_every: int | None = None  # None: at the end of every epoch
    checkpoint_every: int | None = None  # None: at the end of every epoch
    progress: bool = True

    def __post_init__(self):
        for field in ("num_epochs", "log_every"):
            _checks.check_int(getattr(self, field), field, 1)
        for field in ("max_steps", "eval_every", "checkpoint_every"):
            _checks.check_int(getattr(self, field), field, 1, optional=True)
        _checks.check_flag(self.progress, "progress")


# The first keys of every metrics record, in this order.
RECORD_KEYS = ("step", "epoch", "split", "learning_rate")


def metrics_record(
    step: int,
    split: str,
    values: Mapping[str, float],
    *,
    epoch: float,
    learning_rate: float | optax.Schedule | None,
) -> dict[str, Any]:
    """One line of ``metrics.jsonl``: ``{"step", "epoch", "split", "learning_rate",
    <metric>: value, ...}`` with ``loss`` the first metric when there is one (see the
    module doc). ``learning_rate`` is the run's rate or schedule (``None``: unknown);
    the record holds the rate of the update that produced ``step``.

    >>> metrics_record(3, "dev", {"accuracy": 0.5, "loss": 1.25}, epoch=0.75,
    ...                learning_rate=lambda count: 0.1 * count)
    {'step': 3, 'epoch': 0.75, 'split': 'dev', 'learning_rate': 0.2, 'loss': 1.25, 'accuracy': 0.5}
    """
    clashes = set(values) & set(RECORD_KEYS)
    if clashes:
        raise ValueError(f"metric names {sorted(clashes)} are reserved for the record's fields")
    if callable(learning_rate):
        with _optax_promotion():  # optax's schedules mix Python floats and int counters
            learning_rate = learning_rate(max(int(step) - 1, 0))
    record = {
        "step": int(step),
        "epoch": float(epoch),
        "split": split,
        "learning_rate": None if learning_rate is None else float(learning_rate),
    }
    for name in sorted(values, key=lambda name: name != "loss"):  # stable: loss first
        record[name] = float(values[name])
    return record


class MetricsWriter:
    """Appends one :func:`metrics_record` per line.

    ``keep_up_to_step``: keep the file's records up to that step (a resumed run)
    instead of starting an empty file. Also writes scalars to TensorBoard when
    ``tensorboardX`` is installed and ``tensorboard=True``.
    """

    def __init__(self, path: str, *, keep_up_to_step: int | None = None, tensorboard=False):
        self.path = path
        # In a multi-process run (jaxseq.training.distributed) only process 0 writes.
        self._enabled = jax.process_index() == 0
        self._tb = None
        if not self._enabled:
            return
        if keep_up_to_step is not None and os.path.exists(path):
            kept = [r for r in read_metrics(path) if r["step"] <= keep_up_to_step]
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        elif keep_up_to_step is None:
            open(path, "w").close()
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter  # optional
            except ImportError:
                pass
            else:
                self._tb = SummaryWriter(os.path.join(os.path.dirname(path), "tensorboard"))

    def write(
        self,
        step: int,
        split: str,
        values: Mapping[str, float],
        *,
        epoch: float,
        learning_rate: float | optax.Schedule | None = None,
    ) -> None:
        if not self._enabled:
            return
        record = metrics_record(step, split, values, epoch=epoch, learning_rate=learning_rate)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in record.items():
                if name not in ("step", "epoch", "split") and value is not None:
                    self._tb.add_scalar(f"{split}/{name}", value, int(step))


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics file. A torn last line (the writer was killed
    mid-write) is dropped; a torn line anywhere else raises."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for number, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{path}: line {number + 1} is not JSON: {line[:80]!r}") from None
    return records


def check_writable(out_dir: str, *, required_bytes: int = 0) -> None:
    """Fail before training if ``out_dir`` cannot be created or written, or its
    file system has fewer than ``required_bytes`` free."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write-test-{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("x" * 4096)
        os.remove(probe)
    except OSError as e:
        raise OSError(e.errno, f"output folder {out_dir!r} is not writable: {e}") from e
    free = shutil.disk_usage(out_dir).free
    if free < required_bytes:
        raise OSError(
            errno.ENOSPC,
            f"output folder {out_dir!r} has {free / 2**20:.1f} MiB free but the checkpoints "
            f"need about {required_bytes / 2**20:.1f} MiB: free some space or choose another "
            f"output folder",
        )


def checkpoint_bytes_needed(state: Any, *, max_to_keep: int) -> int:
    """An upper bound on the disk space of the checkpoints ``fit`` keeps: the
    uncompressed state, ``max_to_keep`` times plus the one being written, and
    1 MiB for metadata and metrics."""
    state_bytes = sum(int(getattr(leaf, "nbytes", 0)) for leaf in jax.tree_util.tree_leaves(state))
    return state_bytes * (max_to_keep + 1) + 2**20


def evaluate(eval_step, params, batches: Iterable[Any]) -> dict[str, float]:
    """Sum metric sums over all batches, divide once."""
    total = None
    for batch in batches:
        sums = eval_step(params, batch)
        total = sums if total is None else metrics.add(total, sums)
    return metrics.summarize(total) if total is not None else {}


def _check_finite(step: int, values: Mapping[str, float]) -> None:
    loss = values.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss became {loss} at step {step}: stopping. Lower the learning rate, "
            f"check the inputs for NaN/inf at valid steps, or clip gradients (clip_norm)."
        )


def _updates(
    train_batches: Callable[[int], Sequence[Any]], config: FitConfig, start_step: int
) -> Iterator[tuple[int, int, int, Any, bool]]:
    """The updates after ``start_step`` in order, as ``(epoch, index, length, batch,
    last)``: the batch is ``train_batches(epoch)[index]`` of ``length``; ``last`` marks
    the run's final update (``max_steps``, or the last batch of the last non-empty
    epoch). The batches a resumed run already took are skipped unread."""
    if config.max_steps is not None and start_step >= config.max_steps:
        return

    def nonempty_epochs():
        for epoch in range(config.num_epochs):
            batches = train_batches(epoch)
            if len(batches):
                yield epoch, batches

    epochs = nonempty_epochs()
    current, before = next(epochs, None), 0  # before: the updates of the earlier epochs
    while current is not None:
        epoch, batches = current
        length, following = len(batches), None
        first = max(start_step - before, 0)
        if first >= length:  # replaying: the whole epoch was taken already
            following = next(epochs, None)
        for index in range(first, length):
            if index == length - 1:  # look ahead: is another epoch coming?
                following = next(epochs, None)
            last = (config.max_steps is not None and before + index + 1 >= config.max_steps) or (
                index == length - 1 and following is None
            )
            yield epoch, index, length, batches[index], last
            if last:
                return
        before += length
        current = following


def fit(
    state: TrainState,
    *,
    train_step: Callable,
    eval_step: Callable | None,
    train_batches: Callable[[int], Sequence[Any]],
    eval_sets: Mapping[str, Callable[[], Iterable[Any]]] | None = None,
    key: jax.Array,
    config: FitConfig,
    out_dir: str,
    resume: bool = False,
    tokens_in: Callable[[Any], int] | None = None,
    learning_rate: float | optax.Schedule | None = None,
) -> tuple[TrainState, dict[str, dict[str, float]]]:
    """Train ``state`` and return it with the last evaluation of each eval set.

    Args:
      state: the initial train state (also the restore target when resuming).
      train_step: ``(state, batch, key) -> (state, metric_sums)``, e.g. from
        :func:`jaxseq.training.steps.make_train_step` (the state is donated).
      eval_step: ``(params, batch) -> metric_sums`` or None.
      train_batches: ``epoch -> sequence of batches``; must be deterministic in
        the epoch for resuming to be exact.
      eval_sets: name -> a function returning that set's batches.
      key: the run's base PRNG key (per-step keys are ``fold_in(key, step)``).
      config: a :class:`FitConfig`.
      out_dir: receives ``metrics.jsonl`` (see the module doc) and ``checkpoints/``
        (the last ``CHECKPOINTS_KEPT``). Checked before the first step: it must be
        writable with room for the checkpoints (:func:`checkpoint_bytes_needed`), or
        ``OSError`` (``ENOSPC`` for too little space) is raised.
      resume: continue from the latest committed checkpoint in ``out_dir`` if
        there is one (a save interrupted by a crash is never committed; a
        corrupted one raises :class:`jaxseq.training.checkpoint.CheckpointCorruptError`;
        one of another model, checked against ``state`` before any array is read,
        :class:`jaxseq.training.checkpoint.CheckpointMismatchError` naming the leaves).
        A run that is already finished trains and writes nothing more.
      tokens_in: counts the tokens of a batch, for the throughput display.
      learning_rate: the optimizer's learning rate or schedule (e.g.
        :func:`jaxseq.training.steps.make_schedule`), for the records'
        ``learning_rate`` only (None: written as null).
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"`config` must be a loop.FitConfig, got {type(config).__name__}")
    _checks.check_flag(resume, "resume")
    if learning_rate is not None and not callable(learning_rate):
        _checks.check_float(learning_rate, "learning_rate")
    check_writable(
        out_dir,
        required_bytes=checkpoint_bytes_needed(state, max_to_keep=CHECKPOINTS_KEPT),
    )
    eval_sets = dict(eval_sets or {}) if eval_step is not None else {}
    mngr = checkpoint.manager(os.path.join(out_dir, "checkpoints"), max_to_keep=CHECKPOINTS_KEPT)
    start_step = 0
    if resume and mngr.latest_step() is not None:
        state = checkpoint.restore(mngr, state)
        start_step = int(state.step)
    writer = MetricsWriter(
        os.path.join(out_dir, "metrics.jsonl"), keep_up_to_step=start_step if resume else None
    )
    step, epoch_progress = start_step, 0.0
    window, window_tokens, window_start = None, 0, time.perf_counter()
    last_eval: dict[str, dict[str, float]] = {}

    def write(split, values):
        writer.write(step, split, values, epoch=epoch_progress, learning_rate=learning_rate)

    def close_window():
        nonlocal window, window_tokens, window_start
        if window is None:
            return {}
        values = metrics.summarize(window)
        _check_finite(step, values)
        write("train", values)  # no timing in the file: a resumed run writes the same bytes
        if tokens_in is not None:
            elapsed = time.perf_counter() - window_start
            values["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
        window, window_tokens, window_start = None, 0, time.perf_counter()
        return values

    def run_evals(*, record=True):
        for name, batches in eval_sets.items():
            last_eval[name] = evaluate(eval_step, state.params, batches())
            if record:
                write(name, last_eval[name])

    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        disable=not config.progress or jax.process_index() != 0,
        desc="train",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    # A step's records are all written before its checkpoint, so a resumed run never
    # writes a record of the step it restored.
    for epoch, index, length, batch, last in _updates(train_batches, config, start_step):
        state, sums = train_step(state, batch, key)
        step += 1
        epoch_progress = (epoch * length + index + 1) / length  # = step / length if all equal
        window = sums if window is None else metrics.add(window, sums)
        if tokens_in is not None:
            window_tokens += tokens_in(batch)
        bar.update(1)
        epoch_end = last or index == length - 1
        if config.eval_every:
            evaluate_now = last or step % config.eval_every == 0
        else:
            evaluate_now = epoch_end
        if config.checkpoint_every:
            save_now = last or step % config.checkpoint_every == 0
        else:
            save_now = epoch_end
        if step % config.log_every == 0 or evaluate_now or save_now:
            values = close_window()
            if "loss" in values:
                bar.set_postfix(
                    loss=f"{values['loss']:.4f}", tok_s=f"{values.get('tokens_per_s', 0):.0f}"
                )
        if evaluate_now:
            run_evals()
        if save_now:
            checkpoint.save(mngr, step, state)
    if step == start_step:  # nothing left to train: the final evaluation is on file already
        run_evals(record=False)
    mngr.close()
    bar.close()
    return state, last_eval
