"""Sli2Vol slice-to-slice correspondence network (Yeung et al., MICCAI 2021; docs/methods/sli2vol.md §1).

A slice goes through the edge-profile generator (48 softmax-normalised neighbour differences), then a
full-resolution residual encoder, giving a C-dimensional feature per pixel. A target slice is reconstructed
from a reference slice by a local affinity: every target pixel attends to the (2R+1)^2 reference pixels around
it, and copies their values (intensities in training, a one-hot mask at inference).

At inference (eval mode, gradients off) the encoder takes a fused path with the same values up to float
rounding: batch norm folded into the convolution before it, ReLU and residual additions applied in place; on
CPU, channels-last activations and every convolution one oneDNN call with its bias, ReLU and residual addition
as post-ops. Folding and reordering run at every call: a few small ops per convolution, no cache to invalidate.
``benchmarks/sli2vol_speed.py`` measures it against the plain path and the machine's convolution throughput.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EdgeProfile", "ResidualEncoder", "Sli2VolNet", "local_affinity", "reconstruct"]

# oneDNN's fused convolution (the op TorchInductor emits on CPU): conv + bias + ReLU, or + residual then ReLU,
# with the weights reordered once into oneDNN's blocked layout.
_ONEDNN_FUSION = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
)


def _fold_batch_norm(
    weight: torch.Tensor,
    bn_weight: torch.Tensor,
    bn_bias: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free conv weight (O, I, kh, kw) followed by eval-mode batch norm -> one conv's (weight, (O,) bias)."""
    assert running_mean is not None and running_var is not None, "folding needs the running statistics"
    scale = bn_weight * torch.rsqrt(running_var + eps)
    return weight * scale.reshape(-1, 1, 1, 1), bn_bias - running_mean * scale


