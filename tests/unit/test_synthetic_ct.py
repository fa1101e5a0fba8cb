"""Tests of the synthetic abdominal CT generator (tools.synthetic_ct), on tiny volumes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from common.data.datalist import load_datalist
from tools import synthetic_ct
from tools.synthetic_ct import ORGAN_LABELS, generate_synthetic_ct, make_phantom

SHAPE = (48, 48, 16)
SPACING = (0.8, 0.8, 2.5)
NUM_CASES = 6
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dataset.json of a tiny dataset: 4 training, 1 validation and 1 test case (the default 15% and 20%)."""
    return generate_synthetic_ct(tmp_path_factory.mktemp("dataset"), NUM_CASES, SHAPE, SPACING, seed=3)


@pytest.fixture(scope="module")
def cases(dataset: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, label) arrays of every case of `dataset`, as stored."""
    entries = [
        entry for split in ("training", "validation", "test") for entry in json.loads(dataset.read_text())[split]
    ]
    return [
        tuple(np.asanyarray(nib.load(dataset.parent / entry[key]).dataobj) for key in ("image", "label"))
        for entry in entries
    ]


def test_make_phantom_is_deterministic_by_seed():
    first = make_phantom(SHAPE, SPACING, np.random.default_rng(7))
    again = make_phantom(SHAPE, SPACING, np.random.default_rng(7))
    other = make_phantom(SHAPE, SPACING, np.random.default_rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("shape", [(32, 32, 12), (32, 32, 8), (40, 32, 12)])
def test_every_organ_is_present_at_tiny_shapes(shape):
    for seed in range(10):
        image, label = make_phantom(shape, SPACING, np.random.default_rng(seed))
        assert image.shape == label.shape == shape
        assert image.dtype == np.int16 and label.dtype == np.uint8
        assert set(np.unique(label).tolist()) == set(ORGAN_LABELS), f"seed {seed}"


def test_labels_are_single_organs_of_plausible_relative_size(cases):
    for _, label in cases:
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
        for index in (1, 2, 3):
            assert ndimage.label(label == index)[1] == 1, f"{ORGAN_LABELS[index]} is fragmented"
        voxels = np.bincount(label.ravel(), minlength=4)
        assert voxels[1] == voxels[1:].max(), "the liver must be the largest organ"
        assert voxels[2] == voxels[1:].min(), "the pancreas must be the smallest organ"
        slices_with = [np.any(label == index, axis=(0, 1)).sum() for index in (1, 2)]
        assert slices_with[0] > slices_with[1], "the liver spans more slices than the pancreas"


def test_intensities_are_plausible_hounsfield_units(cases):
    pancreas_contrast = []
    for image, label in cases:
        hu = image.astype(np.float64)
        assert abs(hu[:3, :3, :].mean() + 1000.0) < 10.0, "air outside the body"
        assert 40.0 < hu[label == 1].mean() < 90.0, "contrast-enhanced liver"
        assert hu[label == 0].max() > 300.0, "the unlabelled spine is bone-bright"
        assert hu[label == 3].mean() < hu[label == 1].mean(), "water or gas filled stomach darker than the liver"
        assert hu.min() >= -1024 and hu.max() <= 3071
        pancreas = label == 2
        surroundings = ndimage.binary_dilation(pancreas, np.ones((3, 3, 1), bool), iterations=2) & (label == 0)
        pancreas_contrast.append(hu[pancreas].mean() - hu[surroundings & ~pancreas].mean())
    assert min(pancreas_contrast) > 0.0 and np.mean(pancreas_contrast) > 5.0, pancreas_contrast


def test_nifti_files_have_the_requested_geometry(dataset):
    for entry in json.loads(dataset.read_text())["training"]:
        image, label = (nib.load(dataset.parent / entry[key]) for key in ("image", "label"))
        assert image.shape == label.shape == SHAPE
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert np.asanyarray(image.dataobj).dtype == np.int16
        assert np.asanyarray(label.dataobj).dtype == np.uint8
        np.testing.assert_allclose(image.header.get_zooms(), SPACING)
        np.testing.assert_allclose(np.diag(image.affine)[:3], SPACING)
        np.testing.assert_array_equal(image.affine, label.affine)
        np.testing.assert_allclose(image.affine[:3, 3], -(np.array(SHAPE) - 1) / 2 * SPACING)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        for header in (image.header, label.header):
            assert int(header["qform_code"]) == int(header["sform_code"]) == 1


def test_datalist_follows_the_decathlon_layout(dataset):
    text = dataset.read_text()
    assert text.endswith("}\n") and text.startswith('{\n    "name"')
    datalist = json.loads(text)
    assert datalist["modality"] == {"0": "CT"}
    assert datalist["labels"] == {str(index): name for index, name in ORGAN_LABELS.items()}
    assert datalist["tensorImageSize"] == "3D"
    sizes = [len(datalist[split]) for split in ("training", "validation", "test")]
    assert sizes == [4, 1, 1] and datalist["numTraining"] == 4
    assert datalist["validation"][0]["image"] == "imagesTr/case_004.nii.gz"
    assert datalist["test"][0] == {"image": "imagesTr/case_005.nii.gz", "label": "labelsTr/case_005.nii.gz"}
    for split in ("training", "validation", "test"):
        for entry in datalist[split]:
            assert not Path(entry["image"]).is_absolute()
            assert (dataset.parent / entry["image"]).is_file() and (dataset.parent / entry["label"]).is_file()
    assert datalist["generator"]["seed"] == 3 and datalist["generator"]["shape"] == list(SHAPE)
    assert len(load_datalist(dataset, key="validation", num_foreground_classes=3)) == 1, (
        "the project's reader accepts it"
    )


def test_rerun_reuses_the_dataset_and_other_arguments_are_refused(dataset):
    folder = dataset.parent
    files = [dataset, folder / "imagesTr" / "case_000.nii.gz", folder / "labelsTr" / "case_005.nii.gz"]
    modified = [path.stat().st_mtime_ns for path in files]
    assert generate_synthetic_ct(folder, NUM_CASES, SHAPE, SPACING, num_validation=1, num_test=1, seed=3) == dataset
    assert [path.stat().st_mtime_ns for path in files] == modified
    with pytest.raises(ValueError, match=re.escape(str(dataset))):
        generate_synthetic_ct(folder, NUM_CASES, SHAPE, SPACING, seed=4)
    with pytest.raises(ValueError, match=re.escape(str(dataset))):
        generate_synthetic_ct(folder, NUM_CASES + 1, SHAPE, SPACING, seed=3)


def test_cases_do_not_depend_on_the_number_of_cases(dataset, tmp_path):
    fewer = generate_synthetic_ct(tmp_path, 2, SHAPE, SPACING, seed=3).parent
    for name in ("imagesTr/case_001.nii.gz", "labelsTr/case_001.nii.gz"):
        assert (fewer / name).read_bytes() == (dataset.parent / name).read_bytes()


@pytest.mark.parametrize(
    ("num_cases", "num_validation", "num_test", "expected"),
    [(2, None, None, [2, 0, 0]), (3, None, None, [1, 1, 1]), (20, None, None, [13, 3, 4]), (5, 0, 2, [3, 0, 2])],
)
def test_split_sizes(tmp_path, num_cases, num_validation, num_test, expected):
    datalist_path = generate_synthetic_ct(tmp_path, num_cases, (32, 32, 8), SPACING, num_validation, num_test)
    datalist = json.loads(datalist_path.read_text())
    assert [len(datalist[split]) for split in ("training", "validation", "test")] == expected


@pytest.mark.parametrize(
    ("num_cases", "num_validation", "num_test", "message"),
    [(0, None, None, "num_cases"), (3, 1, 2, "training"), (4, -1, 1, "negative")],
)
def test_impossible_splits_are_refused_before_writing(tmp_path, num_cases, num_validation, num_test, message):
    with pytest.raises(ValueError, match=message):
        generate_synthetic_ct(tmp_path, num_cases, (32, 32, 8), SPACING, num_validation, num_test)
    assert not any(tmp_path.iterdir())


def test_invalid_geometry_is_refused():
    with pytest.raises(ValueError, match="shape"):
        make_phantom((32, 32), SPACING, np.random.default_rng(0))
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(SHAPE, (0.8, 0.0, 2.5), np.random.default_rng(0))


def test_interrupted_run_leaves_no_partial_file_and_resumes(tmp_path, monkeypatch):
    original = synthetic_ct.make_phantom

    def fail_on_third_case(*args):
        if len(list((tmp_path / "imagesTr").iterdir())) == 2:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(synthetic_ct, "make_phantom", fail_on_third_case)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_ct(tmp_path, 4, (32, 32, 8), SPACING)
    assert not (tmp_path / "dataset.json").exists()
    written = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file())
    assert written == [f"{folder}/case_00{index}.nii.gz" for folder in ("imagesTr", "labelsTr") for index in (0, 1)]
    monkeypatch.setattr(synthetic_ct, "make_phantom", original)
    datalist = json.loads(generate_synthetic_ct(tmp_path, 4, (32, 32, 8), SPACING).read_text())
    assert datalist["numTraining"] == 2


def test_command_line_writes_the_datalist(tmp_path):
    command = [sys.executable, "-m", "tools.synthetic_ct", "--output_dir", str(tmp_path), "--num_cases", "3"]
    command += ["--shape", "32", "32", "8", "--spacing", "1.0", "1.0", "3.0", "--seed", "5"]
    result = subprocess.run(command, cwd=REPOSITORY_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    datalist_path = tmp_path / "dataset.json"
    assert str(datalist_path) in result.stdout
    datalist = json.loads(datalist_path.read_text())
    assert [len(datalist[split]) for split in ("training", "validation", "test")] == [1, 1, 1]
    assert nib.load(tmp_path / datalist["test"][0]["image"]).header.get_zooms() == (1.0, 1.0, 3.0)
    assert generate_synthetic_ct(tmp_path, 3, (32, 32, 8), (1.0, 1.0, 3.0), seed=5) == datalist_path
