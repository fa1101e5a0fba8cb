"""CReST+ distribution alignment for sigmoid heads (docs/methods/smile.md §5.2), against hand-computed values."""

import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from torch import nn

from common.smile.distribution_alignment import (
    DistributionAligner,
    align_probabilities,
    aligned_target,
    alignment_temperature,
    foreground_fractions,
)
from common.smile.pseudo_labeler import PseudoLabeler
from common.smile.relabeling import RelabelingRounds
from common.smile.schedule import RelabelingSchedule

EPS = 1e-6


def _odds(p):
    return p / (1.0 - p)


# ------------------------------------------------------------------------------------------------------ temperature


@pytest.mark.parametrize(
    ("num_rounds", "t_min", "expected"),
    [
        (3, 0.5, [1.0, 0.75, 0.5]),  # g / (G - 1) = 0, 1/2, 1
        (5, 0.2, [1.0, 0.8, 0.6, 0.4, 0.2]),  # steps of (1 - 0.2) / 4
        (2, 0.5, [1.0, 0.5]),
        (1, 0.5, [1.0]),  # G = 1: the only round is the first (CReST's code divides by zero)
        (3, 1.0, [1.0, 1.0, 1.0]),  # t_min = 1: no tempering
    ],
)
def test_adaptive_temperature_falls_linearly_from_one_to_t_min(num_rounds, t_min, expected):
    got = [alignment_temperature(t, num_rounds, t_min, "adaptive") for t in range(1, num_rounds + 1)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_adaptive_is_the_default_schedule_with_t_min_one_half():
    assert [alignment_temperature(t, 3) for t in (1, 2, 3)] == pytest.approx([1.0, 0.75, 0.5])


@pytest.mark.parametrize("num_rounds", [1, 3])
def test_constant_temperature_is_t_min_in_every_round(num_rounds):
    got = [alignment_temperature(t, num_rounds, 0.3, "constant") for t in range(1, num_rounds + 1)]
    assert got == [0.3] * num_rounds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 3, 0.5, "linear"), "schedule must be one of"),
        ((1, 0, 0.5, "adaptive"), "num_rounds must be >= 1"),
        ((0, 3, 0.5, "adaptive"), r"round_index must be in 1\.\.3"),
        ((4, 3, 0.5, "adaptive"), r"round_index must be in 1\.\.3"),
        ((1, 3, 0.0, "adaptive"), r"t_min must be in \(0, 1\]"),
        ((1, 3, -0.5, "constant"), r"t_min must be in \(0, 1\]"),
        ((1, 3, 1.5, "adaptive"), r"t_min must be in \(0, 1\]"),
        ((1, 3, math.nan, "adaptive"), r"t_min must be in \(0, 1\]"),
    ],
)
def test_bad_temperature_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        alignment_temperature(*args)


# ---------------------------------------------------------------------------------------------------------- target


def test_tempered_target_of_a_head_heavy_distribution():
    # sqrt([0.6, 0.3, 0.1]) = [0.774597, 0.547723, 0.316228], sum 1.638548
    target = aligned_target([0.6, 0.3, 0.1], 0.5)
    assert target.tolist() == pytest.approx([0.472734, 0.334273, 0.192993], abs=1e-6)
    assert float(target.sum()) == pytest.approx(1.0)
    # flatter: the head loses, the tail gains, the order is kept
    assert target[0] < 0.6 and target[2] > 0.1 and target[0] > target[1] > target[2]


def test_temperature_one_returns_the_labelled_fractions():
    assert aligned_target([0.06, 0.03, 0.01], 1.0).tolist() == pytest.approx([0.06, 0.03, 0.01])


def test_foreground_fractions_are_tempered_as_shares_of_the_total_foreground():
    # F = 0.1; the shares [0.6, 0.3, 0.1] are tempered as above, then scaled back by F: background stays 0.9
    target = aligned_target([0.06, 0.03, 0.01], 0.5)
    assert target.tolist() == pytest.approx([0.0472734, 0.0334273, 0.0192993], abs=1e-7)
    assert float(target.sum()) == pytest.approx(0.1)


def test_a_class_without_labelled_voxels_keeps_a_zero_target():
    # F = 0.6, shares [5/6, 0, 1/6]; sqrt(5) / (sqrt(5) + 1) = 0.690983 and 1 / (sqrt(5) + 1) = 0.309017
    target = aligned_target([0.5, 0.0, 0.1], 0.5)
    assert target.tolist() == pytest.approx([0.414590, 0.0, 0.185410], abs=1e-6)


