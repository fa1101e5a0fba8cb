"""SMILEr's self-relabeling rounds as an ignite handler on one SupervisedTrainer run (docs/methods/smile.md §3.3).

The trainer runs ``schedule.total_epochs`` epochs. At the start of each round t = 1..T (after round 0's SMILE
training, or at once when training starts from given weights) the handler labels, with the current model, the
surest voxels of every class missing from each training case, writes them as one NIfTI per case, reports their
count and, when a simulation removed the truth, their precision and recall, and hands the training dataset
the new pseudo-labels (kept apart from the real labels, under the ``pseudo_label`` key). Optionally the network
is re-initialised so that each round retrains from scratch. At the end of each round it saves the round's
weights and validation metrics.

Run folder (``output_dir``)::

    relabeling_run.json             the settings of the run; a restart with other settings is refused
    round_<t>/pseudo_labels/*.nii.gz  round t's pseudo-labels, on each image's own voxel grid (t >= 1)
    round_<t>/pseudo_labels.json    round t's report (written last: marks its relabeling complete); also .csv
    round_<t>/model.pt              weights at the end of round t's training (flat state_dict)
    round_<t>/validation.json       their validation metrics
    rounds.csv                      one row per round and class

Restarting a killed run (with the trainer's :class:`~common.handlers.ResumableCheckpoint`, attached before this
handler) resumes at its last finished epoch; finished rounds are reused, never redone or rewritten.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch import nn
from tqdm import tqdm

from common.data.atomic import atomic_target
from common.data.cases import case_name
from common.data.json_io import write_json
from common.data.writers import write_label_map
from common.errors import InvalidInputError
from common.handlers.checkpoint import load_weights, unwrap
from common.handlers.progress import shows_progress
from common.handlers.ranks import barrier, gather_lists, is_main_process, rank, world_size
from common.settings import as_flag
from common.smile.distribution_alignment import (
    ALIGNMENT_SCHEDULES,
    DistributionAligner,
    aligned_target,
    alignment_temperature,
    foreground_fractions,
)
from common.smile.pseudo_label_metrics import pseudo_label_counts
from common.smile.pseudo_labeler import PseudoLabeler
from common.smile.relabeling_report import (
    PSEUDO_LABEL_REPORT,
    VALIDATION_REPORT,
    case_record,
    round_report,
    write_round_report,
    write_summary,
)
from common.smile.schedule import RelabelingSchedule
from common.smile.selection import class_fractions, crest_rates, gamma_schedule
from common.smile.targets import foreground_one_hot

__all__ = ["RETRAIN_MODES", "RelabelingRounds", "reinitialize_parameters"]

logger = logging.getLogger(__name__)

RETRAIN_MODES = ("previous", "scratch")
RUN_FILE = "relabeling_run.json"


@contextmanager
def _seeded(seed: int, device: torch.device | str) -> Iterator[None]:
    """Seed torch (CPU, and ``device`` when it is a GPU) inside the block; the outer random state is restored after,
    so data augmentation continues its own stream."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def reinitialize_parameters(network: nn.Module, seed: int) -> None:
    """Draw fresh initial weights for every submodule that can reset itself, from ``seed``.

    The global random state is left as it was, so data augmentation continues its own stream.
    """
    module = unwrap(network)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with _seeded(seed, device):
        for submodule in module.modules():
            if callable(getattr(submodule, "reset_parameters", None)):
                submodule.reset_parameters()


def _save_weights(network: nn.Module, path: Path) -> None:
    with atomic_target(path) as temporary:
        torch.save(unwrap(network).state_dict(), temporary)


