"""Sequence classifier and sequence labeler: configs, ``init`` and ``apply``.

Notation: B batch, T time, V vocabulary, E embedding (input layer) width, D
input features, H hidden, H' = H (2H when bidirectional), C classes.

Both models are the same encoder with a different head::

    inputs --input layer--> x [B, T, E or D] --stacked (bi)RNN--> hs [B, T, H']
    classifier: pool(hs over valid steps) [B, H'] @ V + c -> logits [B, C]
    labeler:    hs @ V + c                               -> logits [B, T, C]

with ``y_hat = softmax(V s + c)`` in the notation of ``docs/semantics.md``. The input
layer is an embedding table for token ids, and for dense features either an
affine layer ``x W + b`` or nothing.

The labeler's output layer is a per-step softmax, or with ``config.crf`` a
linear-chain CRF (:mod:`jaxseq.crf`) over the logits as its emissions. Either
way :func:`labeler_loss` is its negative log-likelihood and
:func:`labeler_predict` its tags (per-step argmax, or the Viterbi path).

Everything is a pure function of a params pytree (nested dicts and lists of
arrays, see :func:`classifier_init`) and a :class:`SequenceModelConfig`, which
is static: pass it with ``static_argnames="config"`` or close over it::

    apply = jax.jit(classifier_apply, static_argnames=("config", "train"))

The logits feed :func:`jaxseq.sequence_classification_loss` and
:func:`jaxseq.sequence_labeling_loss` (with ``where=length_mask(lengths, T)``)
directly, or :func:`labeler_loss` and :func:`labeler_predict`, which also cover
the CRF output layer.

Padding: whatever the inputs hold at padded steps (any token id, NaN features)
changes neither the outputs at valid steps nor any gradient: padded ids are
replaced by 0 and padded features by zeros before the input layer.

Integer arguments (token ids ``inputs``, ``lengths``) may have any integer dtype
(int8 ... int64, uint8 ... uint64) and are converted to int32 exactly. Bad values
are never a plausible number:

* concrete (host) arguments are checked: ``lengths`` outside ``[0, T]``, or a token
  id at a valid step outside ``[0, vocab_size)``, is a ``ValueError`` naming the
  argument (ids at padded steps are not looked at);
* under ``jit`` (traced arguments) a valid token id outside the vocabulary gives a
  NaN embedding, so NaN logits from that step on (the labeler) or for the whole
  sequence (the classifier), and a length outside ``[0, T]`` makes every logit of
  its sequence NaN; the other sequences are unaffected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import _checks, cells, crf, losses, masks, methods, parallel_cells, pooling, recurrence

CELLS = ("elman", "gru", "lstm", "mingru", "minlstm", "lru")
POOLINGS = ("last", "mean", "max")

__all__ = [
    "CELLS",
    "POOLINGS",
    "SequenceModelConfig",
    "classifier_apply",
    "classifier_init",
    "encode",
    "labeler_apply",
    "labeler_init",
    "labeler_loss",
    "labeler_predict",
    "make_cell",
]


def _check_string(value, name: str) -> None:
    # A value of the wrong type is a TypeError; a string that is not a choice, a ValueError.
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SequenceModelConfig:
    """The static architecture of a sequence classifier or labeler.

    Exactly one input kind:

    * token ids: ``vocab_size`` (V) and ``embed_dim`` (E); inputs are integer
      ``[B, T]`` looked up in an embedding table ``[V, E]``;
    * dense features: ``input_size`` (D); inputs are float ``[B, T, D]``, fed
      through an affine layer ``[D, E]`` when ``embed_dim`` is set, or straight
      to the RNN when it is None.

    Attributes:
      num_classes: C, the number of output classes (>= 2).
      hidden_size: H, the RNN state size of each direction.
      cell: ``"elman"``, ``"gru"`` or ``"lstm"`` (see :mod:`jaxseq.cells`), or a
        parallel-in-time cell ``"mingru"``, ``"minlstm"``, ``"lru"`` (see
        :mod:`jaxseq.parallel_cells`; their default settings).
      num_layers: the number of stacked RNN layers (>= 1).
      bidirectional: every layer runs both directions and concatenates them
        (H' = 2H).
      vocab_size, embed_dim, input_size: the input, as above.
      dropout_rate: variational dropout on the inputs of layers 2..num_layers
        (between layers), only when ``train=True``.
      embed_dropout_rate: variational dropout (one mask per sequence, shared by
        its time steps) on the input layer's output, only when ``train=True``.
      pooling: how the classifier summarises the valid steps: ``"last"`` (the
        final state: forward's state at the last valid step, and with
        ``bidirectional`` the backward direction's state at step 0), ``"mean"``
        or ``"max"`` over valid steps. None (the default) means ``"last"`` for
        the classifier; the labeler does not pool, and rejects a config that sets it.
      forget_bias: the initial forget-gate bias of an LSTM (``cells.lstm``);
        None means 1.0. Only for ``cell="lstm"`` (an error for other cells).
      method: how the stack runs (:mod:`jaxseq.methods`): ``jaxseq.Scan(...)``,
        ``jaxseq.Fused()``, ``jaxseq.Parallel(...)`` or None for the fastest
        correct engine for the cell and backend. Speed and memory only: the
        values and gradients agree up to float rounding.
      crf: the labeler's output layer is a linear-chain CRF over its logits
        (:mod:`jaxseq.crf`; :func:`labeler_init` adds its params under
        ``"crf"``) instead of a per-step softmax. Only for the labeler: the
        classifier rejects a config that sets it.
    """

    num_classes: int
    hidden_size: int
    cell: str = "lstm"
    num_layers: int = 1
    bidirectional: bool = False
    vocab_size: int | None = None
    embed_dim: int | None = None
    input_size: int | None = None
    dropout_rate: float = 0.0
    embed_dropout_rate: float = 0.0
    pooling: str | None = None
    forget_bias: float | None = None
    method: methods.Method | None = None
    crf: bool = False

    def __post_init__(self):
        _checks.check_int(self.num_classes, "num_classes", 2)
        _checks.check_int(self.hidden_size, "hidden_size", 1)
        _check_string(self.cell, "cell")
        _checks.check_choice(self.cell, CELLS, "cell")
        _checks.check_int(self.num_layers, "num_layers", 1)
        _checks.check_flag(self.bidirectional, "bidirectional")
        _checks.check_int(self.vocab_size, "vocab_size", 1, optional=True)
        _checks.check_int(self.embed_dim, "embed_dim", 1, optional=True)
        _checks.check_int(self.input_size, "input_size", 1, optional=True)
        if (self.vocab_size is None) == (self.input_size is None):
            raise ValueError(
                "set exactly one of `vocab_size` (token-id inputs) and `input_size` "
                f"(dense-feature inputs), got vocab_size={self.vocab_size!r}, "
                f"input_size={self.input_size!r}"
            )
        if self.vocab_size is not None and self.embed_dim is None:
            raise ValueError("`embed_dim` is required with `vocab_size` (token-id inputs)")
        _checks.check_rate(self.dropout_rate, "dropout_rate")
        _checks.check_rate(self.embed_dropout_rate, "embed_dropout_rate")
        if self.pooling is not None:
            _check_string(self.pooling, "pooling")
            _checks.check_choice(self.pooling, POOLINGS, "pooling")
        if self.forget_bias is not None:
            _checks.check_float(self.forget_bias, "forget_bias")
            if self.cell != "lstm":
                raise ValueError(
                    f"`forget_bias` is an option of the lstm cell, got cell={self.cell!r}; "
                    "leave it unset"
                )
        _checks.check_flag(self.crf, "crf")
        methods.resolve_method(make_cell(self), self.method)

    @property
    def tokens(self) -> bool:
        """True for token-id inputs, False for dense features."""
        return self.vocab_size is not None

    @property
    def rnn_input_size(self) -> int:
        """The feature size the first RNN layer sees (E, or D without input layer)."""
        if self.embed_dim is not None:
            return self.embed_dim
        assert self.input_size is not None  # __post_init__: no embed_dim means input_size
        return self.input_size

    @property
    def output_size(self) -> int:
        """H', the width of the RNN outputs: H, or 2H when bidirectional."""
        return self.hidden_size * (2 if self.bidirectional else 1)


def make_cell(config: SequenceModelConfig) -> cells.Cell:
    """The :class:`jaxseq.cells.Cell` that ``config`` names."""
    if config.cell == "lstm":
        forget_bias = 1.0 if config.forget_bias is None else float(config.forget_bias)
        return cells.lstm(config.hidden_size, forget_bias=forget_bias)
    parallel: dict[str, Callable[[int], cells.Cell]] = {
        "mingru": parallel_cells.mingru,
        "minlstm": parallel_cells.minlstm,
        "lru": parallel_cells.lru,
    }
    if config.cell in parallel:
        return parallel[config.cell](config.hidden_size)
    return {"elman": cells.elman, "gru": cells.gru}[config.cell](config.hidden_size)


def _dense_init(key, fan_in: int, fan_out: int, w_name: str, b_name: str):
    # LeCun normal weights (variance 1/fan_in), zero bias.
    w = jax.random.normal(key, (fan_in, fan_out), jnp.float32) / jnp.sqrt(float(fan_in))
    return {w_name: w, b_name: jnp.zeros((fan_out,), jnp.float32)}


def _init(key, config: SequenceModelConfig) -> dict:
    if not isinstance(config, SequenceModelConfig):
        raise TypeError(f"`config` must be a SequenceModelConfig, got {type(config).__name__}")
    key_in, key_rnn, key_out = jax.random.split(key, 3)
    params: dict[str, Any] = {}
    if config.tokens:
        assert config.vocab_size is not None and config.embed_dim is not None  # __post_init__
        # N(0, 1), as torch.nn.Embedding.
        params["embed"] = {
            "E": jax.random.normal(key_in, (config.vocab_size, config.embed_dim), jnp.float32)
        }
    elif config.embed_dim is not None:
        assert config.input_size is not None  # __post_init__: dense inputs set input_size
        params["input"] = _dense_init(key_in, config.input_size, config.embed_dim, "W", "b")
    params["rnn"] = recurrence.init_stack(
        key_rnn,
        make_cell(config),
        config.rnn_input_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
    )
    params["output"] = _dense_init(key_out, config.output_size, config.num_classes, "V", "c")
    return params


def _check_classifier_config(config) -> None:
    if isinstance(config, SequenceModelConfig) and config.crf:
        raise ValueError(
            "a sequence classifier has no CRF output layer, got crf=True; leave `crf` "
            "unset (it is an option of the labeler)"
        )


def classifier_init(key: jax.Array, config: SequenceModelConfig) -> dict:
    """Initial parameters of a sequence classifier, float32.

    Args:
      key: a PRNG key.
      config: the architecture.

    Returns:
      A dict pytree:

      * ``"embed": {"E": [V, E]}`` for token ids, or ``"input": {"W": [D, E],
        "b": [E]}`` for dense features with ``embed_dim`` (absent otherwise);
      * ``"rnn"``: the list of layer params of :func:`jaxseq.recurrence.init_stack`;
      * ``"output": {"V": [H', C], "c": [C]}``.
    """
    _check_classifier_config(config)
    return _init(key, config)


def _check_labeler_config(config) -> None:
    if isinstance(config, SequenceModelConfig) and config.pooling is not None:
        raise ValueError(
            f"a sequence labeler does not pool its outputs, got pooling={config.pooling!r}; "
            "leave `pooling` unset (it is an option of the classifier)"
        )


def labeler_init(key: jax.Array, config: SequenceModelConfig) -> dict:
    """Initial parameters of a sequence labeler, float32.

    The layout of :func:`classifier_init`; with ``config.crf`` also ``"crf":
    {"transitions": [C, C], "start": [C], "end": [C]}`` (:func:`jaxseq.crf_init`,
    from a key of its own: the other params are those of the same config without
    ``crf``).
    """
    _check_labeler_config(config)
    params = _init(key, config)
    if config.crf:
        params["crf"] = crf.crf_init(jax.random.fold_in(key, 1), config.num_classes)
    return params


def _affine(x, w, b):
    """``x [..., K] @ w [K, N] + b [N]`` without implicit rank promotion."""
    out = x @ w
    return out + b.reshape((1,) * (out.ndim - 1) + b.shape)


def _check_inputs(config: SequenceModelConfig, inputs, lengths):
    """``(inputs, lengths, bad)``: ids and lengths as int32 (host values checked), and
    ``bad [B]`` marking traced lengths outside ``[0, T]`` (None for concrete lengths)."""
    inputs = _checks.as_array(inputs, "inputs")
    lengths = _checks.as_array(lengths, "lengths")
    if config.tokens:
        _checks.check_rank(inputs, 2, "inputs", "[B, T] (token ids)")
        _checks.check_integer(inputs, "inputs")
    else:
        _checks.check_rank(inputs, 3, "inputs", "[B, T, D] (dense features)")
        _checks.check_floating(inputs, "inputs")
        _checks.check_shape(
            inputs,
            (None, None, config.input_size),
            "inputs",
            f"[B, T, D] with D = config.input_size = {config.input_size}",
        )
    _checks.check_integer(lengths, "lengths")
    _checks.check_shape(lengths, (inputs.shape[0],), "lengths", "[B] (B from `inputs`)")
    steps = inputs.shape[1]
    lengths = masks.lengths_array(lengths, steps)
    bad_B = masks.out_of_range(lengths, steps)
    if config.tokens:
        assert config.vocab_size is not None  # __post_init__: token inputs set vocab_size
        if bad_B is None and _checks.is_concrete(inputs):
            # Host ids: only the valid steps are looked at (padding may hold anything).
            ids = np.asarray(inputs)
            valid = np.arange(steps)[None, :] < np.asarray(lengths)[:, None]
            inputs = _checks.index_array(
                np.where(valid, ids, np.zeros((), ids.dtype)),
                "inputs",
                low=0,
                high=config.vocab_size - 1,
                what=" (vocab_size - 1) at valid steps",
            )
        else:
            # Traced: an id that does not fit int32 becomes -1, out of range (NaN).
            inputs = _checks.index_array(inputs, "inputs")
    return inputs, lengths, bad_B


def _input_layer(params, config: SequenceModelConfig, inputs, mask_BT):
    """``inputs`` -> float ``[B, T, E or D]``; padded steps are sanitised first."""
    if config.tokens:
        table_VE = params["embed"]["E"]
        ids_BT = inputs  # int32
        in_range_BT = (ids_BT >= 0) & (ids_BT < config.vocab_size)
        safe_BT = jnp.where(mask_BT & in_range_BT, ids_BT, jnp.zeros((), jnp.int32))
        x_BTE = jnp.take(table_VE, safe_BT, axis=0)
        # A valid id outside the vocabulary is loud (NaN), never another token's vector.
        loud_BT = mask_BT & ~in_range_BT
        return jnp.where(loud_BT[..., None], jnp.nan, x_BTE)
    first = params["input"]["W"] if "input" in params else params["rnn"][0]
    dtype = jax.tree.leaves(first)[0].dtype
    x_BTD = jnp.where(mask_BT[..., None], inputs.astype(dtype), jnp.zeros((), dtype))
    if "input" in params:
        return _affine(x_BTD, params["input"]["W"], params["input"]["b"])
    return x_BTD


def encode(
    params: dict,
    config: SequenceModelConfig,
    inputs: jax.Array,
    lengths: jax.Array,
    *,
    key: jax.Array | None = None,
    train: bool = False,
):
    """The shared encoder: input layer, then the stacked (bi)RNN.

    Args:
      params: from :func:`classifier_init` / :func:`labeler_init`.
      config: the architecture (static).
      inputs: integer ``[B, T]`` token ids, or float ``[B, T, D]`` features.
      lengths: integer ``[B]``, ``0 <= lengths <= T`` (see the module doc for bad values).
      key: PRNG key for dropout; required when ``train`` and a rate is > 0.
      train: apply dropout.

    Returns:
      ``(final_carries, hs)``: the per-layer final carries of
      :func:`jaxseq.recurrence.stack` (leaves ``[B, ...]``) and ``hs`` float
      ``[B, T, H']``, zero at padded steps.
    """
    finals, hs, _, bad_B = _encode(params, config, inputs, lengths, key=key, train=train)
    return masks.poison((finals, hs), bad_B)


def _encode(params, config, inputs, lengths, *, key, train):
    """:func:`encode`, also returning the int32 lengths and the rows to poison."""
    if not isinstance(config, SequenceModelConfig):
        raise TypeError(f"`config` must be a SequenceModelConfig, got {type(config).__name__}")
    _checks.check_flag(train, "train")
    inputs, lengths, bad_B = _check_inputs(config, inputs, lengths)
    if bad_B is not None:
        lengths = jnp.clip(lengths, 0, inputs.shape[1])
    uses_dropout = train and (config.dropout_rate > 0 or config.embed_dropout_rate > 0)
    if uses_dropout and key is None:
        raise ValueError("`key` is required when train=True and a dropout rate is > 0")
    key_embed, key_stack = jax.random.split(key) if uses_dropout else (None, None)

    mask_BT = masks._mask(lengths, inputs.shape[1])
    x_BTE = _input_layer(params, config, inputs, mask_BT)
    if train and config.embed_dropout_rate > 0:
        x_BTE = recurrence.variational_dropout(x_BTE, rate=config.embed_dropout_rate, key=key_embed)
    finals, hs = recurrence.stack(
        make_cell(config),
        params["rnn"],
        x_BTE,
        lengths,
        bidirectional=config.bidirectional,
        dropout_rate=config.dropout_rate,
        key=key_stack,
        train=train and config.dropout_rate > 0,
        method=config.method,
    )
    return finals, hs, lengths, bad_B


def _final_state(config: SequenceModelConfig, carry) -> jax.Array:
    """The last layer's final carry -> ``[B, H']`` outputs."""
    output = jax.vmap(make_cell(config).output)
    if config.bidirectional:
        carry_f, carry_b = carry
        return jnp.concatenate([output(carry_f), output(carry_b)], axis=-1)
    return output(carry)


def classifier_apply(
    params: dict,
    config: SequenceModelConfig,
    inputs: jax.Array,
    lengths: jax.Array,
    *,
    key: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Sequence classifier logits: one prediction per sequence.

    ``logits = pool(hs) @ V + c`` with ``pool`` over the valid steps as
    ``config.pooling`` says; a sequence of length 0 pools to zeros (logits c).

    Args:
      params: from :func:`classifier_init`.
      config: the architecture (static under ``jit``).
      inputs: integer ``[B, T]`` token ids (any id at padded steps), or float
        ``[B, T, D]`` features.
      lengths: integer ``[B]`` in ``[0, T]`` (see the module doc for bad values).
      key: PRNG key for dropout (keyword-only); needed only when ``train``.
      train: apply dropout.

    Returns:
      float ``[B, C]`` logits, for :func:`jaxseq.sequence_classification_loss`.

    >>> import jax, jax.numpy as jnp, jaxseq.models as jm
    >>> cfg = jm.SequenceModelConfig(num_classes=3, hidden_size=4, vocab_size=10, embed_dim=5)
    >>> params = jm.classifier_init(jax.random.key(0), cfg)
    >>> ids, lengths = jnp.array([[1, 2, 3], [4, 5, 0]]), jnp.array([3, 2])
    >>> jm.classifier_apply(params, cfg, ids, lengths).shape
    (2, 3)
    """
    _check_classifier_config(config)
    final_carries, hs_BTH, lengths, bad_B = _encode(
        params, config, inputs, lengths, key=key, train=train
    )
    kind = config.pooling or "last"
    if kind == "last":
        pooled_BH = _final_state(config, final_carries[-1])
    else:
        where_BT = masks._mask(lengths, hs_BTH.shape[1])
        pool = pooling.masked_mean if kind == "mean" else pooling.masked_max
        pooled_BH = pool(hs_BTH, where=where_BT)
    logits_BC = _affine(pooled_BH, params["output"]["V"], params["output"]["c"])
    return masks.poison(logits_BC, bad_B)


def labeler_apply(
    params: dict,
    config: SequenceModelConfig,
    inputs: jax.Array,
    lengths: jax.Array,
    *,
    key: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """Sequence labeler logits: one prediction per time step.

    ``logits[b, t] = hs[b, t] @ V + c``. At padded steps ``hs`` is zero, so the
    logits there are ``c``; the labeling losses ignore them through ``where``.

    Args:
      params: from :func:`labeler_init`.
      config: the architecture (static under ``jit``); ``pooling`` must be unset.
      inputs: integer ``[B, T]`` token ids, or float ``[B, T, D]`` features.
      lengths: integer ``[B]`` in ``[0, T]`` (see the module doc for bad values).
      key: PRNG key for dropout (keyword-only); needed only when ``train``.
      train: apply dropout.

    Returns:
      float ``[B, T, C]`` logits, for :func:`jaxseq.sequence_labeling_loss` with
      ``where=jaxseq.length_mask(lengths, T)``, or :func:`jaxseq.models.labeler_loss`
      and :func:`jaxseq.models.labeler_predict` (with ``config.crf`` they are the CRF's
      emissions).

    >>> import jax, jax.numpy as jnp, jaxseq as js, jaxseq.models as jm
    >>> cfg = jm.SequenceModelConfig(num_classes=3, hidden_size=4, cell="gru", input_size=2)
    >>> params = jm.labeler_init(jax.random.key(0), cfg)
    >>> xs, lengths = jnp.ones((2, 4, 2)), jnp.array([4, 1])
    >>> logits = jm.labeler_apply(params, cfg, xs, lengths)
    >>> logits.shape
    (2, 4, 3)
    >>> labels, where = jnp.zeros((2, 4), jnp.int32), js.length_mask(lengths, 4)
    >>> round(float(js.sequence_labeling_loss(logits, labels, where=where)), 2) > 0
    True
    """
    _check_labeler_config(config)
    _, hs_BTH, _, bad_B = _encode(params, config, inputs, lengths, key=key, train=train)
    logits_BTC = _affine(hs_BTH, params["output"]["V"], params["output"]["c"])
    return masks.poison(logits_BTC, bad_B)


def _check_logits_lengths(config: SequenceModelConfig, logits, lengths):
    """``(logits [B, T, C], where [B, T])``: shapes checked against ``config``, and the
    prefix mask of ``lengths`` (host values outside ``[0, T]`` are a ``ValueError``)."""
    if not isinstance(config, SequenceModelConfig):
        raise TypeError(f"`config` must be a SequenceModelConfig, got {type(config).__name__}")
    _check_labeler_config(config)
    logits = _checks.as_array(logits, "logits")
    _checks.check_rank(logits, 3, "logits", "[B, T, C]")
    _checks.check_shape(
        logits,
        (None, None, config.num_classes),
        "logits",
        f"[B, T, C] with C = config.num_classes = {config.num_classes}",
    )
    lengths = _checks.as_array(lengths, "lengths")
    _checks.check_integer(lengths, "lengths")
    _checks.check_shape(lengths, (logits.shape[0],), "lengths", "[B] (B from `logits`)")
    return logits, masks.length_mask(lengths, logits.shape[1])


def _crf_params(params) -> dict:
    if not isinstance(params, dict) or "crf" not in params:
        raise ValueError(
            "`params` has no 'crf' entry, but config.crf is True: initialise them with "
            "labeler_init(key, config) for that config"
        )
    return params["crf"]


def labeler_loss(
    params: dict,
    config: SequenceModelConfig,
    logits: jax.Array,
    labels: jax.Array,
    lengths: jax.Array,
    *,
    reduction: str = "sum_over_time",
) -> jax.Array:
    """The labeler's negative log-likelihood of ``labels``, for either output layer.

    * softmax (``config.crf`` False): the per-step cross-entropy,
      :func:`jaxseq.sequence_labeling_loss`;
    * CRF: ``-log p(labels | logits)`` of each sequence, :func:`jaxseq.crf_loss`
      with ``params["crf"]``.

    Both with ``where=jaxseq.length_mask(lengths, T)``. The reductions are the names
    of ``jaxseq.REDUCTIONS`` and mean the same for both layers (a sequence's NLL is
    the sum of its per-step losses for the softmax): ``"sum_over_time"`` the mean over
    sequences of their NLL, ``"mean_over_tokens"`` the NLL per valid token, ``"sum"``
    the total. Only ``"none"`` differs in shape: ``[B, T]`` per step for the softmax,
    ``[B]`` per sequence for the CRF.

    Args:
      params: from :func:`labeler_init` (with ``"crf"`` when ``config.crf``).
      config: the architecture (static under ``jit``).
      logits: float ``[B, T, C]``, from :func:`labeler_apply`; padded steps may hold
        anything.
      labels: integer ``[B, T]``, in ``[0, C)`` at valid steps (host values outside
        are a ``ValueError`` naming ``labels``); padded steps may hold anything (e.g. -1).
      lengths: integer ``[B]`` in ``[0, T]``, the valid steps of each sequence.
      reduction: one of ``jaxseq.REDUCTIONS``.

    Returns:
      float32 scalar (``"none"``: as above).

    >>> import jax, jax.numpy as jnp, jaxseq.models as jm
    >>> cfg = jm.SequenceModelConfig(num_classes=3, hidden_size=4, input_size=2, crf=True)
    >>> params = jm.labeler_init(jax.random.key(0), cfg)
    >>> xs, lengths = jnp.ones((2, 4, 2)), jnp.array([4, 1])
    >>> logits = jm.labeler_apply(params, cfg, xs, lengths)
    >>> labels = jnp.array([[0, 1, 2, 1], [2, -1, -1, -1]])
    >>> bool(jm.labeler_loss(params, cfg, logits, labels, lengths) > 0)
    True
    """
    logits, where = _check_logits_lengths(config, logits, lengths)
    crf_params = _crf_params(params) if config.crf else None
    labels = _checks.as_array(labels, "labels")
    if _checks.is_concrete(labels) and _checks.is_concrete(where):
        # Host labels, for both output layers: a label outside [0, C) at a valid step
        # is a ValueError naming `labels`.
        _checks.check_integer(labels, "labels")
        _checks.check_shape(labels, where.shape, "labels", "[B, T] (= logits.shape[:2])")
        host = np.where(np.asarray(where), np.asarray(labels), 0)
        high, what = config.num_classes - 1, " (num_classes - 1) at valid steps"
        _checks.index_array(host, "labels", low=0, high=high, what=what)
    if crf_params is None:
        return losses.sequence_labeling_loss(logits, labels, where=where, reduction=reduction)
    return crf.crf_loss(logits, labels, crf_params, where=where, reduction=reduction)


def labeler_predict(
    params: dict,
    config: SequenceModelConfig,
    logits: jax.Array,
    lengths: jax.Array,
) -> jax.Array:
    """The labeler's predicted tags: each step's argmax for the softmax, the Viterbi
    path (:func:`jaxseq.crf_decode` with ``params["crf"]``) for the CRF.

    Args:
      params: from :func:`labeler_init` (with ``"crf"`` when ``config.crf``).
      config: the architecture (static under ``jit``).
      logits: float ``[B, T, C]``, from :func:`labeler_apply`; padded steps may hold
        anything.
      lengths: integer ``[B]`` in ``[0, T]``.

    Returns:
      int32 ``[B, T]``, in ``[0, C)`` at valid steps and -1 at padded steps.

    >>> import jax, jax.numpy as jnp, jaxseq.models as jm
    >>> cfg = jm.SequenceModelConfig(num_classes=3, hidden_size=4, input_size=2, crf=True)
    >>> params = jm.labeler_init(jax.random.key(0), cfg)
    >>> xs, lengths = jnp.ones((2, 4, 2)), jnp.array([4, 1])
    >>> tags = jm.labeler_predict(params, cfg, jm.labeler_apply(params, cfg, xs, lengths), lengths)
    >>> tags.dtype, (tags[1, 1:] == -1).all().item()
    (dtype('int32'), True)
    """
    logits, where = _check_logits_lengths(config, logits, lengths)
    if config.crf:
        return crf.crf_decode(logits, _crf_params(params), where=where)[0]
    predicted = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jnp.where(where, predicted, jnp.asarray(-1, jnp.int32))
