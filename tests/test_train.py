"""Train state, train/eval steps, metrics exactness, checkpoints and the fit loop."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq import metrics, models
from jaxseq.data import batching
from jaxseq.data.dataset import SequenceDataset
from jaxseq.training import checkpoint, loop, steps

CONFIG = models.SequenceModelConfig(
    num_classes=3, hidden_size=8, cell="gru", vocab_size=12, embed_dim=6, dropout_rate=0.0
)


def labeling_loss_fn(reduction="sum_over_time", config=CONFIG):
    def loss_fn(params, batch, key, is_training):
        logits = models.labeler_apply(
            params, config, batch.inputs, batch.lengths, key=key, train=is_training
        )
        terms = js.sequence_labeling_loss_terms(
            logits, batch.labels, where=batch.label_mask, reduction=reduction
        )
        sums = {"accuracy": metrics.accuracy(logits, batch.labels, where=batch.label_mask)}
        return terms, sums

    return loss_fn


def toy_dataset(n=40, seed=0, max_len=9) -> SequenceDataset:
    """Label of a step = (token id) mod 3: learnable, with lengths 1..max_len."""
    rng = np.random.default_rng(seed)
    seqs = tuple(
        rng.integers(1, 12, size=int(t)).astype(np.int32) for t in rng.integers(1, max_len + 1, n)
    )
    labels = tuple((s % 3).astype(np.int32) for s in seqs)
    return SequenceDataset(sequences=seqs, labels=labels, class_names=("a", "b", "c"))


def batches_of(dataset, batch_size=8, buckets=(4, 9), seed=0):
    return lambda epoch: list(
        batching.iterate_batches(
            dataset, batch_size, buckets=buckets, shuffle=True, seed=seed, epoch=epoch
        )
    )


def fresh_state(optimizer, seed=0):
    params = models.labeler_init(jax.random.key(seed), CONFIG)
    return steps.create_train_state(params, optimizer)


# ---------------------------------------------------------------- metrics


@pytest.mark.loss_oracle
def test_metric_sums_are_exact_across_batch_splits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(10, 7, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(10, 7)).astype(np.int32)
    mask = rng.random((10, 7)) < 0.6
    whole_acc = metrics.accuracy(logits, labels, where=mask)
    whole_cm = metrics.confusion_matrix(logits, labels, where=mask)
    parts = [(0, 3), (3, 4), (4, 10)]
    acc = [metrics.accuracy(logits[a:b], labels[a:b], where=mask[a:b]) for a, b in parts]
    cms = [metrics.confusion_matrix(logits[a:b], labels[a:b], where=mask[a:b]) for a, b in parts]
    summed = metrics.Ratio(sum(r.total for r in acc), sum(r.count for r in acc))
    assert float(summed.value) == float(whole_acc.value)
    np.testing.assert_array_equal(np.asarray(sum(cms)), np.asarray(whole_cm))
    # Independent reference: plain loops.
    correct = total = 0
    cm = np.zeros((4, 4))
    for i in range(10):
        for j in range(7):
            if mask[i, j]:
                pred = int(np.argmax(logits[i, j]))
                correct += pred == labels[i, j]
                total += 1
                cm[labels[i, j], pred] += 1
    assert float(whole_acc.value) == pytest.approx(correct / total, abs=1e-7)
    np.testing.assert_array_equal(np.asarray(whole_cm), cm)
    f1s = []
    for c in range(4):
        tp, fp, fn = cm[c, c], cm[:, c].sum() - cm[c, c], cm[c, :].sum() - cm[c, c]
        if tp + fp + fn > 0:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    assert metrics.macro_f1(cm) == pytest.approx(np.mean(f1s), abs=1e-12)


@pytest.mark.numerics
def test_summarize_reports_each_metric_by_its_type_under_its_own_key():
    """The type decides the summary, the key is the user's: a Ratio its mean (0 for a
    count of 0), a Perplexity exp(mean), a Confusion its macro-F1, a scalar itself."""
    counts = np.array([[3.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    sums = {
        "accuracy": metrics.Ratio(jnp.float32(0), jnp.float32(0)),
        "nll": metrics.Ratio(jnp.float32(3.0), jnp.float32(2.0)),
        "ppl": metrics.Perplexity(jnp.float32(3.0), jnp.float32(2.0)),
        "tags": metrics.Confusion(jnp.asarray(counts, jnp.float32)),
        "examples": jnp.float32(7.0),
    }
    out = metrics.summarize(sums)
    # Class 0: tp 3, fp 2, fn 1 -> 6/9; class 1: tp 2, fp 1, fn 2 -> 4/7; class 2 absent.
    assert out == {
        "accuracy": 0.0,
        "nll": 1.5,
        "ppl": pytest.approx(math.exp(1.5), rel=1e-12),
        "tags": pytest.approx((6 / 9 + 4 / 7) / 2, abs=1e-12),
        "examples": 7.0,
    }
    assert list(out) == list(sums)
    # Summed over batches, the types survive (metrics.add keeps the pytree types).
    twice = metrics.summarize(metrics.add(sums, sums))
    assert twice["ppl"] == pytest.approx(math.exp(1.5)) and twice["examples"] == 14.0
    assert twice["tags"] == pytest.approx(out["tags"])


@pytest.mark.bad_input
def test_summarize_rejects_untyped_arrays_naming_the_key():
    """The old magic key "confusion" (a bare [C, C] array -> macro_f1) is gone: a
    non-scalar array is an error naming the key and the types to use."""
    with pytest.raises(
        TypeError, match=r"metric 'confusion' is an array of shape \(3, 3\).*Confusion"
    ):
        metrics.summarize({"confusion": jnp.eye(3)})
    with pytest.raises(TypeError, match=r"metric 'pair' is tuple"):
        metrics.summarize({"pair": (1.0, 2.0)})


# ---------------------------------------------------------------- train step


@pytest.mark.reference
def test_one_train_step_equals_manual_optax_update():
    optimizer = steps.make_optimizer(learning_rate=1e-2, clip_norm=0.5)
    state = fresh_state(optimizer)
    batch = next(iter(batches_of(toy_dataset())(0)))
    key = jax.random.key(1)
    loss_fn = labeling_loss_fn()
    objective = lambda p: loss_fn(p, batch, jax.random.fold_in(key, 0), True)[0].loss
    grads = jax.jit(jax.grad(objective))(state.params)  # jitted: eager dispatch is slow

    @jax.jit  # one compile instead of an eager dispatch of every optax operation
    def reference_update(grads, opt_state, params):
        with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
            updates, _ = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates)

    want = reference_update(grads, state.opt_state, state.params)
    step = steps.make_train_step(loss_fn, optimizer)
    new_state, sums = step(state, batch, key)
    assert int(new_state.step) == 1
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new_state.params, want
    )
    assert np.isfinite(float(sums["loss"].value))


@pytest.mark.variants
@pytest.mark.parametrize("reduction", ["sum_over_time", "mean_over_time", "mean_over_tokens"])
def test_microbatch_accumulation_equals_one_big_batch(reduction):
    optimizer = optax.sgd(0.1)
    dataset = toy_dataset(n=16, seed=3)
    # One batch with an all-padding tail so the microbatches hold unequal counts.
    batch = list(batching.iterate_batches(dataset, 20, buckets=(9,)))[0]
    loss_fn = labeling_loss_fn(reduction)
    key = jax.random.key(0)
    big, big_sums = steps.make_train_step(loss_fn, optimizer)(fresh_state(optimizer), batch, key)
    acc, acc_sums = steps.make_train_step(loss_fn, optimizer, microbatches=4)(
        fresh_state(optimizer), batch, key
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), big.params, acc.params
    )
    np.testing.assert_allclose(
        float(big_sums["loss"].value), float(acc_sums["loss"].value), rtol=1e-6
    )


@pytest.mark.retrace
def test_bucketing_compiles_once_per_bucket():
    traces = []

    def counting_loss(params, batch, key, is_training):
        traces.append(batch.inputs.shape)
        return labeling_loss_fn()(params, batch, key, is_training)

    optimizer = optax.adam(1e-2)
    step = steps.make_train_step(counting_loss, optimizer)
    state = fresh_state(optimizer)
    buckets = (3, 6, 9)
    shapes = set()
    for epoch in range(3):
        for batch in batches_of(toy_dataset(n=50), batch_size=8, buckets=buckets)(epoch):
            shapes.add(batch.inputs.shape)
            state, _ = step(state, batch, jax.random.key(0))
    assert len(shapes) <= len(buckets)
    assert len(traces) == len(shapes)


# ---------------------------------------------------------------- fit loop


# (optimizer, train step, eval step) of run_fit per float learning rate: the runs with
# the default loss share their jitted steps, so each compiles once per module
# (compiling is most of a short run's time); the steps are pure, so sharing them
# changes no number.
_FIT_STEPS: dict[float, tuple] = {}


def _fit_steps(lr, loss_fn):
    if loss_fn is None and isinstance(lr, float) and lr in _FIT_STEPS:
        return _FIT_STEPS[lr]
    optimizer = steps.make_optimizer(learning_rate=lr)
    made = (
        optimizer,
        steps.make_train_step(loss_fn or labeling_loss_fn(), optimizer),
        steps.make_eval_step(labeling_loss_fn()),
    )
    if loss_fn is None and isinstance(lr, float):
        _FIT_STEPS[lr] = made
    return made


def run_fit(out_dir, *, max_steps, resume=False, num_epochs=4, lr=3e-2, config=None, loss_fn=None):
    """``lr``: a float or a schedule, given to the optimizer and to ``fit``."""
    optimizer, train_step, eval_step = _fit_steps(lr, loss_fn)
    state = fresh_state(optimizer)
    dataset = toy_dataset()
    fit_config = config or loop.FitConfig(
        num_epochs=num_epochs,
        max_steps=max_steps,
        log_every=2,
        eval_every=4,
        checkpoint_every=4,
        progress=False,
    )
    eval_batches = lambda: batching.iterate_batches(toy_dataset(n=16, seed=9), 8, buckets=(4, 9))
    return loop.fit(
        state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=batches_of(dataset),
        eval_sets={"dev": eval_batches},
        key=jax.random.key(42),
        config=fit_config,
        out_dir=str(out_dir),
        resume=resume,
        tokens_in=lambda b: int(b.lengths.sum()),
        learning_rate=lr,
    )


@pytest.mark.roundtrip
def test_resume_equals_uninterrupted_run(tmp_path):
    straight, straight_eval = run_fit(tmp_path / "straight", max_steps=14)
    # Interrupted: stop after 8 steps (a checkpoint at 8), then resume to 14.
    run_fit(tmp_path / "resumed", max_steps=8)
    resumed, resumed_eval = run_fit(tmp_path / "resumed", max_steps=14, resume=True)
    assert int(resumed.step) == int(straight.step) == 14
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        straight.params,
        resumed.params,
    )
    assert (tmp_path / "straight" / "metrics.jsonl").read_bytes() == (
        tmp_path / "resumed" / "metrics.jsonl"
    ).read_bytes()
    assert straight_eval == resumed_eval


@pytest.mark.roundtrip
@pytest.mark.parametrize("every", [4, None], ids=["every-4-steps", "every-epoch"])
def test_resuming_a_finished_run_adds_nothing(tmp_path, every):
    """A run that ended mid-epoch (max_steps 7, 5 batches an epoch), resumed: no step
    is taken, no record written, and the last evaluation is returned again."""
    config = loop.FitConfig(
        num_epochs=4,
        max_steps=7,
        log_every=2,
        eval_every=every,
        checkpoint_every=every,
        progress=False,
    )
    finished, finished_eval = run_fit(tmp_path, max_steps=7, config=config)
    written = (tmp_path / "metrics.jsonl").read_bytes()
    last = loop.read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert (last["split"], last["step"]) == ("dev", 7)
    resumed, resumed_eval = run_fit(tmp_path, max_steps=7, config=config, resume=True)
    assert int(resumed.step) == 7
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        finished.params,
        resumed.params,
    )
    assert (tmp_path / "metrics.jsonl").read_bytes() == written
    assert resumed_eval == finished_eval and set(resumed_eval) == {"dev"}
    mngr = checkpoint.manager(tmp_path / "checkpoints")
    assert mngr.latest_step() == 7
    mngr.close()


@pytest.mark.reference
def test_fit_records_carry_the_epoch_and_the_learning_rate(tmp_path):
    """Every record: step, epoch, split, learning_rate, then the metrics with the loss
    first; the rate is the schedule's for the update that produced the step, checked
    against the warmup-cosine formula."""
    peak, warmup, total = 3e-2, 3, 14
    schedule = steps.make_schedule(learning_rate=peak, warmup_steps=warmup, total_steps=total)
    run_fit(tmp_path, max_steps=total, lr=schedule)
    per_epoch = {len(batches_of(toy_dataset())(epoch)) for epoch in range(3)}
    assert per_epoch == {5}
    records = loop.read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in records][:3] == [
        ("train", 2),
        ("train", 4),
        ("dev", 4),
    ]
    assert {r["split"] for r in records} == {"train", "dev"} and records[-1]["step"] == total
    for r in records:
        assert tuple(r)[:5] == ("step", "epoch", "split", "learning_rate", "loss"), r
        assert r["epoch"] == r["step"] / 5, r
        count = r["step"] - 1  # the updates applied before the one that produced `step`
        with jax.numpy_dtype_promotion("standard"):
            assert r["learning_rate"] == float(schedule(count)), r
        if count < warmup:
            want = peak * count / warmup
        else:
            want = peak * 0.5 * (1 + math.cos(math.pi * (count - warmup) / (total - warmup)))
        # optax computes in float32: an error of a float32 ulp of the peak near zero.
        assert r["learning_rate"] == pytest.approx(want, rel=1e-6, abs=peak * 2**-23), r
    assert records[0]["learning_rate"] == pytest.approx(peak / warmup, rel=1e-6)


def counting_fit(out_dir, lengths, **kwargs):
    """fit() with a step that only counts (loss 1): epochs of ``lengths`` batches,
    a train record every step, dev evaluated and checkpoints at every epoch's end."""
    one = metrics.Ratio(jnp.ones((), jnp.float32), jnp.ones((), jnp.float32))

    def train_step(state, batch, key):
        return state.replace(step=state.step + 1), {"loss": one}

    return loop.fit(
        steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=()),
        train_step=train_step,
        eval_step=lambda params, batch: {"loss": one},
        train_batches=lambda epoch: [None] * lengths[epoch],
        eval_sets={"dev": lambda: [None]},
        key=jax.random.key(0),
        config=loop.FitConfig(num_epochs=len(lengths), log_every=1, progress=False),
        out_dir=str(out_dir),
        **kwargs,
    )


