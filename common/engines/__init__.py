"""Training engines beyond MONAI's: self-relabeling rounds (SMILEr) and their pseudo-label selection rules."""

from common.engines.selection import (
    binary_entropy,
    class_fractions,
    crest_rates,
    gamma_schedule,
    mc_dropout_predict,
    select_confident,
    select_least_uncertain,
    select_top_fraction,
)

__all__ = [
    "binary_entropy",
    "class_fractions",
    "crest_rates",
    "gamma_schedule",
    "mc_dropout_predict",
    "select_confident",
    "select_least_uncertain",
    "select_top_fraction",
]
