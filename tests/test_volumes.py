"""Volume files in (issue 14): LIDC-IDRI-0001 as MetaImage, NIfTI and NRRD builds as from DICOM.

The volume files are written in the test from the real DICOM series: MetaImage the way
LUNA16 did (SimpleITK's series reader, int16), NIfTI the way dcm2niix does (RAS affine,
rows flipped so the y index runs anterior), NRRD with pynrrd (gzip). Each one builds,
through the lung source and the LUNA16 ``annotations.csv``, to the same stored volume,
masks, crop box and nodule box as the DICOM series.
"""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from dsbprep.build import run_build
from dsbprep.config import load_config
from dsbprep.dicom import load_scan
from dsbprep.errors import VolumeFileError
from dsbprep.geometry import voxel_to_world
from dsbprep.io.volume import canonical_axes, load_volume, read_volume, volume_case_id
from dsbprep.loader import BatchLoader
from dsbprep.sources.lung import discover_patients
from dsbprep.store import open_dataset

LIDC_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


# --- writing LIDC-IDRI-0001 in the other formats -----------------------------------------


def _lps_affine_to_ras(scan, flip_y: bool) -> tuple[np.ndarray, np.ndarray]:
    """(data x, y, z) and RAS affine of ``scan`` as dcm2niix writes an axial series."""
    data = scan.hu.transpose(2, 1, 0)  # (x, y, z) = (column, row, slice)
    d = scan.direction[::-1, ::-1] * np.asarray(scan.spacing)[::-1]  # LPS xyz columns, i j k
    origin = np.asarray(scan.origin, float)[::-1]  # LPS x, y, z
    if flip_y:
        origin = origin + d[:, 1] * (data.shape[1] - 1)
        d[:, 1] = -d[:, 1]
        data = data[:, ::-1, :]
    ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = ras @ d
    affine[:3, 3] = ras @ origin
    return np.ascontiguousarray(data), affine


def write_nifti(scan, path: Path, *, flip_y: bool = True, permute=None) -> Path:
    """A NIfTI-1 file of ``scan`` (RAS affine); ``permute`` reorders the file's axes."""
    data, affine = _lps_affine_to_ras(scan, flip_y)
    if permute is not None:
        data = np.ascontiguousarray(data.transpose(permute))
        affine = affine.copy()
        affine[:3, :3] = affine[:3, :3][:, list(permute)]
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, path)
    return path


def write_metaimage(files, path: Path) -> Path:
    """LUNA16's way: SimpleITK reads the DICOM series, writes int16 .mhd + .raw."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(files))
    sitk.WriteImage(sitk.Cast(reader.Execute(), sitk.sitkInt16), str(path))
    return path


def write_nrrd(scan, path: Path) -> Path:
    directions = (scan.direction[::-1, ::-1] * np.asarray(scan.spacing)[::-1]).T  # rows: axes x,y,z
    header = {"space": "left-posterior-superior", "space directions": directions,
              "space origin": np.asarray(scan.origin)[::-1], "encoding": "gzip",
              "kinds": ["domain"] * 3}
    nrrd.write(str(path), scan.hu, header, index_order="C")
    return path


@pytest.fixture(scope="module")
def dicom_scan(lidc_dir):
    return load_scan(lidc_dir)


@pytest.fixture(scope="module")
def luna_csv(luna16_annotations, tmp_path_factory) -> Path:
    """The LIDC-IDRI-0001 row of LUNA16's annotations.csv (../shared/data/reference/luna16)."""
    source = luna16_annotations
    out = tmp_path_factory.mktemp("luna") / "annotations.csv"
    with open(source, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r[0] in ("seriesuid", LIDC_UID)]
    assert len(rows) == 2, "annotations.csv has one LIDC-IDRI-0001 nodule"
    with open(out, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return out


def _build(data: Path, out: Path, luna_csv: Path, **kw):
    config = load_config(None)
    config.parser.set("annotations", "luna_csv", str(luna_csv))
    config.parser.set("annotations", "lidc_xml", "false")
    return run_build(config, data_directory=data, output_filename=out, workers=1,
                     progress=False, **kw)


@pytest.fixture(scope="module")
def dicom_build(lidc_dir, luna_csv, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dicom")
    (root / "in").mkdir()
    (root / "in" / "LIDC-IDRI-0001").symlink_to(lidc_dir, target_is_directory=True)
    report = _build(root / "in", root / "dicom.h5", luna_csv)
    assert report.built == ["LIDC-IDRI-0001"], report.failed
    return root / "dicom.h5"


@pytest.fixture(scope="module")
def luna_folder(dicom_scan, tmp_path_factory) -> Path:
    """A LUNA16-like folder: subset0/<uid>.mhd + .raw, and bad files in subset1."""
    root = tmp_path_factory.mktemp("luna16")
    for name in ("subset0", "subset1"):
        (root / name).mkdir()
    write_metaimage(dicom_scan.source_files, root / "subset0" / f"{LIDC_UID}.mhd")
    bad = root / "subset1"
    (bad / "truncated.mhd").write_text(_mhd("truncated.raw", (64, 64, 8)))
    (bad / "truncated.raw").write_bytes(bytes(64 * 64 * 8 * 2 - 100))
    (bad / "outside.mhd").write_text(_mhd("../subset0/" + f"{LIDC_UID}.raw", (512, 512, 133)))
    (bad / "wrong-size.mhd").write_text(_mhd("wrong-size.raw", (512, 512, 200)))
    (bad / "wrong-size.raw").symlink_to(root / "subset0" / f"{LIDC_UID}.raw")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.int16), np.eye(4)), bad / "four-d.nii.gz")
    return root


