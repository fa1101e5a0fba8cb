"""Ignite handlers shared by the bundles."""

from common.handlers.checkpoint import ResumableCheckpoint, WeightsLoader, check_state_dict_fits, load_weights, unwrap
from common.handlers.metrics import PartialLabelDice, per_class_dice

__all__ = [
    "PartialLabelDice",
    "ResumableCheckpoint",
    "WeightsLoader",
    "check_state_dict_fits",
    "load_weights",
    "per_class_dice",
    "unwrap",
]
