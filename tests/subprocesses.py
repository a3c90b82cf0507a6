"""Worker subprocesses for the tests that need a fresh process (device counts,
faults, determinism across processes): each runs ``python -m <module> ...``
from the repository root in its own session, with a deadline, and is killed
with its whole process group if it outlives the deadline or the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Compiling is most of a small worker's time; the runs a test compares are all
# compiled with these same flags.
FAST_COMPILE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)


def worker_env(**extra: str) -> dict[str, str]:
    """The test process's environment without JAXSEQ_*/XLA_* settings, on CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXSEQ_", "XLA_"))}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_XLA_FLAGS, **extra)
    return env


class Worker:
    """``python -m module *args`` with stdout+stderr in ``log_dir/name.log``."""

    def __init__(
        self,
        name: str,
        module: str,
        args: list[str],
        log_dir: Path,
        env: dict[str, str],
        timeout: float,
    ):
        self.name, self.log_path = name, Path(log_dir) / f"{name}.log"
        self.deadline = time.monotonic() + timeout
        with open(self.log_path, "w") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killable as a whole
            )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait(self, expect_code: int = 0) -> None:
        """Wait (until the deadline) for the exit code ``expect_code``, else fail."""
        try:
            code = self.popen.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker {self.name} timed out; log tail:\n{self.log_tail()}")
        if code != expect_code:
            pytest.fail(
                f"worker {self.name} exited with {code}, expected {expect_code}; "
                f"log tail:\n{self.log_tail()}"
            )

    def wait_for(self, condition, what: str, poll: float = 0.01) -> None:
        """Poll ``condition()`` until true; fail if the worker exits or the deadline passes."""
        while not condition():
            if self.popen.poll() is not None:
                pytest.fail(
                    f"worker {self.name} exited ({self.popen.returncode}) before {what}; "
                    f"log tail:\n{self.log_tail()}"
                )
            if time.monotonic() > self.deadline:
                self.kill()
                pytest.fail(f"worker {self.name}: no {what} in time; log tail:\n{self.log_tail()}")
            time.sleep(poll)

    def kill(self) -> None:
        """SIGKILL the worker's process group (no-op once it has exited)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait()
