"""A real Ctrl-C: SIGINT sent to a training process from outside, at an unknown step.

The process (this module run as ``python -m tests.test_fit_sigint JOB OUT``, the way a
command line would) catches :class:`jaxseq.training.loop.FitInterrupted`, prints the
message a command line prints and exits 130; its resumed run (another process) ends with
the parameters and the metrics file of an uninterrupted one (a third process, run
alongside with the same compile flags).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxseq.training import checkpoint, loop
from tests.subprocesses import Worker, worker_env
from tests.test_fit_data import Recorder, epoch_batches, toy_fit

TIMEOUT = 120
CONFIG = dict(num_epochs=20, max_steps=40, log_every=2, eval_every=20, checkpoint_every=20)
READY_AFTER = 3  # steps before the interrupted run says it is ready to be interrupted


class SlowStep(Recorder):
    """The toy step; with ``ready`` (the run to interrupt), 0.1 s per step and after
    READY_AFTER steps it creates ``ready``."""

    def __init__(self, ready: Path | None):
        super().__init__()
        self.ready = ready

    def __call__(self, state, batch, key):
        out = super().__call__(state, batch, key)
        if self.ready is not None:
            if len(self.seen) == READY_AFTER:
                self.ready.touch()
            time.sleep(0.1)
        return out


def main(job: str, out: str) -> None:
    folder = Path(out)
    step = SlowStep(folder.parent / f"{folder.name}.ready" if job == "interruptible" else None)
    try:
        state, _ = toy_fit(folder, epoch_batches, step=step, resume=job == "resume", **CONFIG)
    except loop.FitInterrupted as e:
        print(f"interrupted at step {e.step}; checkpoint saved; rerun with --resume", flush=True)
        sys.exit(130)
    np.save(folder / "w.npy", np.asarray(state.params["w"]))
    print(f"finished at step {int(state.step)}", flush=True)


def _worker(name: str, root: Path, job: str) -> Worker:
    return Worker(
        name, "tests.test_fit_sigint", [job, str(root / name)], root, worker_env(), TIMEOUT
    )


@pytest.mark.roundtrip
def test_sigint_from_outside_saves_exits_cleanly_and_the_resume_matches(tmp_path):
    interrupted = _worker("run", tmp_path, "interruptible")
    straight = _worker("straight", tmp_path, "straight")
    interrupted.wait_for((tmp_path / "run.ready").exists, "the ready file")
    interrupted.popen.send_signal(signal.SIGINT)
    interrupted.wait(expect_code=130)
    log = interrupted.log_path.read_text()
    (line,) = [line for line in log.splitlines() if line.startswith("interrupted at step")]
    step = int(line.split()[3].rstrip(";"))
    assert READY_AFTER <= step < CONFIG["max_steps"]
    assert line == f"interrupted at step {step}; checkpoint saved; rerun with --resume"
    assert "Traceback" not in log
    mngr = checkpoint.manager(tmp_path / "run" / "checkpoints")
    assert checkpoint.committed_steps(mngr)[-1] == step
    mngr.close()

    resumed = _worker("run", tmp_path, "resume")
    resumed.wait()
    straight.wait()
    assert np.load(tmp_path / "run" / "w.npy") == np.load(tmp_path / "straight" / "w.npy")
    assert (tmp_path / "run" / loop.METRICS_FILE).read_bytes() == (
        tmp_path / "straight" / loop.METRICS_FILE
    ).read_bytes()


if __name__ == "__main__":
    main(*sys.argv[1:])
