import nibabel as nib
import numpy as np
import pytest
import torch

from common.data.writers import AtomicNibabelWriter


def test_mask_is_written_whole_with_its_affine(tmp_path):
    writer = AtomicNibabelWriter(output_dtype=np.uint8)
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    writer.set_data_array(torch.tensor([[[[0, 1], [2, 3]]]]), channel_dim=0)
    writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
    writer.write(tmp_path / "case_seg.nii.gz")
    saved = nib.load(tmp_path / "case_seg.nii.gz")
    np.testing.assert_allclose(saved.affine, affine)
    assert saved.get_data_dtype() == np.uint8 and np.asarray(saved.dataobj).max() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["case_seg.nii.gz"]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(image, filename):
        with open(filename, "wb") as stream:
            stream.write(b"trunc")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    writer = AtomicNibabelWriter()
    writer.set_data_array(torch.zeros(1, 2, 2, 2), channel_dim=0)
    writer.set_metadata({"affine": np.eye(4)}, resample=False)
    with pytest.raises(OSError, match="disk full"):
        writer.write(tmp_path / "case_seg.nii.gz")
    assert list(tmp_path.iterdir()) == []
