"""Ignite handlers shared by the bundles."""

from common.handlers.checkpoint import ResumableCheckpoint, WeightsLoader, check_state_dict_fits, load_weights, unwrap
from common.handlers.input_failures import InputFailureReport
from common.handlers.progress import TerminalProgressBar, shows_progress
from common.handlers.ranks import handlers_for_this_rank
from common.handlers.temperature_scaling import TemperatureScaling, fit_temperature

__all__ = [
    "InputFailureReport",
    "ResumableCheckpoint",
    "TemperatureScaling",
    "TerminalProgressBar",
    "WeightsLoader",
    "check_state_dict_fits",
    "fit_temperature",
    "handlers_for_this_rank",
    "load_weights",
    "shows_progress",
    "unwrap",
]
