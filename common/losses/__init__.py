"""Losses shared by the bundles."""

from common.losses.smile import SmileLoss

__all__ = ["SmileLoss"]
