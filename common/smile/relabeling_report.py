"""Reports of a self-relabeling run: what each round labelled, how right it was, and how each round's model scored.

Per round t >= 1, ``round_<t>/pseudo_labels.json`` and ``.csv`` list, per case and per class, the voxels
relabelled and, for a class whose delineation a simulation removed (so the truth is known), TP, FP, FN,
precision TP/(TP+FP) and recall TP/(TP+FN). ``round_<t>/validation.json`` holds the validation metrics of the
model trained in round t. ``rounds.csv`` gathers one row per round and class from those files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from common.data.atomic import atomic_target
from common.data.json_io import write_json
from common.smile.pseudo_label_metrics import precision_recall

__all__ = ["case_record", "round_report", "write_round_report", "write_summary"]

PSEUDO_LABEL_REPORT = "pseudo_labels.json"
VALIDATION_REPORT = "validation.json"
SUMMARY = "rounds.csv"


def case_record(
    case: str,
    pseudo_label: str | None,
    class_names: Sequence[str],
    relabelled: torch.Tensor,
    voxels: torch.Tensor,
    counts: torch.Tensor,
    evaluated: torch.Tensor,
) -> dict:
    """One case's line of a round report.

    Args:
        case: the image file name.
        pseudo_label: the pseudo-label file, relative to the run folder; None when no class was relabelled.
        class_names: the K class names.
        relabelled: (K,) bool, the classes missing from the case's annotation (relabelled this round).
        voxels: (K,) voxels labelled per class.
        counts: (K, 3) TP, FP, FN per class against the known truth.
        evaluated: (K,) bool, the classes whose truth is known (removed by a simulation).
    """
    classes = {}
    for k, name in enumerate(class_names):
        if not relabelled[k]:
            continue
        entry = {"voxels": int(voxels[k])}
        if evaluated[k]:
            entry.update(zip(("tp", "fp", "fn"), (int(v) for v in counts[k]), strict=True))
        classes[name] = entry
    return {"case": case, "pseudo_label": pseudo_label, "classes": classes}


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def round_report(
    round_index: int,
    gamma: float,
    selection: str,
    class_names: Sequence[str],
    class_rates: torch.Tensor,
    records: Sequence[dict],
) -> dict:
    """A round's report: settings, per-class totals (with precision and recall where the truth is known), cases."""
    totals = {}
    for k, name in enumerate(class_names):
        lines = [r["classes"][name] for r in records if name in r["classes"]]
        scored = [line for line in lines if "tp" in line]
        entry = {
            "cases_relabelled": len(lines),
            "fraction": round(min(gamma * float(class_rates[k]), 1.0), 6),
            "voxels": sum(line["voxels"] for line in lines),
            "cases_with_truth": len(scored),
        }
        if scored:
            counts = torch.tensor([[sum(line[c] for line in scored) for c in ("tp", "fp", "fn")]])
            precision, recall = precision_recall(counts)
            entry.update(zip(("tp", "fp", "fn"), counts[0].tolist(), strict=True))
            entry.update(precision=_nan_to_none(precision[0]), recall=_nan_to_none(recall[0]))
        totals[name] = entry
    return {
        "round": round_index,
        "gamma": round(gamma, 6),
        "selection": selection,
        "class_rates": {name: round(float(rate), 6) for name, rate in zip(class_names, class_rates, strict=True)},
        "classes": totals,
        "cases": sorted(records, key=lambda r: r["case"]),
    }


def _csv_text(header: Sequence[str], rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_text(text: str, path: Path) -> None:
    with atomic_target(path) as temporary:
        temporary.write_text(text)


def write_round_report(report: dict, folder: str | os.PathLike) -> Path:
    """``pseudo_labels.csv`` (one row per case and relabelled class), then ``pseudo_labels.json``, atomically.

    The JSON is written last: its presence marks the round's relabeling as complete.
    """
    folder = Path(folder)
    header = ["case", "class", "voxels", "tp", "fp", "fn"]
    rows = [
        {"case": record["case"], "class": name, **line}
        for record in report["cases"]
        for name, line in record["classes"].items()
    ]
    _write_text(_csv_text(header, rows), folder / "pseudo_labels.csv")
    return write_json(report, folder / PSEUDO_LABEL_REPORT)


def write_summary(run_dir: str | os.PathLike, class_names: Sequence[str], num_rounds: int) -> Path:
    """``rounds.csv``: per round and class, the pseudo-labels added and the round model's validation Dice."""
    run_dir = Path(run_dir)
    header = ["round", "class", "gamma", "fraction", "cases_relabelled", "voxels", "precision", "recall", "val_dice"]
    rows = []
    for round_index in range(num_rounds + 1):
        folder = run_dir / f"round_{round_index}"
        relabeling = _read(folder / PSEUDO_LABEL_REPORT)
        validation = _read(folder / VALIDATION_REPORT)
        if not relabeling and not validation:
            continue
        for name in class_names:
            line = relabeling.get("classes", {}).get(name, {})
            rows.append(
                {
                    "round": round_index,
                    "class": name,
                    "gamma": relabeling.get("gamma"),
                    **line,
                    "val_dice": validation.get(f"val_dice_{name}"),
                }
            )
    path = run_dir / SUMMARY
    _write_text(_csv_text(header, rows), path)
    return path


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
