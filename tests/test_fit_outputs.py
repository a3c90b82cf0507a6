"""What fit leaves in a run folder and shows: best/latest checkpoints, the overwrite guard,
provenance, the timing log, TensorBoard events, profiler traces, console lines and the
progress total; FitConfig's checks. The toy step of tests/test_fit_data.py keeps it fast."""

from __future__ import annotations

import json
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import metrics
from jaxseq.training import checkpoint, loop, provenance, steps
from tests.test_fit_data import (
    _toy_step,
    epoch_batches,
    generator_batches,
    records,
    toy_fit,
    toy_state,
)

# ----------------------------------------------------------------------------- best checkpoints

# The dev "loss" the eval step reports after each step (indexed by the step): evaluated
# every 2 steps, so the evaluations at steps 2, 4, ..., 12 see 5, 3, 4, 1, 6, 7.
DEV_LOSS = np.array([9, 9, 5, 9, 3, 9, 4, 9, 1, 9, 6, 9, 7, 9, 9], np.float32)


def counting_step(state, batch, key):
    one = jnp.ones((), jnp.float32)
    return state.replace(step=state.step + 1), {"loss": metrics.Ratio(one, one)}


def scripted_eval(state_steps):
    """An eval step whose dev loss is DEV_LOSS at the step being evaluated (its accuracy
    is minus that): the ranking of the checkpoints is known in advance."""

    def eval_step(params, batch):
        value = jnp.float32(DEV_LOSS[state_steps[-1]])
        one = jnp.ones((), jnp.float32)
        return {"loss": metrics.Ratio(value, one), "accuracy": metrics.Ratio(-value, one)}

    return eval_step


def best_fit(out_dir, *, max_steps=12, resume=False, **config):
    seen_steps = [0]

    def train_step(state, batch, key):
        state, sums = counting_step(state, batch, key)
        seen_steps.append(int(state.step))
        return state, sums

    options = dict(
        num_epochs=3,
        max_steps=max_steps,
        log_every=2,
        eval_every=2,
        checkpoint_every=4,
        progress=False,
        max_to_keep=1,
        best_metric="loss",
    )
    options.update(config)
    return loop.fit(
        steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=()),
        train_step=train_step,
        eval_step=scripted_eval(seen_steps),
        train_batches=epoch_batches,
        eval_sets={"dev": lambda: [None]},
        key=jax.random.key(0),
        config=loop.FitConfig(**options),
        out_dir=str(out_dir),
        resume=resume,
    )


def on_disk(out_dir) -> list[int]:
    directory = out_dir / loop.CHECKPOINTS_DIR
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@pytest.mark.roundtrip
@pytest.mark.parametrize(
    "mode, metric, best", [("min", "loss", 8), ("max", "accuracy", 8), ("max", "loss", 12)]
)
def test_the_best_checkpoints_and_the_latest_are_kept(tmp_path, mode, metric, best):
    """Every evaluated step is saved; the best max_to_keep by the dev metric stay, and
    the latest too (so resume continues from the end, not from the best)."""
    best_fit(tmp_path, best_mode=mode, best_metric=metric)
    assert on_disk(tmp_path) == sorted({best, 12})
    mngr = checkpoint.manager(tmp_path / loop.CHECKPOINTS_DIR)
    assert mngr.latest_step() == 12
    mngr.close()


@pytest.mark.roundtrip
def test_max_to_keep_best_ones_and_resume_from_the_latest(tmp_path):
    best_fit(tmp_path, max_steps=10, max_to_keep=2)  # dev losses 5, 3, 4, 1, 6 at 2..10
    assert on_disk(tmp_path) == [4, 8, 10]
    state, _ = best_fit(tmp_path, max_steps=12, max_to_keep=2, resume=True)
    assert int(state.step) == 12
    assert [r["step"] for r in records(tmp_path) if r["split"] == "dev"] == [2, 4, 6, 8, 10, 12]
    assert on_disk(tmp_path) == [4, 8, 12]  # 10 (loss 6) was the latest only; 12 (7) is now


