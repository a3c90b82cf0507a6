"""The adding problem with T = 1000: a parallel-in-time cell (minGRU) against an LSTM.

The task (Hochreiter & Schmidhuber 1997; Le et al. 2015): each sequence has a
length L drawn from ``[min_len, T]`` and two input channels, a value uniform on
[0, 1] and a marker that is 1 at exactly two steps, one in the first half of
the sequence and one in the second; the target is the sum of the two marked
values, read from the final state (the carry after step L - 1). Predicting the
mean (1.0) gives MSE 1/6 ~ 0.167; a prediction counts as correct when it is
within 0.04 of the target. The examples are generated on the fly, inside the
jitted step: example i of a split (train, dev, test) comes from the key
``fold_in(fold_in(fold_in(key(seed), STREAM), split), i)``, so a batch is just
the indices of its examples and a resumed run replays the same data.

Models, about 8.7 k parameters each: two stacked minGRU layers (H=64, log-space
formulation, update-gate bias initialised to ``gate_bias`` so that the state
starts out remembering over ~1000 steps) and one LSTM layer (H=45, forget-gate
bias 1), each with a linear readout of the last layer's final state. Both train
on the harness with the same batches: Adam (AdamW without weight decay, constant
learning rate 0.02, batch 32) with global-norm clipping 1.0, 4 epochs of 100
generated batches (dev, 256 sequences, is evaluated and a checkpoint written
after each epoch); the loss is the MSE, ``accuracy`` the fraction within 0.04.
The minGRU runs with ``--method`` (``default``: the library's choice, the
sequential scan on CPU, where it is faster, and the associative scan on
GPU/TPU); the LSTM runs the library default (the fused engine).

Run folder ``runs/long_range/<variant>/``: ``mingru/`` and ``lstm/`` (each a
harness run folder: ``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``curves.png``) and ``result.json`` (the minGRU's test MSE against the
baseline; the LSTM's numbers beside it).

Command::

    python -m experiments.long_range            # default: T = 1000, 400 steps each
    python -m experiments.long_range --smoke    # seconds, for tests
    python -m experiments.long_range --train.num-epochs 20 --method parallel

Expected (default config; measured with the experiment's earlier stand-alone loop,
which drew the batches differently, on a 2-core CPU shared with other jobs, load
average ~8): minGRU test MSE 0.0132 (accuracy 0.297) after 400 steps, 179 s
(448 ms/step); the LSTM stays at the baseline, test MSE 0.1731 (accuracy 0.066),
86 s. The minGRU starts to learn after ~250 steps. Two minGRU layers cost about
twice one LSTM layer of the same parameter count per step. Seeded: the numbers
repeat exactly.
"""

from __future__ import annotations

if not __package__:  # run as `python experiments/long_range.py`
    import _repo_root  # noqa: F401

import dataclasses
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxseq as js
from experiments import config as configs
from experiments import harness
from jaxseq import cells, metrics, parallel_cells, recurrence
from jaxseq.methods import Method

NAME = "long_range"
TOLERANCE = 0.04  # |prediction - target| below this counts as correct
BASELINE_MSE = 1.0 / 6.0  # predicting the mean, 1.0
STREAM = 0xADD  # folded into the seed's key: the data's keys
TRAIN, DEV, TEST = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Config(configs.RunSwitches):
    train: configs.TrainConfig = configs.TrainConfig(
        batch_size=32, eval_batch_size=256, num_epochs=4, learning_rate=0.02, cosine=False,
        clip_norm=1.0, log_every=50,
    )  # fmt: skip
    max_len: int = 1000
    """T, the padded length (every batch is padded to it)."""
    min_len: int = 800
    """Shortest sequence; lengths are uniform on [min_len, max_len]."""
    epoch_size: int = 100
    """Generated training batches per epoch (dev is evaluated, a checkpoint written after each)."""
    mingru_hidden: int = 64
    mingru_layers: int = 2
    gate_bias: float = -7.0
    """Initial bias of minGRU's update gate z: sigmoid(-7) ~ 1e-3, a ~1000-step memory."""
    lstm_hidden: int = 45
    method: configs.MethodName = "default"
    """How the minGRU runs: ``scan``, ``parallel`` or ``default`` (the library's choice)."""
    dev_size: int = 256
    test_size: int = 1024


