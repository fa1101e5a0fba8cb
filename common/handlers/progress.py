"""A progress bar with an ETA on a terminal, and nothing in logs, CI or on the other ranks of a distributed run."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from ignite.engine import Engine, Events
from tqdm import tqdm

from common.handlers.ranks import is_main_process

__all__ = ["TerminalProgressBar", "shows_progress"]

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(callable(isatty) and isatty())


def shows_progress(stream: TextIO | None = None) -> bool:
    """Whether a progress bar belongs on ``stream`` (default: ``sys.stderr``, looked up now): it is a terminal and
    this process is rank 0 of a distributed run, or the only process."""
    return _is_terminal(sys.stderr if stream is None else stream) and is_main_process()


class _AboveTheBar:
    """A log handler's stream that clears the progress bars before each record and redraws them after it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        with tqdm.external_write_mode(file=self.stream):
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def _terminal_log_handlers() -> list[logging.StreamHandler]:
    """The log handlers that write to this terminal: the root logger's and those of named loggers."""
    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.Logger.manager.loggerDict.values() if hasattr(lg, "handlers")),
    ]
    return [
        handler
        for lg in loggers
        for handler in lg.handlers
        if isinstance(handler, logging.StreamHandler)
        and (handler.stream is sys.stdout or handler.stream is sys.stderr)
        and _is_terminal(handler.stream)
    ]


class TerminalProgressBar:
    """Ignite handler: a tqdm bar with an ETA while the engine runs, shown only where someone watches it.

    It attaches only when ``sys.stderr`` is a terminal, and only on rank 0: a run whose output goes to a file, a CI
    job, a test, and the other processes of ``torchrun`` get no handler at all, so their logs hold the log records
    and nothing else. On a trainer the bar runs over the iterations still to do, so its ETA is the end of the
    training (also after a resume), and its label counts the epochs::

        train epoch 12/150   7%|▋         | 132/1800 [00:40<08:25, loss=0.412]

    On an evaluator or a folder inference (one epoch) it runs over the batches::

        segment 100%|██████████| 10/10 [00:12<00:00]

    While the bar is open, log records that go to the same terminal are printed above it instead of through it.

    Args:
        desc: the bar's label.
        output_transform: the engine's output -> a number shown after the bar as ``output_name=value`` (e.g.
            ``monai.handlers.from_engine(['loss'], first=True)``), or None.
        output_name: the name of that number.
        state_attributes: attributes of ``engine.state`` shown after the bar when they are set (e.g. SMILEr's
            ``relabeling_round``).
        leave: keep the finished bar on the terminal (False for a validation that runs inside training).
        refresh_s: the label and the shown numbers are read at most this often, so that a loss on the GPU is not
            synchronised at every iteration.
        epoch_length: the iterations of an epoch where the engine does not know them (a folder inference over an
            iterable dataset: its number of inputs, an upper bound when unreadable ones are skipped); without it
            such a bar counts iterations with no ETA.
    """

    def __init__(
        self,
        desc: str = "",
        output_transform: Callable | None = None,
        output_name: str = "loss",
        state_attributes: Sequence[str] = (),
        leave: bool = True,
        refresh_s: float = 0.5,
        epoch_length: int | None = None,
    ) -> None:
        self.desc = desc
        self.epoch_length = epoch_length
        self.output_transform = output_transform
        self.output_name = output_name
        self.state_attributes = tuple(state_attributes)
        self.leave = leave
        self.refresh_s = refresh_s
        self.bar: tqdm | None = None
        self._epochs = 1
        self._read_at = 0.0
        self._redirected: list[tuple[logging.StreamHandler, TextIO]] = []

    def attach(self, engine: Engine) -> None:
        """Attach to ``engine`` when stderr is a terminal on rank 0; otherwise do nothing."""
        if not shows_progress():
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.close)
        engine.add_event_handler(Events.TERMINATE, self.close)

    def _open(self, engine: Engine) -> None:
        # opened at the first iteration, once a resumed trainer has restored its epoch
        state = engine.state
        self._epochs = max(state.max_epochs - state.epoch + 1, 1)  # the epochs this run goes through
        length = state.epoch_length or self.epoch_length
        total = self._epochs * length if length else None
        self.bar = tqdm(
            total=total, desc=self.desc, leave=self.leave, file=sys.stderr, dynamic_ncols=True, smoothing=0,
            bar_format=BAR_FORMAT if total else None,
        )  # fmt: skip
        self._redirected = [
            (handler, handler.setStream(_AboveTheBar(handler.stream))) for handler in _terminal_log_handlers()
        ]
        self._read_at = 0.0

    def iteration_completed(self, engine: Engine) -> None:
        if self.bar is None:
            self._open(engine)
        now = time.monotonic()
        if now - self._read_at >= self.refresh_s:
            self._read_at = now
            self._label(engine)
        self.bar.update(1)

    def _label(self, engine: Engine) -> None:
        """The epoch count before the bar, the output and state attributes after it."""
        if self._epochs > 1:
            label = f"{self.desc} epoch {engine.state.epoch}/{engine.state.max_epochs}"
            self.bar.set_description_str(label.strip(), refresh=False)
        values = {name: getattr(engine.state, name, None) for name in self.state_attributes}
        if self.output_transform is not None:
            with contextlib.suppress(TypeError, ValueError):  # shown only when it is one number
                values[self.output_name] = f"{float(self.output_transform(engine.state.output)):.4g}"
        shown = ", ".join(f"{name}={value}" for name, value in values.items() if value is not None)
        if shown:
            self.bar.set_postfix_str(shown, refresh=False)

    def close(self, engine: Engine | None = None) -> None:
        """Close the bar, as the run ended, and give the log handlers their stream back."""
        for handler, stream in reversed(self._redirected):
            handler.setStream(stream)
        self._redirected = []
        if self.bar is not None:
            if engine is not None:
                self._label(engine)
            self.bar.close()
            self.bar = None
