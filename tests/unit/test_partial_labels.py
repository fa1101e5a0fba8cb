import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from common.errors import InvalidInputError
from common.smile import (
    AnnotatedClassesd,
    LabelMapToMultiLabel,
    ProbabilitiesToLabelMap,
    SimulateMissingAnnotationsd,
    SmileTarget,
    SmileTargetd,
)


def _label(values, name="case_007.nii.gz"):
    return MetaTensor(torch.tensor([values]), meta={"filename_or_obj": f"/data/{name}"})


def test_smile_target_and_weight_map_follow_the_rule():
    label = torch.tensor([[0, 1, 2, 3]])
    stack = SmileTarget(num_foreground_classes=3)(label, np.array([1, 0, 1]))
    targets, weights = stack[:3], stack[3:]
    assert targets.tolist() == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    # class 2 is not annotated: known only on voxels of other organs (and its own positive label), never background
    assert weights.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]


def test_smile_targetd_reads_the_annotation_indicator():
    data = {"label": torch.tensor([[[0, 1], [3, 0]]]), "annotated_classes": np.array([0, 0, 1])}
    out = SmileTargetd("label", num_foreground_classes=3)(data)
    assert out["label"].shape == (6, 2, 2)
    assert out["label"][3].tolist() == [[0, 1], [1, 0]]  # liver unannotated: weight only on foreground voxels


def test_annotated_classes_absent_means_all_and_list_becomes_indicator():
    to_indicator = AnnotatedClassesd(num_foreground_classes=3)
    assert to_indicator({"image": "a.nii.gz"})["annotated_classes"].tolist() == [1, 1, 1]
    assert to_indicator({"image": "a.nii.gz", "annotated_classes": [3, 1]})["annotated_classes"].tolist() == [1, 0, 1]


@pytest.mark.parametrize("bad", [[0], [4], [1.5], ["liver"]])
def test_annotated_class_that_does_not_exist_is_named(bad):
    with pytest.raises(
        InvalidInputError, match=r"case_1\.nii\.gz: annotated_classes names class .* classes are 1\.\.3"
    ):
        AnnotatedClassesd(num_foreground_classes=3)({"image": "/x/case_1.nii.gz", "annotated_classes": bad})


def test_missing_rate_zero_and_one():
    data = {"label": _label([0, 1, 2, 3]), "annotated_classes": np.ones(3, np.uint8)}
    kept = SimulateMissingAnnotationsd(num_foreground_classes=3, missing_rate=0.0)(data)
    assert kept["label"].tolist() == [[0, 1, 2, 3]] and kept["dropped_classes"].tolist() == [0, 0, 0]
    dropped = SimulateMissingAnnotationsd(num_foreground_classes=3, missing_rate=1.0)(data)
    assert dropped["label"].tolist() == [[0, 0, 0, 0]]
    assert dropped["annotated_classes"].tolist() == [0, 0, 0] and dropped["dropped_classes"].tolist() == [1, 1, 1]


def test_simulation_is_a_fixed_function_of_seed_and_case():
    simulate = SimulateMissingAnnotationsd(num_foreground_classes=3, missing_rate=0.5, seed=3)
    runs = [simulate({"label": _label([0, 1, 2, 3]), "annotated_classes": np.ones(3, np.uint8)}) for _ in range(3)]
    assert all(r["dropped_classes"].tolist() == runs[0]["dropped_classes"].tolist() for r in runs)
    # the dropped organs are gone from the label and from the indicator, the kept ones stay
    for class_index, was_dropped in enumerate(runs[0]["dropped_classes"], start=1):
        assert (class_index in runs[0]["label"]) != bool(was_dropped)
        assert runs[0]["annotated_classes"][class_index - 1] == 1 - was_dropped


def test_simulated_missing_fraction_is_close_to_alpha():
    simulate = SimulateMissingAnnotationsd(num_foreground_classes=3, missing_rate=0.7, seed=0)
    drops = [
        simulate({"label": _label([0, 1, 2, 3], f"case_{i:03d}.nii.gz"), "annotated_classes": np.ones(3, np.uint8)})[
            "dropped_classes"
        ]
        for i in range(300)
    ]
    assert 0.64 < np.mean(drops) < 0.76


def test_an_organ_already_missing_is_not_recorded_as_dropped():
    simulate = SimulateMissingAnnotationsd(num_foreground_classes=3, missing_rate=1.0)
    out = simulate({"label": _label([0, 1, 0, 3]), "annotated_classes": np.array([1, 0, 1], np.uint8)})
    assert out["dropped_classes"].tolist() == [1, 0, 1]


def _simulate_all_dropped(seed, name):
    simulate = SimulateMissingAnnotationsd(
        num_foreground_classes=3, missing_rate=1.0, seed=seed, keep_at_least_one=True
    )
    return simulate({"label": _label([0, 1, 2, 3], name), "annotated_classes": np.ones(3, np.uint8)})


