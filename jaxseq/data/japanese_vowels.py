"""UEA JapaneseVowels: speaker classification from 12 LPC cepstrum coefficients.

Source: the ``.ts`` files shipped inside the ``aeon`` package (``aeon==1.6.0``),
read by path; ``aeon`` itself is never imported. Kudo, Toyama and Shimbo (1999).

* 9 classes (speakers ``"1"``..``"9"``), D = 12 features per frame,
  lengths 7..29 frames, no missing values.
* Official split: train 270 (30 per speaker), test 370 (24..88 per speaker).
* No official dev split: ``dev_per_class=k`` moves k random training series of
  every speaker (a permutation from ``seed``) into a dev split.
* Standardisation statistics (per feature, over all training frames) come from
  train only, and are returned whether or not ``standardize`` applies them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxseq import _checks
from jaxseq.data import _files
from jaxseq.data.dataset import SequenceDataset, feature_stats, standardize
from jaxseq.data.ts_format import TsData, read_ts

REQUIREMENT = "aeon==1.6.0"
FILES = {"train": "JapaneseVowels_TRAIN.ts", "test": "JapaneseVowels_TEST.ts"}
SHA256 = {
    "JapaneseVowels_TRAIN.ts": "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
    "JapaneseVowels_TEST.ts": "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462",
}
NUM_FEATURES = 12


class JapaneseVowelsSplits(NamedTuple):
    """The splits (``dev`` is ``None`` unless ``dev_per_class > 0``) and train statistics.

    Attributes:
      train, dev, test: classification data sets of float32 ``[T_i, 12]``.
      mean: float32 ``[12]`` per-feature mean of the training frames.
      std: float32 ``[12]`` per-feature standard deviation of the training frames.
    """

    train: SequenceDataset
    dev: SequenceDataset | None
    test: SequenceDataset
    mean: np.ndarray
    std: np.ndarray


def default_dir() -> Path:
    """The installed ``aeon/datasets/data/JapaneseVowels`` folder."""
    root = _files.package_dir("aeon", requirement=REQUIREMENT)
    return root / "datasets" / "data" / "JapaneseVowels"


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, sha256: str) -> TsData:
    """Parse once per (file, content); arrays are read-only so the cache stays intact."""
    del sha256  # part of the cache key only
    data = read_ts(path)
    for s in data.series:
        s.flags.writeable = False
    return data


def _to_dataset(
    data: TsData, split: str, class_names: tuple[str, ...], source: str
) -> SequenceDataset:
    if data.class_labels != class_names:
        raise ValueError(
            f"{source}: @classLabel: classes {data.class_labels}, expected {class_names} "
            f"(the {split} file of JapaneseVowels)"
        )
    if len(data.labels) != len(data.series):
        raise ValueError(
            f"{source}: class label: {len(data.series)} series but {len(data.labels)} labels"
        )
    if any(s.shape[1] != NUM_FEATURES for s in data.series):
        raise ValueError(f"{source}: dimensions: expected {NUM_FEATURES} per series")
    index = {c: k for k, c in enumerate(class_names)}
    labels = np.array([index[label] for label in data.labels], dtype=np.int32)
    return SequenceDataset(
        sequences=data.series,
        labels=labels,
        class_names=class_names,
        ids=tuple(f"{split}:{i}" for i in range(len(labels))),
        name=f"japanese_vowels/{split}",
    )


def load(
    *,
    path: _files.PathLike | None = None,
    dev_per_class: int = 0,
    seed: int = 0,
    standardize_features: bool = False,
    verify: bool = True,
) -> JapaneseVowelsSplits:
    """Load JapaneseVowels with its official train/test split.

    Args:
      path: the folder holding ``JapaneseVowels_TRAIN.ts`` and ``_TEST.ts``;
        default the one installed by ``aeon==1.6.0``.
      dev_per_class: move this many training series per speaker into ``dev``.
      seed: the permutation that picks the dev series.
      standardize_features: apply the train ``mean``/``std`` to every split.
      verify: check the files' SHA-256 (see :data:`SHA256`).

    Returns:
      :class:`JapaneseVowelsSplits`; sequences float32 ``[T_i, 12]``, labels int32
      ``[N]`` in 0..8 (class names ``"1"``..``"9"``: the speakers).

    Raises:
      DataFileError: a file is missing or differs from the one ``aeon==1.6.0`` ships.
    """
    _checks.check_int(dev_per_class, "dev_per_class", 0)
    _checks.check_int(seed, "seed", 0)
    _checks.check_flag(standardize_features, "standardize_features")
    folder = default_dir() if path is None else Path(path)
    class_names = tuple(str(k) for k in range(1, 10))
    splits = {}
    for split, filename in FILES.items():
        file = folder / filename
        digest = _files.checked_digest(
            file, SHA256[filename], requirement=REQUIREMENT, verify=verify
        )
        splits[split] = _to_dataset(_read_cached(str(file), digest), split, class_names, str(file))
    train, test = splits["train"], splits["test"]
    dev = None
    if dev_per_class > 0:
        rng = np.random.default_rng(seed)
        dev_idx = []
        for c in range(len(class_names)):
            members = np.flatnonzero(train.labels == c)
            if dev_per_class >= len(members):
                raise ValueError(f"dev_per_class={dev_per_class} leaves class {c} no training data")
            dev_idx.extend(np.sort(rng.permutation(members)[:dev_per_class]).tolist())
        keep = sorted(set(range(len(train))) - set(dev_idx))
        dev = train.select(sorted(dev_idx), name="japanese_vowels/dev")
        train = train.select(keep)
    mean, std = feature_stats(train)
    if standardize_features:
        train, test = standardize(train, mean, std), standardize(test, mean, std)
        dev = None if dev is None else standardize(dev, mean, std)
    return JapaneseVowelsSplits(train, dev, test, mean, std)
