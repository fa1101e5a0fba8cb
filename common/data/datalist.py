"""MSD-style datalists: loading with up-front checks, inference inputs, and partial-label merging.

A datalist is JSON: ``{"training": [{"image": ..., "label": ..., "annotated_classes": [1, 3]}], ...}`` with paths
relative to the dataset folder. ``annotated_classes`` lists the foreground classes delineated in a case; when
it is absent every class is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.data.cases import annotation_indicator
from common.data.file_types import VOLUME_SUFFIXES
from common.errors import InvalidInputError

__all__ = ["inference_datalist", "load_datalist", "propagation_datalist"]


def _read_datalist(path: Path) -> dict:
    if not path.is_file():
        raise InvalidInputError(f"{path}: datalist file does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path}: not valid JSON ({error})") from error


def load_datalist(
    datalist: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    key: str = "training",
    num_foreground_classes: int | None = None,
    require_label: bool = True,
    missing_ok: bool = False,
) -> list[dict]:
    """Read the ``key`` section of a datalist, make its paths absolute and check every entry up front.

    Args:
        datalist: the JSON file.
        dataset_dir: folder the entries' relative paths start from; defaults to the datalist's folder.
        key: the section, e.g. "training", "validation", "test".
        num_foreground_classes: K; when given, ``annotated_classes`` must name classes in 1..K.
        require_label: every entry must have a "label".
        missing_ok: return [] when the datalist has no ``key`` section (its entries are still checked when it has).

    Returns:
        the entries, with absolute "image"/"label" paths.

    Raises:
        InvalidInputError: naming the datalist, the entry and the problem, for every bad entry at once.
    """
    path = Path(datalist)
    base = Path(dataset_dir) if dataset_dir is not None else path.parent
    content = _read_datalist(path)
    if missing_ok and key not in content:
        return []
    if key not in content or not isinstance(content[key], list):
        raise InvalidInputError(f"{path}: no list under key '{key}' (keys: {sorted(content)})")
    entries, problems = [], []
    for index, entry in enumerate(content[key]):
        entry = dict(entry) if isinstance(entry, dict) else {"image": entry}
        problems += _check_entry(entry, index, base, num_foreground_classes, require_label)
        for field in ("image", "label"):
            if field in entry:
                entry[field] = str(base / entry[field])
        entries.append(entry)
    if problems:
        raise InvalidInputError(f"{path} ('{key}'): " + "; ".join(problems))
    if not entries:
        raise InvalidInputError(f"{path}: the '{key}' list is empty")
    return entries


def _check_entry(
    entry: dict, index: int, base: Path, num_foreground_classes: int | None, require_label: bool
) -> list[str]:
    problems = []
    fields = ("image", "label") if require_label else ("image",)
    for field in fields:
        if field not in entry:
            problems.append(f"entry {index} has no '{field}'")
        elif not (base / entry[field]).is_file():
            problems.append(f"entry {index}: {field} file {base / entry[field]} does not exist")
    if num_foreground_classes is not None and "annotated_classes" in entry:
        try:
            annotation_indicator(entry["annotated_classes"], num_foreground_classes, source=f"entry {index}")
        except InvalidInputError as error:
            problems.append(str(error))
    return problems


def inference_datalist(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    key: str = "test",
    input_dir: str | os.PathLike | None = None,
    suffixes: tuple[str, ...] = VOLUME_SUFFIXES,
) -> list[dict]:
    """The images to segment: every image file in ``input_dir`` when given, else the datalist's ``key`` section.

    Files in ``input_dir`` are images when their lower-cased name ends with one of ``suffixes``.

    Returns:
        ``[{"image": absolute path}, ...]``.
    """
    if input_dir is None:
        entries = load_datalist(datalist, dataset_dir, key=key, require_label=False)
        return [{"image": entry["image"]} for entry in entries]
    folder = Path(input_dir)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: input_dir is not a folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
    if not images:
        raise InvalidInputError(f"{folder}: no image files ({', '.join(suffixes)}) in input_dir")
    return [{"image": str(p)} for p in images]


def propagation_datalist(
    image: str | os.PathLike | None,
    label: str | os.PathLike | None,
    datalist: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    key: str = "test",
) -> list[dict]:
    """The (volume, one-slice annotation) pairs to propagate: ``image`` and ``label`` when given, else a datalist.

    Returns:
        ``[{"image": absolute path, "label": absolute path}, ...]``.

    Raises:
        InvalidInputError: only one of image/label given, or a file that does not exist.
    """
    if image is None and label is None:
        return load_datalist(datalist, dataset_dir, key=key, require_label=True)
    if image is None or label is None:
        given, missing = ("image", "label") if label is None else ("label", "image")
        raise InvalidInputError(f"{given} was given without {missing}: propagation needs a volume and its annotation")
    entry = {"image": str(Path(image).absolute()), "label": str(Path(label).absolute())}
    for field, path in entry.items():
        if not Path(path).is_file():
            raise InvalidInputError(f"{path}: {field} file does not exist")
    return [entry]
