"""Linear-chain CRF loss + gradient: jaxseq (sequential, parallel) vs pytorch-crf, one run.

The task: one training step of a CRF layer, the loss and its gradients w.r.t. the
emissions and every CRF parameter (transitions, start, end), on a batch of B
sequences padded to T with K tags; lengths uniform in ``[T/2, T]`` (one row has
length T), emissions standard normal, gold tags uniform in ``[0, K)``, CRF
parameters normal with standard deviation 0.5 (a trained-looking CRF: with
``crf_init``'s U(-0.1, 0.1) the transitions would hardly matter to the check).
Default shapes: ``small`` = B=32 T=128 K=17 and ``long`` = B=32 T=2048 K=17.

Implementations (the same numbers in, the same function out):

* ``jaxseq-sequential``: ``jax.jit(jax.value_and_grad(loss))`` with
  ``loss = jaxseq.crf_loss(emissions, tags, params, where=mask,
  reduction=R, method="sequential")`` (``lax.scan``), gradients w.r.t.
  ``emissions`` and ``params``; compiled ahead of time.
* ``jaxseq-parallel``: the same with ``method="parallel"``
  (``lax.associative_scan``: O(log T) depth, O(T K^3) work).
* ``pytorch-crf``: ``torchcrf.CRF(K, batch_first=True)`` (0.7.2) with the same
  parameters copied in, ``loss = -crf(emissions, tags, mask=mask, reduction=R')``
  and ``loss.backward()`` (gradients into ``emissions.grad`` and the CRF's
  parameters, reset to None before each step).

Reductions (``--reduction``), exactly equal when every row has a valid step
(torchcrf requires it; here every row has at least T/2): jaxseq's default
``sum_over_time`` (the mean over sequences of their NLL) is ``-crf(...,
reduction="mean")``; ``sum`` is ``-crf(..., reduction="sum")``;
``mean_over_tokens`` is ``-crf(..., reduction="token_mean")``.

Method:

1. Equivalence gate: before anything is timed, each implementation's loss and
   all four gradients (emissions, transitions, start, end) are compared with a
   float64 oracle, pytorch-crf itself run in float64 on the same data; a mismatch
   stops the run (a benchmark of different math is worthless). So the three timed
   float32 steps agree with each other to within twice the limits. Difference
   measure: for the loss ``|a - b| / |b|``; for a gradient ``max |a - b| / max |b|``
   (relative to its largest entry). Limits: 1e-4 for the loss, 1e-2 for the
   gradients: float32 forward-backward over T steps loses about T * eps of
   relative precision (at T=2048, pytorch-crf's float32 emission gradient is
   2e-3 off its float64 one, jaxseq's 2e-4), while a real difference in the math
   (a transposed transition matrix, another reduction, a dropped start or end
   score) is of order 1. ``--check-only`` runs this gate and times nothing.
2. Compile time (``jit(...).lower(...).compile()``) and XLA's compiled temp buffer
   size (``memory_analysis()``) are reported for the jax rows and are not part of
   the timed step; pytorch-crf is eager (nothing to compile; its memory is not
   measured).
3. The three steps are timed interleaved in one process, the order rotated each
   round (A B C, B C A, C A B, ...; ``benchmarks.common.interleaved``), one
   untimed warm-up round, then ``--repeats`` rounds; median, interquartile range,
   min and max of the wall time per step. "vs pytorch-crf" is pytorch-crf's median
   divided by the row's median (> 1: faster than pytorch-crf).
4. Threads: ``--threads N`` (default 2) pins the process to N cores (CPU
   affinity, OMP/MKL/OpenBLAS env) before jax and torch start. XLA:CPU sizes its
   intra-op thread pool from the cores the process may run on, so it uses N;
   torch gets ``torch.set_num_threads(N)``. Both libraries thus use N threads.
   On a GPU the jax rows run there and pytorch-crf runs on CUDA when this torch
   has it (on the CPU otherwise, which the header then says).

Run::

    python -m benchmarks.crf                        # small and long, 15 repeats
    python -m benchmarks.crf --write                # also write benchmarks/RESULTS_crf.md
    python -m benchmarks.crf --shapes 32x512x17 --repeats 5
    python -m benchmarks.crf --check-only           # the equivalence gate only

``--shapes`` takes names (``tiny``, ``small``, ``long``) or ``BxTxK``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from benchmarks import common

IMPLS = ("jaxseq-sequential", "jaxseq-parallel", "pytorch-crf")
REFERENCE = "pytorch-crf"
#: jaxseq's crf_loss reduction -> torchcrf's reduction (of the log-likelihood, negated).
TORCH_REDUCTIONS = {"sum_over_time": "mean", "sum": "sum", "mean_over_tokens": "token_mean"}
GRADS = ("d_emissions", "d_transitions", "d_start", "d_end")
#: Largest difference to the float64 oracle the gate lets through (see the module doc).
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-2
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS_crf.md")
CHECK_PASSED = "equivalence check passed"


class Shape(NamedTuple):
    batch: int
    steps: int
    tags: int

    def __str__(self) -> str:
        return f"B={self.batch} T={self.steps} K={self.tags}"


SHAPES = {"tiny": Shape(4, 8, 5), "small": Shape(32, 128, 17), "long": Shape(32, 2048, 17)}


def parse_shape(text: str) -> Shape:
    if text in SHAPES:
        return SHAPES[text]
    try:
        batch, steps, tags = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a shape is one of {', '.join(SHAPES)} or BxTxK (e.g. 32x128x17), got {text!r}"
        ) from None
    if min(batch, steps, tags) < 1:
        raise argparse.ArgumentTypeError(f"B, T and K must be >= 1, got {text!r}")
    return Shape(batch, steps, tags)


class Data(NamedTuple):
    """numpy: ``emissions [B, T, K]`` float32, ``tags [B, T]`` int32 in ``[0, K)`` (also
    at padded steps, which torchcrf indexes with), ``mask [B, T]`` bool prefix mask,
    ``params`` float32 ``{"transitions": [K, K], "start": [K], "end": [K]}``."""

    emissions: object
    tags: object
    mask: object
    params: dict


def make_data(shape: Shape, seed: int = 0) -> Data:
    import numpy as np

    rng = np.random.default_rng(seed)
    b, t, k = shape
    lengths = rng.integers(max(t // 2, 1), t + 1, size=b)
    lengths[0] = t
    mask = np.arange(t)[None, :] < lengths[:, None]
    emissions = rng.standard_normal((b, t, k)).astype(np.float32)
    tags = rng.integers(0, k, size=(b, t)).astype(np.int32)
    params = {
        name: (0.5 * rng.standard_normal(dims)).astype(np.float32)
        for name, dims in (("transitions", (k, k)), ("start", (k,)), ("end", (k,)))
    }
    return Data(emissions, tags, mask, params)


class Impl(NamedTuple):
    """``step()``: one loss + gradient step, returning once it is done (the timed call);
    ``result()``: one step's loss and gradients as numpy (``"loss"`` and ``GRADS``)."""

    step: Callable[[], object]
    result: Callable[[], dict]
    compile_s: float | None
    temp_bytes: int | None


