"""Sli2Vol network: edge profile, tiled local affinity, reconstruction, TorchScript, and exact shift propagation.

Expectations come from hand computation or from naive per-offset references written here, never from the
implementation itself.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.sli2vol import EdgeProfile, Sli2VolNet, SlicePropagator, local_affinity, reconstruct


def _offsets(radius):
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def _naive_edge_profile(image, radius, dilation=1):
    """softmax_d(x(p) - x(clip(p + d))) with an explicit loop over pixels and offsets (replicate padding)."""
    height, width = image.shape
    offsets = [d for d in _offsets(radius) if d != (0, 0)]
    out = np.zeros((len(offsets), height, width))
    for row in range(height):
        for col in range(width):
            diffs = []
            for dy, dx in offsets:
                r = min(max(row + dy * dilation, 0), height - 1)
                c = min(max(col + dx * dilation, 0), width - 1)
                diffs.append(image[row, col] - image[r, c])
            diffs = np.asarray(diffs, dtype=np.float64)
            weights = np.exp(diffs - diffs.max())
            out[:, row, col] = weights / weights.sum()
    return out


def _naive_affinity(query, reference, radius):
    """Per offset (row-major), the dot product with the zero-padded reference shifted by it; softmax over offsets."""
    height, width = query.shape[-2:]
    padded = F.pad(reference.double(), (radius, radius, radius, radius))
    scores = []
    for dy, dx in _offsets(radius):
        shifted = padded[:, :, radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        scores.append((query.double() * shifted).sum(1))
    return torch.softmax(torch.stack(scores, dim=1), dim=1)


def _shift(values, dy, dx):
    """out[..., y, x] = values[..., y + dy, x + dx], zero where y + dy or x + dx falls outside."""
    height, width = values.shape[-2:]
    out = torch.zeros_like(values)
    for y in range(height):
        for x in range(width):
            if 0 <= y + dy < height and 0 <= x + dx < width:
                out[..., y, x] = values[..., y + dy, x + dx]
    return out


def test_edge_profile_has_48_channels_summing_to_one():
    image = torch.rand(2, 1, 9, 11) * 255
    profile = EdgeProfile(radius=3)(image)
    assert EdgeProfile(radius=3).out_channels == 48
    assert profile.shape == (2, 48, 9, 11)
    assert profile.dtype == torch.float32
    torch.testing.assert_close(profile.sum(1), torch.ones(2, 9, 11))
    assert EdgeProfile(radius=1)(image).shape[1] == 8


def test_edge_profile_hand_computed_values_with_replicate_padding():
    # A 5x5 image, dark except one bright pixel of 10 on the top border at (0, 2).
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 0, 2] = 10.0
    profile = EdgeProfile(radius=3)(image)[0].double()

    def channel(dy, dx):  # row-major offset order, (0, 0) skipped
        k = (dy + 3) * 7 + (dx + 3)
        return k - 1 if k > 24 else k

    # At p = (0, 1) (value 0): x(p + d) = 10 for dx = 1 and dy in -3..0, since rows above the top replicate row 0.
    bright = [(-3, 1), (-2, 1), (-1, 1), (0, 1)]
    assert [channel(*d) for d in bright] == [4, 11, 18, 24]
    normaliser = 44 + 4 * math.exp(-10)
    for d in bright:
        assert profile[channel(*d), 0, 1].item() == pytest.approx(math.exp(-10) / normaliser, rel=1e-4)
    for d in [(1, 1), (-3, 0), (0, -1), (3, 3), (-1, 2)]:
        assert profile[channel(*d), 0, 1].item() == pytest.approx(1 / normaliser, rel=1e-5)

    # At the bright pixel p = (0, 2): only the replicated copies of itself (dx = 0, dy < 0) give a zero difference.
    normaliser = 45 * math.exp(10) + 3
    for d in [(-3, 0), (-2, 0), (-1, 0)]:
        assert profile[channel(*d), 0, 2].item() == pytest.approx(1 / normaliser, rel=1e-4)
    for d in [(1, 0), (0, 1), (-1, -1), (3, -3)]:
        assert profile[channel(*d), 0, 2].item() == pytest.approx(math.exp(10) / normaliser, rel=1e-5)

    # A pixel far from the bright one is uniform except towards it: at (4, 4), d = (-4, -2) is out of the window.
    torch.testing.assert_close(profile[:, 4, 4], torch.full((48,), 1 / 48, dtype=torch.float64))


@pytest.mark.parametrize(("radius", "dilation"), [(3, 1), (2, 2)])
def test_edge_profile_matches_naive_reference(radius, dilation):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(6, 7, generator=generator) * 8
    profile = EdgeProfile(radius, dilation)(image[None, None])[0]
    expected = torch.as_tensor(_naive_edge_profile(image.double().numpy(), radius, dilation), dtype=torch.float32)
    torch.testing.assert_close(profile, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("radius", [2, 6])
@pytest.mark.parametrize("tile", [1, 4, 5, 8, 20])
def test_local_affinity_matches_naive_reference(radius, tile):
    generator = torch.Generator().manual_seed(radius * 100 + tile)
    query = torch.randn(2, 3, 13, 17, generator=generator)
    reference = torch.randn(2, 3, 13, 17, generator=generator)
    affinity = local_affinity(query, reference, radius, tile=tile)
    window = 2 * radius + 1
    assert affinity.shape == (2, window * window, 13, 17)
    assert affinity.dtype == torch.float32
    torch.testing.assert_close(affinity.double(), _naive_affinity(query, reference, radius), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(affinity.sum(1), torch.ones(2, 13, 17))


def test_reconstruct_with_one_hot_affinity_shifts_the_values():
    radius = 2
    generator = torch.Generator().manual_seed(1)
    values = torch.rand(2, 3, 7, 9, generator=generator) + 1.0  # no zeros, so zero-padding is visible
    offsets = _offsets(radius)
    for dy, dx in [(1, -2), (-2, 0), (0, 0), (2, 2)]:
        affinity = torch.zeros(2, len(offsets), 7, 9)
        affinity[:, offsets.index((dy, dx))] = 1.0
        result = reconstruct(affinity, values, radius)
        expected = _shift(values, dy, dx)
        torch.testing.assert_close(result, expected)
        if (dy, dx) != (0, 0):
            assert (result == 0).any()


def test_affinity_from_matching_features_recovers_a_known_shift():
    # Reference features: a scaled one-hot identity code per pixel. The query at p holds the code of p + d,
    # so the only non-zero dot product in its window is at offset d and reconstruction copies values(p + d).
    radius, (dy, dx), (height, width) = 3, (-1, 2), (7, 9)
    codes = torch.eye(height * width).view(height * width, height, width)[None] * 10.0
    query = _shift(codes, dy, dx)
    values = torch.arange(1.0, height * width + 1).view(1, 1, height, width)
    result = reconstruct(local_affinity(query, codes, radius, tile=4), values, radius)
    inside = _shift(torch.ones(1, 1, height, width), dy, dx).bool()
    assert inside.sum() == (height - 1) * (width - 2)
    torch.testing.assert_close(result[inside], _shift(values, dy, dx)[inside])


def _small_net(**kwargs):
    torch.manual_seed(0)
    net = Sli2VolNet(channels=(4, 8), blocks_per_stage=1, feature_channels=4, radius=2, **kwargs)
    return net.eval()


def test_forward_shape_and_equivalence_with_encode_propagate():
    net = _small_net()
    pair = torch.rand(2, 2 + 3, 12, 10) * 255
    with torch.no_grad():
        output = net(pair)
        assert output.shape == (2, 3, 12, 10)
        reference_features, target_features = net.encode(pair[:, 0:1]), net.encode(pair[:, 1:2])
        assert reference_features.shape == (2, 4, 12, 10)
        torch.testing.assert_close(output, net.propagate(target_features, reference_features, pair[:, 2:]))
        # Propagation is a convex combination of the reference values around each pixel.
        assert output.min() >= 0 and output.max() <= pair[:, 2:].max() + 1e-4


def test_without_edge_profile_the_encoder_takes_the_raw_slice():
    net = _small_net(use_edge_profile=False)
    assert isinstance(net.edge_profile, nn.Identity)
    assert net.encoder.layers[0].in_channels == 1
    assert _small_net().encoder.layers[0].in_channels == 48
    with torch.no_grad():
        assert net(torch.rand(1, 3, 8, 8)).shape == (1, 1, 8, 8)


def test_torchscript_matches_eager():
    net = _small_net()
    scripted = torch.jit.script(net)
    pair = torch.rand(1, 4, 11, 9) * 255
    with torch.no_grad():
        torch.testing.assert_close(scripted(pair), net(pair), rtol=1e-4, atol=1e-5)
        features = net.encode(pair[:, :2].transpose(0, 1))
        torch.testing.assert_close(scripted.encode(pair[:, :2].transpose(0, 1)), features, rtol=1e-4, atol=1e-5)
        propagated = net.propagate(features[1:], features[:1], pair[:, 2:])
        torch.testing.assert_close(
            scripted.propagate(features[1:], features[:1], pair[:, 2:]), propagated, rtol=1e-4, atol=1e-5
        )


class _IdentityCode(nn.Module):
    """Features: a scaled one-hot of each pixel's intensity (all distinct within a slice), so matching is exact."""

    def __init__(self, num_codes, radius=3):
        super().__init__()
        self.num_codes, self.radius = num_codes, radius

    def encode(self, slices):
        return F.one_hot(slices[:, 0].long(), self.num_codes).permute(0, 3, 1, 2).float() * 10.0

    def propagate(self, target_features, reference_features, values):
        return reconstruct(local_affinity(target_features, reference_features, self.radius), values, self.radius)


