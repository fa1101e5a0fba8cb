"""Peer losses for partially labelled classes, to compare SMILE with (issue 16; docs/methods/smile.md).

- :class:`MarginalExclusionLoss`: softmax over background + K organs with the marginal and exclusion losses of
  Shi et al., "Marginal loss and exclusion loss for partially supervised multi-organ segmentation", MedIA 2021.
- :class:`PartialBCEDiceLoss`: K sigmoid heads with BCE + soft Dice over each case's annotated classes only, as in
  MultiTalent (Ulrich et al., MICCAI 2023).

Both take an integer label map (B, 1, *spatial) with values 0..K (0 = background, k = organ k) and an annotated
indicator (B, K) with 1 where the case annotates organ k (column k-1). Both reduce exactly to their fully supervised
counterpart when every organ is annotated. Neither is wired into a bundle config yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["MarginalExclusionLoss", "PartialBCEDiceLoss"]


def _check_inputs(logits: torch.Tensor, label: torch.Tensor, annotated: torch.Tensor, k: int) -> torch.Tensor:
    """Validate the shapes and label values; return ``label`` as a long tensor of shape (B, *spatial)."""
    if logits.ndim < 3:
        raise ValueError(f"logits must have shape (B, C, *spatial) with at least one spatial dim, got {logits.shape}")
    b, spatial = logits.shape[0], tuple(logits.shape[2:])
    if tuple(label.shape) != (b, 1, *spatial):
        raise ValueError(f"label must have shape (B, 1, *spatial) = {(b, 1, *spatial)}, got {tuple(label.shape)}")
    if tuple(annotated.shape) != (b, k):
        raise ValueError(f"annotated must have shape (B, K) = {(b, k)}, got {tuple(annotated.shape)}")
    if label.is_floating_point() and not torch.equal(label, label.round()):
        raise ValueError("label must hold integer class indices")
    label = label[:, 0].long()
    if label.numel() and (label.min() < 0 or label.max() > k):
        raise ValueError(f"label values must be in 0..{k}, got {label.min().item()}..{label.max().item()}")
    return label


def _soft_dice(probs: torch.Tensor, truth: torch.Tensor, smooth_nr: float, smooth_dr: float) -> torch.Tensor:
    """Soft Dice per (case, channel) of (B, C, *spatial) tensors; shape (B, C)."""
    dims = tuple(range(2, probs.ndim))
    intersection = (probs * truth).sum(dim=dims)
    denominator = probs.sum(dim=dims) + truth.sum(dim=dims)
    return (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)


class MarginalExclusionLoss(_Loss):
    """Marginal cross-entropy (+ optional marginal Dice) + exclusion loss over a softmax of C = K + 1 channels.

    Notation, for case b: p = softmax(logits) over channels 0..K (0 = background); S_b = the annotated organs;
    M_b = {0} ∪ {organs not in S_b} (the "merged background"); y = the label map, where voxels of an unannotated
    organ carry 0 (or, if present, that organ's index: either way they count as merged background); N = voxels.

    Marginal probabilities: q_0 = sum_{c in M_b} p_c, and q_k = p_k for k in S_b. Target: t = y if y in S_b, else 0.

    - Marginal CE:   L_mCE = -1/(B N) sum_{b,v} log q_{t(b,v)}(b,v)   (log q_0 computed as a logsumexp of the
      log-softmax over M_b).
    - Marginal Dice: L_mDice = mean over pairs (b, c), c in {0} ∪ S_b, of 1 - (2 sum_v q_c g_c + smooth_nr) /
      (sum_v q_c + sum_v g_c + smooth_dr), with g_c = [t == c]; channel 0 is the merged background.
    - Exclusion (Dice form): for every organ j in 1..K, let E_{b,j} = [y in S_b \\ {j}] (the voxels labelled as an
      annotated organ other than j, where organ j cannot be). Then
      L_excl = mean over pairs (b, j) with sum_v E_{b,j} > 0 of 2 sum_v p_j E_{b,j} / (sum_v p_j + sum_v E_{b,j} +
      smooth_dr), i.e. the Dice overlap between organ j's prediction and the other annotated organs, which is
      minimised (0 when no pair qualifies). This follows the paper's description (a Dice-type dissimilarity between
      the labelled organs and the estimated segmentation of the other organs); the exact normalisation and
      averaging of the published equation were not checked against the paper text.

    L = L_mCE + dice_weight * L_mDice + exclusion_weight * L_excl.

    With every organ annotated, M_b = {0}, q = p, and L_mCE equals ``F.cross_entropy(logits, y)`` (mean reduction).

    Args:
        exclusion_weight: weight of the exclusion term; 0 disables it.
        dice_weight: weight of the marginal Dice term; 0 (default) keeps the marginal CE only.
        smooth_nr: added to Dice numerators.
        smooth_dr: added to Dice denominators (and to the exclusion denominator).
    """

    def __init__(
        self,
        exclusion_weight: float = 1.0,
        dice_weight: float = 0.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        if exclusion_weight < 0 or dice_weight < 0:
            raise ValueError(
                f"weights must be >= 0, got exclusion_weight={exclusion_weight}, dice_weight={dice_weight}"
            )
        self.exclusion_weight = exclusion_weight
        self.dice_weight = dice_weight
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr

    def _prepare(self, logits: torch.Tensor, label: torch.Tensor, annotated: torch.Tensor):
        k = logits.shape[1] - 1
        if k < 1:
            raise ValueError(f"logits must have K + 1 >= 2 channels (background + organs), got {logits.shape[1]}")
        y = _check_inputs(logits, label, annotated, k)
        known = torch.cat([torch.ones_like(annotated[:, :1]), annotated], dim=1).bool()  # (B, C): channel 0 and S_b
        merged = ~known
        merged[:, 0] = True  # M_b
        # target t: y where y is an annotated organ, else the merged background 0
        y_known = torch.gather(known, 1, y.flatten(1)).reshape(y.shape)
        target = torch.where(y_known, y, torch.zeros_like(y))
        view = (*known.shape, *([1] * (logits.ndim - 2)))
        known, merged = known.reshape(view), merged.reshape(view)
        return k, y, target, known, merged

    def marginal_log_probs(self, logits: torch.Tensor, known: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
        """log q, shape (B, C, *spatial): channel 0 = log of the merged background, unannotated organs = -inf."""
        log_p = F.log_softmax(logits.float(), dim=1)
        log_merged = torch.logsumexp(log_p.masked_fill(~merged, float("-inf")), dim=1, keepdim=True)
        log_q = log_p.masked_fill(~known, float("-inf"))
        return torch.cat([log_merged, log_q[:, 1:]], dim=1)

    def forward(self, logits: torch.Tensor, label: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: network output, shape (B, K + 1, *spatial); channel 0 is the background.
            label: integer label map, shape (B, 1, *spatial), values 0..K.
            annotated: (B, K), 1 where the case annotates organ k (column k - 1), else 0.

        Returns:
            the scalar loss.
        """
        k, y, target, known, merged = self._prepare(logits, label, annotated)
        log_q = self.marginal_log_probs(logits, known, merged)
        loss = -torch.gather(log_q, 1, target.unsqueeze(1)).mean()
        if self.dice_weight > 0:
            q = log_q.exp()  # exp(-inf) = 0 on unannotated organs
            truth = F.one_hot(target, k + 1).movedim(-1, 1).float()
            dice = _soft_dice(q, truth, self.smooth_nr, self.smooth_dr)  # (B, C)
            loss = loss + self.dice_weight * (1.0 - dice)[known.flatten(1)].mean()
        if self.exclusion_weight > 0:
            loss = loss + self.exclusion_weight * self.exclusion_loss(logits, y, known)
        return loss

    def exclusion_loss(self, logits: torch.Tensor, y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """L_excl for logits (B, K + 1, *spatial), label y (B, *spatial) and known (B, K + 1, 1...) as in forward."""
        k = logits.shape[1] - 1
        p = torch.softmax(logits.float(), dim=1)[:, 1:]  # organs, (B, K, *spatial)
        organ = F.one_hot(y, k + 1).movedim(-1, 1)[:, 1:].float() * known[:, 1:].float()  # annotated organs' truth
        excl = organ.sum(dim=1, keepdim=True) - organ  # E_{b,j}: annotated organs other than j
        dims = tuple(range(2, p.ndim))
        size = excl.sum(dim=dims)
        overlap = 2.0 * (p * excl).sum(dim=dims) / (p.sum(dim=dims) + size + self.smooth_dr)
        pairs = size > 0
        if not pairs.any():
            return p.sum() * 0.0
        return overlap[pairs].mean()


class PartialBCEDiceLoss(_Loss):
    """BCE + soft Dice over K sigmoid heads, restricted to each case's annotated classes (MultiTalent's loss).

    Notation: z = logits (B, K, *spatial), s = sigmoid(z), g_{b,k} = [y == k] for organ k (channel k - 1),
    a_{b,k} = annotated (B, K), N = voxels.

    - BCE:  L_BCE = sum_{b,k,v} a_{b,k} BCE(z, g) / (N sum_{b,k} a_{b,k}), the mean BCE over the voxels of the
      annotated (case, class) pairs.
    - Dice: L_Dice = mean over pairs (b, k) with a_{b,k} = 1 of 1 - (2 sum_v s g + smooth_nr) /
      (sum_v s + sum_v g + smooth_dr).

    L = L_BCE + dice_weight * L_Dice; 0 (with a zero gradient) when no pair is annotated. An unannotated class
    contributes nothing, not even as a negative: the gradient on its logits is exactly 0. With every class annotated,
    L = ``F.binary_cross_entropy_with_logits(z, g)`` + dice_weight * (1 - mean Dice), the same as MONAI's
    ``DiceLoss(sigmoid=True)`` with the same smoothing.

    Args:
        dice_weight: weight of the Dice term (default 1.0); 0 keeps the BCE only.
        smooth_nr: added to the Dice numerator.
        smooth_dr: added to the Dice denominator.
    """

    def __init__(self, dice_weight: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")
        self.dice_weight = dice_weight
        self.smooth_nr = smooth_nr
        self.smooth_dr = smooth_dr

    def forward(self, logits: torch.Tensor, label: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: network output, shape (B, K, *spatial).
            label: integer label map, shape (B, 1, *spatial), values 0..K (0 = background).
            annotated: (B, K), 1 where the case annotates class k (column k - 1), else 0.

        Returns:
            the scalar loss.
        """
        k = logits.shape[1]
        y = _check_inputs(logits, label, annotated, k)
        pairs = annotated.bool()
        if not pairs.any():
            return logits.sum() * 0.0
        logits = logits.float()
        truth = F.one_hot(y, k + 1).movedim(-1, 1)[:, 1:].float()
        mask = pairs.reshape(*pairs.shape, *([1] * (logits.ndim - 2))).float()
        # where() keeps unannotated logits out of the graph entirely (0 gradient, even through the Dice)
        bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
        bce = torch.where(mask > 0, bce, torch.zeros_like(bce))
        voxels = logits[0, 0].numel()
        loss = bce.sum() / (pairs.sum() * voxels)
        if self.dice_weight > 0:
            dice = _soft_dice(torch.sigmoid(logits), truth, self.smooth_nr, self.smooth_dr)
            loss = loss + self.dice_weight * (1.0 - dice)[pairs].mean()
        return loss
