"""Quality of pseudo-labels against the ground truth that a simulation removed (SMILEr's key indicator)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from common.smile.targets import foreground_one_hot

__all__ = ["precision_recall", "pseudo_label_counts"]


def pseudo_label_counts(
    pseudo_label: torch.Tensor, truth: torch.Tensor, evaluated: Sequence[int] | np.ndarray | torch.Tensor
) -> torch.Tensor:
    """True positives, false positives and false negatives of the pseudo-labels, per class.

    Args:
        pseudo_label: integer map of pseudo-labels, shape (1, *spatial), values in 0..K.
        truth: the complete ground-truth label map, same shape.
        evaluated: (K,) indicator of the classes to score, e.g. those dropped from the case's annotation;
            the rows of other classes are 0.

    Returns:
        int64 tensor (K, 3): columns TP, FP, FN.
    """
    evaluated = torch.as_tensor(np.asarray(evaluated), device=truth.device).bool()
    predicted = foreground_one_hot(pseudo_label, len(evaluated))
    actual = foreground_one_hot(truth, len(evaluated))
    reduce_dims = tuple(range(1, truth.ndim))
    counts = torch.stack(
        [
            (predicted & actual).sum(dim=reduce_dims),
            (predicted & ~actual).sum(dim=reduce_dims),
            (~predicted & actual).sum(dim=reduce_dims),
        ],
        dim=1,
    )
    return counts * evaluated.view(-1, 1)


def precision_recall(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision TP/(TP+FP) and recall TP/(TP+FN) per class from (K, 3) counts (summed over cases as needed).

    Returns two float tensors (K,); NaN where the denominator is 0 (no pseudo-label, or no such organ).
    """
    tp, fp, fn = counts.double().unbind(dim=1)
    nan = torch.full_like(tp, float("nan"))
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), nan)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), nan)
    return precision, recall
