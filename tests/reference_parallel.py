"""Plain NumPy float64 reference for the parallel-in-time cells, from the papers' equations.

One step at a time, explicit loops over time and over the examples of a batch,
on the UNPADDED sequences: no masks, no scans, no JAX. Params are the jaxseq
dicts (row-vector convention, ``x @ W``), converted to float64 (complex128
for the LRU's state).

* minGRU (Feng et al. 2024, eqs. for minGRU; ``g`` in the log-space version)::

      z = sigmoid(x W_z + b_z);  h~ = g(x W_h + b_h);  h = (1 - z) h + z h~

* minLSTM (same paper)::

      f = sigmoid(x W_f + b_f);  i = sigmoid(x W_i + b_i);  h~ = g(x W_h + b_h)
      f' = f / (f + i);  i' = i / (f + i);  h = f' h + i' h~

* LRU (Orvieto et al. 2023, the appendix code)::

      lambda = exp(-exp(nu_log) + 1j exp(theta_log));  gamma = exp(gamma_log)
      h = lambda h + gamma (x B);  y = Re(h C) + x D

The plain (``log_space=False``) minGRU/minLSTM use ``h~ = x W_h + b_h``.
"""

from __future__ import annotations

import numpy as np


def _f64(params: dict) -> dict:
    return {name: np.asarray(value, np.float64) for name, value in params.items()}


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def g(a):
    return np.where(a >= 0, a + 0.5, sigmoid(a))


def _blocks(p: dict, x: np.ndarray, count: int) -> list:
    size = p["b"].shape[0] // count
    pre = x @ p["W"] + p["b"]
    return [pre[k * size : (k + 1) * size] for k in range(count)]


def mingru_step(params, h, x, *, log_space=True):
    k_z, k_h = _blocks(_f64(params), x, 2)
    z = sigmoid(k_z)
    candidate = g(k_h) if log_space else k_h
    return (1.0 - z) * h + z * candidate


def minlstm_step(params, h, x, *, log_space=True):
    k_f, k_i, k_h = _blocks(_f64(params), x, 3)
    f, i = sigmoid(k_f), sigmoid(k_i)
    candidate = g(k_h) if log_space else k_h
    return f / (f + i) * h + i / (f + i) * candidate


def lru_step(params, carry, x):
    p = _f64(params)
    h = carry[0] + 1j * carry[1]
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    gamma = np.exp(p["gamma_log"])
    h = lam * h + gamma * (x @ (p["B_re"] + 1j * p["B_im"]))
    y = np.real(h @ (p["C_re"] + 1j * p["C_im"])) + x @ p["D"]
    return (h.real.copy(), h.imag.copy(), y)


def step(kind: str, params, carry, x):
    """``kind``: ``mingru``, ``mingru_linear``, ``minlstm``, ``minlstm_linear`` or ``lru``."""
    if kind == "lru":
        return lru_step(params, carry, x)
    log_space = not kind.endswith("_linear")
    fn = mingru_step if kind.startswith("mingru") else minlstm_step
    return fn(params, carry, x, log_space=log_space)


def initial_carry(kind: str, hidden_size: int, state_size: int):
    if kind == "lru":
        return (np.zeros(state_size), np.zeros(state_size), np.zeros(hidden_size))
    return np.zeros(hidden_size)


def output(kind: str, carry) -> np.ndarray:
    return carry[2] if kind == "lru" else carry


def run_sequence(kind, params, xs, hidden_size, state_size, *, reverse=False, carry=None):
    """One unpadded sequence ``xs [n, D]`` -> (final carry, hs [n, H]) in the original order."""
    xs = np.asarray(xs, np.float64)
    n = xs.shape[0]
    if carry is None:
        carry = initial_carry(kind, hidden_size, state_size)
    hs = np.zeros((n, hidden_size))
    for t in range(n - 1, -1, -1) if reverse else range(n):
        carry = step(kind, params, carry, xs[t])
        hs[t] = output(kind, carry)
    return carry, hs


def run_batch(kind, params, xs, lengths, hidden_size, state_size, *, reverse=False, carries=None):
    """Padded ``xs [B, T, D]``, each example on ``xs[b, :lengths[b]]`` only.

    Returns (list of final carries, hs [B, T, H] with zeros at padded steps).
    """
    xs = np.asarray(xs, np.float64)
    finals, hs = [], np.zeros(xs.shape[:2] + (hidden_size,))
    for b in range(xs.shape[0]):
        n = int(lengths[b])
        carry = None if carries is None else carries[b]
        final, hs[b, :n] = run_sequence(
            kind, params, xs[b, :n], hidden_size, state_size, reverse=reverse, carry=carry
        )
        finals.append(final)
    return finals, hs
