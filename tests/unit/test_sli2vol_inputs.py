"""Sli2Vol bad input: every unusable annotation, image or datalist gives an InvalidInputError naming the source."""

import re

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from common.data.datalist import propagation_datalist
from common.data.json_io import write_json
from common.errors import InvalidInputError
from common.sli2vol import (
    AnnotatedSeedd,
    LargestSliceSeedd,
    RandSlicePairsd,
    check_same_geometry,
    modality_normalisation,
    seed_slice_index,
    seed_slice_indices,
)
from common.transforms import CheckSegmentationInputd

IMAGE_FILE, LABEL_FILE = "/data/case_03.nii.gz", "/data/case_03_seed.nii.gz"


def _label(slices, shape=(6, 7, 8), axis=2, value=1):
    """(H, W, D) annotation with a small labelled patch on each of ``slices`` along ``axis``."""
    label = torch.zeros(shape, dtype=torch.long)
    for index in slices:
        selector = [slice(1, 3)] * 3
        selector[axis] = index
        label[tuple(selector)] = value
    return label


# --- seed_slice_index ------------------------------------------------------------------------------------------


def test_seed_without_labelled_voxel():
    with pytest.raises(InvalidInputError, match=r"^seed\.nii\.gz: the annotation has no labelled voxel"):
        seed_slice_index(torch.zeros(4, 4, 4), axis=2, source="seed.nii.gz")


def test_seed_on_several_slices_lists_them():
    with pytest.raises(InvalidInputError) as error:
        seed_slice_index(_label([1, 4, 6]), axis=2, source="seed.nii.gz")
    message = str(error.value)
    assert message.startswith("seed.nii.gz: labelled voxels on 3 slices along axis 2 (1, 4, 6)")
    assert "seed_slice" in message and "axis" in message and "seeds=all" in message


def test_seed_on_many_slices_shortens_the_list():
    with pytest.raises(InvalidInputError, match=r"on 20 slices along axis 0 \(0, 1, .*, 11, \.\.\. 8 more\)"):
        seed_slice_index(_label(range(20), shape=(20, 4, 4), axis=0), axis=0, source="seed.nii.gz")


@pytest.mark.parametrize("seed_slice", [-1, 8, 100])
def test_seed_slice_out_of_range(seed_slice):
    expected = (
        rf"^seed\.nii\.gz: seed_slice {seed_slice} is out of range: the volume has 8 slices along axis 2 \(0\.\.7\)"
    )
    with pytest.raises(InvalidInputError, match=expected):
        seed_slice_index(_label([3]), axis=2, seed_slice=seed_slice, source="seed.nii.gz")


def test_seed_slice_pointing_to_an_empty_slice():
    expected = r"^seed\.nii\.gz: slice 5 along axis 2 has no labelled voxel; annotated slices: \[3, 6\]"
    with pytest.raises(InvalidInputError, match=expected):
        seed_slice_index(_label([3, 6]), axis=2, seed_slice=5, source="seed.nii.gz")


@pytest.mark.parametrize("axis", [-1, 3])
def test_axis_out_of_range(axis):
    with pytest.raises(InvalidInputError, match=rf"^seed\.nii\.gz: axis {axis} is out of range for a 3D volume"):
        seed_slice_index(_label([3]), axis=axis, source="seed.nii.gz")


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_valid_seed_slice(axis):
    assert seed_slice_index(_label([4], axis=axis), axis=axis) == 4
    assert seed_slice_index(_label([2, 5], axis=axis), axis=axis, seed_slice=5) == 5
    # Along another axis the same patch spans slices 1 and 2.
    other = (axis + 1) % 3
    assert seed_slice_index(_label([4], axis=axis), axis=other, seed_slice=2) == 2


# --- geometry and the seed transforms --------------------------------------------------------------------------


def _meta(array, name, affine=None):
    return MetaTensor(array, affine=torch.eye(4) if affine is None else affine, meta={"filename_or_obj": name})


def test_check_same_geometry_shape():
    image = _meta(torch.zeros(1, 6, 7, 8), IMAGE_FILE)
    label = _meta(torch.zeros(1, 6, 7, 9), LABEL_FILE)
    expected = (
        rf"^{re.escape(LABEL_FILE)}: shape \(6, 7, 9\) differs from the image {re.escape(IMAGE_FILE)} \(6, 7, 8\)"
    )
    with pytest.raises(InvalidInputError, match=expected):
        check_same_geometry(image, label, IMAGE_FILE, LABEL_FILE)


