"""`make demo`: sample CT; train SMILE, evaluate, segment, export; relabel (SMILEr); propagate one slice (Sli2Vol);
segment generated radiographs (XNet).

Every step is the real ``python -m monai.bundle`` command a user would type; each is printed before it runs and
its log goes to ``work/demo/logs/``. On a terminal a line under the command shows the step's elapsed time, and while
a bundle trains a bar over its epochs with the ETA (read from the trainer's log lines); nothing more is printed when
the output is not a terminal (CI, tests). Running the demo again reuses the data and resumes the finished training.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from tools.bundle_command import bundle_command
from tools.results import read_metrics_csv

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
ORGANS = ("liver", "pancreas", "stomach")


def shell_text(args: list[str]) -> str:
    """``args`` as one would type them: lists such as ``['a.json','b.json']`` in double quotes."""
    return " ".join(f'"{arg}"' if "'" in arg and '"' not in arg else shlex.quote(arg) for arg in args)


# what MONAI's StatsHandler logs at each training iteration, and SMILEr at the start of a relabeling round
EPOCH_LINE = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- (?:\w*loss: (\S+))?")
ROUND_LINE = re.compile(r"round (\d+/\d+): relabeling")


class StepProgress:
    """A step's progress on the terminal while its output goes to its log: the elapsed time, and once the step's
    trainer logs its first iteration (``Epoch: 12/150, Iter: 3/12 -- train_loss: 0.4123``), a bar over the
    training's iterations with the ETA, the epoch, the loss and SMILEr's round. Off when stderr is not a terminal.
    """

    def __init__(self) -> None:
        self.bar = tqdm(bar_format="   {desc}[{elapsed}]", desc="running ", leave=False, disable=None)
        self.training = False
        self.round = ""
        self._stop = threading.Event()
        if not self.bar.disable:  # the elapsed time moves on while the step is silent
            threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.bar.refresh()

    def line(self, text: str) -> None:
        """Read one line of the step's output."""
        if self.bar.disable:
            return
        if found := ROUND_LINE.search(text):
            self.round = found.group(1)
            if not self.training:  # SMILEr from given weights relabels before its first epoch
                self.bar.set_description_str(f"round {self.round}: relabeling ")
        found = EPOCH_LINE.search(text)
        if found is None:
            return
        epoch, epochs, iteration, iterations = (int(value) for value in found.groups()[:4])
        done = (epoch - 1) * iterations + iteration
        if not self.training:  # from the first iteration on (also a resumed training's): a bar with the ETA
            self.training = True
            self.bar.close()
            self.bar = tqdm(
                total=epochs * iterations, initial=done - 1, leave=False, smoothing=0, dynamic_ncols=True,
                bar_format="   {desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
            )  # fmt: skip
        self.bar.set_description_str(f"epoch {epoch}/{epochs}", refresh=False)
        shown = [f"loss={found.group(5)}"] if found.group(5) else []
        shown += [f"round {self.round}"] if self.round else []
        self.bar.set_postfix_str(", ".join(shown), refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self._stop.set()
        self.bar.close()


def module_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_step(title: str, command: list[str], log: Path) -> None:
    """Run ``command`` from the repository root, its output in ``log``; stop the demo if it fails."""
    print(f"\n== {title}\n   {shell_text(['python', *command[1:]])}", flush=True)
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log lines as they are written
    with log.open("w") as stream:
        progress = StepProgress()
        try:
            with subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                errors="replace", bufsize=1,
            ) as process:  # fmt: skip
                for text in process.stdout:
                    stream.write(text)
                    progress.line(text)
            returncode = process.returncode
        finally:
            progress.close()
    if returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        sys.exit(f"{title} failed (log: {log}):\n{tail}")
    print(f"   done in {time.perf_counter() - start:.0f} s (log: {log})", flush=True)


