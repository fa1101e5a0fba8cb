"""MONAI Label train task for the project's bundles."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from monai.transforms import LoadImage
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.tasks.train.bundle import BundleTrainTask

from common.data.writers import write_label_map
from lib.label_server import Bundle, remap_labels, segment_values, training_options, training_overrides

__all__ = ["BundleTrainingTask"]


class BundleTrainingTask(BundleTrainTask):
    """A bundle's ``configs/train.json`` served as a MONAI Label train task.

    MONAI Label's ``BundleTrainTask`` (final labels of the datastore as training data, a validation split,
    the current ``models/model.pt`` as the starting point) with these changes:

    - the weights it starts from load strictly;
    - ``max_epochs`` sets the bundle's ``epochs`` (trainer, learning-rate schedule and validation interval),
      and the bundle's plain settings (learning rate, SMILEr's rounds, ...) are train options;
    - a label saved by 3D Slicer (with its ``label_info``: segment names and values in the saved order) is
      renumbered by segment name to the bundle's ``label_names`` into the run folder; other labels are used
      as saved, so they must hold the bundle's values;
    - every request trains afresh in ``eval/monailabel/<time>`` of the working copy (see
      :func:`lib.label_server.training_overrides`); the best weights go to the working copy's
      ``models/model.pt``, which the infer task reloads.
    """

    def __init__(self, bundle: Bundle, conf: dict):
        super().__init__(str(bundle.path), conf, load_strict=True)
        self.name = bundle.name
        self._request: dict = {}
        self._run_dir = Path()
        inference = ConfigParser()
        inference.read_config(str(bundle.path / "configs" / "inference.json"))
        self._label_names = inference.get_parsed_content("label_names") if "label_names" in inference else {}

    def config(self):
        options = super().config()
        if not isinstance(self.bundle_config.config.get("epochs"), int):
            options.pop("max_epochs", None)
        options.update(training_options(self.bundle_config.config))
        return options

    def __call__(self, request, datastore):
        self._request = dict(request)
        self._run_dir = Path(self.bundle_path, "eval", "monailabel", time.strftime("%Y%m%d-%H%M%S"))
        return super().__call__(request, datastore)

    def _fetch_datalist(self, request, datastore):
        datalist = []
        for image_id in datastore.get_labeled_images():
            label = datastore.get_label_uri(image_id, DefaultLabelTag.FINAL)
            saved = segment_values(datastore.get_label_info(image_id, DefaultLabelTag.FINAL).get("label_info"))
            if saved and self._label_names:
                label = self._renumbered(label, saved, image_id)
            datalist.append({"image": datastore.get_image_uri(image_id), "label": label})
        return datalist

    def _renumbered(self, label_file: str, saved: dict[str, int], image_id: str) -> str:
        """The label renumbered to the bundle's values, as NIfTI with the saved file's affine, in the run folder."""
        label = LoadImage(image_only=True)(label_file)
        remapped = remap_labels(np.asarray(label), saved, self._label_names, label_file)
        return str(write_label_map(remapped, label.affine, self._run_dir / "labels" / f"{image_id}.nii.gz"))

    def _update_overrides(self, overrides):
        adjusted = training_overrides(overrides, self.bundle_config.config, self._request, self._run_dir)
        overrides.clear()
        overrides.update(adjusted)
        return overrides
