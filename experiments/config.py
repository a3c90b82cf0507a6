"""The experiments' configs and command line: switches, model, training, ``method``.

An experiment's ``Config`` is a frozen dataclass deriving from :class:`RunSwitches`
(``--smoke``, ``--full``, ``--resume``, ``--overwrite``, ``--allow-config-change``,
``--out-dir``) that holds a :class:`ModelConfig` and a :class:`TrainConfig` (or its own
model fields) plus its own switches. Its ``--smoke`` and ``--full`` variants are nested
mappings of overrides; :func:`parse` reads the command line with ``tyro``
(``--model.hidden-size 64``): ``--smoke``/``--full`` pick the variant and any explicit
flag still wins.

``method`` is a string on the command line (:data:`MethodName`) and becomes the
``jaxseq`` method value here, in :data:`METHODS` only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import tyro

import jaxseq as js
from jaxseq import models
from jaxseq.methods import Method
from jaxseq.training import distributed

MethodName = Literal["default", "scan", "fused", "parallel"]
"""How a recurrence runs, on the command line: ``default`` is the library's choice (the
fastest correct engine for the cell and backend, see :func:`jaxseq.resolve_method`)."""

METHODS: Mapping[str, Method | None] = {
    "default": None,
    "scan": js.Scan(),
    "fused": js.Fused(),
    "parallel": js.Parallel(),
}


def method_of(name: MethodName) -> Method | None:
    """The ``method=`` value of a :data:`MethodName` (``"default"``: None)."""
    return METHODS[name]


@dataclasses.dataclass(frozen=True)
class RunSwitches:
    """The switches every experiment's ``Config`` has (its base class)."""

    smoke: bool = False
    """Shrink the run to seconds (tiny model, few steps, subset of data)."""
    full: bool = False
    """The bigger, longer configuration."""
    resume: bool = False
    """Continue from the last checkpoint in the run folder (refused if the config differs
    from its ``config.json``, unless ``--allow-config-change``)."""
    overwrite: bool = False
    """Start over, deleting the run folder's previous results (without ``--resume`` or
    ``--overwrite`` a run folder that holds results is refused)."""
    allow_config_change: bool = False
    """With ``--resume``: continue even though the config differs from the run folder's
    ``config.json`` (the change is recorded there, under ``config_changes``)."""
    out_dir: str | None = None
    """Run folder (default ``runs/<experiment>/<smoke|full|default>``)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The recurrent encoder (see ``jaxseq.models.SequenceModelConfig``)."""

    cell: Literal["elman", "gru", "lstm", "mingru", "minlstm", "lru"] = "lstm"
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    embed_dim: int | None = None
    """Token embedding width, or the affine input layer's width for dense features."""
    dropout_rate: float = 0.0
    """Variational dropout between stacked layers."""
    embed_dropout_rate: float = 0.0
    """Variational dropout on the input layer's output."""
    pooling: Literal["last", "mean", "max"] | None = None
    """Classifiers only: how the valid steps are summarised (None: ``last``)."""
    method: MethodName = "default"
    """How the recurrence runs: ``scan``, ``fused`` (elman/gru/lstm), ``parallel``
    (mingru/minlstm/lru) or ``default`` (the library's choice). Same values up to
    rounding: speed and memory only."""
    crf: bool = False
    """Labelers only: a linear-chain CRF output layer over the per-step logits (trained on
    its negative log-likelihood, predicting the Viterbi path) instead of a softmax."""

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
            method=method_of(self.method),
            crf=self.crf,
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, batching and bookkeeping."""

    batch_size: int = 64
    eval_batch_size: int = 512
    num_epochs: int = 10
    max_steps: int | None = None
    """Stop after this many steps (the learning-rate schedule ends there too)."""
    stop_after: int | None = None
    """Stop at this step without changing the schedule (an interruption: continue the
    run with ``--resume``)."""
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


def variant_name(config: RunSwitches) -> str:
    return "smoke" if config.smoke else ("full" if config.full else "default")


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