def _mhd(data_file: str, sizes) -> str:
    return ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
            f"ElementSpacing = 1 1 1\nDimSize = {' '.join(map(str, sizes))}\n"
            f"ElementType = MET_SHORT\nElementDataFile = {data_file}\n")


def _same_case(built: Path, reference: Path, case_id: str) -> None:
    with open_dataset(built) as a, open_dataset(reference) as b:
        got, ref = a[case_id], b["LIDC-IDRI-0001"]
        np.testing.assert_array_equal(got.image, ref.image)
        np.testing.assert_array_equal(got.mask, ref.mask)
        np.testing.assert_array_equal(got.crop_box, ref.crop_box)
        assert got.spacing == pytest.approx(ref.spacing)
        assert got.origin == pytest.approx(ref.origin, abs=1e-3)
        np.testing.assert_allclose(got.direction, ref.direction, atol=1e-6)
        assert len(got.boxes) == len(ref.boxes) == 1
        np.testing.assert_allclose(got.boxes[:, :3], ref.boxes[:, :3], atol=0.5)
        assert got.meta["lung_volume_ml"] == ref.meta["lung_volume_ml"]
        # the stored voxel's world point is the DICOM build's
        idx = np.array([10, 100, 150])
        np.testing.assert_allclose(voxel_to_world(idx, got.origin, got.spacing, got.direction),
                                   voxel_to_world(idx, ref.origin, ref.spacing, ref.direction),
                                   atol=1e-3)


# --- load_volume -------------------------------------------------------------------------


def test_each_format_loads_to_the_dicom_volume(dicom_scan, luna_folder, tmp_path):
    files = {
        "mhd": luna_folder / "subset0" / f"{LIDC_UID}.mhd",
        "nii": write_nifti(dicom_scan, tmp_path / f"{LIDC_UID}.nii.gz"),
        "nrrd": write_nrrd(dicom_scan, tmp_path / f"{LIDC_UID}.nrrd"),
    }
    for kind, path in files.items():
        scan = load_volume(path)
        assert scan.hu.dtype == np.int16, kind
        np.testing.assert_array_equal(scan.hu, dicom_scan.hu, err_msg=kind)
        assert scan.spacing == pytest.approx(dicom_scan.spacing), kind
        assert scan.origin == pytest.approx(dicom_scan.origin, abs=1e-3), kind
        np.testing.assert_allclose(scan.direction, dicom_scan.direction, atol=1e-6)
        assert scan.series_uid == LIDC_UID
    assert volume_case_id(files["nii"]) == LIDC_UID
    # the NIfTI is stored with rows flipped (dcm2niix): the reader put them back
    assert np.asarray(nib.load(files["nii"]).affine)[1, 1] > 0
    assert "flipped y" in " ".join(load_volume(files["nii"]).warnings)


