"""Sli2Vol encoder: the fused inference path (batch norm folded, channels-last, oneDNN post-ops) against the plain one.

The reference is always the plain path (``encoder.fused_inference = False``: the modules one by one); the
FLOP count is checked against a hand count.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.sli2vol_speed import encoder_efficiency, encoder_flops, shipped_encoder_config
from common.handlers.checkpoint import load_weights
from common.sli2vol import Sli2VolNet
from common.sli2vol import network as sli2vol_module

SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "bundles" / "sli2vol" / "models" / "model.pt"
CONFIGS = {
    "shipped": {"channels": (16, 32, 64), "feature_channels": 32},
    "paper": {"channels": (16, 32, 64, 128), "feature_channels": 64},
    "raw_slice": {"channels": (8, 16), "feature_channels": 8, "use_edge_profile": False},
}


def _net(config, seed=0):
    """An eval-mode network whose batch norms have non-trivial running statistics (else folding is a no-op)."""
    torch.manual_seed(seed)
    net = Sli2VolNet(**CONFIGS[config]).eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            module.bias.data.normal_(0.0, 0.2)
    return net


def _slices(batch=3, height=23, width=17, seed=1):
    return torch.rand(batch, 1, height, width, generator=torch.Generator().manual_seed(seed)) * 255


def _plain(net, slices):
    net.encoder.fused_inference = False
    try:
        with torch.no_grad():
            return net.encode(slices)
    finally:
        net.encoder.fused_inference = True


def _assert_close(actual, expected):
    """Within 1e-4, relative to the features' scale (the raw-slice ablation's features reach ~100)."""
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=1e-4 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_fused_path_matches_the_plain_path(config):
    net = _net(config)
    slices = _slices()
    with torch.no_grad():
        fused = net.encode(slices)
    plain = _plain(net, slices)
    assert fused.shape == plain.shape == (3, CONFIGS[config]["feature_channels"], 23, 17)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    _assert_close(fused, plain)


def test_fused_path_serves_any_slice_size_after_the_first():
    net = _net("paper")
    for batch, height, width in ((4, 23, 17), (1, 40, 9), (6, 5, 5)):  # the weights are prepared at every call
        slices = _slices(batch, height, width)
        with torch.no_grad():
            fused = net.encode(slices)
        _assert_close(fused, _plain(net, slices))


def test_fused_path_under_inference_mode():
    net = _net("shipped")
    slices = _slices(batch=2)
    with torch.inference_mode():
        first = net.encode(slices)
        second = net.encode(slices)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    _assert_close(first, _plain(net, slices))


def test_fused_path_without_onednn_matches_the_plain_path(monkeypatch):
    monkeypatch.setattr(sli2vol_module, "_ONEDNN_FUSION", False)
    net = _net("shipped")
    slices = _slices()
    with torch.no_grad():
        fused = net.encode(slices)
    _assert_close(fused, _plain(net, slices))


def test_fused_path_only_without_autograd_in_eval_mode(monkeypatch):
    net = _net("shipped")
    slices = _slices(batch=2)
    plain = _plain(net, slices)

    def refuse(_x):
        raise AssertionError("the fused path must not run here")

    monkeypatch.setattr(net.encoder, "forward_fused", refuse)
    with torch.enable_grad():  # eval mode, gradients on: the plain path, differentiable
        features = net.encode(slices)
    assert features.requires_grad
    torch.testing.assert_close(features.detach(), plain, rtol=0, atol=0)
    net.train()
    with torch.no_grad():  # training mode: batch statistics, never folded
        net.encode(slices)


def test_fused_path_keeps_the_input_and_repeats_exactly():
    net = _net("raw_slice")  # the encoder's input is the caller's tensor itself
    slices = _slices()
    before = slices.clone()
    with torch.no_grad():
        first = net.encode(slices)
        second = net.encode(slices)
    torch.testing.assert_close(slices, before, rtol=0, atol=0)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_fused_path_follows_weight_updates():
    net = _net("shipped")
    slices = _slices(batch=2)
    with torch.no_grad():
        net.encode(slices)
        other = _net("shipped", seed=5)
        net.load_state_dict(other.state_dict())  # in-place copies
        _assert_close(net.encode(slices), _plain(other, slices))
        block = net.encoder.layers[4]
        block.conv2.weight.mul_(1.5)
        block.bn1.running_var.add_(0.5)
        net.encoder.layers[1].bias.add_(0.1)
        net.encoder.layers[-1].weight.mul_(0.5)  # the head: no batch norm
        _assert_close(net.encode(slices), _plain(net, slices))
        block.conv1.weight.data.mul_(0.5)  # through .data, as optimisers of old do
        _assert_close(net.encode(slices), _plain(net, slices))
        block.conv2.weight.data = block.conv2.weight.data * 2.0  # new storage (as when the module moves)
        _assert_close(net.encode(slices), _plain(net, slices))


def test_torchscript_encode_and_propagate_match_eager():
    net = _net("shipped")
    scripted = torch.jit.script(net)
    slices = _slices(batch=2)
    plain = _plain(net, slices)
    with torch.no_grad():
        scripted_features = scripted.encode(slices)  # the fused path without oneDNN post-ops
        _assert_close(scripted_features, plain)
        values = torch.rand(1, 2, 23, 17)
        torch.testing.assert_close(
            scripted.propagate(scripted_features[1:], scripted_features[:1], values),
            net.propagate(plain[1:], plain[:1], values),
            rtol=1e-4,
            atol=1e-5,
        )


def test_state_dict_keys_unchanged_and_shipped_weights_load_strictly():
    net = Sli2VolNet(**shipped_encoder_config())
    keys = set(net.state_dict())
    assert {"encoder.layers.0.weight", "encoder.layers.1.running_var", "encoder.layers.3.conv1.weight"} <= keys
    assert {"encoder.layers.5.shortcut.0.weight", "encoder.layers.5.shortcut.1.running_mean"} <= keys
    assert not any("fused" in key for key in keys)
    load_weights(net, SHIPPED_WEIGHTS)  # strict: raises on a missing or unexpected key
    net.eval()
    slices = _slices(batch=2, height=31, width=26)
    with torch.no_grad():
        fused = net.encode(slices)
    _assert_close(fused, _plain(net, slices))


def test_encoder_flops_hand_count():
    net = Sli2VolNet(channels=(4, 8), blocks_per_stage=1, feature_channels=6)
    height, width = 5, 7
    per_pixel = (
        48 * 49  # edge profile: 1 -> 48 difference 7x7 kernels
        + 48 * 4 * 49  # stem 7x7
        + 2 * 4 * 4 * 9  # block 4 -> 4: two 3x3
        + 4 * 8 * 9
        + 8 * 8 * 9
        + 4 * 8  # block 4 -> 8: two 3x3 and the 1x1 projection
        + 8 * 6 * 9  # head 3x3
    )
    assert encoder_flops(net, height, width) == 2 * per_pixel * height * width


def test_encoder_efficiency_reports_every_variant_against_the_flop_limit():
    tiny = {"channels": (4, 8), "blocks_per_stage": 1, "feature_channels": 4}
    result = encoder_efficiency(threads=1, height=12, width=10, batches=(2,), variants=("plain", "plain_cl", "fused"),
                                encoders={"tiny": tiny}, repeats=1)  # fmt: skip
    rows = result["rows"]
    assert [row["variant"] for row in rows] == ["plain", "plain_cl", "fused"] and not result["compile_errors"]
    flops = encoder_flops(Sli2VolNet(**tiny), 12, 10)
    for row in rows:
        assert row["flops_per_slice"] == flops and row["batch"] == 2
        assert row["ratio"] == pytest.approx(row["seconds_per_slice"] / row["flop_bound_seconds_per_slice"])
