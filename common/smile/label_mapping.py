"""Per-case relabelling of source label values to target classes, for datalists merged from several datasets.

A merged datalist (see :mod:`common.smile.partial_datalist`) leaves every label file as it is and gives each
case a ``label_mapping``, e.g. ``{"1": 2, "2": 2}`` for a pancreas dataset whose pancreas (1) and tumour (2)
both become target class 2. :class:`RemapLabelsd` applies that mapping once the label is loaded.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.transforms import Transform

from common.data.cases import case_path
from common.errors import InvalidInputError

__all__ = ["RemapLabelsd", "parse_label_mapping", "remap_labels"]


def _label_value(value: object) -> int | None:
    """``value`` as a non-negative integer (JSON keys arrive as decimal strings), or None when it is not one."""
    if isinstance(value, str):
        return int(value) if value.strip().isdecimal() else None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return None


def parse_label_mapping(mapping: object, source: str = "") -> dict[int, int]:
    """Check a label mapping and convert its keys and values to ``int``.

    Args:
        mapping: source label value -> target class: integers, or decimal strings as JSON keys are.
        source: the label file, named in the error message.

    Raises:
        InvalidInputError: when the mapping is not a dict or has a key or value that is not a non-negative integer.
    """
    if not isinstance(mapping, Mapping):
        raise InvalidInputError(f"{source}: label_mapping must be a dict of label value -> class, got {mapping!r}")
    parsed = {}
    for key, value in mapping.items():
        source_value, target_value = _label_value(key), _label_value(value)
        if source_value is None or target_value is None:
            raise InvalidInputError(
                f"{source}: label_mapping must map non-negative integer label values to non-negative integer "
                f"classes, got {key!r}: {value!r}"
            )
        parsed[source_value] = target_value
    return parsed


def remap_labels(label: torch.Tensor, mapping: Mapping[int, int]) -> torch.Tensor:
    """Relabel ``label`` (any shape, e.g. (1, *spatial)): value ``s`` becomes ``mapping[s]``, unlisted values 0.

    Returns a tensor of the same shape, dtype and type (a MetaTensor keeps its metadata).
    """
    remapped = torch.zeros_like(label)
    for source_value, target_value in mapping.items():
        remapped = remapped.masked_fill(label == source_value, target_value)
    return remapped


class RemapLabelsd(Transform):
    """Apply a case's ``label_mapping`` to its loaded label, then drop the mapping so that batches collate.

    Each source value listed in the mapping becomes its target class; every other value, including a source
    class left out of the mapping on purpose (e.g. a dataset's tumour class that the target classes do not
    include), becomes background (0). Cases without the mapping key are returned unchanged. Place it right
    after ``LoadImaged`` and before any check or transform that expects target class values.

    Args:
        label_key: key of the integer label map, shape (1, *spatial).
        mapping_key: key of the mapping, source label value -> target class; keys may be strings as in JSON.

    Raises:
        InvalidInputError: naming the label file, when the mapping has a non-integer or negative key or value.
    """

    def __init__(self, label_key: str = "label", mapping_key: str = "label_mapping") -> None:
        self.label_key = label_key
        self.mapping_key = mapping_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.mapping_key not in d:
            return d
        mapping = parse_label_mapping(d.pop(self.mapping_key), source=case_path(d, self.label_key))
        d[self.label_key] = remap_labels(d[self.label_key], mapping)
        return d
