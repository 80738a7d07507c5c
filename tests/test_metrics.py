"""Tests of dsbprep.metrics (known answers, brute-force differential) and dsbprep.evaluate."""

from __future__ import annotations

import json
import math

import nrrd
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from dsbprep.evaluate import evaluate, main
from dsbprep.metrics import (
    dice,
    hausdorff_distance,
    score_labels,
    score_masks,
    surface_dice,
    surface_distances,
    surface_voxels,
)
from dsbprep.store import CaseData, DatasetWriter


def square(shape=(24, 24), top=5, left=5, size=10) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def sphere(shape, center_mm, radius_mm, spacing) -> np.ndarray:
    grid = np.indices(shape).astype(float) * np.asarray(spacing, float).reshape(
        -1, *([1] * len(shape))
    )
    d2 = sum((grid[i] - center_mm[i]) ** 2 for i in range(len(shape)))
    return d2 <= radius_mm**2


def brute_force(pred, truth, spacing, tolerance, percentile):
    """Straightforward reference: surface voxels by the definition, all pairwise distances."""

    def surface(m):
        padded = np.pad(m, 1)
        inner = np.ones_like(m)
        for axis in range(m.ndim):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=axis)[(slice(1, -1),) * m.ndim]
        return np.argwhere(m & ~inner) * np.asarray(spacing, float)

    sp, st = surface(pred), surface(truth)
    d_pt = cdist(sp, st).min(axis=1)
    d_tp = cdist(st, sp).min(axis=1)
    sdice = (np.sum(d_pt <= tolerance) + np.sum(d_tp <= tolerance)) / (len(d_pt) + len(d_tp))
    hd = max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile))
    return sdice, hd


# --- Dice -------------------------------------------------------------------------------------


def test_dice_literal_arrays():
    assert dice(np.array([[1, 1, 0, 0]]), np.array([[0, 1, 1, 0]])) == 0.5
    assert dice(np.array([[1, 1], [1, 1]]), np.array([[1, 1], [1, 1]])) == 1.0
    assert dice(np.array([[1, 0]]), np.array([[0, 1]])) == 0.0
    # label values do not matter, only non-zero
    assert dice(np.array([[3, 0, 7]]), np.array([[1, 0, 1]])) == 1.0


@pytest.mark.parametrize("shift", [1, 3, 7])
def test_dice_of_shifted_square_is_exact(shift):
    a = square()
    b = np.roll(a, shift, axis=1)
    assert dice(a, b) == pytest.approx((10 - shift) / 10)


def test_empty_mask_conventions():
    empty = np.zeros((6, 6), bool)
    full = square((6, 6), 1, 1, 3)
    assert dice(empty, empty) == 1.0
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert surface_dice(empty, empty, (1, 1)) == 1.0
    assert surface_dice(full, empty, (1, 1)) == 0.0
    assert surface_dice(empty, full, (1, 1)) == 0.0
    assert hausdorff_distance(empty, empty, (1, 1)) == 0.0
    assert hausdorff_distance(full, empty, (1, 1)) == math.inf
    assert hausdorff_distance(empty, full, (1, 1)) == math.inf
    s = score_masks(empty, full, (1, 1))
    assert (s.dice, s.surface_dice, s.hausdorff, s.pred_voxels, s.truth_voxels) == (
        0.0,
        0.0,
        math.inf,
        0,
        9,
    )


# --- surfaces and distances --------------------------------------------------------------------


def test_surface_voxels_of_square_and_border():
    m = square((7, 7), 1, 1, 5)
    s = surface_voxels(m)
    assert s.sum() == 16  # 5x5 square: 25 - 9 interior
    assert not s[2:5, 2:5].any()
    # a mask touching the image border has its surface there (outside = background)
    assert surface_voxels(np.ones((3, 3), bool)).sum() == 8


def test_shifted_square_hausdorff_is_shift_times_spacing():
    a = square()
    b = np.roll(a, 3, axis=1)
    assert hausdorff_distance(a, b, spacing=(1.0, 1.0), percentile=100) == 3.0
    assert hausdorff_distance(a, b, spacing=(1.0, 0.7), percentile=100) == pytest.approx(2.1)
    # shift along y with anisotropic spacing uses the y spacing
    c = np.roll(a, 2, axis=0)
    assert hausdorff_distance(a, c, spacing=(2.5, 0.7), percentile=100) == pytest.approx(5.0)
    assert hausdorff_distance(a, a, spacing=(2.5, 0.7)) == 0.0


def test_shifted_square_surface_dice_by_hand():
    a = square(size=4)
    b = np.roll(a, 1, axis=0)
    # 12 surface pixels each; 6 of each lie exactly on the other's surface (the side columns
    # and the shared corners), the others are one pixel away
    assert surface_dice(a, b, spacing=(1.0, 1.0), tolerance_mm=0.5) == 0.5
    assert surface_dice(a, b, spacing=(1.0, 1.0), tolerance_mm=1.0) == 1.0
    # 1 pixel = 2 mm along y: the 4 pixels of the leading edge are 2 mm away and fail a
    # 1.5 mm tolerance; the 2 inner pixels of the trailing edge are 1 mm (one x pixel) from
    # the other square's side columns and pass: 8 of 12 per square
    assert surface_dice(a, b, spacing=(2.0, 1.0), tolerance_mm=1.5) == pytest.approx(2 / 3)


