"""A reader for the ``.ts`` time-series format of the UEA/UCR archive (sktime/aeon).

Format: ``#`` comment lines, then ``@key value`` header lines, then ``@data``,
then one series per line. A line holds the dimensions separated by ``:``, each a
comma-separated list of values, and (when ``@classLabel true``) the class label
as the last ``:`` field. ``?`` is a missing value (read as NaN). Series may have
different lengths, but the dimensions of one series share its length.

Only the plain value layout is read; ``@timeStamps true`` (``(t, v)`` pairs) raises.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxseq.data._files import ParseError, PathLike, as_text, read_text


class TsData(NamedTuple):
    """A parsed ``.ts`` file.

    Attributes:
      series: N float32 arrays ``[T_i, D]`` (time major).
      labels: N class-label strings (empty when the file has no labels).
      class_labels: the classes declared by ``@classLabel true ...``, in order.
      header: every ``@key value`` header line, lowercased key -> raw value.
    """

    series: tuple[np.ndarray, ...]
    labels: tuple[str, ...]
    class_labels: tuple[str, ...]
    header: dict[str, str]


def _parse_value(token: str, source: str, lineno: int, dim: int, step: int) -> float:
    token = token.strip()
    if token == "?":
        return float("nan")
    try:
        return float(token)
    except ValueError:
        raise ParseError(
            source,
            lineno,
            f"dimension {dim}, value {step}",
            f"{token!r} is not a number (or ? for missing)",
        ) from None


def _header_flag(value: str, key: str, source: str, lineno: int) -> bool:
    flag = value.split()[0].lower() if value.split() else ""
    if flag not in ("true", "false"):
        raise ParseError(source, lineno, f"@{key}", f"expected true or false, got {value!r}")
    return flag == "true"


def parse_ts(text: str | bytes, *, source: str = "<string>") -> TsData:
    """Parse the text of a ``.ts`` file.

    Args:
      text: the file's contents (``str``, or UTF-8 ``bytes``).
      source: a name for error messages (the file path, or ``"<string>"``).

    Returns:
      :class:`TsData`; ``series[i]`` is float32 ``[T_i, D]``.

    Raises:
      ParseError: (a ``ValueError``) a malformed header, a series with the wrong
        number of dimensions, dimensions of different lengths, a value that is
        not a number, a missing or undeclared class label, invalid UTF-8; the
        message is ``"<source>:<line>: <field>: <problem>"``.

    >>> data = parse_ts("@dimensions 2\\n@classLabel true a b\\n@data\\n1,2,3:4,5,?:b\\n")
    >>> data.series[0].tolist(), data.labels
    ([[1.0, 4.0], [2.0, 5.0], [3.0, nan]], ('b',))
    """
    text = as_text(text, source=source)
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    has_labels = False
    class_labels: tuple[str, ...] = ()
    dims: int | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise ParseError(
                    source,
                    lineno,
                    "header",
                    f"expected an @key value header line before @data, got {line[:40]!r}",
                )
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            value = value.strip()
            if key == "data":
                in_data = True
                if header.get("timestamps", "false").lower() == "true":
                    raise ParseError(
                        source, lineno, "@timeStamps", "true is not supported (only plain values)"
                    )
                continue
            header[key] = value
            if key == "classlabel":
                has_labels = _header_flag(value, "classLabel", source, lineno)
                class_labels = tuple(value.split()[1:]) if has_labels else ()
                if len(set(class_labels)) < len(class_labels):
                    raise ParseError(
                        source, lineno, "@classLabel", f"repeated class labels in {value!r}"
                    )
            elif key == "dimensions":
                if not value.isdigit() or int(value) < 1:
                    raise ParseError(
                        source, lineno, "@dimensions", f"{value!r} is not a positive integer"
                    )
                dims = int(value)
            elif key in ("timestamps", "missing", "univariate", "equallength"):
                _header_flag(value, line[1:].partition(" ")[0], source, lineno)
            continue
        if line.startswith("@"):
            raise ParseError(source, lineno, "header", f"header line {line[:40]!r} after @data")
        fields = line.split(":")
        label = None
        if has_labels:
            if len(fields) < 2 or not fields[-1].strip():
                raise ParseError(
                    source,
                    lineno,
                    "class label",
                    "missing: @classLabel true, so every series ends with ':<label>'",
                )
            *fields, label = fields
            label = label.strip()
            if class_labels and label not in class_labels:
                raise ParseError(
                    source,
                    lineno,
                    "class label",
                    f"{label!r} is not one of @classLabel {' '.join(class_labels)}",
                )
        if dims is not None and len(fields) != dims:
            raise ParseError(
                source,
                lineno,
                "dimensions",
                f"{len(fields)} dimensions (':'-separated), the header says @dimensions {dims}",
            )
        columns = [
            [_parse_value(v, source, lineno, d, t) for t, v in enumerate(f.split(","), start=1)]
            for d, f in enumerate(fields, start=1)
        ]
        if len({len(c) for c in columns}) != 1:
            raise ParseError(
                source,
                lineno,
                "dimensions",
                f"the dimensions of one series have different lengths {[len(c) for c in columns]}",
            )
        series.append(np.asarray(columns, dtype=np.float32).T.copy())
        if label is not None:
            labels.append(label)
    if not in_data:
        raise ParseError(source, None, "@data", "no @data line (the series follow it)")
    return TsData(tuple(series), tuple(labels), class_labels, header)


def read_ts(path: PathLike) -> TsData:
    """Read a ``.ts`` file (UTF-8); see :func:`parse_ts`."""
    return parse_ts(read_text(path), source=str(path))
