"""XNet post-processing of X-ray segmentations (open beam / soft tissue / bone; docs/methods/xnet.md §2.3).

Two steps from the XNet paper's PostProcessing.py: a soft-tissue probability threshold, which trades soft-tissue
false positives for false negatives, and a morphological clean-up of the bone mask (opening, then an optional
dilation that never covers open beam).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple

from common.errors import InvalidInputError

__all__ = [
    "BoneOpening",
    "BoneOpeningd",
    "SoftTissueThreshold",
    "SoftTissueThresholdd",
    "square_dilation",
    "square_opening",
]


def _window_count(mask: torch.Tensor, size: int, outside: bool, reflect: bool = False) -> torch.Tensor:
    """Number of true pixels of a bool mask (..., H, W) in each size×size window, as int32 (..., H, W).

    Pixels beyond the border count as ``outside``. The window of pixel i spans i - (size-1)//2 .. i + size//2 in
    each axis, or its mirror image with ``reflect``. Running sums make the cost independent of ``size``.
    """
    before = size // 2 if reflect else (size - 1) // 2
    after = size - 1 - before
    counts = F.pad(mask.to(torch.int32), (before, after, before, after), value=int(outside))
    for dim in (-1, -2):
        running = counts.cumsum(dim, dtype=torch.int32)
        running = torch.cat([torch.zeros_like(running.narrow(dim, 0, 1)), running], dim=dim)
        length = running.shape[dim] - size
        counts = running.narrow(dim, size, length) - running.narrow(dim, 0, length)
    return counts


def square_opening(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Morphological opening of a bool mask (..., H, W) with a size×size square.

    Keeps the pixels covered by a size×size square that lies entirely inside the mask, so islands smaller than
    the square vanish and the result is a subset of the mask. The region beyond the image border counts as
    inside the mask (as OpenCV's default border does), so a structure cut by the border is not eaten from it.
    Same result as ``scipy.ndimage`` erosion with ``border_value=1`` followed by dilation, for any size.
    """
    eroded = _window_count(mask, size, outside=True, reflect=True) == size * size
    return _window_count(eroded, size, outside=False) > 0


def square_dilation(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Morphological dilation of a bool mask (..., H, W) with a size×size square (for even sizes the square
    reaches one pixel further down and right than up and left, as in ``scipy.ndimage.binary_dilation``)."""
    return _window_count(mask, size, outside=False) > 0


def _check_size(value: int | None, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    return value


class SoftTissueThreshold(Transform):
    """Label map from class probabilities, calling a pixel soft tissue only when the network is sure.

    A pixel is ``tissue_class`` iff P(tissue) > ``threshold`` (strictly); otherwise it is the most probable of
    the other classes (the first on ties). With ``threshold`` None or 0 the rule is off: a plain argmax (0 so that
    the command line, which cannot pass None, can turn it off). XNet used 0.9 and 0.99, and per body part 0.6 to
    0.99.

    Input: probabilities (C, H, W) (any spatial dims), tensor, MetaTensor or numpy array.
    Output: uint8 label map (1, H, W) of the same type, a MetaTensor keeping the input's metadata.

    Args:
        threshold: in (0, 1]; None or 0 to disable.
        tissue_class: the channel of soft tissue.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold: float | None, tissue_class: int = 1) -> None:
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] or None, got {threshold}")
        self.threshold = threshold or None
        self.tissue_class = tissue_class

    def __call__(self, probabilities: NdarrayOrTensor) -> NdarrayOrTensor:
        p = convert_to_tensor(probabilities, track_meta=False)
        if p.ndim < 2 or not 0 <= self.tissue_class < p.shape[0] or p.shape[0] > 256:
            raise InvalidInputError(
                f"expected probabilities of shape (C, *spatial) with 1 < C <= 256 and soft tissue in channel "
                f"{self.tissue_class}, got shape {tuple(p.shape)}"
            )
        if self.threshold is None:
            label = p.max(dim=0, keepdim=True).indices
        else:
            tissue = torch.tensor([self.tissue_class], device=p.device)
            others = p.index_fill(0, tissue, -torch.inf).max(dim=0, keepdim=True).indices
            sure = p[self.tissue_class : self.tissue_class + 1] > self.threshold
            label = torch.where(sure, torch.full_like(others, self.tissue_class), others)
        return convert_to_dst_type(label, probabilities, dtype=torch.uint8)[0]


