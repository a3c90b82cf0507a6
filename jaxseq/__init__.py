"""jaxseq: functional primitives for recurrent sequence models in JAX."""

from jaxseq.masks import (
    last_valid,
    length_mask,
    mask_lengths,
    reverse_within_length,
)

__all__ = [
    "last_valid",
    "length_mask",
    "mask_lengths",
    "reverse_within_length",
]
