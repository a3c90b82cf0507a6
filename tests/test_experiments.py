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

import jaxseq
from experiments import config as configs
from experiments import harness, long_range, run_all
from jaxseq.training import loop
from tests.subprocesses import REPO, worker_env
from tests.test_fit_outputs import read_events

EXPERIMENTS = run_all.EXPERIMENTS
# The metric each experiment reports in the results table.
METRIC_LABELS = {
    "japanese_vowels": "accuracy",
    "cmudict_stress": "token accuracy (vowels)",
    "cmudict_syllables": "accuracy",
    "turkish_upos": "token accuracy",
    "cmudict_g2p_ctc": "per",
    "long_range": "test MSE (minGRU)",
    "char_lm": "bpc",
    "turkish_upos_crf": "token accuracy",
}
# The key of the test numbers each reports (default "accuracy").
REPORTED = {"cmudict_g2p_ctc": "per", "long_range": "mingru_mse", "char_lm": "bpc"}
SUPERVISED = (
    "japanese_vowels",
    "cmudict_stress",
    "cmudict_syllables",
    "turkish_upos",
    "turkish_upos_crf",
)
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


def check_provenance(record: dict) -> None:
    """A ``jaxseq.training.provenance.collect()`` record of this test process."""
    assert record["jaxseq"] == jaxseq.__version__ and record["jax"] == jax.__version__
    assert record["jaxlib"] and record["python"]
    assert "git_commit" in record and "git_dirty" in record
    assert record["devices"]["kind"] == jax.devices()[0].device_kind
    assert record["devices"]["count"] == jax.device_count() >= 1
    assert record["processes"] == {"count": 1, "index": 0}
    assert record["command"] and isinstance(record["command_line"], str)


def _flatten(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


# ----------------------------------------------------------------------------- smoke runs


@pytest.mark.training_smoke
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_smoke_run_writes_everything_and_learns(name, smoke_runs):
    out_dir = smoke_runs(name)
    args = smoke_args(name, out_dir)
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
        check_provenance(saved["provenance"])
        assert saved["sessions"] == [] and "config_changes" not in saved
        if name in STARTS:  # a process of its own: its exact command line
            how = STARTS[name]
            script = ["-m", f"experiments.{name}"] if how == "module" else [f"{name}.py"]
            command = saved["provenance"]["command"]
            assert command[0] == sys.executable and command[-len(args) :] == args
            if how == "module":
                assert command[1 : -len(args)] == script
            else:
                assert command[1 : -len(args)] and command[1].endswith(script[0])
        total_steps = saved["resolved"]["total_steps"]
        assert restore_params(folder)[0] == total_steps == result["step"]

        records = loop.read_metrics(folder / "metrics.jsonl")
        train = [r for r in records if r["split"] == "train"]
        assert {r["split"] for r in records} == {"train", "dev", "test"}
        assert all(math.isfinite(v) for r in records for k, v in r.items() if k != "split")
        assert train[-1]["step"] == total_steps
        assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]
        if name != "char_lm":  # char_lm trains with its own TBPTT loop, not fit
            # fit's observability files: the TensorBoard events hold every train record
            # (read back from the event file), the timing log a line per train record.
            events = read_events(folder / loop.TENSORBOARD_DIR)
            assert [step for step, _ in events["train/loss"]] == [r["step"] for r in train]
            np.testing.assert_allclose(
                [value for _, value in events["train/loss"]], [r["loss"] for r in train], 1e-6
            )
            assert [step for step, _ in events["train/learning_rate"]] == [r["step"] for r in train]
            timing = loop.read_metrics(folder / loop.TIMING_FILE)
            assert [t["step"] for t in timing] == [r["step"] for r in train]
            assert all(t["wall_time_s"] > 0 and t["steps_per_s"] > 0 for t in timing)

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
        # stop-after is an interruption: no extra record at step 5 (its window is saved)
        assert "test" not in {r["split"] for r in records} and records[-1]["step"] <= 5
    first = {folder: read_json(folder / "config.json") for folder in folders}
    result = experiment.main([*args, "--resume"])

    assert result.step == read_json(uninterrupted / "result.json")["step"]
    for folder in folders:  # the resume is recorded; the first session's provenance kept
        saved = read_json(folder / "config.json")
        assert saved["provenance"] == first[folder]["provenance"]
        assert saved["config"] == first[folder]["config"]  # stop_after: not a change
        assert len(saved["sessions"]) == 1 and "config_changes" not in saved
        check_provenance(saved["sessions"][0])
        assert saved["sessions"][0]["time_utc"] >= saved["provenance"]["time_utc"]
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


