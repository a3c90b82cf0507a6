"""jaxseq: functional primitives for recurrent sequence models in JAX.

Losses (:mod:`jaxseq.losses`), masks (:mod:`jaxseq.masks`), cells
(:mod:`jaxseq.cells`), the masked recurrence (:mod:`jaxseq.recurrence`),
pooling, model heads (:mod:`jaxseq.models`), metrics, training
(:mod:`jaxseq.train`, :mod:`jaxseq.loop`, :mod:`jaxseq.checkpoint`) and data
(:mod:`jaxseq.data`). Submodules not re-exported here: ``jaxseq.nnx`` (flax.nnx
adapters) and ``jaxseq.interop`` (PyTorch weights; needs torch).
"""

from jaxseq import (
    cells,
    checkpoint,
    chunked,
    ctc,
    data,
    fused,
    loop,
    metrics,
    models,
    parallel_cells,
    pooling,
    recurrence,
    train,
)
from jaxseq.cells import Cell, elman, gru, lstm
from jaxseq.chunked import linear_cross_entropy, linear_cross_entropy_terms
from jaxseq.ctc import ctc_loss, validate_ctc_inputs
from jaxseq.interop import from_torch, to_torch_state_dict
from jaxseq.losses import (
    REDUCTIONS,
    LossTerms,
    cross_entropy,
    reduce_sequence_loss,
    safe_divide,
    sequence_classification_loss,
    sequence_classification_loss_terms,
    sequence_labeling_loss,
    sequence_labeling_loss_terms,
    sequence_loss_terms,
    soft_cross_entropy,
)
from jaxseq.masks import (
    last_valid,
    length_mask,
    mask_lengths,
    reverse_within_length,
)
from jaxseq.models import (
    SequenceModelConfig,
    classifier_apply,
    classifier_init,
    labeler_apply,
    labeler_init,
)
from jaxseq.parallel_cells import lru, mingru, minlstm
from jaxseq.pooling import masked_max, masked_mean
from jaxseq.recurrence import (
    bidirectional,
    init_stack,
    resolve_mode,
    rnn,
    scan_rnn,
    stack,
    variational_dropout,
)
from jaxseq.validation import (
    check_labels_in_range,
    checked,
    validate_labels,
    validate_lengths,
)

__version__ = "0.1.0"

__all__ = [
    "validate_ctc_inputs",
    "ctc_loss",
    "linear_cross_entropy_terms",
    "linear_cross_entropy",
    "fused",
    "ctc",
    "chunked",
    "resolve_mode",
    "parallel_cells",
    "minlstm",
    "mingru",
    "lru",
    "REDUCTIONS",
    "Cell",
    "LossTerms",
    "SequenceModelConfig",
    "bidirectional",
    "cells",
    "check_labels_in_range",
    "checked",
    "checkpoint",
    "classifier_apply",
    "classifier_init",
    "cross_entropy",
    "data",
    "elman",
    "from_torch",
    "gru",
    "init_stack",
    "labeler_apply",
    "labeler_init",
    "last_valid",
    "length_mask",
    "loop",
    "lstm",
    "mask_lengths",
    "masked_max",
    "masked_mean",
    "metrics",
    "models",
    "pooling",
    "recurrence",
    "reduce_sequence_loss",
    "reverse_within_length",
    "rnn",
    "safe_divide",
    "scan_rnn",
    "sequence_classification_loss",
    "sequence_classification_loss_terms",
    "sequence_labeling_loss",
    "sequence_labeling_loss_terms",
    "sequence_loss_terms",
    "soft_cross_entropy",
    "stack",
    "to_torch_state_dict",
    "train",
    "validate_labels",
    "validate_lengths",
    "variational_dropout",
]
