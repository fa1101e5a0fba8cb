"""Which process of a distributed run does what: one place, on ``ignite.distributed``.

``ignite.distributed`` finds a process group however it was started (``torchrun`` with the bundle's
``multi_gpu_train.json``, or ``idist.Parallel``) and answers as a single process when there is none.
"""

from __future__ import annotations

from collections.abc import Sequence

import ignite.distributed as idist
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

__all__ = [
    "MAIN_PROCESS_HANDLERS",
    "barrier",
    "gather_lists",
    "handlers_for_this_rank",
    "is_main_process",
    "rank",
    "world_size",
]

# Handlers that log or write files: one process is enough, and several would write the same files.
MAIN_PROCESS_HANDLERS = (StatsHandler, TensorBoardStatsHandler, CheckpointSaver)


def rank() -> int:
    """This process's rank: 0 without a process group."""
    return idist.get_rank()


def world_size() -> int:
    """The number of processes: 1 without a process group."""
    return idist.get_world_size()


def is_main_process() -> bool:
    """True on rank 0 and without a process group: the process that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (nothing to wait for without a process group)."""
    if world_size() > 1:
        idist.barrier()


def gather_lists(items: list) -> list:
    """Every process's ``items`` concatenated in rank order (``items`` itself without a process group)."""
    if world_size() == 1:
        return items
    return [item for part in idist.all_gather(items) for item in part]


def handlers_for_this_rank(handlers: Sequence, main_only: tuple[type, ...] = MAIN_PROCESS_HANDLERS) -> list:
    """``handlers`` on rank 0 (or without a process group); on other ranks, those that are not ``main_only``.

    Filtering by type, not by position in the config's list, keeps a handler added to ``train.json`` on every
    rank unless it is a logging or saving handler.
    """
    handlers = list(handlers or [])
    if is_main_process():
        return handlers
    return [handler for handler in handlers if not isinstance(handler, main_only)]
