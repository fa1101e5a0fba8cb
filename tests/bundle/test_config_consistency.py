"""Evaluation runs what inference runs: every bundle's evaluation is ``inference.json`` with the ``evaluate.json``
overlay, which adds the labels, the metrics and their files, and reuses inference's network, inferer, decision
settings, preprocessing and post-processing by id instead of restating them.

Each check compares ``inference.json`` parsed alone with ``inference.json`` + ``evaluate.json`` merged as
``monai.bundle run --config_file "['configs/inference.json','configs/evaluate.json']"`` merges them. Nothing is
run and no data is read: the configs are resolved, and the transforms instantiated without any data.
"""

from __future__ import annotations

import enum
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.bundle.config_item import ConfigItem
from monai.transforms import SaveImaged

from tests.bundle.conftest import REPO


@dataclass(frozen=True)
class Case:
    """A bundle's evaluation: the overlays merged between inference.json and evaluate.json, the inference ids
    whose values decide the prediction, and the inference steps evaluation replaces (by class name)."""

    bundle: str
    overlays: tuple[str, ...] = ()
    decision: tuple[str, ...] = ()
    replaced_steps: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "+".join((self.bundle, *self.overlays))


PROPAGATION = ("axis", "step", "step_mm", "fill", "between", "anchor_weight", "max_growth", "min_overlap")
CASES = [
    Case("smile", decision=("threshold", "patch_size", "pixdim", "hu_window")),
    Case("smile", ("inference_baseline.json",), decision=("patch_size", "pixdim", "hu_window")),
    Case("smiler", decision=("threshold", "patch_size", "pixdim", "hu_window")),
    # evaluation cuts the seed from the ground truth instead of reading the user's annotated slice
    Case(
        "sli2vol",
        decision=(*PROPAGATION, "verification", "clean", "block_size", "modality", "hu_window", "mri_percentiles"),
        replaced_steps=("AnnotatedSeedd",),
    ),
    Case("xnet", decision=("soft_tissue_threshold", "bone_opening_size", "input_size", "intensity_percentiles")),
]
# The inference ids an evaluate.json may set: the data (with labels) and its transform, the extra network input
# (Sli2Vol's seed), the evaluator's post-processing, metrics and handlers, and imports.
EVALUATION_HOOKS = frozenset(
    {
        "+imports",
        "dataset#data",
        "dataset#transform",
        "prepare_batch#extra_keys",
        "evaluator#postprocessing",
        "evaluator#key_val_metric",
        "evaluator#additional_metrics",
        "evaluator#val_handlers",
    }
)
NEVER_IN_EVALUATE = ("network_def", "network", "inferer")


def fingerprint(value: object, seen: frozenset[int] = frozenset()) -> object:
    """A comparable, plain-data picture of a resolved config value or of an instantiated transform: its class and,
    recursively, its attributes (memory addresses and random states left out)."""
    if isinstance(value, ConfigItem):
        return fingerprint(value.get_config(), seen)
    if isinstance(value, float) and value != value:
        return "nan"  # NaN != NaN
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, enum.Enum):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [fingerprint(item, seen) for item in value]
    if isinstance(value, dict):
        return {str(key): fingerprint(item, seen) for key, item in value.items()}
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return fingerprint(value.tolist(), seen)
    if isinstance(value, (np.random.RandomState, torch.Generator)):
        return type(value).__name__
    if isinstance(value, (type, torch.dtype, torch.device, np.dtype)):
        return str(value)
    state = getattr(value, "__dict__", None)
    if state is not None and (state or not callable(value)):  # an object, e.g. a transform, and its settings
        if id(value) in seen:
            return "<cycle>"
        return {"class": type(value).__qualname__, **fingerprint(state, seen | {id(value)})}
    return re.sub(r" at 0x[0-9a-fA-F]+", "", getattr(value, "__qualname__", None) or repr(value))


def parsers(configs: Path, case: Case, overrides: dict | None = None) -> tuple[ConfigParser, ConfigParser]:
    """``inference.json`` (with the case's overlays) alone, and with ``evaluate.json`` merged on top."""
    inference_files = [str(configs / name) for name in ("inference.json", *case.overlays)]
    inference, evaluation = ConfigParser(), ConfigParser()
    inference.read_config(inference_files)
    evaluation.read_config([*inference_files, str(configs / "evaluate.json")])
    for parser in (inference, evaluation):
        parser.update(overrides or {})
    return inference, evaluation


def steps(parser: ConfigParser, id: str) -> list:
    """The transforms of the Compose ``id`` resolves to, nested Composes flattened."""
    return list(parser.get_parsed_content(id).flatten().transforms)


def in_order(expected: list, found: list) -> bool:
    """Whether the very objects ``expected`` appear in ``found`` in the same order (others may come between)."""
    position = 0
    for item in found:
        if position < len(expected) and item is expected[position]:
            position += 1
    return position == len(expected)


def wiring(parser: ConfigParser) -> dict:
    """The evaluator's arguments that evaluation must leave as inference sets them (network, inferer, data...)."""
    return {key: value for key, value in parser["evaluator"].items() if f"evaluator#{key}" not in EVALUATION_HOOKS}