SMOKE = {
    "train": {"batch_size": 16, "eval_batch_size": 32, "num_epochs": 2, "learning_rate": 0.03,
              "log_every": 4, "progress": False},
    "max_len": 48, "min_len": 32, "epoch_size": 8, "mingru_hidden": 8, "mingru_layers": 1,
    "lstm_hidden": 6, "dev_size": 32, "test_size": 64,
}  # fmt: skip
FULL = {"train": {"num_epochs": 20, "log_every": 100}}


# ----------------------------------------------------------------------------- data


class Examples(NamedTuple):
    """A batch: row b is example ``index[b]`` of ``split[b]`` (False ``valid``: padding)."""

    split: np.ndarray
    index: np.ndarray
    valid: np.ndarray


def examples(split: int, first: int, size: int) -> Examples:
    """Examples ``first .. first + size - 1`` of ``split``."""
    index = np.arange(first, first + size, dtype=np.int32)
    return Examples(np.full(size, split, np.int32), index, np.ones(size, bool))


def make_example(key, max_len: int, min_len: int):
    """``xs [T, 2]`` (value, marker), int32 ``length`` and the float ``target``."""
    k_len, k_val, k_first, k_second = jax.random.split(key, 4)
    length = jax.random.randint(k_len, (), min_len, max_len + 1, dtype=jnp.int32)
    values_T = jax.random.uniform(k_val, (max_len,))
    half = length // 2
    first = jnp.floor(jax.random.uniform(k_first) * half.astype(jnp.float32))
    rest = (length - half).astype(jnp.float32)
    second = half + jnp.floor(jax.random.uniform(k_second) * rest).astype(jnp.int32)
    t_T = jnp.arange(max_len, dtype=jnp.int32)
    marked_T = (t_T == first.astype(jnp.int32)) | (t_T == second)
    xs_T2 = jnp.stack([values_T, marked_T.astype(jnp.float32)], axis=-1)
    return xs_T2, length, jnp.sum(jnp.where(marked_T, values_T, 0.0))


def generate(batch: Examples, config: Config):
    """``xs [B, T, 2]``, int32 ``lengths [B]``, ``targets [B]`` of a batch's examples."""
    stream = jax.random.fold_in(jax.random.key(config.train.seed), STREAM)

    def one(split, index):
        key = jax.random.fold_in(jax.random.fold_in(stream, split), index)
        return make_example(key, config.max_len, config.min_len)

    return jax.vmap(one)(batch.split, batch.index)


# ----------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    cell: cells.Cell
    num_layers: int
    method: Method | None
    gate_bias: float | None = None
    """minGRU: the initial bias of the update gate (the first H entries of ``b``)."""

    def __post_init__(self):
        js.resolve_method(self.cell, self.method)  # a method the cell cannot run: now

    def init(self, key) -> dict:
        key_rnn, key_out = jax.random.split(key)
        layers = recurrence.init_stack(key_rnn, self.cell, 2, num_layers=self.num_layers)
        size = self.cell.hidden_size
        if self.gate_bias is not None:
            layers = [{**p, "b": p["b"].at[:size].set(self.gate_bias)} for p in layers]
        w = jax.random.normal(key_out, (size,)) / math.sqrt(size)
        return {"rnn": layers, "w": w, "c": jnp.zeros(())}

    def predict(self, params, xs_BTD, lengths_B):
        finals, _ = recurrence.stack(
            self.cell, params["rnn"], xs_BTD, lengths_B, method=self.method
        )
        h_BH = jax.vmap(self.cell.output)(finals[-1])
        return h_BH @ params["w"] + params["c"]

    def loss_fn(self, config: Config):
        """The harness's loss hook: the MSE over the batch, and ``accuracy``."""

        def loss_fn(params, batch: Examples, key, is_training):
            xs_BT2, lengths_B, targets_B = generate(batch, config)
            err_B = self.predict(params, xs_BT2, lengths_B) - targets_B
            count = jnp.sum(batch.valid, dtype=jnp.float32)
            correct = jnp.sum(batch.valid & (jnp.abs(err_B) < TOLERANCE), dtype=jnp.float32)
            total = jnp.sum(jnp.where(batch.valid, jnp.square(err_B), 0.0))
            return js.LossTerms(total, count), {"accuracy": metrics.Ratio(correct, count)}

        return loss_fn


