"""Sli2Vol (docs/methods/sli2vol.md): the slice-to-slice correspondence network, its training pairs, and
the propagation of annotated slices through a volume with verification against drift.
"""

from common.sli2vol.interpolation import fuse_label_maps, interpolate_label_maps, signed_distance
from common.sli2vol.network import EdgeProfile, ResidualEncoder, Sli2VolNet, local_affinity, reconstruct
from common.sli2vol.propagator import (
    BETWEEN_MODES,
    FILL_MODES,
    SliceFeatures,
    SlicePropagationInferer,
    SlicePropagator,
    accepts_step,
)
from common.sli2vol.seed import (
    SEED_MODES,
    AnnotatedSeedd,
    LargestSliceSeedd,
    annotated_slices,
    check_same_geometry,
    keep_slice,
    keep_slices,
    largest_area_slice,
    seed_slice_index,
    seed_slice_indices,
    slice_area,
)
from common.sli2vol.transforms import RandSlicePairsd, modality_normalisation
from common.sli2vol.verification import CROSS, clean_slice, verify_slice

__all__ = [
    "BETWEEN_MODES",
    "CROSS",
    "FILL_MODES",
    "SEED_MODES",
    "AnnotatedSeedd",
    "EdgeProfile",
    "LargestSliceSeedd",
    "RandSlicePairsd",
    "ResidualEncoder",
    "Sli2VolNet",
    "SliceFeatures",
    "SlicePropagationInferer",
    "SlicePropagator",
    "accepts_step",
    "annotated_slices",
    "check_same_geometry",
    "clean_slice",
    "fuse_label_maps",
    "interpolate_label_maps",
    "keep_slice",
    "keep_slices",
    "largest_area_slice",
    "local_affinity",
    "modality_normalisation",
    "reconstruct",
    "seed_slice_index",
    "seed_slice_indices",
    "signed_distance",
    "slice_area",
    "verify_slice",
]