@pytest.mark.reference
def test_fit_epoch_counts_completed_epochs_and_the_current_fraction(tmp_path):
    """Epochs of 4, 0, 3 and 0 batches: the epoch of a record is the completed epochs
    (the empty one too) plus the fraction of the current one's batches; every epoch
    end is evaluated and checkpointed once, the trailing empty epoch adds nothing."""
    _, last_eval = counting_fit(tmp_path, (4, 0, 3, 0), learning_rate=0.5)
    records = loop.read_metrics(tmp_path / "metrics.jsonl")
    got = [(r["split"], r["step"], r["epoch"], r["learning_rate"]) for r in records]
    train = [
        ("train", s, e, 0.5) for s, e in zip(range(1, 8), (0.25, 0.5, 0.75, 1.0, 7 / 3, 8 / 3, 3.0))
    ]
    assert got == [*train[:4], ("dev", 4, 1.0, 0.5), *train[4:], ("dev", 7, 3.0, 0.5)]
    assert last_eval == {"dev": {"loss": 1.0}}
    mngr = checkpoint.manager(tmp_path / "checkpoints")
    assert list(mngr.all_steps()) == [4, 7]
    mngr.close()


@pytest.mark.reference
def test_make_schedule_warmup_and_cosine_values():
    """Against the formulas; without a warmup the first update has the peak rate,
    and make_optimizer's updates follow the same schedule."""
    peak = 0.1
    cases = {
        (0, None): lambda c: peak,
        (4, None): lambda c: peak * min(c, 4) / 4,
        (0, 10): lambda c: peak * 0.5 * (1 + math.cos(math.pi * min(c, 10) / 10)),
        (4, 10): lambda c: (
            peak * c / 4 if c < 4 else peak * 0.5 * (1 + math.cos(math.pi * min(c - 4, 6) / 6))
        ),
    }
    for (warmup, total), want in cases.items():
        schedule = steps.make_schedule(learning_rate=peak, warmup_steps=warmup, total_steps=total)
        with jax.numpy_dtype_promotion("standard"):
            got = [float(schedule(c)) for c in range(13)]
        np.testing.assert_allclose(got, [want(c) for c in range(13)], rtol=1e-6, atol=1e-9)
        # Adam's bias-corrected update of a constant gradient of 1 is the learning rate, up
        # to float32 rounding in the bias correction (1 - 0.999**t cancels for small t).
        optimizer = steps.make_optimizer(
            learning_rate=peak, clip_norm=None, warmup_steps=warmup, total_steps=total
        )
        params, grads = jnp.zeros(()), jnp.ones(())
        with jax.numpy_dtype_promotion("standard"):
            opt_state, used = optimizer.init(params), []
            for _ in range(13):
                updates, opt_state = optimizer.update(grads, opt_state, params)
                used.append(-float(updates) * (1 + 1e-8))
        np.testing.assert_allclose(used, got, rtol=1e-4, atol=1e-9)
    first = steps.make_schedule(learning_rate=peak, total_steps=10)(0)
    assert float(first) == pytest.approx(peak, rel=1e-7)


