"""jaxseq.data: padding, bucketing, file formats and real data sets (host-side NumPy).

Batching: :func:`pad_sequences`, :func:`bucket_boundaries`, :func:`iterate_batches`
(fixed-shape batches ``[B, bucket_len, ...]``), :class:`Batch`.
Containers: :class:`SequenceDataset`, :class:`Splits`.
Data sets, each a module with ``load(...)`` and ``SHA256``: :mod:`.japanese_vowels`,
:mod:`.cmudict`, :mod:`.turkish_upos`, :mod:`.char_text` (English text for character
language models, from the running Python's standard library). Readers for your own files:
:func:`read_conllu`, :func:`read_tagged`, :func:`read_ts`, then :func:`tagging_splits`.
A malformed line raises :class:`ParseError` (a ``ValueError``): ``"<source>:<line>:
<field>: <problem>"``.
"""

from jaxseq.data import char_text, cmudict, japanese_vowels, turkish_upos
from jaxseq.data._files import DataFileError, ParseError, sha256_file
from jaxseq.data.batching import (
    Batch,
    bucket_boundaries,
    count_batches,
    iterate_batches,
    pad_sequences,
)
from jaxseq.data.conllu_reader import (
    Sentence,
    parse_conllu,
    parse_tagged,
    read_conllu,
    read_tagged,
)
from jaxseq.data.dataset import SequenceDataset, Splits, feature_stats, standardize
from jaxseq.data.tagging import TaggingSplits, tagging_splits
from jaxseq.data.ts_format import TsData, parse_ts, read_ts
from jaxseq.data.vocab import PAD, PAD_ID, UNK, UNK_ID, build_vocab

__all__ = [
    "PAD",
    "PAD_ID",
    "UNK",
    "UNK_ID",
    "Batch",
    "DataFileError",
    "ParseError",
    "SequenceDataset",
    "Sentence",
    "Splits",
    "TaggingSplits",
    "TsData",
    "bucket_boundaries",
    "build_vocab",
    "char_text",
    "cmudict",
    "count_batches",
    "feature_stats",
    "iterate_batches",
    "japanese_vowels",
    "pad_sequences",
    "parse_conllu",
    "parse_tagged",
    "parse_ts",
    "read_conllu",
    "read_tagged",
    "read_ts",
    "sha256_file",
    "standardize",
    "tagging_splits",
    "turkish_upos",
]
