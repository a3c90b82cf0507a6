"""Subprocess side of tests/test_faults.py: runs that the tests kill, resume or repeat.

    python -m tests.fault_worker train OUT [--resume] [--step-delay S]
    python -m tests.fault_worker die_in_commit OUT
    python -m tests.fault_worker save_forever OUT

* ``train``: ``loop.fit`` of a small GRU labeler with dropout (so every step
  draws PRNG keys) for ``MAX_STEPS`` steps, checkpointing every
  ``CHECKPOINT_EVERY``; writes ``OUT/final.npz`` (every leaf of the train state)
  and then ``OUT/done``. ``--step-delay`` sleeps on the host before each step so
  that a test can kill the run between two checkpoints; it changes no number.
* ``die_in_commit``: saves :func:`state_of` (1) as step 1, then starts saving
  step 2 and SIGKILLs itself at the moment orbax would commit it: every byte is
  written, the step is not committed.
* ``save_forever``: saves ``state_of(k)`` as step k for k = latest + 1, ... until
  killed (the test kills it at a random moment, usually inside a save).
"""

from __future__ import annotations

import argparse
import os
import signal
import time

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


def train_job(out: str, *, resume: bool, step_delay: float) -> None:
    optimizer = steps.make_optimizer(learning_rate=1e-2, clip_norm=1.0)
    state = steps.create_train_state(models.labeler_init(jax.random.key(0), CONFIG), optimizer)
    loss_fn = labeling_loss_fn("mean_over_tokens", CONFIG)
    step = steps.make_train_step(loss_fn, optimizer)

    def train_step(state, batch, key):
        if step_delay:
            time.sleep(step_delay)
        return step(state, batch, key)

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


def die_in_commit_job(out: str) -> None:
    from orbax.checkpoint._src.path import atomicity

    mngr = checkpoint.manager(out)
    checkpoint.save(mngr, 1, state_of(1))

    async def killed_before_commit(self):
        os.kill(os.getpid(), signal.SIGKILL)

    atomicity.AtomicRenameTemporaryPath.finalize = killed_before_commit
    checkpoint.save(mngr, 2, state_of(2))
    raise AssertionError("the save of step 2 was committed; it should have been killed")


def save_forever_job(out: str) -> None:
    mngr = checkpoint.manager(out)
    step = (mngr.latest_step() or 0) + 1
    while True:
        checkpoint.save(mngr, step, state_of(step))
        print(f"committed {step}", flush=True)
        step += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job", choices=("train", "die_in_commit", "save_forever"))
    parser.add_argument("out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--step-delay", type=float, default=0.0)
    args = parser.parse_args()
    _strict()
    if args.job == "train":
        train_job(args.out, resume=args.resume, step_delay=args.step_delay)
    elif args.job == "die_in_commit":
        die_in_commit_job(args.out)
    else:
        save_forever_job(args.out)


if __name__ == "__main__":
    main()
