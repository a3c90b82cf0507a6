"""The harness every experiment runs on: train, evaluate, report.

An experiment builds a :class:`Task` (how to initialise its parameters, its loss
and metrics hook, its batches) and hands it to :func:`train_and_evaluate`,
which trains with ``jaxseq.training.loop.fit`` (dev evaluated during training,
``--resume`` from the run folder's last checkpoint), evaluates the test split
at the end and writes the run folder; :func:`report` turns the test numbers
into a :class:`Result` (one row of the results table). An :class:`Experiment`
ties a ``Config`` class, its ``--smoke``/``--full`` variants and its ``run``
function to the command line (:mod:`experiments.config`); it times the run and
writes ``result.json``.

The run folder ``runs/<experiment>/<smoke|full|default>/`` (``--out-dir``)
holds ``config.json`` (the resolved config), ``metrics.jsonl``,
``checkpoints/``, ``curves.png``, ``confusion.png`` (classification and
labeling) and ``result.json``; an experiment that trains several models gives
each a sub-folder and reports once at the top.

The metrics schema: every line of ``metrics.jsonl`` is one JSON object whose
first keys are :data:`SCHEMA`, in that order, then the task's metrics (floats),
as ``fit`` writes them (:func:`jaxseq.training.loop.metrics_record`) while it
trains, so an interrupted run's file is already in the schema::

    {"step": 120, "epoch": 2.5, "split": "train", "learning_rate": 0.0028, "loss": 0.41,
     "accuracy": 0.87, ...}

* ``step``: updates applied so far;
* ``epoch``: ``step / steps_per_epoch``, the training progress in epochs;
* ``split``: ``train`` (the mean over the steps since the last train record),
  ``dev`` (evaluated at ``step``) or ``test`` (one record, the last line, written
  once the run has reached its last step: a ``--train.stop-after`` run has none);
* ``learning_rate``: the rate of the update that produced ``step`` (the
  schedule at ``step - 1``);
* ``loss``: the task's loss (the mean over tokens, words, sequences... as the
  task defines it).

Notation: B batch, T time, C classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import optax

from experiments import config as configs
from experiments import plots
from jaxseq import metrics
from jaxseq.training import distributed, loop, steps

RUNS_DIR = "runs"
SCHEMA = ("step", "epoch", "split", "learning_rate", "loss")
SPLITS = ("train", "dev", "test")


# ----------------------------------------------------------------------------- tasks


@dataclasses.dataclass(frozen=True)
class Task:
    """What :func:`train_and_evaluate` trains: the experiment's hooks.

    Attributes:
      init: ``key -> params``.
      loss_fn: the loss and metrics hook, ``(params, batch, key, train) ->
        (LossTerms, metric sums)`` (see :mod:`jaxseq.training.steps`); its metric sums
        (``jaxseq.metrics.Ratio``, confusion counts) become the records' metrics.
      train_batches: ``epoch -> that epoch's batches``, deterministic in the epoch
        (a resumed run replays it).
      steps_per_epoch: ``len(train_batches(epoch))`` for every epoch.
      eval_sets: ``"test"`` (required, evaluated once at the end) and ``"dev"``
        (optional, evaluated during training) -> a function returning the batches.
      tokens_in: counts a batch's tokens, for the progress bar's throughput.
      resolved: values derived at run time (sizes, vocabularies...) saved in
        ``config.json`` beside the config.
    """

    init: Callable[[jax.Array], Any]
    loss_fn: steps.LossFn
    train_batches: Callable[[int], Sequence[Any]]
    steps_per_epoch: int
    eval_sets: Mapping[str, Callable[[], Iterable[Any]]]
    tokens_in: Callable[[Any], int] | None = None
    resolved: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if "test" not in self.eval_sets or set(self.eval_sets) - {"dev", "test"}:
            raise ValueError(
                f"`eval_sets` needs 'test' and at most 'dev', got {set(self.eval_sets)}"
            )


class Trained(NamedTuple):
    """What :func:`train_and_evaluate` returns."""

    params: Any
    step: int
    test: dict[str, float]
    """The test split's metrics (the task's, and ``test_metrics``')."""
    test_sums: dict
    out_dir: str


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Result:
    """One row of the results table (test-set numbers)."""

    experiment: str
    metric: str
    """What ``baseline`` and ``jaxseq`` measure (e.g. "token accuracy (vowels)")."""
    baseline: float
    jaxseq: float
    target: float | None = None
    higher_is_better: bool = True
    seconds: float = 0.0
    """Wall time of the whole experiment (data loading included)."""
    cpu_seconds: float | None = None
    """Process CPU time (all threads): a load-independent measure on a shared machine."""
    test: Mapping[str, float] = dataclasses.field(default_factory=dict)
    out_dir: str = ""
    step: int = 0

    @property
    def margin(self) -> float:
        """How much better than the baseline (positive: better, whichever the direction)."""
        difference = self.jaxseq - self.baseline
        return difference if self.higher_is_better else -difference

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.jaxseq >= self.target if self.higher_is_better else self.jaxseq <= self.target

    def row(self) -> str:
        return (
            f"{self.experiment}: {self.metric} baseline {self.baseline:.4f}, jaxseq "
            f"{self.jaxseq:.4f} (target {self.target}), {self.seconds:.1f} s "
            f"(CPU {self.cpu_seconds or 0:.1f} s)"
        )


