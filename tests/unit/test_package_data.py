"""Helpers for the labelled CTs shipped in PyPI packages (no download)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tools.package_data import LabelledCt, bone_values, extract, member_filter, total_class_map


def test_bone_values_pick_bones_but_not_cartilage() -> None:
    classes = {"liver": 5, "sacrum": 25, "vertebrae_L1": 31, "rib_left_1": 92, "skull": 91, "costal_cartilages": 117}
    assert bone_values(classes) == (25, 31, 91, 92)
    assert LabelledCt("ct", Path("a"), Path("b"), classes, "CHEST").bone_values == (25, 31, 91, 92)


def test_member_filter_matches_files_and_folders() -> None:
    wanted = member_filter(["data/ct.nii.gz", "data/dicom/"])
    assert wanted("data/ct.nii.gz") and wanted("data/dicom/1.dcm")
    assert not wanted("data/ct.nii.gz.bak") and not wanted("data/dicom_other/1.dcm")


def test_extract_takes_the_members_and_reports_missing_ones(tmp_path: Path) -> None:
    archive = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("pkg/data/a.txt", "a")
        handle.writestr("pkg/other.py", "")
    dest = extract(archive, ["pkg/data/a.txt"], tmp_path / "out")
    assert [p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()] == ["pkg/data/a.txt"]
    with pytest.raises(RuntimeError, match=r"no pkg/missing\.txt"):
        extract(archive, ["pkg/missing.txt"], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_total_class_map_reads_the_literal(tmp_path: Path) -> None:
    source = tmp_path / "map_to_binary.py"
    source.write_text('class_map = {"other": {1: "x"}, "total": {1: "spleen", 25: "sacrum"}}\n')
    assert total_class_map(source) == {1: "spleen", 25: "sacrum"}
