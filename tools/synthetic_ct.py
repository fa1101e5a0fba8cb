"""Synthetic contrast-enhanced abdominal CT with liver, pancreas and stomach labels: the project's embedded data.

``make_phantom`` draws one case, an image in Hounsfield units and its label map; ``generate_synthetic_ct`` writes a
deterministic dataset of such cases in the Medical Segmentation Decathlon layout (``imagesTr``, ``labelsTr`` and a
``dataset.json`` datalist), which the tests use with tiny shapes and the demos and benchmarks with a few dozen cases::

    python -m tools.synthetic_ct --output_dir /tmp/synthetic_ct --num_cases 24

Geometry. Arrays are indexed (x, y, z) as in NIfTI. The affine ``diag(spacing)`` with the volume centred on the
world origin makes the axes RAS+: x runs towards the patient's right, y anteriorly, z superiorly. The liver lies at
+x (the patient's right, shown on the left of a radiological display), the stomach at -x and the spine posteriorly.

Sizes. The in-plane anatomy is defined in millimetres for an adult whose body outline has semi-axes of about
165 x 120 mm (left-right x anterior-posterior). A field of view too small for such a body scales the whole
cross-section down to fit, organs keeping their proportions to the body, and every structure keeps a minimum size of
one to two voxels, so each organ is present at any shape from about 32 x 32 x 8 voxels up. The scan is taken to cover
the upper abdomen: craniocaudal extents are fractions of the scanned range.

Intensities (Hounsfield units, portal-venous phase): air -1000, subcutaneous fat -100, muscle 45, mixed visceral fat
and bowel 20-30, liver 55-75, pancreas 40-50, stomach wall 40 around water-like content 0-15 with an optional gas
pocket of -800, aorta 160, kidneys 150, vertebra 300 (cancellous) to 700 (cortical). The image is blurred slightly
(partial volume), given Gaussian noise (sigma 10-20 HU), rounded and clipped to the int16 range [-1024, 3071].
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from common.data.atomic import atomic_target
from common.data.json_io import msd_datalist, write_json

__all__ = ["ORGAN_LABELS", "generate_synthetic_ct", "make_phantom"]

ORGAN_LABELS: dict[int, str] = {0: "background", 1: "liver", 2: "pancreas", 3: "stomach"}
LIVER, PANCREAS, STOMACH = 1, 2, 3

# Bump whenever the phantom changes, so that datasets cached by an older version are refused rather than reused.
GENERATOR_VERSION = 1

AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 45.0
CSF_HU = 10.0
AORTA_HU = 160.0
KIDNEY_HU = 150.0
CANCELLOUS_BONE_HU = 300.0
CORTICAL_BONE_HU = 700.0
STOMACH_WALL_HU = 40.0
GAS_HU = -800.0
HU_RANGE = (-1024, 3071)

# Body outline semi-axes of the reference adult (mm): left-right, and anterior half of the anterior-posterior extent.
REFERENCE_BODY_MM = (165.0, 120.0)


@dataclass(frozen=True)
class _Grid:
    """World coordinates (mm) of the voxel centres of a volume centred on the origin, as broadcastable axes."""

    x: np.ndarray  # (X, 1, 1), towards the patient's right
    y: np.ndarray  # (1, Y, 1), towards anterior
    z: np.ndarray  # (1, 1, Z), towards superior
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @classmethod
    def centred(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> _Grid:
        axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(shape, spacing, strict=True)]
        return cls(axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :], shape, spacing)

    @property
    def half_extent(self) -> tuple[float, float, float]:
        """Half the scanned extent (mm) along x, y and z."""
        return tuple(n * s / 2 for n, s in zip(self.shape, self.spacing, strict=True))


@dataclass(frozen=True)
class _Body:
    """Body outline and abdominal wall; in-plane masks have shape (X, Y, 1)."""

    scale: float  # in-plane size relative to the reference adult, including the fit to the field of view
    voxel: float  # the finer in-plane spacing (mm), the unit of the minimum sizes
    centre: tuple[float, float]  # (x, y) mm
    semi_posterior: float  # mm from the centre to the back
    outline: np.ndarray  # inside the skin
    below_fat: np.ndarray  # inside the subcutaneous fat: abdominal wall muscle and everything it holds
    cavity: np.ndarray  # inside the abdominal wall muscle

    def size(self, reference_mm: float, min_voxels: float = 0.0) -> float:
        """A positive reference adult size (mm) scaled to this body, and at least `min_voxels` in-plane voxels."""
        return max(reference_mm * self.scale, min_voxels * self.voxel)


@dataclass(frozen=True)
class _Retroperitoneum:
    """Unlabelled structures behind the abdominal cavity; masks have shape (X, Y, 1) except `kidneys` (X, Y, Z)."""

    cortical_bone: np.ndarray
    cancellous_bone: np.ndarray
    spinal_canal: np.ndarray
    paraspinal_muscle: np.ndarray
    aorta: np.ndarray
    kidneys: np.ndarray
    aorta_front: float  # y (mm) of the anterior aortic wall

    @property
    def occupied(self) -> np.ndarray:
        """Where no organ may go, shape (X, Y, Z)."""
        return self.cortical_bone | self.cancellous_bone | self.paraspinal_muscle | self.aorta | self.kidneys


def make_phantom(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic abdominal CT case.

    Args:
        shape: volume size (X, Y, Z) in voxels, NIfTI axis order (RAS+ with a ``diag(spacing)`` affine).
        spacing: voxel size (mm) along x, y and z.
        rng: the source of every random choice: equal generator states give byte-identical cases.

    Returns:
        ``(image, label)`` of `shape`: int16 Hounsfield units, and uint8 labels as in ``ORGAN_LABELS``
        (0 background, 1 liver, 2 pancreas, 3 stomach), each organ a single connected, non-empty region.

    Raises:
        ValueError: `shape` or `spacing` is not three positive numbers, or the volume is too small to hold the organs.
    """
    shape, spacing = _checked_geometry(shape, spacing)
    grid = _Grid.centred(shape, spacing)
    body = _sample_body(grid, rng)
    retroperitoneum = _sample_retroperitoneum(grid, body, rng)
    free = body.cavity & ~retroperitoneum.occupied

    pancreas_shape = _sample_pancreas_shape(grid, body, retroperitoneum.aorta_front, rng)
    pancreas = _largest_component(free & (pancreas_shape < 1.0))
    pancreas_fat = _dilate_in_plane(pancreas, body.size(5.0, 1.0) / body.voxel)
    stomach_shape, stomach_wall = _sample_stomach_shape(grid, body, rng)
    stomach = _largest_component(free & (stomach_shape < 1.0) & ~pancreas_fat)
    liver_shape = _sample_liver_shape(grid, body, rng)
    liver = _largest_component(free & (liver_shape < 1.0) & ~pancreas_fat & ~(stomach_shape < 1.1))

    organs = {LIVER: liver, PANCREAS: pancreas, STOMACH: stomach}
    missing = [ORGAN_LABELS[index] for index, mask in organs.items() if not mask.any()]
    if missing:
        raise ValueError(f"A volume of shape {shape} and spacing {spacing} mm is too small to hold the {missing}.")
    label = np.zeros(shape, dtype=np.uint8)
    for index, mask in organs.items():
        label[mask] = index

    hu = _paint_background(grid, body, retroperitoneum, rng)
    np.copyto(hu, rng.uniform(55.0, 75.0), where=liver)
    np.copyto(hu, rng.uniform(40.0, 50.0), where=pancreas)
    _paint_stomach(hu, grid, stomach, stomach_shape < 1.0 - stomach_wall, rng)
    return _acquire(hu, grid, rng), label


