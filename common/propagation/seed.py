"""The annotated seed slice: checks on the user's annotation and on its geometry against the image."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.errors import InvalidInputError
from common.transforms.partial_labels import case_path

__all__ = [
    "AnnotatedSeedd",
    "LargestSliceSeedd",
    "annotated_slices",
    "check_same_geometry",
    "keep_slice",
    "largest_area_slice",
    "seed_slice_index",
    "slice_area",
]


def slice_area(label: torch.Tensor, axis: int) -> torch.Tensor:
    """Labelled voxels per slice: label (H, W, D) -> (size along ``axis``,) int64."""
    other = tuple(dim for dim in range(label.ndim) if dim != axis)
    return (label > 0).sum(dim=other)


def annotated_slices(label: torch.Tensor, axis: int) -> list[int]:
    """Indices of the slices along ``axis`` holding at least one labelled voxel."""
    return torch.nonzero(slice_area(label, axis)).flatten().tolist()


def largest_area_slice(label: torch.Tensor, axis: int) -> int:
    """The slice along ``axis`` with the largest labelled area (the evaluation protocol's seed)."""
    return int(torch.argmax(slice_area(label, axis)))


def seed_slice_index(label: torch.Tensor, axis: int, seed_slice: int | None = None, source: str = "label") -> int:
    """The annotated slice to propagate from, with a clear error for every unusable annotation.

    Args:
        label: (H, W, D) annotation.
        axis: spatial axis of the slices.
        seed_slice: use this slice (the others are ignored); None requires exactly one annotated slice.
        source: the file name, for the errors.

    Raises:
        InvalidInputError: axis or seed_slice out of range, no labelled voxel, the chosen slice empty, or
            annotations on several slices when seed_slice is None (the message lists them).
    """
    if not 0 <= axis < label.ndim:
        raise InvalidInputError(
            f"{source}: axis {axis} is out of range for a {label.ndim}D volume (0..{label.ndim - 1})"
        )
    depth = label.shape[axis]
    if seed_slice is not None and not 0 <= seed_slice < depth:
        raise InvalidInputError(
            f"{source}: seed_slice {seed_slice} is out of range: the volume has {depth} slices along axis {axis} "
            f"(0..{depth - 1})"
        )
    slices = annotated_slices(label, axis)
    if not slices:
        raise InvalidInputError(f"{source}: the annotation has no labelled voxel; label one slice of the structure")
    if seed_slice is not None:
        if seed_slice not in slices:
            raise InvalidInputError(
                f"{source}: slice {seed_slice} along axis {axis} has no labelled voxel; annotated slices: {slices}"
            )
        return seed_slice
    if len(slices) > 1:
        raise InvalidInputError(
            f"{source}: labelled voxels on {len(slices)} slices along axis {axis} ({_short_list(slices)}); "
            "annotate a single slice, or choose one with seed_slice=N (and the slice direction with axis=A)"
        )
    return slices[0]


def check_same_geometry(image: torch.Tensor, label: torch.Tensor, image_source: str, label_source: str) -> None:
    """Refuse a label whose shape or affine differs from the image's (both channel-first MetaTensors)."""
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise InvalidInputError(
            f"{label_source}: shape {tuple(label.shape[1:])} differs from the image {image_source} "
            f"{tuple(image.shape[1:])}; the annotation must be saved on the image's grid"
        )
    image_affine, label_affine = getattr(image, "affine", None), getattr(label, "affine", None)
    if image_affine is None or label_affine is None:
        return
    if not np.allclose(np.asarray(image_affine), np.asarray(label_affine), atol=1e-3):
        raise InvalidInputError(
            f"{label_source}: affine differs from the image {image_source}; the annotation must be saved on "
            f"the image's grid (label affine {np.asarray(label_affine).round(3).tolist()}, "
            f"image affine {np.asarray(image_affine).round(3).tolist()})"
        )


class AnnotatedSeedd(MapTransform):
    """Check a user's one-slice annotation against its image and record the slice to propagate from.

    Keeps only the chosen slice of the label (when ``seed_slice`` picks one of several) and writes its index
    to ``index_key``.

    Args:
        keys: the annotation key (one), channel-first (1, H, W, D).
        image_key: the image it must match in shape and affine.
        axis: spatial axis of the slices.
        seed_slice: the slice to use; None requires exactly one annotated slice.
        index_key: where the slice index goes.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        image_key: str = "image",
        axis: int = 2,
        seed_slice: int | None = None,
        index_key: str = "seed_index",
    ) -> None:
        super().__init__(keys)
        self.image_key, self.axis, self.index_key = image_key, axis, index_key
        self.seed_slice = None if seed_slice is None else int(seed_slice)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        result = dict(data)
        for key in self.key_iterator(result):
            label, image = result[key], result[self.image_key]
            check_same_geometry(image, label, case_path(result, self.image_key), case_path(result, key))
            index = seed_slice_index(label[0], self.axis, self.seed_slice, case_path(result, key))
            result[key] = keep_slice(label, self.axis, index)
            result[self.index_key] = index
        return result


class LargestSliceSeedd(MapTransform):
    """Evaluation protocol: the seed is the ground truth's slice with the largest labelled area.

    Args:
        keys: the ground-truth key (one), channel-first (1, H, W, D); it is left as is.
        axis: spatial axis of the slices.
        seed_key: where the one-slice seed annotation goes.
        index_key: where the slice index goes.
    """

    def __init__(self, keys: KeysCollection = "label", axis: int = 2, seed_key: str = "seed", index_key="seed_index"):
        super().__init__(keys)
        self.axis, self.seed_key, self.index_key = axis, seed_key, index_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        result = dict(data)
        for key in self.key_iterator(result):
            label = result[key]
            if not bool((label > 0).any()):
                raise InvalidInputError(f"{case_path(result, key)}: the ground truth has no labelled voxel")
            index = largest_area_slice(label[0], self.axis)
            result[self.seed_key] = keep_slice(label, self.axis, index)
            result[self.index_key] = index
        return result


def keep_slice(label: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    """A copy of channel-first ``label`` (C, H, W, D) that is zero except on slice ``index`` along ``axis``."""
    kept = torch.zeros_like(label)
    selector = [slice(None)] * label.ndim
    selector[1 + axis] = index
    kept[tuple(selector)] = label[tuple(selector)]
    return kept


def _short_list(indices: list[int], limit: int = 12) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... {len(indices) - limit} more" if len(indices) > limit else "")
