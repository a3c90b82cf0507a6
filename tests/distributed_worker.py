"""Subprocess side of tests/test_distributed.py (the device count is fixed per process).

    python -m tests.distributed_worker devices OUT   # 8 fake CPU devices
    python -m tests.distributed_worker single OUT CHECKPOINT_DIR   # 1 device ("-": no checkpoint)
    JAXSEQ_COORDINATOR=127.0.0.1:PORT JAXSEQ_NUM_PROCESSES=2 JAXSEQ_PROCESS_ID=i \\
    JAXSEQ_CPU_DEVICES=2 python -m tests.distributed_worker process OUT

Each job writes arrays (``.npz``) and facts (``.json``) under OUT; the tests
compare them. The strict configuration of conftest.py is applied here too. The
``single`` and ``process`` jobs also run the Python blocks of
docs/scaling_out.md as written (one device, and 2 processes x 2 devices).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import jax

STARTED = time.perf_counter()


def _strict():
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")


# Imported after the JAX settings below only where device counts matter; importing
# jaxseq performs no JAX operation.
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxseq as js  # noqa: E402
from jaxseq import metrics, models  # noqa: E402
from jaxseq.data import batching  # noqa: E402
from jaxseq.data.dataset import SequenceDataset  # noqa: E402
from jaxseq.training import checkpoint, distributed, loop, steps  # noqa: E402

REDUCTIONS = ("sum_over_time", "mean_over_time", "mean_over_tokens")
DEVICE_COUNTS = (1, 2, 4, 8)
CONFIG = models.SequenceModelConfig(
    num_classes=3, hidden_size=8, cell="gru", vocab_size=12, embed_dim=6, dropout_rate=0.0
)
GLOBAL_BATCH = 16
BUCKETS = (9,)
FIT = loop.FitConfig(
    num_epochs=2, max_steps=4, log_every=2, eval_every=2, checkpoint_every=2, progress=False
)


def labeling_loss_fn(reduction: str, config: models.SequenceModelConfig = CONFIG):
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


def toy_dataset(n: int, seed: int) -> SequenceDataset:
    """Label of a step = (token id) mod 3, lengths 1..9 (as in tests/test_train.py)."""
    rng = np.random.default_rng(seed)
    seqs = tuple(rng.integers(1, 12, size=int(t)).astype(np.int32) for t in rng.integers(1, 10, n))
    labels = tuple((s % 3).astype(np.int32) for s in seqs)
    return SequenceDataset(sequences=seqs, labels=labels, class_names=("a", "b", "c"))


def train_batches(epoch: int) -> list:
    return list(
        batching.iterate_batches(
            toy_dataset(40, 0), GLOBAL_BATCH, buckets=BUCKETS, shuffle=True, seed=0, epoch=epoch
        )
    )


def dev_batches():
    return batching.iterate_batches(toy_dataset(20, 1), GLOBAL_BATCH, buckets=BUCKETS)


def recording(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner``, and the gradients it was given kept in the optimizer state
    (so one compiled train step yields the loss, the gradients and the update)."""

    def init(params):
        return (jax.tree.map(jnp.zeros_like, params), inner.init(params))

    def update(grads, state, params=None):
        updates, inner_state = inner.update(grads, state[1], params)
        return updates, (grads, inner_state)

    return optax.GradientTransformation(init, update)


FIT_LEARNING_RATE = 1e-2


def fit_optimizer() -> optax.GradientTransformation:
    """The experiments' optimizer (clipping + AdamW), for the multi-step fit runs."""
    return steps.make_optimizer(learning_rate=FIT_LEARNING_RATE, clip_norm=1.0)


def step_optimizer() -> optax.GradientTransformation:
    """SGD with momentum: the update is -lr * gradient, so it shows any gradient
    difference undamped (Adam's first step is about -lr * sign(gradient)), and the
    momentum trace gives the checkpoint an optimizer state; cheaper to compile."""
    return recording(optax.sgd(0.1, momentum=0.9))


def init_params():
    return jax.device_get(models.labeler_init(jax.random.key(0), CONFIG))


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(tree)])


def write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=1)


SCALING_OUT = Path(__file__).resolve().parents[1] / "docs" / "scaling_out.md"


def run_scaling_out_doc(folder: str) -> dict:
    """Run the training script of docs/scaling_out.md (the ```python block that calls
    ``loop.fit``; every block is self-contained) in ``folder`` (its ``out_dir`` is
    relative), as user code: JAX's default promotion rules. Returns
    ``{"mesh": str(mesh), "last_eval": ...}``."""
    blocks = re.findall(r"```python\n(.*?)```", SCALING_OUT.read_text(), flags=re.S)
    scripts = [block for block in blocks if "loop.fit(" in block]
    assert len(scripts) == 1, f"{SCALING_OUT}: {len(scripts)} python blocks call loop.fit"
    os.makedirs(folder, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(folder)
    namespace: dict = {"__name__": "scaling_out"}
    try:
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            exec(compile(scripts[0], str(SCALING_OUT), "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    return {"mesh": str(namespace["mesh"]), "last_eval": namespace["last_eval"]}


# ----------------------------------------------------------------------------- jobs


def devices_job(out: str) -> None:
    """8 fake devices: 1/2/4/8-device steps vs the plain single-device step; k
    microbatches sharded; an 8-device checkpoint for the `single` job."""
    jax.config.update("jax_num_cpu_devices", 8)
    _strict()
    assert jax.device_count() == 8, jax.devices()
    facts: dict = {"device_count": jax.device_count()}
    arrays: dict[str, np.ndarray] = {}
    real = list(batching.iterate_batches(toy_dataset(14, 3), 14, buckets=BUCKETS))[0]
    # 14 real rows padded to 16: on 8 devices rows 14, 15 (all padding) land on device 7.
    padded = distributed.pad_batch_to_multiple(real, GLOBAL_BATCH)
    facts["padded_rows_per_device_8"] = [
        int(np.sum(padded.lengths[i * 2 : i * 2 + 2] == 0)) for i in range(8)
    ]
    params = init_params()
    key = jax.random.key(1)
    opt = step_optimizer()

    def record(name, state, sums):
        arrays[f"{name}/loss"] = np.asarray(sums["loss"].value)
        arrays[f"{name}/count"] = np.asarray(sums["loss"].count)
        arrays[f"{name}/accuracy"] = np.asarray([sums["accuracy"].total, sums["accuracy"].count])
        arrays[f"{name}/grad_norm"] = np.asarray(sums["grad_norm"])
        arrays[f"{name}/grads"] = flat(state.opt_state[0])
        arrays[f"{name}/params"] = flat(state.params)

    compiled = {}
    for reduction in REDUCTIONS:
        loss_fn = labeling_loss_fn(reduction)
        state = steps.create_train_state(params, opt)
        record(f"{reduction}/ref", *steps.make_train_step(loss_fn, opt)(state, real, key))
        for num in DEVICE_COUNTS:
            mesh = distributed.make_mesh(num)
            step = distributed.make_sharded_train_step(loss_fn, opt, mesh)
            compiled[reduction, num] = step, mesh
            state = distributed.replicate(steps.create_train_state(params, opt), mesh)
            batch = distributed.shard_batch(padded, mesh)
            new_state, sums = step(state, batch, distributed.replicate(key, mesh))
            assert new_state.params["output"]["V"].sharding.is_fully_replicated
            record(f"{reduction}/{num}", new_state, sums)

    # k = 2 microbatches on 8 devices (each microbatch spread over all 8).
    mesh = distributed.make_mesh(8)
    loss_fn = labeling_loss_fn("mean_over_time")
    step = distributed.make_sharded_train_step(loss_fn, opt, mesh, microbatches=2)
    state = distributed.replicate(steps.create_train_state(params, opt), mesh)
    record("micro/8x2", *step(state, distributed.shard_batch(padded, mesh), key))

    # Bad input: a batch that does not divide by the devices.
    try:
        distributed.shard_batch(real, mesh)
    except ValueError as e:
        facts["undivisible_error"] = str(e)

    # Checkpoint on 8 devices at step 2, then 2 more steps (the expected continuation).
    step, mesh = compiled["mean_over_tokens", 8]
    batches = [distributed.shard_batch(b, mesh) for b in train_batches(0)]
    state = distributed.replicate(steps.create_train_state(params, opt), mesh)
    run_key = distributed.replicate(key, mesh)
    for batch in batches[:2]:
        state, _ = step(state, batch, run_key)
    ckpt_dir = os.path.join(out, "checkpoint_8")
    mngr = checkpoint.manager(ckpt_dir)
    checkpoint.save(mngr, 2, state)
    arrays["ckpt/step2"] = flat(state)
    facts["ckpt_sharding"] = str(state.params["output"]["V"].sharding)
    # ... and restores onto another mesh (2 devices) from an abstract target.
    target = distributed.abstract_replicated(state, distributed.make_mesh(2))
    restored = checkpoint.restore(mngr, target)
    mngr.close()
    arrays["ckpt/step2_on_2"] = flat(restored)
    facts["restored_on_2_sharding"] = str(restored.params["output"]["V"].sharding)
    for batch in (batches[2], batches[0]):
        state, _ = step(state, batch, run_key)
    arrays["ckpt/step4"] = flat(state)
    np.savez(os.path.join(out, "devices.npz"), **arrays)
    facts["seconds"] = time.perf_counter() - STARTED
    write_json(os.path.join(out, "devices.json"), facts)
    with open(os.path.join(out, "checkpoint_8.done"), "w") as f:
        f.write("ok\n")


def _fit(state, train_step, eval_step, wrap, key, out_dir):
    return loop.fit(
        state,
        train_step=train_step,
        eval_step=eval_step,
        train_batches=lambda epoch: wrap(train_batches(epoch)),
        eval_sets={"dev": lambda: wrap(dev_batches())},
        key=key,
        config=FIT,
        out_dir=out_dir,
        tokens_in=lambda batch: int(batch.lengths.sum()),
        learning_rate=FIT_LEARNING_RATE,
    )[0]


def single_job(out: str, ckpt_dir: str) -> None:
    """1 device: the single-process fit (reference of the 2-process run), the
    docs/scaling_out.md script, then (unless ``ckpt_dir`` is "-") restore the
    8-device checkpoint and continue."""
    _strict()
    assert jax.device_count() == 1
    facts: dict = {"device_count": jax.device_count()}
    arrays = {}
    loss_fn = labeling_loss_fn("mean_over_tokens")
    opt = fit_optimizer()
    key = jax.random.key(1)
    state = steps.create_train_state(init_params(), opt)
    step, eval_step = steps.make_train_step(loss_fn, opt), steps.make_eval_step(loss_fn)
    state = _fit(state, step, eval_step, lambda b: b, key, f"{out}/fit_single")
    arrays["fit/params"] = flat(state.params)
    facts["docs"] = run_scaling_out_doc(f"{out}/docs_single")
    if ckpt_dir != "-":
        _continue_checkpoint(ckpt_dir, loss_fn, key, facts, arrays)
    np.savez(os.path.join(out, "single.npz"), **arrays)
    facts["seconds"] = time.perf_counter() - STARTED
    write_json(os.path.join(out, "single.json"), facts)


def _continue_checkpoint(ckpt_dir: str, loss_fn, key, facts: dict, arrays: dict) -> None:
    """Restore the devices job's 8-device checkpoint on 1 device and take 2 steps."""
    deadline = time.monotonic() + 240
    while not os.path.exists(f"{ckpt_dir}.done"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no checkpoint at {ckpt_dir}")
        time.sleep(0.2)
    opt = step_optimizer()
    mngr = checkpoint.manager(ckpt_dir)
    state = checkpoint.restore(mngr, steps.create_train_state(init_params(), opt))
    mngr.close()
    facts["restored_step"] = int(state.step)
    facts["restored_sharding"] = str(state.params["output"]["V"].sharding)
    arrays["ckpt/step2"] = flat(state)
    step = steps.make_train_step(loss_fn, opt)
    batches = train_batches(0)
    for batch in (batches[2], batches[0]):
        state, _ = step(state, batch, key)
    arrays["ckpt/step4"] = flat(state)


def process_job(out: str) -> None:
    """One of several processes (layout from JAXSEQ_* variables): the same fit, data-parallel."""
    mesh = distributed.setup_from_env()
    _strict()
    assert mesh is not None and jax.process_count() > 1
    loss_fn = labeling_loss_fn("mean_over_tokens")
    opt = fit_optimizer()

    # Each process can also assemble the global batch from its own rows only.
    batch = train_batches(0)[0]
    rows = distributed.process_rows(GLOBAL_BATCH, mesh)
    local = jax.tree.map(lambda x: x[rows], batch)
    from_local = distributed.global_batch_from_local(local, mesh)
    from_global = distributed.shard_batch(batch, mesh)
    for a, b in zip(jax.tree.leaves(from_local), jax.tree.leaves(from_global)):
        assert a.shape == b.shape and a.sharding == b.sharding, (a.shape, b.shape)
        for sa, sb in zip(a.addressable_shards, b.addressable_shards):
            np.testing.assert_array_equal(np.asarray(sa.data), np.asarray(sb.data))

    state = distributed.replicate(steps.create_train_state(init_params(), opt), mesh)
    state = _fit(
        state,
        distributed.make_sharded_train_step(loss_fn, opt, mesh),
        distributed.make_sharded_eval_step(loss_fn, mesh),
        lambda batches: distributed.shard_batches(batches, mesh),
        distributed.replicate(jax.random.key(1), mesh),
        f"{out}/fit_multi",
    )
    params = flat(state.params)  # replicated: every process holds all of it
    docs = run_scaling_out_doc(f"{out}/docs_multi")  # both processes, one folder

    @distributed.main_process_only
    def write():
        np.savez(os.path.join(out, "multi.npz"), **{"fit/params": params})
        write_json(
            os.path.join(out, "multi.json"),
            {
                "process_count": jax.process_count(),
                "device_count": jax.device_count(),
                "local_device_count": jax.local_device_count(),
                "rows_of_process_0": [rows.start, rows.stop],
                "docs": docs,
                "seconds": time.perf_counter() - STARTED,
            },
        )

    write()
    distributed.sync("worker-done")


if __name__ == "__main__":
    job, out, *rest = sys.argv[1:]
    {"devices": devices_job, "single": single_job, "process": process_job}[job](out, *rest)
