"""flax.nnx adapters: thin modules over jaxseq's pure functions.

Each module holds its weights as ``nnx.Param`` in the same nested layout as the
pure params pytree (``nnx.state(module)`` paths are the pytree's paths, under
``layers`` for :class:`RNN`), and its ``__call__`` unwraps them with
``to_params()`` and runs the pure function:

* :class:`RNN` runs :func:`jaxseq.recurrence.stack`;
* :class:`SequenceClassifier` runs :func:`jaxseq.models.classifier_apply`;
* :class:`SequenceLabeler` runs :func:`jaxseq.models.labeler_apply`, and its
  ``loss`` and ``predict`` :func:`jaxseq.models.labeler_loss` and
  :func:`jaxseq.models.labeler_predict` (a softmax or, with ``config.crf``, a CRF
  output layer);

so a module and its pure function give identical outputs from the same weights
(and the same dropout key). Build a module from existing pure params with
``from_params``, and get them back with ``to_params()``.

Dropout follows ``nnx.Dropout``: it is on when ``deterministic`` is False (the
constructor's default; ``module.eval()`` / ``module.train()`` toggle it, and
``__call__(..., deterministic=...)`` overrides it). Its key is ``key=`` if given,
else drawn from the ``"dropout"`` stream (or the default stream) of the
``rngs`` the module was built with.

jaxseq's core never imports this module; import it as ``jaxseq.nnx``.
"""

from __future__ import annotations

import jax

try:
    from flax import nnx
except ImportError as error:  # flax is the `nnx` extra, not a core dependency
    raise ImportError(
        'jaxseq.nnx needs flax: install it with `pip install "jaxseq[nnx]"` '
        f"(the rest of jaxseq works without it); importing flax failed: {error}"
    ) from error

from jaxseq import _checks, cells, methods, models, recurrence

__all__ = ["RNN", "SequenceClassifier", "SequenceLabeler"]


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _wrap(tree):
    """A pytree of arrays -> the same pytree of ``nnx.Param``."""
    return nnx.data(jax.tree.map(nnx.Param, tree))


def _unwrap(tree):
    """A pytree of ``nnx.Variable`` -> the same pytree of their arrays."""
    return jax.tree.map(lambda v: v[...], tree, is_leaf=_is_variable)


def _dropout_stream(rngs):
    if rngs is None:
        return nnx.data(None)
    if isinstance(rngs, nnx.Rngs):
        return rngs["dropout"].fork()
    if isinstance(rngs, nnx.RngStream):
        return rngs.fork()
    raise TypeError(f"`rngs` must be an nnx.Rngs, an nnx.RngStream or None, got {type(rngs)}")


def _resolve_train(module, deterministic, key, uses_dropout: bool):
    """``(train, key)`` for a call: nnx.Dropout's precedence rules."""
    deterministic = module.deterministic if deterministic is None else deterministic
    if not isinstance(deterministic, bool):
        raise TypeError(f"`deterministic` must be a Python bool, got {deterministic!r}")
    train = not deterministic
    if train and uses_dropout and key is None:
        if module.rngs is None:
            raise ValueError(
                "dropout is on (deterministic=False) but the module has no `rngs` and no "
                "`key` was passed: pass key=..., build the module with rngs=..., or call "
                "module.eval()"
            )
        key = module.rngs()
    return train, key


