"""Loading weights with clear errors, and a resumable training checkpoint."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from common.data.atomic import atomic_target
from common.errors import CheckpointMismatchError
from common.handlers.ranks import is_main_process
from common.settings import as_flag

__all__ = ["ResumableCheckpoint", "WeightsLoader", "check_state_dict_fits", "load_weights", "unwrap"]

logger = logging.getLogger(__name__)


def _describe(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper, or the module itself."""
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def check_state_dict_fits(network: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointMismatchError` naming ``source`` when ``state_dict`` does not fit ``network``."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_describe(unexpected)}")
    if reshaped:
        problems.append(f"shape mismatches {_describe(reshaped)}")
    if problems:
        raise CheckpointMismatchError(
            f"{source} does not fit the network {type(network).__name__}: {'; '.join(problems)}. It was saved from "
            "another architecture or other network_def settings (channels, out_channels, num_res_units)."
        )


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a flat state_dict (or one nested under ``"model"``) from ``path`` into ``network``; returns it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint; train the bundle first or point ckpt_path at weights")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state_dict, Mapping) and "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    module = unwrap(network)
    check_state_dict_fits(module, state_dict, str(path))
    module.load_state_dict(state_dict)
    return network


class WeightsLoader:
    """Ignite handler: load ``path`` into ``network`` when the engine starts (inference and evaluation)."""

    def __init__(self, path: str | os.PathLike, network: torch.nn.Module) -> None:
        self.path = path
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_weights(self.network, self.path)
        logger.info("loaded weights from %s", self.path)


class ResumableCheckpoint:
    """Ignite handler: keep the full training state in one file and resume from it.

    At every ``save_interval`` epochs (and at completion) it writes ``save_dict``'s state (network, optimizer,
    trainer epoch/iteration, scheduler) to ``path`` atomically (temporary file, then rename), on
    rank 0 only. When the trainer starts and ``resume`` is true and ``path`` exists, it restores that state, so
    a killed run continues from its last finished epoch. ``max_epochs`` stays the configured one, so a finished
    run can be extended by raising it. The engine it is attached to is saved as ``"trainer"`` (its epoch and
    iteration), so configs need not reference the trainer from its own handler list.

    Args:
        path: the checkpoint file.
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, optimizer, lr scheduler).
        resume: restore from ``path`` when it exists.
        save_interval: save every this many epochs.
    """

    def __init__(self, path: str | os.PathLike, save_dict: dict, resume: bool = True, save_interval: int = 1) -> None:
        self.path = Path(path)
        self.save_dict = save_dict
        self.resume = as_flag(resume, "resume")
        self.save_interval = save_interval

    def attach(self, engine: Engine) -> None:
        self.save_dict = {**self.save_dict, "trainer": engine}
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine: Engine) -> None:
        if not (self.resume and self.path.is_file()):
            return
        checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        configured_max_epochs = engine.state.max_epochs
        network = self.save_dict.get("network")
        if network is not None and "network" in checkpoint:
            check_state_dict_fits(unwrap(network), checkpoint["network"], str(self.path))
        Checkpoint.load_objects(to_load=self.save_dict, checkpoint=checkpoint)
        engine.state.max_epochs = configured_max_epochs
        logger.info("resumed from %s at epoch %d of %d", self.path, engine.state.epoch, configured_max_epochs)
        if engine.state.epoch >= configured_max_epochs:
            logger.info("training already finished; raise max_epochs to train longer or set resume to false")

    def save(self, engine: Engine) -> None:
        if not is_main_process():
            return
        state = {name: unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        with atomic_target(self.path) as temporary:
            torch.save(state, temporary)
