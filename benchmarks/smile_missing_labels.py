"""SMILE vs the softmax baseline under simulated missing annotations, and the bundle's training throughput.

For each missing rate alpha (the probability that an organ's delineation is removed from a training case), the
SMILE bundle and its softmax baseline overlay are trained through the real ``monai.bundle`` CLI on generated
abdominal CT, then evaluated on the held-out test split (full labels). Prints one Markdown table of test Dice per
organ (mean +- std over test cases) and writes it, with the raw numbers, to ``<output_dir>/results.{md,json}``.

It also measures training throughput of the bundle's loop (SupervisedTrainer, ThreadDataLoader, handlers) against
a hand-written PyTorch loop on the same network, loss, optimizer and cached dataset, in the same process.

Runs are resumable: a finished (alpha, method, seed) run keeps its ``test_dice.json`` and is not repeated.

Example (the README table: about 4 minutes per seed on one H100 with --jobs 8; many hours on 2 CPU cores)::

    python benchmarks/smile_missing_labels.py --output_dir work/bench_smile --epochs 200 --seeds 0 1 2 --jobs 8
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader
from monai.utils import set_determinism
from tqdm import tqdm

from tools.bundle_command import bundle_command
from tools.synthetic_ct import generate_synthetic_ct

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "smile"
CONFIGS = {
    "smile": ["configs/train.json"],
    "baseline": ["configs/train.json", "configs/train_baseline.json"],
}
# evaluation runs what inference runs (inference.json, plus the baseline's overlay), with the evaluate.json overlay
EVALUATION_CONFIGS = {
    "smile": ["configs/inference.json", "configs/evaluate.json"],
    "baseline": ["configs/inference.json", "configs/inference_baseline.json", "configs/evaluate.json"],
}
ORGANS = ("liver", "pancreas", "stomach")


def train_and_evaluate(method: str, alpha: float, dataset: Path, run_dir: Path, seed: int, args) -> dict:
    """Train one configuration through the CLI and evaluate it on the test split; returns Dice mean/std per organ.

    The result is kept in ``run_dir/test_dice.json``; a run that already has it is not repeated.
    """
    done = run_dir / "test_dice.json"
    if done.is_file():
        return json.loads(done.read_text())
    locations = [
        "--dataset_dir", str(dataset), "--ckpt_dir", str(run_dir / "models"), "--output_dir", str(run_dir / "eval"),
    ]  # fmt: skip
    training = [
        "--missing_rate", str(alpha), "--seed", str(seed), "--num_workers", "0", "--epochs", str(args.epochs),
        "--val_interval", str(args.val_interval), *args.bundle_args,
    ]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "log.txt").open("w") as log:
        # evaluation takes only the ids inference.json has: the data, the weights and the output folder
        for config, overrides in ((CONFIGS[method], [*locations, *training]), (EVALUATION_CONFIGS[method], locations)):
            command = bundle_command([BUNDLE / f for f in config], bundle_root=BUNDLE, overrides=overrides)
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    dice = read_test_dice(run_dir / "eval" / "val_mean_dice_summary.csv")
    done.write_text(json.dumps(dice, indent=4) + "\n")
    return dice


def read_test_dice(summary_csv: Path) -> dict:
    """{organ: (mean, std) over test cases} from MetricsSaver's summary (class0.. in organ order)."""
    rows = {row["class"]: row for row in csv.DictReader(summary_csv.open())}
    names = {f"class{i}": organ for i, organ in enumerate(ORGANS)} | {"mean": "mean"}
    return {organ: (float(rows[key]["mean"]), float(rows[key]["std"])) for key, organ in names.items()}


def accuracy_table(results: dict) -> str:
    """Markdown table: per (alpha, method), the test Dice averaged over cases, then mean ± std over seeds."""
    lines = [
        "| missing rate α | method | liver | pancreas | stomach | mean |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for alpha, method in sorted({(alpha, method) for alpha, method, _ in results}):
        per_seed = [dice for (a, m, _), dice in results.items() if (a, m) == (alpha, method)]
        cells = []
        for key in (*ORGANS, "mean"):
            values = np.array([dice[key][0] for dice in per_seed])
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) > 1 else f"{values[0]:.3f}")
        lines.append(f"| {alpha:.1f} | {method} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _parse_train_config(dataset: Path, run_dir: Path, epochs: int) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(BUNDLE), "dataset_dir": str(dataset), "ckpt_dir": str(run_dir / "models"),
            "output_dir": str(run_dir / "eval"), "epochs": epochs, "val_interval": epochs + 1, "num_workers": 0,
            "resume": False,
        }
    )  # fmt: skip
    return parser


