"""Without PyTorch installed, every test module still imports and its torch-free tests run.

PyTorch is a test-only reference. A module that imported it at the top (or skipped
itself when it is missing) would hide its torch-free tests on such a machine. This
runs pytest in a fresh process with ``torch`` blocked (``JAXSEQ_TESTS_WITHOUT``,
see conftest.py), as on a machine without it.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.subprocesses import REPO, worker_env


def _pytest_without_torch(*args: str) -> str:
    env = worker_env(JAXSEQ_TESTS_WITHOUT="torch")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return run.stdout + run.stderr


@pytest.mark.bad_input
def test_every_module_collects_without_torch():
    out = _pytest_without_torch("--collect-only", "-m", "not slow", "tests")
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\d+(/\d+)? tests? collected", summary), out[-3000:]
    assert "error" not in summary and "skipped" not in summary, out[-3000:]


@pytest.mark.bad_input
def test_torch_free_tests_of_torch_using_modules_run_without_torch():
    out = _pytest_without_torch("-n", "0", "tests/test_interop.py", "-k", "without_torch")
    assert re.search(r"\b1 passed\b", out), out[-3000:]
