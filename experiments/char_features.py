"""Word features from characters, for taggers that meet unknown words: pure functions.

Notation: B batch, T words, W characters per word, E_c character embedding,
F filters, E_w word embedding, V_c / V_w the vocabulary sizes.

:func:`char_cnn` embeds every character, slides a window of ``width``
characters over the word (zero vectors beyond its ends mark the boundaries,
so prefixes and suffixes look different from word-internal n-grams), projects
each window with one dense layer and ``tanh``, and max-pools over the word's
valid characters: a word of characters unseen as a whole still gets a
meaningful vector. :func:`word_features` concatenates it with a word
embedding, where ``word_dropout`` replaces known words by ``<unk>`` during
training so the ``<unk>`` row and the character path learn to stand in for
words never seen in training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseq.data import UNK_ID


def init(
    key: jax.Array,
    *,
    char_vocab_size: int,
    char_dim: int,
    filters: int,
    width: int,
    word_vocab_size: int,
    word_dim: int,
) -> dict:
    """Parameters: ``{"chars": {"E": [V_c, E_c], "W": [width * E_c, F], "b": [F]},
    "words": {"E": [V_w, E_w]}}``."""
    key_c, key_w, key_e = jax.random.split(key, 3)
    fan_in = width * char_dim
    return {
        "chars": {
            "E": jax.random.normal(key_c, (char_vocab_size, char_dim), jnp.float32),
            "W": jax.random.normal(key_w, (fan_in, filters), jnp.float32) / jnp.sqrt(float(fan_in)),
            "b": jnp.zeros((filters,), jnp.float32),
        },
        "words": {
            "E": jax.random.normal(key_e, (word_vocab_size, word_dim), jnp.float32)
            / jnp.sqrt(float(word_dim))
        },
    }


def char_cnn(params: dict, chars_BTW: jax.Array, char_lengths_BT: jax.Array, *, width: int):
    """float ``[B, T, F]``: max over the valid characters of ``tanh(window @ W + b)``.

    Characters at or after ``char_lengths`` are ignored (any id); a word with no
    characters (padding) gets zeros.
    """
    num_chars = chars_BTW.shape[-1]
    mask_BTW = jnp.arange(num_chars)[None, None, :] < char_lengths_BT[:, :, None]
    ids_BTW = jnp.where(mask_BTW, chars_BTW, 0)
    x_BTWE = jnp.where(mask_BTW[..., None], params["E"][ids_BTW], 0.0)
    left = (width - 1) // 2
    x_pad = jnp.pad(x_BTWE, ((0, 0), (0, 0), (left, width - 1 - left), (0, 0)))
    windows_BTWK = jnp.concatenate([x_pad[:, :, k : k + num_chars] for k in range(width)], -1)
    b_F = params["b"]
    h_BTWF = jnp.tanh(windows_BTWK @ params["W"] + b_F.reshape(1, 1, 1, -1))
    pooled_BTF = jnp.max(jnp.where(mask_BTW[..., None], h_BTWF, -2.0), axis=2)
    return jnp.where((char_lengths_BT > 0)[..., None], pooled_BTF, 0.0)


def word_features(
    params: dict,
    words_BT: jax.Array,
    chars_BTW: jax.Array,
    char_lengths_BT: jax.Array,
    *,
    width: int,
    word_dropout: float = 0.0,
    key: jax.Array | None = None,
    train: bool = False,
) -> jax.Array:
    """float ``[B, T, E_w + F]``: word embedding (``<unk>`` for dropped words) and char CNN.

    Args:
      params: from :func:`init`.
      words_BT: int word ids (``jaxseq.data.UNK_ID`` for unknown words).
      chars_BTW: int character ids of each word.
      char_lengths_BT: int number of valid characters of each word.
      width: the character window of :func:`char_cnn`.
      word_dropout: when ``train``, the probability that a word is looked up as
        ``<unk>`` (its characters stay).
      key: PRNG key, needed when ``train`` and ``word_dropout > 0``.
      train: apply word dropout.
    """
    if train and word_dropout > 0:
        drop_BT = jax.random.bernoulli(key, word_dropout, words_BT.shape)
        words_BT = jnp.where(drop_BT & (words_BT > UNK_ID), UNK_ID, words_BT)
    table = params["words"]["E"]
    w_BTE = jnp.take(table, jnp.clip(words_BT, 0, table.shape[0] - 1), axis=0)
    c_BTF = char_cnn(params["chars"], chars_BTW, char_lengths_BT, width=width)
    return jnp.concatenate([w_BTE, c_BTF], axis=-1)
