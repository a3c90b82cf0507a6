"""The benchmark scripts run against the current API (at a tiny shape, timing nothing).

The benchmarks are not run by the test suite (they time things); this builds every
implementation of the train-step benchmark at a tiny shape and checks the equivalence
gate the benchmark itself applies: the same weights and batch give the same two losses.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import common, rnn_train_step

TINY = common.Shape(4, 6, 8)
JAX_IMPLS = ("jaxseq-default", "jaxseq-fused", "jaxseq-scan", "flax")


@pytest.mark.parametrize("cell", common.CELLS)
@pytest.mark.training_smoke
def test_train_step_benchmark_builds_every_implementation_and_they_agree(cell):
    names = JAX_IMPLS + (("torch",) if _has_torch() else ())
    batch = common.make_batch(TINY)
    weights = common.make_weights(cell, TINY)
    built = {n: rnn_train_step.build(n, cell, TINY, weights, batch, None) for n in names}
    diffs = rnn_train_step.check_equivalence(built, "jaxseq-scan", "cpu")
    assert set(diffs) == set(names)
    for impl in built.values():
        impl.train()  # one timed-path call runs


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.training_smoke
def test_gpu_check_script_dry_run_runs_every_stage(tmp_path):
    # benchmarks/gpu_check.sh is run for real only on a lent GPU machine; its --dry-run
    # runs the same stages at toy sizes on CPU, so its plumbing (commands, flags, output
    # files, the summary) is checked here. A failed stage makes the script exit 1.
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    for stage in ("environment: ok", "pytest -m gpu", "rnn_train_step", "parallel_scan", "done"):
        assert stage in summary, summary
    assert "FAILED" not in summary and "timed out" not in summary, summary
    assert (
        "| B=4 T=8 H=16 | tanh RNN | train | jaxseq-default |"
        in (tmp_path / "rnn_train_step.md").read_text()
    )
    assert "needs a GPU" in (tmp_path / "pytest_gpu.txt").read_text()
    # Without a GPU and without --dry-run it refuses, saying why.
    refused = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh")],
        env={**env, "OUT": str(tmp_path / "refused")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "not gpu" in refused.stdout, refused.stdout


@pytest.mark.training_smoke
def test_crf_benchmark_runs_the_equivalence_gate_and_times_all_three(tmp_path):
    # benchmarks/crf.py at its tiny shape, 1 repeat, in a fresh process (it pins the
    # process's threads): the float64 gate passes for all three implementations
    # before anything is timed, and the report has a row for each.
    pytest.importorskip("torch")
    pytest.importorskip("torchcrf")
    from tests.subprocesses import REPO, worker_env

    out = tmp_path / "RESULTS_crf.md"
    args = ["--shapes", "tiny", "--repeats", "1", "--threads", "1", "--write", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.crf", *args],
        cwd=REPO,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "B=4 T=8 K=5: equivalence check passed" in done.stdout, done.stdout
    text = out.read_text()
    assert "python -m benchmarks.crf --shapes tiny --repeats 1" in text
    assert ", pytorch-crf " in text and "equivalence gate" in text
    for impl in ("jaxseq-sequential", "jaxseq-parallel", "pytorch-crf"):
        assert f"| B=4 T=8 K=5 | {impl} |" in text, text
    assert "| B=4 T=8 K=5 | pytorch-crf | " in text and "**1.00x**" in text


@pytest.mark.reference
def test_eager_benchmark_patches_real_cores_and_both_paths_agree():
    # benchmarks/eager_calls.py times each public function with its compiled core and
    # with the plain core patched in: every patched name must be a compiled core, the
    # patch must be undone, and the two paths must give the same numbers.
    import jax

    from benchmarks import eager_calls

    for case in eager_calls.CASES:
        cores = [getattr(module, name) for module, name in eager_calls._patches(case)]
        assert all(hasattr(core, "__wrapped__") for core in cores), case
    for case in ("labeling_loss", "rnn-lstm-scan"):
        call = eager_calls.make_call(case)
        compiled = jax.tree.map(np.asarray, call(3))
        with eager_calls.op_by_op(case):
            plain = jax.tree.map(np.asarray, call(3))
        for module, name in eager_calls._patches(case):
            assert hasattr(getattr(module, name), "__wrapped__")  # restored
        for a, b in zip(jax.tree.leaves(compiled), jax.tree.leaves(plain), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
