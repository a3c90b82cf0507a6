"""PyTorch parity of jaxseq.interop: nn.RNN / nn.GRU / nn.LSTM weights in jaxseq stacks.

The torch side runs a packed batch (pack_padded_sequence(enforce_sorted=False) +
pad_packed_sequence), so it never sees the padding; the jax side runs
recurrence.stack on the padded batch. Tolerance: float32, atol = rtol = 1e-5
(the measured deviation is ~1e-7).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js
from jaxseq import cells, interop, recurrence
from tests.test_recurrence import NONLINEAR_METHODS

try:  # The reference; the tests that do not need it run without it.
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch (the reference)")
if torch is not None:
    torch.set_num_threads(1)

ATOL = RTOL = 1e-5
B, T, D, H = 4, 5, 3, 4
LENGTHS = np.array([5, 1, 3, 2])  # mixed, incl. length 1 and the full length T


@pytest.fixture(autouse=True)
def _float32_matmuls():
    # Tolerances here assume true float32 matmuls (not TF32/bf16 passes on GPU/TPU).
    with jax.default_matmul_precision("highest"):
        yield


def make_module(kind, num_layers, bidirectional, batch_first, bias=True, seed=0):
    torch.manual_seed(seed)
    module = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind]
    return module(
        D, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias
    )


def make_inputs(lengths, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(lengths), T, D)).astype(np.float32)


def torch_run(module, xs_BTD, lengths):
    """Outputs [B, T, H'] (zero padded) and h_n (and c_n) from a packed batch."""
    x = torch.from_numpy(xs_BTD)
    if not module.batch_first:
        x = x.transpose(0, 1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x,
        torch.as_tensor(lengths, dtype=torch.int64),
        batch_first=module.batch_first,
        enforce_sorted=False,
    )
    with torch.no_grad():
        out, state = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(
        out, batch_first=module.batch_first, total_length=xs_BTD.shape[1]
    )
    if not module.batch_first:
        out = out.transpose(0, 1)
    states = state if isinstance(state, tuple) else (state,)
    return out.numpy(), [s.numpy() for s in states]


def jax_final_states(cell, finals, bidirectional):
    """Per-layer final carries -> arrays laid out like torch's h_n (and c_n)."""
    per_direction = []
    for final in finals:
        per_direction.extend(final if bidirectional else [final])
    if cell.name == "lstm":
        return [
            np.stack([np.asarray(h) for h, _ in per_direction]),
            np.stack([np.asarray(c) for _, c in per_direction]),
        ]
    return [np.stack([np.asarray(h) for h in per_direction])]


def max_deviation(module, xs, lengths, method=None):
    out, states = torch_run(module, xs, lengths)
    cell, layer_params = interop.from_torch(module)
    finals, hs = recurrence.stack(
        cell,
        layer_params,
        jnp.asarray(xs),
        jnp.asarray(lengths),
        bidirectional=module.bidirectional,
        method=method,
    )
    got = jax_final_states(cell, finals, module.bidirectional)
    devs = [np.max(np.abs(np.asarray(hs) - out))]
    devs += [np.max(np.abs(g - s)) for g, s in zip(got, states)]
    return max(devs)


@needs_torch
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.reference
def test_parity_with_torch(kind, num_layers, bidirectional, batch_first):
    module = make_module(kind, num_layers, bidirectional, batch_first)
    xs = make_inputs(LENGTHS)
    out, states = torch_run(module, xs, LENGTHS)

    cell, layer_params = interop.from_torch(module)
    assert cell.name == {"rnn": "elman", "gru": "gru", "lstm": "lstm"}[kind]
    assert cell.hidden_size == H and len(layer_params) == num_layers
    xs_jax = xs.copy()
    xs_jax[~(np.arange(T)[None, :] < LENGTHS[:, None])] = np.nan  # padding never read
    finals, hs = recurrence.stack(
        cell, layer_params, jnp.asarray(xs_jax), jnp.asarray(LENGTHS), bidirectional=bidirectional
    )
    hs = np.asarray(hs)
    valid_BT = np.arange(T)[None, :] < LENGTHS[:, None]
    width = H * (2 if bidirectional else 1)
    assert hs.shape == (B, T, width)
    np.testing.assert_allclose(hs[valid_BT], out[valid_BT], atol=ATOL, rtol=RTOL)
    assert np.all(hs[~valid_BT] == 0.0)
    assert np.all(out[~valid_BT] == 0.0)

    got = jax_final_states(cell, finals, bidirectional)
    assert len(got) == len(states)
    for g, s in zip(got, states):
        assert g.shape == s.shape == (num_layers * (2 if bidirectional else 1), B, H)
        np.testing.assert_allclose(g, s, atol=ATOL, rtol=RTOL)


@needs_torch
@pytest.mark.parametrize(
    "method_id",
    # Scan's options are compared with Scan() in test_recurrence.py: make test-slow.
    [
        m if m in ("Scan", "Fused", "default") else pytest.param(m, marks=pytest.mark.slow)
        for m in NONLINEAR_METHODS
    ],
)
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.reference
def test_parity_with_torch_with_every_method(kind, method_id):
    # 2 bidirectional layers; torch runs the packed batch, jax the padded one.
    module = make_module(kind, 2, True, True, seed=7)
    cell, _ = interop.from_torch(module)
    method = NONLINEAR_METHODS[method_id]
    assert js.resolve_method(cell) == js.Fused()  # converted cells are the built-in ones
    assert max_deviation(module, make_inputs(LENGTHS, seed=8), LENGTHS, method) < ATOL


@needs_torch
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.reference
def test_parity_without_bias(kind):
    module = make_module(kind, 2, True, True, bias=False)
    cell, layer_params = interop.from_torch(module)
    for leaf_path, leaf in jax.tree_util.tree_leaves_with_path(layer_params):
        if jax.tree_util.keystr(leaf_path).endswith(("'b']", "'b_i']", "'b_h']")):
            assert np.all(np.asarray(leaf) == 0.0)
    assert max_deviation(module, make_inputs(LENGTHS), LENGTHS) < ATOL


@needs_torch
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.padding_invariance
def test_length_zero_on_the_jax_side(kind):
    # torch's pack_padded_sequence forbids length 0; the other rows still match torch,
    # and the empty row gives zero outputs and the initial (zero) final carry.
    module = make_module(kind, 2, True, True)
    lengths = np.array([3, 0, 5, 1])
    xs = make_inputs(lengths)
    keep = lengths > 0
    out, states = torch_run(module, xs[keep], lengths[keep])
    cell, layer_params = interop.from_torch(module)
    finals, hs = recurrence.stack(
        cell, layer_params, jnp.asarray(xs), jnp.asarray(lengths), bidirectional=True
    )
    hs = np.asarray(hs)
    np.testing.assert_allclose(hs[keep], out, atol=ATOL, rtol=RTOL)
    assert np.all(hs[~keep] == 0.0)
    for g, s in zip(jax_final_states(cell, finals, True), states):
        np.testing.assert_allclose(g[:, keep], s, atol=ATOL, rtol=RTOL)
        assert np.all(g[:, ~keep] == 0.0)


@needs_torch
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.roundtrip
def test_state_dict_roundtrip(kind, bidirectional):
    module = make_module(kind, 2, bidirectional, True)
    cell, layer_params = interop.from_torch(module)
    state = interop.to_torch_state_dict(cell, layer_params, bidirectional)
    fresh = make_module(kind, 2, bidirectional, False, seed=123)
    fresh.load_state_dict(state)  # strict: exactly the module's keys and shapes
    # Same function (the merged Elman/LSTM bias is split as bias_ih = b, bias_hh = 0) ...
    xs = make_inputs(LENGTHS)
    out_a, states_a = torch_run(module, xs, LENGTHS)
    out_b, states_b = torch_run(fresh, xs, LENGTHS)
    np.testing.assert_allclose(out_b, out_a, atol=ATOL, rtol=RTOL)
    for a, b in zip(states_a, states_b):
        np.testing.assert_allclose(b, a, atol=ATOL, rtol=RTOL)
    # ... and converting back gives exactly the same jax params.
    _, again = interop.from_torch(fresh)
    jax.tree.map(np.testing.assert_array_equal, again, layer_params)


@needs_torch
@pytest.mark.roundtrip
def test_state_dict_from_jax_init():
    cell = cells.gru(H)
    layer_params = recurrence.init_stack(jax.random.key(0), cell, D, num_layers=2)
    module = torch.nn.GRU(D, H, num_layers=2, batch_first=True)
    module.load_state_dict(interop.to_torch_state_dict(cell, layer_params, False))
    xs = make_inputs(LENGTHS)
    out, _ = torch_run(module, xs, LENGTHS)
    _, hs = recurrence.stack(cell, layer_params, jnp.asarray(xs), jnp.asarray(LENGTHS))
    np.testing.assert_allclose(np.asarray(hs), out, atol=ATOL, rtol=RTOL)


@needs_torch
@pytest.mark.bad_input
def test_to_torch_state_dict_rejects_mismatches():
    cell = cells.lstm(H)
    layer_params = recurrence.init_stack(jax.random.key(0), cell, D, num_layers=1)
    with pytest.raises(ValueError, match="forward"):
        interop.to_torch_state_dict(cell, layer_params, True)
    with pytest.raises(ValueError, match="hidden_size"):
        interop.to_torch_state_dict(cells.lstm(H + 1), layer_params, False)
    with pytest.raises(ValueError, match="keys"):
        interop.to_torch_state_dict(cells.gru(H), layer_params, False)
    with pytest.raises(ValueError, match="non-empty"):
        interop.to_torch_state_dict(cell, [], False)


@needs_torch
@pytest.mark.bad_input
def test_rejects_unsupported_modules():
    with pytest.raises(ValueError, match="relu"):
        interop.from_torch(torch.nn.RNN(D, H, nonlinearity="relu"))
    with pytest.raises(ValueError, match="proj_size"):
        interop.from_torch(torch.nn.LSTM(D, H, proj_size=2))
    with pytest.raises(TypeError, match="torch.nn.RNN, torch.nn.GRU or torch.nn.LSTM"):
        interop.from_torch(torch.nn.Linear(D, H))
    with pytest.raises(TypeError, match="torch.nn.RNN, torch.nn.GRU or torch.nn.LSTM"):
        interop.from_torch(torch.nn.GRUCell(D, H))


@needs_torch
@pytest.mark.dtype
def test_dtype_option():
    _, layer_params = interop.from_torch(make_module("lstm", 1, False, True).double())
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(layer_params))
    _, layer_params = interop.from_torch(make_module("gru", 1, False, True), dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(layer_params))


@pytest.mark.bad_input
def test_conversions_without_torch_raise_an_import_error_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, as without it
    for convert in (
        lambda: interop.from_torch(object()),
        lambda: interop.to_torch_state_dict(cells.gru(H), [{}], False),
    ):
        with pytest.raises(ImportError, match="needs PyTorch installed"):
            convert()
