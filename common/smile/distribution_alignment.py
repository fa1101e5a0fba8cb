"""CReST+ progressive distribution alignment for K independent sigmoid heads (docs/methods/smile.md §5.2).

CReST+ multiplies the pseudo-label probabilities by (target + eps) / (model + eps) and normalises them, so that
the class distribution the model predicts on unlabelled data moves towards a tempered labelled distribution; the
temperature falls from 1 to t_min over the generations (our relabeling rounds).

Our heads are K independent sigmoids and a voxel may be background, so two things are adapted (our design):

- **Class distribution.** The distribution of class k is its *foreground fraction*: the share of voxels that are
  class k. The labelled one counts the real labels over the (class, volume) pairs that delineate k; the model's
  is the mean sigmoid probability of k over the voxels of the pairs where k is missing. The fractions of the K
  classes need not sum to 1 (background is the rest).
- **Tempering** (:func:`aligned_target`) acts on the classes' shares of the foreground, f_k / F with F = sum_k f_k,
  and keeps the total foreground F: a flatter target moves foreground from frequent organs to rare ones without
  adding foreground.
- **Normalize** (:func:`align_probabilities`): each head is a two-class distribution (k, not k) and CReST+'s
  formula is applied to that pair, target (pi_k, 1 - pi_k) and model (p_k, 1 - p_k). It multiplies the odds of
  class k by w_k / wbar_k: a shift of the logit by a constant per class. Values stay in [0, 1] without clipping
  and the order of the voxels within a class is kept.

Pure functions of tensors, plus :class:`DistributionAligner`, the running model distribution of one round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "ALIGNMENT_EPS",
    "ALIGNMENT_SCHEDULES",
    "DistributionAligner",
    "align_probabilities",
    "aligned_target",
    "alignment_temperature",
    "foreground_fractions",
]

ALIGNMENT_SCHEDULES = ("adaptive", "constant")
ALIGNMENT_EPS = 1e-6  # CReST's smoothing constant


def _check_t_min(t_min: float, name: str = "t_min") -> None:
    if not (isinstance(t_min, (int, float)) and math.isfinite(t_min) and 0.0 < t_min <= 1.0):
        raise ValueError(f"{name} must be in (0, 1] (1: no tempering, < 1: a flatter target), got {t_min!r}")


def alignment_temperature(round_index: int, num_rounds: int, t_min: float = 0.5, schedule: str = "adaptive") -> float:
    """CReST+'s temperature t of relabeling round ``round_index``.

    Our rounds t = 1..T are CReST's generations g = t - 1 of G = T:

    - ``"adaptive"``: t_g = (1 - g / (G - 1)) * 1 + g / (G - 1) * t_min, linear from 1.0 in round 1 to t_min in
      round T; e.g. T = 3, t_min = 0.5 gives 1.0, 0.75, 0.5. With T = 1 (CReST's code divides by zero) the only
      round is the first: t = 1.0, as round 1 of any T.
    - ``"constant"``: t_min in every round (CReST's ``dalign_t``).

    Args:
        round_index: the round, counted from 1 to ``num_rounds``.
        num_rounds: T >= 1.
        t_min: the last round's temperature (``"adaptive"``) or every round's (``"constant"``), in (0, 1].
        schedule: ``"adaptive"`` or ``"constant"``.

    Returns:
        the temperature, in [t_min, 1].
    """
    if schedule not in ALIGNMENT_SCHEDULES:
        raise ValueError(f"the alignment schedule must be one of {ALIGNMENT_SCHEDULES}, got {schedule!r}")
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    if not 1 <= round_index <= num_rounds:
        raise ValueError(f"round_index must be in 1..{num_rounds} (rounds count from 1), got {round_index}")
    _check_t_min(t_min)
    if schedule == "constant":
        return float(t_min)
    if num_rounds == 1:
        return 1.0
    progress = (round_index - 1) / (num_rounds - 1)
    return (1.0 - progress) * 1.0 + progress * float(t_min)


def _fractions(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    """``values`` as a float64 (K,) tensor of fractions in [0, 1], or a ValueError naming ``name``."""
    fractions = torch.as_tensor(values, dtype=torch.float64)
    if fractions.ndim != 1 or fractions.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence (one value per class), got shape {tuple(fractions.shape)}"
        )
    if not torch.isfinite(fractions).all() or (fractions < 0).any() or (fractions > 1).any():
        raise ValueError(f"{name} must hold per-class foreground fractions in [0, 1], got {fractions.tolist()}")
    return fractions


def foreground_fractions(
    class_voxels: Sequence[int] | torch.Tensor, annotated_voxels: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """The labelled class distribution: each class's foreground fraction over the volumes that delineate it.

    f_k = (voxels labelled k in the volumes that delineate k) / (all voxels of those volumes).

    Args:
        class_voxels: (K,) voxels labelled k, counted only in the volumes that delineate k.
        annotated_voxels: (K,) voxels of the volumes that delineate k, each volume counted whole.

    Returns:
        float tensor (K,) in [0, 1].
    """
    counts = torch.as_tensor(class_voxels, dtype=torch.float64)
    totals = torch.as_tensor(annotated_voxels, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0 or counts.shape != totals.shape:
        raise ValueError(
            "class_voxels and annotated_voxels must be 1-D with one value per class, got shapes "
            f"{tuple(counts.shape)} and {tuple(totals.shape)}"
        )
    if (counts < 0).any() or (counts > totals).any():
        raise ValueError(f"class_voxels must be in [0, annotated_voxels], got {counts.tolist()} and {totals.tolist()}")
    missing = torch.nonzero(totals == 0).flatten().tolist()
    if missing:
        raise ValueError(
            f"classes {[k + 1 for k in missing]} (counted from 1) are delineated in no training volume: their "
            "labelled foreground fraction is unknown, so the distribution cannot be aligned to it"
        )
    return (counts / totals).to(torch.get_default_dtype())


def aligned_target(labelled_distribution: Sequence[float] | torch.Tensor, temperature: float) -> torch.Tensor:
    """CReST+'s target pi_target = Normalize(pi ** t), for foreground fractions.

    With F = sum_k f_k, the shares s_k = f_k / F are tempered and the total foreground is kept:
    target_k = F * s_k ** t / sum_j s_j ** t. When the fractions sum to 1 this is CReST+'s Normalize(pi ** t),
    e.g. [0.6, 0.3, 0.1] at t = 0.5 gives [0.4727, 0.3343, 0.1930]; t = 1 returns the fractions unchanged. A class
    with fraction 0 keeps 0. Since t <= 1 flattens the shares, no target exceeds the largest fraction (so <= 1).

    Args:
        labelled_distribution: (K,) per-class foreground fractions in [0, 1], not all 0 (e.g. from
            :func:`foreground_fractions`).
        temperature: t in (0, 1], e.g. from :func:`alignment_temperature`.

    Returns:
        float tensor (K,) in [0, 1], summing to F.
    """
    fractions = _fractions(labelled_distribution, "labelled_distribution")
    total = fractions.sum()
    if total <= 0:
        raise ValueError("labelled_distribution is all 0: no class has a labelled voxel to align to")
    _check_t_min(temperature, "temperature")
    tempered = (fractions / total) ** temperature
    target = total * tempered / tempered.sum()
    return target.clamp(0.0, 1.0).to(torch.get_default_dtype())


def align_probabilities(
    probabilities: torch.Tensor,
    model_distribution: Sequence[float] | torch.Tensor,
    target_distribution: Sequence[float] | torch.Tensor,
    eps: float = ALIGNMENT_EPS,
) -> torch.Tensor:
    """CReST+'s p~ = Normalize(p * (target + eps) / (model + eps)) for K independent sigmoid heads.

    Each head is the two-class distribution (p_k, 1 - p_k), aligned from the model's (m_k, 1 - m_k) to the
    target's (pi_k, 1 - pi_k) and normalised over its two classes:

        w_k = (pi_k + eps) / (m_k + eps),   wbar_k = (1 - pi_k + eps) / (1 - m_k + eps),
        p~_k = p_k w_k / (p_k w_k + (1 - p_k) wbar_k),

    i.e. the odds p / (1 - p) are multiplied by exactly w_k / wbar_k. An over-predicted class (m_k > pi_k) is
    pulled down, an under-predicted one (m_k < pi_k) up, a class with m_k = pi_k is left as it is; so is a
    probability of exactly 0 or 1. eps keeps a class the model never predicts (m_k = 0) finite, and a class with
    pi_k = m_k = 0 unchanged; a class with pi_k = 0 < m_k is pushed to about 0. For small probabilities
    p~_k ~ p_k * w_k, CReST's ratio.

    Args:
        probabilities: (K, *spatial) sigmoid probabilities; clamped to [0, 1] first (resampling can overshoot by
            a rounding error); NaN is refused.
        model_distribution: (K,) the model's foreground fraction per class, m_k, in [0, 1].
        target_distribution: (K,) the target foreground fraction per class, pi_k, in [0, 1] (e.g. from
            :func:`aligned_target`).
        eps: smoothing constant > 0; CReST uses 1e-6.

    Returns:
        float tensor shaped like ``probabilities`` (its dtype when floating, else float32), in [0, 1].
    """
    model = _fractions(model_distribution, "model_distribution")
    target = _fractions(target_distribution, "target_distribution")
    if model.shape != target.shape:
        raise ValueError(
            f"model_distribution and target_distribution must have one value per class each, got {model.numel()} "
            f"and {target.numel()}"
        )
    probabilities = torch.as_tensor(probabilities)
    if probabilities.ndim < 1 or probabilities.shape[0] != model.numel():
        raise ValueError(
            f"probabilities must be (K, *spatial) with K = {model.numel()} classes, got shape "
            f"{tuple(probabilities.shape)}"
        )
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not probabilities.is_floating_point():
        probabilities = probabilities.float()
    if torch.isnan(probabilities).any():
        raise ValueError("probabilities must not be NaN")
    aligned = torch.empty_like(probabilities)
    for k in range(model.numel()):
        weight = float((target[k] + eps) / (model[k] + eps))
        weight_not = float((1.0 - target[k] + eps) / (1.0 - model[k] + eps))
        p = probabilities[k].clamp(0.0, 1.0)
        foreground = p * weight
        aligned[k] = foreground / (foreground + (1.0 - p) * weight_not)
    return aligned


def _plain(values: torch.Tensor) -> torch.Tensor:
    """A plain tensor (a MONAI MetaTensor without its metadata), so indexing it is plain indexing."""
    return values.as_tensor() if hasattr(values, "as_tensor") else torch.as_tensor(values)


class DistributionAligner:
    """CReST+ alignment during one relabeling round: a fixed target and a running model distribution.

    The model distribution m_k is the running mean of the probability of class k over every voxel of the volumes
    seen so far in which k is relabelled (missing from the annotation), weighted by voxel: a running mean over
    the round's unlabelled (class, volume) pairs. Each call first adds the volume, then aligns it, so the first
    volume is aligned against its own prediction. Make a new aligner for each round.

    Args:
        target_distribution: (K,) target foreground fractions, from :func:`aligned_target`.
        eps: smoothing constant of :func:`align_probabilities`.
    """

    def __init__(self, target_distribution: Sequence[float] | torch.Tensor, eps: float = ALIGNMENT_EPS) -> None:
        self.target = _fractions(target_distribution, "target_distribution")
        self.eps = eps
        self.probability_sums = torch.zeros(self.target.numel(), dtype=torch.float64)
        self.voxels = torch.zeros(self.target.numel(), dtype=torch.int64)

    @property
    def model_distribution(self) -> torch.Tensor:
        """(K,) float64 running mean probability per class; NaN for a class not seen yet."""
        return self.probability_sums / self.voxels.to(torch.float64)

    def update(self, probabilities: torch.Tensor, classes: Sequence[bool] | torch.Tensor) -> None:
        """Add one volume's probabilities (K, *spatial) for ``classes``, a (K,) bool indicator."""
        probabilities = _plain(probabilities)
        classes = self._classes(probabilities, classes)
        for k in torch.nonzero(classes).flatten().tolist():
            self.probability_sums[k] += probabilities[k].clamp(0.0, 1.0).sum(dtype=torch.float64)
            self.voxels[k] += probabilities[k].numel()

    def __call__(self, probabilities: torch.Tensor, classes: Sequence[bool] | torch.Tensor) -> torch.Tensor:
        """Add the volume, then return its probabilities with ``classes`` aligned and the other channels as given.

        Args:
            probabilities: (K, *spatial) of one volume.
            classes: (K,) bool, the classes relabelled in this volume.

        Returns:
            a new tensor shaped like ``probabilities``.
        """
        probabilities = _plain(probabilities)
        classes = self._classes(probabilities, classes)
        self.update(probabilities, classes)
        aligned = probabilities.clone() if probabilities.is_floating_point() else probabilities.float()
        if classes.any():
            aligned[classes] = align_probabilities(
                probabilities[classes], self.model_distribution[classes], self.target[classes], self.eps
            ).to(aligned.dtype)
        return aligned

    def _classes(self, probabilities: torch.Tensor, classes: Sequence[bool] | torch.Tensor) -> torch.Tensor:
        classes = torch.as_tensor(classes).bool()
        count = self.target.numel()
        if classes.shape != (count,) or probabilities.ndim < 1 or probabilities.shape[0] != count:
            raise ValueError(
                f"expected probabilities (K, *spatial) and classes (K,) with K = {count}, got shapes "
                f"{tuple(probabilities.shape)} and {tuple(classes.shape)}"
            )
        return classes
