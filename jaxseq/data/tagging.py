"""Tagged sentences -> labeling data sets: word ids, character ids, tag ids.

Notation: T_i words in sentence i, W characters per word (fixed, ``max_word_len``).

The word and character vocabularies come from the training split only (unseen
words map to ``<unk>``); the tag set is the union of all splits' tags, sorted
(it is the annotation scheme, not something learned), unless given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from jaxseq import _checks
from jaxseq.data import vocab
from jaxseq.data.conllu_reader import Sentence
from jaxseq.data.dataset import SequenceDataset


class TaggingSplits(NamedTuple):
    """Tagging splits and their vocabularies.

    Attributes:
      train, dev, test: labeling data sets (``dev`` may be ``None``). Sequences
        are int32 word ids ``[T_i]``, labels int32 tag ids ``[T_i]``; ``extras``
        hold ``"chars"`` int32 ``[T_i, W]`` (character ids, 0-padded, words
        longer than W truncated) and ``"char_lengths"`` int32 ``[T_i]``.
      word_vocab: ``("<pad>", "<unk>", words...)`` from train.
      char_vocab: ``("<pad>", "<unk>", chars...)`` from train.
      tag_names: ``tag_names[k]`` is tag id ``k``.
    """

    train: SequenceDataset
    dev: SequenceDataset | None
    test: SequenceDataset
    word_vocab: tuple[str, ...]
    char_vocab: tuple[str, ...]
    tag_names: tuple[str, ...]


def _encode_chars(
    words: Sequence[str], index: dict[str, int], max_word_len: int
) -> tuple[np.ndarray, np.ndarray]:
    chars_TW = np.zeros((len(words), max_word_len), dtype=np.int32)
    lengths_T = np.zeros(len(words), dtype=np.int32)
    for t, w in enumerate(words):
        ids = vocab.encode(w[:max_word_len], index)
        chars_TW[t, : len(ids)] = ids
        lengths_T[t] = len(ids)
    return chars_TW, lengths_T


def tagging_splits(
    train: Sequence[Sentence],
    dev: Sequence[Sentence] | None,
    test: Sequence[Sentence],
    *,
    tag_names: Sequence[str] | None = None,
    min_freq: int = 1,
    normalize: Callable[[str], str] | None = None,
    max_word_len: int = 20,
    name: str = "tagging",
) -> TaggingSplits:
    """Encode tagged sentences (from any reader in :mod:`jaxseq.data.conllu_reader`).

    Args:
      train, dev, test: the sentences of each split (``dev`` may be ``None``).
      tag_names: the tag set in id order; default the sorted union of all tags.
      min_freq: train words seen fewer times map to ``<unk>``.
      normalize: applied to each word before word-vocabulary lookup (e.g.
        lowercasing); the character ids always use the original form.
      max_word_len: W, the characters kept per word.
      name: prefix of the data set names (``f"{name}/train"``...).

    Returns:
      :class:`TaggingSplits`.

    >>> from jaxseq.data.conllu_reader import parse_tagged
    >>> s = tagging_splits(parse_tagged("a\\tX\\nb\\tY\\n"), None, parse_tagged("c\\tX\\n"))
    >>> s.test.sequences[0].tolist(), s.test.extras["chars"][0][0, :2].tolist()
    ([1], [1, 0])
    """
    _checks.check_int(min_freq, "min_freq", 1)
    _checks.check_int(max_word_len, "max_word_len", 1)
    norm = normalize if normalize is not None else (lambda w: w)
    given = {"train": train, "dev": dev, "test": test}
    splits = {k: v for k, v in given.items() if v is not None}
    if tag_names is None:
        tag_names = sorted({t for sents in splits.values() for s in sents for t in s.tags})
    tag_names = tuple(tag_names)
    tag_index = vocab.token_index(tag_names)
    word_vocab = vocab.build_vocab((norm(w) for s in train for w in s.words), min_freq=min_freq)
    char_vocab = vocab.build_vocab(c for s in train for w in s.words for c in w)
    word_index = vocab.token_index(word_vocab)
    char_index = vocab.token_index(char_vocab)
    out: dict[str, SequenceDataset] = {}
    for split, sents in splits.items():
        seqs, labels, chars, char_lengths, ids = [], [], [], [], []
        for i, s in enumerate(sents):
            unknown = [t for t in s.tags if t not in tag_index]
            if unknown:
                which = f" (sent_id {s.sent_id})" if s.sent_id is not None else ""
                raise ValueError(
                    f"{name}/{split} sentence {i}{which}: tag: {sorted(set(unknown))} not in "
                    f"the tag set {tag_names}; pass tag_names=None to take every tag seen"
                )
            if len(s.tags) != len(s.words):
                raise ValueError(
                    f"{name}/{split} sentence {i}: {len(s.words)} words but {len(s.tags)} tags"
                )
            seqs.append(vocab.encode((norm(w) for w in s.words), word_index))
            labels.append(np.array([tag_index[t] for t in s.tags], dtype=np.int32))
            c_TW, n_T = _encode_chars(s.words, char_index, max_word_len)
            chars.append(c_TW)
            char_lengths.append(n_T)
            ids.append(s.sent_id if s.sent_id is not None else f"{split}:{i}")
        out[split] = SequenceDataset(
            sequences=tuple(seqs),
            labels=tuple(labels),
            class_names=tag_names,
            vocab=word_vocab,
            extras={"chars": tuple(chars), "char_lengths": tuple(char_lengths)},
            ids=tuple(ids),
            name=f"{name}/{split}",
        )
    return TaggingSplits(
        out["train"], out.get("dev"), out["test"], word_vocab, char_vocab, tag_names
    )
