"""Serving the bundles in MONAI Label: discovery, working copies, label names, training requests, drawn slices.

Nothing here imports MONAI Label (it lives in its own environment); the app in ``apps/monailabel`` wraps these
functions in MONAI Label tasks, and the project's tests exercise them directly.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.data.atomic import atomic_target
from common.errors import InvalidInputError
from common.settings import as_flag
from common.smile.label_mapping import remap_labels as renumber

__all__ = [
    "Bundle",
    "discover_bundles",
    "drawn_seed_settings",
    "drawn_slices",
    "drawn_structure",
    "inference_options",
    "inference_overrides",
    "label_names",
    "plain_settings",
    "reads_user_label",
    "remap_labels",
    "segment_values",
    "setting_overrides",
    "sync_working_copy",
    "training_options",
    "training_overrides",
]

logger = logging.getLogger(__name__)

# Settings the app controls itself, or that name files; a request cannot set them.
_MANAGED_TRAINING = frozenset(
    {"bundle_root", "device", "epochs", "resume", "output_dir", "dataset_dir", "amp"}
    | {"datalist", "train_datalist_key", "val_datalist_key"}  # MONAI Label supplies the data itself
)
_MANAGED_INFERENCE = frozenset(
    {"bundle_root", "device", "output_dir", "dataset_dir", "input_dir", "datalist_key", "output_postfix"}
    | {"save_probabilities", "image", "label"}
)
_COPIED_ALWAYS = ("configs", "docs", "LICENSE")


@dataclass(frozen=True)
class Bundle:
    """A bundle folder the label server can use.

    Attributes:
        name: the folder name; the model name in MONAI Label.
        path: the folder.
        can_infer: it has ``configs/inference.json``.
        can_train: it has ``configs/train.json``.
    """

    name: str
    path: Path
    can_infer: bool
    can_train: bool


def discover_bundles(bundles_dir: str | os.PathLike, names: list[str] | None = None) -> list[Bundle]:
    """The bundles under ``bundles_dir``: folders with ``configs/metadata.json`` and an inference or train config.

    Args:
        bundles_dir: the folder holding one folder per bundle.
        names: keep only these (all when None or empty); an unknown name is an error.

    Raises:
        FileNotFoundError: ``bundles_dir`` is not a folder.
        ValueError: a requested name is not a bundle there (the message lists the bundles found).
    """
    root = Path(bundles_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of bundles")
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        configs = folder / "configs"
        can_infer, can_train = (configs / "inference.json").is_file(), (configs / "train.json").is_file()
        if (configs / "metadata.json").is_file() and (can_infer or can_train):
            found[folder.name] = Bundle(folder.name, folder, can_infer, can_train)
    unknown = [name for name in names or [] if name not in found]
    if unknown:
        raise ValueError(f"{root}: no bundle named {', '.join(unknown)}; bundles found: {', '.join(found) or 'none'}")
    return [found[name] for name in names] if names else list(found.values())


def _copy_file(source: Path, target: Path) -> None:
    with atomic_target(target) as temporary:
        shutil.copy2(source, temporary)


def _copy_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_file():
            _copy_file(path, target / path.relative_to(source))


def sync_working_copy(bundle: Bundle, model_dir: str | os.PathLike) -> Bundle:
    """The bundle's working copy in ``model_dir``, where the label server infers and trains.

    Configs, docs and LICENSE are refreshed from the source on every call (they are code); ``models/`` is
    copied only while the working copy has no ``model.pt``, so weights trained in MONAI Label are never
    overwritten, and training never touches the source bundle. Every file is written atomically.
    """
    target = Path(model_dir) / bundle.name
    for item in _COPIED_ALWAYS:
        source = bundle.path / item
        if source.is_dir():
            _copy_tree(source, target / item)
        elif source.is_file():
            _copy_file(source, target / item)
    weights = target / "models" / "model.pt"
    if (bundle.path / "models").is_dir() and not weights.exists():
        _copy_tree(bundle.path / "models", target / "models")
    elif weights.exists() and (bundle.path / "models" / "model.pt").is_file():
        logger.info("%s: keeping the working copy's weights %s (trained or copied earlier)", bundle.name, weights)
    return Bundle(bundle.name, target, bundle.can_infer, bundle.can_train)


def label_names(configured: Mapping[str, int] | None, metadata: Mapping) -> dict[str, int]:
    """Name -> value of the label map a bundle writes.

    ``configured`` is the inference config's ``label_names`` (the values the post-processing writes); without
    it, MONAI Label's convention: the first output's ``channel_def`` (channel index -> name), background dropped.
    """
    if configured is not None:
        return {str(name): int(value) for name, value in configured.items()}
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    channel_def = next(iter(outputs.values()), {}).get("channel_def", {})
    return {name.lower(): int(index) for index, name in channel_def.items() if name.lower() != "background"}


def _load_transforms(node: object) -> list[dict]:
    """Every ``LoadImaged`` component in a raw config subtree."""
    if isinstance(node, list):
        return [found for item in node for found in _load_transforms(item)]
    if not isinstance(node, dict):
        return []
    own = [node] if str(node.get("_target_", "")).split(".")[-1] == "LoadImaged" else []
    return own + [found for value in node.values() for found in _load_transforms(value)]


def reads_user_label(bundle: Bundle, label_key: str = "label") -> bool:
    """Whether the bundle's inference preprocessing loads a ``label``: the user's drawing is an input (Sli2Vol)."""
    config = json.loads((bundle.path / "configs" / "inference.json").read_text())
    for load in _load_transforms(config.get("preprocessing", [])):
        keys = load.get("keys", [])
        if label_key in ([keys] if isinstance(keys, str) else keys):
            return True
    return False


FOREGROUND_SCRIBBLES = "foreground_scribbles"


def segment_values(label_info: list[dict] | None) -> dict[str, int]:
    """Segment name -> value in a labelmap saved by 3D Slicer (its ``label_info``: ``id`` or ``idx`` per segment)."""
    return {str(item.get("name")): int(item.get("id", item.get("idx", 0))) for item in label_info or []}


def remap_labels(label: np.ndarray, saved: Mapping[str, int], wanted: Mapping[str, int], source: str) -> np.ndarray:
    """A labelmap saved with one name -> value numbering, renumbered to a bundle's ``label_names``.

    3D Slicer numbers saved segments 1, 2, ... in their order in the segmentation; a bundle needs its own values
    (SMILE: liver 1, pancreas 2, stomach 3; XNet: open beam 0 ... collimator 3). Segments the bundle does not
    know are dropped (0).

    Raises:
        InvalidInputError: none of the saved segments is a label of the bundle (the message lists both).
    """
    known = [name for name in saved if name in wanted]
    if not known:
        raise InvalidInputError(
            f"{source}: none of its segments ({', '.join(saved) or 'none'}) is a label of this model "
            f"({', '.join(wanted)}); name the segments as the model's labels"
        )
    mapping = {saved[name]: wanted[name] for name in known}
    return renumber(torch.as_tensor(np.asarray(label)), mapping).numpy().astype(np.uint8)


def drawn_structure(
    label: torch.Tensor, label_info: list[dict], selected_label_name: str, source: str = "label"
) -> torch.Tensor:
    """The one structure a 3D Slicer scribbles request asks for, as a 0/1 map.

    Slicer's scribbles mode uploads every segment in one labelmap, segment k (from 1) holding value
    ``label_info[k]["id"]``, and replaces only the selected segment with the result. The structure is the
    ``foreground_scribbles`` segment when the user painted there, otherwise the selected segment;
    ``background_scribbles`` and every other segment are ignored.

    Args:
        label: the uploaded labelmap, any shape.
        label_info: Slicer's ``[{"name": ..., "id": ...}, ...]``.
        selected_label_name: the segment the result replaces.
        source: the file name, for the errors.

    Raises:
        InvalidInputError: the selected segment is not in ``label_info``, or neither it nor the foreground
            scribbles hold a voxel.
    """
    values = segment_values(label_info)
    if selected_label_name not in values:
        raise InvalidInputError(
            f"{source}: the selected segment {selected_label_name!r} is not among the uploaded segments "
            f"({', '.join(values) or 'none'})"
        )
    for name in (FOREGROUND_SCRIBBLES, selected_label_name):
        if name in values and bool((label == values[name]).any()):
            return (label == values[name]).to(torch.uint8)
    raise InvalidInputError(
        f"{source}: nothing is drawn in segment {selected_label_name!r} or in the foreground scribbles; draw the "
        "structure on one slice (or on several slices of one view)"
    )


def drawn_slices(label: torch.Tensor, preferred: int, source: str = "label") -> tuple[int, list[int]]:
    """The voxel axis the user drew across, and the drawn slices along it.

    Slicer users draw in the axial, sagittal or coronal view, on one slice or on several slices of the same
    view: the drawing then lies on one slice, or on several slices none of them adjacent, along one voxel
    axis, and on runs of adjacent slices along the others (strokes of a 2D region). An axis fits when the
    drawing lies there on one slice or on non-adjacent slices. When several axes fit (a line, a dot, dots far
    apart), one slice wins over several (the drawing is read as one 2D stroke, as a one-slice client means
    it), then ``preferred`` (the bundle's ``axis``), then the lowest axis.

    Args:
        label: (H, W, D) annotation, 0 = unlabelled.
        preferred: the bundle's slice axis.
        source: the file name, for the error.

    Returns:
        (axis, sorted indices of the drawn slices along it).

    Raises:
        InvalidInputError: nothing is labelled, or along every axis the labelled voxels lie on adjacent slices
            (strokes in two different views, or a 3D label).
    """
    coordinates = torch.nonzero(label)
    if coordinates.numel() == 0:
        raise InvalidInputError(
            f"{source}: the drawn label is empty; draw the structure on one slice (or on several slices of one view)"
        )
    fits = {}
    for axis in range(label.ndim):
        slices = coordinates[:, axis].unique().tolist()
        if all(second - first > 1 for first, second in itertools.pairwise(slices)):
            fits[axis] = slices
    if not fits:
        raise InvalidInputError(
            f"{source}: the drawing fits no view: along every axis the labelled voxels lie on adjacent slices "
            "(strokes in two different views, or a 3D label?); draw the structure on one slice, or on several "
            "slices of the same view with at least one slice between them, or pass "
            'params {"seed_slice": N, "axis": A} to pick one slice'
        )
    axis = min(fits, key=lambda axis: (len(fits[axis]) > 1, axis != preferred, axis))
    return axis, fits[axis]


def drawn_seed_settings(
    label: torch.Tensor,
    request: Mapping,
    preferred: int,
    takes_several: bool,
    source: str = "label",
    model: str = "the model",
) -> dict:
    """The settings of the propagation bundle for one drawing: ``axis``, ``seed_slice`` and ``seeds``.

    The axis and the drawn slices are found with :func:`drawn_slices`, unless the request names the ``axis``.
    One drawn slice (or a request's ``seed_slice``, which picks one) propagates with ``seeds="one"``; several
    with ``seeds="all"`` (the bundle then checks that none of them are adjacent along the axis).

    Args:
        label: (H, W, D) drawing, 0 = unlabelled.
        request: the request's parameters; ``axis`` and ``seed_slice`` set the direction and the slice by hand.
        preferred: the bundle's ``axis``.
        takes_several: the bundle has a ``seeds`` setting (it propagates from several slices).
        source: the file name, for the errors.
        model: the model's name, for the errors.

    Returns:
        ``{"axis": A, "seed_slice": N or None, "seeds": "one" or "all"}``.

    Raises:
        InvalidInputError: see :func:`drawn_slices`; an ``axis`` or ``seed_slice`` that is not a whole number,
            an axis out of range, or several drawn slices for a bundle that takes one.
    """
    chosen = {}
    for name in ("axis", "seed_slice"):
        if request.get(name) is not None:
            try:
                chosen[name] = int(request[name])
            except (TypeError, ValueError) as error:
                raise InvalidInputError(f"{name}: {request[name]!r} is not a whole number") from error
    if "axis" in chosen:
        axis = chosen["axis"]
        if not 0 <= axis < label.ndim:
            raise InvalidInputError(f"axis {axis} is out of range for a {label.ndim}D volume (0..{label.ndim - 1})")
        slices = torch.nonzero(label)[:, axis].unique().tolist()
    else:
        axis, slices = drawn_slices(label, preferred, source)
    if "seed_slice" in chosen or len(slices) <= 1:
        return {"axis": axis, "seed_slice": chosen.get("seed_slice"), "seeds": "one"}
    if not takes_several:
        raise InvalidInputError(
            f"{source}: drawn on {len(slices)} slices along axis {axis} ({', '.join(map(str, slices))}), but "
            f"{model} propagates one drawn slice: draw the structure on one slice only, or pass "
            'params {"seed_slice": N} to pick one'
        )
    return {"axis": axis, "seed_slice": None, "seeds": "all"}


def _is_option(value: object) -> bool:
    """A number, a flag or a word (not an expression, reference or path)."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%")) and "/" not in value
    return isinstance(value, (bool, int, float))