@pytest.mark.roundtrip
def test_without_best_metric_the_latest_max_to_keep_are_kept(tmp_path):
    best_fit(tmp_path, best_metric=None, max_to_keep=3, checkpoint_every=2)
    assert on_disk(tmp_path) == [8, 10, 12]


@pytest.mark.bad_input
def test_best_checkpoint_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"best_metric='f1' is not a metric of eval set 'dev'"):
        best_fit(tmp_path / "a", best_metric="f1")
    with pytest.raises(ValueError, match=r"best_split='test' is not an eval set.*\['dev'\]"):
        best_fit(tmp_path / "b", best_split="test")
    with pytest.raises(ValueError, match="`best_mode` must be 'min' or 'max', got 'lowest'"):
        loop.FitConfig(best_metric="loss", best_mode="lowest")
    with pytest.raises(ValueError, match="`best_split` is set but `best_metric` is not"):
        loop.FitConfig(best_split="dev")
    with pytest.raises(ValueError, match="max_to_keep"):
        loop.FitConfig(max_to_keep=0)
    with pytest.raises(ValueError, match=r"needs `best_split`.*2 eval sets \(\['a', 'b'\]\)"):
        loop.fit(
            steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=()),
            train_step=counting_step,
            eval_step=scripted_eval([0]),
            train_batches=[None],
            eval_sets={"a": [None], "b": [None]},
            key=jax.random.key(0),
            config=loop.FitConfig(best_metric="loss", progress=False),
            out_dir=str(tmp_path / "c"),
        )


@pytest.mark.bad_input
def test_fit_config_rejects_fractional_and_malformed_values():
    with pytest.raises(TypeError, match="num_epochs"):
        loop.FitConfig(num_epochs=2.5)
    with pytest.raises(ValueError, match="num_epochs"):
        loop.FitConfig(num_epochs=0)
    with pytest.raises(TypeError, match="profile_steps"):
        loop.FitConfig(profile_steps=[2, 3])
    with pytest.raises(ValueError, match=r"profile_steps\[1\]"):
        loop.FitConfig(profile_steps=(3, 2))
    with pytest.raises(TypeError, match="tensorboard"):
        loop.FitConfig(tensorboard="yes")
    with pytest.raises(TypeError, match="console"):
        loop.FitConfig(console=1)


# ----------------------------------------------------------------------------- run folder


@pytest.mark.bad_input
def test_an_existing_run_is_never_overwritten_silently(tmp_path):
    toy_fit(tmp_path, epoch_batches, max_steps=4)
    first = (tmp_path / loop.METRICS_FILE).read_bytes()
    with pytest.raises(FileExistsError) as caught:
        toy_fit(tmp_path, epoch_batches, max_steps=6)
    message = str(caught.value)
    assert str(tmp_path) in message and "resume=True" in message and "overwrite=True" in message
    assert "metrics.jsonl" in message and "checkpoints of steps [4]" in message
    assert (tmp_path / loop.METRICS_FILE).read_bytes() == first
    with pytest.raises(ValueError, match="`resume` and `overwrite` are exclusive"):
        toy_fit(tmp_path, epoch_batches, resume=True, overwrite=True)

    # overwrite=True: fit's own outputs go, the user's files stay; a fresh run follows.
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / loop.PROFILE_DIR).mkdir()
    toy_fit(tmp_path, epoch_batches, max_steps=6, overwrite=True)
    toy_fit(tmp_path / "fresh", epoch_batches, max_steps=6)
    assert (tmp_path / loop.METRICS_FILE).read_bytes() == (
        tmp_path / "fresh" / loop.METRICS_FILE
    ).read_bytes()
    assert on_disk(tmp_path) == [4, 6] and (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / loop.PROFILE_DIR).exists()
    assert len(json.loads((tmp_path / loop.PROVENANCE_FILE).read_text())) == 1
    # A folder with only other files is not a run.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    toy_fit(tmp_path / "other", epoch_batches, max_steps=2)


