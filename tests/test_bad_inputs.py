"""The bad-input matrix: every public array function x every class of bad input.

For each function and each class of bad input (wrong shape, wrong rank, each integer
dtype, out-of-range values, values that do not fit int32, non-finite values, empty
axes) this calls the function on host data ("eager") and inside ``jax.jit``
("jit"), and classifies what came back:

* ``exact``: the answer the function defines (for another integer dtype: exactly the
  int32 result; NaN in padding: exactly the clean result; an empty axis: 0 or empty
  arrays, no NaN);
* ``NaN``: the result carries NaN where the bad value is (loud, never a number);
* ``error``: ValueError/TypeError/AssertionError naming the argument;
* a documented limit (JAX's own int64 -> int32 conversion at the ``jit`` boundary
  without x64; a bool or integer output that cannot carry NaN).

Anything else (a plausible number, an error that does not name the argument) fails.
The test writes the table to ``reports/bad_inputs.md`` (linked from the README).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

import jaxseq as js
from jaxseq import metrics

pytestmark = pytest.mark.bad_input

REPORT = Path(__file__).resolve().parents[1] / "reports" / "bad_inputs.md"
B, T, C, D, H, V, S = 3, 4, 5, 3, 4, 7, 2
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
BIG = 2**32 + 1  # an int64 value that wraps to 1 in int32

CELL = js.gru(H)
PARAMS = CELL.init(jax.random.key(0), D)
BI_PARAMS = {"forward": PARAMS, "backward": CELL.init(jax.random.key(4), D)}
LAYERS = js.init_stack(jax.random.key(1), CELL, D, num_layers=2)
LABELER = js.SequenceModelConfig(num_classes=C, hidden_size=H, vocab_size=V, embed_dim=3)
LABELER_PARAMS = js.labeler_init(jax.random.key(2), LABELER)
CLASSIFIER = dataclasses.replace(LABELER, pooling="last")
CLASSIFIER_PARAMS = js.classifier_init(jax.random.key(3), CLASSIFIER)


def _lengths(b, t):
    """[B] lengths with a length-0 row (when B > 1) and a full row."""
    out = np.full(b, t, np.int32)
    if b > 1:
        out[1] = 0
    if b > 2:
        out[2] = max(t - 2, 0)
    return out


def _floats(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


@dataclasses.dataclass
class Spec:
    """One public function: how to build good inputs of sizes (B, T, C), and its bad ones."""

    name: str
    call: Callable[..., Any]
    make: Callable[..., dict]  # make(b, t, c) -> keyword arguments (host arrays + options)
    ints: dict[str, str] = dataclasses.field(default_factory=dict)  # int arg -> its range kind
    valid: Callable[[dict], tuple] | None = None  # index of a valid position of `labels`
    padded: Callable[[dict], tuple[str, tuple]] | None = None  # (float arg, a padded index)
    poison: str | None = None  # float argument for NaN at a valid position
    wrong_shape: Callable[[dict], tuple[str, Any]] | None = None
    wrong_rank: Callable[[dict], tuple[str, Any]] | None = None
    traced: tuple[str, ...] = ()  # the arguments passed as jit arguments
    host_only: bool = False  # a host validator: under jit it must refuse tracers
    uses_classes: bool = False  # C is an axis of the inputs (C = 0 is a case)
    has_time: bool = True  # T is an axis of the inputs (T = 0 is a case)
    poison_at: Callable[[dict], tuple] | None = None  # a read position (default: the first)


def _rng():
    return np.random.default_rng(20261129)


def _loss_inputs(b, t, c):
    rng = _rng()
    lengths = _lengths(b, t)
    return {
        "logits": _floats(rng, b, t, c),
        "labels": rng.integers(0, max(c, 1), size=(b, t)).astype(np.int32),
        "where": np.asarray(js.length_mask(lengths, t)),
    }


def _first_valid(kw):
    return tuple(int(i) for i in np.argwhere(kw["where"])[0])


def _first_padded(kw):
    return tuple(int(i) for i in np.argwhere(~kw["where"])[0])


def _rnn_inputs(b, t, c, *, d=D):
    rng = _rng()
    return {"xs": _floats(rng, b, t, d), "lengths": _lengths(b, t)}


def _padded_step(kw):
    lengths = kw["lengths"]
    row = int(np.argmin(lengths))
    return ("xs", (row, int(lengths[row])))


def _ctc_inputs(b, t, c):
    rng = _rng()
    lengths = _lengths(b, t)
    return {
        "logits": _floats(rng, b, t, c),
        "logit_lengths": lengths,
        "labels": rng.integers(1, max(c, 2), size=(b, S)).astype(np.int32),
        "label_lengths": np.minimum(lengths, 1).astype(np.int32),
    }


def _model_inputs(b, t, c):
    rng = _rng()
    return {"inputs": rng.integers(0, V, size=(b, t)).astype(np.int32), "lengths": _lengths(b, t)}


def _add_axis(arg):
    return lambda kw: (arg, kw[arg][None])


LOSS_TRACED = ("logits", "labels", "where")


def _per_position_loss(name, fn, **extra) -> Spec:
    """A function of ``logits [B, T, C]``, ``labels [B, T]`` and ``where [B, T]``."""
    return Spec(
        name,
        fn,
        _loss_inputs,
        ints={"labels": "label"},
        valid=_first_valid,
        padded=lambda kw: ("logits", _first_padded(kw)),
        poison="logits",
        uses_classes=True,
        wrong_shape=lambda kw: ("labels", kw["labels"][:, :-1]),
        traced=LOSS_TRACED,
        **extra,
    )


SPECS = [
    Spec(
        "js.length_mask(lengths, T)",
        lambda lengths: js.length_mask(lengths, T),
        lambda b, t, c: {"lengths": _lengths(b, t) if t == T else np.zeros(b, np.int32)},
        ints={"lengths": "length"},
        traced=("lengths",),
    ),
    Spec(
        "js.last_valid",
        js.last_valid,
        lambda b, t, c: {"hs": _floats(_rng(), b, t, H), "lengths": _lengths(b, t)},
        ints={"lengths": "length"},
        padded=lambda kw: ("hs", (1, 0)),
        poison="hs",
        poison_at=lambda kw: (0, int(kw["lengths"][0]) - 1, 0),
        wrong_shape=lambda kw: ("lengths", kw["lengths"][:-1]),
        wrong_rank=lambda kw: ("hs", kw["hs"][:, 0, 0]),
        traced=("hs", "lengths"),
    ),
    Spec(
        "js.reverse_within_length",
        js.reverse_within_length,
        lambda b, t, c: {"xs": _floats(_rng(), b, t, H), "lengths": _lengths(b, t)},
        ints={"lengths": "length"},
        wrong_shape=lambda kw: ("lengths", kw["lengths"][:-1]),
        wrong_rank=lambda kw: ("xs", kw["xs"][:, 0, 0]),
        traced=("xs", "lengths"),
    ),
    *[
        _per_position_loss(f"js.{fn.__name__}", fn, wrong_rank=_add_axis("where"))
        for fn in (js.cross_entropy, js.sequence_labeling_loss)
    ],
    _per_position_loss(
        "js.sequence_labeling_loss(class_weights, label_smoothing)",
        lambda **kw: js.sequence_labeling_loss(
            **kw,
            class_weights=np.linspace(0.5, 2.0, kw["logits"].shape[-1], dtype=np.float32),
            label_smoothing=0.1,
            reduction="mean_over_tokens",
        ),
    ),
    Spec(
        "js.sequence_classification_loss",
        js.sequence_classification_loss,
        lambda b, t, c: {
            "logits": _floats(_rng(), b, c),
            "labels": _rng().integers(0, max(c, 1), size=b).astype(np.int32),
            "where": np.arange(b) != 1,
        },
        ints={"labels": "label"},
        valid=lambda kw: (0,),
        padded=lambda kw: ("logits", (1,)),
        poison="logits",
        uses_classes=True,
        wrong_shape=lambda kw: ("labels", kw["labels"][:-1]),
        wrong_rank=_add_axis("logits"),
        traced=LOSS_TRACED,
        has_time=False,
    ),
    Spec(
        "js.linear_cross_entropy",
        js.linear_cross_entropy,
        lambda b, t, c: {
            "hidden": _floats(_rng(), b, t, D),
            "weight": _floats(_rng(), D, c),
            **{k: v for k, v in _loss_inputs(b, t, c).items() if k != "logits"},
        },
        ints={"labels": "label"},
        valid=_first_valid,
        padded=lambda kw: ("hidden", _first_padded(kw)),
        poison="hidden",
        uses_classes=True,
        wrong_shape=lambda kw: ("labels", kw["labels"][:, :-1]),
        wrong_rank=_add_axis("weight"),
        traced=("hidden", "weight", "labels", "where"),
    ),
    Spec(
        "js.ctc_loss",
        js.ctc_loss,
        _ctc_inputs,
        ints={"logit_lengths": "length", "label_lengths": "label_length", "labels": "ctc_label"},
        valid=lambda kw: (0, 0),
        padded=lambda kw: ("logits", (1, 0)),
        poison="logits",
        uses_classes=True,
        wrong_shape=lambda kw: ("label_lengths", kw["label_lengths"][:-1]),
        wrong_rank=lambda kw: ("logits", kw["logits"][0]),
        traced=("logits", "logit_lengths", "labels", "label_lengths"),
    ),
    *[
        _per_position_loss(f"jaxseq.metrics.{fn.__name__}", fn)
        for fn in (metrics.accuracy, metrics.confusion_matrix)
    ],
    *[
        Spec(
            f"js.{fn.__name__}",
            fn,
            lambda b, t, c: {
                "hs": _floats(_rng(), b, t, H),
                "where": np.asarray(js.length_mask(_lengths(b, t), t)),
            },
            padded=lambda kw: ("hs", _first_padded(kw)),
            poison="hs",
            wrong_shape=lambda kw: ("where", kw["where"][:, :-1]),
            wrong_rank=lambda kw: ("hs", kw["hs"][0]),
            traced=("hs", "where"),
        )
        for fn in (js.masked_mean, js.masked_max)
    ],
    *[
        Spec(
            f"js.{label}",
            fn,
            _rnn_inputs,
            ints={"lengths": "length"},
            padded=_padded_step,
            poison="xs",
            wrong_shape=lambda kw: ("lengths", kw["lengths"][:-1]),
            wrong_rank=lambda kw: ("xs", kw["xs"][0]),
            traced=("xs", "lengths"),
        )
        for label, fn in (
            ("rnn (default method)", lambda xs, lengths: js.rnn(CELL, PARAMS, xs, lengths)),
            (
                "rnn (method=Scan())",
                lambda xs, lengths: js.rnn(CELL, PARAMS, xs, lengths, method=js.Scan()),
            ),
            ("bidirectional", lambda xs, lengths: js.bidirectional(CELL, BI_PARAMS, xs, lengths)),
            ("stack (2 layers)", lambda xs, lengths: js.stack(CELL, LAYERS, xs, lengths)),
        )
    ],
    Spec(
        "js.scan_rnn",
        lambda xs, length: js.scan_rnn(CELL, PARAMS, xs, length),
        lambda b, t, c: {"xs": _floats(_rng(), t, D), "length": np.int32(max(t - 1, 0))},
        ints={"length": "length"},
        padded=lambda kw: ("xs", (int(kw["length"]),)) if int(kw["length"]) < T else None,
        poison="xs",
        wrong_rank=lambda kw: ("xs", kw["xs"][None]),
        traced=("xs", "length"),
    ),
    *[
        Spec(
            f"js.{label}",
            fn,
            _model_inputs,
            ints={"inputs": "token", "lengths": "length"},
            wrong_shape=lambda kw: ("lengths", kw["lengths"][:-1]),
            wrong_rank=lambda kw: ("inputs", kw["inputs"][0]),
            traced=("inputs", "lengths"),
        )
        for label, fn in (
            (
                "labeler_apply",
                lambda inputs, lengths: js.labeler_apply(LABELER_PARAMS, LABELER, inputs, lengths),
            ),
            (
                "classifier_apply",
                lambda inputs, lengths: js.classifier_apply(
                    CLASSIFIER_PARAMS, CLASSIFIER, inputs, lengths
                ),
            ),
        )
    ],
    Spec(
        "js.validate_labels",
        lambda labels, where: js.validate_labels(labels, C, where=where),
        lambda b, t, c: {k: v for k, v in _loss_inputs(b, t, c).items() if k != "logits"},
        ints={"labels": "label"},
        valid=_first_valid,
        wrong_shape=lambda kw: ("where", kw["where"][:, :-1]),
        traced=("labels", "where"),
        host_only=True,
    ),
    Spec(
        "js.validate_lengths",
        lambda lengths: js.validate_lengths(lengths, T),
        lambda b, t, c: {"lengths": _lengths(b, t) if t == T else np.zeros(b, np.int32)},
        ints={"lengths": "length"},
        traced=("lengths",),
        host_only=True,
    ),
]

# ---------------------------------------------------------------------------- running


_JITTED: dict[str, Callable] = {}


def _run(spec: Spec, kwargs: dict, mode: str):
    if mode == "eager":
        return spec.call(**kwargs)
    assert set(kwargs) <= set(spec.traced), "every argument of a spec is traced under jit"
    # One jitted function per spec: calls with the same shapes and dtypes reuse its code.
    fn = _JITTED.setdefault(spec.name, jax.jit(lambda kw: spec.call(**kw)))
    if mode == "jit+x64":
        with jax.enable_x64(True):
            return jax.block_until_ready(fn(kwargs))
    return jax.block_until_ready(fn(kwargs))


def _leaves(out) -> list[np.ndarray]:
    if isinstance(out, metrics.Ratio):
        out = (out.total, out.count)
    return [np.asarray(x) for x in jax.tree.leaves(out)]


EMPTY = object()  # the expectation for an empty axis: no NaN, scalars 0


def _has_nan(leaves) -> bool:
    return any(np.issubdtype(x.dtype, np.floating) and np.isnan(x).any() for x in leaves)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b)
    )


def classify(spec: Spec, kwargs: dict, mode: str, *, argument, expect=None) -> str:
    """The outcome of one call (see the module docstring). ``expect``: the leaves of
    the exact answer; None when the input is bad and only NaN or an error is right."""
    try:
        leaves = _leaves(_run(spec, kwargs, mode))
    except (ValueError, TypeError, AssertionError, jax.errors.JaxRuntimeError) as error:
        message = str(error)
        names = (argument,) if isinstance(argument, str) else argument
        if any(f"`{n}`" in message for n in names) or (spec.host_only and "concrete" in message):
            return "error"
        return f"UNCLEAR ERROR ({type(error).__name__}: {message.splitlines()[0][:90]})"
    if spec.host_only:
        return "exact" if expect is not None else "WRONG (accepted)"
    if expect is EMPTY:
        floats = [x for x in leaves if np.issubdtype(x.dtype, np.floating)]
        if _has_nan(leaves) or any(x.ndim == 0 and x != 0 for x in floats):
            return "WRONG (an empty axis must give 0 or empty arrays)"
        return "exact (0 or empty)"
    if expect is not None:
        return "exact" if _same(leaves, expect) else "WRONG (differs from the exact answer)"
    if _has_nan(leaves):
        return "NaN"
    if all(not np.issubdtype(x.dtype, np.floating) for x in leaves):
        return "documented (integer/bool output, no NaN)"
    return "WRONG (plausible number)"


OUT_OF_RANGE = {
    "length": {"> T": T + 1, "< 0": -1},
    "label_length": {"> S": S + 1, "< 0": -1},
    "label": {">= C": C, "< 0": -1},
    "ctc_label": {">= C": C, "< 0": -1},
    "token": {">= vocab": V, "< 0": -1},
}


def _bad_index(spec: Spec, kwargs: dict, arg: str, kind: str) -> tuple:
    """Where to put a bad value of ``arg``: a position that is read (a valid one)."""
    x = np.asarray(kwargs[arg])
    if kind in ("label", "ctc_label"):
        return spec.valid(kwargs)
    return (0,) * x.ndim  # lengths: row 0 (a full row); token ids: the first step


def _with(kwargs: dict, arg: str, index: tuple, value, dtype=None) -> dict:
    x = np.array(kwargs[arg], dtype=dtype)
    x[index] = value
    return {**kwargs, arg: x}


def matrix_rows(spec: Spec) -> dict[str, str]:
    """Every bad-input class of ``spec`` -> "eager outcome / jit outcome"."""
    kwargs = spec.make(B, T, C)
    row: dict[str, str] = {}
    # Host validators return None: their exact answer is "no error" (empty leaves).
    clean = [] if spec.host_only else _leaves(_run(spec, kwargs, "eager"))
    modes = ("eager", "jit")

    def record(column, bad_kwargs, argument, expect=None, modes=modes):
        outcomes = [classify(spec, bad_kwargs, m, argument=argument, expect=expect) for m in modes]
        row[column] = " / ".join(outcomes)

    if spec.wrong_shape:
        arg, value = spec.wrong_shape(kwargs)
        record("wrong shape", {**kwargs, arg: value}, arg)
    if spec.wrong_rank:
        arg, value = spec.wrong_rank(kwargs)
        record("wrong rank", {**kwargs, arg: value}, arg)
    for arg, kind in spec.ints.items():
        for dtype in INT_DTYPES:
            if dtype != "int32":
                as_dtype = {**kwargs, arg: np.asarray(kwargs[arg]).astype(dtype)}
                record(f"{arg}: {dtype}", as_dtype, arg, expect=clean)
        index = _bad_index(spec, kwargs, arg, kind)
        for label, value in OUT_OF_RANGE[kind].items():
            record(f"{arg} {label}", _with(kwargs, arg, index, value), arg)
        big = _with(kwargs, arg, index, BIG, dtype=np.int64)
        outcomes = [classify(spec, big, m, argument=arg) for m in ("eager", "jit", "jit+x64")]
        if outcomes[1].startswith("WRONG"):
            outcomes[1] = "JAX limit (int64 -> int32 at the jit boundary; validate on host)"
        row[f"{arg} = 2**32 + 1 (int64)"] = " / ".join(outcomes)
    if spec.padded is not None and spec.padded(kwargs) is not None and not spec.host_only:
        arg, index = spec.padded(kwargs)
        for value in (np.nan, np.inf):
            bad = np.array(kwargs[arg])
            bad[index] = value
            record(f"{value} in padding", {**kwargs, arg: bad}, arg, expect=clean)
    if spec.poison is not None:
        arg = spec.poison
        index = spec.poison_at(kwargs) if spec.poison_at else (0,) * np.ndim(kwargs[arg])
        record("NaN at a valid position", _with(kwargs, arg, index, np.nan), arg)
    empty_axes = {"B = 0": (0, T, C)}
    if spec.has_time:
        empty_axes["T = 0"] = (B, 0, C)
    if spec.uses_classes:
        empty_axes["C = 0"] = (B, T, 0)
    for axis, sizes in empty_axes.items():
        # No class: the labels at valid positions cannot be right (NaN or an error).
        expect = None if axis == "C = 0" else EMPTY
        record(axis, spec.make(*sizes), spec.traced, expect=expect)
    return row


COLUMNS_DOC = """\
Each cell is `eager / jit` (and `/ jit+x64` for the int64 overflow column): what the
function gave for host data and inside `jax.jit`.

