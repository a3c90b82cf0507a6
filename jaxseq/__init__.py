"""jaxseq: functional primitives for recurrent sequence models in JAX.

``import jaxseq as js`` gives the primitives, re-exported here from their
modules (every name in ``__all__`` below is one of these):

* masks (:mod:`jaxseq.masks`): ``length_mask``, ``mask_lengths``, ``last_valid``,
  ``reverse_within_length``;
* losses (:mod:`jaxseq.losses`, :mod:`jaxseq.chunked`, :mod:`jaxseq.ctc`) and CTC
  decoding (:mod:`jaxseq.ctc_decode`: ``ctc_greedy_decode``, jit-able;
  ``ctc_prefix_beam_search``, host-side);
* the linear-chain CRF (:mod:`jaxseq.crf`: ``crf_log_likelihood``, ``crf_loss``,
  ``crf_decode``, ``crf_marginals``, transition constraints);
* cells (:mod:`jaxseq.cells`, :mod:`jaxseq.parallel_cells`);
* the recurrence (:mod:`jaxseq.recurrence`: ``rnn``, ``bidirectional``,
  ``stack``, ``scan_rnn``) and how it runs (:mod:`jaxseq.methods`: ``Scan``,
  ``Fused``, ``Parallel``, ``resolve_method``);
* streaming (:mod:`jaxseq.streaming`: windows of a long stream, carried state with the
  gradient stopped, a truncated-BPTT train step; ``resets=`` in the recurrence);
* pooling, metrics, validation, the model heads (:mod:`jaxseq.models`) and
  PyTorch weight conversion (:mod:`jaxseq.interop`; imports torch only when called).

Not imported by ``import jaxseq`` (import them explicitly): ``jaxseq.training``
(train steps, fit loop, checkpoints, data parallelism; the ``train`` extra:
orbax-checkpoint, tqdm, tensorboardX), ``jaxseq.data`` (padding, bucketing, file
formats, data sets; NumPy only) and ``jaxseq.nnx`` (flax.nnx modules; the ``nnx``
extra).
"""

from jaxseq import (
    cells,
    chunked,
    crf,
    ctc,
    ctc_decode,
    losses,
    masks,
    methods,
    metrics,
    models,
    parallel_cells,
    pooling,
    recurrence,
    streaming,
    validation,
)
from jaxseq.cells import Cell, elman, gru, lstm
from jaxseq.chunked import linear_cross_entropy, linear_cross_entropy_terms
from jaxseq.crf import (
    CRF_METHODS,
    CRF_REDUCTIONS,
    crf_allowed_transitions,
    crf_constrain,
    crf_decode,
    crf_init,
    crf_log_likelihood,
    crf_loss,
    crf_loss_terms,
    crf_marginals,
)
from jaxseq.ctc import ctc_loss, validate_ctc_inputs
from jaxseq.ctc_decode import CTCHypothesis, ctc_greedy_decode, ctc_prefix_beam_search
from jaxseq.interop import from_torch, to_torch_state_dict
from jaxseq.losses import (
    REDUCTIONS,
    SEQUENCE_REDUCTIONS,
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
from jaxseq.masks import last_valid, length_mask, mask_lengths, reverse_within_length
from jaxseq.methods import Fused, Parallel, Scan, resolve_method
from jaxseq.models import (
    SequenceModelConfig,
    classifier_apply,
    classifier_init,
    labeler_apply,
    labeler_init,
    labeler_loss,
    labeler_predict,
)
from jaxseq.parallel_cells import lru, mingru, minlstm
from jaxseq.pooling import masked_max, masked_mean
from jaxseq.recurrence import (
    bidirectional,
    init_stack,
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
    # modules
    "cells",
    "chunked",
    "crf",
    "ctc",
    "ctc_decode",
    "losses",
    "masks",
    "methods",
    "metrics",
    "models",
    "parallel_cells",
    "pooling",
    "recurrence",
    "streaming",
    "validation",
    # masks
    "last_valid",
    "length_mask",
    "mask_lengths",
    "reverse_within_length",
    # losses
    "REDUCTIONS",
    "SEQUENCE_REDUCTIONS",
    "LossTerms",
    "cross_entropy",
    "ctc_loss",
    # linear-chain CRF
    "CRF_METHODS",
    "CRF_REDUCTIONS",
    "crf_allowed_transitions",
    "crf_constrain",
    "crf_decode",
    "crf_init",
    "crf_log_likelihood",
    "crf_loss",
    "crf_loss_terms",
    "crf_marginals",
    # CTC decoding
    "CTCHypothesis",
    "ctc_greedy_decode",
    "ctc_prefix_beam_search",
    "linear_cross_entropy",
    "linear_cross_entropy_terms",
    "reduce_sequence_loss",
    "safe_divide",
    "sequence_classification_loss",
    "sequence_classification_loss_terms",
    "sequence_labeling_loss",
    "sequence_labeling_loss_terms",
    "sequence_loss_terms",
    "soft_cross_entropy",
    # cells
    "Cell",
    "elman",
    "gru",
    "lru",
    "lstm",
    "mingru",
    "minlstm",
    # the recurrence and its methods
    "Fused",
    "Parallel",
    "Scan",
    "bidirectional",
    "init_stack",
    "resolve_method",
    "rnn",
    "scan_rnn",
    "stack",
    "variational_dropout",
    # pooling
    "masked_max",
    "masked_mean",
    # models
    "SequenceModelConfig",
    "classifier_apply",
    "classifier_init",
    "labeler_apply",
    "labeler_init",
    "labeler_loss",
    "labeler_predict",
    # validation
    "check_labels_in_range",
    "checked",
    "validate_ctc_inputs",
    "validate_labels",
    "validate_lengths",
    # interop
    "from_torch",
    "to_torch_state_dict",
]
