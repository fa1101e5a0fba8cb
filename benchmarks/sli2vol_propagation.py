"""Sli2Vol propagation from the largest slice vs its ablations and baselines, and batched vs per-step encoding.

Dice: every method runs through the bundle's ``configs/evaluate.json`` with the real ``monai.bundle`` CLI on a
labelled datalist: the seed is each volume's ground-truth slice with the largest label area, the whole-volume
Dice is computed per case. Methods differ only by overrides (the model, the verification switch), so the
stopping rule, verification and clean-up are shared:

- ``sli2vol``: the bundle's weights with verification; ``sli2vol_no_verification``: without it;
- ``copy_seed``: the seed mask copied to every slice; ``copy_verified``: copied slice to slice with verification;
- ``optical_flow``: TV-L1 optical flow between neighbouring slices warps the mask (scikit-image), without and
  with verification (``optical_flow_verified``).

Speed: in one process, seconds per volume and propagated slices per second for the default propagation (every
slice encoded once, in batches) and for re-encoding the slice pair at every step, on the first volumes.

Prints Markdown tables and writes them with the raw numbers to ``<output_dir>/results.{md,json}``; a finished
method keeps its per-case CSV and is not run again.

Example (the README table; the split holds out 10 of the 40 LA volumes from training)::

    python benchmarks/sli2vol_propagation.py split --datalist ../shared/data/la_heart/datalist.json \\
        --output work/la/datalist_split.json
    python benchmarks/sli2vol_propagation.py run --dataset_dir ../shared/data/la_heart \\
        --datalist work/la/datalist_split.json --output_dir work/bench_sli2vol
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

from common.data.datalist import load_datalist
from common.data.json_io import write_json
from common.handlers.checkpoint import load_weights
from common.propagation import SlicePropagator, annotated_slices

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "sli2vol"
COPY = ["--network_def", "{'_target_': 'common.propagation.CopyPropagation'}", "--weights_handlers", "[]"]
FLOW = ["--network_def", "{'_target_': 'common.propagation.OpticalFlowPropagation'}", "--weights_handlers", "[]"]
METHODS = {
    "sli2vol": [],
    "sli2vol_no_verification": ["--verification", "false"],
    "copy_seed": [*COPY, "--verification", "false"],
    "copy_verified": COPY,
    "optical_flow": [*FLOW, "--verification", "false"],
    "optical_flow_verified": FLOW,
}
LABELS = {
    "sli2vol": "Sli2Vol (verification)",
    "sli2vol_no_verification": "Sli2Vol, no verification",
    "copy_seed": "copy the seed mask to every slice",
    "copy_verified": "copy slice to slice + verification",
    "optical_flow": "optical flow (TV-L1)",
    "optical_flow_verified": "optical flow (TV-L1) + verification",
}


def write_split(datalist: Path, output: Path, num_holdout: int, num_validation: int, seed: int) -> None:
    """Hold out ``num_holdout`` labelled cases ("test", the benchmark's); of the rest, ``num_validation`` labelled
    cases validate during training ("validation") and the others' images, without labels, train ("training")."""
    entries = sorted(json.loads(datalist.read_text())["training"], key=lambda entry: entry["image"])
    random.Random(seed).shuffle(entries)
    holdout = sorted(entries[:num_holdout], key=lambda entry: entry["image"])
    validation = sorted(entries[num_holdout : num_holdout + num_validation], key=lambda entry: entry["image"])
    rest = entries[num_holdout + num_validation :]
    training = sorted(({"image": entry["image"]} for entry in rest), key=lambda entry: entry["image"])
    write_json({"training": training, "validation": validation, "test": holdout}, output)
    print(f"{output}: {len(training)} training images, {len(validation)} validation and {len(holdout)} test volumes")


def evaluate(method: str, args: argparse.Namespace) -> list[float]:
    """Whole-volume Dice per case of one method through the bundle's evaluate.json (kept once computed)."""
    run_dir = args.output_dir / method
    per_case = run_dir / "val_mean_dice_raw.csv"
    if not per_case.is_file():
        command = [
            sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "evaluate.json"),
            "--bundle_root", str(BUNDLE), "--dataset_dir", str(args.dataset_dir), "--datalist", str(args.datalist),
            "--datalist_key", args.datalist_key, "--ckpt_path", str(args.ckpt_path), "--output_dir", str(run_dir),
            "--modality", args.modality, *METHODS[method],
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        print(f"{method}: evaluated in {time.perf_counter() - started:.0f} s", flush=True)
    with per_case.open() as handle:
        return [float(row["mean"]) for row in csv.DictReader(handle)]


def measure_speed(args: argparse.Namespace) -> dict:
    """Seconds per volume and propagated slices per second: batched single encoding vs re-encoding every step.

    The volumes go through evaluate.json's own preprocessing (checks, largest-slice seed, normalisation).
    """
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "evaluate.json"))
    parser.update({"modality": args.modality, "device": torch.device("cpu")})
    network = parser.get_parsed_content("network_def")
    load_weights(network, args.ckpt_path)
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    axis = parser.get_parsed_content("axis")
    cases = load_datalist(args.datalist, args.dataset_dir, args.datalist_key)[: args.speed_volumes]
    timings = {"batched": [0.0, 0], "reencode_each_step": [0.0, 0]}
    for case in cases:
        data = preprocessing(case)
        image, seed, index = data["image"][0].as_tensor(), data["seed"][0].as_tensor(), data["seed_index"]
        masks = {}
        for mode, reencode in (("batched", False), ("reencode_each_step", True)):
            started = time.perf_counter()
            masks[mode] = SlicePropagator(axis=axis, reencode_each_step=reencode)(network, image, seed, index)
            timings[mode][0] += time.perf_counter() - started
            timings[mode][1] += len(annotated_slices(masks[mode], axis)) - 1
        if not torch.equal(masks["batched"], masks["reencode_each_step"]):
            raise RuntimeError(f"{case['image']}: batched and per-step encoding disagree")
    return {
        mode: {"seconds_per_volume": seconds / len(cases), "slices_per_second": slices / seconds}
        for mode, (seconds, slices) in timings.items()
    } | {"volumes": len(cases), "threads": torch.get_num_threads(), "device": "cpu"}


