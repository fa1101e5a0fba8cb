"""MONAI-style transforms (array + dictionary pairs) shared by the bundles."""

from common.transforms.partial_labels import (
    AnnotatedClassesd,
    LabelMapToMultiLabel,
    LabelMapToMultiLabeld,
    ProbabilitiesToLabelMap,
    ProbabilitiesToLabelMapd,
    SimulateMissingAnnotationsd,
    SmileTarget,
    SmileTargetd,
)
from common.transforms.validation import CheckSegmentationInputd

__all__ = [
    "AnnotatedClassesd",
    "CheckSegmentationInputd",
    "LabelMapToMultiLabel",
    "LabelMapToMultiLabeld",
    "ProbabilitiesToLabelMap",
    "ProbabilitiesToLabelMapd",
    "SimulateMissingAnnotationsd",
    "SmileTarget",
    "SmileTargetd",
]
