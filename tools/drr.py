"""Digitally reconstructed radiographs (DRRs) of real labelled CT, with open beam / soft tissue / bone labels.

:func:`load_ct_phantom` turns a CT (Hounsfield units) and its multi-label map into a :class:`CtPhantom`: both are
reoriented to RAS (array axes 0, 1, 2 towards the patient's right, anterior and superior), resampled to about
``voxel_mm`` isotropic, the body is segmented, and the attenuation is derived from the HU. :func:`project_ct` draws
one random view of it as a :class:`~tools.xray_acquisition.ProjectedObject`, which the acquisition model turns
into a radiograph (collimation, exposure, scatter, detector, processing)::

    phantom = load_ct_phantom(ct.image, ct.label, ct.bone_values, body_part=ct.body_part)
    view = project_ct(phantom, np.random.default_rng(0), size=(256, 256))

Physics, simplified:

- parallel beam (no magnification or divergence) and monoenergetic attenuation linear in HU,
  ``μ = μ_water · max(0, 1 + HU / 1000)``; per view, ``μ_water`` is drawn in [0.017, 0.025] /mm and the bones' μ is
  multiplied by a contrast factor in [1.6, 2.6] (HU are measured at about 70 keV; at the lower effective energies
  of radiography calcium attenuates relatively more), drawn independently of the water value;
- only the body attenuates: outside the body mask (the largest connected component of HU > -500 after a small
  opening, holes filled slice by slice so the lungs are inside) μ is 0, which removes the CT table, cushions and air;
- the transmission ``exp(-∫μ dl)`` is the primary beam only (scatter is the acquisition model's business); the line
  integral is sampled at one voxel per step by trilinear interpolation.

Truncation: a CT holds only part of the patient, cut by the scanned range (superior and inferior faces) and by the
reconstruction field of view (the lateral faces of the volume or the circular field outside which the scanner
stores a padding value below -1500 HU). :func:`project_ct` only accepts fields of view whose rays cross no body voxel
at these limits, and that lie between the projections of the first and last slices, so no ray crosses missing
anatomy; laterally the field may extend into the air beside the body (open beam).

Labels are computed at pixel centres from the same line integrals: 2 (bone) where the water-equivalent path through
the label map's bone structures is at least ``BONE_PATH_MM``, else 1 (soft tissue) where the path through the body is
at least ``BODY_PATH_MM``, else 0 (open beam). The label maps of the CTs used here (``tools.package_data``) are
TotalSegmentator's output, not manual annotation, so bone edges are as good as that model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from tools.xray_acquisition import BONE, OPEN_BEAM, SOFT_TISSUE, ProjectedObject

__all__ = ["CtPhantom", "View", "load_ct_phantom", "project_ct", "project_view"]

MU_WATER = 0.02  # /mm, reference attenuation of water at which CtPhantom.mu is stored
MU_WATER_RANGE = (0.017, 0.025)  # /mm, drawn per view
BONE_CONTRAST_RANGE = (1.6, 2.6)
BODY_HU = -500.0
PADDING_HU = -1500.0  # below: outside the CT's reconstruction field of view
BONE_PATH_MM = 2.0  # water-equivalent path through bone making a pixel bone
BODY_PATH_MM = 1.0  # water-equivalent path through the body making a pixel soft tissue
FIELD_MM = (180.0, 450.0)
MAX_TILT_DEG = 10.0
MAX_TRIES = 100  # view directions
FIELD_TRIES = 20  # field sizes and centres per direction


@dataclass(frozen=True, eq=False)
class CtPhantom:
    """A CT ready for projection; volumes (X, Y, Z) on RAS axes: X towards the patient's right, Y anterior, Z superior.

    Attributes:
        mu: float32 linear attenuation (1/mm) at ``MU_WATER``, 0 outside the body.
        bone: bool, voxels of the label map's bone structures (inside the body).
        body: bool, the body mask (table, cushions and air removed; lungs included).
        spacing: voxel size in mm along X, Y, Z (about isotropic).
        truncated: float32 (N, 3) positions in mm, relative to the volume centre, of body voxels at the CT's lateral
            reconstruction limits (lateral faces or circular field of view).
        superior: float32 (N, 3) positions of the body voxels of the most superior slice (empty if none).
        inferior: float32 (N, 3) positions of the body voxels of the most inferior slice (empty if none).
        surface: float32 (N, 3) positions of the body's surface voxels, for the extent of the body in a view.
        body_part: DICOM BodyPartExamined of the scanned region, e.g. "CHEST".
    """

    mu: np.ndarray
    bone: np.ndarray
    body: np.ndarray
    spacing: tuple[float, float, float]
    truncated: np.ndarray
    superior: np.ndarray
    inferior: np.ndarray
    surface: np.ndarray
    body_part: str


@dataclass(frozen=True, eq=False)
class View:
    """A parallel-beam view in the phantom's frame (mm, relative to the volume centre): unit vectors ``columns``
    (detector columns, left to right), ``rows`` (top to bottom) and ``ray``, the field centre and pixel spacing."""

    columns: np.ndarray
    rows: np.ndarray
    ray: np.ndarray
    centre: np.ndarray
    pixel_spacing: float


def load_ct_phantom(
    image_path: Path | str,
    label_path: Path | str,
    bone_values: tuple[int, ...],
    voxel_mm: float = 2.0,
    body_part: str = "",
) -> CtPhantom:
    """Load a CT and its label map as a phantom resampled to about ``voxel_mm`` isotropic (RAS axes).

    Args:
        image_path: the CT in Hounsfield units (NIfTI).
        label_path: its multi-label map, on the same grid (in any axis order).
        bone_values: the label values of the bones.
        voxel_mm: target voxel size in mm.
        body_part: DICOM BodyPartExamined given to the projections.

    Raises:
        ValueError: naming both files, when the label map's grid differs from the CT's; naming the CT, when it is
            not 3D with at least two voxels of `voxel_mm` along each axis, or holds no body (HU > -500).
    """
    image, label = nib.as_closest_canonical(nib.load(image_path)), nib.as_closest_canonical(nib.load(label_path))
    if image.shape[:3] != label.shape[:3] or not np.allclose(image.affine, label.affine, atol=1e-2):
        raise ValueError(
            f"{label_path}: label grid {label.shape} {np.round(label.affine, 2).tolist()} differs from the CT "
            f"{image_path}: {image.shape} {np.round(image.affine, 2).tolist()}"
        )
    source = np.asarray(image.header.get_zooms()[:3], dtype=float)
    factors = source / voxel_mm
    if len(image.shape) < 3 or np.any(np.rint(np.asarray(image.shape[:3]) * factors) < 2):
        raise ValueError(f"{image_path}: a CT of shape {image.shape} is too small to project at {voxel_mm} mm voxels")
    hu = ndimage.zoom(image.get_fdata(dtype=np.float32), factors, order=1)
    bone = ndimage.zoom(np.isin(np.asarray(label.dataobj), bone_values).astype(np.uint8), factors, order=0) > 0
    spacing = tuple(float(s) for s in source * (np.asarray(image.shape[:3]) - 1) / (np.asarray(hu.shape) - 1))
    body = body_mask(hu)
    if not body.any():
        raise ValueError(f"{image_path}: no body in this CT (no voxel above {BODY_HU} HU); is it in Hounsfield units?")
    mu = np.where(body, MU_WATER * np.maximum(0.0, 1.0 + hu / 1000.0), 0.0).astype(np.float32)
    faces = np.zeros_like(body)
    faces[[0, -1]], faces[:, [0, -1]] = True, True
    limits = faces | ndimage.binary_dilation(hu < PADDING_HU, _in_plane(), iterations=2)
    return CtPhantom(
        mu=mu,
        bone=bone & body,
        body=body,
        spacing=spacing,
        truncated=_positions(body & limits, spacing),
        superior=_positions(_slice_mask(body, -1), spacing),
        inferior=_positions(_slice_mask(body, 0), spacing),
        surface=_positions(body & ~ndimage.binary_erosion(body), spacing),
        body_part=body_part,
    )


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The body in a CT (X, Y, Z): largest 3D component of HU > -500 after a one-voxel opening, holes filled in
    every axial slice (lungs, bowel gas)."""
    opened = ndimage.binary_opening(hu > BODY_HU, iterations=1)
    components, count = ndimage.label(opened)
    if count == 0:
        return opened
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(components == largest, _in_plane())


