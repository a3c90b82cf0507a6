"""The fit loop: steps, periodic evaluation, JSON-lines metrics, checkpoints, resume.

Host-side orchestration only; the math lives in the jitted steps of
:mod:`jaxseq.training.steps`. Metric sums stay on the device between logs (dispatch stays
asynchronous) and are pulled to the host once per log window.

Every line of ``metrics.jsonl`` is one JSON object (:func:`metrics_record`)::

    {"step": 120, "epoch": 2.5, "split": "train", "learning_rate": 0.0028, "loss": 0.41,
     "accuracy": 0.87, ...}

``step`` counts the updates applied; ``epoch`` is the training progress in epochs
(the completed ones plus the fraction of the current one's batches: ``step /
steps_per_epoch`` when the epochs are equally long; an epoch whose batches have
no ``len()`` counts as 0 until its last batch); ``split`` is ``train`` (the mean
over the steps since the previous train record) or an eval set's name (evaluated
at ``step``); ``learning_rate`` is the rate of the update that produced ``step``
(``schedule(step - 1)``; null when ``fit`` was not told the rate); then the
metrics, ``loss`` first. Nothing in it depends on time: wall time, steps/s and
tokens/s go to ``timing.jsonl`` (:data:`TIMING_FILE`).

Training data (``train_batches``):

* a callable ``epoch -> iterable of batches`` (a list, a generator such as
  :func:`jaxseq.data.iterate_batches`'s, ...): re-creatable, deterministic in the
  epoch, so a resumed run replays it and skips the batches already taken;
* a re-iterable collection (a list, a tuple): the same batches every epoch;
* a one-shot iterator (a generator): one pass, so ``num_epochs`` must be 1 (an
  endless generator with ``max_steps`` is fine). Resuming with one *consumes* the
  batches the earlier run took (``step`` of them) before training: the result
  equals the uninterrupted run only if the new iterator yields what the first one
  did, which ``fit`` cannot check (not resumable bitwise by contract).

Resuming (``resume=True``) with the first two restores the latest checkpoint and
replays the data order deterministically, so a run that is interrupted and
resumed ends with the same parameters and the same metrics file, byte for byte,
as one that was not: every record of a step is written before that step's
checkpoint, records after the restored step are dropped, the train metrics of an
unfinished log window are saved with an interrupted run's checkpoint, and the
resumed run writes only records of later steps (none if the run was already
finished).

A run folder (``out_dir``) holds ``metrics.jsonl``, ``timing.jsonl``,
``checkpoints/``, ``provenance.json`` (:func:`jaxseq.training.provenance.collect`,
one record per session, the first run's first), ``tensorboard/`` and
``profile/`` (when switched on). An existing run folder is never overwritten
silently (``FileExistsError`` unless ``resume=True`` or ``overwrite=True``).

Ctrl-C (SIGINT) during ``fit`` finishes the current step, saves a checkpoint of
it and raises :class:`FitInterrupted` (a ``KeyboardInterrupt``); ``fit(...,
resume=True)`` continues to the same result as an uninterrupted run. A second
Ctrl-C aborts at once; one during the run's last step lets the run finish and
return. Only the main thread of a single-process run installs the handler.
``FitConfig(stop_after=N)`` stops the same way after update ``N`` (raising
:class:`FitStopped`).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxseq import _checks, metrics
from jaxseq.training import checkpoint, provenance
from jaxseq.training.steps import TrainState, _optax_promotion, check_schedule

METRICS_FILE = "metrics.jsonl"
TIMING_FILE = "timing.jsonl"
PROVENANCE_FILE = "provenance.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
PROFILE_DIR = "profile"
#: What ``fit(..., overwrite=True)`` deletes from ``out_dir`` before it starts.
FIT_OUTPUTS = (
    METRICS_FILE,
    TIMING_FILE,
    PROVENANCE_FILE,
    CHECKPOINTS_DIR,
    TENSORBOARD_DIR,
    PROFILE_DIR,
)
# The custom-metadata key of the unfinished log window saved with an interrupted run.
WINDOW_KEY = "jaxseq_fit_window"


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class FitInterrupted(KeyboardInterrupt):
    """``fit`` was interrupted (Ctrl-C, SIGINT) and saved a checkpoint of ``step``.

    Attributes:
      step: the last update applied, saved in ``out_dir/checkpoints``.
      out_dir: the run folder; ``fit(..., resume=True)`` on it continues the run.
      state: the train state at ``step``.
    """

    def __init__(self, step: int, out_dir: str, state: Any = None):
        super().__init__(
            f"interrupted at step {step}; checkpoint saved in "
            f"{os.path.join(out_dir, CHECKPOINTS_DIR)}; rerun with resume=True to continue"
        )
        self.step, self.out_dir, self.state = step, out_dir, state


class FitStopped(FitInterrupted):
    """``fit`` stopped after update ``FitConfig.stop_after`` and saved a checkpoint of it,
    exactly as Ctrl-C does (the unfinished log window included, no extra record):
    ``fit(..., resume=True)`` continues to the same result as an uninterrupted run."""

    def __init__(self, step: int, out_dir: str, state: Any = None):
        super().__init__(step, out_dir, state)
        self.args = (
            f"stopped at step {step} (stop_after); checkpoint saved in "
            f"{os.path.join(out_dir, CHECKPOINTS_DIR)}; rerun with resume=True to continue",
        )


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How long to train, how often to log, evaluate and checkpoint (in steps), and
    what to keep and show.

    Attributes:
      num_epochs: passes over ``train_batches`` (an int >= 1).
      max_steps: stop after this many updates (None: after ``num_epochs``).
      log_every: a train record every this many steps (and at every evaluation
        and checkpoint).
      eval_every: evaluate every this many steps (None: at the end of every epoch)
        and at the last step.
      checkpoint_every: save every this many steps (None: at the end of every
        epoch) and at the last step.
      progress: show a tqdm bar (process 0), with a total and an ETA when the run's
        length is known (``max_steps``, or ``num_epochs`` times ``len`` of the
        epoch's batches).
      console: print a line per evaluation (``step 120 (epoch 2.50) dev: loss
        0.4100 accuracy 0.8700``) through ``tqdm.write`` (process 0); None: as
        ``progress``.
      max_to_keep: checkpoints kept on disk: the latest ones, or with
        ``best_metric`` the best ones plus the latest (for resuming).
      best_metric: keep the ``max_to_keep`` checkpoints best by this metric of the
        eval set ``best_split`` (e.g. ``"loss"``, ``"accuracy"``); a checkpoint is
        then also saved at every evaluation. None: keep the latest.
      best_mode: ``"min"`` (lower is better) or ``"max"``.
      best_split: the eval set ``best_metric`` is read from (None: the only one).
      tensorboard: write every record's scalars to ``out_dir/tensorboard`` with
        tensorboardX: None: when tensorboardX is installed; True: required
        (``ImportError`` if missing); False: off.
      profile_steps: ``(first, last)``: record a ``jax.profiler`` trace of the
        updates that produce steps ``first`` to ``last`` (1-based, inclusive) into
        ``out_dir/profile`` (open it with TensorBoard's profile plugin or Perfetto).
      stop_after: stop after this update as an interruption does (Ctrl-C): save a
        checkpoint of it with the unfinished log window, write no extra record, and
        raise :class:`FitStopped`; ``fit(..., resume=True)`` then continues to the
        result of an uninterrupted run (None: no stop; a value at or after the run's
        last step changes nothing).
    """

    num_epochs: int = 1
    max_steps: int | None = None
    log_every: int = 50
    eval_every: int | None = None  # None: at the end of every epoch
    checkpoint_every: int | None = None  # None: at the end of every epoch
    progress: bool = True
    console: bool | None = None
    max_to_keep: int = 2
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    best_split: str | None = None
    tensorboard: bool | None = None
    profile_steps: tuple[int, int] | None = None
    stop_after: int | None = None

    def __post_init__(self):
        for field in ("num_epochs", "log_every", "max_to_keep"):
            _checks.check_int(getattr(self, field), field, 1)
        for field in ("max_steps", "eval_every", "checkpoint_every", "stop_after"):
            _checks.check_int(getattr(self, field), field, 1, optional=True)
        _checks.check_flag(self.progress, "progress")
        for field in ("console", "tensorboard"):
            if getattr(self, field) is not None:
                _checks.check_flag(getattr(self, field), field)
        for field in ("best_metric", "best_split"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"`{field}` must be a non-empty str or None, got {value!r}")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"`best_mode` must be 'min' or 'max', got {self.best_mode!r}")
        if self.best_split is not None and self.best_metric is None:
            raise ValueError("`best_split` is set but `best_metric` is not: set both or neither")
        if self.profile_steps is not None:
            steps_ = self.profile_steps
            if not isinstance(steps_, tuple) or len(steps_) != 2:
                raise TypeError(
                    f"`profile_steps` must be a (first, last) tuple of ints, got {steps_!r}"
                )
            _checks.check_int(steps_[0], "profile_steps[0]", 1)
            _checks.check_int(steps_[1], "profile_steps[1]", steps_[0])

    @property
    def show_console(self) -> bool:
        return self.progress if self.console is None else self.console


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


