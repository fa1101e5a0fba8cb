import csv
import json

import pytest
import torch

from common.smile.relabeling_report import case_record, round_report, write_round_report, write_summary

CLASSES = ["liver", "kidney", "spleen", "pancreas"]


def _record(case, relabelled, voxels, counts, evaluated):
    return case_record(
        case,
        f"round_1/pseudo_labels/{case}",
        CLASSES,
        torch.tensor(relabelled, dtype=torch.bool),
        torch.tensor(voxels),
        torch.tensor(counts),
        torch.tensor(evaluated, dtype=torch.bool),
    )


def _records():
    # case_b (listed first) relabels liver (no truth known) and kidney (truth known);
    # case_a relabels kidney and spleen, both with known truth; spleen got no pseudo-label
    case_b = _record(
        "case_b.nii.gz",
        relabelled=[1, 1, 0, 0],
        voxels=[3, 5, 0, 0],
        counts=[[0, 0, 0], [4, 1, 2], [0, 0, 0], [0, 0, 0]],
        evaluated=[0, 1, 0, 0],
    )
    case_a = _record(
        "case_a.nii.gz",
        relabelled=[0, 1, 1, 0],
        voxels=[0, 3, 0, 0],
        counts=[[0, 0, 0], [2, 1, 1], [0, 0, 4], [0, 0, 0]],
        evaluated=[0, 1, 1, 0],
    )
    return [case_b, case_a]


# ------------------------------------------------------------------------------------------------------- case_record


def test_case_record_keeps_relabelled_classes_and_scores_only_evaluated_ones():
    record = case_record(
        "case_7.nii.gz",
        "round_2/pseudo_labels/case_7.nii.gz",
        ["liver", "kidney", "spleen"],
        relabelled=torch.tensor([False, True, True]),
        voxels=torch.tensor([5, 7, 0]),
        counts=torch.tensor([[1, 2, 3], [4, 5, 6], [0, 0, 9]]),
        evaluated=torch.tensor([True, True, False]),
    )
    assert record == {
        "case": "case_7.nii.gz",
        "pseudo_label": "round_2/pseudo_labels/case_7.nii.gz",
        "classes": {"kidney": {"voxels": 7, "tp": 4, "fp": 5, "fn": 6}, "spleen": {"voxels": 0}},
    }
    # plain ints, so the record is JSON-serialisable
    assert all(type(v) is int for v in record["classes"]["kidney"].values())
    json.dumps(record)


def test_case_record_without_relabelled_class():
    record = case_record(
        "full.nii.gz", None, ["liver"], torch.tensor([False]), torch.zeros(1), torch.zeros(1, 3), torch.tensor([False])
    )
    assert record == {"case": "full.nii.gz", "pseudo_label": None, "classes": {}}


# ------------------------------------------------------------------------------------------------------ round_report


def test_round_report_totals_precision_and_recall():
    report = round_report(1, 0.6, "confidence", CLASSES, torch.tensor([1.0, 0.5, 0.25, 2.0]), _records())
    assert report["round"] == 1 and report["gamma"] == 0.6 and report["selection"] == "confidence"
    assert report["class_rates"] == {"liver": 1.0, "kidney": 0.5, "spleen": 0.25, "pancreas": 2.0}
    assert report["classes"] == {
        # relabelled in case_b only, truth unknown: no tp/fp/fn, no precision
        "liver": {"cases_relabelled": 1, "fraction": 0.6, "voxels": 3, "cases_with_truth": 0},
        # TP 4 + 2 = 6, FP 1 + 1 = 2, FN 2 + 1 = 3: precision 6/8, recall 6/9
        "kidney": {
            "cases_relabelled": 2,
            "fraction": 0.3,
            "voxels": 8,
            "cases_with_truth": 2,
            "tp": 6,
            "fp": 2,
            "fn": 3,
            "precision": 0.75,
            "recall": 0.666667,
        },
        # nothing selected: precision undefined (None), recall 0
        "spleen": {
            "cases_relabelled": 1,
            "fraction": 0.15,
            "voxels": 0,
            "cases_with_truth": 1,
            "tp": 0,
            "fp": 0,
            "fn": 4,
            "precision": None,
            "recall": 0.0,
        },
        # never relabelled; gamma * rate = 1.2 is clipped to 1
        "pancreas": {"cases_relabelled": 0, "fraction": 1.0, "voxels": 0, "cases_with_truth": 0},
    }
    assert [r["case"] for r in report["cases"]] == ["case_a.nii.gz", "case_b.nii.gz"]
    json.dumps(report)


def test_round_report_undefined_recall_is_none():
    # a removed organ that is absent from the volume and got no pseudo-label: 0/0 for both
    record = _record("c.nii.gz", [1, 0, 0, 0], [0, 0, 0, 0], [[0, 0, 0]] * 4, [1, 0, 0, 0])
    liver = round_report(1, 0.5, "confidence", CLASSES, torch.ones(4), [record])["classes"]["liver"]
    assert liver["precision"] is None and liver["recall"] is None and liver["tp"] == 0


def test_round_report_rounds_gamma_and_fractions():
    report = round_report(1, 1 / 3, "uncertainty", CLASSES, torch.tensor([1.0, 0.5, 0.1, 1.0]), [])
    assert report["gamma"] == 0.333333
    assert [report["classes"][name]["fraction"] for name in CLASSES] == [0.333333, 0.166667, 0.033333, 0.333333]
    assert report["cases"] == []


