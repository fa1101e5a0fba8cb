"""DRRs of labelled CT: a synthetic water cylinder with a bone rod and a table, and (when cached) a real chest CT."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tools.drr import MU_WATER, CtPhantom, View, draw_view, load_ct_phantom, project_ct, project_view
from tools.xray_acquisition import BONE, OPEN_BEAM, SOFT_TISSUE

VOXEL = 2.0
SHAPE = (64, 64, 50)  # 128 × 128 × 100 mm, RAS
RADIUS, ROD_X, ROD_RADIUS = 40.0, 15.0, 8.0
TABLE_Y = (-56.0, -50.0)
REAL_CACHE = Path(os.environ.get("DRR_CACHE_DIR", Path(__file__).resolve().parents[2] / "work/cache/sli2vol_real"))


def _centres(axis: int) -> np.ndarray:
    return (np.arange(SHAPE[axis]) - (SHAPE[axis] - 1) / 2) * VOXEL


def _write(volume: np.ndarray, path: Path, dtype: type) -> Path:
    affine = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    affine[:3, 3] = -(np.asarray(volume.shape) - 1) / 2 * VOXEL
    nib.save(nib.Nifti1Image(volume.astype(dtype), affine), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A water cylinder (HU 0) along the superior axis with a bone rod (HU 1000, label 1) and a table below."""
    x, y = np.meshgrid(_centres(0), _centres(1), indexing="ij")
    cylinder = np.hypot(x, y) <= RADIUS
    rod = np.hypot(x - ROD_X, y) <= ROD_RADIUS
    table = (y >= TABLE_Y[0]) & (y <= TABLE_Y[1]) & (np.abs(x) <= 60)
    hu = np.select([rod, cylinder, table], [1000.0, 0.0, 200.0], -1000.0)
    folder = tmp_path_factory.mktemp("ct")
    image = _write(np.repeat(hu[..., None], SHAPE[2], 2), folder / "ct.nii.gz", np.int16)
    label = _write(np.repeat(rod[..., None], SHAPE[2], 2), folder / "label.nii.gz", np.uint8)
    return image, label


@pytest.fixture(scope="module")
def phantom(files: tuple[Path, Path]) -> CtPhantom:
    return load_ct_phantom(*files, bone_values=(1,), voxel_mm=VOXEL, body_part="ABDOMEN")


def _ap_view(spacing: float = 1.0) -> View:
    return View(
        columns=np.array([-1.0, 0.0, 0.0]),
        rows=np.array([0.0, 0.0, -1.0]),
        ray=np.array([0.0, -1.0, 0.0]),
        centre=np.zeros(3),
        pixel_spacing=spacing,
    )


def _chord(offset: np.ndarray, radius: float) -> np.ndarray:
    return 2 * np.sqrt(np.clip(radius**2 - offset**2, 0, None))


