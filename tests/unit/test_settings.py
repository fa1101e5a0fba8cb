import pytest

from common.handlers.checkpoint import ResumableCheckpoint
from common.settings import as_flag, if_flag

FLAGS = [(True, True), (False, False), ("false", False), ("False", False), ("TRUE", True), ("yes", True), ("0", False)]


@pytest.mark.parametrize(("value", "expected"), FLAGS)
def test_flags_typed_on_the_command_line(value, expected):
    assert as_flag(value, "resume") is expected


def test_unknown_flag_value_is_explained():
    with pytest.raises(ValueError, match="resume must be true or false, got 'maybe'"):
        as_flag("maybe", "resume")


def test_resumable_checkpoint_reads_false_from_the_command_line(tmp_path):
    assert ResumableCheckpoint(tmp_path / "c.pt", {}, resume="false").resume is False


def test_if_flag_keeps_or_drops_the_items():
    assert if_flag("true", "save", [1, 2]) == [1, 2]
    assert if_flag(False, "save", [1, 2]) == []
    with pytest.raises(ValueError, match="save must be true or false"):
        if_flag("perhaps", "save", [1])