def jaxseq_impl(method: str, data: Data, reduction: str) -> Impl:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxseq as js

    def loss_fn(emissions, params, tags, where):
        return js.crf_loss(emissions, tags, params, where=where, reduction=reduction, method=method)

    args = (
        jnp.asarray(data.emissions),
        {k: jnp.asarray(v) for k, v in data.params.items()},
        jnp.asarray(data.tags),
        jnp.asarray(data.mask),
    )
    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(*args).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else int(analysis.temp_size_in_bytes)

    def step():
        return jax.block_until_ready(compiled(*args))

    def result() -> dict:
        loss, (d_emissions, d_params) = step()
        out = {"loss": float(loss), "d_emissions": np.asarray(d_emissions)}
        out.update({f"d_{k}": np.asarray(v) for k, v in d_params.items()})
        return out

    return Impl(step, result, compile_s, temp)


def torch_impl(data: Data, reduction: str, device: str, dtype: str = "float32") -> Impl:
    import torch
    import torchcrf

    dtype = getattr(torch, dtype)
    crf = torchcrf.CRF(data.emissions.shape[-1], batch_first=True).to(device, dtype)
    with torch.no_grad():
        crf.transitions.copy_(torch.from_numpy(data.params["transitions"]))
        crf.start_transitions.copy_(torch.from_numpy(data.params["start"]))
        crf.end_transitions.copy_(torch.from_numpy(data.params["end"]))
    emissions = torch.tensor(data.emissions, dtype=dtype, device=device, requires_grad=True)
    tags = torch.tensor(data.tags, dtype=torch.long, device=device)
    mask = torch.tensor(data.mask, dtype=torch.bool, device=device)
    torch_reduction = TORCH_REDUCTIONS[reduction]
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None

    def step():
        emissions.grad = None
        crf.zero_grad(set_to_none=True)
        loss = -crf(emissions, tags, mask=mask, reduction=torch_reduction)
        loss.backward()
        sync()
        return loss

    def result() -> dict:
        loss = step()
        grads = {
            "d_emissions": emissions.grad,
            "d_transitions": crf.transitions.grad,
            "d_start": crf.start_transitions.grad,
            "d_end": crf.end_transitions.grad,
        }
        out = {k: v.detach().cpu().numpy() for k, v in grads.items()}
        out["loss"] = float(loss.detach().cpu())
        return out

    return Impl(step, result, None, None)


