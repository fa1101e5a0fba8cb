import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import UNet
from torch import nn

from common.data.writers import write_label_map
from common.errors import InvalidInputError
from common.smile import MergePseudoLabelsd
from common.smile.relabeling import reinitialize_parameters

# ----------------------------------------------------------------------------------------- reinitialize_parameters


def _network():
    # convolutions, a PReLU, a BatchNorm with running statistics, and a linear head
    return nn.ModuleList(
        [
            UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), norm="batch"),
            nn.Linear(4, 3),
        ]
    )


def _fill(network, value):
    with torch.no_grad():
        for tensor in network.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(value)


def test_reinitialization_replaces_every_parameter():
    network = _network()
    _fill(network, 0.123)
    reinitialize_parameters(network, seed=1)
    still_filled = [name for name, p in network.named_parameters() if torch.all(p == 0.123)]
    assert still_filled == []
    running = [name for name, b in network.named_buffers() if b.is_floating_point() and torch.all(b == 0.123)]
    assert running == []  # BatchNorm's running mean and variance are reset too


def test_reinitialization_is_reproducible_for_a_seed():
    first, second, third = _network(), _network(), _network()
    for network, seed in ((first, 5), (second, 5), (third, 6)):
        _fill(network, 0.123)
        reinitialize_parameters(network, seed=seed)
    state_1, state_2, state_3 = first.state_dict(), second.state_dict(), third.state_dict()
    assert all(torch.equal(state_1[k], state_2[k]) for k in state_1)
    random_weights = [k for k, v in state_1.items() if v.is_floating_point() and v.numel() > 1 and v.std() > 0]
    assert random_weights  # convolution and linear weights are drawn at random ...
    assert all(not torch.equal(state_1[k], state_3[k]) for k in random_weights)  # ... differently for another seed


def test_reinitialization_leaves_the_global_random_state_alone():
    network = _network()
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    reinitialize_parameters(network, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    after_draw = torch.rand(4)
    torch.manual_seed(2024)
    assert torch.equal(torch.rand(4), after_draw)


# --------------------------------------------------------------------------------------------------- write_label_map

AFFINE = np.array(
    [
        [-1.5, 0.0, 0.0, 10.0],
        [0.0, 1.5, 0.0, -20.0],
        [0.0, 0.0, 3.0, 5.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _labels():
    return np.arange(2 * 3 * 4, dtype=np.int64).reshape(2, 3, 4) * 10  # 0..230


@pytest.mark.parametrize("with_channel", [True, False])
def test_write_label_map_writes_uint8_with_the_affine(tmp_path, with_channel):
    labels = _labels()
    path = write_label_map(labels[None] if with_channel else labels, AFFINE, tmp_path / "sub" / "case.nii.gz")
    assert path == tmp_path / "sub" / "case.nii.gz"
    saved = nib.load(path)
    assert saved.shape == (2, 3, 4)
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_allclose(saved.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), labels)
    assert np.asarray(saved.dataobj).dtype == np.uint8


def test_write_label_map_accepts_a_torch_uint8_map(tmp_path):
    labels = torch.tensor(_labels(), dtype=torch.uint8)[None]
    path = write_label_map(labels.numpy(), AFFINE, tmp_path / "case.nii")
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), _labels())


@pytest.mark.parametrize("bad", [256, -1])
def test_write_label_map_refuses_values_outside_uint8(tmp_path, bad):
    labels = _labels()
    labels[1, 2, 3] = bad
    path = tmp_path / "case_9.nii.gz"
    with pytest.raises(ValueError, match=r"case_9\.nii\.gz: label values must be in 0\.\.255"):
        write_label_map(labels, AFFINE, path)
    assert list(tmp_path.iterdir()) == []


def test_write_label_map_replaces_a_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "case.nii.gz"
    write_label_map(np.ones((2, 2, 2), dtype=np.uint8), np.eye(4), path)
    write_label_map(np.full((2, 2, 2), 3, dtype=np.uint8), AFFINE, path)
    assert [p.name for p in tmp_path.iterdir()] == ["case.nii.gz"]  # no .partial-case.nii.gz
    saved = nib.load(path)
    assert np.asarray(saved.dataobj).tolist() == [[[3, 3], [3, 3]], [[3, 3], [3, 3]]]
    np.testing.assert_allclose(saved.affine, AFFINE)


# ------------------------------------------------------------------------------------------------ MergePseudoLabelsd


def _meta(values, name, dtype=torch.int64):
    return MetaTensor(torch.tensor([values], dtype=dtype), meta={"filename_or_obj": f"/data/{name}"})


def test_real_label_wins_and_pseudo_label_fills_the_rest():
    label = _meta([[0, 1, 0], [2, 0, 0]], "case_3_seg.nii.gz")
    pseudo = _meta([[3, 3, 0], [1, 2, 0]], "case_3.nii.gz", dtype=torch.uint8)
    out = MergePseudoLabelsd()({"label": label, "pseudo_label": pseudo})
    assert out["sampling_label"].tolist() == [[[3, 1, 0], [2, 2, 0]]]
    assert out["sampling_label"].dtype == label.dtype
    # the sources are kept as they were
    assert out["label"] is label and out["pseudo_label"] is pseudo
    assert label.tolist() == [[[0, 1, 0], [2, 0, 0]]]


def test_custom_keys():
    data = {"seg": torch.tensor([[1, 0, 0]]), "extra": torch.tensor([[2, 2, 0]])}
    out = MergePseudoLabelsd(label_key="seg", pseudo_key="extra", output_key="merged")(data)
    assert out["merged"].tolist() == [[1, 2, 0]] and "sampling_label" not in out


def test_without_pseudo_labels_the_output_is_a_copy():
    label = _meta([0, 1, 2], "case_3_seg.nii.gz")
    out = MergePseudoLabelsd()({"label": label})
    assert out["sampling_label"].tolist() == [[0, 1, 2]] and out["sampling_label"] is not label
    out["sampling_label"][0, 0] = 7
    assert label.tolist() == [[0, 1, 2]]  # a copy, not a view

    array = np.array([[0, 1, 2]])
    copied = MergePseudoLabelsd()({"label": array})["sampling_label"]
    assert copied is not array and np.array_equal(copied, array) and not np.shares_memory(copied, array)


def test_shape_mismatch_names_the_files():
    label = _meta([0, 1, 2], "case_3_seg.nii.gz")
    pseudo = _meta([0, 1], "case_3.nii.gz")
    with pytest.raises(InvalidInputError, match=r"/data/case_3\.nii\.gz: pseudo-label shape \(1, 2\) differs") as error:
        MergePseudoLabelsd()({"label": label, "pseudo_label": pseudo})
    assert "case_3_seg.nii.gz" in str(error.value)
