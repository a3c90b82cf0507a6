"""The experiments on the harness: smoke runs on the real data, both ways of starting
an experiment, resume, the metrics schema, run_all's plan, bad command lines.

Each experiment's ``--smoke`` run happens once per module (the ``smoke_runs``
fixture) and is shared by the checks: ``japanese_vowels`` runs as ``python -m
experiments.japanese_vowels``, ``cmudict_syllables`` as ``python
experiments/cmudict_syllables.py`` from another folder without ``PYTHONPATH``,
the others in-process through ``EXPERIMENT.main``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import config as configs
from experiments import harness, long_range, run_all
from jaxseq.training import loop
from tests.subprocesses import REPO, worker_env

EXPERIMENTS = run_all.EXPERIMENTS
# The metric each experiment reports in the results table.
METRIC_LABELS = {
    "japanese_vowels": "accuracy",
    "cmudict_stress": "token accuracy (vowels)",
    "cmudict_syllables": "accuracy",
    "turkish_upos": "token accuracy",
    "cmudict_g2p_ctc": "per",
    "long_range": "test MSE (minGRU)",
}
# The key of the test numbers each reports (default "accuracy").
REPORTED = {"cmudict_g2p_ctc": "per", "long_range": "mingru_mse"}
SUPERVISED = ("japanese_vowels", "cmudict_stress", "cmudict_syllables", "turkish_upos")
# Explicit flags win over the --smoke values (checked in config.json); --method reaches
# the model as its method value.
EXTRA_ARGS = {
    "japanese_vowels": ["--model.hidden-size", "6", "--model.method", "scan"],
    "long_range": ["--method", "parallel"],
}
# How an experiment's smoke run starts: in-process unless named here.
STARTS = {"japanese_vowels": "module", "cmudict_syllables": "file"}
SUBPROCESS_TIMEOUT_S = 300


def smoke_args(name: str, out_dir) -> list[str]:
    return ["--smoke", "--out-dir", str(out_dir), *EXTRA_ARGS.get(name, [])]


def start(name: str, how: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    """``python -m experiments.<name>`` from the repository root (``how="module"``) or
    ``python experiments/<name>.py`` from ``cwd`` without PYTHONPATH (``how="file"``)."""
    env = worker_env()
    if how == "module":
        command, cwd = ["-m", f"experiments.{name}"], REPO
    else:
        command = [str(REPO / "experiments" / f"{name}.py")]
        env.pop("PYTHONPATH")
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """name -> run folder, each experiment run once in smoke mode."""
    runs = {}

    def get(name):
        if name not in runs:
            out_dir = tmp_path_factory.mktemp(name)
            args = smoke_args(name, out_dir)
            if name in STARTS:
                done = start(name, STARTS[name], args, tmp_path_factory.mktemp("cwd"))
                assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
                assert name in done.stdout
            else:
                EXPERIMENTS[name].main(args)
            runs[name] = out_dir
        return runs[name]

    return get


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def run_folders(out_dir) -> list[Path]:
    """The harness run folders of an experiment (several for several models)."""
    return sorted(p.parent for p in Path(out_dir).rglob("metrics.jsonl"))


def restore_params(run_folder) -> tuple[int, dict]:
    mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(run_folder, "checkpoints")))
    step = mngr.latest_step()
    state = mngr.restore(step, args=ocp.args.StandardRestore())
    mngr.close()
    return step, state["params"]


def _flatten(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


# ----------------------------------------------------------------------------- smoke runs


@pytest.mark.training_smoke
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_smoke_run_writes_everything_and_learns(name, smoke_runs):
    out_dir = smoke_runs(name)
    result = read_json(out_dir / "result.json")
    assert result["experiment"] == name and result["metric"] == METRIC_LABELS[name]
    assert math.isfinite(result["baseline"]) and math.isfinite(result["jaxseq"])
    assert result["seconds"] > 0 and result["cpu_seconds"] > 0
    assert result["jaxseq"] == result["test"][REPORTED.get(name, "accuracy")]

    folders = run_folders(out_dir)
    assert len(folders) == (2 if name == "long_range" else 1)
    for folder in folders:
        for file in ("config.json", "metrics.jsonl", "curves.png"):
            assert os.path.getsize(folder / file) > 0, (folder, file)
        if name in SUPERVISED:
            assert os.path.getsize(folder / "confusion.png") > 0
        saved = read_json(folder / "config.json")
        assert saved["variant"] == "smoke" and saved["config"]["smoke"]
        total_steps = saved["resolved"]["total_steps"]
        assert restore_params(folder)[0] == total_steps == result["step"]

        records = loop.read_metrics(folder / "metrics.jsonl")
        train = [r for r in records if r["split"] == "train"]
        assert {r["split"] for r in records} == {"train", "dev", "test"}
        assert all(math.isfinite(v) for r in records for k, v in r.items() if k != "split")
        assert train[-1]["step"] == total_steps
        assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]

    if name == "japanese_vowels":
        saved = read_json(out_dir / "config.json")
        assert saved["config"]["model"]["hidden_size"] == 6  # the explicit flag won
        model = saved["resolved"]["model"]
        assert model["method"] == model["runs_as"] == repr(configs.METHODS["scan"])
    if name == "long_range":
        saved = read_json(out_dir / "mingru" / "config.json")
        assert saved["resolved"]["runs_as"] == repr(configs.METHODS["parallel"])
        assert read_json(out_dir / "lstm" / "config.json")["resolved"]["runs_as"] == "Fused()"
    if name == "cmudict_g2p_ctc":
        assert 0.0 < result["test"]["per"] <= 1.5 and result["test"]["words"] == 128


@pytest.mark.training_smoke
def test_metrics_records_share_one_schema(smoke_runs):
    for name in EXPERIMENTS:
        for folder in run_folders(smoke_runs(name)):
            saved = read_json(folder / "config.json")
            steps_per_epoch = saved["resolved"]["steps_per_epoch"]
            learning_rates = _optimizer_learning_rates(
                configs.TrainConfig(**saved["config"]["train"]), saved["resolved"]["total_steps"]
            )
            records = loop.read_metrics(folder / "metrics.jsonl")
            for r in records:
                where = f"{folder}: {r}"
                assert tuple(r)[: len(harness.SCHEMA)] == harness.SCHEMA, where
                assert type(r["step"]) is int and r["split"] in harness.SPLITS, where
                assert all(type(r[k]) is float for k in r if k not in ("step", "split")), where
                assert r["epoch"] == r["step"] / steps_per_epoch, where
                lr = learning_rates[r["step"] - 1]
                assert r["learning_rate"] == pytest.approx(lr, rel=1e-5, abs=1e-9), where
            assert [r["split"] for r in records].count("test") == 1
            assert records[-1]["split"] == "test" and records[-1]["step"] == records[-2]["step"]


def _optimizer_learning_rates(tc: configs.TrainConfig, total_steps: int) -> np.ndarray:
    """The rate of each update of the run's optimizer, measured: with a constant gradient
    of 1 (no clipping, no decay) Adam's bias-corrected step is the learning rate."""
    tc = dataclasses.replace(tc, weight_decay=0.0, clip_norm=None)
    optimizer = harness.optimizer_for(tc, harness.schedule_for(tc, total_steps))
    params, grads = jnp.zeros(()), jnp.ones(())
    with jax.numpy_dtype_promotion("standard"):
        state = optimizer.init(params)
        rates = []
        for _ in range(total_steps):
            updates, state = optimizer.update(grads, state, params)
            rates.append(-float(updates) * (1 + 1e-8))
    return np.array(rates)


