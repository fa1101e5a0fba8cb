import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import Compose, LoadImaged, Orientationd, Spacingd
from torch import nn

from common.smile.pseudo_labeler import PseudoLabeler
from common.smile.selection import has_dropout


def _direct(inputs, network):
    return network(inputs)


def _labeler(network=None, selection="confidence", preprocessing=None, inferer=_direct, **kwargs):
    network = nn.Conv3d(1, 3, kernel_size=1) if network is None else network
    preprocessing = Compose([]) if preprocessing is None else preprocessing
    return PseudoLabeler(network, inferer, preprocessing, selection=selection, **kwargs)


def _dropout_network(channels=3, p=0.3):
    return nn.Sequential(nn.Conv3d(1, channels, kernel_size=1), nn.Dropout(p))


# ------------------------------------------------------------------------------------------------------------ select

# Three classes (channels 0, 1, 2 are labels 1, 2, 3) on a 6x6 slice; unlisted voxels are 0.10.
#   class 1: 0.99 at (0,0), which carries the real label 3, so it is never a candidate; then 6 candidates
#            0.90 (0,1), 0.80 (0,2), 0.70 (1,0), 0.60 (1,1), 0.55 (2,0), 0.50 (2,1) (on the threshold);
#            0.49 at (2,2) is below the threshold.
#   class 2: 0.99 at (0,0) (labelled); 6 candidates 0.95 (0,1), 0.90 (3,0), 0.75 (0,2), 0.60 (3,1), 0.55 (3,2),
#            0.52 (3,3).
#   class 3: the most probable class at (1,0) and on row 5, but it is annotated (fraction 0).
PROBABILITIES = torch.full((3, 6, 6), 0.10)
for (row, col), value in {
    (0, 0): 0.99,
    (0, 1): 0.90,
    (0, 2): 0.80,
    (1, 0): 0.70,
    (1, 1): 0.60,
    (2, 0): 0.55,
    (2, 1): 0.50,
    (2, 2): 0.49,
}.items():
    PROBABILITIES[0, row, col] = value
for (row, col), value in {
    (0, 0): 0.99,
    (0, 1): 0.95,
    (3, 0): 0.90,
    (0, 2): 0.75,
    (3, 1): 0.60,
    (3, 2): 0.55,
    (3, 3): 0.52,
}.items():
    PROBABILITIES[1, row, col] = value
PROBABILITIES[2, 1, 0] = 0.99
PROBABILITIES[2, 5, :] = 0.97

LABEL = torch.zeros(1, 6, 6, dtype=torch.uint8)
LABEL[0, 0, 0] = 3


def _map(entries):
    expected = torch.zeros(1, 6, 6, dtype=torch.uint8)
    for (row, col), value in entries.items():
        expected[0, row, col] = value
    return expected


def test_confidence_keeps_the_most_probable_fraction_of_the_candidates():
    # class 1 alone: floor(0.5 * 6) = 3 of the 6 unlabelled candidates, the 0.99 at the labelled (0,0) excluded
    selected = _labeler().select(PROBABILITIES, None, LABEL, [0.5, 0.0, 0.0])
    assert selected.dtype == torch.uint8 and selected.shape == (1, 6, 6)
    assert torch.equal(selected, _map({(0, 1): 1, (0, 2): 1, (1, 0): 1}))


def test_confidence_fraction_is_floored():
    # floor(0.34 * 6) = floor(2.04) = 2
    selected = _labeler().select(PROBABILITIES, None, LABEL, [0.34, 0.0, 0.0])
    assert torch.equal(selected, _map({(0, 1): 1, (0, 2): 1}))
    # floor(0.1 * 6) = 0: nothing
    assert not _labeler().select(PROBABILITIES, None, LABEL, [0.1, 0.0, 0.0]).any()


def test_fraction_one_keeps_every_candidate_and_never_a_labelled_voxel():
    selected = _labeler().select(PROBABILITIES, None, LABEL, [1.0, 0.0, 0.0])
    expected = _map({(0, 1): 1, (0, 2): 1, (1, 0): 1, (1, 1): 1, (2, 0): 1, (2, 1): 1})
    assert torch.equal(selected, expected)
    # without the real label, (0,0) becomes the 7th candidate and is kept
    unlabelled = _labeler().select(PROBABILITIES, None, torch.zeros_like(LABEL), [1.0, 0.0, 0.0])
    assert torch.equal(unlabelled, _map({(0, 0): 1}) + expected)


