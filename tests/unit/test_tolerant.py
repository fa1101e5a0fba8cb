"""Tests of folder runs that finish (common.data.tolerant, common.handlers.InputFailureReport) on in-memory items."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.transforms import Compose, Lambdad

from common.data.tolerant import FailureLog, SkipUnreadableDataset, input_error
from common.errors import InvalidInputError
from common.handlers import InputFailureReport


def _check(item: dict) -> dict:
    """Refuse the files named bad*, as a reader would, naming the file."""
    if item["image"].startswith("bad"):
        raise InvalidInputError(f"{item['image']}: not a readable image")
    return {**item, "value": torch.tensor(len(item["image"]))}


ITEMS = [{"image": "a.nii"}, {"image": "bad_1.nii"}, {"image": "bb.nii"}, {"image": "bad_2.nii"}]


def test_bad_items_are_skipped_logged_and_recorded(caplog):
    failures = FailureLog()
    dataset = SkipUnreadableDataset(ITEMS, Compose([Lambdad("image", str), _check]), failures)  # errors wrapped
    with caplog.at_level(logging.ERROR):
        assert [item["image"] for item in dataset] == ["a.nii", "bb.nii"]
    assert [(failure.file, failure.reason) for failure in failures.failures] == [
        ("bad_1.nii", "not a readable image"),
        ("bad_2.nii", "not a readable image"),
    ]
    assert [record.getMessage() for record in caplog.records] == [
        "skipped bad_1.nii: not a readable image",
        "skipped bad_2.nii: not a readable image",
    ]
    assert failures.summary() == (
        "4 inputs: 2 segmented, 2 failed:\n  bad_1.nii: not a readable image\n  bad_2.nii: not a readable image"
    )
    list(dataset)  # a second pass starts a fresh log
    assert failures.num_prepared == 2 and len(failures.failures) == 2


def test_other_errors_are_not_swallowed():
    def broken(item):
        raise TypeError("a bug")

    with pytest.raises(RuntimeError) as error:
        list(SkipUnreadableDataset(ITEMS, Compose([broken]), FailureLog()))
    assert isinstance(error.value.__cause__.__cause__, TypeError)


def test_input_error_follows_the_causes():
    cause = InvalidInputError("x.nii: bad")
    try:
        try:
            raise cause
        except InvalidInputError as inner:
            raise RuntimeError("applying transform") from inner
    except RuntimeError as outer:
        assert input_error(outer) is cause
    assert input_error(ValueError("other")) is None


def test_dataloader_workers_are_refused():
    loader = DataLoader(SkipUnreadableDataset(ITEMS, _check, FailureLog()), batch_size=1, num_workers=1)
    with pytest.raises(RuntimeError, match="num_workers=0"):
        list(loader)


def _evaluate(items: list[dict], seen: list[str]) -> None:
    """A one-epoch ignite run over `items` with the report attached; the files each iteration got go to `seen`."""
    failures = FailureLog()
    engine = Engine(lambda engine, batch: seen.extend(batch["image"]))
    InputFailureReport(failures).attach(engine)
    engine.run(DataLoader(SkipUnreadableDataset(items, _check, failures), batch_size=1, num_workers=0), max_epochs=1)


def test_report_logs_the_summary_when_every_input_was_used(caplog):
    seen = []
    with caplog.at_level(logging.INFO, logger="common.handlers.input_failures"):
        _evaluate([{"image": "a.nii"}, {"image": "b.nii"}], seen)
    assert seen == ["a.nii", "b.nii"]
    assert "2 inputs: 2 segmented, 0 failed" in caplog.text


@pytest.mark.parametrize("items", [ITEMS, ITEMS[1::2]], ids=["some_fail", "all_fail"])
def test_report_raises_the_summary_after_the_whole_run(items):
    seen = []
    with pytest.raises(InvalidInputError, match=r"segmented, 2 failed:\n  bad_1.nii: not a readable image\n"):
        _evaluate(items, seen)
    assert seen == [item["image"] for item in items if not item["image"].startswith("bad")]