def test_flipped_and_permuted_axes_keep_left_left(dicom_scan, tmp_path):
    """A NIfTI with a negative x step and a sagittal-first one give the DICOM volume back."""
    flipped_x = tmp_path / "fx.nii.gz"
    data, affine = _lps_affine_to_ras(dicom_scan, flip_y=False)
    affine = affine.copy()
    affine[:3, 3] += affine[:3, 0] * (data.shape[0] - 1)
    affine[:3, 0] = -affine[:3, 0]  # x index now runs to the patient's right
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[::-1]), affine), flipped_x)
    sagittal_first = write_nifti(dicom_scan, tmp_path / "zyx.nii.gz", permute=(2, 1, 0))
    for path in (flipped_x, sagittal_first):
        raw = read_volume(path)
        assert raw.array.shape != dicom_scan.hu.shape or path == flipped_x
        scan = load_volume(path)
        np.testing.assert_array_equal(scan.hu, dicom_scan.hu, err_msg=path.name)
        np.testing.assert_allclose(scan.direction, np.eye(3), atol=1e-6)
        # the voxel at the patient's far left (largest x index) is the DICOM build's
        idx = np.array([60, 256, 500])
        np.testing.assert_allclose(
            voxel_to_world(idx, scan.origin, scan.spacing, scan.direction),
            voxel_to_world(idx, dicom_scan.origin, dicom_scan.spacing, dicom_scan.direction),
            atol=1e-3,
        )
        # and reading the file raw, that world point holds the same HU
        world = voxel_to_world(idx, scan.origin, scan.spacing, scan.direction)
        from dsbprep.geometry import world_to_voxel

        j = np.rint(world_to_voxel(world, raw.origin, raw.spacing, raw.direction)).astype(int)
        assert raw.array[tuple(j)] == dicom_scan.hu[tuple(idx)]


def test_canonical_axes_is_exact():
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, (3, 4, 5)).astype(np.int16)
    direction = np.array([[0, 0, -1.0], [1, 0, 0], [0, -1, 0]])  # a permuted, flipped file
    from dsbprep.io.volume import Volume

    vol = Volume(arr, (1.0, 2.0, 3.0), (5.0, 6.0, 7.0), direction, "x")
    out, how = canonical_axes(vol)
    np.testing.assert_array_equal(out.direction, np.eye(3))
    assert how
    for idx in np.ndindex(*arr.shape):  # every voxel keeps its world position and value
        w = voxel_to_world(idx, vol.origin, vol.spacing, vol.direction)
        j = np.rint((w - np.asarray(out.origin)) / np.asarray(out.spacing)).astype(int)
        assert out.array[tuple(j)] == arr[idx]


def test_non_hu_and_vector_images_are_refused(tmp_path):
    ct = np.full((4, 8, 8), 1000, np.uint16)  # unsigned raw values with an offset: no air
    sitk.WriteImage(sitk.GetImageFromArray(ct), str(tmp_path / "offset.mha"))
    with pytest.raises(VolumeFileError, match=r"offset\.mha: values 1000\.\.1000 have no voxel below"):
        load_volume(tmp_path / "offset.mha")
    rgb = sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    with pytest.raises(VolumeFileError, match="vector image"):
        load_volume(tmp_path / "rgb.mha")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(VolumeFileError, match="4-D image"):
        load_volume(tmp_path / "t.nii")
    # a float NIfTI in HU and a scaled one (scl_slope/inter) are converted
    hu = np.full((8, 8, 4), -1000.0, np.float32)
    hu[2:6, 2:6] = 40.4
    nib.save(nib.Nifti1Image(hu, np.eye(4)), tmp_path / "float.nii")
    scan = load_volume(tmp_path / "float.nii")
    assert scan.hu.dtype == np.int16 and set(np.unique(scan.hu)) == {-1000, 40}
    scaled = nib.Nifti1Image((hu + 1024).astype(np.int16), np.eye(4))
    scaled.header.set_slope_inter(1.0, -1024.0)
    nib.save(scaled, tmp_path / "scaled.nii")
    assert set(np.unique(load_volume(tmp_path / "scaled.nii").hu)) == {-1000, 40}


# --- builds --------------------------------------------------------------------------------


def test_luna16_folder_builds_like_dicom(luna_folder, dicom_build, luna_csv, tmp_path):
    tasks = {t.case_id: t for t in discover_patients(luna_folder)}
    assert set(tasks) == {LIDC_UID, "truncated", "outside", "wrong-size", "four-d"}
    out = tmp_path / "luna16.h5"
    report = _build(luna_folder, out, luna_csv)
    assert report.built == [LIDC_UID]
    failed = report.failed
    assert "truncated" in failed["truncated"] and "declares 65536" in failed["truncated"]
    assert "outside" in failed["outside"] and "relative path inside" in failed["outside"]
    assert "wrong-size" in failed["wrong-size"]
    assert "4-D image" in failed["four-d"]
    _same_case(out, dicom_build, LIDC_UID)
    with open_dataset(out) as ds:
        assert ds[LIDC_UID].meta["series_uid"] == LIDC_UID
        assert ds[LIDC_UID].boxes[0, 6] == pytest.approx(23.35, abs=0.01)  # the csv's diameter
    again = _build(luna_folder, out, luna_csv)  # resume: the fingerprint matches, skipped
    assert again.built == [] and again.skipped == [LIDC_UID]
    assert set(again.failed) == set(failed)


