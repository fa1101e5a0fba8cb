"""Propagation baselines with the Sli2Vol model interface (``encode`` / ``propagate``), for the benchmark.

Both run through the same :class:`common.sli2vol.SlicePropagator` (stopping rule, verification,
clean-up), so a comparison isolates the slice-to-slice correspondence.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import optional_import
from torch import nn

optical_flow_tvl1, _ = optional_import("skimage.registration", name="optical_flow_tvl1")

__all__ = ["CopyPropagation", "OpticalFlowPropagation"]


class CopyPropagation(nn.Module):
    """Copy the previous slice's mask unchanged: without verification, the seed mask on every slice."""

    def encode(self, slices: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> the slices themselves."""
        return slices

    def propagate(self, target_features: torch.Tensor, reference_features: torch.Tensor, values: torch.Tensor):
        """(B, V, H, W) values -> the same values."""
        return values


class OpticalFlowPropagation(nn.Module):
    """Classical optical flow (TV-L1, scikit-image) from the new slice to the previous one; warp the mask.

    For each step the flow u solves new(x) ~ previous(x + u(x)); the previous one-hot mask is sampled at
    x + u(x) with bilinear interpolation.

    Args:
        attachment: TV-L1 data attachment weight (higher follows the intensities more closely).
        num_warp: warps per pyramid level.
    """

    def __init__(self, attachment: float = 15.0, num_warp: int = 5) -> None:
        super().__init__()
        self.attachment = attachment
        self.num_warp = num_warp

    def encode(self, slices: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) intensities -> the same, rescaled to [0, 1] for the flow solver."""
        return slices / 255.0

    def propagate(self, target_features: torch.Tensor, reference_features: torch.Tensor, values: torch.Tensor):
        """Warp (B, V, H, W) ``values`` from the reference slice onto the target slice."""
        warped = []
        for target, reference, value in zip(target_features, reference_features, values, strict=True):
            flow = optical_flow_tvl1(
                target[0].cpu().numpy(),
                reference[0].cpu().numpy(),
                attachment=self.attachment,
                num_warp=self.num_warp,
            )
            warped.append(_warp(value, torch.as_tensor(np.asarray(flow), dtype=torch.float32, device=value.device)))
        return torch.stack(warped)


def _warp(values: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample (V, H, W) ``values`` at x + flow(x); flow (2, H, W) in pixels (rows, columns)."""
    height, width = values.shape[-2:]
    rows, cols = torch.meshgrid(
        torch.arange(height, device=values.device, dtype=torch.float32),
        torch.arange(width, device=values.device, dtype=torch.float32),
        indexing="ij",
    )
    sample_rows, sample_cols = rows + flow[0], cols + flow[1]
    grid = torch.stack([2 * sample_cols / max(width - 1, 1) - 1, 2 * sample_rows / max(height - 1, 1) - 1], dim=-1)
    return F.grid_sample(values[None].float(), grid[None], mode="bilinear", align_corners=True)[0]
