"""Character-level text: the running Python's ``pydoc_data/topics.py``, for language models.

Source: the standard-library module ``pydoc_data.topics`` (the help texts of
``help("topics")``, generated from the Python documentation by Sphinx), found with
``importlib.util.find_spec`` and read by path, never imported. The file is a
Python literal ``topics = {"assert": "The \\"assert\\" statement ...", ...}``; the
text is the concatenation of its values in file order (the keys are sorted), read
with ``ast.literal_eval``: English prose with Python code examples and grammar
snippets. The file differs between Python releases, so its SHA-256 must be one of
:data:`SHA256` (each digest was computed here from that release's file); another
raises :class:`~jaxseq.data.DataFileError` naming the Python version found and
those known.

Python 3.11.7 (the digest the recorded numbers use): 464,970 characters, 103
distinct. The split is by position, :data:`SPLIT_FRACTIONS` = 90/5/5: ``train =
text[:n_train]``, ``valid`` the next ``n_valid``, ``test`` the rest, with
``n_train = floor(0.9 n)`` and ``n_valid = floor(0.05 n)``: 418,473 / 23,248 /
23,249 characters for 3.11.7. Contiguous blocks of the alphabetical topics: valid
starts inside ``typesmapping``, test inside ``typesseq`` and runs to ``yield``, text
the model never read (but the same manual's style).

Vocabulary (:func:`jaxseq.data.vocab.build_vocab` on the training characters):
``("<pad>", "<unk>", c_1, c_2, ...)``, the characters seen at least ``min_freq``
times in train, most frequent first (ties alphabetical). Id 0 (``<pad>``) never
occurs in the streams (kept so that the ids follow :mod:`jaxseq.data.vocab`);
id 1 (``<unk>``) stands for every other character: the characters of valid/test
unseen in train and, with ``min_freq > 1``, the rare ones of train, so a model
learns a probability for ``<unk>`` from train. Default ``min_freq=2``: 3.11.7's
train keeps 102 characters (104 ids); its one singleton (``°``) maps to ``<unk>``,
and valid and test hold no character unseen in train.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxseq import _checks
from jaxseq.data import _files, vocab

#: SHA-256 of ``pydoc_data/topics.py`` -> the Python release that ships it (each
#: computed from that release's installed file on the machine this was written on).
SHA256 = {
    "abaa56a64551d8eead1b19cbae3c6db443f99f0cab81df07bed3cb75c0db9346": "3.11.7",
    "03c807afbe2513d6f37c541603593445678e6edc95f365a81e3943171da832f8": "3.12.1",
}
SPLIT_FRACTIONS = {"train": 0.9, "valid": 0.05, "test": 0.05}
SPLITS = ("train", "valid", "test")


class CharSplits(NamedTuple):
    """The three splits as text and as int32 ids ``[T_split]`` into ``vocab``."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab: tuple[str, ...]
    """``("<pad>", "<unk>", characters...)``: ``vocab[id] -> character``."""
    texts: dict[str, str]
    """``split -> its text`` (the characters before the mapping to ``<unk>``)."""
    sha256: str
    """The digest of the file read."""

    def split(self, name: str) -> np.ndarray:
        """The ids of split ``name`` (``"train"``, ``"valid"`` or ``"test"``)."""
        _checks.check_choice(name, SPLITS, "name")
        ids: np.ndarray = getattr(self, name)
        return ids


def default_path() -> Path:
    """The running Python's ``pydoc_data/topics.py`` (located, not imported)."""
    spec = importlib.util.find_spec("pydoc_data.topics")
    if spec is None or spec.origin is None:
        raise _files.DataFileError(
            f"the standard-library module pydoc_data.topics of this Python "
            f"({_python_version()}) was not found; it ships with CPython"
        )
    return Path(spec.origin)


def _python_version() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


def _known() -> str:
    return ", ".join(f"Python {version} ({digest})" for digest, version in SHA256.items())