@pytest.mark.reference
def test_provenance_keeps_the_first_session_and_appends_resumed_ones(tmp_path):
    toy_fit(tmp_path, epoch_batches, max_steps=4)
    (first,) = json.loads((tmp_path / loop.PROVENANCE_FILE).read_text())
    toy_fit(tmp_path, epoch_batches, max_steps=8, resume=True)
    sessions = json.loads((tmp_path / loop.PROVENANCE_FILE).read_text())
    assert sessions[0] == first and [s["start_step"] for s in sessions] == [0, 4]
    want_keys = set(provenance.collect()) | {"start_step"}
    assert all(set(s) == want_keys for s in sessions)
    assert first["jax"] == jax.__version__ and first["devices"]["count"] == jax.device_count()
    assert first["command"] == sys.orig_argv


@pytest.mark.reference
def test_timing_log_has_a_line_per_train_record(tmp_path):
    loop.fit(
        steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=()),
        train_step=counting_step,
        eval_step=None,
        train_batches=epoch_batches,
        key=jax.random.key(0),
        config=loop.FitConfig(num_epochs=2, log_every=3, progress=False),
        out_dir=str(tmp_path),
        tokens_in=lambda batch: 4,
    )
    train_steps = [r["step"] for r in records(tmp_path) if r["split"] == "train"]
    assert train_steps == [3, 5, 6, 9, 10]
    lines = loop.read_metrics(tmp_path / loop.TIMING_FILE)
    assert [line["step"] for line in lines] == train_steps
    window_steps = np.diff([0, *train_steps])
    for line, n in zip(lines, window_steps):
        assert set(line) == {"step", "wall_time_s", "steps_per_s", "tokens_per_s"}
        assert line["tokens_per_s"] == pytest.approx(4 * line["steps_per_s"], rel=1e-9)
        assert line["steps_per_s"] > 0 and line["wall_time_s"] > 0
        assert n / line["steps_per_s"] <= line["wall_time_s"]  # a window's time fits in the run
    walls = [line["wall_time_s"] for line in lines]
    assert walls == sorted(walls)
    assert not any("time" in key or "per_s" in key for r in records(tmp_path) for key in r)


# ----------------------------------------------------------------------------- TensorBoard


def read_events(directory) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every tensorboardX event file under ``directory``, read with the
    TFRecord framing (8-byte length, 4-byte crc, data, 4-byte crc) and tensorboardX's
    Event protobuf: tag -> [(step, value)]."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.mark.roundtrip
def test_tensorboard_events_hold_every_record(tmp_path):
    pytest.importorskip("tensorboardX")
    toy_fit(tmp_path, epoch_batches, max_steps=8, tensorboard=True)
    events = read_events(tmp_path / loop.TENSORBOARD_DIR)
    want: dict[str, list[tuple[int, float]]] = {}
    for r in records(tmp_path):
        for name in ("epoch", "learning_rate", "loss", "first"):
            if name in r:
                want.setdefault(f"{r['split']}/{name}", []).append((r["step"], r[name]))
    assert set(events) == set(want)
    for tag, values in want.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in values], tag
        np.testing.assert_allclose([v for _, v in events[tag]], [v for _, v in values], rtol=1e-6)


