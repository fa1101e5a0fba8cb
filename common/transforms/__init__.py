"""MONAI-style transforms (array + dictionary pairs) shared by the bundles."""

from common.transforms.label_mapping import RemapLabelsd
from common.transforms.partial_labels import (
    AnnotatedClassesd,
    LabelMapToMultiLabel,
    LabelMapToMultiLabeld,
    MergePseudoLabelsd,
    ProbabilitiesToLabelMap,
    ProbabilitiesToLabelMapd,
    SimulateMissingAnnotationsd,
    SmileTarget,
    SmileTargetd,
)
from common.transforms.slices import RandSlicePairsd, modality_normalisation
from common.transforms.validation import CheckSegmentationInputd

__all__ = [
    "AnnotatedClassesd",
    "CheckSegmentationInputd",
    "LabelMapToMultiLabel",
    "LabelMapToMultiLabeld",
    "MergePseudoLabelsd",
    "ProbabilitiesToLabelMap",
    "ProbabilitiesToLabelMapd",
    "RandSlicePairsd",
    "RemapLabelsd",
    "SimulateMissingAnnotationsd",
    "SmileTarget",
    "SmileTargetd",
    "modality_normalisation",
]
