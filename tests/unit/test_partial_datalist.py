import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImaged

from common.data.datalist import load_datalist
from common.data.json_io import write_json
from common.errors import InvalidInputError
from common.smile import RemapLabelsd
from common.smile.partial_datalist import main, merge_datasets, site_datalist

CLASSES = ["liver", "pancreas", "spleen"]
REPO = Path(__file__).resolve().parents[2]


def make_msd(root: Path, task: str, num_cases: int = 2, label_values=(0, 1, 2)) -> Path:
    """A tiny MSD dataset: 4x4x2 images and labels holding ``label_values``, entries as "./imagesTr/..."."""
    folder = root / task
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    label = np.resize(np.asarray(label_values, dtype=np.uint8), (4, 4, 2))
    entries = []
    for index in range(num_cases):
        name = f"{task.split('_')[-1].lower()}_{index:03d}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((4, 4, 2), index, np.float32), np.eye(4)), folder / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    return write_json({"name": task, "labels": {"0": "background"}, "training": entries}, folder / "dataset.json")


@pytest.fixture
def sources(tmp_path):
    return [
        (make_msd(tmp_path, "Task03_Liver"), {1: "liver", 2: "liver"}),
        (make_msd(tmp_path, "Task07_Pancreas"), {1: "pancreas", 2: "pancreas"}),
        (make_msd(tmp_path, "Task09_Spleen", label_values=(0, 1)), {1: "spleen"}),
    ]


def test_entries_carry_classes_mappings_and_relative_paths(sources, tmp_path):
    merged = json.loads(merge_datasets(sources, CLASSES, tmp_path / "combined" / "dataset.json").read_text())
    assert merged["labels"] == {"0": "background", "1": "liver", "2": "pancreas", "3": "spleen"}
    assert merged["numTraining"] == 6 and "validation" not in merged
    pancreas = merged["training"][2]
    assert pancreas == {
        "image": "../Task07_Pancreas/imagesTr/pancreas_000.nii.gz",
        "label": "../Task07_Pancreas/labelsTr/pancreas_000.nii.gz",
        "annotated_classes": [2],
        "label_mapping": {"1": 2, "2": 2},
    }
    assert merged["training"][5]["label_mapping"] == {"1": 3} and merged["training"][5]["annotated_classes"] == [3]


def test_validation_split_is_per_source_and_deterministic(tmp_path):
    sources = [
        (make_msd(tmp_path, "Task03_Liver", num_cases=5), {1: "liver"}),
        (make_msd(tmp_path, "Task09_Spleen", num_cases=5), {1: "spleen"}),
    ]

    def split(seed, name):
        path = merge_datasets(sources, CLASSES, tmp_path / name, validation_fraction=0.4, seed=seed)
        merged = json.loads(path.read_text())
        return [entry["image"] for entry in merged["training"]], [entry["image"] for entry in merged["validation"]]

    training, validation = split(0, "a.json")
    assert split(0, "b.json") == (training, validation)
    assert len(training) == 6 and len(validation) == 4 and not set(training) & set(validation)
    assert sum("liver" in image for image in validation) == 2
    assert {split(seed, "c.json")[1] == validation for seed in range(1, 6)} != {True}


def test_unknown_class_duplicate_image_and_missing_file_name_the_source(sources, tmp_path):
    liver_json, _ = sources[0]
    output = tmp_path / "combined.json"
    with pytest.raises(InvalidInputError, match=r"Task03_Liver/dataset\.json: the label mapping names class 'kidney'"):
        merge_datasets([(liver_json, {1: "kidney"})], CLASSES, output)
    with pytest.raises(InvalidInputError, match=r"Task03_Liver/dataset\.json: image .*liver_000\.nii\.gz is already"):
        merge_datasets([sources[0], (liver_json, {2: "liver"})], CLASSES, output)
    (liver_json.parent / "labelsTr" / "liver_001.nii.gz").unlink()
    with pytest.raises(InvalidInputError, match=r"Task03_Liver/dataset\.json.*liver_001\.nii\.gz does not exist"):
        merge_datasets(sources, CLASSES, output)
    assert not output.exists()


def test_merged_datalist_loads_and_remaps_a_pancreas_case(sources, tmp_path):
    merged = merge_datasets(sources, CLASSES, tmp_path / "combined" / "dataset.json")
    entries = load_datalist(merged, num_foreground_classes=3)
    pancreas = next(entry for entry in entries if "pancreas_001" in entry["image"])
    assert Path(pancreas["image"]).resolve() == (tmp_path / "Task07_Pancreas/imagesTr/pancreas_001.nii.gz").resolve()
    loaded = LoadImaged(keys=["image", "label"], ensure_channel_first=True)(pancreas)
    assert set(np.unique(loaded["label"]).tolist()) == {0, 1, 2}
    out = RemapLabelsd()(loaded)
    assert out["label"].shape == (1, 4, 4, 2) and set(np.unique(out["label"]).tolist()) == {0, 2}
    assert "label_mapping" not in out and out["annotated_classes"] == [2]


