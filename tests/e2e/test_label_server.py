"""End to end: a real MONAI Label server on 127.0.0.1 serving the bundles, driven over HTTP.

The server runs in MONAI Label's own environment (``make label-env``); ``make test`` names its python in
``LABEL_SERVER_PYTHON``. The bundles are served from working copies in a temporary folder, so neither the
repository's bundles nor the user's MONAI Label state are touched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from lib.server_process import LabelServerProcess

from common.xnet.radiograph_io import read_radiograph
from tools.results import binary_dice
from tools.synthetic_ct import generate_synthetic_ct
from tools.synthetic_xray import write_xray_dataset

REPO = Path(__file__).resolve().parents[2]
LIVER = 1


def _label_server_python() -> Path:
    python = os.environ.get("LABEL_SERVER_PYTHON")
    if not python:
        pytest.skip("LABEL_SERVER_PYTHON is not set: run `make test` (it builds MONAI Label's environment)")
    python = Path(python)
    if not python.is_absolute():
        python = REPO / python
    assert python.exists(), f"LABEL_SERVER_PYTHON={python} does not exist; run `make label-env`"
    return python


class Server:
    """The server under test and the HTTP calls the tests make."""

    def __init__(self, process: LabelServerProcess, model_dir: Path) -> None:
        self.process, self.url, self.model_dir = process, process.url, model_dir

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=300, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=600, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return requests.put(self.url + path, timeout=300, **kwargs)

    def log_tail(self) -> str:
        return self.process.log_tail()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A studies folder (3 CT volumes, 1 DICOM radiograph) and the true labels kept outside it."""
    root = tmp_path_factory.mktemp("label_server_data")
    studies, truth = root / "studies", root / "truth"
    studies.mkdir()
    truth.mkdir()
    ct = root / "ct"
    generate_synthetic_ct(ct, num_cases=3, shape=(64, 64, 32), spacing=(2.0, 2.0, 2.5), num_validation=1, num_test=1)
    for index in range(3):
        shutil.copy(ct / "imagesTr" / f"case_{index:03d}.nii.gz", studies / f"ct_{index:03d}.nii.gz")
        shutil.copy(ct / "labelsTr" / f"case_{index:03d}.nii.gz", truth / f"ct_{index:03d}.nii.gz")
    xray = root / "xray"
    write_xray_dataset(xray, num_training=1, num_validation=0, num_test=0, size=(192, 160), seed=3)
    shutil.copy(xray / "images" / "xr_000.dcm", studies / "xr_000.dcm")
    shutil.copy(xray / "labels" / "xr_000.png", truth / "xr_000.png")
    return {"root": root, "studies": studies, "truth": truth}


@pytest.fixture(scope="module")
def server(data) -> Server:
    """Start the app on a free port of 127.0.0.1; stop it by its process id afterwards."""
    root, model_dir = data["root"], data["root"] / "working_copies"
    env = {"MONAI_LABEL_SESSION_PATH": str(root / "sessions"), "OMP_NUM_THREADS": "2"}
    process = LabelServerProcess.start(
        _label_server_python(), data["studies"], root / "server.log", conf={"model_dir": str(model_dir)}, env=env
    )
    try:
        yield Server(process, model_dir)
    finally:
        process.stop()


def _nifti(response: requests.Response, path: Path, server: Server) -> nib.Nifti1Image:
    assert response.status_code == 200, f"{response.text[:2000]}\n{server.log_tail()}"
    path.write_bytes(response.content)
    return nib.load(path)


def _one_slice(label: np.ndarray, value: int, axis: int, new_value: int) -> tuple[np.ndarray, int]:
    """A label map holding only the largest slice (along ``axis``) of structure ``value``, as ``new_value``."""
    mask = label == value
    areas = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    index = int(np.argmax(areas))
    drawn = np.zeros(label.shape, dtype=np.uint8)
    selector = [slice(None)] * 3
    selector[axis] = index
    drawn[tuple(selector)] = mask[tuple(selector)] * new_value
    return drawn, index


