"""Cross-entropy of a linear output layer without materialising the logits.

Notation: N tokens (``B * T`` for ``[B, T, H]`` input), H hidden size, C
classes; ``tn`` the token chunk, ``tc`` the class chunk.

``linear_cross_entropy(hidden, weight, labels, where=where)`` is
``sequence_labeling_loss(hidden @ weight + bias, labels, where=where)`` (the
same reductions, default ``"sum_over_time"`` included, class weights, label
smoothing, z-loss and masking semantics, see :mod:`jaxseq.losses`) computed
tile by tile: the ``[N, C]`` logits, their
softmax and their gradient never exist in memory at once. The largest
temporaries are one ``[tn, tc]`` tile of logits and the ``[H, C]`` gradient of
``weight`` (the size of ``weight``).

How (all in float32, float64 for float64 inputs; the matmuls take the inputs in
their own dtype):

* Forward: for each token chunk, an online logsumexp over the class chunks
  (running max and rescaled sum) and a gather of the true class's logit. Only
  ``lse`` ``[N]`` is kept for the backward pass, besides the inputs.
* Backward (``jax.custom_vjp``): the logits of each ``[tn, tc]`` tile are
  recomputed, ``softmax = exp(z - lse)``, and the tile's gradient is
  contracted at once into ``d hidden`` (``dz @ W_tile^T``), ``d weight``
  (``h^T @ dz``) and ``d bias``. One more pass over ``weight`` than the plain
  path, but no ``[N, C]`` array is written to or read from memory.
* ``grad_in_forward=True`` (training): under ``jax.grad`` the forward pass of a
  token chunk computes its logits for all classes (``[tn, C]``, kept for this
  chunk only), its loss, and at once, class chunk by class chunk, its
  contribution to the gradients, scaled by the coefficient the reduction gives
  each token (known before the loss: it depends only on ``where``, labels and
  class weights). The backward pass then only multiplies the stored gradients
  by the incoming scalar. No recomputation: the matmul work of the plain path,
  in tiles. Not available for ``reduction="none"`` (its cotangent is not a
  scalar).

The per-token loss is PyTorch's ``cross_entropy(weight=w, label_smoothing=a)``
plus the z-loss (see :func:`jaxseq.cross_entropy`):
``(1 - a) w_y (lse - z_y) + (a / C) (sum_c w_c) lse - (a / C) sum_c w_c z_c
+ z_loss w_y lse^2``. In the default mode, everything that is linear in the
logits (``sum_c w_c z_c = h . (W w) + b . w``, one ``[H]`` vector) or a
function of ``lse`` and the true logit per token (z-loss, class weights, the
reductions) is plain JAX on ``[N]`` vectors outside the custom kernel, so its
gradient comes from JAX's own autodiff. With ``grad_in_forward`` the kernel
takes three per-token coefficients (of ``lse``, ``z_y`` and ``lse^2``), whose
gradients are those three quantities, so ``class_weights`` get their gradient
in both modes.

Masking is exact: masked tokens' hidden states and labels are replaced by 0
before any arithmetic, and their loss and weight by 0 after it ("double
where"), so NaN/inf hidden states or garbage labels at masked positions change
neither the value nor any gradient. Without label smoothing a token whose
class weight is 0 is masked the same way. An out-of-range label at a valid
position gives NaN (the fast path of :mod:`jaxseq.losses`; check with
:func:`jaxseq.validate_labels`); labels of any integer dtype are converted to
int32 exactly. Zero classes (``weight`` ``[H, 0]``) is an error; zero tokens
give the all-masked result (0, or an empty ``"none"``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks
from jaxseq._compiled import compiled
from jaxseq._reductions import (
    REDUCTIONS,
    TERM_REDUCTIONS,
    LossTerms,
    all_valid,
    check_loss_options,
    check_num_classes,
    class_weight_of,
    class_weight_vector,
    compute_dtype,
    labeling_terms,
    reduce_labeling,
    safe_divide,
)

#: Default tile: 2048 tokens x 4096 classes (32 MiB of float32 logits).
DEFAULT_TOKEN_CHUNK = 2048
DEFAULT_CLASS_CHUNK = 4096
#: ``grad_in_forward`` tiles hold ``[tn, C]``: ``tn`` defaults to this many logits / C
#: (64 MiB of float32 logits; 512 tokens at C = 32768). Each token chunk reads and writes
#: the whole ``[H, C]`` weight gradient once, so much smaller tiles cost time.
FUSED_TILE_ELEMENTS = 2**24


class _Static(NamedTuple):
    """Hashable settings of the kernels (``custom_vjp`` non-differentiable args)."""

    num_tokens: int  # N (unpadded)
    num_classes: int  # C
    token_chunk: int  # tn <= N
    class_chunk: int  # tc <= C
    dtype: str  # compute dtype
    grad_dtypes: tuple[str, str, str | None] = ("float32", "float32", None)  # hidden, weight, bias

    @property
    def num_token_chunks(self) -> int:
        return -(-self.num_tokens // self.token_chunk)

    @property
    def padded_tokens(self) -> int:
        return self.num_token_chunks * self.token_chunk

    def class_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Start column of each class chunk and the first of its columns not seen before.

        C need not be a multiple of ``tc``: the last chunk starts at ``C - tc`` and
        overlaps the one before; its columns below ``fresh_from`` are skipped (their
        logits count as -inf, their gradient as 0). ``weight`` is never padded.
        """
        c, tc = self.num_classes, self.class_chunk
        nominal = np.arange(-(-c // tc), dtype=np.int32) * tc
        starts = np.minimum(nominal, c - tc).astype(np.int32)
        return starts, (nominal - starts).astype(np.int32)


def _pad_tokens(x, s: _Static):
    pad = s.padded_tokens - s.num_tokens
    if pad == 0:
        return x
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def _chunks(x, s: _Static):
    """``[N, ...]`` -> ``[num_token_chunks, tn, ...]`` (zero-padded rows at the end)."""
    return _pad_tokens(x, s).reshape(s.num_token_chunks, s.token_chunk, *x.shape[1:])


def _matmul(a, b, dtype):
    """``a @ b`` accumulated and returned in ``dtype`` (inputs cast to it if they differ)."""
    if a.dtype != b.dtype:
        a, b = a.astype(dtype), b.astype(dtype)
    return jnp.matmul(a, b, preferred_element_type=dtype).astype(dtype)


def _logit_tile(h_tH, weight, bias, start, s: _Static):
    """Logits ``[tn, tc]`` of the class chunk beginning at column ``start``."""
    dtype = jnp.dtype(s.dtype)
    w_Htc = jax.lax.dynamic_slice_in_dim(weight, start, s.class_chunk, axis=1)
    z = _matmul(h_tH, w_Htc, dtype)
    if bias is not None:
        b_tc = jax.lax.dynamic_slice_in_dim(bias, start, s.class_chunk).astype(dtype)
        z = z + b_tc[None, :]
    return z


def _true_logit(z_tC, local_t, hit_t):
    """``z[i, local[i]]`` where ``hit``, else 0."""
    safe = jnp.clip(local_t, 0, z_tC.shape[1] - 1)
    picked = jnp.take_along_axis(z_tC, safe[:, None], axis=1)[:, 0]
    return jnp.where(hit_t, picked, 0.0)


def _finish_true_logit(zy_t, y_t, s: _Static):
    # An out-of-range label at a valid position is loud, never a plausible number.
    in_range = (y_t >= 0) & (y_t < s.num_classes)
    return jnp.where(in_range, zy_t, jnp.nan)


# ----------------------------------------------------------------------------- recompute kernel


def _lse_chunk(h_tH, y_t, weight, bias, s: _Static):
    """Online logsumexp over the class chunks and the true logit, both ``[tn]``."""
    dtype = jnp.dtype(s.dtype)
    starts, fresh_from = s.class_starts()
    col = jnp.arange(s.class_chunk, dtype=jnp.int32)

    def body(carry, xs):
        m_t, acc_t, zy_t = carry
        start, first = xs
        z = _logit_tile(h_tH, weight, bias, start, s)
        z = jnp.where((col >= first)[None, :], z, -jnp.inf)
        m_new = jnp.maximum(m_t, jnp.max(z, axis=1))
        acc_t = acc_t * jnp.exp(m_t - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=1)
        local = y_t - start
        zy_t = zy_t + _true_logit(z, local, (local >= first) & (local < s.class_chunk))
        return (m_new, acc_t, zy_t), None

    tn = s.token_chunk
    init = (
        jnp.full((tn,), -jnp.inf, dtype),
        jnp.zeros((tn,), dtype),
        jnp.zeros((tn,), dtype),
    )
    (m_t, acc_t, zy_t), _ = jax.lax.scan(body, init, (jnp.asarray(starts), jnp.asarray(fresh_from)))
    return m_t + jnp.log(acc_t), _finish_true_logit(zy_t, y_t, s)


def _lse_forward(s: _Static, hidden, weight, bias, labels):
    def body(_, xs):
        h_tH, y_t = xs
        return None, _lse_chunk(h_tH, y_t, weight, bias, s)

    _, (lse, zy) = jax.lax.scan(body, None, (_chunks(hidden, s), _chunks(labels, s)))
    return lse.reshape(-1)[: s.num_tokens], zy.reshape(-1)[: s.num_tokens]


def _lse_and_true_logit(s: _Static, hidden, weight, bias, labels):
    """``(logsumexp(h W + b), (h W + b)[label])`` per token, each ``[N]``."""
    return _lse_forward(s, hidden, weight, bias, labels)


_lse_and_true_logit = jax.custom_vjp(_lse_and_true_logit, nondiff_argnums=(0,))


def _lse_fwd(s, hidden, weight, bias, labels):
    lse, zy = _lse_forward(s, hidden, weight, bias, labels)
    return (lse, zy), (hidden, weight, bias, labels, lse)


def _lse_bwd(s, residuals, cotangents):
    hidden, weight, bias, labels, lse = residuals
    g_lse, g_zy = cotangents
    dtype = jnp.dtype(s.dtype)
    starts, fresh_from = s.class_starts()
    col = jnp.arange(s.class_chunk, dtype=jnp.int32)
    h_H = hidden.shape[1]

    def token_body(carry, xs):
        h_tH, y_t, lse_t, glse_t, gzy_t = xs

        def class_body(inner, cs):
            dh_tH, dw_HC, db_C = inner
            start, first = cs
            fresh = (col >= first)[None, :]
            z = _logit_tile(h_tH, weight, bias, start, s)
            p = jnp.exp(z - lse_t[:, None])
            onehot = (start + col)[None, :] == y_t[:, None]
            dz = glse_t[:, None] * p + jnp.where(onehot, gzy_t[:, None], 0.0)
            dz = jnp.where(fresh, dz, 0.0)
            w_Htc = jax.lax.dynamic_slice_in_dim(weight, start, s.class_chunk, axis=1)
            dh_tH = dh_tH + jnp.matmul(dz, w_Htc.astype(dtype).T)
            dw_tile = jax.lax.dynamic_slice_in_dim(dw_HC, start, s.class_chunk, axis=1)
            dw_tile = dw_tile + jnp.matmul(h_tH.astype(dtype).T, dz)
            dw_HC = jax.lax.dynamic_update_slice_in_dim(dw_HC, dw_tile, start, axis=1)
            if db_C is not None:
                db_tile = jax.lax.dynamic_slice_in_dim(db_C, start, s.class_chunk)
                db_C = jax.lax.dynamic_update_slice_in_dim(
                    db_C, db_tile + jnp.sum(dz, axis=0), start, axis=0
                )
            return (dh_tH, dw_HC, db_C), None

        dw_HC, db_C = carry
        dh_tH = jnp.zeros((s.token_chunk, h_H), dtype)
        (dh_tH, dw_HC, db_C), _ = jax.lax.scan(
            class_body, (dh_tH, dw_HC, db_C), (jnp.asarray(starts), jnp.asarray(fresh_from))
        )
        return (dw_HC, db_C), dh_tH

    db0 = None if bias is None else jnp.zeros((s.num_classes,), dtype)
    xs = tuple(
        _chunks(x, s) for x in (hidden, labels, lse, g_lse.astype(dtype), g_zy.astype(dtype))
    )
    (dw_HC, db_C), dh = jax.lax.scan(token_body, (jnp.zeros(weight.shape, dtype), db0), xs)
    dh = dh.reshape(s.padded_tokens, h_H)[: s.num_tokens]
    d_bias = None if bias is None else db_C.astype(bias.dtype)
    return dh.astype(hidden.dtype), dw_HC.astype(weight.dtype), d_bias, None


_lse_and_true_logit.defvjp(_lse_fwd, _lse_bwd)


# ----------------------------------------------------------------------------- fused kernel


def _fused_core(s: _Static, hidden, weight, bias, labels, coefs, with_grads: bool):
    """``sum_n (c_n lse_n - d_n z_{n, y_n} + e_n lse_n^2)`` for ``coefs = (c, d, e)`` and,
    if asked, its gradients w.r.t. hidden, weight, bias, plus ``lse`` and ``z_y`` ``[N]``."""
    dtype = jnp.dtype(s.dtype)
    tn, num_c = s.token_chunk, s.num_classes
    starts, fresh_from = s.class_starts()
    col = jnp.arange(s.class_chunk, dtype=jnp.int32)

    def body(carry, xs):
        h_tH, y_t, c_t, d_t, e_t = xs
        z = _matmul(h_tH, weight, dtype)
        if bias is not None:
            z = z + bias.astype(dtype)[None, :]
        lse_t = jax.nn.logsumexp(z, axis=1)
        zy_t = _finish_true_logit(_true_logit(z, y_t, jnp.ones((tn,), bool)), y_t, s)
        if not with_grads:
            return carry, (lse_t, zy_t)
        scale_t = c_t + 2.0 * e_t * lse_t
        w_T = weight.astype(dtype)
        h_T = h_tH.astype(dtype)

        # The softmax gradient tile by tile over the classes, read from the stored logits:
        # no second [tn, C] buffer, and the weight gradient is updated in place per tile.
        def class_body(inner, cs):
            dh_tH, dw_HC, db_C = inner
            start, first = cs
            z_tile = jax.lax.dynamic_slice_in_dim(z, start, s.class_chunk, axis=1)
            onehot = (start + col)[None, :] == y_t[:, None]
            dz = scale_t[:, None] * jnp.exp(z_tile - lse_t[:, None])
            dz = dz - jnp.where(onehot, d_t[:, None], 0.0)
            dz = jnp.where((col >= first)[None, :], dz, 0.0)
            w_Htc = jax.lax.dynamic_slice_in_dim(w_T, start, s.class_chunk, axis=1)
            dh_tH = dh_tH + jnp.matmul(dz, w_Htc.T)
            dw_tile = jax.lax.dynamic_slice_in_dim(dw_HC, start, s.class_chunk, axis=1)
            dw_HC = jax.lax.dynamic_update_slice_in_dim(
                dw_HC, dw_tile + jnp.matmul(h_T.T, dz), start, axis=1
            )
            if db_C is not None:
                db_tile = jax.lax.dynamic_slice_in_dim(db_C, start, s.class_chunk)
                db_C = jax.lax.dynamic_update_slice_in_dim(
                    db_C, db_tile + jnp.sum(dz, axis=0), start, axis=0
                )
            return (dh_tH, dw_HC, db_C), None

        dw_HC, db_C = carry
        dh_tH = jnp.zeros((tn, hidden.shape[1]), dtype)
        (dh_tH, dw_HC, db_C), _ = jax.lax.scan(
            class_body, (dh_tH, dw_HC, db_C), (jnp.asarray(starts), jnp.asarray(fresh_from))
        )
        return (dw_HC, db_C), (lse_t, zy_t, dh_tH)

    c_N, d_N, e_N = (x.astype(dtype) for x in coefs)
    xs = (_chunks(hidden, s), _chunks(labels, s), *(_chunks(x, s) for x in (c_N, d_N, e_N)))

    def total_of(lse_N, zy_N):
        # A coefficient of 0 (a token that is not counted) adds exactly 0.
        return jnp.sum(
            jnp.where(c_N != 0, c_N * lse_N, 0.0)
            - jnp.where(d_N != 0, d_N * zy_N, 0.0)
            + jnp.where(e_N != 0, e_N * jnp.square(lse_N), 0.0)
        )

    if not with_grads:
        _, (lse_t, zy_t) = jax.lax.scan(body, None, xs)
        lse_N, zy_N = (x.reshape(-1)[: s.num_tokens] for x in (lse_t, zy_t))
        return total_of(lse_N, zy_N), (lse_N, zy_N)
    db0 = None if bias is None else jnp.zeros((num_c,), dtype)
    (dw_HC, db_C), (lse_t, zy_t, dh) = jax.lax.scan(body, (jnp.zeros(weight.shape, dtype), db0), xs)
    lse_N, zy_N = (x.reshape(-1)[: s.num_tokens] for x in (lse_t, zy_t))
    dh = dh.reshape(s.padded_tokens, hidden.shape[1])[: s.num_tokens]
    return total_of(lse_N, zy_N), (lse_N, zy_N), (dh, dw_HC, db_C)


def _fused_total(s: _Static, hidden, weight, bias, labels, coefs):
    """``sum_n (c_n lse_n - d_n z_{n, y_n} + e_n lse_n^2)``, ``coefs = (c, d, e)``."""
    total, _ = _fused_core(s, hidden, weight, bias, labels, coefs, with_grads=False)
    return total


_fused_total = jax.custom_vjp(_fused_total, nondiff_argnums=(0,))


def _fused_fwd(s, hidden, weight, bias, labels, coefs):
    total, lse_zy, grads = _fused_core(s, hidden, weight, bias, labels, coefs, with_grads=True)
    return total, (grads, lse_zy)


def _fused_bwd(s, residuals, g):
    (dh, dw_HC, db_C), (lse_N, zy_N) = residuals
    h_dtype, w_dtype, b_dtype = s.grad_dtypes
    g = g.astype(jnp.dtype(s.dtype))
    d_bias = None if db_C is None else (g * db_C).astype(b_dtype)
    # The coefficients' gradients: what each one multiplies.
    return (
        (g * dh).astype(h_dtype),
        (g * dw_HC).astype(w_dtype),
        d_bias,
        None,
        (g * lse_N, -g * zy_N, g * jnp.square(lse_N)),
    )


_fused_total.defvjp(_fused_fwd, _fused_bwd)


# ----------------------------------------------------------------------------- public API


def _check_inputs(hidden, weight, labels, where, bias):
    hidden = _checks.as_array(hidden, "hidden")
    weight = _checks.as_array(weight, "weight")
    _checks.check_floating(hidden, "hidden")
    _checks.check_floating(weight, "weight")
    _checks.check_rank(hidden, (2, 3), "hidden", "[N, H] or [B, T, H]")
    _checks.check_rank(weight, 2, "weight", "[H, C]")
    _checks.check_shape(weight, (hidden.shape[-1], None), "weight", "[H, C] (H = hidden.shape[-1])")
    check_num_classes(weight.shape[1], "weight", weight.shape)
    labels = _checks.index_array(labels, "labels")
    doc = "[N]" if hidden.ndim == 2 else "[B, T]"
    _checks.check_shape(labels, hidden.shape[:-1], "labels", f"{doc} (= hidden.shape[:-1])")
    where = _checks.optional_mask(where, hidden.shape[:-1], "where", f"{doc} (= hidden.shape[:-1])")
    if bias is not None:
        bias = _checks.as_array(bias, "bias")
        _checks.check_floating(bias, "bias")
        _checks.check_shape(bias, (weight.shape[1],), "bias", "[C] (C from `weight`)")
    return hidden, weight, labels, where, bias


def _static(num_tokens, num_classes, dtype, token_chunk, class_chunk, fused, grad_dtypes):
    if fused:
        default_tn = max(8, FUSED_TILE_ELEMENTS // max(num_classes, 1) // 8 * 8)
    else:
        default_tn = DEFAULT_TOKEN_CHUNK
    tn = default_tn if token_chunk is None else int(token_chunk)
    tc = DEFAULT_CLASS_CHUNK if class_chunk is None else int(class_chunk)
    return _Static(
        num_tokens=num_tokens,
        num_classes=num_classes,
        token_chunk=max(1, min(tn, num_tokens)),
        class_chunk=max(1, min(tc, num_classes)),
        dtype=jnp.dtype(dtype).name,
        grad_dtypes=grad_dtypes,
    )


def _linear_ce(
    hidden,
    weight,
    labels,
    *,
    where,
    bias,
    reductions,
    reduction,
    label_smoothing,
    class_weights,
    z_loss,
    token_chunk,
    class_chunk,
    grad_in_forward,
    terms: bool,
):
    """The shared body: returns LossTerms (``terms``) or the reduced loss."""
    _checks.check_choice(reduction, reductions, "reduction")
    hidden, weight, labels, where, bias = _check_inputs(hidden, weight, labels, where, bias)
    num_classes = weight.shape[1]
    label_smoothing, z_loss, class_weights = check_loss_options(
        label_smoothing, z_loss, class_weights, num_classes
    )
    _checks.check_int(token_chunk, "token_chunk", 1, optional=True)
    _checks.check_int(class_chunk, "class_chunk", 1, optional=True)
    _checks.check_flag(grad_in_forward, "grad_in_forward")
    if grad_in_forward and reduction == "none":
        raise ValueError(
            "`reduction` 'none' is not available with `grad_in_forward=True` (its gradients "
            "are computed for a scalar loss); use the default recomputing backward pass"
        )
    return _linear_ce_core(
        hidden,
        weight,
        labels,
        where,
        bias,
        class_weights,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        token_chunk=token_chunk,
        class_chunk=class_chunk,
        grad_in_forward=grad_in_forward,
        terms=terms,
    )


@compiled(
    "reduction",
    "label_smoothing",
    "z_loss",
    "token_chunk",
    "class_chunk",
    "grad_in_forward",
    "terms",
    volatile=("label_smoothing", "z_loss"),
)
def _linear_ce_core(
    hidden,
    weight,
    labels,
    where,
    bias,
    class_weights,
    *,
    reduction,
    label_smoothing,
    z_loss,
    token_chunk,
    class_chunk,
    grad_in_forward,
    terms: bool,
):
    """:func:`_linear_ce` after its checks (one compiled program outside ``jit``)."""
    num_classes = weight.shape[1]
    seq_shape = hidden.shape[:-1]
    # [N, H] input: N sequences of one step each.
    shape_BT = seq_shape if hidden.ndim == 3 else (seq_shape[0], 1)
    num_tokens = int(np.prod(seq_shape))
    dtype = compute_dtype(
        jnp.float64 if jnp.float64 in (hidden.dtype, weight.dtype) else jnp.float32
    )
    valid_N = all_valid(where, seq_shape).reshape(num_tokens)
    labels_N = jnp.where(valid_N, labels.reshape(num_tokens), 0)
    weights_C = None if class_weights is None else class_weight_vector(class_weights, dtype)
    w_N = class_weight_of(labels_N, weights_C, dtype)
    if weights_C is not None and not label_smoothing:
        # A class weight of 0 is masking (without smoothing nothing else is left).
        valid_N = valid_N & (w_N != 0)
        labels_N = jnp.where(valid_N, labels_N, 0)
    w_N = jnp.where(valid_N, w_N, 0.0)
    weight_BT = w_N.reshape(shape_BT)
    # First where: nothing from a masked token (NaN hidden state, garbage label) enters the math.
    hidden_NH = jnp.where(valid_N[:, None], hidden.reshape(num_tokens, hidden.shape[-1]), 0)

    if num_tokens == 0:
        loss_BT = jnp.zeros(shape_BT, dtype)
        return _reduce(loss_BT, weight_BT, reduction, terms, seq_shape)

    s = _static(
        num_tokens,
        num_classes,
        dtype,
        token_chunk,
        class_chunk,
        grad_in_forward,
        (hidden.dtype.name, weight.dtype.name, None if bias is None else bias.dtype.name),
    )
    # Label smoothing's term (a / C) sum_c w_c (lse - z_c) = smooth_lse * lse - smooth_N:
    # its part linear in the logits is plain JAX, one matmul with a [H] vector.
    smooth_lse = 0.0
    smooth_N = None
    if label_smoothing:
        scale = label_smoothing / num_classes
        if weights_C is None:
            smooth_lse = label_smoothing
            w_H = jnp.sum(weight.astype(dtype), axis=1)
            b_sum = None if bias is None else jnp.sum(bias.astype(dtype))
        else:
            smooth_lse = scale * jnp.sum(weights_C)
            has_w = weights_C != 0
            # where, not multiplication: a zero-weight class's column never enters the math.
            w_H = jnp.sum(
                jnp.where(has_w[None, :], weight.astype(dtype), 0.0) * weights_C[None, :], axis=1
            )
            b_sum = (
                None
                if bias is None
                else jnp.sum(jnp.where(has_w, bias.astype(dtype), 0.0) * weights_C)
            )
        smooth_N = jnp.matmul(hidden_NH.astype(dtype), w_H)
        if b_sum is not None:
            smooth_N = smooth_N + b_sum
        smooth_N = scale * smooth_N
    keep = 1.0 - label_smoothing
    has_w_N = w_N != 0

    if not grad_in_forward:
        lse_N, zy_N = _lse_and_true_logit(s, hidden_NH, weight, bias, labels_N)
        # where, not multiplication: a zero weight never meets an infinite loss.
        l_N = jnp.where(has_w_N, (keep * w_N) * (lse_N - zy_N), 0.0)
        if smooth_N is not None:
            l_N = l_N + smooth_lse * lse_N - smooth_N
        if z_loss:
            l_N = l_N + z_loss * jnp.where(has_w_N, w_N * jnp.square(lse_N), 0.0)
        # Second where: masked tokens give exactly 0, in value and gradient.
        loss_N = jnp.where(valid_N, l_N, 0.0)
        return _reduce(loss_N.reshape(shape_BT), weight_BT, reduction, terms, seq_shape)

    # grad_in_forward: total = sum_n r_n l_n, r_n the coefficient the reduction gives token n.
    weight_B = jnp.sum(weight_BT, axis=1)
    if reduction == "mean_over_time":
        r_BT = jnp.broadcast_to(safe_divide(jnp.ones_like(weight_B), weight_B)[:, None], shape_BT)
        r_N = jnp.where(valid_N, r_BT.reshape(num_tokens), 0.0)
    else:
        r_N = valid_N.astype(dtype)
    coefs = (
        r_N * (keep * w_N + smooth_lse),
        r_N * (keep * w_N),
        r_N * (z_loss * w_N),
    )
    total = _fused_total(s, hidden_NH, weight, bias, labels_N, coefs)
    if smooth_N is not None:
        total = total - jnp.sum(jnp.where(valid_N, r_N * smooth_N, 0.0))
    if reduction == "sum":
        return total
    if reduction == "mean_over_tokens":
        count = jnp.sum(weight_B)
    else:
        count = jnp.sum((weight_B != 0).astype(dtype))  # a NaN weight counts (NaN loss)
    result = LossTerms(total, count)
    return result if terms else result.loss


def _reduce(loss_BT, weight_BT, reduction, terms, seq_shape):
    if terms:
        return labeling_terms(loss_BT, weight_BT, reduction)
    if reduction == "none":
        return loss_BT.reshape(seq_shape)
    return reduce_labeling(loss_BT, weight_BT, reduction)


def linear_cross_entropy(
    hidden: jax.Array,
    weight: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    bias: jax.Array | None = None,
    reduction: str = "sum_over_time",
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
    token_chunk: int | None = None,
    class_chunk: int | None = None,
    grad_in_forward: bool = False,
) -> jax.Array:
    """Cross-entropy of ``hidden @ weight + bias`` without materialising the logits.

    Equal (within float32 rounding) to
    ``sequence_labeling_loss(hidden @ weight + bias, labels, where=where, ...)``,
    values and gradients w.r.t. ``hidden``, ``weight``, ``bias`` and
    ``class_weights``, with temporary memory ``O(tn * tc + H * C)`` instead of
    ``O(N * C)``.

    ``[N, H]`` input (tokens with no time axis) is read as N sequences of one
    step each, so every reduction is defined: ``"sum_over_time"``,
    ``"mean_over_time"`` and ``"mean_over_tokens"`` are all the mean over the
    valid tokens (with ``class_weights``: ``"mean_over_tokens"`` is the
    weighted mean ``sum_n w_n L_n / sum_n w_n``, ``"sum_over_time"`` divides
    ``sum_n w_n L_n`` by the number of tokens with ``w_n > 0`` and
    ``"mean_over_time"`` is the unweighted mean of ``L_n`` over them).

    Args:
      hidden: float ``[B, T, H]`` (or ``[N, H]``); any value (NaN included) at
        masked positions.
      weight: float ``[H, C]``, the output projection.
      labels: integer ``[B, T]`` (``[N]``), any integer dtype; any int32 value at
        masked positions.
      where: optional bool ``[B, T]`` (``[N]``), True where a token counts
        (default: every token).
      bias: optional float ``[C]``.
      reduction: one of ``jaxseq.REDUCTIONS``, as in
        :func:`jaxseq.sequence_labeling_loss` (PyTorch equivalents there):
        ``"sum_over_time"`` (default), ``"mean_over_time"``,
        ``"mean_over_tokens"`` (every token weighs the same, the usual
        language-model loss: ``CrossEntropyLoss(ignore_index=...)``'s mean),
        ``"sum"`` or ``"none"``.
      label_smoothing, class_weights, z_loss: as in :func:`jaxseq.cross_entropy`.
      token_chunk: tokens per tile ``tn``, a Python int ``>= 1`` (default 2048;
        with ``grad_in_forward``, ``2**24 // C`` rounded down to a multiple of
        8). Need not divide N.
      class_chunk: classes per tile ``tc``, a Python int ``>= 1`` (default
        4096). Need not divide C.
        With ``grad_in_forward``, the logits are computed for all classes of a
        token chunk at once and the gradient is formed ``tc`` classes at a time.
      grad_in_forward: compute the gradients already in the forward pass of a
        ``jax.grad`` (see the module docstring): the fastest choice for a
        training step; without ``grad`` it changes nothing. Not with
        ``reduction="none"``.

    Returns:
      float32 scalar (float64 for float64 inputs); ``labels.shape`` for
      ``"none"``.

    >>> import jax, jax.numpy as jnp, jaxseq as js
    >>> hidden = jax.random.normal(jax.random.key(0), (2, 3, 4))      # [B, T, H]
    >>> weight = jax.random.normal(jax.random.key(1), (4, 10))        # [H, C]
    >>> labels = jnp.array([[1, 2, 3], [4, 5, 0]])
    >>> where = js.length_mask(jnp.array([3, 2]), 3)
    >>> chunked = js.linear_cross_entropy(hidden, weight, labels, where=where, class_chunk=4)
    >>> plain = js.sequence_labeling_loss(hidden @ weight, labels, where=where)
    >>> bool(jnp.allclose(chunked, plain, rtol=1e-5))
    True
    """
    return _linear_ce(
        hidden,
        weight,
        labels,
        where=where,
        bias=bias,
        reductions=REDUCTIONS,
        reduction=reduction,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
        z_loss=z_loss,
        token_chunk=token_chunk,
        class_chunk=class_chunk,
        grad_in_forward=grad_in_forward,
        terms=False,
    )


def linear_cross_entropy_terms(
    hidden: jax.Array,
    weight: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    bias: jax.Array | None = None,
    reduction: str = "sum_over_time",
    label_smoothing: float = 0.0,
    class_weights: jax.Array | None = None,
    z_loss: float = 0.0,
    token_chunk: int | None = None,
    class_chunk: int | None = None,
    grad_in_forward: bool = False,
) -> LossTerms:
    """:func:`linear_cross_entropy` as exact ``LossTerms(total, count)``.

    The terms of :func:`jaxseq.sequence_labeling_loss_terms` (``reduction`` one
    of ``jaxseq.losses.TERM_REDUCTIONS``: ``"sum_over_time"``,
    ``"mean_over_time"``, ``"mean_over_tokens"``; ``[N, H]`` input is N
    sequences of one step): sum them over microbatches or devices and divide
    once. ``jaxseq.training.steps`` differentiates ``total``, which works with
    ``grad_in_forward=True``.
    """
    return _linear_ce(
        hidden,
        weight,
        labels,
        where=where,
        bias=bias,
        reductions=TERM_REDUCTIONS,
        reduction=reduction,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
        z_loss=z_loss,
        token_chunk=token_chunk,
        class_chunk=class_chunk,
        grad_in_forward=grad_in_forward,
        terms=True,
    )
