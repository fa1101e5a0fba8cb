import re

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.errors import InvalidInputError
from common.transforms import CheckSegmentationInputd, LoadInputImaged


def _item(image, label=None):
    data = {"image": MetaTensor(image, meta={"filename_or_obj": "/d/ct_01.nii.gz"})}
    if label is not None:
        data["label"] = MetaTensor(label, meta={"filename_or_obj": "/d/ct_01_label.nii.gz"})
    return data


def test_valid_volume_passes():
    data = _item(torch.zeros(1, 4, 4, 3), torch.tensor([0, 1, 2, 3]).repeat(12).view(1, 4, 4, 3))
    assert CheckSegmentationInputd(num_foreground_classes=3)(data) is data


def test_2d_image_is_rejected_with_its_name():
    with pytest.raises(InvalidInputError, match=r"ct_01\.nii\.gz: expected a 3D image, got spatial shape \(8, 8\)"):
        CheckSegmentationInputd()(_item(torch.zeros(1, 8, 8)))
    with pytest.raises(InvalidInputError, match="expected a 3D image"):
        CheckSegmentationInputd()(_item(torch.zeros(1, 8, 8, 1)))


def test_nan_is_counted():
    image = torch.zeros(1, 4, 4, 4)
    image[0, 1, 1, 1] = float("nan")
    with pytest.raises(InvalidInputError, match=r"ct_01\.nii\.gz: the image holds 1 NaN voxels"):
        CheckSegmentationInputd()(_item(image))


def test_label_of_other_shape_names_both_files():
    expected = r"/d/ct_01_label\.nii\.gz: label spatial shape .* image /d/ct_01\.nii\.gz"
    with pytest.raises(InvalidInputError, match=expected):
        CheckSegmentationInputd()(_item(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 5)))


@pytest.mark.parametrize(("value", "shown"), [(5, "5"), (-1, "-1"), (1.5, "1.5")])
def test_label_values_outside_classes(value, shown):
    label = torch.zeros(1, 4, 4, 4)
    label[0, 0, 0, 0] = value
    with pytest.raises(
        InvalidInputError,
        match=rf"ct_01_label\.nii\.gz: label values must be integers in 0\.\.3, "
        rf"found {shown}",
    ):
        CheckSegmentationInputd(num_foreground_classes=3)(_item(torch.zeros(1, 4, 4, 4), label))


def test_image_smaller_than_the_network_minimum_is_rejected():
    check = CheckSegmentationInputd(spatial_dims=2, min_size=64)
    assert check(_item(torch.zeros(1, 64, 80)))
    with pytest.raises(InvalidInputError, match=r"ct_01\.nii\.gz: the image is 64×32 pixels, smaller than the 64"):
        check(_item(torch.zeros(1, 64, 32)))


def test_volume_given_to_a_2d_check_is_rejected():
    with pytest.raises(InvalidInputError, match=r"expected a 2D image, got spatial shape \(8, 8, 4\).*2D images"):
        CheckSegmentationInputd(spatial_dims=2)(_item(torch.zeros(1, 8, 8, 4)))


def _garbage(path):
    path.write_bytes(b"not an image" * 10)


def _truncated(path):
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 16), np.float32), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


UNREADABLE = {
    "garbage.nii.gz": (_garbage, "ImageFileError"),
    "truncated.nii.gz": (_truncated, "EOFError"),
    "garbage.nrrd": (_garbage, "RuntimeError"),
    "missing.nii.gz": (lambda path: None, "FileNotFoundError"),
}


@pytest.mark.parametrize("name", UNREADABLE)
def test_unreadable_file_is_an_input_error_naming_it(tmp_path, name):
    spoil, reader_error = UNREADABLE[name]
    spoil(tmp_path / name)
    with pytest.raises(InvalidInputError, match=re.escape(f"{tmp_path / name}: not a readable image ({reader_error}")):
        LoadInputImaged("image", ensure_channel_first=True)({"image": str(tmp_path / name)})


def test_load_input_imaged_loads_like_load_imaged(tmp_path):
    nib.save(
        nib.Nifti1Image(np.arange(48, dtype=np.float32).reshape(4, 4, 3), np.diag([2, 2, 3, 1])), tmp_path / "a.nii"
    )
    image = LoadInputImaged("image", ensure_channel_first=True)({"image": str(tmp_path / "a.nii")})["image"]
    assert image.shape == (1, 4, 4, 3) and image.meta["filename_or_obj"].endswith("a.nii")
    np.testing.assert_allclose(image.affine.numpy(), np.diag([2, 2, 3, 1]))