# ----------------------------------------------------------------------------- run folders

JV = "japanese_vowels"
# What an earlier run left (the harness's and fit's outputs) and what a user put there.
OLD_OUTPUTS = {
    "metrics.jsonl": '{"step": 999, "split": "train"}\n',
    "result.json": '{"old": true}\n',
    "timing.jsonl": "old\n",
    "curves.png": "old",
    "checkpoints/999/state": "old",
    "tensorboard/events.old": "old",
}
UNRELATED = {
    "notes.txt": "mine",
    "data/keep.csv": "1,2\n",
    "figure.png": "mine",
    "checkpoints-backup/999/state": "mine",
}


def write_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def smoke_config(name: str, folder: Path, **switches):
    config = EXPERIMENTS[name].config(smoke=True)
    return configs.override(config, {"out_dir": str(folder), **switches})


def saved_run(folder: Path, name: str = JV, *, experiment: str | None = None) -> Path:
    """A run folder as a finished smoke run of ``name`` left it (config.json, metrics,
    a checkpoint); no training."""
    config = smoke_config(name, folder)
    record = {
        "experiment": experiment or name,
        "variant": "smoke",
        "config": dataclasses.asdict(config),
        "resolved": {"out_dir": str(folder), "total_steps": 12},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(record))
    write_files(folder, OLD_OUTPUTS)
    return folder


