"""Parallel (associative scan) vs sequential (``lax.scan``) evaluation: train-step time.

The task: a train step (forward + backward, gradients w.r.t. every parameter; no
optimizer update) of ``dense features [B, T, D] -> one-layer RNN (H) -> per-step
linear readout -> masked MSE``, on a batch padded to T with lengths drawn
uniformly from ``[T/2, T]`` (one sequence has length T). Each parallel cell
(minGRU and minLSTM in log space, the LRU) runs the same jitted step with
``method=jaxseq.Scan()`` (the sequential loop) and ``method=jaxseq.Parallel()``
(the associative scan); an LSTM (``Scan()``) is timed beside them for scale.

Timing: every function is compiled and run once before timing; then the
repeats are interleaved (sequential, parallel, LSTM, in an order rotated each
repeat) in one process, so load from other processes hits them alike; we
report medians and the ratio ``sequential / parallel`` (> 1: parallel is
faster) of the medians.

Command::

    python -m benchmarks.parallel_scan                      # T in 256, 1024, 4096
    python -m benchmarks.parallel_scan --steps 256 --repeats 3 --cells mingru
    python -m benchmarks.parallel_scan --append             # add rows to RESULTS_parallel.md

On a GPU the same command runs there (``jax.default_backend()``); a larger
batch (``--batch 64``) is closer to real use.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import cells, masks, parallel_cells, recurrence
from jaxseq.methods import Parallel, Scan

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS_parallel.md")
CELLS = {
    "mingru": parallel_cells.mingru,
    "minlstm": parallel_cells.minlstm,
    "lru": parallel_cells.lru,
}


def make_data(batch: int, steps: int, features: int, seed: int = 0):
    """numpy float32 ``xs [B, T, D]``, ``targets [B, T]`` and int32 ``lengths [B]``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(steps // 2, steps + 1, size=batch).astype(np.int32)
    lengths[0] = steps
    xs = rng.standard_normal((batch, steps, features)).astype(np.float32)
    targets = rng.standard_normal((batch, steps)).astype(np.float32)
    return xs, targets, lengths


def make_train_step(cell: cells.Cell, method):
    """jitted ``(params, xs, targets, lengths) -> (loss, grads)``."""

    def loss_fn(params, xs_BTD, targets_BT, lengths_B):
        _, hs_BTH = recurrence.rnn(cell, params["rnn"], xs_BTD, lengths_B, method=method)
        pred_BT = jnp.tensordot(hs_BTH, params["w"], axes=1)
        mask_BT = masks.length_mask(lengths_B, xs_BTD.shape[1])
        err_BT = jnp.where(mask_BT, pred_BT - targets_BT, jnp.zeros((), pred_BT.dtype))
        return jnp.sum(err_BT**2) / jnp.sum(mask_BT).astype(pred_BT.dtype)

    return jax.jit(jax.value_and_grad(loss_fn))


def make_params(cell: cells.Cell, features: int, seed: int = 0) -> dict:
    key_rnn, key_w = jax.random.split(jax.random.key(seed))
    return {
        "rnn": cell.init(key_rnn, features),
        "w": jax.random.normal(key_w, (cell.hidden_size,)) / np.sqrt(cell.hidden_size),
    }


def _time_once(fn, args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def bench_steps(args, steps: int) -> list[dict]:
    xs, targets, lengths = make_data(args.batch, steps, args.features)
    data = tuple(jax.device_put(a) for a in (xs, targets, lengths))
    runs = {}  # label -> (fn, args)
    for name in args.cells:
        cell = CELLS[name](args.hidden)
        params = make_params(cell, args.features)
        for mode, method in (("sequential", Scan()), ("parallel", Parallel())):
            runs[(name, mode)] = (make_train_step(cell, method), (params,) + data)
    if args.lstm:
        cell = cells.lstm(args.hidden)
        runs[("lstm", "sequential")] = (
            make_train_step(cell, Scan()),
            (make_params(cell, args.features),) + data,
        )
    for fn, fn_args in runs.values():  # compile + one warm run
        jax.block_until_ready(fn(*fn_args))
        _time_once(fn, fn_args)
    times = {label: [] for label in runs}
    labels = list(runs)
    for r in range(args.repeats):
        rotated = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in rotated:
            times[label].append(_time_once(*runs[label]))
    medians = {label: statistics.median(t) for label, t in times.items()}
    rows = []
    for name in args.cells:
        seq, par = medians[(name, "sequential")], medians[(name, "parallel")]
        row = dict(cell=name, steps=steps, seq_ms=1e3 * seq, par_ms=1e3 * par, ratio=seq / par)
        if args.lstm:
            row["lstm_ms"] = 1e3 * medians[("lstm", "sequential")]
        rows.append(row)
        print(
            f"T={steps:5d} {name:8s} sequential {row['seq_ms']:9.1f} ms  parallel "
            f"{row['par_ms']:8.1f} ms  seq/par {row['ratio']:6.2f}x"
            + (f"  (lstm {row['lstm_ms']:.1f} ms)" if args.lstm else ""),
            flush=True,
        )
    return rows


def machine() -> str:
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", str(device))
    cores = len(os.sched_getaffinity(0))
    return f"{jax.default_backend()} ({kind}), {cores} cores visible, {platform.machine()}"


def table(rows: list[dict], args, note: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### {when}: {machine()}, jax {jax.__version__}",
        "",
        f"Train step (fwd + bwd), B={args.batch} D={args.features} H={args.hidden}, lengths "
        f"in [T/2, T], median of {args.repeats} interleaved repeats. {note}".rstrip(),
        "",
        "| cell | T | sequential (ms) | parallel (ms) | sequential / parallel | LSTM seq. (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lstm = f"{row['lstm_ms']:.1f}" if "lstm_ms" in row else "-"
        lines.append(
            f"| {row['cell']} | {row['steps']} | {row['seq_ms']:.1f} | {row['par_ms']:.1f} | "
            f"{row['ratio']:.2f}x | {lstm} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--cells", nargs="+", choices=sorted(CELLS), default=list(CELLS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-lstm", dest="lstm", action="store_false", help="skip the LSTM row")
    parser.add_argument("--append", action="store_true", help=f"append the table to {RESULTS}")
    parser.add_argument("--note", default="", help="a remark for the table (e.g. shared machine)")
    args = parser.parse_args(argv)
    print(machine(), flush=True)
    rows = []
    for steps in args.steps:
        rows.extend(bench_steps(args, steps))
    text = table(rows, args, args.note)
    print("\n" + text)
    if args.append:
        header = "" if os.path.exists(RESULTS) else "# Parallel vs sequential scan\n\n"
        with open(RESULTS, "a") as f:
            f.write(header + text + "\n")
    return rows


if __name__ == "__main__":
    main()
