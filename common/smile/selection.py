"""Pseudo-label selection rules for self-relabeling and class rebalancing.

SMILEr: docs/methods/smile.md §3.3; CReST: the same page, §5.1.

After each relabeling round t = 1..T the model labels its surest voxels of the organs missing from a volume:
among the voxels predicted as organ k, the top fraction gamma_t (optionally times a CReST class rate mu_k) by
score become positives. The score is the predicted probability (:func:`select_confident`) or the negated
MC-dropout uncertainty (:func:`select_least_uncertain`, with :func:`mc_dropout_predict`).

Everything here is a pure function of tensors; nothing reads files or touches the training state for good
(:func:`mc_dropout_predict` restores the network's train/eval flags before it returns).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from common.handlers.checkpoint import unwrap

__all__ = [
    "binary_entropy",
    "class_fractions",
    "crest_rates",
    "gamma_schedule",
    "has_dropout",
    "mc_dropout_predict",
    "select_confident",
    "select_least_uncertain",
    "select_top_fraction",
]

# Added before flooring fraction * n, so that e.g. 0.29 * 100 = 28.999999999999996 still gives 29 voxels.
_FLOOR_TOLERANCE = 1e-9


def gamma_schedule(round_index: int, num_rounds: int, gamma_max: float) -> float:
    """Fraction of the candidate voxels relabelled in round t: gamma_t = t / T * gamma_max.

    Args:
        round_index: t, the round, counted from 1 to T.
        num_rounds: T >= 1, the number of relabeling rounds.
        gamma_max: the fraction used in the last round, in (0, 1].

    Returns:
        gamma_t in (0, gamma_max]; e.g. T = 3, gamma_max = 0.9 gives 0.3, 0.6, 0.9.
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    if not 1 <= round_index <= num_rounds:
        raise ValueError(f"round_index must be in 1..{num_rounds} (rounds count from 1), got {round_index}")
    if not 0.0 < gamma_max <= 1.0:
        raise ValueError(f"gamma_max must be in (0, 1], got {gamma_max}")
    return round_index * gamma_max / num_rounds


