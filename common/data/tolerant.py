"""Folder runs that finish: an input that cannot be read, or fails its checks, is skipped and reported, not fatal.

``SkipUnreadableDataset`` applies the preprocessing to each input in turn and yields only those it could prepare; a
failure is logged at error level as it happens (the file and the reason) and recorded in a :class:`FailureLog` that
an ignite handler (:class:`~common.handlers.InputFailureReport`) turns into a summary, and an error, at the end::

    failures = FailureLog()
    dataset = SkipUnreadableDataset(data, transform=preprocessing, failures=failures)
    evaluator = SupervisedEvaluator(
        device, DataLoader(dataset, batch_size=1, num_workers=0), network,
        val_handlers=[..., InputFailureReport(failures)],
    )

Only :class:`~common.errors.InvalidInputError` marks a bad input (MONAI's ``Compose`` wraps a transform's error in
``RuntimeError``\\ s: their causes are searched); any other exception is a bug or a broken set-up and ends the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from monai.transforms import apply_transform
from torch.utils.data import IterableDataset, get_worker_info

from common.errors import InvalidInputError

__all__ = ["FailedInput", "FailureLog", "SkipUnreadableDataset", "input_error"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailedInput:
    """One input that could not be used: its `file` and the `reason` (the error message, without the file name)."""

    file: str
    reason: str


class FailureLog:
    """The inputs of one pass over the data: how many were prepared, and each that failed, in order."""

    def __init__(self) -> None:
        self.num_prepared = 0
        self.failures: list[FailedInput] = []

    def clear(self) -> None:
        """Forget the previous pass."""
        self.num_prepared, self.failures = 0, []

    def record_failure(self, file: str, error: InvalidInputError) -> None:
        """Record that `file` failed with `error`, and log it at error level."""
        failure = FailedInput(str(file), str(error).removeprefix(f"{file}: "))
        self.failures.append(failure)
        logger.error("skipped %s: %s", failure.file, failure.reason)

    def summary(self) -> str:
        """E.g. "3 inputs: 2 segmented, 1 failed:" and one indented "file: reason" line per failed input."""
        total = self.num_prepared + len(self.failures)
        lines = [f"{total} inputs: {self.num_prepared} segmented, {len(self.failures)} failed"]
        lines[0] += ":" if self.failures else ""
        return "\n".join(lines + [f"  {failure.file}: {failure.reason}" for failure in self.failures])


class SkipUnreadableDataset(IterableDataset):
    """The items of `data` through `transform`, in order, without those that raise an InvalidInputError.

    Each pass starts a fresh `failures` log. It runs in the process that iterates it: use it with
    ``num_workers=0`` (a DataLoader worker's failures would be lost with its process, so workers are refused).

    Args:
        data: the items, e.g. ``[{"image": path}, ...]`` from :func:`~common.data.datalist.inference_datalist`.
        transform: the preprocessing, applied to one item at a time (MONAI's ``apply_transform``).
        failures: where failed inputs are recorded, shared with the handler that reports them.
        file_key: the key of an item's file, named in the failure log.
    """

    def __init__(
        self,
        data: Sequence[Mapping[Hashable, object]],
        transform: Callable,
        failures: FailureLog,
        file_key: Hashable = "image",
    ) -> None:
        self.data = data
        self.transform = transform
        self.failures = failures
        self.file_key = file_key

    def __iter__(self) -> Iterator:
        if get_worker_info() is not None:
            raise RuntimeError("SkipUnreadableDataset must run in the main process: set the DataLoader's num_workers=0")
        self.failures.clear()
        for item in self.data:
            prepared = self._prepare(item)
            if prepared is not None:
                yield prepared

    def _prepare(self, item: Mapping[Hashable, object]) -> object | None:
        """`item` through the transform, or None (and a recorded failure) for an InvalidInputError."""
        try:
            prepared = apply_transform(self.transform, item)
        except Exception as error:
            cause = input_error(error)
            if cause is None:
                raise
            self.failures.record_failure(str(item.get(self.file_key, item)), cause)
            return None
        self.failures.num_prepared += 1
        return prepared


def input_error(error: BaseException) -> InvalidInputError | None:
    """The InvalidInputError that `error` is or was raised from (following ``__cause__``), else None."""
    while error is not None and not isinstance(error, InvalidInputError):
        error = error.__cause__
    return error
