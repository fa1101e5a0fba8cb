"""MONAI-style transforms (array + dictionary pairs) shared by the bundles."""

from common.transforms.validation import CheckSegmentationInputd, LoadInputImaged

__all__ = ["CheckSegmentationInputd", "LoadInputImaged"]
