"""Tests of dsbprep.dicom: series discovery, ordering, HU conversion and bad input.

Real series come from ../shared/data (fixtures in conftest.py). Edge cases are written
with pydicom into ``tmp_path`` from copies of real ct-64 / LIDC slices with tags changed,
so each one stays a realistic file.
"""

from __future__ import annotations

import importlib.util
import logging
import random
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from dsbprep.dicom import (
    MAX_VOXELS,
    Scan,
    SeriesInfo,
    _native_pixels,
    _read_header,
    find_dicom_files,
    list_series,
    load_scan,
)
from dsbprep.errors import DicomSeriesError

REPO = Path(__file__).resolve().parents[1]
LIDC_N, LIDC_PIXEL = 133, 0.703125


# --- helpers -----------------------------------------------------------------------------


def uid(*parts) -> str:
    """A deterministic, valid UID."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_series(dst: Path, sources, modify=None, names=None) -> list[Path]:
    """Copy DICOM files into ``dst``, letting ``modify(i, ds)`` change tags (or return None to skip)."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(sources):
        ds = pydicom.dcmread(src)
        if modify is not None and modify(i, ds) is False:
            continue
        path = dst / (names[i] if names else f"{i:04d}.dcm")
        ds.save_as(path)
        out.append(path)
    return out


def grt123_load_scan(slices):
    """grt123's ``load_scan`` ordering (seed 004, "Load Scan"), on pydicom datasets."""
    slices = sorted(slices, key=lambda x: float(x.ImagePositionPatient[2]))
    if slices[0].ImagePositionPatient[2] == slices[1].ImagePositionPatient[2]:
        sec_num = 2
        while slices[0].ImagePositionPatient[2] == slices[sec_num].ImagePositionPatient[2]:
            sec_num = sec_num + 1
        slice_num = int(len(slices) / sec_num)
        slices.sort(key=lambda x: float(x.InstanceNumber))
        slices = slices[0:slice_num]
        slices.sort(key=lambda x: float(x.ImagePositionPatient[2]))
    return slices


def grt123_get_pixels_hu(slices) -> np.ndarray:
    """grt123's ``get_pixels_hu``: raw -2000 -> 0, then slope * raw + intercept, int16."""
    image = np.stack([s.pixel_array for s in slices]).astype(np.int16)
    image[image == -2000] = 0
    for n, s in enumerate(slices):
        intercept, slope = s.RescaleIntercept, s.RescaleSlope
        if slope != 1:
            image[n] = slope * image[n].astype(np.float64)
            image[n] = image[n].astype(np.int16)
        image[n] += np.int16(intercept)
    return np.array(image, dtype=np.int16)


@pytest.fixture(scope="module")
def lidc_scan(lidc_dir) -> Scan:
    return load_scan(lidc_dir)


@pytest.fixture(scope="module")
def ct64_files(ct64_dir) -> list[Path]:
    return sorted(ct64_dir.glob("*.dcm"))


@pytest.fixture(scope="module")
def ct64_scan(ct64_dir) -> Scan:
    return load_scan(ct64_dir)


# --- real data ---------------------------------------------------------------------------


def test_lidc_geometry_and_identity(lidc_scan, lidc_dir):
    s = lidc_scan
    assert s.hu.shape == (LIDC_N, 512, 512) and s.hu.dtype == np.int16
    assert s.spacing == (2.5, LIDC_PIXEL, LIDC_PIXEL)
    assert s.origin[0] == -340.0
    assert s.patient_id == "LIDC-IDRI-0001" and s.modality == "CT"
    assert s.series_uid.endswith("179049373636438705059720603192")
    np.testing.assert_array_equal(s.direction, np.eye(3))
    assert s.warnings == ()
    # z ascends from -340 to -10, one file per slice, not in file-name order
    z = [
        float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
        for f in s.source_files
    ]
    np.testing.assert_allclose(z, -340.0 + 2.5 * np.arange(LIDC_N))
    assert len(set(s.source_files)) == LIDC_N
    assert [Path(f).name for f in s.source_files] != sorted(Path(f).name for f in s.source_files)
    assert all(Path(f).is_absolute() and Path(f).suffix == ".dcm" for f in s.source_files)
    # world = origin + direction @ (index * spacing): last slice lands on its ImagePositionPatient
    last = pydicom.dcmread(s.source_files[-1], stop_before_pixels=True)
    world = np.add(s.origin, s.direction @ (np.array([LIDC_N - 1, 0, 0]) * s.spacing))
    np.testing.assert_allclose(world, [float(v) for v in last.ImagePositionPatient[::-1]])