def differences(got: dict, want: dict) -> dict:
    """``{"loss": relative loss difference, "grads": largest gradient difference}``,
    each gradient's difference relative to its largest entry in ``want``."""
    import numpy as np

    loss = abs(got["loss"] - want["loss"]) / max(abs(want["loss"]), 1e-30)
    grads = 0.0
    for name in GRADS:
        a, b = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
        if a.shape != b.shape:
            raise SystemExit(f"{name}: shape {a.shape}, the oracle's {b.shape}")
        scale = max(float(np.max(np.abs(b))), 1e-30)
        grads = max(grads, float(np.max(np.abs(a - b))) / scale)
    return {"loss": loss, "grads": grads}


def check_equivalence(impls: dict, oracle: dict, shape: Shape) -> dict:
    """name -> :func:`differences` against ``oracle`` (pytorch-crf in float64, a
    ``result()``); stops the run on a mismatch."""
    import numpy as np

    out = {}
    for name, impl in impls.items():
        got = impl.result()
        if not all(np.all(np.isfinite(got[k])) for k in ("loss", *GRADS)):
            raise SystemExit(f"{shape}: {name} gives a non-finite loss or gradient")
        diff = differences(got, oracle)
        if diff["loss"] > LOSS_RTOL or diff["grads"] > GRAD_RTOL:
            raise SystemExit(
                f"{shape}: {name} computes a different function than the float64 oracle "
                f"(pytorch-crf in float64): loss {got['loss']!r} vs {oracle['loss']!r} "
                f"(relative difference {diff['loss']:.1e}, limit {LOSS_RTOL:.0e}); largest "
                f"gradient difference {diff['grads']:.1e} (limit {GRAD_RTOL:.0e})"
            )
        out[name] = diff
    return out


def quartiles(samples) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q3


def bench_shape(shape: Shape, args, torch_device: str) -> list[dict]:
    data = make_data(shape, args.seed)
    impls = {}
    for name in IMPLS:
        start = time.perf_counter()
        if name == REFERENCE:
            impls[name] = torch_impl(data, args.reduction, torch_device)
        else:
            impls[name] = jaxseq_impl(name.split("-")[1], data, args.reduction)
        print(f"  built {shape} {name} in {time.perf_counter() - start:.1f}s", flush=True)
    oracle = torch_impl(data, args.reduction, "cpu", "float64").result()
    diffs = check_equivalence(impls, oracle, shape)
    print(
        f"{shape}: {CHECK_PASSED} (float64 loss {oracle['loss']:.6g}; largest difference "
        "to it: "
        + ", ".join(f"{n} loss {d['loss']:.1e} grads {d['grads']:.1e}" for n, d in diffs.items())
        + ")",
        flush=True,
    )
    if args.check_only:
        return []
    stats = common.interleaved({n: impl.step for n, impl in impls.items()}, args.repeats)
    rows = []
    for name, stat in stats.items():
        q1, q3 = quartiles(stat.samples)
        rows.append(
            dict(
                shape=shape,
                impl=name,
                stats=stat,
                q1=q1,
                q3=q3,
                vs_torch=stats[REFERENCE].median / stat.median,
                compile_s=impls[name].compile_s,
                temp_bytes=impls[name].temp_bytes,
                loss_diff=diffs[name]["loss"],
                grad_diff=diffs[name]["grads"],
            )
        )
        print(format_row(rows[-1]), flush=True)
    return rows


