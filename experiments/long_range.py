"""The adding problem with T = 1000: a parallel-in-time cell (minGRU) against an LSTM.

The task (Hochreiter & Schmidhuber 1997; Le et al. 2015): each sequence has a
length L drawn from ``[min_len, T]`` and two input channels, a value uniform on
[0, 1] and a marker that is 1 at exactly two steps, one in the first half of
the sequence and one in the second; the target is the sum of the two marked
values, read from the final state (the carry after step L - 1). Predicting the
mean (1.0) gives MSE 1/6 ~ 0.167; a prediction counts as correct when it is
within 0.04 of the target. The data are generated on the fly from the seed
(``fold_in(key, step)``), the test set from a separate key.

Models, about 8.7 k parameters each: two stacked minGRU layers (H=64, log-space
formulation, update-gate bias initialised to ``gate_bias`` so that the state
starts out remembering over ~1000 steps) and one LSTM layer (H=45, forget-gate
bias 1), each with a linear readout; Adam (learning rate 0.02, batch 32) with
global-norm clipping 1.0, the same number of steps and batches for both. The
minGRU runs with ``--mode`` (``auto``: the associative scan on GPU/TPU,
``lax.scan`` on CPU, where that is faster).

Command::

    python -m experiments.long_range            # default: T = 1000, 400 steps each
    python -m experiments.long_range --smoke    # seconds, for tests
    python -m experiments.long_range --train-steps 2000 --mode parallel

Expected (default config, measured on a 2-core CPU shared with other jobs, load
average ~8): minGRU test MSE 0.0132 (accuracy 0.297) after 400 steps, 179 s
(448 ms/step); the LSTM stays at the baseline, test MSE 0.1731 (accuracy
0.066), 86 s (215 ms/step). The minGRU starts to learn after ~250 steps. On
this CPU "auto" runs the minGRU sequentially (faster here, see
``benchmarks/RESULTS_parallel.md``); two minGRU layers cost about twice one
LSTM layer of the same parameter count per step. Seeded: the numbers repeat
exactly. ``result.json`` and ``metrics.jsonl`` are in ``runs/long_range/default/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import common
from jaxseq import cells, parallel_cells, recurrence

NAME = "long_range"
TOLERANCE = 0.04  # |prediction - target| below this counts as correct


@dataclasses.dataclass(frozen=True)
class Config:
    max_len: int = 1000
    """T, the padded length (every batch is padded to it)."""
    min_len: int = 800
    """Shortest sequence; lengths are uniform on [min_len, max_len]."""
    batch_size: int = 32
    train_steps: int = 400
    learning_rate: float = 0.02
    clip_norm: float = 1.0
    mingru_hidden: int = 64
    mingru_layers: int = 2
    gate_bias: float = -7.0
    """Initial bias of minGRU's update gate z: sigmoid(-7) ~ 1e-3, a ~1000-step memory."""
    lstm_hidden: int = 45
    mode: Literal["auto", "sequential", "parallel"] = "auto"
    """The minGRU's evaluation mode (see ``jaxseq.recurrence``)."""
    test_size: int = 1024
    log_every: int = 50
    seed: int = 0
    smoke: bool = False
    """Shrink the run to seconds (short sequences, tiny models, few steps)."""
    full: bool = False
    """Longer training (2000 steps each)."""
    out_dir: str | None = None
    """Run folder (default ``runs/long_range/<smoke|full|default>``)."""


SMOKE = dict(
    max_len=48,
    min_len=32,
    batch_size=16,
    train_steps=16,
    learning_rate=0.03,
    mingru_hidden=8,
    mingru_layers=1,
    lstm_hidden=6,
    test_size=64,
    log_every=4,
)
FULL = dict(train_steps=2000, log_every=100)


# ----------------------------------------------------------------------------- data


def make_batch(key, batch: int, max_len: int, min_len: int):
    """``xs [B, T, 2]`` (value, marker), int32 ``lengths [B]``, ``targets [B]``."""
    k_len, k_val, k_first, k_second = jax.random.split(key, 4)
    lengths_B = jax.random.randint(k_len, (batch,), min_len, max_len + 1)
    values_BT = jax.random.uniform(k_val, (batch, max_len))
    half_B = lengths_B // 2
    first_B = jnp.floor(jax.random.uniform(k_first, (batch,)) * half_B.astype(jnp.float32))
    rest_B = (lengths_B - half_B).astype(jnp.float32)
    second_B = half_B + jnp.floor(jax.random.uniform(k_second, (batch,)) * rest_B).astype(jnp.int32)
    t_1T = jnp.arange(max_len)[None, :]
    marked_BT = (t_1T == first_B.astype(jnp.int32)[:, None]) | (t_1T == second_B[:, None])
    xs_BT2 = jnp.stack([values_BT, marked_BT.astype(jnp.float32)], axis=-1)
    targets_B = jnp.sum(jnp.where(marked_BT, values_BT, 0.0), axis=1)
    return xs_BT2, lengths_B.astype(jnp.int32), targets_B


