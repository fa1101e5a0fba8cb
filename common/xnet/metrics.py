"""Streaming per-pixel classification metrics: confusion, F1, one-vs-rest AUC and calibration (ECE).

Every quantity is accumulated in fixed-size histograms, so memory does not grow with the number of images or
their size. Two kinds of quantity are kept apart:

- **label-map quantities** (confusion matrix, accuracy, precision, recall, F1) compare a predicted label map with
  the ground truth; the prediction may be post-processed (thresholds, morphology) and defaults to the argmax of
  the probabilities;
- **probability quantities** (ECE, reliability table, AUC) are properties of the probabilities alone: calibration
  uses the top-1 confidence and whether the argmax is right, AUC uses P(class c) for every pixel.
"""

from __future__ import annotations

import math

import torch
from monai.utils import convert_to_tensor

from common.errors import InvalidInputError

__all__ = [
    "PixelClassificationMetric",
    "auc_from_histograms",
    "calibration_bins",
    "confusion_matrix",
    "ece_from_bins",
    "expected_calibration_error",
    "f1_from_confusion",
    "precision_recall_from_confusion",
    "reliability_from_bins",
    "score_histograms",
]

_SUM_TOLERANCE = 1e-2


def confusion_matrix(label: torch.Tensor, prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixel counts (C, C) of integer maps of any equal shape: rows are the ground truth, columns the prediction."""
    index = label.reshape(-1).long() * num_classes + prediction.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def precision_recall_from_confusion(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class precision TP/(TP+FP) and recall TP/(TP+FN) of a (C, C) confusion matrix (rows = truth).

    Returns two float64 tensors (C,); precision is NaN for a class never predicted, recall for a class absent
    from the ground truth.
    """
    confusion = confusion.double()
    tp = confusion.diagonal()
    return _ratio(tp, confusion.sum(dim=0)), _ratio(tp, confusion.sum(dim=1))


def f1_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class F1 = 2TP / (2TP + FP + FN) of a (C, C) confusion matrix (rows = truth).

    Returns a float64 tensor (C,); NaN for a class absent from the ground truth (its row sums to 0), even when it
    was predicted: such a class has no F1 to report, and its false positives already lower the other classes'
    recall and F1.
    """
    confusion = confusion.double()
    tp = confusion.diagonal()
    truth, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
    f1 = 2 * tp / (truth + predicted).clamp_min(1)
    return torch.where(truth > 0, f1, torch.full_like(f1, math.nan))


def calibration_bins(confidence: torch.Tensor, correct: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Histogram of confidences for calibration, over ``num_bins`` equal-width bins of [0, 1].

    Bin b holds the confidences in (b/M, (b+1)/M] (the first bin also holds 0), as in Guo et al. (2017).

    Args:
        confidence: top-1 confidences in [0, 1], any shape.
        correct: bool or 0/1 tensor of the same shape, whether the top-1 class is right.
        num_bins: M.

    Returns:
        float64 tensor (3, M): per bin the number of pixels, the sum of their confidences and the number correct.
    """
    confidence = confidence.reshape(-1).double()
    inner_edges = torch.arange(1, num_bins, dtype=torch.float64, device=confidence.device) / num_bins
    index = torch.bucketize(confidence, inner_edges)
    counts = torch.bincount(index, minlength=num_bins).double()
    confidence_sums = torch.bincount(index, weights=confidence, minlength=num_bins)
    correct_sums = torch.bincount(index, weights=correct.reshape(-1).double(), minlength=num_bins)
    return torch.stack([counts, confidence_sums, correct_sums])


def ece_from_bins(bins: torch.Tensor) -> float:
    """Expected calibration error Σ_b (n_b / N)·|acc_b − conf_b| of a (3, M) :func:`calibration_bins` histogram.

    NaN when the histogram is empty.
    """
    counts, confidence_sums, correct_sums = bins.double()
    total = float(counts.sum())
    return float((correct_sums - confidence_sums).abs().sum()) / total if total > 0 else math.nan


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, num_bins: int = 15) -> float:
    """Expected calibration error of top-1 ``confidence`` (any shape) against ``correct``, with equal-width bins.

    See :func:`calibration_bins` for the bins and :func:`ece_from_bins` for the sum.
    """
    return ece_from_bins(calibration_bins(confidence, correct, num_bins))


def reliability_from_bins(bins: torch.Tensor) -> list[dict[str, float]]:
    """The reliability table of a (3, M) :func:`calibration_bins` histogram.

    Returns one dict per bin: ``lower`` and ``upper`` edge, ``count``, mean ``confidence`` and ``accuracy``
    (NaN for an empty bin).
    """
    counts, confidence_sums, correct_sums = bins.double()
    num_bins = counts.numel()
    mean_confidence, accuracy = _ratio(confidence_sums, counts), _ratio(correct_sums, counts)
    return [
        {
            "lower": b / num_bins,
            "upper": (b + 1) / num_bins,
            "count": int(counts[b]),
            "confidence": float(mean_confidence[b]),
            "accuracy": float(accuracy[b]),
        }
        for b in range(num_bins)
    ]