def test_keep_at_least_one_keeps_one_class_when_all_would_be_dropped():
    out = _simulate_all_dropped(0, "case_007.nii.gz")
    kept = out["annotated_classes"].tolist()
    assert sum(kept) == 1 and out["dropped_classes"].tolist() == [1 - k for k in kept]
    kept_class = kept.index(1) + 1
    assert sorted(set(out["label"].flatten().tolist())) == [0, kept_class]
    # a fixed function of seed and case name
    assert _simulate_all_dropped(0, "case_007.nii.gz")["annotated_classes"].tolist() == kept
    by_seed = {
        tuple(_simulate_all_dropped(seed, "case_007.nii.gz")["annotated_classes"].tolist()) for seed in range(20)
    }
    assert len(by_seed) > 1


def test_keep_at_least_one_keeps_an_annotated_class_only():
    simulate = SimulateMissingAnnotationsd(num_foreground_classes=3, missing_rate=1.0, keep_at_least_one=True)
    out = simulate({"label": _label([0, 1, 0, 3]), "annotated_classes": np.array([1, 0, 1], np.uint8)})
    assert out["annotated_classes"].tolist() in ([1, 0, 0], [0, 0, 1])
    none = simulate({"label": _label([0, 0, 0, 0]), "annotated_classes": np.zeros(3, np.uint8)})
    assert none["annotated_classes"].tolist() == [0, 0, 0] and none["dropped_classes"].tolist() == [0, 0, 0]


def test_keep_at_least_one_changes_nothing_else():
    data = {"label": _label([0, 1, 2, 3]), "annotated_classes": np.ones(3, np.uint8)}
    kept = SimulateMissingAnnotationsd(num_foreground_classes=3, missing_rate=0.0, keep_at_least_one=True)(data)
    assert kept["label"].tolist() == [[0, 1, 2, 3]] and kept["dropped_classes"].tolist() == [0, 0, 0]
    # where some class survives the draw anyway, the result is the default one
    for i in range(50):
        case = {"label": _label([0, 1, 2, 3], f"case_{i:03d}.nii.gz"), "annotated_classes": np.ones(3, np.uint8)}
        default = SimulateMissingAnnotationsd(num_foreground_classes=3, missing_rate=0.5, seed=1)(case)
        keeping = SimulateMissingAnnotationsd(
            num_foreground_classes=3, missing_rate=0.5, seed=1, keep_at_least_one=True
        )(case)
        assert keeping["annotated_classes"].sum() >= 1
        if default["annotated_classes"].sum():
            assert keeping["dropped_classes"].tolist() == default["dropped_classes"].tolist()


def test_missing_rate_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="missing_rate"):
        SimulateMissingAnnotationsd(num_foreground_classes=3, missing_rate=1.5)


def test_probabilities_to_label_map_thresholds_then_argmax():
    probabilities = torch.tensor([[[0.2, 0.7, 0.6, 0.5]], [[0.3, 0.6, 0.9, 0.1]]])
    assert ProbabilitiesToLabelMap(threshold=0.5)(probabilities).tolist() == [[[0, 1, 2, 1]]]


def test_label_map_to_multilabel_drops_background():
    out = LabelMapToMultiLabel(num_foreground_classes=3)(torch.tensor([[0, 3, 1]]))
    assert out.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_pseudo_labels_are_a_separate_weighted_source():
    label = torch.tensor([[0, 0, 0, 2, 0, 1]])
    pseudo = torch.tensor([[1, 3, 0, 1, 2, 0]])  # voxel 3 overlaps a real organ: the real label wins
    stack = SmileTarget(num_foreground_classes=3, pseudo_weight=0.5)(label, np.array([1, 1, 0]), pseudo)
    targets, weights = stack[:3], stack[3:]
    # classes 1 and 2 are annotated: real labels only, weight 1 everywhere (pseudo class 2 at voxel 4 ignored)
    assert targets[:2].tolist() == [[0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]]
    assert weights[:2].tolist() == [[1] * 6, [1] * 6]
    # class 3 is not: pseudo positive at voxel 1, pseudo negatives at 0 and 4 (weight 0.5), real organs weight 1
    assert targets[2].tolist() == [0, 1, 0, 0, 0, 0]
    assert weights[2].tolist() == [0.5, 0.5, 0, 1, 0.5, 1]


def test_smile_targetd_consumes_the_pseudo_label_key():
    data = {
        "label": torch.tensor([[0, 1]]),
        "annotated_classes": np.array([1, 0]),
        "pseudo_label": torch.tensor([[2, 0]]),
    }
    out = SmileTargetd("label", num_foreground_classes=2)(data)
    assert "pseudo_label" not in out
    assert out["label"].tolist() == [[0, 1], [1, 0], [1, 1], [1, 1]]
    with pytest.raises(ValueError, match="pseudo_weight"):
        SmileTarget(num_foreground_classes=2, pseudo_weight=2.0)
