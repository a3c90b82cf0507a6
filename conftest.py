"""Strict JAX settings for the whole test suite (equinox-style).

Rank promotion raises, so a broadcast the code did not mean fails loudly, and
dtype promotion is strict, so no int32 * float32 or float32 * float64 mix slips
through silently.
"""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
