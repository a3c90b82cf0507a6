"""The experiments' figures: training curves and confusion matrices (PNG files).

Written by process 0 only in a multi-process run; nothing here trains or reads
a run folder: the harness passes the records (the metrics schema of
:mod:`experiments.harness`) and the counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jaxseq.training import distributed

# The panels of curves(), each drawn when some record has the metric.
CURVES = ("loss", "accuracy", "learning_rate")
# Split -> line style; the test split is one point at the last step.
STYLES = {"train": "-", "dev": "o-", "test": "s"}


@distributed.main_process_only
def curves(records: Sequence[Mapping[str, Any]], path: str, title: str) -> None:
    """Loss, accuracy and learning rate against step, one line per split."""
    names = [n for n in CURVES if any(n in r for r in records)]
    fig = Figure(figsize=(5 * max(len(names), 1), 4), layout="constrained")
    for ax, name in zip(np.atleast_1d(fig.subplots(1, max(len(names), 1))), names):
        for split, style in STYLES.items():
            points = [(r["step"], r[name]) for r in records if r["split"] == split and name in r]
            if points:
                xs, values = zip(*points)
                ax.plot(xs, values, style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


@distributed.main_process_only
def confusion(confusion_CC: np.ndarray, class_names: Sequence[str], path: str, title: str) -> None:
    """Row-normalised confusion matrix (rows: true class), with counts when few classes."""
    counts = np.asarray(confusion_CC, np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    num_classes = len(class_names)
    size = max(4.0, 0.45 * num_classes + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_xticks(range(num_classes), class_names, rotation=90 if num_classes > 9 else 0)
    ax.set_yticks(range(num_classes), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if num_classes <= 15:
        for i in range(num_classes):
            for j in range(num_classes):
                if counts[i, j]:
                    color = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                            fontsize=7, color=color)  # fmt: skip
    ax.set_title(title)
    fig.savefig(path, dpi=100)