def test_threshold_sets_the_candidates():
    # p >= 0.75 and unlabelled: 0.90 and 0.80 only
    selected = _labeler(threshold=0.75).select(PROBABILITIES, None, LABEL, [1.0, 0.0, 0.0])
    assert torch.equal(selected, _map({(0, 1): 1, (0, 2): 1}))


def test_an_annotated_class_is_never_selected():
    # class 3 is the most probable class on row 5 and at (1,0), but its fraction is 0
    selected = _labeler().select(PROBABILITIES, None, LABEL, [0.0, 0.0, 0.0])
    assert not selected.any()
    selected = _labeler().select(PROBABILITIES, None, LABEL, [0.5, 0.0, 0.0])
    assert selected[0, 1, 0] == 1 and not (selected == 3).any()


def test_a_voxel_selected_for_two_classes_goes_to_the_more_probable():
    # class 1 keeps (0,1) 0.90, (0,2) 0.80, (1,0) 0.70; class 2 keeps floor(0.5 * 6) = 3: (0,1) 0.95, (3,0) 0.90,
    # (0,2) 0.75. Overlaps: (0,1) goes to class 2 (0.95 > 0.90), (0,2) to class 1 (0.80 > 0.75).
    selected = _labeler().select(PROBABILITIES, None, LABEL, [0.5, 0.5, 0.0])
    assert torch.equal(selected, _map({(0, 1): 2, (0, 2): 1, (1, 0): 1, (3, 0): 2}))


def test_uncertainty_rule_keeps_the_least_uncertain_candidates():
    uncertainty = torch.full((3, 6, 6), 0.20)
    uncertainty[0, 2, 1] = 0.01  # p 0.50, a candidate
    uncertainty[0, 2, 0] = 0.02  # p 0.55
    uncertainty[0, 1, 1] = 0.03  # p 0.60
    uncertainty[0, 0, 1] = 0.30  # p 0.90, the most probable candidate, but the most uncertain
    uncertainty[0, 0, 0] = 0.00  # labelled: never a candidate
    uncertainty[0, 2, 2] = 0.00  # p 0.49: below the threshold
    uncertainty[0, 5, 0] = 0.00  # p 0.10
    labeler = _labeler(network=_dropout_network(), selection="uncertainty", mc_passes=2)
    selected = labeler.select(PROBABILITIES, uncertainty, LABEL, [0.5, 0.0, 0.0])
    assert torch.equal(selected, _map({(2, 1): 1, (2, 0): 1, (1, 1): 1}))
    # floor(5/6 * 6) = 5: every candidate but the most uncertain one
    selected = labeler.select(PROBABILITIES, uncertainty, LABEL, [5 / 6, 0.0, 0.0])
    assert torch.equal(selected, _map({(2, 1): 1, (2, 0): 1, (1, 1): 1, (1, 0): 1, (0, 2): 1}))


def test_select_accepts_a_depth_axis():
    probabilities = PROBABILITIES.unsqueeze(-1)  # (3, 6, 6, 1)
    selected = _labeler().select(probabilities, None, LABEL.unsqueeze(-1), torch.tensor([0.5, 0.5, 0.0]))
    assert selected.shape == (1, 6, 6, 1)
    assert torch.equal(selected[..., 0], _map({(0, 1): 2, (0, 2): 1, (1, 0): 1, (3, 0): 2}))


# ------------------------------------------------------------------------------------------------------ construction


def test_uncertainty_needs_a_network_with_dropout():
    with pytest.raises(ValueError, match="dropout"):
        _labeler(network=nn.Conv3d(1, 3, 1), selection="uncertainty")
    with pytest.raises(ValueError, match="dropout"):
        _labeler(network=_dropout_network(p=0.0), selection="uncertainty")
    assert _labeler(network=_dropout_network(), selection="uncertainty").selection == "uncertainty"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"selection": "entropy"}, "selection must be one of"),
        ({"uncertainty": "variance"}, "uncertainty must be one of"),
        ({"threshold": 0.0}, r"threshold must be in \(0, 1\)"),
        ({"threshold": 1.0}, r"threshold must be in \(0, 1\)"),
        ({"threshold": -0.5}, r"threshold must be in \(0, 1\)"),
        ({"selection": "uncertainty", "mc_passes": 1}, "mc_passes must be >= 2"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _labeler(network=_dropout_network(), **kwargs)


def test_mc_passes_are_not_checked_for_the_confidence_rule():
    assert _labeler(mc_passes=1).mc_passes == 1


def test_has_dropout():
    assert has_dropout(_dropout_network(p=0.1))
    assert has_dropout(nn.Sequential(nn.Conv3d(1, 1, 1), nn.Dropout3d(0.2)))
    assert has_dropout(UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), dropout=0.2))
    assert not has_dropout(nn.Conv3d(1, 1, 1))
    assert not has_dropout(_dropout_network(p=0.0))
    assert not has_dropout(UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,)))