def test_command_line(sources, tmp_path):
    output = tmp_path / "combined" / "dataset.json"
    arguments = ["--classes", *CLASSES, "--output", str(output), "--validation_fraction", "0.5", "--seed", "3"]
    for dataset_json, mapping in sources:
        arguments += ["--source", str(dataset_json), ",".join(f"{value}={name}" for value, name in mapping.items())]
    command = [sys.executable, "-m", "common.smile.partial_datalist", *arguments]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    assert str(output) in result.stdout
    merged = json.loads(output.read_text())
    assert merged["numTraining"] == 3 and merged["numValidation"] == 3
    again = merge_datasets(sources, CLASSES, output.with_name("again.json"), "training", 0.5, 3)
    assert merged == json.loads(again.read_text())


@pytest.mark.parametrize("mapping", ["1:liver", "1=liver,1=spleen", "x=liver", "1="])
def test_malformed_command_line_mapping(sources, tmp_path, capsys, mapping):
    arguments = ["--classes", "liver", "--source", str(sources[0][0]), mapping, "--output", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert "malformed label mapping" in capsys.readouterr().err


def _acdc_like(num_patients=9):
    training = [
        {"image": f"p{p:03d}_f{f}_image.nii.gz", "label": f"p{p:03d}_f{f}_label.nii.gz", "patient": f"p{p:03d}"}
        for p in range(num_patients)
        for f in (1, 2)
    ]
    validation = [{"image": "v_image.nii.gz", "label": "v_label.nii.gz", "patient": "v"}]
    return {"name": "acdc", "training": training, "validation": validation}


def test_site_datalist_is_balanced_by_patient_and_leaves_validation_alone():
    datalist = _acdc_like()
    sites = site_datalist(datalist, num_foreground_classes=3, seed=0)
    patient_site = {}
    for entry in sites["training"]:
        assert len(entry["annotated_classes"]) == 1
        site = entry["annotated_classes"][0]
        assert patient_site.setdefault(entry["patient"], site) == site  # both frames at one site
    assert sorted(list(patient_site.values()).count(site) for site in (1, 2, 3)) == [3, 3, 3]
    assert sites["validation"] == datalist["validation"] and sites["name"] == "acdc"
    assert "annotated_classes" not in datalist["training"][0]  # the input is not modified


def test_site_datalist_is_seeded():
    datalist = _acdc_like(10)
    first = site_datalist(datalist, 3, seed=4)
    assert first == site_datalist(datalist, 3, seed=4)
    assert any(site_datalist(datalist, 3, seed=seed) != first for seed in range(5, 10))
    counts = [sum(e["annotated_classes"] == [k] for e in first["training"]) // 2 for k in (1, 2, 3)]
    assert sorted(counts) == [3, 3, 4]


def test_site_datalist_without_groups_assigns_each_case():
    sites = site_datalist(_acdc_like(3), 3, group_key=None)
    assert sorted(e["annotated_classes"][0] for e in sites["training"]) == [1, 1, 2, 2, 3, 3]


def test_site_datalist_errors_name_the_problem():
    with pytest.raises(InvalidInputError, match="2 training groups of 'patient' cannot cover 3 sites"):
        site_datalist(_acdc_like(2), 3)
    datalist = _acdc_like()
    del datalist["training"][5]["patient"]
    with pytest.raises(InvalidInputError, match=r"p002_f2_image\.nii\.gz has no 'patient' key"):
        site_datalist(datalist, 3)
    with pytest.raises(InvalidInputError, match="no 'training' list"):
        site_datalist({"validation": []}, 3)


def test_sites_command_line(tmp_path, capsys):
    source = write_json(_acdc_like(), tmp_path / "acdc" / "datalist.json")
    output = tmp_path / "out" / "sites.json"
    main(["sites", "--datalist", str(source), "--num_foreground_classes", "3", "--output", str(output), "--seed", "2"])
    assert str(output) in capsys.readouterr().out
    written = json.loads(output.read_text())
    expected = site_datalist(_acdc_like(), 3, seed=2)
    assert [e["annotated_classes"] for e in written["training"]] == [
        e["annotated_classes"] for e in expected["training"]
    ]
    # paths stay valid from the output's folder
    assert written["training"][0]["image"] == str(Path("..") / "acdc" / "p000_f1_image.nii.gz")
    with pytest.raises(SystemExit) as exit_info:
        main(["sites", "--datalist", str(source), "--num_foreground_classes", "30", "--output", str(output)])
    assert exit_info.value.code == 1 and "cannot cover 30 sites" in capsys.readouterr().err
