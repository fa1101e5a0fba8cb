"""Handlers attached on each rank of a distributed run."""

import ignite.distributed as idist
import torch
from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

from common.handlers import ResumableCheckpoint, handlers_for_this_rank
from common.handlers.ranks import barrier, gather_lists, is_main_process, rank


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
    monkeypatch.setattr(idist, "get_rank", lambda: 1)
    assert handlers_for_this_rank(handlers) == [checkpoint]
    monkeypatch.setattr(idist, "get_rank", lambda: 0)
    assert handlers_for_this_rank(handlers) == handlers


def test_without_a_process_group_this_is_the_main_and_only_process():
    assert rank() == 0 and is_main_process()
    barrier()  # returns at once
    assert gather_lists([1, 2]) == [1, 2]


def test_two_processes_gather_their_lists_in_rank_order():
    with idist.Parallel(backend="gloo", nproc_per_node=2) as parallel:
        parallel.run(_gather_case_names)


def _gather_case_names(local_rank):
    names = gather_lists([f"case_{local_rank}_a", f"case_{local_rank}_b"])
    assert names == ["case_0_a", "case_0_b", "case_1_a", "case_1_b"]
    assert is_main_process() == (local_rank == 0)
    barrier()
