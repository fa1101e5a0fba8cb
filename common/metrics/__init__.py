"""Metrics shared by the bundles."""

from common.metrics.dice import PartialLabelDiceMetric, partial_label_dice
from common.metrics.pseudo_labels import precision_recall, pseudo_label_counts

__all__ = ["PartialLabelDiceMetric", "partial_label_dice", "precision_recall", "pseudo_label_counts"]
