"""Reading and scoring what the bundles write, for the demo, the benchmarks and the tests."""

from __future__ import annotations

import csv
import os

import numpy as np

__all__ = ["binary_dice", "read_metrics_csv"]


def binary_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape; 0 when both are empty."""
    return 2.0 * np.logical_and(prediction, truth).sum() / max(prediction.sum() + truth.sum(), 1)


def read_metrics_csv(path: str | os.PathLike) -> dict[str, float]:
    """A ``metrics.csv`` written by MONAI's ``MetricsSaver`` (``name,value`` lines), as {name: value}."""
    with open(path, newline="") as lines:
        return {name: float(value) for name, value in csv.reader(lines)}
