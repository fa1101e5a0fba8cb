"""The SMILE bundle run for real: ConfigWorkflow properties, the monai.bundle CLI, export, torchrun."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundle.conftest import (
    REPO,
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

CONFIGS = REPO / "bundles" / "smile" / "configs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_ct):
    """A copy of the bundle trained for two epochs through the CLI; returns (bundle folder, CLI result)."""
    bundle = copy_bundle("smile", tmp_path_factory.mktemp("smile"))
    command = bundle_command(
        "configs/train.json", meta_file="configs/metadata.json", logging_file="configs/logging.conf", bundle_root=".",
        overrides=["--dataset_dir", str(tiny_ct), "--epochs", "2", "--val_interval", "1", *TINY_OVERRIDES],
    )  # fmt: skip
    return bundle, run_cli(command, cwd=bundle)


@pytest.mark.parametrize(("workflow_type", "config"), [("train", "train.json"), ("infer", "inference.json")])
def test_workflow_properties_are_complete(workflow_type, config, tiny_ct, tmp_path):
    assert not missing_workflow_properties("smile", workflow_type, config, tiny_ct, tmp_path)


def test_cli_training_writes_flat_weights_and_resume_state(trained):
    bundle, result = trained
    assert "val_dice_pancreas" in result.stdout and "val_mean_dice" in result.stdout
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in weights.values())
    assert weights["model.2.1.conv.unit0.conv.bias"].shape[0] == 3  # K sigmoid heads
    state = torch.load(bundle / "eval" / "checkpoint_last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"] and set(state) >= {
        "network",
        "optimizer",
        "lr_scheduler",
    }


def test_cli_resumes_from_the_last_checkpoint(trained, tiny_ct):
    bundle, _ = trained
    command = bundle_command(
        "configs/train.json", bundle_root=".",
        overrides=["--dataset_dir", str(tiny_ct), "--epochs", "3", "--val_interval", "1", *TINY_OVERRIDES],
    )  # fmt: skip
    result = run_cli(command, cwd=bundle)
    output = result.stdout + result.stderr
    assert "resumed from" in output and "at epoch 2 of 3" in output
    assert "Epoch: 1/3" not in output and "Epoch: 3/3" in output


def test_cli_evaluate_reports_dice_per_organ(trained, tiny_ct):
    bundle, _ = trained
    command = bundle_command(
        ["configs/inference.json", "configs/evaluate.json"], bundle_root=".",
        overrides=["--dataset_dir", str(tiny_ct), *TINY_OVERRIDES],
    )  # fmt: skip
    run_cli(command, cwd=bundle)
    metrics = (bundle / "eval" / "metrics.csv").read_text()
    for organ in ("liver", "pancreas", "stomach"):
        assert f"val_dice_{organ}" in metrics
    per_case = (bundle / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(per_case) == 1 + 2  # header + the two test cases


def test_cli_inference_on_a_folder_keeps_geometry(trained, tiny_ct, tmp_path):
    bundle, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    for name in ("case_008.nii.gz", "case_009.nii.gz"):
        (images / name).write_bytes((tiny_ct / "imagesTr" / name).read_bytes())
    output = tmp_path / "predictions"
    command = bundle_command(
        "configs/inference.json", meta_file="configs/metadata.json", logging_file="configs/logging.conf",
        bundle_root=".", overrides={"input_dir": images, "output_dir": output, "patch_size": [32, 32, 16]},
    )  # fmt: skip
    run_cli(command, cwd=bundle)
    for name in ("case_008", "case_009"):
        source, prediction = nib.load(images / f"{name}.nii.gz"), nib.load(output / f"{name}_seg.nii.gz")
        assert prediction.shape == source.shape
        np.testing.assert_allclose(prediction.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}


def test_inference_with_checkpoint_of_another_architecture_is_explained(trained, tiny_ct, tmp_path):
    bundle, _ = trained
    foreign = tmp_path / "foreign.pt"
    torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), foreign)
    command = bundle_command(
        "configs/inference.json", bundle_root=".",
        overrides={"dataset_dir": tiny_ct, "ckpt_path": foreign, "output_dir": tmp_path},
    )  # fmt: skip
    result = run_cli(command, cwd=bundle, check=False)
    assert result.returncode != 0
    assert "foreign.pt does not fit the network UNet: missing tensors" in result.stderr


def test_training_datalist_with_missing_file_is_explained(tiny_ct, tmp_path):
    bundle = copy_bundle("smile", tmp_path)
    datalist = json.loads((tiny_ct / "dataset.json").read_text())
    datalist["training"][1]["label"] = "labelsTr/absent.nii.gz"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(datalist))
    command = bundle_command(
        "configs/train.json", bundle_root=".",
        overrides=["--dataset_dir", str(tiny_ct), "--datalist", str(broken), "--epochs", "1", *TINY_OVERRIDES],
    )  # fmt: skip
    result = run_cli(command, cwd=bundle, check=False)
    assert result.returncode != 0
    assert "broken.json ('training'): entry 1: label file" in result.stderr and "absent.nii.gz does not exist" in (
        result.stderr
    )


def test_baseline_overlay_trains_a_softmax_network(tiny_ct, tmp_path):
    bundle = copy_bundle("smile", tmp_path)
    command = bundle_command(
        ["configs/train.json", "configs/train_baseline.json"], bundle_root=".",
        overrides=["--dataset_dir", str(tiny_ct), "--epochs", "1", "--val_interval", "1", *TINY_OVERRIDES],
    )  # fmt: skip
    run_cli(command, cwd=bundle)
    weights = torch.load(bundle / "models" / "baseline" / "model.pt", weights_only=True)
    assert weights["model.2.1.conv.unit0.conv.bias"].shape[0] == 4  # background + K classes
    assert not (bundle / "models" / "model.pt").exists()


def test_metadata_and_network_contract(tmp_path):
    bundle = copy_bundle("smile", tmp_path)
    verify_metadata_and_network(bundle)


def test_torchscript_export_runs_without_this_package(trained, tmp_path):
    bundle, _ = trained
    assert check_torchscript_export(bundle, tmp_path) == "scripted output matches eager (1, 3, 32, 32, 16)"


def test_torchrun_two_cpu_processes_train_on_disjoint_halves(tiny_ct, tmp_path):
    bundle = copy_bundle("smile", tmp_path)
    recorder = training_case_recorder(tmp_path / "cases")
    command = bundle_command(
        [*TORCHRUN_CONFIGS, recorder], bundle_root=".", launcher=torchrun(2),
        overrides=["--dataset_dir", str(tiny_ct), "--epochs", "2", "--val_interval", "1", *TINY_OVERRIDES],
    )  # fmt: skip
    result = run_cli(command, cwd=bundle)
    cases = [Path(entry["image"]).name for entry in json.loads((tiny_ct / "dataset.json").read_text())["training"]]
    assert_two_ranks_trained_on_disjoint_halves(tmp_path / "cases", cases, epochs=2)  # reshuffled each epoch
    assert (bundle / "models" / "model.pt").is_file()
    assert "val_mean_dice" in result.stdout + result.stderr


TRAIN_LOSS = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/(\d+) -- train_loss: ([-+0-9.eE]+)")
VALIDATION = re.compile(r"Epoch\[(\d+)\] Metrics -- (.+)")


def test_mlflow_tracking_records_the_losses_validation_and_parameters(tiny_ct, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    bundle = copy_bundle("smile", tmp_path)
    command = bundle_command(
        "configs/train.json", meta_file="configs/metadata.json", bundle_root=".",
        overrides=["--dataset_dir", str(tiny_ct), "--epochs", "2", "--val_interval", "1", "--tracking", "mlflow",
                   *TINY_OVERRIDES],
    )  # fmt: skip
    log = run_cli(command, cwd=bundle).stdout
    losses = {(int(e) - 1) * int(length) + int(i): float(loss) for e, i, length, loss in TRAIN_LOSS.findall(log)}
    epoch_length = len(losses) // 2
    assert sorted(losses) == list(range(1, 2 * epoch_length + 1)) and epoch_length > 0
    validation = {
        int(epoch): {name: float(value) for name, value in re.findall(r"(\w+): ([-+0-9.eE]+)", line)}
        for epoch, line in VALIDATION.findall(log)
    }
    assert sorted(validation) == [1, 2] and {"val_mean_dice", "val_dice_liver"} <= set(validation[1])

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{bundle / 'eval' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("monai_experiment")
    (run,) = client.search_runs([experiment.experiment_id])  # the trainer's and the validator's handler share it
    assert run.info.status == "FINISHED"
    assert run.data.params["max_epochs"] == "2" and run.data.params["epoch_length"] == str(epoch_length)
    tracked = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert sorted(tracked) == sorted(losses)  # every iteration, at its step
    assert all(tracked[step] == pytest.approx(losses[step], abs=5e-5) for step in losses)  # the log rounds to 4
    for name in validation[1]:  # every validation metric, after each epoch
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert sorted(history) == [1, 2], name
        assert all(history[epoch] == pytest.approx(validation[epoch][name], abs=5e-5) for epoch in (1, 2)), name


def _single_organ_dataset(tiny_ct, folder, cases, organ_value):
    """An MSD-style dataset whose labels keep one organ of the tiny set, relabelled 1 as in a single-organ task."""
    entries = []
    for index, case in enumerate(cases):
        source = json.loads((tiny_ct / "dataset.json").read_text())["training"][case]
        label = nib.load(tiny_ct / source["label"])
        single = (np.asarray(label.dataobj) == organ_value).astype(np.uint8)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(single, label.affine), folder / "labelsTr" / f"{folder.name}_{index}.nii.gz")
        entries.append({"image": str(tiny_ct / source["image"]), "label": f"labelsTr/{folder.name}_{index}.nii.gz"})
    (folder / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}, "training": entries}))
    return folder / "dataset.json"


def test_training_on_merged_single_organ_datasets(tiny_ct, tmp_path):
    bundle = copy_bundle("smile", tmp_path)
    liver = _single_organ_dataset(tiny_ct, tmp_path / "Task_Liver", [0, 1, 2], organ_value=1)
    pancreas = _single_organ_dataset(tiny_ct, tmp_path / "Task_Pancreas", [3, 4, 5], organ_value=2)
    merged = tmp_path / "merged" / "dataset.json"
    run_cli(
        [sys.executable, "-m", "common.smile.partial_datalist", "--classes", "liver", "pancreas", "stomach",
         "--source", str(liver), "1=liver", "--source", str(pancreas), "1=pancreas", "--output", str(merged)],
    )  # fmt: skip
    entries = json.loads(merged.read_text())["training"]
    assert [e["annotated_classes"] for e in entries] == [[1]] * 3 + [[2]] * 3
    command = bundle_command(
        "configs/train.json", bundle_root=".",
        overrides=["--dataset_dir", str(merged.parent), "--datalist", str(merged), "--validate#dataset#data",
                   f"$common.data.datalist.load_datalist('{tiny_ct / 'dataset.json'}', None, 'validation', 3)",
                   "--epochs", "1", "--val_interval", "1", *TINY_OVERRIDES],
    )  # fmt: skip
    result = run_cli(command, cwd=bundle)
    assert "val_dice_stomach" in result.stdout
    assert (bundle / "models" / "model.pt").is_file()
