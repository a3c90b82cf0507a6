"""Token vocabularies: id 0 is padding, id 1 (when present) the unknown token.

A vocabulary is a plain tuple of strings, ``vocab[id] -> token``; its size is
``len(vocab)`` (the embedding table's rows). Build it from the training split
only, so dev/test tokens unseen in training map to ``UNK``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from jaxseq import _checks

PAD = "<pad>"
UNK = "<unk>"
PAD_ID = 0
UNK_ID = 1


def build_vocab(tokens: Iterable[str], *, min_freq: int = 1, unk: bool = True) -> tuple[str, ...]:
    """``(PAD, UNK, tokens...)``: tokens seen ``min_freq`` times or more, most frequent first.

    Ties are broken alphabetically, so the ids are deterministic.

    >>> build_vocab("abracadabra", min_freq=2)
    ('<pad>', '<unk>', 'a', 'b', 'r')
    """
    _checks.check_int(min_freq, "min_freq", 1)
    _checks.check_flag(unk, "unk")
    counts = Counter(tokens)
    for special in (PAD, UNK):
        if special in counts:
            raise ValueError(f"the reserved token {special!r} occurs in the data")
    kept = sorted((t for t, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
    return (PAD, UNK, *kept) if unk else (PAD, *kept)


def token_index(vocab: Sequence[str]) -> dict[str, int]:
    """``token -> id`` for a vocabulary tuple."""
    return {t: i for i, t in enumerate(vocab)}


class UnknownTokenError(ValueError, KeyError):
    """A token is not in a vocabulary that has no ``UNK`` (a ``ValueError``; also a
    ``KeyError``, which :func:`encode` raised before)."""

    __str__ = ValueError.__str__  # not KeyError's repr of the message


def encode(tokens: Iterable[str], index: Mapping[str, int]) -> np.ndarray:
    """int32 ``[T]`` ids of ``tokens``; unknown tokens map to ``UNK_ID`` if the vocab has UNK.

    Raises:
      UnknownTokenError: (a ``ValueError`` and a ``KeyError``) a token is unknown
        and the vocabulary has no ``UNK``; the message names the token and its
        position.
    """
    unk_id = index.get(UNK)
    out = []
    for position, t in enumerate(tokens):
        i = index.get(t, unk_id)
        if i is None:
            raise UnknownTokenError(
                f"token {t!r} at position {position} is not in the vocabulary (which has no "
                f"{UNK}: build it with unk=True to map unseen tokens to {UNK})"
            )
        out.append(i)
    return np.array(out, dtype=np.int32)
