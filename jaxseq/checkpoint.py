"""Checkpoints of a train state with orbax: atomic saves, checked restores.

Orbax writes each step to a temporary folder and renames it when complete, so
an interrupted save never leaves a checkpoint that looks finished. Restoring
compares the stored tree (paths, shapes, dtypes) with the target first and
names the first mismatching leaf instead of failing deep inside orbax.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the state it is restored into."""


def manager(directory: str | os.PathLike, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A checkpoint manager for ``directory`` (created if missing)."""
    directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Save ``state`` as step ``step`` and wait until it is complete on disk."""
    mngr.save(int(step), args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()


def _key_name(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _leaves_by_path(tree) -> dict[str, Any]:
    """Leaves keyed by a container-neutral path ("opt_state/0/mu/rnn/0/W_h"): a
    checkpoint stores dataclasses and named tuples as dicts."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(entry) for entry in path): leaf for path, leaf in flat}


def _stored_leaves(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
    try:
        metadata = mngr.item_metadata(step)
    except Exception:  # noqa: BLE001 - metadata is best effort; restore will still check
        return None
    if metadata is None:
        return None
    tree = getattr(metadata, "tree", metadata)
    try:
        return _leaves_by_path(tree)
    except Exception:  # noqa: BLE001
        return None


def check_compatible(mngr: ocp.CheckpointManager, step: int, target: Any) -> None:
    """Raise :class:`CheckpointMismatchError` naming the first leaf that differs."""
    stored = _stored_leaves(mngr, step)
    if stored is None:
        return
    wanted = _leaves_by_path(target)
    stored_shapes = {k: tuple(getattr(v, "shape", ())) for k, v in stored.items()}
    wanted_shapes = {k: tuple(np.shape(v)) for k, v in wanted.items()}
    missing = sorted(set(wanted_shapes) - set(stored_shapes))
    extra = sorted(set(stored_shapes) - set(wanted_shapes))
    if missing or extra:
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {mngr.directory} has a different structure: "
            f"missing leaves {missing[:5]}, unexpected leaves {extra[:5]}"
        )
    for key, shape in wanted_shapes.items():
        if stored_shapes[key] != shape:
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {mngr.directory}: leaf {key} has shape "
                f"{stored_shapes[key]} but the model expects {shape}"
            )


def _abstract_leaf(x):
    leaf = ocp.utils.to_shape_dtype_struct(x)
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
        # Without a sharding orbax would reuse the saved one, which fails when the
        # checkpoint was written on another device count.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        leaf = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)
    return leaf


def restore(mngr: ocp.CheckpointManager, target: Any, step: int | None = None) -> Any:
    """Restore step ``step`` (default: the latest) into the structure of ``target``.

    ``target`` is a state of the wanted structure (e.g. a freshly initialised
    one); its shapes, dtypes and shardings decide those of the result, so a
    checkpoint restores on any device count (see :mod:`jaxseq.distributed`).
    NumPy leaves (no sharding) restore onto the default device.
    """
    if step is None:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    check_compatible(mngr, step, target)
    abstract = jax.tree.map(_abstract_leaf, target)
    try:
        return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as e:
        raise CheckpointMismatchError(f"checkpoint step {step} does not fit the target: {e}") from e