def check_file(path: _files.PathLike) -> str:
    """The file's SHA-256 if it is one of :data:`SHA256`; else
    :class:`~jaxseq.data.DataFileError` naming the running Python's version and the
    releases known."""
    path = Path(path)
    if not path.is_file():
        raise _files.DataFileError(
            f"`path`: data file {str(path)!r} not found (the running Python is "
            f"{_python_version()}; pydoc_data/topics.py ships with CPython)"
        )
    digest = _files.sha256_file(path)
    if digest not in SHA256:
        raise _files.DataFileError(
            f"`path`: {str(path)!r} has SHA-256 {digest}, not a pydoc_data/topics.py this "
            f"loader knows. The running Python is {_python_version()}; the files known are "
            f"those of {_known()}. Run with one of those Pythons, or pass verify=False to "
            f"read this file anyway (the split sizes and the recorded numbers then differ)."
        )
    return digest


def read_topics(path: _files.PathLike) -> str:
    """The text of a ``pydoc_data/topics.py``: its dict's values, concatenated in file
    order (parsed with ``ast.literal_eval``; the file is not executed)."""
    source = _files.read_text(path)
    tree = ast.parse(source, filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "topics"
        ):
            topics = ast.literal_eval(node.value)
            if isinstance(topics, dict) and all(isinstance(v, str) for v in topics.values()):
                return "".join(topics.values())
    raise _files.ParseError(str(path), None, "topics", "no `topics = {str: str, ...}` literal")


def split_sizes(num_chars: int) -> dict[str, int]:
    """``{"train": floor(0.9 n), "valid": floor(0.05 n), "test": the rest}``."""
    _checks.check_int(num_chars, "num_chars", 0)
    train = math.floor(SPLIT_FRACTIONS["train"] * num_chars)
    valid = math.floor(SPLIT_FRACTIONS["valid"] * num_chars)
    return {"train": train, "valid": valid, "test": num_chars - train - valid}


def encode(text: str, vocabulary: tuple[str, ...]) -> np.ndarray:
    """int32 ``[len(text)]``: each character's id in ``vocabulary``; ``<unk>`` (id 1)
    for characters not in it."""
    return vocab.encode(text, vocab.token_index(vocabulary))


def decode(ids: np.ndarray, vocabulary: tuple[str, ...]) -> str:
    """The text of ids ``[T]``; ``<pad>`` and ``<unk>`` become U+FFFD (the Unicode
    replacement character)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`ids` must be integer [T], got {ids.dtype} of shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(vocabulary)):
        raise ValueError(f"`ids` must be in [0, {len(vocabulary)}), got {ids.min()}..{ids.max()}")
    special = {vocab.PAD_ID, vocab.UNK_ID}
    return "".join("\ufffd" if i in special else vocabulary[i] for i in ids.tolist())


def load(
    path: _files.PathLike | None = None, *, min_freq: int = 2, verify: bool = True
) -> CharSplits:
    """The character splits of ``pydoc_data/topics.py`` (see the module doc).

    Args:
      path: the file (default: the running Python's, :func:`default_path`).
      min_freq: train characters seen fewer times map to ``<unk>`` (>= 1).
      verify: check the file's SHA-256 against :data:`SHA256` (False: read any
        ``topics.py``, e.g. another Python's).

    Returns:
      :class:`CharSplits`: ids int32 ``[T_train]``, ``[T_valid]``, ``[T_test]``.

    Raises:
      DataFileError: the file is missing, or ``verify`` and its digest is not known.
    """
    _checks.check_int(min_freq, "min_freq", 1)
    _checks.check_flag(verify, "verify")
    path = default_path() if path is None else Path(path)
    digest = (
        check_file(path)
        if verify
        else _files.checked_digest(
            path, "", requirement=f"Python {_python_version()}", verify=False
        )
    )
    text = read_topics(path)
    sizes = split_sizes(len(text))
    bounds = np.cumsum([0, sizes["train"], sizes["valid"], sizes["test"]]).tolist()
    texts = {name: text[bounds[i] : bounds[i + 1]] for i, name in enumerate(SPLITS)}
    vocabulary = vocab.build_vocab(texts["train"], min_freq=min_freq)
    ids = {name: encode(texts[name], vocabulary) for name in SPLITS}
    return CharSplits(ids["train"], ids["valid"], ids["test"], vocabulary, texts, digest)
