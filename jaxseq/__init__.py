"""jaxseq: functional primitives for recurrent sequence models in JAX."""

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
from jaxseq.validation import (
    check_labels_in_range,
    checked,
    validate_labels,
    validate_lengths,
)

__all__ = [
    "REDUCTIONS",
    "LossTerms",
    "check_labels_in_range",
    "checked",
    "cross_entropy",
    "last_valid",
    "reduce_sequence_loss",
    "length_mask",
    "mask_lengths",
    "reverse_within_length",
    "safe_divide",
    "sequence_classification_loss",
    "sequence_classification_loss_terms",
    "sequence_labeling_loss",
    "sequence_labeling_loss_terms",
    "sequence_loss_terms",
    "soft_cross_entropy",
    "validate_labels",
    "validate_lengths",
]
