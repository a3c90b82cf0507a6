"""Eager calls (outside ``jit``): each core compiled once vs dispatched op by op, one run.

A researcher often calls jaxseq outside ``jit``: in a notebook, in an evaluation loop,
in a test. There each public function checks its arguments on the host and runs its
unchecked core through ``jax.jit`` (``jaxseq._compiled.compiled``): one program,
compiled on the first call with those shapes and static arguments, reused after.
The alternative, and what jaxseq did before, is the plain core: JAX then dispatches
every primitive on its own (each compiled on first sight of its shapes), and a
``lax.scan`` whose body is a fresh closure (the recurrence, CTC's forward pass, the
chunked cross-entropy) is traced and compiled again on every call.

Rows, for each function (``js.rnn`` of an LSTM with ``Scan`` and with ``Fused``,
``js.crf_loss``, ``js.ctc_loss``, ``js.sequence_labeling_loss``,
``js.linear_cross_entropy``), on one small batch (B=8, T=32):

* ``compiled``: the public function as shipped;
* ``op-by-op``: the same public function with its core's ``jax.jit`` removed (the
  undecorated core, ``core.__wrapped__``, patched in for the duration of the row).

Both produce the same numbers (checked before timing). ``first call`` is the first
call with these shapes in a fresh process for that row (compilation included, the
"import and try it" cost); ``repeat call`` is the median of later calls with new
values and the same shapes (interleaved A B A B, ``benchmarks.common.interleaved``).

Run::

    python -m benchmarks.eager_calls            # prints the table
    python -m benchmarks.eager_calls --write    # also writes benchmarks/RESULTS_eager.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS_eager.md")
B, T, D, H, C, S = 8, 32, 16, 32, 12, 6
CASES = ("rnn-lstm-scan", "rnn-lstm-fused", "crf_loss", "ctc_loss", "labeling_loss", "linear_ce")


def _patches(case: str) -> list[tuple[object, str]]:
    """(module, attribute) of the compiled cores a case runs through."""
    from jaxseq import chunked, crf, ctc, losses, recurrence

    return {
        "rnn-lstm-scan": [(recurrence, "_rnn")],
        "rnn-lstm-fused": [(recurrence, "_rnn")],
        "crf_loss": [(crf, "_loss_core"), (crf, "_log_likelihood_core")],
        "ctc_loss": [(ctc, "_ctc_core")],
        "labeling_loss": [(losses, "_token_losses")],
        "linear_ce": [(chunked, "_linear_ce_core")],
    }[case]


@contextlib.contextmanager
def op_by_op(case: str):
    """The case's cores without their jit (the plain functions), restored afterwards."""
    saved = [(module, name, getattr(module, name)) for module, name in _patches(case)]
    try:
        for module, name, fn in saved:
            setattr(module, name, fn.__wrapped__)
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def make_call(case: str):
    """``call(seed) -> result``: the public function on fresh values of fixed shapes."""
    import jax
    import jax.numpy as jnp

    import jaxseq as js

    lengths = jnp.array([T, T // 2, 1, T - 3, 7, T, 0, 11][:B], jnp.int32)
    where = js.length_mask(lengths, T)

    def normal(seed, shape):
        return jax.random.normal(jax.random.key(seed), shape)

    if case.startswith("rnn"):
        cell = js.lstm(H)
        params = cell.init(jax.random.key(0), D)
        method = js.Fused() if case.endswith("fused") else js.Scan()
        return lambda seed: js.rnn(cell, params, normal(seed, (B, T, D)), lengths, method=method)
    labels = jnp.asarray(jax.random.randint(jax.random.key(1), (B, T), 0, C))
    if case == "crf_loss":
        params = js.crf_init(jax.random.key(0), C)
        return lambda seed: js.crf_loss(normal(seed, (B, T, C)), labels, params, where=where)
    if case == "ctc_loss":
        targets = jnp.asarray(jax.random.randint(jax.random.key(2), (B, S), 1, C))
        target_lengths = jnp.minimum(lengths // 2, S)
        return lambda seed: js.ctc_loss(normal(seed, (B, T, C)), lengths, targets, target_lengths)
    if case == "labeling_loss":
        return lambda seed: js.sequence_labeling_loss(normal(seed, (B, T, C)), labels, where=where)
    weight = normal(3, (H, C))
    return lambda seed: js.linear_cross_entropy(
        normal(seed, (B, T, H)), weight, labels, where=where
    )


def _child(case: str, mode: str, repeats: int) -> dict:
    """Runs in a fresh process: first-call time, then ``repeats`` timed calls."""
    import jax
    import numpy as np

    from benchmarks.common import interleaved

    call = make_call(case)
    context = op_by_op(case) if mode == "op-by-op" else contextlib.nullcontext()
    with context:
        start = time.perf_counter()
        jax.block_until_ready(call(0))
        first = time.perf_counter() - start
        seeds = iter(range(1, 10**6))
        stats = interleaved(
            {mode: lambda: jax.block_until_ready(call(next(seeds)))}, repeats, warmup=1
        )[mode]
        value = np.asarray(jax.tree.leaves(call(0))[0], np.float64)
    return {"first_s": first, "median_s": stats.median, "value": value.ravel()[:8].tolist()}


def run(repeats: int) -> list[dict]:
    rows = []
    for case in CASES:
        results = {}
        for mode in ("compiled", "op-by-op", "compiled", "op-by-op"):  # A B A B
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.eager_calls", "--child", case, mode,
                 "--repeats", str(repeats)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results.setdefault(mode, []).append(json.loads(out.stdout.splitlines()[-1]))
        a, b = results["compiled"], results["op-by-op"]
        if max(abs(x - y) for x, y in zip(a[0]["value"], b[0]["value"], strict=True)) > 1e-5:
            raise SystemExit(f"{case}: the two paths disagree: {a[0]['value']} {b[0]['value']}")
        first = {m: sorted(r["first_s"] for r in results[m]) for m in results}
        median = {m: sorted(r["median_s"] for r in results[m]) for m in results}
        rows.append(
            {
                "case": case,
                "first_compiled": first["compiled"][0],
                "first_op": first["op-by-op"][0],
                "repeat_compiled": median["compiled"][0],
                "repeat_op": median["op-by-op"][0],
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| function | first call, compiled s | first call, op-by-op s | repeat call, compiled ms "
        "| repeat call, op-by-op ms | repeat speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['first_compiled']:.2f} | {r['first_op']:.2f} | "
            f"{1e3 * r['repeat_compiled']:.2f} | {1e3 * r['repeat_op']:.2f} | "
            f"**{r['repeat_op'] / r['repeat_compiled']:.0f}x** |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "MODE"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child, args.repeats)))
        return
    import jax

    start = time.perf_counter()
    rows = run(args.repeats)
    text = table(rows)
    print(text)
    if args.write:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        RESULTS.write_text(
            "# Eager calls: each core compiled once vs dispatched op by op\n\n"
            f"Generated by `python -m benchmarks.eager_calls --write` on {stamp} in "
            f"{(time.perf_counter() - start) / 60:.1f} min (jax {jax.__version__}, "
            f"{jax.default_backend()}). Do not edit by hand: rerun the command.\n\n"
            f"B={B}, T={T} (D={D}, H={H}, C={C}, S={S}). Each row runs each mode twice, each in "
            "a fresh process (A B A B); the best of the two is shown. First call: the first "
            "call with these shapes (compilation included). Repeat call: the median of "
            f"{args.repeats} later calls with new values (same shapes). Speed-up: op-by-op "
            "/ compiled repeat call.\n\n" + text + "\n"
        )


if __name__ == "__main__":
    main()