@pytest.mark.bad_input
def test_schedule_arguments_are_checked(tmp_path):
    schedule = steps.make_schedule(learning_rate=1e-3, total_steps=5)
    with pytest.raises(ValueError, match=r"`warmup_steps` and `total_steps`.*warmup_steps=2"):
        steps.make_optimizer(learning_rate=schedule, warmup_steps=2)
    with pytest.raises(ValueError, match=r"`warmup_steps` and `total_steps`.*total_steps=5"):
        steps.make_optimizer(learning_rate=schedule, total_steps=5)
    with pytest.raises(ValueError, match="learning_rate"):
        steps.make_schedule(learning_rate=-1.0)
    with pytest.raises(TypeError, match="learning_rate"):
        steps.make_schedule(learning_rate="1e-3")
    with pytest.raises(ValueError, match="total_steps"):
        steps.make_schedule(learning_rate=1e-3, total_steps=0)
    with pytest.raises(TypeError, match="warmup_steps"):
        steps.make_schedule(learning_rate=1e-3, warmup_steps=1.5)
    with pytest.raises(TypeError, match="learning_rate"):
        counting_fit(tmp_path, (2,), learning_rate="fast")
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.training_smoke
def test_fit_learns_and_writes_metrics(tmp_path):
    state, last_eval = run_fit(tmp_path, max_steps=60, num_epochs=20)
    records = loop.read_metrics(tmp_path / "metrics.jsonl")
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert last_eval["dev"]["accuracy"] > 0.6
    assert all(np.isfinite(r["loss"]) for r in records)