def results_table(results: Sequence[Result]) -> str:
    """A Markdown table: experiment, metric, baseline, jaxseq, margin (positive: better
    than the baseline), target, wall and CPU time (CPU time does not grow when other
    jobs share the machine)."""
    lines = [
        "| experiment | metric | baseline | jaxseq | margin | target | time (s) | CPU (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        target = "" if r.target is None else f"{r.target:.2f} ({'met' if r.met else 'MISSED'})"
        lines.append(
            f"| {r.experiment} | {r.metric} | {r.baseline:.4f} | {r.jaxseq:.4f} | "
            f"{r.margin:+.4f} | {target} | {r.seconds:.1f} | {r.cpu_seconds or 0:.1f} |"
        )
    return "\n".join(lines)


class Timer:
    """Wall-clock and process CPU time since construction."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


# ----------------------------------------------------------------------------- experiments


@dataclasses.dataclass(frozen=True)
class Experiment:
    """An experiment: its ``Config`` class, variants and ``run``, and its command line.

    ``run(config) -> Result`` does the work; :meth:`execute` times it (data
    loading included) and writes ``result.json``; ``describe(result)`` is what
    :meth:`main` prints (default :meth:`Result.row`).
    """

    name: str
    config_cls: type
    run: Callable[[Any], Result]
    smoke: Mapping[str, Any]
    full: Mapping[str, Any]
    description: str | None = None
    describe: Callable[[Result], str] = Result.row

    def config(self, *, smoke: bool = False, full: bool = False):
        """The default config with the ``--full`` then ``--smoke`` overrides applied."""
        return configs.make_config(
            self.config_cls,
            smoke_overrides=self.smoke,
            full_overrides=self.full,
            smoke=smoke,
            full=full,
        )

    def parse(self, args: Sequence[str] | None = None):
        """The config of a command line (:func:`experiments.config.parse`)."""
        return configs.parse(
            self.config_cls,
            args,
            smoke_overrides=self.smoke,
            full_overrides=self.full,
            description=self.description,
        )

    def execute(self, config) -> Result:
        """``run(config)``, timed; the result also goes to ``<out_dir>/result.json``."""
        timer = Timer()
        result = self.run(config)
        seconds, cpu_seconds = timer.elapsed()
        result = dataclasses.replace(result, seconds=seconds, cpu_seconds=cpu_seconds)
        write_json(
            os.path.join(result.out_dir, "result.json"),
            {**dataclasses.asdict(result), "margin": result.margin, "met": result.met},
        )
        return result

    def main(self, args: Sequence[str] | None = None) -> Result:
        """Parse ``args`` (default ``sys.argv``), execute, print the result."""
        result = self.execute(self.parse(args))
        print(self.describe(result), flush=True)
        return result


# ----------------------------------------------------------------------------- run folder


def run_dir(name: str, config: configs.RunSwitches) -> str:
    """``config.out_dir``, or ``runs/<name>/<smoke|full|default>``."""
    return config.out_dir or os.path.join(RUNS_DIR, name, configs.variant_name(config))


def prepare_run_dir(out_dir: str, *, resume: bool) -> None:
    """Create the run folder; without ``resume``, drop its old checkpoints."""
    os.makedirs(out_dir, exist_ok=True)
    if not resume and distributed.is_main_process():
        shutil.rmtree(os.path.join(out_dir, "checkpoints"), ignore_errors=True)
    distributed.sync("jaxseq-run-dir-ready")


@distributed.main_process_only
def write_json(path: str, value: Any) -> None:
    """``value`` as indented JSON (process 0 only in a multi-process run)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=False)
        f.write("\n")