class RelabelingRounds:
    """Ignite handler: T rounds of self-relabeling inside one training run.

    Args:
        schedule: the epoch plan; the trainer's ``max_epochs`` must be ``schedule.total_epochs``.
        pseudo_labeler: predicts and selects the pseudo-labels of one volume.
        datalist: the training entries as given (image, label, annotated_classes, ...), e.g. from
            :func:`common.data.datalist.load_datalist`.
        dataset: the training dataset; its data are replaced by ``datalist`` plus each case's pseudo-label file
            (``set_data`` re-runs a ``CacheDataset``'s cached transforms).
        load_transform: an entry to a dict holding the loaded ``image`` (1, *spatial) with its metadata, the
            ``label`` map and the (K,) ``annotated_classes`` indicator (the bundle's load transforms).
        class_names: the K foreground classes.
        output_dir: the run folder.
        gamma_max: fraction of the candidates relabelled in round T, in (0, 1]; round t uses t / T * gamma_max.
        simulation: a :class:`~common.smile.SimulateMissingAnnotationsd` applied after loading, as in
            training; the classes it removes are relabelled and scored against the removed truth.
        crest_alpha: CReST exponent >= 0; class rates (N_{K+1-c} / N_1) ** alpha from the voxel counts of the
            real labels multiply gamma_t. 0 relabels every class at gamma_t.
        alignment: CReST+ distribution alignment of the probabilities before the candidates are thresholded and
            ranked (docs/methods/smile.md §5.2): None (off), ``"adaptive"`` (temperature from 1 in round 1 to
            ``alignment_t_min`` in round T) or ``"constant"`` (``alignment_t_min`` in every round). The target is
            the tempered foreground fraction of each class in the volumes that delineate it (after the
            simulation); the model's is a running mean over the round's volumes where the class is missing.
        alignment_t_min: the alignment's last (``"adaptive"``) or constant temperature, in (0, 1].
        retrain: ``"previous"`` continues from the previous round's weights, ``"scratch"`` re-initialises them.
        evaluator: run at each round's end unless it already ran at that epoch; its metrics are saved.
        optimizer: its state (e.g. Adam moments) is cleared when retraining from scratch.
        initial_weights: weights to start from (a trained SMILE model), with a schedule whose round 0 is empty.
        final_weights: where the weights of the last round are written when training completes.
        run_settings: other settings that identify the run (datalist, missing rate, network ...); compared with
            the run folder's on restart.
        resume: continue the run the folder holds; False refuses a folder that holds one.
        seed: seeds re-initialisation and the MC-dropout passes.
        device: where the network runs.
    """

    def __init__(
        self,
        schedule: RelabelingSchedule,
        pseudo_labeler: PseudoLabeler,
        datalist: Sequence[Mapping],
        dataset,
        load_transform: Callable[[dict], dict],
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        gamma_max: float = 0.9,
        simulation: Callable[[dict], dict] | None = None,
        crest_alpha: float = 0.0,
        alignment: str | None = None,
        alignment_t_min: float = 0.5,
        retrain: str = "previous",
        evaluator: Engine | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        initial_weights: str | os.PathLike | None = None,
        final_weights: str | os.PathLike | None = None,
        run_settings: Mapping | None = None,
        resume: bool = True,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        gamma_schedule(1, schedule.num_rounds, gamma_max)  # checks gamma_max
        if retrain not in RETRAIN_MODES:
            raise ValueError(f"retrain must be one of {RETRAIN_MODES}, got {retrain!r}")
        if crest_alpha < 0:
            raise ValueError(f"crest_alpha must be >= 0, got {crest_alpha}")
        if alignment is not None:
            if alignment not in ALIGNMENT_SCHEDULES:
                raise ValueError(f"alignment must be null (off) or one of {ALIGNMENT_SCHEDULES}, got {alignment!r}")
            alignment_temperature(1, schedule.num_rounds, alignment_t_min, alignment)  # checks alignment_t_min
        if initial_weights and schedule.initial_epochs:
            raise ValueError("initial_weights replace round 0's training: use a schedule with initial_epochs=0")
        self.schedule = schedule
        self.labeler = pseudo_labeler
        self.datalist = [dict(entry) for entry in datalist]
        self.dataset = dataset
        self.load_transform = load_transform
        self.simulation = simulation
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)
        self.gamma_max = gamma_max
        self.crest_alpha = crest_alpha
        self.alignment = alignment
        self.alignment_t_min = alignment_t_min
        self.retrain = retrain
        self.evaluator = evaluator
        self.optimizer = optimizer
        self.initial_weights = initial_weights
        self.final_weights = Path(final_weights) if final_weights else None
        self.run_settings = dict(run_settings or {})
        self.resume = as_flag(resume, "resume")
        self.seed = seed
        self.device = device
        self._class_rates: torch.Tensor | None = None
        self._label_statistics: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._case_names = self._unique_case_names()

    def _unique_case_names(self) -> list[str]:
        names = [case_name(entry) for entry in self.datalist]
        seen: dict[str, str] = {}
        for name, entry in zip(names, self.datalist, strict=True):
            if name in seen:
                raise InvalidInputError(
                    f"two training images share the file name {name!r} ({seen[name]} and {entry['image']}); "
                    "pseudo-labels are stored by image file name: rename one of them"
                )
            seen[name] = str(entry["image"])
        return names

    def attach(self, engine: Engine) -> None:
        if engine.state.max_epochs not in (None, self.schedule.total_epochs):
            raise ValueError(
                f"the trainer runs {engine.state.max_epochs} epochs but the relabeling schedule needs "
                f"{self.schedule.total_epochs} (initial_epochs + num_rounds * round_epochs)"
            )
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    # --- the run's identity -------------------------------------------------------------------------------

    def settings(self) -> dict:
        """Everything that decides what the run writes; a folder holding other settings is refused."""
        labeler = self.labeler
        return {
            **self.run_settings,
            "class_names": self.class_names,
            "cases": self._case_names,
            "num_rounds": self.schedule.num_rounds,
            "initial_epochs": self.schedule.initial_epochs,
            "round_epochs": self.schedule.round_epochs,
            "gamma_max": self.gamma_max,
            "selection": labeler.selection,
            "threshold": labeler.threshold,
            "mc_passes": labeler.mc_passes if labeler.selection == "uncertainty" else None,
            "uncertainty": labeler.uncertainty if labeler.selection == "uncertainty" else None,
            "crest_alpha": self.crest_alpha,
            "alignment": self.alignment,
            "alignment_t_min": self.alignment_t_min if self.alignment else None,
            "retrain": self.retrain,
            "initial_weights": str(self.initial_weights) if self.initial_weights else None,
            "seed": self.seed,
        }

    def _claim_run_folder(self) -> None:
        path = self.output_dir / RUN_FILE
        settings = json.loads(json.dumps(self.settings()))  # as it reads back from JSON
        if path.is_file():
            held = json.loads(path.read_text())
            if not self.resume:
                raise InvalidInputError(
                    f"{self.output_dir} already holds a relabeling run ({path}); resume is false, so it would be "
                    "overwritten: choose another output_dir, or set resume to true to continue it"
                )
            differing = sorted(key for key in set(held) | set(settings) if held.get(key) != settings.get(key))
            if differing:
                details = "; ".join(f"{k}: folder {held.get(k)!r}, now {settings.get(k)!r}" for k in differing[:5])
                raise InvalidInputError(
                    f"{self.output_dir} holds a different relabeling run ({path}): {details}. "
                    "Nothing was overwritten: choose another output_dir for these settings"
                )
            return
        barrier()
        if is_main_process():
            write_json(settings, path)
        barrier()

    # --- events -------------------------------------------------------------------------------------------

    def started(self, engine: Engine) -> None:
        """Check the folder, then restore the state of the round the trainer (re)starts in."""
        self._claim_run_folder()
        self._show_round(engine)
        completed = engine.state.epoch
        if completed == 0 and self.initial_weights:
            load_weights(unwrap(self.labeler.network), self.initial_weights)
            logger.info("relabeling starts from %s", self.initial_weights)
        ending = self.schedule.ending_round(completed)
        if ending is not None and not (self._round_dir(ending) / "model.pt").is_file():
            self._finish_round(ending, engine)
        if completed >= self.schedule.total_epochs:
            return
        current = self.schedule.round_of_epoch(completed + 1)
        if current == 0:
            return
        if completed == self.schedule.round_start(current):
            self._start_round(current)
        elif not (self._round_dir(current) / PSEUDO_LABEL_REPORT).is_file():
            raise InvalidInputError(
                f"cannot resume at epoch {completed}: round {current}'s pseudo-labels "
                f"({self._round_dir(current) / PSEUDO_LABEL_REPORT}) are missing from {self.output_dir}"
            )
        else:
            self._use_pseudo_labels(current)

    def epoch_completed(self, engine: Engine) -> None:
        completed = engine.state.epoch
        ending = self.schedule.ending_round(completed)
        if ending is not None:
            self._finish_round(ending, engine)
        starting = self.schedule.starting_round(completed)
        if starting is not None:
            self._start_round(starting)
        self._show_round(engine)

    def _show_round(self, engine: Engine) -> None:
        """``engine.state.relabeling_round``: "t/T" for the epochs to come (the trainer's progress bar shows it)."""
        upcoming = min(engine.state.epoch + 1, self.schedule.total_epochs)
        engine.state.relabeling_round = f"{self.schedule.round_of_epoch(upcoming)}/{self.schedule.num_rounds}"

    def completed(self, engine: Engine) -> None:
        if engine.state.epoch >= self.schedule.total_epochs and self.final_weights and is_main_process():
            _save_weights(self.labeler.network, self.final_weights)
            logger.info("final relabeled model written to %s", self.final_weights)

    # --- rounds -------------------------------------------------------------------------------------------

    def _round_dir(self, round_index: int) -> Path:
        return self.output_dir / f"round_{round_index}"

    def _finish_round(self, round_index: int, engine: Engine) -> None:
        """Save the round's weights and validation metrics (rank 0 writes)."""
        metrics = self._validate(engine)
        if is_main_process():
            folder = self._round_dir(round_index)
            _save_weights(self.labeler.network, folder / "model.pt")
            if metrics is not None:
                write_json(metrics, folder / VALIDATION_REPORT)
            write_summary(self.output_dir, self.class_names, self.schedule.num_rounds)
        logger.info("round %d finished at epoch %d: %s", round_index, engine.state.epoch, metrics)
        barrier()

    def _validate(self, engine: Engine) -> dict | None:
        if self.evaluator is None:
            return None
        if self.evaluator.state.epoch != engine.state.epoch or not self.evaluator.state.metrics:
            self.evaluator.run(engine.state.epoch)
        return {name: float(value) for name, value in self.evaluator.state.metrics.items()}

    def _start_round(self, round_index: int) -> None:
        """Relabel with the current weights (unless a finished relabeling of this round is on disk), then train."""
        if not (self._round_dir(round_index) / PSEUDO_LABEL_REPORT).is_file():
            self._relabel(round_index)
        self._use_pseudo_labels(round_index)
        if self.retrain == "scratch":
            reinitialize_parameters(self.labeler.network, self.seed + round_index)
            if self.optimizer is not None:
                self.optimizer.state.clear()
            logger.info("round %d retrains from freshly initialised weights", round_index)

    def _relabel(self, round_index: int) -> None:
        gamma = gamma_schedule(round_index, self.schedule.num_rounds, self.gamma_max)
        rates = self._rates()
        fractions = class_fractions(gamma, rates)
        aligner, temperature = self._aligner(round_index)
        folder = self._round_dir(round_index)
        records = []
        logger.info(
            "round %d/%d: relabeling %d training volumes", round_index, self.schedule.num_rounds, len(self.datalist)
        )
        volumes = tqdm(
            range(rank(), len(self.datalist), world_size()), unit="volume", leave=False,
            desc=f"round {round_index}/{self.schedule.num_rounds} relabel", disable=not shows_progress(),
        )  # fmt: skip
        for index in volumes:
            generator_seed = self.seed + 1000 * round_index + index
            records.append(self._relabel_case(index, fractions, folder, generator_seed, aligner))
        records = gather_lists(records)
        if aligner is not None:
            parts = gather_lists([(aligner.probability_sums.tolist(), aligner.voxels.tolist())])
            sums = torch.tensor([part[0] for part in parts], dtype=torch.float64).sum(dim=0)
            voxels = torch.tensor([part[1] for part in parts], dtype=torch.float64).sum(dim=0)
        if is_main_process():
            report = round_report(round_index, gamma, self.labeler.selection, self.class_names, rates, records)
            if aligner is not None:
                report["alignment"] = {
                    "schedule": self.alignment,
                    "temperature": round(temperature, 6),
                    "target": self._per_class(aligner.target),
                    "model": self._per_class(sums / voxels),  # over every relabelled (class, volume) pair
                }
            write_round_report(report, folder)
            write_summary(self.output_dir, self.class_names, self.schedule.num_rounds)
            logger.info("round %d relabeled (gamma %.3f): %s", round_index, gamma, report["classes"])
        barrier()

    def _per_class(self, values: torch.Tensor) -> dict:
        """{class name: value rounded to 8 decimals}; None for NaN (a class no volume relabelled)."""
        return {
            name: None if math.isnan(value) else round(value, 8)
            for name, value in zip(self.class_names, values.tolist(), strict=True)
        }

    def _aligner(self, round_index: int) -> tuple[DistributionAligner | None, float | None]:
        """The round's CReST+ aligner and temperature; (None, None) without alignment."""
        if self.alignment is None:
            return None, None
        temperature = alignment_temperature(round_index, self.schedule.num_rounds, self.alignment_t_min, self.alignment)
        _, annotated_counts, annotated_voxels = self._label_counts()
        labelled = foreground_fractions(annotated_counts, annotated_voxels)
        target = aligned_target(labelled, temperature)
        logger.info(
            "round %d: CReST+ alignment at temperature %.3f, labelled foreground fractions %s, target %s",
            round_index, temperature, labelled.tolist(), target.tolist(),
        )  # fmt: skip
        return DistributionAligner(target), temperature

    def _relabel_case(
        self, index: int, fractions: torch.Tensor, folder: Path, seed: int, aligner: DistributionAligner | None = None
    ) -> dict:
        loaded = self.load_transform(dict(self.datalist[index]))
        truth = loaded["label"]
        simulated = self.simulation(dict(loaded)) if self.simulation is not None else loaded
        num_foreground_classes = len(self.class_names)
        annotated = torch.as_tensor(simulated["annotated_classes"]).bool()
        relabelled = ~annotated
        evaluated = torch.as_tensor(simulated.get("dropped_classes", torch.zeros(num_foreground_classes))).bool()
        voxels = torch.zeros(num_foreground_classes, dtype=torch.int64)
        counts = torch.zeros(num_foreground_classes, 3, dtype=torch.int64)
        pseudo_file = None
        if relabelled.any():
            with _seeded(seed, self.device):
                probabilities, uncertainty = self.labeler.predict(simulated["image"], self.device)
            if aligner is not None:
                probabilities = aligner(probabilities, relabelled)
            pseudo = self.labeler.select(probabilities, uncertainty, simulated["label"], fractions * relabelled)
            voxels = foreground_one_hot(pseudo, num_foreground_classes).sum(dim=tuple(range(1, pseudo.ndim)))
            counts = pseudo_label_counts(pseudo, torch.as_tensor(truth), evaluated)
            name = self._case_names[index]
            path = write_label_map(pseudo.numpy(), simulated["image"].affine.numpy(), folder / "pseudo_labels" / name)
            pseudo_file = str(path.relative_to(self.output_dir))
        return case_record(
            self._case_names[index], pseudo_file, self.class_names, relabelled, voxels, counts, evaluated
        )

    def _rates(self) -> torch.Tensor:
        """CReST rates from the voxel counts of the real labels (all ones without rebalancing)."""
        if self.crest_alpha == 0:
            return torch.ones(len(self.class_names))
        if self._class_rates is None:
            counts, _, _ = self._label_counts()
            self._class_rates = crest_rates(counts, self.crest_alpha)
            logger.info("CReST class voxel counts %s, rates %s", counts.tolist(), self._class_rates.tolist())
        return self._class_rates

    def _label_counts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass over the real labels, after the simulation; (K,) int64 each, cached:

        - the voxels of each class in all volumes (CReST's counts);
        - the voxels of each class in the volumes that delineate it;
        - the voxels of those volumes (for the labelled foreground fractions of the alignment).
        """
        if self._label_statistics is None:
            num_foreground_classes = len(self.class_names)
            counts = torch.zeros(num_foreground_classes, dtype=torch.int64)
            annotated_counts = torch.zeros(num_foreground_classes, dtype=torch.int64)
            annotated_voxels = torch.zeros(num_foreground_classes, dtype=torch.int64)
            for entry in self.datalist:
                loaded = self.load_transform(dict(entry))
                simulated = self.simulation(dict(loaded)) if self.simulation is not None else loaded
                label = torch.as_tensor(simulated["label"])
                one_hot = foreground_one_hot(label, num_foreground_classes)
                per_class = one_hot.sum(dim=tuple(range(1, one_hot.ndim)))
                annotated = torch.as_tensor(simulated["annotated_classes"]).bool()
                counts += per_class
                annotated_counts += torch.where(annotated, per_class, 0)
                annotated_voxels += annotated.long() * label[0].numel()
            self._label_statistics = (counts, annotated_counts, annotated_voxels)
        return self._label_statistics

    def _use_pseudo_labels(self, round_index: int) -> None:
        """Give the training dataset round ``round_index``'s pseudo-labels."""
        report = json.loads((self._round_dir(round_index) / PSEUDO_LABEL_REPORT).read_text())
        files = {r["case"]: str(self.output_dir / r["pseudo_label"]) for r in report["cases"] if r["pseudo_label"]}
        data = [
            {**entry, "pseudo_label": files[name]} if name in files else dict(entry)
            for name, entry in zip(self._case_names, self.datalist, strict=True)
        ]
        if hasattr(self.dataset, "set_data"):
            self.dataset.set_data(data)
        else:
            self.dataset.data = data
        logger.info("training on round %d's pseudo-labels of %d cases", round_index, len(files))