def test_lidc_hu_matches_grt123_and_keeps_out_of_circle_values(lidc_scan, lidc_dir):
    slices = [pydicom.dcmread(f) for f in lidc_dir.rglob("*.dcm")]
    expected = grt123_get_pixels_hu(grt123_load_scan(slices))
    np.testing.assert_array_equal(lidc_scan.hu, expected)
    # out-of-circle raw -1024 -> -2048 HU is not padding and is not clipped
    assert lidc_scan.hu.min() == -2048 and np.count_nonzero(lidc_scan.hu == -2048) > 10**5
    assert lidc_scan.padding_value_hu is None  # LIDC-IDRI-0001 has no -2000 voxel


def test_lidc_matches_grt123_reference_npz(lidc_scan, reference_npz):
    ref = np.load(reference_npz)
    assert tuple(ref["shape"]) == lidc_scan.hu.shape
    np.testing.assert_allclose(ref["spacing"], lidc_scan.spacing)


def test_lidc_listing_ignores_xml(lidc_dir):
    files = find_dicom_files(lidc_dir)
    assert len(files) == LIDC_N and files == sorted(files)
    assert any(lidc_dir.rglob("*.xml")) and all(f.suffix == ".dcm" for f in files)
    (info,) = list_series(lidc_dir)
    assert isinstance(info, SeriesInfo)
    assert (info.modality, info.n_files, info.is_axial) == ("CT", LIDC_N, True)
    assert info.orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_ct64_equals_nrrd(ct64_scan, cip_dir):
    nrrd = pytest.importorskip("nrrd")
    data, header = nrrd.read(str(cip_dir / "Testing/Data/Input/ct-64.nrrd"))
    assert ct64_scan.hu.shape == (79, 64, 64)
    np.testing.assert_array_equal(ct64_scan.hu, np.transpose(data, (2, 1, 0)))
    np.testing.assert_allclose(ct64_scan.spacing, (3.98734, 4.171872, 4.171872), atol=1e-3)
    np.testing.assert_allclose(ct64_scan.origin, (-360.256, -264.414, -128.414))
    assert ct64_scan.warnings == ()  # gaps vary by < 0.001 mm: below the tolerance


def test_cip_simple_dicom_two_slices_with_signed_padding_tag(cip_dir):
    """simple_dicom: 2 real slices, PixelPaddingValue written as SS -2000, raw -2000 present."""
    folder = cip_dir / "Testing/Data/Input/simple_dicom"
    raw = np.stack([pydicom.dcmread(f).pixel_array for f in sorted(folder.glob("*.dcm"))])
    n_pad = np.count_nonzero(raw == -2000)
    assert n_pad > 0
    scan = load_scan(folder, pad_hu=-3000)
    assert scan.hu.shape == (2, 512, 512) and scan.spacing == (0.625, LIDC_PIXEL, LIDC_PIXEL)
    assert scan.padding_value_hu == -3000
    assert np.count_nonzero(scan.hu == -3000) == n_pad
    np.testing.assert_array_equal(scan.hu[raw != -2000], raw[raw != -2000] - 1024)
    assert load_scan(folder).padding_value_hu == -1024


def test_sunnybrook_mr_is_refused(sunnybrook_dir):
    with pytest.raises(DicomSeriesError, match="modality MR, expected CT"):
        load_scan(sunnybrook_dir / "dicoms")
    with pytest.raises(DicomSeriesError, match=r"SCD0000101.*modality MR, expected CT"):
        load_scan(sunnybrook_dir / "dicoms" / "SCD0000101")


