"""Sli2Vol inference: verification rule, clean-up, the slice propagator and its inferer, and the baselines."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, decollate_batch, list_data_collate
from scipy import ndimage

from common.sli2vol import (
    Sli2VolNet,
    SlicePropagationInferer,
    SlicePropagator,
    accepts_step,
    clean_slice,
    fuse_label_maps,
    interpolate_label_maps,
    signed_distance,
    verify_slice,
)
from tools.propagation_baselines import CopyPropagation, OpticalFlowPropagation

SIZE = 20
ROWS, COLS = slice(7, 13), slice(7, 13)  # the 6x6 square P


def _square(value=1, size=SIZE):
    mask = np.zeros((size, size), dtype=np.int64)
    mask[ROWS, COLS] = value
    return mask


def _l1_distance_to_square(size=SIZE):
    """Taxicab distance of each pixel to the square, by hand: rows and columns outside add up."""
    index = np.arange(size)
    outside_rows = np.maximum(np.maximum(ROWS.start - index, index - (ROWS.stop - 1)), 0)
    outside_cols = np.maximum(np.maximum(COLS.start - index, index - (COLS.stop - 1)), 0)
    return outside_rows[:, None] + outside_cols[None, :]


def _previous_slice(ring_iterations):
    """P at 200, the ring N (taxicab distance 1..ring_iterations) at 50, everything further at 0."""
    distance = _l1_distance_to_square()
    image = np.zeros((SIZE, SIZE))
    image[distance == 0] = 200.0
    image[(distance >= 1) & (distance <= ring_iterations)] = 50.0
    return image


def test_verify_slice_keeps_pixels_closer_to_the_mask_mean():
    ring_iterations = 2
    previous_mask, previous_image = _square(), _previous_slice(ring_iterations)
    # Proposal: the square; its pixels get intensities near P (kept) or near N (removed). mu_P = 200 and
    # mu_N = 50 (the ring only: with the far background at 0 included, the threshold would drop below 120).
    image = np.full((SIZE, SIZE), 200.0)  # bright outside the proposal too: nothing may be added
    image[7, 7:13] = 180.0
    image[8, 7:13] = 60.0
    image[9, 7:10] = 126.0
    image[9, 10:13] = 120.0
    image[10, 7:13] = 125.0  # equidistant: not strictly closer to P, removed
    proposed = _square()
    verified = verify_slice(proposed, image, previous_mask, previous_image, ring_iterations)

    expected = np.zeros_like(proposed)
    expected[7, 7:13] = 1
    expected[9, 7:10] = 1
    expected[11:13, 7:13] = 1  # still at 200
    np.testing.assert_array_equal(verified, expected)
    assert verified.dtype == proposed.dtype
    np.testing.assert_array_equal(proposed, _square())  # the input is not modified


def test_verify_slice_per_class_and_never_adds():
    previous_mask = np.zeros((SIZE, SIZE), dtype=np.int64)
    previous_mask[2:6, 2:6] = 3
    previous_mask[12:17, 12:17] = 7
    previous_image = np.full((SIZE, SIZE), 40.0)
    previous_image[previous_mask == 3] = 100.0
    previous_image[previous_mask == 7] = 220.0
    # New slice at 100 everywhere. Class 3 (mu_P = 100, mu_N = 40) keeps its proposal; for class 7 (mu_P = 220,
    # mu_N = 40) 100 is closer to the ring ((100 - 220)^2 = 14400 > (100 - 40)^2 = 3600), so it is removed.
    image = np.full((SIZE, SIZE), 100.0)
    proposed = np.zeros_like(previous_mask)
    proposed[3:7, 3:7] = 3
    proposed[11:15, 11:15] = 7
    verified = verify_slice(proposed, image, previous_mask, previous_image, ring_iterations=3)
    expected = np.where(proposed == 3, 3, 0)
    np.testing.assert_array_equal(verified, expected)


def test_verify_slice_keeps_a_class_covering_the_whole_slice():
    previous_mask = np.ones((SIZE, SIZE), dtype=np.int64)
    previous_image = np.random.default_rng(0).uniform(0, 255, (SIZE, SIZE))
    proposed = _square()
    proposed[0, :5] = 1
    image = np.zeros((SIZE, SIZE))
    np.testing.assert_array_equal(verify_slice(proposed, image, previous_mask, previous_image), proposed)


def test_clean_slice_fills_holes_and_closes_gaps_per_label():
    mask = np.zeros((SIZE, SIZE), dtype=np.int64)
    mask[2:8, 2:8] = 2
    mask[4:6, 4:6] = 0  # a hole
    mask[12:17, 3:16] = 5
    mask[12:17, 9] = 0  # a one-pixel gap across the bar
    cleaned = clean_slice(mask)

    expected = np.zeros_like(mask)
    expected[2:8, 2:8] = 2
    expected[12:17, 3:16] = 5
    # Closing with a cross of radius 2 bridges the gap inside the bar; its two end pixels on the bar's edges stay
    # open, since (10, 9) and (18, 9), at taxicab distance 2 from them, are 3 from the bar and not dilated.
    expected[[12, 16], 9] = 0
    np.testing.assert_array_equal(cleaned, expected)
    assert ndimage.label(cleaned == 5)[1] == 1  # the two halves are one region again
    assert cleaned.dtype == mask.dtype
    np.testing.assert_array_equal(clean_slice(np.zeros_like(mask)), np.zeros_like(mask))


def _structure_volume(depth=9, present=range(2, 7)):
    """(SIZE, SIZE, depth): a 200 square in a 50 background on the ``present`` slices, plain 50 elsewhere."""
    volume = np.full((SIZE, SIZE, depth), 50.0)
    for k in present:
        volume[ROWS, COLS, k] = 200.0
    return torch.as_tensor(volume, dtype=torch.float32)


def _seed(value_mask, depth, index, axis=2):
    seed = torch.zeros(SIZE, SIZE, depth, dtype=torch.long)
    seed[..., index] = torch.as_tensor(value_mask)
    return seed.movedim(2, axis)


def test_copy_without_verification_repeats_the_seed_everywhere():
    depth, index = 7, 3
    image = torch.rand(SIZE, SIZE, depth) * 255
    seed = _seed(_square(), depth, index)
    result = SlicePropagator(verification=False)(CopyPropagation(), image, seed)
    assert result.shape == (SIZE, SIZE, depth)
    assert result.dtype == torch.int64
    expected = torch.as_tensor(_square())[..., None].expand(-1, -1, depth)
    assert torch.equal(result, expected)


def test_verification_stops_where_the_structure_ends():
    # The square is bright on slices 2..6, absent on 1 and 7, and bright again on 0 and 8: propagation from 4 must
    # stop at 1 and 7 and not resume beyond them.
    image = _structure_volume(depth=9, present=[0, 2, 3, 4, 5, 6, 8])
    seed = _seed(_square(), 9, 4)
    result = SlicePropagator(verification=True, ring_iterations=3)(CopyPropagation(), image, seed)
    for k in range(9):
        expected = _square() if 2 <= k <= 6 else np.zeros((SIZE, SIZE), dtype=np.int64)
        np.testing.assert_array_equal(result[..., k].numpy(), expected, err_msg=f"slice {k}")


def test_label_values_come_back_unchanged():
    depth, index = 5, 1
    mask = np.zeros((SIZE, SIZE), dtype=np.int64)
    mask[2:7, 2:7] = 7
    mask[11:17, 10:16] = 3
    seed = _seed(mask, depth, index)
    result = SlicePropagator(verification=False)(CopyPropagation(), torch.rand(SIZE, SIZE, depth), seed)
    assert set(torch.unique(result).tolist()) == {0, 3, 7}
    for k in range(depth):
        np.testing.assert_array_equal(result[..., k].numpy(), mask)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_every_slice_axis(axis):
    depth, index = 9, 4
    image = _structure_volume(depth=depth, present=range(2, 7))
    seed = _seed(_square(4), depth, index)
    result = SlicePropagator(axis=axis, ring_iterations=3)(
        CopyPropagation(), image.movedim(2, axis), seed.movedim(2, axis)
    )
    assert result.shape == image.movedim(2, axis).shape
    back = result.movedim(axis, 2)
    for k in range(depth):
        expected = _square(4) if 2 <= k <= 6 else np.zeros((SIZE, SIZE), dtype=np.int64)
        np.testing.assert_array_equal(back[..., k].numpy(), expected, err_msg=f"axis {axis}, slice {k}")


def _smooth_random_volume(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, *shape, generator=generator)
    smooth = torch.nn.functional.avg_pool3d(noise, 3, stride=1, padding=1)[0, 0]
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return smooth * 255


def test_block_size_does_not_change_the_result():
    torch.manual_seed(0)
    net = Sli2VolNet(channels=(4, 8), blocks_per_stage=1, feature_channels=4, radius=3).eval()
    depth, index = 7, 3
    image = _smooth_random_volume((16, 16, depth))
    seed = torch.zeros(16, 16, depth, dtype=torch.long)
    seed[4:11, 5:12, index] = 2
    results = {
        name: SlicePropagator(verification=False, min_overlap=0, **kwargs)(net, image, seed)
        for name, kwargs in {
            "default": {},
            "block_1": {"block_size": 1},
            "block_16": {"block_size": 16},
        }.items()
    }
    # A real propagation: the mask reaches several slices beyond the seed.
    assert sum(bool(results["default"][..., k].any()) for k in range(depth)) >= 3
    for name, result in results.items():
        assert torch.equal(result, results["default"]), name


def test_block_size_does_not_change_the_result_with_verification():
    torch.manual_seed(1)
    net = Sli2VolNet(channels=(4, 8), blocks_per_stage=1, feature_channels=4, radius=2).eval()
    image = _structure_volume(depth=9, present=range(2, 7)) + _smooth_random_volume((SIZE, SIZE, 9), seed=1) * 0.1
    seed = _seed(_square(), 9, 4)
    default = SlicePropagator(ring_iterations=3, min_overlap=0)(net, image, seed)
    assert sum(bool(default[..., k].any()) for k in range(9)) >= 3  # it propagates beyond the seed
    assert torch.equal(SlicePropagator(ring_iterations=3, min_overlap=0, block_size=1)(net, image, seed), default)
    assert torch.equal(SlicePropagator(ring_iterations=3, min_overlap=0, block_size=16)(net, image, seed), default)


def test_inferer_keeps_the_metadata():
    depth, index = 6, 2
    affine = torch.tensor([[2.0, 0, 0, -10], [0, 1.5, 0, 4], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    image = MetaTensor(torch.rand(1, SIZE, SIZE, depth) * 255, affine=affine, meta={"filename_or_obj": "/d/a.nii.gz"})
    seed = MetaTensor(_seed(_square(3), depth, index)[None].float(), affine=affine)
    batch = list_data_collate([{"image": image, "label": seed}])  # as a DataLoader would
    output = SlicePropagationInferer(verification=False)(batch["image"], CopyPropagation(), batch["label"])
    assert isinstance(output, MetaTensor)
    assert output.shape == (1, 1, SIZE, SIZE, depth)
    assert output.dtype == torch.float32
    torch.testing.assert_close(output.affine, affine[None].double())
    expected = torch.as_tensor(_square(3), dtype=torch.float32)[..., None].expand(-1, -1, depth)
    assert torch.equal(output[0, 0].as_tensor(), expected)
    # After decollation (before SaveImaged) each prediction carries its own image's grid and file name.
    item = decollate_batch({"pred": output})[0]["pred"]
    torch.testing.assert_close(item.affine, affine.double())
    assert item.meta["filename_or_obj"] == "/d/a.nii.gz"


def test_inferer_on_plain_tensors():
    depth, index = 4, 0
    image = torch.rand(1, 1, SIZE, SIZE, depth)
    seed = _seed(_square(2), depth, index)[None, None]
    output = SlicePropagationInferer(verification=False)(image, CopyPropagation(), seed)
    assert not isinstance(output, MetaTensor)
    assert output.shape == (1, 1, SIZE, SIZE, depth)
    assert torch.equal(output[0, 0], seed[0, 0, ..., 0:1].expand(-1, -1, depth).float())


def _dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_optical_flow_follows_a_moving_blob():
    size, depth, index, step = 32, 5, 2, 2
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    centres = [(16, 8 + step * k) for k in range(depth)]  # the blob moves 2 pixels right per slice
    image = np.stack(
        [255 * np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * 4.0**2)) for cy, cx in centres], axis=-1
    )
    truth = np.stack([((rows - cy) ** 2 + (cols - cx) ** 2 <= 5.0**2) for cy, cx in centres], axis=-1)
    seed = torch.zeros(size, size, depth, dtype=torch.long)
    seed[..., index] = torch.as_tensor(truth[..., index]).long()
    result = SlicePropagator(verification=False, min_overlap=0)(
        OpticalFlowPropagation(), torch.as_tensor(image, dtype=torch.float32), seed
    )
    for k in range(depth):
        assert _dice(result[..., k].numpy(), truth[..., k]) > 0.8, f"slice {k}"
    # The blob moved: a plain copy of the seed would fall short on the farthest slices.
    assert _dice(truth[..., index], truth[..., 0]) < 0.8


# --- keyframes, shape interpolation, several seeds, the stop rule ------------------------------------------------


def _centred_square(side, size=SIZE, value=1):
    mask = np.zeros((size, size), dtype=np.int64)
    start = (size - side) // 2
    mask[start : start + side, start : start + side] = value
    return mask


def test_signed_distance_is_negative_inside_and_counts_pixels():
    distance = signed_distance(_centred_square(4))  # rows and columns 8..11
    assert distance[9, 8] == -1 and distance[9, 7] == 1 and distance[9, 4] == 4
    np.testing.assert_array_equal(distance < 0, _centred_square(4) > 0)
    assert (signed_distance(np.zeros((5, 5), dtype=bool)) == 10).all()  # empty: further than any pixel


def test_interpolation_halfway_between_concentric_squares_has_the_mean_side():
    # Squares of side 4 and 12 about the same centre: halfway, signed distances average to a square of side 8
    # along the middle row and column (corners are rounded by the Euclidean distance).
    middle = interpolate_label_maps(_centred_square(4), _centred_square(12), 2)
    assert len(middle) == 1
    assert np.count_nonzero(middle[0][9]) == 8 and np.count_nonzero(middle[0][:, 9]) == 8
    assert (middle[0][_centred_square(4) > 0] == 1).all() and not middle[0][_centred_square(12) == 0].any()
    # Three slices apart: the slice next to the small square is closer to it.
    near_small, near_large = interpolate_label_maps(_centred_square(4), _centred_square(12), 3)
    assert np.count_nonzero(near_small) < np.count_nonzero(near_large)


def test_interpolation_per_label_and_towards_nothing():
    first = _centred_square(6, value=2)
    first[0:3, 0:3] = 5
    between = interpolate_label_maps(first, first, 4)
    assert all(np.array_equal(mask, first) for mask in between)  # identical ends: identical slices between
    shrinking = interpolate_label_maps(_centred_square(12), np.zeros((SIZE, SIZE), dtype=np.int64), 4)
    assert all(not mask[_centred_square(12) == 0].any() for mask in shrinking)  # nothing is added
    areas = [np.count_nonzero(mask) for mask in shrinking]
    assert 144 > areas[0] >= areas[1] >= areas[2]


def test_fusion_weights():
    small, large = _centred_square(4), _centred_square(12)
    np.testing.assert_array_equal(fuse_label_maps([small, large], [1, 0]), small)
    np.testing.assert_array_equal(fuse_label_maps([small, large], [0, 3]), large)
    with pytest.raises(ValueError, match="weight"):
        fuse_label_maps([small, large], [0, 0])


def test_keyframe_step_from_the_slice_spacing():
    propagator = SlicePropagator(step_mm=1.875)
    assert propagator.keyframe_step(0.625) == 3  # left-atrium MRI
    assert propagator.keyframe_step(10.0) == 1  # ACDC: never below one slice
    assert propagator.keyframe_step(None) == 1
    assert SlicePropagator(step=2).keyframe_step(0.625) == 2


def test_overlap_threshold_is_lower_for_slices_further_apart():
    propagator = SlicePropagator(step_mm=1.875, min_overlap=0.8)
    assert propagator.overlap_threshold(1.875) == propagator.overlap_threshold(0.625) == 0.8
    assert propagator.overlap_threshold(None) == 0.8
    assert propagator.overlap_threshold(10.0) == pytest.approx(0.8 ** (10.0 / 1.875))  # about 0.30
    assert SlicePropagator(min_overlap=0).overlap_threshold(10.0) == 0


class _CountingEncoder(CopyPropagation):
    def __init__(self):
        super().__init__()
        self.encoded = 0

    def encode(self, slices):
        self.encoded += slices.shape[0]
        return slices


def test_keyframes_encode_fewer_slices_and_fill_every_slice():
    depth, index = 13, 6
    model = _CountingEncoder()
    seed = _seed(_square(), depth, index)
    result = SlicePropagator(step=3, verification=False)(model, torch.rand(SIZE, SIZE, depth), seed)
    assert torch.equal(result, torch.as_tensor(_square())[..., None].expand(-1, -1, depth))
    assert model.encoded == 5  # slices 6, 3, 0, 9, 12


def test_keyframes_find_the_end_of_the_structure_slice_by_slice():
    # Same volume as the one-step test: a keyframe landing beyond the end is retried one slice away.
    image = _structure_volume(depth=9, present=[0, 2, 3, 4, 5, 6, 8])
    result = SlicePropagator(step=3, ring_iterations=3)(CopyPropagation(), image, _seed(_square(), 9, 4))
    for k in range(9):
        expected = _square() if 2 <= k <= 6 else np.zeros((SIZE, SIZE), dtype=np.int64)
        np.testing.assert_array_equal(result[..., k].numpy(), expected, err_msg=f"slice {k}")


def test_several_seeds_are_kept_and_fused_by_distance():
    depth = 11
    torch.manual_seed(0)
    net = Sli2VolNet(channels=(4, 8), blocks_per_stage=1, feature_channels=4, radius=3).eval()
    image = _smooth_random_volume((SIZE, SIZE, depth))
    seed = torch.zeros(SIZE, SIZE, depth, dtype=torch.long)
    seed[..., 2] = torch.as_tensor(_centred_square(4, value=3))
    seed[..., 8] = torch.as_tensor(_centred_square(10, value=3))
    result = SlicePropagator(step=2)(net, image, seed)
    for index in (2, 8):  # annotated slices come back unchanged
        assert torch.equal(result[..., index], seed[..., index])
    # With copies, the slices between are the shape interpolation of the two seeds.
    copied = SlicePropagator(step=2, verification=False)(CopyPropagation(), image, seed)
    expected = interpolate_label_maps(seed[..., 2].numpy(), seed[..., 8].numpy(), 6)
    for offset, mask in enumerate(expected, 1):
        np.testing.assert_array_equal(copied[..., 2 + offset].numpy(), mask)


def test_a_slice_between_two_identical_seeds_equals_them():
    depth = 9
    seed = torch.zeros(SIZE, SIZE, depth, dtype=torch.long)
    seed[..., 1] = seed[..., 7] = torch.as_tensor(_centred_square(6, value=4))
    image = torch.as_tensor(_previous_slice(3), dtype=torch.float32)[..., None].expand(-1, -1, depth)
    result = SlicePropagator(step=2, ring_iterations=3)(CopyPropagation(), image, seed)
    for index in range(1, 8):
        assert torch.equal(result[..., index], seed[..., 1]), f"slice {index}"


def test_stop_rule():
    previous = _centred_square(6)
    assert accepts_step(previous, previous, max_growth=None)
    assert not accepts_step(np.zeros_like(previous), previous, max_growth=None)  # empty: the paper's rule
    grown = _centred_square(10)  # 100 / 36 pixels
    assert accepts_step(grown, previous, max_growth=3.0) and not accepts_step(grown, previous, max_growth=2.0)
    moved = np.roll(previous, 4, axis=1)  # Dice 2 * 12 / 72 = 1/3 with the previous slice
    assert accepts_step(moved, previous, None, min_overlap=0.3) and not accepts_step(moved, previous, None, 0.4)


class _JumpingPropagation(CopyPropagation):
    """Moves the mask 8 pixels at every step: the mask leaves the structure without ever vanishing."""

    def propagate(self, target_features, reference_features, values):
        return torch.roll(values, 8, dims=-1)


def test_a_direction_stops_where_its_mask_jumps_away():
    depth, index = 7, 3
    seed = _seed(_square(), depth, index)
    image = torch.rand(SIZE, SIZE, depth)
    drifting = SlicePropagator(verification=False, min_overlap=0)(_JumpingPropagation(), image, seed)
    assert all(drifting[..., k].any() for k in range(depth))
    stopped = SlicePropagator(verification=False, min_overlap=0.5)(_JumpingPropagation(), image, seed)
    assert torch.equal(stopped, seed)


class _BatchRecorder(CopyPropagation):
    def __init__(self):
        super().__init__()
        self.batches = []

    def encode(self, slices):
        self.batches.append(slices.shape[0])
        return slices


def test_keyframes_are_encoded_block_size_at_a_time():
    depth, index = 31, 15
    model = _BatchRecorder()
    SlicePropagator(step=3, block_size=4, verification=False)(
        model, torch.rand(SIZE, SIZE, depth), _seed(_square(), depth, index)
    )
    # Keyframes 12, 9, 6, 3 together, the seed, keyframe 0; then 18, 21, 24, 27 together and 30.
    assert model.batches == [4, 1, 1, 4, 1]