@pytest.mark.bad_input
def test_tensorboard_switch(tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    toy_fit(tmp_path / "off", epoch_batches, max_steps=2, tensorboard=False)
    assert not (tmp_path / "off" / loop.TENSORBOARD_DIR).exists()
    toy_fit(tmp_path / "auto", epoch_batches, max_steps=2)  # None: on, it is installed
    assert read_events(tmp_path / "auto" / loop.TENSORBOARD_DIR)["train/loss"][0][0] == 2
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    toy_fit(tmp_path / "missing", epoch_batches, max_steps=2)  # None: silently off
    assert not (tmp_path / "missing" / loop.TENSORBOARD_DIR).exists()
    with pytest.raises(ImportError, match=r"tensorboard=True\) needs tensorboardX.*pip install"):
        toy_fit(tmp_path / "required", epoch_batches, max_steps=2, tensorboard=True)
    assert not (tmp_path / "required" / loop.METRICS_FILE).exists()


# ----------------------------------------------------------------------------- profile, console


@pytest.mark.reference
def test_profile_steps_write_a_trace(tmp_path):
    toy_fit(tmp_path, epoch_batches, max_steps=4, profile_steps=(2, 3))
    traces = list((tmp_path / loop.PROFILE_DIR).rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    toy_fit(tmp_path / "none", epoch_batches, max_steps=2)
    assert not (tmp_path / "none" / loop.PROFILE_DIR).exists()


@pytest.mark.reference
def test_a_console_line_per_evaluation(tmp_path, capsys):
    toy_fit(tmp_path / "on", epoch_batches, max_steps=8, console=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    dev = [r for r in records(tmp_path / "on") if r["split"] == "dev"]
    assert lines == [
        f"step {r['step']} (epoch {r['epoch']:.2f}) dev: loss {r['loss']:.4f}" for r in dev
    ]
    assert lines[0] == f"step 4 (epoch 0.80) dev: loss {dev[0]['loss']:.4f}"
    toy_fit(tmp_path / "off", epoch_batches, max_steps=8)  # console=None follows progress=False
    assert "step 4" not in capsys.readouterr().out


class RecordingBar:
    """A stand-in for tqdm that remembers its total."""

    made: list[RecordingBar] = []

    def __init__(self, total=None, initial=0, **kwargs):
        self.total, self.n = total, initial
        RecordingBar.made.append(self)

    def update(self, n):
        self.n += n

    def refresh(self):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


@pytest.mark.reference
@pytest.mark.parametrize(
    "batches, max_steps, total",
    [(epoch_batches, None, 15), (epoch_batches, 7, 7), (generator_batches, None, None),
     (generator_batches, 7, 7), (lambda epoch: epoch_batches(0)[: 4 - epoch], None, 9)],
    ids=["len", "len-max_steps", "no-len", "no-len-max_steps", "unequal-epochs"],
)  # fmt: skip
def test_the_progress_total_is_known_when_the_length_is(
    tmp_path, monkeypatch, batches, max_steps, total
):
    """num_epochs (3) x len(batches), or max_steps; epochs of 4, 3 and 2 batches: the
    estimate is revised at every epoch (12, then 4 + 3 x 2, then 7 + 2)."""
    RecordingBar.made = []
    monkeypatch.setattr(loop, "tqdm", RecordingBar)
    monkeypatch.setattr(loop.tqdm, "write", print, raising=False)
    toy_fit(tmp_path, batches, max_steps=max_steps, eval_sets={})
    (bar,) = RecordingBar.made
    assert bar.total == total and bar.n == (max_steps or (9 if total == 9 else 15))


# ----------------------------------------------------------------------------- issue 14


@pytest.mark.bad_input
def test_overwrite_keeps_a_symlinked_checkpoints_folder_and_empties_it(tmp_path):
    bigger_disk = tmp_path / "bigger_disk"
    bigger_disk.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / loop.CHECKPOINTS_DIR).symlink_to(bigger_disk, target_is_directory=True)
    (run / "notes.txt").write_text("mine")
    toy_fit(run, epoch_batches, max_steps=4)
    assert on_disk(run) == [4] and sorted(p.name for p in bigger_disk.iterdir())
    toy_fit(run, epoch_batches, max_steps=6, overwrite=True)  # was: OSError from rmtree
    assert (run / loop.CHECKPOINTS_DIR).is_symlink() and on_disk(run) == [4, 6]
    assert sorted(int(p.name) for p in bigger_disk.iterdir() if p.name.isdigit()) == [4, 6]
    assert [r["step"] for r in records(run)][-1] == 6 and (run / "notes.txt").exists()
    # A linked file output is removed as a link, never what it points to.
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("[]")
    (run / loop.PROVENANCE_FILE).unlink()
    (run / loop.PROVENANCE_FILE).symlink_to(elsewhere)
    toy_fit(run, epoch_batches, max_steps=2, overwrite=True)
    assert elsewhere.read_text() == "[]" and not (run / loop.PROVENANCE_FILE).is_symlink()


@pytest.mark.bad_input
def test_overwrite_deletes_nothing_unless_it_can_delete_everything(tmp_path, monkeypatch):
    toy_fit(tmp_path, epoch_batches, max_steps=4)
    before = sorted(p.name for p in tmp_path.iterdir())
    denied = str(tmp_path / loop.CHECKPOINTS_DIR)
    real_access = loop.os.access
    monkeypatch.setattr(
        loop.os, "access", lambda path, mode: path != denied and real_access(path, mode)
    )  # as root, permissions cannot make a folder undeletable
    with pytest.raises(PermissionError, match=r"nothing was deleted") as caught:
        toy_fit(tmp_path, epoch_batches, max_steps=4, overwrite=True)
    assert denied in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.bad_input
def test_a_run_that_failed_before_any_record_is_not_a_run(tmp_path):
    def failing_step(state, batch, key):
        raise RuntimeError("a bug in the first step")

    with pytest.raises(RuntimeError, match="a bug in the first step"):
        toy_fit(tmp_path, epoch_batches, step=failing_step, max_steps=4)
    toy_fit(tmp_path, epoch_batches, max_steps=4)  # was: FileExistsError (empty metrics.jsonl)
    toy_fit(tmp_path / "straight", epoch_batches, max_steps=4)
    assert (tmp_path / loop.METRICS_FILE).read_bytes() == (
        tmp_path / "straight" / loop.METRICS_FILE
    ).read_bytes()


@pytest.mark.bad_input
def test_metric_types_and_best_metric_are_checked_before_anything_is_written(tmp_path):
    calls = []

    def bare_confusion_step(state, batch, key):
        calls.append(batch)
        state, sums = counting_step(state, batch, key)
        return state, {**sums, "confusion": jnp.ones((2, 2))}

    with pytest.raises(TypeError, match=r"metric 'confusion' is an array of shape \(2, 2\)"):
        toy_fit(tmp_path / "a", epoch_batches, step=bare_confusion_step, log_every=50)
    assert len(calls) == 1  # after the first step, not when the first log window closes
    assert not (tmp_path / "a" / loop.METRICS_FILE).read_text()  # no record, no checkpoint
    assert not loop._committed_checkpoints(str(tmp_path / "a"))

    with pytest.raises(ValueError, match=r"best_metric='f1' is not a metric of eval set 'dev'"):
        best_fit(tmp_path / "b", best_metric="f1", max_steps=40)
    assert not (tmp_path / "b" / loop.METRICS_FILE).exists()  # failed before writing


@pytest.mark.roundtrip
def test_tensorboard_events_survive_a_crash_and_the_resume(tmp_path):
    """A run killed inside the save of step 8 (after 4's was committed), then resumed,
    holds every event of a straight run (the crashed session's flushed before each
    checkpoint; the resume rewrites the steps after 4, hiding the older ones)."""
    pytest.importorskip("tensorboardX")
    import subprocess

    from tests.subprocesses import REPO, worker_env

    code = (
        "import sys; from tests.test_fit_data import toy_fit, epoch_batches; "
        "toy_fit(sys.argv[1], epoch_batches, max_steps=12, tensorboard=True)"
    )
    env = worker_env(**{checkpoint.FAULT_ENV: "mid_write@8"})
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "crashed")],
        cwd=REPO, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == checkpoint.FAULT_EXIT_CODE, done.stderr[-2000:]
    crashed = read_events(tmp_path / "crashed" / loop.TENSORBOARD_DIR)
    assert 4 in [s for s, _ in crashed["dev/epoch"]]  # flushed with step 4's checkpoint
    toy_fit(tmp_path / "crashed", epoch_batches, max_steps=12, tensorboard=True, resume=True)
    toy_fit(tmp_path / "straight", epoch_batches, max_steps=12, tensorboard=True)
    resumed = read_events(tmp_path / "crashed" / loop.TENSORBOARD_DIR)
    straight = read_events(tmp_path / "straight" / loop.TENSORBOARD_DIR)
    assert set(resumed) == set(straight)
    for tag, values in straight.items():
        got = dict(resumed[tag])  # the latest event of each step, as TensorBoard shows it
        assert sorted(got) == [s for s, _ in values], tag
        np.testing.assert_allclose([got[s] for s, _ in values], [v for _, v in values])


