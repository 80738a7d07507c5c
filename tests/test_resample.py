"""One resampling per patch equals a straightforward scipy.ndimage reference.

Design: for many random draws (flips, rot90, in-plane and 3-axis rotations, isotropic
and per-axis scaling) and patch shapes, 2-D and 3-D, the reference builds the
output -> input matrix of the draw from the written-out formulas below (not from
dsbprep's code) and calls ``scipy.ndimage.affine_transform`` once on the *whole*
volume, ``mode="grid-constant"`` with the pad value outside, so it also checks
that the box dsbprep reads around the patch holds every voxel the map touches.
dsbprep reads that box and resamples it (compiled loops when numba is installed,
and the numpy paths in every run). The image must be within one grey level of
the reference (and within 1e-3 for float output), the mask identical except at
exact ties of nearest-neighbour rounding (a coordinate exactly halfway).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from dsbprep.augment import Compose, Flip, Rot90, Rotate, Scale, _kernels, resample
from dsbprep.augment.compose import cut
from dsbprep.loader import BatchLoader
from dsbprep.store import CaseData, DatasetWriter

PAD = 170
DRAWS = 60

MODES = [False] + ([True] if _kernels.AVAILABLE else [])


@pytest.fixture(params=MODES, ids=lambda c: "compiled" if c else "numpy")
def compiled(request, monkeypatch):
    monkeypatch.setattr(resample, "COMPILED", request.param)
    return request.param


def volume(shape, seed):
    """A smooth uint8 volume (edges interpolate to many grey levels) and a 3-label mask."""
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    v = np.clip((v - v.mean()) / v.std() * 50 + 120, 0, 255).astype(np.uint8)
    mask = (v > 130).astype(np.uint8) + (v > 160) + (v > 190)
    return v, mask


def rotation(degrees, axes):
    """Output -> input map of a rotation by ``degrees`` in the plane of ``axes`` (3 x 3)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    out = np.eye(3)
    i, j = axes
    out[i, i], out[i, j], out[j, i], out[j, j] = c, s, -s, c
    return out


def reference_matrix(aug, params, ndim):
    """The draw's output -> input matrix, written out from the parameters."""
    m = np.eye(3)
    for p in params:
        if p["name"] == "flip":
            d = [(-1.0 if a in p["axes"] and (a != "z" or ndim == 3) else 1.0) for a in "zyx"]
            step = np.diag(d)
        elif p["name"] == "rot90":
            step = np.linalg.matrix_power(rotation(90, (1, 2)), p["k"] % 4)
        elif p["name"] == "rotate":
            step = rotation(p["degrees"], (1, 2))
            if ndim == 3:
                step = step @ rotation(p.get("degrees_zy", 0), (0, 1))
                step = step @ rotation(p.get("degrees_zx", 0), (0, 2))
        else:
            zoom = np.array(p["zoom"], float)
            step = np.diag(1 / (zoom if ndim == 3 else np.array([1.0, zoom[1], zoom[2]])))
        m = m @ step
    return m


def random_aug(rng, square):
    transforms = [Flip(p=0.5)]
    if square:
        transforms.append(Rot90())
    transforms.append(Rotate(max_degrees=180, p=0.8, max_degrees_3d=float(rng.choice([0, 30]))))
    transforms.append(Scale(zoom=(0.6, 1.5), p=0.6, per_axis=bool(rng.random() < 0.5)))
    return Compose(transforms)