def inconsistencies(configs: Path, case: Case) -> list[str]:
    """What in ``configs/evaluate.json`` makes evaluation differ from inference; empty when it runs inference."""
    problems = []
    overlay = json.loads((configs / "evaluate.json").read_text())
    inference, evaluation = parsers(configs, case)
    own = inference.get()

    # 1. the overlay adds ids, and sets inference ids only where evaluation hooks in
    for key in overlay:
        root = key.removeprefix("+").split("#")[0]
        if root in NEVER_IN_EVALUATE:
            problems.append(f"evaluate.json sets {key!r}: {root} must come from inference.json")
        elif root in own and key not in EVALUATION_HOOKS:
            problems.append(f"evaluate.json restates the inference id {key!r}")

    # 2. the same network, inferer and decision settings, resolved, and an evaluator wired as inference's
    for id in ("network_def", "inferer", *case.decision):
        resolved = (parser.get_parsed_content(id, instantiate=False) for parser in (inference, evaluation))
        if fingerprint(next(resolved)) != fingerprint(next(resolved)):
            problems.append(f"{id} differs between inference and evaluation")
    if wiring(evaluation) != wiring(inference):
        problems.append("the evaluator is wired to another network, inferer, data loader or device than inference's")

    # 3. the same preprocessing and post-processing; evaluation's preprocessing runs inference's steps (the very
    # objects), in order, but the replaced ones
    for id in ("preprocessing", "postprocessing"):
        if fingerprint(evaluation.get_parsed_content(id)) != fingerprint(inference.get_parsed_content(id)):
            problems.append(f"{id} differs between inference and evaluation")
    expected = [step for step in steps(evaluation, "preprocessing") if type(step).__name__ not in case.replaced_steps]
    if not in_order(expected, steps(evaluation, "dataset#transform")):
        problems.append("evaluation's preprocessing does not run inference's preprocessing steps, in order")

    # 4. evaluation's post-processing starts with inference's and runs its steps but saving, in order; it saves
    # with inference's own saving steps when save_predictions is set
    kept = [step for step in steps(evaluation, "postprocessing") if not isinstance(step, SaveImaged)]
    scored = steps(evaluation, "evaluator#postprocessing")
    if kept and (not scored or scored[0] is not kept[0] or not in_order(kept, scored)):
        problems.append("evaluation's post-processing does not start with inference's post-processing steps")
    if any(isinstance(step, SaveImaged) for step in scored):
        problems.append("evaluation saves predictions by default")
    _, saving = parsers(configs, case, {"save_predictions": True})
    savers = [step for step in steps(saving, "postprocessing") if isinstance(step, SaveImaged)]
    if not in_order(savers, steps(saving, "evaluator#postprocessing")):
        problems.append("save_predictions does not save with inference's saving steps")
    return problems


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_evaluation_runs_what_inference_runs(case):
    assert inconsistencies(REPO / "bundles" / case.bundle / "configs", case) == []


@pytest.mark.parametrize("bundle", sorted({case.bundle for case in CASES}))
def test_evaluate_json_defines_no_network_or_inferer(bundle):
    overlay = json.loads((REPO / "bundles" / bundle / "configs" / "evaluate.json").read_text())
    assert not [key for key in overlay if key.removeprefix("+").split("#")[0] in NEVER_IN_EVALUATE]


TRAINING_VALIDATION_INFERER = {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size", "sw_batch_size": 4}
RESTATED = {  # a change to SMILE's evaluate.json, and what the report must name
    # train.json's validation window restated in evaluate.json: what evaluation used to run
    "inferer": ({"inferer": {**TRAINING_VALIDATION_INFERER, "overlap": 0.25}}, "inferer differs"),
    # the same window given to the evaluator directly
    "evaluator inferer": (
        {"evaluator#inferer": {**TRAINING_VALIDATION_INFERER, "overlap": 0.25}},
        "evaluator is wired",
    ),
    # inference's own window restated: equal today, but a second copy to keep in step
    "same inferer": ({"inferer": {**TRAINING_VALIDATION_INFERER, "overlap": 0.5, "mode": "gaussian"}}, "'inferer'"),
    "threshold": ({"threshold": 0.3}, "threshold differs"),
    "decision step": (
        {"to_label_map": [{"_target_": "common.smile.ProbabilitiesToLabelMapd", "keys": "pred", "threshold": 0.3}]},
        "postprocessing differs",
    ),
    "preprocessing": ({"preprocessing#transforms#3#pixdim": [2.0, 2.0, 2.0]}, "preprocessing differs"),
    "network": ({"network_def#dropout": 0.2}, "network_def differs"),
    "own post-processing": ({"evaluator#postprocessing": "$monai.transforms.Compose(@metric_transforms)"}, "start"),
}


@pytest.mark.parametrize(("change", "named"), RESTATED.values(), ids=RESTATED.keys())
def test_a_restated_definition_in_evaluate_json_is_caught(change, named, tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "bundles" / "smile" / "configs", configs)
    overlay = json.loads((configs / "evaluate.json").read_text())
    (configs / "evaluate.json").write_text(json.dumps({**overlay, **change}, indent=4))
    problems = inconsistencies(configs, CASES[0])
    assert any(named in problem for problem in problems), problems