def _save_like(array: np.ndarray, reference: Path, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, nib.load(reference).affine), path)
    return path


def test_info_lists_every_bundle_with_its_labels_and_task_type(server):
    info = server.get("/info/").json()
    models = info["models"]
    assert set(models) == {"smile", "smiler", "sli2vol", "xnet"}
    assert models["smile"]["labels"] == {"liver": 1, "pancreas": 2, "stomach": 3}
    assert models["smiler"]["labels"] == {"liver": 1, "pancreas": 2, "stomach": 3}
    assert models["xnet"]["labels"] == {"open_beam": 0, "soft_tissue": 1, "bone": 2, "collimator": 3}
    assert models["xnet"]["dimension"] == 2 and models["smile"]["dimension"] == 3
    assert models["sli2vol"]["type"] == "scribbles" and models["sli2vol"]["dimension"] == 3
    assert models["sli2vol"]["labels"] == {}, "Sli2Vol returns the drawn values; it has no fixed classes"
    assert models["sli2vol"]["config"]["modality"] == "MRI"
    assert not {"axis", "seed_slice", "seeds"} & set(models["sli2vol"]["config"]), "set from the drawing"
    assert models["xnet"]["config"]["bone_opening_size"] == 3 and "use_click" not in models["xnet"]["config"]
    assert models["smile"]["type"] == "segmentation"
    assert set(info["trainers"]) == {"smile", "smiler", "sli2vol", "xnet"}
    assert "round_epochs" in info["trainers"]["smiler"]["config"]
    assert info["datastore"]["total"] == 4


def test_xnet_segments_a_dicom_radiograph(server, data, tmp_path):
    response = server.post("/infer/xnet?image=xr_000&output=image")
    result = _nifti(response, tmp_path / "xr_000_seg.nii.gz", server)
    image = read_radiograph(data["studies"] / "xr_000.dcm")
    prediction = np.squeeze(np.asarray(result.dataobj))
    truth = np.asarray(read_radiograph(data["truth"] / "xr_000.png").array)
    assert prediction.shape == image.array.shape == truth.shape
    assert result.get_data_dtype() == np.uint8
    np.testing.assert_allclose(np.abs(np.diag(result.affine))[:2], np.abs(np.diag(image.affine))[:2], rtol=1e-4)
    assert set(np.unique(prediction)) <= {0, 1, 2, 3}
    accuracy = float((prediction == truth).mean())
    assert accuracy > 0.85, f"pixel accuracy {accuracy:.3f} against the generated truth"


def test_sli2vol_propagates_one_drawn_slice_through_the_volume(server, data, tmp_path):
    image, truth_file = data["studies"] / "ct_001.nii.gz", data["truth"] / "ct_001.nii.gz"
    truth = np.asarray(nib.load(truth_file).dataobj)
    drawn, index = _one_slice(truth, LIVER, axis=2, new_value=5)
    upload = _save_like(drawn, truth_file, tmp_path / "drawn.nii.gz")
    with upload.open("rb") as label:
        params = json.dumps({"modality": "CT"})
        response = server.post(
            "/infer/sli2vol?image=ct_001&output=image", files={"label": label}, data={"params": params}
        )
    result = _nifti(response, tmp_path / "propagated.nii.gz", server)
    mask = np.asarray(result.dataobj)
    assert mask.shape == truth.shape
    np.testing.assert_allclose(result.affine, nib.load(image).affine, atol=1e-4)
    assert set(np.unique(mask)) == {0, 5}
    np.testing.assert_array_equal(mask[..., index], drawn[..., index])
    assert (mask.reshape(-1, mask.shape[2]).any(axis=0)).sum() >= 3, "the mask should reach beyond the drawn slice"
    dice = binary_dice(mask == 5, truth == LIVER)
    assert dice > 0.75, f"Dice {dice:.3f} of the propagated liver (CT intensity scaling)"


