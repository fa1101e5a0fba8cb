"""The SMILEr bundle run for real: relabeling rounds through the CLI, resume, refusals, export, torchrun."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from common.errors import InvalidInputError
from tests.bundle.conftest import (
    TINY_OVERRIDES,
    TORCHRUN_CONFIGS,
    assert_two_ranks_trained_on_disjoint_halves,
    check_torchscript_export,
    copy_bundle,
    missing_workflow_properties,
    run_cli,
    training_case_recorder,
    verify_metadata_and_network,
)
from tools.bundle_command import bundle_command, torchrun

TWO_ROUNDS = ["--initial_epochs", "2", "--round_epochs", "1", "--num_rounds", "2", "--val_interval", "1"]
ORGANS = ("liver", "pancreas", "stomach")


def train_command(*overrides: str, configs=("configs/train.json",), launcher=()) -> list[str]:
    """``monai.bundle run`` of a bundle copy's train.json (and more ``configs``), from the copy's folder."""
    return bundle_command(
        configs, meta_file="configs/metadata.json", bundle_root=".", overrides=list(overrides), launcher=launcher
    )


@pytest.fixture(scope="module")
def relabeled(tmp_path_factory, tiny_ct):
    """A copy of the bundle after SMILE (2 epochs) and 2 relabeling rounds (1 epoch each) at alpha 0.7."""
    bundle = copy_bundle("smiler", tmp_path_factory.mktemp("smiler"))
    result = run_cli(
        train_command("--dataset_dir", str(tiny_ct), "--missing_rate", "0.7", *TWO_ROUNDS, *TINY_OVERRIDES),
        cwd=bundle,
    )
    return bundle, result


def _digests(folder) -> dict:
    return {p.relative_to(folder): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("workflow_type", "config"), [("train", "train.json"), ("infer", "inference.json")])
def test_workflow_properties_are_complete(workflow_type, config, tiny_ct, tmp_path):
    assert not missing_workflow_properties("smiler", workflow_type, config, tiny_ct, tmp_path)


def test_two_rounds_write_pseudo_labels_on_the_image_grid(relabeled, tiny_ct):
    bundle, _ = relabeled
    run = bundle / "eval"
    for round_index, gamma in ((1, 0.45), (2, 0.9)):
        report = json.loads((run / f"round_{round_index}" / "pseudo_labels.json").read_text())
        assert report["round"] == round_index and report["gamma"] == pytest.approx(gamma)
        for record in report["cases"]:
            image = nib.load(tiny_ct / "imagesTr" / record["case"])
            truth = np.asarray(nib.load(tiny_ct / "labelsTr" / record["case"]).dataobj)
            pseudo = nib.load(run / record["pseudo_label"])
            assert pseudo.shape == image.shape and pseudo.get_data_dtype() == np.uint8
            np.testing.assert_allclose(pseudo.affine, image.affine, atol=1e-5)
            values = np.asarray(pseudo.dataobj)
            relabelled = {ORGANS.index(name) + 1 for name in record["classes"]}
            assert set(np.unique(values)) - {0} <= relabelled  # only the classes missing from this case
            annotated = [k for k in (1, 2, 3) if k not in relabelled]
            assert not np.isin(truth[values > 0], annotated).any()  # never over a real (kept) label
            for name, line in record["classes"].items():
                k = ORGANS.index(name) + 1
                assert line["voxels"] == int((values == k).sum())
                assert line["tp"] == int(((values == k) & (truth == k)).sum())  # simulated: the truth is known
    summary = list(csv.DictReader((run / "rounds.csv").open()))
    assert [(row["round"], row["class"]) for row in summary] == [(str(r), o) for r in (0, 1, 2) for o in ORGANS]
    assert all(row["val_dice"] for row in summary) and summary[0]["gamma"] == ""


def test_final_model_is_the_last_round_and_flat(relabeled):
    bundle, result = relabeled
    final = torch.load(bundle / "models" / "model.pt", weights_only=True)
    last = torch.load(bundle / "eval" / "round_2" / "model.pt", weights_only=True)
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    first = torch.load(bundle / "eval" / "round_0" / "model.pt", weights_only=True)
    assert any(not torch.equal(first[k], last[k]) for k in first)  # rounds 1 and 2 trained on
    output = result.stdout + result.stderr
    assert "round 1 relabeled (gamma 0.450)" in output and "round 2 relabeled (gamma 0.900)" in output


def test_killed_in_round_two_resumes_there_and_keeps_round_one(tiny_ct, tmp_path):
    bundle = copy_bundle("smiler", tmp_path)
    plan = ["--initial_epochs", "1", "--round_epochs", "2", "--num_rounds", "2", "--val_interval", "1"]
    settings = ["--dataset_dir", str(tiny_ct), "--missing_rate", "0.7", *plan, *TINY_OVERRIDES]
    # a hard kill (os._exit: no clean-up, no final save) after epoch 4, while round 2 (epochs 4..5) is under way
    kill = tmp_path / "kill_after_epoch_4.json"
    kill.write_text(
        json.dumps(
            {
                "kill_event": "$monai.utils.optional_import('ignite.engine', name='Events')[0].EPOCH_COMPLETED(once=4)",
                "kill": "$type('Kill', (), dict(attach=lambda self, engine: engine.add_event_handler("
                "@kill_event, lambda e: os._exit(3))))()",
                "train#trainer#train_handlers": "$@train#handlers + [@kill]",
            }
        )
    )
    killed = run_cli(train_command(*settings, configs=["configs/train.json", kill]), cwd=bundle, check=False)
    assert killed.returncode == 3
    assert (bundle / "eval" / "round_2" / "pseudo_labels.json").is_file()
    finished_round = _digests(bundle / "eval" / "round_1")
    resumed = run_cli(train_command(*settings), cwd=bundle)
    output = resumed.stdout + resumed.stderr
    assert "at epoch 4 of 5" in output and "Epoch: 5/5" in output and "Epoch: 4/5" not in output
    assert "round 1 relabeled" not in output and "round 2 relabeled" not in output  # nothing relabeled again
    assert _digests(bundle / "eval" / "round_1") == finished_round
    assert (bundle / "eval" / "round_2" / "model.pt").is_file() and (bundle / "models" / "model.pt").is_file()


def test_folder_of_a_different_run_is_refused_untouched(relabeled, tiny_ct):
    bundle, _ = relabeled
    before = _digests(bundle / "eval")
    changed = run_cli(
        train_command("--dataset_dir", str(tiny_ct), "--missing_rate", "0.7", *TWO_ROUNDS, "--gamma_max", "0.5",
                      *TINY_OVERRIDES),
        cwd=bundle, check=False,
    )  # fmt: skip
    assert changed.returncode != 0
    assert "holds a different relabeling run" in changed.stderr and "gamma_max: folder 0.9, now 0.5" in changed.stderr
    restart = run_cli(
        train_command("--dataset_dir", str(tiny_ct), "--missing_rate", "0.7", *TWO_ROUNDS, "--resume", "false",
                      *TINY_OVERRIDES),
        cwd=bundle, check=False,
    )  # fmt: skip
    assert restart.returncode != 0 and "already holds a relabeling run" in restart.stderr
    after = _digests(bundle / "eval")  # the refused runs only add their (empty) TensorBoard logs
    assert {path: after.get(path) for path in before} == before


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from (MONAI wraps the error of a component it instantiates)."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


def _parse(bundle, tiny_ct, **overrides):
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(tiny_ct), "num_workers": 0, **overrides})
    return parser.get_parsed_content("train#trainer")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_rounds": 0}, "num_rounds (T) must be >= 1, got 0"),
        ({"gamma_max": 1.5}, "gamma_max must be in (0, 1], got 1.5"),
        ({"gamma_max": 0.0}, "gamma_max must be in (0, 1], got 0.0"),
        ({"selection": "uncertainty", "network_def#dropout": 0.0}, "has no dropout layer with p > 0"),
        ({"selection": "entropy"}, "selection must be one of ('confidence', 'uncertainty')"),
        ({"retrain": "warm"}, "retrain must be one of ('previous', 'scratch')"),
    ],
)
def test_bad_settings_are_explained_before_training(overrides, message, tiny_ct, tmp_path):
    bundle = copy_bundle("smiler", tmp_path)
    with pytest.raises(Exception) as error:
        _parse(bundle, tiny_ct, **overrides)
    chain = _causes(error.value)
    assert any(message in str(e) for e in chain), [str(e) for e in chain]
    assert not (bundle / "eval" / "relabeling_run.json").exists()


def test_training_images_sharing_a_file_name_are_refused(tiny_ct, tmp_path):
    datalist = json.loads((tiny_ct / "dataset.json").read_text())
    copy = tmp_path / "other" / "case_000.nii.gz"
    copy.parent.mkdir()
    copy.write_bytes((tiny_ct / datalist["training"][0]["image"]).read_bytes())
    datalist["training"][1]["image"] = str(copy)
    (tmp_path / "dup.json").write_text(json.dumps(datalist))
    bundle = copy_bundle("smiler", tmp_path)
    with pytest.raises(Exception) as error:
        _parse(bundle, tiny_ct, datalist=str(tmp_path / "dup.json"))
    chain = _causes(error.value)
    assert any(isinstance(e, InvalidInputError) and "share the file name 'case_000.nii.gz'" in str(e) for e in chain)


def test_uncertainty_rounds_from_smile_weights_with_crest(relabeled, tiny_ct, tmp_path):
    trained, _ = relabeled
    bundle = copy_bundle("smiler", tmp_path)
    result = run_cli(
        train_command(
            "--dataset_dir", str(tiny_ct), "--missing_rate", "0.7", "--num_rounds", "1", "--round_epochs", "1",
            "--initial_weights", str(trained / "eval" / "round_0" / "model.pt"), "--selection", "uncertainty",
            "--mc_passes", "3", "--crest_alpha", "0.5", "--retrain", "scratch", "--val_interval", "1",
            *TINY_OVERRIDES,
        ),
        cwd=bundle,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "relabeling starts from" in output and "retrains from freshly initialised weights" in output
    assert not (bundle / "eval" / "round_0").exists()  # no SMILE round: it starts from given weights
    report = json.loads((bundle / "eval" / "round_1" / "pseudo_labels.json").read_text())
    assert report["selection"] == "uncertainty"
    rates = report["class_rates"]
    assert max(rates.values()) == 1.0 and rates["liver"] < rates["pancreas"]  # the rarest organ keeps the most


def test_evaluate_the_relabeled_model_on_the_test_split(relabeled, tiny_ct):
    bundle, _ = relabeled
    command = bundle_command(
        ["configs/inference.json", "configs/evaluate.json"], bundle_root=".",
        overrides=["--dataset_dir", str(tiny_ct), "--output_dir", "test_eval", *TINY_OVERRIDES],
    )  # fmt: skip
    run_cli(command, cwd=bundle)
    metrics = (bundle / "test_eval" / "metrics.csv").read_text()
    assert all(f"val_dice_{organ}" in metrics for organ in ORGANS)


def test_metadata_network_contract_and_torchscript(relabeled, tmp_path):
    bundle, _ = relabeled
    verify_metadata_and_network(bundle)
    assert check_torchscript_export(bundle, tmp_path) == "scripted output matches eager (1, 3, 32, 32, 16)"


def test_torchrun_two_cpu_processes_run_one_round(tiny_ct, tmp_path):
    bundle = copy_bundle("smiler", tmp_path)
    recorder = training_case_recorder(tmp_path / "cases")
    run_cli(
        train_command(
            "--dataset_dir", str(tiny_ct), "--missing_rate", "0.7", "--initial_epochs", "1", "--round_epochs", "1",
            "--num_rounds", "1", "--val_interval", "1", *TINY_OVERRIDES,
            configs=[*TORCHRUN_CONFIGS, recorder], launcher=torchrun(2),
        ),
        cwd=bundle,
    )  # fmt: skip
    report = json.loads((bundle / "eval" / "round_1" / "pseudo_labels.json").read_text())
    datalist = json.loads((tiny_ct / "dataset.json").read_text())
    assert len(report["cases"]) == len(datalist["training"])  # both processes' cases gathered in one report
    # the SMILE epoch and the relabeled round's epoch: each process trained on its own half of the six cases
    cases = [Path(entry["image"]).name for entry in datalist["training"]]
    assert_two_ranks_trained_on_disjoint_halves(tmp_path / "cases", cases, epochs=2)
    assert (bundle / "eval" / "round_1" / "model.pt").is_file() and (bundle / "models" / "model.pt").is_file()