def _import_tensorboard_writer(*, required: bool):
    """tensorboardX's ``SummaryWriter`` class; None when missing and not ``required``."""
    try:
        from tensorboardX import SummaryWriter  # optional: the `train` extra
    except ImportError as e:
        if not required:
            return None
        raise ImportError(
            "FitConfig(tensorboard=True) needs tensorboardX, which is not installed: "
            "pip install 'jaxseq[train]' (or pip install 'tensorboardX>=2.6'), or set "
            "tensorboard=None (on when installed) or False"
        ) from e
    return SummaryWriter


def _tensorboard_writer(mode: bool | None, directory: str, purge_step: int | None = None):
    """A tensorboardX ``SummaryWriter`` for ``directory``, or None (see
    :attr:`FitConfig.tensorboard`). ``purge_step``: a resumed run's first new step;
    TensorBoard hides the events of that step and later ones written before it (by the
    session that crashed), so every step shows the resumed run's value once."""
    if mode is False:
        return None
    writer_class = _import_tensorboard_writer(required=bool(mode))
    if writer_class is None:
        return None
    # tensorboardX names its file after the time in whole seconds and the host: a session
    # started within the same second as the previous one (a quick resume after a crash)
    # would truncate that session's file. A suffix unique to this session keeps both.
    suffix = f".{os.getpid()}.{time.time_ns()}"
    return writer_class(directory, purge_step=purge_step, filename_suffix=suffix)


