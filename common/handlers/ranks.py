"""Which handlers each process of a distributed run attaches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

__all__ = ["MAIN_PROCESS_HANDLERS", "handlers_for_this_rank"]

# Handlers that log or write files: one process is enough, and several would write the same files.
MAIN_PROCESS_HANDLERS = (StatsHandler, TensorBoardStatsHandler, CheckpointSaver)


def handlers_for_this_rank(handlers: Sequence, main_only: tuple[type, ...] = MAIN_PROCESS_HANDLERS) -> list:
    """``handlers`` on rank 0 (or without torch.distributed); on other ranks, those that are not ``main_only``.

    Filtering by type, not by position in the config's list, keeps a handler added to ``train.json`` on every
    rank unless it is a logging or saving handler.
    """
    handlers = list(handlers or [])
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return handlers
    if torch.distributed.get_rank() == 0:
        return handlers
    return [handler for handler in handlers if not isinstance(handler, main_only)]
