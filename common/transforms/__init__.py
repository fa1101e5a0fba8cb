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
from common.transforms.validation import CheckSegmentationInputd, LoadInputImaged
from common.transforms.xray_postprocessing import BoneOpening, BoneOpeningd, SoftTissueThreshold, SoftTissueThresholdd

__all__ = [
    "AnnotatedClassesd",
    "BoneOpening",
    "BoneOpeningd",
    "CheckSegmentationInputd",
    "LabelMapToMultiLabel",
    "LabelMapToMultiLabeld",
    "LoadInputImaged",
    "MergePseudoLabelsd",
    "ProbabilitiesToLabelMap",
    "ProbabilitiesToLabelMapd",
    "RandSlicePairsd",
    "RemapLabelsd",
    "SimulateMissingAnnotationsd",
    "SmileTarget",
    "SmileTargetd",
    "SoftTissueThreshold",
    "SoftTissueThresholdd",
    "modality_normalisation",
]
