"""Checkpoints of a train state with orbax: atomic saves, checked restores.

* Atomic: orbax writes each step to ``<step>.orbax-checkpoint-tmp`` and renames
  it when complete, so an interrupted save (a crash, SIGKILL) never leaves a
  checkpoint that looks finished; :func:`restore` and ``latest_step`` only see
  committed steps (tests/test_faults.py kills processes inside saves with the
  fault-injection hook :data:`FAULT_ENV`).
* Verified: :func:`save` stores a SHA-256 digest of every leaf (dtype, shape and
  bytes) in the step's metadata, written inside the same atomic folder, and
  :func:`restore` recomputes them: a bit flipped on disk raises
  :class:`CheckpointCorruptError` naming the leaf instead of restoring wrong
  numbers (orbax alone restores a flipped byte silently). Checkpoints written
  without digests (plain orbax) restore unverified. Cost: one SHA-256 pass over
  the state per save and per restore (0.7 GB/s measured on this project's CPU).
* Checked: :func:`save` also stores the tree spec of the state (every leaf's
  path, shape and dtype) in the same metadata, and :func:`restore` compares it
  with the target before reading any array, in any process (a run resumed after
  a crash included): a checkpoint of another model raises
  :class:`CheckpointMismatchError` naming the leaf paths (``params/rnn/0/W_h``),
  the stored and the expected shape and dtype. Checkpoints written without the
  spec are compared with orbax's own tree metadata (paths and shapes). A step
  that is not on disk raises ``FileNotFoundError`` listing the committed steps.

Fault injection (for tests): when the environment variable :data:`FAULT_ENV`
is ``"<phase>@<step>"``, :func:`save` of that step ends the process with
``os._exit(FAULT_EXIT_CODE)`` at that phase of the save, after printing a line
to stderr. The phases (:data:`FAULT_PHASES`):

* ``"mid_write"``: the arrays are written into the step's temporary folder,
  but the item's folder is not finalized and the step is not committed;
* ``"before_commit"``: every byte of the step is written; the commit (the
  commit file and the rename of the temporary folder) has not happened.

The exit code tells a test that the process died inside the save, at a chosen
point, and not by timing. Unset (the normal case), nothing changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxseq import _checks


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the state it is restored into."""


class CheckpointCorruptError(ValueError):
    """A restored leaf does not match the digest written with it."""


# Key of the per-leaf digests in a step's custom metadata.
DIGESTS_KEY = "jaxseq_leaf_sha256"
# Key of the tree spec (leaf path -> {"shape", "dtype"}) in a step's custom metadata.
SPEC_KEY = "jaxseq_tree_spec"

#: The environment variable of the fault-injection hook (tests only): ``"<phase>@<step>"``.
FAULT_ENV = "JAXSEQ_FAULT_IN_SAVE"
#: The phases of a save the hook can stop the process at (see the module doc).
FAULT_PHASES = ("mid_write", "before_commit")
#: The exit status of a process the hook ended.
FAULT_EXIT_CODE = 86

# How many leaves an error message lists per kind of difference.
_LISTED = 8


