"""Losses shared by the bundles."""

from common.losses.regularised import KernelL2CrossEntropyLoss
from common.losses.smile import SmileLoss

__all__ = ["KernelL2CrossEntropyLoss", "SmileLoss"]