def _checked_geometry(
    shape: Sequence[int], spacing: Sequence[float]
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """`shape` and `spacing` as tuples of three positive ints and floats, or a ValueError."""
    if len(shape) != 3 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"shape must be three positive integers (X, Y, Z), got {shape}.")
    if len(spacing) != 3 or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive voxel sizes in mm, got {spacing}.")
    return tuple(int(n) for n in shape), tuple(float(s) for s in spacing)


def _smooth_field(coordinates: Sequence[np.ndarray], rng: np.random.Generator, cycles: float) -> np.ndarray:
    """A random smooth field of about unit standard deviation: a sum of plane waves of random direction and phase.

    Args:
        coordinates: one broadcastable array per dimension.
        rng: the source of the wave vectors, phases and amplitudes.
        cycles: standard deviation of each wave vector component, in periods per unit of `coordinates`.

    Returns:
        float32 array of the broadcast shape of `coordinates`.
    """
    num_waves = 6
    wave_vectors = rng.normal(scale=2 * np.pi * cycles, size=(num_waves, len(coordinates))).tolist()
    phases = rng.uniform(0.0, 2 * np.pi, size=num_waves).tolist()
    amplitudes = rng.normal(size=num_waves)
    field = np.float32(0.0)
    for wave_vector, phase, amplitude in zip(wave_vectors, phases, amplitudes.tolist(), strict=True):
        argument = sum(k * c for k, c in zip(wave_vector, coordinates, strict=True)) + phase
        field = field + amplitude * np.cos(argument)
    return field / float(np.sqrt(0.5 * np.sum(amplitudes**2)))