def check_against_scipy(vol, mask, aug, params, origin, patch, ndim, dtype):
    """dsbprep's box read + one resampling vs scipy on the whole volume."""
    mapping, lo, hi = aug.plan(params, patch, ndim)
    start = np.asarray(origin) + lo
    region = cut(vol, start, start + (hi - lo), PAD)
    region_mask = cut(mask, start, start + (hi - lo), 0)
    got, got_mask = aug.render(region, region_mask, mapping.shifted(lo), patch, params, dtype)
    matrix = reference_matrix(aug, params, ndim)
    centre = (np.asarray(patch, float) - 1) / 2
    offset = np.asarray(origin, float) + centre - matrix @ centre
    want = ndimage.affine_transform(
        vol.astype(np.float64), matrix, offset, output_shape=patch, order=1,
        mode="grid-constant", cval=PAD,
    )  # fmt: skip
    want_mask = ndimage.affine_transform(
        mask, matrix, offset, output_shape=patch, order=0, mode="grid-constant", cval=0
    )
    tolerance = 1.0 if np.dtype(dtype).kind in "iu" else 1e-3
    np.testing.assert_array_less(np.abs(got.astype(np.float64) - want), tolerance + 1e-9)
    differ = np.argwhere(np.asarray(got_mask) != want_mask)
    if len(differ):  # only exact ties of the nearest-neighbour rounding may differ
        coords = differ @ matrix.T + offset
        assert np.all(np.min(np.abs(coords - np.floor(coords) - 0.5), axis=1) < 1e-6), differ[:5]


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_3d_patches_equal_scipy(compiled, dtype):
    vol, mask = volume((40, 64, 72), 0)
    rng = np.random.default_rng(1)
    for _ in range(DRAWS):
        square = rng.random() < 0.5
        yx = int(rng.integers(6, 30))
        patch = (int(rng.integers(1, 20)), yx, yx if square else int(rng.integers(6, 30)))
        aug = random_aug(rng, square)
        params = aug.draw(rng)
        origin = rng.integers(-10, 45, 3)  # some patches cross the volume's border
        check_against_scipy(vol, mask, aug, params, origin, patch, 3, dtype)


def test_2d_patches_equal_scipy(compiled):
    vol, mask = volume((1, 80, 90), 2)
    rng = np.random.default_rng(3)
    for _ in range(DRAWS):
        square = rng.random() < 0.5
        y = int(rng.integers(6, 50))
        patch = (1, y, y if square else int(rng.integers(6, 50)))
        aug = random_aug(rng, square)
        params = aug.draw(rng)
        origin = (0, *rng.integers(-10, 60, 2))
        check_against_scipy(vol, mask, aug, params, origin, patch, 2, np.uint8)


def test_in_plane_rotation_reads_only_the_patch_slices():
    aug = Compose([Rotate(max_degrees=15, p=1.0)])
    params = [{"name": "rotate", "degrees": 15.0}]
    mapping, lo, hi = aug.plan(params, (96, 96, 96), 3)
    assert mapping.is_inplane and (lo[0], hi[0]) == (0, 96)
    # The rotated 96 x 96 square needs 96 (cos 15 + sin 15) = 117.6 voxels in-plane.
    assert np.all(hi[1:] - lo[1:] <= 120)
    flips = Compose([Flip(p=1.0), Rot90()])
    mapping, lo, hi = flips.plan(flips.draw(0), (8, 16, 16), 3)
    assert mapping.is_permutation and lo.tolist() == [0, 0, 0] and hi.tolist() == [8, 16, 16]


def test_flips_and_quarter_turns_stay_views():
    vol, mask = volume((8, 16, 16), 4)
    aug = Compose([Flip(p=1.0), Rot90()])
    image, m, _ = aug.apply(vol, mask, None, aug.draw(5))
    assert np.shares_memory(image, vol) and np.shares_memory(m, mask)


def test_loader_patches_equal_scipy_on_the_stored_case(tmp_path):
    """End to end: BatchLoader reads the box from the file and matches scipy on the case."""
    vol, mask = volume((50, 70, 80), 6)
    path = tmp_path / "v.h5"
    with DatasetWriter(path, chunks=(16, 32, 32), compression="blosc-lz4", pad_value=PAD) as w:
        w.append(CaseData("c0", vol, mask))
    aug = Compose([Flip(), Rot90(), Rotate(30, p=0.9, max_degrees_3d=20), Scale(p=0.7)])
    loader = BatchLoader(path, patch_size=24, batch_size=1, augment=aug, seed=3, dtype="image")
    for epoch in range(12):
        sample = loader.sample(epoch, 0)
        patch = (24, 24, 24)
        matrix = reference_matrix(aug, sample.params, 3)
        centre = (np.asarray(patch, float) - 1) / 2
        offset = sample.origin + centre - matrix @ centre
        want = ndimage.affine_transform(
            vol.astype(float), matrix, offset, output_shape=patch, order=1,
            mode="grid-constant", cval=PAD,
        )  # fmt: skip
        assert np.abs(sample.image.astype(float) - want).max() <= 1.0
