"""PyTorch weight interop: ``torch.nn.RNN/GRU/LSTM`` <-> jaxseq cells and stacks.

:func:`from_torch` turns a PyTorch recurrent module into ``(cell, layer_params)``
for :func:`jaxseq.recurrence.stack`; :func:`to_torch_state_dict` goes back to a
``state_dict`` that ``load_state_dict`` accepts. Weight layout (PyTorch stores
``[gates * H, in]`` matrices and computes ``x W^T``; jaxseq stores ``[in, gates * H]``
and computes ``x W``)::

    torch nn.RNN (tanh)      jaxseq cells.elman     U = weight_ih.T, W = weight_hh.T,
                                                     b = bias_ih + bias_hh
    torch nn.GRU  (r, z, n)  jaxseq cells.gru       W_i = weight_ih.T, W_h = weight_hh.T,
                                                     b_i = bias_ih, b_h = bias_hh
    torch nn.LSTM (i, f, g, o) jaxseq cells.lstm    W_i = weight_ih.T, W_h = weight_hh.T,
                                                     b = bias_ih + bias_hh

Layer k of direction ``d`` is ``weight_ih_l{k}`` (forward) / ``weight_ih_l{k}_reverse``
(backward); a bidirectional layer becomes ``{"forward": p, "backward": p}``.

PyTorch's ``batch_first`` changes only the input layout, not the weights: jaxseq
always takes ``[B, T, D]``, so transpose ``[T, B, D]`` inputs yourself. The
module's ``dropout`` is a training-time setting and is not part of the weights
(pass it as ``dropout_rate`` to ``stack``). torch is imported lazily: it is not a
dependency of jaxseq.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

from jaxseq import cells

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["from_torch", "to_torch_state_dict"]

_MODES = {"RNN_TANH": "elman", "GRU": "gru", "LSTM": "lstm"}
_GATES = {"elman": 1, "gru": 3, "lstm": 4}


def _torch_cell(name: str, hidden_size: int) -> cells.Cell:
    """The jaxseq cell that computes exactly what PyTorch's cell computes."""
    if name == "elman":
        return cells.elman(hidden_size)
    if name == "gru":
        return cells.gru(hidden_size)
    # forget_bias only sets the initial forget-gate bias (used by `cell.init`);
    # 0.0 is PyTorch's convention. The converted params carry the real biases.
    return cells.lstm(hidden_size, forget_bias=0.0)


