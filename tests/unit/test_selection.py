import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from torch import nn

from common.smile.selection import (
    binary_entropy,
    class_fractions,
    crest_rates,
    gamma_schedule,
    mc_dropout_predict,
    select_confident,
    select_least_uncertain,
    select_top_fraction,
)

# ---------------------------------------------------------------------------------------------------------- schedule


def test_gamma_schedule_is_linear_up_to_gamma_max():
    assert [gamma_schedule(t, 3, 0.9) for t in (1, 2, 3)] == pytest.approx([0.3, 0.6, 0.9], abs=1e-12)
    assert gamma_schedule(1, 1, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("round_index", "num_rounds", "gamma_max", "message"),
    [
        (1, 0, 0.9, "num_rounds must be >= 1"),
        (0, 3, 0.9, "round_index must be in 1..3"),
        (4, 3, 0.9, "round_index must be in 1..3"),
        (1, 3, 0.0, r"gamma_max must be in \(0, 1\]"),
        (1, 3, 1.5, r"gamma_max must be in \(0, 1\]"),
        (1, 3, -0.1, r"gamma_max must be in \(0, 1\]"),
        (1, 3, float("nan"), r"gamma_max must be in \(0, 1\]"),
    ],
)
def test_gamma_schedule_rejects_bad_inputs(round_index, num_rounds, gamma_max, message):
    with pytest.raises(ValueError, match=message):
        gamma_schedule(round_index, num_rounds, gamma_max)


# --------------------------------------------------------------------------------------------- top-fraction selection

# 8 predicted positives (p >= 0.5): 0.99 (2,1), 0.95 (0,2), 0.90 (5,1), then three tied at 0.70 with flat indices
# 10 (1,4), 20 (3,2), 23 (3,5), then 0.60 (1,0) and 0.50 (4,3), which sits exactly on the threshold.
# (2,3) = 0.49 is just below the threshold and is never a candidate.
PROBABILITIES = torch.tensor(
    [
        [0.10, 0.20, 0.95, 0.30, 0.10, 0.00],
        [0.60, 0.10, 0.20, 0.10, 0.70, 0.10],
        [0.00, 0.99, 0.10, 0.49, 0.20, 0.10],
        [0.10, 0.20, 0.70, 0.10, 0.10, 0.70],
        [0.30, 0.10, 0.10, 0.50, 0.20, 0.10],
        [0.10, 0.90, 0.10, 0.20, 0.30, 0.40],
    ]
)