# ----------------------------------------------------------------------------- schedule


def total_steps_of(tc: configs.TrainConfig, steps_per_epoch: int) -> int:
    """The run's length in steps: its epochs, capped by ``max_steps``."""
    total = tc.num_epochs * steps_per_epoch
    return total if tc.max_steps is None else min(total, tc.max_steps)


def schedule_for(tc: configs.TrainConfig, total_steps: int) -> optax.Schedule:
    """The run's learning-rate schedule (:func:`jaxseq.training.steps.make_schedule`)."""
    return steps.make_schedule(
        learning_rate=tc.learning_rate,
        warmup_steps=tc.warmup_steps,
        total_steps=total_steps if tc.cosine else None,
    )


def optimizer_for(
    tc: configs.TrainConfig, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """:func:`jaxseq.training.steps.make_optimizer` from a :class:`TrainConfig`, on
    ``schedule`` (:func:`schedule_for`)."""
    return steps.make_optimizer(
        learning_rate=schedule,
        clip_norm=tc.clip_norm,
        weight_decay=tc.weight_decay,
    )


# ----------------------------------------------------------------------------- metrics


@distributed.main_process_only
def append_test_record(path: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Append the test record to ``metrics.jsonl`` (process 0 only) and return the
    file's records. A resume of a finished run finds its test record there already
    and appends none."""
    records = loop.read_metrics(path) if os.path.exists(path) else []
    if records and (records[-1]["split"], records[-1]["step"]) == ("test", record["step"]):
        return records
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return [*records, dict(record)]


def evaluate_sums(eval_step, params, batches: Iterable[Any]) -> dict:
    """The summed metric sums of ``eval_step`` over ``batches``, on the host."""
    total = None
    for batch in batches:
        sums = eval_step(params, batch)
        total = sums if total is None else metrics.add(total, sums)
    return jax.device_get(total)


# ----------------------------------------------------------------------------- training


def train_and_evaluate(
    config,
    task: Task,
    *,
    name: str,
    out_dir: str | None = None,
    class_names: Sequence[str] | None = None,
    test_metrics: Callable[[Any], Mapping[str, float]] | None = None,
) -> Trained:
    """Train ``task``, evaluate dev during training and test at the end; write the run folder.

    Args:
      config: the experiment config (fields ``train``, ``smoke``, ``full``,
        ``resume``, ``out_dir``).
      task: the experiment's hooks.
      name: the experiment (or ``experiment/model``), for ``config.json`` and plots.
      out_dir: the run folder (default :func:`run_dir`).
      class_names: draw ``confusion.png`` from the test split's ``confusion`` sums.
      test_metrics: ``params -> metrics`` computed once after training (decoding,
        error rates...), added to the test record and :attr:`Trained.test`.
    """
    tc: configs.TrainConfig = config.train
    out_dir = out_dir or run_dir(name, config)
    prepare_run_dir(out_dir, resume=config.resume)
    total_steps = total_steps_of(tc, task.steps_per_epoch)
    write_json(
        os.path.join(out_dir, "config.json"),
        {
            "experiment": name,
            "variant": configs.variant_name(config),
            "config": dataclasses.asdict(config),
            "resolved": {
                "out_dir": out_dir,
                "steps_per_epoch": task.steps_per_epoch,
                "total_steps": total_steps,
                **task.resolved,
            },
        },
    )

    schedule = schedule_for(tc, total_steps)
    optimizer = optimizer_for(tc, schedule)
    key_init, key_train = jax.random.split(jax.random.key(tc.seed))
    state = steps.create_train_state(task.init(key_init), optimizer)
    # None: one device and the plain steps; else tc.batch_size is the global batch,
    # split over the mesh's "data" axis.
    mesh = distributed.setup_from_env()
    state = distributed.replicate(state, mesh)
    key_train = distributed.replicate(key_train, mesh)
    train_step = distributed.make_sharded_train_step(task.loss_fn, optimizer, mesh)
    eval_step = distributed.make_sharded_eval_step(task.loss_fn, mesh)

    def placed(batches_fn):
        return lambda *args: distributed.shard_batches(batches_fn(*args), mesh)

    state, _ = loop.fit(
        state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=placed(task.train_batches),
        eval_sets={k: placed(f) for k, f in task.eval_sets.items() if k != "test"},
        key=key_train,
        config=loop.FitConfig(
            num_epochs=tc.num_epochs,
            max_steps=total_steps if tc.stop_after is None else min(total_steps, tc.stop_after),
            log_every=tc.log_every,
            eval_every=tc.eval_every,
            checkpoint_every=tc.checkpoint_every,
            progress=tc.progress,
        ),
        out_dir=out_dir,
        resume=config.resume,
        tokens_in=task.tokens_in,
        learning_rate=schedule,
    )

    test_sums = evaluate_sums(eval_step, state.params, placed(task.eval_sets["test"])())
    test = metrics.summarize(test_sums)
    if test_metrics is not None:
        test.update(test_metrics(state.params))
    step = int(state.step)
    path = os.path.join(out_dir, "metrics.jsonl")
    if step == total_steps:
        record = loop.metrics_record(
            step, "test", test, epoch=step / task.steps_per_epoch, learning_rate=schedule
        )
        records = append_test_record(path, record)
    else:  # interrupted (stop_after): the file is fit's, ready for --resume
        records = loop.read_metrics(path) if distributed.is_main_process() else []
    title = f"{name} ({configs.variant_name(config)})"
    plots.curves(records, os.path.join(out_dir, "curves.png"), title)
    if class_names is not None and "confusion" in test_sums:
        path = os.path.join(out_dir, "confusion.png")
        plots.confusion(test_sums["confusion"], class_names, path, f"{name}: test confusion")
    return Trained(state.params, step, test, test_sums, out_dir)


def report(
    trained: Trained,
    *,
    name: str,
    metric: str,
    baseline: float,
    label: str | None = None,
    target: float | None = None,
    higher_is_better: bool = True,
    test: Mapping[str, float] | None = None,
    out_dir: str | None = None,
) -> Result:
    """The :class:`Result` of a run (:meth:`Experiment.execute` times it and writes it).

    Args:
      trained: from :func:`train_and_evaluate`.
      name: the experiment.
      metric: the test metric reported (a key of ``test``).
      baseline: the baseline's value of ``metric``.
      label: the metric's name in the results table (default ``metric``).
      target: the value the experiment aims for (reported, not enforced).
      higher_is_better: the direction of ``metric`` (error rates, MSE: False).
      test: the test numbers reported (default ``trained.test``).
      out_dir: the run folder, where ``result.json`` goes (default ``trained.out_dir``).
    """
    test = dict(trained.test if test is None else test)
    return Result(
        experiment=name,
        metric=label or metric,
        baseline=float(baseline),
        jaxseq=float(test[metric]),
        target=target,
        higher_is_better=higher_is_better,
        test=test,
        out_dir=out_dir or trained.out_dir,
        step=trained.step,
    )
