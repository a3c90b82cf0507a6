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
holds ``config.json`` (the resolved config and the provenance of every session that
worked on the run, see :func:`prepare_run_dir`), ``metrics.jsonl``,
``checkpoints/``, ``curves.png``, ``confusion.png`` (classification and
labeling), ``result.json`` (with every session's wall and CPU time) and, while the
run has no result, ``sessions.json`` (see :meth:`Experiment.execute`); an experiment
that trains several models gives each a sub-folder and reports once at the top.
``--train.stop-after N`` stops every model after update ``N`` as Ctrl-C would
(:class:`jaxseq.training.loop.FitStopped`): no test record, plots or ``result.json``
until ``--resume`` finishes the run.

A run folder's results are never deleted silently: a run into a folder that holds
results is refused (:class:`RunFolderError`, before anything is trained or deleted)
unless ``--resume`` continues it (refused too if the config differs from its
``config.json``, unless ``--allow-config-change``, which records the change) or
``--overwrite`` deletes them (the harness's and ``fit``'s outputs only,
:data:`OUTPUTS`) and starts over.

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
  once the run has reached its last step: a ``--train.stop-after`` run has none; a
  finished run extended by ``--resume --allow-config-change --train.max-steps``
  drops its old one and writes one at its new last step);
* ``learning_rate``: the rate of the update that produced ``step`` (the
  schedule at ``step - 1``);
* ``loss``: the task's loss (the mean over tokens, words, sequences... as the
  task defines it).

Notation: B batch, T time, C classes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

import jax
import optax

from experiments import config as configs
from experiments import plots
from jaxseq import metrics
from jaxseq.training import distributed, loop, provenance, steps

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
        (``Ratio``, ``Confusion``, ``Perplexity`` of :mod:`jaxseq.metrics`) become the
        records' metrics.
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


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (``n - 1`` in the denominator; None
    for fewer than two values)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclasses.dataclass(frozen=True)