def test_pydicom_warnings_are_collected_not_raised(sunnybrook_dir):
    """Sunnybrook UIDs make pydicom warn; a forced load reports it in Scan.warnings."""
    folder = sunnybrook_dir / "dicoms" / "SCD0000101"
    (info,) = list_series(folder)
    assert not info.is_axial  # short-axis cardiac: never picked automatically
    scan = load_scan(folder, series_uid=info.series_uid, allowed_modalities=None)
    assert scan.modality == "MR" and scan.hu.shape[0] >= 2
    assert any("Invalid value for VR UI" in w for w in scan.warnings)
    assert any("occur more than once" in w for w in scan.warnings)  # 20 cine phases


def test_siim_jpeg_baseline_volume(siim_dir, tmp_path):
    """Two JPEG-compressed SIIM radiographs made one series: decoded by pydicom's plugins."""
    names = [
        "1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027.dcm",
        "1.2.276.0.7230010.3.1.4.8323329.10001.1517875220.930580.dcm",
    ]
    sources = [siim_dir / "sample-data" / n for n in names]
    series = uid("siim")

    def modify(i, ds):
        ds.SeriesInstanceUID = series
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, float(i)]

    write_series(tmp_path, sources, modify)
    with pytest.raises(DicomSeriesError, match="modality CR, expected CT"):
        load_scan(tmp_path)
    scan = load_scan(tmp_path, allowed_modalities=("CR",))
    expected = np.stack([pydicom.dcmread(f).pixel_array for f in sources]).astype(np.int16)
    np.testing.assert_array_equal(scan.hu, expected)
    assert scan.spacing == (1.0, 0.168, 0.168)
    assert len(list_series(siim_dir / "competition-layout")) == 10


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "j2k"])
def test_lossless_compressed_equals_uncompressed(syntax, lidc_scan, tmp_path):
    sources = lidc_scan.source_files[60:63]
    write_series(tmp_path, sources, lambda i, ds: ds.compress(syntax))
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID == syntax
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, lidc_scan.hu[60:63])
    assert scan.spacing == lidc_scan.spacing


@pytest.mark.parametrize("folder", ["lidc", "ct64"])
def test_fast_decode_equals_pydicom(folder, lidc_scan, ct64_files):
    files = list(lidc_scan.source_files[::40]) if folder == "lidc" else ct64_files[::20]
    for f in files:
        header = _read_header(Path(f))
        fast = _native_pixels(Path(f).read_bytes(), header)
        assert fast is not None
        ref = pydicom.dcmread(f).pixel_array
        assert fast.dtype == ref.dtype
        np.testing.assert_array_equal(fast, ref)


def test_load_lidc_under_one_second(lidc_dir):
    load_scan(lidc_dir)  # warm the OS file cache
    times = []
    for _ in range(3):
        start = time.perf_counter()
        load_scan(lidc_dir)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 1.0, times


def test_bench_script_prints_median(capsys):
    spec = importlib.util.spec_from_file_location("bench_load", REPO / "benchmarks/bench_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = bench.DEFAULT_DATA
    if not (data / bench.DEFAULT_CASE).exists():
        pytest.skip(f"{data / bench.DEFAULT_CASE} missing")
    assert bench.main(["--repeat", "1", "--data", str(data)]) == 0
    assert "load_scan LIDC-IDRI-0001:" in capsys.readouterr().out
    assert bench.main(["--data", str(REPO / "no-such-folder")]) == 2


# --- discovery ---------------------------------------------------------------------------


def test_find_ignores_non_dicom_and_hidden(ct64_files, tmp_path):
    good = write_series(tmp_path / "a" / "b", ct64_files[:3])
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "069.xml").write_text("<?xml version='1.0'?><LidcReadMessage/>")
    (tmp_path / "random.dcm").write_bytes(random.Random(0).randbytes(4000))
    shutil.copy(ct64_files[5], tmp_path / "DICOMDIR")
    shutil.copy(ct64_files[6], tmp_path / ".hidden.dcm")
    (tmp_path / ".git").mkdir()
    shutil.copy(ct64_files[7], tmp_path / ".git" / "x.dcm")
    assert find_dicom_files(tmp_path) == sorted(good)
    scan = load_scan(tmp_path)
    assert scan.hu.shape == (3, 64, 64)
    assert any("random.dcm" in w and "not DICOM" in w for w in scan.warnings)


