"""Tests that kill mutants which survived `make mutants` (reports/mutants.md).

Each test names the surviving mutant it kills (module:line of the run that found it,
the operator and the change). They are small, fixed-seed and compare with independent
references (plain NumPy or a value worked out by hand), never with jaxseq itself.
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import jaxseq as js


@pytest.mark.bad_input
@pytest.mark.parametrize("fn", ["cross_entropy", "soft_cross_entropy"])
def test_scalar_logits_raise_an_error_that_names_logits(fn):
    """Kills losses.py:82 (before; :95 now, and :237 in soft_cross_entropy) NumberReplacer
    ``check_min_rank(logits, 1, ...)`` -> ``check_min_rank(logits, 0, ...)``: a 0-d
    ``logits`` has no class axis, and the error must say so and name ``logits`` (the
    mutant lets it through to an IndexError from ``logits.shape[-1]``)."""
    logits = jnp.float32(1.5)
    message = r"`logits` must have rank >= 1 \[\.\.\., C\]"
    with pytest.raises(AssertionError, match=message):
        if fn == "cross_entropy":
            js.cross_entropy(logits, jnp.int32(0))
        else:
            js.soft_cross_entropy(logits, jnp.float32(1.0))
