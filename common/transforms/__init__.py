"""MONAI-style transforms (array + dictionary pairs) shared by the bundles."""

from common.transforms.intensity import CheckIntensityWindowd
from common.transforms.validation import CheckSegmentationInputd, LoadInputImaged

__all__ = ["CheckIntensityWindowd", "CheckSegmentationInputd", "LoadInputImaged"]