def test_preambleless_files_are_found_and_loaded(ct64_files, ct64_scan, tmp_path):
    for i, src in enumerate(ct64_files[:4]):
        ds = pydicom.dcmread(src)
        ds.preamble = None
        if i % 2:  # half with file meta, half bare (ACR-NEMA style, implicit VR LE)
            del ds.file_meta
        ds.save_as(
            tmp_path / f"IM{i}", enforce_file_format=False, implicit_vr=True, little_endian=True
        )
    assert len(find_dicom_files(tmp_path)) == 4
    np.testing.assert_array_equal(load_scan(tmp_path).hu, ct64_scan.hu[:4])


def test_order_ignores_file_names_and_instance_numbers(ct64_files, ct64_scan, tmp_path):
    order = list(range(79))
    random.Random(1).shuffle(order)
    names = [f"x{order[i]:03d}.dcm" for i in range(79)]
    write_series(
        tmp_path, ct64_files, lambda i, ds: setattr(ds, "InstanceNumber", order[i] + 1), names
    )
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu)
    assert scan.source_hash != ct64_scan.source_hash  # the files differ (InstanceNumber)


def test_feet_first_normal_sorts_along_normal(ct64_files, ct64_scan, tmp_path):
    """Column cosine (0,-1,0) flips the normal to -z: z index must follow the normal, not IPP[2]."""

    def modify(i, ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, -1, 0]

    write_series(tmp_path, ct64_files, modify)
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu[::-1])
    np.testing.assert_allclose(scan.direction[:, 0], [-1, 0, 0])
    np.testing.assert_allclose(scan.direction[:, 1], [0, -1, 0])
    assert scan.origin[0] == pytest.approx(-49.2437)  # the highest slice comes first
    first = pydicom.dcmread(scan.source_files[0], stop_before_pixels=True)
    last = pydicom.dcmread(scan.source_files[-1], stop_before_pixels=True)
    world = np.add(scan.origin, scan.direction @ (np.array([78, 0, 0]) * scan.spacing))
    np.testing.assert_allclose(
        world, [float(v) for v in last.ImagePositionPatient[::-1]], atol=0.05
    )
    assert float(first.ImagePositionPatient[2]) > float(last.ImagePositionPatient[2])


# --- several series ----------------------------------------------------------------------


def test_picks_largest_axial_series_and_never_mixes(ct64_files, ct64_scan, tmp_path, caplog):
    write_series(tmp_path / "main", ct64_files)
    small = uid("small")
    write_series(
        tmp_path / "small", ct64_files[10:20], lambda i, ds: setattr(ds, "SeriesInstanceUID", small)
    )
    scout = uid("scout")

    def localizer(i, ds):  # a coronal scout: more files than "small", but never picked
        ds.SeriesInstanceUID = scout
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    write_series(tmp_path / "scout", ct64_files[:79:6], localizer)
    infos = list_series(tmp_path)
    assert [(i.n_files, i.is_axial) for i in infos] == [(79, True), (14, False), (10, True)]
    with caplog.at_level(logging.INFO, logger="dsbprep"):
        scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu)
    assert scan.series_uid == ct64_scan.series_uid
    (note,) = [w for w in scan.warnings if "picked series" in w]
    assert "among 3 series" in note and small in note
    assert any("picked series" in r.getMessage() for r in caplog.records)
    forced = load_scan(tmp_path, series_uid=small)
    np.testing.assert_array_equal(forced.hu, ct64_scan.hu[10:20])
    assert set(forced.source_files) <= {str(p) for p in (tmp_path / "small").iterdir()}
    with pytest.raises(DicomSeriesError, match="no series with SeriesInstanceUID 1.2.3"):
        load_scan(tmp_path, series_uid="1.2.3")