def measure_throughput(dataset: Path, run_dir: Path, epochs: int, seed: int) -> dict:
    """Training patches per second: the bundle's trainer vs a hand-written loop, same model, loss and data."""
    set_determinism(seed)
    parser = _parse_train_config(dataset, run_dir, epochs)
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()  # warm-up: caches the dataset, first CUDA kernels
    trainer.state.max_epochs += epochs
    start = time.perf_counter()
    trainer.run()
    bundle_seconds = time.perf_counter() - start
    patches = epochs * len(trainer.data_loader) * parser["batch_size"] * parser["patches_per_volume"]

    set_determinism(seed)
    hand = _parse_train_config(dataset, run_dir, epochs)
    device = hand.get_parsed_content("device")
    network = hand.get_parsed_content("network")
    loss_function = hand.get_parsed_content("loss")
    optimizer = hand.get_parsed_content("optimizer")
    loader = DataLoader(parser.get_parsed_content("train#dataset"), batch_size=hand["batch_size"], shuffle=True)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def one_epoch() -> None:
        network.train()
        for batch in loader:
            image, target = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=False)
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_function(network(image), target)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()

    one_epoch()  # warm-up
    start = time.perf_counter()
    for _ in range(epochs):
        one_epoch()
    hand_seconds = time.perf_counter() - start
    return {
        "device": str(device),
        "patches": patches,
        "bundle_patches_per_s": patches / bundle_seconds,
        "hand_patches_per_s": patches / hand_seconds,
        "bundle_to_hand_ratio": hand_seconds / bundle_seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=REPO / "work" / "bench_smile")
    parser.add_argument("--num_cases", type=int, default=40)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 40))
    parser.add_argument("--alphas", type=float, nargs="+", default=(0.0, 0.5, 0.7, 0.9))
    parser.add_argument("--methods", nargs="+", default=("smile", "baseline"), choices=tuple(CONFIGS))
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--val_interval", type=int, default=10)
    parser.add_argument("--throughput_epochs", type=int, default=3, help="0 skips the throughput comparison")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at once")
    parser.add_argument(
        "--bundle_args", type=shlex.split, default=[], help="extra training overrides, quoted: '--batch_dice true'"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=(0,), help="data, simulation and training seeds")
    args = parser.parse_args(argv)

    runs = []
    for seed in args.seeds:
        dataset = args.output_dir / f"seed_{seed}" / "data"
        generate_synthetic_ct(dataset, num_cases=args.num_cases, shape=tuple(args.shape), seed=seed)
        runs += [(alpha, method, seed) for alpha in args.alphas for method in args.methods]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            (alpha, method, seed): pool.submit(
                train_and_evaluate, method, alpha, args.output_dir / f"seed_{seed}" / "data",
                args.output_dir / f"seed_{seed}" / f"{method}_a{alpha}", seed, args,
            )
            for alpha, method, seed in runs
        }  # fmt: skip
        for _ in tqdm(as_completed(futures.values()), total=len(futures), desc="trainings", unit="run", disable=None):
            pass
        results = {run: future.result() for run, future in futures.items()}
    dataset = args.output_dir / f"seed_{args.seeds[0]}" / "data"
    num_test = len(json.loads((dataset / "dataset.json").read_text())["test"])
    seeds_text = f"mean ± std over seeds {list(args.seeds)}" if len(args.seeds) > 1 else f"seed {args.seeds[0]}"
    report = [
        f"Test Dice per organ (mean over {num_test} test cases; {seeds_text}), {args.epochs} epochs, "
        f"{args.num_cases} generated cases of {tuple(args.shape)} voxels, device "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}, {time.perf_counter() - started:.0f} s:",
        "",
        accuracy_table(results),
    ]
    throughput = None
    if args.throughput_epochs > 0:
        throughput = measure_throughput(dataset, args.output_dir / "throughput", args.throughput_epochs, args.seeds[0])
        report += [
            "",
            f"Training throughput on {throughput['device']} over {throughput['patches']} patches: bundle loop "
            f"{throughput['bundle_patches_per_s']:.1f} patches/s, hand-written loop "
            f"{throughput['hand_patches_per_s']:.1f} patches/s, ratio bundle/hand "
            f"{throughput['bundle_to_hand_ratio']:.2f}.",
        ]
    text = "\n".join(report)
    print(text)
    (args.output_dir / "results.md").write_text(text + "\n")
    dice = {f"{method}@{alpha}@seed{seed}": value for (alpha, method, seed), value in results.items()}
    raw = {"args": {k: str(v) for k, v in vars(args).items()}, "throughput": throughput, "dice": dice}
    (args.output_dir / "results.json").write_text(json.dumps(raw, indent=4) + "\n")


if __name__ == "__main__":
    main()