def _is_number_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, (int, float)) for v in value)


def plain_settings(config: Mapping, exclude: frozenset[str] = frozenset()) -> dict:
    """A config's top-level numbers, flags and words: the options a MONAI Label client shows and sends back.

    Lists are left out: 3D Slicer sends only the first item of a list option.
    """
    return {name: value for name, value in config.items() if name not in exclude and _is_option(value)}


def setting_overrides(config: Mapping, request: Mapping, exclude: frozenset[str] = frozenset()) -> dict:
    """The request's values for the config's plain settings (and lists of numbers), typed as the config's.

    Raises:
        InvalidInputError: a value that does not convert to the setting's type.
    """
    overrides = {}
    for name, default in config.items():
        if name in request and name not in exclude and (_is_option(default) or _is_number_list(default)):
            overrides[name] = _typed(name, request[name], default)
    return overrides


def training_options(train_config: Mapping) -> dict:
    """The train options of a bundle: its train config's plain settings, less those the app manages."""
    return plain_settings(train_config, _MANAGED_TRAINING)


def inference_options(inference_config: Mapping, exclude: frozenset[str] = frozenset()) -> dict:
    """The infer options of a bundle: its inference config's plain settings, less those that name files."""
    return plain_settings(inference_config, _MANAGED_INFERENCE | exclude)


