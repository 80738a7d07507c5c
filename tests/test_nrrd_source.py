"""Tests of the NRRD label-volume source (dsbprep.sources.nrrd) on the real cip-lung-nrrd files."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest
from PIL import Image

from dsbprep.build import run_build
from dsbprep.config import load_config
from dsbprep.errors import MaskSourceError
from dsbprep.geometry import voxel_to_world
from dsbprep.sources import get_source
from dsbprep.sources.nrrd import (
    CIP_LUNG_LABEL_MAP,
    NrrdSource,
    Volume,
    check_alignment,
    discover_nrrd_cases,
    export_png_slices,
    map_labels,
    parse_label_map,
    read_image_volume,
    read_nrrd_volume,
    resample_to_spacing,
)
from dsbprep.store import open_dataset

INPUT = "Testing/Data/Input"
#: PROVENANCE.md: voxels of the left (regions 9-11) and right (12-14) lung in lm-64.nrrd.
LEFT_VOXELS, RIGHT_VOXELS = 30766, 34858
CT64_SPACING = (3.98734177, 4.171872, 4.171872)
CT64_ORIGIN = (-360.25632911, -264.413806, -128.413806)


@pytest.fixture(scope="module")
def ct64(cip_dir) -> Volume:
    return read_nrrd_volume(cip_dir / INPUT / "ct-64.nrrd")


@pytest.fixture(scope="module")
def lm64(cip_dir) -> Volume:
    return read_nrrd_volume(cip_dir / INPUT / "lm-64.nrrd")


def _case(root, name, image, label, image_name="image.nrrd", label_name="label.nrrd"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / image_name).symlink_to(image)
    (folder / label_name).symlink_to(label)
    return folder


# --- reading and geometry ---------------------------------------------------------------------


def test_read_nrrd_geometry(ct64, lm64, ct64_dir):
    assert ct64.array.shape == (79, 64, 64) and ct64.array.dtype == np.int16
    assert ct64.spacing == pytest.approx(CT64_SPACING)
    assert ct64.origin == pytest.approx(CT64_ORIGIN)
    assert np.allclose(ct64.direction, np.eye(3))
    assert -1100 < ct64.array.min() and ct64.array.max() > 1000
    dicom = read_image_volume(ct64_dir)  # the same volume as a DICOM series
    assert np.array_equal(dicom.array, ct64.array)
    check_alignment(dicom, lm64)


def test_axis_order_and_space_conversion(tmp_path):
    data = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2, order="F")  # NRRD (x, y, z)
    # an oblique frame in RAS: axis x along R+A, axis y along -R+A, axis z along S
    header = {
        "space": "right-anterior-superior",
        "space origin": np.array([10.0, 20.0, 30.0]),
        "space directions": np.array([[0.6, 0.8, 0.0], [-1.6, 1.2, 0.0], [0.0, 0.0, 3.0]]),
    }
    nrrd.write(str(tmp_path / "v.nrrd"), data, header)
    v = read_nrrd_volume(tmp_path / "v.nrrd")
    assert v.array.shape == (2, 3, 4)
    assert v.array[1, 2, 3] == data[3, 2, 1]
    assert v.spacing == pytest.approx((3.0, 2.0, 1.0))
    assert v.origin == pytest.approx((30.0, -20.0, -10.0))  # LPS (z, y, x): RAS x, y negated
    # column k of direction = world (z, y, x) unit vector of index axis k
    assert v.direction[:, 2] == pytest.approx([0.0, -0.8, -0.6])
    assert v.direction[:, 1] == pytest.approx([0.0, -0.6, 0.8])
    # the world position of a voxel follows dsbprep's convention
    world = voxel_to_world([1, 2, 3], v.origin, v.spacing, v.direction)
    ras = (
        np.array([10.0, 20.0, 30.0])
        + 3 * np.array([0.6, 0.8, 0])
        + 2 * np.array([-1.6, 1.2, 0])
        + [0, 0, 3.0]
    )
    assert world == pytest.approx([ras[2], -ras[1], -ras[0]])


def test_unreadable_nrrd(tmp_path):
    (tmp_path / "bad.nrrd").write_text("not a nrrd\n")
    with pytest.raises(MaskSourceError, match=r"bad\.nrrd: cannot read as NRRD"):
        read_nrrd_volume(tmp_path / "bad.nrrd")


# --- alignment ----------------------------------------------------------------------------------


def test_alignment_errors_name_files_and_values(ct64, lm64, cip_dir, tmp_path):
    check_alignment(ct64, lm64)
    crop = read_nrrd_volume(cip_dir / INPUT / "crop_ct_partialLungLabelMap.nrrd")
    with pytest.raises(
        MaskSourceError, match=r"ct-64\.nrrd vs label .*crop_ct_partialLungLabelMap\.nrrd: shape"
    ):
        check_alignment(ct64, crop)
    data, header = nrrd.read(str(cip_dir / INPUT / "lm-64.nrrd"))
    moved = dict(header)
    moved["space origin"] = header["space origin"] + np.array([0.0, 0.0, 2.0])
    nrrd.write(str(tmp_path / "moved.nrrd"), data, moved)
    with pytest.raises(
        MaskSourceError,
        match=r"moved\.nrrd: origin \(z, y, x\) .* differ by 2 mm > origin_tolerance_mm",
    ):
        check_alignment(ct64, read_nrrd_volume(tmp_path / "moved.nrrd"))
    stretched = dict(header)
    stretched["space directions"] = header["space directions"] * np.array([1.0, 1.0, 1.01])
    nrrd.write(str(tmp_path / "stretched.nrrd"), data, stretched)
    with pytest.raises(
        MaskSourceError, match=r"spacing \(z, y, x\) 3\.98734.*spacing_tolerance_mm=0\.01"
    ):
        check_alignment(ct64, read_nrrd_volume(tmp_path / "stretched.nrrd"))
    flipped = dict(header)
    flipped["space directions"] = header["space directions"] * np.array([[-1.0], [1.0], [1.0]])
    nrrd.write(str(tmp_path / "flipped.nrrd"), data, flipped)
    with pytest.raises(MaskSourceError, match="direction"):
        check_alignment(ct64, read_nrrd_volume(tmp_path / "flipped.nrrd"))


# --- labels -------------------------------------------------------------------------------------


def test_cip_label_map_left_and_right_lung(ct64, lm64):
    mask = map_labels(lm64.array, parse_label_map(CIP_LUNG_LABEL_MAP), bits=0xFF)
    assert mask.dtype == np.uint8
    assert (mask == 1).sum() == LEFT_VOXELS and (mask == 2).sum() == RIGHT_VOXELS
    # the patient's left is towards larger x index (LPS, identity direction)
    assert np.nonzero(mask == 1)[2].mean() > np.nonzero(mask == 2)[2].mean() + 15
    assert ct64.array[mask > 0].mean() < -800  # lung is air-filled
    # without the low-byte mask airway/vessel voxels (type << 8) would be lost
    assert (
        map_labels(lm64.array, parse_label_map(CIP_LUNG_LABEL_MAP)) > 0
    ).sum() < LEFT_VOXELS + RIGHT_VOXELS


def test_parse_label_map_and_errors():
    assert parse_label_map("") == {}
    assert parse_label_map("3=1; 1=2 4") == {3: (1,), 1: (2, 4)}
    for bad, message in (
        ("1:2", "OUT=IN"),
        ("0=5", "1..255"),
        ("1=2; 2=2", "mapped to both"),
        ("x=1", "OUT=IN"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_label_map(bad)
    with pytest.raises(MaskSourceError, match="do not fit uint8"):
        map_labels(np.array([0, 300]), {}, name="big.nrrd")
    assert map_labels(np.array([0.0, 2.0]), {}).tolist() == [0, 2]


# --- resampling and PNG export --------------------------------------------------------------------


def test_resample_to_uniform_spacing(ct64, lm64):
    mask = map_labels(lm64.array, parse_label_map(CIP_LUNG_LABEL_MAP), bits=0xFF)
    target = (2.0, 2.0, 2.0)
    image = resample_to_spacing(ct64.array.astype(np.float32), ct64.spacing, target, order=1)
    labels = resample_to_spacing(mask, ct64.spacing, target, order=0)
    assert image.shape == labels.shape == (158, 133, 133)
    assert set(np.unique(labels)) == {0, 1, 2}
    voxel = np.prod(ct64.spacing)
    for k, n in ((1, LEFT_VOXELS), (2, RIGHT_VOXELS)):
        assert (labels == k).sum() * 8.0 == pytest.approx(n * voxel, rel=0.03)
    # voxel [0, 0, 0] stays in place: the first sample is the original corner voxel
    assert image[0, 0, 0] == ct64.array[0, 0, 0]
    assert image[2, 0, 0] == pytest.approx(
        ct64.array[1, 0, 0], abs=0.1 * abs(ct64.array[1, 0, 0]) + 20
    )


def test_export_png_pairs(tmp_path):
    image = np.full((3, 5, 6), -1200, np.int16)
    image[:, 1:3] = 600
    mask = np.zeros((3, 5, 6), np.uint8)
    mask[1, 2, 3] = 2
    written = export_png_slices(image, mask, tmp_path / "png", "case")
    assert [p.rsplit("/", 1)[1] for p in written] == [f"case_z{z:04d}_image.png" for z in range(3)]
    back = np.asarray(Image.open(tmp_path / "png" / "case_z0001_mask.png"))
    assert np.array_equal(back, mask[1])
    gray = np.asarray(Image.open(written[0]))
    assert gray.dtype == np.uint8 and gray[0, 0] == 0 and gray[1, 0] == 255
    assert len(export_png_slices(image, mask, tmp_path / "only", "c", skip_empty=True)) == 1


# --- the source and builds -----------------------------------------------------------------------


def test_build_from_nrrd_and_dicom_images(tmp_path, cip_dir):
    data = cip_dir / INPUT
    root = tmp_path / "cases"
    _case(root, "ct64-nrrd", data / "ct-64.nrrd", data / "lm-64.nrrd")
    _case(root, "ct64-dicom", data / "ct-64Dicom", data / "lm-64.nrrd", image_name="image")
    _case(root, "misaligned", data / "ct-64.nrrd", data / "crop_ct_partialLungLabelMap.nrrd")
    (root / "no-label").mkdir()
    (root / "no-label" / "image.nrrd").symlink_to(data / "ct-64.nrrd")
    png = tmp_path / "png"
    config = load_config(
        None, overrides={"nrrd": {"image_name": "image*", "png_directory": str(png)}}
    )
    out = tmp_path / "nrrd.h5"
    report = run_build(
        config, data_directory=root, output_filename=out, workers=1, progress=False, source="nrrd"
    )
    assert sorted(report.built) == ["ct64-dicom", "ct64-nrrd"]
    assert (
        "misaligned/label.nrrd: shape (z, y, x) (79, 64, 64) vs (96, 349, 443)"
        in report.failed["misaligned"]
    )
    assert "no label matching 'label.nrrd'" in report.failed["no-label"]
    with open_dataset(out) as ds:
        assert len(ds) == 2 and ds.kind == "volume"
        a, b = ds["ct64-nrrd"], ds["ct64-dicom"]
        assert a.shape == (79, 64, 64) and a.spacing == pytest.approx(CT64_SPACING)
        assert a.origin == pytest.approx(CT64_ORIGIN)
        assert b.spacing == pytest.approx(CT64_SPACING, abs=1e-3)
        for case in (a, b):
            mask = case.mask
            assert (mask == 1).sum() == LEFT_VOXELS and (mask == 2).sum() == RIGHT_VOXELS
        assert np.array_equal(a.image, b.image)
    assert len(list((png / "ct64-nrrd").glob("*_image.png"))) == 79
    assert len(list((png / "ct64-nrrd").glob("*_mask.png"))) == 79


def test_build_resampled(tmp_path, cip_dir):
    data = cip_dir / INPUT
    root = tmp_path / "cases"
    _case(root, "whole", data / "ct-64.nrrd", data / "wholeLung-64.nrrd")
    config = load_config(
        None, overrides={"nrrd": {"target_spacing": "2.5", "label_map": "", "label_bits": "0"}}
    )
    out = tmp_path / "r.h5"
    report = run_build(
        config, data_directory=root, output_filename=out, workers=1, progress=False, source="nrrd"
    )
    assert report.built == ["whole"]
    with open_dataset(out) as ds:
        case = ds["whole"]
        assert case.spacing == (2.5, 2.5, 2.5) and case.original_spacing == pytest.approx(
            CT64_SPACING
        )
        assert case.shape == (126, 107, 107) and case.origin == pytest.approx(CT64_ORIGIN)
        whole = (case.mask == 1).sum() * 2.5**3
        assert whole == pytest.approx(65624 * np.prod(CT64_SPACING), rel=0.03)


def test_empty_mapping_is_noted(tmp_path, cip_dir):
    data = cip_dir / INPUT
    root = tmp_path / "cases"
    _case(root, "whole", data / "ct-64.nrrd", data / "wholeLung-64.nrrd")
    src = NrrdSource()  # the CIP map has no value 1: the whole-lung mask maps to nothing
    case = src.process(src.discover(root)[0])
    assert not case.mask.any()
    assert any("none is in label_map" in note for note in case.meta["warnings"])


def test_discover_and_config(tmp_path, cip_dir):
    root = tmp_path / "cases"
    folder = root / "twice"
    folder.mkdir(parents=True)
    for name in ("a.nrrd", "b.nrrd"):
        (folder / name).write_text("")
    with pytest.raises(MaskSourceError, match="2 entries match"):
        discover_nrrd_cases(root, image_name="*.nrrd", label_name="b.nrrd")
    with pytest.raises(FileNotFoundError):
        discover_nrrd_cases(tmp_path / "absent")
    config = load_config(
        None, overrides={"nrrd": {"target_spacing": "1, 2, 3", "png_window": "-1000, 400"}}
    )
    src = get_source("nrrd", config)
    assert src.target_spacing == (1.0, 2.0, 3.0) and src.png_window == (-1000.0, 400.0)
    assert src.label_map == CIP_LUNG_LABEL_MAP and src.label_bits == 255
    with pytest.raises(ValueError, match="target_spacing"):
        NrrdSource(target_spacing=(1.0, 2.0))