def test_localizer_images_inside_the_series_are_dropped(ct64_files, ct64_scan, tmp_path):
    def modify(i, ds):
        if i in (0, 1):
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    write_series(tmp_path, ct64_files[:12], modify)
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu[2:12])
    assert any("LOCALIZER" in w for w in scan.warnings)


# --- duplicates --------------------------------------------------------------------------


def _second_pass(instance_offset, acquisition=None, positions=None):
    def modify(i, ds):
        if positions is not None and i not in positions:
            return False
        ds.SOPInstanceUID = uid("pass2", i)
        ds.InstanceNumber = int(ds.InstanceNumber) + instance_offset
        if acquisition is not None:
            ds.AcquisitionNumber = acquisition
        arr = ds.pixel_array.copy()
        arr += 7  # tell the passes apart
        ds.PixelData = arr.tobytes()

    return modify


def test_repeated_passes_agree_with_grt123(ct64_files, ct64_scan, tmp_path):
    pass1 = write_series(tmp_path, ct64_files, names=[f"b{i:03d}.dcm" for i in range(79)])
    pass2 = write_series(
        tmp_path, ct64_files, _second_pass(79), names=[f"a{i:03d}.dcm" for i in range(79)]
    )
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu)
    assert scan.source_files == tuple(str(p) for p in pass1)
    grt = grt123_load_scan([pydicom.dcmread(p) for p in pass1 + pass2])
    assert [d.SOPInstanceUID for d in grt] == [
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in scan.source_files
    ]
    assert any("occur more than once (up to 2 copies" in w for w in scan.warnings)


def test_repeated_passes_restarting_instance_numbers_use_acquisition(
    ct64_files, ct64_scan, tmp_path
):
    write_series(tmp_path / "p1", ct64_files, lambda i, ds: setattr(ds, "AcquisitionNumber", 2))
    write_series(tmp_path / "p0", ct64_files, _second_pass(0, acquisition=1))
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu + 7)  # acquisition 1 wins


def test_partial_second_pass_keeps_every_position(ct64_files, ct64_scan, tmp_path):
    """grt123's len // sec_num rule would drop 30 real slices here; we keep all 79."""
    write_series(tmp_path, ct64_files, names=[f"b{i:03d}.dcm" for i in range(79)])
    extra = write_series(tmp_path / "x", ct64_files, _second_pass(100, positions=range(20)))
    assert len(extra) == 20
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu)
    grt = grt123_load_scan([pydicom.dcmread(p) for p in tmp_path.rglob("*.dcm")])
    assert len(grt) == 49


def test_byte_identical_copies_are_dropped_and_hash_is_name_free(ct64_files, ct64_scan, tmp_path):
    for f in ct64_files[:6]:
        shutil.copy(f, tmp_path / f.name)
        shutil.copy(f, tmp_path / f"copy_of_{f.name}")
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu[:6])
    assert all("copy_of" not in f for f in scan.source_files)
    assert any("byte-identical" in w for w in scan.warnings)
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, f in enumerate(ct64_files[:6]):
        shutil.copy(f, plain / f"renamed{i}")
    first = load_scan(plain)
    assert first.source_hash == load_scan(plain).source_hash
    shutil.rmtree(tmp_path / "plain")
    assert scan.source_hash == first.source_hash  # names and copies do not matter
    assert scan.source_hash != ct64_scan.source_hash  # 6 slices are not 79


# --- missing tags ------------------------------------------------------------------------


def test_missing_position_falls_back_to_slice_location(ct64_files, ct64_scan, tmp_path):
    def modify(i, ds):
        ds.SliceLocation = ds.ImagePositionPatient[2]
        if i % 3 == 0:
            del ds.ImagePositionPatient

    write_series(tmp_path, ct64_files[:30], modify, names=[f"{29 - i}.dcm" for i in range(30)])
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu[:30])
    assert scan.spacing[0] == pytest.approx(3.987, abs=1e-3)
    assert any("ordered by SliceLocation" in w for w in scan.warnings)
    assert any("taken from SliceLocation" in w for w in scan.warnings)