class RNN(nnx.Module):
    """A stacked (bi)RNN over a :class:`jaxseq.cells.Cell`: ``recurrence.stack`` as a module.

    Args:
      cell: e.g. ``cells.lstm(32)``.
      input_size: D (not needed with ``layer_params``).
      num_layers, bidirectional, dropout_rate, method: as in
        :func:`jaxseq.stack` (``dropout_rate`` between layers; ``method`` None
        picks the fastest correct engine).
      deterministic: dropout off (as ``nnx.Dropout``).
      rngs: ``nnx.Rngs``; its ``params`` stream initialises the weights
        (``recurrence.init_stack``), its ``dropout`` stream drives dropout.
      layer_params: existing pure weights instead of initialising (see
        :meth:`from_params`).

    ``module(xs [B, T, D], lengths [B])`` returns ``(final_carries, hs [B, T, H'])``
    exactly as ``recurrence.stack(cell, module.to_params(), xs, lengths, ...)``.
    """

    def __init__(
        self,
        cell: cells.Cell,
        input_size: int | None = None,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout_rate: float = 0.0,
        method: methods.Method | None = None,
        deterministic: bool = False,
        rngs: nnx.Rngs | None = None,
        layer_params: list | None = None,
    ):
        if not isinstance(cell, cells.Cell):
            raise TypeError(f"`cell` must be a jaxseq.cells.Cell, got {type(cell).__name__}")
        _checks.check_flag(bidirectional, "bidirectional")
        _checks.check_flag(deterministic, "deterministic")
        _checks.check_rate(dropout_rate, "dropout_rate")
        _checks.check_int(num_layers, "num_layers", 1)
        if layer_params is None:
            if input_size is None or not isinstance(rngs, nnx.Rngs):
                raise ValueError(
                    "`input_size` and `rngs` (an nnx.Rngs) are required to initialise the "
                    "weights; to wrap existing weights use RNN.from_params"
                )
            layer_params = recurrence.init_stack(
                rngs.params(), cell, input_size, num_layers=num_layers, bidirectional=bidirectional
            )
        elif not isinstance(layer_params, (list, tuple)) or not layer_params:
            raise ValueError("`layer_params` must be a non-empty list of per-layer params")
        self.cell = cell
        self.bidirectional = bidirectional
        self.dropout_rate = dropout_rate
        self.method = methods.resolve_method(cell, method)
        self.deterministic = deterministic
        self.layers = _wrap(list(layer_params))
        self.rngs = _dropout_stream(rngs)

    @classmethod
    def from_params(
        cls,
        cell: cells.Cell,
        layer_params: list,
        *,
        bidirectional: bool = False,
        dropout_rate: float = 0.0,
        method: methods.Method | None = None,
        deterministic: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> RNN:
        """A module holding existing pure ``layer_params`` (e.g. from ``interop.from_torch``).

        ``rngs`` is needed only for dropout without an explicit ``key``.
        """
        return cls(
            cell,
            bidirectional=bidirectional,
            dropout_rate=dropout_rate,
            method=method,
            deterministic=deterministic,
            rngs=rngs,
            layer_params=layer_params,
        )

    def to_params(self) -> list:
        """The pure ``layer_params`` list (arrays, not ``nnx.Param``)."""
        return _unwrap(self.layers)

    def __call__(
        self,
        xs: jax.Array,
        lengths: jax.Array,
        *,
        deterministic: bool | None = None,
        key: jax.Array | None = None,
    ):
        """``(final_carries, hs [B, T, H'])`` for ``xs [B, T, D]``, ``lengths [B]``."""
        train, key = _resolve_train(self, deterministic, key, self.dropout_rate > 0)
        return recurrence.stack(
            self.cell,
            self.to_params(),
            xs,
            lengths,
            bidirectional=self.bidirectional,
            dropout_rate=self.dropout_rate,
            key=key if train and self.dropout_rate > 0 else None,
            train=train and self.dropout_rate > 0,
            method=self.method,
        )


class _SequenceModel(nnx.Module):
    """The constructor and methods that :class:`SequenceClassifier` and
    :class:`SequenceLabeler` share (a private base: build one of those two)."""

    _init = staticmethod(models.classifier_init)
    _apply = staticmethod(models.classifier_apply)
    _check_config = staticmethod(lambda config: None)

    def __init__(
        self,
        config: models.SequenceModelConfig,
        *,
        deterministic: bool = False,
        rngs: nnx.Rngs | None = None,
        params: dict | None = None,
    ):
        if not isinstance(config, models.SequenceModelConfig):
            raise TypeError(
                f"`config` must be a jaxseq.models.SequenceModelConfig, got {type(config).__name__}"
            )
        # At construction, also with from_params (which does not run `_init`).
        type(self)._check_config(config)
        _checks.check_flag(deterministic, "deterministic")
        if params is None:
            if not isinstance(rngs, nnx.Rngs):
                raise ValueError(
                    "`rngs` (an nnx.Rngs) is required to initialise the weights; to wrap "
                    "existing weights use from_params"
                )
            params = type(self)._init(rngs.params(), config)
        elif config.crf and "crf" not in params:
            raise ValueError(
                "`params` has no 'crf' entry, but config.crf is True: initialise them with "
                "models.labeler_init(key, config) for that config"
            )
        self.config = config
        self.deterministic = deterministic
        for name in ("embed", "input"):
            if name in params:
                setattr(self, name, _wrap(dict(params[name])))
        self.rnn = _wrap(list(params["rnn"]))
        self.output = _wrap(dict(params["output"]))
        if config.crf:
            self.crf = _wrap(dict(params["crf"]))
        self.rngs = _dropout_stream(rngs)

    @classmethod
    def from_params(
        cls,
        config: models.SequenceModelConfig,
        params: dict,
        *,
        deterministic: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        """A module holding existing pure ``params`` (the layout of ``models.*_init``).

        ``rngs`` is needed only for dropout without an explicit ``key``.
        """
        return cls(config, deterministic=deterministic, rngs=rngs, params=params)

    def to_params(self) -> dict:
        """The pure params pytree (arrays, not ``nnx.Param``)."""
        params = {}
        for name in ("embed", "input"):
            if hasattr(self, name):
                params[name] = _unwrap(getattr(self, name))
        params["rnn"] = _unwrap(self.rnn)
        params["output"] = _unwrap(self.output)
        if self.config.crf:
            params["crf"] = _unwrap(self.crf)
        return params

    def __call__(
        self,
        inputs: jax.Array,
        lengths: jax.Array,
        *,
        deterministic: bool | None = None,
        key: jax.Array | None = None,
    ) -> jax.Array:
        config = self.config
        uses_dropout = config.dropout_rate > 0 or config.embed_dropout_rate > 0
        train, key = _resolve_train(self, deterministic, key, uses_dropout)
        return type(self)._apply(self.to_params(), config, inputs, lengths, key=key, train=train)


class SequenceClassifier(_SequenceModel):
    """:func:`jaxseq.models.classifier_apply` as a module.

    ``SequenceClassifier(config, rngs=nnx.Rngs(0))`` initialises with
    ``models.classifier_init(rngs.params(), config)``;
    ``module(inputs, lengths)`` returns logits ``[B, C]``.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxseq import models, nnx as jnnx
    >>> cfg = models.SequenceModelConfig(num_classes=2, hidden_size=4, vocab_size=9, embed_dim=3)
    >>> model = jnnx.SequenceClassifier(cfg, rngs=nnx.Rngs(0))
    >>> model(jnp.array([[1, 2, 0]]), jnp.array([2])).shape
    (1, 2)
    """

    _init = staticmethod(models.classifier_init)
    _apply = staticmethod(models.classifier_apply)
    _check_config = staticmethod(models._check_classifier_config)


class SequenceLabeler(_SequenceModel):
    """:func:`jaxseq.models.labeler_apply` as a module: logits ``[B, T, C]``.

    With ``config.crf`` the module also holds the CRF's ``crf`` params
    (``transitions`` ``[C, C]``, ``start`` and ``end`` ``[C]``, as ``nnx.Param``).
    :meth:`loss` and :meth:`predict` take the module's logits: the negative
    log-likelihood and the predicted tags of its output layer (softmax or CRF).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxseq import models, nnx as jnnx
    >>> cfg = models.SequenceModelConfig(num_classes=3, hidden_size=4, input_size=2, crf=True)
    >>> model = jnnx.SequenceLabeler(cfg, rngs=nnx.Rngs(0))
    >>> xs, lengths = jnp.ones((2, 4, 2)), jnp.array([4, 1])
    >>> logits, labels = model(xs, lengths), jnp.zeros((2, 4), int)
    >>> model.predict(logits, lengths).shape, model.loss(logits, labels, lengths).shape
    ((2, 4), ())
    """

    _init = staticmethod(models.labeler_init)
    _apply = staticmethod(models.labeler_apply)
    _check_config = staticmethod(models._check_labeler_config)

    def loss(
        self,
        logits: jax.Array,
        labels: jax.Array,
        lengths: jax.Array,
        *,
        reduction: str = "sum_over_time",
    ) -> jax.Array:
        """:func:`jaxseq.models.labeler_loss` with the module's params: ``logits``
        ``[B, T, C]`` (the module's output), ``labels`` ``[B, T]``, ``lengths`` ``[B]``."""
        return models.labeler_loss(
            self.to_params(), self.config, logits, labels, lengths, reduction=reduction
        )

    def predict(self, logits: jax.Array, lengths: jax.Array) -> jax.Array:
        """:func:`jaxseq.models.labeler_predict` with the module's params: int32
        ``[B, T]`` tags (argmax or Viterbi), -1 at padded steps."""
        return models.labeler_predict(self.to_params(), self.config, logits, lengths)
