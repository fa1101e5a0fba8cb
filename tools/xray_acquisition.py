"""How a projected object becomes a radiograph as a viewer shows it: exposure, detector, processing, DICOM encoding.

The object generators (limb phantoms in ``tools.synthetic_xray``, projections of real CT in
``tools.drr``) give a :class:`ProjectedObject`: the primary transmission of the object and what each ray
crosses. :func:`acquire_radiograph` turns it into the image a CR/DX system delivers, with every step randomised
widely (domain randomisation: the network must not key on one rendering):

1. **Lead marker** (60 % of images): a letter (L, R, or a two-letter view such as AP) of lead, nearly opaque, in a
   plastic holder (a rounded rectangle that lets 80-95 % through), somewhere in the field.
2. **Collimation** (60 %): a rectangular opening of 45-100 % of the field per side, turned by up to 8 degrees, so
   that 1 to 4 blades show; the blades let 0.05-1 % of the dose through, and the field edge has a penumbra of
   0.2-1.5 mm.
3. **Exposure** in quanta per pixel: a dose set as an automatic exposure control would (150-3000 quanta behind the
   median of the object), with a heel effect (up to 12 % across the field), times the transmission, plus scatter:
   the dose the object removed, blurred over 15-60 mm, at a scatter-to-primary ratio of 0.05-2 behind the object.
   Scatter also spreads under the blades, which gives the scatter tail at the blade edge.
4. **Detector**: Poisson quantum noise, a point spread of 0.3-1.2 pixel, electronic noise.
5. **Processing**, in the log domain as CR/DX systems do: the value is ``log(open-beam dose / exposure)``, which
   grows with attenuation, so open beam is darkest, then soft tissue, bone, and the unexposed area under the
   blades is the brightest. An unsharp mask (one or two scales of 1-25 mm, gains up to 2) enhances edges; the
   exposure recognition maps the anatomy's value range (percentiles of the object inside the field; the densest
   anatomy may saturate) to the display range, a tone curve (linear, gamma or sigmoid) follows, then clipping,
   and quantisation to 8-16 bits, often using only part of the stored range.

The image is what a viewer displays (high = bright = more attenuation); :func:`sample_encoding` chooses how a DICOM
file stores it (MONOCHROME2: as it is; MONOCHROME1: inverted, as most CR systems write), so that both read back to
the same displayed image, as the DICOM standard defines them.

Labels: 3 (collimator) outside the collimator opening and under the marker's lead letters, where (almost) no dose
arrives and nothing can be seen; elsewhere the object label: 2 bone, 1 soft tissue, 0 open beam. The plastic holder
is thin and keeps the label of what lies beneath it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = [
    "BITS_STORED",
    "CLASS_NAMES",
    "DicomEncoding",
    "ProjectedObject",
    "RadiographSample",
    "acquire_radiograph",
    "sample_encoding",
]

CLASS_NAMES: dict[int, str] = {0: "open_beam", 1: "soft_tissue", 2: "bone", 3: "collimator"}
OPEN_BEAM, SOFT_TISSUE, BONE, COLLIMATOR = 0, 1, 2, 3
BITS_STORED = (8, 10, 12, 14, 15, 16)
MARKER_TEXTS = ("L", "R", "L", "R", "AP", "PA", "LAT")


@dataclass(frozen=True)
class ProjectedObject:
    """An object projected onto the detector, before any collimation, exposure or processing; arrays (rows, columns).

    Attributes:
        transmission: float32 primary transmission ``exp(-∫μ dl)`` in (0, 1]: 1 where the ray crosses no object.
        object_label: uint8, 0 open beam (the ray crosses no object), 1 soft tissue (object but no bone), 2 bone.
        pixel_spacing: detector pixel spacing in mm (square pixels).
        body_part: what is imaged, e.g. "hand" or "chest" (a DICOM BodyPartExamined term in any case).
    """

    transmission: np.ndarray
    object_label: np.ndarray
    pixel_spacing: float
    body_part: str

    def __post_init__(self) -> None:
        if self.transmission.shape != self.object_label.shape or self.transmission.ndim != 2:
            raise ValueError(
                f"transmission {self.transmission.shape} and object_label {self.object_label.shape} must be the same "
                "(rows, columns)."
            )
        if not (self.transmission.min() > 0 and self.transmission.max() <= 1):
            raise ValueError("transmission must lie in (0, 1].")
        if not set(np.unique(self.object_label).tolist()) <= {OPEN_BEAM, SOFT_TISSUE, BONE}:
            raise ValueError("object_label must hold 0 (open beam), 1 (soft tissue) or 2 (bone) only.")
        if not self.pixel_spacing > 0:
            raise ValueError(f"pixel_spacing must be positive (mm), got {self.pixel_spacing}.")


@dataclass(frozen=True)
class RadiographSample:
    """One radiograph as a viewer displays it, and its labels, all arrays of shape (rows, columns).

    Attributes:
        image: float32 displayed values, integers in ``[0, 2**bits_stored - 1]``; more attenuation is brighter.
        label: uint8 classes of ``CLASS_NAMES``: 0 open beam, 1 soft tissue, 2 bone, 3 collimator.
        transmission: float32 noise-free primary transmission of the object in (0, 1] (marker excluded): exactly 1
            where the ray crosses no object.
        body_part: lower-case name of what is imaged ("hand", "chest", ...).
        pixel_spacing: (row, column) spacing in mm.
        bits_stored: one of ``BITS_STORED``.
    """

    image: np.ndarray
    label: np.ndarray
    transmission: np.ndarray
    body_part: str
    pixel_spacing: tuple[float, float]
    bits_stored: int

    @property
    def exposed(self) -> np.ndarray:
        """bool, True inside the collimator opening and off the marker's lead."""
        return self.label != COLLIMATOR


