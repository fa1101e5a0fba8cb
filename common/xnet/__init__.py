"""XNet (docs/methods/xnet.md): the network and its kernel-regularised loss, the radiograph reader and
writers, the bone / soft-tissue post-processing, and the pixel-classification metrics and report.
"""

from common.xnet.loss import KernelL2CrossEntropyLoss
from common.xnet.metrics import (
    PixelClassificationMetric,
    auc_from_histograms,
    calibration_bins,
    confusion_matrix,
    ece_from_bins,
    expected_calibration_error,
    f1_from_confusion,
    precision_recall_from_confusion,
    reliability_from_bins,
    score_histograms,
)
from common.xnet.network import XNet, conv_kernel_l2
from common.xnet.postprocessing import (
    BoneOpening,
    BoneOpeningd,
    SoftTissueThreshold,
    SoftTissueThresholdd,
    square_dilation,
    square_opening,
)
from common.xnet.radiograph_io import (
    PHOTOMETRIC_INTERPRETATIONS,
    SPACING_SOURCES,
    Radiograph,
    RadiographReader,
    read_radiograph,
    write_dicom_cr,
    write_png,
)
from common.xnet.report import ClassificationReport

__all__ = [
    "PHOTOMETRIC_INTERPRETATIONS",
    "SPACING_SOURCES",
    "BoneOpening",
    "BoneOpeningd",
    "ClassificationReport",
    "KernelL2CrossEntropyLoss",
    "PixelClassificationMetric",
    "Radiograph",
    "RadiographReader",
    "SoftTissueThreshold",
    "SoftTissueThresholdd",
    "XNet",
    "auc_from_histograms",
    "calibration_bins",
    "confusion_matrix",
    "conv_kernel_l2",
    "ece_from_bins",
    "expected_calibration_error",
    "f1_from_confusion",
    "precision_recall_from_confusion",
    "read_radiograph",
    "reliability_from_bins",
    "score_histograms",
    "square_dilation",
    "square_opening",
    "write_dicom_cr",
    "write_png",
]