def _local_coordinates(
    grid: _Grid, centre: Sequence[float], semi_axes: Sequence[float], degrees: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates in an organ's frame: rotated in-plane by `degrees` about `centre` (mm) and divided by its
    `semi_axes` (mm), so that the organ's reference ellipsoid is the unit ball. float32, shapes (X, Y, 1), (X, Y, 1)
    and (1, 1, Z).
    """
    dx, dy = grid.x - centre[0], grid.y - centre[1]
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    u = (dx * cos + dy * sin) / semi_axes[0]
    v = (dy * cos - dx * sin) / semi_axes[1]
    w = (grid.z - centre[2]) / semi_axes[2]
    return u, v, w


def _ellipse_radius(
    grid: _Grid, centre: tuple[float, float], semi_x: float, semi_anterior: float, semi_posterior: float
) -> np.ndarray:
    """Normalised in-plane radius (inside < 1) of an ellipse flattened at the back, shape (X, Y, 1)."""
    dy = grid.y - centre[1]
    semi_y = np.where(dy > 0, semi_anterior, semi_posterior).astype(np.float32)
    return np.sqrt(((grid.x - centre[0]) / semi_x) ** 2 + (dy / semi_y) ** 2)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected region of `mask`, so that carving an organ leaves no detached fragment."""
    components, count = ndimage.label(mask)
    if count <= 1:
        return components > 0
    sizes = np.bincount(components.ravel())
    return components == np.argmax(sizes[1:]) + 1


def _dilate_in_plane(mask: np.ndarray, voxels: float) -> np.ndarray:
    """`mask` grown by about `voxels` (rounded, at least one) within each slice."""
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3, 1), dtype=bool), iterations=max(round(voxels), 1))


def _sample_body(grid: _Grid, rng: np.random.Generator) -> _Body:
    """An elliptical body, flatter at the back, with a subcutaneous fat layer and an abdominal wall muscle layer."""
    half_x, half_y, _ = grid.half_extent
    semi_x = REFERENCE_BODY_MM[0] * rng.uniform(0.85, 1.15)
    semi_anterior = semi_x * REFERENCE_BODY_MM[1] / REFERENCE_BODY_MM[0] * rng.uniform(0.9, 1.1)
    semi_posterior = 0.85 * semi_anterior
    fit = min(1.0, 0.9 * half_x / semi_x, 0.9 * half_y / (0.5 * (semi_anterior + semi_posterior)))
    semi_x, semi_anterior, semi_posterior = fit * semi_x, fit * semi_anterior, fit * semi_posterior
    scale = semi_x / REFERENCE_BODY_MM[0]
    voxel = min(grid.spacing[:2])
    centre = (
        rng.uniform(-0.03, 0.03) * semi_x,
        0.5 * (semi_posterior - semi_anterior) + rng.uniform(-0.03, 0.03) * semi_anterior,
    )
    fat = max(18.0 * scale * rng.uniform(0.5, 1.5), voxel)
    muscle = max(10.0 * scale * rng.uniform(0.8, 1.2), voxel)
    wobble = 1.0 + 0.03 * _smooth_field(((grid.x - centre[0]) / semi_x, (grid.y - centre[1]) / semi_x), rng, 0.5)

    def inside(depth: float) -> np.ndarray:
        return _ellipse_radius(grid, centre, semi_x - depth, semi_anterior - depth, semi_posterior - depth) < wobble

    return _Body(scale, voxel, centre, semi_posterior, inside(0.0), inside(fat), inside(fat + muscle))


