"""An evaluation report of per-pixel classification: accuracy, F1, AUC, confusion matrices and calibration."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.data.atomic import atomic_target
from common.data.json_io import write_json
from common.errors import InvalidInputError
from common.xnet.metrics import PixelClassificationMetric

__all__ = ["ClassificationReport"]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
RELIABILITY_FILE = "reliability_diagram.png"
CONFUSION_FILE = "confusion_matrix.png"
_LABEL_MAP_METRICS = (
    "accuracy",
    "f1_macro",
    "f1_per_class",
    "precision_per_class",
    "recall_per_class",
    "confusion_matrix",
    "confusion_matrix_normalised",
)


class ClassificationReport:
    """Per-pixel classification metrics of a whole evaluation run, written at its end.

    Attach it to a MONAI ``SupervisedEvaluator`` (or any ignite engine whose ``state.output`` is a list of
    per-image dicts, as after decollation, or one batched dict). Each image contributes its probabilities
    (C, H, W) (batched: (B, C, H, W)), its label (1, H, W) or (H, W), and one label map (1, H, W) per prediction
    variant, e.g. ``{"raw": None, "postprocessed": "pred_label"}``, where None stands for the argmax of the
    probabilities. Every variant gets its own :class:`PixelClassificationMetric`.

    At the end of the epoch (an evaluator runs one per run) it writes, in ``output_dir``:

    - ``metrics.json``: ``num_images``, ``num_pixels``, ``class_names``; under ``probabilities`` the quantities of
      the probabilities alone (AUC per class and macro, ECE, reliability table), which post-processing does not
      change; under ``predictions``, per variant, accuracy, macro F1 and precision, recall and F1 per class (by
      class name) and the confusion matrices (counts and row-normalised; rows = truth). NaN is written as null.
    - ``reliability_diagram.png``: accuracy per confidence bin against the diagonal, with the pixel count per bin.
    - ``confusion_matrix.png`` (with ``plot_confusion``): the row-normalised matrix of each variant.

    It also stores in ``engine.state.metrics``: ``ece``, ``auc_macro`` and, per variant v, ``v_accuracy``,
    ``v_f1_macro`` and ``v_f1_<class name>``; list it before MONAI's StatsHandler (both act at epoch end) for
    these to be logged. Metrics restart at every epoch start, so a validation evaluator reports each run
    separately (and overwrites the files).

    Args:
        output_dir: the folder written (created if needed).
        class_names: the C class names, in channel order.
        probability_key: key of the probabilities in each output dict.
        prediction_keys: variant name -> key of its label map, or None for the argmax; None means
            ``{"raw": None}``.
        label_key: key of the ground-truth label map.
        num_bins: equal-width confidence bins for ECE and the reliability diagram.
        auc_bins: score bins for the AUC (see :class:`PixelClassificationMetric`).
        filename_prefix: prepended to every file name written.
        plot_confusion: also write ``confusion_matrix.png``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        probability_key: str = "pred",
        prediction_keys: Mapping[str, str | None] | None = None,
        label_key: str = "label",
        num_bins: int = 15,
        auc_bins: int = 1000,
        filename_prefix: str = "",
        plot_confusion: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = [str(name) for name in class_names]
        self.probability_key = probability_key
        self.prediction_keys = dict(prediction_keys) if prediction_keys else {"raw": None}
        self.label_key = label_key
        self.filename_prefix = filename_prefix
        self.plot_confusion = plot_confusion
        self.metrics = {
            variant: PixelClassificationMetric(len(self.class_names), num_bins, auc_bins)
            for variant in self.prediction_keys
        }
        self.num_images = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def reset(self) -> None:
        """Forget every image added."""
        for metric in self.metrics.values():
            metric.reset()
        self.num_images = 0

    def update(self, output: Mapping | Sequence[Mapping]) -> None:
        """Add an engine output: a list of per-image dicts, or one dict of batched tensors."""
        for batch in self._batches(output):
            probabilities, label = batch[self.probability_key], batch[self.label_key]
            for variant, key in self.prediction_keys.items():
                self.metrics[variant].update(probabilities, label, None if key is None else batch[key])
            self.num_images += probabilities.shape[0]

    def report(self) -> dict:
        """The content of ``metrics.json`` (with NaN, not yet null)."""
        results = {variant: metric.aggregate() for variant, metric in self.metrics.items()}
        first = next(iter(results.values()))
        return {
            "class_names": self.class_names,
            "num_images": self.num_images,
            "num_pixels": first["num_pixels"],
            "probabilities": {
                "key": self.probability_key,
                "auc_per_class": self._by_class(first["auc_per_class"]),
                "auc_macro": first["auc_macro"],
                "ece": first["ece"],
                "reliability": first["reliability"],
            },
            "predictions": {
                variant: {"key": self.prediction_keys[variant], **self._label_map_metrics(result)}
                for variant, result in results.items()
            },
        }

    def engine_metrics(self, report: Mapping) -> dict[str, float]:
        """The scalars of ``report`` to store in ``engine.state.metrics``."""
        metrics = {"ece": report["probabilities"]["ece"], "auc_macro": report["probabilities"]["auc_macro"]}
        for variant, result in report["predictions"].items():
            metrics[f"{variant}_accuracy"] = result["accuracy"]
            metrics[f"{variant}_f1_macro"] = result["f1_macro"]
            metrics.update({f"{variant}_f1_{name}": value for name, value in result["f1_per_class"].items()})
        return metrics

    def write(self, report: Mapping) -> None:
        """Write ``metrics.json`` and the figures of ``report`` to ``output_dir``, each file atomically."""
        write_json(_json_safe(report), self._path(METRICS_FILE))
        probabilities = report["probabilities"]
        _save(reliability_figure(probabilities["reliability"], probabilities["ece"]), self._path(RELIABILITY_FILE))
        if self.plot_confusion:
            matrices = {name: result["confusion_matrix_normalised"] for name, result in report["predictions"].items()}
            _save(confusion_figure(matrices, self.class_names), self._path(CONFUSION_FILE))

    def _epoch_started(self, engine: Engine) -> None:
        self.reset()

    def _iteration_completed(self, engine: Engine) -> None:
        self.update(engine.state.output)

    def _epoch_completed(self, engine: Engine) -> None:
        if self.num_images == 0:
            logger.warning("Classification report: no image was evaluated, nothing written to %s", self.output_dir)
            return
        report = self.report()
        self.write(report)
        engine.state.metrics.update(self.engine_metrics(report))
        logger.info(self._summary(report))

    def _batches(self, output: Mapping | Sequence[Mapping]) -> Iterator[dict[str, torch.Tensor]]:
        """Each output dict, reduced to the keys read, with a batch dimension."""
        batched = isinstance(output, Mapping)
        if not batched and not (isinstance(output, Sequence) and all(isinstance(o, Mapping) for o in output)):
            raise InvalidInputError(
                f"ClassificationReport reads a dict or a list of dicts from engine.state.output, got {type(output)}"
            )
        keys = [self.probability_key, self.label_key, *(k for k in self.prediction_keys.values() if k is not None)]
        for item in [output] if batched else output:
            missing = [key for key in keys if key not in item]
            if missing:
                raise InvalidInputError(
                    f"ClassificationReport needs keys {missing} in the engine output, which has {sorted(item)}"
                )
            yield {key: item[key] if batched else item[key][None] for key in keys}

    def _by_class(self, values: Sequence[float]) -> dict[str, float]:
        return dict(zip(self.class_names, values, strict=True))

    def _label_map_metrics(self, result: Mapping) -> dict:
        metrics = {name: result[name] for name in _LABEL_MAP_METRICS}
        for name in ("f1_per_class", "precision_per_class", "recall_per_class"):
            metrics[name] = self._by_class(metrics[name])
        return metrics

    def _path(self, name: str) -> Path:
        return self.output_dir / f"{self.filename_prefix}{name}"

    def _summary(self, report: Mapping) -> str:
        variants = "; ".join(
            f"{variant}: accuracy {result['accuracy']:.4f}, macro F1 {result['f1_macro']:.4f}"
            for variant, result in report["predictions"].items()
        )
        probabilities = report["probabilities"]
        return (
            f"Classification report of {report['num_images']} images ({report['num_pixels']} pixels): {variants}; "
            f"ECE {probabilities['ece']:.4f}, macro AUC {probabilities['auc_macro']:.4f}; written to {self.output_dir}"
        )


