"""CheckIntensityWindowd: a CT window applied to an image it cannot fit is refused (it would flatten the image) or
warned about (the image does not look like Hounsfield units), naming the file and the config id to change."""

import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from common.data.tolerant import input_error
from common.errors import InvalidInputError
from common.sli2vol import modality_normalisation
from common.transforms import CheckIntensityWindowd
from common.transforms.intensity import SAMPLE_SIZE, window_fit

REPO = Path(__file__).resolve().parents[2]
FILE = "/data/patient001_frame01.nii.gz"
SMILE_WINDOW = (-200, 300)  # bundles/smile/configs/*.json hu_window
LOGGER = "common.transforms.intensity"


def _item(array, name=FILE):
    image = torch.as_tensor(np.asarray(array), dtype=torch.float32)[None]
    return {"image": MetaTensor(image, meta={"filename_or_obj": name})}


def _ct(shape=(80, 80, 48), seed=0):
    """Air (-1000) around a body of fat (-100), soft tissue (40 ± 20 HU) and a bone (700), with CT noise."""
    rng = np.random.default_rng(seed)
    x, y = (np.linspace(-1.0, 1.0, n)[:, None] for n in shape[:2])
    radius = np.broadcast_to((x**2 + y.T**2)[..., None], shape)
    volume = np.full(shape, -1000.0)
    volume[radius < 0.8] = -100.0
    volume[radius < 0.6] = rng.normal(40.0, 20.0, shape)[radius < 0.6]
    volume[radius < 0.02] = 700.0
    return volume + rng.normal(0.0, 10.0, shape)


def test_real_ct_passes_silently(caplog):
    ct = _ct()
    assert ct.size > SAMPLE_SIZE  # the sampled path
    check = CheckIntensityWindowd("image", SMILE_WINDOW)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        data = _item(ct)
        assert check(data) is data
        check(_item(np.clip(ct, -1024, 3071).astype(np.int16)))  # as stored
        CheckIntensityWindowd("image", (-300, 400))(_item(ct))  # Sli2Vol's default
    assert caplog.records == []
    fit = window_fit(torch.as_tensor(ct), SMILE_WINDOW)
    assert fit.hu_like and fit.contrast == 1.0 and 0.3 < fit.clipped_below < 0.99


def test_mri_in_0_1_is_refused_naming_file_and_config_id():
    image = np.random.default_rng(1).random((32, 32, 8))
    expected = (
        rf"^{re.escape(FILE)}: this image's intensities span \[0\.0\d+, 0\.99\d+\] .*not Hounsfield units.*"
        r"the window hu_window \[-200, 300\] squeezes 99% of the voxels into 0\.2% of its output range.*meaningless: "
        r'set --hu_window to the image\'s range, e\.g\. --hu_window "\[0,1\]"'
    )
    with pytest.raises(InvalidInputError, match=expected):
        CheckIntensityWindowd("image", SMILE_WINDOW)(_item(image))
    # the same image with a window that fits it passes
    CheckIntensityWindowd("image", (0, 1))(_item(image))


def test_image_outside_the_window_is_refused():
    image = np.random.default_rng(2).uniform(400, 3000, (16, 16, 8))
    clipped = r"hu_window \[-200, 300\] clips 100\.0% of the voxels to its upper end"
    with pytest.raises(InvalidInputError, match=clipped):
        CheckIntensityWindowd("image", SMILE_WINDOW)(_item(image))


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(3).normal(0.0, 1.5, (32, 32, 8)).clip(-5, 5),  # z-scored MRI: 2 % of the window
        np.random.default_rng(4).uniform(0, 1000, (32, 32, 8)),  # raw MRI counts: 70 % clipped to 1
    ],
    ids=["z-score", "counts"],
)
def test_non_hu_image_that_fits_badly_is_warned_about_once(image, caplog):
    check = CheckIntensityWindowd("image", SMILE_WINDOW)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        check(_item(image))
        check(_item(image))
        check(_item(image, "/data/other.nii.gz"))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith(f"{FILE}: ") and messages[1].startswith("/data/other.nii.gz: ")
    assert "not Hounsfield units" in messages[0] and "hu_window [-200, 300]" in messages[0]
    assert "set --hu_window to the image's range" in messages[0]


def test_constant_image_and_plain_tensor_pass(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        CheckIntensityWindowd("image", SMILE_WINDOW)({"image": torch.zeros(1, 8, 8, 4)})
    assert caplog.records == []
    with pytest.raises(InvalidInputError, match=r"^<unknown file>: .*hu_window"):
        CheckIntensityWindowd("image", SMILE_WINDOW)({"image": torch.rand(1, 8, 8, 4)})


def test_sampling_leaves_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    window_fit(torch.as_tensor(_ct()), SMILE_WINDOW)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("window", [(300, -200), (0, 0), (1, 2, 3)])
def test_a_window_that_is_not_lower_upper_is_a_config_error(window):
    with pytest.raises(ValueError, match=r"^ct_window must be \[lower, upper\] with lower < upper"):
        CheckIntensityWindowd("image", window, config_id="ct_window")


def test_sli2vol_ct_normalisation_checks_the_window():
    with pytest.raises(Exception) as raised:
        modality_normalisation("image", "CT")(_item(np.random.default_rng(5).random((16, 16, 8))))
    error = input_error(raised.value)
    assert error is not None and str(error).startswith(FILE)
    assert "hu_window [-300, 400]" in str(error) and "--modality MRI" in str(error)
    modality_normalisation("image", "MRI")(_item(np.random.default_rng(5).random((16, 16, 8))))  # no check


def test_smile_inference_skips_an_mri_in_0_1_and_segments_the_ct(tmp_path):
    """Through bundles/smile/configs/inference.json: the folder dataset prepares the CT and records the MRI."""
    affine = np.diag([1.6, 1.6, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.random.default_rng(6).random((24, 24, 8), np.float32), affine), tmp_path / "mri.nii.gz")
    nib.save(nib.Nifti1Image(_ct((24, 24, 8)).astype(np.float32), affine), tmp_path / "ct.nii.gz")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "smile" / "configs" / "inference.json"))
    parser["input_dir"] = str(tmp_path)
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "mri.nii.gz")})
    error = input_error(raised.value)
    assert error is not None and str(error).startswith(f"{tmp_path / 'mri.nii.gz'}: ") and "hu_window" in str(error)

    prepared = list(parser.get_parsed_content("dataset"))
    failures = parser.get_parsed_content("input_failures")
    assert [Path(item["image"].meta["filename_or_obj"]).name for item in prepared] == ["ct.nii.gz"]
    assert [Path(failure.file).name for failure in failures.failures] == ["mri.nii.gz"]
    assert "hu_window [-200, 300]" in failures.failures[0].reason
