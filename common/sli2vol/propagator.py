"""Propagate an annotation of one or more slices through a volume (Sli2Vol inference, docs/methods/sli2vol.md §1.5)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from torch import nn

from common.settings import as_flag
from common.sli2vol.interpolation import fuse_label_maps, interpolate_label_maps
from common.sli2vol.verification import clean_slice, verify_slice

__all__ = ["BETWEEN_MODES", "FILL_MODES", "SliceFeatures", "SlicePropagationInferer", "SlicePropagator", "accepts_step"]

FILL_MODES = ("interpolate", "propagate")
BETWEEN_MODES = ("propagate", "interpolate", "union")


BLOCK_SIZE = 8  # slices encoded per batch along the walk; inference.json states its own


class SliceFeatures:
    """Features of a volume's slices, encoded when first needed, a block at a time, and kept.

    Args:
        model: has ``encode(slices (N, 1, H, W)) -> (N, C, H, W)``.
        slices: (D, 1, H, W) intensities on the model's device.
        block_size: slices encoded per call.
    """

    def __init__(self, model: nn.Module, slices: torch.Tensor, block_size: int = BLOCK_SIZE) -> None:
        self.model, self.slices, self.block_size = model, slices, max(1, int(block_size))
        self.cache: dict[int, torch.Tensor] = {}

    def __getitem__(self, index: int) -> torch.Tensor:
        """(C, H, W) features of slice ``index``."""
        if index not in self.cache:
            self.encode([index])
        return self.cache[index]

    def prefetch(self, walk: Sequence[int]) -> None:
        """When the first slice of ``walk`` (the next ones to be visited, in order) is not encoded yet, encode it
        with the following ones, ``block_size`` slices in one batch."""
        if walk and walk[0] not in self.cache:
            self.encode(list(walk[: self.block_size]))

    def encode(self, indices: list[int]) -> None:
        """Encode the slices of ``indices`` not yet encoded, ``block_size`` at a time."""
        missing = [index for index in dict.fromkeys(indices) if index not in self.cache]
        for begin in range(0, len(missing), self.block_size):
            block = missing[begin : begin + self.block_size]
            self.cache.update(zip(block, self.model.encode(self.slices[block]), strict=True))


def accepts_step(mask: np.ndarray, previous: np.ndarray, max_growth: float | None, min_overlap: float = 0.0) -> bool:
    """The stop rule: a propagated slice is kept when it is not empty, with ``max_growth`` its labelled area is
    at most ``max_growth`` times the previous slice's (a larger jump is a leak into a neighbour), and its Dice
    overlap with the previous slice's labelled area is at least ``min_overlap``."""
    area, previous_area = np.count_nonzero(mask), np.count_nonzero(previous)
    if area == 0 or (max_growth is not None and area > max_growth * previous_area):
        return False
    return min_overlap <= 0 or 2 * np.count_nonzero((mask > 0) & (previous > 0)) >= min_overlap * (area + previous_area)


@dataclass
class _Volume:
    """One propagation's state: features, intensities (D, H, W) and the class map (D, H, W) being filled."""

    model: nn.Module
    features: SliceFeatures
    intensities: np.ndarray
    classes: np.ndarray
    num_values: int
    spacing: float | None