def _mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_select_confident_quarter_keeps_the_two_most_probable():
    # floor(0.25 * 8) = 2: 0.99 at (2,1) and 0.95 at (0,2)
    expected = _mask(
        [
            [0, 0, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    assert torch.equal(select_confident(PROBABILITIES, 0.25), expected)


def test_select_confident_half_breaks_the_tie_by_lower_flat_index():
    # floor(0.5 * 8) = 4: 0.99, 0.95, 0.90, then one of the three 0.70s: the lowest flat index, (1,4) = 10,
    # wins over (3,2) = 20 and (3,5) = 23
    expected = _mask(
        [
            [0, 0, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 0, 0],
        ]
    )
    assert torch.equal(select_confident(PROBABILITIES, 0.5), expected)


def test_select_confident_full_keeps_every_predicted_positive_and_nothing_below_threshold():
    # all 8 voxels with p >= 0.5, including 0.50 at (4,3); not 0.49 at (2,3)
    expected = _mask(
        [
            [0, 0, 1, 0, 0, 0],
            [1, 0, 0, 0, 1, 0],
            [0, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 1],
            [0, 0, 0, 1, 0, 0],
            [0, 1, 0, 0, 0, 0],
        ]
    )
    assert torch.equal(select_confident(PROBABILITIES, 1.0), expected)
    assert torch.equal(select_confident(PROBABILITIES, 1.0), PROBABILITIES >= 0.5)


def test_select_confident_threshold_moves_the_candidates():
    # threshold 0.8: only 0.99, 0.95, 0.90 are candidates; floor(0.7 * 3) = 2 keeps 0.99 and 0.95
    kept = select_confident(PROBABILITIES, 0.7, threshold=0.8)
    assert kept.nonzero().tolist() == [[0, 2], [2, 1]]


def test_select_confident_with_no_predicted_positive_or_zero_fraction_selects_nothing():
    no_positive = PROBABILITIES.clamp(max=0.49)
    assert not select_confident(no_positive, 1.0).any()
    assert not select_confident(PROBABILITIES, 0.0).any()
    # floor(0.1 * 8) = 0
    assert not select_confident(PROBABILITIES, 0.1).any()


def test_select_top_fraction_ties_and_flooring():
    scores = torch.full((10,), 0.5)
    scores[7] = 0.9
    candidates = torch.zeros(10, dtype=torch.bool)
    candidates[[1, 3, 4, 6, 7, 8]] = True
    # floor(0.5 * 6) = 3: the one higher score (index 7) first, then the tied 0.5s in index order: 1 and 3
    assert select_top_fraction(scores, candidates, 0.5).nonzero().squeeze(1).tolist() == [1, 3, 7]
    # 0.29 * 100 = 28.999999999999996 in floating point; still 29 voxels
    assert select_top_fraction(torch.zeros(100), torch.ones(100, dtype=torch.bool), 0.29).sum().item() == 29
    # floor(0.29 * 10) = 2
    assert select_top_fraction(torch.zeros(10), torch.ones(10, dtype=torch.bool), 0.29).sum().item() == 2


def test_select_top_fraction_works_on_3d_volumes():
    scores = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    candidates = scores.remainder(2) == 0  # 12 even-valued voxels
    kept = select_top_fraction(scores, candidates, 0.25)  # 3 of them: 22, 20, 18
    assert kept.shape == (2, 3, 4)
    assert sorted(scores[kept].tolist()) == [18.0, 20.0, 22.0]


def test_select_top_fraction_rejects_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        select_top_fraction(torch.zeros(4), torch.ones(5, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        select_top_fraction(torch.zeros(4), torch.ones(4, dtype=torch.bool), 1.5)
    with pytest.raises(ValueError, match="NaN"):
        select_top_fraction(torch.tensor([0.1, float("nan")]), torch.ones(2, dtype=torch.bool), 1.0)


# Mean probabilities: 6 predicted positives (>= 0.5): 0.90 (0,0), 0.80 (0,5), 0.70 (2,1), 0.60 (2,4), 0.95 (4,2),
# 0.55 (5,0). Their std: 0.05, 0.30, 0.01, 0.02, 0.20, 0.10. Every other voxel has std 0: surer than any positive,
# but below the threshold, so never selected.
MEAN_PROBABILITIES = torch.tensor(
    [
        [0.90, 0.10, 0.10, 0.10, 0.10, 0.80],
        [0.10, 0.10, 0.30, 0.10, 0.10, 0.10],
        [0.10, 0.70, 0.10, 0.10, 0.60, 0.10],
        [0.10, 0.10, 0.10, 0.10, 0.10, 0.10],
        [0.10, 0.10, 0.95, 0.10, 0.10, 0.10],
        [0.55, 0.10, 0.10, 0.10, 0.10, 0.10],
    ]
)
STD = torch.tensor(
    [
        [0.05, 0.00, 0.00, 0.00, 0.00, 0.30],
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00],
        [0.00, 0.01, 0.00, 0.00, 0.02, 0.00],
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00],
        [0.00, 0.00, 0.20, 0.00, 0.00, 0.00],
        [0.10, 0.00, 0.00, 0.00, 0.00, 0.00],
    ]
)


def test_select_least_uncertain_keeps_the_lowest_std_positives():
    # floor(0.5 * 6) = 3 lowest std among the positives: 0.01 (2,1), 0.02 (2,4), 0.05 (0,0); the most probable
    # voxel, 0.95 at (4,2), has std 0.20 and is left out
    expected = _mask(
        [
            [1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 1, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    assert torch.equal(select_least_uncertain(MEAN_PROBABILITIES, STD, 0.5), expected)
    # the confidence rule picks differently: 0.95, 0.90, 0.80
    assert select_confident(MEAN_PROBABILITIES, 0.5).nonzero().tolist() == [[0, 0], [0, 5], [4, 2]]


def test_select_least_uncertain_never_selects_below_threshold():
    kept = select_least_uncertain(MEAN_PROBABILITIES, STD, 1.0)
    assert torch.equal(kept, MEAN_PROBABILITIES >= 0.5)
    assert kept.sum().item() == 6
    with pytest.raises(ValueError, match="shape of mean_probabilities"):
        select_least_uncertain(MEAN_PROBABILITIES, STD[:5], 0.5)


# -------------------------------------------------------------------------------------------------------- entropy


def test_binary_entropy_values():
    h = binary_entropy(torch.tensor([0.0, 0.5, 1.0, 0.1]))
    expected = [0.0, math.log(2), 0.0, -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))]
    assert h.tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.isfinite(h).all()
    # out-of-range values are clamped
    assert binary_entropy(torch.tensor([-0.1, 1.1])).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------------- MC dropout


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def _flags(network):
    return {name: module.training for name, module in network.named_modules()}


@pytest.mark.parametrize("mode", ["eval", "train", "mixed"])
def test_mc_dropout_predict_spreads_and_restores_training_flags(mode):
    network = _mlp()
    network.train(mode != "eval")
    if mode == "mixed":
        network[1].eval()
        network[3].eval()
    before = _flags(network)
    bn = network[1]
    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    batches = bn.num_batches_tracked.clone()
    inputs = torch.randn(16, 4)

    mean, std = mc_dropout_predict(network, inputs, passes=8)

    assert mean.shape == std.shape == (16, 3)
    assert (std > 0).any()  # dropout was active
    assert ((mean >= 0) & (mean <= 1)).all()
    assert (std >= 0).all()
    assert not mean.requires_grad and not std.requires_grad
    assert _flags(network) == before
    # BatchNorm ran in eval mode: its running statistics did not move, even for a network in train mode
    assert torch.equal(bn.running_mean, running_mean)
    assert torch.equal(bn.running_var, running_var)
    assert torch.equal(bn.num_batches_tracked, batches)


def test_mc_dropout_predict_mean_and_population_std_by_hand():
    network = _mlp()
    probabilities = iter([0.2, 0.6, 0.7])

    def predictor(inputs, net):
        p = next(probabilities)
        return torch.full((1, 2), math.log(p / (1 - p)))

    mean, std = mc_dropout_predict(network, torch.zeros(1, 4), passes=3, predictor=predictor)
    # mean 0.5; population std sqrt((0.3^2 + 0.1^2 + 0.2^2) / 3)
    assert mean.flatten().tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert std.flatten().tolist() == pytest.approx([math.sqrt(0.14 / 3)] * 2, abs=1e-6)


def test_mc_dropout_predict_restores_flags_when_a_pass_raises():
    network = _mlp().train()
    before = _flags(network)

    def failing(inputs, net):
        assert not net[1].training and net[3].training  # BatchNorm in eval, dropout in train during the pass
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        mc_dropout_predict(network, torch.randn(2, 4), passes=2, predictor=failing)
    assert _flags(network) == before


class TinyNet(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.drop = nn.Dropout2d(p)

    def forward(self, x):
        return self.drop(self.conv(x))


@pytest.mark.parametrize(
    ("network", "name"),
    [
        (nn.Sequential(nn.Linear(4, 2)), "Sequential"),
        (nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.0)), "Sequential"),
        (TinyNet(0.0), "TinyNet"),
        (UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,)), "UNet"),
    ],
)
def test_mc_dropout_predict_without_dropout_names_the_network(network, name):
    message = (
        f"MC dropout needs dropout layers: {name} has none with p > 0; build it with dropout "
        r"\(e\.g\. UNet\(\.\.\., dropout=0\.1\)\)"
    )
    with pytest.raises(ValueError, match=message):
        mc_dropout_predict(network, torch.zeros(1, 4), passes=4)


@pytest.mark.parametrize("passes", [1, 0, -3])
def test_mc_dropout_predict_needs_two_passes(passes):
    with pytest.raises(ValueError, match="passes >= 2"):
        mc_dropout_predict(_mlp(), torch.zeros(2, 4), passes=passes)


def test_mc_dropout_predict_with_monai_unet_and_sliding_window_predictor():
    torch.manual_seed(0)
    network = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), dropout=0.1).eval()
    before = _flags(network)
    inferer = SlidingWindowInferer(roi_size=(8, 8), sw_batch_size=2, overlap=0.25)
    inputs = torch.randn(1, 1, 16, 16)

    mean, std = mc_dropout_predict(network, inputs, passes=4, predictor=lambda x, net: inferer(x, net))

    assert mean.shape == std.shape == (1, 2, 16, 16)
    assert (std > 0).any()
    assert ((mean >= 0) & (mean <= 1)).all()
    assert _flags(network) == before
    # usable downstream: an uncertainty-based selection for class 0
    kept = select_least_uncertain(mean[0, 0], std[0, 0], 0.5)
    assert kept.shape == (16, 16)
    assert not (kept & (mean[0, 0] < 0.5)).any()


