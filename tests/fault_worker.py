"""Subprocess side of tests/test_faults.py: runs that the tests kill, resume or repeat.

    python -m tests.fault_worker train OUT [--resume]
    python -m tests.fault_worker die_in_save OUT

* ``train``: ``loop.fit`` of a small GRU labeler with dropout (so every step
  draws PRNG keys) for ``MAX_STEPS`` steps, checkpointing every
  ``CHECKPOINT_EVERY``; writes ``OUT/final.npz`` (every leaf of the train state)
  and then ``OUT/done``.
* ``die_in_save``: saves :func:`state_of` (1) as step 1, then :func:`state_of` (2)
  as step 2, which the test makes the process die inside of with the
  fault-injection hook (``JAXSEQ_FAULT_IN_SAVE=<phase>@2``, see
  :mod:`jaxseq.training.checkpoint`); exits 0 only if the hook never fired.

Either job dies inside a save when the test sets ``JAXSEQ_FAULT_IN_SAVE``: the
process then ends with ``checkpoint.FAULT_EXIT_CODE``.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

from jaxseq import models
from jaxseq.data import batching
from jaxseq.training import checkpoint, loop, steps
from tests.distributed_worker import _strict, labeling_loss_fn, toy_dataset

CONFIG = models.SequenceModelConfig(
    num_classes=3, hidden_size=8, cell="gru", vocab_size=12, embed_dim=6, dropout_rate=0.25
)
MAX_STEPS = 24
CHECKPOINT_EVERY = 4
FIT = loop.FitConfig(
    num_epochs=10,
    max_steps=MAX_STEPS,
    log_every=2,
    eval_every=4,
    checkpoint_every=CHECKPOINT_EVERY,
    progress=False,
)


def train_batches(epoch: int) -> list:
    return list(
        batching.iterate_batches(
            toy_dataset(40, 0), 8, buckets=(4, 9), shuffle=True, seed=0, epoch=epoch
        )
    )


def flat_leaves(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def train_job(out: str, *, resume: bool) -> None:
    optimizer = steps.make_optimizer(learning_rate=1e-2, clip_norm=1.0)
    state = steps.create_train_state(models.labeler_init(jax.random.key(0), CONFIG), optimizer)
    loss_fn = labeling_loss_fn("mean_over_tokens", CONFIG)
    train_step = steps.make_train_step(loss_fn, optimizer)
    dev = toy_dataset(16, 1)
    state, _ = loop.fit(
        state,
        train_step=train_step,
        eval_step=steps.make_eval_step(loss_fn),
        train_batches=train_batches,
        eval_sets={"dev": lambda: batching.iterate_batches(dev, 8, buckets=(4, 9))},
        key=jax.random.key(7),
        config=FIT,
        out_dir=out,
        resume=resume,
    )
    np.savez(os.path.join(out, "final.npz"), **flat_leaves(state))
    open(os.path.join(out, "done"), "w").close()


def state_of(step: int) -> dict[str, np.ndarray]:
    """A deterministic ~4 MiB state per step: any mix-up of steps or bytes shows."""
    rng = np.random.default_rng(step)
    return {
        "w": rng.normal(size=(1024, 1024)).astype(np.float32),
        "b": rng.normal(size=(1024,)).astype(np.float32),
        "step": np.asarray(step, np.int32),
    }


def die_in_save_job(out: str) -> None:
    mngr = checkpoint.manager(out)
    checkpoint.save(mngr, 1, state_of(1))
    checkpoint.save(mngr, 2, state_of(2))  # the hook ends the process in here
    raise AssertionError("the save of step 2 returned; the fault-injection hook never fired")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job", choices=("train", "die_in_save"))
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    _strict()
    if args.job == "train":
        train_job(args.out, resume=args.resume)
    else:
        die_in_save_job(args.out)


if __name__ == "__main__":
    main()
