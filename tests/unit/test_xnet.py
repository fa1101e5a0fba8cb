import pytest
import torch
from torch.nn import functional

from common.xnet.loss import KernelL2CrossEntropyLoss
from common.xnet.network import XNet, conv_kernel_l2


def test_paper_widths_have_the_parameter_count_of_the_layer_list():
    # 11.73 M, counted from the published layer list (docs/methods/xnet.md §2.1), for k = 3
    assert sum(p.numel() for p in XNet().parameters()) == 11_734_851


@pytest.mark.parametrize("size", [(16, 24), (40, 8)])
def test_logits_keep_the_input_size(size):
    network = XNet(in_channels=1, out_channels=3, channels=(4, 8, 8, 16)).eval()
    assert network(torch.rand(2, 1, *size)).shape == (2, 3, *size)


def test_sizes_not_divisible_by_eight_are_refused():
    with pytest.raises(ValueError, match="multiples of 8, got 20×16"):
        XNet(channels=(4, 8, 8, 16))(torch.rand(1, 1, 20, 16))


def test_every_convolution_reaches_the_output():
    network = XNet(channels=(4, 8, 8, 16)).eval()
    network(torch.rand(2, 1, 16, 16)).sum().backward()
    convolutions = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == 15  # 14 "C" blocks and the 1×1 head
    assert all(m.weight.grad.abs().sum() > 0 for m in convolutions)


def test_torchscript_matches_eager():
    network = XNet(channels=(4, 8, 8, 16)).eval()
    image = torch.rand(1, 1, 24, 16)
    scripted = torch.jit.script(network)
    torch.testing.assert_close(scripted(image), network(image))


def test_kernel_l2_sums_squared_conv_kernels_only():
    network = XNet(channels=(4, 8, 8, 16))
    for parameter in network.parameters():
        torch.nn.init.constant_(parameter, 0.5)
    kernels = sum(m.weight.numel() for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv_kernel_l2(network).item() == pytest.approx(0.25 * kernels)


def test_loss_is_cross_entropy_plus_lambda_times_kernel_l2():
    network = XNet(channels=(4, 8, 8, 16))
    logits = torch.randn(2, 3, 8, 8)
    label = torch.randint(0, 3, (2, 1, 8, 8))
    cross_entropy = functional.cross_entropy(logits, label[:, 0])
    loss = KernelL2CrossEntropyLoss(network, l2_weight=1e-3)(logits, label)
    expected = cross_entropy + 1e-3 * conv_kernel_l2(network)
    torch.testing.assert_close(loss, expected)
    assert KernelL2CrossEntropyLoss(network, l2_weight=0.0)(logits, label[:, 0]) == pytest.approx(cross_entropy.item())


def test_loss_gradient_shrinks_kernels():
    network = XNet(channels=(4, 8, 8, 16))
    loss = KernelL2CrossEntropyLoss(network, l2_weight=1.0)
    loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8)).backward()
    kernel = network.head.weight
    torch.testing.assert_close(kernel.grad, 2 * kernel.detach())
    assert network.head.bias.grad is None  # biases are not penalised