def test_sli2vol_takes_a_slicer_scribbles_request_drawn_in_another_view(server, data, tmp_path):
    truth_file = data["truth"] / "ct_002.nii.gz"
    truth = np.asarray(nib.load(truth_file).dataobj)
    drawn, index = _one_slice(truth, LIVER, axis=0, new_value=2)  # painted as foreground scribbles
    drawn[0, 0, 0] = 1  # a background scribble elsewhere, ignored
    upload = _save_like(drawn, truth_file, tmp_path / "scribbles.nii.gz")
    segments = [{"name": "background_scribbles", "id": 1}, {"name": "foreground_scribbles", "id": 2}]
    params = {"label_info": [*segments, {"name": "liver", "id": 3}], "selected_label_name": "liver"}
    params.update(result_extension=".nii.gz", result_dtype="uint8")
    with upload.open("rb") as label:
        response = server.post(
            "/infer/sli2vol?image=ct_002&output=image", files={"label": label}, data={"params": json.dumps(params)}
        )
    mask = np.asarray(_nifti(response, tmp_path / "propagated.nii.gz", server).dataobj)
    assert set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask[index], drawn[index] == 2)
    assert mask.any(axis=(1, 2)).sum() >= 3, "propagated across sagittal slices (axis 0)"
    dice = binary_dice(mask == 1, truth == LIVER)
    assert dice > 0.6, f"Dice {dice:.3f} of the liver propagated across sagittal slices"


def _slices(
    label: np.ndarray, value: int, axis: int, positions: list[float], new_value: int
) -> tuple[np.ndarray, list]:
    """A label map holding structure ``value`` only on the slices at ``positions`` of its extent along ``axis``."""
    labelled = np.flatnonzero((label == value).any(axis=tuple(a for a in range(3) if a != axis)))
    indices = sorted({round(labelled[0] + p * (labelled[-1] - labelled[0])) for p in positions})
    drawn = np.zeros(label.shape, dtype=np.uint8)
    selector: list = [slice(None)] * 3
    selector[axis] = indices
    drawn[tuple(selector)] = (label[tuple(selector)] == value) * new_value
    return drawn, indices


def test_sli2vol_propagates_from_several_drawn_slices(server, data, tmp_path):
    """Three axial slices painted into the target segment in 3D Slicer: every drawn slice is a seed."""
    truth_file = data["truth"] / "ct_000.nii.gz"
    truth = np.asarray(nib.load(truth_file).dataobj)
    one_slice, _ = _one_slice(truth, LIVER, axis=2, new_value=1)
    with _save_like(one_slice, truth_file, tmp_path / "one.nii.gz").open("rb") as label:
        params = json.dumps({"modality": "CT"})
        response = server.post(
            "/infer/sli2vol?image=ct_000&output=image", files={"label": label}, data={"params": params}
        )
    one_slice_dice = binary_dice(
        np.asarray(_nifti(response, tmp_path / "one_out.nii.gz", server).dataobj) == 1, truth == 1
    )

    drawn, indices = _slices(truth, LIVER, axis=2, positions=[0.2, 0.5, 0.8], new_value=3)  # the liver segment
    assert len(indices) == 3 and min(np.diff(indices)) > 1, indices
    drawn[5, 5, indices[1]] = 1  # a background scribble, ignored
    segments = [{"name": "background_scribbles", "id": 1}, {"name": "foreground_scribbles", "id": 2}]
    params = {"label_info": [*segments, {"name": "liver", "id": 3}], "selected_label_name": "liver", "modality": "CT"}
    with _save_like(drawn, truth_file, tmp_path / "three.nii.gz").open("rb") as label:
        response = server.post(
            "/infer/sli2vol?image=ct_000&output=image", files={"label": label}, data={"params": json.dumps(params)}
        )
    mask = np.asarray(_nifti(response, tmp_path / "three_out.nii.gz", server).dataobj)
    assert mask.shape == truth.shape and set(np.unique(mask)) == {0, 1}
    for index in indices:
        np.testing.assert_array_equal(mask[..., index], drawn[..., index] == 3, err_msg=f"drawn slice {index}")
    dice = binary_dice(mask == 1, truth == LIVER)
    assert dice >= one_slice_dice - 0.02, f"Dice {dice:.3f} from 3 slices, {one_slice_dice:.3f} from one"
    assert dice > 0.75, f"Dice {dice:.3f} of the liver propagated from 3 slices"


