import math

import pytest
import torch

from common.smile import PartialLabelDiceMetric, partial_label_dice


def _stack(labels, weights):
    return torch.cat([torch.tensor(labels, dtype=torch.float32), torch.tensor(weights, dtype=torch.float32)], dim=1)


def test_dice_per_case_and_class_with_unannotated_class_as_nan():
    prediction = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 1]]], dtype=torch.float32)
    target = _stack([[[1, 0, 0, 0], [0, 0, 0, 1]]], [[[1, 1, 1, 1], [0, 1, 1, 1]]])
    dice = partial_label_dice(prediction, target)
    assert dice[0, 0].item() == pytest.approx(2 * 1 / (2 + 1))
    assert math.isnan(dice[0, 1].item())


def test_empty_class_scores_one_when_not_predicted_and_zero_when_predicted():
    target = _stack([[[0, 0], [0, 0]]], [[[1, 1], [1, 1]]])
    dice = partial_label_dice(torch.tensor([[[0, 0], [1, 0]]], dtype=torch.float32), target)
    assert dice.tolist() == [[1.0, 0.0]]


def test_aggregate_ignores_unannotated_cases():
    metric = PartialLabelDiceMetric()
    liver_only = _stack([[[1, 1], [0, 0]]], [[[1, 1], [0, 0]]])
    both = _stack([[[1, 1], [1, 0]]], [[[1, 1], [1, 1]]])
    metric(torch.tensor([[[1, 0], [1, 1]]], dtype=torch.float32), liver_only)  # liver 2/3, class 1 unannotated
    metric(torch.tensor([[[1, 1], [1, 0]]], dtype=torch.float32), both)  # liver 1, class 1 1
    assert torch.allclose(metric.per_class(), torch.tensor([(2 / 3 + 1) / 2, 1.0]))
    assert metric.aggregate().item() == pytest.approx(((2 / 3 + 1) / 2 + 1.0) / 2)
    pancreas = PartialLabelDiceMetric(class_index=1)
    pancreas(torch.tensor([[[1, 0], [1, 1]]], dtype=torch.float32), liver_only)
    assert math.isnan(pancreas.aggregate().item())