def _conv_act(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """Stride-1 'same' convolution, plus ``residual`` if given, then ReLU if ``relu``; no autograd.

    Args:
        x: (B, I, H, W), channels-last for speed.
        weight: (O, I, kh, kw), odd kernel sides.
        bias: (O,) or None.
        relu: apply ReLU last.
        residual: (B, O, H, W), consumed: it may be overwritten with the result.

    Returns:
        (B, O, H, W), in ``x``'s memory format.
    """
    padding = [weight.shape[2] // 2, weight.shape[3] // 2]
    if not torch.jit.is_scripting():  # noqa: SIM102 (alone, TorchScript skips the block without compiling it)
        if _ONEDNN_FUSION and x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.enabled:
            return _onednn_conv_act(x, weight, bias, padding, relu, residual)
    out = F.conv2d(x, weight, bias, padding=padding)
    if residual is not None:
        out = out.add_(residual)
    return out.relu_() if relu else out


@torch.jit.unused
def _onednn_conv_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: list[int],
    relu: bool,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`_conv_act` as one oneDNN convolution with post-ops, the weight reordered into oneDNN's layout.

    Eager CPU only (TorchScript takes the plain ops).
    """
    packed = torch.ops.mkldnn._reorder_convolution_weight(weight, padding, [1, 1], [1, 1], 1, list(x.shape))
    unary = "relu" if relu else "none"
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, packed, bias, padding, [1, 1], [1, 1], 1, unary, [], "")
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        residual, x, packed, bias, padding, [1, 1], [1, 1], 1, "add", 1.0, unary, [], ""
    )


class EdgeProfile(nn.Module):
    """Differences to every neighbour in a (2r+1)^2 window, softmax over the neighbours.

    For r = 3 this gives 48 channels: g(x)_d(p) = softmax_d(x(p) - x(p + d)) over all offsets d != 0,
    with replicate padding at the border. The intensity scale sets how peaked the softmax is: inputs are
    expected in [0, 255] (see ``common.sli2vol.modality_normalisation``).

    Args:
        radius: r, the window radius.
        dilation: spacing between neighbours.
    """

    def __init__(self, radius: int = 3, dilation: int = 1) -> None:
        super().__init__()
        self.radius = radius
        self.dilation = dilation
        offsets = [
            (dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)
        ]
        self.out_channels = len(offsets)
        window = 2 * radius + 1
        # Kernels of +1 at the centre and -1 at p + d: one conv gives every x(p) - x(p + d) at once, exactly
        # (a single rounding, as for the subtraction itself).
        kernels = torch.zeros(len(offsets), 1, window, window)
        for channel, (dy, dx) in enumerate(offsets):
            kernels[channel, 0, radius, radius] = 1.0
            kernels[channel, 0, radius + dy, radius + dx] = -1.0
        self.register_buffer("difference_kernels", kernels, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, H, W) slice -> (B, (2r+1)^2 - 1, H, W) edge profile, float32, summing to 1 over channels."""
        pad = self.radius * self.dilation
        padded = F.pad(x.float(), (pad, pad, pad, pad), mode="replicate")
        differences = F.conv2d(padded, self.difference_kernels, dilation=self.dilation)
        return torch.softmax(differences, dim=1)


class _Identity(nn.Identity):
    """The identity shortcut of a basic block."""

    @torch.jit.export
    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> x."""
        return x


class _Projection(nn.Sequential):
    """The projection shortcut of a basic block: ``Sequential(1x1 conv, batch norm)`` (state_dict keys 0.*, 1.*)."""

    @torch.jit.export
    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode without autograd, batch norm folded: (B, I, H, W) -> (B, O, H, W) in ``x``'s memory format."""
        conv, bn = self[0], self[1]  # TorchScript reads the constant eps only as self[1].eps
        weight, bias = _fold_batch_norm(conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, self[1].eps)
        return _conv_act(x, weight, bias, relu=False)


class _BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU-3x3 conv-BN plus a shortcut (1x1 conv + BN when the width changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = _Identity()
        if in_channels != out_channels:
            self.shortcut = _Projection(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) -> (B, out_channels, H, W)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))

    @torch.jit.export
    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` in eval mode without autograd, batch norm folded: (B, I, H, W) -> (B, O, H, W).

        ``x`` is consumed (with an identity shortcut the result is written into it); the result has its memory format.
        """
        weight, bias = _fold_batch_norm(
            self.conv1.weight, self.bn1.weight, self.bn1.bias, self.bn1.running_mean, self.bn1.running_var, self.bn1.eps
        )
        out = _conv_act(x, weight, bias, relu=True)
        shortcut = self.shortcut.forward_fused(x)
        weight, bias = _fold_batch_norm(
            self.conv2.weight, self.bn2.weight, self.bn2.bias, self.bn2.running_mean, self.bn2.running_var, self.bn2.eps
        )
        return _conv_act(out, weight, bias, relu=True, residual=shortcut)


class ResidualEncoder(nn.Module):
    """ResNet-18-style encoder with every stride 1: a feature per pixel at full resolution.

    Stem 7x7 conv-BN-ReLU, ``len(channels)`` stages of ``blocks_per_stage`` basic blocks, then a 3x3 conv head
    (with bias, no normalisation) to ``feature_channels``.

    Args:
        in_channels: input channels (48 for the edge profile).
        channels: stage widths; the paper's are (16, 32, 64, 128).
        blocks_per_stage: basic blocks per stage (2 in ResNet-18).
        feature_channels: width of the per-pixel embedding (64 in the paper).

    Attributes:
        fused_inference: take :meth:`forward_fused` in eval mode without autograd (default True; False runs the
            layers one by one, the reference for tests and benchmarks).
    """

    def __init__(
        self,
        in_channels: int = 48,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks_per_stage: int = 2,
        feature_channels: int = 64,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels[0], 7, padding=3, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        ]
        width = channels[0]
        for stage_width in channels:
            for _ in range(blocks_per_stage):
                layers.append(_BasicBlock(width, stage_width))
                width = stage_width
        layers.append(nn.Conv2d(width, feature_channels, 3, padding=1, bias=True))
        self.layers = nn.Sequential(*layers)
        self.fused_inference = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: Xavier-normal conv weights, N(0, 1) biases, BN gamma ~ N(1, 0.02)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.normal_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) -> (B, feature_channels, H, W).

        In eval mode with gradients off and ``fused_inference`` set, runs :meth:`forward_fused` (same values up to
        float rounding; on CPU the result is channels-last strided).
        """
        if self.fused_inference and not self.training and not torch.is_grad_enabled():
            return self.forward_fused(x)
        return self.layers(x)

    @torch.jit.export
    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode forward, batch norm folded into the convolutions: (B, I, H, W) -> (B, F, H, W).

        Without autograd. On CPU the activations (and the result) are channels-last and every convolution is one
        oneDNN call with its bias, ReLU and residual addition; elsewhere ``F.conv2d`` and in-place ReLU / addition.
        """
        stem, stem_bn = self.layers[0], self.layers[1]  # TorchScript reads the constant eps as self.layers[1].eps
        weight, bias = _fold_batch_norm(
            stem.weight, stem_bn.weight, stem_bn.bias, stem_bn.running_mean, stem_bn.running_var, self.layers[1].eps
        )
        if x.device.type == "cpu":  # channels-last: oneDNN's fast layout (on GPUs it depends on dtype and card)
            x = x.contiguous(memory_format=torch.channels_last)
        x = _conv_act(x, weight, bias, relu=True)
        if x.device.type == "cpu":  # a no-op, unless a 1-channel input left the layout ambiguous
            x = x.contiguous(memory_format=torch.channels_last)
        for block in self.layers[3:-1]:
            x = block.forward_fused(x)
        head = self.layers[-1]
        return _conv_act(x, head.weight, head.bias, relu=False)


def local_affinity(query: torch.Tensor, reference: torch.Tensor, radius: int, tile: int = 8) -> torch.Tensor:
    """Softmax over the (2R+1)^2 reference pixels around each query pixel of their feature dot products.

    Reference features are zero-padded, so an out-of-image candidate scores 0. Computed in float32.
    Vectorised by tiles: each T x T tile of queries is multiplied (one batched matmul) with the
    (T+2R) x (T+2R) reference window around it, and the (2R+1)^2 local scores are gathered from that product.
    This needs about (T+2R)^2 / T^2 times the feature memory, where unfolding the reference per pixel
    needs (2R+1)^2 times.

    Args:
        query: (B, C, H, W) features of the slice to reconstruct.
        reference: (B, C, H, W) features of the slice whose values are copied.
        radius: R.
        tile: T, the query tile side.

    Returns:
        (B, (2R+1)^2, H, W) affinity, candidates in row-major offset order (dy, then dx), summing to 1 over dim 1.
    """
    batch, channels, height, width = query.shape
    window, span = 2 * radius + 1, tile + 2 * radius
    pad_h, pad_w = (-height) % tile, (-width) % tile
    query_tiles = F.unfold(F.pad(query.float(), (0, pad_w, 0, pad_h)), tile, stride=tile)
    num_tiles = query_tiles.shape[-1]
    query_tiles = query_tiles.view(batch, channels, tile * tile, num_tiles).permute(0, 3, 2, 1)
    reference_windows = (
        F.unfold(F.pad(reference.float(), (radius, radius + pad_w, radius, radius + pad_h)), span, stride=tile)
        .view(batch, channels, span * span, num_tiles)
        .permute(0, 3, 1, 2)
    )
    scores = torch.matmul(query_tiles, reference_windows)  # (B, L, T*T, span*span)
    local = _local_window_index(tile, radius, query.device).expand(batch, num_tiles, tile * tile, window * window)
    affinity = torch.softmax(scores.gather(3, local), dim=3)  # (B, L, T*T, K)
    tiles_h, tiles_w = (height + pad_h) // tile, (width + pad_w) // tile
    affinity = affinity.view(batch, tiles_h, tiles_w, tile, tile, window * window).permute(0, 5, 1, 3, 2, 4)
    return affinity.reshape(batch, window * window, height + pad_h, width + pad_w)[:, :, :height, :width]


def _local_window_index(tile: int, radius: int, device: torch.device) -> torch.Tensor:
    """(T*T, (2R+1)^2) index into a flattened (T+2R)^2 window: query (a, b), offset (i, j) -> (a+i, b+j)."""
    span, offsets = tile + 2 * radius, torch.arange(2 * radius + 1, device=device)
    positions = torch.arange(tile, device=device)
    rows = (positions[:, None, None, None] + offsets[None, None, :, None]) * span
    cols = positions[None, :, None, None] + offsets[None, None, None, :]
    return (rows + cols).reshape(tile * tile, -1)


def reconstruct(affinity: torch.Tensor, values: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinity-weighted sum of the reference values around each pixel (values zero-padded).

    Args:
        affinity: (B, (2R+1)^2, H, W) from :func:`local_affinity`.
        values: (B, V, H, W) reference intensities or one-hot mask.
        radius: R.

    Returns:
        (B, V, H, W).
    """
    batch, num_values, height, width = values.shape
    window = 2 * radius + 1
    candidates = F.unfold(values.float(), window, padding=radius).view(batch, num_values, window * window, -1)
    return torch.einsum("bkp,bvkp->bvp", affinity.flatten(2), candidates).view(batch, num_values, height, width)


class Sli2VolNet(nn.Module):
    """Edge profile -> full-resolution encoder -> local affinity -> reconstruction.

    ``forward`` is the training step (reconstruct the target slice from the reference slice);
    ``encode`` and ``propagate`` are the two halves used at inference, exported with TorchScript so that
    every slice of a volume is encoded once and the sequential steps only run the cheap affinity.

    Args:
        channels: encoder stage widths.
        blocks_per_stage: basic blocks per stage.
        feature_channels: per-pixel embedding width.
        radius: affinity window radius R (169 candidates for R = 6).
        edge_radius: edge-profile window radius r (48 channels for r = 3).
        use_edge_profile: False feeds the raw slice to the encoder (the ablation without the bottleneck).
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64, 128),
        blocks_per_stage: int = 2,
        feature_channels: int = 64,
        radius: int = 6,
        edge_radius: int = 3,
        use_edge_profile: bool = True,
    ) -> None:
        super().__init__()
        self.radius = radius
        self.edge_profile: nn.Module = EdgeProfile(edge_radius) if use_edge_profile else nn.Identity()
        in_channels = (2 * edge_radius + 1) ** 2 - 1 if use_edge_profile else 1
        self.encoder = ResidualEncoder(in_channels, channels, blocks_per_stage, feature_channels)

    @torch.jit.export
    def encode(self, slices: torch.Tensor) -> torch.Tensor:
        """slices: (B, 1, H, W) intensities in [0, 255] -> (B, feature_channels, H, W) features."""
        return self.encoder(self.edge_profile(slices.float()))

    @torch.jit.export
    def propagate(self, target_features: torch.Tensor, reference_features: torch.Tensor, values: torch.Tensor):
        """Reconstruct the target slice's values from the reference's: (B, V, H, W) -> (B, V, H, W)."""
        affinity = local_affinity(target_features, reference_features, self.radius)
        return reconstruct(affinity, values, self.radius)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """Training step: reconstruct the target slice's values from the reference slice's.

        Args:
            pair: (B, 2 + V, H, W): channel 0 the reference slice and channel 1 the target slice, both fed to
                the edge profile (augmented in training), then the V reference values to copy (in training the
                reference slice's un-augmented intensities).

        Returns:
            (B, V, H, W) reconstruction of the target's values.
        """
        features = self.encode(torch.cat([pair[:, 0:1], pair[:, 1:2]], dim=0))
        reference_features, target_features = features.chunk(2, dim=0)
        return self.propagate(target_features, reference_features, pair[:, 2:])
