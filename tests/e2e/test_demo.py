"""`make demo` end to end, shrunk: every step of scripts/demo.py through the real CLI, outputs checked: the numbers
it prints are those of the files it wrote, and the Dice scores and pseudo-label precision and recall are computed
again here with numpy from the written masks and the ground truth."""

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.xnet.radiograph_io import read_radiograph
from tools.results import read_metrics_csv

REPO = Path(__file__).resolve().parents[2]
ORGANS = ("liver", "pancreas", "stomach")
MIN_XNET_F1 = 0.85  # the shipped XNet weights: macro F1 0.926 on these ten radiographs (seed 7)


def volume(path: Path) -> np.ndarray:
    return np.rint(np.asarray(nib.load(path).dataobj)).astype(int)


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, classes=(1, 2, 3)) -> list[float]:
    """Dice of each class; NaN where the truth lacks the class (MONAI's ``ignore_empty``)."""
    assert prediction.shape == truth.shape
    scores = []
    for k in classes:
        predicted, true = prediction == k, truth == k
        scores.append(2 * (predicted & true).sum() / (predicted.sum() + true.sum()) if true.any() else math.nan)
    return scores


def printed(pattern: str, stdout: str) -> list[tuple[str, ...]]:
    found = re.findall(pattern, stdout, flags=re.MULTILINE)
    assert found, f"the demo printed no line matching {pattern!r}"
    return found


def check_smile_dice(work: Path, stdout: str) -> None:
    """The printed Dice table is the evaluations' metrics.csv; SMILE's Dice is that of the written masks."""
    smile, smiler = (
        read_metrics_csv(work / "evaluation" / "metrics.csv"),
        read_metrics_csv(work / "smiler_evaluation" / "metrics.csv"),
    )
    rows = {name: (a, b) for name, a, b in printed(r"^  (liver|pancreas|stomach|mean)\s+(\S+)\s+(\S+)$", stdout)}
    assert sorted(rows) == sorted([*ORGANS, "mean"])
    for name in rows:
        key = "val_mean_dice" if name == "mean" else f"val_dice_{name}"
        assert rows[name] == (f"{smile[key]:.3f}", f"{smiler[key]:.3f}"), name
        assert 0.0 <= smile[key] <= 1.0 and 0.0 <= smiler[key] <= 1.0, name
    # step 4 segmented the test images with the weights step 3 evaluated: their Dice, computed here, is the evaluation's
    dataset = json.loads((work / "data" / "dataset.json").read_text())
    per_case = []
    for entry in dataset["test"]:
        mask = work / "predictions" / f"{Path(entry['image']).name.removesuffix('.nii.gz')}_seg.nii.gz"
        per_case.append(dice_per_class(volume(mask), volume(work / "data" / entry["label"])))
    per_case = np.array(per_case)
    for index, organ in enumerate(ORGANS):
        assert smile[f"val_dice_{organ}"] == pytest.approx(np.nanmean(per_case[:, index]), abs=1e-5), organ
    assert smile["val_mean_dice"] == pytest.approx(np.nanmean(per_case), abs=1e-5)


def check_smiler_pseudo_labels(work: Path, stdout: str) -> None:
    """Each round's precision / recall in rounds.csv and on screen, from the written pseudo-label masks and the
    simulation's ground truth (the annotations it removed)."""
    truth = {
        Path(e["image"]).name: work / "data" / e["label"]
        for e in json.loads((work / "data" / "dataset.json").read_text())["training"]
    }
    lines = {(r, organ): (p, q) for r, organ, p, q in printed(r"^  round (\d+) (\w+)\s+(\S+) / (\S+)$", stdout)}
    rows = [row for row in csv.DictReader((work / "smiler" / "rounds.csv").open()) if row["precision"] or row["recall"]]
    assert rows and len(lines) == len(rows)
    for row in rows:
        report = json.loads((work / "smiler" / f"round_{row['round']}" / "pseudo_labels.json").read_text())
        k = ORGANS.index(row["class"]) + 1
        labelled = hits = missed = 0
        for record in report["cases"]:
            if row["class"] not in record["classes"]:
                continue  # this case kept its annotation of the organ
            pseudo, true = volume(work / "smiler" / record["pseudo_label"]) == k, volume(truth[record["case"]]) == k
            labelled, hits, missed = (
                labelled + pseudo.sum(),
                hits + (pseudo & true).sum(),
                missed + (~pseudo & true).sum(),
            )
        assert float(row["precision"]) == pytest.approx(hits / labelled, abs=1e-6), row
        assert float(row["recall"]) == pytest.approx(hits / (hits + missed), abs=1e-6), row
        assert lines[(row["round"], row["class"])] == (f"{float(row['precision']):.3f}", f"{float(row['recall']):.3f}")


