"""Data-parallel training (jaxseq.training.distributed): exact however the batch is split.

A process's device count is fixed at its first JAX operation, so the sharded
runs happen in subprocesses (tests/distributed_worker.py), started together
when the module starts (those its selected tests need), and compared here:

* ``devices`` (8 fake CPU devices): one train step of the plain single-device
  step vs the sharded step on 1, 2, 4 and 8 devices, each reduction; k
  microbatches sharded; an 8-device checkpoint.
* ``single`` (1 device): the single-process ``fit`` and the restore of the
  8-device checkpoint, continued.
* ``multi`` (2 processes x 2 CPU devices over 127.0.0.1): the same ``fit``,
  data-parallel, the layout taken from ``JAXSEQ_*`` variables.

``single`` and ``multi`` also run the Python blocks of docs/scaling_out.md as
written: the same script on one device (no ``JAXSEQ_*`` variable: ``mesh`` is
None) and on 2 processes x 2 devices.

Every subprocess runs under an outer timeout in its own session and is killed
(by its process group) if it outlives it or the module. The workers switch off
XLA's backend optimisations: compiling is most of their time, and the steps
compared are compiled with the same flags.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq.data import Batch
from jaxseq.training import distributed, loop, steps
from tests.subprocesses import Worker, worker_env

REDUCTIONS = ("sum_over_time", "mean_over_time", "mean_over_tokens")
DEVICE_COUNTS = (1, 2, 4, 8)
# float32: the sharded sums add the same terms in another order.
RTOL, ATOL = 1e-5, 1e-6
TIMEOUTS = {"devices": 300, "single": 300, "multi": 150}
# The jobs each test reads (the module fixture starts those of the selected tests at once).
NEEDS = {
    "test_sharded_step_equals_single_device": {"devices"},
    "test_sharded_microbatches_equal_one_big_batch": {"devices"},
    "test_shard_batch_rejects_undivisible_batch": {"devices"},
    "test_checkpoint_from_8_devices_continues_on_1": {"devices", "single"},
    "test_two_processes_match_single_process": {"multi", "single"},
    "test_scaling_out_doc_runs_on_one_device_and_on_two_processes": {"multi", "single"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(name: str, args: list[str], out: Path, env: dict[str, str], timeout: float) -> Worker:
    return Worker(name, "tests.distributed_worker", args, out, env, timeout)


class Runs:
    """The worker subprocesses of this module and their outputs."""

    def __init__(self, out: Path, jobs: set[str]):
        self.out = out
        env = worker_env()
        self.procs: dict[str, list[Worker]] = {}
        if "devices" in jobs:
            self.procs["devices"] = [
                _worker("devices", ["devices", str(out)], out, env, TIMEOUTS["devices"])
            ]
        if "multi" in jobs:
            port = _free_port()
            self.procs["multi"] = [
                _worker(
                    f"process{i}",
                    ["process", str(out)],
                    out,
                    dict(
                        env,
                        JAXSEQ_COORDINATOR=f"127.0.0.1:{port}",
                        JAXSEQ_NUM_PROCESSES="2",
                        JAXSEQ_PROCESS_ID=str(i),
                        JAXSEQ_CPU_DEVICES="2",
                    ),
                    TIMEOUTS["multi"],
                )
                for i in range(2)
            ]
        if "single" in jobs:
            # Restores the devices job's checkpoint when that job runs ("-": skip).
            ckpt = str(out / "checkpoint_8") if "devices" in jobs else "-"
            self.procs["single"] = [
                _worker("single", ["single", str(out), ckpt], out, env, TIMEOUTS["single"])
            ]

    def result(self, job: str) -> tuple[dict, dict[str, np.ndarray]]:
        for proc in self.procs[job]:
            proc.wait()
        facts = json.loads((self.out / f"{job}.json").read_text())
        with np.load(self.out / f"{job}.npz") as data:
            return facts, dict(data)

    def close(self) -> None:
        for procs in self.procs.values():
            for proc in procs:
                proc.kill()


@pytest.fixture(scope="module", autouse=True)
def runs(request, tmp_path_factory):
    """Starts, with the module, the workers its selected tests read (the in-process
    tests run meanwhile); kills whatever is left at the end."""
    selected = {
        getattr(item, "originalname", item.name)
        for item in request.session.items
        if getattr(item, "module", None) is request.module
    }
    jobs = set().union(*(NEEDS.get(name, set()) for name in selected))
    runs = Runs(tmp_path_factory.mktemp("distributed"), jobs)
    yield runs
    runs.close()


def _deviation(actual, desired) -> float:
    return float(np.max(np.abs(np.asarray(actual) - np.asarray(desired)), initial=0.0))


def _assert_close(actual, desired, what: str, rtol=RTOL, atol=ATOL) -> float:
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=what)
    return _deviation(actual, desired)


# ----------------------------------------------------------------------------- in-process


def _labeling_batch(rows: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, rows).astype(np.int32)
    mask = np.arange(5)[None, :] < lengths[:, None]
    return Batch(
        inputs=rng.integers(1, 9, (rows, 5)).astype(np.int32) * mask,
        labels=rng.integers(0, 3, (rows, 5)).astype(np.int32) * mask,
        lengths=lengths,
        label_mask=mask,
        indices=np.arange(rows, dtype=np.int32),
        extras={"feature": rng.normal(size=(rows, 5, 2)).astype(np.float32)},
    )


@pytest.mark.padding_invariance
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_pad_batch_to_multiple_adds_rows_that_change_no_loss(reduction):
    batch = _labeling_batch(5)
    padded = distributed.pad_batch_to_multiple(batch, 4)
    assert distributed.batch_size_of(padded) == 8
    for name in ("inputs", "labels", "lengths", "label_mask"):
        np.testing.assert_array_equal(getattr(padded, name)[:5], getattr(batch, name))
        assert not np.any(getattr(padded, name)[5:])
    np.testing.assert_array_equal(padded.indices, [0, 1, 2, 3, 4, -1, -1, -1])
    assert padded.extras["feature"].shape == (8, 5, 2) and not padded.extras["feature"][5:].any()
    assert distributed.pad_batch_to_multiple(batch, 5) is batch
    # Loss terms unchanged, even with NaN logits on the new rows.
    logits = np.random.default_rng(1).normal(size=(8, 5, 3)).astype(np.float32)
    logits[5:] = np.nan
    want = js.sequence_labeling_loss_terms(
        jnp.asarray(logits[:5]), batch.labels, where=batch.label_mask, reduction=reduction
    )
    got = js.sequence_labeling_loss_terms(
        jnp.asarray(logits), padded.labels, where=padded.label_mask, reduction=reduction
    )
    assert float(got.total) == float(want.total) and float(got.count) == float(want.count)


@pytest.mark.bad_input
def test_layout_from_environment_and_bad_values(monkeypatch):
    assert distributed.Layout.from_env({}) == distributed.Layout()
    assert not distributed.Layout.from_env({}).data_parallel  # single-device users: no change
    layout = distributed.Layout.from_env(
        {
            "JAXSEQ_COORDINATOR": "10.0.0.1:1234",
            "JAXSEQ_NUM_PROCESSES": "4",
            "JAXSEQ_PROCESS_ID": "3",
            "JAXSEQ_DEVICES": "all",
        }
    )
    assert (layout.coordinator, layout.num_processes, layout.process_id) == ("10.0.0.1:1234", 4, 3)
    assert layout.num_devices == -1 and layout.multi_process and layout.data_parallel
    assert distributed.Layout.from_env({"JAXSEQ_DISTRIBUTED": "auto"}).multi_process
    assert distributed.Layout.from_env({"JAXSEQ_CPU_DEVICES": "8"}).data_parallel
    bad = [
        ({"JAXSEQ_NUM_PROCESSES": "two"}, "JAXSEQ_NUM_PROCESSES"),
        ({"JAXSEQ_NUM_PROCESSES": "2", "JAXSEQ_PROCESS_ID": "0"}, "coordinator"),
        (
            {"JAXSEQ_COORDINATOR": "h:1", "JAXSEQ_NUM_PROCESSES": "2", "JAXSEQ_PROCESS_ID": "2"},
            "process_id",
        ),  # fmt: skip
        ({"JAXSEQ_DEVICES": "0"}, "num_devices"),
        ({"JAXSEQ_DISTRIBUTED": "yes"}, "JAXSEQ_DISTRIBUTED"),
    ]
    for env, name in bad:
        with pytest.raises(ValueError, match=name):
            distributed.Layout.from_env(env)
    # The default layout initialises nothing; the layout cannot change afterwards.
    monkeypatch.setattr(distributed, "_SETUP", {})
    assert distributed.setup_from_env({}) is None
    assert distributed.setup(distributed.Layout()) is None
    with pytest.raises(RuntimeError, match="cannot change"):
        distributed.setup(distributed.Layout(cpu_devices=8))
    with pytest.raises(ValueError, match="multiple"):
        distributed.pad_batch_to_multiple(_labeling_batch(3), 0)
    with pytest.raises(AssertionError, match="same leading size"):
        distributed.batch_size_of({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(AssertionError, match="same leading size"):
        distributed.batch_size_of({"a": np.zeros(3), "b": np.float32(1)})
    with pytest.raises(TypeError, match="multiple"):
        distributed.pad_batch_to_multiple(_labeling_batch(3), 2.0)
    with pytest.raises(TypeError, match="num_processes"):
        distributed.Layout(num_processes="2")


def _regression_loss(params, batch, key, train):
    del key, train
    error = batch["x"] @ params["w"] - batch["y"]
    return js.LossTerms(jnp.sum(error**2), jnp.float32(error.shape[0])), {}


@pytest.mark.variants
def test_mesh_none_is_the_plain_single_device_run():
    """``mesh=None`` (what setup_from_env returns with no JAXSEQ_* variable): the
    data functions leave batches as they are (padding only to microbatches) and
    the sharded steps are the plain steps, bit for bit."""
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.normal(size=(6, 3)).astype(np.float32),
        "y": rng.normal(size=6).astype(np.float32),
    }
    state = {"w": np.ones(3, np.float32)}
    assert distributed.replicate(state, None) is state
    assert distributed.shard_batch(batch, None) is batch
    assert distributed.global_batch_from_local(batch, None) is batch
    assert distributed.process_rows(6, None) == slice(0, 6)
    assert list(distributed.shard_batches([batch], None))[0] is batch
    (padded,) = distributed.shard_batches([batch], None, microbatches=4)
    assert distributed.batch_size_of(padded) == 8 and not padded["x"][6:].any()
    abstract = distributed.abstract_replicated(state, None)
    assert abstract["w"].shape == (3,) and abstract["w"].sharding is None

    optimizer = optax.sgd(0.1)
    key = jax.random.key(0)
    results = []
    for make in (
        lambda: distributed.make_sharded_train_step(_regression_loss, optimizer, None),
        lambda: steps.make_train_step(_regression_loss, optimizer),
    ):
        train_state = steps.create_train_state({"w": jnp.ones(3, jnp.float32)}, optimizer)
        new_state, sums = make()(train_state, batch, key)
        results.append((np.asarray(new_state.params["w"]), float(sums["loss"].value)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    sums = distributed.make_sharded_eval_step(_regression_loss, None)({"w": jnp.ones(3)}, batch)
    want = steps.make_eval_step(_regression_loss)({"w": jnp.ones(3)}, batch)
    assert float(sums["loss"].value) == float(want["loss"].value)


@pytest.mark.bad_input
def test_a_mesh_that_is_not_a_mesh_names_the_argument():
    batch = _labeling_batch(4)
    for call in (
        lambda: distributed.replicate({"w": np.ones(2)}, "cpu"),
        lambda: distributed.shard_batch(batch, 2),
        lambda: distributed.shard_batches([batch], jax.devices()),
        lambda: distributed.make_sharded_train_step(_regression_loss, optax.sgd(0.1), 8),
        lambda: distributed.make_sharded_eval_step(_regression_loss, "mesh"),
        lambda: distributed.abstract_replicated({"w": np.ones(2)}, object()),
    ):
        with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh .* or None"):
            call()
    for sharding in (distributed.data_sharding, distributed.replicated_sharding):
        with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
            sharding(None)


# ----------------------------------------------------------------------------- subprocesses


# mean_over_tokens (the normaliser that spans devices) in the default run; the others
# with `make test-slow`.
SLOW_REDUCTIONS = [
    r if r == "mean_over_tokens" else pytest.param(r, marks=pytest.mark.slow) for r in REDUCTIONS
]


@pytest.mark.variants
@pytest.mark.parametrize("reduction", SLOW_REDUCTIONS)
def test_sharded_step_equals_single_device(runs, reduction, record_property):
    """Loss, gradients and one update on 1/2/4/8 devices = the single-device step.

    The reference sees the 14 real rows; the sharded steps see them padded to 16
    with all-masked rows, which on 8 devices all land on the last device.
    """
    facts, arrays = runs.result("devices")
    assert facts["padded_rows_per_device_8"] == [0] * 7 + [2]
    ref = f"{reduction}/ref"
    worst = 0.0
    for num in DEVICE_COUNTS:
        got = f"{reduction}/{num}"
        np.testing.assert_array_equal(arrays[f"{got}/count"], arrays[f"{ref}/count"])
        np.testing.assert_array_equal(arrays[f"{got}/accuracy"], arrays[f"{ref}/accuracy"])
        for name in ("loss", "grad_norm", "grads", "params"):
            worst = max(
                worst,
                _assert_close(arrays[f"{got}/{name}"], arrays[f"{ref}/{name}"], f"{got}/{name}"),
            )
        assert np.any(arrays[f"{got}/grads"] != 0)
    record_property("max_abs_deviation", worst)


@pytest.mark.variants
def test_sharded_microbatches_equal_one_big_batch(runs, record_property):
    """2 microbatches on 8 devices (each spread over all 8) = one big batch on 1 device."""
    _, arrays = runs.result("devices")
    ref, got = "mean_over_time/ref", "micro/8x2"
    np.testing.assert_array_equal(arrays[f"{got}/count"], arrays[f"{ref}/count"])
    worst = max(
        _assert_close(arrays[f"{got}/{name}"], arrays[f"{ref}/{name}"], name)
        for name in ("loss", "grads", "params")
    )
    record_property("max_abs_deviation", worst)


@pytest.mark.bad_input
def test_shard_batch_rejects_undivisible_batch(runs):
    facts, _ = runs.result("devices")
    message = facts["undivisible_error"]
    assert "batch size 14 is not divisible by 8" in message
    assert "pad_batch_to_multiple(batch, 8)" in message


@pytest.mark.roundtrip
def test_checkpoint_from_8_devices_continues_on_1(runs, record_property):
    """Saved on 8 devices (replicated state), restored on a 1-device process and
    on a 2-device mesh bit for bit, and 2 more steps on 1 device = on 8."""
    devices_facts, written = runs.result("devices")
    single_facts, restored = runs.result("single")
    assert "'data': 8" in devices_facts["ckpt_sharding"]
    assert "'data': 2" in devices_facts["restored_on_2_sharding"]
    assert single_facts["device_count"] == 1 and single_facts["restored_step"] == 2
    np.testing.assert_array_equal(restored["ckpt/step2"], written["ckpt/step2"])
    np.testing.assert_array_equal(written["ckpt/step2_on_2"], written["ckpt/step2"])
    worst = _assert_close(restored["ckpt/step4"], written["ckpt/step4"], "state after 4 steps")
    record_property("max_abs_deviation", worst)


@pytest.mark.variants
def test_two_processes_match_single_process(runs, record_property):
    """fit() as 2 processes x 2 devices (127.0.0.1) = fit() on 1 device: parameters
    after 4 AdamW steps, and the metrics file process 0 alone wrote."""
    multi_facts, multi = runs.result("multi")
    _, single = runs.result("single")
    assert multi_facts["process_count"] == 2 and multi_facts["device_count"] == 4
    assert multi_facts["rows_of_process_0"] == [0, 8]
    worst = _assert_close(multi["fit/params"], single["fit/params"], "params", 1e-4, 1e-5)
    records = {
        name: loop.read_metrics(str(runs.out / name / "metrics.jsonl"))
        for name in ("fit_multi", "fit_single")
    }
    assert [(r["step"], r["split"]) for r in records["fit_multi"]] == [
        (r["step"], r["split"]) for r in records["fit_single"]
    ]
    assert len(records["fit_multi"]) == 4  # train and dev at steps 2 and 4, written once
    for a, b in zip(records["fit_multi"], records["fit_single"]):
        assert a.keys() == b.keys()
        for name in a.keys() - {"step", "split"}:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), (a, b)
    assert sorted(os.listdir(runs.out / "fit_multi" / "checkpoints")) == ["2", "4"]
    record_property("max_abs_deviation", worst)
    record_property("two_process_seconds", multi_facts["seconds"])


@pytest.mark.training_smoke
def test_scaling_out_doc_runs_on_one_device_and_on_two_processes(runs):
    """docs/scaling_out.md's training script as written: on one device (no
    JAXSEQ_* variable, so ``mesh`` is None and the plain steps run) and on 2
    processes x 2 devices, with the same metrics (float32 summation order aside)."""
    multi_facts, _ = runs.result("multi")
    single_facts, _ = runs.result("single")
    assert single_facts["docs"]["mesh"] == "None"
    assert "'data': 4" in multi_facts["docs"]["mesh"]
    records = {
        name: loop.read_metrics(str(runs.out / name / "runs" / "mine" / "metrics.jsonl"))
        for name in ("docs_single", "docs_multi")
    }
    assert [(r["step"], r["split"]) for r in records["docs_multi"]] == [
        (r["step"], r["split"]) for r in records["docs_single"]
    ]
    assert {r["split"] for r in records["docs_single"]} == {"train", "dev"}
    for a, b in zip(records["docs_multi"], records["docs_single"]):
        assert a.keys() == b.keys()
        for name in a.keys() - {"step", "split"}:
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6), (a, b)
    single_eval, multi_eval = single_facts["docs"]["last_eval"], multi_facts["docs"]["last_eval"]
    assert single_eval.keys() == multi_eval.keys() == {"dev"}
    assert multi_eval["dev"] == pytest.approx(single_eval["dev"], rel=1e-5, abs=1e-6)
