"""A datalist case: the file that names it in messages, and which foreground classes it annotates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.data import MetaTensor

from common.errors import InvalidInputError

__all__ = ["annotation_indicator", "case_name", "case_path"]


def case_path(data: Mapping, key: str = "image") -> str:
    """The file behind ``data[key]`` (from its metadata once loaded), to name a case in error messages."""
    value = data.get(key)
    if isinstance(value, MetaTensor):
        value = value.meta.get("filename_or_obj", "")
    return str(value) if value not in (None, "") else "<unknown file>"


def case_name(data: Mapping, key: str = "image") -> str:
    """The file name of ``data[key]`` without its folder: a case's identity, stable when a dataset moves."""
    return Path(case_path(data, key)).name


def annotation_indicator(
    annotated_classes: Sequence[int] | None, num_foreground_classes: int, source: str = ""
) -> np.ndarray:
    """Indicator of the annotated foreground classes.

    Args:
        annotated_classes: class indices in 1..K, or None for "every class is annotated".
        num_foreground_classes: K, the number of foreground classes.
        source: the case, named in the error message.

    Returns:
        uint8 array of shape (K,): element k-1 is 1 when class k is annotated.
    """
    if annotated_classes is None:
        return np.ones(num_foreground_classes, dtype=np.uint8)
    indicator = np.zeros(num_foreground_classes, dtype=np.uint8)
    for value in annotated_classes:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 1 <= value <= num_foreground_classes
        ):
            raise InvalidInputError(
                f"{source}: annotated_classes names class {value!r}, but the classes are 1..{num_foreground_classes}"
            )
        indicator[value - 1] = 1
    return indicator