def refusal(main, args) -> str:
    """The message of the ``SystemExit`` ``main(args)`` raises (a failure status)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = exit_info.value.code
    assert isinstance(message, str) and message, message  # printed; exit status 1
    return message


@pytest.mark.bad_input
@pytest.mark.parametrize("output", ["config.json", "metrics.jsonl", "checkpoints/3/state"])
def test_a_run_folder_holding_results_is_refused(output, tmp_path):
    write_files(tmp_path, {output: "{}"})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    message = refusal(EXPERIMENTS[JV].main, ["--smoke", "--out-dir", str(tmp_path)])
    assert str(tmp_path) in message and output.split("/")[0] in message
    assert "--resume" in message and "--overwrite" in message
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # Only the harness's outputs count: a folder of other files is a fine run folder.
    write_files(tmp_path / "elsewhere", UNRELATED)
    assert harness.outputs_in(tmp_path / "elsewhere") == []


@pytest.mark.bad_input
def test_a_refused_run_exits_with_the_message_and_no_traceback(tmp_path):
    saved_run(tmp_path)
    done = start(JV, "module", ["--smoke", "--out-dir", str(tmp_path)], tmp_path)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"the run folder {tmp_path} already holds results" in done.stderr
    assert read_json(tmp_path / "result.json") == {"old": True}


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "switches, message",
    [
        (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
        (["--allow-config-change"], "--allow-config-change only applies to --resume"),
        (["--overwrite", "--allow-config-change"], "only applies to --resume"),
    ],
)
def test_contradicting_switches_are_refused(switches, message, tmp_path):
    held = saved_run(tmp_path / JV / "smoke")
    for main, args in [
        (EXPERIMENTS[JV].main, ["--smoke", "--out-dir", str(tmp_path / JV / "smoke")]),
        (run_all.main, ["--smoke", "--only", JV, "--out-dir", str(tmp_path)]),
    ]:
        assert message in refusal(main, [*args, *switches])
    assert (held / "checkpoints" / "999").is_dir()  # nothing deleted


@pytest.mark.training_smoke
def test_overwrite_replaces_only_the_harness_outputs(tmp_path):
    saved_run(tmp_path)
    write_files(tmp_path, UNRELATED)
    result = EXPERIMENTS[JV].main(["--smoke", "--out-dir", str(tmp_path), "--overwrite"])

    for name, text in UNRELATED.items():  # untouched
        assert (tmp_path / name).read_text() == text, name
    assert not (tmp_path / "tensorboard" / "events.old").exists()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [str(result.step)]
    records = loop.read_metrics(tmp_path / "metrics.jsonl")
    assert records[0]["step"] != 999 and records[-1]["split"] == "test"
    assert read_json(tmp_path / "result.json")["step"] == result.step
    for name in ("timing.jsonl", "curves.png"):  # rewritten, if this run writes them
        if (tmp_path / name).exists():
            assert (tmp_path / name).read_text(errors="replace") != OLD_OUTPUTS[name], name
    saved = read_json(tmp_path / "config.json")
    assert saved["config"]["overwrite"] and saved["sessions"] == []
    check_provenance(saved["provenance"])


@pytest.mark.bad_input
def test_the_parts_of_a_run_are_checked_and_overwritten_with_it(tmp_path, monkeypatch):
    # long_range trains two models, each in a sub-folder of the run folder.
    saved_run(tmp_path / "mingru", "long_range", experiment="long_range/mingru")
    saved_run(tmp_path / "seed-0", "long_range")  # another run's folder inside: not a part
    write_files(tmp_path, {"notes.txt": "mine"})
    ran = []

    def run(config):  # the run folder's handling, not the training
        ran.append(config)
        return harness.Result("long_range", "mse", 0.2, 0.1, out_dir=str(tmp_path))

    experiment = dataclasses.replace(long_range.EXPERIMENT, run=run, describe=harness.Result.row)
    args = ["--smoke", "--out-dir", str(tmp_path)]
    message = refusal(experiment.main, args)
    assert "mingru/config.json" in message and "mingru/checkpoints/" in message
    assert "seed-0" not in message and not ran

    experiment.main([*args, "--overwrite"])
    assert len(ran) == 1
    assert harness.outputs_in(tmp_path / "mingru") == []
    assert harness.outputs_in(tmp_path) == ["result.json"]  # this run's
    assert (tmp_path / "seed-0" / "checkpoints" / "999").is_dir()
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.bad_input
def test_resume_with_another_config_is_refused_naming_each_field(tmp_path):
    saved_run(tmp_path)
    written = (tmp_path / "config.json").read_bytes()
    args = ["--smoke", "--out-dir", str(tmp_path), "--resume"]
    # Switches of the session may differ; so may how the folder was named.
    session = ["--train.progress", "--train.stop-after", "3"]
    assert (
        harness.config_changes(
            read_json(tmp_path / "config.json"),
            {"config": dataclasses.asdict(EXPERIMENTS[JV].parse([*args, *session]))},
        )
        == {}
    )

    changed = ["--model.hidden-size", "5", "--train.learning-rate", "0.1", *session]
    message = refusal(EXPERIMENTS[JV].main, [*args, *changed])
    assert f"the run folder {tmp_path} was trained with" in message
    assert "model.hidden_size: 8 -> 5" in message
    assert "train.learning_rate: 0.01 -> 0.1" in message
    assert "progress" not in message and "stop_after" not in message
    assert "--allow-config-change" in message
    assert (tmp_path / "config.json").read_bytes() == written

    # The values derived at run time are compared too, once they are known.
    config = smoke_config(JV, tmp_path, resume=True)
    record = {**read_json(tmp_path / "config.json"), "resolved": {"total_steps": 15}}
    with pytest.raises(harness.RunFolderError, match=r"resolved\.total_steps: 12 -> 15"):
        harness.prepare_run_dir(str(tmp_path), config, record)
    assert (tmp_path / "config.json").read_bytes() == written


@pytest.mark.roundtrip
def test_allow_config_change_records_the_change_and_every_session(tmp_path):
    folder = str(tmp_path)
    first = smoke_config(JV, tmp_path)

    def record(config, total_steps):
        return {
            "experiment": JV,
            "variant": "smoke",
            "config": dataclasses.asdict(config),
            "resolved": {"out_dir": folder, "total_steps": total_steps},
        }

    harness.prepare_run_dir(folder, first, record(first, 12))
    original = read_json(tmp_path / "config.json")
    check_provenance(original["provenance"])
    assert original["sessions"] == [] and original["config"]["model"]["hidden_size"] == 8

    changed = configs.override(
        first, {"resume": True, "allow_config_change": True, "model": {"hidden_size": 5}}
    )
    harness.prepare_run_dir(folder, changed, record(changed, 15))
    saved = read_json(tmp_path / "config.json")
    assert saved["provenance"] == original["provenance"]
    assert len(saved["sessions"]) == 1
    check_provenance(saved["sessions"][0])
    [change] = saved["config_changes"]
    assert change["session"] == 0 and change["time_utc"] == saved["sessions"][0]["time_utc"]
    assert change["changes"] == {"model.hidden_size": [8, 5], "resolved.total_steps": [12, 15]}
    assert saved["config"]["model"]["hidden_size"] == 5
    assert saved["resolved"]["total_steps"] == 15

    # The next resume compares with the accepted config, and is recorded.
    again = configs.override(changed, {"allow_config_change": False})
    harness.prepare_run_dir(folder, again, record(again, 15))
    saved = read_json(tmp_path / "config.json")
    assert len(saved["sessions"]) == 2 and len(saved["config_changes"]) == 1
    with pytest.raises(harness.RunFolderError, match="model.hidden_size: 5 -> 8"):
        harness.prepare_run_dir(
            folder, configs.override(first, {"resume": True}), record(first, 15)
        )
    assert read_json(tmp_path / "config.json") == saved


# ----------------------------------------------------------------------------- seeds


def fake_results(values: dict[int, tuple[float, float]], name: str = JV) -> list:
    """``(seed, Result)`` with the given (baseline, jaxseq) per seed."""
    return [
        (seed, harness.Result(name, "accuracy", b, j, target=0.9, seconds=seed + 1.0))
        for seed, (b, j) in values.items()
    ]


@pytest.mark.reference
def test_seed_summary_is_the_mean_and_the_sample_std():
    runs = fake_results({0: (0.5, 0.9), 1: (0.6, 0.8), 2: (0.7, 0.7)})
    summary = harness.SeedSummary.of(runs)
    # By hand: mean 0.8, squared deviations 0.01 + 0 + 0.01 over n - 1 = 2: std 0.1.
    assert summary.jaxseq == pytest.approx((0.8, 0.1))
    assert summary.baseline == pytest.approx((0.6, 0.1))
    # Margins 0.4, 0.2, 0.0: mean 0.2, std sqrt((0.04 + 0 + 0.04) / 2) = 0.2.
    assert summary.margin == pytest.approx((0.2, 0.2))
    assert summary.met is False  # the mean, 0.8, misses 0.9
    row = harness.seeds_table([summary]).splitlines()[-1]
    assert (
        "| 3 | 0.6000 ± 0.1000 | 0.8000 ± 0.1000 | +0.2000 ± 0.2000 | 0.90 (MISSED) | 2.0 |" in row
    )
    record = summary.record()
    assert [r["jaxseq"] for r in record["per_seed"]] == [0.9, 0.8, 0.7]
    assert [r["seed"] for r in record["per_seed"]] == [0, 1, 2]
    assert harness.mean_std([0.25]) == (0.25, None)
    with pytest.raises(ValueError, match="cannot be summarised"):
        harness.SeedSummary.of([*runs, *fake_results({3: (0.5, 0.5)}, name="other")])


@pytest.mark.training_smoke
def test_run_all_seeds_run_in_their_own_folders_and_report_mean_and_std(
    monkeypatch, tmp_path, capsys
):
    ran = []
    jaxseq_of_seed = {0: 0.9, 1: 0.8, 2: 0.7}

    def execute(self, config):  # the seeds' plumbing and the report, not the training
        ran.append((self.name, config.train.seed, config.out_dir))
        seed = config.train.seed
        return harness.Result(
            self.name, "metric", 0.5, jaxseq_of_seed[seed], out_dir=config.out_dir
        )

    monkeypatch.setattr(harness.Experiment, "execute", execute)
    names = ["japanese_vowels", "cmudict_stress"]
    results = run_all.main(["--full", "--seeds", "3", "--only", *names, "--out-dir", str(tmp_path)])

    assert len(results) == 6
    assert ran == [
        (name, seed, str(tmp_path / name / "full" / f"seed-{seed}"))
        for name in names
        for seed in range(3)
    ]
    table = (tmp_path / "results.md").read_text()
    assert "seeds 0-2: mean ± sample std" in table
    assert table.count("| 0.5000 ± 0.0000 | 0.8000 ± 0.1000 |") == 2
    saved = read_json(tmp_path / "results.json")
    assert saved["seeds"] == [0, 1, 2] and len(saved["results"]) == 2
    for row in saved["results"]:
        assert row["jaxseq_mean"] == pytest.approx(0.8) and row["jaxseq_std"] == pytest.approx(0.1)
        assert [r["jaxseq"] for r in row["per_seed"]] == [0.9, 0.8, 0.7]
    assert "seed 2" in capsys.readouterr().out

    # One seed: the folder and table of `make run`, the experiment's own seed.
    ran.clear()
    run_all.main(["--only", "japanese_vowels", "--out-dir", str(tmp_path / "one")])
    assert ran == [("japanese_vowels", 0, str(tmp_path / "one" / "japanese_vowels" / "default"))]
    assert "±" not in (tmp_path / "one" / "results.md").read_text()
    assert "seeds" not in read_json(tmp_path / "one" / "results.json")


@pytest.mark.bad_input
def test_run_all_refuses_every_held_folder_before_running_anything(monkeypatch, tmp_path):
    monkeypatch.setattr(harness.Experiment, "execute", lambda self, config: pytest.fail("ran"))
    for seed in (0, 2):
        saved_run(tmp_path / JV / "smoke" / f"seed-{seed}")
    args = ["--smoke", "--seeds", "3", "--only", JV, "long_range", "--out-dir", str(tmp_path)]
    message = refusal(run_all.main, args)
    assert "refused before running anything" in message
    assert str(tmp_path / JV / "smoke" / "seed-0") in message
    assert str(tmp_path / JV / "smoke" / "seed-2") in message
    assert "seed-1" not in message and "long_range" not in message


@pytest.mark.training_smoke
def test_run_all_two_seeds_of_a_smoke_run(tmp_path):
    results = run_all.main(["--smoke", "--seeds", "2", "--only", JV, "--out-dir", str(tmp_path)])
    assert [r.out_dir for r in results] == [
        str(tmp_path / JV / "smoke" / f"seed-{k}") for k in (0, 1)
    ]
    seeds = [read_json(Path(r.out_dir) / "config.json")["config"]["train"]["seed"] for r in results]
    assert seeds == [0, 1]
    assert results[0].baseline != results[1].baseline  # the seed also draws the dev hold-out
    [row] = read_json(tmp_path / "results.json")["results"]
    mean, std = harness.mean_std([r.jaxseq for r in results])
    assert (row["jaxseq_mean"], row["jaxseq_std"]) == (mean, std)
    assert f"{mean:.4f} ± {std:.4f}" in (tmp_path / "results.md").read_text()


# ----------------------------------------------------------------------------- issue 14


@pytest.mark.roundtrip
def test_stop_after_resume_extend_keep_the_straight_record_and_add_up_the_time(
    smoke_runs, tmp_path, capsys
):
    """--train.stop-after is an interruption (no result, no extra record: the resumed
    metrics.jsonl is the straight run's, byte for byte); result.json's time sums the
    sessions that trained (a no-op resume adds nothing); extending a finished run drops
    its old test record and config.json records the step the change applies from."""
    name = "cmudict_g2p_ctc"
    straight = smoke_runs(name)
    experiment = EXPERIMENTS[name]
    args = smoke_args(name, tmp_path)
    assert experiment.main([*args, "--train.stop-after", "5"]) is None
    assert f"{name}: stopped at step 5" in capsys.readouterr().out
    for output in ("result.json", "curves.png"):
        assert not (tmp_path / output).exists(), output
    [stopped] = read_json(tmp_path / "sessions.json")
    assert stopped["status"] == "stopped" and stopped["step"] == 5

    result = experiment.main([*args, "--resume"])
    assert (tmp_path / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    assert not (tmp_path / "sessions.json").exists()  # moved into result.json
    saved = read_json(tmp_path / "result.json")
    assert [s["status"] for s in saved["sessions"]] == ["stopped", "finished"]
    assert saved["seconds"] == pytest.approx(sum(s["seconds"] for s in saved["sessions"]))
    assert saved["seconds"] > saved["sessions"][1]["seconds"] == result.seconds - stopped["seconds"]

    again = experiment.main([*args, "--resume"])  # finished: trains nothing, adds no time
    resaved = read_json(tmp_path / "result.json")
    assert [s["status"] for s in resaved["sessions"]][-1] == "already finished"
    assert resaved["seconds"] == saved["seconds"] and again.seconds == result.seconds

    config = read_json(tmp_path / "config.json")
    epochs, finished = config["config"]["train"]["num_epochs"], result.step
    longer = ["--train.num-epochs", str(2 * epochs), "--train.max-steps", str(finished + 4)]
    extended = experiment.main([*args, "--resume", "--allow-config-change", *longer])
    assert extended.step == finished + 4
    records = loop.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "test"] == [extended.step]
    assert records[-1]["split"] == "test"
    [change] = read_json(tmp_path / "config.json")["config_changes"]
    assert change["from_step"] == finished
    assert change["changes"]["train.max_steps"][1] == finished + 4