def _import_torch():
    """PyTorch, imported when a conversion is called (``import jaxseq`` never needs it)."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "jaxseq.interop converts PyTorch modules and needs PyTorch installed "
            "(e.g. `pip install torch`); the rest of jaxseq works without it"
        ) from error
    return torch


def _numpy(tensor) -> np.ndarray:
    torch = _import_torch()

    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


def from_torch(module, *, dtype=jnp.float32):
    """Convert a ``torch.nn.RNN`` / ``GRU`` / ``LSTM`` into a jaxseq cell and stack params.

    Any ``num_layers``, bidirectional or not, ``batch_first`` or not, ``bias``
    True or False (no bias = zero biases).

    Args:
      module: a ``torch.nn.RNN`` with ``nonlinearity="tanh"``, a ``torch.nn.GRU``
        or a ``torch.nn.LSTM`` with ``proj_size=0``.
      dtype: the dtype of the returned arrays.

    Returns:
      ``(cell, layer_params)``: a :class:`jaxseq.cells.Cell` and a list with one
      params pytree per layer (``{"forward": p, "backward": p}`` when
      ``module.bidirectional``), such that
      ``recurrence.stack(cell, layer_params, xs, lengths, bidirectional=module.bidirectional)``
      computes what the module computes on a packed batch, with any ``method=``
      (the cell is a built-in one: the default is ``jaxseq.Fused()``). The per-layer final
      carries match ``h_n`` (and ``c_n``), whose layout is
      ``[num_layers * num_directions, B, H]`` with index ``layer * num_directions
      + direction``.

    Raises:
      TypeError: ``module`` is not one of those three PyTorch modules.
      ValueError: a ReLU ``nn.RNN`` or an ``nn.LSTM`` with ``proj_size > 0``
        (no jaxseq equivalent).
    """
    torch = _import_torch()

    if not isinstance(module, torch.nn.RNNBase):
        raise TypeError(
            "`module` must be a torch.nn.RNN, torch.nn.GRU or torch.nn.LSTM, "
            f"got {type(module).__name__}"
        )
    if module.mode == "RNN_RELU":
        raise ValueError(
            "torch.nn.RNN with nonlinearity='relu' is not supported: jaxseq's Elman cell "
            "uses tanh (convert an nn.RNN built with nonlinearity='tanh')"
        )
    if module.mode not in _MODES:
        raise ValueError(f"unsupported torch recurrent module mode {module.mode!r}")
    if getattr(module, "proj_size", 0) > 0:
        raise ValueError(
            f"torch.nn.LSTM with proj_size={module.proj_size} (projected LSTM) is not "
            "supported: jaxseq's LSTM cell has no output projection; use proj_size=0"
        )
    name = _MODES[module.mode]
    hidden_size = module.hidden_size
    state = module.state_dict()

    def direction(layer: int, suffix: str) -> dict:
        w_ih = _numpy(state[f"weight_ih_l{layer}{suffix}"])
        w_hh = _numpy(state[f"weight_hh_l{layer}{suffix}"])
        rows = w_ih.shape[0]
        if module.bias:
            b_ih = _numpy(state[f"bias_ih_l{layer}{suffix}"])
            b_hh = _numpy(state[f"bias_hh_l{layer}{suffix}"])
        else:
            b_ih = b_hh = np.zeros((rows,), np.float32)
        as_jax = lambda a: jnp.asarray(np.ascontiguousarray(a), dtype=dtype)
        if name == "elman":
            return {"U": as_jax(w_ih.T), "W": as_jax(w_hh.T), "b": as_jax(b_ih + b_hh)}
        if name == "gru":
            return {
                "W_i": as_jax(w_ih.T),
                "W_h": as_jax(w_hh.T),
                "b_i": as_jax(b_ih),
                "b_h": as_jax(b_hh),
            }
        return {"W_i": as_jax(w_ih.T), "W_h": as_jax(w_hh.T), "b": as_jax(b_ih + b_hh)}

    layer_params = []
    for layer in range(module.num_layers):
        if module.bidirectional:
            layer_params.append(
                {"forward": direction(layer, ""), "backward": direction(layer, "_reverse")}
            )
        else:
            layer_params.append(direction(layer, ""))
    return _torch_cell(name, hidden_size), layer_params


def _check_direction(name: str, params, hidden_size: int, where: str) -> None:
    keys = {"elman": {"U", "W", "b"}, "gru": {"W_i", "W_h", "b_i", "b_h"}}.get(
        name, {"W_i", "W_h", "b"}
    )
    if not isinstance(params, dict) or set(params) != keys:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{where}: expected {name} params with keys {sorted(keys)}, got {got}")
    w_h = params["W" if name == "elman" else "W_h"]
    want = (hidden_size, _GATES[name] * hidden_size)
    if tuple(w_h.shape) != want:
        raise ValueError(
            f"{where}: the recurrent matrix must have shape {want} for hidden_size "
            f"{hidden_size}, got {tuple(w_h.shape)}"
        )


def to_torch_state_dict(cell: cells.Cell, layer_params, bidirectional: bool):
    """A PyTorch ``state_dict`` for the matching ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``.

    The module to load it into is
    ``nn.{RNN,GRU,LSTM}(input_size, cell.hidden_size, num_layers=len(layer_params),
    bidirectional=bidirectional, bias=True)`` (``batch_first`` and ``dropout``
    as you like). Elman and LSTM cells have one bias where PyTorch has two, so
    ``bias_ih`` gets it and ``bias_hh`` is zero: the module computes the same
    function, and ``from_torch`` of it gives back the same params.

    Args:
      cell: an Elman, GRU or LSTM cell (``cell.name`` ``"elman"``, ``"gru"``,
        ``"lstm"``).
      layer_params: a list of per-layer params, as for
        :func:`jaxseq.recurrence.stack`.
      bidirectional: whether each layer is ``{"forward": p, "backward": p}``.

    Returns:
      ``collections.OrderedDict`` of float32 CPU ``torch.Tensor``.
    """
    torch = _import_torch()

    name = getattr(cell, "name", None)
    if name not in _GATES:
        raise ValueError(f"`cell` must be an elman, gru or lstm cell, got name {name!r}")
    if not isinstance(layer_params, (list, tuple)) or not layer_params:
        raise ValueError("`layer_params` must be a non-empty list of per-layer params")
    if not isinstance(bidirectional, bool):
        raise TypeError(f"`bidirectional` must be a Python bool, got {bidirectional!r}")

    def tensor(a) -> Tensor:
        return torch.from_numpy(np.array(np.asarray(a, dtype=np.float32)))

    state = collections.OrderedDict()
    for layer, params in enumerate(layer_params):
        if bidirectional:
            if not isinstance(params, dict) or set(params) != {"forward", "backward"}:
                raise ValueError(
                    f"layer_params[{layer}] must be {{'forward': ..., 'backward': ...}} "
                    "when bidirectional=True"
                )
            directions = [("", params["forward"]), ("_reverse", params["backward"])]
        else:
            directions = [("", params)]
        for suffix, p in directions:
            where = f"layer_params[{layer}]" + (
                f"[{'backward' if suffix else 'forward'!r}]" if bidirectional else ""
            )
            _check_direction(name, p, cell.hidden_size, where)
            if name == "elman":
                w_ih, w_hh, b_ih = p["U"], p["W"], p["b"]
                b_hh = np.zeros_like(np.asarray(b_ih))
            elif name == "gru":
                w_ih, w_hh, b_ih, b_hh = p["W_i"], p["W_h"], p["b_i"], p["b_h"]
            else:
                w_ih, w_hh, b_ih = p["W_i"], p["W_h"], p["b"]
                b_hh = np.zeros_like(np.asarray(b_ih))
            state[f"weight_ih_l{layer}{suffix}"] = tensor(np.asarray(w_ih).T)
            state[f"weight_hh_l{layer}{suffix}"] = tensor(np.asarray(w_hh).T)
            state[f"bias_ih_l{layer}{suffix}"] = tensor(b_ih)
            state[f"bias_hh_l{layer}{suffix}"] = tensor(b_hh)
    return state