@pytest.mark.parametrize(
    ("distribution", "temperature", "message"),
    [
        ([0.0, 0.0], 0.5, "all 0"),
        ([0.5, -0.1], 0.5, r"foreground fractions in \[0, 1\]"),
        ([0.5, 1.2], 0.5, r"foreground fractions in \[0, 1\]"),
        ([0.5, math.nan], 0.5, r"foreground fractions in \[0, 1\]"),
        ([[0.5, 0.1]], 0.5, "1-D"),
        ([], 0.5, "non-empty"),
        ([0.5, 0.1], 0.0, r"temperature must be in \(0, 1\]"),
        ([0.5, 0.1], 2.0, r"temperature must be in \(0, 1\]"),
    ],
)
def test_bad_targets_are_refused(distribution, temperature, message):
    with pytest.raises(ValueError, match=message):
        aligned_target(distribution, temperature)


def test_labelled_foreground_fractions():
    # class 1: 10 of 100 voxels; class 2: none of 100 (delineated, absent); class 3: 5 of 50
    assert foreground_fractions([10, 0, 5], [100, 100, 50]).tolist() == pytest.approx([0.1, 0.0, 0.1])


@pytest.mark.parametrize(
    ("counts", "totals", "message"),
    [
        ([10, 0], [100, 0], r"classes \[2\] \(counted from 1\) are delineated in no training volume"),
        ([10, 200], [100, 100], r"class_voxels must be in \[0, annotated_voxels\]"),
        ([-1, 0], [100, 100], r"class_voxels must be in \[0, annotated_voxels\]"),
        ([10, 0], [100, 100, 100], "one value per class"),
    ],
)
def test_bad_fractions_are_refused(counts, totals, message):
    with pytest.raises(ValueError, match=message):
        foreground_fractions(counts, totals)


# ------------------------------------------------------------------------------------------------------- alignment


def test_over_predicted_class_goes_down_and_under_predicted_goes_up_by_the_exact_odds_ratio():
    # class 1 over-predicted (model 0.2, target 0.1), class 2 under-predicted (model 0.1, target 0.2)
    p = torch.tensor([0.1, 0.3, 0.5, 0.9], dtype=torch.float64)
    aligned = align_probabilities(torch.stack([p, p]), [0.2, 0.1], [0.1, 0.2])
    ratio_down = ((0.1 + EPS) / (0.2 + EPS)) / ((0.9 + EPS) / (0.8 + EPS))  # w / wbar = 0.5 / 1.125 = 4/9
    ratio_up = ((0.2 + EPS) / (0.1 + EPS)) / ((0.8 + EPS) / (0.9 + EPS))  # 2 / (8/9) = 9/4
    assert torch.allclose(_odds(aligned[0]) / _odds(p), torch.full_like(p, ratio_down), rtol=1e-12)
    assert torch.allclose(_odds(aligned[1]) / _odds(p), torch.full_like(p, ratio_up), rtol=1e-12)
    # at p = 0.5: odds 4/9 -> 4/13 and 9/4 -> 9/13
    assert float(aligned[0, 2]) == pytest.approx(4 / 13, abs=1e-5)
    assert float(aligned[1, 2]) == pytest.approx(9 / 13, abs=1e-5)
    assert (aligned[0] < p).all() and (aligned[1] > p).all()


def test_small_probabilities_follow_crest_s_ratio():
    # for p << 1 the odds are ~ p: p~ ~ p * (target / model) * (1 - model) / (1 - target), up to p and eps / 0.01
    p = torch.tensor([[1e-4]], dtype=torch.float64)
    aligned = align_probabilities(p, [0.02], [0.01])
    assert float(aligned) == pytest.approx(1e-4 * 0.5 * 0.98 / 0.99, rel=3e-4)


def test_a_class_on_target_and_the_extremes_are_unchanged():
    p = torch.tensor([[0.0, 0.2, 0.5, 0.7, 1.0], [0.0, 0.2, 0.5, 0.7, 1.0]])
    aligned = align_probabilities(p, [0.3, 0.4], [0.3, 0.01])
    assert torch.allclose(aligned[0], p[0], atol=1e-7)  # model = target
    assert aligned[1, 0] == 0.0 and aligned[1, -1] == 1.0  # odds 0 and infinity are not moved
    assert (aligned[1, 1:-1] < p[1, 1:-1]).all()