class SlicePropagator:
    """Sli2Vol inference: propagate the annotated slices' masks through the volume.

    The model is anything with ``encode(slices (N, 1, H, W)) -> features (N, C, H, W)`` and
    ``propagate(target_features, reference_features, values (1, V, H, W)) -> (1, V, H, W)``: the Sli2Vol network
    (also after ``torch.jit.load``) or a baseline of :mod:`tools.propagation_baselines`.

    From the first annotated slice the mask is propagated towards the first slice of the volume, from the last
    one towards the last slice, each time ``step`` slices further (a keyframe): the previous keyframe's mask goes
    through the affinity as one-hot, optionally averaged with the annotated slice's own propagation
    (``anchor_weight``), the argmax is taken, then the verification module and the clean-up. Slices between
    keyframes are filled by signed-distance interpolation (``fill="interpolate"``) or by the propagation from
    both keyframes, fused by distance (``fill="propagate"``). A keyframe that fails the stop rule
    (:func:`accepts_step`: empty, grown more than ``max_growth``, or overlapping the previous keyframe less than
    ``min_overlap``), or whose filled slices lose every pixel to the verification, is retried one slice away;
    the direction ends when that fails too. Between two annotated slices, see ``between``. Annotated slices come
    back unchanged. ``step=1, anchor_weight=0, max_growth=None, min_overlap=0`` is the paper's propagation.

    Args:
        axis: spatial axis of the slices (0, 1 or 2 of an (H, W, D) volume).
        step: slices between keyframes; None derives it from ``step_mm`` and the slice spacing.
        step_mm: keyframe distance in mm when ``step`` is None (rounded to whole slices, at least 1).
        fill: how slices between keyframes are filled, one of :data:`FILL_MODES`.
        between: how slices between two annotated slices are filled, one of :data:`BETWEEN_MODES`: ``propagate``
            from both and fuse by distance, ``interpolate`` the two annotations, or the ``union`` of both.
        anchor_weight: weight of the annotated slice's propagation in every step (0: the previous keyframe only).
        max_growth: stop rule's largest area ratio between consecutive keyframes; None or 0: no limit.
        min_overlap: stop rule's smallest Dice overlap between consecutive keyframes up to ``step_mm`` apart,
            lowered for keyframes further apart (:meth:`overlap_threshold`); 0: no limit.
        verification: apply :func:`verify_slice` at every step.
        ring_iterations: width of the verification ring.
        clean: fill holes and close every propagated slice.
        block_size: slices encoded per batch.
    """

    def __init__(
        self,
        axis: int = 2,
        step: int | None = None,
        step_mm: float = 1.875,
        fill: str = "interpolate",
        between: str = "union",
        anchor_weight: float = 0.0,
        max_growth: float | None = None,
        min_overlap: float = 0.8,
        verification: bool = True,
        ring_iterations: int = 5,
        clean: bool = True,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        if fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        if between not in BETWEEN_MODES:
            raise ValueError(f"between must be one of {BETWEEN_MODES}, got {between!r}")
        if not 0.0 <= float(anchor_weight) <= 1.0:
            raise ValueError(f"anchor_weight must be in [0, 1], got {anchor_weight}")
        self.axis = axis
        self.step = None if step is None else max(1, int(step))
        self.step_mm = float(step_mm)
        self.fill = fill
        self.between = between
        self.anchor_weight = float(anchor_weight)
        self.max_growth = None if max_growth in (None, 0) else float(max_growth)
        self.min_overlap = float(min_overlap)
        self.verification = as_flag(verification, "verification")
        self.ring_iterations = ring_iterations
        self.clean = as_flag(clean, "clean")
        self.block_size = block_size

    def keyframe_step(self, spacing: float | None) -> int:
        """Slices between keyframes: ``step``, or ``step_mm`` / ``spacing`` rounded (1 when spacing is unknown)."""
        if self.step is not None:
            return self.step
        if not spacing or spacing <= 0:
            return 1
        return max(1, round(self.step_mm / spacing))

    @torch.no_grad()
    def __call__(
        self, model: nn.Module, image: torch.Tensor, seed: torch.Tensor, spacing: float | None = None
    ) -> torch.Tensor:
        """Propagate.

        Args:
            model: the correspondence model (see the class docstring), in eval mode.
            image: (H, W, D) intensities on the scale the model expects ([0, 255] for Sli2Vol).
            seed: (H, W, D) int label map, labelled on one or more slices along ``axis``.
            spacing: slice spacing along ``axis`` in mm, for ``step_mm``.

        Returns:
            (H, W, D) int64 label map with the seed's label values.
        """
        device = next(iter(model.parameters()), torch.empty(0)).device
        slices = image.float().movedim(self.axis, 0).unsqueeze(1).to(device)  # (D, 1, H, W)
        seed_planes = seed.movedim(self.axis, 0).long().cpu().contiguous()
        seeds = torch.nonzero(seed_planes.flatten(1).any(1)).flatten().tolist()
        if not seeds:
            raise ValueError("the seed label map has no labelled voxel")
        label_values = torch.unique(seed_planes[seed_planes > 0])
        classes = (torch.bucketize(seed_planes, label_values, right=True) * (seed_planes > 0)).numpy()  # 0..K
        volume = _Volume(
            model, SliceFeatures(model, slices, self.block_size), slices[:, 0].cpu().numpy(), classes,
            len(label_values) + 1, spacing,
        )  # fmt: skip
        step, depth = self.keyframe_step(spacing), slices.shape[0]
        self._store(volume, self._walk(volume, seeds[0], -1, step))
        for first, last in itertools.pairwise(seeds):
            self._between(volume, first, last, step)
        self._store(volume, self._walk(volume, seeds[-1], depth, step))
        lookup = torch.cat([torch.zeros(1, dtype=torch.long), label_values])
        return lookup[torch.as_tensor(volume.classes)].movedim(0, self.axis)

    @staticmethod
    def _store(volume: _Volume, masks: dict[int, np.ndarray]) -> None:
        for index, mask in masks.items():
            volume.classes[index] = mask

    def _between(self, volume: _Volume, first: int, last: int, step: int) -> None:
        """Fill the slices between annotated slices ``first`` < ``last``.

        ``between="interpolate"`` interpolates the two annotations by signed distance. ``"propagate"`` walks from
        both and fuses the two masks of every slice by distance; slices that neither walk reached (both stopped)
        interpolate between the last masks the two walks kept. ``"union"`` takes the union of both results.
        """
        if last - first < 2:
            return
        classes = volume.classes
        interpolated = interpolate_label_maps(classes[first], classes[last], last - first)
        if self.between == "interpolate":
            classes[first + 1 : last] = interpolated
            return
        from_first = self._walk(volume, first, last, step)
        from_last = self._walk(volume, last, first, step)
        reached_first = max(from_first, default=first)
        reached_last = min(from_last, default=last)
        for index in range(first + 1, last):
            sides = ((from_first.get(index), last - index), (from_last.get(index), index - first))
            found = [(mask, weight) for mask, weight in sides if mask is not None]
            if found:
                classes[index] = fuse_label_maps(*zip(*found, strict=True))
        if reached_last - reached_first > 1:
            gap = interpolate_label_maps(classes[reached_first], classes[reached_last], reached_last - reached_first)
            classes[reached_first + 1 : reached_last] = gap
        if self.between == "union":
            for offset, mask in enumerate(interpolated, first + 1):
                classes[offset] = np.where(classes[offset] > 0, classes[offset], mask)

    def _walk(self, volume: _Volume, start: int, limit: int, step: int) -> dict[int, np.ndarray]:
        """Masks of the slices strictly between ``start`` and ``limit``, walking from the annotated ``start``."""
        direction = 1 if limit > start else -1
        masks: dict[int, np.ndarray] = {}
        current = start
        while abs(limit - current) > 1:
            distance = min(step, abs(limit - current) - 1)
            volume.features.prefetch(range(current + direction * distance, limit, direction * step))
            advance = self._advance(volume, masks, current, current + direction * distance, start)
            if advance is None and distance > 1:
                advance = self._advance(volume, masks, current, current + direction, start)
            if advance is None:
                break
            masks.update(advance)
            current += direction * len(advance)
        return masks

    def _advance(self, volume: _Volume, masks: dict, current: int, target: int, start: int) -> dict | None:
        """Masks of the slices after keyframe ``current`` up to ``target``, or None where the stop rule ends here.

        The keyframe ``target`` must pass :func:`accepts_step`; with verification, every slice filled between the
        keyframes must keep some pixels under :func:`verify_slice` (a keyframe may not jump over a gap).
        """
        direction = 1 if target > current else -1
        previous = self._mask(volume, masks, current)
        mask = self._propagate(volume, masks, current, target, start)
        threshold = self.overlap_threshold(abs(target - current) * volume.spacing if volume.spacing else None)
        if not accepts_step(mask, previous, self.max_growth, threshold):
            return None
        filled = self._fill_between(volume, masks, current, target, mask, start)
        between = dict(zip(range(current + direction, target, direction), filled, strict=True))
        for index, between_mask in between.items():
            if self.verification and not self._verify(volume, between_mask, index, previous, current).any():
                return None
        return {**between, target: mask}

    def _verify(self, volume: _Volume, mask: np.ndarray, index: int, previous: np.ndarray, reference: int):
        intensities = volume.intensities
        return verify_slice(mask, intensities[index], previous, intensities[reference], self.ring_iterations)

    def overlap_threshold(self, distance_mm: float | None) -> float:
        """The stop rule's smallest overlap between keyframes ``distance_mm`` apart.

        ``min_overlap`` up to ``step_mm``; beyond it ``min_overlap ** (distance_mm / step_mm)``, because slices
        further apart overlap less (on 10 mm slices, 0.8 becomes 0.3). Unknown spacing: ``min_overlap``.
        """
        if not distance_mm or distance_mm <= self.step_mm:
            return self.min_overlap
        return self.min_overlap ** (distance_mm / self.step_mm)

    @staticmethod
    def _mask(volume: _Volume, masks: dict[int, np.ndarray], index: int) -> np.ndarray:
        return masks[index] if index in masks else volume.classes[index]

    def _fill_between(self, volume, masks, current: int, target: int, mask: np.ndarray, start: int) -> list:
        """The slices strictly between keyframes ``current`` and ``target``, in walking order."""
        distance = abs(target - current)
        if self.fill == "interpolate":
            return interpolate_label_maps(self._mask(volume, masks, current), mask, distance)
        direction = 1 if target > current else -1
        filled = []
        for offset in range(1, distance):
            index = current + direction * offset
            from_current = self._propagate(volume, masks, current, index, start)
            from_target = self._propagate(volume, {**masks, target: mask}, target, index, start)
            filled.append(fuse_label_maps([from_current, from_target], [distance - offset, offset]))
        return filled

    def _propagate(self, volume: _Volume, masks: dict, reference: int, target: int, anchor: int) -> np.ndarray:
        """The (H, W) class map of slice ``target`` propagated from ``reference`` (and ``anchor``), verified."""
        reference_mask = self._mask(volume, masks, reference)
        probabilities = self._affinity_step(volume, reference, reference_mask, target)
        if self.anchor_weight > 0 and anchor != reference:
            anchored = self._affinity_step(volume, anchor, volume.classes[anchor], target)
            probabilities = (1 - self.anchor_weight) * probabilities + self.anchor_weight * anchored
        mask = probabilities.argmax(0).cpu().numpy()
        if self.verification:
            mask = self._verify(volume, mask, target, reference_mask, reference)
        return clean_slice(mask) if self.clean else mask

    @staticmethod
    def _affinity_step(volume: _Volume, reference: int, reference_mask: np.ndarray, target: int) -> torch.Tensor:
        """(V, H, W) class probabilities of ``target`` copied from the one-hot ``reference_mask``."""
        features = volume.features
        values = F.one_hot(torch.as_tensor(reference_mask), volume.num_values).permute(2, 0, 1)[None].float()
        device = features.slices.device
        return volume.model.propagate(features[target][None], features[reference][None], values.to(device))[0]


class SlicePropagationInferer(Inferer):
    """MONAI inferer wrapping :class:`SlicePropagator` for a batch of volumes.

    Called by an evaluator as ``inferer(image, network, seed)`` (see ``monai.engines.PrepareBatchExtraInput``);
    the slice spacing along ``axis`` comes from the image's affine. Returns the propagated label maps with the
    image's metadata, so ``SaveImaged`` writes them on the input's grid.

    Args:
        kwargs: the :class:`SlicePropagator` arguments.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.propagator = SlicePropagator(**kwargs)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, seed: torch.Tensor, *args) -> torch.Tensor:
        """inputs, seed: (B, 1, H, W, D) -> (B, 1, H, W, D) float label maps (extra inputs are ignored)."""
        plain_inputs = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        plain_seed = seed.as_tensor() if isinstance(seed, MetaTensor) else seed
        spacings = _slice_spacings(inputs, self.propagator.axis)
        outputs = [
            self.propagator(network, volume[0], volume_seed[0], spacing)
            for volume, volume_seed, spacing in zip(plain_inputs, plain_seed, spacings, strict=True)
        ]
        labels = torch.stack(outputs)[:, None].float().to(inputs.device)
        if isinstance(inputs, MetaTensor):
            return MetaTensor(labels, meta=inputs.meta)
        return labels


def _slice_spacings(inputs: torch.Tensor, axis: int) -> list[float | None]:
    """Per batch item, the spacing along spatial ``axis`` from the affine (None for a plain tensor)."""
    if not isinstance(inputs, MetaTensor):
        return [None] * inputs.shape[0]
    affine = inputs.affine
    affines = affine if affine.ndim == 3 else affine[None].expand(inputs.shape[0], -1, -1)
    return [float(torch.linalg.norm(item[:3, axis].double())) for item in affines]
