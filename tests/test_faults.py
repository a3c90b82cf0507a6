"""Faults: a run killed inside a save, saves killed at chosen phases, corrupted
files, restores of another model or a missing step in a fresh process, a full
disk, and bitwise determinism across processes.

The runs that are killed or repeated happen in subprocesses
(tests/fault_worker.py, started by tests/subprocesses.py with a deadline, in
their own process group). The kills are deterministic: the fault-injection hook
of :mod:`jaxseq.training.checkpoint` (``JAXSEQ_FAULT_IN_SAVE=<phase>@<step>``)
ends the worker with ``FAULT_EXIT_CODE`` at that phase of that step's save, so
the exit code proves the process died inside the save, wherever the scheduler
was. The three training runs start together with the module: two uninterrupted
runs with the same seed in separate processes (with different hash seeds), and
one that dies inside the save of step 12 and is then resumed.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxseq import models
from jaxseq.training import checkpoint, loop, steps
from tests.fault_worker import CHECKPOINT_EVERY, CONFIG, MAX_STEPS, state_of
from tests.subprocesses import REPO, Worker, worker_env

TIMEOUT = 240
KILLED_IN_SAVE_OF = 12  # the training run dies inside this step's save (mid_write)


def _worker(name: str, out: Path, job: str, *extra: str, **env: str) -> Worker:
    return Worker(
        name, "tests.fault_worker", [job, str(out), *extra], out.parent, worker_env(**env), TIMEOUT
    )


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory):
    """Two uninterrupted runs (same seed, separate processes) and one that dies
    inside a save, started at once; killed at the end if still running."""
    root = tmp_path_factory.mktemp("faults")
    workers = {
        "first": _worker("first", root / "first", "train", PYTHONHASHSEED="1"),
        "second": _worker("second", root / "second", "train", PYTHONHASHSEED="2"),
        "killed": _worker(
            "killed",
            root / "killed",
            "train",
            PYTHONHASHSEED="3",
            **{checkpoint.FAULT_ENV: f"mid_write@{KILLED_IN_SAVE_OF}"},
        ),
    }
    yield root, workers
    for worker in workers.values():
        worker.kill()


def _committed_steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _interrupted_saves(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]


def _final_leaves(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "final.npz") as data:
        return dict(data)


def _assert_same_leaves(actual: dict, desired: dict) -> None:
    assert actual.keys() == desired.keys()
    for name, value in desired.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def _assert_died_in_save(worker: Worker, phase: str, step: int) -> None:
    """The worker was ended by the hook, inside the save of ``step`` at ``phase``."""
    worker.wait(expect_code=checkpoint.FAULT_EXIT_CODE)
    assert f"inside the save of step {step} at phase {phase}" in worker.log_path.read_text()


def _train_state_like_the_workers(config=CONFIG, **optimizer_kwargs) -> steps.TrainState:
    optimizer = steps.make_optimizer(
        **{"learning_rate": 1e-2, "clip_norm": 1.0, **optimizer_kwargs}
    )
    return steps.create_train_state(models.labeler_init(jax.random.key(0), config), optimizer)


@pytest.mark.roundtrip
def test_a_run_killed_inside_a_save_resumes_to_bitwise_identical_params_and_metrics(
    training_runs,
):
    root, workers = training_runs
    killed_dir = root / "killed"
    checkpoint_dir = killed_dir / "checkpoints"
    _assert_died_in_save(workers["killed"], "mid_write", KILLED_IN_SAVE_OF)
    assert not (killed_dir / "done").exists()
    # The kill landed inside the save of step 12: its arrays are on disk in the
    # temporary folder, nothing of it is committed, the two previous steps are.
    last_complete = KILLED_IN_SAVE_OF - CHECKPOINT_EVERY
    assert _committed_steps(checkpoint_dir) == [last_complete - CHECKPOINT_EVERY, last_complete]
    (torn,) = _interrupted_saves(checkpoint_dir)
    assert torn.name.startswith(f"{KILLED_IN_SAVE_OF}.")
    assert any(f.is_file() and "/d/" in str(f) for f in torn.rglob("*"))  # arrays written
    assert not list(torn.rglob("commit_success.txt"))  # ... and not committed
    # Step 12's records were written before its save: resuming must drop them.
    logged = loop.read_metrics(killed_dir / "metrics.jsonl")
    assert max(r["step"] for r in logged) == KILLED_IN_SAVE_OF

    # The latest complete checkpoint restores (its leaf digests verified) in this
    # fresh process: exactly the state saved at step 8.
    mngr = checkpoint.manager(checkpoint_dir)
    restored = checkpoint.restore(mngr, _train_state_like_the_workers())
    mngr.close()
    assert int(restored.step) == last_complete

    resumed = _worker("resumed", killed_dir, "train", "--resume", PYTHONHASHSEED="4")
    resumed.wait()
    workers["first"].wait()
    _assert_same_leaves(_final_leaves(killed_dir), _final_leaves(root / "first"))
    # The metrics written before the kill past the last checkpoint were dropped
    # and written again: the file equals the uninterrupted one, byte for byte.
    assert (killed_dir / "metrics.jsonl").read_bytes() == (
        root / "first" / "metrics.jsonl"
    ).read_bytes()
    assert _committed_steps(checkpoint_dir)[-1] == MAX_STEPS
    assert not _interrupted_saves(checkpoint_dir)  # the torn save was replaced


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


# ------------------------------------------------------------- restores in a fresh process


@pytest.fixture(scope="module")
def saved_by_another_process(training_runs) -> Path:
    """The checkpoints (steps 20 and 24) that the uninterrupted worker wrote."""
    root, workers = training_runs
    workers["first"].wait()
    return root / "first" / "checkpoints"


def _restore_error(directory: Path, target, step=None) -> str:
    mngr = checkpoint.manager(directory)  # this process never saved there
    try:
        with pytest.raises((checkpoint.CheckpointMismatchError, FileNotFoundError)) as e:
            checkpoint.restore(mngr, target, step)
    finally:
        mngr.close()
    return str(e.value)


@pytest.mark.bad_input
def test_restoring_another_model_in_a_fresh_process_names_the_leaves(saved_by_another_process):
    """A run resumed with a changed model: the tree stored on disk is compared with
    the target before any array is read, and the message names the leaves."""
    wider = dataclasses.replace(CONFIG, hidden_size=10)
    message = _restore_error(saved_by_another_process, _train_state_like_the_workers(wider))
    assert "step 24" in message and str(saved_by_another_process) in message
    assert (
        "leaf params/rnn/0/W_h is stored as float32[8, 24] but the target expects "
        "float32[10, 30]" in message
    )
    assert "leaf params/output/V is stored as float32[8, 3]" in message
    assert "same model configuration" in message  # what to do

    half = _train_state_like_the_workers()
    half = half.replace(params=jax.tree.map(lambda x: x.astype(jnp.bfloat16), half.params))
    message = _restore_error(saved_by_another_process, half)
    assert (
        "leaf params/embed/E is stored as float32[12, 6] but the target expects "
        "bfloat16[12, 6]" in message
    )


@pytest.mark.bad_input
def test_restoring_with_missing_or_extra_leaves_in_a_fresh_process_names_them(
    saved_by_another_process,
):
    deeper = dataclasses.replace(CONFIG, num_layers=2)
    message = _restore_error(saved_by_another_process, _train_state_like_the_workers(deeper))
    assert "leaves missing from the checkpoint: params/rnn/1/W_h" in message
    assert "leaves in the checkpoint that the target lacks" not in message
    # No gradient clipping: the optimizer state has one element fewer.
    message = _restore_error(
        saved_by_another_process, _train_state_like_the_workers(clip_norm=None)
    )
    assert "leaves missing from the checkpoint: opt_state/0/0/count" in message
    assert "leaves in the checkpoint that the target lacks: opt_state/1/0/count" in message


@pytest.mark.bad_input
def test_restoring_a_step_that_does_not_exist_lists_the_committed_steps(
    saved_by_another_process,
):
    message = _restore_error(saved_by_another_process, _train_state_like_the_workers(), step=4)
    assert "checkpoint step 4 not found" in message and "committed steps are [20, 24]" in message


# ----------------------------------------------------------------------------- saves


def _state_target(step: int) -> dict:
    return jax.tree.map(jnp.zeros_like, state_of(step))


def _assert_restores(mngr, step: int) -> None:
    restored = checkpoint.restore(mngr, _state_target(step), step)
    _assert_same_leaves({k: np.asarray(v) for k, v in restored.items()}, state_of(step))


@pytest.mark.roundtrip
def test_save_killed_before_its_commit_leaves_the_previous_checkpoint(tmp_path):
    """The worker dies with every byte of step 2 written but not committed."""
    directory = tmp_path / "ckpt"
    worker = _worker(
        "die_before_commit", directory, "die_in_save", **{checkpoint.FAULT_ENV: "before_commit@2"}
    )
    _assert_died_in_save(worker, "before_commit", 2)
    (leftover,) = [p for p in directory.iterdir() if p.name.startswith("2.")]
    assert ".orbax-checkpoint-tmp" in leftover.name
    assert any(f.is_file() and "/d/" in str(f) for f in leftover.rglob("*"))  # data written
    assert (leftover / "default" / "_METADATA").is_file()  # the item is complete

    mngr = checkpoint.manager(directory)
    assert list(mngr.all_steps()) == [1] and mngr.latest_step() == 1
    _assert_restores(mngr, 1)
    with pytest.raises(FileNotFoundError, match=r"step 2 not found .* committed steps are \[1\]"):
        checkpoint.restore(mngr, _state_target(2), 2)
    # The leftover does not block saving step 2 again.
    checkpoint.save(mngr, 2, state_of(2))
    assert mngr.latest_step() == 2
    _assert_restores(mngr, 2)
    mngr.close()


@pytest.mark.bad_input
def test_the_fault_injection_hook_rejects_a_malformed_plan(tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint.FAULT_ENV, "halfway@2")
    mngr = checkpoint.manager(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"JAXSEQ_FAULT_IN_SAVE='halfway@2'.*mid_write"):
        checkpoint.save(mngr, 2, {"x": np.zeros(2, np.float32)})
    mngr.close()


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
def test_the_step_to_restore_is_checked(saved):
    mngr = checkpoint.manager(saved)
    _assert_restores(mngr, np.int64(5))  # NumPy (and JAX) integer scalars are steps
    with pytest.raises(FileNotFoundError, match=r"step 6 not found in .*steps are \[5\]"):
        checkpoint.restore(mngr, _state_target(5), 6)
    with pytest.raises(ValueError, match=r"`step` must be >= 0, got -1"):
        checkpoint.restore(mngr, _state_target(5), -1)
    with pytest.raises(TypeError, match=r"`step` must be an int or None, got '5'"):
        checkpoint.restore(mngr, _state_target(5), "5")
    mngr.close()
    empty = checkpoint.manager(saved.parent / "empty")
    with pytest.raises(FileNotFoundError, match=r"no committed checkpoint in .*empty$"):
        checkpoint.restore(empty, _state_target(5))
    empty.close()


@pytest.mark.bad_input
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_truncated_or_missing_data_file_raises(saved, damage):
    data_file = _largest_data_file(saved / "5")
    if damage == "truncate":
        data_file.write_bytes(data_file.read_bytes()[:1000])
    else:
        data_file.unlink()
    # The restore runs in a fresh process: when a read fails, orbax closes its event loop
    # with tensorstore reads of the damaged file still pending, and their callbacks later
    # report "Event loop is closed" as an unraisable exception, which pytest would pin on
    # whichever test of this process runs next.
    script = textwrap.dedent(
        f"""
        from jaxseq.training import checkpoint
        from tests.test_faults import _state_target

        mngr = checkpoint.manager({str(saved)!r})
        try:
            checkpoint.restore(mngr, _state_target(5))
        except checkpoint.CheckpointCorruptError as e:
            print("CheckpointCorruptError:", e, flush=True)
        else:
            print("restored", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=worker_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
        check=False,
    )
    first = done.stdout.splitlines()[0] if done.stdout else done.stderr[-2000:]
    assert re.match(r"CheckpointCorruptError: .*step 5 .* could not be read", first), first


