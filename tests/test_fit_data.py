"""fit's training data and eval sets in every accepted form, what resumes bitwise, and the
interrupt (SIGINT) path: a toy one-parameter step (compiled once) keeps these fast."""

from __future__ import annotations

import json
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import metrics
from jaxseq.training import checkpoint, loop, steps

BATCHES_PER_EPOCH = 5


def epoch_batches(epoch: int) -> list[np.ndarray]:
    """Five [4] float32 batches, different in every epoch (a function of the epoch)."""
    rng = np.random.default_rng(100 + epoch)
    return [rng.normal(size=4).astype(np.float32) for _ in range(BATCHES_PER_EPOCH)]


@jax.jit
def _toy_step(state, batch, key):
    """w <- 0.9 w + 0.1 mean(batch) + noise(fold_in(key, step)): order- and key-dependent."""
    noise = 1e-3 * jax.random.normal(jax.random.fold_in(key, state.step), ())
    w = 0.9 * state.params["w"] + 0.1 * jnp.mean(batch) + noise
    one = jnp.ones((), jnp.float32)
    sums = {"loss": metrics.Ratio(w * w, one), "first": metrics.Ratio(batch[0], one)}
    return state.replace(step=state.step + 1, params={"w": w}), sums


class Recorder:
    """A train step that records the first value of every batch it trains on and can
    send itself SIGINT after a chosen step."""

    def __init__(self, interrupt_after: int | None = None):
        self.seen, self.interrupt_after = [], interrupt_after

    def __call__(self, state, batch, key):
        self.seen.append(float(batch[0]))
        out = _toy_step(state, batch, key)
        if self.interrupt_after is not None and len(self.seen) == self.interrupt_after:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C would, between two steps' code
        return out


@jax.jit
def toy_eval_step(params, batch):
    error = jnp.sum((params["w"] - batch) ** 2)
    return {"loss": metrics.Ratio(error, jnp.float32(batch.size))}


def toy_state():
    return steps.TrainState(
        step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros((), jnp.float32)}, opt_state=()
    )


def toy_fit(out_dir, train_batches, *, step=None, eval_sets="default", **kwargs):
    """fit() of the toy step: a train record every 2 steps, dev every 4, checkpoints every 4."""
    options = dict(num_epochs=3, log_every=2, eval_every=4, checkpoint_every=4, progress=False)
    resume = kwargs.pop("resume", False)
    overwrite = kwargs.pop("overwrite", False)
    options.update(kwargs)
    if eval_sets == "default":
        eval_sets = {"dev": lambda: epoch_batches(99)[:2]}
    return loop.fit(
        toy_state(),
        train_step=step or Recorder(),
        eval_step=toy_eval_step,
        train_batches=train_batches,
        eval_sets=eval_sets,
        key=jax.random.key(3),
        config=loop.FitConfig(**options),
        out_dir=str(out_dir),
        resume=resume,
        overwrite=overwrite,
        learning_rate=0.5,
    )


def firsts(batches) -> list[float]:
    return [float(b[0]) for b in batches]


def records(out_dir) -> list[dict]:
    return loop.read_metrics(out_dir / loop.METRICS_FILE)


def generator_batches(epoch: int):
    yield from epoch_batches(epoch)  # no len(): the epoch's length is unknown until it ends


# ----------------------------------------------------------------------------- forms


@pytest.mark.reference
def test_every_form_of_train_batches_trains_the_same_updates(tmp_path):
    """epoch -> list, epoch -> generator: the batches of epochs 0, 1, 2 in order; a
    list: the same batches every epoch; a one-shot generator: one pass."""
    want = firsts(epoch_batches(0) + epoch_batches(1) + epoch_batches(2))
    by_list, by_generator = Recorder(), Recorder()
    state_list, _ = toy_fit(tmp_path / "list", epoch_batches, step=by_list)
    state_gen, _ = toy_fit(tmp_path / "gen", generator_batches, step=by_generator)
    assert by_list.seen == by_generator.seen == want
    assert float(state_list.params["w"]) == float(state_gen.params["w"])
    # The same records, except the epoch of an epoch with no len(): its completed
    # epochs until its last batch.
    listed, generated = records(tmp_path / "list"), records(tmp_path / "gen")
    assert [{**r, "epoch": None} for r in listed] == [{**r, "epoch": None} for r in generated]
    train_steps = [*range(2, 15, 2), 15]
    assert [r["epoch"] for r in listed if r["split"] == "train"] == [
        s / BATCHES_PER_EPOCH for s in train_steps
    ]
    assert [r["epoch"] for r in generated if r["split"] == "train"] == [
        0.0,
        0.0,
        1.0,
        1.0,
        2.0,
        2.0,
        2.0,
        3.0,
    ]  # fmt: skip (step 10 ends epoch 1: its epoch is 2.0)

    fixed = Recorder()
    toy_fit(tmp_path / "fixed", epoch_batches(7), step=fixed)
    assert fixed.seen == firsts(epoch_batches(7)) * 3

    once = Recorder()
    toy_fit(tmp_path / "once", iter(epoch_batches(0) + epoch_batches(1)), step=once, num_epochs=1)
    assert once.seen == firsts(epoch_batches(0) + epoch_batches(1))
    assert records(tmp_path / "once")[-1]["epoch"] == 1.0