def test_phantom_removes_the_table(phantom: CtPhantom) -> None:
    y = _centres(1)
    assert phantom.mu.shape == SHAPE and phantom.spacing == pytest.approx((VOXEL,) * 3)
    assert not phantom.body[:, y < -RADIUS - VOXEL].any()
    assert phantom.body[SHAPE[0] // 2, SHAPE[1] // 2].all()
    assert len(phantom.truncated) == 0 and len(phantom.superior) > 0 and len(phantom.inferior) > 0


def test_ap_transmission_and_labels_match_the_geometry(phantom: CtPhantom) -> None:
    size = (40, 120)
    projected = project_view(phantom, _ap_view(), size)
    x = -((np.arange(size[1]) + 0.5) - size[1] / 2)  # column centres in mm; columns run towards the patient's left
    rod = _chord(x - ROD_X, ROD_RADIUS)
    expected = np.exp(-MU_WATER * (_chord(x, RADIUS) + rod))  # the rod (HU 1000) attenuates twice as much as water
    measured = projected.transmission.mean(axis=0)
    assert np.ptp(projected.transmission, axis=0).max() < 1e-5  # invariant along the cylinder
    error = np.log(expected) - np.log(measured)  # voxelised edges: a few mm of water at most, no bias
    assert np.abs(error).max() < MU_WATER * 2.5 * VOXEL and abs(error.mean()) < MU_WATER * 0.25
    label = projected.object_label[size[0] // 2]
    assert (label[np.abs(x - ROD_X) < ROD_RADIUS - VOXEL] == BONE).all()
    assert (label[(np.abs(x - ROD_X) > ROD_RADIUS + VOXEL) & (np.abs(x) < RADIUS - VOXEL)] == SOFT_TISSUE).all()
    air = np.abs(x) > RADIUS + VOXEL  # the table lies under these rays too
    assert (label[air] == OPEN_BEAM).all() and (measured[air] == 1.0).all()
    assert projected.pixel_spacing == 1.0 and projected.body_part == "ABDOMEN"


def test_views_stay_within_the_scanned_range(phantom: CtPhantom) -> None:
    rng = np.random.default_rng(3)
    top, bottom = _centres(2)[-1], _centres(2)[0]
    size = (32, 48)
    for _ in range(30):
        view = draw_view(phantom, rng, size, (40.0, 80.0))
        rows = (np.arange(size[0]) - (size[0] - 1) / 2) * view.pixel_spacing
        columns = (np.arange(size[1]) - (size[1] - 1) / 2) * view.pixel_spacing
        depth = np.linspace(-100, 100, 101)
        points = (
            view.centre
            + rows[:, None, None, None] * view.rows
            + columns[None, :, None, None] * view.columns
            + depth[None, None, :, None] * view.ray
        ).reshape(-1, 3)
        in_body = np.hypot(points[:, 0], points[:, 1]) <= RADIUS
        assert in_body.any()
        assert points[in_body, 2].max() <= top + VOXEL / 2 and points[in_body, 2].min() >= bottom - VOXEL / 2


def test_random_views_are_reproducible_and_varied(phantom: CtPhantom) -> None:
    first = project_ct(phantom, np.random.default_rng(7), size=(32, 32), field_mm=(40.0, 80.0))
    again = project_ct(phantom, np.random.default_rng(7), size=(32, 32), field_mm=(40.0, 80.0))
    other = project_ct(phantom, np.random.default_rng(8), size=(32, 32), field_mm=(40.0, 80.0))
    np.testing.assert_array_equal(first.transmission, again.transmission)
    np.testing.assert_array_equal(first.object_label, again.object_label)
    assert first.pixel_spacing == again.pixel_spacing != other.pixel_spacing
    assert first.transmission.dtype == np.float32 and first.object_label.dtype == np.uint8
    assert first.transmission.min() > 0 and first.transmission.max() <= 1


def test_truncated_body_is_never_projected(tmp_path: Path) -> None:
    """An elliptic cylinder cut by the volume's left and right faces: lateral rays would cross the cut."""
    x, y = np.meshgrid(_centres(0), _centres(1), indexing="ij")
    hu = np.where(np.hypot(x, y / 0.5) <= 80, 0.0, -1000.0)  # 160 mm wide ellipse in a 128 mm volume
    image = _write(np.repeat(hu[..., None], SHAPE[2], 2), tmp_path / "ct.nii.gz", np.int16)
    label = _write(np.zeros(SHAPE), tmp_path / "label.nii.gz", np.uint8)
    truncated = load_ct_phantom(image, label, bone_values=(1,), voxel_mm=VOXEL)
    assert len(truncated.truncated) > 0
    rng = np.random.default_rng(0)
    for _ in range(10):
        view = draw_view(truncated, rng, (16, 16), (20.0, 40.0))
        assert abs(view.ray[0]) < 0.95


def test_mismatched_label_grid_names_both_files(files: tuple[Path, Path], tmp_path: Path) -> None:
    label = _write(np.zeros((SHAPE[0], SHAPE[1], SHAPE[2] - 2)), tmp_path / "short_label.nii.gz", np.uint8)
    with pytest.raises(ValueError, match=r"short_label\.nii\.gz.*ct\.nii\.gz"):
        load_ct_phantom(files[0], label, bone_values=(1,))


@pytest.mark.skipif(not REAL_CACHE.is_dir(), reason=f"no cached CT packages in {REAL_CACHE} (set DRR_CACHE_DIR)")
def test_real_chest_ct_views_are_plausible() -> None:
    from tools.package_data import labelled_cts

    ct = labelled_cts(REAL_CACHE)[0]
    phantom = load_ct_phantom(ct.image, ct.label, ct.bone_values, body_part=ct.body_part)
    rng = np.random.default_rng(0)
    for _ in range(3):
        projected = project_ct(phantom, rng)
        open_beam, soft, bone = np.bincount(projected.object_label.ravel(), minlength=3) / projected.object_label.size
        print(
            f"{ct.name}: spacing {projected.pixel_spacing:.2f} mm, open {open_beam:.2f} soft {soft:.2f} bone {bone:.2f}"
        )
        assert 0.05 <= bone <= 0.8 and soft >= 0.1 and open_beam <= 0.6
        assert projected.body_part == "CHEST" and projected.transmission.min() > 1e-5


def test_ct_without_body_or_too_small_is_refused_with_its_name(tmp_path: Path) -> None:
    air = _write(np.full(SHAPE, -1000), tmp_path / "air.nii.gz", np.int16)
    label = _write(np.zeros(SHAPE), tmp_path / "air_label.nii.gz", np.uint8)
    with pytest.raises(ValueError, match=r"air\.nii\.gz: no body"):
        load_ct_phantom(air, label, bone_values=(1,), voxel_mm=VOXEL)
    with pytest.raises(ValueError, match=r"air\.nii\.gz: a CT of shape .* too small"):
        load_ct_phantom(air, label, bone_values=(1,), voxel_mm=1000.0)
