"""MONAI Label train task for the project's bundles."""

from __future__ import annotations

import os
import time

from monailabel.tasks.train.bundle import BundleTrainTask

from common.label_server import Bundle, training_options, training_overrides

__all__ = ["BundleTrainingTask"]


class BundleTrainingTask(BundleTrainTask):
    """A bundle's ``configs/train.json`` served as a MONAI Label train task.

    MONAI Label's ``BundleTrainTask`` (final labels of the datastore as training data, a validation split,
    the current ``models/model.pt`` as the starting point) with three changes:

    - the weights it starts from load strictly;
    - ``max_epochs`` sets the bundle's ``epochs`` (trainer, learning-rate schedule and validation interval),
      and the bundle's plain settings (learning rate, SMILEr's rounds, ...) are train options;
    - every request trains afresh in ``eval/monailabel/<time>`` of the working copy (see
      :func:`common.label_server.training_overrides`); the best weights go to the working copy's
      ``models/model.pt``, which the infer task reloads.
    """

    def __init__(self, bundle: Bundle, conf: dict):
        super().__init__(str(bundle.path), conf, load_strict=True)
        self.name = bundle.name
        self._request: dict = {}

    def config(self):
        options = super().config()
        if not isinstance(self.bundle_config.config.get("epochs"), int):
            options.pop("max_epochs", None)
        options.update(training_options(self.bundle_config.config))
        return options

    def __call__(self, request, datastore):
        self._request = dict(request)
        return super().__call__(request, datastore)

    def _update_overrides(self, overrides):
        run_dir = os.path.join(self.bundle_path, "eval", "monailabel", time.strftime("%Y%m%d-%H%M%S"))
        adjusted = training_overrides(overrides, self.bundle_config.config, self._request, run_dir)
        overrides.clear()
        overrides.update(adjusted)
        return overrides
