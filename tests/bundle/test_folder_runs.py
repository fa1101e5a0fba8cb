"""Folder inference that finishes: through the monai.bundle CLI, a corrupt file among good ones is reported and
skipped, the good files are segmented, and the run ends with a summary and a non-zero exit status."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.xnet.radiograph_io import write_dicom_cr, write_png
from tests.bundle.conftest import copy_bundle, patch_network_def, run_cli
from tools.bundle_command import bundle_command

RNG = np.random.default_rng(5)


def _radiographs(folder: Path) -> None:
    """Two good 72×64 radiographs (DICOM, PNG) and a DICOM file cut short."""
    pixels = RNG.integers(0, 4096, size=(72, 64), dtype=np.uint16)
    write_dicom_cr(folder / "chest.dcm", pixels)
    write_png(folder / "hand.png", pixels, bit_depth=16)
    write_dicom_cr(folder / "broken.dcm", pixels)
    (folder / "broken.dcm").write_bytes((folder / "broken.dcm").read_bytes()[:-2000])


def _volumes(folder: Path) -> None:
    """Two good 40×40×12 CT volumes and a .nii.gz file of garbage bytes."""
    for name in ("case_a", "case_b"):
        volume = RNG.uniform(-200, 300, size=(40, 40, 12)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 3.0, 1.0])), folder / f"{name}.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"not a NIfTI file" * 64)


# bundle: (writes the inputs, the good inputs' names, the reason the broken one gives, tiny settings)
BUNDLES = {
    "xnet": (_radiographs, ("chest", "hand"), "cannot decode the pixel data",
             ["--input_size", "[32,32]", "--min_image_size", "32"]),
    "smile": (_volumes, ("case_a", "case_b"), "not a readable image (ImageFileError", ["--patch_size", "[32,32,16]"]),
    "smiler": (_volumes, ("case_a", "case_b"), "not a readable image (ImageFileError", ["--patch_size", "[32,32,16]"]),
}  # fmt: skip


def _with_random_weights(bundle: Path) -> Path:
    """Shrink `bundle`'s inference network (widths 4-16) and save its freshly initialised weights."""
    patch_network_def(bundle, ("inference.json",), channels=[4, 8, 8, 16])
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.mark.parametrize("name", BUNDLES)
def test_a_corrupt_file_is_reported_and_the_others_are_segmented(name, tmp_path):
    write_inputs, good, reason, tiny = BUNDLES[name]
    bundle = _with_random_weights(copy_bundle(name, tmp_path))
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    outputs.mkdir()
    write_inputs(inputs)
    (outputs / "broken_seg.nii.gz").write_bytes(b"the user's earlier result")  # must stay as it is
    command = bundle_command(
        "configs/inference.json", meta_file="configs/metadata.json", logging_file="configs/logging.conf",
        bundle_root=".", overrides=["--input_dir", str(inputs), "--output_dir", str(outputs), *tiny],
    )  # fmt: skip
    result = run_cli(command, cwd=bundle, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    broken = next(inputs.glob("broken.*"))
    reported, summary = f"ERROR - skipped {broken}: {reason}", f"3 inputs: 2 segmented, 1 failed:\n  {broken}: {reason}"
    assert reported in log and summary in log and log.index(reported) < log.index(summary)
    assert sorted(path.name for path in outputs.iterdir()) == sorted(
        [f"{stem}_seg.nii.gz" for stem in good] + ["broken_seg.nii.gz"]
    )
    assert (outputs / "broken_seg.nii.gz").read_bytes() == b"the user's earlier result"
