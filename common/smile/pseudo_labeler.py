"""One relabeling step for one volume: predict the missing organs, keep the surest voxels.

SMILEr, docs/methods/smile.md §3.3.

Prediction runs in the model's space (the bundle's resampling and intensity transforms, then a sliding window);
the probabilities, and the MC-dropout uncertainty when used, are inverted back onto the voxel grid of the
image file, so pseudo-labels are selected, counted and written in the image's own geometry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from torch import nn

from common.handlers.checkpoint import unwrap
from common.smile.selection import binary_entropy, has_dropout, mc_dropout_predict, select_top_fraction

__all__ = ["SELECTION_RULES", "UNCERTAINTY_MEASURES", "PseudoLabeler"]

SELECTION_RULES = ("confidence", "uncertainty")
UNCERTAINTY_MEASURES = ("std", "entropy")


class PseudoLabeler:
    """Labels the surest voxels of the classes missing from a volume with the current model.

    Rules (``selection``):
        - ``"confidence"``: one deterministic pass; among the predicted positives (probability >= threshold), the
          highest probabilities are kept;
        - ``"uncertainty"``: ``mc_passes`` MC-dropout passes; among the positives of the mean probability, the
          lowest uncertainty is kept: the std over the passes (``uncertainty="std"``) or the binary entropy of
          the mean (``"entropy"``; above a 0.5 threshold that ranks like the confidence of the mean).

    Voxels that already carry a real label are never candidates: a voxel delineated as one organ is known
    not to be another.

    Args:
        network: outputs logits (B, K, *spatial); may be wrapped in DistributedDataParallel.
        inferer: called as ``inferer(inputs, network)``, e.g. a MONAI ``SlidingWindowInferer``.
        preprocessing: the dictionary transforms from a loaded image to the network input (orientation,
            spacing, intensity), applied to ``{"image": image}``; invertible, to map predictions back.
        selection: ``"confidence"`` or ``"uncertainty"``.
        threshold: probability at or above which a voxel is predicted positive, in (0, 1).
        mc_passes: stochastic passes for ``"uncertainty"``, >= 2.
        uncertainty: ``"std"`` or ``"entropy"``.
    """

    def __init__(
        self,
        network: nn.Module,
        inferer: Callable[[torch.Tensor, nn.Module], torch.Tensor],
        preprocessing: Callable[[dict], dict],
        selection: str = "confidence",
        threshold: float = 0.5,
        mc_passes: int = 8,
        uncertainty: str = "std",
    ) -> None:
        if selection not in SELECTION_RULES:
            raise ValueError(f"selection must be one of {SELECTION_RULES}, got {selection!r}")
        if uncertainty not in UNCERTAINTY_MEASURES:
            raise ValueError(f"uncertainty must be one of {UNCERTAINTY_MEASURES}, got {uncertainty!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if selection == "uncertainty" and mc_passes < 2:
            raise ValueError(f"mc_passes must be >= 2 for MC dropout, got {mc_passes}")
        if selection == "uncertainty" and not has_dropout(network):
            raise ValueError(
                f"selection 'uncertainty' uses MC dropout, but the network ({type(unwrap(network)).__name__}) "
                "has no dropout layer with p > 0: set network_def#dropout (e.g. 0.1) or use selection 'confidence'"
            )
        self.network = network
        self.inferer = inferer
        self.preprocessing = preprocessing
        self.selection = selection
        self.threshold = threshold
        self.mc_passes = mc_passes
        self.uncertainty = uncertainty
        self._invert = Invertd(
            keys=("probabilities", "uncertainty"),
            transform=preprocessing,
            orig_keys="image",
            nearest_interp=False,
            to_tensor=True,
            allow_missing_keys=True,
        )

    def predict(self, image: MetaTensor, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities (and uncertainty) of every class on the voxel grid of ``image``.

        Args:
            image: a loaded image (1, *spatial) with its metadata (e.g. from ``LoadImaged``).
            device: where the network runs.

        Returns:
            (probabilities, uncertainty): float tensors (K, *spatial) on the CPU; uncertainty is None for the
            confidence rule.
        """
        data = self.preprocessing({"image": image})
        inputs = data["image"].unsqueeze(0).to(device)
        network = unwrap(self.network)
        if self.selection == "confidence":
            probabilities, uncertainty = self._deterministic(network, inputs), None
        else:
            probabilities, uncertainty = mc_dropout_predict(network, inputs, self.mc_passes, self.inferer)
            if self.uncertainty == "entropy":
                uncertainty = binary_entropy(probabilities)
        model_space = data["image"]
        data = {"image": model_space, "probabilities": self._on_grid(probabilities[0], model_space)}
        if uncertainty is not None:
            data["uncertainty"] = self._on_grid(uncertainty[0], model_space)
        inverted = self._invert(data)
        return inverted["probabilities"].float(), inverted.get("uncertainty")

    def _deterministic(self, network: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                logits = self.inferer(inputs, network)
        finally:
            network.train(was_training)
        return torch.sigmoid(torch.as_tensor(logits).float())

    @staticmethod
    def _on_grid(values: torch.Tensor, model_space: MetaTensor) -> MetaTensor:
        """``values`` (K, *spatial) in model space, carrying the image's metadata and transform history."""
        return MetaTensor(
            values.detach().cpu(), meta=model_space.meta, applied_operations=model_space.applied_operations
        )

    def select(
        self,
        probabilities: torch.Tensor,
        uncertainty: torch.Tensor | None,
        label: torch.Tensor,
        fractions: Sequence[float] | torch.Tensor,
    ) -> torch.Tensor:
        """The pseudo-label map of one volume.

        Args:
            probabilities: (K, *spatial) class probabilities.
            uncertainty: (K, *spatial) for the uncertainty rule, else None.
            label: (1, *spatial) real label map; its labelled voxels are never candidates.
            fractions: (K,) fraction of the candidates kept per class; 0 for a class that is not relabelled
                (an annotated class).

        Returns:
            uint8 tensor (1, *spatial): the class number k in 1..K (channel k - 1) where class k was selected,
            0 elsewhere. A voxel selected for several classes goes to the most probable one.
        """
        fractions = torch.as_tensor(fractions, dtype=torch.float64)
        unlabelled = torch.as_tensor(label)[0] == 0
        selected = torch.zeros_like(probabilities, dtype=torch.bool)
        for k in torch.nonzero(fractions > 0).flatten().tolist():
            candidates = unlabelled & (probabilities[k] >= self.threshold)
            scores = probabilities[k] if uncertainty is None else -uncertainty[k]
            selected[k] = select_top_fraction(scores, candidates, float(fractions[k]))
        best = torch.where(selected, probabilities, torch.full_like(probabilities, -1.0)).argmax(dim=0)
        return torch.where(selected.any(dim=0), best + 1, 0).to(torch.uint8).unsqueeze(0)
