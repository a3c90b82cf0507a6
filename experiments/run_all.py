"""Run every experiment's default (or ``--full`` / ``--smoke``) config; one results table.

Command::

    python -m experiments.run_all                    # `make run`: default configs, one seed
    python -m experiments.run_all --full --seeds 3   # `make experiments`: full configs, 3 seeds
    python -m experiments.run_all --smoke            # all of them, seconds each
    python -m experiments.run_all --only japanese_vowels long_range
    python -m experiments.run_all --overwrite        # run again, deleting the previous results

Prints the table (experiment, metric, baseline, jaxseq, margin, target, time)
and writes it to ``runs/results.md`` and ``runs/results.json`` (``--out-dir``).
With ``--seeds N`` (N > 1) each experiment runs with the seeds 0 .. N-1, each in its own
run folder ``runs/<experiment>/<variant>/seed-<k>``; the table gives the mean ± sample
standard deviation over the seeds of the baseline, jaxseq's test metric and the margin
(a target is met when the mean meets it), and ``results.json`` holds those and every
seed's numbers (``per_seed``).

Run folders that already hold results are refused, all of them listed, before
anything runs: pass ``--resume`` (continue; a finished run trains nothing) or
``--overwrite`` (delete their results and start over); see :mod:`experiments.harness`.

``make run`` has a budget of about 10 minutes on 2 CPU cores for one seed of the
default configs. The default variant runs six experiments (the four data sets' tasks,
the BiLSTM-CRF head on Turkish UPOS and the character language model) and skips the others,
saying so in its output and in ``results.md`` (see :data:`OVER_BUDGET`, each with its
cost): their default configs alone take more than the budget. ``--only`` runs the
experiments it names whatever their cost; ``--smoke`` and ``--full`` run all of them.

Measured before the CRF and char_lm joined (default configs, 2-core CPU shared with other
jobs, load ~8; 221 s CPU time; the README has the latest quiet-machine table)::

    experiment         metric                   baseline  jaxseq  target        wall s  CPU s
    japanese_vowels    accuracy                   0.9784  0.9838  0.98 met        33.2   14.2
    cmudict_stress     token accuracy (vowels)    0.7130  0.9184  0.95 MISSED    171.8   95.6
    cmudict_syllables  accuracy                   0.7861  0.9608  0.97 MISSED     95.8   52.8
    turkish_upos       token accuracy             0.8971  0.9450  0.93 met       116.7   54.5

    Total wall time: 421.7 s

The ``--full`` configs (bigger models, all data, more epochs) were checked to start, not
run to the end (estimated 30-45 min on this machine without the two skipped ones).
"""

from __future__ import annotations

if not __package__:  # run as `python experiments/run_all.py`
    import _repo_root  # noqa: F401

import dataclasses
import json
import os
import time
from typing import Literal

import tyro

from experiments import (
    char_lm,
    cmudict_g2p_ctc,
    cmudict_stress,
    cmudict_syllables,
    harness,
    japanese_vowels,
    long_range,
    turkish_upos,
    turkish_upos_crf,
)
from experiments import config as configs
from jaxseq.training import loop

EXPERIMENTS: dict[str, harness.Experiment] = {
    module.NAME: module.EXPERIMENT
    for module in (
        japanese_vowels,
        cmudict_stress,
        cmudict_syllables,
        turkish_upos,
        turkish_upos_crf,
        cmudict_g2p_ctc,
        long_range,
        char_lm,
    )
}
Name = Literal[tuple(EXPERIMENTS)]  # the names, as a command-line choice

# The experiments the default variant (`make run`) skips, and why.
OVER_BUDGET = {
    "cmudict_g2p_ctc": "its default config takes ~380 s on 2 CPU cores (1,576 steps of a "
    "BiLSTM over 100 k words), more than is left of make run's ~10 min after the other six",
    "long_range": "its default config takes ~265 s on 2 CPU cores (two models, 400 steps each "
    "on sequences of 1,000 steps), more than is left of make run's ~10 min after the other "
    "six",
}


@dataclasses.dataclass(frozen=True)
class Config:
    full: bool = False
    """Run the full configs (bigger models, all data, longer) of every experiment."""
    smoke: bool = False
    """Run the smoke configs (seconds each) of every experiment."""
    only: tuple[Name, ...] = ()
    """Run only these experiments, whatever their cost (default: all that fit the budget)."""
    seeds: int = 1
    """Run each experiment with the seeds 0 .. N-1 (``--train.seed``), each in its own run
    folder <out_dir>/<experiment>/<variant>/seed-<k>; the table reports the mean ± sample
    standard deviation over the seeds (N > 1)."""
    out_dir: str = harness.RUNS_DIR
    """Where results.md / results.json go; each run's folder is <out_dir>/<experiment>/<variant>
    (one seed) or <out_dir>/<experiment>/<variant>/seed-<k>."""
    resume: bool = False
    """Continue every run from its folder's last checkpoint (a finished run trains nothing)."""
    overwrite: bool = False
    """Start every run over, deleting its folder's previous results."""
    allow_config_change: bool = False
    """With --resume: continue runs whose config differs from their folder's config.json."""
    progress: bool = False
    """Show each run's progress bar."""


