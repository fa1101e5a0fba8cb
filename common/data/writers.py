"""Image writers that never leave a half-written file behind."""

from __future__ import annotations

import os
from pathlib import Path

from monai.config import PathLike
from monai.data import NibabelWriter

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """:class:`monai.data.NibabelWriter` that writes to a hidden temporary file, then renames it into place.

    An interrupted inference therefore leaves either the complete mask or no mask, never a truncated file that
    a later step would read as valid. Use it as ``SaveImaged(writer=AtomicNibabelWriter, ...)``.
    """

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs) -> None:
        target = Path(filename)
        temporary = target.with_name(f".partial-{target.name}")  # same suffix, so nibabel picks the same format
        try:
            super().write(temporary, verbose=verbose, **obj_kwargs)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
