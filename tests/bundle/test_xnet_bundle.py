"""The XNet bundle run for real: training, evaluation and inference on DICOM/PNG/NIfTI through the CLI, export,
torchrun, and the shipped weights on freshly generated radiographs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from benchmarks.xnet_real import RG1_BODY, RG1_OPEN_BEAM
from common.handlers.checkpoint import load_weights
from common.xnet.metrics import PixelClassificationMetric
from common.xnet.radiograph_io import read_radiograph, write_dicom_cr, write_png
from tests.bundle.conftest import (
    REPO,
    TORCHRUN_CONFIGS,
    assert_two_ranks_trained_on_disjoint_halves,
    check_torchscript_export,
    copy_bundle,
    missing_workflow_properties,
    patch_network_def,
    run_cli,
    training_case_recorder,
    verify_metadata_and_network,
)
from tests.real_radiographs import rg1_path
from tools.bundle_command import bundle_command, torchrun
from tools.synthetic_xray import generate_radiograph, write_xray_dataset

TINY = ["--input_size", "[32,32]", "--min_image_size", "32", "--num_workers", "0", "--batch_size", "2"]
TINY_WIDTHS = [4, 8, 8, 16]
MIN_SHIPPED_F1 = 0.90  # measured 0.926 on these six images (weights 0.2.0)
VALIDATION = re.compile(r"Epoch\[(\d+)\] Metrics -- val_mean_dice: ([-+0-9.eE]+)")
BEST = re.compile(r"Key metric: val_mean_dice best value: ([-+0-9.eE]+) at epoch: (\d+)")


def with_tiny_network(bundle: Path) -> Path:
    """Shrink the network of a bundle copy (same architecture, widths 4-16)."""
    return patch_network_def(bundle, ("train.json", "inference.json"), channels=TINY_WIDTHS)


def train_cli(bundle: Path, dataset: Path, *overrides: str, configs=("configs/train.json",), launcher=()):
    """Train through ``monai.bundle run`` (under ``launcher``, e.g. torchrun, when given)."""
    command = bundle_command(
        configs, bundle_root=".", meta_file="configs/metadata.json", logging_file="configs/logging.conf",
        overrides=["--dataset_dir", str(dataset), *TINY, *overrides], launcher=launcher,
    )  # fmt: skip
    return run_cli(command, cwd=bundle)


def validation_dice(bundle: Path, dataset: Path, state_dict: dict) -> float:
    """``val_mean_dice`` of the weights ``state_dict`` on the validation cases, through the bundle copy's own
    validation evaluator (without its handlers, so nothing is saved)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update(
        {"bundle_root": str(bundle), "dataset_dir": str(dataset), "input_size": [32, 32], "min_image_size": 32,
         "num_workers": 0, "device": "$torch.device('cpu')", "amp": False, "validate#handlers": []}
    )  # fmt: skip
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.network.load_state_dict(state_dict)
    evaluator.run()
    return float(evaluator.state.metrics["val_mean_dice"])


@pytest.fixture(scope="module")
def tiny_xray(tmp_path_factory) -> Path:
    """Ten generated 72×64 radiographs as DICOM CR (6 training, 2 validation, 2 test)."""
    folder = tmp_path_factory.mktemp("tiny_xray")
    write_xray_dataset(folder, num_training=6, num_validation=2, num_test=2, size=(72, 64), seed=3)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_xray):
    """A copy of the bundle (tiny network) trained for two epochs through the CLI."""
    bundle = with_tiny_network(copy_bundle("xnet", tmp_path_factory.mktemp("xnet")))
    return bundle, train_cli(bundle, tiny_xray, "--epochs", "2")


@pytest.mark.parametrize(("workflow_type", "config"), [("train", "train.json"), ("infer", "inference.json")])
def test_workflow_properties_are_complete(workflow_type, config, tiny_xray, tmp_path):
    assert not missing_workflow_properties("xnet", workflow_type, config, tiny_xray, tmp_path)


