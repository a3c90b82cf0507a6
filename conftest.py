"""Test-suite configuration: strict JAX settings and test categories.

Strict JAX settings (equinox-style): rank promotion raises, so a broadcast the
code did not mean fails loudly, and dtype promotion is strict, so no
int32 * float32 or float32 * float64 mix slips through silently.

Categories: every test carries exactly one category marker (registered in
pyproject.toml); a test with none or several fails collection. Doctests are
the category ``docs``; ``data`` holds the data layer's parsing, loading and
batching tests. The category is recorded in the JUnit XML report so
``tools/reliability_report.py`` can count results per category.
"""

import os
import sys

# Compiling is most of the suite's time: tests compile thousands of small XLA programs
# and run each once or twice, so they skip the backend's expensive optimisation passes
# (the semantics do not change; the measured budgets in test_budgets.py hold either way).
# A flag set in the environment wins.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)

import jax  # noqa: E402
import pytest  # noqa: E402


class _BlockedImports:
    """A meta-path finder that makes ``import`` of the named top-level packages fail,
    as on a machine without them (``JAXSEQ_TESTS_WITHOUT=torch,tensorboardX``)."""

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked for this test run)")
        return None


if os.environ.get("JAXSEQ_TESTS_WITHOUT"):
    sys.meta_path.insert(0, _BlockedImports(os.environ["JAXSEQ_TESTS_WITHOUT"].split(",")))

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

CATEGORIES = (
    "reference",
    "loss_oracle",
    "variants",
    "gradcheck",
    "padding_invariance",
    "numerics",
    "dtype",
    "bad_input",
    "retrace",
    "property",
    "determinism",
    "roundtrip",
    "perf_budget",
    "training_smoke",
    "gpu",
    "data",
    "docs",
)


def category_of(item) -> str:
    if isinstance(item, pytest.DoctestItem):
        return "docs"
    found = sorted({m.name for m in item.iter_markers() if m.name in CATEGORIES})
    if len(found) != 1:
        raise pytest.UsageError(
            f"{item.nodeid}: every test needs exactly one category marker "
            f"({', '.join(CATEGORIES)}), found {found or 'none'}"
        )
    return found[0]


def pytest_collection_modifyitems(config, items):
    for item in items:
        category = category_of(item)
        item.user_properties.append(("category", category))
        if category == "gpu" and jax.default_backend() != "gpu":
            item.add_marker(pytest.mark.skip(reason="needs a GPU"))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module.

    One process runs thousands of distinct jitted computations; XLA:CPU maps the code
    of each into memory, and without this the suite hits the kernel's limit on memory
    maps (``vm.max_map_count``, 65530 by default) and the compiler segfaults.
    """
    yield
    jax.clear_caches()
