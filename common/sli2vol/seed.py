"""The annotated seed slice(s): checks on the user's annotation and on its geometry against the image."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from common.data.cases import case_path
from common.errors import InvalidInputError

__all__ = [
    "SEED_MODES",
    "AnnotatedSeedd",
    "LargestSliceSeedd",
    "annotated_slices",
    "check_same_geometry",
    "keep_slice",
    "keep_slices",
    "largest_area_slice",
    "seed_slice_index",
    "seed_slice_indices",
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


SEED_MODES = ("one", "all")


def seed_slice_index(label: torch.Tensor, axis: int, seed_slice: int | None = None, source: str = "label") -> int:
    """The annotated slice to propagate from, with a clear error for every unusable annotation.

    Args:
        label: (H, W, D) annotation.
        axis: spatial axis of the slices.
        seed_slice: use this slice (the others are ignored); None requires exactly one annotated slice.
        source: the file name, for the errors.

    Raises:
        InvalidInputError: axis or seed_slice out of range, no labelled voxel, the chosen slice empty, or
            annotations on several slices when seed_slice is None (the message lists them and offers
            ``seeds=all``).
    """
    slices = _annotated_in_range(label, axis, source)
    depth = label.shape[axis]
    if seed_slice is not None and not 0 <= seed_slice < depth:
        raise InvalidInputError(
            f"{source}: seed_slice {seed_slice} is out of range: the volume has {depth} slices along axis {axis} "
            f"(0..{depth - 1})"
        )
    if seed_slice is not None:
        if seed_slice not in slices:
            raise InvalidInputError(
                f"{source}: slice {seed_slice} along axis {axis} has no labelled voxel; annotated slices: {slices}"
            )
        return seed_slice
    if len(slices) > 1:
        raise InvalidInputError(
            f"{source}: labelled voxels on {len(slices)} slices along axis {axis} ({_short_list(slices)}); "
            "to propagate from all of them pass seeds=all, or annotate a single slice, or choose one with "
            "seed_slice=N (and the slice direction with axis=A)"
        )
    return slices[0]


def seed_slice_indices(label: torch.Tensor, axis: int, source: str = "label") -> list[int]:
    """The annotated slices of a several-slice annotation (``seeds=all``), checked.

    Every annotated slice must be drawn across ``axis``: two annotated slices side by side along ``axis`` are
    what a drawing in another view (or a 3D label) looks like, and are refused.

    Args:
        label: (H, W, D) annotation.
        axis: spatial axis of the slices.
        source: the file name, for the errors.

    Raises:
        InvalidInputError: axis out of range, no labelled voxel, a single annotated slice, or adjacent
            annotated slices.
    """
    slices = _annotated_in_range(label, axis, source)
    if len(slices) == 1:
        raise InvalidInputError(
            f"{source}: seeds=all needs two or more annotated slices along axis {axis}, found one (slice "
            f"{slices[0]}); annotate more slices, or leave seeds at 'one'"
        )
    adjacent = [(first, second) for first, second in itertools.pairwise(slices) if second == first + 1]
    if adjacent:
        raise InvalidInputError(
            f"{source}: labelled voxels on adjacent slices {adjacent[0][0]} and {adjacent[0][1]} along axis {axis}: "
            f"annotated slices must all be drawn across axis {axis}, apart from each other; is one drawn in another "
            "view (set axis=A for the view you drew in), or is this a 3D label?"
        )
    return slices


def _annotated_in_range(label: torch.Tensor, axis: int, source: str) -> list[int]:
    """The annotated slices along ``axis``, refusing an out-of-range axis and an empty annotation."""
    if not 0 <= axis < label.ndim:
        raise InvalidInputError(
            f"{source}: axis {axis} is out of range for a {label.ndim}D volume (0..{label.ndim - 1})"
        )
    slices = annotated_slices(label, axis)
    if not slices:
        raise InvalidInputError(f"{source}: the annotation has no labelled voxel; label one slice of the structure")
    return slices


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
    """Check a user's annotation against its image and record the slice(s) to propagate from.

    With ``seeds="one"`` the annotation is one slice (or ``seed_slice`` picks one of several, and the others are
    dropped); with ``seeds="all"`` every annotated slice is a seed (:func:`seed_slice_indices`). Writes the
    first seed's index to ``index_key``.

    Args:
        keys: the annotation key (one), channel-first (1, H, W, D).
        image_key: the image it must match in shape and affine.
        axis: spatial axis of the slices.
        seed_slice: with ``seeds="one"``, the slice to use; None requires exactly one annotated slice.
        seeds: ``"one"`` or ``"all"`` (:data:`SEED_MODES`).
        index_key: where the slice index goes.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        image_key: str = "image",
        axis: int = 2,
        seed_slice: int | None = None,
        seeds: str = "one",
        index_key: str = "seed_index",
    ) -> None:
        super().__init__(keys)
        if seeds not in SEED_MODES:
            raise InvalidInputError(f"seeds must be one of {SEED_MODES}, got {seeds!r}")
        if seeds == "all" and seed_slice is not None:
            raise InvalidInputError(f"seed_slice={seed_slice} picks one slice: it cannot go with seeds=all")
        self.image_key, self.axis, self.seeds, self.index_key = image_key, axis, seeds, index_key
        self.seed_slice = None if seed_slice is None else int(seed_slice)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        result = dict(data)
        for key in self.key_iterator(result):
            label, image = result[key], result[self.image_key]
            check_same_geometry(image, label, case_path(result, self.image_key), case_path(result, key))
            if self.seeds == "all":
                result[self.index_key] = seed_slice_indices(label[0], self.axis, case_path(result, key))[0]
                continue
            index = seed_slice_index(label[0], self.axis, self.seed_slice, case_path(result, key))
            result[key] = keep_slice(label, self.axis, index)
            result[self.index_key] = index
        return result