# ------------------------------------------------------------------------------------------------------------ writing


def _read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_write_round_report_writes_json_and_csv(tmp_path):
    report = round_report(1, 0.6, "confidence", CLASSES, torch.tensor([1.0, 0.5, 0.25, 2.0]), _records())
    folder = tmp_path / "round_1"  # not created yet: no case may have needed a pseudo-label file
    path = write_round_report(report, folder)
    assert path == folder / "pseudo_labels.json"
    assert json.loads(path.read_text()) == report
    rows = _read_csv(folder / "pseudo_labels.csv")
    assert rows == [
        {"case": "case_a.nii.gz", "class": "kidney", "voxels": "3", "tp": "2", "fp": "1", "fn": "1"},
        {"case": "case_a.nii.gz", "class": "spleen", "voxels": "0", "tp": "0", "fp": "0", "fn": "4"},
        {"case": "case_b.nii.gz", "class": "liver", "voxels": "3", "tp": "", "fp": "", "fn": ""},
        {"case": "case_b.nii.gz", "class": "kidney", "voxels": "5", "tp": "4", "fp": "1", "fn": "2"},
    ]
    assert sorted(p.name for p in folder.iterdir()) == ["pseudo_labels.csv", "pseudo_labels.json"]  # no temporaries


def test_write_summary_gathers_rounds(tmp_path):
    classes = ["liver", "kidney"]
    (tmp_path / "round_0").mkdir()
    (tmp_path / "round_0" / "validation.json").write_text(
        json.dumps({"val_mean_dice": 0.75, "val_dice_liver": 0.9, "val_dice_kidney": 0.6})
    )
    record = case_record(
        "a.nii.gz",
        "round_1/pseudo_labels/a.nii.gz",
        classes,
        torch.tensor([False, True]),
        torch.tensor([0, 10]),
        torch.tensor([[0, 0, 0], [6, 2, 4]]),
        torch.tensor([False, True]),
    )
    write_round_report(
        round_report(1, 0.45, "confidence", classes, torch.tensor([1.0, 0.5]), [record]), tmp_path / "round_1"
    )
    (tmp_path / "round_1" / "validation.json").write_text(json.dumps({"val_dice_liver": 0.91, "val_dice_kidney": 0.7}))
    # round 2 has neither file yet: no row

    path = write_summary(tmp_path, classes, num_rounds=2)
    assert path == tmp_path / "rounds.csv"
    with open(path, newline="") as stream:
        header = next(csv.reader(stream))
    assert header == [
        "round",
        "class",
        "gamma",
        "fraction",
        "cases_relabelled",
        "voxels",
        "precision",
        "recall",
        "val_dice",
    ]
    rows = _read_csv(path)
    assert rows == [
        {
            "round": "0",
            "class": "liver",
            "gamma": "",
            "fraction": "",
            "cases_relabelled": "",
            "voxels": "",
            "precision": "",
            "recall": "",
            "val_dice": "0.9",
        },
        {
            "round": "0",
            "class": "kidney",
            "gamma": "",
            "fraction": "",
            "cases_relabelled": "",
            "voxels": "",
            "precision": "",
            "recall": "",
            "val_dice": "0.6",
        },
        {
            "round": "1",
            "class": "liver",
            "gamma": "0.45",
            "fraction": "0.45",
            "cases_relabelled": "0",
            "voxels": "0",
            "precision": "",
            "recall": "",
            "val_dice": "0.91",
        },
        {
            "round": "1",
            "class": "kidney",
            "gamma": "0.45",
            "fraction": "0.225",
            "cases_relabelled": "1",
            "voxels": "10",
            "precision": "0.75",
            "recall": "0.6",
            "val_dice": "0.7",
        },
    ]


def test_write_summary_round_with_relabeling_but_no_validation_yet(tmp_path):
    record = _record("a.nii.gz", [0, 1, 0, 0], [0, 4, 0, 0], [[0, 0, 0], [3, 1, 0], [0, 0, 0], [0, 0, 0]], [0, 1, 0, 0])
    write_round_report(round_report(1, 0.5, "confidence", CLASSES, torch.ones(4), [record]), tmp_path / "round_1")
    rows = _read_csv(write_summary(tmp_path, CLASSES, num_rounds=1))
    assert [(r["round"], r["class"], r["voxels"], r["val_dice"]) for r in rows] == [
        ("1", "liver", "0", ""),
        ("1", "kidney", "4", ""),
        ("1", "spleen", "0", ""),
        ("1", "pancreas", "0", ""),
    ]
    assert rows[1]["precision"] == "0.75" and rows[1]["recall"] == "1.0"


def test_write_summary_without_any_round_writes_only_the_header(tmp_path):
    path = write_summary(tmp_path, CLASSES, num_rounds=2)
    assert path.read_text().splitlines() == [
        "round,class,gamma,fraction,cases_relabelled,voxels,precision,recall,val_dice"
    ]


@pytest.mark.parametrize("num_rounds", [1, 3])
def test_write_summary_reads_only_rounds_up_to_num_rounds(tmp_path, num_rounds):
    for t in (0, 3):
        (tmp_path / f"round_{t}").mkdir()
        (tmp_path / f"round_{t}" / "validation.json").write_text(json.dumps({"val_dice_liver": t / 10}))
    rows = _read_csv(write_summary(tmp_path, ["liver"], num_rounds=num_rounds))
    assert [r["round"] for r in rows] == (["0"] if num_rounds == 1 else ["0", "3"])
