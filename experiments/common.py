"""The harness every experiment shares: configs, CLI, training, evaluation, plots, results.

An experiment file holds a frozen ``Config`` dataclass (a :class:`ModelConfig`
and a :class:`TrainConfig` plus switches), the overrides of its ``--smoke`` and
``--full`` variants, its data, baseline and model; this module does the rest:

* :func:`parse`: the command line through ``tyro`` (``--model.hidden-size 64``);
  ``--smoke``/``--full`` pick the variant, explicit flags still win.
* :func:`train_and_evaluate`: ``jaxseq.training.loop.fit`` with bucketed batches, a dev
  set evaluated during training, the test set at the end, and the run folder
  ``runs/<experiment>/<variant>/`` holding ``config.json`` (the resolved
  config), ``metrics.jsonl``, ``checkpoints/``, ``curves.png``,
  ``confusion.png`` and ``result.json``.
* :class:`Result` and :func:`results_table`: one row per experiment.

Notation: B batch, T time, C classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import numpy as np
import tyro
from matplotlib.figure import Figure

import jaxseq as js
from jaxseq import metrics, models
from jaxseq.training import distributed, loop, steps
from jaxseq.data import Batch, SequenceDataset, bucket_boundaries, count_batches, iterate_batches

RUNS_DIR = "runs"


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class RunSwitches:
    """The switches every experiment's ``Config`` has (its base class)."""

    smoke: bool = False
    """Shrink the run to seconds (tiny model, few steps, subset of data)."""
    full: bool = False
    """The bigger, longer configuration."""
    resume: bool = False
    """Continue from the last checkpoint in the run folder."""
    out_dir: str | None = None
    """Run folder (default ``runs/<experiment>/<smoke|full|default>``)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The recurrent encoder (see ``jaxseq.models.SequenceModelConfig``)."""

    cell: Literal["elman", "gru", "lstm"] = "lstm"
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    embed_dim: int | None = None
    """Token embedding width, or the affine input layer's width for dense features."""
    dropout_rate: float = 0.0
    """Variational dropout between stacked layers."""
    embed_dropout_rate: float = 0.0
    """Variational dropout on the input layer's output."""
    pooling: Literal["last", "mean", "max"] = "last"
    """Classifiers only: how the valid steps are summarised."""
    implementation: Literal["scan", "fused"] = "fused"
    """``scan``: vmap of a per-example lax.scan; ``fused``: the time-major recurrence with a
    hand-written backward pass (same values up to rounding, speed only)."""

    def sequence_model(
        self, *, num_classes: int, vocab_size: int | None = None, input_size: int | None = None
    ) -> models.SequenceModelConfig:
        return models.SequenceModelConfig(
            num_classes=num_classes,
            hidden_size=self.hidden_size,
            cell=self.cell,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            vocab_size=vocab_size,
            embed_dim=self.embed_dim,
            input_size=input_size,
            dropout_rate=self.dropout_rate,
            embed_dropout_rate=self.embed_dropout_rate,
            pooling=self.pooling,
            implementation=self.implementation,
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, batching and bookkeeping."""

    batch_size: int = 64
    eval_batch_size: int = 512
    num_epochs: int = 10
    max_steps: int | None = None
    """Stop after this many steps (the learning-rate schedule ends there too)."""
    learning_rate: float = 3e-3
    warmup_steps: int = 0
    cosine: bool = True
    """Cosine decay of the learning rate to 0 at the last step."""
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    num_buckets: int = 2
    """Padded lengths per split: each is one compiled shape."""
    train_subset: int | None = None
    """Train on this many randomly chosen training examples (all: None)."""
    eval_subset: int | None = None
    """Evaluate on this many randomly chosen dev/test examples (all: None)."""
    log_every: int = 25
    eval_every: int | None = None
    """Evaluate dev every this many steps (None: at the end of every epoch)."""
    checkpoint_every: int | None = None
    """Checkpoint every this many steps (None: at the end of every epoch)."""
    seed: int = 0
    progress: bool = True


def override(config: Any, changes: Mapping[str, Any]) -> Any:
    """``dataclasses.replace`` recursively: nested mappings update nested dataclasses."""
    updates = {}
    for name, value in changes.items():
        current = getattr(config, name)
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
            value = override(current, value)
        updates[name] = value
    return dataclasses.replace(config, **updates)


def make_config(
    config_cls: type,
    *,
    smoke_overrides: Mapping[str, Any],
    full_overrides: Mapping[str, Any],
    smoke: bool = False,
    full: bool = False,
):
    """The default config, with the ``full`` then the ``smoke`` overrides applied."""
    config = config_cls()
    if full:
        config = override(config, {**full_overrides, "full": True})
    if smoke:
        config = override(config, {**smoke_overrides, "smoke": True})
    return config


def parse(
    config_cls: type,
    args: Sequence[str] | None = None,
    *,
    smoke_overrides: Mapping[str, Any],
    full_overrides: Mapping[str, Any],
    description: str | None = None,
):
    """Parse the command line into ``config_cls`` with tyro.

    ``--smoke`` / ``--full`` select the variant whose values become the
    defaults; any other flag given overrides them. Unknown flags and values of
    the wrong type exit with tyro's error message (``SystemExit(2)``).
    """
    # Device/process layout from JAXSEQ_* (none set: one device, as before); it must
    # run before any JAX operation (see docs/scaling_out.md).
    distributed.setup_from_env()
    first = tyro.cli(config_cls, args=args, description=description)
    if not (first.smoke or first.full):
        return first
    base = make_config(
        config_cls,
        smoke_overrides=smoke_overrides,
        full_overrides=full_overrides,
        smoke=first.smoke,
        full=first.full,
    )
    return tyro.cli(config_cls, args=args, default=base, description=description)


def main(
    config_cls: type,
    run: Callable[[Any], Result],
    args: Sequence[str] | None,
    *,
    smoke_overrides: Mapping[str, Any],
    full_overrides: Mapping[str, Any],
    description: str | None = None,
    describe: Callable[[Result], str] | None = None,
) -> Result:
    """An experiment's command line: :func:`parse`, ``run``, print the result
    (``describe(result)``, default :meth:`Result.row`)."""
    config = parse(
        config_cls,
        args,
        smoke_overrides=smoke_overrides,
        full_overrides=full_overrides,
        description=description,
    )
    result = run(config)
    print(result.row() if describe is None else describe(result))
    return result


def variant_name(config) -> str:
    return "smoke" if config.smoke else ("full" if config.full else "default")


def run_dir(name: str, config) -> str:
    """``config.out_dir``, or ``runs/<name>/<smoke|full|default>``."""
    return config.out_dir or os.path.join(RUNS_DIR, name, variant_name(config))


# ----------------------------------------------------------------------------- data


def subset(dataset: SequenceDataset, size: int | None, seed: int) -> SequenceDataset:
    """``size`` examples drawn without replacement (in data set order); all if None."""
    if size is None or size >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    return dataset.select(np.sort(rng.choice(len(dataset), size, replace=False)))


def buckets_for(datasets: Sequence[SequenceDataset], num_buckets: int) -> tuple[int, ...]:
    """Bucket lengths from the training lengths, the last covering every split."""
    buckets = list(bucket_boundaries(datasets[0].lengths, num_buckets))
    longest = max(int(d.lengths.max()) for d in datasets)
    buckets[-1] = max(buckets[-1], longest)
    return tuple(buckets)


# ----------------------------------------------------------------------------- losses

LogitsFn = Callable[[Any, Batch, jax.Array, bool], jax.Array]
ExtraMetrics = Callable[[jax.Array, Batch], dict]


def classification_loss_fn(
    logits_fn: LogitsFn, extra_metrics: ExtraMetrics | None = None
) -> steps.LossFn:
    """``loss_fn`` for one label per sequence: mean cross-entropy, accuracy, confusion.

    ``extra_metrics(logits, batch)`` adds further metric sums (e.g. Ratios).
    """

    def loss_fn(params, batch: Batch, key, is_training):
        logits_BC = logits_fn(params, batch, key, is_training)
        terms = js.sequence_classification_loss_terms(
            logits_BC, batch.labels, where=batch.label_mask
        )
        sums = {
            "accuracy": metrics.accuracy(logits_BC, batch.labels, where=batch.label_mask),
            "confusion": metrics.confusion_matrix(logits_BC, batch.labels, where=batch.label_mask),
        }
        if extra_metrics is not None:
            sums.update(extra_metrics(logits_BC, batch))
        return terms, sums

    return loss_fn


def labeling_loss_fn(
    logits_fn: LogitsFn, extra_metrics: ExtraMetrics | None = None
) -> steps.LossFn:
    """``loss_fn`` for one label per step (``batch.label_mask`` says which count).

    The loss is ``mean_over_tokens`` (every labelled token weighs the same), so
    ``token_loss`` is the same Ratio and gives the perplexity of the labels.
    """

    def loss_fn(params, batch: Batch, key, is_training):
        logits_BTC = logits_fn(params, batch, key, is_training)
        mask_BT = batch.label_mask
        terms = js.sequence_labeling_loss_terms(
            logits_BTC, batch.labels, mask_BT, reduction="mean_over_tokens"
        )
        sums = {
            "accuracy": metrics.accuracy(logits_BTC, batch.labels, where=mask_BT),
            "confusion": metrics.confusion_matrix(logits_BTC, batch.labels, where=mask_BT),
            "token_loss": metrics.Ratio(terms.total, terms.count),
        }
        if extra_metrics is not None:
            sums.update(extra_metrics(logits_BTC, batch))
        return terms, sums

    return loss_fn


def model_logits(config: models.SequenceModelConfig, task: str) -> LogitsFn:
    """Logits of a plain ``jaxseq.models`` classifier/labeler on ``batch.inputs``."""
    apply = models.classifier_apply if task == "classification" else models.labeler_apply

    def logits_fn(params, batch: Batch, key, is_training):
        return apply(params, config, batch.inputs, batch.lengths, key=key, train=is_training)

    return logits_fn


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Result:
    """One row of the results table (test-set numbers)."""

    experiment: str
    metric: str
    """What ``baseline`` and ``jaxseq`` measure (e.g. "token accuracy (vowels)")."""
    baseline: float
    jaxseq: float
    seconds: float
    target: float | None = None
    cpu_seconds: float | None = None
    """Process CPU time (all threads): a load-independent measure on a shared machine."""
    test: Mapping[str, float] = dataclasses.field(default_factory=dict)
    out_dir: str = ""

    @property
    def margin(self) -> float:
        return self.jaxseq - self.baseline

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.jaxseq >= self.target

    def row(self) -> str:
        return (
            f"{self.experiment}: {self.metric} baseline {self.baseline:.4f}, jaxseq "
            f"{self.jaxseq:.4f} (target {self.target}), {self.seconds:.1f} s "
            f"(CPU {self.cpu_seconds or 0:.1f} s)"
        )


def results_table(results: Sequence[Result]) -> str:
    """A Markdown table: experiment, metric, baseline, jaxseq, margin, target, wall and
    CPU time (CPU time does not grow when other jobs share the machine)."""
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


# ----------------------------------------------------------------------------- plots


@distributed.main_process_only
def plot_curves(records: Sequence[Mapping[str, Any]], path: str, title: str) -> None:
    """Loss and accuracy against step, train and dev, from ``metrics.jsonl`` records."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, name in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for split, style in (("train", "-"), ("dev", "o-")):
            points = [(r["step"], r[name]) for r in records if r["split"] == split and name in r]
            if points:
                xs, values = zip(*points)
                ax.plot(xs, values, style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


@distributed.main_process_only
def plot_confusion(
    confusion_CC: np.ndarray, class_names: Sequence[str], path: str, title: str
) -> None:
    """Row-normalised confusion matrix (rows: true class), with counts when few classes."""
    counts = np.asarray(confusion_CC, np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    num_classes = len(class_names)
    size = max(4.0, 0.45 * num_classes + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_xticks(range(num_classes), class_names, rotation=90 if num_classes > 9 else 0)
    ax.set_yticks(range(num_classes), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if num_classes <= 15:
        for i in range(num_classes):
            for j in range(num_classes):
                if counts[i, j]:
                    color = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                            fontsize=7, color=color)  # fmt: skip
    ax.set_title(title)
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- training


@distributed.main_process_only
def write_json(path: str, value: Any) -> None:
    """``value`` as indented JSON (process 0 only in a multi-process run)."""
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=False)
        f.write("\n")


def prepare_run_dir(name: str, config) -> str:
    """Create the run folder; without ``config.resume``, drop its old checkpoints."""
    out_dir = run_dir(name, config)
    os.makedirs(out_dir, exist_ok=True)
    if not config.resume and distributed.is_main_process():
        shutil.rmtree(os.path.join(out_dir, "checkpoints"), ignore_errors=True)
    distributed.sync("jaxseq-run-dir-ready")
    return out_dir


def write_config(out_dir: str, name: str, config, resolved: Mapping[str, Any]) -> None:
    """``config.json``: the experiment, its variant, the config and the values
    resolved at run time (sizes, buckets, steps...)."""
    write_json(
        os.path.join(out_dir, "config.json"),
        {
            "experiment": name,
            "variant": variant_name(config),
            "config": dataclasses.asdict(config),
            "resolved": {"out_dir": out_dir, **resolved},
        },
    )


def total_steps_of(tc: TrainConfig, steps_per_epoch: int) -> int:
    """The run's length in steps: its epochs, capped by ``max_steps``."""
    total = tc.num_epochs * steps_per_epoch
    return total if tc.max_steps is None else min(total, tc.max_steps)


def optimizer_for(tc: TrainConfig, total_steps: int):
    """:func:`jaxseq.training.steps.make_optimizer` from a :class:`TrainConfig`."""
    return steps.make_optimizer(
        learning_rate=tc.learning_rate,
        clip_norm=tc.clip_norm,
        weight_decay=tc.weight_decay,
        warmup_steps=tc.warmup_steps,
        total_steps=total_steps if tc.cosine else None,
    )


def fit_config_for(tc: TrainConfig, total_steps: int, stop_after: int | None) -> loop.FitConfig:
    """The :class:`jaxseq.training.loop.FitConfig` of a run; ``stop_after`` cuts it short
    without changing the learning-rate schedule (for interrupt/resume tests)."""
    return loop.FitConfig(
        num_epochs=tc.num_epochs,
        max_steps=total_steps if stop_after is None else min(total_steps, stop_after),
        log_every=tc.log_every,
        eval_every=tc.eval_every,
        checkpoint_every=tc.checkpoint_every,
        progress=tc.progress,
    )


def evaluate_sums(eval_step, params, batches) -> dict:
    """The summed metric sums of ``eval_step`` over ``batches``, on the host."""
    total = None
    for batch in batches:
        sums = eval_step(params, batch)
        total = sums if total is None else metrics.add(total, sums)
    return jax.device_get(total)


def train_and_evaluate(
    config,
    *,
    name: str,
    task: Literal["classification", "labeling"],
    train_set: SequenceDataset,
    dev_set: SequenceDataset | None,
    test_set: SequenceDataset,
    init: Callable[[jax.Array], Any],
    logits_fn: LogitsFn,
    extra_metrics: ExtraMetrics | None = None,
    baseline: float,
    metric: str = "accuracy",
    metric_label: str | None = None,
    target: float | None = None,
    timer: Timer | None = None,
    resolved: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
) -> Result:
    """Train, evaluate dev during training and test at the end; write the run folder.

    Args:
      config: the experiment config (fields ``model``, ``train``, ``smoke``,
        ``full``, ``resume``, ``out_dir``).
      name: the experiment's name (the run folder is ``runs/<name>/<variant>``).
      task: which loss and metrics.
      train_set, dev_set, test_set: the splits (already subsampled); ``dev_set``
        may be None (no dev curve).
      init: ``key -> params``.
      logits_fn: ``(params, batch, key, train) -> logits`` ``[B, C]`` or ``[B, T, C]``.
      extra_metrics: ``(logits, batch) -> metric sums`` added to the standard ones.
      baseline: the baseline's test value of ``metric``.
      metric: the test metric reported (a key of the test summary).
      metric_label: its name in the results table (default ``metric``).
      target: the value the experiment aims for (reported, not enforced).
      timer: started when the experiment began (data loading included); default now.
      resolved: values derived at run time (data sizes, vocabularies...) saved
        in ``config.json`` beside the config.
      stop_after: stop training at this step without changing the schedule (to
        test interrupting and resuming); None runs to the end.
    """
    timer = Timer() if timer is None else timer
    tc: TrainConfig = config.train
    out_dir = prepare_run_dir(name, config)

    splits = [d for d in (train_set, dev_set, test_set) if d is not None]
    buckets = buckets_for(splits, tc.num_buckets)
    steps_per_epoch = count_batches(train_set, tc.batch_size, buckets=buckets)
    total_steps = total_steps_of(tc, steps_per_epoch)
    write_config(
        out_dir,
        name,
        config,
        {
            "buckets": list(buckets),
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "sizes": {d.name: len(d) for d in splits},
            **(resolved or {}),
        },
    )

    make_loss_fn = classification_loss_fn if task == "classification" else labeling_loss_fn
    loss_fn = make_loss_fn(logits_fn, extra_metrics)
    optimizer = optimizer_for(tc, total_steps)
    key_init, key_train = jax.random.split(jax.random.key(tc.seed))
    state = steps.create_train_state(init(key_init), optimizer)
    mesh = distributed.setup_from_env()  # None: one device, the plain steps
    if mesh is None:
        train_step = steps.make_train_step(loss_fn, optimizer)
        eval_step = steps.make_eval_step(loss_fn)
        on_devices = lambda batches: batches
    else:  # tc.batch_size is the global batch, split over the mesh's "data" axis
        state = distributed.replicate(state, mesh)
        key_train = distributed.replicate(key_train, mesh)
        train_step = distributed.make_sharded_train_step(loss_fn, optimizer, mesh)
        eval_step = distributed.make_sharded_eval_step(loss_fn, mesh)
        on_devices = lambda batches: distributed.shard_batches(batches, mesh)

    def train_batches(epoch: int) -> list[Batch]:
        # A list, sharded lazily batch by batch when there is a mesh.
        return on_devices(
            list(
                iterate_batches(
                    train_set,
                    tc.batch_size,
                    buckets=buckets,
                    shuffle=True,
                    seed=tc.seed,
                    epoch=epoch,
                )
            )
        )

    def eval_batches(dataset: SequenceDataset):
        return on_devices(iterate_batches(dataset, tc.eval_batch_size, buckets=buckets))

    state, _ = loop.fit(
        state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=train_batches,
        eval_sets={} if dev_set is None else {"dev": lambda: eval_batches(dev_set)},
        key=key_train,
        config=fit_config_for(tc, total_steps, stop_after),
        out_dir=out_dir,
        resume=config.resume,
        tokens_in=lambda batch: int(batch.lengths.sum()),
    )

    test_sums = evaluate_sums(eval_step, state.params, eval_batches(test_set))
    test = metrics.summarize(test_sums)
    seconds, cpu_seconds = timer.elapsed()
    records = loop.read_metrics(os.path.join(out_dir, "metrics.jsonl"))
    plot_curves(records, os.path.join(out_dir, "curves.png"), f"{name} ({variant_name(config)})")
    plot_confusion(
        test_sums["confusion"],
        train_set.class_names,
        os.path.join(out_dir, "confusion.png"),
        f"{name}: test confusion",
    )
    result = Result(
        experiment=name,
        metric=metric_label or metric,
        baseline=float(baseline),
        jaxseq=float(test[metric]),
        seconds=seconds,
        target=target,
        cpu_seconds=cpu_seconds,
        test=test,
        out_dir=out_dir,
    )
    write_json(
        os.path.join(out_dir, "result.json"),
        {**dataclasses.asdict(result), "margin": result.margin, "step": int(state.step)},
    )
    return result