@pytest.mark.roundtrip
@pytest.mark.parametrize("form", ["list", "generator"])
def test_a_callable_resumes_bitwise_whatever_it_returns(tmp_path, form):
    batches = epoch_batches if form == "list" else generator_batches
    straight, _ = toy_fit(tmp_path / "straight", batches, max_steps=13)
    first_part = Recorder()
    # Stopped at 8 (a step with an evaluation and a checkpoint, as in the straight run).
    toy_fit(tmp_path / "resumed", batches, step=first_part, max_steps=8)
    second_part = Recorder()
    resumed, _ = toy_fit(tmp_path / "resumed", batches, step=second_part, max_steps=13, resume=True)
    all_batches = firsts(epoch_batches(0) + epoch_batches(1) + epoch_batches(2))
    assert second_part.seen == all_batches[8:13]  # skipped the 8 taken, read on from the 9th
    assert float(resumed.params["w"]) == float(straight.params["w"])
    assert (tmp_path / "resumed" / loop.METRICS_FILE).read_bytes() == (
        tmp_path / "straight" / loop.METRICS_FILE
    ).read_bytes()


@pytest.mark.roundtrip
def test_resuming_with_a_one_shot_iterator_consumes_the_batches_taken(tmp_path):
    """Not bitwise by contract (fit cannot know what a new iterator yields); given the
    same stream again it skips the taken batches by reading them, and continues."""
    stream = epoch_batches(0) + epoch_batches(1)
    straight = Recorder()
    want, _ = toy_fit(tmp_path / "a", iter(stream), step=straight, num_epochs=1, max_steps=9)
    toy_fit(tmp_path / "b", iter(stream), num_epochs=1, max_steps=4)
    rest = Recorder()
    got, _ = toy_fit(
        tmp_path / "b", iter(stream), step=rest, num_epochs=1, max_steps=9, resume=True
    )
    assert rest.seen == firsts(stream)[4:9]
    assert float(got.params["w"]) == float(want.params["w"])


@pytest.mark.bad_input
def test_data_forms_that_cannot_work_are_rejected_before_training(tmp_path):
    step = Recorder()
    with pytest.raises(ValueError, match=r"`train_batches` is a one-shot iterator.*num_epochs=3"):
        toy_fit(tmp_path, iter(epoch_batches(0)), step=step)
    with pytest.raises(TypeError, match=r"`train_batches` must be a callable.*got int"):
        toy_fit(tmp_path, 5, step=step)
    with pytest.raises(TypeError, match=r"eval_sets\['dev'\] is a one-shot iterator.*callable"):
        toy_fit(tmp_path, epoch_batches, step=step, eval_sets={"dev": iter(epoch_batches(9))})
    with pytest.raises(TypeError, match=r"eval_sets\['dev'\] must be a callable.*got float"):
        toy_fit(tmp_path, epoch_batches, step=step, eval_sets={"dev": 1.0})
    with pytest.raises(ValueError, match=r"`eval_sets` names .* got 'train'"):
        toy_fit(tmp_path, epoch_batches, step=step, eval_sets={"train": epoch_batches(9)})
    assert step.seen == [] and not (tmp_path / loop.METRICS_FILE).exists()


@pytest.mark.reference
def test_an_eval_set_may_be_a_list_evaluated_at_every_evaluation(tmp_path):
    dev = epoch_batches(99)[:2]
    _, last_eval = toy_fit(tmp_path / "list", epoch_batches, eval_sets={"dev": dev}, max_steps=8)
    dev_records = [r for r in records(tmp_path / "list") if r["split"] == "dev"]
    assert [r["step"] for r in dev_records] == [4, 8]
    # Independently: the squared error of w against both batches, over their 8 values.
    state, _ = toy_fit(tmp_path / "again", epoch_batches, eval_sets={}, max_steps=8)
    w = np.float32(state.params["w"])
    want = float(np.sum((w - np.concatenate(dev)) ** 2, dtype=np.float32)) / 8
    assert last_eval["dev"]["loss"] == pytest.approx(want, rel=1e-6)
    assert dev_records[-1]["loss"] == last_eval["dev"]["loss"]


# ----------------------------------------------------------------------------- SIGINT


