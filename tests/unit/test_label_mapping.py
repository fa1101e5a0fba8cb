import pytest
import torch
from monai.data import MetaTensor

from common.errors import InvalidInputError
from common.smile import RemapLabelsd


def _label(values, name="case_007_seg.nii.gz"):
    return MetaTensor(torch.tensor([values], dtype=torch.float32), meta={"filename_or_obj": f"/data/{name}"})


def test_mapped_values_become_targets_and_others_background():
    data = {"label": _label([0, 1, 2, 3]), "label_mapping": {"1": 2, "2": 2}, "annotated_classes": [2]}
    out = RemapLabelsd()(data)
    assert out["label"].tolist() == [[0, 2, 2, 0]]
    assert out["label"].dtype == torch.float32 and out["label"].meta["filename_or_obj"] == "/data/case_007_seg.nii.gz"
    assert "label_mapping" not in out and out["annotated_classes"] == [2]
    assert "label_mapping" in data


def test_integer_keys_and_volumes():
    label = torch.tensor([[[[1, 2], [3, 0]]]], dtype=torch.uint8)
    out = RemapLabelsd(label_key="seg", mapping_key="map")({"seg": label, "map": {1: 3, 3: 1}})
    assert out["seg"].shape == (1, 1, 2, 2) and out["seg"].dtype == torch.uint8
    assert out["seg"].flatten().tolist() == [3, 0, 1, 0]


def test_without_mapping_the_data_is_unchanged():
    label = _label([0, 1, 2])
    out = RemapLabelsd()({"label": label})
    assert out["label"] is label and set(out) == {"label"}


@pytest.mark.parametrize("mapping", [{"a": 1}, {"1.5": 1}, {"-1": 1}, {"1": -2}, {"1": 1.5}, {"1": True}, [1, 2]])
def test_bad_mapping_names_the_label_file(mapping):
    with pytest.raises(InvalidInputError, match=r"case_007_seg\.nii\.gz: label_mapping must"):
        RemapLabelsd()({"label": _label([0, 1]), "label_mapping": mapping})