def _in_plane() -> np.ndarray:
    """4-connectivity within axial (X, Y) slices only."""
    return ndimage.generate_binary_structure(3, 1) & np.array([0, 1, 0], bool)[None, None, :]


def _slice_mask(mask: np.ndarray, index: int) -> np.ndarray:
    only = np.zeros_like(mask)
    only[..., index] = mask[..., index]
    return only


def _positions(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Positions in mm, relative to the volume centre, of the mask's voxels: (N, 3) float32."""
    centre = (np.asarray(mask.shape) - 1) / 2
    return ((np.argwhere(mask) - centre) * np.asarray(spacing)).astype(np.float32)


def project_ct(
    phantom: CtPhantom,
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 256),
    field_mm: tuple[float, float] = FIELD_MM,
) -> ProjectedObject:
    """One random parallel-beam radiograph of the phantom, rows running from superior (top) to inferior.

    The view is rotated about the superior-inferior axis (AP/PA in 35 % of views, lateral in 35 %, any angle
    otherwise), tilted by up to 10 degrees, mirrored half of the time; the field of view (``field_mm`` across the
    larger side) and its centre are random, redrawn until no ray crosses anatomy missing from the CT.

    Args:
        phantom: from :func:`load_ct_phantom`.
        rng: the random generator (equal states give equal views).
        size: detector (rows, columns).
        field_mm: range of the field of view across the larger detector side, in mm.

    Returns:
        the transmission and object label (rows, columns), pixel spacing ``field / max(size)``.

    Raises:
        RuntimeError: no view within ``MAX_TRIES`` draws avoids the CT's limits.
    """
    view = draw_view(phantom, rng, size, field_mm)
    return project_view(phantom, view, size, rng.uniform(*MU_WATER_RANGE), rng.uniform(*BONE_CONTRAST_RANGE))


