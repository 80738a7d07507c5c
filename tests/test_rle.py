"""Tests of the RLE CSV source (dsbprep.sources.rle) on the real SIIM-ACR sample."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dsbprep.build import main as build_main
from dsbprep.build import run_build
from dsbprep.config import load_config
from dsbprep.errors import MaskSourceError
from dsbprep.sources import get_source
from dsbprep.sources.contours import read_dicom_frame
from dsbprep.sources.rle import (
    RLESource,
    discover_rle_cases,
    read_rle_csv,
    resize_pair,
    rle_decode,
    rle_encode,
)
from dsbprep.store import open_dataset

#: The sample's positive images: ImageId suffix -> (mask pixels, bbox rows, bbox cols) from PROVENANCE.md.
POSITIVES = {
    "4904.1517875185.355709": (9418, (99, 254), (171, 433)),
    "1314.1517875167.222290": (29079, (106, 736), (116, 453)),
    "4440.1517875182.865105": (2486, (82, 161), (520, 682)),
    "4982.1517875185.837576": (5232, (149, 252), (284, 464)),
    "12743.1517875241.599591": (2071, (536, 659), (791, 820)),
}
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def official_rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The competition's sample decoder, as a plain loop (the reference)."""
    mask = np.zeros(width * height, np.uint8)
    array = [int(x) for x in rle.split()]
    position = 0
    for start, length in zip(array[0::2], array[1::2], strict=True):
        position += start
        mask[position : position + length] = 255
        position += length
    return mask.reshape(width, height).T


# --- rle_decode / rle_encode ----------------------------------------------------------------


def test_decode_literal_column_major():
    # 3x3, column-major flat order: (0,0) (1,0) (2,0) (0,1) ... ; runs at flat 1-2 and 6
    expected = np.array([[0, 0, 1], [1, 0, 0], [1, 0, 0]], bool)
    assert np.array_equal(rle_decode("1 2 3 1", (3, 3)), expected)
    assert rle_encode(expected) == "1 2 3 1"


def test_decode_non_square_shape():
    m = rle_decode("0 2 3 1", (2, 3))  # 2 rows, 3 columns: flat index = col * 2 + row
    assert m.astype(int).tolist() == [[1, 0, 0], [1, 0, 1]]


@pytest.mark.parametrize("empty", ["-1", " -1", "", "  "])
def test_no_mask_markers(empty):
    assert not rle_decode(empty, (4, 5)).any()
    assert rle_encode(np.zeros((4, 5))) == "-1"


def test_run_reaching_the_last_pixel_is_encoded():
    m = np.zeros((2, 2), bool)
    m[1, 1] = True  # the last pixel in column-major order
    assert rle_encode(m) == "3 1"
    assert np.array_equal(rle_decode("3 1", (2, 2)), m)


@pytest.mark.parametrize(
    "rle, message",
    [
        ("1 2 3", "odd number"),
        ("1 x", "integers"),
        ("-2 3", "negative gap"),
        ("1 0", "positive"),
        ("5 5", "past the"),
        ("0 4 1 5", "past the"),
    ],
)
def test_bad_rle_raises_mask_source_error(rle, message):
    with pytest.raises(MaskSourceError, match=message):
        rle_decode(rle, (3, 3))


@settings(max_examples=200, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 17), st.integers(1, 17))))
def test_round_trip_property(mask):
    assert np.array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 30)), max_size=8))
def test_canonical_rle_round_trip_and_reference(pairs):
    # gaps after the first must be >= 1 for a canonical (maximal-run) encoding
    pairs = [(g if i == 0 else max(g, 1), n) for i, (g, n) in enumerate(pairs)]
    total = sum(g + n for g, n in pairs)
    shape = (int(np.ceil(np.sqrt(total + 1))),) * 2
    rle = " ".join(f"{g} {n}" for g, n in pairs) or "-1"
    mask = rle_decode(rle, shape)
    assert rle_encode(mask) == rle
    if pairs:
        assert np.array_equal(mask, official_rle2mask(rle, *shape[::-1]) > 0)