def test_the_order_of_the_voxels_within_a_class_is_kept():
    p = torch.linspace(0.0, 1.0, 101).unsqueeze(0)
    aligned = align_probabilities(p, [0.3], [0.02])
    assert (aligned[0, 1:] > aligned[0, :-1]).all()


def test_eps_with_a_zero_class():
    p = torch.tensor([[0.5, 0.9], [0.5, 0.9], [1e-4, 0.5]], dtype=torch.float64)
    aligned = align_probabilities(p, [0.0, 0.1, 0.0], [0.0, 0.0, 0.1])
    # target = model = 0: w = eps / eps = 1 and wbar = (1 + eps) / (1 + eps) = 1, nothing moves
    assert torch.allclose(aligned[0], p[0], atol=1e-12)
    # target 0, model 0.1: w = eps / (0.1 + eps) ~ 1e-5, wbar = (1 + eps) / (0.9 + eps): pushed to ~ 0
    w, wbar = EPS / (0.1 + EPS), (1 + EPS) / (0.9 + EPS)
    assert float(aligned[1, 0]) == pytest.approx(w / (w + wbar), rel=1e-9)  # 9.0e-6
    assert float(aligned[1, 0]) < 1e-5
    # target 0.1, model 0 (never predicted): w = (0.1 + eps) / eps = 100001, finite; a tiny probability jumps up
    w, wbar = (0.1 + EPS) / EPS, (0.9 + EPS) / (1 + EPS)
    assert float(aligned[2, 0]) == pytest.approx(1e-4 * w / (1e-4 * w + (1 - 1e-4) * wbar), rel=1e-9)  # 0.917
    assert torch.isfinite(aligned).all()


def test_dtypes_and_rounding_overshoot():
    p32 = torch.tensor([[0.5, 1.0000001, -1e-8]], dtype=torch.float32)
    aligned = align_probabilities(p32, [0.2], [0.1])
    assert aligned.dtype == torch.float32
    assert aligned[0, 1] == 1.0 and aligned[0, 2] == 0.0  # clamped to [0, 1] first
    assert align_probabilities(torch.tensor([[0.5]], dtype=torch.float64), [0.2], [0.1]).dtype == torch.float64
    assert align_probabilities(torch.tensor([[0, 1]], dtype=torch.uint8), [0.2], [0.1]).dtype == torch.float32


@pytest.mark.parametrize(
    ("probabilities", "model", "target", "eps", "message"),
    [
        (torch.full((3, 4), 0.5), [0.1, 0.2], [0.1, 0.2], EPS, r"\(K, \*spatial\) with K = 2"),
        (torch.tensor(0.5), [0.1], [0.1], EPS, r"\(K, \*spatial\) with K = 1"),
        (torch.full((2, 4), 0.5), [0.1, 0.2], [0.1, 0.2, 0.3], EPS, "one value per class each"),
        (torch.full((2, 4), 0.5), [0.1, 1.5], [0.1, 0.2], EPS, r"model_distribution must hold .* in \[0, 1\]"),
        (torch.full((2, 4), 0.5), [0.1, 0.2], [-0.1, 0.2], EPS, r"target_distribution must hold .* in \[0, 1\]"),
        (torch.full((2, 4), 0.5), [0.1, math.nan], [0.1, 0.2], EPS, r"model_distribution must hold"),
        (torch.tensor([[0.5, math.nan], [0.5, 0.5]]), [0.1, 0.2], [0.1, 0.2], EPS, "must not be NaN"),
        (torch.full((2, 4), 0.5), [0.1, 0.2], [0.1, 0.2], 0.0, "eps must be a finite number > 0"),
        (torch.full((2, 4), 0.5), [0.1, 0.2], [0.1, 0.2], -1e-6, "eps must be a finite number > 0"),
    ],
)
def test_bad_alignment_inputs_are_refused(probabilities, model, target, eps, message):
    with pytest.raises(ValueError, match=message):
        align_probabilities(probabilities, model, target, eps)


# --------------------------------------------------------------------------------------------------------- aligner


