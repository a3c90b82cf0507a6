"""The implementations of the benchmark task, each built from the same weights and batch.

Every builder returns an :class:`Impl`: a blocking ``train`` (one forward + backward
+ Adam step, updating its own copy of the weights), a blocking ``infer`` (the logits
of the batch), and the losses of its first two train steps from the shared initial
weights (the equivalence check: the same function and the same gradients give the
same two numbers).

* ``jaxseq-default`` / ``jaxseq-fused`` / ``jaxseq-scan``: the library's labeler
  (:func:`jaxseq.models.labeler_apply`) with ``method=None`` (what a user gets
  without choosing), ``method=jaxseq.Fused()`` or ``method=jaxseq.Scan()``.
* ``torch``: ``nn.RNN``/``nn.GRU``/``nn.LSTM`` on the padded batch, masked loss
  (``ignore_index``); ``torch+pack``: the same behind ``pack_padded_sequence``.
* ``flax``: linen ``nn.RNN(cell)(x, seq_lengths=lengths)`` with ``SimpleCell``,
  ``GRUCell`` and ``OptimizedLSTMCell``.
* ``jaxseq-default-dp`` / ``flax-dp``: the same jax steps data-parallel over a mesh
  of all devices (:mod:`jaxseq.training.distributed`'s shardings: batch split along B,
  state replicated, ``jit`` with in/out shardings). On a CPU the benchmark makes
  one XLA host device per core, so each core runs its half of the batch's
  recurrence (XLA:CPU runs a loop's small per-step matmul on one core).

The loss is the mean cross-entropy over the valid tokens in all of them. Adam with
learning rate 1e-3 and the default betas/eps (optax and PyTorch agree).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import CLASSES, EMBED, VOCAB, Batch, Shape

LEARNING_RATE = 1e-3


@dataclasses.dataclass
class Impl:
    name: str
    train: Callable[[], None]
    infer: Callable[[], None]
    losses: tuple[float, float]
    compile_s: dict = dataclasses.field(default_factory=dict)  # "train"/"infer" -> seconds
    temp_bytes: dict = dataclasses.field(default_factory=dict)  # "train"/"infer" -> bytes


# ---------------------------------------------------------------------------- JAX


def _jax_impl(name: str, logits_fn, params, batch: Batch, *, mesh=None) -> Impl:
    """A jitted Adam train step and a jitted forward for ``logits_fn(params, ids, lengths)``;
    with a ``mesh``, data-parallel over it (batch sharded along B, state replicated)."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxseq
    from jaxseq.training import distributed

    ids, labels, lengths = (jnp.asarray(a) for a in batch)
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(params, ids, labels, lengths):
        logits = logits_fn(params, ids, lengths)
        mask = jaxseq.length_mask(lengths, ids.shape[1])
        return jaxseq.sequence_labeling_loss(
            logits, labels, where=mask, reduction="mean_over_tokens"
        )

    def train_step(params, opt_state, ids, labels, lengths):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, labels, lengths)
        with jax.numpy_dtype_promotion("standard"):  # optax is not strict-clean
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, loss

    params = jax.tree.map(jnp.asarray, params)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    shardings = {}
    if mesh is not None:
        rep, data = distributed.replicated_sharding(mesh), distributed.data_sharding(mesh)
        params, opt_state = jax.device_put((params, opt_state), rep)
        ids, labels, lengths = jax.device_put((ids, labels, lengths), data)
        shardings = {
            "train": dict(in_shardings=(rep, rep, data, data, data), out_shardings=(rep, rep, rep)),
            "infer": dict(in_shardings=(rep, data, data), out_shardings=data),
        }

    start = time.perf_counter()
    train = jax.jit(train_step, donate_argnums=(0, 1), **shardings.get("train", {}))
    train = train.lower(params, opt_state, ids, labels, lengths).compile()
    train_compile = time.perf_counter() - start
    start = time.perf_counter()
    infer = jax.jit(logits_fn, **shardings.get("infer", {})).lower(params, ids, lengths).compile()
    infer_compile = time.perf_counter() - start

    infer_params = jax.tree.map(jnp.copy, params)
    state = {"params": params, "opt_state": opt_state}

    def run_train():
        state["params"], state["opt_state"], loss = train(
            state["params"], state["opt_state"], ids, labels, lengths
        )
        loss.block_until_ready()
        return loss

    losses = (float(run_train()), float(run_train()))

    def run_infer():
        infer(infer_params, ids, lengths).block_until_ready()

    return Impl(
        name,
        run_train,
        run_infer,
        losses,
        compile_s={"train": train_compile, "infer": infer_compile},
        temp_bytes={
            "train": _temp_bytes(train),
            "infer": _temp_bytes(infer),
        },
    )


