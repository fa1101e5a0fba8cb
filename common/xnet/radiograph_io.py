"""Projection radiographs in and out: read DICOM, PNG/JPEG/TIFF or NIfTI as a viewer shows them, write DICOM CR.

``read_radiograph`` returns the image a DICOM viewer would display, as float32 with MONOCHROME2 meaning (high =
bright; on a radiograph, bright = more attenuation, less dose reached the detector): the modality LUT
(``RescaleSlope``/``RescaleIntercept``) is applied, then the VOI LUT or window (``WindowCenter``/``WindowWidth``)
when the file has one, then MONOCHROME1 images are inverted within the output range of those LUTs, so that a
MONOCHROME1 file and a MONOCHROME2 file of the same exposure read back alike. ``RadiographReader`` wraps it for MONAI::

    LoadImaged(keys=["image", "label"], reader=RadiographReader(), ensure_channel_first=True)

Layout. Arrays are indexed (rows, columns), top row first: the order of pydicom's ``pixel_array`` and of
``np.asarray(PIL.Image.open(path))``, not the transposed (columns, rows) order of MONAI's ``PILReader``. Load labels
with the same reader so that image and label share it. The affine is ``diag(row_spacing, column_spacing, 1, 1)``:
it maps (row, column) indices to millimetres in the detector plane, not to patient coordinates. NIfTI files keep
their own affine and their array as stored.

Pixel spacing. A DICOM file's spacing is its ``PixelSpacing`` when that is two positive numbers (mm), else its
``ImagerPixelSpacing`` when that is, else unknown: 1 unit per pixel. Real headers hold a missing, empty, zero or
malformed ``PixelSpacing`` (the computed radiograph RG1 of the ``pydicom-data`` package has ``[0.000, 0.000]``);
such an image is read all the same, and each read that falls back logs one warning naming the file and the spacing
used. Where the spacing came from is kept as ``Radiograph.spacing_source`` (``pixel_spacing_source`` in
``RadiographReader``'s meta data): "PixelSpacing" or "ImagerPixelSpacing" (DICOM), "affine" (NIfTI), or "unknown"
(1 unit per pixel: a DICOM file without usable spacing, and PNG, JPEG and TIFF, which carry none, without warning).

Bad input (a missing, corrupt or unsupported file, no pixel data, colour, several frames, a 3D volume, a photometric
interpretation other than MONOCHROME1/2, non-finite values) raises :class:`~common.errors.InvalidInputError` naming
the file and the problem. A readable image is never refused for its spacing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from monai.config import PathLike
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

try:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pydicom 2 (MONAI Label's environment pins pydicom < 3)
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

from common.data.atomic import atomic_target
from common.data.file_types import DICOM_SUFFIXES, NIFTI_SUFFIXES, PICTURE_SUFFIXES
from common.errors import InvalidInputError

__all__ = [
    "PHOTOMETRIC_INTERPRETATIONS",
    "SPACING_SOURCES",
    "Radiograph",
    "RadiographReader",
    "read_radiograph",
    "write_dicom_cr",
    "write_png",
]

PHOTOMETRIC_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2")
SUPPORTED = (
    f"DICOM ({', '.join(DICOM_SUFFIXES)} or no suffix), pictures ({', '.join(PICTURE_SUFFIXES)}) "
    f"or NIfTI ({', '.join(NIFTI_SUFFIXES)})"
)
# Where a radiograph's pixel spacing came from; "unknown" means 1 unit per pixel.
SPACING_SOURCES = ("PixelSpacing", "ImagerPixelSpacing", "affine", "unknown")

logger = logging.getLogger(__name__)

# PIL modes whose pixels are one grey value each; np.asarray gives (rows, columns) for them.
_GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class Radiograph:
    """A radiograph as displayed: `array` (rows, columns) float32, high = bright; `affine` (4, 4) float64;
    `spacing_source`, where the affine's spacing came from (one of ``SPACING_SOURCES``)."""

    array: np.ndarray
    affine: np.ndarray
    spacing_source: str


