"""SMILEr's relabeling rounds against SMILE and the softmax baseline under simulated missing annotations.

For each missing rate alpha, on generated abdominal CT and through the real ``monai.bundle`` CLI:

- ``baseline``: the SMILE bundle's softmax overlay, ``--initial_epochs`` epochs;
- ``smile``: the SMILE bundle, ``--initial_epochs`` epochs, with the SMILEr network (dropout, for MC dropout);
- every SMILEr variant starts from that SMILE model (``initial_weights``) and runs ``--num_rounds`` rounds of
  ``--round_epochs`` epochs:
  ``confidence``, ``uncertainty`` (MC dropout, std), ``crest`` (confidence with CReST rates, alpha 1/3),
  ``no_pseudo`` (the same rounds with ``pseudo_weight 0``: extra SMILE epochs with warm restarts, the control
  that tells relabeling from longer training) and ``scratch`` (confidence, each round retrained from freshly
  initialised weights for ``--initial_epochs`` epochs);
- diagnostics, only when named in ``--methods``: ``threshold_0.9`` (confidence, candidates need probability
  >= 0.9) and ``gamma_max_0.5`` (confidence, the last round keeps half of the candidates).

Every model is evaluated on the test split (full labels). Prints two Markdown tables, test Dice per organ and the
precision / recall of each round's pseudo-labels, and writes them with the raw numbers to
``<output_dir>/results.{md,json}``. Runs are resumable: a run that has its ``test_dice.json`` is not repeated.

Example (the bundle README's table; about an hour on 2 CPU cores with --jobs 2)::

    OMP_NUM_THREADS=1 python benchmarks/smiler_rounds.py --output_dir work/bench_smiler --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

import torch
from smile_missing_labels import read_test_dice
from tqdm import tqdm

from tools.bundle_command import bundle_command
from tools.synthetic_ct import generate_synthetic_ct

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
ORGANS = ("liver", "pancreas", "stomach")
VARIANTS = {  # overrides of the SMILEr settings given on the command line
    "confidence": {"selection": "confidence"},
    "uncertainty": {"selection": "uncertainty"},
    "crest": {"selection": "confidence", "crest_alpha": 0.3333},
    "no_pseudo": {"selection": "confidence", "pseudo_weight": 0.0},
    "scratch": {"selection": "confidence", "retrain": "scratch"},
    # diagnostics, run on request: stricter candidates, or a smaller final share
    "threshold_0.9": {"selection": "confidence", "pseudo_label_threshold": 0.9},
    "gamma_max_0.5": {"selection": "confidence", "gamma_max": 0.5},
}
DIAGNOSTICS = ("threshold_0.9", "gamma_max_0.5")
METHODS = ("baseline", "smile", *VARIANTS)
DEFAULT_METHODS = tuple(m for m in METHODS if m not in DIAGNOSTICS)


def _cli(bundle: str, files: tuple[str, ...], arguments: list[str], log) -> None:
    """``monai.bundle run`` of ``files`` (merged in order) from ``bundles/<bundle>/configs``, output to ``log``."""
    folder = BUNDLES / bundle
    command = bundle_command([folder / "configs" / f for f in files], bundle_root=folder, overrides=arguments)
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def run_method(method: str, alpha: float, dataset: Path, run_dir: Path, smile: Future | None, args) -> dict:
    """Train one method through the CLI, evaluate its final model on the test split; returns Dice per organ."""
    done = run_dir / "test_dice.json"
    if done.is_file():
        return json.loads(done.read_text())
    if smile is not None:
        smile.result()  # the SMILE model the variant starts from must be trained first
    smile_dir = run_dir.parent / "smile"
    locations = ["--dataset_dir", str(dataset), "--ckpt_dir", str(run_dir / "models")]
    shared = [
        *locations, "--missing_rate", str(alpha), "--seed", str(args.seed), "--num_workers", "0",
        "--network_def#dropout", str(args.dropout),
    ]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "log.txt").open("a") as log:
        if method in ("baseline", "smile"):
            files = ("train.json", "train_baseline.json") if method == "baseline" else ("train.json",)
            training = ["--epochs", str(args.initial_epochs), "--val_interval", str(args.val_interval)]
            _cli("smile", files, [*shared, "--output_dir", str(run_dir / "eval"), *training, *args.bundle_args], log)
            inference = ("inference.json", "inference_baseline.json") if method == "baseline" else ("inference.json",)
            evaluation = ("smile", (*inference, "evaluate.json"))
        else:
            settings = {
                "initial_weights": smile_dir / "models" / "model.pt", "num_rounds": args.num_rounds,
                "round_epochs": args.initial_epochs if method == "scratch" else args.round_epochs,
                "gamma_max": args.gamma_max, "val_interval": args.val_interval, **VARIANTS[method],
            }  # fmt: skip
            training = [text for key, value in settings.items() for text in (f"--{key}", str(value))]
            _cli("smiler", ("train.json",), [*shared, "--output_dir", str(run_dir / "eval"), *training,
                 *args.bundle_args], log)  # fmt: skip
            evaluation = ("smiler", ("inference.json", "evaluate.json"))
        bundle, files = evaluation
        # evaluation takes only the ids inference.json has (dropout is off in evaluation mode)
        _cli(bundle, files, [*locations, "--output_dir", str(run_dir / "test")], log)
    dice = read_test_dice(run_dir / "test" / "val_mean_dice_summary.csv")
    done.write_text(json.dumps(dice, indent=4) + "\n")
    return dice


def read_rounds(rounds_csv: Path) -> list[dict]:
    """The rows of a SMILEr run's ``rounds.csv``."""
    return list(csv.DictReader(rounds_csv.open())) if rounds_csv.is_file() else []


