"""Checks of loaded images and labels that turn bad input into a clear error naming the file."""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping

import torch
from monai.data import ImageReader
from monai.transforms import LoadImaged, Transform
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from common.data.cases import case_path
from common.errors import InvalidInputError

__all__ = ["CheckSegmentationInputd", "LoadInputImaged"]

# What MONAI's readers (NiBabel, ITK, PIL, pydicom) raise for a file they cannot decode: missing, truncated, empty,
# not an image, or a format without a reader ("cannot find a suitable reader", a RuntimeError).
READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, ImageFileError, HeaderDataError, zlib.error)


class LoadInputImaged(LoadImaged):
    """MONAI's ``LoadImaged`` (same arguments) for user input: a file that cannot be read raises an
    :class:`~common.errors.InvalidInputError` naming it, so that it is reported, or skipped by a
    :class:`~common.data.tolerant.SkipUnreadableDataset`, like any other bad input.

    The error names the files of all ``keys`` present (the one of a single-key loader exactly) and keeps the
    reader's message; an InvalidInputError of the reader itself passes unchanged.
    """

    def __call__(self, data: Mapping[Hashable, object], reader: ImageReader | None = None) -> dict:
        try:
            return super().__call__(data, reader)
        except InvalidInputError:
            raise
        except READ_ERRORS as error:
            files = ", ".join(case_path(data, key) for key in self.key_iterator(dict(data)))
            raise InvalidInputError(
                f"{files}: not a readable image ({type(error).__name__}: {error}); check that the file is complete "
                "and in a supported format (NIfTI, NRRD, MetaImage, DICOM)"
            ) from error


class CheckSegmentationInputd(Transform):
    """Validate a loaded, channel-first image (and label, when present) before any resampling.

    Checks that the image has ``spatial_dims`` spatial dimensions, each at least ``min_size`` voxels, and no NaN;
    that the label has the image's spatial shape; and that label values are integers in
    0..``num_foreground_classes``.

    Args:
        num_foreground_classes: K, the largest valid label value (label values 0..K, 0 being background; XNet,
            whose C classes are 0..C-1, passes C - 1); None skips the label value check.
        spatial_dims: 3 for volumes.
        image_key: key of the image, shape (C, *spatial).
        label_key: key of the label, shape (1, *spatial); skipped when absent from the data.
        num_channels: the image's required channel count; None accepts any.
        min_size: the smallest accepted length of each spatial dimension.
    """

    def __init__(
        self,
        num_foreground_classes: int | None = None,
        spatial_dims: int = 3,
        image_key: str = "image",
        label_key: str = "label",
        num_channels: int | None = None,
        min_size: int = 2,
    ) -> None:
        self.num_foreground_classes = num_foreground_classes
        self.spatial_dims = spatial_dims
        self.num_channels = num_channels
        self.min_size = min_size
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping[Hashable, torch.Tensor]:
        image_name = case_path(data, self.image_key)
        image = data[self.image_key]
        self.check_image(image, image_name)
        if self.label_key in data:
            self.check_label(data[self.label_key], image.shape[1:], case_path(data, self.label_key), image_name)
        return data

    def check_image(self, image: torch.Tensor, name: str) -> None:
        spatial_shape = tuple(image.shape[1:])
        if len(spatial_shape) != self.spatial_dims or min(spatial_shape) < 2:
            raise InvalidInputError(
                f"{name}: expected a {self.spatial_dims}D image, got spatial shape {spatial_shape}; "
                f"this bundle segments {self.spatial_dims}D {'volumes' if self.spatial_dims == 3 else 'images'}"
            )
        if min(spatial_shape) < self.min_size:
            raise InvalidInputError(
                f"{name}: the image is {'×'.join(map(str, spatial_shape))} pixels, smaller than the "
                f"{self.min_size} pixels per side this network needs"
            )
        if self.num_channels is not None and image.shape[0] != self.num_channels:
            raise InvalidInputError(f"{name}: expected {self.num_channels} image channel(s), got {image.shape[0]}")
        nan_count = int(torch.isnan(image).sum()) if image.is_floating_point() else 0
        if nan_count:
            raise InvalidInputError(f"{name}: the image holds {nan_count} NaN voxels; fix or mask them first")

    def check_label(self, label: torch.Tensor, image_shape: tuple, name: str, image_name: str) -> None:
        if tuple(label.shape[1:]) != tuple(image_shape):
            raise InvalidInputError(
                f"{name}: label spatial shape {tuple(label.shape[1:])} differs from the image {image_name} "
                f"spatial shape {tuple(image_shape)}"
            )
        if self.num_foreground_classes is None:
            return
        values = torch.unique(label)
        bad = values[(values < 0) | (values > self.num_foreground_classes) | (values != torch.round(values))]
        if len(bad):
            shown = ", ".join(f"{v:g}" for v in bad[:5].tolist())
            raise InvalidInputError(
                f"{name}: label values must be integers in 0..{self.num_foreground_classes}, found {shown}"
                + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            )