class LargestSliceSeedd(MapTransform):
    """Evaluation protocol: seeds cut from the ground truth, by default its slice with the largest labelled area.

    With ``positions``, the seeds are the slices at those fractions of the ground truth's extent along ``axis``
    (0 its first labelled slice, 1 its last; ``[0.25, 0.5, 0.75]`` for three seeds), each rounded to the
    nearest slice, duplicates dropped.

    Args:
        keys: the ground-truth key (one), channel-first (1, H, W, D); it is left as is.
        axis: spatial axis of the slices.
        positions: fractions of the labelled extent, each in [0, 1]; None: the largest-area slice.
        seed_key: where the seed annotation goes (the ground truth on the seed slices, zero elsewhere).
        index_key: where the first seed's index goes.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        axis: int = 2,
        positions: Sequence[float] | None = None,
        seed_key: str = "seed",
        index_key: str = "seed_index",
    ) -> None:
        super().__init__(keys)
        if positions is not None and not all(0.0 <= float(p) <= 1.0 for p in positions):
            raise ValueError(f"positions must be fractions in [0, 1], got {list(positions)}")
        self.axis, self.seed_key, self.index_key = axis, seed_key, index_key
        self.positions = None if positions is None else [float(p) for p in positions]

    def seed_indices(self, label: torch.Tensor) -> list[int]:
        """The seed slices of an (H, W, D) ground truth with at least one labelled voxel."""
        if self.positions is None:
            return [largest_area_slice(label, self.axis)]
        labelled = annotated_slices(label, self.axis)
        first, last = labelled[0], labelled[-1]
        return sorted({round(first + position * (last - first)) for position in self.positions})

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        result = dict(data)
        for key in self.key_iterator(result):
            label = result[key]
            if not bool((label > 0).any()):
                raise InvalidInputError(f"{case_path(result, key)}: the ground truth has no labelled voxel")
            indices = self.seed_indices(label[0])
            result[self.seed_key] = keep_slices(label, self.axis, indices)
            result[self.index_key] = indices[0]
        return result


def keep_slice(label: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    """A copy of channel-first ``label`` (C, H, W, D) that is zero except on slice ``index`` along ``axis``."""
    return keep_slices(label, axis, [index])


def keep_slices(label: torch.Tensor, axis: int, indices: Sequence[int]) -> torch.Tensor:
    """A copy of channel-first ``label`` (C, H, W, D) that is zero except on the slices ``indices`` along ``axis``."""
    kept = torch.zeros_like(label)
    selector: list = [slice(None)] * label.ndim
    selector[1 + axis] = list(indices)
    kept[tuple(selector)] = label[tuple(selector)]
    return kept


def _short_list(indices: list[int], limit: int = 12) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... {len(indices) - limit} more" if len(indices) > limit else "")