@pytest.mark.numerics
def test_nan_loss_stops_with_a_clear_message(tmp_path):
    def diverging_loss(params, batch, key, is_training):
        terms, sums = labeling_loss_fn()(params, batch, key, is_training)
        return js.LossTerms(terms.total * jnp.float32(np.inf), terms.count), sums

    with pytest.raises(loop.NonFiniteLossError, match="at step 2"):
        run_fit(tmp_path, max_steps=6, loss_fn=diverging_loss)
    assert not os.path.exists(tmp_path / "checkpoints" / "4")


@pytest.mark.bad_input
def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="not writable"):
        run_fit(blocker / "out", max_steps=2)


@pytest.mark.bad_input
def test_restoring_into_another_shape_names_the_leaf(tmp_path):
    optimizer = optax.adam(1e-3)
    state = fresh_state(optimizer)
    mngr = checkpoint.manager(tmp_path / "ckpt")
    checkpoint.save(mngr, 3, state)
    other = models.SequenceModelConfig(
        num_classes=3, hidden_size=10, cell="gru", vocab_size=12, embed_dim=6
    )
    other_state = steps.create_train_state(models.labeler_init(jax.random.key(0), other), optimizer)
    with pytest.raises(
        checkpoint.CheckpointMismatchError,
        match=r"leaf params/rnn/0/W_h is stored as float32\[8, 24\] but the target expects "
        r"float32\[10, 30\]",
    ):
        checkpoint.restore(mngr, other_state)
    restored = checkpoint.restore(mngr, state)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), restored.params, state.params)
    mngr.close()