class SeedSummary:
    """One experiment over several seeds: the row of the results table of
    ``run_all --seeds N`` (mean ± sample standard deviation)."""

    experiment: str
    metric: str
    seeds: tuple[int, ...]
    results: tuple[Result, ...]
    """One per seed, in the order of ``seeds``."""

    @classmethod
    def of(cls, runs: Sequence[tuple[int, Result]]) -> SeedSummary:
        """The summary of ``(seed, result)`` pairs of one experiment and metric."""
        if not runs:
            raise ValueError("SeedSummary.of needs at least one (seed, result)")
        first = runs[0][1]
        for seed, result in runs:
            same = (result.experiment, result.metric, result.higher_is_better, result.target)
            if same != (first.experiment, first.metric, first.higher_is_better, first.target):
                raise ValueError(
                    f"seed {seed}: {result.experiment}/{result.metric} cannot be summarised "
                    f"with {first.experiment}/{first.metric}"
                )
        return cls(
            first.experiment,
            first.metric,
            tuple(seed for seed, _ in runs),
            tuple(result for _, result in runs),
        )

    @property
    def target(self) -> float | None:
        return self.results[0].target

    @property
    def higher_is_better(self) -> bool:
        return self.results[0].higher_is_better

    @property
    def baseline(self) -> tuple[float, float | None]:
        """Mean and sample standard deviation of the baseline over the seeds."""
        return mean_std([r.baseline for r in self.results])

    @property
    def jaxseq(self) -> tuple[float, float | None]:
        """Mean and sample standard deviation of jaxseq's test metric over the seeds."""
        return mean_std([r.jaxseq for r in self.results])

    @property
    def margin(self) -> tuple[float, float | None]:
        """Mean and sample standard deviation of the per-seed margins."""
        return mean_std([r.margin for r in self.results])

    @property
    def met(self) -> bool | None:
        """Whether the mean meets the target."""
        if self.target is None:
            return None
        mean = self.jaxseq[0]
        return mean >= self.target if self.higher_is_better else mean <= self.target

    def record(self) -> dict[str, Any]:
        """The JSON record: the means, standard deviations and every seed's numbers."""
        (baseline, baseline_std), (jaxseq, jaxseq_std) = self.baseline, self.jaxseq
        margin, margin_std = self.margin
        return {
            "experiment": self.experiment,
            "metric": self.metric,
            "seeds": list(self.seeds),
            "baseline_mean": baseline,
            "baseline_std": baseline_std,
            "jaxseq_mean": jaxseq,
            "jaxseq_std": jaxseq_std,
            "margin_mean": margin,
            "margin_std": margin_std,
            "target": self.target,
            "met": self.met,
            "higher_is_better": self.higher_is_better,
            "seconds_mean": mean_std([r.seconds for r in self.results])[0],
            "cpu_seconds_mean": mean_std([r.cpu_seconds or 0.0 for r in self.results])[0],
            "per_seed": [
                {"seed": seed, **dataclasses.asdict(r), "margin": r.margin, "met": r.met}
                for seed, r in zip(self.seeds, self.results)
            ],
        }


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def seeds_table(summaries: Sequence[SeedSummary]) -> str:
    """The Markdown results table over seeds: mean ± sample standard deviation of the
    baseline, jaxseq and the margin; the target is met when the mean meets it; times are
    means per seed."""
    lines = [
        "| experiment | metric | seeds | baseline | jaxseq | margin | target | "
        "time/seed (s) | CPU/seed (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        target = "" if s.target is None else f"{s.target:.2f} ({'met' if s.met else 'MISSED'})"
        margin, margin_std = s.margin
        margin_text = f"{margin:+.4f}" + ("" if margin_std is None else f" ± {margin_std:.4f}")
        seconds = mean_std([r.seconds for r in s.results])[0]
        cpu = mean_std([r.cpu_seconds or 0.0 for r in s.results])[0]
        lines.append(
            f"| {s.experiment} | {s.metric} | {len(s.seeds)} | {_pm(*s.baseline)} | "
            f"{_pm(*s.jaxseq)} | {margin_text} | {target} | {seconds:.1f} | {cpu:.1f} |"
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

    def check(self, config) -> None:
        """Refuse a run its folder should not take (:func:`check_run_folder`:
        :class:`RunFolderError`); reads only."""
        check_run_folder(run_dir(self.name, config), config, name=self.name)

    def execute(self, config) -> Result:
        """``run(config)``, timed; the result also goes to ``<out_dir>/result.json``.

        First, before any data is loaded, the run folder is checked (:meth:`check`)
        and, with ``--overwrite``, its outputs and those of the run's parts are deleted.

        Every session's wall and CPU time is recorded (:func:`record_session`):
        ``result.json`` lists them (``sessions``) and holds, as ``seconds`` and
        ``cpu_seconds``, the sums over the sessions that trained; a ``--resume`` of a
        finished run (same step as its ``result.json``) is listed as ``already
        finished`` and adds nothing. A session that ends without a result (Ctrl-C,
        ``--train.stop-after``) is kept in ``<out_dir>/sessions.json`` until the
        session that finishes the run moves it into ``result.json``.
        """
        out_dir = run_dir(self.name, config)
        check_run_folder(out_dir, config, name=self.name)
        if config.overwrite and distributed.is_main_process():
            for folder in [out_dir, *run_parts(out_dir, self.name)]:
                remove_outputs(folder)
        distributed.sync("jaxseq-run-folder-cleared")
        previous = _read_json(os.path.join(out_dir, "result.json")) if config.resume else None
        earlier = previous.get("sessions", []) if isinstance(previous, dict) else []
        timer = Timer()
        _STOPPED.clear()
        try:
            result = self.run(config)
            if _STOPPED:  # --train.stop-after: every part stopped, none has a result
                raise loop.FitStopped(min(e.step for e in _STOPPED), out_dir)
        except loop.FitInterrupted as e:  # Ctrl-C or --train.stop-after: no result yet
            seconds, cpu_seconds = timer.elapsed()
            status = "stopped" if isinstance(e, loop.FitStopped) else "interrupted"
            record_session(out_dir, None, seconds, cpu_seconds, step=e.step, status=status)
            raise
        seconds, cpu_seconds = timer.elapsed()
        trained = not (isinstance(previous, dict) and previous.get("step") == result.step)
        sessions = record_session(
            result.out_dir,
            earlier,
            seconds,
            cpu_seconds,
            step=result.step,
            status="finished" if trained else "already finished",
        )
        counted = [s for s in sessions if s.get("status") != "already finished"]
        result = dataclasses.replace(
            result,
            seconds=math.fsum(s["seconds"] for s in counted),
            cpu_seconds=math.fsum(s["cpu_seconds"] for s in counted),
        )
        write_json(
            os.path.join(result.out_dir, "result.json"),
            {
                **dataclasses.asdict(result),
                "margin": result.margin,
                "met": result.met,
                "sessions": sessions,
            },
        )
        return result

    def main(self, args: Sequence[str] | None = None) -> Result | None:
        """Parse ``args`` (default ``sys.argv``), execute, print the result. A refused run
        folder (:class:`RunFolderError`) exits with its message and status 1; Ctrl-C
        (:class:`jaxseq.training.loop.FitInterrupted`: a checkpoint was saved) exits with
        a line saying how to continue and status 130; ``--train.stop-after N``
        (:class:`jaxseq.training.loop.FitStopped`) prints ``stopped at step N ... rerun
        with --resume`` instead of a result and returns None (no ``result.json``)."""
        try:
            result = self.execute(self.parse(args))
        except RunFolderError as e:
            raise SystemExit(f"{self.name}: {e}") from None
        except loop.FitStopped as e:
            print(
                f"{self.name}: stopped at step {e.step} (--train.stop-after); checkpoint "
                f"saved in {e.out_dir}; rerun with --resume to continue",
                flush=True,
            )
            return None
        except loop.FitInterrupted as e:
            exit_interrupted(e, self.name)
        print(self.describe(result), flush=True)
        return result


def exit_interrupted(interrupt: loop.FitInterrupted, name: str) -> NoReturn:
    """Ctrl-C on the command line: one line saying where the checkpoint is and how to
    continue, then exit status 130 (no traceback)."""
    what = "stopped" if isinstance(interrupt, loop.FitStopped) else "interrupted"
    print(
        f"{name}: {what} at step {interrupt.step}; checkpoint saved in "
        f"{interrupt.out_dir}; rerun with --resume to continue",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(130) from None


# ----------------------------------------------------------------------------- run folder


class RunFolderError(Exception):
    """The run folder refuses the run (before anything is trained or deleted): it holds
    results and neither ``--resume`` nor ``--overwrite`` was given, ``--resume`` found
    a different config, or the switches contradict each other. The command line prints
    the message (no traceback) and exits with status 1."""


# What the harness writes in a run folder, then what ``fit`` writes
# (``loop.FIT_OUTPUTS``): the only paths ``--overwrite`` deletes (never anything else),
# and those whose presence means the folder "holds results".
HARNESS_OUTPUTS = ("config.json", "result.json", "sessions.json", "curves.png", "confusion.png")
OUTPUTS = (*HARNESS_OUTPUTS, *loop.FIT_OUTPUTS)
# Fields of config.json's "config" (and "resolved") that may differ on a resume: the
# switches of the session, not of the run. ``out_dir``: the folder is the same one
# however it was named.
RESUME_IGNORES = frozenset(
    {
        "config.resume",
        "config.overwrite",
        "config.allow_config_change",
        "config.out_dir",
        "config.train.progress",
        "config.train.stop_after",
        "resolved.out_dir",
    }
)


def run_dir(name: str, config: configs.RunSwitches) -> str:
    """``config.out_dir``, or ``runs/<name>/<smoke|full|default>``."""
    return config.out_dir or os.path.join(RUNS_DIR, name, configs.variant_name(config))


def outputs_in(folder: str) -> list[str]:
    """The harness's and ``fit``'s outputs (:data:`OUTPUTS`) present in ``folder``, in
    that order (names; folders end with ``/``)."""
    found = []
    for name in OUTPUTS:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            found.append(f"{name}/")
        elif os.path.lexists(path):
            found.append(name)
    return found


def _read_json(path: str, *, strict: bool = False) -> Any:
    """The JSON value in ``path``; None if there is no such file, or if it cannot be read
    and ``strict`` is false (``strict``: :class:`RunFolderError`)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        if strict:
            raise RunFolderError(
                f"{path} cannot be read ({e}): cannot check the run folder's config for "
                "--resume; repair or remove it, or --overwrite the run folder"
            ) from e
        return None


def run_parts(out_dir: str, name: str) -> list[str]:
    """The sub-folders of ``out_dir`` that are parts of the run of ``name`` (an experiment
    that trains several models: their ``config.json`` names ``<name>/<model>``)."""
    if not os.path.isdir(out_dir):
        return []
    parts = []
    for entry in sorted(os.listdir(out_dir)):
        saved = _read_json(os.path.join(out_dir, entry, "config.json"))
        if isinstance(saved, dict) and str(saved.get("experiment", "")).startswith(f"{name}/"):
            parts.append(os.path.join(out_dir, entry))
    return parts


def check_switches(config: configs.RunSwitches) -> None:
    """:class:`RunFolderError` if ``--resume``, ``--overwrite`` and
    ``--allow-config-change`` contradict each other."""
    if config.resume and config.overwrite:
        raise RunFolderError(
            "--resume and --overwrite contradict each other: --resume continues the run "
            "folder's run, --overwrite deletes it and starts over; pass one of them"
        )
    if config.allow_config_change and not config.resume:
        raise RunFolderError(
            "--allow-config-change only applies to --resume (it accepts a config that "
            "differs from the run folder's config.json)"
        )


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}"))
        return flat
    return {prefix: value}


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list]:
    """``{field: [old, new]}`` (``"train.learning_rate"``, ``"resolved.total_steps"``)
    for each value of config.json's ``config`` and ``resolved`` blocks that differs
    between ``old`` and ``new`` (records of config.json), except
    :data:`RESUME_IGNORES`; a value one side lacks (a field added or removed) is listed
    with ``None`` on that side. Only the blocks ``new`` has are compared."""
    missing = object()
    flat_old, flat_new = {}, {}
    for block in ("config", "resolved"):
        if block in new:
            flat_old.update(_flatten(_as_json(old.get(block, {})), block))
            flat_new.update(_flatten(_as_json(new[block]), block))
    changes = {}
    for field in sorted(set(flat_old) | set(flat_new)):
        if field in RESUME_IGNORES:
            continue
        before, after = flat_old.get(field, missing), flat_new.get(field, missing)
        if before != after:
            changes[field.removeprefix("config.")] = [
                None if before is missing else before,
                None if after is missing else after,
            ]
    return changes


def _describe_changes(changes: Mapping[str, Sequence]) -> str:
    return "\n".join(
        f"  {field}: {json.dumps(old)} -> {json.dumps(new)}"
        for field, (old, new) in changes.items()
    )


def _refuse_changes(folder: str, changes: Mapping[str, Sequence]) -> RunFolderError:
    return RunFolderError(
        f"--resume: the config differs from the one the run folder {folder} was trained "
        f"with (its config.json):\n{_describe_changes(changes)}\n"
        "Pass --allow-config-change to continue with the new config (the change is recorded "
        "in config.json), or --overwrite instead of --resume to start over."
    )


def check_run_folder(out_dir: str, config: configs.RunSwitches, *, name: str | None = None) -> None:
    """Refuse a run its folder should not take, before anything is trained or deleted
    (:class:`RunFolderError`; reads only).

    * Without ``--resume`` or ``--overwrite``: ``out_dir`` (or a part of the run, see
      :func:`run_parts`) holds results (:func:`outputs_in`).
    * With ``--resume``: a ``config.json`` there records another config (the
      ``config`` block; see :func:`config_changes`) and ``--allow-config-change`` is
      not given.

    ``name``: the experiment, to find the parts of its run (None: ``out_dir`` only).
    """
    check_switches(config)
    folders = [out_dir, *(run_parts(out_dir, name) if name else [])]
    if not (config.resume or config.overwrite):
        held = [
            os.path.join(os.path.relpath(f, out_dir), n).removeprefix("./")
            for f in folders
            for n in outputs_in(f)
        ]
        if held:
            raise RunFolderError(
                f"the run folder {out_dir} already holds results ({', '.join(held)}). Pass "
                "--resume to continue its run, or --overwrite to delete those results and "
                "start over (or choose another --out-dir)."
            )
    if config.resume and not config.allow_config_change:
        new = {"config": dataclasses.asdict(config)}
        for folder in folders:
            saved = _read_json(os.path.join(folder, "config.json"), strict=True)
            if isinstance(saved, dict):
                changes = config_changes(saved, new)
                if changes:
                    raise _refuse_changes(folder, changes)


def record_session(
    out_dir: str,
    finished: Sequence[Mapping[str, Any]] | None,
    seconds: float,
    cpu_seconds: float,
    *,
    step: int,
    status: str,
) -> list[dict[str, Any]]:
    """This session's times, ``{"seconds", "cpu_seconds", "step" (reached),
    "status"}``, ``status`` one of ``finished``, ``already finished`` (a resume that
    trained nothing), ``stopped`` (``--train.stop-after``) and ``interrupted``
    (Ctrl-C), after the sessions of the run so far, which are returned.

    ``finished`` None: the session ends without a result; it is appended to
    ``<out_dir>/sessions.json`` (the sessions waiting for a result). Otherwise
    ``finished`` are the sessions of the run's previous ``result.json``: the list is
    those, the waiting ones, then this one, and ``sessions.json`` is removed (its
    sessions go to ``result.json``). Process 0 writes."""
    path = os.path.join(out_dir, "sessions.json")
    saved = _read_json(path)
    waiting = [*(saved if isinstance(saved, list) else [])]
    this = {
        "seconds": float(seconds),
        "cpu_seconds": float(cpu_seconds),
        "step": int(step),
        "status": status,
    }
    if finished is None:
        write_json(path, [*waiting, this])
        return [*waiting, this]
    if waiting and distributed.is_main_process():
        os.remove(path)
    return [*finished, *waiting, this]


def remove_outputs(folder: str) -> list[str]:
    """Delete the harness's and ``fit``'s outputs in ``folder`` (:data:`OUTPUTS`,
    nothing else) and return their names."""
    found = outputs_in(folder)
    for entry in found:
        path = os.path.join(folder, entry.rstrip("/"))
        if entry.endswith("/") and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)  # a file, or a link (not what it points to)
    return found


def prepare_run_dir(out_dir: str, config: configs.RunSwitches, record: dict[str, Any]) -> None:
    """Check ``out_dir`` (:func:`check_run_folder`), create it, clear it with
    ``--overwrite``, and write its ``config.json``: ``record`` (experiment, variant,
    config, resolved) with this session's ``provenance``
    (:func:`jaxseq.training.provenance.collect`).

    A resume keeps the file's record and its original ``provenance``, and appends the
    session's provenance to ``sessions``; a config that differs (:func:`config_changes`,
    the ``resolved`` values too) is refused unless ``--allow-config-change``, which
    makes the new config (and resolved values) the record's main block (the latest
    config, which applies from ``from_step`` on) and appends ``{"session": i,
    "time_utc", "from_step", "changes": {field: [old, new]}}`` to ``config_changes``
    (``i``: the resumed session's index in ``sessions``; ``from_step``: the step of the
    checkpoint the run resumes from, so the updates after it are the first trained
    with the new values: none if the run was finished and is not extended). The steps
    up to ``from_step`` were trained with the config before the change.
    """
    check_run_folder(out_dir, config)
    path = os.path.join(out_dir, "config.json")
    saved = _read_json(path, strict=True) if config.resume else None
    session = provenance.collect()
    if isinstance(saved, dict):
        changes = config_changes(saved, record)
        if changes and not config.allow_config_change:
            raise _refuse_changes(out_dir, changes)
        written = dict(saved)
        written["sessions"] = [*saved.get("sessions", []), session]
        if changes:
            written.update(record)  # the config the run continues with
            committed = [int(s) for s in loop._committed_checkpoints(out_dir)]
            change = {
                "session": len(written["sessions"]) - 1,
                "time_utc": session["time_utc"],
                "from_step": max(committed, default=0),
                "changes": changes,
            }
            written["config_changes"] = [*saved.get("config_changes", []), change]
    else:
        written = {**record, "provenance": session, "sessions": []}
    distributed.sync("jaxseq-run-dir-checked")  # every process checked before any write
    if distributed.is_main_process():
        os.makedirs(out_dir, exist_ok=True)
        if config.overwrite:
            remove_outputs(out_dir)
    write_json(path, _as_json(written))
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
def drop_stale_test_records(path: str, total_steps: int) -> None:
    """Before a resumed run trains on: drop the test records of steps before
    ``total_steps`` from ``metrics.jsonl`` (a finished run extended with a larger
    ``--train.max-steps``: its old test record would sit mid-file; the new one is
    written at the end). Process 0 only."""
    if not os.path.exists(path):
        return
    records = loop.read_metrics(path)
    kept = [r for r in records if not (r["split"] == "test" and r["step"] < total_steps)]
    if len(kept) != len(records):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)


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

# The FitStopped of each train_and_evaluate of the current Experiment.execute that
# stopped at --train.stop-after (a run of several models stops each of them).
_STOPPED: list[loop.FitStopped] = []


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
      config: the experiment config (``train`` and the :class:`RunSwitches
        <experiments.config.RunSwitches>`: ``--resume``, ``--overwrite``...).
      task: the experiment's hooks.
      name: the experiment (or ``experiment/model``), for ``config.json`` and plots.
      out_dir: the run folder (default :func:`run_dir`).
      class_names: draw ``confusion.png`` from the test split's
        :class:`jaxseq.metrics.Confusion` sums.
      test_metrics: ``params -> metrics`` computed once after training (decoding,
        error rates...), added to the test record and :attr:`Trained.test`.

    With ``--train.stop-after N`` the training stops after update ``N``
    (:class:`jaxseq.training.loop.FitStopped`, noted for :meth:`Experiment.execute`,
    which then raises it instead of writing a result): the returned :class:`Trained`
    is at step ``N``, with no test record or plots written.
    """
    tc: configs.TrainConfig = config.train
    out_dir = out_dir or run_dir(name, config)
    total_steps = total_steps_of(tc, task.steps_per_epoch)
    prepare_run_dir(
        out_dir,
        config,
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

    if config.resume:
        drop_stale_test_records(os.path.join(out_dir, "metrics.jsonl"), total_steps)
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

    try:
        state, _ = loop.fit(
            state,
            train_step=train_step,
            eval_step=eval_step,
            train_batches=placed(task.train_batches),
            eval_sets={k: placed(f) for k, f in task.eval_sets.items() if k != "test"},
            key=key_train,
            config=loop.FitConfig(
                num_epochs=tc.num_epochs,
                max_steps=total_steps,
                stop_after=tc.stop_after,  # FitStopped: the run stops as if interrupted
                log_every=tc.log_every,
                eval_every=tc.eval_every,
                checkpoint_every=tc.checkpoint_every,
                progress=tc.progress,
            ),
            out_dir=out_dir,
            resume=config.resume,
            tokens_in=task.tokens_in,
            learning_rate=schedule,
            overwrite=config.overwrite,
        )
    except loop.FitStopped as e:  # --train.stop-after: the checkpoint is saved
        _STOPPED.append(e)
        state = e.state

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
        title = f"{name} ({configs.variant_name(config)})"
        plots.curves(records, os.path.join(out_dir, "curves.png"), title)
        confusions = [v for v in test_sums.values() if isinstance(v, metrics.Confusion)]
        if class_names is not None and confusions:
            path = os.path.join(out_dir, "confusion.png")
            plots.confusion(confusions[0].counts, class_names, path, f"{name}: test confusion")
    # else: stopped (--train.stop-after): metrics.jsonl is fit's, ready for --resume;
    # no test record, no plots (Experiment.execute writes no result either)
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
