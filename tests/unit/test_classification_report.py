import json
import math

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import Activationsd, Compose
from PIL import Image

from common.errors import InvalidInputError
from common.xnet.metrics import PixelClassificationMetric
from common.xnet.postprocessing import SoftTissueThreshold, SoftTissueThresholdd
from common.xnet.report import ClassificationReport

CLASSES = ["open_beam", "soft_tissue", "bone"]


def _images(count=3, size=8, seed=0):
    """Image = the network's logits (the fake network is the identity), with a random label map."""
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "image": 2 * torch.randn(3, size, size, generator=generator),
            "label": torch.randint(0, 3, (1, size, size), generator=generator),
        }
        for _ in range(count)
    ]


def _expected(images, threshold):
    """The metrics computed directly: raw argmax and soft-tissue threshold."""
    raw, thresholded = PixelClassificationMetric(3), PixelClassificationMetric(3)
    for image in images:
        probabilities = torch.softmax(image["image"], dim=0)
        raw.update(probabilities[None], image["label"][None])
        prediction = SoftTissueThreshold(threshold)(probabilities)
        thresholded.update(probabilities[None], image["label"][None], prediction[None])
    return raw.aggregate(), thresholded.aggregate()


def _assert_png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 0
        image.verify()


def test_report_of_a_supervised_evaluator(tmp_path):
    images = _images()
    report = ClassificationReport(
        tmp_path, CLASSES, prediction_keys={"raw": None, "thresholded": "pred_label"}, num_bins=15
    )
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(images, batch_size=2),
        network=torch.nn.Identity(),
        postprocessing=Compose(
            [Activationsd("pred", softmax=True), SoftTissueThresholdd("pred", 0.6, output_keys="pred_label")]
        ),
        val_handlers=[report],
    )
    evaluator.run()

    raw, thresholded = _expected(images, 0.6)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["num_images"] == 3 and written["num_pixels"] == 3 * 64
    assert written["probabilities"]["ece"] == pytest.approx(raw["ece"])
    assert list(written["probabilities"]["auc_per_class"].values()) == pytest.approx(raw["auc_per_class"])
    assert len(written["probabilities"]["reliability"]) == 15
    for name, expected in (("raw", raw), ("thresholded", thresholded)):
        variant = written["predictions"][name]
        assert variant["accuracy"] == pytest.approx(expected["accuracy"])
        assert variant["f1_macro"] == pytest.approx(expected["f1_macro"])
        assert list(variant["f1_per_class"]) == CLASSES
        assert list(variant["f1_per_class"].values()) == pytest.approx(expected["f1_per_class"])
        assert variant["confusion_matrix"] == expected["confusion_matrix"]
    assert written["predictions"]["thresholded"]["key"] == "pred_label"
    assert (
        written["predictions"]["raw"]["confusion_matrix"] != written["predictions"]["thresholded"]["confusion_matrix"]
    )

    metrics = evaluator.state.metrics
    assert metrics["raw_accuracy"] == pytest.approx(raw["accuracy"])
    assert metrics["thresholded_f1_bone"] == pytest.approx(thresholded["f1_per_class"][2])
    assert metrics["ece"] == pytest.approx(raw["ece"])
    _assert_png(tmp_path / "reliability_diagram.png")
    _assert_png(tmp_path / "confusion_matrix.png")


def test_report_of_batched_outputs_restarts_each_epoch_and_writes_nan_as_null(tmp_path):
    images = _images(count=2, seed=1)
    for image in images:
        image["label"] = image["label"].clamp(max=1)  # no bone in the truth
        image["pred"] = torch.softmax(image.pop("image"), dim=0)
    batch = {key: torch.stack([image[key] for image in images]) for key in ("pred", "label")}
    engine = Engine(lambda engine, batch: batch)
    report = ClassificationReport(tmp_path, CLASSES, filename_prefix="val_", plot_confusion=False)
    report.attach(engine)
    engine.run([batch], max_epochs=2)  # the second epoch must not add to the first

    expected = PixelClassificationMetric(3)
    expected.update(batch["pred"], batch["label"])
    raw = expected.aggregate()
    written = json.loads((tmp_path / "val_metrics.json").read_text())
    assert written["num_images"] == 2
    assert written["predictions"]["raw"]["accuracy"] == pytest.approx(raw["accuracy"])
    assert written["predictions"]["raw"]["f1_per_class"]["bone"] is None
    assert written["probabilities"]["auc_per_class"]["bone"] is None
    assert math.isnan(engine.state.metrics["raw_f1_bone"])
    _assert_png(tmp_path / "val_reliability_diagram.png")
    assert not (tmp_path / "val_confusion_matrix.png").exists()


def test_missing_key_names_the_keys_there_are(tmp_path):
    report = ClassificationReport(tmp_path, CLASSES, prediction_keys={"clean": "pred_label"})
    output = [{"pred": torch.full((3, 2, 2), 1 / 3), "label": torch.zeros(1, 2, 2)}]
    with pytest.raises(InvalidInputError, match=r"\['pred_label'\].*\['label', 'pred'\]"):
        report.update(output)