def test_check_same_geometry_affine():
    shifted = torch.eye(4)
    shifted[0, 3] = 5.0
    image = _meta(torch.zeros(1, 6, 7, 8), IMAGE_FILE)
    with pytest.raises(InvalidInputError, match=rf"^{re.escape(LABEL_FILE)}: affine differs from the image"):
        check_same_geometry(image, _meta(torch.zeros(1, 6, 7, 8), LABEL_FILE, shifted), IMAGE_FILE, LABEL_FILE)
    spacing = torch.diag(torch.tensor([1.0, 1.0, 2.5, 1.0]))
    with pytest.raises(InvalidInputError, match="affine differs"):
        check_same_geometry(image, _meta(torch.zeros(1, 6, 7, 8), LABEL_FILE, spacing), IMAGE_FILE, LABEL_FILE)
    # Same shape and affine (up to rounding) passes, and so do plain tensors without an affine.
    nearly = torch.eye(4)
    nearly[0, 3] = 1e-5
    check_same_geometry(image, _meta(torch.ones(1, 6, 7, 8), LABEL_FILE, nearly), IMAGE_FILE, LABEL_FILE)
    check_same_geometry(torch.zeros(1, 6, 7, 8), torch.zeros(1, 6, 7, 8), IMAGE_FILE, LABEL_FILE)


def test_annotated_seed_names_the_label_file():
    image = _meta(torch.zeros(1, 6, 7, 8), IMAGE_FILE)
    with pytest.raises(InvalidInputError, match=rf"^{re.escape(LABEL_FILE)}: the annotation has no labelled voxel"):
        AnnotatedSeedd()({"image": image, "label": _meta(torch.zeros(1, 6, 7, 8), LABEL_FILE)})
    several = _meta(_label([2, 5])[None], LABEL_FILE)
    with pytest.raises(InvalidInputError, match=rf"^{re.escape(LABEL_FILE)}: labelled voxels on 2 slices"):
        AnnotatedSeedd()({"image": image, "label": several})
    with pytest.raises(InvalidInputError, match=rf"^{re.escape(LABEL_FILE)}: shape"):
        AnnotatedSeedd()({"image": image, "label": _meta(torch.zeros(1, 6, 7, 5), LABEL_FILE)})


def test_annotated_seed_keeps_the_chosen_slice():
    image = _meta(torch.zeros(1, 6, 7, 8), IMAGE_FILE)
    label = _label([2, 5], value=3)[None]
    label[0, 4, 4, 5] = 1
    data = {"image": image, "label": _meta(label.clone(), LABEL_FILE), "other": "kept"}
    result = AnnotatedSeedd(seed_slice=5)(data)
    assert result["seed_index"] == 5
    assert result["other"] == "kept"
    expected = torch.zeros_like(label)
    expected[..., 5] = label[..., 5]
    assert torch.equal(result["label"].as_tensor(), expected)
    assert int((result["label"] > 0).sum()) == 5
    assert torch.equal(data["label"].as_tensor(), label)  # the input item is not modified
    # A single annotated slice needs no seed_slice; axis 0 works too.
    result = AnnotatedSeedd(axis=0)({"image": image, "label": _meta(_label([3], axis=0)[None], LABEL_FILE)})
    assert result["seed_index"] == 3


def test_largest_slice_seed():
    label = torch.zeros(1, 6, 7, 8, dtype=torch.long)
    label[0, 1:3, 1:3, 1] = 1  # area 4
    label[0, 0:4, 0:5, 6] = 2  # area 20, the largest
    label[0, 2:5, 2:5, 4] = 1  # area 9
    data = {"label": _meta(label.clone(), LABEL_FILE)}
    result = LargestSliceSeedd()(data)
    assert result["seed_index"] == 6
    expected = torch.zeros_like(label)
    expected[0, 0:4, 0:5, 6] = 2
    assert torch.equal(result["seed"].as_tensor(), expected)
    assert torch.equal(result["label"].as_tensor(), label)  # the ground truth is left as is
    # Along axis 0, row 2 holds 2 + 5 + 3 = 10 voxels, more than rows 0, 1, 3, 4 (5, 7, 8, 3).
    assert LargestSliceSeedd(axis=0)({"label": label})["seed_index"] == 2
    with pytest.raises(InvalidInputError, match=rf"^{re.escape(LABEL_FILE)}: the ground truth has no labelled voxel"):
        LargestSliceSeedd()({"label": _meta(torch.zeros(1, 4, 4, 4), LABEL_FILE)})


