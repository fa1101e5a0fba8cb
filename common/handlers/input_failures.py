"""The end of a folder run: how many inputs were segmented, which failed and why, and an error if any did."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events

from common.data.tolerant import FailureLog
from common.errors import InvalidInputError

__all__ = ["InputFailureReport"]

logger = logging.getLogger(__name__)


class InputFailureReport:
    """Ignite handler: when the run completes, log the summary of `failures`, or raise it if any input failed.

    The summary (see :meth:`~common.data.tolerant.FailureLog.summary`) is logged at info level when every input was
    used; otherwise it is the message of an :class:`~common.errors.InvalidInputError` that ends the run (ignite logs
    it at error level), so that ``python -m monai.bundle run`` exits non-zero after the other inputs were processed.
    List it last among an evaluator's handlers: the handlers after it would not see the run's completion.

    Args:
        failures: the log that the run's :class:`~common.data.tolerant.SkipUnreadableDataset` fills.
    """

    def __init__(self, failures: FailureLog) -> None:
        self.failures = failures

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.failures.failures:
            raise InvalidInputError(self.failures.summary())
        logger.info(self.failures.summary())
