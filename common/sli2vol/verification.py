"""Sli2Vol's verification module against drift, and the per-slice post-processing (docs/methods/sli2vol.md §1.5)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["CROSS", "clean_slice", "verify_slice"]

CROSS = ndimage.generate_binary_structure(2, 1)


def verify_slice(
    proposed: np.ndarray,
    image: np.ndarray,
    previous_mask: np.ndarray,
    previous_image: np.ndarray,
    ring_iterations: int = 5,
) -> np.ndarray:
    """Keep the proposed pixels whose intensity is closer to the previous mask's mean than to its ring's.

    Per class c: P = previous mask of c, N = P dilated ``ring_iterations`` times with a 3x3 cross minus P.
    With mu_P and mu_N the mean intensities of the previous slice over P and N, a proposed pixel x of c is
    kept iff (I(x) - mu_P)^2 < (I(x) - mu_N)^2. Pixels are never added. A class whose ring is empty (its mask
    covers the slice) is kept as proposed.

    Args:
        proposed: (H, W) int label map propagated onto the new slice.
        image: (H, W) intensities of the new slice.
        previous_mask: (H, W) int label map of the previous slice.
        previous_image: (H, W) intensities of the previous slice.
        ring_iterations: width of the ring N in pixels (L1 distance).

    Returns:
        (H, W) label map, a subset of ``proposed``.
    """
    verified = proposed.copy()
    for label in np.unique(proposed[proposed > 0]):
        inside = previous_mask == label
        ring = ndimage.binary_dilation(inside, CROSS, iterations=ring_iterations) & ~inside
        if not inside.any() or not ring.any():
            continue
        mean_inside, mean_ring = previous_image[inside].mean(), previous_image[ring].mean()
        candidate = proposed == label
        closer_to_ring = (image - mean_inside) ** 2 >= (image - mean_ring) ** 2
        verified[candidate & closer_to_ring] = 0
    return verified


def clean_slice(mask: np.ndarray, closing_iterations: int = 2) -> np.ndarray:
    """Per class: fill holes, close (dilations then erosions with a 3x3 cross), fill holes again.

    Args:
        mask: (H, W) int label map.
        closing_iterations: dilations (and then erosions) of the closing.

    Returns:
        (H, W) label map; where closed classes overlap, the larger label value wins (classes are visited in
        increasing order).
    """
    cleaned = np.zeros_like(mask)
    for label in np.unique(mask[mask > 0]):
        region = ndimage.binary_fill_holes(mask == label)
        region = ndimage.binary_closing(region, CROSS, iterations=closing_iterations, border_value=0)
        cleaned[ndimage.binary_fill_holes(region)] = label
    return cleaned
