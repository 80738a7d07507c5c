"""grt123 (.npy), nnU-Net v2 (NIfTI) and seed-000 (.npz) exports of a dataset file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsbprep.errors import DatasetFormatError
from dsbprep.export import (
    GRT123_NAMES,
    MANIFEST,
    export_grt123,
    export_nnunet,
    export_npz,
    grt123_label,
    grt123_names,
    main,
)
from dsbprep.geometry import voxel_to_world
from dsbprep.store import BOX_COLUMNS, CaseData, DatasetWriter, empty_boxes

REPO = Path(__file__).resolve().parents[1]


def _lung_case(case_id, shape, rng, *, boxes, spacing=(1.0, 0.98, 0.98), split=""):
    """A uint8 volume like the prepared lungs: 170 outside, dark lungs with a bright nodule."""
    image = np.full(shape, 170, np.uint8)
    labels = np.zeros(shape, np.uint8)
    z, y, x = np.indices(shape)
    half = shape[2] // 2
    for label, cx in ((1, half + half // 2), (2, half // 2)):  # 1 = left lung, on the image's right
        lung = ((y - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((x - cx) / (half * 0.4)) ** 2 < 1
        labels[lung] = label
        image[lung] = rng.integers(20, 60, size=int(lung.sum()), dtype=np.uint8)
    for b in boxes:
        sphere = ((z - b[0]) ** 2 + (y - b[1]) ** 2 + (x - b[2]) ** 2) < (
            b[6] / 2 / spacing[1]
        ) ** 2
        image[sphere] = 140
    return CaseData(
        case_id,
        image,
        labels,
        spacing=spacing,
        origin=(-300.0, -170.0, -160.0),
        direction=np.eye(3),
        original_spacing=(2.5, 0.7, 0.7),
        shape_before_crop=(130, 350, 360),
        crop_box=np.array([[10, 10 + shape[0]], [40, 40 + shape[1]], [30, 30 + shape[2]]]),
        boxes=np.asarray(boxes, np.float32).reshape(-1, len(BOX_COLUMNS)),
        split=split,
    )


@pytest.fixture()
def lung_h5(tmp_path):
    rng = np.random.default_rng(7)
    cases = [
        _lung_case(
            "LIDC-IDRI-0001",
            (40, 48, 56),
            rng,
            split="train",
            boxes=[[20, 30, 40, 8, 9, 9, 8.5, 4, 11.0], [10.5, 18.25, 12, 4, 5, 5, 4.0, 2, 5.0]],
        ),
        _lung_case(
            "kaggle_0a0c32c9", (36, 44, 52), rng, boxes=[], spacing=(1.0, 1.0, 0.9), split="val"
        ),
        _lung_case(
            "p3", (30, 40, 40), rng, boxes=[[15, 20, 20, 3, 3, 3, 0.0, 1, np.nan]], split="train"
        ),
        _lung_case("p4_test", (24, 32, 40), rng, boxes=[], split="test"),
    ]
    path = tmp_path / "lung.h5"
    with DatasetWriter(
        path, image_dtype="uint8", chunks=(16, 32, 32), pad_value=170, attrs={"source": "lung"}
    ) as writer:
        for case in cases:
            writer.append(case)
    return path, {c.case_id: c for c in cases}


def test_grt123_label():
    boxes = np.array(
        [[20, 30, 40, 8, 9, 9, 8.5, 4, 11.0], [1, 2, 3, 4, 6, 8, 0.0, 1, np.nan]], np.float32
    )
    label = grt123_label(boxes, (1.0, 0.8, 0.9))
    assert label.dtype == np.float64
    np.testing.assert_allclose(
        label, [[20, 30, 40, 8.5 / 0.85], [1, 2, 3, 7.0]]
    )  # no diameter: mean in-plane size
    axial = grt123_label(boxes, (1.0, 0.8, 0.9), diameter="axial")  # unknown axial: diameter_mm
    np.testing.assert_allclose(axial, [[20, 30, 40, 11.0 / 0.85], [1, 2, 3, 7.0]])
    np.testing.assert_array_equal(grt123_label(empty_boxes(), (1, 1, 1)), [[0, 0, 0, 0]])
    with pytest.raises(ValueError, match="diameter must be one of"):
        grt123_label(boxes, (1, 1, 1), diameter="max")


def test_grt123_names():
    ids = ["LIDC-IDRI-0001", "0a0c32c9e08cc2ea76a71649de56be6d", "kaggle_0a0c32c9", "p3"]
    kaggle = grt123_names(ids)
    assert kaggle["0a0c32c9e08cc2ea76a71649de56be6d"] == "0a0c32c9e08cc2ea76a71649de56be6d"
    assert kaggle["LIDC-IDRI-0001"].startswith("LIDC-IDRI-0001-")
    assert kaggle["kaggle_0a0c32c9"].startswith("kaggle-0a0c32c9-")  # no '_': the loader cuts there
    for name in kaggle.values():
        assert len(name) > 20 and "_" not in name
    luna = grt123_names(ids, "luna")
    assert luna["LIDC-IDRI-0001"] == "LIDC-IDRI-0001" and luna["p3"] == "p3"
    for name in luna.values():
        assert len(name) < 20 and "_" not in name
    assert len(set(luna.values())) == len(ids)  # long ids cut, kept apart by their hash
    assert grt123_names(ids, "as-is") == {c: c for c in ids}
    with pytest.raises(ValueError, match="names must be one of"):
        grt123_names(ids, "short")
    apart = grt123_names(["a_b", "a-b"], "luna")  # a changed id gets its hash: no clash
    assert apart["a-b"] == "a-b" and apart["a_b"].startswith("a-b-")


def _manifest(out):
    return json.loads((out / MANIFEST).read_text())


def test_export_grt123_exact(lung_h5, tmp_path):
    h5, cases = lung_h5
    out = tmp_path / "prep"
    files = export_grt123(h5, out)
    manifest = _manifest(out)
    name = {c["case_id"]: c["name"] for c in manifest["cases"]}
    assert name == grt123_names(list(cases))
    assert sorted(p.name for p in files) == sorted(
        [f"{name[cid]}_{kind}.npy" for cid in cases for kind in ("clean", "label")]
        + ["train.npy", "val.npy", "test.npy", MANIFEST]
    )
    assert sorted(os.listdir(out)) == sorted(p.name for p in files)  # no temporary files left
    assert manifest["label_rule"] == "none"  # hand-made cases: no build parameters
    for cid, case in cases.items():
        clean = np.load(out / f"{name[cid]}_clean.npy")
        assert clean.dtype == np.uint8 and clean.shape == (1, *case.image.shape)
        np.testing.assert_array_equal(clean[0], case.image)
        label = np.load(out / f"{name[cid]}_label.npy")
        assert label.dtype == np.float64 and label.ndim == 2 and label.shape[1] == 4
        if len(case.boxes):
            np.testing.assert_allclose(label, grt123_label(case.boxes, case.spacing))
        else:
            np.testing.assert_array_equal(label, [[0, 0, 0, 0]])  # grt123's "no nodule" row
    # the first case's boxes: diameter 8.5 mm / 0.98 mm, 4.0 / 0.98
    label = np.load(out / f"{name['LIDC-IDRI-0001']}_label.npy")
    np.testing.assert_allclose(
        label, [[20, 30, 40, 8.5 / 0.98], [10.5, 18.25, 12, 4.0 / 0.98]], rtol=1e-6
    )
    # the nodule sits where the label says, in the exported volume
    z, y, x = np.round(label[0, :3]).astype(int)
    assert np.load(out / f"{name['LIDC-IDRI-0001']}_clean.npy")[0, z, y, x] == 140


def test_grt123_split_files_and_id_options(lung_h5, tmp_path):
    h5, cases = lung_h5
    for option in GRT123_NAMES:
        out = tmp_path / option
        export_grt123(h5, out, names=option)
        name = {c["case_id"]: c["name"] for c in _manifest(out)["cases"]}
        splits = {s: np.load(out / f"{s}.npy") for s in ("train", "val", "test")}  # no pickle
        for split, array in splits.items():
            assert array.dtype.kind == "U" and array.ndim == 1
            assert sorted(array) == sorted(name[c] for c, case in cases.items() if case.split == split)
            # grt123 indexes its labels with the position in its Kaggle list: Kaggle names first
            kaggle = [len(n.split("_")[0]) > 20 for n in array]
            assert kaggle == sorted(kaggle, reverse=True)
        for cid in cases:  # the loader finds both files of every listed name
            assert (out / f"{name[cid]}_clean.npy").is_file() and (out / f"{name[cid]}_label.npy").is_file()
        # what grt123's data.py makes of the names
        stems = [n.split("_")[0] for n in name.values()]
        if option == "kaggle":
            assert all(len(s) > 20 for s in stems)  # every case gives random negative crops
        elif option == "luna":
            assert all(len(s) < 20 for s in stems)
        else:
            assert stems == [c.split("_")[0] for c in cases]


def test_grt123_diameter_option(lung_h5, tmp_path):
    h5, cases = lung_h5
    export_grt123(h5, tmp_path / "ax", cases=["LIDC-IDRI-0001"], diameter="axial")
    (entry,) = _manifest(tmp_path / "ax")["cases"]
    assert entry["label_rows"] == 2 and _manifest(tmp_path / "ax")["diameter"] == "axial"
    label = np.load(tmp_path / "ax" / f"{entry['name']}_label.npy")
    np.testing.assert_allclose(label[:, 3], [11.0 / 0.98, 5.0 / 0.98], rtol=1e-6)


def verify_nnunet(folder, capfd) -> str:
    """Run nnU-Net v2's own dataset check on ``folder``; its printed report.

    nnunetv2 is in the test extras (installed without its dependencies, see setup.cfg);
    skipped when absent, failed under CI=true.
    """
    try:
        from nnunetv2.experiment_planning.verify_dataset_integrity import (
            verify_dataset_integrity,
        )
    except ImportError as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"nnunetv2 is not installed: {err}")
        pytest.skip(f"nnunetv2 is not installed: {err}")
    capfd.readouterr()
    verify_dataset_integrity(str(folder), num_processes=1)
    printed = "".join(capfd.readouterr())
    assert "verify_dataset_integrity Done" in printed
    assert "Error" not in printed and "Warning" not in printed, printed
    return printed


def test_export_nnunet_synthetic(lung_h5, tmp_path, capfd):
    import nibabel
    import SimpleITK as sitk

    h5, cases = lung_h5
    out = tmp_path / "Dataset500_Lung"
    files = export_nnunet(h5, out)
    train = [c for c, case in cases.items() if case.split != "test"]
    assert sorted(os.listdir(out / "imagesTr")) == sorted(f"{c}_0000.nii.gz" for c in train)
    assert sorted(os.listdir(out / "labelsTr")) == sorted(f"{c}.nii.gz" for c in train)
    assert os.listdir(out / "imagesTs") == ["p4_test_0000.nii.gz"]
    assert len(files) == 2 * len(train) + 1 + 1
    info = json.loads((out / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "CT"} and info["file_ending"] == ".nii.gz"
    assert info["labels"] == {"background": 0, "left_lung": 1, "right_lung": 2}
    assert info["numTraining"] == len(train) and info["dsbprep"]["test_cases"] == ["p4_test"]
    for cid in train:
        case = cases[cid]
        image = sitk.ReadImage(str(out / "imagesTr" / f"{cid}_0000.nii.gz"))
        label = sitk.ReadImage(str(out / "labelsTr" / f"{cid}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), case.image)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label), case.mask)
        for img in (image, label):
            np.testing.assert_allclose(img.GetSpacing(), case.spacing[::-1])
            np.testing.assert_allclose(img.GetOrigin(), case.origin[::-1], atol=1e-4)
        # a voxel goes to the same world point as through the stored geometry (LPS) ...
        zyx = np.array([3.0, 5.0, 7.0])
        lps = voxel_to_world(zyx, case.origin, case.spacing, case.direction)
        np.testing.assert_allclose(image.TransformContinuousIndexToPhysicalPoint(zyx[::-1]), lps[::-1],
                                   atol=1e-4)
        # ... and through the NIfTI affine (RAS: x and y negated), as a viewer places it
        affine = nibabel.load(out / "imagesTr" / f"{cid}_0000.nii.gz").affine
        ras = affine @ np.r_[zyx[::-1], 1.0]
        np.testing.assert_allclose(ras[:3], [-lps[2], -lps[1], lps[0]], atol=1e-3)
    print(verify_nnunet(out, capfd))


def test_nnunet_geometry_with_a_rotated_direction():
    from types import SimpleNamespace

    from dsbprep.export import _sitk_image

    direction = np.array([[0.0, 0, 1], [0, -1, 0], [1, 0, 0]])  # index z runs along world x, ...
    rec = SimpleNamespace(spacing=(2.0, 0.5, 0.7), origin=(10.0, -20.0, 30.0), direction=direction)
    image = _sitk_image(np.zeros((3, 4, 5), np.uint8), rec)
    for zyx in ([0, 0, 0], [2, 3, 4], [1.5, 0.25, 3]):
        lps = voxel_to_world(np.array(zyx, float), rec.origin, rec.spacing, direction)
        np.testing.assert_allclose(image.TransformContinuousIndexToPhysicalPoint(zyx[::-1]), lps[::-1])


def test_nnunet_refuses_2d_and_names_labels(tmp_path):
    slices = tmp_path / "slices.h5"
    with DatasetWriter(slices, kind="slices", chunks=(1, 16, 16)) as writer:
        writer.append(CaseData("xr_1", np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)))
    with pytest.raises(DatasetFormatError, match="the nnunet export needs 3-D"):
        export_nnunet(slices, tmp_path / "out")
    vol = tmp_path / "vol.h5"  # a labelled volume file of another source: label_k, z-scored
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1, 2:4, 2:4] = 3
    with DatasetWriter(vol, image_dtype="int16", chunks=(4, 8, 8), pad_value=0) as writer:
        writer.append(CaseData("v1", np.ones((4, 8, 8), np.int16), mask))
    export_nnunet(vol, tmp_path / "vol")
    info = json.loads((tmp_path / "vol" / "dataset.json").read_text())
    assert info["labels"] == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    assert info["channel_names"] == {"0": "zscore"}


def test_export_npz_exact(lung_h5, tmp_path):
    h5, cases = lung_h5
    out = tmp_path / "npz"
    files = export_npz(h5, out, cases=["p3", "LIDC-IDRI-0001"])
    assert [p.name for p in files] == ["p3.npz", "LIDC-IDRI-0001.npz"]
    for path in files:
        case = cases[path.stem]
        with np.load(path) as npz:  # allow_pickle=False by default: nothing needs pickle
            np.testing.assert_array_equal(npz["arr_0"], case.image)
            assert npz["arr_0"].dtype == np.uint8
            np.testing.assert_array_equal(npz["mask"], case.mask)
            np.testing.assert_array_equal(npz["spacing"], case.spacing)
            np.testing.assert_array_equal(npz["origin"], case.origin)
            np.testing.assert_array_equal(npz["direction"], case.direction)
            np.testing.assert_array_equal(npz["boxes"], case.boxes)
            assert tuple(npz["box_columns"]) == BOX_COLUMNS
            np.testing.assert_array_equal(npz["original_spacing"], case.original_spacing)
            np.testing.assert_array_equal(npz["shape_before_crop"], case.shape_before_crop)
            np.testing.assert_array_equal(npz["crop_box"], case.crop_box)
    # uncompressed output holds the same arrays, in a bigger file
    (plain,) = export_npz(h5, tmp_path / "plain", cases=["p3"], compress=False)
    with np.load(plain) as a, np.load(out / "p3.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    assert plain.stat().st_size > (out / "p3.npz").stat().st_size


def test_subsets_and_errors(lung_h5, tmp_path):
    h5, _ = lung_h5
    files = export_grt123(h5, tmp_path / "train", split="train", names="as-is")
    assert sorted(p.name for p in files) == [
        "LIDC-IDRI-0001_clean.npy",
        "LIDC-IDRI-0001_label.npy",
        MANIFEST,
        "p3_clean.npy",
        "p3_label.npy",
        "test.npy",
        "train.npy",
        "val.npy",
    ]
    assert np.load(tmp_path / "train" / "val.npy").tolist() == []  # only the exported cases
    assert [p.name for p in export_npz(h5, tmp_path / "val", split="val")] == [
        "kaggle_0a0c32c9.npz"
    ]
    assert export_npz(h5, tmp_path / "none", cases=["p3"], split="val") == []
    with pytest.raises(DatasetFormatError, match=r"no case\(s\) \['nope'\]"):
        export_npz(h5, tmp_path / "x", cases=["p3", "nope"])
    with pytest.raises(FileNotFoundError):
        export_grt123(tmp_path / "absent.h5", tmp_path / "x")


def test_grt123_refuses_2d_and_hu_files(tmp_path):
    slices = tmp_path / "slices.h5"
    with DatasetWriter(slices, kind="slices", chunks=(1, 16, 16)) as writer:
        writer.append(CaseData("xr_1", np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)))
    with pytest.raises(
        DatasetFormatError, match="2-D 'slices' cases; the grt123 export needs a 3-D"
    ):
        export_grt123(slices, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (npz,) = export_npz(slices, tmp_path / "out2d")  # npz takes 2-D files: (1, y, x)
    assert np.load(npz)["arr_0"].shape == (1, 20, 20)
    hu = tmp_path / "hu.h5"
    with DatasetWriter(hu, image_dtype="int16", chunks=(8, 16, 16), pad_value=-1024) as writer:
        writer.append(
            CaseData("ct", np.full((4, 8, 8), -1000, np.int16), np.zeros((4, 8, 8), np.uint8))
        )
    with pytest.raises(DatasetFormatError, match="images are int16"):
        export_grt123(hu, tmp_path / "out")


def test_cli_main(lung_h5, tmp_path, capsys):
    h5, cases = lung_h5
    out = tmp_path / "cli"
    assert main(["--format", "grt123", str(h5), str(out), "--cases", "p3", "--names", "luna"]) == 0
    printed = capsys.readouterr().out
    assert "exported 1 case(s) as grt123" in printed and "(label rule none, names luna)" in printed
    assert sorted(os.listdir(out)) == sorted(
        ["p3_clean.npy", "p3_label.npy", "train.npy", "val.npy", "test.npy", MANIFEST]
    )
    assert main(["--format", "npz", str(h5), str(out), "--split", "val", "--no-compress"]) == 0
    np.testing.assert_array_equal(
        np.load(out / "kaggle_0a0c32c9.npz")["arr_0"], cases["kaggle_0a0c32c9"].image
    )
    assert main(["--format", "grt123", str(h5), str(out), "--cases", "zzz"]) == 1
    assert "no case(s) ['zzz']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["--format", "dicom", str(h5), str(out)])
    assert err.value.code == 2


def test_cli_subprocess(lung_h5, tmp_path):
    h5, cases = lung_h5
    out = tmp_path / "sub"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "dsbprep.export", "--format", "grt123", str(h5), str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"exported {len(cases)} case(s) as grt123 to {out}" in proc.stdout
    assert "(label rule none, names kaggle)" in proc.stdout
    p3 = grt123_names(["p3"])["p3"]
    np.testing.assert_array_equal(np.load(out / f"{p3}_clean.npy")[0], cases["p3"].image)
    np.testing.assert_array_equal(np.load(out / f"{p3}_label.npy"), [[15, 20, 20, 3.0]])
