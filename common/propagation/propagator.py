"""Propagate a one-slice annotation through a volume, slice by slice, in both directions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from torch import nn

from common.propagation.verification import clean_slice, verify_slice
from common.settings import as_flag

__all__ = ["SlicePropagationInferer", "SlicePropagator"]


class SlicePropagator:
    """Sli2Vol inference: from the seed slice, propagate the previous slice's mask onto the next one.

    The model is anything with ``encode(slices (N, 1, H, W)) -> features (N, C, H, W)`` and
    ``propagate(target_features, reference_features, values (1, V, H, W)) -> (1, V, H, W)``: the Sli2Vol
    network (also after ``torch.jit.load``) or a baseline of :mod:`common.propagation.baselines`.

    Each direction walks away from the seed (backward first). Slices are encoded once, ``block_size`` at a
    time in walking order, so features for the whole volume are never held at once and a direction that stops
    early does not encode the rest. A step propagates the previous mask as one-hot, takes the argmax, applies
    the verification module and the clean-up, and ends the direction when the mask is empty.

    Args:
        axis: spatial axis of the slices (0, 1 or 2 of an (H, W, D) volume).
        verification: apply :func:`verify_slice` at every step.
        ring_iterations: width of the verification ring.
        clean: fill holes and close every propagated slice.
        block_size: slices encoded per batch.
        reencode_each_step: encode the slice pair afresh at every step instead (the slow reference, kept for
            the speed benchmark).
    """

    def __init__(
        self,
        axis: int = 2,
        verification: bool = True,
        ring_iterations: int = 5,
        clean: bool = True,
        block_size: int = 4,
        reencode_each_step: bool = False,
    ) -> None:
        self.axis = axis
        self.verification = as_flag(verification, "verification")
        self.ring_iterations = ring_iterations
        self.clean = as_flag(clean, "clean")
        self.block_size = block_size
        self.reencode_each_step = as_flag(reencode_each_step, "reencode_each_step")

    @torch.no_grad()
    def __call__(self, model: nn.Module, image: torch.Tensor, seed: torch.Tensor, seed_index: int) -> torch.Tensor:
        """Propagate.

        Args:
            model: the correspondence model (see the class docstring), in eval mode.
            image: (H, W, D) intensities on the scale the model expects ([0, 255] for Sli2Vol).
            seed: (H, W, D) int label map, labelled only on slice ``seed_index`` along ``axis``.
            seed_index: the annotated slice.

        Returns:
            (H, W, D) int64 label map with the seed's label values.
        """
        device = next(iter(model.parameters()), torch.empty(0)).device
        slices = image.float().movedim(self.axis, 0).unsqueeze(1).to(device)  # (D, 1, H, W)
        seed_slice = seed.movedim(self.axis, 0)[seed_index].long().cpu().contiguous()
        label_values = torch.unique(seed_slice[seed_slice > 0])
        seed_classes = torch.bucketize(seed_slice, label_values, right=True) * (seed_slice > 0)  # 0..K
        intensities = slices[:, 0].cpu().numpy()
        classes = np.zeros((slices.shape[0], *seed_slice.shape), dtype=np.int64)
        classes[seed_index] = seed_classes.numpy()
        for direction in (-1, 1):
            self._walk(model, slices, intensities, classes, seed_index, direction, len(label_values) + 1)
        volume = torch.as_tensor(classes)
        lookup = torch.cat([torch.zeros(1, dtype=torch.long), label_values])
        return lookup[volume].movedim(0, self.axis)

    def _walk(self, model, slices, intensities, classes, seed_index: int, direction: int, num_values: int) -> None:
        """Fill ``classes`` (D, H, W) from ``seed_index`` towards one end, stopping when the mask vanishes."""
        previous = seed_index
        end = -1 if direction < 0 else slices.shape[0]
        for index, features, previous_features in self._features(model, slices, seed_index, end, direction):
            values = F.one_hot(torch.as_tensor(classes[previous]), num_values).permute(2, 0, 1)[None]
            propagated = model.propagate(features[None], previous_features[None], values.float().to(slices.device))
            mask = propagated[0].argmax(0).cpu().numpy()
            if self.verification:
                mask = verify_slice(
                    mask, intensities[index], classes[previous], intensities[previous], self.ring_iterations
                )
            if self.clean:
                mask = clean_slice(mask)
            if not mask.any():
                return
            classes[index] = mask
            previous = index

    def _features(
        self, model: nn.Module, slices: torch.Tensor, start: int, end: int, direction: int
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (slice index, its features, the previous slice's features) walking from ``start`` to ``end``."""
        order = list(range(start + direction, end, direction))
        if self.reencode_each_step:
            for index in order:
                pair = model.encode(slices[[index - direction, index]])
                yield index, pair[1], pair[0]
            return
        previous_features = model.encode(slices[start : start + 1])[0]
        for block in _blocks(order, self.block_size):
            block_features = model.encode(slices[block])
            for index, features in zip(block, block_features, strict=True):
                yield index, features, previous_features
                previous_features = features


def _blocks(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for begin in range(0, len(order), size):
        yield list(order[begin : begin + size])


class SlicePropagationInferer(Inferer):
    """MONAI inferer wrapping :class:`SlicePropagator` for a batch of volumes.

    Called by an evaluator as ``inferer(image, network, seed, seed_index)`` (see
    ``monai.engines.PrepareBatchExtraInput``); returns the propagated label maps with the image's metadata,
    so ``SaveImaged`` writes them on the input's grid.

    Args:
        kwargs: the :class:`SlicePropagator` arguments.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.propagator = SlicePropagator(**kwargs)

    def __call__(
        self, inputs: torch.Tensor, network: nn.Module, seed: torch.Tensor, seed_index: torch.Tensor
    ) -> torch.Tensor:
        """inputs, seed: (B, 1, H, W, D); seed_index: (B,) -> (B, 1, H, W, D) float label maps."""
        plain_inputs = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        plain_seed = seed.as_tensor() if isinstance(seed, MetaTensor) else seed
        indices = torch.as_tensor(seed_index).reshape(-1).tolist()
        outputs = [
            self.propagator(network, volume[0], volume_seed[0], int(index))
            for volume, volume_seed, index in zip(plain_inputs, plain_seed, indices, strict=True)
        ]
        labels = torch.stack(outputs)[:, None].float().to(inputs.device)
        if isinstance(inputs, MetaTensor):
            return MetaTensor(labels, meta=inputs.meta)
        return labels
