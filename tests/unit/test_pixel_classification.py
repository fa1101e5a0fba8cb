import math

import pytest
import torch

from common.errors import InvalidInputError
from common.xnet.metrics import (
    PixelClassificationMetric,
    auc_from_histograms,
    calibration_bins,
    expected_calibration_error,
    f1_from_confusion,
    reliability_from_bins,
)

# 2×3 image, 3 classes: truth and prediction
LABEL = [[0, 1, 2], [1, 1, 2]]
PREDICTION = [[0, 1, 1], [1, 2, 2]]
# rows = truth: class 0 -> {0}, class 1 -> {1, 1, 2}, class 2 -> {1, 2}
CONFUSION = [[1, 0, 0], [0, 2, 1], [0, 1, 1]]


def _confident(label_map, num_classes=3, confidence=0.8):
    """Probabilities (1, C, H, W) with ``confidence`` on each pixel's class of ``label_map``, the rest shared."""
    label = torch.tensor(label_map)
    rest = (1 - confidence) / (num_classes - 1)
    one_hot = torch.nn.functional.one_hot(label, num_classes).permute(2, 0, 1).double()
    return (rest + (confidence - rest) * one_hot)[None]


def _label(label_map):
    return torch.tensor(label_map)[None, None]


# ----------------------------------------------------------------------------------------------------- calibration


def test_ece_of_six_pixels_by_hand():
    confidence = torch.tensor([0.3, 0.35, 0.5, 0.9, 0.95, 0.7], dtype=torch.float64)
    correct = torch.tensor([1, 0, 1, 1, 1, 0])
    # 5 bins: (0.2, 0.4] holds 0.3, 0.35 (accuracy 1/2, confidence 0.325); (0.4, 0.6] holds 0.5 (1, 0.5);
    # (0.6, 0.8] holds 0.7 (0, 0.7); (0.8, 1] holds 0.9, 0.95 (1, 0.925)
    expected = (2 * 0.175 + 1 * 0.5 + 1 * 0.7 + 2 * 0.075) / 6
    assert expected_calibration_error(confidence, correct, num_bins=5) == pytest.approx(expected)


def test_ece_of_a_perfectly_calibrated_set_is_zero():
    # 5 bins; in each occupied bin the share of right pixels equals the confidence: 3 of 10 right at 0.3,
    # 1 of 2 at 0.5, 7 of 10 at 0.7, 4 of 4 at 1.0
    confidence = torch.tensor([0.3] * 10 + [0.5] * 2 + [0.7] * 10 + [1.0] * 4, dtype=torch.float64)
    correct = torch.tensor([1] * 3 + [0] * 7 + [1, 0] + [1] * 7 + [0] * 3 + [1] * 4)
    assert expected_calibration_error(confidence, correct, num_bins=5) == pytest.approx(0.0, abs=1e-12)
    table = reliability_from_bins(calibration_bins(confidence, correct, 5))
    assert [row["count"] for row in table] == [0, 10, 2, 10, 4]
    assert [row["accuracy"] for row in table[1:]] == pytest.approx([0.3, 0.5, 0.7, 1.0])
    # the same confidences, all right: each bin's gap is 1 - confidence, weighted by its share of the 26 pixels
    all_right = (10 * 0.7 + 2 * 0.5 + 10 * 0.3 + 4 * 0.0) / 26
    assert expected_calibration_error(confidence, torch.ones(26), num_bins=5) == pytest.approx(all_right)


def test_ece_is_one_when_every_pixel_is_certain_and_wrong():
    assert expected_calibration_error(torch.ones(7), torch.zeros(7), num_bins=15) == 1.0
    assert expected_calibration_error(torch.zeros(3), torch.ones(3), num_bins=15) == 1.0  # never sure, always right
    metric = PixelClassificationMetric(3)
    metric.update(_confident(PREDICTION, confidence=1.0), _label([[1, 2, 0], [2, 0, 1]]))  # one-hot, all wrong
    result = metric.aggregate()
    assert result["accuracy"] == 0.0 and result["ece"] == 1.0


