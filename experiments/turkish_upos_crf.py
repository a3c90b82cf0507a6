"""Turkish UPOS tagging with a BiLSTM-CRF: ``experiments.turkish_upos`` with a CRF output layer.

The same data, split, encoder (BiLSTM 64 over word embedding 64 + char CNN 64), training
budget and baseline as ``experiments.turkish_upos``, whose ``--model.crf`` this is: a
linear-chain CRF (``jaxseq.crf``) over the BiLSTM's per-step logits, trained on its
negative log-likelihood per token, tagging by Viterbi decoding (token accuracy and
confusion from the decoded tags). Its own experiment so that the results table has a row
for it (run_all: over the default budget, ``--only turkish_upos_crf``).

Command::

    python -m experiments.turkish_upos_crf           # = turkish_upos --model.crf
    python -m experiments.turkish_upos_crf --smoke   # seconds, for tests

Measured: see docs/crf.md ("On Turkish UPOS").
"""

from __future__ import annotations

if not __package__:  # run as `python experiments/turkish_upos_crf.py`
    import _repo_root  # noqa: F401

import dataclasses
import functools

from experiments import config as configs
from experiments import harness, turkish_upos

NAME = "turkish_upos_crf"


@dataclasses.dataclass(frozen=True)
class Config(turkish_upos.Config):
    model: configs.ModelConfig = dataclasses.replace(turkish_upos.Config.model, crf=True)


EXPERIMENT = harness.Experiment(
    NAME,
    Config,
    functools.partial(turkish_upos.run, name=NAME),
    turkish_upos.SMOKE,
    turkish_upos.FULL,
    description=__doc__,
)

if __name__ == "__main__":
    EXPERIMENT.main()