def _keep_lines_up_to(path: str, step: int) -> None:
    """Drop the JSON-lines records of ``path`` after ``step`` (a resumed run)."""
    if os.path.exists(path):
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)


class MetricsWriter:
    """Appends one :func:`metrics_record` per line to ``path``.

    ``keep_up_to_step``: keep the file's records up to that step (a resumed run)
    instead of starting an empty file. ``tensorboard``: also write the records'
    scalars (``<split>/<metric>`` at ``step``) to ``<folder of path>/tensorboard``
    with tensorboardX (see :attr:`FitConfig.tensorboard`: None, when installed;
    True, required); :meth:`flush` puts them on disk (``fit`` flushes before every
    checkpoint, so a crash loses no event of a committed step; a resumed run's writer
    purges the crashed session's events after the restored step, tensorboardX's
    ``purge_step``). Only process 0 writes.
    """

    def __init__(
        self,
        path: str,
        *,
        keep_up_to_step: int | None = None,
        tensorboard: bool | None = False,
    ):
        self.path = path
        # In a multi-process run (jaxseq.training.distributed) only process 0 writes.
        self._enabled = jax.process_index() == 0
        self._tb = None
        if not self._enabled:
            return
        if keep_up_to_step is not None:
            _keep_lines_up_to(path, keep_up_to_step)
        else:
            open(path, "w").close()
        directory = os.path.join(os.path.dirname(os.path.abspath(path)), TENSORBOARD_DIR)
        purge = None if keep_up_to_step is None else keep_up_to_step + 1
        self._tb = _tensorboard_writer(tensorboard, directory, purge)

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
                if name not in ("step", "split") and value is not None:
                    self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def flush(self) -> None:
        """Put the TensorBoard events written so far on disk (the metrics file is
        written line by line already)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class TimingWriter:
    """``timing.jsonl``: one line per train record, ``{"step", "wall_time_s" (since
    this session started), "steps_per_s", "tokens_per_s" (null without
    ``tokens_in``)}`` over the log window. Not part of the reproducible record (a
    resumed run's differs). Only process 0 writes."""

    def __init__(self, path: str, *, keep_up_to_step: int | None = None):
        self.path, self.start = path, time.perf_counter()
        self._enabled = jax.process_index() == 0
        if not self._enabled:
            return
        if keep_up_to_step is not None:
            _keep_lines_up_to(path, keep_up_to_step)
        else:
            open(path, "w").close()

    def write(self, step: int, steps: int, seconds: float, tokens: int | None) -> dict:
        seconds = max(seconds, 1e-9)
        record = {
            "step": int(step),
            "wall_time_s": round(time.perf_counter() - self.start, 6),
            "steps_per_s": steps / seconds,
            "tokens_per_s": None if tokens is None else tokens / seconds,
        }
        if self._enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record


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


def _check_best_metric(
    name: str, split: str, eval_step: Callable, state: Any, eval_data: Mapping[str, Any]
) -> None:
    """Before anything is written or trained: ``eval_step`` on the first batch of eval
    set ``split`` returns metric sums of known types, ``name`` among them
    (``FitConfig.best_metric``), or ``ValueError``/``TypeError``."""
    none = object()
    batch = next(iter(eval_data[split]()), none)
    if batch is none:  # no batches: nothing to check (evaluations report no metrics)
        return
    sums = eval_step(state.params, batch)
    metrics.check_sums(sums, f"eval_step's metric sums (eval set {split!r})")
    if name not in sums:
        raise ValueError(
            f"FitConfig.best_metric={name!r} is not a metric of eval set {split!r}, whose "
            f"metrics are {sorted(sums)}"
        )


def _check_finite(step: int, values: Mapping[str, float]) -> None:
    loss = values.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss became {loss} at step {step}: stopping. Lower the learning rate, "
            f"check the inputs for NaN/inf at valid steps, or clip gradients (clip_norm)."
        )


def _is_iterator(value: Any) -> bool:
    """A one-shot iterator (a generator...): ``iter`` returns the object itself."""
    return isinstance(value, Iterator)


