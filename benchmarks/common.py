"""Shared pieces of the benchmarks: thread pinning, the task, its data and weights, timing.

The task (issue 8): a train step is forward + backward + Adam update of
``embedding(V=1000 -> E=128) -> one-layer RNN (H) -> dense(C=50) -> per-step
masked cross-entropy`` (mean over the valid tokens), on a batch of B token
sequences padded to T with lengths drawn uniformly from ``[T/2, T]``.

Notation: B batch, T time, V vocabulary, E embedding width, H hidden, G
projected width (H, 3H or 4H), C classes.

Import this module before numpy, torch or jax: :func:`pin_threads` must run
before their thread pools start.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

VOCAB, EMBED, CLASSES = 1000, 128, 50
CELLS = ("elman", "gru", "lstm")
CELL_TITLES = {"elman": "tanh RNN", "gru": "GRU", "lstm": "LSTM"}
GATES = {"elman": 1, "gru": 3, "lstm": 4}


def pin_threads(threads: int) -> list[int]:
    """Run this process (numpy, torch, XLA) on ``threads`` cores: CPU affinity + BLAS env."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > threads:
        os.sched_setaffinity(0, cpus[:threads])
    return sorted(os.sched_getaffinity(0))


class Shape(NamedTuple):
    batch: int
    steps: int
    hidden: int

    def __str__(self) -> str:
        return f"B={self.batch} T={self.steps} H={self.hidden}"


SMALL = Shape(32, 128, 256)
LARGE = Shape(64, 512, 512)


class Batch(NamedTuple):
    """numpy arrays: ``ids [B, T]`` int32 (random at padded steps too), ``labels [B, T]``
    int32, ``lengths [B]`` int32 in ``[T/2, T]`` (one sequence has length T)."""

    ids: object
    labels: object
    lengths: object


def make_batch(shape: Shape, seed: int = 0) -> Batch:
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(shape.steps // 2, shape.steps + 1, size=shape.batch).astype(np.int32)
    lengths[0] = shape.steps  # the padded length is reached, as a bucketed batch would
    ids = rng.integers(0, VOCAB, size=(shape.batch, shape.steps)).astype(np.int32)
    labels = rng.integers(0, CLASSES, size=(shape.batch, shape.steps)).astype(np.int32)
    return Batch(ids, labels, lengths)


def make_weights(cell_name: str, shape: Shape, seed: int = 0) -> dict:
    """The model's weights as numpy float32 in jaxseq's layout (row vectors, ``x @ W``).

    ``{"embed": [V, E], "rnn": <jaxseq cell params>, "V": [H, C], "c": [C]}``; the RNN
    weights are the jaxseq cell's init, with small random biases (so that every bias
    path is exercised by the equivalence check).
    """
    import jax
    import numpy as np

    from jaxseq import cells

    cell = {"elman": cells.elman, "gru": cells.gru, "lstm": cells.lstm}[cell_name](shape.hidden)
    rng = np.random.default_rng(seed + 1)
    rnn = {k: np.asarray(v) for k, v in cell.init(jax.random.key(seed), EMBED).items()}
    for name in rnn:
        if name.startswith("b"):
            rnn[name] = (0.1 * rng.standard_normal(rnn[name].shape)).astype(np.float32)
    return {
        "embed": rng.standard_normal((VOCAB, EMBED)).astype(np.float32),
        "rnn": rnn,
        "V": (rng.standard_normal((shape.hidden, CLASSES)) / np.sqrt(shape.hidden)).astype(
            np.float32
        ),
        "c": np.zeros((CLASSES,), np.float32),
    }


def flops_per_position(cell_name: str, hidden: int, *, train: bool) -> float:
    """Matmul FLOPs per (padded) position: RNN input and recurrent matmuls + output layer.

    Backward is counted as twice the forward (one matmul for the input gradient, one for
    the weight gradient); elementwise work, the embedding and the optimizer are not counted.
    """
    width = GATES[cell_name] * hidden
    forward = 2.0 * (EMBED * width + hidden * width) + 2.0 * hidden * CLASSES
    return 3.0 * forward if train else forward


def matmul_peak_gflops(device: str = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """The best float32 ``[size, size] @ [size, size]`` rate: numpy on CPU, jax on GPU."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    if device == "cpu":
        matmul = lambda: a @ b
    else:
        import jax
        import jax.numpy as jnp

        a_dev, b_dev = jnp.asarray(a), jnp.asarray(b)
        f = jax.jit(lambda x, y: jnp.matmul(x, y, precision="highest"))
        f(a_dev, b_dev).block_until_ready()
        matmul = lambda: f(a_dev, b_dev).block_until_ready()
    matmul()
    best = min(timed(matmul) for _ in range(repeats))
    return 2.0 * size**3 / best / 1e9


def timed(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


class Stats(NamedTuple):
    median: float
    low: float
    high: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples) -> Stats:
        samples = tuple(samples)
        return cls(statistics.median(samples), min(samples), max(samples), samples)


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Time each function ``repeats`` times, interleaved, after ``warmup`` untimed rounds;
    returns name -> :class:`Stats` (seconds per call).

    Round r runs the functions in the order rotated by r (A B C, B C A, C A B, ...), so
    no function always runs right after the same other one: PyTorch's OpenMP threads
    keep spinning for a while after a call, and measured 5-7% slower steps for
    whatever ran next when the order was fixed.

    ``clock=time.process_time`` measures the CPU time of the whole process instead of
    wall time: on a machine shared with other jobs, with one thread, it is far less
    noisy (it counts the work, not the waiting), so it suits A/B runs during development.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(timed(fns[name], clock))
    return {name: Stats.of(values) for name, values in samples.items()}


def machine() -> dict:
    """Where the run happened: CPU model, cores in use, OS, Python."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores_used": len(os.sched_getaffinity(0)),
        "cores_total": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