def inference_overrides(inference_config: Mapping, request: Mapping, exclude: frozenset[str] = frozenset()) -> dict:
    """The request's values for the inference config's plain settings (see :func:`setting_overrides`)."""
    return setting_overrides(inference_config, request, _MANAGED_INFERENCE | exclude)


def _typed(name: str, value: object, default: object) -> object:
    """``value`` (from a request: JSON, or text from a client form) with the type of the setting's ``default``."""
    try:
        if isinstance(default, bool):
            return as_flag(value, name)
        if isinstance(default, list):
            items = json.loads(value) if isinstance(value, str) else value
            if not isinstance(items, list) or len(items) != len(default):
                raise ValueError(f"needs {len(default)} values")
            return [type(item)(entry) for item, entry in zip(default, items, strict=True)]
        return type(default)(value)
    except (TypeError, ValueError) as error:
        kind = f"list of {len(default)} numbers" if isinstance(default, list) else type(default).__name__
        raise InvalidInputError(f"training option {name}: {value!r} is not a {kind}") from error


def training_overrides(
    monailabel_overrides: Mapping, train_config: Mapping, request: Mapping, run_dir: str | os.PathLike
) -> dict:
    """The config overrides of one MONAI Label training request: MONAI Label's own, adjusted for our bundles.

    - ``epochs`` takes the request's ``max_epochs`` when the bundle's ``epochs`` is a plain number, and MONAI
      Label's direct ``train#trainer#max_epochs`` override is dropped where the trainer reads ``@epochs``, so the
      trainer, the learning-rate schedule and the validation interval agree. A bundle whose ``epochs`` is
      derived (SMILEr: from its relabeling rounds) keeps its own, set through its round options.
    - Each request key that names a plain setting of the train config, or a list of numbers such as
      ``patch_size``, overrides it, converted to the setting's type (see :func:`setting_overrides`).
    - Each request trains afresh in its own ``run_dir`` (logs, resumable checkpoint) with ``resume`` false, so
      a finished run's checkpoint never stops a new one and nothing earlier is overwritten.

    Args:
        monailabel_overrides: what MONAI Label's ``BundleTrainTask`` passes (``train#dataset#data``, ...).
        train_config: the bundle's train config, raw.
        request: the training request's parameters.
        run_dir: the folder of this run.

    Raises:
        InvalidInputError: a value of the wrong type, or no validation image for a bundle that keeps the
            weights that validate best.
    """
    overrides = dict(monailabel_overrides)
    trainer = train_config.get("train", {}).get("trainer", {})
    if trainer.get("max_epochs") == "@epochs":
        overrides.pop("train#trainer#max_epochs", None)
    if isinstance(train_config.get("epochs"), int) and "max_epochs" in request:
        overrides["epochs"] = _typed("max_epochs", request["max_epochs"], 1)
    overrides.update(setting_overrides(train_config, request, _MANAGED_TRAINING))
    overrides.update({"output_dir": str(run_dir), "resume": False})
    if overrides.get("validate#dataset#data") == [] and "validate" in train_config:
        raise InvalidInputError(
            "training needs at least one validation image (this bundle keeps the weights that validate best): "
            "save final labels for at least two images and use a val_split that leaves one for validation"
        )
    return overrides