def reliability_figure(reliability: Sequence[Mapping], ece: float) -> Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, and the pixel count per bin below.

    Args:
        reliability: per bin a dict with ``lower``, ``upper``, ``count``, ``accuracy`` (see
            :func:`common.xnet.metrics.reliability_from_bins`).
        ece: the expected calibration error, shown in the title.
    """
    lower = [b["lower"] for b in reliability]
    width = [b["upper"] - b["lower"] for b in reliability]
    accuracy = [0.0 if math.isnan(b["accuracy"]) else b["accuracy"] for b in reliability]
    figure = Figure(figsize=(5, 6), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.bar(lower, accuracy, width=width, align="edge", edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"Reliability diagram (ECE = {ece:.4f})")
    top.legend(loc="upper left")
    bottom.bar(lower, [b["count"] for b in reliability], width=width, align="edge", edgecolor="black")
    bottom.set(xlabel="top-1 confidence", ylabel="pixels", yscale="log")
    return figure


def confusion_figure(matrices: Mapping[str, Sequence[Sequence[float]]], class_names: Sequence[str]) -> Figure:
    """One panel per prediction variant: its row-normalised confusion matrix (rows = truth), values printed."""
    figure = Figure(figsize=(4 * len(matrices), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(matrices), squeeze=False)[0]
    ticks = range(len(class_names))
    for ax, (variant, matrix) in zip(axes, matrices.items(), strict=True):
        ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        for (row, column), value in _cells(matrix):
            ax.text(column, row, f"{value:.2f}", ha="center", va="center", color="white" if value > 0.5 else "black")
        ax.set(xticks=ticks, yticks=ticks, xlabel="prediction", ylabel="truth", title=variant)
        ax.set_xticklabels(class_names, rotation=45, ha="right")
        ax.set_yticklabels(class_names)
    return figure


def _cells(matrix: Sequence[Sequence[float]]) -> Iterator[tuple[tuple[int, int], float]]:
    for row, values in enumerate(matrix):
        for column, value in enumerate(values):
            if not math.isnan(value):
                yield (row, column), value


def _save(figure: Figure, path: Path) -> None:
    with atomic_target(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


def _json_safe(value: object) -> object:
    """``value`` with every float NaN replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value
