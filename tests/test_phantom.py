"""Tests of dsbprep.phantom: the embedded cohort of synthetic chest CT scans written as DICOM."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from dsbprep.phantom import (
    ANATOMY_DEFAULTS,
    main,
    make_phantom,
    make_sample_patient,
    write_sample_cohort,
    write_series,
)

N_PATIENTS = 4  # one of each storage variant
# Regions are eroded this many voxels before their HU statistics are taken, to stay clear of
# the partial-volume blur at their borders.
ERODE = 2
NOISE = ANATOMY_DEFAULTS["noise_hu"]
# What each tissue reads on a real chest CT (HU), independent of the phantom's parameters.
CT_RANGES = {
    "lung": (-900, -800),  # aerated parenchyma at inspiration
    "heart": (20, 60),  # unenhanced blood and myocardium
    "soft tissue": (20, 60),  # muscle, mediastinum
    "fat": (-130, -70),
    "liver": (40, 80),
    "vertebra": (400, 1200),  # cortical bone
    "air": (-1024, -950),
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Folders of the default cohort (seed 0) of N_PATIENTS patients."""
    return write_sample_cohort(tmp_path_factory.mktemp("cohort"), N_PATIENTS, seed=0)


@pytest.fixture(scope="module")
def patients():
    """(hu, truth) of the same patients, drawn again without writing files."""
    return [make_sample_patient(i, seed=0) for i in range(N_PATIENTS)]


def _read(folder, **kwargs):
    """All datasets of a folder, in file-name order."""
    return [pydicom.dcmread(path, **kwargs) for path in sorted(folder.glob("*.dcm"))]


def _z_sorted(datasets):
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _eroded(mask, iterations=ERODE):
    return ndimage.binary_erosion(mask, iterations=iterations)


# --------------------------------------------------------------------------- DICOM validity


def test_headers_are_valid_ct(cohort, patients):
    study_uids = set()
    for folder, (hu, truth) in zip(cohort, patients, strict=True):
        paths = sorted(folder.glob("*.dcm"))
        assert len(paths) == hu.shape[0]
        for path in paths:
            raw = path.read_bytes()
            assert raw[:128] == b"\0" * 128 and raw[128:132] == b"DICM", path
        headers = _read(folder, stop_before_pixels=True)
        for ds in headers:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.Modality == "CT"
            assert ds.PatientID == truth["patient_id"] == folder.name
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert [float(v) for v in ds.PixelSpacing] == list(truth["spacing"][1:])
            assert float(ds.SliceThickness) == truth["spacing"][0]
            assert float(ds.SliceLocation) == float(ds.ImagePositionPatient[2])
            assert (ds.Rows, ds.Columns) == hu.shape[1:]
            assert float(ds.RescaleSlope) == 1.0
            assert float(ds.RescaleIntercept) == truth["storage"]["intercept"]
            assert float(ds.WindowWidth) > 0
            for uid in (
                ds.SOPInstanceUID,
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.FrameOfReferenceUID,
            ):
                assert uid.is_valid, uid
        assert len({ds.SOPInstanceUID for ds in headers}) == len(headers)
        assert len({ds.StudyInstanceUID for ds in headers}) == 1
        assert len({ds.SeriesInstanceUID for ds in headers}) == 1
        assert sorted(int(ds.InstanceNumber) for ds in headers) == list(range(1, len(headers) + 1))
        study_uids.add(headers[0].StudyInstanceUID)
        # slices one spacing apart, starting at the origin of the truth
        z = np.array([float(ds.ImagePositionPatient[2]) for ds in _z_sorted(headers)])
        np.testing.assert_allclose(np.diff(z), truth["spacing"][0])
        first = _z_sorted(headers)[0]
        xyz = [float(v) for v in first.ImagePositionPatient]
        np.testing.assert_allclose(xyz[::-1], truth["origin"], atol=1e-6)
    assert len(study_uids) == N_PATIENTS


