"""Sequence classifier / labeler: shapes, padding invariance, composition, dropout, training,
the config's checks, and the same model with every method."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq import models, pooling, recurrence
from jaxseq.models import SequenceModelConfig
from tests.test_recurrence import TOL, methods_for

B, T, V, E, D, H, C = 3, 5, 11, 4, 3, 5, 3
LENGTHS = jnp.array([5, 2, 0])  # full, partial, empty
MASK = js.length_mask(LENGTHS, T)

classifier_jit = jax.jit(models.classifier_apply, static_argnames=("config", "train"))
labeler_jit = jax.jit(models.labeler_apply, static_argnames=("config", "train"))


@pytest.fixture(autouse=True)
def _float32_matmuls():
    # Tolerances here assume true float32 matmuls (not TF32/bf16 passes on GPU/TPU).
    with jax.default_matmul_precision("highest"):
        yield


def token_config(**overrides):
    base = dict(num_classes=C, hidden_size=H, vocab_size=V, embed_dim=E)
    return SequenceModelConfig(**{**base, **overrides})


def feature_config(**overrides):
    base = dict(num_classes=C, hidden_size=H, input_size=D)
    return SequenceModelConfig(**{**base, **overrides})


def token_ids(seed=0):
    ids = jax.random.randint(jax.random.key(seed), (B, T), 0, V)
    return jnp.where(MASK, ids, 0)


def features(seed=0):
    return jax.random.normal(jax.random.key(seed), (B, T, D))


def garbage_padding_ids(ids):
    junk = jnp.array([[-100, 10**6, 7, -1, 3]] * B, dtype=ids.dtype)
    return jnp.where(MASK, ids, junk)


def inputs_for(config, seed=0):
    return token_ids(seed) if config.tokens else features(seed)


def unpooled(config):
    """The config for a labeler, which does not pool."""
    return dataclasses.replace(config, pooling=None)


CONFIGS = [
    token_config(cell="lstm", bidirectional=True, pooling="last"),
    token_config(cell="gru", pooling="mean"),
    feature_config(cell="elman", embed_dim=E, pooling="max", bidirectional=True),
    feature_config(cell="gru", num_layers=2, pooling="last"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.cell}-{c.pooling}")
@pytest.mark.variants
def test_shapes_and_finite(config):
    params = models.classifier_init(jax.random.key(0), config)
    inputs = inputs_for(config)
    logits = classifier_jit(params, config, inputs, LENGTHS)
    assert logits.shape == (B, C) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    # A length-0 sequence pools to zeros: its logits are the bias c.
    np.testing.assert_array_equal(np.asarray(logits[2]), np.asarray(params["output"]["c"]))

    config = unpooled(config)
    params = models.labeler_init(jax.random.key(0), config)
    logits = labeler_jit(params, config, inputs, LENGTHS)
    assert logits.shape == (B, T, C) and bool(jnp.all(jnp.isfinite(logits)))
    assert params["output"]["V"].shape == (config.output_size, C)
    # The outputs feed the losses directly.
    loss = js.sequence_labeling_loss(logits, jnp.zeros((B, T), jnp.int32), where=MASK)
    assert loss.shape == () and bool(jnp.isfinite(loss))


@pytest.mark.variants
def test_params_layout():
    params = models.classifier_init(jax.random.key(0), token_config(bidirectional=True))
    assert set(params) == {"embed", "rnn", "output"}
    assert params["embed"]["E"].shape == (V, E)
    assert params["output"]["V"].shape == (2 * H, C) and params["output"]["c"].shape == (C,)
    assert set(models.classifier_init(jax.random.key(0), feature_config())) == {"rnn", "output"}
    dense = models.labeler_init(jax.random.key(0), feature_config(embed_dim=E))
    assert dense["input"]["W"].shape == (D, E) and dense["input"]["b"].shape == (E,)


def _grads_impl(params, inputs, config_and_task):
    config, task = config_and_task
    if task == "classify":
        logits_fn, labels = models.classifier_apply, jnp.array([0, 1, 2])
        loss_fn = lambda z: js.sequence_classification_loss(z, labels, where=LENGTHS > 0)
    else:
        logits_fn, labels = models.labeler_apply, jnp.ones((B, T), jnp.int32)
        loss_fn = lambda z: js.sequence_labeling_loss(z, labels, where=MASK)
    return jax.grad(lambda p: loss_fn(logits_fn(p, config, inputs, LENGTHS)))(params)


_grads = jax.jit(_grads_impl, static_argnums=2)


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.padding_invariance
def test_padding_invariance_tokens():
    config = token_config(cell="lstm", bidirectional=True)  # pooling None: "last"
    params = models.classifier_init(jax.random.key(1), config)
    ids = token_ids()
    junk = garbage_padding_ids(ids)
    _assert_trees_equal(
        classifier_jit(params, config, junk, LENGTHS), classifier_jit(params, config, ids, LENGTHS)
    )
    labels_a = labeler_jit(params, config, ids, LENGTHS)
    labels_b = labeler_jit(params, config, junk, LENGTHS)
    np.testing.assert_array_equal(np.asarray(labels_a)[MASK], np.asarray(labels_b)[MASK])
    for task in ("classify", "label"):
        _assert_trees_equal(
            _grads(params, junk, (config, task)), _grads(params, ids, (config, task))
        )


@pytest.mark.parametrize("embed_dim", [None, E])
@pytest.mark.padding_invariance
def test_padding_invariance_features(embed_dim):
    # NaN/huge padding reaches neither the logits nor the gradients.
    config = feature_config(cell="gru", embed_dim=embed_dim, bidirectional=True, pooling="mean")
    params = models.classifier_init(jax.random.key(2), config)
    xs = jnp.where(MASK[..., None], features(), 0.0)
    junk = jnp.where(MASK[..., None], xs, jnp.array([jnp.nan, 1e30, -jnp.inf])[None, None])
    _assert_trees_equal(
        classifier_jit(params, config, junk, LENGTHS), classifier_jit(params, config, xs, LENGTHS)
    )
    g_junk = _grads(params, junk, (config, "classify"))
    _assert_trees_equal(g_junk, _grads(params, xs, (config, "classify")))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g_junk))


@pytest.mark.reference
def test_labeler_equals_manual_composition():
    config = token_config(cell="gru", bidirectional=True, num_layers=2)
    params = models.labeler_init(jax.random.key(3), config)
    ids = token_ids()
    x_BTE = params["embed"]["E"][ids]
    _, hs_BTH = recurrence.stack(
        models.make_cell(config), params["rnn"], x_BTE, LENGTHS, bidirectional=True
    )
    want = (
        jnp.einsum("bth,hc->btc", hs_BTH, params["output"]["V"]) + params["output"]["c"][None, None]
    )
    got = models.labeler_apply(params, config, ids, LENGTHS)
    np.testing.assert_allclose(np.asarray(got)[MASK], np.asarray(want)[MASK], atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.reference
def test_last_pooling_is_the_last_valid_state(bidirectional):
    config = token_config(cell="lstm", bidirectional=bidirectional, num_layers=2)
    params = models.classifier_init(jax.random.key(4), config)
    ids = token_ids()
    _, hs = models.encode(params, config, ids, LENGTHS)
    if bidirectional:
        # forward's state at the last valid step, backward's state at step 0
        pooled = jnp.concatenate([js.last_valid(hs[..., :H], LENGTHS), hs[:, 0, H:]], axis=-1)
    else:
        pooled = js.last_valid(hs, LENGTHS)
    want = pooled @ params["output"]["V"] + params["output"]["c"][None]
    got = models.classifier_apply(params, config, ids, LENGTHS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


@pytest.mark.parametrize("pooling_name", ["mean", "max"])
@pytest.mark.reference
def test_mean_and_max_pooling(pooling_name):
    config = feature_config(pooling=pooling_name)
    params = models.classifier_init(jax.random.key(5), config)
    _, hs = models.encode(params, config, features(), LENGTHS)
    pool = {"mean": pooling.masked_mean, "max": pooling.masked_max}[pooling_name]
    want = pool(hs, where=MASK) @ params["output"]["V"] + params["output"]["c"][None]
    got = models.classifier_apply(params, config, features(), LENGTHS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


@pytest.mark.variants
def test_vmap_over_an_ensemble():
    config = token_config(cell="elman", embed_dropout_rate=0.3)
    members = [models.classifier_init(jax.random.key(seed), config) for seed in (6, 7)]
    ensemble = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
    ids, key = token_ids(), jax.random.key(7)
    ensemble_apply = jax.jit(
        jax.vmap(lambda p: models.classifier_apply(p, config, ids, LENGTHS, key=key, train=True))
    )
    logits = ensemble_apply(ensemble)
    for member in range(2):
        params = members[member]
        jitted = classifier_jit(params, config, ids, LENGTHS, key=key, train=True)
        np.testing.assert_allclose(np.asarray(logits[member]), np.asarray(jitted), atol=1e-6)


@pytest.mark.variants
def test_jit_equals_no_jit():
    config = token_config(cell="elman", dropout_rate=0.3, num_layers=2)
    params = models.classifier_init(jax.random.key(6), config)
    ids, key = token_ids(), jax.random.key(7)
    for train in (False, True):
        eager = models.classifier_apply(params, config, ids, LENGTHS, key=key, train=train)
        jitted = classifier_jit(params, config, ids, LENGTHS, key=key, train=train)
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)


@pytest.mark.determinism
def test_dropout_only_when_training():
    config = token_config(cell="gru", num_layers=2, dropout_rate=0.5, embed_dropout_rate=0.5)
    params = models.labeler_init(jax.random.key(8), config)
    ids, k1, k2 = token_ids(), jax.random.key(1), jax.random.key(2)
    apply = lambda **kw: labeler_jit(params, config, ids, LENGTHS, **kw)
    evaluated = apply()
    np.testing.assert_array_equal(apply(key=k1), evaluated)  # a key alone changes nothing
    np.testing.assert_array_equal(apply(key=k1, train=False), evaluated)
    train_1 = apply(key=k1, train=True)
    assert not np.allclose(np.asarray(train_1)[MASK], np.asarray(evaluated)[MASK])
    np.testing.assert_array_equal(apply(key=k1, train=True), train_1)  # deterministic per key
    assert not np.allclose(np.asarray(apply(key=k2, train=True)), np.asarray(train_1))
    with pytest.raises(ValueError, match="`key`"):
        models.labeler_apply(params, config, ids, LENGTHS, train=True)
    # Rates of 0 need no key and change nothing.
    plain = dataclasses.replace(config, dropout_rate=0.0, embed_dropout_rate=0.0)
    np.testing.assert_array_equal(
        models.labeler_apply(params, plain, ids, LENGTHS, train=True), evaluated
    )


@pytest.mark.determinism
def test_embedding_dropout_alone():
    config = token_config(embed_dropout_rate=0.5)
    params = models.classifier_init(jax.random.key(9), config)
    ids = token_ids()
    a = models.classifier_apply(params, config, ids, LENGTHS)
    b = models.classifier_apply(params, config, ids, LENGTHS, key=jax.random.key(0), train=True)
    assert not np.allclose(np.asarray(a[:2]), np.asarray(b[:2]))


@pytest.mark.numerics
def test_out_of_range_valid_id_is_loud():
    # Host ids: a ValueError naming `inputs`; traced ids: NaN logits, never a plausible one.
    config = token_config()
    params = models.labeler_init(jax.random.key(10), config)
    for bad_id in (V, -1):
        ids = token_ids().at[0, 1].set(bad_id)  # a valid step holds an id outside the vocabulary
        assert bool(MASK[0, 1])  # the precondition: that step is valid
        with pytest.raises(ValueError, match=r"`inputs` must be in \[0, 10\]"):
            models.labeler_apply(params, config, ids, LENGTHS)
        logits = labeler_jit(params, config, ids, LENGTHS)
        assert bool(jnp.all(jnp.isnan(logits[0, 1:])))  # from that step on
        assert bool(jnp.all(jnp.isfinite(logits[1:])))  # other sequences are untouched
    # Garbage at padded steps is not looked at, on the host either.
    models.labeler_apply(params, config, garbage_padding_ids(token_ids()), LENGTHS)


INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


@pytest.mark.dtype
def test_every_integer_dtype_of_ids_and_lengths_gives_the_int32_result():
    # The classifier jitted and the labeler eager (host data; both convert in the same
    # _check_inputs), every dtype against int32; int64/uint64 under x64.
    config = token_config(cell="elman", pooling="mean")
    params = models.classifier_init(jax.random.key(14), config)
    labeler = dataclasses.replace(config, pooling=None)
    ids, lengths = np.asarray(token_ids()), np.asarray(LENGTHS)
    jitted = jax.jit(functools.partial(models.classifier_apply, params, config))
    want = jitted(ids.astype(np.int32), lengths.astype(np.int32))
    want_labels = labeler_jit(params, labeler, ids.astype(np.int32), lengths.astype(np.int32))
    for group in (INT_DTYPES[:3] + INT_DTYPES[4:7], INT_DTYPES[3::4]):
        with jax.enable_x64(group[0] == "int64"):
            for dtype in group:
                typed = ids.astype(dtype), lengths.astype(dtype)
                assert jnp.asarray(typed[0]).dtype == np.dtype(dtype)  # really that dtype
                chex.assert_trees_all_equal(jitted(*map(jnp.asarray, typed)), want)
                got = models.labeler_apply(params, labeler, *typed)
                chex.assert_trees_all_close(got, want_labels, **TOL)
    # An id that does not fit int32 at a valid step: a host error, NaN under jit.
    big = ids.astype(np.uint32)
    big[1, 0] = 2**32 - 1
    assert bool(MASK[1, 0])  # the precondition: that step is valid
    with pytest.raises(ValueError, match="`inputs` holds 4294967295"):
        models.labeler_apply(params, labeler, big, lengths)
    logits = jitted(jnp.asarray(big), jnp.asarray(lengths))
    assert np.isnan(np.asarray(logits[1])).all()
    assert np.isfinite(np.asarray(logits)[[0, 2]]).all()


@pytest.mark.numerics
def test_lengths_outside_0_t():
    # Host: ValueError naming `lengths`; under jit: NaN logits for that sequence only
    # (every pooling, and the labeler).
    ids = token_ids()
    wild = jnp.array([T + 2, -1, 2])
    for bad in (np.array([T + 1, 2, 0]), np.array([-1, 2, 0])):
        config = token_config()
        params = models.classifier_init(jax.random.key(15), config)
        with pytest.raises(ValueError, match=r"`lengths` must be in \[0, 5\]"):
            models.classifier_apply(params, config, ids, bad)
    for pooling_name in (None, "mean", "max"):
        config = token_config(cell="elman", pooling=pooling_name)
        params = models.classifier_init(jax.random.key(15), config)
        logits = classifier_jit(params, config, ids, wild)
        assert np.isnan(np.asarray(logits[:2])).all(), pooling_name
        assert np.isfinite(np.asarray(logits[2])).all()
    config = token_config(cell="elman")
    logits = labeler_jit(models.labeler_init(jax.random.key(15), config), config, ids, wild)
    assert np.isnan(np.asarray(logits[:2])).all() and np.isfinite(np.asarray(logits[2])).all()


@pytest.mark.numerics
def test_empty_batch_and_time_axes():
    # B = 0: empty logits; T = 0: every sequence has length 0 (the classifier's logits
    # are then c; the labeler's are [B, 0, C]).
    config = token_config(cell="gru")
    params = models.classifier_init(jax.random.key(16), config)
    assert models.classifier_apply(
        params, config, np.zeros((0, T), np.int32), np.zeros((0,), np.int32)
    ).shape == (0, C)
    assert models.labeler_apply(
        params, config, np.zeros((0, T), np.int32), np.zeros((0,), np.int32)
    ).shape == (0, T, C)
    empty_t = np.zeros((2, 0), np.int32), np.zeros((2,), np.int32)
    logits = models.classifier_apply(params, config, *empty_t)
    np.testing.assert_array_equal(logits, np.broadcast_to(params["output"]["c"], (2, C)))
    assert models.labeler_apply(params, config, *empty_t).shape == (2, 0, C)


@pytest.mark.training_smoke
def test_training_reduces_the_loss():
    # Tag each token with its id's parity, from a GRU over token ids.
    config = token_config(cell="gru", num_classes=2, embed_dropout_rate=0.1)
    params = models.labeler_init(jax.random.key(11), config)
    ids = jax.random.randint(jax.random.key(12), (8, T), 0, V)
    lengths = jnp.array([5, 4, 3, 2, 1, 5, 3, 0])
    mask = js.length_mask(lengths, T)
    labels = ids % 2
    optimizer = optax.adam(0.05)

    def loss_fn(params, key, train):
        logits = models.labeler_apply(params, config, ids, lengths, key=key, train=train)
        return js.sequence_labeling_loss(logits, labels, where=mask, reduction="mean_over_tokens")

    @jax.jit
    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, key, True)
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes dtypes
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    before = loss_fn(params, None, False)
    opt_state = optimizer.init(params)
    for i in range(25):
        params, opt_state, _ = step(params, opt_state, jax.random.fold_in(jax.random.key(13), i))
    after = loss_fn(params, None, False)
    assert float(after) < 0.5 * float(before), (float(before), float(after))


@pytest.mark.parametrize(
    "kwargs, error, field",
    [
        (dict(num_classes=1), ValueError, "num_classes"),
        (dict(num_classes=2.0), TypeError, "num_classes"),
        (dict(hidden_size=0), ValueError, "hidden_size"),
        (dict(hidden_size=True), TypeError, "hidden_size"),
        (dict(cell="rnn"), ValueError, "cell"),
        (dict(cell=None), TypeError, "cell"),
        (dict(num_layers=0), ValueError, "num_layers"),
        (dict(bidirectional=1), TypeError, "bidirectional"),
        (dict(vocab_size=0), ValueError, "vocab_size"),
        (dict(embed_dim=None), ValueError, "embed_dim"),
        (dict(embed_dim=-1), ValueError, "embed_dim"),
        (dict(input_size=4), ValueError, "input_size"),
        (dict(vocab_size=None), ValueError, "vocab_size"),
        (dict(dropout_rate=1.0), ValueError, "dropout_rate"),
        (dict(dropout_rate="0.1"), TypeError, "dropout_rate"),
        (dict(embed_dropout_rate=-0.1), ValueError, "embed_dropout_rate"),
        (dict(pooling="sum"), ValueError, "pooling"),
        (dict(pooling=1), TypeError, "pooling"),
        (dict(forget_bias="1"), TypeError, "forget_bias"),
        (dict(forget_bias=float("nan")), ValueError, "forget_bias"),
        (dict(cell="gru", forget_bias=1.0), ValueError, "forget_bias"),
        (dict(cell="mingru", forget_bias=0.0), ValueError, "forget_bias"),
        (dict(method="fused"), TypeError, "method"),
        (dict(method=js.Scan), TypeError, "method"),
    ],
)
@pytest.mark.bad_input
def test_bad_config_raises_naming_the_field(kwargs, error, field):
    with pytest.raises(error, match=f"`{field}`"):
        token_config(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cell="mingru", method=js.Fused()), r"method=Fused\(\)"),
        (dict(cell="lstm", method=js.Parallel()), r"method=Parallel\(\)"),
        (dict(cell="lru", method=js.Scan(hoist_projection=True)), r"Scan\(hoist_projection"),
    ],
    ids=["fused_mingru", "parallel_lstm", "hoist_lru"],
)
@pytest.mark.bad_input
def test_config_rejects_a_method_that_does_not_apply(kwargs, match):
    with pytest.raises(ValueError, match=match):
        token_config(**kwargs)


@pytest.mark.bad_input
def test_labeler_rejects_pooling():
    for pooling_name in models.POOLINGS:
        config = token_config(pooling=pooling_name)
        params = models.classifier_init(jax.random.key(0), config)  # the classifier pools
        with pytest.raises(ValueError, match="labeler does not pool.*`pooling`"):
            models.labeler_init(jax.random.key(0), config)
        with pytest.raises(ValueError, match="labeler does not pool.*`pooling`"):
            models.labeler_apply(params, config, token_ids(), LENGTHS)


@pytest.mark.reference
def test_pooling_default_is_last():
    config = token_config(cell="gru", bidirectional=True)
    assert config.pooling is None
    params = models.classifier_init(jax.random.key(12), config)
    last = dataclasses.replace(config, pooling="last")
    np.testing.assert_array_equal(
        classifier_jit(params, config, token_ids(), LENGTHS),
        classifier_jit(params, last, token_ids(), LENGTHS),
    )


@pytest.mark.reference
def test_forget_bias_sets_the_lstm_forget_gate_bias():
    def forget_block(config):
        bias = models.classifier_init(jax.random.key(0), config)["rnn"][0]["b"]
        return np.asarray(bias[H : 2 * H])

    np.testing.assert_array_equal(forget_block(token_config()), 1.0)  # None: 1.0
    np.testing.assert_array_equal(forget_block(token_config(forget_bias=0.0)), 0.0)
    np.testing.assert_array_equal(forget_block(token_config(forget_bias=-2)), -2.0)
    assert models.make_cell(token_config(forget_bias=0.0)) == js.lstm(H, forget_bias=0.0)


@pytest.mark.bad_input
def test_bad_inputs_raise():
    config = token_config()
    params = models.classifier_init(jax.random.key(0), config)
    with pytest.raises(AssertionError, match="`inputs` must have an integer dtype"):
        models.classifier_apply(params, config, features()[..., 0], LENGTHS)
    with pytest.raises(AssertionError, match=r"`inputs` must have rank 2 \[B, T\]"):
        models.classifier_apply(params, config, token_ids()[0], LENGTHS)
    with pytest.raises(AssertionError, match=r"`lengths` must have shape \[3\]"):
        models.classifier_apply(params, config, token_ids(), LENGTHS[:2])
    with pytest.raises(AssertionError, match="`lengths` must have an integer dtype"):
        models.classifier_apply(params, config, token_ids(), LENGTHS.astype(jnp.float32))
    with pytest.raises(TypeError, match="`config`"):
        models.classifier_apply(params, dataclasses.asdict(config), token_ids(), LENGTHS)
    fconfig = feature_config()
    fparams = models.classifier_init(jax.random.key(0), fconfig)
    with pytest.raises(AssertionError, match=r"`inputs` must have shape.*input_size = 3"):
        models.classifier_apply(fparams, fconfig, features()[..., :2], LENGTHS)
    with pytest.raises(AssertionError, match="`inputs` must have a floating dtype"):
        models.classifier_apply(fparams, fconfig, token_ids()[..., None], LENGTHS)


@pytest.mark.retrace
def test_config_is_static_and_hashable():
    a, b = token_config(), token_config()
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hidden_size = 3  # type: ignore[misc]
    assert token_config(bidirectional=True).output_size == 2 * H
    assert feature_config().rnn_input_size == D and feature_config(embed_dim=E).rnn_input_size == E


# ---------------------------------------------------------------------------- methods


def _model_cases():
    """Every cell x every method; the default run keeps the default method (the
    methods themselves are tested one by one in test_recurrence.py and
    test_parallel_cells.py; here it is their plumbing through the model), the rest
    run with ``make test-slow``."""
    cases = []
    for cell_name in models.CELLS:
        cell_methods = methods_for(models.make_cell(feature_config(cell=cell_name)))
        for method_id, method in cell_methods.items():
            marks = () if method_id == "default" else (pytest.mark.slow,)
            case_id = f"{cell_name}-{method_id}"
            cases.append(pytest.param(cell_name, method, id=case_id, marks=marks))
    return cases


def _method_config(cell_name, method, pooling=None):
    return feature_config(
        cell=cell_name,
        embed_dim=E,
        num_layers=2,
        bidirectional=True,
        pooling=pooling,
        method=method,
    )


def _model_values_and_grads(params, config_pair, xs):
    classifier_config, labeler_config = config_pair

    def loss(params):
        logits_c = models.classifier_apply(params, classifier_config, xs, LENGTHS)
        logits_l = models.labeler_apply(params, labeler_config, xs, LENGTHS)
        loss = jnp.sum(jnp.sin(logits_c)) + jnp.sum(jnp.where(MASK[..., None], logits_l**2, 0.0))
        return loss, (logits_c, logits_l)

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return logits, grads


_model_values_and_grads = jax.jit(_model_values_and_grads, static_argnums=1)


@functools.cache
def _float64_model(cell_name):
    """The reference for every method: the same model in float64, with ``Scan()``."""
    config = _method_config(cell_name, js.Scan())
    params, xs = models.classifier_init(jax.random.key(13), config), np.asarray(features())
    with jax.enable_x64(True):  # the same float32 values (random draws differ in float64)
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        xs64 = jnp.where(MASK[..., None], jnp.asarray(xs, jnp.float64), jnp.nan)
        pair = (_method_config(cell_name, js.Scan(), "mean"), config)
        expected = _model_values_and_grads(params64, pair, xs64)
        return params, jax.tree.map(lambda a: np.asarray(a, np.float64), expected)


@pytest.mark.parametrize("cell_name, method", _model_cases())
@pytest.mark.reference
def test_every_method_gives_the_same_model(cell_name, method):
    # Classifier (mean pooling) and labeler logits and their gradients, 2 bidirectional
    # layers, NaN padding, against the same model in float64 with Scan(): float32 against
    # float64, atol = rtol = 1e-5. (Not two float32 methods against each other at 1e-6:
    # through the input layer, two layers and the heads, each float32 result is already
    # ~2e-6 from the float64 one. No dropout: in float64 its Bernoulli masks come from
    # other bits; stacks with dropout and every method: test_recurrence, test_fused.)
    params, (expected_logits, expected_grads) = _float64_model(cell_name)
    pair = (_method_config(cell_name, method, "mean"), _method_config(cell_name, method))
    xs = jnp.where(MASK[..., None], features(), jnp.nan)
    logits, grads = _model_values_and_grads(params, pair, xs)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((logits, grads)))
    for got, expected in ((logits, expected_logits), (grads, expected_grads)):
        jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **TOL), got, expected)
    if method is None:  # the default is the resolved method itself
        resolved = js.resolve_method(models.make_cell(pair[1]))
        pair = (dataclasses.replace(pair[0], method=resolved), pair[1])
        pair = (pair[0], dataclasses.replace(pair[1], method=resolved))
        chex.assert_trees_all_equal((logits, grads), _model_values_and_grads(params, pair, xs))


# ----------------------------------------------------------------------------- CRF output layer

CRF_REDUCTIONS = ("sum_over_time", "mean_over_time", "mean_over_tokens", "sum", "none")


def crf_labels(seed=0):
    labels = jax.random.randint(jax.random.key(seed), (B, T), 0, C)
    return jnp.where(MASK, labels, -1)


def _crf_model(seed=20):
    config = token_config(cell="gru", bidirectional=True, crf=True)
    return config, models.labeler_init(jax.random.key(seed), config)


@pytest.mark.reference
def test_crf_labeler_init_adds_crf_params_and_keeps_the_rest():
    config, params = _crf_model()
    assert {k: v.shape for k, v in params["crf"].items()} == {
        "transitions": (C, C),
        "start": (C,),
        "end": (C,),
    }
    assert all(v.dtype == jnp.float32 for v in params["crf"].values())
    # The encoder and the output layer are those of the same config without crf.
    plain = models.labeler_init(jax.random.key(20), dataclasses.replace(config, crf=False))
    assert set(params) == set(plain) | {"crf"}
    _assert_trees_equal({k: v for k, v in params.items() if k != "crf"}, plain)
    np.testing.assert_array_equal(
        models.labeler_apply(params, config, token_ids(), LENGTHS),
        models.labeler_apply(plain, dataclasses.replace(config, crf=False), token_ids(), LENGTHS),
    )


@pytest.mark.parametrize("reduction", CRF_REDUCTIONS)
@pytest.mark.reference
def test_crf_labeler_loss_and_predict_are_the_crf_functions_on_the_logits(reduction):
    config, params = _crf_model()
    logits = models.labeler_apply(params, config, token_ids(), LENGTHS)
    labels = crf_labels()
    got = models.labeler_loss(params, config, logits, labels, LENGTHS, reduction=reduction)
    want = js.crf_loss(logits, labels, params["crf"], where=MASK, reduction=reduction)
    np.testing.assert_array_equal(got, want)
    tags = models.labeler_predict(params, config, logits, LENGTHS)
    assert tags.dtype == jnp.int32
    np.testing.assert_array_equal(tags, js.crf_decode(logits, params["crf"], where=MASK)[0])
    # Under jit too (config static).
    loss_jit = jax.jit(models.labeler_loss, static_argnames=("config", "reduction"))
    np.testing.assert_allclose(
        loss_jit(params, config, logits, labels, LENGTHS, reduction=reduction), want, rtol=1e-6
    )
    predict_jit = jax.jit(models.labeler_predict, static_argnames="config")
    np.testing.assert_array_equal(predict_jit(params, config, logits, LENGTHS), tags)


@pytest.mark.parametrize("reduction", CRF_REDUCTIONS)
@pytest.mark.reference
def test_softmax_labeler_loss_and_predict(reduction):
    config = token_config(cell="gru")
    params = models.labeler_init(jax.random.key(21), config)
    logits = models.labeler_apply(params, config, token_ids(), LENGTHS)
    labels = crf_labels()
    got = models.labeler_loss(params, config, logits, labels, LENGTHS, reduction=reduction)
    want = js.sequence_labeling_loss(logits, labels, where=MASK, reduction=reduction)
    np.testing.assert_array_equal(got, want)
    tags = models.labeler_predict(params, config, logits, LENGTHS)
    want_tags = np.where(MASK, np.argmax(np.asarray(logits), axis=-1), -1)
    np.testing.assert_array_equal(tags, want_tags)
    assert tags.dtype == jnp.int32


@pytest.mark.parametrize("reduction", CRF_REDUCTIONS[:4])
@pytest.mark.reference
def test_crf_with_zero_scores_is_the_softmax_labeler(reduction):
    # With zero transition, start and end scores the CRF factorises over the steps: a
    # sequence's NLL is the sum of its per-step cross-entropies, so every reduction
    # means the same for both output layers, and Viterbi is each step's argmax.
    config, params = _crf_model(22)
    params["crf"] = jax.tree.map(jnp.zeros_like, params["crf"])
    softmax = dataclasses.replace(config, crf=False)
    logits = models.labeler_apply(params, config, token_ids(), LENGTHS)
    labels = crf_labels(1)
    crf_loss = models.labeler_loss(params, config, logits, labels, LENGTHS, reduction=reduction)
    ce = models.labeler_loss(params, softmax, logits, labels, LENGTHS, reduction=reduction)
    np.testing.assert_allclose(crf_loss, ce, rtol=1e-5)
    np.testing.assert_array_equal(
        models.labeler_predict(params, config, logits, LENGTHS),
        models.labeler_predict(params, softmax, logits, LENGTHS),
    )
    # Nonzero transitions change the loss: the comparison above can fail.
    params["crf"]["transitions"] = params["crf"]["transitions"].at[0, 1].set(2.0)
    moved = models.labeler_loss(params, config, logits, labels, LENGTHS, reduction=reduction)
    assert abs(float(moved) - float(ce)) > 1e-3


@pytest.mark.padding_invariance
def test_crf_labeler_padding_poison_changes_nothing():
    config, params = _crf_model(23)
    ids, labels = token_ids(), crf_labels(2)
    junk_ids = garbage_padding_ids(ids)
    junk_labels = jnp.where(MASK, labels, jnp.array([[-100, 10**6, C, -1, 7]] * B))

    def loss(params, ids, labels):
        logits = models.labeler_apply(params, config, ids, LENGTHS)
        return models.labeler_loss(params, config, logits, labels, LENGTHS)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    clean, poisoned = (
        value_and_grad(params, ids, labels),
        value_and_grad(params, junk_ids, junk_labels),
    )
    _assert_trees_equal(poisoned, clean)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(poisoned))
    assert float(jnp.abs(poisoned[1]["crf"]["transitions"]).sum()) > 0  # the CRF trains
    # NaN/inf logits at padded steps: the same loss and tags, -1 at padding.
    logits = models.labeler_apply(params, config, ids, LENGTHS)
    nan_pad = jnp.where(MASK[..., None], logits, jnp.array([jnp.nan, jnp.inf, -1e30]))
    for reduction in CRF_REDUCTIONS:
        np.testing.assert_array_equal(
            models.labeler_loss(params, config, nan_pad, junk_labels, LENGTHS, reduction=reduction),
            models.labeler_loss(params, config, logits, labels, LENGTHS, reduction=reduction),
        )
    tags = models.labeler_predict(params, config, nan_pad, LENGTHS)
    np.testing.assert_array_equal(tags, models.labeler_predict(params, config, logits, LENGTHS))
    assert bool(jnp.all((tags == -1) == ~MASK))


@pytest.mark.bad_input
def test_crf_on_a_classifier_is_an_error_naming_the_field():
    config = token_config(crf=True)  # a valid labeler config
    plain = models.classifier_init(jax.random.key(0), token_config())
    with pytest.raises(ValueError, match="classifier has no CRF.*`crf`"):
        models.classifier_init(jax.random.key(0), config)
    with pytest.raises(ValueError, match="classifier has no CRF.*`crf`"):
        models.classifier_apply(plain, config, token_ids(), LENGTHS)
    with pytest.raises(TypeError, match="`crf`"):
        token_config(crf=1)


@pytest.mark.bad_input
def test_labeler_loss_and_predict_reject_bad_arguments():
    config, params = _crf_model()
    logits = models.labeler_apply(params, config, token_ids(), LENGTHS)
    labels = crf_labels()
    no_crf = {k: v for k, v in params.items() if k != "crf"}
    with pytest.raises(ValueError, match="`params` has no 'crf'"):
        models.labeler_loss(no_crf, config, logits, labels, LENGTHS)
    with pytest.raises(ValueError, match="`params` has no 'crf'"):
        models.labeler_predict(no_crf, config, logits, LENGTHS)
    for head in (config, dataclasses.replace(config, crf=False)):
        with pytest.raises(ValueError, match="`labels`"):
            models.labeler_loss(params, head, logits, labels.at[0, 0].set(C), LENGTHS)
        with pytest.raises(AssertionError, match="`logits`"):
            models.labeler_loss(params, head, logits[..., :2], labels, LENGTHS)
        with pytest.raises(AssertionError, match="`lengths`"):
            models.labeler_predict(params, head, logits, LENGTHS[:2])
        with pytest.raises(ValueError, match="`lengths`"):
            models.labeler_predict(params, head, logits, jnp.array([5, 2, T + 1]))
        with pytest.raises(TypeError, match="`config`"):
            models.labeler_predict(params, {"crf": True}, logits, LENGTHS)
    with pytest.raises(ValueError, match="labeler does not pool"):
        models.labeler_loss(
            params, dataclasses.replace(config, pooling="mean"), logits, labels, LENGTHS
        )


@pytest.mark.training_smoke
def test_crf_labeler_training_reduces_the_loss_and_learns_transitions():
    # Tags that alternate 0, 1, 0, 1 whatever the tokens: only the transitions can tell.
    config = token_config(cell="gru", num_classes=2, crf=True)
    params = models.labeler_init(jax.random.key(24), config)
    ids = jax.random.randint(jax.random.key(25), (8, T), 0, V)
    lengths = jnp.array([5, 4, 3, 2, 1, 5, 3, 0])
    labels = jnp.broadcast_to(jnp.arange(T) % 2, (8, T))
    optimizer = optax.adam(0.05)

    def loss_fn(params):
        logits = models.labeler_apply(params, config, ids, lengths)
        return models.labeler_loss(params, config, logits, labels, lengths)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    before = loss_fn(params)
    opt_state = optimizer.init(params)
    for _ in range(30):
        params, opt_state, _ = step(params, opt_state)
    assert float(loss_fn(params)) < 0.5 * float(before)
    transitions = params["crf"]["transitions"]
    assert transitions[0, 1] > transitions[0, 0] and transitions[1, 0] > transitions[1, 1]
    logits = models.labeler_apply(params, config, ids, lengths)
    tags = models.labeler_predict(params, config, logits, lengths)
    np.testing.assert_array_equal(tags, jnp.where(js.length_mask(lengths, T), labels, -1))
