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


def _parse_value(token: str, where: str) -> float:
    token = token.strip()
    if token == "?":
        return float("nan")
    try:
        return float(token)
    except ValueError:
        raise ValueError(f"{where}: bad value {token!r}") from None


def parse_ts(text: str, *, source: str = "<string>") -> TsData:
    """Parse the text of a ``.ts`` file.

    Args:
      text: the file's contents.
      source: a name for error messages.

    Returns:
      :class:`TsData`; ``series[i]`` is float32 ``[T_i, D]``.

    >>> data = parse_ts("@dimensions 2\\n@classLabel true a b\\n@data\\n1,2,3:4,5,?:b\\n")
    >>> data.series[0].tolist(), data.labels
    ([[1.0, 4.0], [2.0, 5.0], [3.0, nan]], ('b',))
    """
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    has_labels = False
    class_labels: tuple[str, ...] = ()
    dims: int | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{source}:{lineno}"
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise ValueError(
                    f"{where}: expected a @header line before @data, got {line[:40]!r}"
                )
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            value = value.strip()
            if key == "data":
                in_data = True
                if header.get("timestamps", "false").lower() == "true":
                    raise ValueError(f"{source}: @timeStamps true is not supported")
                continue
            header[key] = value
            if key == "classlabel":
                flag, *names = value.split()
                has_labels = flag.lower() == "true"
                class_labels = tuple(names) if has_labels else ()
            elif key == "dimensions":
                dims = int(value)
            continue
        fields = line.split(":")
        label = None
        if has_labels:
            *fields, label = fields
            label = label.strip()
            if class_labels and label not in class_labels:
                raise ValueError(f"{where}: label {label!r} not in @classLabel {class_labels}")
        if dims is not None and len(fields) != dims:
            raise ValueError(f"{where}: {len(fields)} dimensions, header says {dims}")
        columns = [[_parse_value(v, where) for v in f.split(",")] for f in fields]
        if len({len(c) for c in columns}) != 1:
            raise ValueError(f"{where}: dimensions of one series have different lengths")
        series.append(np.asarray(columns, dtype=np.float32).T.copy())
        if label is not None:
            labels.append(label)
    if not in_data:
        raise ValueError(f"{source}: no @data line")
    return TsData(tuple(series), tuple(labels), class_labels, header)


def read_ts(path) -> TsData:
    """Read a ``.ts`` file (UTF-8); see :func:`parse_ts`."""
    with open(path, encoding="utf-8") as f:
        return parse_ts(f.read(), source=str(path))
