"""SMILE and SMILEr (docs/methods/smile.md): targets, loss and Dice metric for partially labelled classes, the
self-relabeling rounds, pseudo-label selection, class rebalancing (CReST) and distribution alignment (CReST+), and
merging single-structure datasets (with the per-case label remapping they need), and the peer losses that SMILE is
compared with (marginal + exclusion loss, MultiTalent-style partial BCE + Dice).
"""

from common.smile.dice import PartialLabelDice, PartialLabelDiceMetric, partial_label_dice, per_class_dice
from common.smile.distribution_alignment import (
    ALIGNMENT_SCHEDULES,
    DistributionAligner,
    align_probabilities,
    aligned_target,
    alignment_temperature,
    foreground_fractions,
)
from common.smile.label_mapping import RemapLabelsd
from common.smile.loss import SmileLoss
from common.smile.partial_datalist import merge_datasets, parse_mapping, site_datalist
from common.smile.peer_losses import MarginalExclusionLoss, PartialBCEDiceLoss
from common.smile.pseudo_label_metrics import precision_recall, pseudo_label_counts
from common.smile.pseudo_labeler import SELECTION_RULES, UNCERTAINTY_MEASURES, PseudoLabeler
from common.smile.relabeling import RETRAIN_MODES, RelabelingRounds, reinitialize_parameters
from common.smile.relabeling_report import case_record, round_report, write_round_report, write_summary
from common.smile.schedule import RelabelingSchedule
from common.smile.selection import (
    binary_entropy,
    class_fractions,
    crest_rates,
    gamma_schedule,
    has_dropout,
    mc_dropout_predict,
    select_confident,
    select_least_uncertain,
    select_top_fraction,
)
from common.smile.targets import (
    AnnotatedClassesd,
    LabelMapToMultiLabel,
    LabelMapToMultiLabeld,
    MergePseudoLabelsd,
    ProbabilitiesToLabelMap,
    ProbabilitiesToLabelMapd,
    SimulateMissingAnnotationsd,
    SmileTarget,
    SmileTargetd,
    foreground_one_hot,
)

__all__ = [
    "ALIGNMENT_SCHEDULES",
    "RETRAIN_MODES",
    "SELECTION_RULES",
    "UNCERTAINTY_MEASURES",
    "AnnotatedClassesd",
    "DistributionAligner",
    "LabelMapToMultiLabel",
    "LabelMapToMultiLabeld",
    "MarginalExclusionLoss",
    "MergePseudoLabelsd",
    "PartialBCEDiceLoss",
    "PartialLabelDice",
    "PartialLabelDiceMetric",
    "ProbabilitiesToLabelMap",
    "ProbabilitiesToLabelMapd",
    "PseudoLabeler",
    "RelabelingRounds",
    "RelabelingSchedule",
    "RemapLabelsd",
    "SimulateMissingAnnotationsd",
    "SmileLoss",
    "SmileTarget",
    "SmileTargetd",
    "align_probabilities",
    "aligned_target",
    "alignment_temperature",
    "binary_entropy",
    "case_record",
    "class_fractions",
    "crest_rates",
    "foreground_fractions",
    "foreground_one_hot",
    "gamma_schedule",
    "has_dropout",
    "mc_dropout_predict",
    "merge_datasets",
    "parse_mapping",
    "partial_label_dice",
    "per_class_dice",
    "precision_recall",
    "pseudo_label_counts",
    "reinitialize_parameters",
    "round_report",
    "select_confident",
    "select_least_uncertain",
    "select_top_fraction",
    "site_datalist",
    "write_round_report",
    "write_summary",
]
