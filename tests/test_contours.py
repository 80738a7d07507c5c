"""Tests of the contour-file source (dsbprep.sources.contours) on the real Sunnybrook data."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy import ndimage

from dsbprep.build import run_build
from dsbprep.config import load_config
from dsbprep.errors import MaskSourceError
from dsbprep.sources import get_source
from dsbprep.sources.contours import (
    LABEL_BLOOD_POOL,
    LABEL_MYOCARDIUM,
    ContourSource,
    contour_mask,
    discover_contour_cases,
    frame_mask,
    read_contour,
    read_dicom_frame,
    resample_frame,
)
from dsbprep.store import open_dataset

#: PROVENANCE.md of sunnybrook: patient -> (contour folder, i-contours, o-contours).
PATIENTS = {
    "SCD0000101": ("SC-HF-I-1", 18, 9),
    "SCD0000201": ("SC-HF-I-2", 18, 9),
    "SCD0000301": ("SC-HF-I-4", 20, 10),
    "SCD0000401": ("SC-HF-I-5", 18, 9),
    "SCD0000501": ("SC-HF-I-6", 22, 9),
}
N_DICOM_FILES = 136  # the subset kept: every contoured frame + a few without contours


@pytest.fixture(scope="module")
def processed(sunnybrook_dir):
    """Every contoured frame, processed once: list of (task, case)."""
    src = ContourSource()
    return [(task, src.process(task)) for task in src.discover(sunnybrook_dir)]


# --- contour files and polygons --------------------------------------------------------------


def test_read_contour(sunnybrook_dir, tmp_path):
    points = read_contour(
        sunnybrook_dir / "contourfiles/SC-HF-I-1/i-contours/IM-0001-0048-icontour-manual.txt"
    )
    assert points.ndim == 2 and points.shape[1] == 2 and 57 <= len(points) <= 313
    assert (points > 0).all() and (points < 256).all()
    bad = tmp_path / "bad.txt"
    bad.write_text("1.0 2.0\n3.0 four\n")
    with pytest.raises(MaskSourceError, match=r"bad\.txt: line 2"):
        read_contour(bad)
    bad.write_text("1.0 2.0\n3.0 4.0\n")
    with pytest.raises(MaskSourceError, match="at least 3 points"):
        read_contour(bad)
    with pytest.raises(MaskSourceError, match="cannot read"):
        read_contour(tmp_path / "absent.txt")


def test_contour_mask_literal_square():
    m = contour_mask(np.array([[1.0, 1.0], [4.0, 1.0], [4.0, 3.0], [1.0, 3.0]]), (5, 6))
    expected = np.zeros((5, 6), bool)
    expected[1:4, 1:5] = (
        True  # rows = y 1..3, columns = x 1..4 (pixel centres on the boundary count)
    )
    assert np.array_equal(m, expected)


def test_frame_mask_labels():
    sq = lambda a, b: np.array([[a, a], [b, a], [b, b], [a, b]], float)  # noqa: E731
    m = frame_mask((10, 10), icontour=sq(4, 5), ocontour=sq(2, 7))
    assert m[4:6, 4:6].tolist() == [[LABEL_BLOOD_POOL] * 2] * 2
    assert (m == LABEL_MYOCARDIUM).sum() == 36 - 4 and (m == 0).sum() == 64
    only_i = frame_mask((10, 10), icontour=sq(4, 5))
    assert set(np.unique(only_i)) == {0, LABEL_BLOOD_POOL}


def test_corrupt_polygon_is_refused_with_the_file_name():
    whole = np.array([[-1.0, -1.0], [300.0, -1.0], [300.0, 300.0], [-1.0, 300.0]])
    with pytest.raises(
        MaskSourceError, match=r"corrupt.txt: polygon covers 100\.0%.*max_area_fraction=50%"
    ):
        contour_mask(whole, (256, 256), name="corrupt.txt")
    assert contour_mask(whole, (256, 256), max_area_fraction=1.0).all()
    with pytest.raises(MaskSourceError, match="no pixel"):
        contour_mask(np.array([[0.1, 0.1], [0.2, 0.1], [0.2, 0.2]]), (4, 4))


# --- discovery and the real masks --------------------------------------------------------------


def test_counts_match_provenance(sunnybrook_dir):
    tasks = discover_contour_cases(sunnybrook_dir)
    assert len(tasks) == 96  # every i-contour frame; every o-contour frame also has an i-contour
    by_patient = {p: [t for t in tasks if t.patient == p] for p in PATIENTS}
    for patient, (_, n_i, n_o) in PATIENTS.items():
        assert sum(t.inputs["icontour"] is not None for t in by_patient[patient]) == n_i
        assert sum(t.inputs["ocontour"] is not None for t in by_patient[patient]) == n_o
    assert all(t.inputs["dicom"] for t in tasks)
    assert tasks[0].case_id == "SCD0000101_0048" and tasks[0].patient_id == "SCD0000101"
    assert len(discover_contour_cases(sunnybrook_dir, empty_frames="store")) == N_DICOM_FILES
    n_files = sum(1 for _ in (sunnybrook_dir / "contourfiles").rglob("*.txt"))
    assert n_files == sum(n_i + n_o for _, n_i, n_o in PATIENTS.values())


def test_every_contour_file_yields_a_mask(processed):
    n_i = n_o = 0
    for task, case in processed:
        mask = case.mask[0]
        assert case.image.shape == case.mask.shape == (1, 256, 256)
        if task.inputs["icontour"]:
            n_i += 1
            assert (mask == LABEL_BLOOD_POOL).sum() > 50, task.inputs["icontour"]
        if task.inputs["ocontour"]:
            n_o += 1
            assert (mask == LABEL_MYOCARDIUM).sum() > 50, task.inputs["ocontour"]
            # the myocardium surrounds the blood pool
            filled = ndimage.binary_fill_holes(mask > 0)
            assert filled[mask == LABEL_BLOOD_POOL].all()
        else:
            assert not (mask == LABEL_MYOCARDIUM).any()
        assert sorted(case.meta["contours"]) == sorted(
            k for k in ("icontour", "ocontour") if task.inputs[k]
        )
    assert (n_i, n_o) == (96, 46)


def test_masks_lie_on_the_bright_blood_pool(processed):
    ratios = []
    for _, case in processed:
        image, inner = case.image[0].astype(float), case.mask[0] == LABEL_BLOOD_POOL
        ring = ndimage.binary_dilation(inner, iterations=6) & ~ndimage.binary_dilation(
            inner, iterations=2
        )
        ratios.append(image[inner].mean() / image[ring].mean())
    # blood is bright in cine MR, the myocardium around it dark: measured min 1.6, median 2.3
    assert min(ratios) > 1.3
    # a mask transposed (x and y swapped) or shifted would not be: check the test can fail
    image, inner = processed[0][1].image[0].astype(float), processed[0][1].mask[0] == 1
    shifted = np.roll(inner, 12, axis=1)
    ring = ndimage.binary_dilation(shifted, iterations=6) & ~ndimage.binary_dilation(
        shifted, iterations=2
    )
    assert image[shifted].mean() / image[ring].mean() < 1.3


def test_seed_reference_frame_48(processed):
    task, case = processed[0]
    assert task.case_id == "SCD0000101_0048"
    inner = case.mask[0] == 1
    # PROVENANCE: PIL's fill (which leaves the outline out) gave 497 px with mean 225.0 inside;
    # the pixel-centre fill also takes the boundary pixels
    assert 497 <= inner.sum() <= 600
    assert case.image[0][inner].mean() > 200


def test_spacing_is_kept_per_frame(processed):
    spacings = {case.meta["patient_id"]: case.spacing for _, case in processed}
    # the headers: 1.2891 for SCD0000301, 1.367188 or 1.3672 for the others
    assert spacings["SCD0000301"][1:] == pytest.approx((1.2891, 1.2891), abs=1e-6)
    for patient in ("SCD0000101", "SCD0000201"):
        assert spacings[patient][1:] == pytest.approx((1.367188, 1.367188), abs=1e-6)
    for patient in ("SCD0000401", "SCD0000501"):
        assert spacings[patient][1:] == pytest.approx((1.3672, 1.3672), abs=1e-6)


def test_resampling_to_a_common_spacing(processed):
    task, case = next(
        (t, c) for t, c in processed if t.patient == "SCD0000301" and t.inputs["ocontour"]
    )
    resampled = ContourSource(target_spacing=(1.0,)).process(task)
    assert resampled.spacing[1:] == (1.0, 1.0)
    assert resampled.image.shape == (1, 330, 330)  # round(256 * 1.289 / 1.0)
    for label in (1, 2):
        area_before = (case.mask == label).sum() * case.spacing[1] * case.spacing[2]
        area_after = (resampled.mask == label).sum() * 1.0
        assert area_after == pytest.approx(area_before, rel=0.05)
    assert resampled.image[0][resampled.mask[0] == 1].mean() == pytest.approx(
        case.image[0][case.mask[0] == 1].mean(), rel=0.05
    )
    # the resampling map: a linear ramp stays a ramp at the new pixel centres
    ramp = np.tile(np.arange(8.0), (8, 1))
    out = resample_frame(ramp, (1.0, 1.0), (2.0, 2.0))
    assert out.shape == (4, 4) and np.allclose(out[0], [0.5, 2.5, 4.5, 6.5])


def test_dicom_geometry_and_warnings(sunnybrook_dir):
    frame = read_dicom_frame(sunnybrook_dir / "dicoms/SCD0000101/48.dcm")
    assert frame.pixels.shape == (256, 256) and frame.modality == "MR"
    assert frame.origin == pytest.approx((137.999, 22.2895, 176.111))
    # direction columns are unit vectors; the row cosine is the x index axis
    assert np.allclose(np.linalg.norm(frame.direction, axis=0), 1.0, atol=1e-4)
    assert frame.direction[:, 2] == pytest.approx([-0.932245, 0.346381, -0.104592])


# --- builds -------------------------------------------------------------------------------------------


def test_build_skip_and_store(tmp_path, sunnybrook_dir):
    out = tmp_path / "contours.h5"
    report = run_build(
        load_config(None),
        data_directory=sunnybrook_dir,
        output_filename=out,
        workers=2,
        progress=False,
        source="contours",
    )
    assert len(report.built) == 96 and not report.failed
    with open_dataset(out) as ds:
        assert len(ds) == 96 and ds.kind == "slices"
        for case in ds:
            assert case.shape == (1, 256, 256) and case.mask.max() >= 1
            expected = 1.2891 if case.case_id.startswith("SCD0000301") else 1.3672
            assert case.spacing[1:] == pytest.approx((expected, expected), abs=2e-5)
        splits = {}
        for case in ds:  # splits are by patient: every frame of a patient in the same split
            splits.setdefault(case.meta["patient_id"], set()).add(case.split)
        assert all(len(s) == 1 and s <= {"train", "val", "test"} for s in splits.values())
    config = load_config(None, overrides={"contours": {"empty_frames": "store"}})
    out2 = tmp_path / "all.h5"
    report = run_build(
        config,
        data_directory=sunnybrook_dir,
        output_filename=out2,
        workers=1,
        progress=False,
        source="contours",
    )
    assert len(report.built) == N_DICOM_FILES
    with open_dataset(out2) as ds:
        empty = [c for c in ds if not c.meta["contours"]]
        assert len(empty) == N_DICOM_FILES - 96 and all(not c.mask.any() for c in empty)


def test_corrupt_contour_fails_its_case_only(tmp_path, sunnybrook_dir):
    root = tmp_path / "final_data"
    (root / "dicoms").mkdir(parents=True)
    shutil.copy(sunnybrook_dir / "link.csv", root / "link.csv")
    (root / "dicoms" / "SCD0000101").symlink_to(sunnybrook_dir / "dicoms" / "SCD0000101")
    for patient in list(PATIENTS)[1:]:
        (root / "dicoms" / patient).mkdir()
    folder = root / "contourfiles" / "SC-HF-I-1" / "i-contours"
    folder.mkdir(parents=True)
    good = "IM-0001-0048-icontour-manual.txt"
    shutil.copy(sunnybrook_dir / "contourfiles/SC-HF-I-1/i-contours" / good, folder / good)
    (folder / "IM-0001-0059-icontour-manual.txt").write_text("0 0\n255 0\n255 255\n0 255\n")
    (folder / "IM-0001-9999-icontour-manual.txt").write_text("10 10\n20 10\n20 20\n")
    report = run_build(
        load_config(None),
        data_directory=root,
        output_filename=tmp_path / "c.h5",
        workers=1,
        progress=False,
        source="contours",
    )
    assert report.built == ["SCD0000101_0048"]
    assert "IM-0001-0059-icontour-manual.txt: polygon covers" in report.failed["SCD0000101_0059"]
    assert "no matching DICOM" in report.failed["SCD0000101_9999"]


def test_config_and_validation(sunnybrook_dir):
    config = load_config(
        None, overrides={"contours": {"target_spacing": "1.2, 1.3", "max_area_fraction": "0.4"}}
    )
    src = get_source("contours", config)
    assert (
        src.target_spacing == (1.2, 1.3) and src.max_area_fraction == 0.4 and src.kind == "slices"
    )
    with pytest.raises(ValueError, match="empty_frames"):
        ContourSource(empty_frames="maybe")
    with pytest.raises(FileNotFoundError, match="link.csv"):
        discover_contour_cases(sunnybrook_dir / "dicoms")
