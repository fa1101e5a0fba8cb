"""Dice per class when some classes are not annotated in some cases (SMILE, SMILEr): the metric, which reads
the (B, 2K, ...) target stack of :class:`common.smile.SmileTarget`, and its Ignite handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction

__all__ = ["PartialLabelDice", "PartialLabelDiceMetric", "partial_label_dice", "per_class_dice"]


def partial_label_dice(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice per case and class, NaN where the class is not annotated in the case.

    Args:
        prediction: binary prediction, shape (B, K, *spatial).
        target: the stack made by :class:`common.smile.SmileTarget`, shape (B, 2K, *spatial). A class counts
            as annotated in a case when its weight channel is 1 everywhere.

    Returns:
        float tensor (B, K). A class absent from both the target and the prediction scores 1; absent from the
        target but predicted, 0.
    """
    k = prediction.shape[1]
    if target.shape[1] != 2 * k:
        raise ValueError(f"target must have 2K = {2 * k} channels, got {target.shape[1]}")
    labels, weights = target[:, :k] > 0.5, target[:, k:]
    predicted = prediction > 0.5
    reduce_dims = tuple(range(2, prediction.ndim))
    intersection = (predicted & labels).sum(dim=reduce_dims).float()
    total = predicted.sum(dim=reduce_dims).float() + labels.sum(dim=reduce_dims).float()
    dice = torch.where(total > 0, 2.0 * intersection / total.clamp_min(1.0), torch.ones_like(total))
    annotated = weights.amin(dim=reduce_dims) >= 1.0
    return torch.where(annotated, dice, torch.full_like(dice, float("nan")))


class PartialLabelDiceMetric(CumulativeIterationMetric):
    """Accumulates :func:`partial_label_dice` over batches; aggregates ignoring the NaN of unannotated classes.

    Args:
        class_index: aggregate only this class (0-based channel); None averages the per-class means.
    """

    def __init__(self, class_index: int | None = None) -> None:
        super().__init__()
        self.class_index = class_index

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("PartialLabelDiceMetric needs the target stack y")
        return partial_label_dice(y_pred, y)

    def per_class(self) -> torch.Tensor:
        """Mean Dice per class over the accumulated cases, shape (K,), NaN for a class never annotated."""
        buffer = self.get_buffer()
        per_class, counts = do_metric_reduction(buffer, "mean_batch")
        return torch.where(counts > 0, per_class, torch.full_like(per_class, float("nan")))

    def aggregate(self) -> torch.Tensor:
        per_class = self.per_class()
        if self.class_index is not None:
            return per_class[self.class_index]
        valid = per_class[~torch.isnan(per_class)]
        return valid.mean() if len(valid) else torch.tensor(float("nan"))


class PartialLabelDice(IgniteMetricHandler):
    """Mean Dice over the annotated (case, class) pairs, or of one class with ``class_index``.

    ``output_transform`` must return (prediction (B, K, ...), target stack (B, 2K, ...)), see
    :func:`partial_label_dice`.
    """

    def __init__(
        self, class_index: int | None = None, output_transform: Callable = lambda x: x, save_details: bool = True
    ) -> None:
        super().__init__(
            metric_fn=PartialLabelDiceMetric(class_index), output_transform=output_transform, save_details=save_details
        )


def per_class_dice(class_names: Sequence[str], output_transform: Callable) -> dict[str, PartialLabelDice]:
    """One :class:`PartialLabelDice` per class, named ``val_dice_<class name>``, for ``additional_metrics``."""
    return {
        f"val_dice_{name}": PartialLabelDice(index, output_transform, save_details=False)
        for index, name in enumerate(class_names)
    }