def select_top_fraction(scores: torch.Tensor, candidates: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the best-scoring ``fraction`` of the candidate voxels.

    Among the n voxels where ``candidates`` is True, the floor(fraction * n) with the highest score are kept.
    Equal scores are ranked by flat (row-major) index, lower index first, so the selection is deterministic.

    Args:
        scores: any shape, e.g. (X, Y, Z); higher is surer. Scores outside the candidates are ignored.
        candidates: same shape as ``scores``, bool (or 0/1).
        fraction: in [0, 1]; 0, or no candidate, selects nothing.

    Returns:
        bool tensor shaped like ``scores``: True on the kept voxels (a subset of the candidates).
    """
    if scores.shape != candidates.shape:
        raise ValueError(
            f"scores and candidates must have the same shape, got {tuple(scores.shape)} and {tuple(candidates.shape)}"
        )
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    selected = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    candidate_index = candidates.reshape(-1).bool().nonzero().squeeze(1)  # ascending flat indices
    keep = math.floor(fraction * candidate_index.numel() + _FLOOR_TOLERANCE)
    if keep == 0:
        return selected
    candidate_scores = scores.reshape(-1)[candidate_index]
    if torch.isnan(candidate_scores).any():
        raise ValueError("scores must not be NaN on candidate voxels")
    # A stable sort keeps equal scores in ascending flat-index order: the tie-break by lower index.
    order = torch.sort(candidate_scores, descending=True, stable=True).indices[:keep]
    selected.view(-1)[candidate_index[order]] = True
    return selected


def select_confident(probabilities: torch.Tensor, fraction: float, threshold: float = 0.5) -> torch.Tensor:
    """Confidence rule for one class of one volume: the most probable ``fraction`` of the predicted positives.

    Args:
        probabilities: sigmoid probabilities of the class, any shape, e.g. (X, Y, Z).
        fraction: in [0, 1], e.g. gamma_t or gamma_t * mu_k.
        threshold: voxels with probability >= threshold are predicted positive (the candidates).

    Returns:
        bool mask shaped like ``probabilities``.
    """
    return select_top_fraction(probabilities, probabilities >= threshold, fraction)


def select_least_uncertain(
    mean_probabilities: torch.Tensor, uncertainty: torch.Tensor, fraction: float, threshold: float = 0.5
) -> torch.Tensor:
    """Uncertainty rule for one class of one volume: the least uncertain ``fraction`` of the predicted positives.

    A voxel below ``threshold`` is never selected, however low its uncertainty.

    Args:
        mean_probabilities: mean MC-dropout probability of the class, any shape, e.g. (X, Y, Z).
        uncertainty: same shape, e.g. the std over passes or :func:`binary_entropy` of the mean; lower is surer.
        fraction: in [0, 1].
        threshold: voxels with mean probability >= threshold are predicted positive (the candidates).

    Returns:
        bool mask shaped like ``mean_probabilities``.
    """
    if uncertainty.shape != mean_probabilities.shape:
        raise ValueError(
            f"uncertainty must have the shape of mean_probabilities {tuple(mean_probabilities.shape)}, "
            f"got {tuple(uncertainty.shape)}"
        )
    return select_top_fraction(-uncertainty, mean_probabilities >= threshold, fraction)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of a Bernoulli(p) in nats: H = -p ln p - (1 - p) ln(1 - p), with 0 ln 0 = 0.

    Args:
        p: probabilities, any shape; clamped to [0, 1] first.

    Returns:
        float tensor shaped like ``p``, in [0, ln 2]: 0 at p = 0 or 1, ln 2 at p = 0.5.
    """
    p = (p if p.is_floating_point() else p.float()).clamp(0.0, 1.0)
    q = 1.0 - p
    return -(torch.xlogy(p, p) + torch.xlogy(q, q))


def _dropout_modules(network: nn.Module) -> list[_DropoutNd]:
    return [module for module in network.modules() if isinstance(module, _DropoutNd)]


def has_dropout(network: nn.Module) -> bool:
    """Whether ``network`` (possibly wrapped in DistributedDataParallel) has a dropout layer with p > 0."""
    return any(module.p > 0 for module in _dropout_modules(unwrap(network)))


def mc_dropout_predict(
    network: nn.Module,
    inputs: torch.Tensor,
    passes: int,
    predictor: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo dropout: mean and std of the sigmoid probabilities over ``passes`` stochastic forward passes.

    Only the dropout modules (subclasses of ``torch.nn.modules.dropout._DropoutNd``) run in train mode; every other
    module (BatchNorm, InstanceNorm, ...) runs in eval mode, so no running statistic changes. The passes run under
    ``torch.no_grad()``. Every module's training flag is restored afterwards, also when a pass raises.

    Args:
        network: outputs logits, shape (B, K, *spatial); must contain a dropout module with p > 0.
        inputs: the network input, e.g. (B, C, *spatial).
        passes: number of stochastic passes, >= 2.
        predictor: called as ``predictor(inputs, network)``, e.g. a MONAI ``SlidingWindowInferer``;
            default ``network(inputs)``.

    Returns:
        (mean, std), both float and shaped like the network output: the mean sigmoid probability and its
        population standard deviation over the passes (divided by ``passes``, not ``passes - 1``).
    """
    if passes < 2:
        raise ValueError(f"MC dropout needs passes >= 2 to estimate a spread, got {passes}")
    if not has_dropout(network):
        raise ValueError(
            f"MC dropout needs dropout layers: {type(network).__name__} has none with p > 0; "
            "build it with dropout (e.g. UNet(..., dropout=0.1))"
        )
    flags = [(module, module.training) for module in network.modules()]
    try:
        network.eval()
        for module in _dropout_modules(network):
            module.train()
        with torch.no_grad():
            return _mean_and_std(network, inputs, passes, predictor)
    finally:
        for module, training in flags:
            module.training = training


def _mean_and_std(
    network: nn.Module,
    inputs: torch.Tensor,
    passes: int,
    predictor: Callable[[torch.Tensor, nn.Module], torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Welford's running mean and variance of the sigmoid output; no stack of all passes in memory."""
    mean = sum_sq = None
    for count in range(1, passes + 1):
        logits = network(inputs) if predictor is None else predictor(inputs, network)
        if hasattr(logits, "as_tensor"):  # a MONAI MetaTensor: keep a plain tensor
            logits = logits.as_tensor()
        probs = torch.sigmoid(logits.float())
        if mean is None:
            mean, sum_sq = probs.clone(), torch.zeros_like(probs)
            continue
        delta = probs - mean
        mean += delta / count
        sum_sq += delta * (probs - mean)
    return mean.clamp(0.0, 1.0), (sum_sq / passes).clamp_min(0.0).sqrt()


def crest_rates(class_voxel_counts: Sequence[int] | torch.Tensor, alpha: float) -> torch.Tensor:
    """CReST class-rebalancing rates mu_c: rare classes are relabelled more than frequent ones.

    Sort the classes by count, N_1 >= ... >= N_K; the class at rank l gets mu = (N_{K+1-l} / N_1) ** alpha, so the
    most frequent class gets the smallest rate and the rarest gets 1. The rates come back in the original class order.

    Example: counts [1000, 10, 100], alpha = 1 -> sorted [1000, 100, 10] -> mu by rank
    [10/1000, 100/1000, 1000/1000] -> in the original order [0.01, 1.0, 0.1].

    Conventions beyond the paper:
        - a class with count 0 is treated as the rarest: its rate is 1, and the formula runs over the classes with a
          positive count only (otherwise N_K = 0 would give the most frequent class a rate of 0);
        - classes with equal counts share the mean of the rates their ranks would get, so the result does not
          depend on the class order, e.g. [10, 10, 1], alpha = 1 -> by rank [0.1, 1, 1] -> [0.55, 0.55, 1.0].

    Args:
        class_voxel_counts: (K,) non-negative labelled voxel counts per class, not all zero.
        alpha: exponent >= 0; 0 gives all ones (no rebalancing). CReST's code uses 1/3.

    Returns:
        float tensor of shape (K,) with values in (0, 1].
    """
    counts = torch.as_tensor(class_voxel_counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"class_voxel_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}")
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"class_voxel_counts must be finite and >= 0, got {counts.tolist()}")
    if not (counts > 0).any():
        raise ValueError("class_voxel_counts are all zero: there is no class frequency to rebalance")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    rates = torch.ones_like(counts)
    positive = counts > 0
    sorted_counts = torch.sort(counts[positive], descending=True).values
    rank_rates = (sorted_counts.flip(0) / sorted_counts[0]) ** alpha
    positive_rates = torch.empty_like(counts[positive])
    for value in sorted_counts.unique():
        positive_rates[counts[positive] == value] = rank_rates[sorted_counts == value].mean()
    rates[positive] = positive_rates
    return rates.to(torch.get_default_dtype())


def class_fractions(gamma: float, rates: torch.Tensor) -> torch.Tensor:
    """Per-class relabeling fractions of a round: gamma_t * mu_c, clipped to [0, 1].

    Args:
        gamma: gamma_t from :func:`gamma_schedule`.
        rates: (K,) class rates mu_c from :func:`crest_rates`.

    Returns:
        float tensor of shape (K,).
    """
    return (gamma * torch.as_tensor(rates, dtype=torch.get_default_dtype())).clamp(0.0, 1.0)
