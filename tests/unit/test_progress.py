"""The terminal progress bar: drawn on a terminal, absent from logs, CI and the other ranks."""

import io
import logging
import re
import sys
from types import SimpleNamespace

import ignite.distributed as idist
import pytest
from ignite.engine import Engine, Events

from common.handlers import TerminalProgressBar, shows_progress
from common.smile import RelabelingRounds, RelabelingSchedule


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _engine(log: logging.Logger | None = None) -> Engine:
    def step(engine, batch):
        if log is not None and engine.state.iteration == 3:
            log.info("a log record during the run")
        return {"loss": 0.25 * batch}

    return Engine(step)


def _attached(engine: Engine, bar: TerminalProgressBar) -> bool:
    return engine.has_event_handler(bar.iteration_completed, Events.ITERATION_COMPLETED)


def test_not_attached_when_stderr_is_not_a_terminal(monkeypatch):
    stderr = io.StringIO()  # a log file, a CI job's pipe
    monkeypatch.setattr(sys, "stderr", stderr)
    engine, bar = _engine(), TerminalProgressBar("train")
    bar.attach(engine)
    assert not shows_progress()
    assert not _attached(engine, bar)
    engine.run(range(4), max_epochs=2)
    assert stderr.getvalue() == ""


def test_not_attached_on_other_ranks(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    monkeypatch.setattr(idist, "get_rank", lambda: 1)
    engine, bar = _engine(), TerminalProgressBar("train")
    bar.attach(engine)
    assert not _attached(engine, bar)


def test_a_bar_over_the_training_on_a_terminal(monkeypatch):
    stderr, stdout = FakeTerminal(), FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", stdout)
    log = logging.getLogger("test_progress")
    console = logging.StreamHandler(sys.stdout)
    log.addHandler(console)
    log.setLevel(logging.INFO)
    try:
        engine = _engine(log)
        bar = TerminalProgressBar("train", output_transform=lambda output: output["loss"], refresh_s=0)
        bar.attach(engine)
        assert _attached(engine, bar)
        engine.run(range(1, 5), max_epochs=2)
    finally:
        log.removeHandler(console)
    drawn = stderr.getvalue()
    assert "train epoch 2/2" in drawn
    assert "8/8" in drawn
    assert "loss=1" in drawn  # the last batch's output
    assert bar.bar is None  # closed at completion
    assert "a log record during the run" in stdout.getvalue()
    assert re.search(r"\r {20,}\r", drawn)  # the bar was wiped for the record, which is printed above it
    assert console.stream is sys.stdout  # the log handler has its stream back


@pytest.mark.parametrize("restored_epoch", [1, 2])
def test_the_bar_covers_what_is_left_of_the_run(monkeypatch, restored_epoch):
    """A resumed trainer, or a MONAI evaluator (``run(global_epoch)`` starts at epoch ``global_epoch - 1``)."""
    stderr = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    engine, bar = _engine(), TerminalProgressBar("validate")

    @engine.on(Events.STARTED)
    def restore(engine):
        engine.state.epoch = restored_epoch
        engine.state.iteration = restored_epoch * 4

    bar.attach(engine)
    engine.run(range(4), max_epochs=3)
    drawn = stderr.getvalue()
    remaining = (3 - restored_epoch) * 4
    assert f"{remaining}/{remaining}" in drawn
    assert ("epoch 3/3" in drawn) == (restored_epoch < 2)  # one epoch left: no epoch count


def test_smiler_round_is_shown_after_the_bar(monkeypatch):
    stderr = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    rounds = SimpleNamespace(schedule=RelabelingSchedule(num_rounds=2, round_epochs=1, initial_epochs=1))
    engine = _engine()
    engine.add_event_handler(Events.STARTED, lambda engine: RelabelingRounds._show_round(rounds, engine))
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: RelabelingRounds._show_round(rounds, engine))
    bar = TerminalProgressBar("train", state_attributes=["relabeling_round"], refresh_s=0)
    bar.attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda engine: seen.append(engine.state.relabeling_round))
    engine.run(range(2), max_epochs=3)
    assert seen == ["0/2", "1/2", "2/2"]  # round 0 trains SMILE, then one epoch in each round
    assert "train epoch 3/3 100%" in stderr.getvalue() and "relabeling_round=2/2]" in stderr.getvalue()
