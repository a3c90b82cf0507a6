"""Data-parallel training across devices and processes with ``jax.sharding``.

Notation: B global batch, D devices on the "data" mesh axis, P processes,
k microbatches.

One mesh axis, ``"data"``, spans every device (of every process). Batches are
sharded along B (each device holds B / D rows), the train state (parameters,
optimizer state, step) is replicated, and :func:`jax.jit` with in/out shardings
partitions the *unchanged* single-device step of :mod:`jaxseq.training.steps` (SPMD): the
loss is ``sum(total) / sum(count)`` of :class:`jaxseq.LossTerms` over the whole
global batch, so the loss, its gradient and the update equal the single-device
ones on the same global batch for every reduction (up to float32 summation
order), not an average of per-device means.

The mesh axis type is ``AxisType.Auto`` (``jax.make_mesh`` defaults to
``Explicit`` in this JAX): the compiler propagates the shardings given at the
``jit`` boundary through reshapes, scans and vmaps, so the library's
single-device code needs no sharding annotations and no ``jax.set_mesh``.

``mesh=None`` is the plain single-device run, accepted by every function that
places data or builds a step (not by :func:`data_sharding` and
:func:`replicated_sharding`, which need a mesh): :func:`setup_from_env` returns
None when no ``JAXSEQ_*`` variable asks for devices or processes, and then
:func:`replicate`, :func:`shard_batch` and :func:`global_batch_from_local`
return their input unchanged, :func:`shard_batches` only pads (to a multiple of
``microbatches``) and the sharded steps are the plain jitted steps of
:mod:`jaxseq.training.steps`. So one script runs on one device and on many.

Single process, several devices (GPUs, or fake CPU devices)::

    mesh = distributed.make_mesh()  # every device
    state = distributed.replicate(steps.create_train_state(params, optimizer), mesh)
    step = distributed.make_sharded_train_step(loss_fn, optimizer, mesh)
    batch = distributed.shard_batch(distributed.pad_batch_to_multiple(batch, D), mesh)
    state, sums = step(state, batch, key)

Several processes (hosts): call :func:`initialize` (or :func:`setup_from_env`)
in every process before any JAX operation, then the same code; each process
builds the global batch from its own rows with :func:`global_batch_from_local`
(or passes the same global batch to :func:`shard_batch`, which takes only its
rows). Checkpoints (:mod:`jaxseq.training.checkpoint`) are written once by orbax and
restore on any device count when the target carries the wanted sharding
(:func:`replicate` a fresh state, or :func:`abstract_replicated`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseq import _checks
from jaxseq.data.batching import Batch
from jaxseq.training import steps

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "Layout",
    "abstract_replicated",
    "batch_size_of",
    "data_sharding",
    "global_batch_from_local",
    "initialize",
    "is_main_process",
    "main_process_only",
    "make_mesh",
    "make_sharded_eval_step",
    "make_sharded_train_step",
    "pad_batch_to_multiple",
    "process_rows",
    "replicate",
    "replicated_sharding",
    "setup",
    "setup_from_env",
    "shard_batch",
    "shard_batches",
    "sync",
]


# ----------------------------------------------------------------------------- processes


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    coordinator_bind_address: str | None = None,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int = 100,
    cpu_devices: int | None = None,
    cpu_collectives: str = "gloo",
) -> None:
    """Join a multi-process JAX run; call in every process before any JAX operation.

    A thin wrapper of :func:`jax.distributed.initialize`. With all three of
    ``coordinator_address``, ``num_processes``, ``process_id`` left None JAX
    detects them (Cloud TPU pod slices, SLURM, Open MPI).

    Args:
      coordinator_address: ``"host:port"`` of process 0, reachable by all.
      num_processes: P.
      process_id: this process, in ``[0, P)``.
      local_device_ids: the local devices this process uses (default: all).
      coordinator_bind_address: where process 0 listens; default: the
        coordinator address itself when it is a loopback one (``127.0.0.1``,
        ``localhost``: a run on one machine), else all interfaces (JAX's default).
      initialization_timeout: seconds to wait for all processes to join.
      heartbeat_timeout_seconds: a process silent this long is declared dead
        (JAX then aborts the others).
      cpu_devices: fake this many CPU devices per process
        (``jax_num_cpu_devices``; testing).
      cpu_collectives: ``jax_cpu_collectives_implementation`` for cross-process
        collectives on CPU ("gloo", "mpi" or "megascale"); no effect on GPU/TPU.
    """
    _checks.check_int(num_processes, "num_processes", 1, optional=True)
    _checks.check_int(process_id, "process_id", 0, optional=True)
    if process_id is not None and num_processes is not None and process_id >= num_processes:
        raise ValueError(f"`process_id` must be in [0, {num_processes}), got {process_id}")
    _checks.check_int(initialization_timeout, "initialization_timeout", 1)
    _checks.check_int(heartbeat_timeout_seconds, "heartbeat_timeout_seconds", 1)
    _checks.check_int(cpu_devices, "cpu_devices", 1, optional=True)
    _checks.check_choice(cpu_collectives, ("gloo", "mpi", "megascale"), "cpu_collectives")
    if cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(cpu_devices))
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator_bind_address is None and coordinator_address is not None:
        if coordinator_address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
            coordinator_bind_address = coordinator_address
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        coordinator_bind_address=coordinator_bind_address,
    )


def is_main_process() -> bool:
    """True in process 0 (and in every single-process run)."""
    return jax.process_index() == 0


def main_process_only(fn: Callable) -> Callable:
    """Decorate a writer (files, plots, prints) to run in process 0 only; others get None."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main_process() else None

    return wrapper


def sync(name: str) -> None:
    """Wait until every process reaches ``sync(name)`` (a no-op with one process),
    e.g. after process 0 created or removed a folder the others use."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------- layout


_ENV = {
    "coordinator": "JAXSEQ_COORDINATOR",
    "num_processes": "JAXSEQ_NUM_PROCESSES",
    "process_id": "JAXSEQ_PROCESS_ID",
    "auto": "JAXSEQ_DISTRIBUTED",
    "num_devices": "JAXSEQ_DEVICES",
    "cpu_devices": "JAXSEQ_CPU_DEVICES",
}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a run's devices and processes come from (flags or environment).

    The default (every field unset) is the single-device run: no mesh, the
    plain steps of :mod:`jaxseq.training.steps`.
    """

    coordinator: str | None = None
    """``host:port`` of process 0 (multi-process runs)."""
    num_processes: int = 1
    process_id: int = 0
    auto: bool = False
    """Let JAX detect the processes (Cloud TPU pod slice, SLURM, Open MPI)."""
    num_devices: int | None = None
    """Devices on the data axis; -1: all. None: all when data-parallel, else no mesh."""
    cpu_devices: int | None = None
    """Fake this many CPU devices per process (testing on CPU)."""

    def __post_init__(self):
        if self.coordinator is not None and not isinstance(self.coordinator, str):
            raise TypeError(f"`coordinator` must be a 'host:port' string, got {self.coordinator!r}")
        _checks.check_int(self.num_processes, f"num_processes ({_ENV['num_processes']})", 1)
        _checks.check_int(self.process_id, f"process_id ({_ENV['process_id']})", 0)
        if self.process_id >= self.num_processes:
            raise ValueError(
                f"`process_id` ({_ENV['process_id']}) must be in [0, {self.num_processes}), "
                f"got {self.process_id}"
            )
        _checks.check_flag(self.auto, "auto")
        _checks.check_int(
            self.num_devices, f"num_devices ({_ENV['num_devices']})", -1, optional=True
        )
        _checks.check_int(
            self.cpu_devices, f"cpu_devices ({_ENV['cpu_devices']})", 1, optional=True
        )
        if self.num_processes > 1 and self.coordinator is None and not self.auto:
            raise ValueError(
                f"{self.num_processes} processes need a coordinator address "
                f"({_ENV['coordinator']}=host:port of process 0)"
            )
        if self.num_devices == 0:
            raise ValueError(
                f"`num_devices` ({_ENV['num_devices']}) must be >= 1 or -1 (all), got 0"
            )

    @property
    def multi_process(self) -> bool:
        return self.auto or self.num_processes > 1

    @property
    def data_parallel(self) -> bool:
        """Whether the run uses a mesh (and the sharded steps)."""
        return self.multi_process or self.num_devices is not None or self.cpu_devices is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Layout:
        """Read ``JAXSEQ_COORDINATOR``, ``JAXSEQ_NUM_PROCESSES``,
        ``JAXSEQ_PROCESS_ID``, ``JAXSEQ_DISTRIBUTED=auto``, ``JAXSEQ_DEVICES``
        (an int or ``all``) and ``JAXSEQ_CPU_DEVICES``; unset ones keep defaults."""
        env = os.environ if environ is None else environ

        def get_int(field):
            name = _ENV[field]
            value = env.get(name, "").strip()
            if not value:
                return None
            if field == "num_devices" and value.lower() == "all":
                return -1
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None

        auto = env.get(_ENV["auto"], "").strip().lower()
        if auto not in ("", "0", "auto", "1"):
            raise ValueError(f"{_ENV['auto']} must be 'auto' or unset, got {auto!r}")
        values = {
            "coordinator": env.get(_ENV["coordinator"], "").strip() or None,
            "auto": auto in ("auto", "1"),
            "num_devices": get_int("num_devices"),
            "cpu_devices": get_int("cpu_devices"),
        }
        for field in ("num_processes", "process_id"):
            value = get_int(field)
            if value is not None:
                values[field] = value
        return cls(**values)

    def setup(self) -> Mesh | None:
        """Initialise JAX for this layout; the data mesh, or None for a plain run.

        Must run before any JAX operation when it fakes CPU devices or joins
        processes.
        """
        if self.multi_process:
            initialize(
                self.coordinator if not self.auto else None,
                self.num_processes if not self.auto else None,
                self.process_id if not self.auto else None,
                cpu_devices=self.cpu_devices,
            )
        elif self.cpu_devices is not None:
            jax.config.update("jax_num_cpu_devices", self.cpu_devices)
        if not self.data_parallel:
            return None
        num = None if self.num_devices in (None, -1) else self.num_devices
        return make_mesh(num)


_SETUP: dict[str, Any] = {}


def setup(layout: Layout | None = None) -> Mesh | None:
    """:meth:`Layout.setup` once per process; the data mesh, or None for a plain run.

    Later calls with an equal layout return the first call's mesh (JAX is
    initialised once per process); a different layout raises ``RuntimeError``.
    """
    layout = Layout() if layout is None else layout
    if "layout" in _SETUP:
        if _SETUP["layout"] != layout:
            raise RuntimeError(
                f"the device layout is already {_SETUP['layout']}; it cannot change to "
                f"{layout} within a process"
            )
        return _SETUP["mesh"]
    mesh = layout.setup()
    _SETUP.update(layout=layout, mesh=mesh)
    return mesh


def setup_from_env(environ: Mapping[str, str] | None = None) -> Mesh | None:
    """The hook for experiment scripts: ``setup(Layout.from_env())``.

    Returns None when no ``JAXSEQ_*`` variable asks for devices or processes,
    so a single-device user sees no change (nothing is initialised); the
    functions of this module take that None as the plain single-device run. Call
    it before any JAX operation; it is idempotent.
    """
    return setup(Layout.from_env(environ))


# ----------------------------------------------------------------------------- mesh


def make_mesh(num_devices: int | None = None, *, devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``num_devices`` devices (default all).

    The axis type is ``AxisType.Auto`` (see the module docstring). With several
    processes the mesh must span every device, so each process feeds its own.
    """
    _checks.check_int(num_devices, "num_devices", 1, optional=True)
    devices = list(jax.devices() if devices is None else devices)
    num = len(devices) if num_devices is None else int(num_devices)
    if num > len(devices):
        raise ValueError(f"`num_devices` must be in [1, {len(devices)}], got {num_devices}")
    if jax.process_count() > 1 and num != len(devices):
        raise ValueError(
            f"a multi-process mesh must span all {len(devices)} devices, got num_devices={num}"
        )
    return jax.make_mesh((num,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices[:num])


def _check_mesh(mesh: Any, *, optional: bool = True) -> None:
    """``mesh`` is a :class:`jax.sharding.Mesh` with the ``"data"`` axis (or None
    when ``optional``: the plain single-device run)."""
    if mesh is None and optional:
        return
    if not isinstance(mesh, Mesh):
        raise TypeError(
            "`mesh` must be a jax.sharding.Mesh (from distributed.make_mesh or "
            "distributed.setup_from_env)"
            + (" or None for the plain single-device run" if optional else "")
            + f", got {type(mesh).__name__}"
        )
    if DATA_AXIS not in mesh.shape:
        raise ValueError(
            f"`mesh` needs an axis named {DATA_AXIS!r} (distributed.make_mesh makes one), "
            f"got axes {tuple(mesh.axis_names)}"
        )


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (axis 0) split along ``"data"``; other axes whole."""
    _check_mesh(mesh, optional=False)
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    _check_mesh(mesh, optional=False)
    return NamedSharding(mesh, P())


def _num_data(mesh: Mesh | None) -> int:
    """D, the devices on the ``"data"`` axis (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[DATA_AXIS])


# ----------------------------------------------------------------------------- batches


def batch_size_of(batch: Any) -> int:
    """The common leading size B of every leaf of ``batch``.

    Raises:
      AssertionError: a leaf is a scalar, the leaves' leading sizes differ, or
        the batch has no leaf (a shape error of ``batch``).
    """
    shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(batch)]
    sizes = {shape[0] if shape else None for shape in shapes}
    size = sizes.pop() if len(sizes) == 1 else None
    if size is None:
        raise AssertionError(
            f"every leaf of `batch` needs the same leading size B ([B, ...]), got shapes {shapes}"
        )
    return int(size)


def pad_batch_to_multiple(batch: Any, multiple: int) -> Any:
    """Append all-masked rows so B becomes a multiple of ``multiple``.

    For a :class:`jaxseq.data.Batch` the new rows have length 0, an all-False
    ``label_mask``, labels and inputs 0 and index -1, exactly like the padding
    rows of :func:`jaxseq.data.iterate_batches`; the losses' N counts only rows
    with a valid step, so the loss, gradient and metrics do not change. Any
    other pytree is padded with zeros (False for booleans), which is exact when
    the loss weights rows by a mask or length that is then 0.

    Args:
      batch: a pytree whose leaves are ``[B, ...]`` (NumPy or JAX arrays).
      multiple: e.g. the number of devices (times the microbatches).

    Returns:
      the batch with ``ceil(B / multiple) * multiple`` rows (the same object
      when nothing is added).

    >>> import numpy as np
    >>> from jaxseq.data import Batch
    >>> b = Batch(np.ones((3, 2), np.int32), np.ones((3, 2), np.int32),
    ...           np.full(3, 2, np.int32), np.ones((3, 2), bool), np.arange(3), {})
    >>> p = pad_batch_to_multiple(b, 4)
    >>> p.lengths.tolist(), p.indices.tolist(), p.label_mask[3].tolist()
    ([2, 2, 2, 0], [0, 1, 2, -1], [False, False])
    """
    _checks.check_int(multiple, "multiple", 1)
    rows = batch_size_of(batch)
    extra = -rows % int(multiple)
    if extra == 0:
        return batch

    def pad(x, fill=0):
        xp = np if isinstance(x, np.ndarray | np.generic) else jnp
        filler = xp.full((extra,) + tuple(np.shape(x)[1:]), fill, dtype=x.dtype)
        return xp.concatenate([x, filler], axis=0)

    if isinstance(batch, Batch):
        return Batch(
            inputs=pad(batch.inputs),
            labels=pad(batch.labels),
            lengths=pad(batch.lengths),
            label_mask=pad(batch.label_mask, False),
            indices=pad(batch.indices, -1),
            extras={name: pad(x) for name, x in batch.extras.items()},
        )
    return jax.tree.map(pad, batch)


def _check_divisible(batch: Any, mesh: Mesh | None, factor: int = 1) -> int:
    rows = batch_size_of(batch)
    multiple = _num_data(mesh) * factor
    if rows % multiple:
        what = f"{_num_data(mesh)} devices" + (f" x {factor} microbatches" if factor > 1 else "")
        raise ValueError(
            f"batch size {rows} is not divisible by {multiple} ({what}): pad it with "
            f"jaxseq.training.distributed.pad_batch_to_multiple(batch, {multiple}) (exact: the new "
            f"rows are all masked)"
        )
    return rows


def _put_global(x, sharding: NamedSharding):
    """``x`` (the same value in every process) as a global array with ``sharding``;
    each process transfers only the parts its devices hold."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _put_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, host, host.shape)


def shard_batch(batch: Any, mesh: Mesh | None) -> Any:
    """The global batch ``[B, ...]`` as arrays sharded along B over ``"data"``.

    Every process passes the same global batch (e.g. from the same seeded
    :func:`jaxseq.data.iterate_batches`) and transfers only its own rows. B must
    divide by the number of devices: see :func:`pad_batch_to_multiple`. With
    ``mesh=None`` (the plain single-device run) the batch is returned unchanged.
    """
    _check_mesh(mesh)
    _check_divisible(batch, mesh)
    if mesh is None:
        return batch
    sharding = data_sharding(mesh)
    return jax.tree.map(lambda x: _put_global(x, sharding), batch)


def process_rows(global_batch_size: int, mesh: Mesh | None) -> slice:
    """The rows of a global batch of ``global_batch_size`` that this process's devices hold.

    Feed them to :func:`global_batch_from_local` (a data pipeline that reads
    only its share). With ``mesh=None``: all of them.
    """
    _checks.check_int(global_batch_size, "global_batch_size", 1)
    _check_mesh(mesh)
    if mesh is None:
        return slice(0, global_batch_size)
    if global_batch_size % _num_data(mesh):
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by {_num_data(mesh)} devices"
        )
    index_map = data_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    starts = sorted({(s[0].start or 0, s[0].stop) for s in index_map.values() if s is not None})
    for (_, stop), (start, _) in zip(starts, starts[1:]):
        if stop != start:
            raise ValueError(f"this process's rows are not contiguous: {starts}")
    return slice(starts[0][0], starts[-1][1])


def global_batch_from_local(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble the global batch from every process's own rows (no data is exchanged).

    Process p passes the rows ``process_rows(B, mesh)`` of the global batch
    (B / P rows when every process has the same number of devices); each
    local batch must split evenly over the process's devices. With one
    process this is :func:`shard_batch`; with ``mesh=None``, ``local_batch`` itself.
    """
    _check_mesh(mesh)
    if mesh is None:
        batch_size_of(local_batch)
        return local_batch
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    rows = batch_size_of(local_batch)
    if rows % local_devices:
        raise ValueError(
            f"local batch size {rows} is not divisible by this process's {local_devices} "
            f"devices: pad it with jaxseq.training.distributed.pad_batch_to_multiple"
        )
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


class _ShardedBatches(Sequence):
    """A lazy view of a sequence of host batches, each padded and sharded on access."""

    def __init__(self, batches: Sequence[Any], mesh: Mesh | None, multiple: int):
        self._batches, self._mesh, self._multiple = batches, mesh, multiple

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return _ShardedBatches(self._batches[index], self._mesh, self._multiple)
        batch = pad_batch_to_multiple(self._batches[index], self._multiple)
        return shard_batch(batch, self._mesh)


def shard_batches(batches: Iterable[Any], mesh: Mesh | None, *, microbatches: int = 1):
    """Pad (to a multiple of devices x ``microbatches``) and shard each batch lazily.

    A sequence (e.g. the list ``train_batches(epoch)`` of :func:`jaxseq.training.loop.fit`)
    gives a sequence of the same length; any other iterable a generator. With
    ``mesh=None`` (one device) the batches are only padded to a multiple of
    ``microbatches`` (for ``microbatches=1``: returned as they are).
    """
    _check_mesh(mesh)
    _checks.check_int(microbatches, "microbatches", 1)
    multiple = _num_data(mesh) * microbatches
    if isinstance(batches, Sequence):
        return _ShardedBatches(batches, mesh, multiple)
    return (shard_batch(pad_batch_to_multiple(b, multiple), mesh) for b in batches)


# ----------------------------------------------------------------------------- state


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Every leaf (the same value in every process) copied to every device of ``mesh``.

    Use it for the train state and the run's key before the first sharded step.
    With ``mesh=None`` (the plain single-device run) ``tree`` is returned unchanged.
    """
    _check_mesh(mesh)
    if mesh is None:
        return tree
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda x: _put_global(x, sharding), tree)


def abstract_replicated(tree: Any, mesh: Mesh | None) -> Any:
    """``jax.ShapeDtypeStruct`` leaves replicated on ``mesh``: a restore target
    for :func:`jaxseq.training.checkpoint.restore` on any device count without
    materialising a state. With ``mesh=None`` the leaves have no sharding, and
    restore onto the default device."""
    _check_mesh(mesh)
    sharding = None if mesh is None else replicated_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree
    )


