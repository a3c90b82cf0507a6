"""What each lever of the fast path gives, measured side by side in one run (issue 8).

The train step of :mod:`benchmarks.rnn_train_step` (small shape by default) for:

* ``fused``: the fused engine (:mod:`jaxseq._fused`) as shipped (batch-major stacks, one step per
  iteration, in-place buffers, hand-written backward);
* ``fused time-major``: the same with ``[T, B, ...]`` stacks and transposes around them;
* ``fused unroll=2``: the loops unrolled twice (breaks the in-place updates);
* ``scan``, ``scan hoist``, ``scan unroll=4``: the reference path
  (:func:`jaxseq.recurrence.rnn`, differentiated by JAX) with its options;
* ``flax`` and ``torch`` as the peers.

Every row is timed interleaved with the others; the ratio is the row's step time
divided by ``fused``'s (above 1: the row is slower than the fast path).

Levers measured during development, A/B in one process, 1 thread, process CPU
time (the machine was shared with other jobs: CPU time counts the work, not the
waiting), jaxseq labeler train step unless noted. Most are no longer switches: they
are the history of ``jaxseq/fused.py`` (see ``git log``).

* First custom VJP (time-major ``lax.scan``, gate coefficients precomputed over
  ``[T, B, 6H]`` after the forward loop, per-step outputs stacked by ``lax.scan``):
  LSTM recurrence fwd+bwd 146-154 ms vs 141-167 ms for the scan path and 96-119 ms
  for PyTorch: no gain. Profile: zero-filled output stacks and their copies,
  ``[T, B, *]`` elementwise passes, and ``logistic``.
* ``logistic`` replaced by ``tanh``: ``logistic`` fused with a dynamic slice ran
  3.5x slower than alone (52 vs 16 us per [32, 1024] step); ``tanh`` 1.3x.
* In-place buffers, every read after the write (the forward writes each step's
  gate activations over its projected inputs, the backward writes ``dG`` over the
  activations; no zero-filled stacks, no per-step copies): LSTM recurrence
  fwd+bwd 99-113 ms (torch 100-119 ms). A read of the buffer that XLA may schedule
  after the in-place write makes it copy the whole buffer every step: 3x slower.
* Masking inside the loop (a select per step) and the final carry picked at
  ``length - 1`` in the loop: no ``[T, B, H]`` passes for masks.
* Batch-major stacks (step t a strided slice) instead of time-major: 1.00-1.06x,
  and 2-7 MB less temp memory (no transposes of inputs, outputs, cotangents).
* Input projection per step vs hoisted: the same on XLA:CPU for training (the
  [4096, 128] @ [128, 1024] matmul runs at the per-step rate, ~115 GFLOP/s per
  core), so it stays hoisted in training, where its buffer is reused in place; for
  inference per step is 0.98-1.00x at the small shape and 1.06-1.09x at the large
  one, with a third of the temp memory.
* ``unroll`` 2 or 4: 0.30-0.43x for GRU/LSTM (it breaks the in-place updates),
  1.00-1.02x for the tanh RNN: not applied.
* Feature-major state (``hᵀ [H, B]``, so every per-step dot is ``Wᵀ @ hᵀ``, which
  XLA:CPU runs 22-29% faster than ``h @ W`` because its dot repacks the right
  operand on every call): 0.66-0.76x overall (boundary transposes, elementwise
  work on [G, B] arrays with only B contiguous lanes): reverted.
* "NT" per-step dots (``h @ W_hᵀ`` from a ``[G, H]`` copy made once before the
  loop, ``dG @ W_hᵀ`` contracting the last axes of both): alone in a loop of
  ``[32, H] @ [H, 4H]`` dots they ran 1.07x (H=512, 1 core) to 1.21x (H=256, 2
  cores) faster than ``h @ W``; in the fused train step 0.95-1.00x at the small
  shape and 1.00x for the large LSTM (inference 0.90-1.07x): not applied.
* XLA:CPU's experimental library dots (``--xla_cpu_experimental_{onednn,xnn,ynn}
  _fusion_type=dot``): a loop of ``[32, 512] @ [512, 2048]`` dots 1.00-1.10x; the
  large LSTM dp train step with the oneDNN one 0.92x torch against 0.96x without
  it in back-to-back runs: not recommended. (``--xla_cpu_use_thunk_runtime=false``
  is no longer supported by this jaxlib.)
* LSTM backward with per-gate derivatives (``i - i²`` etc., no constant rows, no
  ``u``): 1.02x at the small shape, 1.00x at the large one: not applied.
* Data parallelism over one XLA host device per core (``jaxseq.training.distributed``'s
  shardings, ``JAXSEQ_CPU_DEVICES=2``): XLA:CPU runs a loop's small per-step dot
  on one core, so splitting the batch gives each core its own recurrence. Train
  step in the full run (``benchmarks/RESULTS.md``) 1.15x (tanh), 1.68x (GRU) and
  1.65x (LSTM) faster than one device at the small shape, 1.07-1.23x at the large
  one; 4 devices on 2 cores (large LSTM, ``XLA_FLAGS=
  --xla_force_host_platform_device_count=4 python -m benchmarks.rnn_train_step
  --shapes large --cells lstm --impls jaxseq-fused-dp,torch --no-infer --repeats
  3``): 0.88x torch, against 0.97x torch with 2 devices in the same A/B. The
  ``-dp`` rows of ``benchmarks.rnn_train_step``.
* Where the large LSTM's time goes (one device's share, B=32 T=512 H=512, on 1
  core): train step 1372 ms, of which the recurrence's forward + backward 1314
  ms (forward 436 ms); the per-step ``[32, 512] @ [512, 2048]`` dots alone 687 ms
  (100 GFLOP/s, 61% of one core's peak), the four post-loop ``[16384]``-row
  matmuls 445 ms (135 GFLOP/s, 83%); elementwise work, masks and buffer writes
  the remaining ~180 ms; embedding, dense layer, loss and Adam ~60 ms.
* glibc returns big blocks to the OS, so every step page-faults its temp memory
  (10-13% of the LSTM step's CPU). With ``MALLOC_MMAP_MAX_=0`` the fused LSTM step
  went 113 -> 101 ms but PyTorch's 123 -> 91 ms: an environment effect on both,
  not used in the benchmark.
* Not a lever for the library: the non-recurrent part of the step (embedding
  gather/scatter, dense layer, loss, Adam) costs ~20 ms of CPU per step at the
  small shape for every jax implementation; it bounds the ratio to flax.

Run::

    python -m benchmarks.levers                 # small shape, train, ~3 min
    python -m benchmarks.levers --cells lstm --mode infer
"""

from __future__ import annotations

import argparse

from benchmarks import common


def scan_impl(cell_name, shape, weights, batch, *, name, **scan_options):
    import jax.numpy as jnp

    from benchmarks import impls
    from jaxseq import cells, methods, recurrence

    cell = {"elman": cells.elman, "gru": cells.gru, "lstm": cells.lstm}[cell_name](shape.hidden)

    def logits_fn(params, ids, lengths):
        x_BTE = jnp.take(params["embed"], ids, axis=0)
        method = methods.Scan(**scan_options)
        _, hs_BTH = recurrence.rnn(cell, params["rnn"], x_BTE, lengths, method=method)
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
    from jaxseq import _fused

    shape = common.SMALL if args.shape == "small" else common.LARGE
    batch = common.make_batch(shape)
    print(f"{shape}, {args.mode}, {args.threads} threads; ratio = row time / fused time")
    for cell in args.cells.split(","):
        weights = common.make_weights(cell, shape)
        plans = {
            "fused": _fused._Plan(),
            "fused time-major": _fused._Plan(time_major=True),
            "fused unroll=2": _fused._Plan(unroll=2),
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
