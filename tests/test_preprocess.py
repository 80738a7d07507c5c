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
        np.testing.assert_array_equal(got, want)  # uint8, order 0 and 1: exact


@pytest.mark.parametrize("seed", range(60))
def test_resample_box_exact_on_random_volumes(seed):
    """Differential test of the separable fast paths against ``ndimage.zoom`` + crop.

    Volumes of few distinct values and spacings that are simple fractions of the
    target make many samples land exactly on x.5, where the rounding must still
    be zoom's.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(2, 28, 3))
    kind = seed % 3
    if kind == 0:
        vol = rng.integers(0, 256, shape).astype(np.uint8)
    elif kind == 1:
        vol = rng.choice(np.array([0, 1, 100, 101, 170, 255], np.uint8), shape)
    else:
        vol = (ndimage.gaussian_filter(rng.random(shape), 2) * 255).astype(np.uint8)
    if seed % 2:
        spacing = tuple(rng.choice([0.5, 0.625, 0.7, 1.0, 1.25, 2.0, 2.5, 3.0], 3))
    else:
        spacing = tuple(rng.uniform(0.3, 3.0, 3))
    target = float(rng.choice([0.5, 1.0, 2.0]))
    new_shape, scale = zoom_geometry(shape, spacing, (target,) * 3)
    start = [int(rng.integers(0, n)) for n in new_shape]
    box = np.array([[a, int(rng.integers(a + 1, n + 1))] for a, n in zip(start, new_shape, strict=True)])
    crop = tuple(slice(a, b) for a, b in box)
    for order in (0, 1):
        want = ndimage.zoom(vol, new_shape / np.array(shape), order=order, mode="nearest")[crop]
        np.testing.assert_array_equal(resample_box(vol, scale, box, order), want)
    labels = rng.integers(0, 3, shape).astype(np.int16)  # order 0 is exact for any dtype
    want = ndimage.zoom(labels, new_shape / np.array(shape), order=0, mode="nearest")[crop]
    np.testing.assert_array_equal(resample_box(labels, scale, box, 0), want)


def test_resample_box_other_dtypes_close_to_zoom():
    """float and order > 1 go through scipy (positions with an offset: equal up to rounding)."""
    vol = np.random.default_rng(5).random((12, 20, 18)).astype(np.float32)
    new_shape, scale = zoom_geometry(vol.shape, (2.0, 0.8, 0.8), (1.0, 1.0, 1.0))
    box = np.array([[2, new_shape[0] - 1], [0, new_shape[1]], [3, 11]])
    want = ndimage.zoom(vol, new_shape / np.array(vol.shape), order=1, mode="nearest")
    got = resample_box(vol, scale, box, 1)
    np.testing.assert_allclose(got, want[2:new_shape[0] - 1, :, 3:11], atol=1e-5)


@pytest.mark.parametrize("seed", range(10))
def test_erode_cross_2d_equals_scipy(seed):
    from dsbprep.geometry import erode_cross_in_plane as _erode_cross_2d

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    mask = _blobs(rng, shape, 0.45) if min(shape) > 3 else rng.random(shape) > 0.3
    np.testing.assert_array_equal(_erode_cross_2d(mask), ndimage.binary_erosion(mask, border_value=0))
    stack = rng.random((3, *shape)) > 0.3  # planes of a volume: the cross as the middle plane
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    np.testing.assert_array_equal(
        _erode_cross_2d(stack), ndimage.binary_erosion(stack, structure, border_value=0)
    )


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