def dice_table(results: dict) -> str:
    lines = ["| missing rate α | method | liver | pancreas | stomach | mean |", "| --- | --- | --- | --- | --- | --- |"]
    for (alpha, method), dice in sorted(results.items(), key=lambda item: (item[0][0], METHODS.index(item[0][1]))):
        cells = " | ".join(f"{dice[key][0]:.3f}" for key in (*ORGANS, "mean"))
        lines.append(f"| {alpha:.1f} | {method} | {cells} |")
    return "\n".join(lines)


def _cell(row: dict, key: str) -> str:
    return f"{float(row[key]):.3f}" if row.get(key) not in (None, "") else "–"


def pseudo_label_table(rounds: dict) -> str:
    """Per (alpha, variant, round): precision / recall of the pseudo-labels and the round model's val Dice."""
    header = " | ".join(f"{organ} P / R / val Dice" for organ in ORGANS)
    lines = [f"| α | variant | round | γ_t | {header} |", "| --- | --- | --- | --- |" + " --- |" * len(ORGANS)]
    for (alpha, method), rows in sorted(rounds.items(), key=lambda item: (item[0][0], METHODS.index(item[0][1]))):
        for round_index in sorted({int(row["round"]) for row in rows}):
            by_organ = {row["class"]: row for row in rows if int(row["round"]) == round_index}
            gamma = by_organ[ORGANS[0]]["gamma"]
            cells = " | ".join(
                f"{_cell(by_organ[o], 'precision')} / {_cell(by_organ[o], 'recall')} / {_cell(by_organ[o], 'val_dice')}"
                for o in ORGANS
            )
            lines.append(f"| {alpha:.1f} | {method} | {round_index} | {float(gamma or 0):.2f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=REPO / "work" / "bench_smiler")
    parser.add_argument("--num_cases", type=int, default=24)
    parser.add_argument("--shape", type=int, nargs=3, default=(80, 80, 32))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.6, 1.6, 2.5))
    parser.add_argument("--alphas", type=float, nargs="+", default=(0.7, 0.9))
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=METHODS)
    parser.add_argument("--initial_epochs", type=int, default=150, help="baseline, SMILE and scratch rounds")
    parser.add_argument("--num_rounds", type=int, default=3)
    parser.add_argument("--round_epochs", type=int, default=40)
    parser.add_argument("--gamma_max", type=float, default=0.9)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--val_interval", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="data, simulation and training seed")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at once")
    parser.add_argument(
        "--bundle_args", type=shlex.split, default=["--patch_size", "[48,48,32]"], help="extra training overrides"
    )
    args = parser.parse_args(argv)

    dataset = args.output_dir / "data"
    generate_synthetic_ct(
        dataset, num_cases=args.num_cases, shape=tuple(args.shape), spacing=tuple(args.spacing), seed=args.seed
    )
    started = time.perf_counter()
    relabeling = [m for m in args.methods if m in VARIANTS]
    first = [m for m in ("smile", "baseline") if m in args.methods or (m == "smile" and relabeling)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures: dict = {}
        for method in first:  # every SMILE run is queued before the variants that wait on it
            for alpha in args.alphas:
                run_dir = args.output_dir / f"a{alpha}" / method
                futures[alpha, method] = pool.submit(run_method, method, alpha, dataset, run_dir, None, args)
        for method in relabeling:
            for alpha in args.alphas:
                run_dir = args.output_dir / f"a{alpha}" / method
                smile = futures[alpha, "smile"]
                futures[alpha, method] = pool.submit(run_method, method, alpha, dataset, run_dir, smile, args)
        for _ in tqdm(as_completed(futures.values()), total=len(futures), desc="trainings", unit="run", disable=None):
            pass
        results = {run: future.result() for run, future in futures.items() if run[1] in args.methods}
    rounds = {
        (alpha, method): read_rounds(args.output_dir / f"a{alpha}" / method / "eval" / "rounds.csv")
        for alpha, method in results
        if method in VARIANTS
    }
    num_test = len(json.loads((dataset / "dataset.json").read_text())["test"])
    text = "\n".join(
        [
            f"Test Dice per organ (mean over {num_test} test cases, seed {args.seed}); {args.num_cases} generated "
            f"cases of {tuple(args.shape)} voxels; baseline and SMILE {args.initial_epochs} epochs; SMILEr "
            f"{args.num_rounds} rounds of {args.round_epochs} epochs (scratch: {args.initial_epochs}) from the SMILE "
            f"model, gamma_max {args.gamma_max}; device {'cuda' if torch.cuda.is_available() else 'cpu'}; "
            f"{time.perf_counter() - started:.0f} s:",
            "",
            dice_table(results),
            "",
            "Pseudo-labels per round against the removed ground truth (precision / recall), and the validation Dice "
            "of the model trained in that round (round 0: the SMILE model it starts from is not re-validated):",
            "",
            pseudo_label_table(rounds),
        ]
    )
    print(text)
    (args.output_dir / "results.md").write_text(text + "\n")
    raw = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "dice": {f"{method}@{alpha}": value for (alpha, method), value in results.items()},
        "rounds": {f"{method}@{alpha}": rows for (alpha, method), rows in rounds.items()},
    }
    (args.output_dir / "results.json").write_text(json.dumps(raw, indent=4) + "\n")


if __name__ == "__main__":
    main()
