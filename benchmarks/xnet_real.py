"""XNet on real radiographs: class-mean ordering of displayed values, and overlays of the shipped model's masks.

Real radiographs come from the ``pydicom-data`` PyPI package (downloaded with ``pip download`` into a cache folder,
never into the repository). Only ``RG1`` (a chest PA computed radiograph, MONOCHROME1, zero PixelSpacing) is used:
**RG3 of the same package is held out for independent evaluation and is never read here.**

Subcommands:

- ``fetch``: downloads the package and extracts RG1; prints its path.
- ``class-means``: the mean displayed value (as ``RadiographReader`` reads the file, scaled to [0, 1] between the
  image's minimum and maximum) of each class of a label map, and the classes ordered from dark to bright. A real
  radiograph is ordered open beam < soft tissue < bone < collimator. Works for generated cases (their label PNG)
  and for RG1 with the label map the bundle predicts (RG1 has no reference label; that measures what the model
  does, not whether it is right).
- ``overlay``: runs ``configs/inference.json`` through the ``monai.bundle`` CLI on a folder of radiographs and
  writes, per image, a PNG ``image | mask`` (mask colours: open beam black, soft tissue red, bone yellow,
  collimator blue) and a JSON of the class fractions.

Example (the bundle README's numbers)::

    python benchmarks/xnet_real.py fetch --cache_dir work/cache/xray
    python benchmarks/xnet_real.py overlay --input_dir work/real_xray --output_dir work/xnet_real
    python benchmarks/xnet_real.py class-means --datalist work/xray/dataset.json --split test
    python benchmarks/xnet_real.py class-means --image work/real_xray/RG1_UNCR.dcm \\
        --label work/xnet_real/masks/RG1_UNCR_seg.nii.gz
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.data.file_types import RADIOGRAPH_SUFFIXES
from common.data.json_io import write_json
from common.xnet.radiograph_io import RadiographReader, read_radiograph
from tools.bundle_command import bundle_command
from tools.package_data import rg1_radiograph

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "xnet"
CLASS_NAMES = ("open_beam", "soft_tissue", "bone", "collimator")
# Regions of RG1 (1955 × 1841) a reader can check without a reference label, as (rows, columns) slices: the dark open
# beam above each shoulder, the lung fields, the mediastinum and spine. The bundle test checks the shipped weights
# on them; ``overlay`` reports each region's class fractions.
RG1_OPEN_BEAM = {"above the right shoulder": (slice(50, 110), slice(60, 160)),
                 "above the left shoulder": (slice(50, 110), slice(-220, -120))}  # fmt: skip
RG1_BODY = {"right lung": (slice(600, 800), slice(400, 550)), "left lung": (slice(600, 800), slice(1300, 1450)),
            "mediastinum and spine": (slice(800, 1100), slice(880, 960))}  # fmt: skip
COLOURS = np.array([[0, 0, 0], [220, 60, 60], [250, 220, 60], [60, 110, 250]], dtype=np.uint8)


def class_means(image_path: Path, label_path: Path) -> dict:
    """Mean displayed value (image scaled to [0, 1] by its min and max) and pixel fraction of each class present."""
    image = read_radiograph(image_path).array
    label = np.rint(read_radiograph(label_path).array).astype(np.int64)
    if label.shape != image.shape:
        raise ValueError(f"{label_path}: label of shape {label.shape}, image {image_path} is {image.shape}")
    scaled = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    present = {name: value for value, name in enumerate(CLASS_NAMES) if (label == value).any()}
    means = {name: float(scaled[label == value].mean()) for name, value in present.items()}
    fractions = {name: float((label == value).mean()) for name, value in present.items()}
    return {"image": str(image_path), "label": str(label_path), "mean": means, "fraction": fractions,
            "dark_to_bright": sorted(means, key=means.get)}  # fmt: skip


def datalist_class_means(datalist: Path, split: str) -> dict:
    """Class means over a datalist section: the mean over images of each class's mean, and the share of images whose
    classes are ordered as in a real radiograph (open beam < soft tissue < bone < collimator, over those present)."""
    entries = json.loads(datalist.read_text())[split]
    results = [class_means(datalist.parent / entry["image"], datalist.parent / entry["label"]) for entry in entries]
    present = [name for name in CLASS_NAMES if any(name in r["mean"] for r in results)]
    means = {name: float(np.mean([r["mean"][name] for r in results if name in r["mean"]])) for name in present}
    real_order = [[name for name in CLASS_NAMES if name in r["mean"]] == r["dark_to_bright"] for r in results]
    order = sorted(means, key=means.get)
    return {"datalist": str(datalist), "split": split, "images": len(results), "mean": means,
            "dark_to_bright": order, "images_in_real_order": float(np.mean(real_order))}  # fmt: skip


def overlay_png(image: np.ndarray, label: np.ndarray, path: Path, width: int = 1000) -> None:
    """Save ``image | mask`` side by side, `width` pixels wide in all: the image scaled between its 0.5 and 99.5
    percentiles, the mask in ``COLOURS``."""
    low, high = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    picture = np.concatenate([np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2), COLOURS[label]], axis=1)
    height = round(picture.shape[0] * width / picture.shape[1])
    Image.fromarray(picture).resize((width, height), Image.Resampling.BILINEAR).save(path)


def run_inference(input_dir: Path, output_dir: Path, weights: Path) -> None:
    """The bundle's inference.json through the ``monai.bundle`` CLI on every file of `input_dir`; a file it refuses
    is reported by the bundle and leaves no mask."""
    command = bundle_command(
        BUNDLE / "configs" / "inference.json", bundle_root=BUNDLE,
        overrides=["--input_dir", str(input_dir), "--output_dir", str(output_dir), "--ckpt_path", str(weights)],
    )  # fmt: skip
    if subprocess.run(command).returncode:
        print(f"the bundle refused some files of {input_dir} (see its summary above); drawing the others")


def overlay(args: argparse.Namespace) -> None:
    """Segment every radiograph of ``args.input_dir`` with the bundle; write an overlay PNG per image and the class
    means and fractions of all to ``summary.json`` in ``args.output_dir``."""
    masks = args.output_dir / "masks"
    run_inference(args.input_dir, masks, args.weights)
    summary = {}
    for image_path in tqdm(sorted(args.input_dir.iterdir()), desc="overlays", unit="file", disable=None):
        mask_path = masks / f"{_stem(image_path)}_seg.nii.gz"
        if not (image_path.is_file() and RadiographReader().verify_suffix(image_path) and mask_path.is_file()):
            continue
        image = read_radiograph(image_path).array
        label = np.rint(read_radiograph(mask_path).array).astype(np.int64)
        overlay_png(image, label, args.output_dir / f"{_stem(image_path)}_overlay.png")
        summary[image_path.name] = class_means(image_path, mask_path)
        if label.shape == (1955, 1841) and image_path.name.startswith("RG1"):
            summary[image_path.name]["rg1_regions"] = rg1_region_fractions(label)
            tqdm.write(f"RG1 regions: {summary[image_path.name]['rg1_regions']}")
        tqdm.write(f"{image_path.name}: fractions {_rounded(summary[image_path.name]['fraction'])}")
    write_json(summary, args.output_dir / "summary.json")


def rg1_region_fractions(label: np.ndarray) -> dict:
    """Class fractions (open beam, soft tissue, bone, collimator) in each region of ``RG1_OPEN_BEAM`` and
    ``RG1_BODY`` of RG1's label map (1955, 1841)."""
    regions = {**RG1_OPEN_BEAM, **RG1_BODY}
    return {
        name: _rounded({c: float((label[box] == v).mean()) for v, c in enumerate(CLASS_NAMES)})
        for name, box in regions.items()
    }


