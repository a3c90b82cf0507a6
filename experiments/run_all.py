"""Run every experiment's default (or ``--full`` / ``--smoke``) config; one results table.

Command::

    python -m experiments.run_all            # `make run`: default configs, ~7 min on 2 CPU cores
    python -m experiments.run_all --full     # `make experiments`: the full configs, all six
    python -m experiments.run_all --smoke    # all six, seconds each
    python -m experiments.run_all --only japanese_vowels long_range

Prints the table (experiment, metric, baseline, jaxseq, margin, target, time)
and writes it to ``runs/results.md`` and ``runs/results.json`` (``--out-dir``).

``make run`` has a budget of about 10 minutes on 2 CPU cores for one seed of the
default configs. The default variant runs four of the six experiments and skips
two, saying so in its output and in ``results.md`` (see :data:`OVER_BUDGET`):
their default configs alone take about 11 minutes. ``--only`` runs the experiments
it names whatever their cost; ``--smoke`` and ``--full`` run all six.

Measured (default configs, 2-core CPU shared with other jobs, load ~8; 221 s CPU time)::

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
    cmudict_g2p_ctc,
    cmudict_stress,
    cmudict_syllables,
    harness,
    japanese_vowels,
    long_range,
    turkish_upos,
)
from experiments import config as configs

EXPERIMENTS: dict[str, harness.Experiment] = {
    module.NAME: module.EXPERIMENT
    for module in (
        japanese_vowels,
        cmudict_stress,
        cmudict_syllables,
        turkish_upos,
        cmudict_g2p_ctc,
        long_range,
    )
}
Name = Literal[tuple(EXPERIMENTS)]  # the names, as a command-line choice

# The experiments the default variant (`make run`) skips, and why.
OVER_BUDGET = {
    "cmudict_g2p_ctc": "its default config takes ~380 s on 2 CPU cores (1,576 steps of a "
    "BiLSTM over 100 k words), more than is left of make run's ~10 min after the other four "
    "(~420 s)",
    "long_range": "its default config takes ~265 s on 2 CPU cores (two models, 400 steps each "
    "on sequences of 1,000 steps), more than is left of make run's ~10 min after the other "
    "four (~420 s)",
}


@dataclasses.dataclass(frozen=True)
class Config:
    full: bool = False
    """Run the full configs (bigger models, all data, longer) of all six experiments."""
    smoke: bool = False
    """Run the smoke configs (seconds each) of all six experiments."""
    only: tuple[Name, ...] = ()
    """Run only these experiments, whatever their cost (default: all that fit the budget)."""
    out_dir: str = harness.RUNS_DIR
    """Where results.md / results.json go; each run's folder is <out_dir>/<experiment>/<variant>."""
    progress: bool = False
    """Show each run's progress bar."""


def plan(config: Config) -> tuple[list[str], dict[str, str]]:
    """The experiments to run, and those skipped with the reason."""
    if config.only:
        return list(config.only), {}
    if config.smoke or config.full:
        return list(EXPERIMENTS), {}
    return [n for n in EXPERIMENTS if n not in OVER_BUDGET], dict(OVER_BUDGET)


def run_all(config: Config) -> list[harness.Result]:
    started = time.perf_counter()
    names, skipped = plan(config)
    for name, why in skipped.items():
        print(f"== {name}: skipped, {why}; run it with --only {name}", flush=True)
    results = []
    for name in names:
        experiment = EXPERIMENTS[name]
        run_config = experiment.config(smoke=config.smoke, full=config.full)
        variant = configs.variant_name(run_config)
        run_config = configs.override(
            run_config,
            {
                "out_dir": os.path.join(config.out_dir, name, variant),
                "train": {"progress": config.progress},
            },
        )
        print(f"== {name} ({variant})", flush=True)
        result = experiment.execute(run_config)
        print(experiment.describe(result), flush=True)
        results.append(result)
    total = time.perf_counter() - started
    variant = configs.variant_name(config)
    notes = "".join(f"\nSkipped {name}: {why}.\n" for name, why in skipped.items())
    text = (
        f"# jaxseq experiments ({variant} configs)\n\n{harness.results_table(results)}\n"
        f"{notes}\nTotal wall time: {total:.1f} s\n"
    )
    os.makedirs(config.out_dir, exist_ok=True)
    with open(os.path.join(config.out_dir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(config.out_dir, "results.json"), "w") as f:
        rows = [{**dataclasses.asdict(r), "margin": r.margin, "met": r.met} for r in results]
        json.dump(
            {"variant": variant, "total_seconds": total, "results": rows, "skipped": skipped},
            f,
            indent=2,
        )
        f.write("\n")
    print("\n" + text, flush=True)
    return results


def main(args=None) -> list[harness.Result]:
    return run_all(tyro.cli(Config, args=args, description=__doc__))


if __name__ == "__main__":
    main()