def acquire_radiograph(projected: ProjectedObject, rng: np.random.Generator) -> RadiographSample:
    """Radiograph of `projected` through a randomly drawn acquisition (see the module docstring).

    Args:
        projected: the object on the detector grid.
        rng: the source of every random choice: equal generator states give identical samples.

    Returns:
        the :class:`RadiographSample`, on the grid of `projected`.
    """
    spacing = float(projected.pixel_spacing)
    lead, holder = _marker(projected.transmission.shape, spacing, rng)
    opening = _collimator_opening(projected.object_label, spacing, rng)
    exposed = (opening > 0.5) & ~lead
    label = np.where(exposed, projected.object_label, COLLIMATOR).astype(np.uint8)
    marker = holder * np.where(lead, np.float32(rng.uniform(0.001, 0.01)), np.float32(1.0))
    dose = _automatic_exposure(projected, rng)
    quanta = _exposure(projected, marker, opening, dose, rng)
    detected = _detect(quanta, rng)
    attenuation = np.log(dose / np.maximum(detected, 0.5)).astype(np.float32)
    enhanced = _unsharp_mask(attenuation, spacing, rng)
    bits_stored = int(rng.choice(BITS_STORED))
    displayed = _display(enhanced, label, rng)
    image = _quantise(displayed, bits_stored, rng)
    name = projected.body_part.lower()
    return RadiographSample(image, label, projected.transmission, name, (spacing, spacing), bits_stored)


# ----------------------------------------------------------------------------------------------------- beam


def _automatic_exposure(projected: ProjectedObject, rng: np.random.Generator) -> float:
    """Open-beam dose (quanta per pixel) chosen as an automatic exposure control would: 150-3000 quanta reach the
    detector behind the median of the object (capped at 10^6 quanta of open beam)."""
    behind_object = projected.transmission[projected.object_label > 0]
    median = float(np.median(behind_object)) if behind_object.size else 1.0
    return min(float(np.exp(rng.uniform(math.log(150.0), math.log(3000.0)))) / median, 1e6)