def _train_data(train_batches: Any, config: FitConfig) -> Callable[[int], Iterable[Any]]:
    """``train_batches`` (see the module doc) as ``epoch -> iterable``."""
    if callable(train_batches):
        return train_batches
    if not isinstance(train_batches, Iterable) or isinstance(train_batches, (str, bytes)):
        raise TypeError(
            "`train_batches` must be a callable `epoch -> iterable of batches` or an "
            f"iterable of batches, got {type(train_batches).__name__}"
        )
    if _is_iterator(train_batches) and config.num_epochs != 1:
        raise ValueError(
            f"`train_batches` is a one-shot iterator ({type(train_batches).__name__}), which "
            f"gives one epoch, but num_epochs={config.num_epochs}: pass a callable "
            "`epoch -> iterable` (e.g. lambda epoch: iterate_batches(..., epoch=epoch)), a "
            "list, or num_epochs=1"
        )
    return lambda epoch: train_batches


def _eval_data(eval_sets: Mapping[str, Any] | None) -> dict[str, Callable[[], Iterable[Any]]]:
    """``eval_sets`` as name -> a function returning that set's batches."""
    if eval_sets is None:
        return {}
    if not isinstance(eval_sets, Mapping):
        raise TypeError(
            f"`eval_sets` must be a dict name -> batches, got {type(eval_sets).__name__}"
        )
    out = {}
    for name, batches in eval_sets.items():
        if not isinstance(name, str) or not name or name == "train":
            raise ValueError(
                f"`eval_sets` names must be non-empty strs other than 'train', got {name!r}"
            )
        if callable(batches):
            out[name] = batches
        elif _is_iterator(batches):
            raise TypeError(
                f"eval_sets[{name!r}] is a one-shot iterator ({type(batches).__name__}): it "
                "could be evaluated only once, but fit evaluates it repeatedly. Pass a "
                "callable returning the batches (e.g. lambda: iterate_batches(...)) or a list"
            )
        elif isinstance(batches, Iterable):
            out[name] = lambda batches=batches: batches
        else:
            raise TypeError(
                f"eval_sets[{name!r}] must be a callable returning batches or an iterable, "
                f"got {type(batches).__name__}"
            )
    return out


def _length(batches: Any) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None


class _Update(NamedTuple):
    epoch: int
    position: int  # of the batch within its epoch
    length: int | None  # the epoch's number of batches (None: no len())
    batch: Any


def _batches_after(train_data, config: FitConfig, start_step: int) -> Iterator[_Update]:
    """Every update of the run after the first ``start_step`` (skipped: a sequence
    by index, without reading; any other iterable by consuming its items)."""
    skip = start_step
    for epoch in range(config.num_epochs):
        batches = train_data(epoch)
        length = _length(batches)
        if length is not None and skip >= length and isinstance(batches, Sequence):
            skip -= length
            continue
        if isinstance(batches, Sequence):
            for index in range(skip, len(batches)):
                yield _Update(epoch, index, length, batches[index])
            skip = 0
            continue
        for index, batch in enumerate(batches):
            if skip:
                skip -= 1
                continue
            yield _Update(epoch, index, length, batch)


def _updates(
    train_data, config: FitConfig, start_step: int
) -> Iterator[tuple[_Update, bool, bool]]:
    """The updates after ``start_step`` in order, as ``(update, epoch_end, last)``:
    ``epoch_end`` marks the last batch of an epoch (its data ends there), ``last``
    the run's final update (``max_steps``, or the last batch of the last non-empty
    epoch). One batch is read ahead to know whether the current one ends its epoch,
    except after the ``max_steps``-th update: nothing past the run's last update is
    read (its ``epoch_end`` then comes from the epoch's ``len()``; without one it is
    False)."""
    if config.max_steps is not None and start_step >= config.max_steps:
        return
    stream = _batches_after(train_data, config, start_step)
    current, step = next(stream, None), start_step
    while current is not None:
        step += 1
        if config.max_steps is not None and step >= config.max_steps:
            length = current.length
            yield current, length is not None and current.position + 1 == length, True
            return
        following = next(stream, None)
        epoch_end = following is None or following.epoch != current.epoch
        last = following is None
        yield current, epoch_end, last
        if last:
            return
        current = following