def _sample_retroperitoneum(grid: _Grid, body: _Body, rng: np.random.Generator) -> _Retroperitoneum:
    """Vertebra (body, posterior arch, spinous process), spinal canal, paraspinal muscles, aorta and kidneys."""
    radius = body.size(18.0 * rng.uniform(0.9, 1.1), min_voxels=1.5)
    spine_x = body.centre[0] + body.scale * rng.uniform(-3.0, 3.0)
    spine_y = body.centre[1] - 0.45 * body.semi_posterior
    canal_y = spine_y - 1.3 * radius

    def distance(x: float, y: float) -> np.ndarray:
        return np.sqrt((grid.x - x) ** 2 + (grid.y - y) ** 2)

    vertebral_body = distance(spine_x, spine_y) < radius
    canal = distance(spine_x, canal_y) < 0.45 * radius
    arch = (distance(spine_x, canal_y) < 0.8 * radius) & ~canal
    spinous_process = ((grid.x - spine_x) / (0.25 * radius)) ** 2 + ((grid.y - canal_y + radius) / (0.7 * radius)) ** 2
    cortical = (vertebral_body & ~(distance(spine_x, spine_y) < 0.8 * radius)) | arch | (spinous_process < 1.0)
    paraspinal = ((grid.x - spine_x) / (3.0 * radius)) ** 2 + ((grid.y - spine_y + 1.2 * radius) / (1.9 * radius)) ** 2

    aorta_radius = body.size(11.0 * rng.uniform(0.85, 1.15), min_voxels=1.0)
    aorta_x = spine_x - 0.5 * radius
    aorta_y = spine_y + radius + aorta_radius + body.size(3.0)
    hilum_offset = radius + body.size(45.0)
    kidneys = _sample_kidney(grid, body, (spine_x + hilum_offset, spine_y), 1.0, -0.35, rng)
    kidneys |= _sample_kidney(grid, body, (spine_x - hilum_offset, spine_y), -1.0, -0.2, rng)
    return _Retroperitoneum(
        cortical_bone=cortical & body.outline,
        cancellous_bone=vertebral_body & ~cortical,
        spinal_canal=canal,
        paraspinal_muscle=(paraspinal < 1.0) & body.below_fat,
        aorta=distance(aorta_x, aorta_y) < aorta_radius,
        kidneys=kidneys & body.cavity,
        aorta_front=aorta_y + aorta_radius,
    )


def _sample_kidney(
    grid: _Grid, body: _Body, hilum: tuple[float, float], side: float, height: float, rng: np.random.Generator
) -> np.ndarray:
    """Mask (X, Y, Z) of a kidney, a lobulated ellipsoid lateral to `hilum` (x, y mm) on the patient's right
    (`side` 1) or left (-1), centred at `height` (a fraction of the half z extent)."""
    semi_axes = (body.size(25.0), body.size(30.0), 0.35 * grid.half_extent[2])
    centre = (hilum[0] + side * semi_axes[0], hilum[1], height * grid.half_extent[2])
    u, v, w = _local_coordinates(grid, centre, semi_axes, side * rng.uniform(15.0, 35.0))
    return np.sqrt(u**2 + v**2 + w**2) - 0.08 * _smooth_field((u, v, w), rng, 0.4) < 1.0