def _marker(shape: tuple[int, int], spacing: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A lead marker in 60 % of images: (lead bool, holder transmission float32), both (rows, columns); letters of
    8-16 mm in a holder 4-8 mm wider, placed anywhere in the field (it may be cut by the edge)."""
    rows, columns = shape
    lead = np.zeros(shape, dtype=bool)
    holder = np.ones(shape, dtype=np.float32)
    if rng.uniform() >= 0.6:
        return lead, holder
    text = str(rng.choice(MARKER_TEXTS))
    height = max(round(rng.uniform(8.0, 16.0) / spacing), 5)
    margin = max(round(rng.uniform(2.0, 4.0) / spacing), 1)
    letters = _text_mask(text, height)
    if rng.uniform() < 0.5:
        letters = letters[:, ::-1]  # markers are often seen from behind
    box = np.pad(np.ones_like(letters), margin)
    top = int(rng.integers(-box.shape[0] // 3, max(rows - 2 * box.shape[0] // 3, 1)))
    left = int(rng.integers(-box.shape[1] // 3, max(columns - 2 * box.shape[1] // 3, 1)))
    _paste(holder, np.where(box, np.float32(rng.uniform(0.8, 0.95)), np.float32(1.0)), top, left, np.minimum)
    _paste(lead, np.pad(letters, margin), top, left, np.logical_or)
    return lead, holder


def _text_mask(text: str, height: int) -> np.ndarray:
    """bool (height, width) mask of `text` in a bold sans-serif font, trimmed to its ink."""
    font = ImageFont.load_default(size=int(height * 1.3))
    canvas = Image.new("L", (int(height * 1.3) * (len(text) + 1), int(height * 2)))
    ImageDraw.Draw(canvas).text((height // 4, 0), text, fill=255, font=font, stroke_width=max(height // 12, 1))
    ink = np.asarray(canvas) > 127
    rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def _paste(target: np.ndarray, patch: np.ndarray, top: int, left: int, combine) -> None:
    """Combine `patch` into `target` at (top, left) in place, clipped to `target`'s bounds."""
    row0, col0 = max(top, 0), max(left, 0)
    row1, col1 = min(top + patch.shape[0], target.shape[0]), min(left + patch.shape[1], target.shape[1])
    if row1 > row0 and col1 > col0:
        window = patch[row0 - top : row1 - top, col0 - left : col1 - left]
        target[row0:row1, col0:col1] = combine(target[row0:row1, col0:col1], window)


def _collimator_opening(object_label: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """float32 (rows, columns) in [0, 1]: the fraction of the beam the collimator lets through, 1 inside the opening,
    with a penumbra at its edge; all ones in 40 % of images. The opening is a rectangle of 45-100 % of the field per
    side, turned by up to 8 degrees, centred near the object."""
    rows, columns = object_label.shape
    if rng.uniform() >= 0.6:
        return np.ones((rows, columns), dtype=np.float32)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    on_object = np.argwhere(object_label > 0)
    aim = on_object.mean(axis=0) if len(on_object) else np.array([(rows - 1) / 2, (columns - 1) / 2])
    centre = aim + rng.normal(0.0, 0.08, size=2) * np.array([rows, columns])
    half = rng.uniform(0.45, 1.0, size=2) * np.array([rows, columns]) / 2
    angle = math.radians(rng.uniform(-8.0, 8.0))
    cos, sin = math.cos(angle), math.sin(angle)
    dy, dx = y - centre[0], x - centre[1]
    # Signed distance (pixels) inside the rectangle's nearest edge; the penumbra is a ramp across the edge.
    inside = np.minimum(half[0] - np.abs(dy * cos - dx * sin), half[1] - np.abs(dx * cos + dy * sin))
    penumbra = max(rng.uniform(0.2, 1.5) / spacing, 0.3)
    return np.clip(0.5 + inside / penumbra, 0.0, 1.0).astype(np.float32)


def _exposure(
    projected: ProjectedObject, marker: np.ndarray, opening: np.ndarray, dose: float, rng: np.random.Generator
) -> np.ndarray:
    """Mean quanta per pixel (rows, columns) float32: dose with heel effect through the collimator (`opening`, blades
    leaking 0.05-1 %), times the object's and the `marker`'s transmission, plus scatter: the dose the object removed,
    blurred over 15-60 mm, scaled to a scatter-to-primary ratio of 0.05-2 behind the median of the object (with or
    without a grid); it also reaches under the blades. The marker's lead absorbs what it stops."""
    transmission = projected.transmission
    rows, columns = transmission.shape
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    direction = rng.uniform(0.0, 2.0 * math.pi)
    ramp = ((x - columns / 2) * math.cos(direction) + (y - rows / 2) * math.sin(direction)) / max(rows, columns)
    leakage = rng.uniform(0.0005, 0.01)
    beam = dose * (1.0 + rng.uniform(0.0, 0.12) * ramp) * (leakage + (1.0 - leakage) * opening)
    primary = beam * transmission * marker
    sigma = rng.uniform(15.0, 60.0) / projected.pixel_spacing
    scatter = ndimage.gaussian_filter(beam * (1.0 - transmission), sigma, mode="constant", truncate=2.5)
    behind_object = (projected.object_label > 0) & (opening > 0.5)
    if behind_object.any():
        ratio = math.exp(rng.uniform(math.log(0.05), math.log(2.0)))
        scatter *= ratio * np.median(primary[behind_object]) / max(float(np.median(scatter[behind_object])), 1e-6)
    return (primary + scatter).astype(np.float32)


def _detect(quanta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Detected quanta (rows, columns) float32: Poisson noise, point spread, electronic noise."""
    detected = ndimage.gaussian_filter(rng.poisson(quanta).astype(np.float32), sigma=rng.uniform(0.3, 1.2))
    return detected + rng.normal(0.0, rng.uniform(0.2, 2.0), size=quanta.shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------------- processing


def _unsharp_mask(values: np.ndarray, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Edge enhancement of the log-domain `values` (rows, columns): ``v + gain * (v - blur(v))`` at one or two
    scales of 1-25 mm, gains 0.2-2 (none in 15 % of images)."""
    if rng.uniform() < 0.15:
        return values
    enhanced = values.copy()
    for _ in range(int(rng.integers(1, 3))):
        sigma = math.exp(rng.uniform(math.log(1.0), math.log(25.0))) / spacing
        enhanced += rng.uniform(0.2, 2.0) * (values - ndimage.gaussian_filter(values, sigma, mode="nearest"))
    return enhanced


def _display(values: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 (rows, columns) in [0, 1]: exposure recognition (the object's value range inside the field, from a
    0-5th to an 85-100th percentile, mapped to about [0, 1]: the densest anatomy may saturate white, as the abdomen
    does on a chest film; the open beam is black or dark grey, the anatomy never crushed below it), a tone curve,
    clipping."""
    anatomy = values[(label == SOFT_TISSUE) | (label == BONE)]
    reference = anatomy if anatomy.size >= 16 else values[label != COLLIMATOR]
    reference = reference if reference.size else values.ravel()
    low = np.percentile(reference, rng.uniform(0.0, 5.0))
    high = np.percentile(reference, rng.uniform(85.0, 100.0))  # dense anatomy may saturate, as in chest films
    open_beam = values[label == OPEN_BEAM]
    if open_beam.size:  # black point from the anatomy's low end (open beam black) to below the open beam (dark grey)
        level = float(np.median(open_beam))
        low = level - rng.uniform(-1.0, 0.5) * (low - level)
    high = high + rng.uniform(-0.05, 0.3) * max(high - low, 1e-3)
    scaled = (values - low) / max(high - low, 1e-3)
    return np.clip(_tone_curve(scaled, rng), 0.0, 1.0).astype(np.float32)


def _tone_curve(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A monotonic tone curve on values around [0, 1]: linear (30 %), gamma 0.6-1.6 (30 %) or sigmoid (40 %)."""
    kind = rng.uniform()
    if kind < 0.3:
        return values
    if kind < 0.6:
        return np.clip(values, 0.0, None) ** rng.uniform(0.6, 1.6)
    slope, centre = rng.uniform(3.0, 10.0), rng.uniform(0.35, 0.65)
    low, high = (1.0 / (1.0 + np.exp(-slope * (edge - centre))) for edge in (0.0, 1.0))
    return (1.0 / (1.0 + np.exp(-slope * (values - centre))) - low) / (high - low)


def _quantise(displayed: np.ndarray, bits_stored: int, rng: np.random.Generator) -> np.ndarray:
    """float32 integers: `displayed` in [0, 1] on `bits_stored` bits, using all of the range in half of the images
    and a sub-range of at least 60 % otherwise."""
    top = 2**bits_stored - 1
    offset, span = (0.0, 1.0) if rng.uniform() < 0.5 else (rng.uniform(0.0, 0.15), rng.uniform(0.6, 0.85))
    return np.rint((offset + span * displayed) * top).astype(np.float32)


# ----------------------------------------------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class DicomEncoding:
    """How a radiograph's displayed values are stored in its DICOM file."""

    photometric: str
    rescale_slope: float
    rescale_intercept: float
    window: tuple[float, float] | None

    def stored_values(self, image: np.ndarray, bits_stored: int) -> np.ndarray:
        """uint16 stored values of the displayed values `image`: inverted for MONOCHROME1 (low = white)."""
        values = image.astype(np.uint16)
        return (2**bits_stored - 1) - values if self.photometric == "MONOCHROME1" else values


def sample_encoding(sample: RadiographSample, rng: np.random.Generator) -> DicomEncoding:
    """A DICOM encoding for `sample`: MONOCHROME1 in 50 % of the files, a rescale slope and intercept in 30 %, and a
    window over the anatomy in 35 %; every one reads back (modality LUT, window, MONOCHROME1 inverted) as
    ``slope * sample.image + intercept`` through the window."""
    photometric = "MONOCHROME1" if rng.uniform() < 0.5 else "MONOCHROME2"
    slope, intercept = 1.0, 0.0
    if rng.uniform() < 0.3:
        slope, intercept = float(rng.choice([0.25, 0.5, 2.0])), float(rng.integers(-1024, 1024))
    window = None
    if rng.uniform() < 0.35:
        low, high = _window_limits(sample)
        low, high = slope * low + intercept, slope * high + intercept
        center, width = round((low + high) / 2), max(round(high - low), 2)
        if photometric == "MONOCHROME1":
            # The window applies to the stored (inverted) values: mirror its centre within the modality range.
            center = 2 * intercept + slope * (2**sample.bits_stored - 1) + 1 - center
        window = (float(center), float(width))
    return DicomEncoding(photometric, slope, intercept, window)


def _window_limits(sample: RadiographSample) -> tuple[float, float]:
    """Displayed values a radiographer's window would span: the anatomy inside the field from its 1st to its 99.5th
    percentile, widened by 10 % on each side (the open beam may turn black, the collimated area white)."""
    anatomy = sample.image[(sample.label == SOFT_TISSUE) | (sample.label == BONE)]
    if anatomy.size < 16:
        return float(sample.image.min()), float(sample.image.max())
    low, high = np.percentile(anatomy, [1.0, 99.5])
    margin = 0.1 * (high - low)
    return float(low - margin), float(high + margin)
