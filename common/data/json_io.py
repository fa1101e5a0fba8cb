"""JSON files written the project's way: 4-space indent, key order kept, final newline, atomic replace."""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.data.atomic import atomic_target

__all__ = ["msd_datalist", "write_json"]


def write_json(data: object, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON atomically (temporary file in the same folder, then rename); returns the path."""
    with atomic_target(path) as temporary:
        temporary.write_text(json.dumps(data, indent=4) + "\n")
    return Path(path)


def msd_datalist(
    name: str,
    description: str,
    modality: str,
    labels: dict[int, str],
    tensor_image_size: str,
    entries: list[dict],
    num_validation: int,
    num_test: int,
    **extra: object,
) -> dict:
    """The content of an MSD-style ``dataset.json``: the first entries train, the last `num_test` test,
    validation between; ``extra`` keys (e.g. the generator's settings) go before the splits."""
    num_training = len(entries) - num_validation - num_test
    return {
        "name": name,
        "description": description,
        "modality": {"0": modality},
        "labels": {str(index): label for index, label in labels.items()},
        "numTraining": num_training,
        "numValidation": num_validation,
        "numTest": num_test,
        "tensorImageSize": tensor_image_size,
        **extra,
        "training": entries[:num_training],
        "validation": entries[num_training : num_training + num_validation],
        "test": entries[num_training + num_validation :],
    }