def test_cli_training_validates_every_epoch_and_keeps_the_best_weights(trained, tiny_xray):
    bundle, result = trained
    log = result.stdout + result.stderr
    per_epoch = {int(epoch): float(value) for epoch, value in VALIDATION.findall(log)}  # logged to 4 decimals
    assert sorted(per_epoch) == [1, 2]  # validated after each epoch
    best_value, best_epoch = BEST.findall(log)[-1]
    best_value, best_epoch = float(best_value), int(best_epoch)
    assert per_epoch[best_epoch] == pytest.approx(max(per_epoch.values()), abs=1e-4)
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert weights["encoder1.0.weight"].shape == (4, 1, 3, 3) and weights["head.weight"].shape[0] == 4
    state = torch.load(bundle / "eval" / "checkpoint_last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * 3 and {"network", "optimizer"} <= set(state)  # 6 cases, batches of 2
    # scored again here, the last epoch's weights give the last validation, models/model.pt the best one; with this
    # seed epoch 1 scores higher than epoch 2, so the last weights written there instead would fail both checks
    assert best_epoch == 1, f"the check needs a last epoch that is not the best: {per_epoch}"
    last = state["network"]
    assert validation_dice(bundle, tiny_xray, last) == pytest.approx(per_epoch[2], abs=1e-4)
    assert validation_dice(bundle, tiny_xray, weights) == pytest.approx(best_value, abs=1e-6)
    assert not all(torch.equal(weights[k], last[k]) for k in weights)


def test_cli_training_resumes(trained, tiny_xray):
    bundle, _ = trained
    train_cli(bundle, tiny_xray, "--epochs", "3")
    state = torch.load(bundle / "eval" / "checkpoint_last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 3 * 3


def test_training_starts_from_initial_weights(trained, tiny_xray, tmp_path):
    trained_bundle, _ = trained
    bundle = with_tiny_network(copy_bundle("xnet", tmp_path))
    initial = torch.load(trained_bundle / "models" / "model.pt", weights_only=True)
    # learning rate 0: the weights that come out are the ones training started from
    train_cli(bundle, tiny_xray, "--epochs", "1", "--learning_rate", "0.0",
              "--initial_weights", str(trained_bundle / "models" / "model.pt"))  # fmt: skip
    final = torch.load(bundle / "eval" / "checkpoint_last.pt", weights_only=True)["network"]
    torch.testing.assert_close(final["encoder1.0.weight"], initial["encoder1.0.weight"])
    torch.testing.assert_close(final["head.weight"], initial["head.weight"])


def test_early_stopping_ends_training_without_improvement(tiny_xray, tmp_path):
    bundle = with_tiny_network(copy_bundle("xnet", tmp_path))
    train_cli(bundle, tiny_xray, "--epochs", "6", "--early_stop_patience", "1", "--early_stop_min_delta", "2.0")
    state = torch.load(bundle / "eval" / "checkpoint_last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * 3  # epoch 2 cannot improve by 2.0 on epoch 1's Dice: stop


def test_k_fold_cross_validation_trains_on_the_other_folds(tiny_xray, tmp_path):
    bundle = with_tiny_network(copy_bundle("xnet", tmp_path))
    train_cli(bundle, tiny_xray, "--epochs", "1", "--num_folds", "4", "--fold", "1")
    state = torch.load(bundle / "eval" / "checkpoint_last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 3  # 8 pooled cases, 6 train in folds 0, 2, 3: three batches of 2


def test_torchrun_two_cpu_processes_train_on_disjoint_halves(tiny_xray, tmp_path):
    bundle = with_tiny_network(copy_bundle("xnet", tmp_path))
    recorder = training_case_recorder(tmp_path / "cases")
    result = train_cli(
        bundle, tiny_xray, "--epochs", "2", configs=[*TORCHRUN_CONFIGS, recorder], launcher=torchrun(2)
    )  # fmt: skip
    training = json.loads((tiny_xray / "dataset.json").read_text())["training"]
    # the class-balanced sampler draws with replacement, each process from its own half of the six cases
    cases = [Path(entry["image"]).name for entry in training]
    assert_two_ranks_trained_on_disjoint_halves(tmp_path / "cases", cases, epochs=2, replacement=True)
    assert (bundle / "models" / "model.pt").is_file()
    assert "val_mean_dice" in result.stdout + result.stderr


def test_calibration_fits_the_temperature_on_validation_and_keeps_the_other_weights(trained, tiny_xray):
    bundle, _ = trained
    before = torch.load(bundle / "models" / "model.pt", weights_only=True)
    run_cli(
        bundle_command(["configs/train.json", "configs/calibrate.json"], meta_file="configs/metadata.json",
                       bundle_root=".", overrides=["--dataset_dir", str(tiny_xray), *TINY]),
        cwd=bundle,
    )  # fmt: skip
    after = torch.load(bundle / "models" / "model.pt", weights_only=True)
    report = json.loads((bundle / "eval" / "temperature.json").read_text())
    assert float(before["temperature"]) == 1.0 and float(after["temperature"]) == pytest.approx(report["temperature"])
    assert report["pixels"] == 2 * 32 * 32 and report["nll_after"] <= report["nll_before"]  # 2 validation images
    assert all(torch.equal(before[name], after[name]) for name in before if name != "temperature")


def test_evaluate_writes_metrics_and_reliability_diagram(trained, tiny_xray):
    bundle, _ = trained
    run_cli(
        bundle_command(["configs/inference.json", "configs/evaluate.json"], meta_file="configs/metadata.json",
                       bundle_root=".", overrides=["--dataset_dir", str(tiny_xray), *TINY]),
        cwd=bundle,
    )  # fmt: skip
    metrics = json.loads((bundle / "eval" / "metrics.json").read_text())
    raw, postprocessed = metrics["predictions"]["raw"], metrics["predictions"]["postprocessed"]
    assert set(raw["f1_per_class"]) == {"open_beam", "soft_tissue", "bone", "collimator"}
    test_pixels = sum(
        read_radiograph(tiny_xray / entry["image"]).array.size
        for entry in json.loads((tiny_xray / "dataset.json").read_text())["test"]
    )
    assert np.sum(raw["confusion_matrix"]) == test_pixels  # scored on the labels' own pixel grid
    for variant in (raw, postprocessed):  # accuracy and F1 as the confusion matrix (rows = truth) gives them
        confusion = np.asarray(variant["confusion_matrix"], dtype=float)
        assert variant["accuracy"] == pytest.approx(np.trace(confusion) / test_pixels)
        truth, predicted, hits = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
        f1 = [2 * tp / (t + p) if t > 0 else None for tp, t, p in zip(hits, truth, predicted, strict=True)]
        assert list(variant["f1_per_class"].values()) == pytest.approx(f1)
    # ECE from the written reliability table: the bins' |accuracy - confidence| weighted by their pixel share, the
    # bins' accuracies averaging to the raw (argmax) accuracy
    bins = [row for row in metrics["probabilities"]["reliability"] if row["count"] > 0]
    assert sum(row["count"] for row in bins) == test_pixels
    shares = [row["count"] / test_pixels for row in bins]
    gaps = [abs(row["accuracy"] - row["confidence"]) for row in bins]
    assert metrics["probabilities"]["ece"] == pytest.approx(float(np.dot(shares, gaps)))
    assert float(np.dot(shares, [row["accuracy"] for row in bins])) == pytest.approx(raw["accuracy"])
    assert (bundle / "eval" / "reliability_diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory) -> dict[str, Path]:
    """One 72×56 phantom written as DICOM MONOCHROME1 (with rescale), PNG and NIfTI, in one folder."""
    folder = tmp_path_factory.mktemp("radiographs")
    sample = generate_radiograph(np.random.default_rng(7), size=(72, 56))
    pixels = sample.image.astype(np.uint16)  # already the quantised displayed values
    write_dicom_cr(folder / "mono1.dcm", (2**sample.bits_stored - 1) - pixels, photometric="MONOCHROME1",
                   bits_stored=sample.bits_stored, pixel_spacing=(0.3, 0.2), rescale_slope=2.0,
                   rescale_intercept=-10.0)  # fmt: skip
    write_png(folder / "plain.png", pixels, bit_depth=16)
    nib.save(nib.Nifti1Image(pixels.astype(np.float32), np.diag([0.5, 0.4, 1.0, 1.0])), folder / "volume2d.nii.gz")
    return {"mono1.dcm": folder / "mono1.dcm", "plain.png": folder / "plain.png", "nifti": folder / "volume2d.nii.gz"}


def test_inference_on_dicom_png_and_nifti_keeps_each_input_grid(trained, radiographs, tmp_path):
    bundle, _ = trained
    run_cli(
        bundle_command(
            "configs/inference.json", meta_file="configs/metadata.json", bundle_root=".",
            overrides=["--input_dir", str(radiographs["plain.png"].parent), "--output_dir", str(tmp_path),
                       "--save_probabilities", "true", *TINY],
        ),
        cwd=bundle,
    )  # fmt: skip
    expected = {"mono1": np.diag([0.3, 0.2, 1.0, 1.0]), "plain": np.eye(4), "volume2d": np.diag([0.5, 0.4, 1.0, 1.0])}
    for stem, affine in expected.items():
        mask = nib.load(tmp_path / f"{stem}_seg.nii.gz")
        assert mask.shape[:2] == (72, 56), stem
        np.testing.assert_allclose(mask.affine, affine, err_msg=stem)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 3}
        probabilities = np.asarray(nib.load(tmp_path / f"{stem}_prob.nii.gz").dataobj)
        assert probabilities.shape == (72, 56, 1, 4), stem  # NIfTI: the classes on the fourth axis
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-4)


def test_volume_given_to_the_2d_bundle_is_refused_and_nothing_written(trained, tmp_path):
    bundle, _ = trained
    volume = tmp_path / "inputs" / "ct.nii.gz"
    volume.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 5), np.float32), np.eye(4)), volume)
    result = run_cli(
        bundle_command(
            "configs/inference.json", meta_file="configs/metadata.json", bundle_root=".",
            overrides=["--input_dir", str(volume.parent), "--output_dir", str(tmp_path / "out"), *TINY],
        ),
        cwd=bundle, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "ct.nii.gz: array of shape (64, 64, 5) is not a 2D radiograph" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_metadata_and_network_contract(trained):
    verify_metadata_and_network(trained[0])


def test_torchscript_export_loads_without_common(trained, tmp_path):
    assert "matches eager" in check_torchscript_export(trained[0], tmp_path, sample_shape=(1, 1, 32, 32))


def test_shipped_weights_segment_new_generated_radiographs(tmp_path):
    """The committed weights on six radiographs generated with a seed the training set never used, read as PNG."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "xnet" / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    load_weights(network, REPO / "bundles" / "xnet" / "models" / "model.pt")
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    metric = PixelClassificationMetric(num_classes=4)
    rng = np.random.default_rng(2026)
    for index in range(6):
        sample = generate_radiograph(rng, size=(256, 256))
        write_png(tmp_path / f"xr_{index}.png", sample.image.astype(np.uint16), bit_depth=16)
        image = preprocessing({"image": str(tmp_path / f"xr_{index}.png")})["image"]
        with torch.no_grad():
            probabilities = torch.softmax(network(image[None]), dim=1)
        probabilities = torch.nn.functional.interpolate(probabilities, size=(256, 256), mode="bilinear")
        metric.update(probabilities, torch.as_tensor(sample.label)[None, None])
    assert metric.aggregate()["f1_macro"] >= MIN_SHIPPED_F1


def test_shipped_weights_on_the_real_chest_radiograph_rg1(tmp_path_factory, tmp_path):
    """The committed weights through the CLI on RG1 (pydicom-data; skipped without it): mostly open beam where the
    beam reached the detector directly, body (soft tissue or bone, never open beam) over the lungs and the spine, and
    little open beam or collimator over all (the body fills the film). A negative of the image fails all of these."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "RG1.dcm").symlink_to(rg1_path(tmp_path_factory))
    bundle = REPO / "bundles" / "xnet"
    run_cli(bundle_command(bundle / "configs" / "inference.json", bundle_root=bundle,
                           overrides={"input_dir": inputs, "output_dir": tmp_path / "masks"}))  # fmt: skip
    mask = np.rint(read_radiograph(tmp_path / "masks" / "RG1_seg.nii.gz").array).astype(int)
    assert mask.shape == (1955, 1841)
    for region, box in RG1_OPEN_BEAM.items():
        assert (mask[box] == 0).mean() >= 0.9, region
    for region, box in RG1_BODY.items():
        assert np.isin(mask[box], (1, 2)).mean() >= 0.95, region
    assert (mask == 0).mean() < 0.1 and (mask == 3).mean() < 0.1  # the body fills the film