def manager(
    directory: str | os.PathLike,
    *,
    max_to_keep: int = 2,
    best_fn: Callable[[Mapping[str, float]], float] | None = None,
    best_mode: str = "min",
) -> ocp.CheckpointManager:
    """A checkpoint manager for ``directory`` (created if missing).

    Without ``best_fn`` it keeps the latest ``max_to_keep`` steps. With
    ``best_fn`` (``metrics -> value``, the metrics given to :func:`save`) it keeps
    the ``max_to_keep`` best steps by that value (``best_mode`` ``"min"`` or
    ``"max"``) *and* the latest step, whatever its value, so that resuming
    (which restores the latest step) continues where the run stopped: orbax's
    ``CheckpointManagerOptions(best_fn=, best_mode=)`` rank the steps (and give
    ``mngr.best_step()``), and its preservation policies ``BestN(n=max_to_keep,
    keep_checkpoints_without_metrics=False)`` or ``LatestN(n=1)`` decide what
    stays. Steps saved without metrics are kept only while they are the latest.
    """
    _checks.check_int(max_to_keep, "max_to_keep", 1)
    directory = os.path.abspath(os.fspath(directory))
    if best_fn is None:
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    else:
        if not callable(best_fn):
            raise TypeError(f"`best_fn` must be callable (metrics -> value), got {best_fn!r}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"`best_mode` must be 'min' or 'max', got {best_mode!r}")
        policies = ocp.checkpoint_managers
        preservation = policies.AnyPreservationPolicy(
            [
                policies.BestN(
                    get_metric_fn=best_fn,
                    reverse=best_mode == "min",
                    n=max_to_keep,
                    keep_checkpoints_without_metrics=False,
                ),
                policies.LatestN(n=1),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            best_fn=best_fn,
            best_mode=best_mode,
            keep_checkpoints_without_metrics=False,
            preservation_policy=preservation,
            create=True,
        )
    # The handler is registered up front so that a manager that has not saved yet
    # (a new process resuming) reads the step's metadata too.
    return ocp.CheckpointManager(
        directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
    )


def _host_value(x) -> np.ndarray | None:
    """The full value of a leaf on this host, or None when it is sharded across
    processes (its digest is then not recorded)."""
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.is_fully_addressable:
            if not x.is_fully_replicated:
                return None
            x = x.addressable_shards[0].data
    return np.asarray(x)


def leaf_digest(x) -> dict[str, Any] | None:
    """``{"dtype", "shape", "sha256"}`` of a leaf's bytes (None if not on this host)."""
    value = _host_value(x)
    if value is None:
        return None
    sha256 = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
    return {"dtype": value.dtype.str, "shape": list(value.shape), "sha256": sha256}


def leaf_digests(tree: Any) -> dict[str, dict[str, Any]]:
    """Leaf path -> :func:`leaf_digest` for every leaf whose value is on this host."""
    digests = {path: leaf_digest(leaf) for path, leaf in _leaves_by_path(tree).items()}
    return {path: digest for path, digest in digests.items() if digest is not None}


def leaf_spec(x) -> dict[str, Any]:
    """``{"shape": [...], "dtype": "float32"}`` of a leaf (an array, a
    ``jax.ShapeDtypeStruct`` or a scalar); the global shape of a sharded array."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = np.asarray(x).dtype
    return {"shape": [int(d) for d in np.shape(x)], "dtype": str(dtype)}


def tree_spec(tree: Any) -> dict[str, dict[str, Any]]:
    """Leaf path (``"params/rnn/0/W_h"``) -> :func:`leaf_spec` of every leaf."""
    return {path: leaf_spec(leaf) for path, leaf in _leaves_by_path(tree).items()}


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    state: Any,
    *,
    metrics: Mapping[str, float] | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> None:
    """Save ``state`` as step ``step`` with its tree spec and leaf digests; wait
    until it is committed on disk.

    ``metrics`` (floats; a manager made with ``best_fn``) rank the step among the
    best ones; ``extra_metadata`` (JSON-serialisable) is stored in the step's
    custom metadata beside the digests (read it back with :func:`step_metadata`).
    """
    step = int(step)
    custom = {DIGESTS_KEY: leaf_digests(state), SPEC_KEY: tree_spec(state)}
    clashes = set(extra_metadata or {}) & set(custom)
    if clashes:
        raise ValueError(f"`extra_metadata` keys {sorted(clashes)} are reserved")
    custom.update(extra_metadata or {})
    with _fault_injection(mngr, step):
        mngr.save(
            step,
            args=ocp.args.StandardSave(state),
            metrics=None if metrics is None else dict(metrics),
            custom_metadata=custom,
        )
        mngr.wait_until_finished()


def step_metadata(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The custom metadata stored with ``step`` (what :func:`save` wrote)."""
    return dict(mngr.metadata(step).custom_metadata or {})


@contextlib.contextmanager
def _fault_injection(mngr: ocp.CheckpointManager, step: int) -> Iterator[None]:
    """The test hook of :data:`FAULT_ENV` (see the module doc); a no-op unless set."""
    plan = os.environ.get(FAULT_ENV, "")
    if not plan:
        yield
        return
    phase, _, at = plan.partition("@")
    if phase not in FAULT_PHASES or not at.isdigit():
        raise ValueError(
            f"{FAULT_ENV}={plan!r}: expected '<phase>@<step>' with <phase> one of "
            f"{', '.join(FAULT_PHASES)} (e.g. 'before_commit@12'); unset it to save normally"
        )
    if int(at) != step:
        yield
        return
    temporary_path = ocp.path.atomicity.AtomicRenameTemporaryPath
    original = temporary_path.finalize
    root = os.path.abspath(os.fspath(mngr.directory))

    async def finalize(self, *args, **kwargs):
        # Orbax finalizes the item's folder ("default") inside the step's temporary
        # folder first (its arrays are written then), and the step's folder last.
        final = os.path.abspath(os.fspath(self.get_final()))
        reached = "before_commit" if os.path.dirname(final) == root else "mid_write"
        if reached == phase:
            sys.stderr.write(
                f"jaxseq fault injection ({FAULT_ENV}={plan}): exiting with status "
                f"{FAULT_EXIT_CODE} inside the save of step {step} at phase {phase}, "
                f"temporary folder {self.get()}\n"
            )
            sys.stderr.flush()
            os._exit(FAULT_EXIT_CODE)
        return await original(self, *args, **kwargs)

    temporary_path.finalize = finalize
    try:
        yield
    finally:
        temporary_path.finalize = original
    raise RuntimeError(
        f"{FAULT_ENV}={plan!r}: the save of step {step} finished without reaching phase "
        f"{phase!r}; this orbax version commits differently and the hook needs updating"
    )


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


def committed_steps(mngr: ocp.CheckpointManager) -> list[int]:
    """The committed steps in ``mngr.directory``, re-read from disk, in order."""
    mngr.reload()
    return sorted(int(s) for s in mngr.all_steps())


def _interrupted_saves(mngr: ocp.CheckpointManager) -> list[str]:
    directory = Path(os.fspath(mngr.directory))
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name)


def _stored_spec(mngr: ocp.CheckpointManager, step: int) -> dict[str, dict[str, Any]] | None:
    """The tree spec of ``step`` on disk: the one :func:`save` wrote, else (a plain
    orbax checkpoint) paths, shapes and dtypes from orbax's tree metadata, else None."""
    try:
        custom = mngr.metadata(step).custom_metadata or {}
    except Exception:  # noqa: BLE001 - unreadable step metadata: try orbax's tree metadata
        custom = {}
    if SPEC_KEY in custom:
        return custom[SPEC_KEY]
    tree = None
    try:
        tree = mngr.item_metadata(step)
    except Exception:  # noqa: BLE001 - a manager without the handler: read the item folder
        pass
    if tree is None:
        item = Path(os.fspath(mngr.directory)) / str(step) / "default"
        if item.is_dir():
            try:
                tree = ocp.StandardCheckpointHandler().metadata(item)
            except Exception:  # noqa: BLE001 - no tree metadata: orbax checks while restoring
                return None
    if tree is None:
        return None
    tree = getattr(tree, "tree", tree)
    spec = {}
    for path, leaf in _leaves_by_path(tree).items():
        dtype = getattr(leaf, "dtype", None)
        spec[path] = {
            "shape": [int(d) for d in getattr(leaf, "shape", ())],
            "dtype": None if dtype is None else str(dtype),
        }
    return spec


def _describe(spec: dict[str, Any]) -> str:
    shape = ", ".join(str(d) for d in spec["shape"])
    return f"{spec['dtype'] or '?'}[{shape}]"


def _same(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    if list(stored["shape"]) != list(wanted["shape"]):
        return False
    stored_dtype, wanted_dtype = stored.get("dtype"), wanted["dtype"]
    if stored_dtype is None or wanted_dtype is None:
        return True  # orbax's metadata has no dtype
    if stored_dtype.startswith("key<") or wanted_dtype.startswith("key<"):
        return True  # orbax stores a PRNG key as its data
    return stored_dtype == wanted_dtype


def _listed(paths: list[str]) -> str:
    more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
    return ", ".join(paths[:_LISTED]) + more


def check_compatible(mngr: ocp.CheckpointManager, step: int, target: Any) -> None:
    """Compare the tree (leaf paths, shapes, dtypes) stored on disk with step
    ``step`` with ``target``'s; raise :class:`CheckpointMismatchError` naming every
    leaf that differs (up to 8 of each kind), with the stored and the expected
    shape and dtype, in the target's leaf order. Steps with no tree metadata on
    disk are not compared."""
    stored = _stored_spec(mngr, step)
    if stored is None:
        return
    wanted = tree_spec(target)
    # In the target's leaf order (a train state lists step, params, opt_state).
    missing = [k for k in wanted if k not in stored]
    extra = [k for k in stored if k not in wanted]
    differ = [k for k in wanted if k in stored and not _same(stored[k], wanted[k])]
    if not (missing or extra or differ):
        return
    problems = [
        f"leaf {k} is stored as {_describe(stored[k])} but the target expects "
        f"{_describe(wanted[k])}"
        for k in differ[:_LISTED]
    ]
    if len(differ) > _LISTED:
        problems.append(f"{len(differ) - _LISTED} more leaves differ")
    if missing:
        problems.append(f"leaves missing from the checkpoint: {_listed(missing)}")
    if extra:
        problems.append(f"leaves in the checkpoint that the target lacks: {_listed(extra)}")
    raise CheckpointMismatchError(
        f"checkpoint step {step} in {mngr.directory} does not fit the target state: "
        + "; ".join(problems)
        + ". Restore into a state built like the saved one (same model configuration, "
        "optimizer and dtypes), or train the changed model in a new output folder."
    )


def _abstract_leaf(x):
    leaf = ocp.utils.to_shape_dtype_struct(x)
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
        # Without a sharding orbax would reuse the saved one, which fails when the
        # checkpoint was written on another device count.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        leaf = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)
    return leaf


def _step_number(step) -> int:
    try:
        number = operator.index(step)  # ints, NumPy and JAX integer scalars
    except TypeError:
        raise TypeError(f"`step` must be an int or None, got {step!r}") from None
    if number < 0:
        raise ValueError(f"`step` must be >= 0, got {number}")
    return number


def restore(mngr: ocp.CheckpointManager, target: Any, step: int | None = None) -> Any:
    """Restore step ``step`` (default: the latest committed one) into the structure
    of ``target``.

    ``target`` is a state of the wanted structure (e.g. a freshly initialised
    one); its shapes, dtypes and shardings decide those of the result, so a
    checkpoint restores on any device count (see :mod:`jaxseq.training.distributed`).
    NumPy leaves (no sharding) restore onto the default device.

    Raises:
      FileNotFoundError: no committed step, or ``step`` is not one (the message
        lists the committed steps).
      CheckpointMismatchError: the stored tree differs from ``target``'s (leaf
        paths, shapes or dtypes), checked before any array is read.
      CheckpointCorruptError: files are missing or truncated, or a leaf does not
        match its stored digest.
    """
    if step is None:
        step = mngr.latest_step()
        if step is None:
            step = max(committed_steps(mngr), default=None)
        if step is None:
            leftovers = _interrupted_saves(mngr)
            found = f" (only interrupted saves: {', '.join(leftovers)})" if leftovers else ""
            raise FileNotFoundError(f"no committed checkpoint in {mngr.directory}{found}")
    else:
        step = _step_number(step)
        if step not in mngr.all_steps() and step not in committed_steps(mngr):
            available = committed_steps(mngr)
            raise FileNotFoundError(
                f"checkpoint step {step} not found in {mngr.directory}: the committed "
                f"steps are {available or 'none'}; restore one of them (or step=None "
                f"for the latest)"
            )
    check_compatible(mngr, step, target)
    abstract = jax.tree.map(_abstract_leaf, target)
    try:
        restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as e:
        raise CheckpointMismatchError(f"checkpoint step {step} does not fit the target: {e}") from e
    except Exception as e:  # noqa: BLE001 - tensorstore raises a bare Exception
        raise CheckpointCorruptError(
            f"checkpoint step {step} in {mngr.directory} could not be read (missing or "
            f"truncated files?): {str(e)[:300]}"
        ) from e
    verify(mngr, step, restored)
    return restored


def stored_digests(mngr: ocp.CheckpointManager, step: int) -> dict[str, dict] | None:
    """The leaf digests :func:`save` wrote with ``step`` (None: written without)."""
    custom = mngr.metadata(step).custom_metadata or {}
    return custom.get(DIGESTS_KEY)


def verify(mngr: ocp.CheckpointManager, step: int, restored: Any) -> None:
    """Raise :class:`CheckpointCorruptError` if a restored leaf differs from the
    digest stored with ``step``. Leaves sharded across processes are not compared."""
    expected = stored_digests(mngr, step)
    if not expected:
        return
    for path, leaf in _leaves_by_path(restored).items():
        want = expected.get(path)
        if want is None:
            continue
        got = leaf_digest(leaf)
        if got is None or got["dtype"] != want["dtype"]:
            continue
        if got != want:
            raise CheckpointCorruptError(
                f"checkpoint step {step} in {mngr.directory}: leaf {path} does not match the "
                f"SHA-256 digest written with it, so its files are corrupted. Restore another "
                f"step (committed steps: {list(mngr.all_steps())}) or start again."
            )