# ----------------------------------------------------------------------------- steps


def make_sharded_train_step(
    loss_fn: steps.LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh | None,
    *,
    microbatches: int = 1,
) -> Callable[[steps.TrainState, Any, jax.Array], tuple[steps.TrainState, steps.MetricSums]]:
    """:func:`jaxseq.training.steps.make_train_step` over ``mesh``: ``(state, batch, key) ->
    (state, sums)``.

    The state and key are replicated, the batch sharded along B (every leaf
    ``[B, ...]``, B divisible by the devices times ``microbatches``: see
    :func:`pad_batch_to_multiple`), the state donated. The result equals the
    single-device step on the same global batch: the loss is the global
    ``sum(total) / sum(count)``. With ``microbatches = k`` each microbatch is
    itself spread over all devices (rows ``[i B/k, (i+1) B/k)``, as on one device).
    With ``mesh=None`` this is :func:`jaxseq.training.steps.make_train_step` itself.
    """
    _check_mesh(mesh)
    _checks.check_int(microbatches, "microbatches", 1)
    if mesh is None:
        return steps.make_train_step(loss_fn, optimizer, microbatches=microbatches)
    micro_sharding = NamedSharding(mesh, P(None, DATA_AXIS)) if microbatches > 1 else None
    step = steps.train_step_fn(
        loss_fn, optimizer, microbatches=microbatches, microbatch_sharding=micro_sharding
    )
    replicated, data = replicated_sharding(mesh), data_sharding(mesh)
    jitted = jax.jit(
        step,
        in_shardings=(replicated, data, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )

    @functools.wraps(step)
    def sharded_train_step(state, batch, key):
        _check_divisible(batch, mesh, microbatches)
        return jitted(state, batch, key)

    sharded_train_step.jitted = jitted  # type: ignore[attr-defined]  # the compiled step
    return sharded_train_step


def make_sharded_eval_step(
    loss_fn: steps.LossFn, mesh: Mesh | None
) -> Callable[[Any, Any], steps.MetricSums]:
    """:func:`jaxseq.training.steps.make_eval_step` over ``mesh``: ``(params, batch) -> sums``
    (params replicated, batch sharded along B, sums replicated and exact). With
    ``mesh=None`` this is :func:`jaxseq.training.steps.make_eval_step` itself."""
    _check_mesh(mesh)
    if mesh is None:
        return steps.make_eval_step(loss_fn)
    replicated, data = replicated_sharding(mesh), data_sharding(mesh)
    jitted = jax.jit(
        steps.eval_step_fn(loss_fn), in_shardings=(replicated, data), out_shardings=replicated
    )

    def sharded_eval_step(params, batch):
        _check_divisible(batch, mesh)
        return jitted(params, batch)

    sharded_eval_step.jitted = jitted  # type: ignore[attr-defined]  # the compiled step
    return sharded_eval_step