def test_several_seeds_are_accepted_with_seeds_all():
    assert seed_slice_indices(_label([1, 4, 6]), axis=2, source="seed.nii.gz") == [1, 4, 6]
    image = _meta(torch.zeros(1, 6, 7, 8), IMAGE_FILE)
    label = _label([2, 5], value=3)[None]
    result = AnnotatedSeedd(seeds="all")({"image": image, "label": _meta(label.clone(), LABEL_FILE)})
    assert result["seed_index"] == 2
    assert torch.equal(result["label"].as_tensor(), label)  # every annotated slice is kept


def test_seeds_all_with_one_slice_names_the_file():
    with pytest.raises(InvalidInputError, match=r"^seed\.nii\.gz: seeds=all needs two or more annotated slices"):
        seed_slice_indices(_label([3]), axis=2, source="seed.nii.gz")
    image = _meta(torch.zeros(1, 6, 7, 8), IMAGE_FILE)
    with pytest.raises(InvalidInputError, match=rf"^{re.escape(LABEL_FILE)}: seeds=all needs two or more"):
        AnnotatedSeedd(seeds="all")({"image": image, "label": _meta(_label([3])[None], LABEL_FILE)})


def test_seeds_drawn_in_another_view_are_refused():
    # A coronal stroke across axial slices 2..5 plus an axial slice 7: along axis 2 the annotation is on adjacent
    # slices, which no set of axial drawings gives.
    label = _label([7])
    label[1, 1:3, 2:6] = 1
    with pytest.raises(
        InvalidInputError, match=r"^seed\.nii\.gz: labelled voxels on adjacent slices 2 and 3 along axis 2"
    ):
        seed_slice_indices(label, axis=2, source="seed.nii.gz")


def test_unknown_seeds_mode_and_seed_slice_with_all():
    with pytest.raises(InvalidInputError, match="seeds must be one of"):
        AnnotatedSeedd(seeds="some")
    with pytest.raises(InvalidInputError, match="cannot go with seeds=all"):
        AnnotatedSeedd(seeds="all", seed_slice=3)


def test_seeds_at_fractions_of_the_ground_truth_extent():
    label = torch.zeros(1, 6, 7, 21, dtype=torch.long)
    label[0, 1:3, 1:3, 4:17] = 2  # labelled slices 4..16
    result = LargestSliceSeedd(positions=[0.25, 0.5, 0.75])({"label": label})
    assert torch.nonzero(result["seed"][0].sum((0, 1))).flatten().tolist() == [7, 10, 13]
    assert result["seed_index"] == 7
    assert torch.equal(result["seed"][..., 10], label[..., 10])
    with pytest.raises(ValueError, match="fractions"):
        LargestSliceSeedd(positions=[1.5])


# --- the volume check, slice pairs and normalisation -----------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 16, 16), (1, 16, 16, 1)])
def test_volume_check_refuses_a_2d_image(shape):
    # The Sli2Vol configs check loaded volumes with CheckSegmentationInputd (3 spatial dims, each > 1 voxel).
    expected = rf"^{re.escape(IMAGE_FILE)}: expected a 3D image, got spatial shape"
    with pytest.raises(InvalidInputError, match=expected):
        CheckSegmentationInputd(label_key=None)({"image": _meta(torch.zeros(shape), IMAGE_FILE)})


def test_volume_check_refuses_a_two_channel_image():
    expected = rf"^{re.escape(IMAGE_FILE)}: expected 1 image channel\(s\), got 2"
    with pytest.raises(InvalidInputError, match=expected):
        CheckSegmentationInputd(label_key=None, num_channels=1)({"image": _meta(torch.zeros(2, 16, 16, 5), IMAGE_FILE)})


