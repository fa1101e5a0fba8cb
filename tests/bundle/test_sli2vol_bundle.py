"""The Sli2Vol bundle run for real: self-supervised training, propagation and evaluation through the CLI, export."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundle.conftest import (
    REPO,
    check_torchscript_export,
    copy_bundle,
    missing_workflow_properties,
    patch_network_def,
    run_cli,
    verify_metadata_and_network,
)

CT = ["--modality", "CT", "--ct_window", "[-200,300]"]
TINY_TRAIN = ["--crop_size", "[24,24]", "--pairs_per_volume", "2", "--num_workers", "0", *CT]


def with_tiny_network(bundle: Path) -> Path:
    """Shrink the network of every config of a bundle copy (same architecture, widths 4 and 8)."""
    return patch_network_def(
        bundle, ("train.json", "inference.json", "evaluate.json"), channels=[4, 8], feature_channels=8
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_ct):
    """A copy of the bundle (tiny network) trained for two epochs on the tiny CT images (labels unused)."""
    bundle = with_tiny_network(copy_bundle("sli2vol", tmp_path_factory.mktemp("sli2vol")))
    result = run_cli(
        "run", "--config_file", "configs/train.json", "--meta_file", "configs/metadata.json",
        "--logging_file", "configs/logging.conf", "--bundle_root", ".", "--dataset_dir", str(tiny_ct),
        "--datalist", str(tiny_ct / "dataset.json"), "--epochs", "2", *TINY_TRAIN, cwd=bundle,
    )  # fmt: skip
    return bundle, result


@pytest.fixture(scope="module")
def one_slice_annotation(tmp_path_factory, tiny_ct):
    """(image, annotation, ground truth) of a tiny test case; the annotation keeps the largest labelled slice."""
    entry = json.loads((tiny_ct / "dataset.json").read_text())["test"][0]
    image, truth = tiny_ct / entry["image"], tiny_ct / entry["label"]
    label = nib.load(truth)
    data = np.asarray(label.dataobj)
    index = int(np.argmax((data > 0).sum(axis=(0, 1))))
    annotation = np.zeros_like(data)
    annotation[..., index] = data[..., index]
    path = tmp_path_factory.mktemp("annotation") / "annotation.nii.gz"
    nib.save(nib.Nifti1Image(annotation, label.affine, label.header), path)
    return image, path, truth


@pytest.mark.parametrize(("workflow_type", "config"), [("train", "train.json"), ("infer", "inference.json")])
def test_workflow_properties_are_complete(workflow_type, config, tiny_ct, tmp_path):
    assert not missing_workflow_properties("sli2vol", workflow_type, config, tiny_ct, tmp_path)


def test_cli_training_learns_to_reconstruct_and_writes_flat_weights(trained):
    bundle, result = trained
    losses = [float(line.rsplit(":", 1)[1]) for line in result.stdout.splitlines() if "train_loss:" in line]
    assert len(losses) == 2 * 6  # six training volumes, one batch of pairs each, two epochs
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert weights["encoder.layers.0.weight"].shape[1] == 48  # the edge profile's 48 channels feed the stem
    state = torch.load(bundle / "eval" / "checkpoint_last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * 6 and {"network", "optimizer"} <= set(state)


def test_cli_training_resumes(trained, tiny_ct):
    bundle, _ = trained
    result = run_cli(
        "run", "--config_file", "configs/train.json", "--bundle_root", ".", "--dataset_dir", str(tiny_ct),
        "--datalist", str(tiny_ct / "dataset.json"), "--epochs", "3", *TINY_TRAIN, cwd=bundle,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "at epoch 2 of 3" in output and "Epoch: 1/3" not in output and "Epoch: 3/3" in output


def test_metadata_and_network_contract(trained):
    bundle, _ = trained
    verify_metadata_and_network(bundle)


def test_torchscript_export_keeps_encode_and_propagate(trained, tmp_path):
    bundle, _ = trained
    report = check_torchscript_export(bundle, tmp_path, sample_shape=(2, 3, 20, 24), methods=("encode", "propagate"))
    assert "scripted output matches eager (2, 1, 20, 24)" in report


def test_cli_propagation_writes_a_mask_on_the_input_grid(trained, one_slice_annotation, tmp_path):
    bundle, _ = trained
    image, annotation, _ = one_slice_annotation
    annotation_bytes = annotation.read_bytes()
    run_cli(
        "run", "--config_file", "configs/inference.json", "--bundle_root", ".", "--image", str(image),
        "--label", str(annotation), "--output_dir", str(tmp_path / "out"), *CT, cwd=bundle,
    )  # fmt: skip
    outputs = list((tmp_path / "out").glob("*_propagated.nii.gz"))
    assert len(outputs) == 1
    written, source, seed = nib.load(outputs[0]), nib.load(image), np.asarray(nib.load(annotation).dataobj)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    result = np.asarray(written.dataobj)
    index = int(np.argmax((seed > 0).sum(axis=(0, 1))))
    np.testing.assert_array_equal(result[..., index], seed[..., index])  # the annotated slice is kept as drawn
    assert set(np.unique(result)) <= set(np.unique(seed))
    assert annotation.read_bytes() == annotation_bytes  # the user's annotation is untouched


def test_cli_propagation_refuses_annotations_on_several_slices(trained, one_slice_annotation, tmp_path):
    bundle, _ = trained
    image, _, truth = one_slice_annotation
    result = run_cli(
        "run", "--config_file", "configs/inference.json", "--bundle_root", ".", "--image", str(image),
        "--label", str(truth), "--output_dir", str(tmp_path / "out"), *CT, cwd=bundle, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert str(truth) in result.stderr and "seed_slice" in result.stderr and "slices along axis 2" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_evaluate_reports_dice_per_case(trained, tiny_ct):
    bundle, _ = trained
    run_cli(
        "run", "--config_file", "configs/evaluate.json", "--bundle_root", ".", "--dataset_dir", str(tiny_ct),
        "--datalist", str(tiny_ct / "dataset.json"), "--num_classes", "3", *CT, cwd=bundle,
    )  # fmt: skip
    per_case = (bundle / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(per_case) == 1 + 2  # header + the two validation cases
    dice = [float(value) for line in per_case[1:] for value in line.split(",")[1:] if value != "nan"]
    assert dice and all(0.0 <= value <= 1.0 for value in dice)


LA_HEART = REPO / ".." / "shared" / "data" / "la_heart"
SHIPPED = REPO / "bundles" / "sli2vol" / "models" / "model.pt"
MIN_LA_DICE = 0.75  # this volume measured 0.819 with the shipped weights (bundle README benchmark)
LA_HELD_OUT = "06SR5RBREL16DQ6M8LWS"  # held out from the shipped weights' training (benchmark split, seed 0)


@pytest.mark.skipif(not (LA_HEART / "datalist.json").is_file(), reason="the LA development MRI is not here")
def test_shipped_weights_propagate_a_held_out_la_volume(tmp_path):
    datalist = tmp_path / "one.json"
    case = {"image": f"{LA_HELD_OUT}_image.nii.gz", "label": f"{LA_HELD_OUT}_label.nii.gz"}
    datalist.write_text(json.dumps({"validation": [case]}))
    bundle = REPO / "bundles" / "sli2vol"
    run_cli(
        "run", "--config_file", "configs/evaluate.json", "--bundle_root", ".", "--dataset_dir", str(LA_HEART),
        "--datalist", str(datalist), "--ckpt_path", str(SHIPPED), "--output_dir", str(tmp_path / "eval"), cwd=bundle,
    )  # fmt: skip
    dice = float((tmp_path / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()[1].split(",")[1])
    assert dice > MIN_LA_DICE