# ----------------------------------------------------------------------------- resume


@pytest.mark.roundtrip
@pytest.mark.parametrize(
    "name", ["cmudict_g2p_ctc", pytest.param("long_range", marks=pytest.mark.slow)]
)
def test_resume_reaches_the_uninterrupted_params(name, smoke_runs, tmp_path):
    uninterrupted = smoke_runs(name)
    experiment = EXPERIMENTS[name]
    args = smoke_args(name, tmp_path)
    experiment.main([*args, "--train.stop-after", "5"])  # mid-epoch (8 steps per epoch)
    folders = run_folders(tmp_path)
    assert [restore_params(f)[0] for f in folders] == [5] * len(folders)
    for folder in folders:  # fit wrote the schema; the test record waits for the last step
        records = loop.read_metrics(folder / "metrics.jsonl")
        assert records and all(tuple(r)[: len(harness.SCHEMA)] == harness.SCHEMA for r in records)
        assert "test" not in {r["split"] for r in records} and records[-1]["step"] == 5
    result = experiment.main([*args, "--resume"])

    assert result.step == read_json(uninterrupted / "result.json")["step"]
    for folder in folders:
        step, resumed = restore_params(folder)
        full_step, full = restore_params(uninterrupted / folder.relative_to(tmp_path))
        assert step == full_step == result.step
        flat_resumed, flat_full = _flatten(resumed), _flatten(full)
        assert flat_resumed.keys() == flat_full.keys()
        for path, value in flat_full.items():
            np.testing.assert_array_equal(flat_resumed[path], value, err_msg=f"{folder} {path}")
        # The metrics file holds each step once, ending at the last step and the test.
        records = loop.read_metrics(folder / "metrics.jsonl")
        steps = [r["step"] for r in records if r["split"] == "train"]
        assert steps == sorted(set(steps)) and steps[-1] == step
        assert [r["split"] for r in records].count("test") == 1

    # Resuming the finished run trains nothing and writes no record.
    written = {folder: (folder / "metrics.jsonl").read_bytes() for folder in folders}
    again = experiment.main([*args, "--resume"])
    assert (again.step, again.jaxseq) == (result.step, result.jaxseq)
    for folder in folders:
        assert (folder / "metrics.jsonl").read_bytes() == written[folder], folder


