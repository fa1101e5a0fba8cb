"""Handlers attached on each rank of a distributed run."""

import torch
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

from common.handlers import ResumableCheckpoint, handlers_for_this_rank


def _handlers(tmp_path):
    checkpoint = ResumableCheckpoint(tmp_path / "last.pt", save_dict={})
    saver = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": torch.nn.Linear(1, 1)})
    return [checkpoint, StatsHandler(), TensorBoardStatsHandler(log_dir=str(tmp_path)), saver], checkpoint


def test_every_handler_without_a_process_group(tmp_path):
    handlers, _ = _handlers(tmp_path)
    assert handlers_for_this_rank(handlers) == handlers
    assert handlers_for_this_rank(None) == []


def test_other_ranks_drop_logging_and_saving_handlers(tmp_path, monkeypatch):
    handlers, checkpoint = _handlers(tmp_path)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    assert handlers_for_this_rank(handlers) == [checkpoint]
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    assert handlers_for_this_rank(handlers) == handlers