@pytest.mark.roundtrip
def test_resuming_a_finished_run_writes_nothing(tmp_path):
    toy_fit(tmp_path, epoch_batches, max_steps=8, tensorboard=True)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    _, last_eval = toy_fit(tmp_path, epoch_batches, max_steps=8, tensorboard=True, resume=True)
    after = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before  # no provenance session, no new events file
    assert last_eval["dev"]["loss"] == records(tmp_path)[-1]["loss"]


@pytest.mark.reference
def test_the_console_line_shows_the_loss_first(tmp_path, capsys):
    def eval_step(params, batch):
        one = jnp.ones((), jnp.float32)
        return {"accuracy": metrics.Ratio(one, one), "loss": metrics.Ratio(one + one, one)}

    loop.fit(
        steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=()),
        train_step=counting_step,
        eval_step=eval_step,
        train_batches=[None, None],
        eval_sets={"dev": [None]},
        key=jax.random.key(0),
        config=loop.FitConfig(progress=False, console=True),
        out_dir=str(tmp_path),
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert lines == ["step 2 (epoch 1.00) dev: loss 2.0000 accuracy 1.0000"]


@pytest.mark.reference
def test_the_progress_bar_shows_tokens_per_second_only_with_tokens_in(tmp_path, monkeypatch):
    shown: list[dict] = []

    class PostfixBar(RecordingBar):
        def set_postfix(self, **kwargs):
            shown.append(kwargs)

    monkeypatch.setattr(loop, "tqdm", PostfixBar)
    toy_fit(tmp_path / "a", epoch_batches, max_steps=2)
    assert shown and all(set(s) == {"loss"} for s in shown)
    shown.clear()
    loop.fit(
        toy_state(),
        train_step=_toy_step,
        eval_step=None,
        train_batches=epoch_batches,
        key=jax.random.key(0),
        config=loop.FitConfig(max_steps=2, log_every=1, progress=False),
        out_dir=str(tmp_path / "b"),
        tokens_in=lambda batch: batch.size,
    )
    assert shown and all(set(s) == {"loss", "tok_s"} for s in shown)


@pytest.mark.roundtrip
def test_two_sessions_in_the_same_second_keep_both_event_files(tmp_path, monkeypatch):
    """tensorboardX names an event file after the time in whole seconds and the host; a
    resumed session that starts within the same second as the crashed one must not
    truncate the crashed session's events (the failure seen when a quick crash and resume
    ran on a quiet machine)."""
    pytest.importorskip("tensorboardX")
    import time

    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)  # one second for both
    for step in (1, 2):
        writer = loop._tensorboard_writer(True, str(tmp_path), purge_step=None)
        writer.add_scalar("train/loss", float(step), step)
        writer.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert read_events(tmp_path)["train/loss"] == [(1, 1.0), (2, 2.0)]
