"""Japanese vowels: which of 9 speakers uttered /ae/, from 12 LPC cepstra per frame.

Sequence classification on the UEA JapaneseVowels set (``aeon==1.6.0``): 7..29
frames of 12 features (standardised with train statistics), official split 270
train / 370 test; 3 training series per speaker are held out as dev (curves
only). Baseline: multinomial logistic regression (L2, full-batch Adam) on pooled
per-feature statistics over the valid frames (mean, std, min, max, first,
last: 72 features), trained on the same 243 series.

Command::

    python -m experiments.japanese_vowels            # default config
    python -m experiments.japanese_vowels --smoke    # seconds, for tests
    python -m experiments.japanese_vowels --model.hidden-size 128 --train.num-epochs 80

Expected (default config: BiGRU 64, mean pooling, input dropout 0.2, 480 steps):
test accuracy 0.9838 (364/370; baseline 0.9784), about 25 s on a shared 2-core CPU
(14 s CPU time). Target >= 0.98: met. The margin is 2 series of 370: other seeds (which
also change the dev hold-out) gave 0.978-0.984, and so did the baseline.
"""

from __future__ import annotations

if not __package__:  # run as `python experiments/japanese_vowels.py`
    import _repo_root  # noqa: F401

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxseq as js
from experiments import config as configs
from experiments import harness, tasks
from jaxseq.data import SequenceDataset, japanese_vowels

NAME = "japanese_vowels"
TARGET = 0.98


@dataclasses.dataclass(frozen=True)
class Config(configs.RunSwitches):
    model: configs.ModelConfig = configs.ModelConfig(
        cell="gru", hidden_size=64, bidirectional=True, pooling="mean", embed_dropout_rate=0.2
    )
    train: configs.TrainConfig = configs.TrainConfig(
        batch_size=32, num_epochs=60, learning_rate=3e-3, weight_decay=1e-4, num_buckets=2,
        log_every=10, eval_every=40, checkpoint_every=160,
    )  # fmt: skip
    dev_per_class: int = 3
    """Training series per speaker held out as dev (0: no dev curve)."""
    baseline_l2: float = 1e-3
    baseline_steps: int = 500


SMOKE = {
    "model": {"hidden_size": 8},
    "train": {"max_steps": 12, "log_every": 3, "eval_every": 6, "num_buckets": 1,
              "learning_rate": 1e-2, "progress": False},
    "baseline_steps": 50,
}  # fmt: skip
FULL = {
    "model": {"hidden_size": 128, "num_layers": 2, "dropout_rate": 0.2},
    "train": {"num_epochs": 150},
}


def pooled_features(dataset: SequenceDataset) -> np.ndarray:
    """float32 ``[N, 6D]``: mean, std, min, max, first, last of each feature over valid frames."""
    rows = [
        np.concatenate([s.mean(0), s.std(0), s.min(0), s.max(0), s[0], s[-1]])
        for s in (np.asarray(x, np.float64) for x in dataset.sequences)
    ]
    return np.stack(rows).astype(np.float32)


def logistic_regression(x_train_NF, y_train_N, num_classes, *, l2, steps, seed=0):
    """Multinomial logistic regression on standardised features; returns ``x -> labels``."""
    mean_F, std_F = x_train_NF.mean(0), x_train_NF.std(0) + 1e-6
    z_NF = jnp.asarray((x_train_NF - mean_F) / std_F)
    y_N = jnp.asarray(y_train_N, jnp.int32)
    key = jax.random.key(seed)
    params = {"W": 0.01 * jax.random.normal(key, (z_NF.shape[1], num_classes)),
              "b": jnp.zeros((num_classes,))}  # fmt: skip
    optimizer = optax.adam(0.05)

    def loss(p):
        logits_NC = z_NF @ p["W"] + p["b"][None, :]
        return jnp.mean(js.cross_entropy(logits_NC, y_N)) + l2 * jnp.sum(jnp.square(p["W"]))

    @jax.jit
    def fit(p):
        def step(carry, _):
            p, opt_state = carry
            updates, opt_state = optimizer.update(jax.grad(loss)(p), opt_state)
            return (optax.apply_updates(p, updates), opt_state), None

        (p, _), _ = jax.lax.scan(step, (p, optimizer.init(p)), None, length=steps)
        return p

    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes float and int32
        params = fit(params)

    def predict(x_NF):
        z = jnp.asarray((x_NF - mean_F) / std_F)
        return np.asarray(jnp.argmax(z @ params["W"] + params["b"][None, :], axis=-1))

    return predict


def run(config: Config) -> harness.Result:
    tc = config.train
    data = japanese_vowels.load(
        dev_per_class=config.dev_per_class, seed=tc.seed, standardize_features=True
    )
    train_set, _, test_set = splits = tasks.subsets(data, tc)
    num_classes = len(train_set.class_names)
    predict = logistic_regression(
        pooled_features(train_set), train_set.labels, num_classes,
        l2=config.baseline_l2, steps=config.baseline_steps, seed=tc.seed,
    )  # fmt: skip
    baseline = float(np.mean(predict(pooled_features(test_set)) == test_set.labels))
    model = config.model.sequence_model(
        num_classes=num_classes, input_size=japanese_vowels.NUM_FEATURES
    )
    return tasks.run_supervised(
        config, NAME, "classification", splits, model, baseline=baseline, target=TARGET
    )


EXPERIMENT = harness.Experiment(NAME, Config, run, SMOKE, FULL, description=__doc__)

if __name__ == "__main__":
    EXPERIMENT.main()