@pytest.mark.bad_input
def test_fit_config_rejects_bad_values():
    with pytest.raises(ValueError, match="log_every"):
        loop.FitConfig(log_every=0)
    with pytest.raises(ValueError, match="max_steps"):
        loop.FitConfig(max_steps=-1)
    with pytest.raises(TypeError, match="log_every"):
        loop.FitConfig(log_every=2.5)
    with pytest.raises(TypeError, match="progress"):
        loop.FitConfig(progress=1)
    with pytest.raises(ValueError, match="learning_rate"):
        steps.make_optimizer(learning_rate=0.0)
    with pytest.raises(TypeError, match="learning_rate"):
        steps.make_optimizer(learning_rate="1e-3")
    with pytest.raises(ValueError, match="clip_norm"):
        steps.make_optimizer(learning_rate=1e-3, clip_norm=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        steps.make_optimizer(learning_rate=1e-3, warmup_steps=-1)
    with pytest.raises(ValueError, match="microbatches"):
        steps.make_train_step(labeling_loss_fn(), optax.sgd(0.1), microbatches=0)
    with pytest.raises(ValueError, match="max_to_keep"):
        checkpoint.manager("unused", max_to_keep=0)


@pytest.mark.numerics
@pytest.mark.parametrize(
    "cell, method",
    [("elman", js.Fused()), ("gru", js.Fused()), ("lstm", js.Fused()), ("lstm", js.Scan())],
    ids=["elman-fused", "gru-fused", "lstm-fused", "lstm-scan"],
)
def test_long_sequences_keep_gradients_finite_and_clipped(cell, method):
    """T = 2048 with the summed-over-time loss (the largest gradients): the raw
    gradient is finite, clipping engages, and the clipped update has norm <= 1."""
    config = models.SequenceModelConfig(
        num_classes=5,
        hidden_size=16,
        cell=cell,
        vocab_size=20,
        embed_dim=8,
        dropout_rate=0.0,
        method=method,
    )
    T = 2048
    rng = np.random.default_rng(0)
    lengths = np.array([T, 1500], np.int32)
    mask = np.arange(T)[None, :] < lengths[:, None]
    batch = batching.Batch(
        inputs=(rng.integers(1, 20, (2, T)) * mask).astype(np.int32),
        labels=(rng.integers(0, 5, (2, T)) * mask).astype(np.int32),
        lengths=lengths,
        label_mask=mask,
        indices=np.arange(2, dtype=np.int32),
        extras={},
    )
    clip, lr = 1.0, 1.0
    optimizer = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr))
    state = steps.create_train_state(models.labeler_init(jax.random.key(0), config), optimizer)
    before = jax.tree.map(np.asarray, state.params)
    step = steps.make_train_step(labeling_loss_fn("sum_over_time", config), optimizer)
    state, sums = step(state, batch, jax.random.key(1))
    summary = metrics.summarize(sums)
    assert np.isfinite(summary["loss"]) and np.isfinite(summary["grad_norm"])
    assert summary["grad_norm"] > 10 * clip  # clipping really engaged
    update = jax.tree.map(lambda new, old: np.asarray(new) - old, state.params, before)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(update))
    update_norm = float(
        np.sqrt(sum(np.sum(u.astype(np.float64) ** 2) for u in jax.tree.leaves(update)))
    )
    assert 0.99 * lr * clip <= update_norm <= 1.0001 * lr * clip
