"""Shape interpolation between label maps by signed distance, per label (for skipped and between-seed slices)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["fuse_label_maps", "interpolate_label_maps", "signed_distance"]


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean signed distance of a (H, W) boolean mask in pixels: negative inside, positive outside.

    A pixel inside is at minus its distance to the nearest outside pixel, a pixel outside at its distance to the
    nearest inside pixel, so the mask is exactly ``signed_distance(mask) < 0``. An empty mask is everywhere at
    ``H + W`` (further than any pixel of the slice), so interpolating towards it shrinks a shape away.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, float(sum(mask.shape)))
    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


def fuse_label_maps(label_maps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted per-label signed-distance average of (H, W) int label maps (0 background).

    Each label's fused distance is ``sum_i w_i * signed_distance(map_i == label) / sum_i w_i``; a pixel takes the
    label whose fused distance is most negative, or 0 where none is negative. Maps that agree give themselves
    back, whatever the weights.

    Args:
        label_maps: (H, W) int label maps of one slice, e.g. the propagations from two seeds.
        weights: one non-negative weight per map, not all 0.

    Returns:
        (H, W) int64 label map.
    """
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (len(label_maps),) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"need one non-negative weight per label map, not all 0; got {weights.tolist()}")
    weights = weights / weights.sum()
    labels = np.unique(np.concatenate([np.unique(m) for m in label_maps]))
    labels = labels[labels > 0]
    fused = np.zeros(label_maps[0].shape, dtype=np.int64)
    if not len(labels):
        return fused
    distances = np.stack(
        [sum(w * signed_distance(m == label) for w, m in zip(weights, label_maps, strict=True)) for label in labels]
    )
    nearest = distances.argmin(0)
    inside = distances.min(0) < 0
    fused[inside] = labels[nearest[inside]]
    return fused


def interpolate_label_maps(first: np.ndarray, last: np.ndarray, steps: int) -> list[np.ndarray]:
    """The ``steps - 1`` label maps evenly between ``first`` and ``last`` (excluded), by signed distance.

    Slice j of ``steps`` (1 <= j < steps) fuses ``first`` with weight ``steps - j`` and ``last`` with weight j
    (:func:`fuse_label_maps`).

    Args:
        first, last: (H, W) int label maps ``steps`` slices apart.
        steps: their distance in slices.

    Returns:
        ``steps - 1`` (H, W) int64 label maps, ordered from ``first`` to ``last``.
    """
    return [fuse_label_maps([first, last], [steps - j, j]) for j in range(1, steps)]