def _window_metadata(window: Any, tokens: int, steps: int) -> dict[str, Any]:
    """The unfinished log window as JSON (saved with an interrupted run's checkpoint)."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(window)]
    return {
        WINDOW_KEY: {
            "leaves": [leaf.tolist() for leaf in leaves],
            "dtypes": [str(leaf.dtype) for leaf in leaves],
            "tokens": int(tokens),
            "steps": int(steps),
        }
    }


def _restore_window(stored: Mapping[str, Any], sums: Any) -> Any:
    """The saved window (:func:`_window_metadata`) in the structure of ``sums``."""
    treedef = jax.tree_util.tree_structure(sums)
    num_leaves = len(jax.tree_util.tree_leaves(sums))
    if num_leaves != len(stored["leaves"]):
        raise ValueError(
            f"the train metrics saved with the checkpoint have {len(stored['leaves'])} "
            f"leaves but train_step returns {num_leaves}: resume with the same "
            "train step (loss and metrics) as the interrupted run"
        )
    leaves = [
        jnp.asarray(np.asarray(values), jnp.dtype(dtype))
        for values, dtype in zip(stored["leaves"], stored["dtypes"])
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _committed_checkpoints(out_dir: str) -> list[str]:
    directory = os.path.join(out_dir, CHECKPOINTS_DIR)
    if not os.path.isdir(directory):
        return []
    return [name for name in os.listdir(directory) if name.isdigit()]


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _removal_plan(out_dir: str) -> list[tuple[str, str]]:
    """What ``overwrite=True`` deletes: ``(path, how)`` for each of :data:`FIT_OUTPUTS`
    present, ``how`` one of ``"file"`` (a file, or a link to one: the link),
    ``"tree"`` (a folder) and ``"contents"`` (a link to a folder, e.g. ``checkpoints``
    on a bigger disk: the link is kept and what its folder holds is deleted)."""
    plan = []
    for name in FIT_OUTPUTS:
        path = os.path.join(out_dir, name)
        if os.path.islink(path):
            plan.append((path, "contents" if os.path.isdir(path) else "file"))
        elif os.path.isdir(path):
            plan.append((path, "tree"))
        elif os.path.lexists(path):
            plan.append((path, "file"))
    return plan


def _check_removable(out_dir: str, plan: Sequence[tuple[str, str]]) -> None:
    """``PermissionError`` naming the folders whose entries ``plan`` cannot delete,
    before anything is deleted (never a half-deleted run folder)."""
    folders = []
    for path, how in plan:
        if how in ("file", "tree"):
            folders.append(os.path.dirname(path) or ".")
        if how in ("tree", "contents"):
            for root, subdirs, files in os.walk(path):
                if subdirs or files:
                    folders.append(root)
    denied = sorted({f for f in folders if not os.access(f, os.W_OK | os.X_OK)})
    if denied:
        raise PermissionError(
            errno.EACCES,
            f"overwrite=True cannot delete fit's outputs in {out_dir!r}: no permission to "
            f"delete entries of {denied}; nothing was deleted",
            out_dir,
        )


def _remove_outputs(out_dir: str) -> None:
    """Delete fit's outputs in ``out_dir`` (:func:`_removal_plan`), after checking that
    all of them can be deleted (:func:`_check_removable`)."""
    plan = _removal_plan(out_dir)
    _check_removable(out_dir, plan)
    for path, how in plan:
        if how == "file":
            os.remove(path)
        elif how == "tree":
            shutil.rmtree(path)
        else:
            for entry in os.listdir(path):
                inner = os.path.join(path, entry)
                if os.path.isdir(inner) and not os.path.islink(inner):
                    shutil.rmtree(inner)
                else:
                    os.remove(inner)


def _has_records(path: str) -> bool:
    """``path`` exists and holds a non-blank line (an empty metrics file is no run)."""
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return any(line.strip() for line in f)


def _prepare_run_folder(out_dir: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an existing run (see :func:`fit`); with ``overwrite``
    delete fit's own outputs (:data:`FIT_OUTPUTS`; a symbolic link to a folder is
    kept and emptied, any other link removed, never what it points to) first, all or
    nothing. An existing run is a ``metrics.jsonl`` with records or committed
    checkpoints (a run that failed before writing either is not one). In a
    multi-process run every process checks before any of them writes (one sync point)."""
    if overwrite and jax.process_index() == 0:
        _remove_outputs(out_dir)
    found = []
    if not (resume or overwrite):
        if _has_records(os.path.join(out_dir, METRICS_FILE)):
            found.append(METRICS_FILE)
        steps = sorted(int(s) for s in _committed_checkpoints(out_dir))
        if steps:
            found.append(f"checkpoints of steps {steps}")
    _sync("jaxseq-fit-run-folder-checked")
    if found:
        raise FileExistsError(
            errno.EEXIST,
            f"{out_dir!r} already holds a run ({', '.join(found)}): pass resume=True to "
            f"continue it or overwrite=True to delete it and start over",
            out_dir,
        )