def project_view(
    phantom: CtPhantom, view: View, size: tuple[int, int], mu_water: float = MU_WATER, bone_contrast: float = 1.0
) -> ProjectedObject:
    """The phantom's radiograph in a given view: transmission and object label (rows, columns).

    Args:
        phantom: from :func:`load_ct_phantom`.
        view: the detector axes, ray direction, field centre and pixel spacing.
        size: detector (rows, columns).
        mu_water: attenuation of water (1/mm); all attenuations scale with it.
        bone_contrast: factor on the bones' attenuation.
    """
    soft_path = line_integral(np.where(phantom.bone, 0.0, phantom.mu).astype(np.float32), phantom, view, size)
    bone_path = line_integral(np.where(phantom.bone, phantom.mu, 0.0).astype(np.float32), phantom, view, size)
    transmission = np.exp(-(mu_water / MU_WATER) * (soft_path + bone_contrast * bone_path))
    label = np.full(size, OPEN_BEAM, np.uint8)
    label[soft_path + bone_path >= BODY_PATH_MM * MU_WATER] = SOFT_TISSUE
    label[bone_path >= BONE_PATH_MM * MU_WATER] = BONE
    return ProjectedObject(transmission.astype(np.float32), label, view.pixel_spacing, phantom.body_part)


def draw_view(
    phantom: CtPhantom, rng: np.random.Generator, size: tuple[int, int], field_mm: tuple[float, float]
) -> View:
    """A random view whose field lies between the first and last slices and crosses no truncated body voxel.

    Each direction gets ``FIELD_TRIES`` draws of field size and centre before another direction is drawn, so views
    of directions blocked by truncation over part of the CT (e.g. lateral views below the arms) still come up.
    """
    for _ in range(MAX_TRIES):
        columns, rows, ray = view_axes(rng)
        surface = phantom.surface @ np.stack([columns, rows, ray], 1)
        truncated = phantom.truncated @ np.stack([columns, rows], 1)
        top = max(_max(phantom.superior @ rows), surface[:, 1].min())
        bottom = min(_min(phantom.inferior @ rows), surface[:, 1].max())
        left, width = surface[:, 0].min(), np.ptp(surface[:, 0])
        for _ in range(FIELD_TRIES):
            spacing = rng.uniform(*field_mm) / max(size)
            half = np.asarray(size[::-1], float) * spacing / 2  # (columns, rows) half extents in mm
            if top + half[1] > bottom - half[1]:
                continue
            centre = np.array([left + width * rng.uniform(0.15, 0.85), rng.uniform(top + half[1], bottom - half[1])])
            if not _inside(truncated, centre, half + max(phantom.spacing)):
                depth = (surface[:, 2].min() + surface[:, 2].max()) / 2
                return View(columns, rows, ray, centre[0] * columns + centre[1] * rows + depth * ray, float(spacing))
    raise RuntimeError(f"no view of this CT within {MAX_TRIES} directions avoids its truncated anatomy")