def _detail(response: requests.Response) -> str:
    return str(response.json().get("detail"))


def test_bad_requests_get_clear_client_errors(server, data, tmp_path):
    response = server.post("/infer/no_such_model?image=ct_000")
    assert response.status_code == 404 and "unknown model 'no_such_model'" in _detail(response)

    response = server.post("/infer/sli2vol?image=ct_000&output=image")
    assert response.status_code == 422 and "needs the drawn slice" in _detail(response)

    wrong_shape = tmp_path / "wrong_shape.nii.gz"
    drawn = np.zeros((40, 64, 32), dtype=np.uint8)
    drawn[10:20, 10:20, 8] = 1
    nib.save(nib.Nifti1Image(drawn, np.eye(4)), wrong_shape)
    with wrong_shape.open("rb") as label:
        response = server.post("/infer/sli2vol?image=ct_000&output=image", files={"label": label})
    assert response.status_code == 422 and "shape (40, 64, 32) differs from the image" in _detail(response)

    empty = _save_like(np.zeros((64, 64, 32), dtype=np.uint8), data["studies"] / "ct_000.nii.gz", tmp_path / "e.nii.gz")
    with empty.open("rb") as label:
        response = server.post("/infer/sli2vol?image=ct_000&output=image", files={"label": label})
    assert response.status_code == 422 and "the drawn label is empty" in _detail(response)

    two_views = np.zeros((64, 64, 32), dtype=np.uint8)
    two_views[20:30, 20:30, 8] = two_views[40, 20:30, 10:20] = 1  # an axial stroke and a sagittal one
    upload = _save_like(two_views, data["studies"] / "ct_000.nii.gz", tmp_path / "two_views.nii.gz")
    with upload.open("rb") as label:
        response = server.post("/infer/sli2vol?image=ct_000&output=image", files={"label": label})
    assert response.status_code == 422 and "the drawing fits no view" in _detail(response)

    adjacent = np.zeros((64, 64, 32), dtype=np.uint8)
    adjacent[20:30, 20:30, [8, 9, 20]] = 1  # along the axis the request names, slices 8 and 9 touch
    upload = _save_like(adjacent, data["studies"] / "ct_000.nii.gz", tmp_path / "adjacent.nii.gz")
    with upload.open("rb") as label:
        params = json.dumps({"axis": 2})
        response = server.post(
            "/infer/sli2vol?image=ct_000&output=image", files={"label": label}, data={"params": params}
        )
    assert response.status_code == 422 and "adjacent slices 8 and 9 along axis 2" in _detail(response)

    not_an_image = tmp_path / "notes.nii.gz"
    not_an_image.write_text("these are my notes, not an image")
    expected = {"xnet": "not a readable NIfTI file", "smile": "not a readable image"}
    for model, message in expected.items():
        with not_an_image.open("rb") as upload:
            response = server.post(f"/infer/{model}?output=image", files={"file": upload})
        assert response.status_code == 422 and message in _detail(response), response.text[:2000]


