"""MONAI Label app that serves the project's bundles, with Sli2Vol as "draw one slice (or a few), get the organ".

Start it with ``make label-server STUDIES=<folder of images>`` (see README.md here). Options (``--conf name value``):

- ``bundles_dir``: where the bundles are found (default: the repository's ``bundles/``); every folder with
  ``configs/metadata.json`` and an inference or train config is served, under its folder name;
- ``models``: a comma-separated subset of them;
- ``model_dir``: where the working copies live (default: ``model/`` beside this file); MONAI Label infers
  and trains there, never in the source bundles;
- ``skip_trainers``: true to serve inference only.

A bundle whose inference reads a user label (``LoadImaged`` of ``label``) becomes a scribbles task that takes
the drawn labelmap; every other one a segmentation task.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path

from fastapi import HTTPException
from lib.infers import BundleSegmentationTask, DrawnSliceTask
from lib.label_server import discover_bundles, reads_user_label, sync_working_copy
from lib.trainers import BundleTrainingTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[2]


class AnnotationEfficientApp(MONAILabelApp):
    """Every bundle under ``bundles_dir``: an infer task where it has inference.json, a trainer where train.json."""

    def __init__(self, app_dir, studies, conf):
        bundles_dir = conf.get("bundles_dir", str(REPOSITORY / "bundles"))
        model_dir = conf.get("model_dir", os.path.join(app_dir, "model"))
        names = [name.strip() for name in conf.get("models", "").split(",") if name.strip()]
        self.bundles = [sync_working_copy(bundle, model_dir) for bundle in discover_bundles(bundles_dir, names)]
        logger.info(
            "serving bundles %s from %s (working copies in %s)", [b.name for b in self.bundles], bundles_dir, model_dir
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Annotation-efficient MONAI bundles",
            description="SMILE, SMILEr, XNet and Sli2Vol (draw one or a few slices, get the organ)",
            version=importlib.metadata.version("annotation-efficient-bundles"),
        )

    def init_infers(self):
        infers = {}
        for bundle in self.bundles:
            if bundle.can_infer:
                task = DrawnSliceTask if reads_user_label(bundle) else BundleSegmentationTask
                infers[bundle.name] = task(bundle, self.conf)
                logger.info("+++ infer task %s (%s)", bundle.name, infers[bundle.name].type)
        return infers

    def init_trainers(self):
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {bundle.name: BundleTrainingTask(bundle, self.conf) for bundle in self.bundles if bundle.can_train}

    def init_strategies(self):
        return {"random": Random(), "first": First()}

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(
                status_code=404, detail=f"unknown model {model!r}; this server has {', '.join(self._infers) or 'none'}"
            )
        return super().infer(request, datastore)
