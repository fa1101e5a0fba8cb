import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from common.errors import InvalidInputError
from common.xnet.postprocessing import (
    BoneOpening,
    BoneOpeningd,
    SoftTissueThreshold,
    SoftTissueThresholdd,
    square_dilation,
    square_opening,
)

BEAM, TISSUE, BONE = 0, 1, 2

# four pixels (open beam, soft tissue, bone) in a (3, 1, 4) image
PIXELS = [
    [0.10, 0.80, 0.10],  # sure tissue
    [0.05, 0.75, 0.20],  # P(tissue) == threshold: not sure, bone is the best other class
    [0.15, 0.60, 0.25],  # tissue is the argmax but not sure: bone
    [0.50, 0.25, 0.25],  # open beam
]


def _probabilities():
    return torch.tensor(PIXELS, dtype=torch.float64).T.reshape(3, 1, 4)


def _meta(array):
    return MetaTensor(array, affine=torch.diag(torch.tensor([0.2, 0.3, 1.0, 1.0])), meta={"filename_or_obj": "a.dcm"})


# ---------------------------------------------------------------------------------------------- SoftTissueThreshold


def test_threshold_is_strict_and_falls_back_to_the_other_classes():
    label = SoftTissueThreshold(0.75)(_probabilities())
    assert label.dtype == torch.uint8
    assert label.tolist() == [[[TISSUE, BONE, BONE, BEAM]]]


def test_threshold_none_is_the_argmax():
    assert SoftTissueThreshold(None)(_probabilities()).tolist() == [[[TISSUE, TISSUE, TISSUE, BEAM]]]
    assert SoftTissueThreshold(0)(_probabilities()).tolist() == [[[TISSUE, TISSUE, TISSUE, BEAM]]]


def test_threshold_ties_among_the_other_classes_go_to_the_first():
    probabilities = torch.tensor([0.25, 0.5, 0.25]).reshape(3, 1, 1)
    assert SoftTissueThreshold(0.9)(probabilities).item() == BEAM


def test_threshold_keeps_metadata_and_numpy():
    label = SoftTissueThreshold(0.75)(_meta(_probabilities()))
    assert isinstance(label, MetaTensor) and label.shape == (1, 1, 4)
    assert label.meta["filename_or_obj"] == "a.dcm" and label.affine[0, 0].item() == pytest.approx(0.2)
    array = SoftTissueThreshold(0.75)(_probabilities().numpy())
    assert isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.tolist() == [[[1, 2, 2, 0]]]


def test_threshold_dictionary_version_writes_the_output_key():
    data = SoftTissueThresholdd("pred", 0.75, output_keys="pred_label")({"pred": _probabilities()})
    assert data["pred"].shape == (3, 1, 4) and data["pred_label"].tolist() == [[[1, 2, 2, 0]]]


def test_threshold_bad_arguments():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SoftTissueThreshold(1.5)
    with pytest.raises(InvalidInputError, match="channel 1"):
        SoftTissueThreshold(0.9)(torch.ones(1, 4, 4))


# ------------------------------------------------------------------------------------------------------ BoneOpening


def _tissue(height=12, width=12):
    return torch.full((1, height, width), TISSUE, dtype=torch.int64)


def test_opening_removes_a_speck_and_keeps_a_block():
    label = _tissue()
    label[0, 2:7, 2:7] = BONE  # 5×5 block
    label[0, 9, 9] = BONE  # 1-pixel speck
    expected = label.clone()
    expected[0, 9, 9] = TISSUE
    assert torch.equal(BoneOpening(3)(label), expected)


def test_opening_removes_a_block_smaller_than_the_square():
    label = _tissue()
    label[0, 2:7, 2:7] = BONE
    assert torch.equal(BoneOpening(6)(label), _tissue())


def test_bone_cut_by_the_border_is_not_eaten():
    label = _tissue()
    label[0, :, :2] = BONE  # a 2-pixel strip along the left border, narrower than the square
    assert torch.equal(BoneOpening(3)(label), label)


def test_dilation_grows_bone_but_never_over_open_beam():
    label = _tissue(6, 6)
    label[0, :, :2] = BEAM
    label[0, 2:4, 2:4] = BONE
    expected = label.clone()
    expected[0, 1:5, 2:5] = BONE  # a 3×3 square grows the 2×2 block by one pixel; column 1 stays open beam
    assert torch.equal(BoneOpening(None, dilation=3)(label), expected)
    expected[0, 1:5, 1] = BONE
    assert torch.equal(BoneOpening(None, dilation=3, open_beam_class=None)(label), expected)


def test_disabled_opening_changes_nothing():
    label = torch.randint(0, 3, (1, 7, 9))
    assert torch.equal(BoneOpening(None)(label), label) and torch.equal(BoneOpening(0, dilation=1)(label), label)


@pytest.mark.parametrize("size", [2, 3, 4, 10])
def test_square_morphology_matches_scipy(size):
    mask = np.random.default_rng(size).random((23, 31)) < 0.7
    square = np.ones((size, size), dtype=bool)
    opened = ndimage.binary_dilation(ndimage.binary_erosion(mask, square, border_value=1), square)
    np.testing.assert_array_equal(square_opening(torch.from_numpy(mask), size).numpy(), opened)
    np.testing.assert_array_equal(
        square_dilation(torch.from_numpy(mask), size).numpy(), ndimage.binary_dilation(mask, square)
    )


def test_opening_keeps_type_dtype_and_metadata():
    label = torch.zeros(1, 8, 8)
    label[0, 1:6, 1:6] = BONE
    label[0, 7, 0] = BONE
    cleaned = BoneOpening(3)(_meta(label))
    assert isinstance(cleaned, MetaTensor) and cleaned.dtype == torch.float32
    assert cleaned.meta["filename_or_obj"] == "a.dcm" and cleaned.affine[1, 1].item() == pytest.approx(0.3)
    assert cleaned[0, 7, 0].item() == TISSUE and cleaned[0, 3, 3].item() == BONE
    array = BoneOpening(3)(label.numpy().astype(np.uint8))
    assert isinstance(array, np.ndarray) and array.dtype == np.uint8 and array[0, 7, 0] == TISSUE


def test_opening_dictionary_version():
    label = _tissue()
    label[0, 9, 9] = BONE
    data = BoneOpeningd("pred_label", size=3, output_keys="clean")({"pred_label": label})
    assert data["pred_label"][0, 9, 9] == BONE and data["clean"][0, 9, 9] == TISSUE


def test_opening_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        BoneOpening(-1)
    with pytest.raises(InvalidInputError, match=r"\(1, H, W\)"):
        BoneOpening(3)(torch.zeros(8, 8))
