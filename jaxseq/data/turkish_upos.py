"""Turkish Web Treebank (TWT): part-of-speech tagging, from ``turkish-treebanks==1.0.0``.

Source: the CoNLL-U files ``data/web.conllu`` (2,541 sentences, 32,422 tokens;
forum, blog, guide, review and how-to text) and ``data/wiki.conllu`` (2,310
sentences, 48,948 tokens; Wikipedia) that the pip package installs into a
top-level ``data/`` folder of site-packages; found through
``importlib.metadata`` and parsed with :mod:`jaxseq.data.conllu_reader` (the
package's own reader needs protobuf and is not used).

The split. The files carry no split information: ``# sent_id`` is
``tr-forum:00000222:S023`` (genre, document, sentence) or a Wikipedia URL,
and no comment names a split. The package's reader
(``turkish_treebanks/read.py``, ``_sentence_is_in_split``) defines the
official split by position: in each file, sentence ``i`` (0-based, file order)
is train if ``i % 10 < 8``, dev if ``i % 10 == 8``, test if ``i % 10 == 9``.
This module reproduces that split exactly (checked against the package's source,
not by importing it). Sizes: web 2,033 / 254 / 254, wiki 1,848 / 231 / 231,
both 3,881 / 485 / 485 sentences. The files are not in document order, and
sentences of one document do fall into different splits (as in the official
split).

The tags. The UPOS column holds the Google universal tag set (Petrov et al.
2012: ``CONJ``, ``PRT``...; not UD v2's ``CCONJ``/``PART``) plus ``ONOM`` and
``AFFIX``: 14 tags, :data:`TAGS`. Tokens are inflectional groups: a derived
word is split into several tokens (``Açık`` ``la`` ``nma`` ``yan``, each with
its own tag, ``SpaceAfter=No`` inside the word), so T_i counts inflectional
groups, 2..34 per sentence in web, 3..88 in wiki.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from jaxseq import _checks
from jaxseq.data import _files
from jaxseq.data.conllu_reader import Sentence, read_conllu
from jaxseq.data.tagging import TaggingSplits, tagging_splits

REQUIREMENT = "turkish-treebanks==1.0.0"
DISTRIBUTION = "turkish-treebanks"
SECTIONS = ("web", "wiki")
SHA256 = {
    "web.conllu": "d6f92b12b74f367a36e30dd3d644d7a0bb01a991584602e6e69f1191664f86bf",
    "wiki.conllu": "58f049fae8d0653ba0940a58168c17c7cebbc50f88cad2985d12d34ac1b9acde",
}
#: The 14 coarse tags of the treebank, in id order.
TAGS = (
    "ADJ", "ADP", "ADV", "AFFIX", "CONJ", "DET", "NOUN", "NUM", "ONOM", "PRON", "PRT",
    "PUNCT", "VERB", "X",
)  # fmt: skip


def default_dir() -> Path:
    """The installed ``data/`` folder holding ``web.conllu`` and ``wiki.conllu``."""
    return _files.distribution_file(DISTRIBUTION, "data/web.conllu", requirement=REQUIREMENT).parent


def official_split(index: int) -> Literal["train", "dev", "test"]:
    """The split of the sentence at 0-based position ``index`` of its file.

    >>> [official_split(i) for i in (0, 7, 8, 9, 10)]
    ['train', 'train', 'dev', 'test', 'train']
    """
    r = index % 10
    return "train" if r < 8 else ("dev" if r == 8 else "test")


def turkish_lower(word: str) -> str:
    """Lowercase with Turkish dotted/dotless i: ``I -> ı``, ``İ -> i``.

    >>> turkish_lower("İSTANBUL Irmak")
    'istanbul ırmak'
    """
    return word.replace("I", "ı").replace("İ", "i").lower()


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, sha256: str) -> tuple[Sentence, ...]:
    del sha256  # part of the cache key only
    return read_conllu(path)


def load(
    sections: Sequence[str] = SECTIONS,
    *,
    path: _files.PathLike | None = None,
    min_freq: int = 1,
    lowercase: bool = False,
    max_word_len: int = 20,
    verify: bool = True,
) -> TaggingSplits:
    """UPOS tagging on the TWT with the package's official train/dev/test split.

    Args:
      sections: ``"web"``, ``"wiki"`` or both (default, the whole treebank, as
        the package's reader does); each file is split by position, then the
        sections are concatenated in this order.
      path: the folder holding ``web.conllu``/``wiki.conllu``; default the one
        installed by ``turkish-treebanks==1.0.0``.
      min_freq: train words seen fewer times map to ``<unk>``.
      lowercase: look words up lowercased (Turkish rules, :func:`turkish_lower`);
        character ids keep the case.
      max_word_len: W, characters kept per token for ``extras["chars"]``
        (the longest token has 28; 6 of 81,370 exceed 20).
      verify: check the files' SHA-256 (:data:`SHA256`).

    Returns:
      :class:`~jaxseq.data.tagging.TaggingSplits`: word ids ``[T_i]``, tag ids
      ``[T_i]`` over :data:`TAGS`, character ids ``[T_i, W]``; ``ids`` are the
      ``sent_id`` comments.

    Raises:
      DataFileError: a file is missing or differs from the package's.
    """
    _checks.check_flag(lowercase, "lowercase")
    sections = tuple(sections)
    if not sections or len(set(sections)) < len(sections) or not set(sections) <= set(SECTIONS):
        raise ValueError(f"`sections` must be distinct names from {SECTIONS}, got {sections}")
    folder = default_dir() if path is None else Path(path)
    parts: dict[str, list[Sentence]] = {"train": [], "dev": [], "test": []}
    for section in sections:
        filename = f"{section}.conllu"
        file = folder / filename
        digest = _files.checked_digest(
            file, SHA256[filename], requirement=REQUIREMENT, verify=verify
        )
        for i, sentence in enumerate(_read_cached(str(file), digest)):
            parts[official_split(i)].append(sentence)
    return tagging_splits(
        parts["train"],
        parts["dev"],
        parts["test"],
        tag_names=TAGS,
        min_freq=min_freq,
        normalize=turkish_lower if lowercase else None,
        max_word_len=max_word_len,
        name="turkish_upos",
    )