@pytest.fixture(scope="module")
def final_labels(server, data) -> None:
    """The true labels of the three CT volumes saved as final labels, as 3D Slicer's Submit Label does.

    ct_002's is saved the way Slicer numbers segments (in their order in the segmentation: here stomach 1,
    liver 2, pancreas 3), with its ``label_info``; the trainer must renumber it to SMILE's values.
    """
    slicer_order = [{"name": "stomach", "idx": 1}, {"name": "liver", "idx": 2}, {"name": "pancreas", "idx": 3}]
    for index in range(3):
        label_file, params = data["truth"] / f"ct_{index:03d}.nii.gz", {}
        if index == 2:
            truth = np.asarray(nib.load(label_file).dataobj)
            permuted = np.choose(truth, [0, 2, 3, 1]).astype(np.uint8)  # liver 1 -> 2, pancreas 2 -> 3, stomach 3 -> 1
            label_file = _save_like(permuted, label_file, data["root"] / "ct_002_slicer_order.nii.gz")
            params = {"label_info": slicer_order}
        with label_file.open("rb") as label:
            response = server.put(
                f"/datastore/label?image=ct_{index:03d}&tag=final",
                files={"label": label},
                data={"params": json.dumps(params)},
            )
        assert response.status_code == 200, response.text[:2000]


TINY_TRAINING = {"val_split": 0.34, "patch_size": [32, 32, 16], "batch_size": 1, "patches_per_volume": 1}
TINY_TRAINING.update(num_workers=0, cache_rate=0.0, device="cpu")


def _train(server: Server, model: str, options: dict) -> Path:
    """Submit a training run as 3D Slicer does (asynchronous), wait for DONE; returns the run's folder."""
    response = server.post(f"/train/{model}", json=options)
    assert response.status_code == 200, response.text[:2000]
    deadline = time.monotonic() + 600
    while (status := server.get("/train/").json())["status"] not in ("DONE", "ERROR"):
        assert time.monotonic() < deadline, f"training still {status['status']} after 600 s"
        time.sleep(2)
    assert status["status"] == "DONE", "\n".join(status.get("details", [])[-40:])
    runs = sorted((server.model_dir / model / "eval" / "monailabel").iterdir())
    assert runs, server.log_tail()
    return runs[-1]


def test_smile_trains_from_final_labels_then_segments(server, data, final_labels, tmp_path):
    response = server.post("/infer/smile?image=ct_000&output=image")
    assert response.status_code == 409 and "has no weights yet" in _detail(response)
    source_weights = REPO / "bundles" / "smile" / "models" / "model.pt"
    source_state = source_weights.stat().st_mtime_ns if source_weights.exists() else None

    run = _train(server, "smile", {**TINY_TRAINING, "max_epochs": 1})
    assert (run / "checkpoint_last.pt").is_file()
    renumbered = nib.load(run / "labels" / "ct_002.nii.gz")
    truth = nib.load(data["truth"] / "ct_002.nii.gz")
    np.testing.assert_array_equal(np.asarray(renumbered.dataobj), np.asarray(truth.dataobj))
    np.testing.assert_allclose(renumbered.affine, truth.affine, atol=1e-4)
    assert not (run / "labels" / "ct_000.nii.gz").exists(), "labels saved without label_info are used as saved"
    assert (server.model_dir / "smile" / "models" / "model.pt").is_file(), server.log_tail()
    assert (source_weights.stat().st_mtime_ns if source_weights.exists() else None) == source_state

    response = server.post("/infer/smile?image=ct_000&output=image")
    result = _nifti(response, tmp_path / "smile.nii.gz", server)
    reference = nib.load(data["studies"] / "ct_000.nii.gz")
    assert result.shape == reference.shape
    np.testing.assert_allclose(result.affine, reference.affine, atol=1e-4)
    assert set(np.unique(np.asarray(result.dataobj))) <= {0, 1, 2, 3}


def test_smiler_runs_a_relabeling_round_on_the_final_labels(server, final_labels):
    options = {**TINY_TRAINING, "initial_epochs": 1, "num_rounds": 1, "round_epochs": 1}
    run = _train(server, "smiler", options)
    assert (run / "rounds.csv").is_file() and (run / "round_1" / "pseudo_labels.json").is_file()
    assert (server.model_dir / "smiler" / "models" / "model.pt").is_file(), server.log_tail()