def make_models(config: Config) -> list[Model]:
    mingru = parallel_cells.mingru(config.mingru_hidden)
    return [
        Model("mingru", mingru, config.mingru_layers, configs.method_of(config.method),
              gate_bias=config.gate_bias),
        Model("lstm", cells.lstm(config.lstm_hidden), 1, None),
    ]  # fmt: skip


def count_params(params) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def task_of(model: Model, config: Config) -> harness.Task:
    tc = config.train

    def train_batches(epoch: int) -> list[Examples]:
        start = epoch * config.epoch_size
        return [examples(TRAIN, (start + i) * tc.batch_size, tc.batch_size)
                for i in range(config.epoch_size)]  # fmt: skip

    def eval_set(split: int, size: int):
        size_of = lambda first: min(tc.eval_batch_size, size - first)
        return lambda: [examples(split, f, size_of(f)) for f in range(0, size, tc.eval_batch_size)]

    params = jax.eval_shape(model.init, jax.random.key(0))
    return harness.Task(
        init=model.init,
        loss_fn=model.loss_fn(config),
        train_batches=train_batches,
        steps_per_epoch=config.epoch_size,
        eval_sets={"dev": eval_set(DEV, config.dev_size), "test": eval_set(TEST, config.test_size)},
        resolved={
            "model": model.name,
            "params": count_params(params),
            "method": repr(model.method),
            "runs_as": repr(js.resolve_method(model.cell, model.method)),
        },
    )


# ----------------------------------------------------------------------------- run


def run(config: Config) -> harness.Result:
    out_dir = harness.run_dir(NAME, config)
    test, trained = {}, {}
    for model in make_models(config):
        task, model_timer = task_of(model, config), harness.Timer()
        trained[model.name] = harness.train_and_evaluate(
            config, task, name=f"{NAME}/{model.name}", out_dir=os.path.join(out_dir, model.name)
        )
        test[f"{model.name}_mse"] = trained[model.name].test["loss"]
        test[f"{model.name}_accuracy"] = trained[model.name].test["accuracy"]
        test[f"{model.name}_params"] = task.resolved["params"]
        test[f"{model.name}_seconds"] = model_timer.elapsed()[0]
    return harness.report(
        trained["mingru"],
        name=NAME,
        metric="mingru_mse",
        label="test MSE (minGRU)",
        baseline=BASELINE_MSE,
        higher_is_better=False,
        test=test,
        out_dir=out_dir,
    )


def describe(result: harness.Result) -> str:
    lines = [
        f"{NAME}: baseline (predict 1.0) MSE {result.baseline:.4f}",
        "| model | params | test MSE | test accuracy | time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("mingru", "lstm"):
        t = result.test
        lines.append(
            f"| {name} | {t[f'{name}_params']} | {t[f'{name}_mse']:.4f} | "
            f"{t[f'{name}_accuracy']:.3f} | {t[f'{name}_seconds']:.1f} |"
        )
    return "\n".join(lines)


EXPERIMENT = harness.Experiment(
    NAME, Config, run, SMOKE, FULL, description=__doc__, describe=describe
)

if __name__ == "__main__":
    EXPERIMENT.main()
