"""The file name endings the bundles read, in one place (matched case-insensitively by the readers)."""

from __future__ import annotations

__all__ = [
    "ALL_IMAGE_SUFFIXES",
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PICTURE_SUFFIXES",
    "RADIOGRAPH_SUFFIXES",
    "VOLUME_SUFFIXES",
]

DICOM_SUFFIXES = (".dcm", ".dicom")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".mha", ".mhd")  # 3D volumes: SMILE, SMILEr, Sli2Vol
RADIOGRAPH_SUFFIXES = DICOM_SUFFIXES + PICTURE_SUFFIXES + NIFTI_SUFFIXES  # 2D radiographs: XNet
ALL_IMAGE_SUFFIXES = tuple(dict.fromkeys(VOLUME_SUFFIXES + RADIOGRAPH_SUFFIXES))  # what the MONAI Label app serves
