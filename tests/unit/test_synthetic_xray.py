"""Tests of the synthetic radiograph generator (tools.synthetic_xray), on tiny images."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from common.xnet.radiograph_io import read_radiograph
from tools import package_data
from tools.package_data import LabelledCt
from tools.synthetic_xray import (
    BITS_STORED,
    BODY_PART_FREQUENCIES,
    CLASS_NAMES,
    generate_radiograph,
    main,
    sample_body_part,
    write_xray_dataset,
)

SIZE = (48, 64)
SPLITS = {"training": 8, "validation": 2, "test": 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dataset.json of a dataset of 13 tiny cases, seed 0."""
    output_dir = tmp_path_factory.mktemp("xray")
    return write_xray_dataset(output_dir, SPLITS["training"], SPLITS["validation"], SPLITS["test"], SIZE, seed=0)


@pytest.fixture(scope="module")
def entries(dataset: Path) -> list[dict]:
    content = json.loads(dataset.read_text())
    return [entry for split in SPLITS for entry in content[split]]


@pytest.mark.parametrize("body_part", sorted(BODY_PART_FREQUENCIES))
def test_labels_follow_the_geometry(body_part):
    for seed in range(3):
        sample = generate_radiograph(np.random.default_rng(seed), SIZE, body_part)
        label, transmission = sample.label, sample.transmission
        assert label.shape == transmission.shape == sample.image.shape == SIZE
        assert label.dtype == np.uint8 and set(np.unique(label).tolist()) <= set(CLASS_NAMES)
        assert (label == 1).any() and (label == 2).any(), f"{body_part}, seed {seed}"
        # Open beam exactly where the ray crosses nothing; bone attenuates more than soft tissue on average.
        assert np.all(transmission[label == 0] == 1.0) and np.all(transmission[(label == 1) | (label == 2)] < 1.0)
        assert transmission[label == 2].mean() < transmission[label == 1].mean()


def test_image_is_displayed_as_a_radiograph():
    # As a viewer shows a real radiograph: open beam darkest, then soft tissue, bone, the collimated area brightest.
    means = {name: [] for name in CLASS_NAMES.values()}
    for seed in range(16):
        sample = generate_radiograph(np.random.default_rng(seed), SIZE)
        image = sample.image
        assert image.dtype == np.float32 and sample.bits_stored in BITS_STORED
        assert image.min() >= 0 and image.max() <= 2**sample.bits_stored - 1 and np.array_equal(image, np.rint(image))
        assert sample.pixel_spacing[0] == sample.pixel_spacing[1] > 0
        for value, name in CLASS_NAMES.items():
            if (sample.label == value).sum() >= 4:
                means[name].append(image[sample.label == value].mean() / (2**sample.bits_stored - 1))
        if (sample.label == 0).any() and (sample.label == 2).any():
            assert image[sample.label == 0].mean() < image[sample.label == 2].mean(), f"seed {seed}"
    ordered = [np.mean(means[name]) for name in ("open_beam", "soft_tissue", "bone", "collimator")]
    assert all(len(values) >= 3 for values in means.values())
    assert ordered == sorted(ordered), ordered


def test_same_seed_same_sample():
    first, again = (generate_radiograph(np.random.default_rng(5), SIZE) for _ in range(2))
    other = generate_radiograph(np.random.default_rng(6), SIZE)
    for name in ("image", "label", "transmission", "exposed"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert (first.body_part, first.pixel_spacing, first.bits_stored) == (
        again.body_part,
        again.pixel_spacing,
        again.bits_stored,
    )
    assert not np.array_equal(first.image, other.image)


def test_body_parts_are_drawn_with_unequal_frequencies():
    rng = np.random.default_rng(0)
    counts = Counter(sample_body_part(rng) for _ in range(4000))
    assert set(counts) == set(BODY_PART_FREQUENCIES) and len(counts) >= 4
    for name, frequency in BODY_PART_FREQUENCIES.items():
        assert abs(counts[name] / 4000 - frequency) < 0.03, name
    assert max(counts.values()) > 2.5 * min(counts.values())


def test_collimated_area_is_labelled_collimator_whatever_lies_beneath():
    samples = [generate_radiograph(np.random.default_rng(seed), (32, 32)) for seed in range(30)]
    collimated = [sample for sample in samples if not sample.exposed.all()]
    assert collimated and len(collimated) < len(samples)
    for sample in samples:
        assert np.array_equal(sample.label == 3, ~sample.exposed)
    # objects do lie under the blades: the label says "collimator" there, the transmission keeps the object
    assert any((sample.transmission[~sample.exposed] < 1).any() for sample in collimated)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="body_part"):
        generate_radiograph(np.random.default_rng(0), SIZE, "skull")
    with pytest.raises(ValueError, match="size"):
        generate_radiograph(np.random.default_rng(0), (8, 64))
    with pytest.raises(ValueError, match="num_training"):
        write_xray_dataset("unused", 0, 1, 1)


def test_dataset_datalist_and_files(dataset, entries):
    content = json.loads(dataset.read_text())
    assert {split: len(content[split]) for split in SPLITS} == SPLITS
    assert content["labels"] == {"0": "open_beam", "1": "soft_tissue", "2": "bone", "3": "collimator"}
    assert len({entry["body_part"] for entry in entries}) >= 3
    for index, entry in enumerate(entries):
        assert entry["image"] == f"images/xr_{index:03d}.dcm" and entry["label"] == f"labels/xr_{index:03d}.png"
        label = np.asarray(Image.open(dataset.parent / entry["label"]))
        assert label.dtype == np.uint8 and label.shape == SIZE and set(np.unique(label).tolist()) <= {0, 1, 2, 3}
        assert read_radiograph(dataset.parent / entry["image"]).array.shape == SIZE
        assert (dataset.parent / "images_png" / f"xr_{index:03d}.png").is_file()


