import json

import pytest

from common.data.datalist import inference_datalist, load_datalist
from common.data.json_io import write_json
from common.errors import InvalidInputError


@pytest.fixture
def dataset(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}_img.nii.gz").write_bytes(b"x")
        (tmp_path / f"{name}_lbl.nii.gz").write_bytes(b"x")
    entries = [
        {"image": "a_img.nii.gz", "label": "a_lbl.nii.gz", "annotated_classes": [1, 3]},
        {"image": "b_img.nii.gz", "label": "b_lbl.nii.gz"},
    ]
    return write_json({"training": entries, "test": [{"image": "b_img.nii.gz"}]}, tmp_path / "dataset.json")


def test_paths_become_absolute_and_extra_keys_are_kept(dataset):
    entries = load_datalist(dataset, num_foreground_classes=3)
    assert entries[0]["image"] == str(dataset.parent / "a_img.nii.gz")
    assert entries[0]["annotated_classes"] == [1, 3]
    assert dataset.read_text().endswith("}\n")


def test_every_missing_file_is_named(dataset):
    (dataset.parent / "a_lbl.nii.gz").unlink()
    (dataset.parent / "b_img.nii.gz").unlink()
    with pytest.raises(InvalidInputError) as error:
        load_datalist(dataset)
    message = str(error.value)
    assert "dataset.json" in message and "a_lbl.nii.gz does not exist" in message and "b_img.nii.gz" in message


def test_annotated_class_outside_range_is_named(dataset):
    content = json.loads(dataset.read_text())
    content["training"][1]["annotated_classes"] = [2, 7]
    write_json(content, dataset)
    with pytest.raises(InvalidInputError, match=r"entry 1: annotated_classes names class 7"):
        load_datalist(dataset, num_foreground_classes=3)


def test_missing_section_and_bad_json(dataset, tmp_path):
    with pytest.raises(InvalidInputError, match="no list under key 'validation'"):
        load_datalist(dataset, key="validation")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InvalidInputError, match=r"broken\.json: not valid JSON"):
        load_datalist(broken)
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_datalist(tmp_path / "absent.json")


def test_inference_inputs_from_datalist_or_folder(dataset, tmp_path):
    assert inference_datalist(tmp_path, dataset, "test") == [{"image": str(tmp_path / "b_img.nii.gz")}]
    (tmp_path / "notes.txt").write_text("not an image")
    images = inference_datalist(tmp_path, None, input_dir=tmp_path)
    assert [p["image"].rsplit("/", 1)[-1] for p in images] == [
        "a_img.nii.gz",
        "a_lbl.nii.gz",
        "b_img.nii.gz",
        "b_lbl.nii.gz",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no image files"):
        inference_datalist(tmp_path, None, input_dir=empty)