def test_propagation_follows_a_known_shift_end_to_end():
    # Slice k is a random texture (a permutation of distinct intensities) moved by k * (1, 2) pixels; a square
    # annotated on slice 2 must move by the same amount on every other slice.
    size, depth, seed_index, step = 24, 6, 2, (1, 2)
    generator = torch.Generator().manual_seed(3)
    texture = torch.randperm(size * size, generator=generator).view(size, size).float()
    image = torch.stack([torch.roll(texture, (k * step[0], k * step[1]), dims=(0, 1)) for k in range(depth)], -1)
    square = torch.zeros(size, size, dtype=torch.long)
    square[9:15, 8:14] = 5

    def expected_slice(k):
        shift = ((k - seed_index) * step[0], (k - seed_index) * step[1])
        return _shift(square, -shift[0], -shift[1])

    seed = torch.zeros(size, size, depth, dtype=torch.long)
    seed[..., seed_index] = square
    propagator = SlicePropagator(axis=2, step=1, min_overlap=0, verification=False, clean=False, block_size=2)
    result = propagator(_IdentityCode(size * size).eval(), image, seed)
    assert result.dtype == torch.int64
    for k in range(depth):
        assert torch.equal(result[..., k], expected_slice(k)), f"slice {k}"
    assert not torch.equal(expected_slice(0), expected_slice(depth - 1))
