"""Per-pixel cross-entropy with an explicit L2 penalty on the network's convolution kernels.

XNet's loss: docs/methods/xnet.md §2.2.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from common.xnet.network import conv_kernel_l2

__all__ = ["KernelL2CrossEntropyLoss"]


class KernelL2CrossEntropyLoss(nn.Module):
    """Cross-entropy of a label map under per-pixel softmax, plus λ · Σ w² over every convolution kernel.

    The penalty is a loss term rather than the optimiser's ``weight_decay`` for three reasons: it regularises the
    convolution kernels only (not biases or batch-norm scales), as Keras' ``kernel_regularizer`` in the paper
    does; it means the same thing whatever the optimiser (Adam's ``weight_decay`` is not an L2 penalty of fixed
    strength); and it is part of the logged loss, so one can see it act. For plain SGD or RMSprop it equals
    ``weight_decay = 2λ`` restricted to the kernels.

    Args:
        network: the module whose kernels are penalised (the same object the trainer optimises).
        l2_weight: λ; 0 disables the penalty.

    Shapes: ``logits`` (B, C, H, W) float, ``label`` (B, 1, H, W) or (B, H, W) integer class indices.
    """

    def __init__(self, network: nn.Module, l2_weight: float = 5e-4) -> None:
        super().__init__()
        self.network = [network]  # a list, so the network's parameters are not registered twice
        self.l2_weight = l2_weight

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        target = label[:, 0] if label.ndim == logits.ndim else label
        loss = functional.cross_entropy(logits, target.long())
        if self.l2_weight > 0:
            loss = loss + self.l2_weight * conv_kernel_l2(self.network[0])
        return loss
