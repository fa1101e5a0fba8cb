"""Image writers that never leave a half-written file behind."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from monai.config import PathLike
from monai.data import NibabelWriter

from common.data.atomic import atomic_target

__all__ = ["AtomicNibabelWriter", "write_label_map"]


class AtomicNibabelWriter(NibabelWriter):
    """:class:`monai.data.NibabelWriter` that writes to a hidden temporary file, then renames it into place.

    An interrupted inference therefore leaves either the complete mask or no mask, never a truncated file that
    a later step would read as valid. Use it as ``SaveImaged(writer=AtomicNibabelWriter, ...)``.
    """

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs) -> None:
        with atomic_target(filename) as temporary:
            super().write(temporary, verbose=verbose, **obj_kwargs)


def write_label_map(label: np.ndarray, affine: np.ndarray, path: PathLike) -> Path:
    """Write an integer label map as a uint8 NIfTI, atomically (hidden temporary file, then rename).

    Args:
        label: (*spatial) or (1, *spatial) integer array with values in 0..255.
        affine: (4, 4) voxel-to-world matrix, e.g. the ``affine`` of the image the labels belong to.
        path: the ``.nii`` or ``.nii.gz`` file to write; its folder is created.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    array = np.asarray(label)
    array = array[0] if array.ndim == 4 and array.shape[0] == 1 else array
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"{path}: label values must be in 0..255, got {array.min()}..{array.max()}")
    image = nib.Nifti1Image(array.astype(np.uint8), np.asarray(affine, dtype=np.float64))
    image.set_data_dtype(np.uint8)
    with atomic_target(path) as temporary:
        nib.save(image, temporary)
    return Path(path)