class BoneOpening(Transform):
    """Remove small bone islands from a label map, then optionally grow the remaining bone.

    1. The bone mask is opened with a ``size``×``size`` square (:func:`square_opening`); bone pixels the opening
       removes become ``replacement_class`` (soft tissue).
    2. With ``dilation`` > 1, the opened bone is dilated with a ``dilation``×``dilation`` square
       (:func:`square_dilation`) and the grown pixels become bone, except pixels of ``open_beam_class``: open beam
       always wins, as in XNet.

    XNet opens with a 10×10 square. ``size`` None or 0 (or 1) skips the opening; ``dilation`` 0 or 1 skips the
    dilation.

    Input: label map (1, H, W), tensor, MetaTensor or numpy array (any integer or float dtype).
    Output: the cleaned label map, same type, dtype and metadata.

    Args:
        size: side of the opening square, in pixels.
        bone_class: the bone label.
        replacement_class: the label given to removed bone.
        dilation: side of the dilation square, in pixels.
        open_beam_class: the label that dilation never overwrites; None lets dilation overwrite any class.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        size: int | None = 10,
        bone_class: int = 2,
        replacement_class: int = 1,
        dilation: int = 0,
        open_beam_class: int | None = 0,
    ) -> None:
        self.size = _check_size(size, "size")
        self.dilation = _check_size(dilation, "dilation")
        self.bone_class = bone_class
        self.replacement_class = replacement_class
        self.open_beam_class = open_beam_class

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        labels = convert_to_tensor(label, track_meta=False)
        if labels.ndim != 3 or labels.shape[0] != 1:
            raise InvalidInputError(f"expected a label map of shape (1, H, W), got shape {tuple(labels.shape)}")
        bone = labels == self.bone_class
        opened = square_opening(bone, self.size) if self.size > 1 else bone
        result = torch.where(bone & ~opened, torch.full_like(labels, self.replacement_class), labels)
        if self.dilation > 1:
            grown = square_dilation(opened, self.dilation)
            if self.open_beam_class is not None:
                grown &= labels != self.open_beam_class
            result = torch.where(grown, torch.full_like(labels, self.bone_class), result)
        return convert_to_dst_type(result, label)[0]


class _Converted(MapTransform):
    """Apply ``self.converter`` to each key, writing to the matching output key (the key itself by default)."""

    def __init__(
        self,
        converter: Transform,
        keys: KeysCollection,
        output_keys: KeysCollection | None,
        allow_missing_keys: bool,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = converter
        self.output_keys = self.keys if output_keys is None else ensure_tuple(output_keys)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"output_keys {self.output_keys} must name one key per key of {self.keys}")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            d[output_key] = self.converter(d[key])
        return d


class SoftTissueThresholdd(_Converted):
    """Dictionary version of :class:`SoftTissueThreshold`.

    Args:
        keys: keys of the probabilities (C, H, W).
        threshold: see :class:`SoftTissueThreshold`.
        tissue_class: see :class:`SoftTissueThreshold`.
        output_keys: where to write the label maps, one per key; None replaces the probabilities.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float | None,
        tissue_class: int = 1,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(SoftTissueThreshold(threshold, tissue_class), keys, output_keys, allow_missing_keys)


class BoneOpeningd(_Converted):
    """Dictionary version of :class:`BoneOpening`.

    Args:
        keys: keys of the label maps (1, H, W).
        size, bone_class, replacement_class, dilation, open_beam_class: see :class:`BoneOpening`.
        output_keys: where to write the cleaned maps, one per key; None replaces the inputs.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        size: int | None = 10,
        bone_class: int = 2,
        replacement_class: int = 1,
        dilation: int = 0,
        open_beam_class: int | None = 0,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        transform = BoneOpening(size, bone_class, replacement_class, dilation, open_beam_class)
        super().__init__(transform, keys, output_keys, allow_missing_keys)