def _temp_bytes(compiled) -> int | None:
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def jaxseq_impl(
    cell_name: str, shape: Shape, weights: dict, batch: Batch, *, method, name: str, mesh=None
):
    """The jaxseq labeler (:func:`jaxseq.models.labeler_apply`) with the given ``method``
    (data-parallel over ``mesh`` if given)."""
    from jaxseq import models

    config = models.SequenceModelConfig(
        num_classes=CLASSES,
        hidden_size=shape.hidden,
        cell=cell_name,
        vocab_size=VOCAB,
        embed_dim=EMBED,
        method=method,
    )
    params = {
        "embed": {"E": weights["embed"]},
        "rnn": [weights["rnn"]],
        "output": {"V": weights["V"], "c": weights["c"]},
    }

    def logits_fn(params, ids, lengths):
        return models.labeler_apply(params, config, ids, lengths)

    return _jax_impl(name, logits_fn, params, batch, mesh=mesh)


def fused_plan_impl(cell_name: str, shape: Shape, weights: dict, batch: Batch, *, plan, name):
    """The jaxseq labeler on the fused path with a given (private) plan: for lever A/B runs."""
    import jax.numpy as jnp

    from jaxseq import _fused, cells

    cell = {"elman": cells.elman, "gru": cells.gru, "lstm": cells.lstm}[cell_name](shape.hidden)

    def logits_fn(params, ids, lengths):
        x_BTE = jnp.take(params["embed"], ids, axis=0)
        _, hs_BTH = _fused.rnn(cell, params["rnn"], x_BTE, lengths, None, reverse=False, plan=plan)
        return hs_BTH @ params["V"] + params["c"].reshape(1, 1, -1)

    return _jax_impl(name, logits_fn, weights, batch)


def _flax_params(cell_name: str, weights: dict, cell_scope: str) -> dict:
    """jaxseq-layout weights -> the flax linen labeler's params."""
    rnn = weights["rnn"]
    hidden = weights["V"].shape[0]

    def block(array, k):
        return array[..., k * hidden : (k + 1) * hidden]

    if cell_name == "elman":
        cell = {"i": {"kernel": rnn["U"], "bias": rnn["b"]}, "h": {"kernel": rnn["W"]}}
    elif cell_name == "gru":
        # flax's GRU has no bias on hr/hz: fold b_hr, b_hz into the input biases.
        cell = {
            "ir": {"kernel": block(rnn["W_i"], 0), "bias": block(rnn["b_i"] + rnn["b_h"], 0)},
            "iz": {"kernel": block(rnn["W_i"], 1), "bias": block(rnn["b_i"] + rnn["b_h"], 1)},
            "in": {"kernel": block(rnn["W_i"], 2), "bias": block(rnn["b_i"], 2)},
            "hr": {"kernel": block(rnn["W_h"], 0)},
            "hz": {"kernel": block(rnn["W_h"], 1)},
            "hn": {"kernel": block(rnn["W_h"], 2), "bias": block(rnn["b_h"], 2)},
        }
    else:
        cell = {}
        for k, gate in enumerate("ifgo"):
            cell[f"i{gate}"] = {"kernel": block(rnn["W_i"], k)}
            cell[f"h{gate}"] = {"kernel": block(rnn["W_h"], k), "bias": block(rnn["b"], k)}
    return {
        "Embed_0": {"embedding": weights["embed"]},
        cell_scope: cell,
        "Dense_0": {"kernel": weights["V"], "bias": weights["c"]},
    }