def test_aligner_keeps_a_voxel_weighted_running_mean_of_the_relabelled_classes():
    aligner = DistributionAligner([0.1, 0.2, 0.3])
    first = torch.tensor([[0.2, 0.4], [0.6, 0.6], [0.9, 0.9]])  # 2 voxels
    out = aligner(first, [True, True, False])
    assert aligner.model_distribution[:2].tolist() == pytest.approx([0.3, 0.6])
    assert math.isnan(aligner.model_distribution[2])  # class 3 not relabelled yet: not measured
    assert torch.equal(out[2], first[2])  # and not aligned
    # the volume is added before it is aligned: class 1 at model 0.3 -> target 0.1
    assert torch.allclose(out[:2], align_probabilities(first[:2], [0.3, 0.6], [0.1, 0.2]))
    second = torch.tensor([[0.0, 0.0, 0.0, 0.0]] * 3)  # 4 voxels: (0.2 + 0.4) / 6 = 0.1; class 3: 0 / 4
    aligner(second, [True, False, True])
    assert aligner.model_distribution.tolist()[0] == pytest.approx(0.1)
    assert aligner.model_distribution.tolist()[1:] == pytest.approx([0.6, 0.0])
    assert aligner.voxels.tolist() == [6, 2, 4]


def test_aligner_accepts_a_metatensor_and_checks_shapes():
    aligner = DistributionAligner([0.1, 0.2])
    out = aligner(MetaTensor(torch.full((2, 3), 0.5)), torch.tensor([1, 0], dtype=torch.uint8))
    assert type(out) is torch.Tensor and out.shape == (2, 3)
    with pytest.raises(ValueError, match=r"classes \(K,\) with K = 2"):
        aligner(torch.full((3, 3), 0.5), [True, False, True])
    with pytest.raises(ValueError, match=r"classes \(K,\) with K = 2"):
        aligner(torch.full((2, 3), 0.5), [True])


# ------------------------------------------------------------------------------------------ through the selection

# Ten voxels in a row. The labelled volumes say class 1 covers 10 % and class 2 40 % of a volume; the model
# over-predicts class 1 (mean 0.4) and under-predicts class 2 (mean 0.2).
CLASS_1 = [0.9, 0.8, 0.7, 0.6, 0.5, 0.3, 0.1, 0.05, 0.05, 0.0]  # mean 4.0 / 10
CLASS_2 = [0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.35, 0.4, 0.45, 0.6]  # mean 2.0 / 10
PROBABILITIES = torch.tensor([CLASS_1, CLASS_2]).reshape(2, 10, 1, 1)


def _labeler():
    return PseudoLabeler(nn.Conv3d(1, 2, 1), lambda inputs, network: network(inputs), Compose([]))


def _row(selected):
    return selected.flatten().tolist()


def test_alignment_changes_the_selected_voxels_in_the_expected_direction():
    label = torch.zeros(1, 10, 1, 1, dtype=torch.uint8)
    plain = _labeler().select(PROBABILITIES, None, label, [1.0, 1.0])
    # p >= 0.5: class 1 on voxels 0..4, class 2 on voxel 9 only
    assert _row(plain) == [1, 1, 1, 1, 1, 0, 0, 0, 0, 2]

    aligner = DistributionAligner(aligned_target([0.1, 0.4], 1.0))
    aligned = aligner(PROBABILITIES, [True, True])
    assert aligner.model_distribution.tolist() == pytest.approx([0.4, 0.2])
    # class 1: odds x (0.1 / 0.4) / (0.9 / 0.6) = 1/6, so 0.9 -> 0.6 and 0.8 -> 0.4;
    # class 2: odds x (0.4 / 0.2) / (0.6 / 0.8) = 8/3, so 0.6 -> 0.8, 0.45 -> 0.686, 0.4 -> 0.64, 0.35 -> 0.589,
    # 0.2 -> 0.4 (below the threshold)
    assert aligned[0, :5].flatten().tolist() == pytest.approx([0.6, 0.4, 0.28, 0.2, 1 / 7], abs=1e-5)
    assert aligned[1, 5:].flatten().tolist() == pytest.approx([0.4, 0.589474, 0.64, 0.685714, 0.8], abs=1e-5)
    selected = _labeler().select(aligned, None, label, [1.0, 1.0])
    assert _row(selected) == [1, 0, 0, 0, 0, 0, 2, 2, 2, 2]


# ------------------------------------------------------------------------------------ through the relabeling round


