import pytest

from common.data.atomic import atomic_target


def test_target_appears_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "new" / "report.json"
    with atomic_target(target) as temporary:
        temporary.write_text("done")
        assert temporary.name.endswith("-report.json") and not target.exists()
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("previous")
    with pytest.raises(RuntimeError, match="disk full"), atomic_target(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
