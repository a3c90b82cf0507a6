"""Plain-Python float64 reference for the losses, written straight from docs/semantics.md.

Explicit loops over examples, time steps and classes; no vectorisation, no JAX.
"""

from __future__ import annotations

import math
import zlib

import numpy as np


def log_softmax_row(z: np.ndarray) -> list[float]:
    m = max(float(v) for v in z)
    total = sum(math.exp(float(v) - m) for v in z)
    lse = m + math.log(total)
    return [float(v) - lse for v in z]


def logsumexp_row(z: np.ndarray) -> float:
    m = max(float(v) for v in z)
    return m + math.log(sum(math.exp(float(v) - m) for v in z))


def token_loss(z, label, *, label_smoothing=0.0, class_weights=None, z_loss=0.0) -> float:
    """PyTorch's cross_entropy(weight=w, label_smoothing=a) per token, plus the z-loss:

    (1 - a) w[y] (-log p_y) + (a / C) sum_c w[c] (-log p_c) + z_loss w[y] lse^2,

    w = 1 without weights; returns (loss, w[y]). A term whose weight is 0 is 0 (never
    0 * inf); without smoothing a zero-weight token is not counted at all.
    """
    smoothing = label_smoothing
    num_classes = len(z)
    log_p = log_softmax_row(z)
    weights = [1.0] * num_classes if class_weights is None else [float(w) for w in class_weights]
    weight = weights[label]
    loss = 0.0
    if weight != 0:
        loss += (1.0 - smoothing) * weight * -log_p[label]
        loss += z_loss * weight * logsumexp_row(z) ** 2
    if smoothing:
        for c in range(num_classes):
            if weights[c] != 0:
                loss += smoothing / num_classes * weights[c] * -log_p[c]
    return loss, weight


def seed_of(*parts) -> int:
    """A seed fixed across processes for a test case (``hash(str)`` is randomized per
    process): the CRC-32 of the parts' text."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def soft_token_loss(z, target) -> float:
    log_p = log_softmax_row(z)
    return -sum(float(t) * lp for t, lp in zip(target, log_p) if t != 0)


def labeling_loss(logits, labels, where, reduction, *, soft=False, **kwargs):
    """logits [B, T, C], labels [B, T] (or soft targets [B, T, C]), where [B, T]."""
    num_b, num_t = where.shape
    per_token = np.zeros((num_b, num_t))
    weights = np.zeros((num_b, num_t))
    for i in range(num_b):
        for j in range(num_t):
            if not where[i, j]:
                continue
            if soft:
                per_token[i, j], weights[i, j] = soft_token_loss(logits[i, j], labels[i, j]), 1.0
            else:
                per_token[i, j], weights[i, j] = token_loss(
                    logits[i, j], int(labels[i, j]), **kwargs
                )
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return sum(per_token[i, j] for i in range(num_b) for j in range(num_t))
    # N counts the rows whose (weighted) number of valid steps is > 0. The sums take every
    # valid step's loss: with label smoothing a zero-weight step still has one.
    total = sum(per_token[i, j] for i in range(num_b) for j in range(num_t))
    sequence_sums = [sum(per_token[i, j] for j in range(num_t)) for i in range(num_b)]
    sequence_weights = [sum(weights[i, j] for j in range(num_t)) for i in range(num_b)]
    n = sum(1 for w in sequence_weights if w > 0)
    if n == 0:
        return 0.0
    if reduction == "sum_over_time":
        return total / n
    if reduction == "mean_over_time":
        return sum(s / w for s, w in zip(sequence_sums, sequence_weights) if w > 0) / n
    if reduction == "mean_over_tokens":
        return total / sum(sequence_weights)
    raise ValueError(reduction)


def classification_loss(logits, labels, where=None, reduction="sum_over_time", **kwargs):
    """logits [B, C], labels [B]; over the valid i: "none" w_i L_i ([B], 0 elsewhere),
    "sum" sum_i w_i L_i, "sum_over_time" sum_i w_i L_i / sum_i w_i."""
    per_sequence = np.zeros(len(labels))
    total, count = 0.0, 0.0
    for i in range(len(labels)):
        if where is not None and not where[i]:
            continue
        loss, weight = token_loss(logits[i], int(labels[i]), **kwargs)
        per_sequence[i] = loss
        total += loss
        count += weight
    if reduction == "none":
        return per_sequence
    if reduction == "sum":
        return total
    if reduction == "sum_over_time":
        return total / count if count > 0 else 0.0
    raise ValueError(reduction)


def logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def ctc_nll(logits, labels, *, blank=0) -> float:
    """-log p(labels | logits) by the CTC forward algorithm (Graves et al. 2006) in log space.

    logits [T_i, K] (this sequence's frames only), labels [U_i] (its labels only).
    Returns inf when no alignment exists.
    """
    extended = [blank]
    for label in labels:
        extended += [int(label), blank]
    num_s = len(extended)
    num_t = len(logits)
    if num_t == 0:
        return 0.0 if len(labels) == 0 else math.inf
    log_p = [log_softmax_row(z) for z in logits]
    alpha = [-math.inf] * num_s
    alpha[0] = log_p[0][extended[0]]
    if num_s > 1:
        alpha[1] = log_p[0][extended[1]]
    for t in range(1, num_t):
        new = [-math.inf] * num_s
        for s in range(num_s):
            a = alpha[s]
            if s >= 1:
                a = logaddexp(a, alpha[s - 1])
            if s >= 2 and extended[s] != blank and extended[s] != extended[s - 2]:
                a = logaddexp(a, alpha[s - 2])
            new[s] = a + log_p[t][extended[s]] if a != -math.inf else -math.inf
        alpha = new
    end = alpha[num_s - 1] if num_s == 1 else logaddexp(alpha[num_s - 1], alpha[num_s - 2])
    return -end if end != -math.inf else math.inf
