"""Sli2Vol data: modality-aware intensity normalisation and random slice pairs for self-supervised training."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    Randomizable,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Transform,
)

from common.data.cases import case_path
from common.errors import InvalidInputError
from common.transforms import CheckIntensityWindowd

__all__ = ["RandSlicePairsd", "modality_normalisation"]

MODALITIES = ("CT", "MRI")


def modality_normalisation(
    keys: KeysCollection,
    modality: str,
    hu_window: Sequence[float] = (-300.0, 400.0),
    mri_percentiles: Sequence[float] = (0.5, 99.5),
) -> Transform:
    """Intensities to [0, 255], the scale the edge profile expects: an HU window for CT, percentiles for MRI.

    Args:
        keys: the image keys.
        modality: "CT" (HU window ``hu_window``) or "MRI" (the image's ``mri_percentiles``, which suits
            z-score normalised or arbitrary-unit MRI).
        hu_window: (lower, upper) HU, clipped. Each image is first checked against it
            (:class:`~common.transforms.CheckIntensityWindowd`): an image it would flatten, e.g. an MRI in [0, 1], is
            refused naming the file and ``hu_window``; one that does not look like HU and fits it badly is warned about.
        mri_percentiles: (lower, upper) percentiles of each image, clipped.
    """
    if modality == "CT":
        advice = "or set --modality MRI (per-image percentiles) if it is not a CT"
        return Compose(
            [
                CheckIntensityWindowd(keys, hu_window, config_id="hu_window", advice=advice),
                ScaleIntensityRanged(keys, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=255.0, clip=True),
            ]
        )
    if modality == "MRI":
        lower, upper = mri_percentiles
        return ScaleIntensityRangePercentilesd(keys, lower=lower, upper=upper, b_min=0.0, b_max=255.0, clip=True)
    raise InvalidInputError(f"modality must be one of {MODALITIES}, got {modality!r}")


class RandSlicePairsd(Randomizable, MapTransform):
    """Draw pairs of slices a few slices apart from a volume, in random order.

    The volume ``(1, H, W, D)`` (channel first, slices along spatial ``axis``) becomes ``num_pairs`` samples
    ``{"reference": (1, h, w), "target": (1, h, w)}`` where the target is 2, 3 or 4 slices (``gaps``) from the
    reference, either side with equal probability. Samples hold only the two slices: the volume's other items
    (file names, a label that self-supervised training does not use) are left behind.

    Args:
        keys: the volume key (one).
        axis: spatial axis along which slices are taken (0, 1 or 2).
        gaps: the slice distances to draw from uniformly.
        num_pairs: samples per volume.
        reference_key, target_key: output keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        axis: int = 2,
        gaps: Sequence[int] = (2, 3, 4),
        num_pairs: int = 4,
        reference_key: str = "reference",
        target_key: str = "target",
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandSlicePairsd takes one volume key, got {self.keys}")
        self.axis = axis
        self.gaps = tuple(int(gap) for gap in gaps)
        self.num_pairs = num_pairs
        self.reference_key, self.target_key = reference_key, target_key

    def randomize(self, depth: int) -> list[tuple[int, int]]:
        """``num_pairs`` (reference, target) slice indices for a volume of ``depth`` slices."""
        usable = [gap for gap in self.gaps if gap < depth]
        pairs = []
        for _ in range(self.num_pairs):
            gap = int(self.R.choice(usable))
            first = int(self.R.randint(0, depth - gap))
            pair = (first, first + gap)
            pairs.append(pair if self.R.rand() < 0.5 else pair[::-1])
        return pairs

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict]:
        key = self.keys[0]
        volume, source = data[key], case_path(data, key)
        if volume.ndim != 4:
            raise InvalidInputError(f"{source}: expected a 3D volume, got shape {tuple(volume.shape[1:])}")
        depth = volume.shape[1 + self.axis]
        if depth <= min(self.gaps):
            raise InvalidInputError(
                f"{source}: {depth} slices along axis {self.axis}, too few for slice pairs {self.gaps} apart"
            )
        samples = []
        for reference, target in self.randomize(depth):
            samples.append(
                {
                    self.reference_key: _slice(volume, self.axis, reference),
                    self.target_key: _slice(volume, self.axis, target),
                }
            )
        return samples


def _slice(volume: torch.Tensor | np.ndarray, axis: int, index: int) -> torch.Tensor:
    """(C, H, W, D) -> (C, h, w): the slice ``index`` along spatial ``axis``, as a plain contiguous tensor."""
    plain = volume.as_tensor() if hasattr(volume, "as_tensor") else torch.as_tensor(volume)
    return plain.select(1 + axis, index).contiguous()