def check_sli2vol_dice(work: Path, stdout: str) -> None:
    """Sli2Vol's per-case Dice (val_mean_dice_raw.csv), from its propagated masks; the mean is the one printed."""
    dataset = json.loads((work / "data" / "dataset.json").read_text())
    rows = list(csv.DictReader((work / "sli2vol" / "val_mean_dice_raw.csv").open()))
    assert [Path(row["filename"]).name for row in rows] == [Path(e["image"]).name for e in dataset["test"]]
    per_case = []
    for entry, row in zip(dataset["test"], rows, strict=True):
        mask = work / "sli2vol" / f"{Path(entry['image']).name.removesuffix('.nii.gz')}_propagated.nii.gz"
        scores = dice_per_class(volume(mask), volume(work / "data" / entry["label"]))
        written = [float(row[f"class{i}"]) for i in range(3)]
        np.testing.assert_allclose(written, scores, atol=1e-5, err_msg=entry["image"])
        per_case.append(scores)
    mean = read_metrics_csv(work / "sli2vol" / "metrics.csv")["val_mean_dice"]
    assert mean == pytest.approx(np.nanmean(per_case), abs=1e-5)
    (shown,) = printed(r"no CT training\): mean Dice (\S+)$", stdout)
    assert shown == f"{mean:.3f}"


def check_xnet_metrics(work: Path, stdout: str) -> None:
    """XNet's metrics.json: F1 and accuracy as its confusion matrices give them, over every pixel of the ten test
    labels; ECE as its reliability table gives it; the printed F1 and ECE are these."""
    metrics = json.loads((work / "xnet" / "metrics.json").read_text())
    labels = json.loads((work / "xray" / "dataset.json").read_text())["test"]
    pixels = sum(read_radiograph(work / "xray" / entry["label"]).array.size for entry in labels)
    assert metrics["num_images"] == len(labels) == 10 and metrics["num_pixels"] == pixels
    for variant in metrics["predictions"].values():
        confusion = np.asarray(variant["confusion_matrix"], dtype=float)
        assert confusion.sum() == pixels
        assert variant["accuracy"] == pytest.approx(np.trace(confusion) / pixels)
        truth, predicted, hits = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
        f1 = [2 * tp / (t + p) for tp, t, p in zip(hits, truth, predicted, strict=True) if t > 0]
        assert variant["f1_macro"] == pytest.approx(np.mean(f1)) and 0.0 <= variant["f1_macro"] <= 1.0
    bins = [row for row in metrics["probabilities"]["reliability"] if row["count"] > 0]
    assert sum(row["count"] for row in bins) == pixels
    ece = sum(row["count"] / pixels * abs(row["accuracy"] - row["confidence"]) for row in bins)
    assert metrics["probabilities"]["ece"] == pytest.approx(ece) and 0.0 <= ece <= 1.0
    raw, processed = metrics["predictions"]["raw"]["f1_macro"], metrics["predictions"]["postprocessed"]["f1_macro"]
    assert raw >= MIN_XNET_F1 and processed >= MIN_XNET_F1
    (shown,) = printed(r"macro F1 (\S+) raw, (\S+) post-processed; ECE (\S+)$", stdout)
    assert shown == (f"{raw:.3f}", f"{processed:.3f}", f"{metrics['probabilities']['ece']:.3f}")


def check_demo_numbers(work: Path, stdout: str) -> None:
    check_smile_dice(work, stdout)
    check_smiler_pseudo_labels(work, stdout)
    check_sli2vol_dice(work, stdout)
    check_xnet_metrics(work, stdout)


def test_demo_runs_every_step_and_reports_dice(tmp_path):
    work = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/demo.py",
            "--work_dir",
            str(work),
            "--num_cases",
            "5",
            "--epochs",
            "1",
            "--smiler_rounds",
            "1",
            "--round_epochs",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for organ in ("liver", "pancreas", "stomach", "mean"):
        assert f"  {organ}" in result.stdout
    assert "SMILEr pseudo-labels per round" in result.stdout
    assert (work / "models" / "model.pt").is_file() and (work / "models" / "model.ts").is_file()
    assert (work / "smiler_models" / "model.pt").is_file()
    assert (work / "smiler" / "round_1" / "pseudo_labels.json").is_file()
    assert len(list((work / "predictions").glob("*_seg.nii.gz"))) == 1
    assert "XNet on 10 generated radiographs (shipped weights): macro F1" in result.stdout
    assert (work / "xnet" / "reliability_diagram.png").is_file()
    assert not list(work.rglob(".partial-*"))
    check_demo_numbers(work, result.stdout)