def test_no_position_at_all_falls_back_to_instance_number(ct64_files, ct64_scan, tmp_path):
    write_series(tmp_path, ct64_files[:20], lambda i, ds: delattr(ds, "ImagePositionPatient"))
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu[:20])
    assert scan.spacing[0] == pytest.approx(3.98734)
    assert any("ordered by InstanceNumber" in w for w in scan.warnings)
    assert any("taken from SliceThickness" in w for w in scan.warnings)


def test_no_ordering_possible_is_an_error(ct64_files, tmp_path):
    def modify(i, ds):
        del ds.ImagePositionPatient
        del ds.InstanceNumber

    write_series(tmp_path, ct64_files[:5], modify)
    with pytest.raises(
        DicomSeriesError, match=r"cannot order slices.*0000\.dcm.*no ImagePositionPatient"
    ):
        load_scan(tmp_path)


# --- HU ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vr", "value", "padded"),
    [("US", 63536, True), ("SS", -2000, True), (None, None, True), ("SS", -3000, False)],
    ids=["US-63536-like-LIDC", "SS-2000", "absent-grt123-rule", "other-value"],
)
def test_pixel_padding(vr, value, padded, ct64_files, ct64_scan, tmp_path):
    def modify(i, ds):
        arr = ds.pixel_array.copy()
        arr[:3, :] = -2000
        ds.PixelData = arr.tobytes()
        if vr is not None:
            ds.add_new(0x00280120, vr, value)

    write_series(tmp_path, ct64_files[:4], modify)
    scan = load_scan(tmp_path, pad_hu=-1111)
    expected = ct64_scan.hu[:4].copy()
    expected[:, :3, :] = -1111 if padded else -2000  # intercept is 0 in ct-64
    np.testing.assert_array_equal(scan.hu, expected)
    assert scan.padding_value_hu == (-1111 if padded else None)


def test_per_slice_rescale_uses_pydicom_lut_and_clips(ct64_files, ct64_scan, tmp_path):
    raws = [pydicom.dcmread(f).pixel_array for f in ct64_files[:4]]

    def modify(i, ds):
        if i == 1:
            ds.RescaleSlope, ds.RescaleIntercept = 0.5, -10.25
        if i == 2:
            ds.RescaleSlope, ds.RescaleIntercept = 2, 5
        if i == 3:
            ds.RescaleSlope, ds.RescaleIntercept = 100, 0

    files = write_series(tmp_path, ct64_files[:4], modify)
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu[0], ct64_scan.hu[0])
    for i in (1, 2, 3):
        ds = pydicom.dcmread(files[i])
        ref = np.clip(np.rint(apply_modality_lut(raws[i], ds)), -32768, 32767)
        np.testing.assert_array_equal(scan.hu[i], ref)
    assert scan.hu[3].max() == 32767 and scan.hu[3].min() == -32768
    assert any("clipped" in w for w in scan.warnings)


# --- spacing and broken files --------------------------------------------------------------


def test_missing_slice_gives_uneven_gap_warning(ct64_files, tmp_path):
    write_series(tmp_path, [f for i, f in enumerate(ct64_files[:20]) if i != 9])
    scan = load_scan(tmp_path)
    assert scan.hu.shape[0] == 19 and scan.spacing[0] == pytest.approx(3.987, abs=1e-3)
    (note,) = [w for w in scan.warnings if "uneven slice spacing" in w]
    assert "0008.dcm" in note and "0009.dcm" in note


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def test_unreadable_header_is_skipped_or_fails_when_it_leaves_a_gap(ct64_files, tmp_path):
    files = write_series(tmp_path / "ok", ct64_files[:10])
    broken = tmp_path / "ok" / "zz_broken.dcm"
    shutil.copy(files[0], broken)
    _truncate(broken, 300)  # DICM magic, then the header stops mid-element
    scan = load_scan(tmp_path / "ok")
    assert scan.hu.shape[0] == 10
    assert any("zz_broken.dcm" in w and "unreadable" in w for w in scan.warnings)
    files[5].unlink()  # now the broken file may be the missing slice
    with pytest.raises(DicomSeriesError, match=r"uneven slice gaps.*zz_broken\.dcm"):
        load_scan(tmp_path / "ok")