def test_calibration_bins_are_closed_on_the_right():
    bins = calibration_bins(torch.tensor([0.0, 0.5, 0.75, 1.0]), torch.tensor([True, False, True, True]), 2)
    # (0, 0.5] takes 0 and 0.5; (0.5, 1] takes 0.75 and 1
    torch.testing.assert_close(bins, torch.tensor([[2.0, 2.0], [0.5, 1.75], [1.0, 2.0]], dtype=torch.float64))


def test_reliability_table_by_hand():
    bins = calibration_bins(torch.tensor([0.3, 0.35, 0.9], dtype=torch.float64), torch.tensor([1, 0, 1]), 5)
    table = reliability_from_bins(bins)
    assert [row["count"] for row in table] == [0, 2, 0, 0, 1]
    assert table[1]["lower"] == pytest.approx(0.2) and table[1]["upper"] == pytest.approx(0.4)
    assert table[1]["confidence"] == pytest.approx(0.325) and table[1]["accuracy"] == 0.5
    assert math.isnan(table[0]["confidence"]) and math.isnan(table[0]["accuracy"])


def test_ece_of_nothing_is_nan():
    assert math.isnan(expected_calibration_error(torch.zeros(0), torch.zeros(0), 15))


# ------------------------------------------------------------------------------------------------------------- AUC


def test_auc_from_histograms_matches_the_pairwise_definition():
    positive_hist, negative_hist = torch.tensor([0, 1, 1, 2]), torch.tensor([2, 1, 1, 0])
    positives, negatives = [1, 2, 3, 3], [0, 0, 1, 2]  # the bin of each score
    pairwise = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives) / 16
    assert pairwise == 14 / 16
    assert auc_from_histograms(positive_hist, negative_hist) == pytest.approx(pairwise)


def test_auc_without_positives_or_negatives_is_nan():
    assert math.isnan(auc_from_histograms(torch.tensor([0, 0]), torch.tensor([1, 2])))
    assert math.isnan(auc_from_histograms(torch.tensor([3, 0]), torch.tensor([0, 0])))


def test_metric_auc_of_two_classes_by_hand():
    # P(class 1) of three positives and three negatives; 0.45 is a tie: (3 + 3 + 1.5) / 9
    positive, negative = [0.95, 0.75, 0.45], [0.05, 0.45, 0.65]
    p1 = torch.tensor([positive + negative], dtype=torch.float64)  # (1, 6) image
    probabilities = torch.stack([1 - p1, p1])[None]  # (1, 2, 1, 6)
    label = torch.tensor([[[1, 1, 1, 0, 0, 0]]])
    metric = PixelClassificationMetric(2, auc_bins=10)
    metric.update(probabilities, label)
    assert metric.aggregate()["auc_per_class"] == pytest.approx([7.5 / 9, 7.5 / 9])


def test_metric_auc_counts_scores_in_one_bin_as_ties():
    # 0.51 < 0.55 would give AUC 0, but with 10 bins both scores fall in [0.5, 0.6)
    p1 = torch.tensor([[0.51, 0.55]], dtype=torch.float64)
    metric = PixelClassificationMetric(2, auc_bins=10)
    metric.update(torch.stack([1 - p1, p1])[None], torch.tensor([[[1, 0]]]))
    assert metric.aggregate()["auc_per_class"][1] == 0.5


# ------------------------------------------------------------------------------------------------- confusion, F1


def test_f1_from_confusion_by_hand():
    f1 = f1_from_confusion(torch.tensor(CONFUSION))
    # class 0: TP 1, no errors; class 1: 2 TP, 1 FP, 1 FN -> 4/6; class 2: 1 TP, 1 FP, 1 FN -> 2/4
    torch.testing.assert_close(f1, torch.tensor([1.0, 2 / 3, 1 / 2], dtype=torch.float64))