# ----------------------------------------------------------------------------------------------------------- predict

SHAPE = (20, 18, 7)
AFFINE = np.diag([-2.0, 2.0, 3.0, 1.0])  # flipped first axis: Orientationd has work to invert


def _preprocessing():
    return Compose(
        [
            Orientationd("image", "RAS", allow_missing_keys=True),
            Spacingd("image", pixdim=(1.6, 1.6, 2.5), allow_missing_keys=True),
        ]
    )


@pytest.fixture
def image(tmp_path):
    """A ramp along the first voxel axis, -2.0 .. 1.8, on a flipped, anisotropic grid."""
    ramp = np.arange(SHAPE[0], dtype=np.float32)[:, None, None] * 0.2 - 2.0
    path = tmp_path / "case_001.nii.gz"
    nib.save(nib.Nifti1Image(np.broadcast_to(ramp, SHAPE).copy(), AFFINE), path)
    return LoadImaged(keys="image", ensure_channel_first=True)({"image": str(path)})["image"]


def _identity_conv():
    conv = nn.Conv3d(1, 1, kernel_size=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    return conv


def _unet():
    torch.manual_seed(0)
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), dropout=0.2)


def test_model_space_differs_from_the_image_grid(image):
    # a guard on the fixture: the prediction really is resampled and reoriented, then inverted
    assert tuple(_preprocessing()({"image": image})["image"].shape) == (1, 25, 22, 8)


def test_predictions_are_inverted_onto_the_image_grid(image):
    # logits = intensity, so on the image grid the probabilities must be sigmoid(ramp), in the file's voxel order
    probabilities, uncertainty = _labeler(network=_identity_conv(), preprocessing=_preprocessing()).predict(
        image, "cpu"
    )
    assert uncertainty is None
    assert tuple(probabilities.shape) == (1, *SHAPE) and probabilities.dtype == torch.float32
    expected = torch.sigmoid(image.as_tensor())[0]
    got = torch.as_tensor(probabilities)[0]
    assert (got - expected).abs().max() < 0.01
    assert got[0, 0, 0] < 0.2 and got[-1, 0, 0] > 0.8  # not flipped: the ramp rises along the first file axis


def test_confidence_predict_with_a_sliding_window(image):
    network = _unet()
    network.train()
    labeler = _labeler(network=network, preprocessing=_preprocessing(), inferer=SlidingWindowInferer((16, 16, 8)))
    probabilities, uncertainty = labeler.predict(image, "cpu")
    assert uncertainty is None
    assert tuple(probabilities.shape) == (2, *SHAPE)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    assert network.training and all(m.training for m in network.modules())
    # deterministic: dropout is off in the confidence pass
    again, _ = labeler.predict(image, "cpu")
    assert torch.equal(torch.as_tensor(again), torch.as_tensor(probabilities))


@pytest.mark.parametrize("measure", ["std", "entropy"])
def test_uncertainty_predict_with_a_sliding_window(image, measure):
    network = _unet()
    network.eval()
    flags = [m.training for m in network.modules()]
    labeler = _labeler(
        network=network,
        selection="uncertainty",
        preprocessing=_preprocessing(),
        inferer=SlidingWindowInferer((16, 16, 8)),
        mc_passes=2,
        uncertainty=measure,
    )
    probabilities, uncertainty = labeler.predict(image, "cpu")
    assert tuple(probabilities.shape) == (2, *SHAPE) and tuple(uncertainty.shape) == (2, *SHAPE)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    assert uncertainty.min() >= 0.0 and uncertainty.max() > 0.0
    if measure == "entropy":
        assert uncertainty.max() <= np.log(2) + 1e-6
    assert not network.training and [m.training for m in network.modules()] == flags


def test_seeded_mc_passes_are_reproducible(image):
    labeler = _labeler(
        network=_dropout_network(channels=2), selection="uncertainty", preprocessing=_preprocessing(), mc_passes=3
    )
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        results.append(labeler.predict(image, "cpu"))
    (p1, u1), (p2, u2) = results
    assert torch.equal(torch.as_tensor(p1), torch.as_tensor(p2)) and torch.equal(
        torch.as_tensor(u1), torch.as_tensor(u2)
    )
    assert u1.max() > 0  # the passes really differed
    torch.manual_seed(8)
    p3, _ = labeler.predict(image, "cpu")
    assert not torch.equal(torch.as_tensor(p3), torch.as_tensor(p1))