def test_truncated_pixels_end_slice_dropped_interior_slice_fails(ct64_files, ct64_scan, tmp_path):
    files = write_series(tmp_path, ct64_files[:10])
    _truncate(files[-1], files[-1].stat().st_size - 3000)
    scan = load_scan(tmp_path)
    np.testing.assert_array_equal(scan.hu, ct64_scan.hu[:9])
    assert any("0009.dcm" in w and "undecodable end slice" in w for w in scan.warnings)
    _truncate(files[4], files[4].stat().st_size - 3000)
    with pytest.raises(
        DicomSeriesError,
        match=r"file 0004\.dcm inside the volume cannot be decoded \(.*less than expected",
    ):
        load_scan(tmp_path)


def test_missing_pixel_data_is_an_error(ct64_files, tmp_path):
    write_series(tmp_path, ct64_files[:3], lambda i, ds: delattr(ds, "PixelData"))
    with pytest.raises(DicomSeriesError, match=rf"{tmp_path.name}.*0000\.dcm.*missing Pixel Data"):
        load_scan(tmp_path)


# --- bad input ---------------------------------------------------------------------------


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DicomSeriesError, match="no DICOM image files"):
        load_scan(tmp_path)
    with pytest.raises(DicomSeriesError, match="no such file or folder"):
        load_scan(tmp_path / "nope")
    with pytest.raises(DicomSeriesError, match="no such file or folder"):
        find_dicom_files(tmp_path / "nope")


def test_random_bytes_named_dcm(tmp_path):
    rng = random.Random(2)
    for i in range(3):
        (tmp_path / f"{i}.dcm").write_bytes(rng.randbytes(2000))
    # random bytes that happen to start like a preamble-less (0008,0005) tag
    (tmp_path / "3.dcm").write_bytes(b"\x08\x00\x05\x00" + rng.randbytes(2000))
    assert find_dicom_files(tmp_path) == []
    with pytest.raises(DicomSeriesError, match=r"not DICOM \(0\.dcm, 1\.dcm, 2\.dcm and 1 more\)"):
        load_scan(tmp_path)


def test_garbage_after_dicm_magic(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + random.Random(3).randbytes(3000))
    with pytest.raises(DicomSeriesError, match=r"unreadable DICOM file.*bad\.dcm"):
        load_scan(tmp_path)


def test_single_slice_is_an_error(ct64_files, tmp_path):
    write_series(tmp_path, ct64_files[:1])
    with pytest.raises(DicomSeriesError, match=r"needs >= 2 slices.*0000\.dcm"):
        load_scan(tmp_path)
    with pytest.raises(DicomSeriesError, match="needs >= 2 slices"):
        load_scan(ct64_files[0])


def test_inconsistent_rows_columns(ct64_files, tmp_path):
    def modify(i, ds):
        if i == 2:
            ds.PixelData = ds.pixel_array[::2, ::2].copy().tobytes()
            ds.Rows, ds.Columns = 32, 32

    write_series(tmp_path, ct64_files[:5], modify)
    with pytest.raises(DicomSeriesError, match=r"inconsistent image size.*0002\.dcm is 32x32"):
        load_scan(tmp_path)


def test_declared_size_is_capped_before_allocation(ct64_files, tmp_path):
    write_series(tmp_path / "a", ct64_files[:4])
    with pytest.raises(DicomSeriesError, match="above max_voxels=10000"):
        load_scan(tmp_path / "a", max_voxels=10_000)

    def huge(i, ds):  # a hostile header: 2 x 65535 x 65535 voxels declared, 8 KB of pixels
        ds.Rows, ds.Columns = 65535, 65535

    write_series(tmp_path / "b", ct64_files[:2], huge)
    assert 2 * 65535**2 > MAX_VOXELS
    with pytest.raises(DicomSeriesError, match="above max_voxels"):
        load_scan(tmp_path / "b")


def test_bad_arguments(ct64_dir):
    with pytest.raises(ValueError, match="pad_hu"):
        load_scan(ct64_dir, pad_hu=40000)
    with pytest.raises(ValueError, match="max_voxels"):
        load_scan(ct64_dir, max_voxels=0)
