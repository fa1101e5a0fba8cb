"""Ignite handlers shared by the bundles."""

from common.handlers.checkpoint import ResumableCheckpoint, WeightsLoader, check_state_dict_fits, load_weights, unwrap
from common.handlers.classification_report import ClassificationReport
from common.handlers.metrics import PartialLabelDice, per_class_dice

__all__ = [
    "ClassificationReport",
    "PartialLabelDice",
    "ResumableCheckpoint",
    "WeightsLoader",
    "check_state_dict_fits",
    "load_weights",
    "per_class_dice",
    "unwrap",
]
