"""Faults: a run killed with SIGKILL, saves killed mid-write, corrupted files, a
full disk, and bitwise determinism across processes.

The runs that are killed or repeated happen in subprocesses
(tests/fault_worker.py, started by tests/subprocesses.py with a deadline, in
their own process group). The three training runs start together with the
module: two uninterrupted runs with the same seed in separate processes (with
different hash seeds), and one that is SIGKILLed between two checkpoints and
then resumed.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxseq.training import checkpoint, loop
from tests.fault_worker import MAX_STEPS, state_of
from tests.subprocesses import Worker, worker_env

TIMEOUT = 240
KILL_AFTER_CHECKPOINT = 8
STEP_DELAY = 0.3  # seconds slept before each step of the run that is killed


def _train_worker(name: str, out: Path, *extra: str, hash_seed: str = "0") -> Worker:
    env = worker_env(PYTHONHASHSEED=hash_seed)
    return Worker(name, "tests.fault_worker", ["train", str(out), *extra], out.parent, env, TIMEOUT)


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory):
    """Two uninterrupted runs (same seed, separate processes) and one slowed run
    for the kill test, started at once; killed at the end if still running."""
    root = tmp_path_factory.mktemp("faults")
    workers = {
        "first": _train_worker("first", root / "first", hash_seed="1"),
        "second": _train_worker("second", root / "second", hash_seed="2"),
        "killed": _train_worker(
            "killed", root / "killed", "--step-delay", str(STEP_DELAY), hash_seed="3"
        ),
    }
    yield root, workers
    for worker in workers.values():
        worker.kill()


def _committed_steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _final_leaves(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "final.npz") as data:
        return dict(data)


def _assert_same_leaves(actual: dict, desired: dict) -> None:
    assert actual.keys() == desired.keys()
    for name, value in desired.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


@pytest.mark.roundtrip
def test_sigkill_mid_run_resumes_to_bitwise_identical_params_and_metrics(
    training_runs, record_property
):
    root, workers = training_runs
    killed_dir = root / "killed"
    killed = workers["killed"]
    checkpoint_dir = killed_dir / "checkpoints"

    def logged_past_a_checkpoint():
        # A train line past checkpoint 8 (step 10 of 12): the kill then lands
        # between two checkpoints, with metrics written that resuming must drop.
        metrics_file = killed_dir / "metrics.jsonl"
        return metrics_file.exists() and any(
            r["split"] == "train" and r["step"] > KILL_AFTER_CHECKPOINT
            for r in loop.read_metrics(metrics_file)
        )

    killed.wait_for(logged_past_a_checkpoint, f"a log line past step {KILL_AFTER_CHECKPOINT}")
    killed.kill()
    assert killed.popen.returncode == -signal.SIGKILL
    assert not (killed_dir / "done").exists()
    last_checkpoint = _committed_steps(checkpoint_dir)[-1]
    logged = max(r["step"] for r in loop.read_metrics(killed_dir / "metrics.jsonl"))
    assert KILL_AFTER_CHECKPOINT <= last_checkpoint <= logged < MAX_STEPS
    # Normally the kill lands 2 steps (0.6 s) before the next checkpoint, with a log
    # line past the last one; a test process starved for that long kills later.
    record_property("killed_at_last_checkpoint", last_checkpoint)
    record_property("killed_at_last_logged_step", logged)

    resumed = _train_worker("resumed", killed_dir, "--resume", hash_seed="4")
    resumed.wait()
    workers["first"].wait()
    _assert_same_leaves(_final_leaves(killed_dir), _final_leaves(root / "first"))
    # The metrics written before the kill past the last checkpoint were dropped
    # and written again: the file equals the uninterrupted one, value for value.
    assert loop.read_metrics(killed_dir / "metrics.jsonl") == loop.read_metrics(
        root / "first" / "metrics.jsonl"
    )
    assert _committed_steps(checkpoint_dir)[-1] == MAX_STEPS


@pytest.mark.determinism
def test_same_seed_in_two_processes_trains_bitwise_identically(training_runs):
    root, workers = training_runs
    workers["first"].wait()
    workers["second"].wait()
    first, second = _final_leaves(root / "first"), _final_leaves(root / "second")
    _assert_same_leaves(second, first)
    assert int(first[".step"]) == MAX_STEPS
    assert (root / "first" / "metrics.jsonl").read_bytes() == (
        root / "second" / "metrics.jsonl"
    ).read_bytes()


# ----------------------------------------------------------------------------- saves


def _state_target(step: int) -> dict:
    return jax.tree.map(jnp.zeros_like, state_of(step))


def _assert_restores(mngr, step: int) -> None:
    restored = checkpoint.restore(mngr, _state_target(step), step)
    _assert_same_leaves({k: np.asarray(v) for k, v in restored.items()}, state_of(step))


@pytest.mark.roundtrip
def test_save_killed_before_its_commit_leaves_the_previous_checkpoint(tmp_path):
    """The worker dies (SIGKILL) with every byte of step 2 written but not committed."""
    worker = Worker(
        "die_in_commit",
        "tests.fault_worker",
        ["die_in_commit", str(tmp_path / "ckpt")],
        tmp_path,
        worker_env(),
        TIMEOUT,
    )
    worker.wait(expect_code=-signal.SIGKILL)
    leftovers = [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("2.")]
    assert len(leftovers) == 1 and "tmp" in leftovers[0].name
    assert any(f.is_file() for f in leftovers[0].rglob("*"))  # the data was written

    mngr = checkpoint.manager(tmp_path / "ckpt")
    assert list(mngr.all_steps()) == [1] and mngr.latest_step() == 1
    _assert_restores(mngr, 1)
    # The leftover does not block saving step 2 again.
    checkpoint.save(mngr, 2, state_of(2))
    assert mngr.latest_step() == 2
    _assert_restores(mngr, 2)
    mngr.close()


@pytest.mark.roundtrip
def test_sigkill_at_random_moments_while_saving_never_restores_wrong_numbers(
    tmp_path, record_property
):
    """Three workers in turn save ~4 MiB states into one folder and are killed at
    a random moment: the latest committed step restores bit for bit, and every
    other listed step restores bit for bit or raises a clear error."""
    rng = np.random.default_rng(0)
    directory = tmp_path / "ckpt"
    torn = 0
    for round_ in range(3):
        before = _committed_steps(directory) if directory.exists() else []
        worker = Worker(
            f"save_forever{round_}",
            "tests.fault_worker",
            ["save_forever", str(directory)],
            tmp_path,
            worker_env(),
            TIMEOUT,
        )
        worker.wait_for(lambda w=worker: "committed" in w.log_path.read_text(), "a save", 0.005)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        worker.kill()
        torn += any("tmp" in p.name for p in directory.iterdir())
        mngr = checkpoint.manager(directory)
        steps = list(mngr.all_steps())
        assert steps and steps[-1] > (before[-1] if before else 0)
        _assert_restores(mngr, steps[-1])
        for step in steps[:-1]:
            try:
                _assert_restores(mngr, step)
            except checkpoint.CheckpointCorruptError:
                pass  # e.g. an old step whose deletion was cut short: refused, not wrong
        mngr.close()
    record_property("kills_that_left_a_torn_save", torn)


# ----------------------------------------------------------------------------- corruption


def _largest_data_file(step_dir: Path) -> Path:
    files = [p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.fixture
def saved(tmp_path):
    mngr = checkpoint.manager(tmp_path / "ckpt")
    checkpoint.save(mngr, 5, state_of(5))
    mngr.close()
    return tmp_path / "ckpt"


@pytest.mark.bad_input
def test_a_flipped_byte_on_disk_raises_naming_the_leaf(saved):
    data_file = _largest_data_file(saved / "5")
    content = bytearray(data_file.read_bytes())
    content[len(content) // 2] ^= 0xFF
    data_file.write_bytes(bytes(content))
    mngr = checkpoint.manager(saved)
    # Plain orbax restores the flipped byte without complaint ...
    plain = mngr.restore(5, args=ocp.args.StandardRestore())
    assert not np.array_equal(np.asarray(plain["w"]), state_of(5)["w"])
    # ... jaxseq checks the digest written with the step.
    with pytest.raises(checkpoint.CheckpointCorruptError, match=r"leaf w does not match"):
        checkpoint.restore(mngr, _state_target(5))
    mngr.close()


@pytest.mark.bad_input
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_truncated_or_missing_data_file_raises(saved, damage):
    data_file = _largest_data_file(saved / "5")
    if damage == "truncate":
        data_file.write_bytes(data_file.read_bytes()[:1000])
    else:
        data_file.unlink()
    mngr = checkpoint.manager(saved)
    with pytest.raises(checkpoint.CheckpointCorruptError, match=r"step 5 .* could not be read"):
        checkpoint.restore(mngr, _state_target(5))
    mngr.close()


@pytest.mark.roundtrip
def test_checkpoints_without_digests_restore_unverified(tmp_path):
    """A checkpoint written by plain orbax (no digests) still restores."""
    mngr = ocp.CheckpointManager(os.path.abspath(tmp_path / "ckpt"))
    mngr.save(3, args=ocp.args.StandardSave(state_of(3)))
    mngr.wait_until_finished()
    assert checkpoint.stored_digests(mngr, 3) is None
    _assert_restores(mngr, 3)
    mngr.close()


# ----------------------------------------------------------------------------- disk


@pytest.mark.bad_input
def test_too_little_disk_space_fails_before_the_first_step(tmp_path, monkeypatch):
    state = state_of(1)
    needed = loop.checkpoint_bytes_needed(state, max_to_keep=loop.CHECKPOINTS_KEPT)
    # An independent count: 4 MiB + 4 KiB + 4 bytes, kept twice plus one being written.
    assert needed == 3 * (1024 * 1024 * 4 + 1024 * 4 + 4) + 2**20
    real_usage = shutil.disk_usage
    monkeypatch.setattr(
        loop.shutil,
        "disk_usage",
        lambda path: real_usage(path)._replace(free=needed - 1),
    )
    steps_taken = []

    def train_step(state, batch, key):
        steps_taken.append(1)
        return state, {}

    out = tmp_path / "out"
    with pytest.raises(OSError, match=r"MiB free but the checkpoints need about 13\.0 MiB") as e:
        loop.fit(
            state,
            train_step=train_step,
            eval_step=None,
            train_batches=lambda epoch: [None],
            key=jax.random.key(0),
            config=loop.FitConfig(progress=False),
            out_dir=str(out),
        )
    assert e.value.errno == errno.ENOSPC and str(out) in str(e.value)
    assert not steps_taken and not (out / "checkpoints").exists()


@pytest.mark.bad_input
def test_a_torn_metrics_line_is_dropped_only_at_the_end(tmp_path):
    """A writer killed mid-line leaves a torn last line: resuming drops it; a torn
    line elsewhere means the file is damaged and raises."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "split": "train", "loss": 1.5}\n{"step": 4, "spl')
    assert loop.read_metrics(path) == [{"step": 2, "split": "train", "loss": 1.5}]
    loop.MetricsWriter(str(path), keep_up_to_step=4)
    assert path.read_text() == '{"step": 2, "split": "train", "loss": 1.5}\n'
    path.write_text('{"step": 2, "spl\n{"step": 4, "split": "train", "loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"line 1 is not JSON"):
        loop.read_metrics(path)