def plan(config: Config) -> tuple[list[str], dict[str, str]]:
    """The experiments to run, and those skipped with the reason."""
    if config.only:
        return list(config.only), {}
    if config.smoke or config.full:
        return list(EXPERIMENTS), {}
    return [n for n in EXPERIMENTS if n not in OVER_BUDGET], dict(OVER_BUDGET)


def run_configs(config: Config, name: str) -> list[tuple[int, object]]:
    """``(seed, run config)`` of each run of experiment ``name``."""
    experiment = EXPERIMENTS[name]
    base = experiment.config(smoke=config.smoke, full=config.full)
    folder = os.path.join(config.out_dir, name, configs.variant_name(base))
    runs = []
    for seed in range(config.seeds):
        switches = {
            "resume": config.resume,
            "overwrite": config.overwrite,
            "allow_config_change": config.allow_config_change,
            "out_dir": folder if config.seeds == 1 else os.path.join(folder, f"seed-{seed}"),
            "train": {"progress": config.progress},
        }
        if config.seeds > 1:
            switches["train"]["seed"] = seed
        runs.append((seed, configs.override(base, switches)))
    return runs


def check_run_folders(planned: dict[str, list[tuple[int, object]]]) -> None:
    """Every run folder's refusal at once, before anything runs (``SystemExit``)."""
    refused = []
    for name, runs in planned.items():
        for _, run_config in runs:
            try:
                EXPERIMENTS[name].check(run_config)
            except harness.RunFolderError as e:
                refused.append(f"{name}: {e}")
    if refused:
        raise SystemExit("refused before running anything:\n" + "\n".join(refused))


def run_all(config: Config) -> list[harness.Result]:
    """Run the plan; return the results (every seed's, in order). Writes results.md and
    results.json under ``config.out_dir``."""
    if config.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {config.seeds}")
    started = time.perf_counter()
    names, skipped = plan(config)
    planned = {name: run_configs(config, name) for name in names}
    check_run_folders(planned)
    for name, why in skipped.items():
        print(f"== {name}: skipped, {why}; run it with --only {name}", flush=True)
    results, by_seed = [], []
    for name, runs in planned.items():
        experiment = EXPERIMENTS[name]
        for seed, run_config in runs:
            variant = configs.variant_name(run_config)
            print(
                f"== {name} ({variant}{'' if config.seeds == 1 else f', seed {seed}'})", flush=True
            )
            result = experiment.execute(run_config)
            print(experiment.describe(result), flush=True)
            results.append(result)
            by_seed.append((name, seed, result))
    total = time.perf_counter() - started
    variant = configs.variant_name(config)
    notes = "".join(f"\nSkipped {name}: {why}.\n" for name, why in skipped.items())
    if config.seeds == 1:
        table = harness.results_table(results)
        rows = [{**dataclasses.asdict(r), "margin": r.margin, "met": r.met} for r in results]
        saved = {"variant": variant, "total_seconds": total, "results": rows, "skipped": skipped}
        title = f"# jaxseq experiments ({variant} configs)"
    else:
        summaries = [
            harness.SeedSummary.of([(s, r) for n, s, r in by_seed if n == name]) for name in planned
        ]
        table = harness.seeds_table(summaries)
        saved = {
            "variant": variant,
            "seeds": list(range(config.seeds)),
            "total_seconds": total,
            "results": [summary.record() for summary in summaries],
            "skipped": skipped,
        }
        title = (
            f"# jaxseq experiments ({variant} configs, seeds 0-{config.seeds - 1}: "
            "mean ± sample std)"
        )
    text = f"{title}\n\n{table}\n{notes}\nTotal wall time: {total:.1f} s\n"
    os.makedirs(config.out_dir, exist_ok=True)
    with open(os.path.join(config.out_dir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(config.out_dir, "results.json"), "w") as f:
        json.dump(saved, f, indent=2)
        f.write("\n")
    print("\n" + text, flush=True)
    return results


def main(args=None) -> list[harness.Result]:
    config = tyro.cli(Config, args=args, description=__doc__)
    try:
        return run_all(config)
    except harness.RunFolderError as e:  # a run's parts, found only once it ran
        raise SystemExit(str(e)) from None
    except loop.FitInterrupted as e:
        harness.exit_interrupted(e, "run_all")


if __name__ == "__main__":
    main()
