"""Training engines beyond MONAI's: self-relabeling rounds (SMILEr) and their pseudo-label selection rules."""

from common.engines.pseudo_labeler import PseudoLabeler
from common.engines.relabeling import RelabelingRounds, reinitialize_parameters
from common.engines.schedule import RelabelingSchedule
from common.engines.selection import (
    binary_entropy,
    class_fractions,
    crest_rates,
    gamma_schedule,
    has_dropout,
    mc_dropout_predict,
    select_confident,
    select_least_uncertain,
    select_top_fraction,
)

__all__ = [
    "PseudoLabeler",
    "RelabelingRounds",
    "RelabelingSchedule",
    "binary_entropy",
    "class_fractions",
    "crest_rates",
    "gamma_schedule",
    "has_dropout",
    "mc_dropout_predict",
    "reinitialize_parameters",
    "select_confident",
    "select_least_uncertain",
    "select_top_fraction",
]
