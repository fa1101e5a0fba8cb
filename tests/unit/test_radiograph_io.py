"""Tests of radiograph reading and writing (common.xnet.radiograph_io) on tiny files written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK
from monai.data import MetaTensor
from monai.transforms import LoadImaged
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from common.data.file_types import RADIOGRAPH_SUFFIXES
from common.errors import InvalidInputError
from common.xnet.radiograph_io import (
    RadiographReader,
    read_radiograph,
    write_dicom_cr,
    write_png,
)
from tests.real_radiographs import rg1_path
from tools.synthetic_xray import generate_radiograph

# Non-square and asymmetric, so that a transposed or flipped read cannot pass.
ASYMMETRIC = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 37) % 251


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, int]:
    """Detector values (48, 64) of a synthetic radiograph and their bits stored."""
    sample = generate_radiograph(np.random.default_rng(11), (48, 64), body_part="hand")
    return sample.image.astype(np.uint16), sample.bits_stored


def _edited(path, edit) -> None:
    """Apply `edit` to the DICOM dataset at `path` and save it in place."""
    dataset = pydicom.dcmread(path)
    edit(dataset)
    dataset.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("rescale", [(1.0, 0.0), (2.0, -100.0)])
@pytest.mark.parametrize("windowed", [False, True])
def test_monochrome1_reads_like_monochrome2(tmp_path, phantom, rescale, windowed):
    pixels, bits = phantom
    slope, intercept = rescale
    top = 2**bits - 1
    center, width = slope * float(np.median(pixels)) + intercept, slope * 800.0
    # A MONOCHROME1 window applies to the inverted stored values: mirror its centre in the modality range.
    mirrored_center = 2 * intercept + slope * top + 1 - center
    window2, window1 = ((center, width), (mirrored_center, width)) if windowed else (None, None)
    write_dicom_cr(tmp_path / "m2.dcm", pixels, "MONOCHROME2", bits, (0.2, 0.2), slope, intercept, window2)
    write_dicom_cr(tmp_path / "m1.dcm", top - pixels, "MONOCHROME1", bits, (0.2, 0.2), slope, intercept, window1)
    monochrome2, monochrome1 = (read_radiograph(tmp_path / name).array for name in ("m2.dcm", "m1.dcm"))
    assert monochrome2.shape == monochrome1.shape == (48, 64) and monochrome1.dtype == np.float32
    one_step = (slope * top) / (width - 1) if windowed else 0.0  # one step of the window's output
    np.testing.assert_allclose(monochrome1, monochrome2, atol=one_step + 1e-3)
    if not windowed:
        np.testing.assert_allclose(monochrome2, slope * pixels + intercept, rtol=1e-6)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    stored = np.array([[0, 1, 2, 3], [10, 20, 30, 40], [100, 200, 300, 400], [4095, 4094, 0, 7]], dtype=np.uint16)
    write_dicom_cr(tmp_path / "m2.dcm", stored, rescale_slope=2.5, rescale_intercept=-10.0)
    write_dicom_cr(tmp_path / "m1.dcm", stored, "MONOCHROME1", rescale_slope=2.0, rescale_intercept=5.0)
    assert read_radiograph(tmp_path / "m2.dcm").array[0].tolist() == [-10.0, -7.5, -5.0, -2.5]
    assert read_radiograph(tmp_path / "m2.dcm").array[3].tolist() == [10227.5, 10225.0, -10.0, 7.5]
    # MONOCHROME1: 2 * stored + 5 lies in [5, 8195]; inverted within that range: 8200 - (2 * stored + 5).
    assert read_radiograph(tmp_path / "m1.dcm").array[0].tolist() == [8195.0, 8193.0, 8191.0, 8189.0]


def test_window_is_applied_unless_disabled(tmp_path):
    stored = np.array([[0, 75, 76, 100], [124, 125, 200, 4095]], dtype=np.uint16)
    write_dicom_cr(tmp_path / "windowed.dcm", stored, bits_stored=12, window=(100.0, 50.0))
    # DICOM LINEAR window: below c - 0.5 - (w - 1) / 2 = 75 -> 0, above 124 -> 4095, else linear.
    expected = [[0.0, 0.0, (76 - 99.5) / 49 + 0.5, (100 - 99.5) / 49 + 0.5], [(124 - 99.5) / 49 + 0.5, 1.0, 1.0, 1.0]]
    np.testing.assert_allclose(read_radiograph(tmp_path / "windowed.dcm").array, np.array(expected) * 4095, rtol=1e-6)
    np.testing.assert_array_equal(read_radiograph(tmp_path / "windowed.dcm", apply_voi=False).array, stored)


def test_voi_lut_sequence_is_applied_and_inverted_within_its_range(tmp_path):
    def add_voi_lut(dataset: Dataset) -> None:
        item = Dataset()
        item.LUTDescriptor = [4, 0, 10]
        item.add_new("LUTData", "US", [0, 300, 600, 1023])
        dataset.VOILUTSequence = DicomSequence([item])

    stored = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        write_dicom_cr(tmp_path / f"{photometric}.dcm", stored, photometric)
        _edited(tmp_path / f"{photometric}.dcm", add_voi_lut)
    assert read_radiograph(tmp_path / "MONOCHROME2.dcm").array.tolist() == [[0, 300], [600, 1023]]
    assert read_radiograph(tmp_path / "MONOCHROME1.dcm").array.tolist() == [[1023, 723], [423, 0]]


@pytest.mark.parametrize("bits", [12, 14, 16])
def test_bits_stored_round_trip(tmp_path, bits):
    stored = np.array([[0, 1, 2**bits - 2], [2**bits - 1, 2 ** (bits - 1), 5]], dtype=np.uint16)
    write_dicom_cr(tmp_path / "image.dcm", stored, bits_stored=bits)
    dataset = pydicom.dcmread(tmp_path / "image.dcm")
    assert (dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit) == (16, bits, bits - 1)
    np.testing.assert_array_equal(read_radiograph(tmp_path / "image.dcm").array, stored)
    with pytest.raises(ValueError, match="integers in"):
        write_dicom_cr(tmp_path / "too_high.dcm", stored.astype(np.int64) + 1, bits_stored=bits)


def test_written_dicom_is_a_valid_cr_image(tmp_path):
    write_dicom_cr(tmp_path / "image.dcm", ASYMMETRIC, pixel_spacing=(0.15, 0.3), body_part="hand")
    dataset = pydicom.dcmread(tmp_path / "image.dcm")
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1" and dataset.Modality == "CR"
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert dataset.BodyPartExamined == "HAND" and dataset.PatientID and dataset.StudyInstanceUID
    np.testing.assert_array_equal(dataset.pixel_array, ASYMMETRIC)
    image = SimpleITK.ReadImage(str(tmp_path / "image.dcm"))  # GDCM, as ITK reads it
    np.testing.assert_array_equal(SimpleITK.GetArrayFromImage(image).reshape(5, 7), ASYMMETRIC)
    write_dicom_cr(tmp_path / "other.dcm", ASYMMETRIC)
    assert pydicom.dcmread(tmp_path / "other.dcm").SOPInstanceUID != dataset.SOPInstanceUID


def test_pixel_spacing_gives_the_affine(tmp_path, caplog):
    write_dicom_cr(tmp_path / "image.dcm", ASYMMETRIC, pixel_spacing=(0.15, 0.3))
    radiograph = read_radiograph(tmp_path / "image.dcm")
    np.testing.assert_allclose(radiograph.affine, np.diag([0.15, 0.3, 1.0, 1.0]))
    assert radiograph.spacing_source == "PixelSpacing" and not caplog.records
    _edited(tmp_path / "image.dcm", lambda dataset: delattr(dataset, "PixelSpacing"))
    radiograph = read_radiograph(tmp_path / "image.dcm")
    np.testing.assert_allclose(radiograph.affine, np.diag([0.15, 0.3, 1.0, 1.0]))
    assert radiograph.spacing_source == "ImagerPixelSpacing"
    _edited(tmp_path / "image.dcm", lambda dataset: delattr(dataset, "ImagerPixelSpacing"))
    radiograph = read_radiograph(tmp_path / "image.dcm")
    np.testing.assert_allclose(radiograph.affine, np.eye(4))
    assert radiograph.spacing_source == "unknown"
    assert "there is no PixelSpacing and there is no ImagerPixelSpacing" in caplog.records[-1].getMessage()


def test_zero_pixel_spacing_falls_back_to_imager_pixel_spacing(tmp_path, caplog):
    write_dicom_cr(tmp_path / "image.dcm", ASYMMETRIC, pixel_spacing=(0.15, 0.3))
    _edited(tmp_path / "image.dcm", lambda dataset: setattr(dataset, "PixelSpacing", [0, 0]))
    radiograph = read_radiograph(tmp_path / "image.dcm")
    np.testing.assert_allclose(radiograph.affine, np.diag([0.15, 0.3, 1.0, 1.0]))
    assert radiograph.spacing_source == "ImagerPixelSpacing"
    [record] = caplog.records
    assert record.levelname == "WARNING" and str(tmp_path / "image.dcm") in record.getMessage()
    assert "PixelSpacing (0.0, 0.0) is not usable; using ImagerPixelSpacing (0.15, 0.3) mm" in record.getMessage()


def _non_numeric_spacing(path):
    """Both spacing attributes of `path` (written as 0.25\\0.25) made non-numeric, of the same length."""
    path.write_bytes(path.read_bytes().replace(b"0.25\\0.25", b"ab\\cd0.25"))


UNUSABLE_SPACINGS = {
    "zero": (lambda path: _edited(path, lambda d: setattr(d, "PixelSpacing", [0, 0])), "(0.0, 0.0) is not usable"),
    "negative": (lambda path: _edited(path, lambda d: setattr(d, "PixelSpacing", [-1, 1])), "(-1.0, 1.0) is not"),
    "one_value": (lambda path: _edited(path, lambda d: setattr(d, "PixelSpacing", "0.2")), "(0.2,) is not usable"),
    "empty": (lambda path: _edited(path, lambda d: setattr(d, "PixelSpacing", "")), "PixelSpacing is empty"),
    "missing": (lambda path: _edited(path, lambda d: delattr(d, "PixelSpacing")), "there is no PixelSpacing"),
    "non_numeric": (_non_numeric_spacing, "PixelSpacing ['ab', 'cd0.25'] is not numeric"),
}


@pytest.mark.parametrize("case", UNUSABLE_SPACINGS)
def test_unusable_spacing_is_unknown_and_logged_once(tmp_path, caplog, case):
    write_dicom_cr(tmp_path / "image.dcm", ASYMMETRIC, pixel_spacing=(0.25, 0.25))
    spoil, problem = UNUSABLE_SPACINGS[case]
    if case != "non_numeric":
        _edited(tmp_path / "image.dcm", lambda dataset: delattr(dataset, "ImagerPixelSpacing"))
    spoil(tmp_path / "image.dcm")
    loader = LoadImaged(keys="image", reader=RadiographReader(), ensure_channel_first=True)
    image = loader({"image": str(tmp_path / "image.dcm")})["image"]
    np.testing.assert_array_equal(image[0].numpy(), ASYMMETRIC)
    np.testing.assert_allclose(image.affine.numpy(), np.eye(4))
    np.testing.assert_allclose(image.meta["pixel_spacing"], [1.0, 1.0])
    assert image.meta["pixel_spacing_source"] == "unknown"
    [record] = [record for record in caplog.records if record.name == "common.xnet.radiograph_io"]
    message = record.getMessage()
    assert record.levelname == "WARNING" and message.startswith(f"{tmp_path / 'image.dcm'}: ")
    assert problem in message and message.endswith("pixel spacing unknown, using 1 unit per pixel")


def test_spacing_source_of_png_and_nifti(tmp_path, caplog):
    write_png(tmp_path / "image.png", ASYMMETRIC, bit_depth=8)
    nib.save(nib.Nifti1Image(ASYMMETRIC.astype(np.float32), np.diag([0.5, 0.7, 1.0, 1.0])), tmp_path / "x.nii.gz")
    assert read_radiograph(tmp_path / "image.png").spacing_source == "unknown"  # PNG has no spacing to be wrong
    assert read_radiograph(tmp_path / "x.nii.gz").spacing_source == "affine"
    assert not caplog.records


@pytest.fixture(scope="module")
def rg1(tmp_path_factory) -> Path:
    """RG1_UNCR.dcm of pydicom-data (a real CR chest radiograph with PixelSpacing 0\\0); skipped when unavailable."""
    return rg1_path(tmp_path_factory)


def test_real_computed_radiograph_with_zero_spacing_is_read(rg1, caplog):
    radiograph = read_radiograph(rg1)
    image = LoadImaged(keys="image", reader=RadiographReader(), ensure_channel_first=True)({"image": str(rg1)})["image"]
    assert radiograph.array.shape == (1955, 1841) and image.shape == (1, 1955, 1841)
    assert radiograph.spacing_source == image.meta["pixel_spacing_source"] == "unknown"
    np.testing.assert_allclose(image.affine.numpy(), np.eye(4))
    np.testing.assert_array_equal(image[0].numpy(), radiograph.array)
    warnings = [record.getMessage() for record in caplog.records if record.name == "common.xnet.radiograph_io"]
    assert len(warnings) == 2 and "RG1_UNCR.dcm: PixelSpacing (0.0, 0.0) is not usable" in warnings[0]
    # MONOCHROME1 inverted: the open beam above the shoulder (top left) is dark, the mediastinum (centre) bright.
    corner, centre = radiograph.array[:200, :200].mean(), radiograph.array[900:1100, 850:1000].mean()
    assert corner < centre


def test_dicom_without_suffix_is_recognised_by_its_preamble(tmp_path):
    write_dicom_cr(tmp_path / "image.dcm", ASYMMETRIC)
    (tmp_path / "image.dcm").rename(tmp_path / "IM0001")
    assert RadiographReader().verify_suffix(tmp_path / "IM0001")
    assert not RadiographReader().verify_suffix(tmp_path / "notes.txt")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "IM0001").array, ASYMMETRIC)


@pytest.mark.parametrize(("name", "bit_depth"), [("image8.png", 8), ("image16.png", 16)])
def test_png_keeps_the_rows_columns_layout(tmp_path, name, bit_depth):
    array = ASYMMETRIC.astype(np.uint16) * (1 if bit_depth == 8 else 257)
    write_png(tmp_path / name, array, bit_depth=bit_depth)
    assert Image.open(tmp_path / name).mode == ("L" if bit_depth == 8 else "I;16")
    radiograph = read_radiograph(tmp_path / name)
    assert radiograph.array.dtype == np.float32
    np.testing.assert_array_equal(radiograph.array, array)
    np.testing.assert_array_equal(radiograph.affine, np.eye(4))


def test_tiff_and_grey_rgb_png_are_read(tmp_path):
    Image.fromarray(ASYMMETRIC).save(tmp_path / "image.tif")
    Image.fromarray(np.repeat(ASYMMETRIC.astype(np.uint8)[..., None], 3, axis=2)).save(tmp_path / "grey_rgb.png")
    for name in ("image.tif", "grey_rgb.png"):
        np.testing.assert_array_equal(read_radiograph(tmp_path / name).array, ASYMMETRIC)


@pytest.mark.parametrize("trailing", [(), (1,)])
def test_nifti_keeps_its_array_and_affine(tmp_path, trailing):
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    nib.save(nib.Nifti1Image(ASYMMETRIC.astype(np.float32).reshape(5, 7, *trailing), affine), tmp_path / "x.nii.gz")
    radiograph = read_radiograph(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(radiograph.array, ASYMMETRIC)
    np.testing.assert_allclose(radiograph.affine, affine)


@pytest.mark.parametrize("reader", [RadiographReader(), "common.xnet.radiograph_io.RadiographReader"])
def test_load_imaged_gives_channel_first_metatensors(tmp_path, reader):
    write_dicom_cr(tmp_path / "image.dcm", 4095 - ASYMMETRIC, "MONOCHROME1", pixel_spacing=(0.2, 0.3))
    write_png(tmp_path / "label.png", ASYMMETRIC % 3, bit_depth=8)
    loader = LoadImaged(keys=["image", "label"], reader=reader, ensure_channel_first=True)
    data = loader({"image": str(tmp_path / "image.dcm"), "label": str(tmp_path / "label.png")})
    image, label = data["image"], data["label"]
    assert isinstance(image, MetaTensor) and image.shape == label.shape == (1, 5, 7)
    np.testing.assert_array_equal(image[0].numpy(), ASYMMETRIC)  # MONOCHROME1 inverted back
    np.testing.assert_array_equal(label[0].numpy(), ASYMMETRIC % 3)
    np.testing.assert_allclose(image.affine.numpy(), np.diag([0.2, 0.3, 1.0, 1.0]))
    np.testing.assert_allclose(image.meta["pixel_spacing"], [0.2, 0.3])
    assert image.meta["filename_or_obj"].endswith("image.dcm")


def _no_pixel_data(path):
    write_dicom_cr(path.with_suffix(".dcm"), ASYMMETRIC)
    _edited(path.with_suffix(".dcm"), lambda dataset: delattr(dataset, "PixelData"))
    return path.with_suffix(".dcm")


def _rgb_dicom(path):
    def to_rgb(dataset: Dataset) -> None:
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
        dataset.PixelData = np.repeat(ASYMMETRIC.astype(np.uint8)[..., None], 3, axis=2).tobytes()

    write_dicom_cr(path.with_suffix(".dcm"), ASYMMETRIC)
    _edited(path.with_suffix(".dcm"), to_rgb)
    return path.with_suffix(".dcm")


def _multi_frame_dicom(path):
    def to_two_frames(dataset: Dataset) -> None:
        dataset.NumberOfFrames = 2
        dataset.PixelData = dataset.PixelData * 2

    write_dicom_cr(path.with_suffix(".dcm"), ASYMMETRIC)
    _edited(path.with_suffix(".dcm"), to_two_frames)
    return path.with_suffix(".dcm")


def _palette_dicom(path):
    write_dicom_cr(path.with_suffix(".dcm"), ASYMMETRIC)
    _edited(path.with_suffix(".dcm"), lambda dataset: setattr(dataset, "PhotometricInterpretation", "PALETTE COLOR"))
    return path.with_suffix(".dcm")


def _truncated_dicom(path):
    write_dicom_cr(path.with_suffix(".dcm"), ASYMMETRIC)
    data = path.with_suffix(".dcm").read_bytes()
    path.with_suffix(".dcm").write_bytes(data[:-20])
    return path.with_suffix(".dcm")


def _not_dicom(path):
    path.with_suffix(".dcm").write_bytes(b"this is not a DICOM file" * 10)
    return path.with_suffix(".dcm")


def _volume_nifti(path):
    nib.save(nib.Nifti1Image(np.zeros((5, 7, 3), dtype=np.float32), np.eye(4)), path.with_suffix(".nii.gz"))
    return path.with_suffix(".nii.gz")


def _nan_nifti(path):
    array = np.zeros((5, 7), dtype=np.float32)
    array[2, 3] = np.nan
    nib.save(nib.Nifti1Image(array, np.eye(4)), path.with_suffix(".nii"))
    return path.with_suffix(".nii")


def _colour_png(path):
    colour = np.zeros((5, 7, 3), dtype=np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def _corrupt_png(path):
    path.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    return path.with_suffix(".png")


def _multi_frame_tiff(path):
    frames = [Image.fromarray(ASYMMETRIC), Image.fromarray(ASYMMETRIC)]
    frames[0].save(path.with_suffix(".tif"), save_all=True, append_images=frames[1:])
    return path.with_suffix(".tif")


def _unsupported_suffix(path):
    path.with_suffix(".txt").write_text("hello")
    return path.with_suffix(".txt")


def _missing(path):
    return path.with_suffix(".dcm")


BAD_INPUTS = {
    "no_pixel_data": (_no_pixel_data, "without pixel data"),
    "rgb_dicom": (_rgb_dicom, "colour"),
    "multi_frame_dicom": (_multi_frame_dicom, "2 frames"),
    "palette_dicom": (_palette_dicom, "PhotometricInterpretation"),
    "truncated_dicom": (_truncated_dicom, "cannot decode"),
    "not_dicom": (_not_dicom, "not a readable DICOM"),
    "volume_nifti": (_volume_nifti, "not a 2D radiograph"),
    "nan_nifti": (_nan_nifti, "NaN"),
    "colour_png": (_colour_png, "colour"),
    "corrupt_png": (_corrupt_png, "not a readable image"),
    "multi_frame_tiff": (_multi_frame_tiff, "2 frames"),
    "unsupported_suffix": (_unsupported_suffix, "unsupported file type"),
    "missing": (_missing, "does not exist"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_an_error_naming_the_file(tmp_path, case):
    make, problem = BAD_INPUTS[case]
    path = make(tmp_path / case)
    with pytest.raises(InvalidInputError, match=problem) as error:
        read_radiograph(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("case", ["rgb_dicom", "volume_nifti"])
def test_load_image_passes_the_error_through(tmp_path, case):
    make, problem = BAD_INPUTS[case]
    path = make(tmp_path / case)
    with pytest.raises(InvalidInputError, match=problem):
        LoadImaged(keys="image", reader=RadiographReader(), ensure_channel_first=True)({"image": str(path)})


def test_several_files_for_one_image_are_refused(tmp_path):
    write_png(tmp_path / "a.png", ASYMMETRIC, bit_depth=8)
    write_png(tmp_path / "b.png", ASYMMETRIC, bit_depth=8)
    loader = LoadImaged(keys="image", reader=RadiographReader())
    with pytest.raises(InvalidInputError, match="one file per image"):
        loader({"image": [str(tmp_path / "a.png"), str(tmp_path / "b.png")]})


@pytest.mark.parametrize("suffix", RADIOGRAPH_SUFFIXES)
def test_every_listed_suffix_is_read(tmp_path, suffix):
    assert {".dcm", ".png", ".tif", ".nii.gz"} <= set(RADIOGRAPH_SUFFIXES)
    path = tmp_path / f"image{suffix}"
    assert RadiographReader().verify_suffix(str(path)) and RadiographReader().verify_suffix(str(path).upper())
    if suffix in (".dcm", ".dicom"):
        write_dicom_cr(path, ASYMMETRIC.astype(np.float32))
    elif suffix in (".nii", ".nii.gz"):
        nib.save(nib.Nifti1Image(ASYMMETRIC.astype(np.float32), np.eye(4)), path)
    else:
        Image.fromarray(ASYMMETRIC.astype(np.uint8)).save(path)
    assert read_radiograph(path).array.shape == ASYMMETRIC.shape
