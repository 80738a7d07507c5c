"""Training-volume preparation: fast helpers against straightforward ones, and grt123 fidelity."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import convex_hull_image

from dsbprep.geometry import voxel_to_world, world_to_voxel
from dsbprep.preprocess import (
    convex_hull_2d,
    convex_hull_slices,
    dilate_cross,
    prepare_lung_volume,
    resample_box,
    window_to_uint8,
    zoom_geometry,
)


def _blobs(rng, shape, threshold=0.55, sigma=2.5):
    return ndimage.gaussian_filter(rng.random(shape), sigma) > threshold


@pytest.mark.parametrize("seed", range(40))
def test_convex_hull_2d_equals_skimage(seed):
    rng = np.random.default_rng(seed)
    img = _blobs(rng, (int(rng.integers(5, 60)), int(rng.integers(5, 60))), 0.5 + 0.03 * rng.standard_normal())
    if img.sum() == 0:
        img[rng.integers(img.shape[0]), rng.integers(img.shape[1])] = True
    np.testing.assert_array_equal(convex_hull_2d(img), convex_hull_image(img))


@pytest.mark.parametrize("points", [[(0, 0)], [(0, 0), (0, 5)], [(1, 1), (3, 3), (5, 5)]])
def test_convex_hull_2d_degenerate(points):
    img = np.zeros((7, 7), bool)
    for r, c in points:
        img[r, c] = True
    np.testing.assert_array_equal(convex_hull_2d(img), convex_hull_image(img))


def test_convex_hull_slices_keeps_slice_when_hull_too_big():
    mask = np.zeros((2, 30, 30), bool)
    mask[0, 5:10, 5:10] = True
    mask[0, 20:25, 20:25] = True  # far apart: hull area 2.5x the pixels -> slice kept
    mask[1, 5:25, 5:12] = True
    mask[1, 5:12, 5:25] = True  # a thick L: its hull is < 2x its area -> replaced by the hull
    out = convex_hull_slices(mask, max_area_ratio=2.0)
    assert convex_hull_image(mask[0]).sum() > 2 * mask[0].sum()
    assert convex_hull_image(mask[1]).sum() <= 2 * mask[1].sum()
    np.testing.assert_array_equal(out[0], mask[0])
    np.testing.assert_array_equal(out[1], convex_hull_image(mask[1]))


@pytest.mark.parametrize("iterations", [0, 1, 3, 10])
def test_dilate_cross_equals_scipy(iterations):
    mask = _blobs(np.random.default_rng(iterations), (30, 40, 35), 0.62)
    expected = (ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1), iterations=iterations)
                if iterations else mask)
    np.testing.assert_array_equal(dilate_cross(mask, iterations), expected)


def test_window_lut_equals_formula():
    values = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    expected = (np.clip((values.astype(np.float64) + 1200) / 1800, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(window_to_uint8(values), expected)
    np.testing.assert_array_equal(window_to_uint8(values.astype(np.float32)), expected)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("spacing", [(2.5, 0.7, 0.7), (1.25, 0.8, 0.8), (0.9, 1.3, 1.3)])
def test_resample_box_equals_zoom_then_crop(order, spacing):
    rng = np.random.default_rng(3)
    vol = (rng.random((23, 31, 29)) * 255).astype(np.uint8)
    new_shape, scale = zoom_geometry(vol.shape, spacing, (1.0, 1.0, 1.0))
    full = ndimage.zoom(vol, new_shape / np.array(vol.shape), order=order, mode="nearest")
    assert full.shape == tuple(new_shape)
    for box in ([[0, new_shape[0]], [0, new_shape[1]], [0, new_shape[2]]],
                [[3, new_shape[0] - 2], [5, 17], [1, new_shape[2]]]):
        box = np.array(box)
        got = resample_box(vol, scale, box, order)
        want = full[box[0, 0]:box[0, 1], box[1, 0]:box[1, 1], box[2, 0]:box[2, 1]]
        assert got.shape == want.shape
        # sample positions are computed with a different (but equal in exact arithmetic)
        # offset, so a value that lands on .5 may round the other way: 1 grey level, rarely
        diff = np.abs(got.astype(int) - want.astype(int))
        assert (diff == 0).mean() >= 0.999
        if order == 1:
            assert diff.max() <= 1


def test_geometry_round_trip():
    direction = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)
    idx = np.random.default_rng(0).random((10, 3)) * 100
    world = voxel_to_world(idx, (-340, 12.5, -7), (2.5, 0.7, 0.8), direction)
    np.testing.assert_allclose(world_to_voxel(world, (-340, 12.5, -7), (2.5, 0.7, 0.8), direction), idx)


def test_prepare_rejects_empty_masks():
    hu = np.zeros((4, 8, 8), np.int16)
    empty = np.zeros(hu.shape, bool)
    with pytest.raises(ValueError, match="empty"):
        prepare_lung_volume(hu, (1, 1, 1), empty, empty)


def test_matches_grt123_clean_volume(lidc_dir, reference_npz):
    """Given grt123's own lung masks, our training volume equals its ``_clean.npy`` voxel for voxel."""
    from dsbprep.dicom import load_scan

    ref = np.load(reference_npz)
    scan = load_scan(lidc_dir)
    tv = prepare_lung_volume(scan.hu, scan.spacing, ref["m1"], ref["m2"])
    clean = ref["clean"][0]
    assert tv.image.shape == clean.shape
    np.testing.assert_array_equal(tv.crop_box, ref["extendbox"])
    np.testing.assert_array_equal(tv.image, clean)
    # labels: resampled with order 0, on the same grid
    assert tv.labels.shape == clean.shape
    assert set(np.unique(tv.labels)) == {0, 1, 2}
    # geometry: a stored voxel maps back to the original voxel grid and stays inside it
    corner = tv.original_index(np.array(tv.image.shape) - 1)
    assert np.all(corner <= np.array(scan.hu.shape) - 1 + 1e-9)
    np.testing.assert_allclose(tv.stored_index(tv.original_index([5, 6, 7])), [5, 6, 7])
