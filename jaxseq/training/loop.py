"""The fit loop: steps, periodic evaluation, JSON-lines metrics, checkpoints, resume.

Host-side orchestration only; the math lives in the jitted steps of
:mod:`jaxseq.training.steps`. Metric sums stay on the device between logs (dispatch stays
asynchronous) and are pulled to the host once per log window.

Resuming (``resume=True``) restores the latest checkpoint and replays the data
order deterministically (batches are a function of the epoch), so a run that
is interrupted and resumed ends with the same parameters and the same metrics
file as one that was not: a log window is always closed when a checkpoint is
written, and metrics lines after the restored step are dropped.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
from tqdm.auto import tqdm

from jaxseq import _checks, metrics
from jaxseq.training import checkpoint
from jaxseq.training.steps import TrainState

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


class MetricsWriter:
    """Appends one JSON object per line: ``{"step", "split", <metric>: value, ...}``.

    Also writes scalars to TensorBoard when ``tensorboardX`` is installed and
    ``tensorboard=True``.
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

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self._enabled:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", float(value), int(step))


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
      out_dir: receives ``metrics.jsonl`` and ``checkpoints/`` (the last
        ``CHECKPOINTS_KEPT``). Checked before the first step: it must be writable
        with room for the checkpoints (:func:`checkpoint_bytes_needed`), or
        ``OSError`` (``ENOSPC`` for too little space) is raised.
      resume: continue from the latest committed checkpoint in ``out_dir`` if
        there is one (a save interrupted by a crash is never committed; a
        corrupted one raises :class:`jaxseq.training.checkpoint.CheckpointCorruptError`).
      tokens_in: counts the tokens of a batch, for the throughput display.
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"`config` must be a loop.FitConfig, got {type(config).__name__}")
    _checks.check_flag(resume, "resume")
    check_writable(
        out_dir,
        required_bytes=checkpoint_bytes_needed(state, max_to_keep=CHECKPOINTS_KEPT),
    )
    eval_sets = dict(eval_sets or {})
    mngr = checkpoint.manager(os.path.join(out_dir, "checkpoints"), max_to_keep=CHECKPOINTS_KEPT)
    start_step = 0
    if resume and mngr.latest_step() is not None:
        state = checkpoint.restore(mngr, state)
        start_step = int(state.step)
    writer = MetricsWriter(
        os.path.join(out_dir, "metrics.jsonl"), keep_up_to_step=start_step if resume else None
    )
    step = start_step
    window, window_tokens, window_start = None, 0, time.perf_counter()
    last_eval: dict[str, dict[str, float]] = {}

    def close_window():
        nonlocal window, window_tokens, window_start
        if window is None:
            return {}
        values = metrics.summarize(window)
        _check_finite(step, values)
        elapsed = time.perf_counter() - window_start
        if tokens_in is not None:
            values["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
        writer.write(step, "train", {k: v for k, v in values.items() if k != "tokens_per_s"})
        window, window_tokens, window_start = None, 0, time.perf_counter()
        return values

    def run_evals():
        for name, batches in eval_sets.items():
            if eval_step is None:
                continue
            values = evaluate(eval_step, state.params, batches())
            writer.write(step, name, values)
            last_eval[name] = values

    def save():
        close_window()
        checkpoint.save(mngr, step, state)

    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        disable=not config.progress or jax.process_index() != 0,
        desc="train",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    epoch_start_step = 0
    done = False
    for epoch in range(config.num_epochs):
        batches = train_batches(epoch)
        if epoch_start_step + len(batches) <= start_step:  # replaying: skip whole epochs
            epoch_start_step += len(batches)
            continue
        for index, batch in enumerate(batches):
            if epoch_start_step + index < start_step:
                continue
            state, sums = train_step(state, batch, key)
            step += 1
            window = sums if window is None else metrics.add(window, sums)
            if tokens_in is not None:
                window_tokens += tokens_in(batch)
            bar.update(1)
            if step % config.log_every == 0:
                values = close_window()
                bar.set_postfix(
                    loss=f"{values['loss']:.4f}", tok_s=f"{values.get('tokens_per_s', 0):.0f}"
                )
            if config.eval_every and step % config.eval_every == 0:
                close_window()
                run_evals()
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save()
            if config.max_steps is not None and step >= config.max_steps:
                done = True
                break
        epoch_start_step += len(batches)
        if not config.eval_every:
            close_window()
            run_evals()
        if not config.checkpoint_every:
            save()
        if done:
            break
    close_window()
    if config.eval_every and (not last_eval or step % config.eval_every):
        run_evals()
    if mngr.latest_step() != step:
        save()
    mngr.close()
    bar.close()
    return state, last_eval