def _sample_liver_shape(grid: _Grid, body: _Body, rng: np.random.Generator) -> np.ndarray:
    """Implicit liver shape (inside < 1), shape (X, Y, Z): a wedge-shaped, lobulated ellipsoid filling the right upper
    abdomen, thick laterally and thin towards the left lobe, its tip lying laterally in the lowest slices."""
    size = rng.uniform(0.8, 1.2)
    half_z = grid.half_extent[2]
    semi_axes = (body.size(75.0 * size, 3.0), body.size(95.0 * size, 3.0), 1.15 * half_z * rng.uniform(0.9, 1.1))
    centre = (
        body.centre[0] + body.scale * (85.0 + rng.uniform(-8.0, 8.0)),
        body.centre[1] + body.scale * rng.uniform(-8.0, 8.0),
        0.25 * half_z,
    )
    u, v, w = _local_coordinates(grid, centre, semi_axes, rng.uniform(-12.0, 12.0))
    u = u - 0.3 * np.clip(-w, 0.0, 1.0)
    v = v / np.maximum(1.0 + 0.3 * u, 0.3)
    return np.sqrt(u**2 + v**2 + w**2) - 0.12 * _smooth_field((u, v, w), rng, 0.4)


def _sample_pancreas_shape(grid: _Grid, body: _Body, aorta_front: float, rng: np.random.Generator) -> np.ndarray:
    """Implicit pancreas shape (inside < 1), shape (X, Y, Z): a tapering tube arching over the aorta, from the head on
    the right (thick, low) to the tail on the left (thin, high)."""
    size = rng.uniform(0.8, 1.2)
    half_z = grid.half_extent[2]
    half_length = body.size(57.0 * size, 3.0)
    radius = body.size(10.0 * size, 1.5)
    thickness = max(0.28 * half_z * rng.uniform(0.85, 1.15), 1.5 * grid.spacing[2])
    centre = (
        body.centre[0] + body.scale * (-27.0 + rng.uniform(-6.0, 6.0)),
        aorta_front + body.size(5.0 * rng.uniform(0.6, 1.4), 0.5) + radius,
        -0.2 * half_z,
    )
    u, q, w = _local_coordinates(grid, centre, (half_length, 1.0, thickness), rng.uniform(-10.0, 10.0))
    arch = body.size(12.0 * rng.uniform(0.5, 1.5))
    v = (q - arch * (1.0 - u**2)) / (radius * np.maximum(1.0 + 0.3 * u, 0.5))
    w = w + 0.12 * half_z / thickness * u
    return np.sqrt(u**4 + v**2 + w**2) - 0.1 * _smooth_field((u, v, w), rng, 0.4)