# ----------------------------------------------------------------------------- starting


@pytest.mark.training_smoke
def test_every_experiment_starts_as_a_file_from_any_folder(tmp_path):
    # `--help` imports everything an experiment needs; the runs of the smoke fixture
    # start one experiment each way.
    env = worker_env()
    env.pop("PYTHONPATH")
    names = [*EXPERIMENTS, "run_all"]
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(REPO / "experiments" / f"{name}.py"), "--help"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in names
    }
    for name, proc in procs.items():
        output, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
        assert proc.returncode == 0, (name, output[-3000:])
        assert "--out-dir" in output, (name, output[-3000:])


@pytest.mark.training_smoke
def test_run_all_runs_every_default_config_or_says_why(monkeypatch, tmp_path, capsys):
    ran = []

    def execute(self, config):  # the plan and the report, not the training
        ran.append((self.name, configs.variant_name(config), config.out_dir))
        return harness.Result(self.name, "metric", 0.5, 0.75, out_dir=config.out_dir)

    monkeypatch.setattr(harness.Experiment, "execute", execute)
    results = run_all.main(["--out-dir", str(tmp_path)])

    skipped = set(run_all.OVER_BUDGET)
    assert skipped and skipped < set(EXPERIMENTS)
    assert [r.experiment for r in results] == [n for n in EXPERIMENTS if n not in skipped]
    for name, variant, out_dir in ran:
        assert variant == "default" and out_dir == str(tmp_path / name / "default")
    output = capsys.readouterr().out
    for name in skipped:
        assert f"== {name}: skipped, " in output and f"Skipped {name}: " in output
    saved = read_json(tmp_path / "results.json")
    assert set(saved["skipped"]) == skipped and len(saved["results"]) == len(results)
    assert "Skipped" in (tmp_path / "results.md").read_text()

    for args in (["--smoke"], ["--full"]):
        assert run_all.plan(run_all.Config(**{args[0][2:]: True})) == (list(EXPERIMENTS), {})
    named = run_all.plan(run_all.Config(only=("long_range",)))
    assert named == (["long_range"], {})


# ----------------------------------------------------------------------------- bad input


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "name, args, message",
    [
        ("japanese_vowels", ["--model.bogus", "3"], "--model.bogus"),
        ("japanese_vowels", ["--smoke", "--model.hidden-size", "abc"], "--model.hidden-size"),
        ("cmudict_stress", ["--model.cell", "transformer"], "--model.cell"),
        ("cmudict_syllables", ["--model.method", "sequential"], "--model.method"),
        ("turkish_upos", ["--train.learning-rate", "fast"], "--train.learning-rate"),
        ("long_range", ["--mode", "parallel"], "--mode"),
        ("cmudict_g2p_ctc", ["--model.implementation", "fused"], "--model.implementation"),
        ("run_all", ["--only", "mnist"], "--only"),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "bad-choice",
        "bad-method",
        "wrong-type-float",
        "old-mode-switch",
        "old-implementation-switch",
        "run-all-unknown",
    ],
)
def test_bad_override_exits_with_tyros_error(name, args, message, capsys):
    main = run_all.main if name == "run_all" else EXPERIMENTS[name].main
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    assert message in capsys.readouterr().err


@pytest.mark.bad_input
def test_a_method_the_cell_cannot_run_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"Fused\(\)"):
        long_range.EXPERIMENT.main(["--smoke", "--out-dir", str(tmp_path), "--method", "fused"])
    assert not list(tmp_path.rglob("metrics.jsonl"))
