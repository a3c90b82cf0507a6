"""Plain NumPy float64 reference for the recurrent cells and the masked recurrence.

Written from each cell's equations (the docstrings of ``jaxseq.cells``, i.e.
PyTorch's ``nn.RNN``/``nn.GRU``/``nn.LSTM``), one step at a time with explicit
loops over time and over the examples of a batch, on the UNPADDED sequences:
no masks, no JAX. Params are the jaxseq dicts (row-vector convention,
``x @ W``), converted to float64.
"""

from __future__ import annotations

import numpy as np


def _f64(params: dict) -> dict:
    return {name: np.asarray(value, np.float64) for name, value in params.items()}


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def elman_step(params: dict, h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """s_t = tanh(x_t U + s_{t-1} W + b)."""
    p = _f64(params)
    return np.tanh(x @ p["U"] + h @ p["W"] + p["b"])


def gru_step(params: dict, h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """PyTorch GRU, gate blocks (r, z, n)."""
    p = _f64(params)
    size = h.shape[0]

    def block(name: str, k: int) -> np.ndarray:
        return p[name][..., k * size : (k + 1) * size]

    r = sigmoid(x @ block("W_i", 0) + block("b_i", 0) + h @ block("W_h", 0) + block("b_h", 0))
    z = sigmoid(x @ block("W_i", 1) + block("b_i", 1) + h @ block("W_h", 1) + block("b_h", 1))
    n = np.tanh(x @ block("W_i", 2) + block("b_i", 2) + r * (h @ block("W_h", 2) + block("b_h", 2)))
    return (1.0 - z) * n + z * h


def lstm_step(params: dict, carry: tuple, x: np.ndarray) -> tuple:
    """PyTorch LSTM, gate blocks (i, f, g, o)."""
    p = _f64(params)
    h, c = carry
    size = h.shape[0]

    def gate(k: int) -> np.ndarray:
        cols = slice(k * size, (k + 1) * size)
        return x @ p["W_i"][:, cols] + h @ p["W_h"][:, cols] + p["b"][cols]

    i, f, g, o = sigmoid(gate(0)), sigmoid(gate(1)), np.tanh(gate(2)), sigmoid(gate(3))
    c = f * c + i * g
    return (o * np.tanh(c), c)


STEPS = {"elman": elman_step, "gru": gru_step, "lstm": lstm_step}


def initial_carry(name: str, hidden_size: int):
    zeros = np.zeros(hidden_size, np.float64)
    return (zeros, zeros.copy()) if name == "lstm" else zeros


def output(name: str, carry) -> np.ndarray:
    return carry[0] if name == "lstm" else carry


def run_sequence(
    name: str, params: dict, xs: np.ndarray, hidden_size: int, *, reverse=False, carry=None
):
    """One unpadded sequence ``xs [n, D]`` -> (final carry, hs [n, H]).

    ``reverse`` reads ``xs[n-1], ..., xs[0]``; ``hs[t]`` is still the output
    after reading ``xs[t]`` (original time order). ``carry``: the initial carry
    (default zeros).
    """
    xs = np.asarray(xs, np.float64)
    n = xs.shape[0]
    if carry is None:
        carry = initial_carry(name, hidden_size)
    hs = np.zeros((n, hidden_size), np.float64)
    order = range(n - 1, -1, -1) if reverse else range(n)
    for t in order:
        carry = STEPS[name](params, carry, xs[t])
        hs[t] = output(name, carry)
    return carry, hs


def run_batch(
    name: str, params: dict, xs, lengths, hidden_size: int, *, reverse=False, carries=None
):
    """Padded batch ``xs [B, T, D]``: each example run on ``xs[b, :lengths[b]]`` only.

    ``carries``: optional list of per-example initial carries.
    Returns (list of final carries, hs [B, T, H] with zeros at padded steps).
    """
    xs = np.asarray(xs, np.float64)
    batch, max_len = xs.shape[:2]
    finals = []
    hs = np.zeros((batch, max_len, hidden_size), np.float64)
    for b in range(batch):
        n = int(lengths[b])
        carry = None if carries is None else carries[b]
        final, hs_b = run_sequence(
            name, params, xs[b, :n], hidden_size, reverse=reverse, carry=carry
        )
        finals.append(final)
        hs[b, :n] = hs_b
    return finals, hs


def run_bidirectional(name: str, params: dict, xs, lengths, hidden_size: int):
    """Forward and backward runs, outputs concatenated: (finals_f, finals_b, hs [B, T, 2H])."""
    finals_f, hs_f = run_batch(name, params["forward"], xs, lengths, hidden_size)
    finals_b, hs_b = run_batch(name, params["backward"], xs, lengths, hidden_size, reverse=True)
    return finals_f, finals_b, np.concatenate([hs_f, hs_b], axis=-1)


# ---------------------------------------------------------------------------- packed segments


def segments(length: int, resets_row) -> list[tuple[int, int]]:
    """The ``[start, end)`` spans of the segments packed in one row's valid prefix.

    A segment starts at step 0 and at every valid step ``t`` with ``resets_row[t]``;
    resets at padded steps (``t >= length``) are ignored.
    """
    starts = [0] + [t for t in range(1, length) if resets_row[t]]
    return [(s, e) for s, e in zip(starts, starts[1:] + [length]) if e > s]


def run_packed(run_sequence, xs, lengths, resets, hidden_size: int, *, reverse=False, carries=None):
    """Padded rows of packed segments, each segment run ALONE by ``run_sequence``.

    ``run_sequence(xs_seg [n, D], *, reverse, carry) -> (final, hs [n, H])`` runs one
    unpadded sequence (``carry=None``: the cell's initial carry). Each segment starts
    from the initial carry, except the one that meets the row's ``carries[b]``: forward,
    the first segment when ``resets[b, 0]`` is False; reversed, the last segment (the
    first one processed). The row's final carry is that of the last segment processed
    (forward: the last; reversed: the first); for an empty row, ``carries[b]`` (or the
    initial carry).

    Returns (list of final carries, hs [B, T, H] with zeros at padded steps).
    """
    xs = np.asarray(xs, np.float64)
    batch, max_len = xs.shape[:2]
    finals = []
    hs = np.zeros((batch, max_len, hidden_size), np.float64)
    for b in range(batch):
        n = int(lengths[b])
        given = None if carries is None else carries[b]
        spans = segments(n, resets[b])
        final = run_sequence(xs[b, :0], reverse=reverse, carry=given)[0]
        for i, (s, e) in enumerate(spans):
            if reverse:
                carry = given if i == len(spans) - 1 else None
            else:
                carry = given if i == 0 and not resets[b][0] else None
            seg_final, hs[b, s:e] = run_sequence(xs[b, s:e], reverse=reverse, carry=carry)
            if (i == 0) if reverse else (i == len(spans) - 1):
                final = seg_final
        finals.append(final)
    return finals, hs