def test_surface_distances_literal():
    a = np.zeros((1, 6), bool)
    a[0, :2] = True
    b = np.zeros((1, 6), bool)
    b[0, 3:5] = True
    d_ab, d_ba = surface_distances(a, b, spacing=(1.0, 0.5))
    assert d_ab.tolist() == [1.5, 1.0]
    assert d_ba.tolist() == [1.0, 1.5]


def test_two_offset_spheres_known_answers():
    spacing = (2.0, 1.0, 1.0)  # anisotropic: the answers are in mm
    shape = (24, 48, 48)
    r, d = 10.0, 4.0
    a = sphere(shape, (24.0, 24.0, 22.0), r, spacing)
    b = sphere(shape, (24.0, 24.0, 22.0 + d), r, spacing)
    # lens volume of two spheres of radius r at distance d: pi (4r + d)(2r - d)^2 / 12
    expected_dice = (np.pi * (4 * r + d) * (2 * r - d) ** 2 / 12) / (4 / 3 * np.pi * r**3)
    assert dice(a, b) == pytest.approx(expected_dice, abs=0.02)
    # continuous Hausdorff distance of the two spheres is exactly d
    assert hausdorff_distance(a, b, spacing, percentile=100) == pytest.approx(d, abs=1.0)
    hd95 = hausdorff_distance(a, b, spacing)
    assert 0 < hd95 < d + 1.0
    assert surface_dice(a, b, spacing, tolerance_mm=d + 1.0) == 1.0
    assert surface_dice(a, b, spacing, tolerance_mm=1.0) < 0.7
    s = score_masks(a, b, spacing, tolerance_mm=d + 1.0)
    assert (s.dice, s.surface_dice, s.hausdorff) == (dice(a, b), 1.0, hd95)