def flax_impl(cell_name: str, shape: Shape, weights: dict, batch: Batch, *, mesh=None):
    """flax linen: ``nn.RNN(cell)(x, seq_lengths=lengths)`` between an Embed and a Dense
    (data-parallel over ``mesh`` if given)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    cell_type = {"elman": nn.SimpleCell, "gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}[cell_name]

    class Labeler(nn.Module):
        @nn.compact
        def __call__(self, ids, lengths):
            x = nn.Embed(VOCAB, EMBED)(ids)
            hs = nn.RNN(cell_type(shape.hidden))(x, seq_lengths=lengths)
            return nn.Dense(CLASSES)(hs)

    model = Labeler()
    # The cell is built in Labeler's scope, so its params sit at "<CellType>_0".
    params = _flax_params(cell_name, weights, f"{cell_type.__name__}_0")
    expected = model.init(jax.random.key(0), jnp.asarray(batch.ids), jnp.asarray(batch.lengths))
    want = jax.tree.map(lambda a: a.shape, expected["params"])
    got = jax.tree.map(lambda a: a.shape, params)
    if want != got:
        raise AssertionError(f"flax params layout changed: want {want}, got {got}")

    def logits_fn(params, ids, lengths):
        return model.apply({"params": params}, ids, lengths)

    return _jax_impl(
        "flax" + ("-dp" if mesh is not None else ""), logits_fn, params, batch, mesh=mesh
    )


# ---------------------------------------------------------------------------- PyTorch


def torch_impl(cell_name: str, shape: Shape, weights: dict, batch: Batch, *, packed: bool):
    """PyTorch ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (batch-first), with or without packing."""
    import torch
    from torch import nn
    from torch.nn.utils import rnn as rnn_utils

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rnn_type = {"elman": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cell_name]

    class Labeler(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, EMBED)
            self.rnn = rnn_type(EMBED, shape.hidden, batch_first=True)
            self.out = nn.Linear(shape.hidden, CLASSES)

        def forward(self, ids, lengths_cpu):
            x = self.embed(ids)
            if packed:
                x = rnn_utils.pack_padded_sequence(
                    x, lengths_cpu, batch_first=True, enforce_sorted=False
                )
                hs, _ = self.rnn(x)
                hs, _ = rnn_utils.pad_packed_sequence(
                    hs, batch_first=True, total_length=shape.steps
                )
            else:
                hs, _ = self.rnn(x)
            return self.out(hs)

    model = Labeler()
    rnn = weights["rnn"]
    if cell_name == "elman":
        w_ih, w_hh, b_ih, b_hh = rnn["U"], rnn["W"], rnn["b"], np.zeros_like(rnn["b"])
    elif cell_name == "gru":
        w_ih, w_hh, b_ih, b_hh = rnn["W_i"], rnn["W_h"], rnn["b_i"], rnn["b_h"]
    else:
        w_ih, w_hh, b_ih, b_hh = rnn["W_i"], rnn["W_h"], rnn["b"], np.zeros_like(rnn["b"])
    state = {
        "embed.weight": weights["embed"],
        "rnn.weight_ih_l0": w_ih.T,
        "rnn.weight_hh_l0": w_hh.T,
        "rnn.bias_ih_l0": b_ih,
        "rnn.bias_hh_l0": b_hh,
        "out.weight": weights["V"].T,
        "out.bias": weights["c"],
    }
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    ids = torch.from_numpy(batch.ids.astype(np.int64)).to(device)
    lengths_cpu = torch.from_numpy(batch.lengths.astype(np.int64))
    valid = np.arange(shape.steps)[None, :] < batch.lengths[:, None]
    labels = torch.from_numpy(np.where(valid, batch.labels, -100).astype(np.int64)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run_train():
        optimizer.zero_grad(set_to_none=True)
        logits = model(ids, lengths_cpu)
        loss = nn.functional.cross_entropy(logits.reshape(-1, CLASSES), labels.reshape(-1))
        loss.backward()
        optimizer.step()
        sync()
        return loss.detach()

    losses = (float(run_train()), float(run_train()))
    infer_model = Labeler()
    infer_model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    )
    infer_model.to(device).eval()

    def run_infer():
        with torch.inference_mode():
            infer_model(ids, lengths_cpu)
        sync()

    peak = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run_train()
        peak["train"] = torch.cuda.max_memory_allocated()
    return Impl("torch+pack" if packed else "torch", run_train, run_infer, losses, temp_bytes=peak)
