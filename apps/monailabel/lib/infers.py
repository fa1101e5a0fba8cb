"""MONAI Label infer tasks for the project's bundles."""

from __future__ import annotations

import copy
import json
import tempfile
import threading
from pathlib import Path

import torch
from fastapi import HTTPException
from monai.transforms import LoadImage, SaveImaged
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.transform.pre import LoadImageTensord

from common.data.file_types import DICOM_SUFFIXES
from common.data.writers import write_label_map
from common.handlers.checkpoint import load_weights
from lib.label_server import (
    Bundle,
    drawn_seed_settings,
    drawn_structure,
    inference_options,
    inference_overrides,
    label_names,
)

from .client_errors import ReadInputsd, as_http_errors

__all__ = ["BundleSegmentationTask", "DrawnSliceTask"]


def _with_image_path(data: dict, path: str | None) -> dict:
    if path is not None:
        data["image_path"] = path
    return data


class BundleSegmentationTask(BundleInferTask):
    """A bundle's ``configs/inference.json`` served as a MONAI Label segmentation task.

    It reuses MONAI Label's ``BundleInferTask`` (the bundle's preprocessing, inferer and postprocessing, with
    ``SaveImaged`` dropped and the prediction restored to the input's geometry) and changes what a user of
    these bundles needs changed:

    - a bundle without weights is still listed; its requests get 409 until it is trained;
    - weights load strictly, a mismatch is an error naming the file (MONAI Label loads non-strictly);
    - label names come from the config's ``label_names`` (the values the label map holds);
    - a file that cannot be read, or any input error of the bundle, is a 422 naming the file;
    - label maps are written as uint8, and as NIfTI when the input is DICOM, unless the request asks otherwise;
    - the inference config's plain settings (numbers, flags, words: Sli2Vol's ``modality``, XNet's
      ``bone_opening_size``) are infer options, listed in ``/info`` and set per request;
    - a bundle whose evaluator passes extra inputs to its inferer (``prepare_batch`` with ``extra_keys``)
      gets them here too.

    Args:
        bundle: the bundle (its working copy).
        conf: the app's conf.
        type: the MONAI Label task type.
        dimension: 2 or 3; by default the length of the first input's ``spatial_shape`` in the metadata.
    """

    # settings the task sets itself, never shown as options (use_click: MONAI Label's deepedit switch)
    per_request_settings: frozenset[str] = frozenset({"use_click"})

    def __init__(self, bundle: Bundle, conf: dict, type: str = InferType.SEGMENTATION, dimension: int | None = None):
        self.const = BundleConstants()
        self.pre_filter, self.post_filter = None, [SaveImaged]
        self.extend_load_image, self.dropout, self.add_post_restore = True, 0.0, True
        self.name = bundle.name
        self.bundle_path = str(bundle.path)
        self.bundle_config_path = str(bundle.path / "configs" / "inference.json")
        self.bundle_config = self._load_bundle_config(self.bundle_path, self.bundle_config_path)
        self.bundle_config.config["use_click"] = False
        metadata = json.loads((bundle.path / "configs" / "metadata.json").read_text())
        self.key_image, image = next(iter(metadata["network_data_format"]["inputs"].items()))
        self.key_pred, _ = next(iter(metadata["network_data_format"]["outputs"].items()))
        configured = (
            self.bundle_config.get_parsed_content("label_names") if "label_names" in self.bundle_config else None
        )
        BasicInferTask.__init__(
            self,
            path=str(bundle.path / "models" / "model.pt"),
            network=None,
            type=type,
            labels=label_names(configured, metadata),
            dimension=dimension or len(image.get("spatial_shape") or (0, 0, 0)),
            description=metadata.get("description", ""),
            load_strict=True,
        )
        self.valid, self.version = True, metadata.get("version")
        self._lock = threading.Lock()
        self._bundle_settings = copy.deepcopy(self.bundle_config.config)
        self._default_settings = inference_overrides(
            self._bundle_settings, self._bundle_settings, self.per_request_settings
        )
        self._config.update(inference_options(self._bundle_settings, self.per_request_settings))

    def __call__(self, request, callbacks=None):
        with self._lock, as_http_errors(), tempfile.TemporaryDirectory() as scratch:
            request = dict(request)
            self._prepare(request, Path(scratch))
            return super().__call__(request, callbacks)

    def _prepare(self, request: dict, scratch: Path) -> None:
        """Check the request and set per-request inputs and config values; ``scratch`` holds temporary files.

        Every plain setting of the inference config (a number, flag or word such as Sli2Vol's ``modality`` or
        XNet's ``bone_opening_size``) takes the request's value, or the bundle's own when the request has none.
        """
        chosen = inference_overrides(self._bundle_settings, request, self.per_request_settings)
        for name, value in {**self._default_settings, **chosen}.items():
            self.bundle_config[name] = value

    def pre_transforms(self, data=None):
        return [ReadInputsd(t, t.keys) if isinstance(t, LoadImageTensord) else t for t in super().pre_transforms(data)]

    # MONAI Label puts the input's path, a string, under ``image_path``; MONAI's ``Spacingd`` updates every
    # ``image_*`` key of a NIfTI input as a metadata dict and fails on it, so transforms run without it.
    def run_pre_transforms(self, data, transforms):
        path = data.pop("image_path", None)
        return _with_image_path(super().run_pre_transforms(data, transforms), path)

    def run_post_transforms(self, data, transforms):
        path = data.pop("image_path", None)
        return _with_image_path(super().run_post_transforms(data, transforms), path)

    def _get_network(self, device, data):
        weights = Path(self.path[0])
        if not weights.is_file():
            raise HTTPException(
                status_code=409,
                detail=f"model {self.name} has no weights yet ({weights}): train it first (POST /train/{self.name}) "
                "or copy trained weights there",
            )
        modified = weights.stat().st_mtime
        cached = self._networks.get(device)
        if cached and cached[1] == modified:
            return cached[0]
        network = copy.deepcopy(self.bundle_config.get_parsed_content("network_def"))
        network = load_weights(network, weights).to(torch.device(device)).eval()
        self._networks[device] = (network, modified)
        return network

    def _extra_input_keys(self) -> list[str]:
        prepare_batch = self.bundle_config.get("prepare_batch") or {}
        keys = prepare_batch.get("extra_keys", []) if isinstance(prepare_batch, dict) else []
        return [keys] if isinstance(keys, str) else list(keys)

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        extra_keys = self._extra_input_keys()
        if not extra_keys:
            return super().run_inferer(data, convert_to_batch, device)
        network = self._get_network(device, data)
        inputs = torch.as_tensor(data[self.input_key])[None].to(torch.device(device))
        extras = [torch.as_tensor(data[key])[None].to(torch.device(device)) for key in extra_keys]
        with torch.no_grad():
            outputs = self.inferer(data)(inputs, network, *extras)
        data[self.output_label_key] = outputs[0]
        return data

    def writer(self, data, extension=None, dtype=None):
        if extension is None and not data.get("result_extension"):
            image = str(data.get("image_path") or data.get("image") or "")
            extension = ".nii.gz" if image.lower().endswith(DICOM_SUFFIXES) else None
        if dtype is None and not data.get("result_dtype"):
            dtype = "uint8"
        return super().writer(data, extension, dtype)


class DrawnSliceTask(BundleSegmentationTask):
    """A bundle that turns the user's drawing into a 3D mask (Sli2Vol: annotated slices -> the whole organ).

    Served as a ``scribbles`` task: the client uploads the labelmap it drew as the ``label`` form field (3D
    Slicer's scribbles mode does). The task finds the direction the drawing was made in (axial, sagittal or
    coronal: the voxel axis across which the drawing lies on one slice, or on several slices none of them
    adjacent; the bundle's ``axis`` when several fit) and the drawn slices, and runs the bundle's propagation
    with its verification: from the one slice, or from every drawn slice (the bundle's ``seeds="all"``; a bundle
    without a ``seeds`` setting takes one slice and refuses several). It returns the mask with the drawn label
    values in the image's geometry. Request params ``axis`` and ``seed_slice`` choose them by hand; ``seeds`` is
    set from the drawing. See :func:`lib.label_server.drawn_seed_settings`.

    From 3D Slicer (params ``label_info`` and ``selected_label_name``), the upload holds every segment: the
    structure is the foreground scribbles, or else the selected segment, and the result (value 1) replaces the
    selected segment; see :func:`lib.label_server.drawn_structure`.
    """

    per_request_settings = BundleSegmentationTask.per_request_settings | {"axis", "seed_slice", "seeds"}

    def __init__(self, bundle: Bundle, conf: dict):
        super().__init__(bundle, conf, type=InferType.SCRIBBLES, dimension=3)
        self._default_axis = int(self.bundle_config.get("axis", 2))
        self._takes_several = "seeds" in self._bundle_settings

    def _prepare(self, request: dict, scratch: Path) -> None:
        super()._prepare(request, scratch)
        if not request.get("label"):
            raise HTTPException(
                status_code=422,
                detail=f"model {self.name} needs the drawn slice: upload the labelmap holding the annotated slice "
                "(or slices) as the 'label' form field (3D Slicer: scribbles mode)",
            )
        source = f"label {request['label']}"
        read_label = ReadInputsd(lambda data: LoadImage(image_only=True)(data["label"]), "label")
        label = read_label({"label": request["label"]})
        if request.get("label_info") and request.get("selected_label_name"):
            structure = drawn_structure(
                label.as_tensor(), request["label_info"], request["selected_label_name"], source
            )
            request["label"] = str(write_label_map(structure.numpy(), label.affine, scratch / "drawn_structure.nii.gz"))
            label = structure
        settings = drawn_seed_settings(
            torch.as_tensor(label), request, self._default_axis, self._takes_several, source, f"model {self.name}"
        )
        if not self._takes_several:
            settings.pop("seeds")
        for name, value in settings.items():
            self.bundle_config[name] = value