def test_dataset_dicom_encodings_vary_and_decode_to_the_detector_image(dataset, entries):
    headers = [pydicom.dcmread(dataset.parent / entry["image"]) for entry in entries]
    assert {header.PhotometricInterpretation for header in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({header.BitsStored for header in headers}) >= 2
    assert any("RescaleSlope" in header for header in headers) and any("WindowCenter" in header for header in headers)
    for index, (entry, header) in enumerate(zip(entries, headers, strict=True)):
        sample = generate_radiograph(np.random.default_rng(np.random.SeedSequence(0, spawn_key=(index,))), SIZE)
        assert header.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        assert entry["body_part"] == sample.body_part
        np.testing.assert_array_equal(np.asarray(Image.open(dataset.parent / entry["label"])), sample.label)
        png = np.asarray(Image.open(dataset.parent / "images_png" / f"xr_{index:03d}.png")).astype(np.int64)
        np.testing.assert_array_equal(png >> (16 - sample.bits_stored), sample.image)
        slope, intercept = float(header.get("RescaleSlope", 1.0)), float(header.get("RescaleIntercept", 0.0))
        decoded = read_radiograph(dataset.parent / entry["image"], apply_voi=False)
        np.testing.assert_allclose(decoded.array, slope * sample.image + intercept, rtol=1e-6)
        np.testing.assert_allclose(decoded.affine[[0, 1], [0, 1]], sample.pixel_spacing, rtol=1e-6)


def test_windowed_files_show_the_object_in_the_window(dataset, entries):
    windowed = [entry for entry in entries if "WindowCenter" in pydicom.dcmread(dataset.parent / entry["image"])]
    assert windowed
    compared = 0
    for entry in windowed:
        pixels = read_radiograph(dataset.parent / entry["image"]).array
        label = np.asarray(Image.open(dataset.parent / entry["label"]))
        # Open beam is displayed dark and bone bright, for MONOCHROME1 and MONOCHROME2 files alike.
        if (label == 0).any() and (label == 2).any():
            assert pixels[label == 0].mean() < pixels[label == 2].mean()
            compared += 1
    assert compared >= 1, "no windowed file shows both open beam and bone"


def test_command_line(tmp_path, capsys):
    arguments = ["--output_dir", str(tmp_path), "--num_training", "1", "--num_validation", "0", "--num_test", "1"]
    main([*arguments, "--size", "32", "40", "--seed", "3"])
    datalist = tmp_path / "dataset.json"
    assert str(datalist) in capsys.readouterr().out
    content = json.loads(datalist.read_text())
    assert len(content["training"]) == 1 and content["validation"] == [] and len(content["test"]) == 1
    assert read_radiograph(tmp_path / content["test"][0]["image"]).array.shape == (32, 40)


def _cylinder_ct(folder: Path, name: str) -> LabelledCt:
    """A water cylinder (radius 80 mm, 260 mm long, 4 mm voxels) with a bone rod labelled 1, as NIfTI files."""
    voxel, shape = 4.0, (50, 50, 65)
    x, y = np.meshgrid(*((np.arange(n) - (n - 1) / 2) * voxel for n in shape[:2]), indexing="ij")
    body = np.repeat((np.hypot(x, y) <= 80.0)[..., None], shape[2], axis=2)
    rod = np.repeat((np.hypot(x - 20.0, y) <= 12.0)[..., None], shape[2], axis=2)
    affine = np.diag([voxel, voxel, voxel, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    hu = np.where(rod, 1000, np.where(body, 0, -1000)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, affine), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(rod.astype(np.uint8), affine), folder / f"{name}_label.nii.gz")
    return LabelledCt(name, folder / f"{name}.nii.gz", folder / f"{name}_label.nii.gz", {"femur_left": 1}, "PELVIS")


def test_dataset_with_drrs_keeps_the_test_ct_apart(tmp_path, monkeypatch):
    cts = [_cylinder_ct(tmp_path / "cts", "seen"), _cylinder_ct(tmp_path / "cts", "held_out")]
    monkeypatch.setattr(package_data, "labelled_cts", lambda cache_dir: cts)
    datalist = write_xray_dataset(tmp_path / "xray", 2, 1, 1, (32, 32), seed=1, ct_cache_dir=tmp_path / "cts",
                                  num_drr_training=2, num_drr_validation=1, num_drr_test=2)  # fmt: skip
    content = json.loads(datalist.read_text())
    assert [len(content[key]) for key in ("training", "validation", "test", "test_drr")] == [4, 2, 1, 2]
    drr_names = [
        entry["image"] for key in ("training", "validation") for entry in content[key] if "drr_" in entry["image"]
    ]
    assert drr_names == ["images/drr_000.dcm", "images/drr_001.dcm", "images/drr_002.dcm"]
    assert [entry["image"] for entry in content["test_drr"]] == ["images/drr_003.dcm", "images/drr_004.dcm"]
    for entry in content["training"][2:] + content["test_drr"]:
        assert entry["body_part"] == "pelvis"
        label = np.asarray(Image.open(datalist.parent / entry["label"]))
        assert (label == 1).any() and (label == 2).any(), entry  # the cylinder and its rod
        assert pydicom.dcmread(datalist.parent / entry["image"]).BodyPartExamined == "PELVIS"
    with pytest.raises(ValueError, match="ct_cache_dir"):
        write_xray_dataset(tmp_path / "none", 1, 0, 0, num_drr_training=1)
