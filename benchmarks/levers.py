"""What each lever of the fast path gives, measured side by side in one run (issue 8).

The train step of :mod:`benchmarks.rnn_train_step` (small shape by default) for:

* ``fused``: :mod:`jaxseq.fused` as shipped (batch-major stacks, one step per
  iteration, in-place buffers, hand-written backward);
* ``fused time-major``: the same with ``[T, B, ...]`` stacks and transposes around them;
* ``fused unroll=2``: the loops unrolled twice (breaks the in-place updates);
* ``scan``, ``scan hoist``, ``scan unroll=4``: the reference path
  (:func:`jaxseq.recurrence.rnn`, differentiated by JAX) with its options;
* ``flax`` and ``torch`` as the peers.

Every row is timed interleaved with the others; the ratio is the row's step time
divided by ``fused``'s (above 1: the row is slower than the fast path).

Levers measured during development that no longer exist as switches (they are
the history of ``jaxseq/fused.py``; 1 thread, CPU time, LSTM small shape, on a
shared machine):

* a first custom VJP (time-major scan, gate coefficients precomputed over
  ``[T, B, 6H]`` after the forward loop, per-step output stacks zero-filled by
  ``lax.scan``): gradient of the recurrence 146-154 ms vs 141-167 ms for the scan
  path and 96-119 ms for PyTorch: no gain;
* then in-place buffers (the forward writes each step's gate activations over its
  projected inputs, the backward writes ``dG`` over the activations, every read
  after the write so that XLA copies nothing): 99-113 ms;
* ``logistic`` replaced by ``tanh``: ``logistic`` fused with a dynamic slice ran
  3.5x slower than alone (52 vs 16 us per [32, 1024] step), ``tanh`` 1.3x;
* the input projection inside the loop instead of hoisted: the same total on
  XLA:CPU (the [4096, 128] @ [128, 1024] matmul runs at the per-step rate,
  ~115 GFLOP/s per core); hoisted is kept because its buffer is reused in place.

Run::

    python -m benchmarks.levers                 # small shape, train, ~3 min
    python -m benchmarks.levers --cells lstm --mode infer
"""

from __future__ import annotations

import argparse

from benchmarks import common


def scan_impl(cell_name, shape, weights, batch, *, name, **options):
    import jax.numpy as jnp

    from benchmarks import impls
    from jaxseq import cells, recurrence

    cell = {"elman": cells.elman, "gru": cells.gru, "lstm": cells.lstm}[cell_name](shape.hidden)

    def logits_fn(params, ids, lengths):
        x_BTE = jnp.take(params["embed"], ids, axis=0)
        _, hs_BTH = recurrence.rnn(cell, params["rnn"], x_BTE, lengths, **options)
        return hs_BTH @ params["V"] + params["c"].reshape(1, 1, -1)

    return impls._jax_impl(name, logits_fn, weights, batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="elman,gru,lstm")
    parser.add_argument("--shape", default="small", choices=("small", "large"))
    parser.add_argument("--mode", default="train", choices=("train", "infer"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    common.pin_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks import impls
    from jaxseq import fused

    shape = common.SMALL if args.shape == "small" else common.LARGE
    batch = common.make_batch(shape)
    print(f"{shape}, {args.mode}, {args.threads} threads; ratio = row time / fused time")
    for cell in args.cells.split(","):
        weights = common.make_weights(cell, shape)
        plans = {
            "fused": fused._Plan(),
            "fused time-major": fused._Plan(time_major=True),
            "fused unroll=2": fused._Plan(unroll=2),
        }
        built = {
            name: impls.fused_plan_impl(cell, shape, weights, batch, plan=plan, name=name)
            for name, plan in plans.items()
        }
        built["scan"] = scan_impl(cell, shape, weights, batch, name="scan")
        built["scan hoist"] = scan_impl(
            cell, shape, weights, batch, name="scan hoist", hoist_projection=True
        )
        built["scan unroll=4"] = scan_impl(
            cell, shape, weights, batch, name="scan unroll=4", unroll=4
        )
        built["flax"] = impls.flax_impl(cell, shape, weights, batch)
        built["torch"] = impls.torch_impl(cell, shape, weights, batch, packed=False)
        stats = common.interleaved(
            {name: getattr(impl, args.mode) for name, impl in built.items()}, args.repeats
        )
        base = stats["fused"].median
        print(f"\n{common.CELL_TITLES[cell]}")
        print("| variant | median ms | min ms | max ms | variant / fused | temp MiB |")
        print("|---|---|---|---|---|---|")
        for name, s in stats.items():
            temp = built[name].temp_bytes.get(args.mode)
            temp = "" if temp is None else f"{temp / 2**20:.0f}"
            print(
                f"| {name} | {s.median * 1e3:.1f} | {s.low * 1e3:.1f} | {s.high * 1e3:.1f} "
                f"| {s.median / base:.2f} | {temp} |"
            )


if __name__ == "__main__":
    main()