def test_metric_on_a_two_by_three_image():
    metric = PixelClassificationMetric(3)
    metric.update(_confident(PREDICTION), _label(LABEL))
    result = metric.aggregate()
    assert result["confusion_matrix"] == CONFUSION
    assert result["num_pixels"] == 6
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["precision_per_class"] == pytest.approx([1, 2 / 3, 1 / 2])
    assert result["recall_per_class"] == pytest.approx([1, 2 / 3, 1 / 2])
    assert result["f1_per_class"] == pytest.approx([1, 2 / 3, 1 / 2])
    assert result["f1_macro"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert result["confusion_matrix_normalised"][1] == pytest.approx([0, 2 / 3, 1 / 3])
    # every pixel has confidence 0.8 and 4 of 6 are right
    assert result["ece"] == pytest.approx(abs(4 / 6 - 0.8))
    assert sum(row["count"] for row in result["reliability"]) == 6


def test_prediction_argument_overrides_argmax_for_label_map_metrics_only():
    metric = PixelClassificationMetric(3)
    # the probabilities are right everywhere (confidence 0.8), the given prediction is not
    metric.update(_confident(LABEL), _label(LABEL), prediction=_label(PREDICTION))
    result = metric.aggregate()
    assert result["confusion_matrix"] == CONFUSION
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["ece"] == pytest.approx(0.2)  # all right at confidence 0.8
    assert result["auc_per_class"] == [1.0, 1.0, 1.0]


def test_class_absent_from_the_truth_is_nan_and_left_out_of_the_macro_means():
    label = [[0, 0, 1], [1, 1, 0]]
    prediction = [[0, 2, 1], [1, 1, 0]]  # class 2 predicted once, never true
    metric = PixelClassificationMetric(3)
    metric.update(_confident(prediction), _label(label))
    result = metric.aggregate()
    assert result["f1_per_class"][:2] == pytest.approx([4 / 5, 1.0])  # class 0: 2 TP, 1 FN
    assert math.isnan(result["f1_per_class"][2]) and math.isnan(result["recall_per_class"][2])
    assert result["precision_per_class"][2] == 0.0
    assert math.isnan(result["auc_per_class"][2])
    assert result["f1_macro"] == pytest.approx(0.9)
    assert result["auc_macro"] == pytest.approx(sum(result["auc_per_class"][:2]) / 2)
    assert all(math.isnan(v) for v in result["confusion_matrix_normalised"][2])


# ------------------------------------------------------------------------------------------------------- streaming


def test_two_updates_equal_one_update_of_the_concatenation():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(torch.randn(3, 3, 5, 4, generator=generator), dim=1)
    label = torch.randint(0, 3, (3, 1, 5, 4), generator=generator)
    streamed, whole = PixelClassificationMetric(3, auc_bins=50), PixelClassificationMetric(3, auc_bins=50)
    streamed.update(probabilities[:1], label[:1])
    streamed.update(probabilities[1:], label[1:, 0])  # (B, H, W) labels are accepted too
    whole.update(probabilities, label)
    assert torch.equal(streamed.confusion, whole.confusion) and torch.equal(streamed.scores, whole.scores)
    torch.testing.assert_close(streamed.calibration, whole.calibration)
    assert streamed.scores.shape == (3, 3, 50)  # fixed state, whatever the number of images
    a, b = streamed.aggregate(), whole.aggregate()
    assert a["auc_per_class"] == b["auc_per_class"] and a["f1_per_class"] == b["f1_per_class"]
    assert a["ece"] == pytest.approx(b["ece"])


def test_reset_forgets_everything():
    metric = PixelClassificationMetric(3)
    metric.update(_confident(PREDICTION), _label(LABEL))
    metric.reset()
    result = metric.aggregate()
    assert result["num_pixels"] == 0 and math.isnan(result["accuracy"]) and math.isnan(result["ece"])


# ---------------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("probabilities", "label", "message"),
    [
        (torch.randn(1, 3, 2, 3), _label(LABEL), "softmax"),
        (_confident(LABEL), _label([[0, 1, 3], [1, 1, 2]]), "0..2"),
        (_confident(LABEL), torch.zeros(1, 1, 3, 2), "shape"),
        (_confident(LABEL), _label(LABEL) + 0.5, "integer"),
        (_confident(LABEL)[:, :2], _label(LABEL), "shape"),
    ],
    ids=["logits", "label-out-of-range", "label-shape", "fractional-label", "channels"],
)
def test_bad_input_is_refused(probabilities, label, message):
    with pytest.raises(InvalidInputError, match=message):
        PixelClassificationMetric(3).update(probabilities, label)