@pytest.mark.roundtrip
def test_checkpoints_without_digests_restore_unverified(tmp_path):
    """A checkpoint written by plain orbax (no digests) still restores."""
    mngr = ocp.CheckpointManager(os.path.abspath(tmp_path / "ckpt"))
    mngr.save(3, args=ocp.args.StandardSave(state_of(3)))
    mngr.wait_until_finished()
    assert checkpoint.stored_digests(mngr, 3) is None
    _assert_restores(mngr, 3)
    mngr.close()
    # Without jaxseq's tree spec, orbax's own metadata is compared, also by a
    # manager that never saved there.
    wrong = {**_state_target(3), "b": np.zeros(1000, np.float32)}
    with pytest.raises(
        checkpoint.CheckpointMismatchError,
        match=r"leaf b is stored as float32\[1024\] but the target expects float32\[1000\]",
    ):
        checkpoint.restore(ocp.CheckpointManager(os.path.abspath(tmp_path / "ckpt")), wrong)


# ----------------------------------------------------------------------------- disk


@pytest.mark.bad_input
def test_too_little_disk_space_fails_before_the_first_step(tmp_path, monkeypatch):
    state = state_of(1)
    needed = loop.checkpoint_bytes_needed(state, max_to_keep=loop.FitConfig().max_to_keep)
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
