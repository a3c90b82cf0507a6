"""The experiment scripts: smoke runs on the real data, resume, bad command lines.

Each experiment's ``--smoke`` run happens once per session (a module fixture)
and is shared by the smoke checks and the resume check.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import (
    cmudict_stress,
    cmudict_syllables,
    common,
    japanese_vowels,
    run_all,
    turkish_upos,
)
from jaxseq.training import loop

EXPERIMENTS = {
    "japanese_vowels": japanese_vowels,
    "cmudict_stress": cmudict_stress,
    "cmudict_syllables": cmudict_syllables,
    "turkish_upos": turkish_upos,
}
# The metric each experiment reports in the results table.
METRIC_LABELS = {
    "japanese_vowels": "accuracy",
    "cmudict_stress": "token accuracy (vowels)",
    "cmudict_syllables": "accuracy",
    "turkish_upos": "token accuracy",
}
# Explicit flags win over the --smoke values: checked in config.json below.
EXTRA_ARGS = {"japanese_vowels": ["--model.hidden-size", "6"]}


def smoke_args(name: str, out_dir) -> list[str]:
    return ["--smoke", "--out-dir", str(out_dir), *EXTRA_ARGS.get(name, [])]


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """name -> (result, run folder), each experiment run once in smoke mode."""
    runs = {}

    def get(name):
        if name not in runs:
            out_dir = tmp_path_factory.mktemp(name)
            runs[name] = (EXPERIMENTS[name].main(smoke_args(name, out_dir)), out_dir)
        return runs[name]

    return get


def restore_params(out_dir) -> tuple[int, dict]:
    mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, "checkpoints")))
    step = mngr.latest_step()
    state = mngr.restore(step, args=ocp.args.StandardRestore())
    mngr.close()
    return step, state["params"]


@pytest.mark.training_smoke
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_smoke_run_writes_everything_and_learns(name, smoke_runs):
    result, out_dir = smoke_runs(name)
    module = EXPERIMENTS[name]

    assert result.experiment == name and result.metric == METRIC_LABELS[name]
    assert 0.0 <= result.baseline <= 1.0 and 0.0 <= result.jaxseq <= 1.0
    assert result.seconds > 0 and math.isfinite(result.test["loss"])
    for file in ("config.json", "metrics.jsonl", "curves.png", "confusion.png", "result.json"):
        assert os.path.getsize(out_dir / file) > 0, file
    assert os.listdir(out_dir / "checkpoints")

    with open(out_dir / "config.json") as f:
        saved = json.load(f)
    assert saved["experiment"] == name and saved["variant"] == "smoke"
    assert saved["config"]["train"]["max_steps"] == module.SMOKE["train"]["max_steps"]
    if name == "japanese_vowels":
        assert saved["config"]["model"]["hidden_size"] == 6  # the explicit flag won

    records = loop.read_metrics(out_dir / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert {r["split"] for r in records} == {"train", "dev"}
    assert all(math.isfinite(v) for r in records for k, v in r.items() if k != "split")
    assert train[-1]["step"] == module.SMOKE["train"]["max_steps"]
    assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]


@pytest.mark.roundtrip
def test_resume_reaches_the_uninterrupted_params(smoke_runs, tmp_path):
    name = "japanese_vowels"
    _, full_dir = smoke_runs(name)
    args = smoke_args(name, tmp_path)
    config = common.parse(
        japanese_vowels.Config,
        args,
        smoke_overrides=japanese_vowels.SMOKE,
        full_overrides=japanese_vowels.FULL,
    )
    japanese_vowels.run(config, stop_after=5)  # interrupted mid-epoch (8 steps per epoch)
    assert restore_params(tmp_path)[0] == 5
    japanese_vowels.main([*args, "--resume"])

    step, resumed = restore_params(tmp_path)
    full_step, uninterrupted = restore_params(full_dir)
    assert step == full_step == japanese_vowels.SMOKE["train"]["max_steps"]
    flat_resumed, flat_full = _flatten(resumed), _flatten(uninterrupted)
    assert flat_resumed.keys() == flat_full.keys()
    for path, value in flat_full.items():
        np.testing.assert_array_equal(flat_resumed[path], value, err_msg=path)
    # The metrics file holds each step once, ending at the last step.
    steps = [
        r["step"] for r in loop.read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"
    ]
    assert steps == sorted(set(steps)) and steps[-1] == step


def _flatten(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "main, args, message",
    [
        (japanese_vowels.main, ["--model.bogus", "3"], "--model.bogus"),
        (japanese_vowels.main, ["--smoke", "--model.hidden-size", "abc"], "--model.hidden-size"),
        (cmudict_stress.main, ["--model.cell", "transformer"], "--model.cell"),
        (turkish_upos.main, ["--train.learning-rate", "fast"], "--train.learning-rate"),
        (run_all.main, ["--only", "mnist"], "--only"),
    ],
    ids=["unknown-key", "wrong-type", "bad-choice", "wrong-type-float", "run-all-unknown"],
)
def test_bad_override_exits_with_tyros_error(main, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    assert message in capsys.readouterr().err