def report(dice: dict[str, list[float]], speed: dict | None, args: argparse.Namespace) -> str:
    lines = [
        f"Whole-volume Dice, seed = largest ground-truth slice, {len(next(iter(dice.values())))} volumes "
        f"('{args.datalist_key}' of {args.datalist.name})",
        "",
        "| method | mean ± std | min | max |",
        "|---|---|---|---|",
    ]
    for method, values in dice.items():
        spread = f"{np.mean(values):.3f} ± {np.std(values):.3f}"
        lines.append(f"| {LABELS[method]} | {spread} | {min(values):.3f} | {max(values):.3f} |")
    if speed:
        lines += [
            "",
            f"Propagation speed, CPU, {speed['threads']} threads, {speed['volumes']} volumes",
            "",
            "| encoding | s / volume | slices / s |",
            "|---|---|---|",
        ]
        for mode in ("batched", "reencode_each_step"):
            lines.append(
                f"| {mode} | {speed[mode]['seconds_per_volume']:.1f} | {speed[mode]['slices_per_second']:.2f} |"
            )
        ratio = speed["reencode_each_step"]["seconds_per_volume"] / speed["batched"]["seconds_per_volume"]
        lines.append(f"\nbatched encoding is {ratio:.2f}x faster than re-encoding at every step")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="write the training / held-out split")
    split.add_argument("--datalist", type=Path, required=True)
    split.add_argument("--output", type=Path, required=True)
    split.add_argument("--num_holdout", type=int, default=10)
    split.add_argument("--num_validation", type=int, default=3)
    split.add_argument("--seed", type=int, default=0)
    run = commands.add_parser("run", help="evaluate the methods and measure speed")
    run.add_argument("--dataset_dir", type=Path, required=True)
    run.add_argument("--datalist", type=Path, required=True)
    run.add_argument("--datalist_key", default="test")
    run.add_argument("--ckpt_path", type=Path, default=BUNDLE / "models" / "model.pt")
    run.add_argument("--modality", default="MRI")
    run.add_argument("--output_dir", type=Path, default=REPO / "work" / "bench_sli2vol")
    run.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    run.add_argument("--speed_volumes", type=int, default=3, help="0 skips the speed measurement")
    args = parser.parse_args()
    if args.command == "split":
        write_split(args.datalist, args.output, args.num_holdout, args.num_validation, args.seed)
        return
    args.dataset_dir, args.datalist, args.ckpt_path = (
        p.absolute() for p in (args.dataset_dir, args.datalist, args.ckpt_path)
    )
    dice = {method: evaluate(method, args) for method in args.methods}
    speed = measure_speed(args) if args.speed_volumes > 0 else None
    table = report(dice, speed, args)
    print(table)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.md").write_text(table + "\n")
    write_json({"dice": dice, "speed": speed}, args.output_dir / "results.json")


if __name__ == "__main__":
    main()
