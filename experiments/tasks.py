"""Supervised tasks on ``jaxseq.data.SequenceDataset`` splits, for the harness.

Bucketed batches of the splits (:func:`dataset_task`) and the loss and metrics
hooks of the two supervised tasks: one label per sequence
(:func:`classification_loss_fn`) and one label per step
(:func:`labeling_loss_fn`, or :func:`crf_labeling_loss_fn` for a labeler with a
CRF output layer). :func:`run_supervised` is the whole run of such an
experiment: task, training, report.

Notation: B batch, T time, C classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

import jaxseq as js
from experiments import config as configs
from experiments import harness
from jaxseq import metrics, models
from jaxseq.data import Batch, SequenceDataset, bucket_boundaries, count_batches, iterate_batches
from jaxseq.training import steps

Kind = Literal["classification", "labeling"]
LogitsFn = Callable[[Any, Batch, jax.Array, bool], jax.Array]
ExtraMetrics = Callable[[jax.Array, Batch], dict]


# ----------------------------------------------------------------------------- data


def subset_indices(num_examples: int, size: int | None, seed: int) -> np.ndarray | None:
    """``size`` indices of ``range(num_examples)`` drawn without replacement, sorted;
    None for all (``size`` None or not smaller)."""
    if size is None or size >= num_examples:
        return None
    return np.sort(np.random.default_rng(seed).choice(num_examples, size, replace=False))


def subset(dataset: SequenceDataset | None, size: int | None, seed: int):
    """``size`` examples drawn without replacement (in data set order); all if None
    (a missing split, None, stays None)."""
    keep = None if dataset is None else subset_indices(len(dataset), size, seed)
    return dataset if keep is None else dataset.select(keep)


def subsets(data, tc: configs.TrainConfig) -> tuple[SequenceDataset, ...]:
    """``data.train``, ``data.dev``, ``data.test`` cut to ``train_subset``/``eval_subset``."""
    return (
        subset(data.train, tc.train_subset, tc.seed),
        subset(data.dev, tc.eval_subset, tc.seed),
        subset(data.test, tc.eval_subset, tc.seed),
    )


def buckets_for(datasets: Sequence[SequenceDataset], num_buckets: int) -> tuple[int, ...]:
    """Bucket lengths from the training lengths, the last covering every split."""
    buckets = list(bucket_boundaries(datasets[0].lengths, num_buckets))
    longest = max(int(d.lengths.max()) for d in datasets)
    buckets[-1] = max(buckets[-1], longest)
    return tuple(buckets)


def dataset_task(
    tc: configs.TrainConfig,
    *,
    init: Callable[[jax.Array], Any],
    loss_fn: steps.LossFn,
    train_set: SequenceDataset,
    dev_set: SequenceDataset | None,
    test_set: SequenceDataset,
    batches: Callable[..., Any] = iterate_batches,
    resolved: Mapping[str, Any] | None = None,
) -> harness.Task:
    """A :class:`harness.Task` on data set splits: shuffled bucketed training batches.

    ``batches(dataset, batch_size, **kwargs)`` makes the batches (default
    :func:`jaxseq.data.iterate_batches`; a wrapper can attach more to each batch).
    """
    splits = [d for d in (train_set, dev_set, test_set) if d is not None]
    buckets = buckets_for(splits, tc.num_buckets)

    def train_batches(epoch: int) -> list:
        return list(
            batches(train_set, tc.batch_size, buckets=buckets, shuffle=True, seed=tc.seed,
                    epoch=epoch)
        )  # fmt: skip

    def eval_set(dataset: SequenceDataset):
        return lambda: batches(dataset, tc.eval_batch_size, buckets=buckets)

    eval_sets = {"test": eval_set(test_set)}
    if dev_set is not None:
        eval_sets["dev"] = eval_set(dev_set)
    return harness.Task(
        init=init,
        loss_fn=loss_fn,
        train_batches=train_batches,
        steps_per_epoch=count_batches(train_set, tc.batch_size, buckets=buckets),
        eval_sets=eval_sets,
        tokens_in=lambda batch: int(batch.lengths.sum()),
        resolved={
            "buckets": list(buckets),
            "sizes": {d.name: len(d) for d in splits},
            **(resolved or {}),
        },
    )


# ----------------------------------------------------------------------------- losses


def classification_loss_fn(
    logits_fn: LogitsFn, extra_metrics: ExtraMetrics | None = None
) -> steps.LossFn:
    """``loss_fn`` for one label per sequence: mean cross-entropy, accuracy, macro-F1
    (from confusion counts, :class:`jaxseq.metrics.Confusion`).

    ``extra_metrics(logits, batch)`` adds further metric sums (e.g. Ratios).
    """

    def loss_fn(params, batch: Batch, key, is_training):
        logits_BC = logits_fn(params, batch, key, is_training)
        terms = js.sequence_classification_loss_terms(
            logits_BC, batch.labels, where=batch.label_mask
        )
        return terms, _metric_sums(logits_BC, batch, extra_metrics)

    return loss_fn


def labeling_loss_fn(
    logits_fn: LogitsFn, extra_metrics: ExtraMetrics | None = None
) -> steps.LossFn:
    """``loss_fn`` for one label per step (``batch.label_mask`` says which count).

    The loss is ``mean_over_tokens`` (every labelled token weighs the same), so
    ``token_loss`` (a Ratio) is the same mean and ``perplexity``
    (:class:`jaxseq.metrics.Perplexity`) its exponential: the perplexity of the labels.
    """

    def loss_fn(params, batch: Batch, key, is_training):
        logits_BTC = logits_fn(params, batch, key, is_training)
        terms = js.sequence_labeling_loss_terms(
            logits_BTC, batch.labels, where=batch.label_mask, reduction="mean_over_tokens"
        )
        sums = _metric_sums(logits_BTC, batch, extra_metrics)
        return terms, {
            **sums,
            "token_loss": metrics.Ratio(terms.total, terms.count),
            "perplexity": metrics.Perplexity(terms.total, terms.count),
        }

    return loss_fn


def crf_labeling_loss_fn(
    logits_fn: LogitsFn,
    model: models.SequenceModelConfig,
    labeler_params: Callable[[Any], dict] = lambda params: params,
    extra_metrics: ExtraMetrics | None = None,
) -> steps.LossFn:
    """``loss_fn`` for one label per step with a CRF output layer (``model.crf``).

    ``logits_fn`` gives the CRF's emissions ``[B, T, C]`` (the labeler's logits) and
    ``labeler_params(params)`` the labeler's params (with their ``"crf"`` entry). The
    loss is the CRF negative log-likelihood per token (``mean_over_tokens`` of
    :func:`jaxseq.models.labeler_loss`: the sum of the sequences' NLL over the number
    of labelled tokens, the softmax task's normalisation); ``token_loss`` and
    ``perplexity`` are that mean and its exponential. The metrics are those of
    :func:`labeling_loss_fn` computed from the Viterbi tags
    (:func:`jaxseq.models.labeler_predict`); ``extra_metrics`` receives them as
    one-hot scores ``[B, T, C]`` (argmax = the decoded tag; NaN where the emissions
    are NaN). Every valid step must be labelled (``batch.label_mask`` is the length
    mask): the CRF scores whole tag paths.
    """

    def loss_fn(params, batch: Batch, key, is_training):
        emissions_BTC = logits_fn(params, batch, key, is_training)
        tagger = labeler_params(params)
        total = models.labeler_loss(
            tagger, model, emissions_BTC, batch.labels, batch.lengths, reduction="sum"
        )
        terms = js.LossTerms(total, jnp.sum(batch.label_mask, dtype=jnp.float32))
        tags_BT = models.labeler_predict(tagger, model, emissions_BTC, batch.lengths)
        sums = _metric_sums(tag_scores(tags_BT, emissions_BTC), batch, extra_metrics)
        return terms, {
            **sums,
            "token_loss": metrics.Ratio(terms.total, terms.count),
            "perplexity": metrics.Perplexity(terms.total, terms.count),
        }

    return loss_fn


def tag_scores(tags_BT: jax.Array, emissions_BTC: jax.Array) -> jax.Array:
    """Decoded tags int ``[B, T]`` as one-hot float32 scores ``[B, T, C]`` whose argmax is
    the tag, for the metrics that take logits; NaN at steps whose emissions hold a NaN
    (the metrics stay loud)."""
    scores_BTC = jax.nn.one_hot(tags_BT, emissions_BTC.shape[-1], dtype=jnp.float32)
    nan_BT1 = jnp.any(jnp.isnan(emissions_BTC), axis=-1, keepdims=True)
    return jnp.where(nan_BT1, jnp.nan, scores_BTC)


def _metric_sums(logits, batch: Batch, extra_metrics: ExtraMetrics | None) -> dict:
    sums = {
        "accuracy": metrics.accuracy(logits, batch.labels, where=batch.label_mask),
        # Confusion counts [C, C], reported as their macro-F1 (the harness draws them).
        "macro_f1": metrics.Confusion(
            metrics.confusion_matrix(logits, batch.labels, where=batch.label_mask)
        ),
    }
    if extra_metrics is not None:
        sums.update(extra_metrics(logits, batch))
    return sums


def model_logits(model: models.SequenceModelConfig, kind: Kind) -> LogitsFn:
    """Logits of a plain ``jaxseq.models`` classifier/labeler on ``batch.inputs``."""
    apply = models.classifier_apply if kind == "classification" else models.labeler_apply

    def logits_fn(params, batch: Batch, key, is_training):
        return apply(params, model, batch.inputs, batch.lengths, key=key, train=is_training)

    return logits_fn


def model_record(model: models.SequenceModelConfig) -> dict[str, Any]:
    """The model config for ``config.json``, with its method and the one it resolved to."""
    resolved = js.resolve_method(models.make_cell(model), model.method)
    return {**dataclasses.asdict(model), "method": repr(model.method), "runs_as": repr(resolved)}


# ----------------------------------------------------------------------------- run


def run_supervised(
    config,
    name: str,
    kind: Kind,
    splits: tuple[SequenceDataset, SequenceDataset | None, SequenceDataset],
    model: models.SequenceModelConfig,
    *,
    baseline: float,
    init: Callable[[jax.Array], Any] | None = None,
    logits_fn: LogitsFn | None = None,
    extra_metrics: ExtraMetrics | None = None,
    label: str | None = None,
    target: float | None = None,
    resolved: Mapping[str, Any] | None = None,
    labeler_params: Callable[[Any], dict] = lambda params: params,
) -> harness.Result:
    """Train and evaluate a classifier or labeler on ``splits`` (train, dev, test);
    report the test accuracy against ``baseline``.

    ``init`` and ``logits_fn`` default to the plain ``jaxseq.models`` ``model``'s;
    ``extra_metrics(logits, batch)`` adds metric sums to the standard ones. A labeler
    with ``model.crf`` trains with :func:`crf_labeling_loss_fn`; ``labeler_params``
    finds its params (with the CRF's) in the experiment's params (default: all of them).
    """
    if init is None:
        init_fn = models.classifier_init if kind == "classification" else models.labeler_init
        init = lambda key: init_fn(key, model)
    train_set, dev_set, test_set = splits
    logits_fn = logits_fn or model_logits(model, kind)
    if kind == "classification":
        loss_fn = classification_loss_fn(logits_fn, extra_metrics)
    elif model.crf:
        for split in splits:
            if split is not None and split.label_masks is not None:
                raise ValueError(
                    f"a CRF labels every step, but the {split.name!r} split has "
                    "`label_masks` (steps without a label): use model.crf=False"
                )
        loss_fn = crf_labeling_loss_fn(logits_fn, model, labeler_params, extra_metrics)
    else:
        loss_fn = labeling_loss_fn(logits_fn, extra_metrics)
    task = dataset_task(
        config.train,
        init=init,
        loss_fn=loss_fn,
        train_set=train_set,
        dev_set=dev_set,
        test_set=test_set,
        resolved={"model": model_record(model), **(resolved or {})},
    )
    trained = harness.train_and_evaluate(config, task, name=name, class_names=train_set.class_names)
    return harness.report(
        trained, name=name, metric="accuracy", baseline=baseline, label=label, target=target
    )
