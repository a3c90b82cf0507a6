"""The train step's loss contract (three forms, checked at trace time), schedules wherever a
learning rate goes, and the flax-free TrainState (old checkpoints still restore)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq import metrics
from jaxseq.training import checkpoint, loop, steps
from tests.subprocesses import REPO, worker_env

# A linear least-squares model: x [B, 3], y [B], mask [B] (which rows count).
W0 = {"w": jnp.array([0.5, -1.0, 2.0], jnp.float32)}


def batch_of(rows=8, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones(rows, bool)
    mask[rows // 2 + 1 :] = False  # unequal counted rows per half
    return {
        "x": rng.normal(size=(rows, 3)).astype(np.float32),
        "y": rng.normal(size=rows).astype(np.float32),
        "mask": mask,
    }


def squared_errors(params, batch):
    error = batch["x"] @ params["w"] - batch["y"]
    return jnp.where(batch["mask"], error * error, 0.0), jnp.sum(batch["mask"], dtype=jnp.float32)


def terms_loss(params, batch, key, train):
    total, count = squared_errors(params, batch)
    terms = js.LossTerms(jnp.sum(total), count)
    return terms, {"rows": metrics.Ratio(count, jnp.float32(1))}


def scalar_loss(params, batch, key, train):
    total, count = squared_errors(params, batch)
    return jnp.sum(total) / count


def pair_loss(params, batch, key, train):
    return scalar_loss(params, batch, key, train), {"rows": metrics.Ratio(jnp.float32(1), 1.0)}


def sgd_step(loss_fn, microbatches=1):
    optimizer = optax.sgd(0.1)
    state = steps.create_train_state(jax.tree.map(jnp.array, W0), optimizer)  # donated: a copy
    step = steps.make_train_step(loss_fn, optimizer, microbatches=microbatches)
    return step(state, batch_of(), jax.random.key(0))


def manual_sgd(loss_of_params):
    grads = jax.grad(loss_of_params)(W0)
    return np.asarray(W0["w"] - 0.1 * grads["w"])


@pytest.mark.reference
def test_the_three_loss_forms_give_the_documented_gradients():
    batch = batch_of()
    mean_loss = lambda p: scalar_loss(p, batch, None, True)
    want = manual_sgd(mean_loss)
    for loss_fn in (terms_loss, scalar_loss, pair_loss):
        state, sums = sgd_step(loss_fn)
        np.testing.assert_allclose(state.params["w"], want, rtol=1e-6, err_msg=loss_fn.__name__)
        assert set(sums) == {"loss", "grad_norm"} | (
            {"rows"} if loss_fn is not scalar_loss else set()
        )
        assert float(sums["loss"].value) == pytest.approx(float(mean_loss(W0)), rel=1e-6)
    # Microbatches: LossTerms stay the whole batch's mean; a scalar mean becomes the mean
    # of the microbatch means (the halves count 4 and 1 rows here).
    halves = [{k: v[i * 4 : (i + 1) * 4] for k, v in batch.items()} for i in range(2)]
    assert [int(h["mask"].sum()) for h in halves] == [4, 1]
    state, _ = sgd_step(terms_loss, microbatches=2)
    np.testing.assert_allclose(state.params["w"], want, rtol=1e-5)
    mean_of_means = lambda p: sum(scalar_loss(p, h, None, True) for h in halves) / 2
    state, sums = sgd_step(scalar_loss, microbatches=2)
    np.testing.assert_allclose(state.params["w"], manual_sgd(mean_of_means), rtol=1e-5)
    assert float(sums["loss"].value) == pytest.approx(float(mean_of_means(W0)), rel=1e-6)
    assert not np.allclose(manual_sgd(mean_of_means), want)  # the two really differ here
    # The eval step accepts the same forms.
    for loss_fn in (terms_loss, scalar_loss, pair_loss):
        sums = steps.make_eval_step(loss_fn)(W0, batch)
        assert float(sums["loss"].value) == pytest.approx(float(mean_loss(W0)), rel=1e-6)


BAD_OUTPUTS = {
    "vector loss": (lambda p, b, k, t: squared_errors(p, b)[0], r"got array float32\[8\]"),
    "int loss": (lambda p, b, k, t: jnp.int32(3), r"got array int32\[\]"),
    "three elements": (
        lambda p, b, k, t: (scalar_loss(p, b, k, t), {}, 1),
        r"a tuple of 3 elements \(expected 2\)",
    ),
    "sums not a dict": (
        lambda p, b, k, t: (scalar_loss(p, b, k, t), [1.0]),
        r"metric_sums \(the second element\) that is not a dict",
    ),
    "bare LossTerms": (
        lambda p, b, k, t: terms_loss(p, b, k, t)[0],
        r"a bare LossTerms \(return \(terms, \{\}\)",
    ),
    "vector total": (
        lambda p, b, k, t: (js.LossTerms(squared_errors(p, b)[0], jnp.float32(1)), {}),
        r"LossTerms whose total or count is not a float scalar",
    ),
    "None": (lambda p, b, k, t: None, r"got NoneType: neither a float scalar nor a pair"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_a_loss_fn_returning_something_else_is_a_type_error_showing_the_forms(case):
    loss_fn, what = BAD_OUTPUTS[case]
    optimizer = optax.sgd(0.1)
    state = steps.create_train_state(jax.tree.map(jnp.array, W0), optimizer)
    for run in (
        lambda: steps.make_train_step(loss_fn, optimizer)(state, batch_of(), jax.random.key(0)),
        lambda: steps.make_eval_step(loss_fn)(W0, batch_of()),
    ):
        with pytest.raises(TypeError) as caught:
            run()
        message = str(caught.value)
        assert message.startswith(steps.LOSS_FN_FORMS), message
        assert "(LossTerms, metric_sums)" in message and "(loss, metric_sums)" in message
        assert re.search(what, message), message
        assert "Tracer" not in message


# ----------------------------------------------------------------------------- schedules


@pytest.mark.reference
def test_any_schedule_is_accepted_where_a_learning_rate_goes(tmp_path):
    """optax's schedules and plain callables count -> rate: the optimizer follows them
    and fit's records carry the rate of the update that produced each step."""
    inverse = lambda count: 0.1 / (1.0 + count)
    for schedule in (optax.exponential_decay(0.1, 1, 0.5), inverse):
        optimizer = steps.make_optimizer(learning_rate=schedule, clip_norm=None)
        params, grads = jnp.zeros(()), jnp.ones(())
        with jax.numpy_dtype_promotion("standard"):
            opt_state, used = optimizer.init(params), []
            for count in range(4):
                updates, opt_state = optimizer.update(grads, opt_state, params)
                used.append((-float(updates), float(schedule(count))))
        for got, want in used:  # Adam's update of a constant gradient is the rate
            assert got == pytest.approx(want, rel=1e-4)

    one = metrics.Ratio(jnp.ones((), jnp.float32), jnp.ones((), jnp.float32))
    loop.fit(
        steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=()),
        train_step=lambda state, batch, key: (state.replace(step=state.step + 1), {"loss": one}),
        eval_step=None,
        train_batches=[None] * 3,
        key=jax.random.key(0),
        config=loop.FitConfig(log_every=1, progress=False),
        out_dir=str(tmp_path),
        learning_rate=inverse,
    )
    rates = [r["learning_rate"] for r in loop.read_metrics(tmp_path / "metrics.jsonl")]
    assert rates == [0.1, 0.05, pytest.approx(0.1 / 3)]


