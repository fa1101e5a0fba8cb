"""Tests of the acquisition model (tools.xray_acquisition): what a CR/DX system makes of a projected object."""

from __future__ import annotations

import numpy as np
import pydicom
from scipy import ndimage

from common.xnet.radiograph_io import read_radiograph, write_dicom_cr
from tools.xray_acquisition import (
    BITS_STORED,
    ProjectedObject,
    acquire_radiograph,
    sample_encoding,
)

SIZE = (64, 80)


def slab_with_bone() -> ProjectedObject:
    """Open beam on the left third, a 40 mm soft-tissue slab with a 10 mm bone bar in it on the right."""
    label = np.zeros(SIZE, dtype=np.uint8)
    label[:, SIZE[1] // 3 :] = 1
    label[:, 50:60] = 2
    path = np.where(label == 2, 0.16 * 10.0 + 0.02 * 30.0, np.where(label == 1, 0.02 * 40.0, 0.0))
    return ProjectedObject(np.exp(-path).astype(np.float32), label, 1.0, "KNEE")


def class_means(image: np.ndarray, label: np.ndarray) -> list[float]:
    """Mean of `image` over open beam, soft tissue, bone and collimator (NaN where a class is absent)."""
    return [float(image[label == value].mean()) if (label == value).sum() > 4 else np.nan for value in range(4)]


def test_labels_collimator_where_blades_or_lead_stop_the_beam():
    projected = slab_with_bone()
    seen_collimator = seen_marker = 0
    for seed in range(20):
        sample = acquire_radiograph(projected, np.random.default_rng(seed))
        assert sample.label.shape == SIZE and sample.body_part == "knee"
        np.testing.assert_array_equal(sample.transmission, projected.transmission)
        exposed = sample.label != 3
        np.testing.assert_array_equal(sample.label[exposed], projected.object_label[exposed])
        border = np.concatenate([sample.label[[0, -1]].ravel(), sample.label[:, [0, -1]].ravel()])
        seen_collimator += bool((border == 3).any())
        # A lead letter is an island of collimator that does not touch the border.
        islands, count = ndimage.label(sample.label == 3)
        on_border = np.concatenate([islands[[0, -1]].ravel(), islands[:, [0, -1]].ravel()])
        seen_marker += bool(set(range(1, count + 1)) - set(on_border.tolist()))
    assert 5 <= seen_collimator <= 18 and seen_marker >= 3


def test_displayed_values_grow_with_attenuation_and_the_unexposed_area_is_brightest():
    projected = slab_with_bone()
    orders = []
    for seed in range(30):
        sample = acquire_radiograph(projected, np.random.default_rng(seed))
        open_beam, soft_tissue, bone, collimator = class_means(sample.image, sample.label)
        assert not open_beam > soft_tissue and soft_tissue < bone, f"seed {seed}"  # NaN: a class under the blades
        if not np.isnan(collimator):
            orders.append(collimator > bone)
    assert len(orders) >= 8 and np.mean(orders) >= 0.75


def test_renderings_vary_widely():
    projected = slab_with_bone()
    samples = [acquire_radiograph(projected, np.random.default_rng(seed)) for seed in range(40)]
    assert {sample.bits_stored for sample in samples} == set(BITS_STORED)
    contrasts = [np.subtract(*class_means(s.image, s.label)[2:0:-1]) / (2**s.bits_stored - 1) for s in samples]
    assert np.ptp(contrasts) > 0.3  # bone - soft tissue, as a fraction of the stored range
    assert any(s.image.max() < 0.9 * (2**s.bits_stored - 1) for s in samples)  # part of the stored range used
    assert len({float(s.image.std()) for s in samples}) == len(samples)


def test_monochrome1_and_monochrome2_files_read_back_as_displayed(tmp_path):
    projected = slab_with_bone()
    photometrics = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        sample = acquire_radiograph(projected, rng)
        encoding = sample_encoding(sample, rng)
        path = tmp_path / f"xr_{seed}.dcm"
        stored = encoding.stored_values(sample.image, sample.bits_stored)
        write_dicom_cr(path, stored, encoding.photometric, sample.bits_stored, (1.0, 1.0), encoding.rescale_slope,
                       encoding.rescale_intercept, encoding.window)  # fmt: skip
        photometrics.add(pydicom.dcmread(path).PhotometricInterpretation)
        displayed = read_radiograph(path).array
        open_beam, soft_tissue, bone, _ = class_means(displayed, sample.label)
        assert not open_beam > soft_tissue and soft_tissue < bone, f"seed {seed}, {encoding}"
        as_stored = read_radiograph(path, apply_voi=False).array
        slope, intercept = encoding.rescale_slope, encoding.rescale_intercept
        np.testing.assert_allclose(as_stored, slope * sample.image + intercept, rtol=1e-6)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


def test_same_generator_state_same_radiograph():
    projected = slab_with_bone()
    first, again = (acquire_radiograph(projected, np.random.default_rng(3)) for _ in range(2))
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
