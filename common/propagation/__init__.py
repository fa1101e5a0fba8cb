"""Sli2Vol inference: propagate annotated slices through a volume, with verification against drift."""

from common.propagation.baselines import CopyPropagation, OpticalFlowPropagation
from common.propagation.interpolation import fuse_label_maps, interpolate_label_maps, signed_distance
from common.propagation.propagator import (
    BETWEEN_MODES,
    FILL_MODES,
    SliceFeatures,
    SlicePropagationInferer,
    SlicePropagator,
    accepts_step,
)
from common.propagation.seed import (
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
from common.propagation.verification import clean_slice, verify_slice

__all__ = [
    "BETWEEN_MODES",
    "FILL_MODES",
    "SEED_MODES",
    "AnnotatedSeedd",
    "CopyPropagation",
    "LargestSliceSeedd",
    "OpticalFlowPropagation",
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
    "seed_slice_index",
    "seed_slice_indices",
    "signed_distance",
    "slice_area",
    "verify_slice",
]