def test_volume_check_accepts_a_volume():
    data = {"image": _meta(torch.zeros(1, 16, 16, 5), IMAGE_FILE)}
    assert CheckSegmentationInputd(label_key=None)(data) is data


def _indexed_volume(shape, axis):
    """(1, *shape) volume whose value is the slice index along ``axis``."""
    index = torch.arange(shape[axis], dtype=torch.float32)
    view = [1, 1, 1]
    view[axis] = -1
    return index.view(view).expand(shape)[None].clone()


@pytest.mark.parametrize("axis", [0, 2])
def test_slice_pairs_gaps_orders_and_shapes(axis):
    shape = [9, 10, 11]
    shape[axis] = 12
    volume = _meta(_indexed_volume(tuple(shape), axis), IMAGE_FILE)
    transform = RandSlicePairsd(keys="image", axis=axis, gaps=(2, 3, 4), num_pairs=300)
    transform.set_random_state(seed=0)
    samples = transform({"image": volume, "label": "left behind"})
    assert len(samples) == 300
    in_plane = tuple(size for dim, size in enumerate(shape) if dim != axis)
    differences = []
    for sample in samples:
        assert set(sample) == {"reference", "target"}
        assert sample["reference"].shape == (1, *in_plane) and sample["target"].shape == (1, *in_plane)
        assert not isinstance(sample["reference"], MetaTensor)
        reference, target = int(sample["reference"][0, 0, 0]), int(sample["target"][0, 0, 0])
        assert (sample["reference"] == reference).all() and (sample["target"] == target).all()
        differences.append(target - reference)
    assert set(np.abs(differences)) == {2, 3, 4}
    assert sum(d > 0 for d in differences) > 100 and sum(d < 0 for d in differences) > 100
    used = {int(s["reference"][0, 0, 0]) for s in samples} | {int(s["target"][0, 0, 0]) for s in samples}
    assert used == set(range(12))  # both ends of the volume are reachable


def test_slice_pairs_are_reproducible_and_drop_large_gaps_on_thin_volumes():
    volume = _indexed_volume((4, 4, 4), 2)
    first = RandSlicePairsd(num_pairs=20).set_random_state(seed=3)({"image": volume})
    second = RandSlicePairsd(num_pairs=20).set_random_state(seed=3)({"image": volume})
    assert [(s["reference"][0, 0, 0], s["target"][0, 0, 0]) for s in first] == [
        (s["reference"][0, 0, 0], s["target"][0, 0, 0]) for s in second
    ]
    # 4 slices: only gaps 2 and 3 fit.
    gaps = {abs(int(s["target"][0, 0, 0]) - int(s["reference"][0, 0, 0])) for s in first}
    assert gaps <= {2, 3} and gaps


def test_slice_pairs_refuse_thin_or_flat_volumes():
    too_few = rf"^{re.escape(IMAGE_FILE)}: 2 slices along axis 2, too few for slice pairs \(2, 3, 4\) apart"
    with pytest.raises(InvalidInputError, match=too_few):
        RandSlicePairsd()({"image": _meta(torch.zeros(1, 8, 8, 2), IMAGE_FILE)})
    with pytest.raises(InvalidInputError, match=rf"^{re.escape(IMAGE_FILE)}: expected a 3D volume, got shape \(8, 8\)"):
        RandSlicePairsd()({"image": _meta(torch.zeros(1, 8, 8), IMAGE_FILE)})
    with pytest.raises(ValueError, match="one volume key"):
        RandSlicePairsd(keys=["image", "label"])


def test_hu_window_clips_ct():
    image = torch.tensor([[[[-1000.0, -300.0, 50.0, 400.0, 2000.0]]]])
    result = modality_normalisation("image", "CT")({"image": image})["image"]
    expected = torch.tensor([0.0, 0.0, 350 / 700 * 255, 255.0, 255.0])
    torch.testing.assert_close(torch.as_tensor(result).flatten(), expected)
    narrow = modality_normalisation("image", "CT", hu_window=(0, 100))({"image": image})["image"]
    torch.testing.assert_close(torch.as_tensor(narrow).flatten(), torch.tensor([0.0, 0.0, 127.5, 255.0, 255.0]))


