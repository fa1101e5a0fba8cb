"""Transforms for partially annotated multi-organ data (SMILE, SMILEr).

A case's datalist entry may carry ``annotated_classes``: the foreground classes (1..K) that were delineated in
that volume. Voxels of a class that was never delineated are labelled background, so background is only a
reliable negative for the annotated classes. The transforms here turn that list into a fixed-size indicator,
simulate missing annotations on fully labelled data, and build the SMILE targets and ambiguity weight maps.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from common.data.cases import annotation_indicator, case_name, case_path
from common.errors import InvalidInputError

__all__ = [
    "AnnotatedClassesd",
    "LabelMapToMultiLabel",
    "LabelMapToMultiLabeld",
    "MergePseudoLabelsd",
    "ProbabilitiesToLabelMap",
    "ProbabilitiesToLabelMapd",
    "SimulateMissingAnnotationsd",
    "SmileTarget",
    "SmileTargetd",
    "foreground_one_hot",
]


def foreground_one_hot(label: torch.Tensor, num_foreground_classes: int) -> torch.Tensor:
    """Bool channels (K, *spatial) of a label map (1, *spatial): channel k-1 is ``label == k``, background dropped."""
    classes = torch.arange(1, num_foreground_classes + 1, device=label.device).view(-1, *([1] * (label.ndim - 1)))
    return label == classes


class AnnotatedClassesd(Transform):
    """Replace the datalist's ``annotated_classes`` list (absent = all) with a (K,) uint8 indicator.

    A fixed-size indicator collates into batches, which a variable-length list does not.
    """

    def __init__(
        self, num_foreground_classes: int, annotated_key: str = "annotated_classes", name_key: str = "image"
    ) -> None:
        self.num_foreground_classes = num_foreground_classes
        self.annotated_key = annotated_key
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        listed = d.get(self.annotated_key)
        if isinstance(listed, (np.ndarray, torch.Tensor)) and len(listed) == self.num_foreground_classes:
            return d
        d[self.annotated_key] = annotation_indicator(
            listed, self.num_foreground_classes, source=case_path(d, self.name_key)
        )
        return d


class SimulateMissingAnnotationsd(Transform):
    """Simulate a partially labelled dataset: drop each annotated organ from each case with probability ``alpha``.

    The decision depends only on ``seed`` and the case's file name, so a case loses the same organs in every
    epoch and every process. Dropped organs are relabelled background and removed from the annotation
    indicator; ``dropped_key`` records them as a (K,) uint8 indicator.

    With ``keep_at_least_one``, a case whose draw would drop every one of its annotated classes keeps one of
    them: after the K draws, the same seeded generator picks it uniformly among the annotated classes, so the
    kept class also depends only on ``seed`` and the case's file name. Cases that keep some class anyway, and
    cases with no annotated class, are unaffected.

    Args:
        num_foreground_classes: K, the number of foreground classes.
        missing_rate: alpha in [0, 1], the probability that an organ's delineation is removed from a case.
        seed: the simulation's seed.
        label_key: key of the integer label map, shape (1, *spatial).
        annotated_key: key of the (K,) indicator made by :class:`AnnotatedClassesd`.
        dropped_key: key written with the (K,) indicator of dropped classes.
        keep_at_least_one: never drop every annotated class of a case (see above); False drops each independently.
    """

    def __init__(
        self,
        num_foreground_classes: int,
        missing_rate: float,
        seed: int = 0,
        label_key: str = "label",
        annotated_key: str = "annotated_classes",
        dropped_key: str = "dropped_classes",
        keep_at_least_one: bool = False,
    ) -> None:
        if not 0.0 <= missing_rate <= 1.0:
            raise ValueError(f"missing_rate must be in [0, 1], got {missing_rate}")
        self.num_foreground_classes = num_foreground_classes
        self.missing_rate = missing_rate
        self.seed = seed
        self.label_key = label_key
        self.annotated_key = annotated_key
        self.dropped_key = dropped_key
        self.keep_at_least_one = keep_at_least_one

    def dropped_classes(self, name: str, annotated: np.ndarray) -> np.ndarray:
        """(K,) uint8 indicator of the annotated classes that case ``name`` loses."""
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        draws = rng.random(self.num_foreground_classes)
        dropped = ((draws < self.missing_rate) & (annotated > 0)).astype(np.uint8)
        annotated_indices = np.flatnonzero(annotated)
        if self.keep_at_least_one and annotated_indices.size and dropped[annotated_indices].all():
            dropped[annotated_indices[rng.integers(annotated_indices.size)]] = 0
        return dropped

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        annotated = np.asarray(d[self.annotated_key], dtype=np.uint8)
        dropped = self.dropped_classes(case_name(d, self.label_key), annotated)
        label = d[self.label_key]
        for class_index in np.flatnonzero(dropped) + 1:
            label = torch.where(label == int(class_index), torch.zeros_like(label), label)
        d[self.label_key] = label
        d[self.annotated_key] = annotated * (1 - dropped)
        d[self.dropped_key] = dropped
        return d


class SmileTarget(Transform):
    """SMILE targets and ambiguity weight map from an integer label map, optionally with pseudo-labels.

    For each class k = 1..K: the target is ``label == k``. The weight is 1 everywhere when k is annotated in
    the case; otherwise it is 1 only on voxels labelled with any foreground class (another organ, hence a
    reliable negative for k; or k itself, positive labels being always trusted) and 0 on background, where an
    undelineated organ k may hide.

    Pseudo-labels (SMILEr) are a second, separate source: a label map of the voxels that a model labelled in
    background regions. For a class k that is not annotated, a pseudo-labelled voxel of k becomes a positive
    and one of another class a negative, both weighted ``pseudo_weight``; real labels always win where the two
    overlap, and annotated classes ignore pseudo-labels.

    Returns a float32 tensor of shape (2K, *spatial): channels 0..K-1 are the targets, K..2K-1 the weights.
    """

    def __init__(self, num_foreground_classes: int, pseudo_weight: float = 1.0) -> None:
        if not 0.0 <= pseudo_weight <= 1.0:
            raise ValueError(f"pseudo_weight must be in [0, 1], got {pseudo_weight}")
        self.num_foreground_classes = num_foreground_classes
        self.pseudo_weight = pseudo_weight

    def __call__(
        self,
        label: torch.Tensor,
        annotated: Sequence[int] | np.ndarray | torch.Tensor,
        pseudo_label: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            label: integer label map, shape (1, *spatial), values in 0..K.
            annotated: (K,) indicator of the annotated classes.
            pseudo_label: optional integer map of pseudo-labels, shape (1, *spatial), values in 0..K.
        """
        targets = foreground_one_hot(label, self.num_foreground_classes).float()
        known = torch.as_tensor(np.asarray(annotated), device=label.device).bool().view(-1, *([1] * (label.ndim - 1)))
        unknown_weights = (label > 0).float().expand_as(targets)
        if pseudo_label is not None:
            pseudo_only = (pseudo_label > 0) & (label == 0)
            pseudo_positive = ~known & pseudo_only & foreground_one_hot(pseudo_label, self.num_foreground_classes)
            targets = torch.where(pseudo_positive, torch.ones_like(targets), targets)
            unknown_weights = torch.where(pseudo_only, torch.full_like(targets, self.pseudo_weight), unknown_weights)
        weights = torch.where(known, torch.ones_like(targets), unknown_weights)
        return torch.cat([targets, weights], dim=0)


