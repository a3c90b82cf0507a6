"""Run every experiment's default (or ``--full`` / ``--smoke``) config; one results table.

Command::

    python -m experiments.run_all            # `make run`: default configs, ~7 min on 2 CPU cores
    python -m experiments.run_all --full     # `make experiments`: the full configs
    python -m experiments.run_all --smoke    # seconds per experiment
    python -m experiments.run_all --only japanese_vowels turkish_upos

Prints the table (experiment, metric, baseline, jaxseq, margin, target, time)
and writes it to ``runs/results.md`` and ``runs/results.json`` (``--out-dir``).

Measured (default configs, 2-core CPU shared with other jobs, load ~8; 221 s CPU time)::

    experiment         metric                   baseline  jaxseq  target        wall s  CPU s
    japanese_vowels    accuracy                   0.9784  0.9838  0.98 met        33.2   14.2
    cmudict_stress     token accuracy (vowels)    0.7130  0.9184  0.95 MISSED    171.8   95.6
    cmudict_syllables  accuracy                   0.7861  0.9608  0.97 MISSED     95.8   52.8
    turkish_upos       token accuracy             0.8971  0.9450  0.93 met       116.7   54.5

    Total wall time: 421.7 s

The ``--full`` configs (bigger models, all data, more epochs) were checked to start, not
run to the end (estimated 30-45 min on this machine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Literal

import tyro

from experiments import cmudict_stress, cmudict_syllables, common, japanese_vowels, turkish_upos

EXPERIMENTS = {
    "japanese_vowels": japanese_vowels,
    "cmudict_stress": cmudict_stress,
    "cmudict_syllables": cmudict_syllables,
    "turkish_upos": turkish_upos,
}
Name = Literal["japanese_vowels", "cmudict_stress", "cmudict_syllables", "turkish_upos"]


@dataclasses.dataclass(frozen=True)
class Config:
    full: bool = False
    """Run the full configs (bigger models, all data, longer)."""
    smoke: bool = False
    """Run the smoke configs (seconds each)."""
    only: tuple[Name, ...] = ()
    """Run only these experiments (default: all)."""
    out_dir: str = common.RUNS_DIR
    """Where results.md / results.json go; each run's folder is <out_dir>/<experiment>/<variant>."""
    progress: bool = False
    """Show each run's progress bar."""


def run_all(config: Config) -> list[common.Result]:
    started = time.perf_counter()
    results = []
    for name in config.only or tuple(EXPERIMENTS):
        module = EXPERIMENTS[name]
        experiment_config = common.make_config(
            module.Config,
            smoke_overrides=module.SMOKE,
            full_overrides=module.FULL,
            smoke=config.smoke,
            full=config.full,
        )
        variant = common.variant_name(experiment_config)
        experiment_config = common.override(
            experiment_config,
            {
                "out_dir": os.path.join(config.out_dir, name, variant),
                "train": {"progress": config.progress},
            },
        )
        print(f"== {name} ({variant})", flush=True)
        result = module.run(experiment_config)
        print(result.row(), flush=True)
        results.append(result)
    total = time.perf_counter() - started
    table = common.results_table(results)
    variant = "smoke" if config.smoke else ("full" if config.full else "default")
    text = (
        f"# jaxseq experiments ({variant} configs)\n\n{table}\n\nTotal wall time: {total:.1f} s\n"
    )
    os.makedirs(config.out_dir, exist_ok=True)
    with open(os.path.join(config.out_dir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(config.out_dir, "results.json"), "w") as f:
        rows = [{**dataclasses.asdict(r), "margin": r.margin, "met": r.met} for r in results]
        json.dump({"variant": variant, "total_seconds": total, "results": rows}, f, indent=2)
        f.write("\n")
    print("\n" + text, flush=True)
    return results


def main(args=None) -> list[common.Result]:
    return run_all(tyro.cli(Config, args=args, description=__doc__))


if __name__ == "__main__":
    main()
