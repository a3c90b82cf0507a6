"""jaxseq.training: train state and steps, the fit loop, checkpoints, data parallelism.

The infrastructure around the primitives (as ``flax.training`` is around flax),
imported explicitly (``from jaxseq.training import loop, steps``) and never by
``import jaxseq``:

* :mod:`.steps`: the train state pytree and the pure jitted train/eval steps;
* :mod:`.loop`: ``fit`` (periodic evaluation, JSON-lines metrics, checkpoints,
  resume) and ``evaluate``;
* :mod:`.checkpoint`: orbax checkpoints with per-leaf digests and checked restores;
* :mod:`.distributed`: device meshes, batch sharding and the sharded steps;
* :mod:`.provenance`: what a run folder records (versions, commit, devices, command).
"""

try:
    from jaxseq.training import checkpoint, distributed, loop, provenance, steps
except ModuleNotFoundError as e:  # the `train` extra is not installed
    if e.name is None or e.name.split(".")[0] not in ("orbax", "tqdm"):
        raise
    raise ModuleNotFoundError(
        f"jaxseq.training needs the `train` extra ({e.name} is missing): install it with "
        f'`pip install "jaxseq[train]"` (orbax-checkpoint, tqdm, tensorboardX)',
        name=e.name,
    ) from e

__all__ = ["checkpoint", "distributed", "loop", "provenance", "steps"]