@pytest.mark.parametrize("kind", ["nii", "nrrd"])
def test_nifti_and_nrrd_build_like_dicom(kind, dicom_scan, dicom_build, luna_csv, tmp_path):
    data = tmp_path / "in"
    (data / "scans").mkdir(parents=True)
    if kind == "nii":
        write_nifti(dicom_scan, data / "scans" / f"{LIDC_UID}.nii.gz")
    else:
        write_nrrd(dicom_scan, data / "scans" / f"{LIDC_UID}.nrrd")
    report = _build(data, tmp_path / "out.h5", luna_csv)
    assert report.built == [LIDC_UID], report.failed
    _same_case(tmp_path / "out.h5", dicom_build, LIDC_UID)


def test_mixed_folder_holds_dicom_patients_and_volume_files(lidc_dir, tmp_path):
    (tmp_path / "LIDC-IDRI-0001").symlink_to(lidc_dir, target_is_directory=True)
    (tmp_path / "subset0").mkdir()
    (tmp_path / "subset0" / "a.1.mhd").write_text(_mhd("a.1.raw", (4, 4, 4)))
    (tmp_path / "subset0" / "a.1.raw").write_bytes(bytes(128))
    (tmp_path / "b.nii.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "subset0" / "loop").symlink_to(tmp_path, target_is_directory=True)
    tasks = {t.case_id: t.inputs for t in discover_patients(tmp_path)}
    assert tasks == {"LIDC-IDRI-0001": {"folder": str(tmp_path / "LIDC-IDRI-0001")},
                     "a.1": {"volume": str(tmp_path / "subset0" / "a.1.mhd")},
                     "b": {"volume": str(tmp_path / "b.nii.gz")}}


def test_decathlon_folder_builds_with_labels(cip_dir, tmp_path):
    """MSD/nnU-Net layout from the real ct-64 CT and its CIP label map, as NIfTI and MetaImage."""
    ct = sitk.ReadImage(str(cip_dir / "Testing/Data/Input/ct-64.nrrd"))
    lm = sitk.ReadImage(str(cip_dir / "Testing/Data/Input/lm-64.nrrd"))
    root = tmp_path / "Task06_Lung"
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (root / d).mkdir(parents=True)
    sitk.WriteImage(ct, str(root / "imagesTr" / "lung_001.nii.gz"))  # MSD: no channel suffix
    sitk.WriteImage(lm, str(root / "labelsTr" / "lung_001.nii.gz"))
    sitk.WriteImage(ct, str(root / "imagesTr" / "lung_002_0000.mha"))  # nnU-Net: channel 0000
    sitk.WriteImage(lm, str(root / "labelsTr" / "lung_002.mha"))
    sitk.WriteImage(ct[:, :, :40], str(root / "imagesTr" / "lung_003.nii.gz"))  # wrong size
    sitk.WriteImage(lm, str(root / "labelsTr" / "lung_003.nii.gz"))
    sitk.WriteImage(lm, str(root / "labelsTr" / "lung_004.nii.gz"))  # no image
    shutil.copy(root / "imagesTr" / "lung_001.nii.gz", root / "imagesTr" / "._lung_001.nii.gz")
    config = load_config(None)
    config.parser.set("volumes", "label_map", "1=9 10 11; 2=12 13 14")
    config.parser.set("volumes", "label_bits", "255")
    out = tmp_path / "msd.h5"
    report = run_build(config, data_directory=root, output_filename=out, workers=1,
                       progress=False, source="volumes")
    assert sorted(report.built) == ["lung_001", "lung_002"], report.failed
    assert "shape (z, y, x)" in report.failed["lung_003"]
    assert "has no image file in imagesTr/" in report.failed["lung_004"]
    reference = nrrd.read(str(cip_dir / "Testing/Data/Input/lm-64.nrrd"), index_order="C")[0]
    with open_dataset(out) as ds:
        for case in ("lung_001", "lung_002"):
            rec = ds[case]
            assert rec.image.dtype == np.int16
            np.testing.assert_array_equal(rec.image, sitk.GetArrayFromImage(ct))
            assert (rec.mask == 1).sum() == np.isin(reference & 255, (9, 10, 11)).sum()
            assert (rec.mask == 2).sum() == np.isin(reference & 255, (12, 13, 14)).sum()
    loader = BatchLoader(out, patch_size=(16, 16, 16), batch_size=2, sampler="label",
                         sampler_options={"labels": (1,)}, epochs=1, dtype="image")
    for batch in loader:
        assert (batch.masks[:, 0, 8, 8, 8] == 1).all()
