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
from tests.test_fit_data import epoch_batches, generator_batches, records, toy_fit

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
