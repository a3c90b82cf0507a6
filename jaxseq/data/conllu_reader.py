"""Readers for tagged sentences: CoNLL-U and a two-column ``word<TAB>TAG`` format.

Both return :class:`Sentence` tuples, so any treebank or tagged corpus a
researcher has can feed :func:`jaxseq.data.tagging.tagging_splits`.

CoNLL-U (https://universaldependencies.org/format.html): sentences are
separated by blank lines; ``#`` lines before the tokens are comments, and
``# key = value`` comments (``sent_id``, ``text``...) are kept as metadata; a
token line has 10 tab-separated fields (ID FORM LEMMA UPOS XPOS FEATS HEAD
DEPREL DEPS MISC). Multiword-token ranges (ID ``3-4``) and empty nodes (ID
``5.1``) are skipped: the words of a sentence are exactly its integer IDs, which
must run 1, 2, 3...

Two-column format: one ``word<TAB>TAG`` per line (a run of spaces also
separates the two columns when the line has no tab; the word itself cannot
contain whitespace), sentences separated by one or more blank lines, no
comments. Chosen over ``word/TAG`` because words may contain ``/`` (URLs,
fractions).
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from typing import Literal, NamedTuple

from jaxseq import _checks
from jaxseq.data._files import ParseError, PathLike, as_text, read_text

_COLUMNS = {"form": 1, "lemma": 2, "upos": 3, "xpos": 4, "deprel": 7}
_FIELD_NAMES = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")
_RANGE_ID = re.compile(r"^[1-9][0-9]*-[1-9][0-9]*$")
_EMPTY_NODE_ID = re.compile(r"^[0-9]+\.[1-9][0-9]*$")


class Sentence(NamedTuple):
    """One tagged sentence.

    Attributes:
      words: the word forms, ``[T]``.
      tags: one tag per word, ``[T]``.
      sent_id: the ``# sent_id`` comment, or ``None``.
      metadata: every ``# key = value`` comment of the sentence.
    """

    words: tuple[str, ...]
    tags: tuple[str, ...]
    sent_id: str | None = None
    metadata: Mapping[str, str] = types.MappingProxyType({})


def _blocks(text: str):
    """(first line number, lines) of each blank-line-separated block."""
    block: list[str] = []
    start = 1
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if line.strip():
            if not block:
                start = lineno
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def parse_conllu(
    text: str | bytes,
    *,
    tag_column: Literal["upos", "xpos", "deprel", "lemma"] = "upos",
    source: str = "<string>",
) -> tuple[Sentence, ...]:
    """Parse CoNLL-U text into sentences of (form, tag) words.

    Args:
      text: the file's contents (``str``, or UTF-8 ``bytes``).
      tag_column: which column is the tag (default UPOS, the 4th).
      source: a name for error messages (the file path, or ``"<string>"``).

    Returns:
      the sentences in file order.

    Raises:
      ParseError: (a ``ValueError``) a token line without 10 fields, an ID that
        is not an integer, a range or an empty node, or out of sequence, a HEAD
        that is not ``_`` or a word ID of the sentence (0 for the root), an empty
        FORM or tag field, a comment after the tokens, a sentence without words,
        invalid UTF-8; the message is ``"<source>:<line>: <field>: <problem>"``.

    >>> doc = '''# sent_id = s1
    ... 1-2\\tdella\\t_\\t_\\t_\\t_\\t_\\t_\\t_\\t_
    ... 1\\tdi\\tdi\\tADP\\t_\\t_\\t3\\tcase\\t_\\t_
    ... 2\\tla\\til\\tDET\\t_\\t_\\t3\\tdet\\t_\\t_
    ... 2.1\\tx\\t_\\tX\\t_\\t_\\t_\\t_\\t_\\t_
    ... 3\\tcasa\\tcasa\\tNOUN\\t_\\t_\\t0\\troot\\t_\\t_
    ... '''
    >>> s, = parse_conllu(doc)
    >>> s.words, s.tags, s.sent_id
    (('di', 'la', 'casa'), ('ADP', 'DET', 'NOUN'), 's1')
    """
    _checks.check_choice(tag_column, tuple(_COLUMNS), "tag_column")
    text = as_text(text, source=source)
    col = _COLUMNS[tag_column]
    sentences = []
    for start, lines in _blocks(text):
        metadata: dict[str, str] = {}
        words: list[str] = []
        tags: list[str] = []
        heads: list[tuple[int, str]] = []  # (line number, HEAD) of each word
        for offset, line in enumerate(lines):
            lineno = start + offset
            if line.startswith("#"):
                if words:
                    raise ParseError(
                        source, lineno, "comment", "a comment after the first token line"
                    )
                key, eq, value = line[1:].partition("=")
                if eq:
                    metadata[key.strip()] = value.strip()
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise ParseError(
                    source,
                    lineno,
                    "columns",
                    f"expected 10 tab-separated fields ({' '.join(_FIELD_NAMES)}), "
                    f"got {len(fields)}",
                )
            token_id = fields[0]
            if _RANGE_ID.match(token_id) or _EMPTY_NODE_ID.match(token_id):
                continue  # multiword-token range or empty node
            if not token_id.isdigit():
                raise ParseError(
                    source,
                    lineno,
                    "ID",
                    f"{token_id!r} is not a word ID (an integer), a range (3-4) or an "
                    f"empty node (5.1)",
                )
            if int(token_id) != len(words) + 1:
                raise ParseError(
                    source,
                    lineno,
                    "ID",
                    f"token ID {token_id!r}, expected {len(words) + 1} (IDs run 1, 2, 3... "
                    f"within a sentence)",
                )
            for k in sorted({1, col}):
                if not fields[k]:
                    raise ParseError(source, lineno, _FIELD_NAMES[k], "empty (use '_')")
            heads.append((lineno, fields[6]))
            words.append(fields[1])
            tags.append(fields[col])
        if not words:
            raise ParseError(source, start, None, "sentence without token lines")
        for lineno, head in heads:
            if head != "_" and (not head.isdigit() or int(head) > len(words)):
                raise ParseError(
                    source,
                    lineno,
                    "HEAD",
                    f"{head!r} is not '_', 0 (the root) or a word ID of the sentence "
                    f"(1..{len(words)})",
                )
        sentences.append(Sentence(tuple(words), tuple(tags), metadata.get("sent_id"), metadata))
    return tuple(sentences)


def read_conllu(path: PathLike, **kwargs) -> tuple[Sentence, ...]:
    """Read a CoNLL-U file (UTF-8); see :func:`parse_conllu`."""
    return parse_conllu(read_text(path), source=str(path), **kwargs)


def parse_tagged(text: str | bytes, *, source: str = "<string>") -> tuple[Sentence, ...]:
    """Parse two-column ``word<TAB>TAG`` text, blank lines between sentences.

    A line without exactly two non-empty columns raises :class:`jaxseq.data.ParseError` (a
    ``ValueError``): ``"<source>:<line>: <field>: <problem>"``.

    >>> [s.words for s in parse_tagged("The\\tDET\\ncat\\tNOUN\\n\\nRun\\tVERB\\n")]
    [('The', 'cat'), ('Run',)]
    """
    text = as_text(text, source=source)
    sentences = []
    for start, lines in _blocks(text):
        words, tags = [], []
        for offset, line in enumerate(lines):
            fields = line.split("\t") if "\t" in line else line.split()
            fields = [f.strip() for f in fields]
            if len(fields) != 2:
                raise ParseError(
                    source,
                    start + offset,
                    "TAG" if len(fields) == 1 else "columns",
                    f"expected 'word<TAB>TAG' (2 columns), got {len(fields)} in {line!r}",
                )
            for name, value in zip(("word", "TAG"), fields, strict=True):
                if not value:
                    raise ParseError(source, start + offset, name, f"empty in {line!r}")
            words.append(fields[0])
            tags.append(fields[1])
        sentences.append(Sentence(tuple(words), tuple(tags)))
    return tuple(sentences)


def read_tagged(path: PathLike) -> tuple[Sentence, ...]:
    """Read a two-column tagged file (UTF-8); see :func:`parse_tagged`."""
    return parse_tagged(read_text(path), source=str(path))
