"""Peer losses for partially labelled classes (common/smile/peer_losses.py), against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from common.smile import MarginalExclusionLoss, PartialBCEDiceLoss

# 1 case, 4 voxels, K = 2 organs; softmax probabilities per voxel over (background, organ 1, organ 2)
PROBS = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
LABEL = torch.tensor([0, 1, 0, 0]).reshape(1, 1, 4)  # organ 2 is really at voxel 2, but unannotated: labelled 0
ONLY_ORGAN_1 = torch.tensor([[1, 0]])
BOTH = torch.tensor([[1, 1]])


def _logits(probs=PROBS):
    return probs.log().T.unsqueeze(0).clone().requires_grad_(True)  # (1, 3, 4); softmax gives back probs


def test_marginal_ce_uses_the_merged_background_probability():
    loss = MarginalExclusionLoss(exclusion_weight=0.0)(_logits(), LABEL, ONLY_ORGAN_1)
    # merged background q0 = p0 + p2 = 0.7, 0.9, 0.8 at voxels 0, 2, 3; voxel 1 is organ 1 (p1 = 0.6)
    expected = -(math.log(0.7) + math.log(0.6) + math.log(0.9) + math.log(0.8)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_marginal_ce_equals_cross_entropy_when_every_organ_is_annotated():
    label = torch.tensor([0, 1, 2, 0]).reshape(1, 1, 4)
    logits = _logits()
    loss = MarginalExclusionLoss(exclusion_weight=0.0)(logits, label, BOTH)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, label[:, 0]).item(), rel=1e-6)
    expected = -(math.log(0.5) + math.log(0.6) + math.log(0.8) + math.log(0.7)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(0)
    logits, label = torch.randn(2, 4, 5, 6), torch.randint(0, 4, (2, 1, 5, 6))
    loss = MarginalExclusionLoss(exclusion_weight=0.0)(logits, label, torch.ones(2, 3))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, label[:, 0]).item(), rel=1e-5)


def test_marginal_dice_equals_monai_dice_when_every_organ_is_annotated():
    torch.manual_seed(1)
    logits, label = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 1, 4, 4))
    ours = MarginalExclusionLoss(exclusion_weight=0.0, dice_weight=1.0)(logits, label, torch.ones(2, 2))
    expected = F.cross_entropy(logits, label[:, 0]) + DiceLoss(softmax=True, to_onehot_y=True)(logits, label)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)


def test_an_unannotated_organ_on_background_is_not_penalised_by_the_marginal_loss():
    # voxel 2: organ 2 predicted (0.8) where the label says background; swap that mass onto the background
    swapped = PROBS.clone()
    swapped[2] = torch.tensor([0.8, 0.1, 0.1])
    marginal = MarginalExclusionLoss(exclusion_weight=0.0)
    assert marginal(_logits(), LABEL, ONLY_ORGAN_1).item() == pytest.approx(
        marginal(_logits(swapped), LABEL, ONLY_ORGAN_1).item(), rel=1e-6
    )
    # the fully supervised CE penalises the organ-2 prediction: -log 0.1 instead of -log 0.8 at voxel 2
    full = F.cross_entropy(_logits(), LABEL[:, 0]).item()
    full_swapped = F.cross_entropy(_logits(swapped), LABEL[:, 0]).item()
    assert full - full_swapped == pytest.approx((math.log(0.8) - math.log(0.1)) / 4, rel=1e-6)


def test_exclusion_term_by_hand():
    with_excl = MarginalExclusionLoss(exclusion_weight=1.0)(_logits(), LABEL, ONLY_ORGAN_1)
    without = MarginalExclusionLoss(exclusion_weight=0.0)(_logits(), LABEL, ONLY_ORGAN_1)
    # only organ 1 is annotated (voxel 1): organ 2 must not be there. p2 = 0.2, 0.2, 0.8, 0.1 (sum 1.3);
    # overlap = 2 * 0.2 / (1.3 + 1); organ 1 has no other annotated organ to be excluded from.
    assert (with_excl - without).item() == pytest.approx(2 * 0.2 / 2.3, rel=1e-4)

    label = torch.tensor([0, 1, 2, 0]).reshape(1, 1, 4)
    with_excl = MarginalExclusionLoss(exclusion_weight=2.0)(_logits(), label, BOTH)
    without = MarginalExclusionLoss(exclusion_weight=0.0)(_logits(), label, BOTH)
    # organ 1 vs organ 2's voxel 2: p1 = 0.3, 0.6, 0.1, 0.2 (sum 1.2), 2 * 0.1 / 2.2; organ 2 vs voxel 1: 2 * 0.2 / 2.3
    expected = 2.0 * (0.2 / 2.2 + 0.4 / 2.3) / 2
    assert (with_excl - without).item() == pytest.approx(expected, rel=1e-4)


def test_marginal_loss_is_per_case():
    torch.manual_seed(2)
    logits, label = torch.randn(2, 3, 8), torch.randint(0, 3, (2, 1, 8))
    annotated = torch.tensor([[1, 0], [0, 1]])
    label[0][label[0] == 2] = 0
    label[1][label[1] == 1] = 0
    loss = MarginalExclusionLoss(exclusion_weight=1.0, dice_weight=1.0)
    batch = loss(logits, label, annotated)
    single = [loss(logits[i : i + 1], label[i : i + 1], annotated[i : i + 1]) for i in range(2)]
    ce = MarginalExclusionLoss(exclusion_weight=0.0)
    assert ce(logits, label, annotated).item() == pytest.approx(
        sum(ce(logits[i : i + 1], label[i : i + 1], annotated[i : i + 1]).item() for i in range(2)) / 2, rel=1e-6
    )
    assert torch.isfinite(batch) and all(torch.isfinite(s) for s in single)


def test_partial_bce_dice_by_hand_and_ignores_an_unannotated_class():
    logits = torch.zeros(1, 2, 4, requires_grad=True)  # sigmoid 0.5 everywhere
    label = torch.tensor([0, 1, 2, 0]).reshape(1, 1, 4)
    loss = PartialBCEDiceLoss()(logits, label, ONLY_ORGAN_1)
    # BCE = log 2 on each of class 1's voxels; Dice(class 1) = 2 * 0.5 / (2 + 1)
    assert loss.item() == pytest.approx(math.log(2) + 1 - 1 / 3, rel=1e-5)
    loss.backward()
    assert torch.all(logits.grad[:, 1] == 0)
    assert torch.all(logits.grad[:, 0] != 0)
    # the unannotated class's logits do not change the loss at all, not even as negatives
    other = logits.detach().clone()
    other[:, 1] = 20.0
    assert PartialBCEDiceLoss()(other, label, ONLY_ORGAN_1).item() == pytest.approx(loss.item(), rel=1e-6)


def test_partial_bce_dice_equals_bce_plus_dice_when_every_class_is_annotated():
    torch.manual_seed(3)
    logits, label = torch.randn(2, 3, 4, 5), torch.randint(0, 4, (2, 1, 4, 5))
    truth = F.one_hot(label[:, 0], 4).movedim(-1, 1)[:, 1:].float()
    expected = F.binary_cross_entropy_with_logits(logits, truth) + DiceLoss(sigmoid=True)(logits, truth)
    ours = PartialBCEDiceLoss()(logits, label, torch.ones(2, 3))
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    ours_bce = PartialBCEDiceLoss(dice_weight=0.0)(logits, label, torch.ones(2, 3))
    assert ours_bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, truth).item(), rel=1e-6)


def test_partial_bce_dice_with_nothing_annotated_is_zero_with_zero_gradient():
    logits = torch.randn(1, 2, 4, requires_grad=True)
    loss = PartialBCEDiceLoss()(logits, torch.zeros(1, 1, 4), torch.zeros(1, 2))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


@pytest.mark.parametrize("loss", [MarginalExclusionLoss(dice_weight=1.0), PartialBCEDiceLoss()])
def test_gradients_are_finite_on_extreme_logits(loss):
    channels = 3 if isinstance(loss, MarginalExclusionLoss) else 2
    logits = (torch.randn(2, channels, 4, 4) * 100).requires_grad_(True)
    label = torch.randint(0, 3, (2, 1, 4, 4))
    value = loss(logits, label, torch.tensor([[1, 0], [1, 1]]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("loss", [MarginalExclusionLoss(), PartialBCEDiceLoss()])
def test_bad_shapes_raise(loss):
    channels = 3 if isinstance(loss, MarginalExclusionLoss) else 2
    logits = torch.zeros(2, channels, 4, 4)
    with pytest.raises(ValueError, match="label must have shape"):
        loss(logits, torch.zeros(2, 4, 4), torch.ones(2, 2))
    with pytest.raises(ValueError, match="label must have shape"):
        loss(logits, torch.zeros(2, 1, 4, 5), torch.ones(2, 2))
    with pytest.raises(ValueError, match="annotated must have shape"):
        loss(logits, torch.zeros(2, 1, 4, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="label values"):
        loss(logits, torch.full((2, 1, 4, 4), 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="logits must have shape"):
        loss(torch.zeros(2, channels), torch.zeros(2, 1), torch.ones(2, 2))


def test_marginal_needs_a_background_channel_and_non_negative_weights():
    with pytest.raises(ValueError, match="K \\+ 1 >= 2"):
        MarginalExclusionLoss()(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), torch.ones(1, 0))
    with pytest.raises(ValueError, match=">= 0"):
        MarginalExclusionLoss(exclusion_weight=-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        PartialBCEDiceLoss(dice_weight=-1.0)