# --- CSV reading ---------------------------------------------------------------------------------


def test_read_sample_csv_with_bom_and_no_header(siim_dir):
    path = siim_dir / "sample-data" / "train-rle-sample.csv"
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    rows = read_rle_csv(path)
    assert len(rows) == 10
    assert all(not key.startswith("\ufeff") for key in rows)
    assert sum(r == ["-1"] for r in rows.values()) == 5
    assert all(r[0][0].isdigit() for k, r in rows.items() if r != ["-1"])  # leading space stripped


def test_read_competition_csv_with_header(siim_dir):
    rows = read_rle_csv(siim_dir / "competition-layout" / "train-rle.csv")
    assert "ImageId" not in rows and len(rows) == 10
    assert rows == read_rle_csv(siim_dir / "sample-data" / "train-rle-sample.csv")


def test_read_csv_variants(tmp_path):
    path = tmp_path / "masks.csv"
    path.write_bytes(b"a,-1\r\n\r\nb, 1 2\r\nb,5 1 \r\n")
    assert read_rle_csv(path) == {"a": ["-1"], "b": ["1 2", "5 1"]}
    path.write_text("fname,mask\nc,\n")
    assert read_rle_csv(path) == {"c": ["-1"]}
    path.write_text("a,-1\nb,1 2,3\n")
    with pytest.raises(MaskSourceError, match="line 2 has 3 fields"):
        read_rle_csv(path)
    with pytest.raises(FileNotFoundError):
        read_rle_csv(tmp_path / "absent.csv")


def test_several_rows_are_merged(tmp_path, siim_dir):
    src = siim_dir / "sample-data"
    image_id = next(
        k
        for k in read_rle_csv(src / "train-rle-sample.csv")
        if k.endswith("4440.1517875182.865105")
    )
    (tmp_path / f"{image_id}.dcm").symlink_to(src / f"{image_id}.dcm")
    (tmp_path / "masks.csv").write_text(
        f"ImageId, EncodedPixels\n{image_id}, 0 10\n{image_id}, 1024 10\n"
    )
    (task,) = discover_rle_cases(tmp_path)
    case = RLESource(image_size=0).process(task)
    mask = case.mask[0]
    assert mask[:10, :2].all() and mask.sum() == 20 and case.label == 1


# --- real masks, DICOM, resizing --------------------------------------------------------------


def test_real_masks_match_provenance(siim_dir):
    rows = read_rle_csv(siim_dir / "sample-data" / "train-rle-sample.csv")
    for image_id, rles in rows.items():
        suffix = next((s for s in POSITIVES if image_id.endswith(s)), None)
        mask = rle_decode(rles[0], (1024, 1024))
        if suffix is None:
            assert rles == ["-1"] and not mask.any()
            continue
        pixels, (r0, r1), (c0, c1) = POSITIVES[suffix]
        rr, cc = np.nonzero(mask)
        assert mask.sum() == pixels
        assert (rr.min(), rr.max(), cc.min(), cc.max()) == (r0, r1, c0, c1)
        assert np.array_equal(mask, official_rle2mask(rles[0], 1024, 1024) > 0)
        assert rle_encode(mask) == rles[0]


def test_jpeg_compressed_dicom_decodes(siim_dir):
    path = next((siim_dir / "sample-data").glob("*.dcm"))
    assert (
        str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        == JPEG_BASELINE
    )
    frame = read_dicom_frame(path)
    assert frame.pixels.shape == (1024, 1024)
    assert 0 <= frame.pixels.min() and frame.pixels.max() <= 255 and frame.pixels.std() > 10
    assert frame.modality == "CR" and frame.sop_instance_uid == path.stem