def test_mri_percentiles():
    image = torch.arange(1000.0).view(1, 10, 10, 10)
    result = torch.as_tensor(modality_normalisation("image", "MRI")({"image": image})["image"]).flatten()
    low, high = np.percentile(np.arange(1000.0), [0.5, 99.5])
    expected = torch.as_tensor(np.clip((np.arange(1000.0) - low) / (high - low) * 255, 0, 255), dtype=result.dtype)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-3)
    assert result.min() == 0 and result.max() == 255
    assert (result == 0).sum() == 5 and (result == 255).sum() == 5  # the clipped tails: 0..4 and 995..999


@pytest.mark.parametrize("modality", ["PET", "ct", ""])
def test_unknown_modality(modality):
    with pytest.raises(
        InvalidInputError, match=rf"modality must be one of \('CT', 'MRI'\), got {re.escape(repr(modality))}"
    ):
        modality_normalisation("image", modality)


# --- datalist --------------------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    (tmp_path / "img.nii.gz").write_bytes(b"x")
    (tmp_path / "seed.nii.gz").write_bytes(b"x")
    return tmp_path


def test_propagation_datalist_pairs(files, monkeypatch):
    monkeypatch.chdir(files)
    assert propagation_datalist("img.nii.gz", "seed.nii.gz") == [
        {"image": str(files / "img.nii.gz"), "label": str(files / "seed.nii.gz")}
    ]
    with pytest.raises(InvalidInputError, match=r"^image was given without label"):
        propagation_datalist("img.nii.gz", None)
    with pytest.raises(InvalidInputError, match=r"^label was given without image"):
        propagation_datalist(None, "seed.nii.gz")
    missing = files / "nope.nii.gz"
    with pytest.raises(InvalidInputError, match=rf"^{re.escape(str(missing))}: label file does not exist"):
        propagation_datalist(files / "img.nii.gz", missing)
    with pytest.raises(InvalidInputError, match=rf"^{re.escape(str(missing))}: image file does not exist"):
        propagation_datalist(missing, files / "seed.nii.gz")


def test_propagation_datalist_from_a_datalist(files):
    datalist = write_json({"test": [{"image": "img.nii.gz", "label": "seed.nii.gz"}]}, files / "dataset.json")
    entries = propagation_datalist(None, None, datalist, key="test")
    assert entries == [{"image": str(files / "img.nii.gz"), "label": str(files / "seed.nii.gz")}]
    write_json({"test": [{"image": "img.nii.gz"}]}, files / "no_label.json")
    with pytest.raises(InvalidInputError, match=r"no_label\.json \('test'\): entry 0 has no 'label'"):
        propagation_datalist(None, None, files / "no_label.json", key="test")
    with pytest.raises(InvalidInputError, match=r"absent\.json: datalist file does not exist"):
        propagation_datalist(None, None, files / "absent.json")


# --- real files ------------------------------------------------------------------------------------------------


def test_nifti_label_on_another_grid_is_refused_by_name(tmp_path):
    volume = np.random.default_rng(0).uniform(0, 100, (12, 10, 6)).astype(np.float32)
    annotation = np.zeros((12, 10, 6), dtype=np.uint8)
    annotation[3:7, 2:6, 2] = 1
    image_affine = np.diag([0.8, 0.8, 2.5, 1.0])
    image_path, label_path, good_path = tmp_path / "ct.nii.gz", tmp_path / "seed.nii.gz", tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(volume, image_affine), image_path)
    nib.save(nib.Nifti1Image(annotation, np.diag([1.0, 1.0, 1.0, 1.0])), label_path)
    nib.save(nib.Nifti1Image(annotation, image_affine), good_path)
    load = LoadImaged(["image", "label"], ensure_channel_first=True)

    data = load({"image": str(image_path), "label": str(label_path)})
    with pytest.raises(InvalidInputError) as error:
        AnnotatedSeedd()(data)
    message = str(error.value)
    assert message.startswith(f"{label_path}: affine differs from the image {image_path}")

    result = AnnotatedSeedd()(load({"image": str(image_path), "label": str(good_path)}))
    assert result["seed_index"] == 2
    np.testing.assert_array_equal(result["label"][0].numpy(), annotation)
