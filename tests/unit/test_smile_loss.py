import math

import pytest
import torch

from common.smile import SmileLoss


def _example():
    """One case, K = 2 classes, two voxels. Class 0 is annotated, class 1 is not (weight 0 on its first voxel)."""
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 0.0]]])
    labels = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    weights = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    return logits, torch.cat([labels, weights], dim=1)


def test_weighted_bce_matches_hand_computation():
    logits, target = _example()
    # BCE(0, 1) = ln 2, BCE(2, 0) = ln(1 + e^2), BCE(0, 0) = ln 2; the weight-0 voxel is ignored; 3 weighted voxels.
    expected = (math.log(2) + math.log(1 + math.e**2) + math.log(2)) / 3
    assert SmileLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_term_covers_only_fully_known_classes():
    logits, target = _example()
    p = torch.sigmoid(torch.tensor(2.0)).item()
    # class 0 only: intersection 0.5, sum of probabilities 0.5 + p, sum of labels 1
    dice = (2 * 0.5 + 1e-5) / (0.5 + p + 1 + 1e-5)
    bce = (math.log(2) + math.log(1 + math.e**2) + math.log(2)) / 3
    assert SmileLoss(dice_weight=1.0)(logits, target).item() == pytest.approx(bce + (1 - dice), rel=1e-5)


def test_ambiguous_voxels_do_not_change_the_loss():
    logits, target = _example()
    changed = logits.clone()
    changed[0, 1, 0] = 25.0  # the unannotated class's background voxel, weight 0
    assert SmileLoss(dice_weight=1.0)(changed, target).item() == pytest.approx(
        SmileLoss(dice_weight=1.0)(logits, target).item()
    )


def test_all_zero_weights_give_zero_loss_with_gradient():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    target = torch.zeros(1, 4, 3, 3)
    loss = SmileLoss(dice_weight=1.0)(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None


def test_target_with_wrong_channel_count_is_rejected():
    with pytest.raises(ValueError, match="2K"):
        SmileLoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


def test_batch_dice_pools_intersections_over_known_cases():
    # two cases, one class; case 0 holds the organ, case 1 has none (an organ-free patch)
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, -20.0]]])
    labels = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    target = torch.cat([labels, torch.ones_like(labels)], dim=1)
    p = 0.5
    pooled = (2 * p + 1e-5) / (2 * p + torch.sigmoid(torch.tensor(-20.0)).item() + p + 1 + 1e-5)
    loss = SmileLoss(dice_weight=1.0, batch_dice=True)(logits, target) - SmileLoss()(logits, target)
    assert loss.item() == pytest.approx(1 - pooled, rel=1e-4)
    per_case = SmileLoss(dice_weight=1.0)(logits, target) - SmileLoss()(logits, target)
    assert per_case.item() > loss.item()  # the organ-free case alone scores a Dice loss near 1 per case