# ----------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    cell: cells.Cell
    num_layers: int
    mode: str

    def init(self, key, config: Config) -> dict:
        key_rnn, key_out = jax.random.split(key)
        layers = recurrence.init_stack(key_rnn, self.cell, 2, num_layers=self.num_layers)
        if self.name == "mingru":
            size = self.cell.hidden_size  # the update gate's block of b is b[:H]
            layers = [{**p, "b": p["b"].at[:size].set(config.gate_bias)} for p in layers]
        w = jax.random.normal(key_out, (self.cell.hidden_size,)) / np.sqrt(self.cell.hidden_size)
        return {"rnn": layers, "w": w, "c": jnp.zeros(())}

    def predict(self, params, xs_BTD, lengths_B):
        finals, _ = recurrence.stack(self.cell, params["rnn"], xs_BTD, lengths_B, mode=self.mode)
        h_BH = jax.vmap(self.cell.output)(finals[-1])
        return h_BH @ params["w"] + params["c"]


def make_models(config: Config) -> list[Model]:
    mingru = parallel_cells.mingru(config.mingru_hidden)
    mode = recurrence.resolve_mode(mingru, config.mode)
    return [
        Model("mingru", mingru, config.mingru_layers, mode),
        Model("lstm", cells.lstm(config.lstm_hidden), 1, "sequential"),
    ]


def count_params(params) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------- training


def train_one(model: Model, config: Config, log) -> dict:
    optimizer = optax.chain(
        optax.clip_by_global_norm(config.clip_norm), optax.adam(config.learning_rate)
    )
    key_init, key_data, key_test = jax.random.split(jax.random.key(config.seed), 3)
    params = model.init(key_init, config)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)

    def loss_fn(params, xs, lengths, targets):
        return jnp.mean((model.predict(params, xs, lengths) - targets) ** 2)

    @jax.jit
    def train_step(params, opt_state, step):
        xs, lengths, targets = make_batch(
            jax.random.fold_in(key_data, step), config.batch_size, config.max_len, config.min_len
        )
        loss, grads = jax.value_and_grad(loss_fn)(params, xs, lengths, targets)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes float and int32
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def evaluate(params):
        xs, lengths, targets = make_batch(
            key_test, config.test_size, config.max_len, config.min_len
        )
        err = model.predict(params, xs, lengths) - targets
        return jnp.mean(err**2), jnp.mean((jnp.abs(err) < TOLERANCE).astype(jnp.float32))

    start = time.perf_counter()
    compiled = train_step.lower(params, opt_state, 0).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    losses = []
    pending = None  # the loss is read one step late, so dispatch stays asynchronous
    for step in range(config.train_steps):
        params, opt_state, loss = compiled(params, opt_state, step)
        if pending is not None:
            losses.append(float(pending))
            if len(losses) % config.log_every == 0 or len(losses) == 1:
                log({"model": model.name, "step": len(losses), "loss": losses[-1]})
            if not np.isfinite(losses[-1]):
                raise FloatingPointError(f"{model.name}: loss {losses[-1]} at step {len(losses)}")
        pending = loss
    losses.append(float(pending))
    train_seconds = time.perf_counter() - start
    test_mse, test_accuracy = (float(v) for v in evaluate(params))
    window = max(1, min(20, len(losses) // 4))
    result = {
        "model": model.name,
        "mode": model.mode,
        "params": count_params(params),
        "test_mse": test_mse,
        "test_accuracy": test_accuracy,
        "first_loss": float(np.mean(losses[:window])),
        "final_loss": float(np.mean(losses[-window:])),
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / config.train_steps,
        "compile_seconds": compile_seconds,
    }
    log({"model": model.name, "split": "test", **result})
    return result


def main(argv=None) -> list[dict]:
    config = common.parse(
        Config, argv, smoke_overrides=SMOKE, full_overrides=FULL, description=__doc__
    )
    out_dir = common.run_dir(NAME, config)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({"experiment": NAME, "config": dataclasses.asdict(config)}, f, indent=2)
    metrics = open(os.path.join(out_dir, "metrics.jsonl"), "w")

    def log(record):
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        if "split" in record:
            print(
                f"{record['model']:7s} ({record['mode']}, {record['params']} params): test MSE "
                f"{record['test_mse']:.4f}, accuracy {record['test_accuracy']:.3f}, "
                f"{record['train_seconds']:.1f} s ({1e3 * record['seconds_per_step']:.0f} ms/step)",
                flush=True,
            )
        else:
            print(f"{record['model']:7s} step {record['step']:5d} loss {record['loss']:.4f}")

    try:
        results = [train_one(model, config, log) for model in make_models(config)]
    finally:
        metrics.close()
    baseline = 1.0 / 6.0
    summary = {"experiment": NAME, "baseline_mse": baseline, "results": results}
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nbaseline (predict 1.0): MSE {baseline:.4f}")
    print("| model | mode | params | test MSE | test accuracy | train time (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['model']} | {r['mode']} | {r['params']} | {r['test_mse']:.4f} | "
            f"{r['test_accuracy']:.3f} | {r['train_seconds']:.1f} |"
        )
    return results


if __name__ == "__main__":
    main()