def bundle_args(
    config: list[str], work: Path, *extra: str, bundle: str = "smile", models: str = "models", data: str = "data"
) -> list[str]:
    folder = BUNDLES / bundle
    configs = folder / "configs"
    return bundle_command(
        [configs / name for name in config], bundle_root=folder, meta_file=configs / "metadata.json",
        logging_file=configs / "logging.conf",
        overrides=["--dataset_dir", str(work / data), "--ckpt_dir", str(work / models), *extra],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work_dir", type=Path, default=REPO / "work" / "demo")
    parser.add_argument("--num_cases", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--missing_rate", type=float, default=0.5, help="alpha: chance an organ is left undelineated")
    parser.add_argument("--smiler_rounds", type=int, default=2, help="SMILEr relabeling rounds after SMILE")
    parser.add_argument("--round_epochs", type=int, default=20, help="training epochs of each SMILEr round")
    args = parser.parse_args(argv)
    work, logs = args.work_dir.resolve(), args.work_dir.resolve() / "logs"
    patch = ["--patch_size", "[48,48,32]"]

    run_step(
        "1/10 generate synthetic abdominal CT",
        module_command("tools.synthetic_ct", "--output_dir", str(work / "data"), "--num_cases", str(args.num_cases),
         "--shape", "80", "80", "32", "--spacing", "1.6", "1.6", "2.5"),
        logs / "generate.log",
    )  # fmt: skip
    run_step(
        f"2/10 train SMILE, {args.epochs} epochs, alpha = {args.missing_rate} of organ annotations removed",
        bundle_args(["train.json"], work, "--output_dir", str(work / "train"), "--epochs", str(args.epochs),
                    "--val_interval", "10", "--missing_rate", str(args.missing_rate), *patch),
        logs / "train.log",
    )  # fmt: skip
    run_step(
        "3/10 evaluate on the test split",
        bundle_args(["inference.json", "evaluate.json"], work, "--output_dir", str(work / "evaluation"), *patch),
        logs / "evaluate.log",
    )
    run_step(
        "4/10 segment the test images",
        bundle_args(["inference.json"], work, "--output_dir", str(work / "predictions"), *patch),
        logs / "inference.log",
    )
    run_step(
        "5/10 export TorchScript",
        bundle_command(BUNDLES / "smile/configs/inference.json", workflow="ckpt_export", positional=["network_def"],
                       bundle_root=BUNDLES / "smile", meta_file=BUNDLES / "smile/configs/metadata.json",
                       overrides=["--filepath", str(work / "models" / "model.ts"),
                                  "--ckpt_file", str(work / "models" / "model.pt")]),
        logs / "export.log",
    )  # fmt: skip
    smiler = {"bundle": "smiler", "models": "smiler_models"}
    run_step(
        f"6/10 SMILEr: {args.smiler_rounds} relabeling rounds of {args.round_epochs} epochs from the SMILE model",
        bundle_args(["train.json"], work, "--output_dir", str(work / "smiler"), "--initial_weights",
                    str(work / "models" / "model.pt"), "--num_rounds", str(args.smiler_rounds), "--round_epochs",
                    str(args.round_epochs), "--val_interval", "10", "--missing_rate", str(args.missing_rate),
                    *patch, **smiler),
        logs / "smiler.log",
    )  # fmt: skip
    run_step(
        "7/10 evaluate the SMILEr model on the test split",
        bundle_args(["inference.json", "evaluate.json"], work, "--output_dir", str(work / "smiler_evaluation"),
                    *patch, **smiler),
        logs / "smiler_evaluate.log",
    )  # fmt: skip
    run_step(
        "8/10 Sli2Vol: propagate each test case's largest labelled slice through its volume (shipped weights)",
        bundle_args(["inference.json", "evaluate.json"], work, "--output_dir", str(work / "sli2vol"),
                    "--datalist_key", "test", "--num_foreground_classes", "3", "--modality", "CT",
                    "--hu_window", "[-200,300]", "--save_predictions", "true",
                    bundle="sli2vol", models=str(BUNDLES / "sli2vol" / "models")),
        logs / "sli2vol.log",
    )  # fmt: skip
    run_step(
        "9/10 XNet: generate 10 test radiographs (DICOM) and segment them with the shipped weights",
        module_command("tools.synthetic_xray", "--output_dir", str(work / "xray"), "--num_training", "1",
         "--num_validation", "0", "--num_test", "10", "--seed", "7"),
        logs / "xnet_data.log",
    )  # fmt: skip
    run_step(
        "10/10 XNet: evaluate on the generated radiographs (F1, AUC, calibration, reliability diagram)",
        bundle_args(["inference.json", "evaluate.json"], work, "--output_dir", str(work / "xnet"), bundle="xnet",
                    models=str(BUNDLES / "xnet" / "models"), data="xray"),
        logs / "xnet.log",
    )  # fmt: skip

    smile = read_metrics_csv(work / "evaluation" / "metrics.csv")
    relabeled = read_metrics_csv(work / "smiler_evaluation" / "metrics.csv")
    print("\nDemo summary: Dice per organ on the test split")
    print(f"  {'':<9} {'SMILE':>7} {'SMILEr':>7}")
    for organ in ORGANS:
        print(f"  {organ:<9} {smile[f'val_dice_{organ}']:>7.3f} {relabeled[f'val_dice_{organ}']:>7.3f}")
    print(f"  {'mean':<9} {smile['val_mean_dice']:>7.3f} {relabeled['val_mean_dice']:>7.3f}")
    print("\nSMILEr pseudo-labels per round, precision / recall against the removed annotations")
    for row in csv.DictReader((work / "smiler" / "rounds.csv").open()):
        if row["precision"] or row["recall"]:
            precision, recall = _fraction(row["precision"]), _fraction(row["recall"])
            print(f"  round {row['round']} {row['class']:<9} {precision} / {recall}")
    propagated = read_metrics_csv(work / "sli2vol" / "metrics.csv")["val_mean_dice"]
    print(f"\nSli2Vol from one slice per test case (LA-MRI weights, no CT training): mean Dice {propagated:.3f}")
    xnet = json.loads((work / "xnet" / "metrics.json").read_text())
    raw, processed = xnet["predictions"]["raw"], xnet["predictions"]["postprocessed"]
    print(f"\nXNet on 10 generated radiographs (shipped weights): macro F1 {raw['f1_macro']:.3f} raw, "
          f"{processed['f1_macro']:.3f} post-processed; ECE {xnet['probabilities']['ece']:.3f}")  # fmt: skip
    print("\nOutputs")
    print(f"  weights      {work / 'models' / 'model.pt'}")
    print(f"  TorchScript  {work / 'models' / 'model.ts'}")
    print(f"  masks        {work / 'predictions'}  ({len(list((work / 'predictions').glob('*.nii.gz')))} NIfTI files)")
    print(f"  per-case     {work / 'evaluation' / 'val_mean_dice_raw.csv'}")
    print(f"  SMILEr       {work / 'smiler'}  (pseudo-labels and reports per round; weights in smiler_models/)")
    print(f"  Sli2Vol      {work / 'sli2vol'}  (propagated masks, per-case Dice)")
    print(f"  XNet         {work / 'xnet'}  (metrics.json, reliability_diagram.png, confusion_matrix.png)")
    print(f"  TensorBoard  tensorboard --logdir {work / 'train'}")
    print("A short CPU run: train longer (--epochs) or on a GPU for accurate masks; see bundles/smile/docs/README.md")
    print("and bundles/smiler/docs/README.md.")


def _fraction(text: str) -> str:
    return f"{float(text):.3f}" if text else "  –  "


if __name__ == "__main__":
    main()