class SmileTargetd(MapTransform):
    """Dictionary version of :class:`SmileTarget`: replaces ``keys`` with the (2K, *spatial) target stack.

    ``pseudo_key``, when the data holds it, is read as the pseudo-label map and then removed.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_foreground_classes: int,
        annotated_key: str = "annotated_classes",
        pseudo_key: str = "pseudo_label",
        pseudo_weight: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = SmileTarget(num_foreground_classes, pseudo_weight)
        self.annotated_key = annotated_key
        self.pseudo_key = pseudo_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        pseudo_label = d.pop(self.pseudo_key, None)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key], d[self.annotated_key], pseudo_label)
        return d


class MergePseudoLabelsd(Transform):
    """Writes ``output_key``: the real label map where it is labelled, the pseudo-labels elsewhere.

    Meant for choosing crop centres (``ClassesToIndicesd`` on ``output_key``), so that patches also centre on
    pseudo-labelled organs; the loss still gets the two sources apart through :class:`SmileTargetd`. Without
    pseudo-labels (``pseudo_key`` absent) the output is a copy of the label.

    Args:
        label_key: integer label map, shape (1, *spatial).
        pseudo_key: integer pseudo-label map of the same shape, when present.
        output_key: the key written.
    """

    def __init__(
        self, label_key: str = "label", pseudo_key: str = "pseudo_label", output_key: str = "sampling_label"
    ) -> None:
        self.label_key = label_key
        self.pseudo_key = pseudo_key
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key])
        pseudo_label = d.get(self.pseudo_key)
        if pseudo_label is None:
            d[self.output_key] = label.clone()
            return d
        if tuple(pseudo_label.shape) != tuple(label.shape):
            raise InvalidInputError(
                f"{case_path(d, self.pseudo_key)}: pseudo-label shape {tuple(pseudo_label.shape)} differs from the "
                f"label shape {tuple(label.shape)} of {case_path(d, self.label_key)}"
            )
        pseudo_label = torch.as_tensor(pseudo_label, device=label.device).to(label.dtype)
        d[self.output_key] = torch.where(label > 0, label, pseudo_label)
        return d


class ProbabilitiesToLabelMap(Transform):
    """Per-class probabilities (K, *spatial) to a label map (1, *spatial).

    A voxel is background (0) when no class reaches ``threshold``, else the class (1..K) of highest probability.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def __call__(self, probabilities: torch.Tensor) -> torch.Tensor:
        best, index = probabilities.max(dim=0, keepdim=True)
        return torch.where(best >= self.threshold, index + 1, torch.zeros_like(index)).to(torch.uint8)


class ProbabilitiesToLabelMapd(MapTransform):
    """Dictionary version of :class:`ProbabilitiesToLabelMap`."""

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ProbabilitiesToLabelMap(threshold)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class LabelMapToMultiLabel(Transform):
    """Label map (1, *spatial) with values 0..K to K binary channels (K, *spatial), background dropped."""

    def __init__(self, num_foreground_classes: int) -> None:
        self.num_foreground_classes = num_foreground_classes

    def __call__(self, label: torch.Tensor) -> torch.Tensor:
        return foreground_one_hot(label, self.num_foreground_classes).float()


class LabelMapToMultiLabeld(MapTransform):
    """Dictionary version of :class:`LabelMapToMultiLabel`."""

    def __init__(self, keys: KeysCollection, num_foreground_classes: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelMapToMultiLabel(num_foreground_classes)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