* **exact**: the defined answer (another integer dtype: exactly the int32 result; NaN
  or inf in padding: exactly the clean result; an empty axis: 0 or empty arrays).
* **NaN**: the result is NaN where the bad value is read, never a plausible number.
* **error**: `ValueError`, `TypeError` or chex's `AssertionError`, naming the argument.
* **JAX limit**: without `jax_enable_x64`, `jax.jit` converts an int64 argument to
  int32 before jaxseq sees it (2**32 + 1 arrives as 1); validate such data on the host
  (`js.validate_labels`, `js.validate_lengths`), where jaxseq raises. With x64 on
  (`jit+x64`) jaxseq sees the int64 value and the result is NaN or an error.
* **documented (integer/bool output, no NaN)**: an output that cannot hold NaN. Under
  `jit`, `length_mask` applies `t < lengths` as it stands (as its docstring states);
  host lengths outside `[0, T]` raise.
"""


SUMMARY_CLASSES = {
    "wrong shape": lambda c: c == "wrong shape",
    "wrong rank": lambda c: c == "wrong rank",
    "other int dtypes": lambda c: c.split(": ")[-1] in INT_DTYPES,
    "out of range": lambda c: any(c.endswith(k) for v in OUT_OF_RANGE.values() for k in v),
    "int64 beyond int32": lambda c: c.endswith("(int64)"),
    "NaN/inf in padding": lambda c: c.endswith("in padding"),
    "NaN where read": lambda c: c == "NaN at a valid position",
    "B, T, C = 0": lambda c: c.endswith("= 0"),
}


def _short(outcome: str) -> str:
    return outcome.split(" (")[0]


def _summary(row: dict[str, str]) -> list[str]:
    """One cell per bad-input class: the set of outcomes of its columns, eager | jit."""
    cells = []
    for belongs in SUMMARY_CLASSES.values():
        outcomes = [row[c].split(" / ") for c in row if belongs(c)]
        if not outcomes:
            cells.append("n/a")
            continue
        per_mode = [sorted({_short(o[m]) for o in outcomes}) for m in (0, 1)]
        cells.append(" \\| ".join(", ".join(modes) for modes in per_mode))
    return cells


def _write_report(matrix: dict[str, dict[str, str]]) -> str:
    lines = [
        "# Bad-input matrix",
        "",
        "Generated by `tests/test_bad_inputs.py` on every test run (do not edit by hand).",
        "Every public array function x every class of bad input; no cell may be a",
        "plausible wrong number (the test fails on one).",
        "",
        COLUMNS_DOC,
        "## Summary",
        "",
        "Each cell: the outcomes in eager mode \\| under `jit` (the details per argument",
        "and value are in the sections below).",
        "",
        "| function | " + " | ".join(SUMMARY_CLASSES) + " |",
        "|---|" + "---|" * len(SUMMARY_CLASSES),
    ]
    lines += [f"| `{n}` | " + " | ".join(_summary(matrix[n])) + " |" for n in sorted(matrix)]
    lines.append("")
    for name in sorted(matrix):
        lines += [f"## `{name}`", "", "| input | eager / jit |", "|---|---|"]
        lines += [f"| {column} | {outcome} |" for column, outcome in matrix[name].items()]
        lines.append("")
    text = "\n".join(lines)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(text)
    return text


def test_bad_input_matrix():
    """Every spec x every bad-input class; writes the table, then fails on any plausible
    wrong number or unclear error (all of them listed). One test, so the table is always
    whole, whichever pytest-xdist worker runs it."""
    matrix = {spec.name: matrix_rows(spec) for spec in SPECS}
    _write_report(matrix)
    wrong = [
        f"{name}: {column}: {outcome}"
        for name, row in matrix.items()
        for column, outcome in row.items()
        if "WRONG" in outcome or "UNCLEAR" in outcome
    ]
    assert not wrong, "\n".join(wrong)
