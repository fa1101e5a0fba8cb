"""XNet: the double encoder-decoder ("W"-shaped) network for 2D X-ray segmentation.

Bullock et al., SPIE MI 2019; docs/methods/xnet.md §2.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["XNet", "conv_kernel_l2"]


class ConvBlock(nn.Sequential):
    """Convolution ('same' padding, with bias) → batch norm → ReLU: the "C" of the paper.

    Shapes: (B, in_channels, H, W) → (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Sequential):
    """2× nearest-neighbour upsampling followed by a :class:`ConvBlock`: (B, C_in, H, W) → (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvBlock(in_channels, out_channels, kernel_size))


class XNet(nn.Module):
    """XNet: two encoder-decoder stages in sequence, with skip connections across levels.

    With widths ``f = (f1, f2, f3, f4)`` (paper: 64, 128, 256, 512) and P = 2×2 max pooling::

        a1 = C_f1(x)                     full resolution
        a2 = C_f2(P a1)                  1/2
        a3 = C_f3(P a2)                  1/4
        a5 = C_f4(C_f4(P a3))            1/8   first bottleneck
        d1 = [a3, Up C_f3(a5)]           1/4
        d2 = [a2, Up C_f2(d1)]           1/2   end of the first encoder-decoder
        a8 = C_f2(d2)                    1/2
        a9 = C_f3(P a8)                  1/4
        a11 = C_f4(C_f4(P a9))           1/8   second bottleneck
        d3 = [a9, Up C_f3(a11)]          1/4
        d4 = [a8, Up C_f2(d3)]           1/2
        d5 = [a1, Up C_f1(d4)]           full resolution
        logits = Conv1×1(d5) / temperature

    where ``[·, ·]`` is channel concatenation. The network returns logits (B, out_channels, H, W); softmax over
    the channels gives the per-pixel class probabilities (open beam, soft tissue, bone in the bundle). H and W
    must be multiples of 8. ``temperature`` is a buffer, 1 during training, that temperature scaling
    (:class:`common.handlers.TemperatureScaling`) fits afterwards on validation data so that the probabilities
    are calibrated; it is saved in the state_dict and in the TorchScript export. With the paper's widths and
    ``kernel_size=3`` it has 11.73 M parameters. There is no dropout and no weight sharing, as in the published
    code; L2 regularisation is a loss term (:func:`conv_kernel_l2`), applied by the training loss.

    Args:
        in_channels: channels of the input image (1 for a radiograph).
        out_channels: number of classes.
        channels: the four widths ``f``.
        kernel_size: odd convolution kernel size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"XNet needs four widths (f1, f2, f3, f4), got {list(channels)}.")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the image size, got {kernel_size}.")
        f1, f2, f3, f4 = channels
        k = kernel_size
        self.downsampling = 8  # three 2× poolings: height and width must be multiples of this
        self.pool = nn.MaxPool2d(2)
        self.encoder1 = ConvBlock(in_channels, f1, k)
        self.encoder2 = ConvBlock(f1, f2, k)
        self.encoder3 = ConvBlock(f2, f3, k)
        self.bottleneck1 = nn.Sequential(ConvBlock(f3, f4, k), ConvBlock(f4, f4, k))
        self.decoder1 = UpBlock(f4, f3, k)
        self.decoder2 = UpBlock(2 * f3, f2, k)
        self.encoder4 = ConvBlock(2 * f2, f2, k)
        self.encoder5 = ConvBlock(f2, f3, k)
        self.bottleneck2 = nn.Sequential(ConvBlock(f3, f4, k), ConvBlock(f4, f4, k))
        self.decoder3 = UpBlock(f4, f3, k)
        self.decoder4 = UpBlock(2 * f3, f2, k)
        self.decoder5 = UpBlock(2 * f2, f1, k)
        self.head = nn.Conv2d(2 * f1, out_channels, kernel_size=1)
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) image → (B, out_channels, H, W) logits; H and W multiples of 8."""
        height, width = image.shape[-2], image.shape[-1]
        if height % self.downsampling != 0 or width % self.downsampling != 0:
            raise ValueError(f"XNet needs an input whose height and width are multiples of 8, got {height}×{width}.")
        a1 = self.encoder1(image)
        a2 = self.encoder2(self.pool(a1))
        a3 = self.encoder3(self.pool(a2))
        a5 = self.bottleneck1(self.pool(a3))
        d1 = torch.cat([a3, self.decoder1(a5)], dim=1)
        d2 = torch.cat([a2, self.decoder2(d1)], dim=1)
        a8 = self.encoder4(d2)
        a9 = self.encoder5(self.pool(a8))
        a11 = self.bottleneck2(self.pool(a9))
        d3 = torch.cat([a9, self.decoder3(a11)], dim=1)
        d4 = torch.cat([a8, self.decoder4(d3)], dim=1)
        d5 = torch.cat([a1, self.decoder5(d4)], dim=1)
        return self.head(d5) / self.temperature


def conv_kernel_l2(network: nn.Module) -> torch.Tensor:
    """Σ w² over the kernels of every convolution in ``network`` (biases and batch-norm parameters excluded).

    This is Keras' ``kernel_regularizer=l2(1)`` summed over the layers, the L2 term the XNet paper describes; the
    training loss multiplies it by λ.
    """
    kernels = [module.weight for module in network.modules() if isinstance(module, nn.Conv2d)]
    return torch.stack([kernel.pow(2).sum() for kernel in kernels]).sum()