def _sample_stomach_shape(grid: _Grid, body: _Body, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Implicit stomach shape (inside < 1), shape (X, Y, Z), in the left upper abdomen with its long axis running
    from the fundus (left, posterior) to the antrum (medial, anterior); and its wall thickness in the same units."""
    size = rng.uniform(0.8, 1.2)
    half_z = grid.half_extent[2]
    semi_axes = (body.size(55.0 * size, 2.5), body.size(38.0 * size, 2.0), 0.55 * half_z * rng.uniform(0.9, 1.1))
    centre = (
        body.centre[0] + body.scale * (-70.0 + rng.uniform(-8.0, 8.0)),
        body.centre[1] + body.scale * (30.0 + rng.uniform(-8.0, 8.0)),
        0.45 * half_z,
    )
    u, v, w = _local_coordinates(grid, centre, semi_axes, rng.uniform(20.0, 50.0))
    shape = np.sqrt(u**2 + v**2 + w**2) - 0.1 * _smooth_field((u, v, w), rng, 0.4)
    return shape, body.size(4.0, 1.0) / semi_axes[1]


def _paint_background(
    grid: _Grid, body: _Body, retroperitoneum: _Retroperitoneum, rng: np.random.Generator
) -> np.ndarray:
    """Hounsfield units of everything but the labelled organs, float32 of the grid's shape."""
    hu = np.full(grid.shape, AIR_HU, dtype=np.float32)
    np.copyto(hu, FAT_HU, where=body.outline)
    np.copyto(hu, MUSCLE_HU, where=body.below_fat)
    wavelength = body.size(25.0, 4.0)
    texture = 8.0 * _smooth_field((grid.x / wavelength, grid.y / wavelength, grid.z / wavelength), rng, 0.3)
    np.copyto(hu, rng.uniform(20.0, 30.0) + texture, where=body.cavity)
    np.copyto(hu, MUSCLE_HU, where=retroperitoneum.paraspinal_muscle)
    np.copyto(hu, KIDNEY_HU, where=retroperitoneum.kidneys)
    np.copyto(hu, AORTA_HU, where=retroperitoneum.aorta)
    np.copyto(hu, CANCELLOUS_BONE_HU, where=retroperitoneum.cancellous_bone)
    np.copyto(hu, CORTICAL_BONE_HU, where=retroperitoneum.cortical_bone)
    np.copyto(hu, CSF_HU, where=retroperitoneum.spinal_canal)
    return hu


def _paint_stomach(
    hu: np.ndarray, grid: _Grid, stomach: np.ndarray, lumen: np.ndarray, rng: np.random.Generator
) -> None:
    """Paint the stomach wall, its water-like content and, in most cases, a gas pocket above an air-fluid level at
    the anterior (non-dependent, the patient lying supine) side of the lumen."""
    np.copyto(hu, STOMACH_WALL_HU, where=stomach)
    content = stomach & lumen
    np.copyto(hu, rng.uniform(0.0, 15.0), where=content)
    has_gas, gas_fraction = rng.uniform() < 0.6, rng.uniform(0.1, 0.3)
    if has_gas and content.any():
        lumen_y = grid.y[0, np.any(content, axis=(0, 2)), 0]
        fluid_level = lumen_y.max() - gas_fraction * (lumen_y.max() - lumen_y.min())
        np.copyto(hu, GAS_HU, where=content & (grid.y > fluid_level))


def _acquire(hu: np.ndarray, grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """Simulate acquisition: a slight blur (partial volume), Gaussian noise, then int16 rounding and clipping."""
    blurred = ndimage.gaussian_filter(hu, sigma=(0.6, 0.6, 0.4), mode="nearest")
    noisy = blurred + rng.uniform(10.0, 20.0) * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.clip(np.rint(noisy), *HU_RANGE).astype(np.int16)


def generate_synthetic_ct(
    output_dir: str | os.PathLike,
    num_cases: int = 24,
    shape: Sequence[int] = (128, 128, 40),
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    num_validation: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic abdominal CT dataset in the Medical Segmentation Decathlon layout, or reuse it.

    Case ``i`` is drawn by ``make_phantom`` from a generator seeded with ``(seed, i)``, so it does not depend on
    `num_cases`; the same arguments give byte-identical files. The first cases form the training split, the last
    `num_test` the test split and the `num_validation` before them the validation split. Every file is written to a
    temporary name and then renamed, and ``dataset.json`` last, so an interrupted run leaves no partial file.

    Args:
        output_dir: folder receiving ``imagesTr/case_000.nii.gz`` (int16 HU), ``labelsTr/case_000.nii.gz`` (uint8),
            ... and ``dataset.json``; created if needed.
        num_cases: number of cases.
        shape: volume size (X, Y, Z) in voxels.
        spacing: voxel size (mm) along x, y and z.
        num_validation: validation cases; by default 15% of `num_cases`, at least 1 from 3 cases.
        num_test: test cases; by default 20% of `num_cases`, at least 1 from 3 cases.
        seed: dataset seed.

    Returns:
        Path of ``dataset.json``, whose image and label paths are relative to `output_dir`. When `output_dir` already
        holds the complete dataset of the same arguments, it is returned without writing anything.

    Raises:
        ValueError: invalid arguments, splits that leave no training case, or an `output_dir` whose ``dataset.json``
            was produced with other arguments (or not by this generator).
    """
    shape, spacing = _checked_geometry(shape, spacing)
    num_validation, num_test = _split_sizes(num_cases, num_validation, num_test)
    generator = {
        "module": "tools.synthetic_ct",
        "version": GENERATOR_VERSION,
        "num_cases": num_cases,
        "shape": list(shape),
        "spacing": list(spacing),
        "num_validation": num_validation,
        "num_test": num_test,
        "seed": seed,
    }
    output_dir = Path(output_dir)
    datalist_path = output_dir / "dataset.json"
    if _holds_dataset(datalist_path, generator):
        return datalist_path

    names = [f"case_{index:03d}.nii.gz" for index in range(num_cases)]
    affine = _centred_affine(shape, spacing)
    for folder in ("imagesTr", "labelsTr"):
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        image, label = make_phantom(shape, spacing, rng)
        _write_atomically(output_dir / "imagesTr" / name, _nifti_bytes(image, affine))
        _write_atomically(output_dir / "labelsTr" / name, _nifti_bytes(label, affine))
    datalist = _datalist(names, num_validation, num_test, generator)
    write_json(datalist, datalist_path)
    return datalist_path


def _split_sizes(num_cases: int, num_validation: int | None, num_test: int | None) -> tuple[int, int]:
    """Validation and test split sizes, defaults resolved, checked to leave at least one training case."""
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}.")
    at_least_one = int(num_cases >= 3)
    if num_validation is None:
        num_validation = max(round(0.15 * num_cases), at_least_one)
    if num_test is None:
        num_test = max(round(0.2 * num_cases), at_least_one)
    if num_validation < 0 or num_test < 0:
        raise ValueError(f"num_validation and num_test must not be negative, got {num_validation} and {num_test}.")
    if num_cases - num_validation - num_test < 1:
        raise ValueError(
            f"num_cases={num_cases} is too small for {num_validation} validation and {num_test} test cases: "
            "at least one training case must remain."
        )
    return num_validation, num_test


def _holds_dataset(datalist_path: Path, generator: dict) -> bool:
    """Whether `datalist_path` and all its files exist, made by `generator`; a ValueError if it was made otherwise."""
    if not datalist_path.is_file():
        return False
    try:
        existing = json.loads(datalist_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        existing = None
    existing_generator = existing.get("generator") if isinstance(existing, dict) else None
    if existing_generator != generator:
        raise ValueError(
            f"{datalist_path} was produced with other arguments ({existing_generator}) than requested ({generator}); "
            "refusing to overwrite it: choose another output_dir or remove that dataset."
        )
    entries = [entry for split in ("training", "validation", "test") for entry in existing[split]]
    return all((datalist_path.parent / entry[key]).is_file() for entry in entries for key in ("image", "label"))


def _centred_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS+ affine ``diag(spacing)`` placing the centre of the volume at the world origin, as the phantom's grid."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True)]
    return affine


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file of `array` (its dtype kept, no scaling) with qform and sform set to `affine` (mm)."""
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it: `path` is never seen half-written."""
    with atomic_target(path) as temporary, open(temporary, "xb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _datalist(names: Sequence[str], num_validation: int, num_test: int, generator: dict) -> dict:
    """The MSD-style ``dataset.json`` content: the first cases train, the last `num_test` test, validation between."""
    entries = [{"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"} for name in names]
    return msd_datalist(
        "SyntheticAbdomenCT",
        "Synthetic contrast-enhanced abdominal CT phantoms (tools.synthetic_ct): "
        "deterministic by seed, Hounsfield units, with liver, pancreas and stomach labels.",
        "CT",
        ORGAN_LABELS,
        "3D",
        entries,
        num_validation,
        num_test,
        generator=generator,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: generate (or reuse) a dataset and print the path of its ``dataset.json``."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.synthetic_ct", description="Write a synthetic abdominal CT dataset (MSD layout)."
    )
    parser.add_argument("--output_dir", required=True, help="folder receiving imagesTr, labelsTr and dataset.json")
    parser.add_argument("--num_cases", type=int, default=24)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 40), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 2.5), metavar=("SX", "SY", "SZ"))
    parser.add_argument("--num_validation", type=int, default=None, help="default: 15%% of the cases")
    parser.add_argument("--num_test", type=int, default=None, help="default: 20%% of the cases")
    parser.add_argument("--seed", type=int, default=0)
    datalist_path = generate_synthetic_ct(**vars(parser.parse_args(argv)))
    print(f"Synthetic CT datalist: {datalist_path}")


if __name__ == "__main__":
    main()
