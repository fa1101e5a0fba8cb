"""Temperature scaling (Guo et al., ICML 2017): one scalar that calibrates a classifier's softmax probabilities."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events
from torch.nn import functional

from common.data.atomic import atomic_target
from common.data.json_io import write_json
from common.handlers.checkpoint import unwrap

__all__ = ["TemperatureScaling", "fit_temperature"]

logger = logging.getLogger(__name__)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """The temperature T that minimises the negative log-likelihood of ``softmax(logits / T)`` on ``labels``.

    The NLL is convex in 1/T, so a golden-section search over log T within ``bounds`` finds the minimum (to a
    relative precision of 1e-4) without a learning rate to tune.

    Args:
        logits: (N, C) float.
        labels: (N,) integer classes in 0..C-1.
        bounds: the smallest and largest temperature considered.
    """
    logits, labels = logits.double(), labels.long()

    def nll(log_temperature: float) -> float:
        return float(functional.cross_entropy(logits / math.exp(log_temperature), labels))

    low, high = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    while high - low > 1e-4:
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if nll(left) < nll(right):
            high = right
        else:
            low = left
    return math.exp((low + high) / 2)


class TemperatureScaling:
    """Ignite handler: fit the ``temperature`` buffer of ``network`` on an evaluator's outputs, then save the network.

    Attach it to an evaluator that runs the network on validation data with no post-processing, so that each
    output's ``pred`` holds the logits (C, H, W) and ``label`` the label map (1, H, W). It keeps up to
    ``pixels_per_image`` random pixels of each image; at the end it fits T with :func:`fit_temperature` (the
    network's current temperature is taken into account), sets it, writes the network's state_dict to
    ``save_path`` atomically (every other tensor unchanged, so setting the temperature back to its old value
    restores the previous file) and ``report_path`` with the temperatures and the NLL before and after.

    Args:
        network: the network whose ``temperature`` buffer is fitted (DDP-wrapped or not).
        save_path: the weights file to write, usually the bundle's ``models/model.pt``.
        report_path: a JSON report of the fit.
        pixels_per_image: pixels sampled from each image (all when the image has fewer).
        seed: seed of the pixel sampling.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        save_path: str | os.PathLike,
        report_path: str | os.PathLike,
        pixels_per_image: int = 4096,
        seed: int = 0,
    ) -> None:
        self.network = network
        self.save_path = save_path
        self.report_path = report_path
        self.pixels_per_image = pixels_per_image
        self.generator = torch.Generator().manual_seed(seed)
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.fit)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the sampled pixels (each evaluator run fits on its own outputs)."""
        self.logits, self.labels = [], []

    def collect(self, engine: Engine) -> None:
        outputs = engine.state.output
        for output in [outputs] if isinstance(outputs, Mapping) else outputs:
            self.add(output["pred"], output["label"])

    def add(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        """Sample pixels of one image: ``logits`` (C, *spatial), ``label`` (1, *spatial) or (*spatial)."""
        label = torch.as_tensor(label).detach().reshape(-1)
        logits = torch.as_tensor(logits).detach().flatten(1)
        keep = torch.randperm(len(label), generator=self.generator)[: self.pixels_per_image]  # selected before copying
        self.logits.append(logits[:, keep.to(logits.device)].T.float().cpu())
        self.labels.append(label[keep.to(label.device)].cpu())

    def fit(self, engine: Engine | None = None) -> float:
        """Fit, set and save the temperature; returns it."""
        logits, labels = torch.cat(self.logits).double(), torch.cat(self.labels).long()
        module = unwrap(self.network)
        previous = float(module.temperature)
        scale = fit_temperature(logits, labels)
        temperature = previous * scale
        module.temperature.fill_(temperature)
        with atomic_target(self.save_path) as temporary:
            torch.save(module.state_dict(), temporary)
        report = {
            "previous_temperature": previous,
            "temperature": temperature,
            "pixels": len(labels),
            "nll_before": float(functional.cross_entropy(logits, labels)),
            "nll_after": float(functional.cross_entropy(logits / scale, labels)),
        }
        write_json(report, self.report_path)
        logger.info(
            "temperature %.4f (was %.4f), NLL %.4f -> %.4f on %d validation pixels; saved %s",
            *(temperature, previous, report["nll_before"], report["nll_after"], len(labels), self.save_path),
        )
        return temperature
