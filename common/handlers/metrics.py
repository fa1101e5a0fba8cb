"""Ignite handlers for the partial-label Dice metric."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.handlers import IgniteMetricHandler

from common.metrics.dice import PartialLabelDiceMetric

__all__ = ["PartialLabelDice", "per_class_dice"]


class PartialLabelDice(IgniteMetricHandler):
    """Mean Dice over the annotated (case, class) pairs, or of one class with ``class_index``.

    ``output_transform`` must return (prediction (B, K, ...), target stack (B, 2K, ...)), see
    :func:`common.metrics.partial_label_dice`.
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
