"""Metrics shared by the bundles."""

from common.metrics.dice import PartialLabelDiceMetric, partial_label_dice

__all__ = ["PartialLabelDiceMetric", "partial_label_dice"]