def _write_provenance(out_dir: str, start_step: int, resume: bool) -> None:
    """Append this session's :func:`provenance.collect` record to ``provenance.json``
    (a list, the first run's record first; a fresh run starts a new list)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(out_dir, PROVENANCE_FILE)
    sessions = []
    if resume and os.path.exists(path):
        with open(path) as f:
            sessions = json.load(f)
    sessions.append({"start_step": int(start_step), **provenance.collect()})
    with open(path, "w") as f:
        json.dump(sessions, f, indent=2)
        f.write("\n")


def _best_fn(config: FitConfig) -> Callable[[Mapping[str, float]], float] | None:
    """orbax's ranking function for ``config.best_metric``: a checkpoint saved
    without an evaluation (or with a NaN) ranks last."""
    if config.best_metric is None:
        return None
    worst = math.inf if config.best_mode == "min" else -math.inf
    name = config.best_metric

    def best_fn(saved: Mapping[str, float]) -> float:
        value = saved.get(name)
        return worst if value is None or not math.isfinite(value) else float(value)

    return best_fn


class _SigintHandler:
    """While active, the first SIGINT only sets :attr:`received` (the loop saves and
    raises :class:`FitInterrupted` after the current step); a second one raises
    ``KeyboardInterrupt`` at once. Installed only in the main thread of a
    single-process run (elsewhere Ctrl-C keeps its default behaviour)."""

    def __init__(self, show: bool):
        self.received, self.show, self._previous = False, show, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received:
            signal.signal(signal.SIGINT, self._previous)
            raise KeyboardInterrupt
        self.received = True
        if self.show:
            tqdm.write("interrupt: saving a checkpoint after this step (Ctrl-C again to abort)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


class _Profiler:
    """A ``jax.profiler`` trace of the updates producing steps ``first..last``."""

    def __init__(self, steps: tuple[int, int] | None, directory: str):
        self.steps, self.directory, self.active = steps, directory, False

    def before(self, step: int) -> None:
        """Called before the update that produces ``step``."""
        if self.steps is not None and not self.active and self.steps[0] <= step <= self.steps[1]:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, step: int, state: Any) -> None:
        if self.active and self.steps is not None and step >= self.steps[1]:
            self.stop(state)

    def stop(self, state: Any = None) -> None:
        if self.active:
            if state is not None:
                jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False


def _console_line(step: int, epoch: float, split: str, values: Mapping[str, float]) -> str:
    """``step 120 (epoch 2.50) dev: loss 0.4100 accuracy 0.8700``: ``loss`` first, then
    the other metrics in the order of the records (:func:`metrics_record`)."""
    names = sorted(values, key=lambda name: name != "loss")
    shown = " ".join(f"{name} {values[name]:.4f}" for name in names)
    return f"step {step} (epoch {epoch:.2f}) {split}: {shown}"


def fit(
    state: TrainState,
    *,
    train_step: Callable,
    eval_step: Callable | None,
    train_batches: Callable[[int], Iterable[Any]] | Iterable[Any],
    eval_sets: Mapping[str, Callable[[], Iterable[Any]] | Iterable[Any]] | None = None,
    key: jax.Array,
    config: FitConfig,
    out_dir: str,
    resume: bool = False,
    overwrite: bool = False,
    tokens_in: Callable[[Any], int] | None = None,
    learning_rate: float | optax.Schedule | None = None,
) -> tuple[TrainState, dict[str, dict[str, float]]]:
    """Train ``state`` and return it with the last evaluation of each eval set.

    Args:
      state: the initial train state (also the restore target when resuming).
      train_step: ``(state, batch, key) -> (state, metric_sums)``, e.g. from
        :func:`jaxseq.training.steps.make_train_step` (the state is donated).
      eval_step: ``(params, batch) -> metric_sums`` or None.
      train_batches: a callable ``epoch -> iterable of batches`` (deterministic in
        the epoch: resumes bitwise), a list of batches (every epoch), or a one-shot
        iterator (``num_epochs=1``; not resumable bitwise); see the module doc.
        ``len()`` is used when the epoch's batches have it (progress total, epoch
        fraction), never required.
      eval_sets: name -> that set's batches: a callable returning them (called at
        every evaluation) or a re-iterable collection; a one-shot iterator is a
        ``TypeError`` (it could be evaluated only once); eval sets without an
        ``eval_step`` are a ``ValueError``.
      key: the run's base PRNG key (per-step keys are ``fold_in(key, step)``).
      config: a :class:`FitConfig`.
      out_dir: the run folder (see the module doc). Checked before the first
        step: it must be writable with room for the checkpoints
        (:func:`checkpoint_bytes_needed`), or ``OSError`` (``ENOSPC`` for too
        little space) is raised.
      resume: continue from the latest committed checkpoint in ``out_dir`` if
        there is one (a save interrupted by a crash is never committed; a
        corrupted one raises :class:`jaxseq.training.checkpoint.CheckpointCorruptError`;
        one of another model, checked against ``state`` before any array is read,
        :class:`jaxseq.training.checkpoint.CheckpointMismatchError` naming the leaves).
        A run that is already finished evaluates its eval sets (the returned
        evaluation) and writes nothing: no file is created, appended or rewritten.
      overwrite: delete fit's outputs in ``out_dir`` (:data:`FIT_OUTPUTS`) and
        start over: all of them or, if one cannot be deleted, none
        (``PermissionError``); a symbolic link to a folder (``checkpoints`` on
        another disk) is kept and emptied, any other link removed, never followed.
        Without ``resume`` or ``overwrite``, an ``out_dir`` that holds records in
        ``metrics.jsonl`` or committed checkpoints raises ``FileExistsError`` (an
        empty ``metrics.jsonl``, left by a run that failed before its first record,
        is not a run).
      tokens_in: counts the tokens of a batch, for tokens/s (progress bar and
        ``timing.jsonl``).
      learning_rate: the schedule the optimizer uses (``count -> rate``, e.g. the
        :func:`jaxseq.training.steps.make_schedule` object given to ``make_optimizer``),
        or its rate when that is constant, for the records' ``learning_rate`` only
        (None: written as null). A float given to ``make_optimizer`` with
        ``warmup_steps``/``total_steps`` is shaped into a schedule: pass that schedule
        here, not the float. Checked by :func:`jaxseq.training.steps.check_schedule`
        (a float must be finite and > 0).

    Raises:
      FitInterrupted: Ctrl-C (SIGINT): the current step was finished and saved.
      FitStopped: ``config.stop_after`` was reached: that step was saved as by Ctrl-C.
      TypeError: a metric sum of an unknown type (after the first step, naming it).
      NonFiniteLossError: the train loss became NaN or infinite (nothing of that
        step is saved).
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"`config` must be a loop.FitConfig, got {type(config).__name__}")
    _checks.check_flag(resume, "resume")
    _checks.check_flag(overwrite, "overwrite")
    if resume and overwrite:
        raise ValueError("`resume` and `overwrite` are exclusive: continue the run or delete it")
    if learning_rate is not None:
        check_schedule(learning_rate, "learning_rate")  # a float: finite and > 0
    train_data = _train_data(train_batches, config)
    if eval_step is None and eval_sets:
        raise ValueError(
            f"`eval_sets` ({sorted(eval_sets)}) needs `eval_step`, which is None: pass an "
            "eval step (e.g. steps.make_eval_step(loss_fn)) or no eval_sets"
        )
    eval_data = _eval_data(eval_sets) if eval_step is not None else {}
    best_split = config.best_split
    if config.best_metric is not None:
        if best_split is None:
            if len(eval_data) != 1:
                needs = (
                    "an eval set (eval_step and eval_sets) to read it from"
                    if not eval_data
                    else f"`best_split`, the eval set to read it from, with {len(eval_data)} "
                    f"eval sets ({sorted(eval_data)})"
                )
                raise ValueError(f"FitConfig.best_metric={config.best_metric!r} needs {needs}")
            (best_split,) = eval_data
        elif best_split not in eval_data:
            raise ValueError(
                f"FitConfig.best_split={best_split!r} is not an eval set: the eval sets are "
                f"{sorted(eval_data) or 'none (eval_step and eval_sets are needed)'}"
            )
    if config.best_metric is not None and best_split is not None and eval_step is not None:
        _check_best_metric(config.best_metric, best_split, eval_step, state, eval_data)
    kept = config.max_to_keep + (1 if config.best_metric is not None else 0)
    check_writable(out_dir, required_bytes=checkpoint_bytes_needed(state, max_to_keep=kept))
    _prepare_run_folder(out_dir, resume=resume, overwrite=overwrite)
    if config.tensorboard and jax.process_index() == 0:  # required: fail before training
        _import_tensorboard_writer(required=True)

    mngr = checkpoint.manager(
        os.path.join(out_dir, CHECKPOINTS_DIR),
        max_to_keep=config.max_to_keep,
        best_fn=_best_fn(config),
        best_mode=config.best_mode,
    )
    start_step, saved_window = 0, None
    if resume and mngr.latest_step() is not None:
        state = checkpoint.restore(mngr, state)
        start_step = int(state.step)
        saved_window = checkpoint.step_metadata(mngr, start_step).get(WINDOW_KEY)
    pending = _updates(train_data, config, start_step)
    first_update = next(pending, None)
    if resume and first_update is None:  # finished: evaluate, write nothing
        finished_eval = {}
        try:
            for name, batches in eval_data.items():
                finished_eval[name] = evaluate(eval_step, state.params, batches())
        finally:
            mngr.close()
        return state, finished_eval
    _write_provenance(out_dir, start_step, resume)
    show = jax.process_index() == 0
    writer = MetricsWriter(
        os.path.join(out_dir, METRICS_FILE),
        keep_up_to_step=start_step if resume else None,
        tensorboard=config.tensorboard,
    )
    timing = TimingWriter(
        os.path.join(out_dir, TIMING_FILE), keep_up_to_step=start_step if resume else None
    )
    profiler = _Profiler(config.profile_steps, os.path.join(out_dir, PROFILE_DIR))
    step, epoch_progress = start_step, 0.0
    window, window_steps, window_tokens = None, 0, 0
    window_start = time.perf_counter()
    last_eval: dict[str, dict[str, float]] = {}

    def write(split, values):
        writer.write(step, split, values, epoch=epoch_progress, learning_rate=learning_rate)

    def close_window():
        nonlocal window, window_steps, window_tokens, window_start
        if window is None:
            return {}
        try:
            values = metrics.summarize(window)
        except (TypeError, ValueError) as e:
            raise type(e)(f"the train metrics of step {step}: {e}") from e
        _check_finite(step, values)
        write("train", values)  # no timing in the file: a resumed run writes the same bytes
        record = timing.write(
            step,
            window_steps,
            time.perf_counter() - window_start,
            window_tokens if tokens_in is not None else None,
        )
        if record["tokens_per_s"] is not None:
            values["tokens_per_s"] = record["tokens_per_s"]
        window, window_steps, window_tokens = None, 0, 0
        window_start = time.perf_counter()
        return values

    def run_evals(*, record=True):
        for name, batches in eval_data.items():
            last_eval[name] = evaluate(eval_step, state.params, batches())
            if record:
                write(name, last_eval[name])
                if show and config.show_console:
                    tqdm.write(_console_line(step, epoch_progress, name, last_eval[name]))
        if record and config.best_metric is not None and best_split is not None:
            values = last_eval[best_split]
            if config.best_metric not in values:
                raise ValueError(
                    f"FitConfig.best_metric={config.best_metric!r} is not a metric of eval "
                    f"set {best_split!r}, whose metrics are {sorted(values)}"
                )

    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        disable=not config.progress or not show,
        desc="train",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    current_epoch = None
    try:
        with _SigintHandler(show) as interrupt:
            # A step's records are all written before its checkpoint, so a resumed run
            # never writes a record of the step it restored.
            updates = [] if first_update is None else itertools.chain([first_update], pending)
            for update, epoch_end, last in updates:
                epoch, index, length = update.epoch, update.position, update.length
                if epoch != current_epoch and length is not None:
                    # The run's length, as far as it is known: exact when epochs are equal.
                    total = step - index + length * (config.num_epochs - epoch)
                    bar.total = total if config.max_steps is None else min(total, config.max_steps)
                    bar.refresh()
                current_epoch = epoch
                profiler.before(step + 1)
                state, sums = train_step(state, update.batch, key)
                if step == start_step:  # before the first record: fail fast, naming the key
                    metrics.check_sums(sums, "train_step's metric sums")
                step += 1
                profiler.after(step, state)
                if length is not None:
                    epoch_progress = (epoch * length + index + 1) / length
                else:  # an epoch of unknown length: its fraction is known at its end
                    epoch_progress = float(epoch + 1 if epoch_end else epoch)
                if saved_window is not None:  # resumed mid-window: the saved part first
                    window = _restore_window(saved_window, sums)
                    window_steps, window_tokens = saved_window["steps"], saved_window["tokens"]
                    saved_window = None
                window = sums if window is None else metrics.add(window, sums)
                window_steps += 1
                if tokens_in is not None:
                    window_tokens += tokens_in(update.batch)
                bar.update(1)
                if config.eval_every:
                    evaluate_now = last or step % config.eval_every == 0
                else:
                    evaluate_now = epoch_end or last
                if config.checkpoint_every:
                    save_now = last or step % config.checkpoint_every == 0
                else:
                    save_now = epoch_end or last
                if config.best_metric is not None:
                    save_now = save_now or evaluate_now  # every evaluated step is a candidate
                if step % config.log_every == 0 or evaluate_now or save_now:
                    values = close_window()
                    if "loss" in values:
                        shown = {"loss": f"{values['loss']:.4f}"}
                        if "tokens_per_s" in values:  # only with tokens_in
                            shown["tok_s"] = f"{values['tokens_per_s']:.0f}"
                        bar.set_postfix(**shown)
                if evaluate_now:
                    run_evals()
                if save_now:
                    best = None
                    if config.best_metric is not None and best_split is not None:
                        best = {}
                        if evaluate_now:
                            best[config.best_metric] = last_eval[best_split][config.best_metric]
                    writer.flush()  # every event up to a committed step is on disk
                    checkpoint.save(mngr, step, state, metrics=best)
                stopped = config.stop_after is not None and step == config.stop_after
                if (interrupt.received or stopped) and not last:
                    if not save_now:
                        writer.flush()
                        extra = {}
                        if window is not None:
                            extra = _window_metadata(window, window_tokens, window_steps)
                        checkpoint.save(
                            mngr, step, state, metrics={} if config.best_metric else None,
                            extra_metadata=extra,
                        )  # fmt: skip
                    if interrupt.received:
                        raise FitInterrupted(step, out_dir, state)
                    raise FitStopped(step, out_dir, state)
        if step == start_step:  # nothing left to train: the final evaluation is on file already
            run_evals(record=False)
    finally:
        profiler.stop()
        mngr.close()
        bar.close()
        writer.close()
    return state, last_eval