class _FixedPrediction(PseudoLabeler):
    """Predicts PROBABILITIES for any volume (no network), selects as PseudoLabeler does."""

    def predict(self, image, device):
        return PROBABILITIES.clone(), None


def _volume(values, annotated):
    affine = torch.eye(4, dtype=torch.float64)
    return {
        "image": MetaTensor(torch.zeros(1, 10, 1, 1), affine=affine),
        "label": MetaTensor(torch.tensor(values, dtype=torch.uint8).reshape(1, 10, 1, 1), affine=affine),
        "annotated_classes": np.array(annotated, dtype=np.uint8),
    }


# "labelled.nii.gz" delineates both classes: 1 voxel of class 1, 4 of class 2 in 10 -> fractions [0.1, 0.4];
# "unlabelled.nii.gz" delineates none: it is the one relabelled.
VOLUMES = {
    "labelled.nii.gz": _volume([1, 2, 2, 2, 2, 0, 0, 0, 0, 0], [1, 1]),
    "unlabelled.nii.gz": _volume([0] * 10, [0, 0]),
}


def _rounds(tmp_path, **kwargs):
    return RelabelingRounds(
        schedule=RelabelingSchedule(num_rounds=1, round_epochs=1),
        pseudo_labeler=_FixedPrediction(nn.Conv3d(1, 2, 1), lambda inputs, network: network(inputs), Compose([])),
        datalist=[{"image": name} for name in VOLUMES],
        dataset=None,
        load_transform=lambda entry: dict(VOLUMES[entry["image"]]),
        class_names=["one", "two"],
        output_dir=tmp_path,
        gamma_max=1.0,
        **kwargs,
    )


def _round_one(tmp_path, **kwargs):
    rounds = _rounds(tmp_path, **kwargs)
    rounds._relabel(1)
    return json.loads((tmp_path / "round_1" / "pseudo_labels.json").read_text())


def test_relabeling_without_alignment_is_unchanged(tmp_path):
    report = _round_one(tmp_path)
    assert {name: line["voxels"] for name, line in report["classes"].items()} == {"one": 5, "two": 1}
    assert "alignment" not in report


def test_relabeling_round_with_alignment(tmp_path):
    # one round, adaptive: t = 1, the target is the labelled fractions; gamma = 1 keeps every candidate
    report = _round_one(tmp_path, alignment="adaptive")
    assert {name: line["voxels"] for name, line in report["classes"].items()} == {"one": 1, "two": 4}
    assert report["alignment"]["schedule"] == "adaptive" and report["alignment"]["temperature"] == 1.0
    assert report["alignment"]["target"] == pytest.approx({"one": 0.1, "two": 0.4})
    assert report["alignment"]["model"] == pytest.approx({"one": 0.4, "two": 0.2})


def test_crest_and_alignment_share_one_pass_over_the_labels(tmp_path):
    loads = []
    rounds = _rounds(tmp_path, crest_alpha=1.0, alignment="constant", alignment_t_min=1.0)
    load = rounds.load_transform
    rounds.load_transform = lambda entry: loads.append(entry["image"]) or load(entry)
    rounds._relabel(1)
    assert len(loads) == 4  # the two volumes once for the label counts, once to relabel
    # CReST counts every real label voxel, [1, 4]: the rarer class 1 gets rate 1, class 2 gets 1 / 4
    assert rounds._rates().tolist() == pytest.approx([1.0, 0.25])
    report = json.loads((tmp_path / "round_1" / "pseudo_labels.json").read_text())
    # class 2 keeps floor(0.25 * 4) = 1 of its 4 aligned candidates
    assert {name: line["voxels"] for name, line in report["classes"].items()} == {"one": 1, "two": 1}


def test_alignment_settings_identify_the_run(tmp_path):
    assert _rounds(tmp_path).settings()["alignment"] is None
    assert _rounds(tmp_path).settings()["alignment_t_min"] is None  # off: an older run folder still matches
    settings = _rounds(tmp_path, alignment="constant", alignment_t_min=0.7).settings()
    assert (settings["alignment"], settings["alignment_t_min"]) == ("constant", 0.7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alignment": "linear"}, "alignment must be null"),
        ({"alignment": "adaptive", "alignment_t_min": 0.0}, r"t_min must be in \(0, 1\]"),
    ],
)
def test_bad_alignment_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _rounds(tmp_path, **kwargs)