@pytest.mark.parametrize(
    "shape, spacing",
    [
        ((20, 22), (1.0, 1.0)),
        ((20, 22), (0.7, 2.5)),
        ((9, 12, 11), (2.5, 0.7, 0.7)),
        ((9, 12, 11), (1.0, 1.0, 3.0)),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(shape, spacing, seed):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    # blobby random masks (smoothed noise), one touching the border
    a = ndimage.uniform_filter(rng.random(shape), 3) > 0.55
    b = ndimage.uniform_filter(rng.random(shape), 3) > 0.55
    a[(0,) * len(shape)] = True
    assert a.any() and b.any()
    for tolerance, percentile in ((1.0, 95.0), (2.6, 50.0), (0.0, 100.0)):
        ref_sdice, ref_hd = brute_force(a, b, spacing, tolerance, percentile)
        assert surface_dice(a, b, spacing, tolerance) == pytest.approx(ref_sdice, abs=1e-12)
        assert hausdorff_distance(a, b, spacing, percentile) == pytest.approx(ref_hd, abs=1e-9)


def test_score_labels_per_label():
    truth = np.array([[1, 1, 2, 2, 0, 0]])
    pred = np.array([[1, 2, 2, 2, 0, 3]])
    scores = score_labels(pred, truth, (1.0, 1.0))
    assert list(scores) == [1, 2, 3]
    assert scores[1].dice == pytest.approx(2 / 3)
    assert scores[2].dice == pytest.approx(0.8)
    assert scores[3].dice == 0.0 and scores[3].hausdorff == math.inf
    assert list(score_labels(pred, truth, (1.0, 1.0), labels=[2])) == [2]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: dice(np.zeros((3, 3)), np.zeros((3, 4))), "shape"),
        (lambda: dice(np.zeros(3), np.zeros(3)), "2-D"),
        (lambda: surface_dice(square(), square(), spacing=(1.0,)), "2 values"),
        (lambda: surface_dice(square(), square(), spacing=(1.0, -1.0)), "positive"),
        (lambda: surface_dice(square(), square(), spacing=None), "spacing is required"),
        (lambda: surface_dice(square(), square(), (1, 1), tolerance_mm=-1), "tolerance"),
        (lambda: hausdorff_distance(square(), square(), (1, 1), percentile=101), "percentile"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- python -m dsbprep.evaluate -----------------------------------------------------------------


def _write_dataset(path, cases, kind="volume"):
    with DatasetWriter(
        path,
        image_dtype="int16",
        kind=kind,
        chunks=(1, 32, 32) if kind == "slices" else (8, 32, 32),
    ) as w:
        for case_id, mask, spacing in cases:
            w.append(
                CaseData(
                    case_id, np.zeros(mask.shape, np.int16), mask.astype(np.uint8), spacing=spacing
                )
            )


def test_evaluate_hdf5_files_per_case(tmp_path, capsys):
    spacing = (2.0, 1.0, 1.0)
    truth_a = sphere((12, 32, 32), (12.0, 16.0, 14.0), 8.0, spacing).astype(np.uint8)
    pred_a = sphere((12, 32, 32), (12.0, 16.0, 16.0), 8.0, spacing).astype(np.uint8)
    truth_b = truth_a * 2
    _write_dataset(
        tmp_path / "truth.h5",
        [("a", truth_a, spacing), ("b", truth_b, spacing), ("c", truth_a, spacing)],
    )
    _write_dataset(tmp_path / "pred.h5", [("a", pred_a, spacing), ("b", truth_b, spacing)])
    out = tmp_path / "scores.json"
    status = main([str(tmp_path / "pred.h5"), str(tmp_path / "truth.h5"), "--json", str(out)])
    text = capsys.readouterr().out
    assert status == 1  # case c is missing from the prediction
    assert "NOT SCORED c" in text and "HD95_mm" in text
    result = json.loads(out.read_text())
    assert set(result["cases"]) == {"a", "b"}
    expected = score_masks(pred_a, truth_a, spacing)
    assert result["cases"]["a"]["1"]["dice"] == pytest.approx(expected.dice)
    assert result["cases"]["a"]["1"]["hausdorff"] == pytest.approx(expected.hausdorff)
    assert (
        result["cases"]["b"]["2"]["dice"] == 1.0 and result["cases"]["b"]["2"]["hausdorff"] == 0.0
    )
    assert result["mean"]["1"]["n_cases"] == 1


def test_evaluate_2d_cases_are_scored_in_2d(tmp_path):
    truth = square((1, 24, 24)[1:])[None].astype(np.uint8)
    pred = np.roll(truth, 2, axis=2)
    _write_dataset(tmp_path / "t.h5", [("s", truth, (5.0, 0.5, 0.5))], kind="slices")
    _write_dataset(tmp_path / "p.h5", [("s", pred, (5.0, 0.5, 0.5))], kind="slices")
    result = evaluate(tmp_path / "p.h5", tmp_path / "t.h5", percentile=100)
    # in 3-D every pixel of a one-slice mask would be surface; in 2-D the HD is the shift
    assert result["cases"]["s"]["1"]["hausdorff"] == pytest.approx(1.0)
    assert result["cases"]["s"]["1"]["dice"] == pytest.approx(0.8)


def test_evaluate_nrrd_files(tmp_path, capsys):
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.8, 0.8, 2.5]),
        "space origin": np.array([-10.0, 5.0, 100.0]),
    }
    truth = np.zeros((20, 20, 8), np.uint8)  # pynrrd's default Fortran order: (x, y, z)
    truth[5:15, 5:15, 2:6] = 1
    pred = np.roll(truth, 1, axis=0)
    nrrd.write(str(tmp_path / "truth.nrrd"), truth, header)
    nrrd.write(str(tmp_path / "pred.nrrd"), pred, header)
    assert (
        main([str(tmp_path / "pred.nrrd"), str(tmp_path / "truth.nrrd"), "--percentile", "100"])
        == 0
    )
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("truth.nrrd")][0]
    fields = line.split()
    assert float(fields[2]) == pytest.approx(0.9)  # dice: shift 1 of 10 along x
    assert float(fields[4]) == pytest.approx(0.8)  # HD100 = one x voxel = 0.8 mm
    # a prediction on another grid is refused with the reason
    nrrd.write(
        str(tmp_path / "moved.nrrd"), pred, {**header, "space origin": np.array([0.0, 5.0, 100.0])}
    )
    assert main([str(tmp_path / "moved.nrrd"), str(tmp_path / "truth.nrrd")]) == 2
    assert "origin" in capsys.readouterr().err


def test_evaluate_refuses_mixed_inputs(tmp_path, capsys):
    (tmp_path / "a.h5").write_bytes(b"")
    (tmp_path / "b.nrrd").write_bytes(b"")
    assert main([str(tmp_path / "a.h5"), str(tmp_path / "b.nrrd")]) == 2
    assert "same kind" in capsys.readouterr().err


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.9)])
def test_kdtree_distances_equal_distance_transform(spacing):
    """Differential: the k-d tree path against scipy's EDT with sampling=spacing on the whole image."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    a = ndimage.uniform_filter(rng.random((14, 30, 26)), 4) > 0.52
    b = np.roll(a, (1, 2, -3), axis=(0, 1, 2)) | sphere(a.shape, (10.0, 10.0, 10.0), 5.0, (1, 1, 1))
    d_ab, d_ba = surface_distances(a, b, spacing)
    sa, sb = surface_voxels(a), surface_voxels(b)
    assert np.allclose(d_ab, ndimage.distance_transform_edt(~sb, sampling=spacing)[sa])
    assert np.allclose(d_ba, ndimage.distance_transform_edt(~sa, sampling=spacing)[sb])