TABLE_HEAD = (
    "| shape | implementation | median ms | IQR ms | min ms | max ms | vs pytorch-crf "
    "| compile s | XLA temp MiB | loss diff | grad diff |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(row: dict) -> str:
    s = row["stats"]
    compile_s = "-" if row["compile_s"] is None else f"{row['compile_s']:.2f}"
    temp = "-" if row["temp_bytes"] is None else f"{row['temp_bytes'] / 2**20:.1f}"
    return (
        f"| {row['shape']} | {row['impl']} | {s.median * 1e3:.2f} "
        f"| {row['q1'] * 1e3:.2f}-{row['q3'] * 1e3:.2f} | {s.low * 1e3:.2f} "
        f"| {s.high * 1e3:.2f} | **{row['vs_torch']:.2f}x** | {compile_s} | {temp} "
        f"| {row['loss_diff']:.1e} | {row['grad_diff']:.1e} |"
    )


def versions() -> dict:
    import jax
    import jaxlib
    import numpy
    import torch
    import torchcrf

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "torch": torch.__version__,
        "pytorch-crf": torchcrf.__version__,
        "numpy": numpy.__version__,
    }


def report(rows: list[dict], args, device: str, command: str, elapsed: float) -> str:
    machine = common.machine()
    lines = [
        "# Linear-chain CRF: loss + gradient, jaxseq vs pytorch-crf",
        "",
        f"Generated by `{command}` on "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')} in "
        f"{elapsed / 60:.1f} min. Do not edit by hand: rerun the command.",
        "",
        f"- device: {device}",
        f"- CPU: {machine['cpu']}; {machine['cores_used']} of {machine['cores_total']} cores "
        f"used; XLA and torch on {args.threads} threads (affinity-pinned; "
        "`torch.set_num_threads`)",
        f"- OS: {machine['os']}; Python {machine['python']}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- step: loss (`reduction={args.reduction!r}`, pytorch-crf "
        f"`-crf(..., reduction={TORCH_REDUCTIONS[args.reduction]!r})`) + gradients w.r.t. "
        "emissions, transitions, start and end; lengths uniform in [T/2, T]",
        f"- {args.repeats} interleaved timed rounds (order rotated each round) after one "
        "warm-up round; compile time excluded from the step and reported apart",
        *(["", f"> {args.note}", ""] if args.note else [""]),
        "vs pytorch-crf: pytorch-crf's median / this row's median (> 1: faster). IQR: the "
        "interquartile range of the step times. loss diff / grad diff: the equivalence gate "
        "run before timing, against pytorch-crf run in float64 on the same data (relative "
        "loss difference; largest gradient difference relative to the gradient's largest "
        f"entry), limits {LOSS_RTOL:.0e} / {GRAD_RTOL:.0e}.",
        "",
        TABLE_HEAD,
        *[format_row(r) for r in rows],
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes",
        type=lambda s: [parse_shape(x) for x in s.split(",") if x],
        default=[SHAPES["small"], SHAPES["long"]],
        help="comma-separated: tiny, small (B=32 T=128 K=17), long (B=32 T=2048 K=17) or "
        "BxTxK (default small,long)",
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="CPU cores/threads (default 2)")
    parser.add_argument("--reduction", choices=sorted(TORCH_REDUCTIONS), default="sum_over_time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--check-only", action="store_true", help="run the equivalence gate, time nothing"
    )
    parser.add_argument("--write", action="store_true", help="write the report to --out")
    parser.add_argument("--out", default=RESULTS, help="(default benchmarks/RESULTS_crf.md)")
    parser.add_argument("--note", default="", help="a remark on this run, put under the header")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m benchmarks.crf", *given])
    start = time.perf_counter()
    common.pin_threads(args.threads)  # before jax, torch and numpy start their thread pools
    import jax
    import torch

    backend = jax.default_backend()
    torch.set_num_threads(args.threads)
    if backend == "cpu":
        device, torch_device = "CPU (XLA:CPU; torch CPU)", "cpu"
    else:
        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
        device = f"{backend}: {jax.devices()[0].device_kind}; pytorch-crf on {torch_device}"
    print(f"{device}; {args.threads} threads; reduction {args.reduction}", flush=True)
    rows = []
    for shape in args.shapes:
        rows.extend(bench_shape(shape, args, torch_device))
    if args.check_only:
        return rows
    text = report(rows, args, device, command, time.perf_counter() - start)
    print()
    print(text)
    if args.write:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