# ---------------------------------------------------------------------------------------------------------- CReST


def test_crest_rates_docstring_example():
    # sorted [1000, 100, 10] -> rates by rank [10/1000, 100/1000, 1000/1000] -> original order [0.01, 1.0, 0.1]
    assert crest_rates([1000, 10, 100], alpha=1.0).tolist() == pytest.approx([0.01, 1.0, 0.1])
    assert crest_rates(torch.tensor([1000, 10, 100]), alpha=1.0).tolist() == pytest.approx([0.01, 1.0, 0.1])
    # alpha = 1/2: square roots of the same ratios
    assert crest_rates([1000, 10, 100], alpha=0.5).tolist() == pytest.approx([0.1, 1.0, math.sqrt(0.1)])


def test_crest_rates_alpha_zero_gives_ones():
    assert crest_rates([1000, 10, 100], alpha=0.0).tolist() == [1.0, 1.0, 1.0]


def test_crest_rates_ties_share_the_mean_rate():
    # [10, 10, 1]: rates by rank [1/10, 10/10, 10/10]; the two 10s (ranks 1 and 2) share (0.1 + 1) / 2
    assert crest_rates([10, 10, 1], alpha=1.0).tolist() == pytest.approx([0.55, 0.55, 1.0])
    # [100, 10, 10]: rates by rank [0.1, 0.1, 1]; the two 10s (ranks 2 and 3) share (0.1 + 1) / 2
    assert crest_rates([100, 10, 10], alpha=1.0).tolist() == pytest.approx([0.1, 0.55, 0.55])
    # independent of the class order
    assert crest_rates([10, 100, 10], alpha=1.0).tolist() == pytest.approx([0.55, 0.1, 0.55])
    assert crest_rates([5, 5, 5], alpha=2.0).tolist() == [1.0, 1.0, 1.0]


