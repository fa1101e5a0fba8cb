"""What an annotator waits for: one request to the MONAI Label server against one `monai.bundle run` of the same
inference, on the same files in the same run, and whether both return the same mask.

- Sli2Vol: one axial slice of each left-atrium label of ``../shared/data/la_heart`` (real MRI, 0.625 mm) is
  propagated through its volume; the Dice against the full label is printed too.
- XNet: generated 2000×2000 DICOM CR radiographs.

The server (``make label-env``) runs from temporary working copies and is warmed up with one request first;
each figure is the median of ``--repeats`` requests (the CLI: of ``--repeats`` runs) per image.

    python benchmarks/label_server_latency.py --work_dir work/bench_label_server
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
from tqdm import tqdm

from common.xnet.radiograph_io import read_radiograph
from tools.bundle_command import bundle_command
from tools.results import binary_dice
from tools.synthetic_xray import write_xray_dataset

REPO = Path(__file__).resolve().parents[1]
# the app's lib/ follows MONAI Label's layout: a folder on the path, not an installed package
sys.path.insert(0, str(REPO / "apps" / "monailabel"))
from lib.server_process import LabelServerProcess  # noqa: E402


def _axial_seed(label_file: Path, seed_file: Path) -> None:
    label = np.asarray(nib.load(label_file).dataobj) > 0
    index = int(np.argmax(label.sum(axis=(0, 1))))
    seed = np.zeros(label.shape, dtype=np.uint8)
    seed[..., index] = label[..., index]
    nib.save(nib.Nifti1Image(seed, nib.load(label_file).affine), seed_file)


def _cli_seconds(bundle: str, image: Path, label: Path | None, output_dir: Path, extra: list[str]) -> float:
    folder = REPO / "bundles" / bundle
    inputs = ["--image", str(image)] if label else ["--input_dir", str(image.parent)]
    overrides = [*inputs, "--output_dir", str(output_dir), *extra, *(["--label", str(label)] if label else [])]
    command = bundle_command(folder / "configs" / "inference.json", bundle_root=folder, overrides=overrides)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def _http_seconds(server: LabelServerProcess, model: str, image_id: str, label: Path | None, params: dict, out: Path):
    files = {"label": label.open("rb")} if label else {}
    start = time.perf_counter()
    response = requests.post(
        f"{server.url}/infer/{model}?image={image_id}&output=image", files=files, data={"params": json.dumps(params)}
    )
    seconds = time.perf_counter() - start
    response.raise_for_status()
    out.write_bytes(response.content)
    return seconds


def _cases(args) -> list[dict]:
    studies = args.work_dir / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    cases = []
    for image in sorted(args.la_dir.glob("*_image.nii.gz"))[: args.cases]:
        name = image.name.replace("_image.nii.gz", "")
        shutil.copy(image, studies / f"{name}.nii.gz")
        seed = args.work_dir / f"{name}_seed.nii.gz"
        _axial_seed(image.with_name(f"{name}_label.nii.gz"), seed)
        truth = image.with_name(f"{name}_label.nii.gz")
        cases.append(
            {"model": "sli2vol", "id": name, "image": studies / f"{name}.nii.gz", "label": seed, "truth": truth}
        )
    xray = args.work_dir / "xray"
    write_xray_dataset(xray, num_training=args.cases, num_validation=0, num_test=0, size=(2000, 2000), seed=11)
    for index in range(args.cases):
        shutil.copy(xray / "images" / f"xr_{index:03d}.dcm", studies / f"xr_{index:03d}.dcm")
        cases.append(
            {"model": "xnet", "id": f"xr_{index:03d}", "image": studies / f"xr_{index:03d}.dcm", "label": None}
        )
    return cases


def _read_mask(path: Path) -> np.ndarray:
    return np.squeeze(np.asarray(nib.load(path).dataobj))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, default=REPO / "work" / "bench_label_server")
    parser.add_argument("--label_python", type=Path, default=REPO / ".venv-label" / "bin" / "python")
    parser.add_argument("--la_dir", type=Path, default=REPO.parent / "shared" / "data" / "la_heart")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True)
    cases = _cases(args)
    conf = {"model_dir": str(args.work_dir / "working_copies"), "skip_trainers": "true"}
    env = {"MONAI_LABEL_SESSION_PATH": str(args.work_dir / "sessions")}
    rows = []
    with LabelServerProcess.start(
        args.label_python, args.work_dir / "studies", args.work_dir / "server.log", conf, env
    ) as server:
        for case in tqdm(cases, desc="cases", unit="image", disable=None):
            params = {"result_extension": ".nii.gz"}
            extra = ["--output_postfix", "cli"]
            http_out = args.work_dir / f"{case['id']}_http.nii.gz"
            _http_seconds(server, case["model"], case["id"], case["label"], params, http_out)  # warm-up
            http = [
                _http_seconds(server, case["model"], case["id"], case["label"], params, http_out)
                for _ in range(args.repeats)
            ]
            cli_dir = args.work_dir / f"cli_{case['id']}"
            cli_image = case["image"]
            if case["label"] is None:  # XNet's inference reads a folder: give it one of its own
                cli_image = args.work_dir / f"cli_input_{case['id']}" / case["image"].name
                cli_image.parent.mkdir()
                shutil.copy(case["image"], cli_image)
            cli = [_cli_seconds(case["model"], cli_image, case["label"], cli_dir, extra) for _ in range(args.repeats)]
            cli_mask = _read_mask(next(cli_dir.glob("*.nii.gz")))
            http_mask = _read_mask(http_out)
            shape = read_radiograph(case["image"]).array.shape if case["model"] == "xnet" else http_mask.shape
            row = {
                "model": case["model"],
                "image": case["id"],
                "shape": "×".join(str(s) for s in shape),
                "cli_s": statistics.median(cli),
                "http_s": statistics.median(http),
                "identical": bool(cli_mask.shape == http_mask.shape and np.array_equal(cli_mask, http_mask)),
            }
            if "truth" in case:
                row["dice"] = binary_dice(http_mask > 0, np.asarray(nib.load(case["truth"]).dataobj) > 0)
            rows.append(row)
            tqdm.write(str(row))  # above the bar
            sys.stdout.flush()
    print("\n| model | image | size | `monai.bundle run` (s) | server request (s) | ratio | same mask | Dice |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        dice = f"{r['dice']:.3f}" if "dice" in r else ""
        print(
            f"| {r['model']} | {r['image']} | {r['shape']} | {r['cli_s']:.2f} | {r['http_s']:.2f} | "
            f"{r['cli_s'] / r['http_s']:.1f}× | {'yes' if r['identical'] else 'no'} | {dice} |"
        )
    (args.work_dir / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
