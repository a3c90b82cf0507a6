"""flax.nnx adapters: each module gives exactly what its pure function gives on the same weights,
with every method."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxseq as js
from jaxseq import cells, models, recurrence
from jaxseq import nnx as jnnx
from tests.test_recurrence import agreement, methods_for

B, T, V, E, D, H, C = 3, 4, 9, 3, 2, 4, 3
LENGTHS = jnp.array([4, 1, 0])
MASK = js.length_mask(LENGTHS, T)
IDS = jnp.where(MASK, jnp.arange(B * T, dtype=jnp.int32).reshape(B, T) % V, -1)
XS = jax.random.normal(jax.random.key(0), (B, T, D))


@pytest.fixture(autouse=True)
def _float32_matmuls():
    # Tolerances here assume true float32 matmuls (not TF32/bf16 passes on GPU/TPU).
    with jax.default_matmul_precision("highest"):
        yield


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.reference
def test_rnn_module_equals_stack():
    cell = cells.gru(H)
    module = jnnx.RNN(cell, D, num_layers=2, dropout_rate=0.5, rngs=nnx.Rngs(0))
    params = module.to_params()
    # The params stream initialises exactly as init_stack with rngs.params()'s first key.
    _assert_trees_equal(
        params,
        recurrence.init_stack(nnx.Rngs(0).params(), cell, D, num_layers=2),
    )
    key = jax.random.key(1)
    got = module(XS, LENGTHS, deterministic=False, key=key)
    want = recurrence.stack(cell, params, XS, LENGTHS, dropout_rate=0.5, key=key, train=True)
    _assert_trees_equal(got, want)
    # eval() turns dropout off; in train mode without a key, masks come from the module's rngs.
    call = nnx.jit(lambda m: m(XS, LENGTHS)[1])
    stack_eval = jax.jit(lambda p: recurrence.stack(cell, p, XS, LENGTHS)[1])
    module.eval()
    np.testing.assert_allclose(call(module), stack_eval(params), atol=1e-6)
    module.train()
    hs_a, hs_b = call(module), call(module)
    assert not np.allclose(np.asarray(hs_a), np.asarray(hs_b))  # fresh masks per call


@pytest.mark.roundtrip
def test_rnn_from_params_and_state_paths():
    cell = cells.gru(H)
    layer_params = recurrence.init_stack(jax.random.key(2), cell, D, num_layers=2)
    module = jnnx.RNN.from_params(cell, layer_params)
    _assert_trees_equal(module.to_params(), layer_params)
    _assert_trees_equal(module(XS, LENGTHS), recurrence.stack(cell, layer_params, XS, LENGTHS))
    paths = {path for path, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))}
    assert ("layers", 0, "W_i") in paths and ("layers", 1, "b_h") in paths
    with pytest.raises(ValueError, match="rngs"):
        jnnx.RNN(cell, D)
    bidi = jnnx.RNN(cells.elman(H), D, bidirectional=True, rngs=nnx.Rngs(1))
    bidi_params = bidi.to_params()
    assert set(bidi_params[0]) == {"forward", "backward"}
    _assert_trees_equal(
        bidi(XS, LENGTHS),
        recurrence.stack(cells.elman(H), bidi_params, XS, LENGTHS, bidirectional=True),
    )
    dropout = jnnx.RNN.from_params(cell, layer_params, dropout_rate=0.5)
    with pytest.raises(ValueError, match="no `rngs`"):
        dropout(XS, LENGTHS)


CONFIGS = [
    models.SequenceModelConfig(
        num_classes=C,
        hidden_size=H,
        cell="lstm",
        vocab_size=V,
        embed_dim=E,
        num_layers=2,
        dropout_rate=0.3,
        embed_dropout_rate=0.2,
    ),
    models.SequenceModelConfig(
        num_classes=C,
        hidden_size=H,
        cell="elman",
        input_size=D,
        embed_dim=E,
        bidirectional=True,
        pooling="max",
    ),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.cell)
@pytest.mark.parametrize(
    "module_cls, init, apply",
    [
        (jnnx.SequenceClassifier, models.classifier_init, models.classifier_apply),
        (jnnx.SequenceLabeler, models.labeler_init, models.labeler_apply),
    ],
    ids=["classifier", "labeler"],
)
@pytest.mark.reference
def test_model_module_equals_pure_function(config, module_cls, init, apply):
    if module_cls is jnnx.SequenceLabeler:
        config = dataclasses.replace(config, pooling=None)  # a labeler does not pool
    inputs = IDS if config.tokens else XS
    module = module_cls(config, rngs=nnx.Rngs(params=3, dropout=4))
    params = module.to_params()
    _assert_trees_equal(params, init(nnx.Rngs(params=3).params(), config))
    key = jax.random.key(5)
    for train in (False, True):
        got = module(inputs, LENGTHS, deterministic=not train, key=key)
        want = apply(params, config, inputs, LENGTHS, key=key, train=train)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Pure params -> module -> the same pure params.
    other_params = init(jax.random.key(6), config)
    _assert_trees_equal(module_cls.from_params(config, other_params).to_params(), other_params)


@pytest.mark.variants
def test_nnx_jit_and_grad_match_the_pure_gradient():
    config = CONFIGS[0]
    module = jnnx.SequenceLabeler(config, rngs=nnx.Rngs(0))
    module.eval()
    labels = jnp.ones((B, T), jnp.int32)

    def module_loss(model):
        return js.sequence_labeling_loss(model(IDS, LENGTHS), labels, where=MASK)

    def pure_loss(params):
        logits = models.labeler_apply(params, config, IDS, LENGTHS)
        return js.sequence_labeling_loss(logits, labels, where=MASK)

    grads = nnx.jit(nnx.grad(module_loss))(module)
    got = nnx.clone(module)
    nnx.update(got, grads)
    want = jax.jit(jax.grad(pure_loss))(module.to_params())
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6), got.to_params(), want)


@pytest.mark.bad_input
def test_model_module_rejects_bad_arguments():
    with pytest.raises(TypeError, match="`config`"):
        jnnx.SequenceClassifier({"num_classes": 2}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rngs"):
        jnnx.SequenceClassifier(CONFIGS[0])
    module = jnnx.SequenceClassifier.from_params(
        CONFIGS[0], models.classifier_init(jax.random.key(0), CONFIGS[0])
    )
    with pytest.raises(ValueError, match="no `rngs`"):
        module(IDS, LENGTHS)  # dropout on (nnx default deterministic=False), no key
    module(IDS, LENGTHS, key=jax.random.key(0))  # an explicit key works
    # A labeler does not pool: rejected at construction, also from existing params.
    pooled = CONFIGS[1]
    assert pooled.pooling is not None
    with pytest.raises(ValueError, match="labeler does not pool"):
        jnnx.SequenceLabeler(pooled, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="labeler does not pool"):
        jnnx.SequenceLabeler.from_params(pooled, models.classifier_init(jax.random.key(0), pooled))


# ---------------------------------------------------------------------------- methods


@pytest.mark.parametrize(
    "cell",
    [
        cells.lstm(H),
        js.mingru(H),
        # The linear cells share their methods' code: the second runs with `make test-slow`.
        pytest.param(js.lru(H, state_size=3), marks=pytest.mark.slow),
    ],
    ids=["lstm", "mingru", "lru"],
)
@pytest.mark.variants
def test_rnn_module_with_every_method(cell):
    layer_params = recurrence.init_stack(
        jax.random.key(7), cell, D, num_layers=2, bidirectional=True
    )
    key = jax.random.key(8)
    options = dict(bidirectional=True, dropout_rate=0.5)
    base = recurrence.stack(
        cell, layer_params, XS, LENGTHS, key=key, train=True, method=js.Scan(), **options
    )
    for method in methods_for(cell).values():
        module = jnnx.RNN.from_params(cell, layer_params, method=method, **options)
        assert module.method == js.resolve_method(cell, method)  # resolved when built
        got = module(XS, LENGTHS, key=key)
        want = recurrence.stack(
            cell, layer_params, XS, LENGTHS, key=key, train=True, method=method, **options
        )
        _assert_trees_equal(got, want)  # the module is the pure function
        chex.assert_trees_all_close(got, base, **agreement(cell, method)[0])  # every method
        built = jnnx.RNN(cell, D, num_layers=2, method=method, rngs=nnx.Rngs(0))
        _assert_trees_equal(
            built(XS, LENGTHS),
            recurrence.stack(cell, built.to_params(), XS, LENGTHS, method=method),
        )


@pytest.mark.parametrize(
    "module_cls, apply",
    [
        (jnnx.SequenceClassifier, models.classifier_apply),
        (jnnx.SequenceLabeler, models.labeler_apply),
    ],
    ids=["classifier", "labeler"],
)
@pytest.mark.variants
def test_model_module_with_every_method(module_cls, apply):
    base_config = CONFIGS[0]
    params = models.classifier_init(jax.random.key(9), base_config)
    key = jax.random.key(10)
    base = apply(params, base_config, IDS, LENGTHS, key=key, train=True)
    cell = models.make_cell(base_config)
    for method in methods_for(cell).values():
        config = dataclasses.replace(base_config, method=method)
        module = module_cls.from_params(config, params)
        got = module(IDS, LENGTHS, key=key)
        want = apply(params, config, IDS, LENGTHS, key=key, train=True)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        # Tokens, an embedding, 2 LSTM layers with dropout and a head: float32 against
        # float32, each ~1e-6 from the exact values (see test_models), so 1e-5 here.
        np.testing.assert_allclose(np.asarray(got), np.asarray(base), atol=1e-5, rtol=1e-5)


@pytest.mark.bad_input
def test_rnn_module_rejects_a_method_that_does_not_apply():
    with pytest.raises(ValueError, match=r"method=Fused\(\)"):
        jnnx.RNN(js.mingru(H), D, method=js.Fused(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"method=Parallel\(\)"):
        jnnx.RNN(cells.gru(H), D, method=js.Parallel(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Scan\(hoist_projection"):
        jnnx.RNN.from_params(
            js.mingru(H),
            [js.mingru(H).init(jax.random.key(0), D)],
            method=js.Scan(hoist_projection=True),
        )
    for not_a_method in ("fused", js.Scan):
        with pytest.raises(TypeError, match="`method` must be jaxseq.Scan"):
            jnnx.RNN(cells.gru(H), D, method=not_a_method, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="unexpected keyword"):
        jnnx.RNN(cells.gru(H), D, unroll=2, rngs=nnx.Rngs(0))


@pytest.mark.bad_input
def test_rnn_module_rejects_bad_hyper_parameters():
    cell = cells.gru(H)
    cases = [
        (dict(dropout_rate=float("nan")), ValueError, "`dropout_rate`"),
        (dict(dropout_rate=-0.1), ValueError, "`dropout_rate`"),
        (dict(dropout_rate=1.0), ValueError, "`dropout_rate`"),
        (dict(num_layers=0), ValueError, "`num_layers`"),
        (dict(bidirectional=1), TypeError, "`bidirectional`"),
        (dict(deterministic="yes"), TypeError, "`deterministic`"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            jnnx.RNN(cell, D, rngs=nnx.Rngs(0), **kwargs)
    with pytest.raises(ValueError, match="`input_size`"):
        jnnx.RNN(cell, 0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`deterministic`"):
        jnnx.SequenceClassifier(CONFIGS[0], deterministic=None, rngs=nnx.Rngs(0))


@pytest.mark.numerics
def test_modules_lengths_dtypes_and_range():
    # Any integer dtype gives the int32 result; lengths outside [0, T] are a host error,
    # and NaN rows under jit.
    rnn = jnnx.RNN(cells.elman(H), D, method=js.Scan(), deterministic=True, rngs=nnx.Rngs(1))
    model = jnnx.SequenceLabeler(
        dataclasses.replace(CONFIGS[0], cell="elman", dropout_rate=0.0, embed_dropout_rate=0.0),
        deterministic=True,
        rngs=nnx.Rngs(2),
    )
    want = rnn(XS, LENGTHS), model(IDS, LENGTHS)
    typed = np.asarray(LENGTHS).astype(np.uint8)
    chex.assert_trees_all_equal((rnn(XS, typed), model(IDS.astype(jnp.uint16), typed)), want)
    for module, inputs in ((rnn, XS), (model, IDS)):
        with pytest.raises(ValueError, match=r"`lengths` must be in \[0, 4\]"):
            module(inputs, np.array([5, 1, 0]))

    @nnx.jit
    def run(rnn, model, lengths):
        return rnn(XS, lengths), model(IDS, lengths)

    (finals, hs), logits = run(rnn, model, jnp.array([5, 1, -1]))
    for tree in (finals, hs, logits):
        for leaf in jax.tree.leaves(tree):
            assert np.isnan(np.asarray(leaf)[[0, 2]]).all()
            assert np.isfinite(np.asarray(leaf)[1]).all()


# ----------------------------------------------------------------------------- CRF labeler

CRF_CONFIG = dataclasses.replace(CONFIGS[0], crf=True)
CRF_LABELS = jnp.where(MASK, jnp.arange(B * T, dtype=jnp.int32).reshape(B, T) % C, -1)


@pytest.mark.reference
def test_crf_labeler_module_equals_the_pure_functions():
    module = jnnx.SequenceLabeler(CRF_CONFIG, rngs=nnx.Rngs(params=3, dropout=4))
    params = module.to_params()
    _assert_trees_equal(params, models.labeler_init(nnx.Rngs(params=3).params(), CRF_CONFIG))
    paths = {path for path, _ in nnx.to_flat_state(nnx.state(module, nnx.Param))}
    assert {("crf", "transitions"), ("crf", "start"), ("crf", "end")} <= paths
    key = jax.random.key(5)
    for train in (False, True):
        logits = module(IDS, LENGTHS, deterministic=not train, key=key)
        want = models.labeler_apply(params, CRF_CONFIG, IDS, LENGTHS, key=key, train=train)
        np.testing.assert_array_equal(np.asarray(logits), np.asarray(want))
        for reduction in ("sum_over_time", "mean_over_tokens", "none"):
            np.testing.assert_array_equal(
                module.loss(logits, CRF_LABELS, LENGTHS, reduction=reduction),
                models.labeler_loss(
                    params, CRF_CONFIG, logits, CRF_LABELS, LENGTHS, reduction=reduction
                ),
            )
        np.testing.assert_array_equal(
            module.predict(logits, LENGTHS),
            models.labeler_predict(params, CRF_CONFIG, logits, LENGTHS),
        )
    # The same for the softmax labeler's methods.
    softmax = jnnx.SequenceLabeler(CONFIGS[0], deterministic=True, rngs=nnx.Rngs(3))
    logits = softmax(IDS, LENGTHS)
    np.testing.assert_array_equal(
        softmax.loss(logits, CRF_LABELS, LENGTHS),
        js.sequence_labeling_loss(logits, CRF_LABELS, where=MASK),
    )
    np.testing.assert_array_equal(
        softmax.predict(logits, LENGTHS), jnp.where(MASK, jnp.argmax(logits, axis=-1), -1)
    )
    # Pure params -> module -> the same pure params.
    other = models.labeler_init(jax.random.key(6), CRF_CONFIG)
    _assert_trees_equal(jnnx.SequenceLabeler.from_params(CRF_CONFIG, other).to_params(), other)


@pytest.mark.variants
def test_crf_labeler_nnx_grad_matches_the_pure_gradient():
    module = jnnx.SequenceLabeler(CRF_CONFIG, deterministic=True, rngs=nnx.Rngs(0))

    def module_loss(model):
        return model.loss(model(IDS, LENGTHS), CRF_LABELS, LENGTHS)

    def pure_loss(params):
        logits = models.labeler_apply(params, CRF_CONFIG, IDS, LENGTHS)
        return models.labeler_loss(params, CRF_CONFIG, logits, CRF_LABELS, LENGTHS)

    grads = nnx.jit(nnx.grad(module_loss))(module)
    got = nnx.clone(module)
    nnx.update(got, grads)
    want = jax.jit(jax.grad(pure_loss))(module.to_params())
    assert float(jnp.abs(want["crf"]["transitions"]).sum()) > 0
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6), got.to_params(), want)


@pytest.mark.bad_input
def test_crf_modules_reject_a_crf_classifier_and_missing_crf_params():
    with pytest.raises(ValueError, match="classifier has no CRF.*`crf`"):
        jnnx.SequenceClassifier(CRF_CONFIG, rngs=nnx.Rngs(0))
    plain = models.labeler_init(jax.random.key(0), CONFIGS[0])
    with pytest.raises(ValueError, match="classifier has no CRF.*`crf`"):
        jnnx.SequenceClassifier.from_params(CRF_CONFIG, plain)
    with pytest.raises(ValueError, match="`params` has no 'crf'"):
        jnnx.SequenceLabeler.from_params(CRF_CONFIG, plain)