def view_axes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random detector axes (columns, rows) and ray direction, unit vectors in RAS.

    Angle 0 is an AP view displayed as usual (patient's right on the left of the image, superior at the top).
    """
    kind = rng.choice(3, p=[0.35, 0.35, 0.3])
    if kind == 2:
        angle = rng.uniform(0, 2 * math.pi)
    else:
        angle = math.radians(90 * kind + 180 * rng.integers(2) + rng.normal(0, 5))
    tilt = math.radians(rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG))
    cos, sin = math.cos(angle), math.sin(angle)
    columns = np.array([-cos, -sin, 0.0])
    ray = np.array([sin, -cos, 0.0])
    rows = np.array([0.0, 0.0, -1.0])
    ray, rows = math.cos(tilt) * ray + math.sin(tilt) * rows, math.cos(tilt) * rows - math.sin(tilt) * ray
    if rng.random() < 0.5:
        columns = -columns
    return columns, rows, ray


def line_integral(volume: np.ndarray, phantom: CtPhantom, view: View, size: tuple[int, int]) -> np.ndarray:
    """``∫ volume dl`` (volume units × mm) along the view's rays through the detector pixel centres: (rows, columns).

    The rays are sampled at one voxel per step on a detector grid of about the voxel size, then interpolated
    bilinearly to the detector's pixel centres.
    """
    step = min(phantom.spacing)
    coarse = np.maximum(np.ceil(np.asarray(size) * view.pixel_spacing / step).astype(int), 2)
    surface = (phantom.surface - view.centre) @ view.ray
    depth = int(np.ceil((surface.max() - surface.min()) / step)) + 3
    grid_spacing = np.asarray(size) * view.pixel_spacing / coarse  # (rows, columns) mm
    spacing = np.asarray(phantom.spacing)
    matrix = (
        np.stack([view.rows * grid_spacing[0], view.columns * grid_spacing[1], view.ray * step], 1) / spacing[:, None]
    )
    start = (
        view.centre
        - view.rows * grid_spacing[0] * (coarse[0] - 1) / 2
        - view.columns * grid_spacing[1] * (coarse[1] - 1) / 2
        + view.ray * (surface.min() - step)
    )
    offset = start / spacing + (np.asarray(volume.shape) - 1) / 2
    samples = ndimage.affine_transform(volume, matrix, offset, (*coarse, depth), order=1, prefilter=False)
    integral = samples.sum(axis=2) * step
    # detector pixel centres in coarse grid coordinates
    rows = (np.arange(size[0]) + 0.5) * coarse[0] / size[0] - 0.5
    cols = (np.arange(size[1]) + 0.5) * coarse[1] / size[1] - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(integral, grid, order=1, mode="nearest")


def _inside(points: np.ndarray, centre: np.ndarray, half: np.ndarray) -> bool:
    """Whether any (N, 2) point lies in the rectangle ``centre ± half``."""
    return bool(np.any(np.all(np.abs(points - centre) <= half, axis=1)))


def _max(values: np.ndarray) -> float:
    return float(values.max()) if values.size else -math.inf


def _min(values: np.ndarray) -> float:
    return float(values.min()) if values.size else math.inf