def test_pixels_decode_to_the_phantom_hu(cohort, patients):
    """Full read: stored type per variant, and the modality LUT gives back the exact HU."""
    for folder, (hu, truth) in zip(cohort, patients, strict=True):
        datasets = _z_sorted(_read(folder))
        unsigned = truth["storage"]["unsigned"]
        assert {ds.PixelRepresentation for ds in datasets} == {0 if unsigned else 1}
        stored = np.stack([ds.pixel_array for ds in datasets])
        assert stored.dtype == (np.uint16 if unsigned else np.int16)
        back = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])
        np.testing.assert_array_equal(back, hu)


def test_storage_variants_and_padding(cohort, patients):
    paddings = []
    for folder, (hu, truth) in zip(cohort, patients, strict=True):
        padding = truth["anatomy"]["padding_hu"]
        paddings.append(padding)
        fov = truth["fov"]
        assert not fov[:, 0, 0].any() and fov[:, hu.shape[1] // 2, hu.shape[2] // 2].all()
        assert np.all(hu[~fov] == padding)
        assert hu[fov].min() >= -1024  # the scanner range inside the circle
        ds = pydicom.dcmread(next(folder.glob("*.dcm")))
        if truth["storage"]["padding_hu"] is None:
            assert "PixelPaddingValue" not in ds
        else:
            stored = ds.pixel_array
            assert stored[0, 0] == ds.PixelPaddingValue
            assert (
                ds.PixelPaddingValue * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                == padding
            )
    assert paddings == [-3024.0, -2000.0, -3024.0, -2000.0]
    assert [t["storage"]["intercept"] for _, t in patients] == [-1024.0, -1000.0, -3024.0, -1024.0]
    assert [t["storage"]["unsigned"] for _, t in patients] == [False, False, True, False]


def test_file_names_are_shuffled(cohort):
    for folder in cohort:
        headers = _read(folder, stop_before_pixels=True)  # file-name order
        z = [float(ds.ImagePositionPatient[2]) for ds in headers]
        assert z != sorted(z) and z != sorted(z, reverse=True)
        numbers = [int(ds.InstanceNumber) for ds in headers]
        assert numbers != sorted(numbers)
        # InstanceNumber counts from the top slice: not z order either
        top = max(headers, key=lambda ds: float(ds.ImagePositionPatient[2]))
        assert int(top.InstanceNumber) == 1


def test_unshuffled_names_follow_z(tmp_path):
    hu, truth = make_phantom(
        (28, 64, 64), (10.0, 5.5, 5.5), rng=3, n_nodules=1, vessel_generations=2
    )
    files = write_series(hu, truth["spacing"], tmp_path, patient_id="Z", rng=3, shuffle_names=False)
    assert [p.name for p in files] == sorted(p.name for p in tmp_path.iterdir())
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in files]
    assert z == sorted(z)


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_identical_bytes(tmp_path, cohort):
    """A cohort of 1 repeats patient 0 of the cohort of 4 byte for byte (names included)."""
    again = write_sample_cohort(tmp_path / "again", 1, seed=0)[0]
    first = cohort[0]
    names = sorted(p.name for p in first.glob("*.dcm"))
    assert names == sorted(p.name for p in again.glob("*.dcm"))
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


def test_different_seed_gives_different_files(tmp_path, cohort):
    other = write_sample_cohort(tmp_path / "other", 1, seed=1)[0]
    assert not {p.name for p in other.glob("*.dcm")} & {p.name for p in cohort[0].glob("*.dcm")}
    a = _z_sorted(_read(cohort[0]))
    b = _z_sorted(_read(other))
    assert a[0].StudyInstanceUID != b[0].StudyInstanceUID
    n = min(len(a), len(b))
    assert any(a[k].PixelData != b[k].PixelData for k in range(n))


def test_phantom_is_seeded():
    kwargs = {
        "shape": (28, 64, 64),
        "spacing": (10.0, 5.5, 5.5),
        "vessel_generations": 2,
        "n_nodules": 1,
    }
    hu1, t1 = make_phantom(rng=5, **kwargs)
    hu2, t2 = make_phantom(rng=np.random.default_rng(5), **kwargs)
    hu3, _ = make_phantom(rng=6, **kwargs)
    np.testing.assert_array_equal(hu1, hu2)
    assert t1["nodules"] == t2["nodules"]
    assert not np.array_equal(hu1, hu3)


# --------------------------------------------------------------------------- anatomy