@pytest.mark.bad_input
def test_schedules_are_validated_naming_the_argument(tmp_path):
    with pytest.raises(TypeError, match=r"`learning_rate` is callable but calling it"):
        steps.make_optimizer(learning_rate=lambda: 0.1)
    with pytest.raises(TypeError, match=r"`learning_rate` must return a real scalar.*\(2,\)"):
        steps.make_optimizer(learning_rate=lambda count: jnp.ones(2))
    with pytest.raises(ValueError, match=r"`learning_rate` must return a finite rate >= 0.*nan"):
        steps.make_optimizer(learning_rate=lambda count: jnp.float32(np.nan))
    with pytest.raises(TypeError, match=r"make_schedule is the peak rate.*already a schedule"):
        steps.make_schedule(learning_rate=optax.constant_schedule(0.1))
    with pytest.raises(TypeError, match=r"`learning_rate` is callable"):
        loop.fit(
            steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=()),
            train_step=None,
            eval_step=None,
            train_batches=[None],
            key=jax.random.key(0),
            config=loop.FitConfig(progress=False),
            out_dir=str(tmp_path),
            learning_rate=lambda: 0.1,
        )
    assert not (tmp_path / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- TrainState


@pytest.mark.roundtrip
def test_train_state_is_a_plain_registered_dataclass_with_the_old_checkpoint_layout(tmp_path):
    """Fields step, params, opt_state (in that order, as leaf paths); a checkpoint
    written with the flax struct TrainState of before restores into it."""
    flax_struct = pytest.importorskip("flax.struct")

    @flax_struct.dataclass
    class OldTrainState:
        step: jax.Array
        params: dict
        opt_state: optax.OptState

    optimizer = optax.adam(1e-3)
    state = steps.create_train_state({"w": jnp.arange(3.0)}, optimizer)
    old = OldTrainState(
        step=jnp.int32(7), params={"w": jnp.arange(3.0) + 1}, opt_state=state.opt_state
    )
    assert checkpoint.tree_spec(old) == checkpoint.tree_spec(state)
    assert list(checkpoint.tree_spec(state))[:2] == ["step", "params/w"]
    mngr = checkpoint.manager(tmp_path / "ckpt")
    checkpoint.save(mngr, 7, old)
    restored = checkpoint.restore(mngr, state)
    mngr.close()
    assert type(restored) is steps.TrainState and int(restored.step) == 7
    np.testing.assert_array_equal(restored.params["w"], [1.0, 2.0, 3.0])
    assert restored.replace(step=jnp.int32(8)).step == 8 and restored.step == 7
    with pytest.raises(AttributeError):
        restored.step = 9  # frozen


@pytest.mark.roundtrip
def test_the_training_package_imports_no_flax():
    code = (
        "import sys, json\n"
        "from jaxseq.training import loop, steps, checkpoint, distributed, provenance\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'flax')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=worker_env(), capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# ----------------------------------------------------------------------------- issue 14


def _empty_state():
    return steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=())


@pytest.mark.bad_input
@pytest.mark.parametrize("rate", [0.0, -0.1])
def test_fit_refuses_a_learning_rate_make_optimizer_refuses(tmp_path, rate):
    with pytest.raises(ValueError, match=f"`learning_rate` must be > 0, got {rate}"):
        steps.make_optimizer(learning_rate=rate)
    with pytest.raises(ValueError, match=f"`learning_rate` must be > 0, got {rate}"):
        loop.fit(
            _empty_state(),
            train_step=None,
            eval_step=None,
            train_batches=[None],
            key=jax.random.key(0),
            config=loop.FitConfig(progress=False),
            out_dir=str(tmp_path),
            learning_rate=rate,
        )
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.numerics
def test_a_nan_confusion_gives_nan_macro_f1_and_the_loop_names_the_step(tmp_path):
    nan_counts = jnp.full((2, 2), jnp.nan)
    summary = metrics.summarize({"f1": metrics.Confusion(nan_counts)})
    assert np.isnan(summary["f1"])  # as accuracy's NaN, not a ValueError without the key
    with pytest.raises(ValueError, match=r"metric 'f1': `confusion` must hold .* >= 0"):
        metrics.summarize({"f1": metrics.Confusion(-jnp.ones((2, 2)))})

    def nan_step(state, batch, key):  # an out-of-range label: NaN loss and confusion
        one = jnp.ones((), jnp.float32)
        sums = {
            "loss": metrics.Ratio(jnp.float32(np.nan), one),
            "f1": metrics.Confusion(nan_counts),
        }
        return state.replace(step=state.step + 1), sums

    with pytest.raises(loop.NonFiniteLossError, match="training loss became nan at step 1"):
        loop.fit(
            _empty_state(),
            train_step=nan_step,
            eval_step=None,
            train_batches=[None, None],
            key=jax.random.key(0),
            config=loop.FitConfig(log_every=1, progress=False),
            out_dir=str(tmp_path),
        )


@pytest.mark.bad_input
def test_summarize_names_the_key_of_a_value_that_is_not_a_host_scalar():
    ones = jnp.ones(3, jnp.float32)
    with pytest.raises(TypeError, match=r"metric 'acc' is a Ratio whose total is an array of "
                       r"shape \(3,\); summarize reports host scalars"):  # fmt: skip
        metrics.summarize({"acc": metrics.Ratio(ones, ones)})
    with pytest.raises(TypeError, match=r"metric 'ppl' is a Perplexity whose count is NoneType"):
        metrics.summarize({"ppl": metrics.Perplexity(jnp.float32(1), None)})
    with pytest.raises(TypeError, match=r"metric 'n' is NoneType; a metric sum is"):
        metrics.summarize({"n": None})
    with pytest.raises(TypeError, match=r"metric 'f1' is a Confusion of an array of shape \(3,\)"):
        metrics.summarize({"f1": metrics.Confusion(ones)})
    summed = metrics.Ratio(jnp.sum(ones), jnp.sum(ones))  # a vmapped Ratio, summed first
    assert metrics.summarize({"acc": summed}) == {"acc": 1.0}