def _stem(path: Path) -> str:
    """The file name without its radiograph suffix, as the bundle names the mask (``<stem>_seg.nii.gz``)."""
    name = path.name
    suffix = next((suffix for suffix in RADIOGRAPH_SUFFIXES if name.lower().endswith(suffix)), "")
    return name[: len(name) - len(suffix)] if suffix else name


def _rounded(values: dict) -> dict:
    """`values` rounded to 3 decimals, for printing."""
    return {name: round(value, 3) for name, value in values.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_command = commands.add_parser("fetch", help="download pydicom-data and extract RG1")
    fetch_command.add_argument("--cache_dir", type=Path, default=REPO / "work" / "cache" / "xray")
    fetch_command.add_argument("--copy_to", type=Path, help="also copy RG1 into this folder")
    means = commands.add_parser("class-means", help="class means of an image under a label map")
    means.add_argument("--image", type=Path, help="one image (with --label)")
    means.add_argument("--label", type=Path)
    means.add_argument("--datalist", type=Path, help="or every case of a datalist section (with --split)")
    means.add_argument("--split", default="test")
    draw = commands.add_parser("overlay", help="segment a folder with the bundle and draw image | mask")
    draw.add_argument("--input_dir", type=Path, required=True)
    draw.add_argument("--output_dir", type=Path, required=True)
    draw.add_argument("--weights", type=Path, default=BUNDLE / "models" / "model.pt")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        path = rg1_radiograph(args.cache_dir)
        if args.copy_to:
            args.copy_to.mkdir(parents=True, exist_ok=True)
            path = Path(shutil.copy2(path, args.copy_to))
        print(path)
    elif args.command == "class-means":
        image_given = (args.image is not None, args.label is not None)
        if image_given != ((False, False) if args.datalist else (True, True)):
            parser.error("class-means takes --image and --label, or --datalist (and --split)")
        result = (
            datalist_class_means(args.datalist, args.split) if args.datalist else class_means(args.image, args.label)
        )
        print(json.dumps({**result, **{key: _rounded(result[key]) for key in ("mean", "fraction") if key in result}}))
    else:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        overlay(args)


if __name__ == "__main__":
    main()