def test_resize_pair_mask_is_nearest():
    mask = np.zeros((100, 100), np.uint8)
    mask[10:40, 20:70] = 2
    image = np.linspace(0, 255, 100 * 100).reshape(100, 100)
    out_image, out_mask = resize_pair(image, mask, (38, 38))
    assert out_image.shape == out_mask.shape == (38, 38)
    assert set(np.unique(out_mask)) == {0, 2}
    assert out_mask.sum() / 2 / 38**2 == pytest.approx(30 * 50 / 100**2, rel=0.1)
    with pytest.raises(ValueError, match="same shape"):
        resize_pair(image, mask[:50], (10, 10))


def test_source_config_validation():
    assert RLESource(image_size=(256, 320)).image_size == (256, 320)
    with pytest.raises(ValueError, match="image_size"):
        RLESource(image_size=(1, 2, 3))
    config = load_config(None, overrides={"rle": {"image_size": "128, 96", "csv_name": "x.csv"}})
    src = get_source("rle", config)
    assert (src.image_size, src.csv_name, src.kind) == ((128, 96), "x.csv", "slices")


def test_discover_needs_one_csv(tmp_path, siim_dir):
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("x,-1\n")
    with pytest.raises(MaskSourceError, match="exactly one"):
        discover_rle_cases(tmp_path)
    assert discover_rle_cases(tmp_path, csv_name="a.csv") == []  # no DICOM with a row


def test_images_without_a_row_are_skipped(tmp_path, siim_dir):
    files = sorted((siim_dir / "sample-data").glob("*.dcm"))[:3]
    for f in files:
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "m.csv").write_text(f"{files[0].stem},-1\nnot-here,-1\n")
    tasks = discover_rle_cases(tmp_path)
    assert [t.case_id for t in tasks] == [files[0].stem]
    assert tasks[0].patient_id == str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientID)


# --- builds of both layouts ---------------------------------------------------------------------


def _check_built(path, size=384):
    with open_dataset(path) as ds:
        assert len(ds) == 10 and not ds.failures and ds.kind == "slices"
        labels = {}
        for case in ds:
            assert case.shape == (1, size, size)
            frame_spacing = case.original_spacing[1]
            assert case.spacing[1] == pytest.approx(frame_spacing * 1024 / size)
            assert round(frame_spacing, 3) in (0.139, 0.143, 0.168, 0.194)
            mask = case.mask
            assert set(np.unique(mask)) <= {0, 1}
            assert bool(mask.any()) == (case.label == 1)
            assert case.image.dtype == np.uint8 and case.image.std() > 10
            labels[case.case_id] = case.label
            suffix = next((s for s in POSITIVES if case.case_id.endswith(s)), None)
            if suffix:
                assert case.meta["mask_pixels_original"] == POSITIVES[suffix][0]
                # nearest resizing keeps the area fraction
                assert mask.sum() / size**2 == pytest.approx(
                    POSITIVES[suffix][0] / 1024**2, rel=0.15
                )
        assert sorted(labels.values()) == [0] * 5 + [1] * 5


def test_build_flat_sample_layout(tmp_path, siim_dir):
    out = tmp_path / "flat.h5"
    report = run_build(
        load_config(None),
        data_directory=siim_dir / "sample-data",
        output_filename=out,
        workers=1,
        progress=False,
        source="rle",
    )
    assert len(report.built) == 10 and not report.failed
    _check_built(out)


def test_build_competition_layout_with_cli(tmp_path, siim_dir, capsys):
    out = tmp_path / "competition.h5"
    figure = tmp_path / "case.png"
    status = build_main(
        [
            "--source",
            "rle",
            "--data_directory",
            str(siim_dir / "competition-layout"),
            "--output_filename",
            str(out),
            "--workers",
            "1",
            "--no-progress",
            "--report",
            str(tmp_path / "r.json"),
            "--print_random_image",
            "--figure",
            str(figure),
            "--seed",
            "1",
        ]
    )
    assert status == 0, capsys.readouterr().err
    assert "built 10" in capsys.readouterr().out
    assert figure.stat().st_size > 0
    _check_built(out)