def read_radiograph(path: PathLike, apply_voi: bool = True) -> Radiograph:
    """Read one grey radiograph from DICOM, PNG, JPEG, TIFF or NIfTI, as described in the module docstring.

    Args:
        path: the file; DICOM is recognised by its suffix or, without a known suffix, by its ``DICM`` preamble.
        apply_voi: apply a DICOM file's VOI LUT or window, as a viewer does; False keeps the full modality range.

    Returns:
        the :class:`Radiograph`: its array of shape (rows, columns) and dtype float32, and its affine.

    Raises:
        InvalidInputError: naming `path`, for every kind of bad input listed in the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: file does not exist")
    kind = _file_kind(path)
    if kind == "dicom":
        radiograph = _read_dicom(path, apply_voi)
    elif kind == "pil":
        radiograph = _read_pil(path)
    else:
        radiograph = _read_nifti(path)
    if not np.isfinite(radiograph.array).all():
        raise InvalidInputError(f"{path}: the image holds NaN or infinite values; fix or remove the file")
    return radiograph


class RadiographReader(ImageReader):
    """MONAI image reader for 2D grey radiographs: ``read_radiograph`` behind MONAI's reader interface.

    ``LoadImage(reader=RadiographReader())`` (or ``reader="common.xnet.radiograph_io.RadiographReader"``) gives
    float32 arrays of shape (rows, columns), or (1, rows, columns) with ``ensure_channel_first=True``, whose meta
    data hold ``affine`` = ``original_affine`` (4, 4), ``spatial_shape`` (rows, columns), ``original_channel_dim``
    NaN (no channel), ``space`` RAS (so MONAI's writers store the affine unchanged), ``pixel_spacing`` (2,) mm and
    ``pixel_spacing_source`` (a string, one of ``SPACING_SOURCES``; "unknown": 1 unit per pixel).

    ``read`` only checks the file names; the file is decoded and checked in ``get_data``. ``LoadImage`` catches
    exceptions raised by a reader's ``read`` and then tries its other readers, which would hide our
    :class:`~common.errors.InvalidInputError` or decode the file another way; ``get_data``'s errors reach the caller.

    Args:
        apply_voi: apply a DICOM file's VOI LUT or window, as a viewer does.
    """

    def __init__(self, apply_voi: bool = True) -> None:
        super().__init__()
        self.apply_voi = apply_voi

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """Whether every file in `filename` is one this reader takes: a known suffix, or a DICOM preamble."""
        return all(_file_kind(Path(name), strict=False) is not None for name in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> tuple[Path, ...]:
        """The paths in `data`, as they are; decoding is left to ``get_data``."""
        return tuple(Path(name) for name in ensure_tuple(data))

    def get_data(self, img: tuple[Path, ...]) -> tuple[np.ndarray, dict]:
        """Decode the one file in `img`: the (rows, columns) float32 array and its meta data (see the class
        docstring). Several files (MONAI's channel stacking) are refused with an InvalidInputError."""
        if len(img) != 1:
            raise InvalidInputError(f"{[str(p) for p in img]}: RadiographReader reads one file per image")
        radiograph = read_radiograph(img[0], apply_voi=self.apply_voi)
        meta = {
            MetaKeys.AFFINE: radiograph.affine,
            MetaKeys.ORIGINAL_AFFINE: radiograph.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(radiograph.array.shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            MetaKeys.SPACE: SpaceKeys.RAS,
            "pixel_spacing": np.sqrt((radiograph.affine[:2, :2] ** 2).sum(axis=0)),
            "pixel_spacing_source": radiograph.spacing_source,
        }
        return radiograph.array, meta


def write_dicom_cr(
    path: PathLike,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    pixel_spacing: Sequence[float] = (0.2, 0.2),
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    body_part: str | None = None,
    patient_id: str = "SYNTHETIC",
) -> Path:
    """Write a Computed Radiography Image Storage file (explicit VR little endian), atomically.

    Every call creates new study, series and instance UIDs; patient and study attributes get fixed synthetic values.

    Args:
        pixels: (rows, columns) integer stored values in ``[0, 2**bits_stored - 1]``, written as they are: for
            MONOCHROME1 pass values already inverted (0 = white).
        photometric: "MONOCHROME1" or "MONOCHROME2".
        bits_stored: 8 to 16; BitsAllocated is 16, PixelRepresentation 0 (unsigned).
        pixel_spacing: (row spacing, column spacing) mm, written as PixelSpacing and ImagerPixelSpacing.
        rescale_slope, rescale_intercept: the modality LUT; written only when they are not 1 and 0.
        window: (WindowCenter, WindowWidth) in modality LUT output units, or None for no window.
        body_part: BodyPartExamined, a DICOM defined term such as "HAND"; None leaves it empty.
        patient_id: PatientID.

    Returns:
        `path` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: `pixels` not 2D or outside the stored range, or another argument out of its range.
    """
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in 8..16, got {bits_stored}.")
    pixels = np.asarray(pixels)
    _check_stored_pixels(pixels, bits_stored)
    if photometric not in PHOTOMETRIC_INTERPRETATIONS:
        raise ValueError(f"photometric must be one of {PHOTOMETRIC_INTERPRETATIONS}, got {photometric!r}.")
    dataset = _cr_dataset(pixels, photometric, bits_stored, body_part, patient_id)
    dataset.PixelSpacing = dataset.ImagerPixelSpacing = [_decimal(spacing) for spacing in pixel_spacing]
    if (rescale_slope, rescale_intercept) != (1.0, 0.0):
        dataset.RescaleSlope, dataset.RescaleIntercept = _decimal(rescale_slope), _decimal(rescale_intercept)
        dataset.RescaleType = "US"
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = _decimal(window[0]), _decimal(window[1])
    with atomic_target(path) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)
    return Path(path)


def write_png(path: PathLike, array: np.ndarray, bit_depth: int = 16) -> Path:
    """Write a (rows, columns) array of integers in ``[0, 2**bit_depth - 1]`` as an 8- or 16-bit grey PNG, atomically.

    Row 0 becomes the top row of the picture, so ``read_radiograph`` gives `array` back.

    Raises:
        ValueError: `array` not 2D, `bit_depth` not 8 or 16, or values that are not integers in range.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}.")
    array = np.asarray(array)
    _check_stored_pixels(array, bit_depth)
    image = Image.fromarray(array.astype(np.uint8 if bit_depth == 8 else np.uint16))
    with atomic_target(path) as temporary:
        image.save(temporary, format="PNG")
    return Path(path)


def _file_kind(path: Path, strict: bool = True) -> str | None:
    """ "dicom", "pil" or "nifti" for `path`, by suffix or DICOM preamble; else None, or an error when `strict`."""
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if name.endswith(PICTURE_SUFFIXES):
        return "pil"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if _has_dicom_preamble(path):
        return "dicom"
    if strict:
        raise InvalidInputError(f"{path}: unsupported file type; use {SUPPORTED}")
    return None


def _has_dicom_preamble(path: Path) -> bool:
    """Whether `path` is a file with the ``DICM`` prefix after its 128-byte preamble."""
    if not path.is_file():
        return False
    with open(path, "rb") as stream:
        return stream.read(132)[128:] == b"DICM"


def _read_dicom(path: Path, apply_voi: bool) -> Radiograph:
    """Displayed pixels of a single-frame grey DICOM image: modality LUT, VOI (if `apply_voi`), MONOCHROME1 inverted."""
    dataset = _open_dicom(path)
    _check_dicom_image(dataset, path)
    values = apply_modality_lut(_stored_pixels(dataset, path), dataset)
    low, high = _modality_range(dataset)
    if apply_voi:
        values, (low, high) = _apply_voi(values, dataset, (low, high), path)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        values = low + high - values
    spacing, source = _dicom_spacing(dataset, path)
    return Radiograph(np.asarray(values, dtype=np.float32), _spacing_affine(spacing), source)


def _open_dicom(path: Path) -> Dataset:
    """The parsed DICOM file; an InvalidInputError if it is not DICOM or is damaged."""
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise InvalidInputError(f"{path}: not a readable DICOM file ({error}); check that it is complete") from error


def _check_dicom_image(dataset: Dataset, path: Path) -> None:
    """An InvalidInputError unless `dataset` holds one frame of grey (MONOCHROME1/2) pixel data."""
    if "PixelData" not in dataset:
        raise InvalidInputError(
            f"{path}: DICOM file without pixel data (not an image, or truncated); give a complete image file"
        )
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise InvalidInputError(
            f"{path}: colour DICOM image (SamplesPerPixel {dataset.SamplesPerPixel}); a grey radiograph is expected"
        )
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        raise InvalidInputError(
            f"{path}: DICOM file with {dataset.NumberOfFrames} frames; one radiograph per file is expected, "
            "split the frames into separate files"
        )
    photometric = dataset.get("PhotometricInterpretation")
    if photometric not in PHOTOMETRIC_INTERPRETATIONS:
        raise InvalidInputError(
            f"{path}: unsupported PhotometricInterpretation {photometric!r}; expected one of "
            f"{', '.join(PHOTOMETRIC_INTERPRETATIONS)}"
        )


def _stored_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    """The decoded stored values (rows, columns); an InvalidInputError if they cannot be decoded."""
    try:
        pixels = dataset.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as error:
        transfer_syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        raise InvalidInputError(
            f"{path}: cannot decode the pixel data (transfer syntax {transfer_syntax}): {error}; the file may be "
            "truncated, or its compression needs a pydicom plugin (e.g. pylibjpeg)"
        ) from error
    if pixels.ndim != 2:
        raise InvalidInputError(f"{path}: pixel data of shape {pixels.shape}, expected (rows, columns)")
    return pixels


def _modality_range(dataset: Dataset) -> tuple[float, float]:
    """The smallest and largest modality LUT output over all storable values, as pydicom's windowing assumes."""
    if dataset.get("ModalityLUTSequence"):
        return 0.0, float(2 ** dataset.ModalityLUTSequence[0].LUTDescriptor[2] - 1)
    bits = int(dataset.BitsStored)
    low, high = (0, 2**bits - 1) if dataset.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if "RescaleSlope" in dataset and "RescaleIntercept" in dataset:
        slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
        low, high = sorted((slope * low + intercept, slope * high + intercept))
    return float(low), float(high)


def _apply_voi(
    values: np.ndarray, dataset: Dataset, modality_range: tuple[float, float], path: Path
) -> tuple[np.ndarray, tuple[float, float]]:
    """`values` through the file's VOI LUT or window (the LUT when both are present), and the output range."""
    try:
        displayed = apply_voi_lut(values, dataset)
    except (ValueError, NotImplementedError) as error:
        raise InvalidInputError(
            f"{path}: invalid VOI LUT or window ({error}); read it with apply_voi=False to ignore them"
        ) from error
    if displayed is values:
        return values, modality_range
    if dataset.get("VOILUTSequence"):
        return displayed, (0.0, float(2 ** dataset.VOILUTSequence[0].LUTDescriptor[2] - 1))
    return displayed, modality_range


def _dicom_spacing(dataset: Dataset, path: Path) -> tuple[tuple[float, float], str]:
    """(row, column) spacing in mm and its source: PixelSpacing, else ImagerPixelSpacing, else (1.0, 1.0) "unknown".

    A fallback logs one warning naming `path`, what was wrong and what is used instead.
    """
    spacing, problem = _spacing_attribute(dataset, "PixelSpacing")
    if spacing is not None:
        return spacing, "PixelSpacing"
    imager_spacing, imager_problem = _spacing_attribute(dataset, "ImagerPixelSpacing")
    if imager_spacing is not None:
        logger.warning("%s: %s; using ImagerPixelSpacing %s mm", path, problem, imager_spacing)
        return imager_spacing, "ImagerPixelSpacing"
    logger.warning("%s: %s and %s; pixel spacing unknown, using 1 unit per pixel", path, problem, imager_problem)
    return (1.0, 1.0), "unknown"


def _spacing_attribute(dataset: Dataset, keyword: str) -> tuple[tuple[float, float] | None, str]:
    """`keyword`'s value as (row, column) mm when it is two positive finite numbers, else None and what is wrong."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return None, f"there is no {keyword}" if keyword not in dataset else f"{keyword} is empty"
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    try:
        spacing = tuple(float(number) for number in values)
    except (TypeError, ValueError):
        return None, f"{keyword} {values} is not numeric"
    if len(spacing) != 2 or not all(np.isfinite(number) and number > 0 for number in spacing):
        return None, f"{keyword} {spacing} is not usable"
    return spacing, ""


def _spacing_affine(spacing: tuple[float, float]) -> np.ndarray:
    """(4, 4) float64 ``diag(row_spacing, column_spacing, 1, 1)``."""
    return np.diag([spacing[0], spacing[1], 1.0, 1.0])


def _read_pil(path: Path) -> Radiograph:
    """Pixels of a single-frame grey PNG, JPEG or TIFF, spacing unknown (1 unit per pixel); colour with equal
    channels is taken as grey, an alpha channel is ignored."""
    try:
        with Image.open(path) as image:
            num_frames, mode = getattr(image, "n_frames", 1), image.mode
            pixels = np.asarray(image if mode in _GREY_MODES else image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidInputError(f"{path}: not a readable image file ({error}); check that it is complete") from error
    if num_frames > 1:
        raise InvalidInputError(f"{path}: image with {num_frames} frames; one radiograph per file is expected")
    if pixels.ndim == 3:
        pixels = _grey_from_colour(pixels, mode, path)
    return Radiograph(pixels.astype(np.float32), _spacing_affine((1.0, 1.0)), "unknown")


def _grey_from_colour(pixels: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """The red channel of (rows, columns, 3) RGB `pixels` whose red, green and blue are equal; else an error."""
    if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
        raise InvalidInputError(
            f"{path}: colour image (mode {mode}); a grey radiograph is expected, convert it to greyscale"
        )
    return pixels[..., 0]


def _read_nifti(path: Path) -> Radiograph:
    """The array of a 2D NIfTI file as stored (trailing singleton axes dropped), with the file's affine."""
    try:
        image = nib.load(path)
        pixels = np.asanyarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as error:
        raise InvalidInputError(f"{path}: not a readable NIfTI file ({error}); check that it is complete") from error
    while pixels.ndim > 2 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim != 2:
        raise InvalidInputError(
            f"{path}: array of shape {pixels.shape} is not a 2D radiograph; give one 2D image per file"
        )
    return Radiograph(pixels.astype(np.float32), np.asarray(image.affine, dtype=np.float64), "affine")


def _check_stored_pixels(pixels: np.ndarray, bits: int) -> None:
    """A ValueError unless `pixels` is 2D and holds integers in ``[0, 2**bits - 1]``."""
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"pixels must be a non-empty (rows, columns) array, got shape {pixels.shape}.")
    if not np.array_equal(pixels, np.round(pixels)) or pixels.min() < 0 or pixels.max() > 2**bits - 1:
        raise ValueError(f"pixels must be integers in [0, {2**bits - 1}], got {pixels.min()}..{pixels.max()}.")


def _cr_dataset(
    pixels: np.ndarray, photometric: str, bits_stored: int, body_part: str | None, patient_id: str
) -> Dataset:
    """A CR image dataset with file meta, identification, synthetic patient/study attributes and the pixel data."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID = ComputedRadiographyImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.Modality = "CR"
    dataset.PatientName, dataset.PatientID = "Synthetic^Phantom", patient_id
    dataset.PatientBirthDate, dataset.PatientSex = "", "O"
    dataset.StudyDate, dataset.StudyTime, dataset.StudyID = "20000101", "120000", "1"
    dataset.AccessionNumber, dataset.ReferringPhysicianName = "", ""
    dataset.SeriesNumber, dataset.InstanceNumber = 1, 1
    dataset.Manufacturer = "common.xnet.radiograph_io"
    dataset.BodyPartExamined = (body_part or "").upper()
    dataset.ViewPosition, dataset.PatientOrientation = "", ""
    dataset.ImageType = ["DERIVED", "PRIMARY"]
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, bits_stored, bits_stored - 1
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return dataset


def _decimal(value: float) -> str:
    """`value` as a DICOM decimal string (at most 16 characters)."""
    return format(float(value), ".8g")