def score_histograms(probabilities: torch.Tensor, label: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Histograms of each class's probability, split by the true class.

    Args:
        probabilities: (B, C, *spatial) probabilities.
        label: (B, *spatial) integer ground truth in 0..C-1.
        num_bins: n equal-width bins [k/n, (k+1)/n) of [0, 1], the last one closed.

    Returns:
        int64 tensor (C, C, n): element [c, t, k] counts the pixels of true class t whose P(class c) is in bin k.
    """
    num_classes = probabilities.shape[1]
    offset = label.reshape(-1).long() * num_bins
    histograms = []
    for c in range(num_classes):
        bins = (probabilities[:, c].reshape(-1) * num_bins).long().clamp_(0, num_bins - 1)
        histograms.append(torch.bincount(offset + bins, minlength=num_classes * num_bins))
    return torch.stack(histograms).view(num_classes, num_classes, num_bins)


def auc_from_histograms(positive_hist: torch.Tensor, negative_hist: torch.Tensor) -> float:
    """ROC AUC of scores given as histograms over the same ordered bins (low scores first).

    The result is the exact AUC of the binned scores: P(s+ > s-) + ½·P(s+ = s-) over all (positive, negative)
    pairs, where a pair in the same bin is a tie. NaN when there are no positives or no negatives.

    Args:
        positive_hist: (n,) counts of the positives' scores per bin.
        negative_hist: (n,) counts of the negatives' scores per bin.
    """
    positives, negatives = positive_hist.double(), negative_hist.double()
    num_positive, num_negative = float(positives.sum()), float(negatives.sum())
    if num_positive == 0 or num_negative == 0:
        return math.nan
    negatives_below = torch.cumsum(negatives, dim=0) - negatives
    return float((positives * (negatives_below + 0.5 * negatives)).sum()) / (num_positive * num_negative)


class PixelClassificationMetric:
    """Per-pixel classification metrics over a whole dataset, accumulated image by image.

    Label-map quantities (``accuracy``, ``precision/recall/f1_per_class``, ``f1_macro``, the confusion
    matrices) use ``prediction``, by default the argmax of the probabilities. Probability quantities use the
    probabilities only: ``ece`` and ``reliability`` bin the top-1 confidence (``num_bins`` equal-width bins) against
    the correctness of the argmax, and ``auc_per_class`` is the one-vs-rest ROC AUC of P(class c).

    AUC resolution: P(class c) is binned into ``auc_bins`` equal-width bins, and the AUC is exact for the binned
    scores, a pair of pixels in the same bin counting as a ½ tie. It differs from the AUC of the raw scores only
    through pairs closer than 1/``auc_bins``, by at most half their share of all (positive, negative) pairs.

    NaN rules: a class absent from the ground truth has NaN recall, F1 and AUC (and NaN precision if never
    predicted); ``f1_macro`` and ``auc_macro`` are the means over the classes that are not NaN (NaN if none).
    Empty calibration bins have NaN confidence and accuracy and do not enter the ECE.

    State: a (C, C) confusion matrix, a (3, ``num_bins``) calibration histogram and (C, C, ``auc_bins``) score
    histograms, kept on the CPU whatever the inputs' device.

    Args:
        num_classes: C.
        num_bins: calibration bins for ECE and the reliability table.
        auc_bins: score bins for the AUC.
    """

    def __init__(self, num_classes: int, num_bins: int = 15, auc_bins: int = 1000) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if num_bins < 1 or auc_bins < 1:
            raise ValueError(f"num_bins and auc_bins must be positive, got {num_bins} and {auc_bins}")
        self.num_classes = num_classes
        self.num_bins = num_bins
        self.auc_bins = auc_bins
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        c = self.num_classes
        self.confusion = torch.zeros(c, c, dtype=torch.int64)
        self.calibration = torch.zeros(3, self.num_bins, dtype=torch.float64)
        self.scores = torch.zeros(c, c, self.auc_bins, dtype=torch.int64)

    def update(self, probabilities: torch.Tensor, label: torch.Tensor, prediction: torch.Tensor | None = None) -> None:
        """Add a batch.

        Args:
            probabilities: (B, C, *spatial) probabilities that sum to 1 over C, e.g. (B, C, H, W).
            label: ground truth, (B, 1, *spatial) or (B, *spatial), integer values in 0..C-1 (floats holding
                integers are accepted).
            prediction: predicted label map of the label's shape; None for the argmax of ``probabilities``.

        Raises:
            InvalidInputError: for wrong shapes, labels out of range, or probabilities that are not probabilities.
        """
        probabilities = self._checked_probabilities(probabilities)
        label = self._checked_label_map(label, probabilities, "label")
        confidence, top_class = probabilities.max(dim=1)
        if prediction is None:
            prediction = top_class
        else:
            prediction = self._checked_label_map(prediction, probabilities, "prediction")
        self.confusion += confusion_matrix(label, prediction, self.num_classes).cpu()
        self.calibration += calibration_bins(confidence, top_class == label, self.num_bins).cpu()
        self.scores += score_histograms(probabilities, label, self.auc_bins).cpu()

    def one_vs_rest(self, class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Histograms (``auc_bins``,) of P(class ``class_index``) over its positives and over its negatives."""
        histograms = self.scores[class_index]
        positives = histograms[class_index]
        return positives, histograms.sum(dim=0) - positives

    def aggregate(self) -> dict:
        """The metrics of everything added since the last reset, as plain Python numbers and lists.

        Keys: ``num_pixels``, ``accuracy``, ``precision_per_class``, ``recall_per_class``, ``f1_per_class``,
        ``f1_macro``, ``auc_per_class``, ``auc_macro``, ``confusion_matrix`` (counts, rows = truth),
        ``confusion_matrix_normalised`` (each row divided by its sum; NaN rows for absent classes), ``ece``,
        ``reliability`` (see :func:`reliability_from_bins`).
        """
        confusion = self.confusion.double()
        total = float(confusion.sum())
        truth = confusion.sum(dim=1, keepdim=True)
        precision, recall = precision_recall_from_confusion(self.confusion)
        f1 = f1_from_confusion(self.confusion)
        auc = torch.tensor(
            [auc_from_histograms(*self.one_vs_rest(c)) for c in range(self.num_classes)], dtype=torch.float64
        )
        return {
            "num_pixels": int(total),
            "accuracy": float(confusion.trace()) / total if total > 0 else math.nan,
            "precision_per_class": precision.tolist(),
            "recall_per_class": recall.tolist(),
            "f1_per_class": f1.tolist(),
            "f1_macro": _nanmean(f1),
            "auc_per_class": auc.tolist(),
            "auc_macro": _nanmean(auc),
            "confusion_matrix": self.confusion.tolist(),
            "confusion_matrix_normalised": _ratio(confusion, truth).tolist(),
            "ece": ece_from_bins(self.calibration),
            "reliability": reliability_from_bins(self.calibration),
        }

    def _checked_probabilities(self, probabilities: torch.Tensor) -> torch.Tensor:
        probabilities = convert_to_tensor(probabilities, track_meta=False)
        if probabilities.ndim < 3 or probabilities.shape[1] != self.num_classes or probabilities.numel() == 0:
            raise InvalidInputError(
                f"probabilities must have shape (B, {self.num_classes}, *spatial), got {tuple(probabilities.shape)}"
            )
        if not probabilities.is_floating_point() or not torch.isfinite(probabilities).all():
            raise InvalidInputError("probabilities must be finite floating-point numbers (found NaN, inf or ints)")
        deviation = float((probabilities.sum(dim=1, dtype=torch.float32) - 1).abs().max())
        if deviation > _SUM_TOLERANCE or float(probabilities.min()) < 0:
            raise InvalidInputError(
                f"probabilities must be non-negative and sum to 1 over the classes (off by up to {deviation:.3g}); "
                "apply softmax to the network's logits first"
            )
        return probabilities

    def _checked_label_map(self, label: torch.Tensor, probabilities: torch.Tensor, name: str) -> torch.Tensor:
        """``label`` as int64 (B, *spatial), after checking its shape against ``probabilities`` and its values."""
        label = convert_to_tensor(label, track_meta=False, device=probabilities.device)
        expected = (probabilities.shape[0], *probabilities.shape[2:])
        if label.ndim == probabilities.ndim and label.shape[1] == 1:
            label = label.squeeze(1)
        if tuple(label.shape) != expected:
            raise InvalidInputError(
                f"{name} must have shape {(expected[0], 1, *expected[1:])} or {expected} to match probabilities "
                f"{tuple(probabilities.shape)}, got {tuple(label.shape)}"
            )
        if label.is_floating_point() and not torch.equal(label, label.round()):
            raise InvalidInputError(f"{name} must hold integer class indices, found fractional values")
        label = label.long()
        low, high = int(label.min()), int(label.max())
        if low < 0 or high >= self.num_classes:
            raise InvalidInputError(f"{name} values must be in 0..{self.num_classes - 1}, found {low}..{high}")
        return label


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, NaN where the denominator is 0."""
    ratio = numerator / denominator
    return torch.where(denominator > 0, ratio, torch.full_like(ratio, math.nan))


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan
