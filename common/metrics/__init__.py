"""Metrics shared by the bundles."""

from common.metrics.dice import PartialLabelDiceMetric, partial_label_dice
from common.metrics.pixel_classification import (
    PixelClassificationMetric,
    auc_from_histograms,
    expected_calibration_error,
    f1_from_confusion,
)
from common.metrics.pseudo_labels import precision_recall, pseudo_label_counts

__all__ = [
    "PartialLabelDiceMetric",
    "PixelClassificationMetric",
    "auc_from_histograms",
    "expected_calibration_error",
    "f1_from_confusion",
    "partial_label_dice",
    "precision_recall",
    "pseudo_label_counts",
]