def test_crest_rates_zero_counts_are_rarest():
    # the zero-count class gets 1; the rest use [1000, 100] only: [100/1000, 1000/1000]
    assert crest_rates([1000, 0, 100], alpha=1.0).tolist() == pytest.approx([0.1, 1.0, 1.0])
    assert crest_rates([0, 50], alpha=1.0).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("counts", "alpha", "message"),
    [
        ([10, 5], -1.0, "alpha must be a finite number >= 0"),
        ([10, 5], float("nan"), "alpha must be a finite number >= 0"),
        ([0, 0, 0], 1.0, "all zero"),
        ([10, -1], 1.0, "must be finite and >= 0"),
        ([], 1.0, "non-empty 1-D"),
        ([[1, 2], [3, 4]], 1.0, "non-empty 1-D"),
    ],
)
def test_crest_rates_rejects_bad_inputs(counts, alpha, message):
    with pytest.raises(ValueError, match=message):
        crest_rates(counts, alpha)


def test_class_fractions_scale_and_clip():
    rates = torch.tensor([0.01, 1.0, 0.1])
    assert class_fractions(0.6, rates).tolist() == pytest.approx([0.006, 0.6, 0.06])
    assert class_fractions(1.5, torch.tensor([1.0, 0.5])).tolist() == pytest.approx([1.0, 0.75])
    assert class_fractions(-0.5, torch.tensor([1.0, 0.5])).tolist() == [0.0, 0.0]
