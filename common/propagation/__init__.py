"""Sli2Vol inference: propagate a one-slice annotation through a volume, with verification against drift."""

from common.propagation.baselines import CopyPropagation, OpticalFlowPropagation
from common.propagation.propagator import SlicePropagationInferer, SlicePropagator
from common.propagation.seed import (
    AnnotatedSeedd,
    LargestSliceSeedd,
    annotated_slices,
    check_same_geometry,
    keep_slice,
    largest_area_slice,
    seed_slice_index,
    slice_area,
)
from common.propagation.verification import clean_slice, verify_slice

__all__ = [
    "AnnotatedSeedd",
    "CopyPropagation",
    "LargestSliceSeedd",
    "OpticalFlowPropagation",
    "SlicePropagationInferer",
    "SlicePropagator",
    "annotated_slices",
    "check_same_geometry",
    "clean_slice",
    "keep_slice",
    "largest_area_slice",
    "seed_slice_index",
    "slice_area",
    "verify_slice",
]
