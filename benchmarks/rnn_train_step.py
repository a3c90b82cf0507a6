"""jaxseq against PyTorch and flax on one RNN train step, side by side in one run (issue 8).

The task: a train step is forward + backward + Adam update of
``embedding(1000 -> 128) -> one-layer RNN -> dense(50) -> per-step masked
cross-entropy`` (mean over the valid tokens), lengths uniform in ``[T/2, T]``,
for the tanh RNN, GRU and LSTM at ``B=32 T=128 H=256`` and ``B=64 T=512 H=512``;
plus inference-only rows (the logits of the batch).

Implementations (see :mod:`benchmarks.impls`): ``jaxseq-default`` (the library's
labeler with ``method=None``: what a user gets without choosing), ``jaxseq-fused``
(``method=jaxseq.Fused()``), ``jaxseq-scan`` (``method=jaxseq.Scan()``, the
``lax.scan`` path), ``torch`` (``nn.RNN``/``nn.GRU``/``nn.LSTM`` on the
padded batch, masked loss), ``torch+pack`` (the same with
``pack_padded_sequence``), ``flax`` (linen ``nn.RNN(cell)(x, seq_lengths=...)``),
and ``jaxseq-default-dp`` / ``flax-dp``: the same jax steps data-parallel over all
devices with :mod:`jaxseq.training.distributed`'s shardings. On a CPU the script makes one
XLA host device per core used (``--xla_force_host_platform_device_count``, what
``JAXSEQ_CPU_DEVICES`` does for the experiments), so each core runs its share
of the batch; the ``-dp`` rows need at least 2 devices and are skipped otherwise.

Method:

1. Every implementation starts from the same weights and batch; the losses of
   its first two train steps (before and after one Adam update) must match
   jaxseq-scan's within a tolerance, or the run stops: a benchmark of different
   math is worthless.
2. The implementations of one (shape, cell) are timed interleaved, the order rotated
   every round (A B C, B C A, C A B, ...), ``--repeats`` rounds after a warm-up round;
   median, min and max per step.
3. tokens/s counts the B*T padded positions per step; GFLOP/s counts the matmul
   FLOPs of those positions (``benchmarks.common.flops_per_position``) and is
   reported as a fraction of a float32 matmul peak measured in the same run (numpy
   on CPU, jax on GPU). Compile time and the compiled temp memory are reported for
   the jax implementations.
4. numpy, torch and XLA are pinned to ``--threads`` cores (default 2).
   On a GPU, the jax rows run on the GPU; the torch rows run on CUDA when this
   torch has it, and are skipped otherwise (a CPU torch is no peer of a GPU).

Run (``make bench``)::

    python -m benchmarks.rnn_train_step            # both shapes, ~25 min on 2 cores
    python -m benchmarks.rnn_train_step --quick    # small shape, 3 repeats, ~3 min

It prints the tables and writes ``benchmarks/RESULTS.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

from benchmarks import common

IMPLS = (
    "jaxseq-default",
    "jaxseq-default-dp",
    "jaxseq-fused",
    "jaxseq-scan",
    "torch",
    "torch+pack",
    "flax",
    "flax-dp",
)
PEERS = ("torch", "torch+pack", "flax", "flax-dp")
MINE = ("jaxseq-default", "jaxseq-default-dp")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shape only, 3 repeats")
    parser.add_argument(
        "--shapes", default="small,large", help="small,large (tiny: a plumbing check, B=4 T=8 H=16)"
    )
    parser.add_argument("--cells", default="elman,gru,lstm", help="elman,gru,lstm")
    parser.add_argument("--impls", default=",".join(IMPLS), help=",".join(IMPLS))
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7/5)")
    parser.add_argument("--threads", type=int, default=2, help="CPU cores to use")
    parser.add_argument("--no-infer", action="store_true", help="skip the inference rows")
    parser.add_argument("--out", default=os.path.join("benchmarks", "RESULTS.md"))
    parser.add_argument("--note", default="", help="a remark on this run, put under the header")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes = "small"
        args.repeats = args.repeats or 3
    return args


def _tolerance(platform: str) -> float:
    # GPUs may use TF32 matmuls for float32 (jax's default precision, cuDNN's RNNs).
    return 5e-3 if platform == "gpu" else 2e-4


def check_equivalence(impls: dict, reference: str, platform: str) -> dict:
    """name -> max relative loss difference against ``reference``; raises on a mismatch."""
    ref = impls[reference].losses
    out = {}
    for name, impl in impls.items():
        diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(impl.losses, ref))
        out[name] = diff
        if diff > _tolerance(platform):
            raise SystemExit(
                f"{name} computes a different function: losses {impl.losses} vs "
                f"{reference} {ref} (relative difference {diff:.2e})"
            )
    return out


def build(name: str, cell: str, shape, weights, batch, mesh):
    import jaxseq
    from benchmarks import impls

    methods = {
        "jaxseq-default": None,
        "jaxseq-default-dp": None,
        "jaxseq-fused": jaxseq.Fused(),
        "jaxseq-scan": jaxseq.Scan(),
    }
    if name in methods:
        dp_mesh = mesh if name.endswith("-dp") else None
        return impls.jaxseq_impl(
            cell, shape, weights, batch, method=methods[name], name=name, mesh=dp_mesh
        )
    if name in ("flax", "flax-dp"):
        return impls.flax_impl(
            cell, shape, weights, batch, mesh=mesh if name == "flax-dp" else None
        )
    return impls.torch_impl(cell, shape, weights, batch, packed=name == "torch+pack")


def run(args) -> list[dict]:
    import jax

    from jaxseq.training import distributed

    platform = jax.devices()[0].platform
    names = [n for n in args.impls.split(",") if n]
    mesh = distributed.make_mesh() if jax.device_count() > 1 else None
    if mesh is None:
        names = [n for n in names if not n.endswith("-dp")]
    if platform == "gpu":
        import torch

        if not torch.cuda.is_available():
            names = [n for n in names if not n.startswith("torch")]
            print("torch has no CUDA here: torch rows skipped on this GPU run")
    shapes = {"small": common.SMALL, "large": common.LARGE, "tiny": common.Shape(4, 8, 16)}
    rows = []
    for shape_name in args.shapes.split(","):
        shape = shapes[shape_name]
        repeats = args.repeats or (7 if shape == common.SMALL else 5)
        batch = common.make_batch(shape)
        for cell in args.cells.split(","):
            weights = common.make_weights(cell, shape)
            built = {}
            for name in names:
                start = time.perf_counter()
                built[name] = build(name, cell, shape, weights, batch, mesh)
                print(f"  built {shape} {cell} {name} in {time.perf_counter() - start:.1f}s")
            reference = "jaxseq-scan" if "jaxseq-scan" in built else names[0]
            diffs = check_equivalence(built, reference, platform)
            modes = ("train",) if args.no_infer else ("train", "infer")
            for mode in modes:
                stats = common.interleaved(
                    {n: getattr(impl, mode) for n, impl in built.items()}, repeats
                )
                for name, stat in stats.items():
                    impl = built[name]
                    row = dict(
                        shape=shape,
                        cell=cell,
                        impl=name,
                        mode=mode,
                        stats=stat,
                        tokens_per_s=shape.batch * shape.steps / stat.median,
                        gflops=shape.batch
                        * shape.steps
                        * common.flops_per_position(cell, shape.hidden, train=mode == "train")
                        / stat.median
                        / 1e9,
                        compile_s=impl.compile_s.get(mode),
                        temp_bytes=impl.temp_bytes.get(mode),
                        loss_diff=diffs[name],
                        losses=impl.losses,
                    )
                    rows.append(row)
                    print(format_row(row, args.peak))
            del built
    return rows


# ---------------------------------------------------------------------------- report


def format_row(row, peak) -> str:
    s = row["stats"]
    compile_s = "" if row["compile_s"] is None else f"{row['compile_s']:.2f}"
    temp = "" if row["temp_bytes"] is None else f"{row['temp_bytes'] / 2**20:.0f}"
    return (
        f"| {row['shape']} | {common.CELL_TITLES[row['cell']]} | {row['mode']} | {row['impl']} "
        f"| {s.median * 1e3:.1f} | {s.low * 1e3:.1f} | {s.high * 1e3:.1f} "
        f"| {row['tokens_per_s'] / 1e3:.1f}k | {row['gflops']:.0f} | {row['gflops'] / peak:.0%} "
        f"| {compile_s} | {temp} |"
    )


TABLE_HEAD = (
    "| shape | cell | mode | implementation | median ms | min ms | max ms | tokens/s "
    "| GFLOP/s | of peak | compile s | temp MiB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def headline(rows) -> str:
    """jaxseq's best tokens/s (the default method, 1 device or data-parallel) over each
    peer's, per (shape, cell, mode); the 1-device default against torch and against
    the explicit fused method (the same engine: within noise), and the scan path."""
    lines = [
        "| shape | cell | mode | jaxseq best | tokens/s | / best peer | / torch | / torch+pack "
        "| / flax | / flax-dp | default (1 device) / torch | default / fused (1 device) "
        "| scan / best peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = []
    for row in rows:
        key = (row["shape"], row["cell"], row["mode"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        speed = {
            r["impl"]: r["tokens_per_s"] for r in rows if (r["shape"], r["cell"], r["mode"]) == key
        }
        peers = [speed[p] for p in PEERS if p in speed]
        mine_names = [n for n in MINE if n in speed]
        if not mine_names or not peers:
            continue
        best = max(peers)
        which = max(mine_names, key=speed.get)
        mine = speed[which]

        def ratio(name, speed=speed, mine=mine):
            return f"{mine / speed[name]:.2f}x" if name in speed else "-"

        def vs_best(name, speed=speed, best=best):
            return f"{speed[name] / best:.2f}x" if name in speed else "-"

        def between(a, b, speed=speed):
            return f"{speed[a] / speed[b]:.2f}x" if a in speed and b in speed else "-"

        lines.append(
            f"| {key[0]} | {common.CELL_TITLES[key[1]]} | {key[2]} | {which} | {mine / 1e3:.1f}k "
            f"| **{mine / best:.2f}x** | {ratio('torch')} | {ratio('torch+pack')} "
            f"| {ratio('flax')} | {ratio('flax-dp')} | {between('jaxseq-default', 'torch')} "
            f"| {between('jaxseq-default', 'jaxseq-fused')} | {vs_best('jaxseq-scan')} |"
        )
    return "\n".join(lines)


def versions() -> dict:
    import flax
    import jax
    import jaxlib
    import numpy
    import optax
    import torch

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


KEEP_FROM = "\n# Other benchmarks"  # RESULTS.md keeps this heading and what follows it


def write_results(path, rows, args, peak, device, elapsed, command) -> str:
    """Write the train-step part of ``path``; a ``# Other benchmarks`` part already in the
    file (other scripts' results, copied there) is kept as it is."""
    machine = common.machine()
    lines = [
        "# RNN train-step benchmark: jaxseq vs PyTorch vs flax",
        "",
        f"Generated by `{command}` on {datetime.datetime.now().isoformat(timespec='minutes')} "
        f"in {elapsed / 60:.1f} min. Do not edit by hand: rerun the command.",
        "",
        f"- device: {device}",
        f"- CPU: {machine['cpu']}; {machine['cores_used']} of {machine['cores_total']} cores "
        f"used (numpy, torch and XLA pinned to them)",
        f"- OS: {machine['os']}; Python {machine['python']}",
        "- " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- float32 matmul peak measured in this run: {peak:.0f} GFLOP/s "
        "(numpy 2048x2048 on CPU, jax on GPU)",
        f"- {args.repeats or '7 (small) / 5 (large)'} interleaved timed rounds per "
        "(shape, cell, mode) after a warm-up round",
        *(["", f"> {args.note}", ""] if args.note else [""]),
        "## Headline: jaxseq's best tokens/s divided by each peer's (higher is better)",
        "",
        "jaxseq best: the faster of `jaxseq-default` (1 device) and `jaxseq-default-dp` (the",
        "same step data-parallel over one XLA device per core, `jaxseq.training.distributed`).",
        "`flax-dp` is flax with the same sharding: the lever is JAX's, not only jaxseq's.",
        "",
        headline(rows),
        "",
        "## All rows",
        "",
        "tokens/s = B*T / median step time (padded positions); GFLOP/s counts the matmul FLOPs",
        "of all B*T positions (backward = 2x forward), so it is a rate of useful work, also for",
        "`torch+pack`, which skips the padding. compile s / temp MiB: jax only (XLA's compiled",
        "temp buffer size, from `memory_analysis()`); PyTorch's CPU allocator reports none.",
        "",
        TABLE_HEAD,
        *[format_row(r, peak) for r in rows],
        "",
        "## Equivalence check",
        "",
        "Losses of the first two train steps (before and after one Adam update) from the same",
        "weights and batch; max relative difference to jaxseq-scan.",
        "",
        "| shape | cell | implementation | loss 0 | loss 1 | max rel. diff |",
        "|---|---|---|---|---|---|",
    ]
    seen = set()
    for r in rows:
        key = (r["shape"], r["cell"], r["impl"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(
            f"| {r['shape']} | {common.CELL_TITLES[r['cell']]} | {r['impl']} "
            f"| {r['losses'][0]:.6f} | {r['losses'][1]:.6f} | {r['loss_diff']:.1e} |"
        )
    text = "\n".join(lines) + "\n"
    kept = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if KEEP_FROM in old:
            kept = old[old.index(KEEP_FROM) :]
    with open(path, "w") as f:
        f.write(text + kept)
    return text


def main(argv=None):
    args = parse_args(argv)
    command = "python -m benchmarks.rnn_train_step" + (
        " " + " ".join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else ""
    )
    start = time.perf_counter()
    # Before jax, torch or numpy start their thread pools. On a GPU machine this only
    # limits the host-side threads.
    common.pin_threads(args.threads)
    # One XLA host device per core, for the data-parallel (-dp) rows; GPUs are unaffected.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.threads}"
    import jax

    on_cpu = jax.devices()[0].platform == "cpu"
    import torch

    torch.set_num_threads(args.threads if on_cpu else torch.get_num_threads())
    device = jax.devices()[0]
    device_name = "CPU (XLA:CPU)" if on_cpu else f"{device.platform}: {device.device_kind}"
    args.peak = common.matmul_peak_gflops("cpu" if on_cpu else "gpu")
    print(f"{device_name}; float32 matmul peak {args.peak:.0f} GFLOP/s")
    print(TABLE_HEAD)
    rows = run(args)
    text = write_results(
        args.out, rows, args, args.peak, device_name, time.perf_counter() - start, command
    )
    print()
    print(text.split("## All rows")[0])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
