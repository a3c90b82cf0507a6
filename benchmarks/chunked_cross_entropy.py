"""Chunked linear cross-entropy vs the plain path vs PyTorch: memory and time, fwd + bwd.

The task: ``N`` tokens with hidden states ``[N, H]``, an output layer ``[H, C]``,
integer labels with about 10% of tokens masked; the masked mean cross-entropy
and its gradients w.r.t. hidden and weight.

* ``plain``: ``hidden @ W`` materialised, ``optax.softmax_cross_entropy_with_integer_labels``,
  masked mean (what most JAX code does).
* ``chunked``: ``jaxseq.linear_cross_entropy`` with its recomputing backward pass.
* ``chunked_fused``: the same with ``grad_in_forward=True`` (training only).
* ``torch``: ``F.linear`` + ``F.cross_entropy(ignore_index=-100)``, ``backward()``.

Measured: the compiled temporary memory (XLA's ``memory_analysis``, JAX only);
the increase of the process's peak RSS over its RSS just before one fwd+bwd
(each implementation in a fresh subprocess: inputs made and the step compiled
ahead of time, the peak reset through ``/proc/self/clear_refs``, then the first
call); and the median wall time over
``--repeats`` runs, the implementations interleaved in one process so that
load from other processes hits them alike.

Command::

    python -m benchmarks.chunked_cross_entropy                     # 8192 x 512 x 32768
    python -m benchmarks.chunked_cross_entropy --tokens 2048 --classes 8192 --repeats 3
    python -m benchmarks.chunked_cross_entropy --append            # add rows to RESULTS_chunked.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

IMPLS = ("plain", "chunked", "chunked_fused", "torch")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS_chunked.md")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _data(n, h, c, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, h)).astype(np.float32)
    weight = (rng.normal(size=(h, c)) / np.sqrt(h)).astype(np.float32)
    labels = rng.integers(0, c, size=n).astype(np.int32)
    mask = rng.random(n) < 0.9
    return hidden, weight, labels, mask


def _jax_step(impl: str, hidden, weight, labels, mask):
    """A compiled ``(hidden, weight) -> (loss, (d hidden, d weight))`` and its temp bytes."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxseq.chunked import linear_cross_entropy

    if impl == "plain":

        def loss_fn(h, w):
            logits = h @ w
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.sum(mask.astype(jnp.float32))
    else:

        def loss_fn(h, w):
            return linear_cross_entropy(
                h,
                w,
                labels,
                where=mask,
                reduction="mean_over_tokens",
                grad_in_forward=impl == "chunked_fused",
            )

    compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(hidden, weight).compile()
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else int(analysis.temp_size_in_bytes)

    def run():
        value, grads = compiled(hidden, weight)
        jax.block_until_ready(grads)
        return float(value)

    return run, temp


def _torch_step(hidden, weight, labels, mask):
    import numpy as np
    import torch
    import torch.nn.functional as F

    h = torch.tensor(hidden, requires_grad=True)
    w_t = torch.tensor(np.ascontiguousarray(weight.T), requires_grad=True)  # [C, H] as F.linear
    y = torch.tensor(np.where(mask, labels, -100), dtype=torch.long)

    def run():
        h.grad = None
        w_t.grad = None
        loss = F.cross_entropy(F.linear(h, w_t), y, ignore_index=-100)
        loss.backward()
        return float(loss.detach())

    return run, None


def make_step(impl: str, n: int, h: int, c: int):
    hidden, weight, labels, mask = _data(n, h, c)
    if impl == "torch":
        return _torch_step(hidden, weight, labels, mask)
    import jax.numpy as jnp

    args = [jnp.asarray(x) for x in (hidden, weight, labels, mask)]
    return _jax_step(impl, *args)


def measure_rss(impl: str, n: int, h: int, c: int) -> dict:
    """In this (fresh) process: the peak RSS increase of the first fwd+bwd after compiling.

    The first call, not a later one: freed memory the allocator keeps would hide
    part of a later call's needs.
    """
    run, temp = make_step(impl, n, h, c)  # inputs made, JAX steps compiled ahead of time
    import gc

    gc.collect()
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    value = run()
    peak = _rss_kib("VmHWM")
    return {"impl": impl, "rss_increase_mib": (peak - before) / 1024, "temp": temp, "loss": value}


def rss_in_subprocess(impl: str, n: int, h: int, c: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.chunked_cross_entropy", "--rss-only", impl,
           "--tokens", str(n), "--hidden", str(h), "--classes", str(c)]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(xs):
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--classes", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--append", action="store_true", help=f"append rows to {RESULTS}")
    parser.add_argument("--note", default="", help="appended to the rows (e.g. machine load)")
    parser.add_argument("--rss-only", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n, h, c = args.tokens, args.hidden, args.classes
    if args.rss_only:
        print(json.dumps(measure_rss(args.rss_only, n, h, c)))
        return
    impls = [i for i in args.impls.split(",") if i]

    memory = {impl: rss_in_subprocess(impl, n, h, c) for impl in impls}
    steps = {impl: make_step(impl, n, h, c) for impl in impls}
    losses = {impl: step[0]() for impl, step in steps.items()}  # warm-up (compiles)
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(args.repeats):
        for impl in impls:  # interleaved: A B C D A B C D ...
            start = time.perf_counter()
            steps[impl][0]()
            times[impl].append(time.perf_counter() - start)

    base = "plain" if "plain" in impls else impls[0]
    rows = []
    for impl in impls:
        temp = steps[impl][1]
        rows.append({
            "impl": impl,
            "temp_mib": None if temp is None else temp / 2**20,
            "rss_mib": memory[impl]["rss_increase_mib"],
            "time_s": median(times[impl]),
            "loss": losses[impl],
        })  # fmt: skip
    ref = {r["impl"]: r for r in rows}[base]
    header = (
        f"{n} tokens x hidden {h} x {c} classes, fwd+bwd, median of {args.repeats} "
        f"(interleaved), {platform.machine()} {os.cpu_count()} cores"
    )
    print(header)
    lines = []
    for r in rows:
        temp_ratio = (
            "" if r["temp_mib"] is None or not ref["temp_mib"] else
            f"{r['temp_mib'] / ref['temp_mib']:.3f}"
        )  # fmt: skip
        temp = "n/a" if r["temp_mib"] is None else f"{r['temp_mib']:.1f}"
        lines.append(
            f"| {datetime.date.today()} | {n}x{h}x{c} | {r['impl']} | {temp} | {temp_ratio} | "
            f"{r['rss_mib']:.1f} | {r['rss_mib'] / ref['rss_mib']:.3f} | "
            f"{r['time_s']:.3f} | {r['time_s'] / ref['time_s']:.3f} | {r['loss']:.5f} | "
            f"{args.note} |"
        )
    table_header = (
        "| date | N x H x C | impl | compiled temp (MiB) | temp / plain | peak RSS increase "
        "(MiB) | RSS / plain | time (s, median) | time / plain | loss | note |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    print(table_header)
    print("\n".join(lines))
    if args.append:
        new = not os.path.exists(RESULTS)
        with open(RESULTS, "a") as f:
            if new:
                f.write(
                    "# Chunked linear cross-entropy: memory and time\n\n"
                    "Written by `python -m benchmarks.chunked_cross_entropy --append`; "
                    "see its docstring for what is measured.\n\n" + table_header + "\n"
                )
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
