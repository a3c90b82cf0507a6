"""The benchmark scripts run against the current API (at a tiny shape, timing nothing).

The benchmarks are not run by the test suite (they time things); this builds every
implementation of the train-step benchmark at a tiny shape and checks the equivalence
gate the benchmark itself applies: the same weights and batch give the same two losses.
"""

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
