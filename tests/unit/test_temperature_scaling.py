import json
import math

import pytest
import torch
from torch.nn import functional

from common.handlers.temperature_scaling import TemperatureScaling, fit_temperature
from common.xnet.network import XNet


def _overconfident_sample(true_temperature: float, num_pixels: int = 20000, seed: int = 0):
    """Labels drawn from softmax(z); the logits handed over are z * true_temperature (too confident)."""
    generator = torch.Generator().manual_seed(seed)
    calibrated = torch.randn(num_pixels, 3, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(calibrated, dim=1), 1, generator=generator)[:, 0]
    return calibrated * true_temperature, labels


def test_fit_recovers_the_temperature_that_generated_the_labels():
    logits, labels = _overconfident_sample(true_temperature=2.5)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_fit_minimises_the_negative_log_likelihood():
    logits, labels = _overconfident_sample(true_temperature=0.4, seed=1)
    best = fit_temperature(logits, labels)

    def nll(temperature):
        return functional.cross_entropy(logits / temperature, labels).item()

    assert nll(best) <= min(nll(best * 0.9), nll(best * 1.1), nll(1.0))


def test_handler_sets_the_buffer_saves_the_weights_and_reports(tmp_path):
    network = XNet(channels=(4, 8, 8, 16))
    network.temperature.fill_(2.0)
    logits, labels = _overconfident_sample(true_temperature=3.0, num_pixels=2 * 64 * 64)
    handler = TemperatureScaling(network, tmp_path / "model.pt", tmp_path / "temperature.json", pixels_per_image=3000)
    for image in range(2):
        part = slice(image * 4096, (image + 1) * 4096)
        handler.add(logits[part].T.reshape(3, 64, 64), labels[part].reshape(1, 64, 64))
    temperature = handler.fit()
    # the outputs were already divided by 2.0, so the network's temperature becomes 2.0 * ~3.0
    assert temperature == pytest.approx(6.0, rel=0.1) and float(network.temperature) == pytest.approx(temperature)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert float(saved["temperature"]) == pytest.approx(temperature)
    torch.testing.assert_close(saved["head.weight"], network.head.weight.detach())
    report = json.loads((tmp_path / "temperature.json").read_text())
    assert report["pixels"] == 6000 and report["previous_temperature"] == 2.0
    assert report["nll_after"] < report["nll_before"]


def test_temperature_divides_the_logits_and_survives_torchscript():
    network = XNet(channels=(4, 8, 8, 16)).eval()
    image = torch.rand(1, 1, 16, 16)
    before = network(image)
    network.temperature.fill_(4.0)
    torch.testing.assert_close(network(image), before / 4.0)
    torch.testing.assert_close(torch.jit.script(network)(image), before / 4.0)
    assert math.isclose(float(network.state_dict()["temperature"]), 4.0)