def test_hu_statistics_per_region(patients):
    for hu, truth in patients:
        a = truth["anatomy"]
        lungs = truth["right_lung"] | truth["left_lung"]
        lung_content = truth["vessels"] | truth["nodule_mask"] | truth["airway"]
        parenchyma = _eroded(lungs) & ~ndimage.binary_dilation(lung_content, iterations=ERODE)
        body = truth["body"]
        others = (
            lungs | truth["bone"] | truth["spine"] | truth["fat"] | truth["airway"] | truth["liver"]
        )
        soft = _eroded(body & ~others & ~ndimage.binary_dilation(others, iterations=ERODE))
        air = _eroded(~body & truth["fov"])
        regions = {
            # name: (mask, target mean, tolerance of the mean)
            "lung": (parenchyma, a["lung_hu"], 10.0),
            "heart": (_eroded(truth["heart"]), a["soft_tissue_hu"], 3.0),
            "soft tissue": (soft, a["soft_tissue_hu"], 3.0),
            "fat": (_eroded(truth["fat"]), a["fat_hu"], 8.0),
            "liver": (_eroded(truth["liver"]), a["liver_hu"], 3.0),
            "vertebra": (_eroded(truth["bone"]), a["bone_hu"], 15.0),
            "air": (air, a["air_hu"], 5.0),
        }
        for name, (mask, target, tol) in regions.items():
            values = hu[mask]
            low, high = CT_RANGES[name]
            assert low < values.mean() < high, f"{truth['patient_id']} {name}: {values.mean():.1f}"
            assert values.size > 200, f"{truth['patient_id']} {name}: {values.size} voxels"
            assert abs(values.mean() - target) < tol, (
                f"{truth['patient_id']} {name}: {values.mean():.1f} vs {target}"
            )
            assert 0.5 * NOISE < values.std() < 2.0 * NOISE, (
                f"{truth['patient_id']} {name}: std {values.std():.1f}"
            )
        # dependent (posterior, higher y) lung is denser than the anterior lung
        ny = hu.shape[1]
        y = np.arange(ny)[None, :, None]
        assert hu[parenchyma & (y > ny // 2)].mean() > hu[parenchyma & (y < ny // 2)].mean()
        # the trachea and bronchi are air
        trachea = _eroded(truth["airway"], 1) & ~lungs
        assert hu[trachea].mean() < a["air_hu"] + 30
        # vessels are denser than the parenchyma around them, nodules are solid
        assert hu[_eroded(truth["vessels"], 1)].mean() > -300
        assert hu[_eroded(truth["nodule_mask"], 1)].mean() > a["nodule_hu"] - 60


def test_lung_volume_and_laterality(patients):
    for hu, truth in patients:
        voxel_l = float(np.prod(truth["spacing"])) / 1e6
        right = truth["right_lung"].sum() * voxel_l
        left = truth["left_lung"].sum() * voxel_l
        assert (
            3.0 <= truth["lung_volume_l"] <= 5.0
        )  # adult at inspiration (grt123 accepts 0.68-8.2)
        assert truth["lung_volume_l"] == pytest.approx(right + left)
        assert 0.68 < left < right  # the right lung is the bigger one
        assert not (truth["right_lung"] & truth["left_lung"]).any()
        # patient right = image left (smaller x index) for the identity direction
        xc = hu.shape[2] / 2
        assert (
            np.nonzero(truth["right_lung"])[2].mean()
            < xc
            < np.nonzero(truth["left_lung"])[2].mean()
        )
        # one connected component each
        for side in ("right_lung", "left_lung"):
            assert ndimage.label(truth[side])[1] == 1
        # apex narrower than the base, diaphragm below: the lungs leave the bottom slice free
        area = (truth["right_lung"] | truth["left_lung"]).sum(axis=(1, 2))
        top = np.flatnonzero(area)[-1]
        assert area[0] == 0 and area[top] < area.max() / 4


def test_nodules_inside_lungs(patients):
    for _, truth in patients:
        lungs = truth["right_lung"] | truth["left_lung"]
        assert 1 <= len(truth["nodules"]) <= 3
        for center_mm, diameter in truth["nodules"]:
            assert (
                ANATOMY_DEFAULTS["nodule_min_mm"] <= diameter <= ANATOMY_DEFAULTS["nodule_max_mm"]
            )
            index = np.rint((np.asarray(center_mm) - truth["origin"]) / truth["spacing"]).astype(
                int
            )
            assert lungs[tuple(index)], (truth["patient_id"], center_mm)
            assert truth["nodule_mask"][tuple(index)]


def test_annotation_xml_outlines_the_true_nodules(cohort, patients):
    """The truth XML beside each series parses back to the phantom's nodules."""
    from dsbprep.annotations import find_lidc_xml, parse_lidc_xml
    from dsbprep.dicom import load_scan

    for folder, (_, truth) in zip(cohort, patients, strict=True):
        xml = find_lidc_xml(folder)
        assert xml is not None and xml.name == "annotations.xml"
        scan = load_scan(folder)
        [marks] = parse_lidc_xml(xml, origin=scan.origin, spacing=scan.spacing, direction=scan.direction,
                                 series_uid=scan.series_uid)  # the header names the written series
        assert len(marks) == len(truth["nodules"])
        pixel = float(np.max(truth["spacing"][1:]))
        for mark, (center, diameter) in zip(marks, truth["nodules"], strict=True):
            np.testing.assert_allclose(mark.center, center, atol=0.5 * pixel)
            assert abs(mark.diameter_mm - diameter) <= 1.5 * pixel, (mark.diameter_mm, diameter)
            assert mark.reader_ids == ("dsbprep-sample-truth",)


def test_bones_and_airway_positions(patients):
    hu, truth = patients[0]
    ny, nx = hu.shape[1:]
    bone_y, bone_x = np.nonzero(truth["bone"].any(axis=0))
    spine_row = np.nonzero(truth["bone"][:, :, nx // 2].any(axis=0))[0]
    assert spine_row.max() > ny * 0.6  # vertebra posterior (large y)
    assert bone_x.min() < nx * 0.2 and bone_x.max() > nx * 0.8  # ribs reach the sides
    top = hu[-1]
    assert top[ny // 2 - 4 : ny // 2 + 1, nx // 2].min() < -900  # trachea on the midline at the top
    assert (
        truth["airway"][-1].sum() > 0 and not (truth["airway"][-1] & truth["right_lung"][-1]).any()
    )


# --------------------------------------------------------------------------- errors and CLI


def test_make_phantom_rejects_bad_input():
    with pytest.raises(TypeError, match="unknown anatomy parameter"):
        make_phantom(lung_colour=3)
    with pytest.raises(ValueError, match="too short"):
        make_phantom((30, 256, 256), (2.5, 1.37, 1.37))
    with pytest.raises(ValueError, match="does not fit in the field of view"):
        make_phantom(body_width_mm=400.0)
    with pytest.raises(ValueError, match="shape"):
        make_phantom((10, 32, 32))
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(spacing=(2.5, 0.0, 1.0))


def test_write_series_rejects_bad_input(tmp_path):
    hu = np.full((2, 8, 8), -1000, np.int16)
    with pytest.raises(ValueError, match="do not fit uint16"):
        write_series(
            hu, (1, 1, 1), tmp_path / "a", patient_id="P", unsigned=True, intercept=-1000 + 1
        )
    with pytest.raises(ValueError, match="padding -3024"):
        write_series(hu, (1, 1, 1), tmp_path / "b", patient_id="P", padding_hu=-3024, unsigned=True)
    with pytest.raises(ValueError, match="3-D"):
        write_series(hu[0], (1, 1, 1), tmp_path / "c", patient_id="P")
    write_series(hu, (1, 1, 1), tmp_path / "d", patient_id="P", rng=0)
    with pytest.raises(FileExistsError, match="already holds 2 DICOM files"):
        write_series(hu, (1, 1, 1), tmp_path / "d", patient_id="P", rng=1)
    files = write_series(hu + 5, (1, 1, 1), tmp_path / "d", patient_id="P", rng=1, overwrite=True)
    assert sorted(files) == sorted((tmp_path / "d").glob("*.dcm"))
    assert (
        apply_modality_lut(pydicom.dcmread(files[0]).pixel_array, pydicom.dcmread(files[0]))[0, 0]
        == -995
    )


def test_cohort_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_patients"):
        write_sample_cohort(tmp_path, 0)
    with pytest.raises(ValueError, match="seed"):
        write_sample_cohort(tmp_path, 1, seed=-1)


def test_main_writes_a_cohort(tmp_path, capsys):
    assert main([str(tmp_path / "out"), "--patients", "1", "--seed", "4"]) == 0
    folder = tmp_path / "out" / "SAMPLE-000"
    assert f"{folder}:" in capsys.readouterr().out
    n = len(list(folder.glob("*.dcm")))
    assert 80 <= n <= 140
    with pytest.raises(SystemExit) as exc:  # a second run refuses to overwrite
        main([str(tmp_path / "out"), "--patients", "1"])
    assert exc.value.code == 2
    assert "already holds" in capsys.readouterr().err


# --------------------------------------------------------------------------- with the pipeline


def test_load_scan_reads_a_sample_patient(cohort, patients):
    dicom = pytest.importorskip("dsbprep.dicom")
    for folder, (hu, truth) in zip(cohort, patients, strict=True):
        scan = dicom.load_scan(folder)
        assert scan.hu.dtype == np.int16 and scan.hu.shape == hu.shape
        assert scan.spacing == pytest.approx(tuple(truth["spacing"]))
        assert scan.origin == pytest.approx(tuple(truth["origin"]))
        np.testing.assert_array_equal(scan.direction, np.eye(3))
        assert scan.patient_id == truth["patient_id"]
        # z order and HU: identical inside the field of view (outside, padding may be replaced)
        fov = truth["fov"]
        np.testing.assert_array_equal(scan.hu[fov], hu[fov])


def test_grt123_segmentation_finds_both_lungs(cohort, patients):
    """The phantom is only useful if grt123's algorithm segments it like a real chest CT."""
    dicom = pytest.importorskip("dsbprep.dicom")
    segment = pytest.importorskip("dsbprep.segment")

    def dice(a, b):
        return 2.0 * (a & b).sum() / (a.sum() + b.sum())

    for folder, (_, truth) in zip(cohort, patients, strict=True):
        scan = dicom.load_scan(folder)
        masks = segment.segment_lungs(scan.hu, scan.spacing, direction=scan.direction)
        assert masks.found == 2, (truth["patient_id"], masks.reason)
        assert dice(masks.right, truth["right_lung"]) >= 0.95, truth["patient_id"]
        assert dice(masks.left, truth["left_lung"]) >= 0.95, truth["patient_id"]


def _digest(folder_or_arrays) -> str:
    """SHA-256 over a cohort's files (relative names and bytes) or over named arrays."""
    import hashlib

    h = hashlib.sha256()
    if isinstance(folder_or_arrays, dict):
        for key in sorted(folder_or_arrays):
            value = folder_or_arrays[key]
            if isinstance(value, np.ndarray):
                h.update(key.encode() + str(value.dtype).encode() + str(value.shape).encode())
                h.update(np.ascontiguousarray(value).tobytes())
            else:
                h.update(key.encode() + repr(value).encode())
        return h.hexdigest()
    for root in folder_or_arrays:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


#: SHA-256 of the default cohort's files (4 patients, seed 0: every storage variant) and of a
#: small phantom's volume and truth, recorded before make_phantom and write_series were split
#: into stage functions (issue 12): the refactoring must not change one byte.
COHORT_SHA256 = "9cf5988d19747a064ac91da75ac31e4f7da8cb28935482665c00fbd461577beb"
PHANTOM_SHA256 = "b83536031b1d53457a2f9be9ede781a671046078645b6dbbf43a4a5f691c1b2e"


def test_cohort_files_are_bit_identical_to_the_recorded_ones(cohort):
    assert _digest(cohort) == COHORT_SHA256


def test_phantom_volume_and_truth_are_bit_identical_to_the_recorded_ones():
    hu, truth = make_phantom((46, 80, 96), (6.0, 4.0, 3.5), rng=3, vessel_generations=3,
                             n_nodules=2, fov_diameter_mm=330.0)
    arrays = {k: v for k, v in truth.items() if k != "anatomy"}
    arrays["hu"] = hu
    assert _digest(arrays) == PHANTOM_SHA256
