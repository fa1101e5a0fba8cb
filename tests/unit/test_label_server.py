"""The MONAI Label app's logic that does not need MONAI Label: discovery, working copies, labels, training."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lib.label_server import (
    discover_bundles,
    drawn_seed_settings,
    drawn_slices,
    drawn_structure,
    inference_options,
    inference_overrides,
    label_names,
    reads_user_label,
    remap_labels,
    segment_values,
    sync_working_copy,
    training_options,
    training_overrides,
)

from common.errors import InvalidInputError

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _bundle(root: Path, name: str, inference: dict | None = None, train: dict | None = None) -> Path:
    configs = root / name / "configs"
    configs.mkdir(parents=True)
    (configs / "metadata.json").write_text("{}")
    if inference is not None:
        (configs / "inference.json").write_text(json.dumps(inference))
    if train is not None:
        (configs / "train.json").write_text(json.dumps(train))
    return root / name


def test_discover_bundles_finds_every_project_bundle():
    found = {bundle.name: bundle for bundle in discover_bundles(BUNDLES)}
    assert set(found) >= {"smile", "smiler", "sli2vol", "xnet"}
    assert all(bundle.can_infer and bundle.can_train for bundle in found.values())


def test_discover_bundles_skips_folders_without_configs_and_filters_names(tmp_path):
    _bundle(tmp_path, "a", inference={})
    _bundle(tmp_path, "b", train={})
    (tmp_path / "notes").mkdir()
    _bundle(tmp_path, "metadata_only")
    assert [b.name for b in discover_bundles(tmp_path)] == ["a", "b"]
    assert [(b.name, b.can_infer, b.can_train) for b in discover_bundles(tmp_path, ["b"])] == [("b", False, True)]
    with pytest.raises(ValueError, match="no bundle named zzz; bundles found: a, b"):
        discover_bundles(tmp_path, ["zzz"])
    with pytest.raises(FileNotFoundError, match="missing"):
        discover_bundles(tmp_path / "missing")


def test_reads_user_label_only_for_the_propagation_bundle():
    found = {bundle.name: bundle for bundle in discover_bundles(BUNDLES)}
    assert reads_user_label(found["sli2vol"])
    assert not any(reads_user_label(found[name]) for name in ("smile", "smiler", "xnet"))


def test_sync_working_copy_refreshes_configs_and_never_overwrites_weights(tmp_path):
    source = _bundle(tmp_path / "src", "net", inference={"v": 1})
    (source / "models").mkdir()
    (source / "models" / "model.pt").write_bytes(b"shipped")
    (source / "LICENSE").write_text("license")
    bundle = discover_bundles(tmp_path / "src")[0]

    copy = sync_working_copy(bundle, tmp_path / "work")
    assert copy.path == tmp_path / "work" / "net"
    assert (copy.path / "models" / "model.pt").read_bytes() == b"shipped"
    assert (copy.path / "LICENSE").read_text() == "license"

    (copy.path / "models" / "model.pt").write_bytes(b"trained in MONAI Label")
    (source / "configs" / "inference.json").write_text(json.dumps({"v": 2}))
    sync_working_copy(bundle, tmp_path / "work")
    assert (copy.path / "models" / "model.pt").read_bytes() == b"trained in MONAI Label"
    assert json.loads((copy.path / "configs" / "inference.json").read_text()) == {"v": 2}
    assert (source / "models" / "model.pt").read_bytes() == b"shipped"
    assert not list((copy.path).rglob(".partial-*"))


def test_sync_working_copy_of_a_bundle_without_weights(tmp_path):
    shutil.copytree(BUNDLES / "smile" / "configs", tmp_path / "src" / "smile" / "configs")
    copy = sync_working_copy(discover_bundles(tmp_path / "src")[0], tmp_path / "work")
    assert (copy.path / "configs" / "train.json").is_file()
    assert not (copy.path / "models").exists()


def test_label_names_prefer_the_configured_values():
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "Background", "1": "Liver"}}}}}
    assert label_names({"liver": 1, "pancreas": 2}, metadata) == {"liver": 1, "pancreas": 2}
    assert label_names(None, metadata) == {"liver": 1}
    assert label_names(None, {}) == {}


def _slices(axis: int, indices: list[int], shape=(12, 13, 14)) -> torch.Tensor:
    """A drawing: a 2D region on each of ``indices`` along ``axis`` (strokes on several slices of one view)."""
    label = torch.zeros(shape)
    for index in indices:
        selector = [slice(3, 8)] * 3
        selector[axis] = index
        label[tuple(selector)] = 1
    return label


def test_drawn_slices_find_the_view_the_user_drew_in():
    label = torch.zeros(6, 7, 8)
    label[2:4, 3, 1:5] = 1  # one coronal slice (axis 1)
    assert drawn_slices(label, preferred=2) == (1, [3])
    label = torch.zeros(6, 7, 8)
    label[2, 3, 4] = 2  # a single voxel: one slice along every axis, the bundle's axis wins
    assert drawn_slices(label, preferred=2) == (2, [4])
    assert drawn_slices(label, preferred=0) == (0, [2])


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["sagittal", "coronal", "axial"])
def test_drawn_slices_find_several_slices_of_one_view(axis):
    for preferred in (0, 1, 2):
        assert drawn_slices(_slices(axis, [2, 5, 9]), preferred) == (axis, [2, 5, 9])
        assert drawn_slices(_slices(axis, [4, 6]), preferred) == (axis, [4, 6])  # one slice between them


def test_drawn_slices_prefer_one_slice_then_the_bundle_axis():
    label = torch.zeros(12, 13, 14)
    label[5, 3, 2] = label[5, 3, 9] = 1  # two dots: one slice along axes 0 and 1, two slices along axis 2
    assert drawn_slices(label, preferred=2) == (0, [5])
    assert drawn_slices(label, preferred=1) == (1, [3])
    label = torch.zeros(12, 13, 14)
    label[2, 3, 4] = label[6, 8, 10] = 1  # two dots far apart: two slices along every axis
    assert drawn_slices(label, preferred=1) == (1, [3, 8])
    assert drawn_slices(label, preferred=2) == (2, [4, 10])


def test_drawn_slices_refuse_adjacent_slices_and_two_views():
    with pytest.raises(InvalidInputError, match=r"d\.nii\.gz: the drawing fits no view: along every axis .* adjacent"):
        drawn_slices(_slices(2, [4, 5, 9]), preferred=2, source="d.nii.gz")
    two_views = _slices(2, [4]) + _slices(0, [9])  # an axial stroke and a sagittal one
    with pytest.raises(InvalidInputError, match="strokes in two different views"):
        drawn_slices(two_views, preferred=2)
    cube = torch.zeros(6, 6, 6)
    cube[1:3, 1:3, 1:3] = 1  # a 3D label
    with pytest.raises(InvalidInputError, match="fits no view"):
        drawn_slices(cube, preferred=2)


def test_drawn_slices_errors_name_the_file():
    with pytest.raises(InvalidInputError, match=r"drawn\.nii\.gz: the drawn label is empty"):
        drawn_slices(torch.zeros(4, 4, 4), preferred=2, source="drawn.nii.gz")
    label = torch.zeros(4, 4, 4)
    label[0, 0, 0] = label[1, 1, 1] = 1
    with pytest.raises(InvalidInputError, match=r"drawn\.nii\.gz: the drawing fits no view"):
        drawn_slices(label, preferred=2, source="drawn.nii.gz")


def test_drawn_seed_settings_propagate_one_or_every_drawn_slice():
    one = _slices(1, [6])
    assert drawn_seed_settings(one, {}, 2, takes_several=True) == {"axis": 1, "seed_slice": None, "seeds": "one"}
    assert drawn_seed_settings(one, {}, 2, takes_several=False)["seeds"] == "one"
    several = _slices(0, [2, 5, 9])
    assert drawn_seed_settings(several, {}, 2, True) == {"axis": 0, "seed_slice": None, "seeds": "all"}
    picked = drawn_seed_settings(several, {"seed_slice": "5"}, 2, False)
    assert picked == {"axis": 0, "seed_slice": 5, "seeds": "one"}
    assert drawn_seed_settings(several, {"axis": 0}, 2, True)["seeds"] == "all"  # the bundle checks adjacency
    assert drawn_seed_settings(one, {"axis": "1", "seed_slice": None}, 2, True)["axis"] == 1


def test_drawn_seed_settings_refuse_several_slices_for_a_one_slice_bundle_and_bad_values():
    several = _slices(2, [2, 5, 9])
    with pytest.raises(InvalidInputError, match=r"up\.nrrd: drawn on 3 slices along axis 2 \(2, 5, 9\), but model x "):
        drawn_seed_settings(several, {}, 2, takes_several=False, source="up.nrrd", model="model x")
    with pytest.raises(InvalidInputError, match="axis 3 is out of range"):
        drawn_seed_settings(several, {"axis": 3}, 2, True)
    with pytest.raises(InvalidInputError, match="seed_slice: 'middle' is not a whole number"):
        drawn_seed_settings(several, {"seed_slice": "middle"}, 2, True)


TRAIN = {
    "bundle_root": ".",
    "dataset_dir": "/data",
    "epochs": 100,
    "learning_rate": 0.001,
    "batch_dice": False,
    "selection": "confidence",
    "patch_size": [64, 64, 32],
    "num_classes": "$len(@class_names)",
    "train": {"trainer": {"max_epochs": "@epochs"}},
    "validate": {},
}


def test_training_options_are_the_plain_settings():
    assert training_options(TRAIN) == {"learning_rate": 0.001, "batch_dice": False, "selection": "confidence"}


INFERENCE = {"output_postfix": "seg", "modality": "MRI", "axis": 2, "verification": True, "hu_window": [-300, 400]}


def test_inference_options_leave_out_files_lists_and_excluded_names():
    assert inference_options(INFERENCE) == {"modality": "MRI", "axis": 2, "verification": True}
    assert inference_options(INFERENCE, exclude=frozenset({"axis"})) == {"modality": "MRI", "verification": True}


def test_inference_overrides_type_the_request_values():
    request = {"modality": "CT", "verification": "false", "hu_window": [-100, 200], "output_postfix": "x", "other": 1}
    overrides = inference_overrides(INFERENCE, request)
    assert overrides == {"modality": "CT", "verification": False, "hu_window": [-100, 200]}
    with pytest.raises(InvalidInputError, match="verification"):
        inference_overrides(INFERENCE, {"verification": "maybe"})


def test_training_overrides_map_max_epochs_and_options(tmp_path):
    monailabel = {"train#trainer#max_epochs": 3, "train#dataset#data": [{"image": "a"}], "validate#dataset#data": [{}]}
    request = {
        "max_epochs": 3,
        "learning_rate": "0.01",
        "batch_dice": "true",
        "bundle_root": "/x",
        "patch_size": "[8,8,4]",
    }
    overrides = training_overrides(monailabel, TRAIN, request, tmp_path / "run")
    assert "train#trainer#max_epochs" not in overrides
    assert overrides["epochs"] == 3 and overrides["learning_rate"] == 0.01 and overrides["batch_dice"] is True
    assert overrides["patch_size"] == [8, 8, 4]
    assert overrides["output_dir"] == str(tmp_path / "run") and overrides["resume"] is False
    assert "bundle_root" not in overrides
    assert overrides["train#dataset#data"] == [{"image": "a"}]


def test_training_overrides_keep_a_derived_epoch_count():
    derived = {**TRAIN, "epochs": "$@schedule.total_epochs", "round_epochs": 30}
    overrides = training_overrides({"train#trainer#max_epochs": 50}, derived, {"max_epochs": 5, "round_epochs": 2}, "r")
    assert "epochs" not in overrides and "train#trainer#max_epochs" not in overrides
    assert overrides["round_epochs"] == 2


def test_training_overrides_refuse_bad_values_and_no_validation_image():
    with pytest.raises(InvalidInputError, match="training option learning_rate: 'fast' is not a float"):
        training_overrides({}, TRAIN, {"learning_rate": "fast"}, "r")
    with pytest.raises(InvalidInputError, match=r"patch_size: .* is not a list of 3 numbers"):
        training_overrides({}, TRAIN, {"patch_size": [32, 32]}, "r")
    with pytest.raises(InvalidInputError, match="at least one validation image"):
        training_overrides({"validate#dataset#data": []}, TRAIN, {}, "r")


SLICER_SEGMENTS = [
    {"name": "background_scribbles", "id": 1},
    {"name": "foreground_scribbles", "id": 2},
    {"name": "liver", "id": 3},
]


def test_drawn_structure_takes_foreground_scribbles_then_the_selected_segment():
    label = torch.zeros(4, 4, 4)
    label[0, 0, 1] = 1  # background scribble: ignored
    label[1:3, 1:3, 1] = 3  # the liver segment (for example an earlier result)
    assert drawn_structure(label, SLICER_SEGMENTS, "liver").sum() == 4
    label[2, 2, 2] = 2  # painted as foreground scribbles: wins
    structure = drawn_structure(label, SLICER_SEGMENTS, "liver")
    assert structure.dtype == torch.uint8 and structure.sum() == 1 and structure[2, 2, 2] == 1


def test_drawn_structure_errors_name_the_file_and_segment():
    label = torch.zeros(4, 4, 4)
    with pytest.raises(InvalidInputError, match=r"up\.nrrd: nothing is drawn in segment 'liver'"):
        drawn_structure(label, SLICER_SEGMENTS, "liver", source="up.nrrd")
    with pytest.raises(InvalidInputError, match=r"up\.nrrd: the selected segment 'spleen' is not among"):
        drawn_structure(label, SLICER_SEGMENTS, "spleen", source="up.nrrd")


def test_segment_values_read_either_key():
    assert segment_values([{"name": "liver", "idx": 2}, {"name": "bone", "id": 1}]) == {"liver": 2, "bone": 1}
    assert segment_values(None) == {}


def test_remap_labels_renumbers_by_segment_name():
    saved = np.array([[0, 1, 2], [3, 4, 1]])  # Slicer: stomach 1, liver 2, pancreas 3, notes 4
    order = {"stomach": 1, "liver": 2, "pancreas": 3, "notes": 4}
    remapped = remap_labels(saved, order, {"liver": 1, "pancreas": 2, "stomach": 3}, "l.nii.gz")
    np.testing.assert_array_equal(remapped, [[0, 3, 1], [2, 0, 3]])
    assert remapped.dtype == np.uint8
    xnet = remap_labels(
        saved, {"open_beam": 1, "soft_tissue": 2, "bone": 3}, {"open_beam": 0, "soft_tissue": 1, "bone": 2}, "x"
    )
    np.testing.assert_array_equal(xnet, [[0, 0, 1], [2, 0, 0]])


def test_remap_labels_refuses_a_label_with_no_known_segment():
    with pytest.raises(InvalidInputError, match=r"l\.nii\.gz: none of its segments \(tumour\) is a label"):
        remap_labels(np.ones((2, 2)), {"tumour": 1}, {"liver": 1}, "l.nii.gz")


@pytest.mark.parametrize("bundle", ["smile", "smiler", "sli2vol", "xnet"])
def test_training_options_never_offer_the_data_monai_label_supplies(bundle):
    config = json.loads(
        (Path(__file__).resolve().parents[2] / "bundles" / bundle / "configs" / "train.json").read_text()
    )
    offered = training_options(config)
    assert offered, f"{bundle} offers no training option at all"
    assert not {"datalist", "train_datalist_key", "val_datalist_key", "dataset_dir", "output_dir"} & set(offered)