@pytest.mark.roundtrip
def test_sigint_saves_the_current_step_and_resuming_matches_a_straight_run(tmp_path):
    """Ctrl-C after step 5 (no record or checkpoint due there): fit finishes the step,
    saves it with its unfinished log window, raises FitInterrupted; the resumed run
    ends with the straight run's parameters and metrics file, byte for byte."""
    straight, _ = toy_fit(tmp_path / "straight", epoch_batches, max_steps=13)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(loop.FitInterrupted) as caught:
        toy_fit(tmp_path / "cut", epoch_batches, step=Recorder(interrupt_after=5), max_steps=13)
    assert isinstance(caught.value, KeyboardInterrupt)
    assert caught.value.step == 5 and int(caught.value.state.step) == 5
    assert str(caught.value) == (
        f"interrupted at step 5; checkpoint saved in {tmp_path / 'cut' / 'checkpoints'}; "
        "rerun with resume=True to continue"
    )
    assert signal.getsignal(signal.SIGINT) is before  # the handler was restored
    mngr = checkpoint.manager(tmp_path / "cut" / "checkpoints")
    assert checkpoint.committed_steps(mngr) == [4, 5]
    window = checkpoint.step_metadata(mngr, 5)[loop.WINDOW_KEY]  # step 5's train sums
    mngr.close()
    assert window["steps"] == 1 and len(window["leaves"]) == 4
    assert max(r["step"] for r in records(tmp_path / "cut")) == 4

    resumed, _ = toy_fit(tmp_path / "cut", epoch_batches, max_steps=13, resume=True)
    assert float(resumed.params["w"]) == float(straight.params["w"])
    assert (tmp_path / "cut" / loop.METRICS_FILE).read_bytes() == (
        tmp_path / "straight" / loop.METRICS_FILE
    ).read_bytes()


@pytest.mark.roundtrip
def test_sigint_on_a_checkpoint_step_saves_once_and_a_second_resume_adds_nothing(tmp_path):
    with pytest.raises(loop.FitInterrupted, match="interrupted at step 4"):
        toy_fit(tmp_path, epoch_batches, step=Recorder(interrupt_after=4), max_steps=6)
    mngr = checkpoint.manager(tmp_path / "checkpoints")
    assert checkpoint.committed_steps(mngr) == [4]
    assert loop.WINDOW_KEY not in checkpoint.step_metadata(mngr, 4)  # the window was closed
    mngr.close()
    state, _ = toy_fit(tmp_path, epoch_batches, max_steps=6, resume=True)
    assert int(state.step) == 6
    sessions = json.loads((tmp_path / loop.PROVENANCE_FILE).read_text())
    assert [s["start_step"] for s in sessions] == [0, 4]


# ----------------------------------------------------------------------------- issue 14


@pytest.mark.roundtrip
@pytest.mark.parametrize("stop_after", [5, 4])  # mid-window; on a checkpoint step
def test_stop_after_then_resume_equals_a_straight_run(tmp_path, stop_after):
    """FitConfig.stop_after stops as Ctrl-C does: no extra record or evaluation, the
    unfinished window saved; resuming gives the straight run's params and file, bytewise."""
    straight, _ = toy_fit(tmp_path / "straight", epoch_batches, max_steps=13)
    with pytest.raises(loop.FitStopped, match=f"stopped at step {stop_after}") as caught:
        toy_fit(tmp_path / "cut", epoch_batches, max_steps=13, stop_after=stop_after)
    assert caught.value.step == stop_after and int(caught.value.state.step) == stop_after
    cut = records(tmp_path / "cut")
    assert cut == [r for r in records(tmp_path / "straight") if r["step"] <= stop_after]
    resumed, _ = toy_fit(tmp_path / "cut", epoch_batches, max_steps=13, resume=True)
    assert float(resumed.params["w"]) == float(straight.params["w"])
    assert (tmp_path / "cut" / loop.METRICS_FILE).read_bytes() == (
        tmp_path / "straight" / loop.METRICS_FILE
    ).read_bytes()
    # At or past the last step, stop_after changes nothing.
    toy_fit(tmp_path / "late", epoch_batches, max_steps=13, stop_after=13)
    assert (tmp_path / "late" / loop.METRICS_FILE).read_bytes() == (
        tmp_path / "straight" / loop.METRICS_FILE
    ).read_bytes()


@pytest.mark.reference
def test_a_one_shot_iterator_is_never_read_past_max_steps(tmp_path):
    taken = []

    def stream():
        for batch in epoch_batches(0):
            taken.append(batch)
            yield batch

    state, _ = toy_fit(tmp_path, stream(), num_epochs=1, max_steps=3)
    assert int(state.step) == 3 and len(taken) == 3  # was 4: one read ahead
    # The epoch's end is still known when it coincides with max_steps (len()).
    toy_fit(tmp_path / "list", epoch_batches(0), num_epochs=1, max_steps=5, eval_every=None)
    assert [(r["step"], r["epoch"]) for r in records(tmp_path / "list") if r["split"] == "dev"] == [
        (5, 1.0)
    ]


@pytest.mark.bad_input
def test_eval_sets_without_an_eval_step_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`eval_sets` \(\['dev'\]\) needs `eval_step`"):
        loop.fit(
            toy_state(),
            train_step=Recorder(),
            eval_step=None,
            train_batches=epoch_batches,
            eval_sets={"dev": [np.zeros(4, np.float32)]},
            key=jax.random.key(0),
            config=loop.FitConfig(max_steps=2, progress=False),
            out_dir=str(tmp_path),
        )
    assert not (tmp_path / loop.METRICS_FILE).exists()
    with pytest.raises(ValueError, match=r"best_metric='loss' needs an eval set"):
        toy_fit(tmp_path / "b", epoch_batches, eval_sets=None, best_metric="loss")
