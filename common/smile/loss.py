"""SMILE loss: binary cross-entropy over K independent sigmoid heads, weighted by the ambiguity map.

docs/methods/smile.md §3.2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["SmileLoss"]


class SmileLoss(_Loss):
    """Weighted BCE over K sigmoid channels, normalised by the weight sum, plus an optional Dice term.

    L = sum_{b,k,p} W * BCE(y, sigmoid(z)) / sum_{b,k,p} W  +  dice_weight * mean_{(b,k) known} (1 - Dice_{b,k})

    The Dice term only covers the (case, class) pairs whose weight is 1 over the whole patch, i.e. the classes
    annotated in the case (or, exceptionally, an unannotated class in a patch with no background voxel, where every
    voxel is still a known negative).

    Args:
        dice_weight: weight of the Dice term; 0 disables it.
        batch_dice: pool each class's Dice over the known cases of the batch (one Dice per class) instead of one
            Dice per (case, class); a patch that lacks a small organ then does not alone drive its probabilities to 0.
        smooth_nr: added to the Dice numerator.
        smooth_dr: added to the Dice denominator.
    """

    def __init__(
        self, dice_weight: float = 0.0, batch_dice: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5
    ) -> None:
        super().__init__()
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
        self.dice_weight = dice_weight
        self.batch_dice = batch_dice
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: network output, shape (B, K, *spatial).
            target: the stack made by :class:`common.smile.SmileTarget`, shape (B, 2K, *spatial):
                binary targets in channels 0..K-1, weights in K..2K-1.

        Returns:
            the scalar loss.
        """
        k = logits.shape[1]
        if target.shape[1] != 2 * k or target.shape[2:] != logits.shape[2:]:
            raise ValueError(
                f"target must have shape (B, 2K, *spatial) = (B, {2 * k}, {tuple(logits.shape[2:])}), "
                f"got {tuple(target.shape)}"
            )
        logits = logits.float()
        labels, weights = target[:, :k].float(), target[:, k:].float()
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        loss = (weights * bce).sum() / weights.sum().clamp_min(1.0)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * self.known_class_dice_loss(torch.sigmoid(logits), labels, weights)
        return loss

    def known_class_dice_loss(self, probs: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Mean soft Dice loss over the (case, class) pairs whose weight is 1 everywhere; 0 when there is none."""
        reduce_dims = tuple(range(2, probs.ndim))
        known = (weights.amin(dim=reduce_dims) >= 1.0).float()
        if not known.any():
            return probs.sum() * 0.0
        intersection = (probs * labels).sum(dim=reduce_dims) * known
        denominator = (probs.sum(dim=reduce_dims) + labels.sum(dim=reduce_dims)) * known
        if self.batch_dice:
            intersection, denominator, known = intersection.sum(0), denominator.sum(0), known.amax(0)
        dice = (2.0 * intersection + self.smooth_nr) / (denominator + self.smooth_dr)
        return (1.0 - dice)[known > 0].mean()
