"""The QA report (dsbprep.report) and the drawing code it shares with build and loader (dsbprep.viz).

Renders the report of the embedded default (built here exactly as ``make dataset`` does:
an empty input folder), of a LIDC-IDRI-0001 build, of a 2-D contour build (Sunnybrook),
and of small hand-made files whose flags are known; checks the pixels of a rendered
LIDC slice against the anatomy documented in ../shared/data/lidc-idri/PROVENANCE.md.
"""

from __future__ import annotations

import doctest
import html
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from dsbprep import report as report_module
from dsbprep import viz
from dsbprep.build import run_build
from dsbprep.config import load_config
from dsbprep.report import lung_flags, main, outlier_flags, summarize_dataset, write_report
from dsbprep.store import CaseData, DatasetWriter, open_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_ok(path: Path, min_bytes: int = 20_000) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > min_bytes


@pytest.fixture(scope="module")
def default_h5(tmp_path_factory) -> Path:
    """The embedded default, built as `make dataset` does (empty input folder), plus a broken case."""
    root = tmp_path_factory.mktemp("default")
    config = load_config(None)
    out = root / "dsbprep.h5"
    # first run: an empty input folder makes run_build write the synthetic cohort itself
    report = run_build(
        config, data_directory=root / "input", output_filename=out, workers=2, progress=False
    )
    assert len(report.built) == int(config.get("build", "sample_patients")), report.failed
    junk = root / "input" / "zz-junk"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(b"not a dicom file" * 300)
    again = run_build(
        config, data_directory=root / "input", output_filename=out, workers=1, progress=False
    )
    assert list(again.failed) == ["zz-junk"]
    return out


@pytest.fixture(scope="module")
def lidc_h5(lidc_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lidc")
    (root / "input").mkdir()
    (root / "input" / lidc_dir.name).symlink_to(lidc_dir)
    out = root / "lidc.h5"
    report = run_build(
        load_config(None),
        data_directory=root / "input",
        output_filename=out,
        workers=1,
        progress=False,
    )
    assert report.built == ["LIDC-IDRI-0001"], report.failed
    return out


def _lung_case(
    case_id: str,
    left_ml: float,
    right_ml: float,
    found: int = 2,
    *,
    shape=(24, 40, 48),
    warnings=(),
) -> CaseData:
    """A small volume whose mask holds a left (x high) and right (x low) block."""
    image = np.full(shape, 170, np.uint8)
    mask = np.zeros(shape, np.uint8)
    if left_ml:
        mask[4:20, 10:30, 28:44] = 1
    if right_ml:
        mask[4:20, 10:30, 4:20] = 2
    image[mask > 0] = 30
    return CaseData(
        case_id,
        image,
        mask,
        spacing=(2.0, 1.0, 1.0),
        meta={
            "source": "lung",
            "lung_volume_ml": {"left": left_ml, "right": right_ml},
            "lungs_found": found,
            "segmentation_note": "" if found == 2 else "not separable",
            "warnings": list(warnings),
        },
    )


@pytest.fixture(scope="module")
def flagged_h5(tmp_path_factory) -> Path:
    """Lung-file cases with known flags, written directly."""
    path = tmp_path_factory.mktemp("flagged") / "flagged.h5"
    with DatasetWriter(path, chunks=(8, 16, 16), pad_value=170, attrs={"source": "lung"}) as w:
        w.append(_lung_case("normal-a", 1700.0, 1900.0))
        w.append(_lung_case("normal-b", 1600.0, 1850.0, warnings=["2 duplicate slices dropped"]))
        w.append(_lung_case("one-lung", 2100.0, 0.0, found=1))
        w.append(_lung_case("tiny", 300.0, 350.0))
        w.append(_lung_case("lopsided", 700.0, 2900.0))
        w.append_failure("broken", "broken: no DICOM series found in /data/broken")
    return path


# ---------------------------------------------------------------------------------------------
# flags and summary
# ---------------------------------------------------------------------------------------------


def test_lung_flag_rules():
    assert lung_flags(1.7, 1.9, 2) == []
    assert lung_flags(None, None, 2) == []
    assert [s for s, _ in lung_flags(0.4, 0.5)] == [3]
    assert "0.90 L < 1 L" in lung_flags(0.4, 0.5)[0][1]
    assert lung_flags(4.5, 4.6)[0] == (2, "total lung volume 9.10 L > 8 L")
    assert lung_flags(1.0, 2.5)[0][1] == "right lung 2.5x the other (> 2)"
    assert lung_flags(1.0, 2.5, max_ratio=3.0) == []
    assert [t for _, t in lung_flags(0.0, 0.0, 0)] == ["only 0 lungs found", "empty lung mask"]
    assert outlier_flags({"a": 1.0, "b": 9.0}) == {}  # too few cases for a robust reference
    assert outlier_flags({c: 3.0 for c in "abcdef"}) == {}  # no spread, no outliers


def test_summary_sorts_suspicious_cases_first(flagged_h5):
    summary = summarize_dataset(flagged_h5)
    order = [c.case_id for c in summary.cases]
    assert order == ["one-lung", "tiny", "lopsided", "normal-b", "normal-a"]
    by_id = {c.case_id: c for c in summary.cases}
    assert [t for _, t in by_id["one-lung"].flags][:1] == ["only 1 lung found"]
    assert by_id["tiny"].total_l == pytest.approx(0.65)
    assert by_id["lopsided"].flags == [(2, "right lung 4.1x the other (> 2)")]
    assert by_id["normal-b"].flags == [(1, "1 loader warning(s)")]
    assert by_id["normal-a"].flags == [] and by_id["normal-a"].volume_from == "segmentation"
    assert summary.failures == {"broken": "broken: no DICOM series found in /data/broken"}
    assert summary.stats["flagged"] == 4
    assert summary.stats["shape"]["median"] == [24, 40, 48]


def test_report_of_flagged_file(flagged_h5, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([str(flagged_h5), "--out", str(out), "--max_cases", "3", "--slices", "4"]) == 0
    printed = capsys.readouterr().out
    assert "5 cases, 4 flagged, 1 failed" in printed and "one-lung: only 1 lung found" in printed
    page = (out / "index.html").read_text()
    assert "Failures (1)" in page and "no DICOM series found in /data/broken" in page
    assert page.index("one-lung") < page.index("tiny") < page.index("normal-a")
    assert "Figures of the 3 most suspicious of 5 cases." in page
    assert sorted(p.name for p in (out / "cases").iterdir()) == [
        "lopsided.png",
        "one-lung.png",
        "tiny.png",
    ]
    assert all(_png_ok(p, 5_000) for p in (out / "cases").iterdir())
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 5 and summary["cases"][0]["severity"] >= 3


def test_volumes_counted_from_the_mask_without_meta(tmp_path):
    path = tmp_path / "nrrd-like.h5"
    case = _lung_case("c", 1.0, 1.0)
    with DatasetWriter(path, chunks=(8, 16, 16), attrs={"source": "nrrd"}) as w:
        w.append(CaseData("c", case.image, case.mask, spacing=(2.0, 1.0, 1.0)))
    summary = summarize_dataset(path)
    voxels = 16 * 20 * 16
    assert summary.cases[0].volume_from == "stored mask"
    assert summary.cases[0].left_l == pytest.approx(voxels * 2.0 / 1e6)
    # 2 x 10 ml is far below 1 L
    assert summary.cases[0].flags[0][0] == 3


def test_cli_errors_name_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.h5"
    assert main([str(missing), "--out", str(tmp_path / "r")]) == 2
    assert str(missing) in capsys.readouterr().err
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    assert main([str(other), "--out", str(tmp_path / "r")]) == 2
    assert str(other) in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# real builds
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_of_a_file_whose_every_case_failed(tmp_path, capsys):
    path = tmp_path / "failed.h5"
    with DatasetWriter(path, kind="volume", image_dtype="uint8") as writer:
        writer.append_failure("P1", "no CT series found")
    assert main([str(path), "--out", str(tmp_path / "r")]) == 0
    assert "0 cases, 0 flagged, 1 failed" in capsys.readouterr().out
    page = (tmp_path / "r" / "index.html").read_text()
    assert "P1" in page and "no CT series found" in page


def test_report_of_the_embedded_default(default_h5, tmp_path):
    index = write_report(default_h5, tmp_path / "rep")
    page = index.read_text()
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    ids = [c["case_id"] for c in summary["cases"]]
    assert sorted(ids) == ["SAMPLE-000", "SAMPLE-001", "SAMPLE-002"]
    assert list(summary["failures"]) == ["zz-junk"] and "zz-junk" in page
    for case in summary["cases"]:
        assert 1.0 < case["total_l"] < 8.0 and case["lungs_found"] == 2
        assert case["flags"] == [], case  # the synthetic lungs are plausible
        png = tmp_path / "rep" / "cases" / f"{case['case_id']}.png"
        assert _png_ok(png, 50_000)
        assert f'src="cases/{case["case_id"]}.png"' in page
    assert "radiological convention" in page


def test_report_of_lidc(lidc_h5, tmp_path):
    index = write_report(lidc_h5, tmp_path / "rep")
    page = index.read_text()
    assert "LIDC-IDRI-0001" in page and "1 nodule box(es)" in page
    assert _png_ok(tmp_path / "rep" / "cases" / "LIDC-IDRI-0001.png", 100_000)
    (case,) = summarize_dataset(lidc_h5).cases
    # grt123's masks of this scan hold about 1.7 L (left) and 1.9 L (right)
    assert 1.4 < case.left_l < 2.0 and 1.6 < case.right_l < 2.2 and case.flags == []


def _rendered_axial(record, z: int, path: Path) -> np.ndarray:
    """Render one axial slice with draw_slice alone on a figure; return the PNG's RGB pixels."""
    plt = viz._plt()
    image, mask, boxes = record.image, record.mask, record.boxes
    fig = plt.figure(figsize=(4, 4))
    ax = fig.add_axes((0, 0, 1, 1))
    viz.draw_slice(
        ax,
        image[z],
        mask[z],
        boxes=boxes,
        axis=0,
        index=z,
        spacing=record.spacing,
        direction=record.direction,
        fill_alpha=0.0,
        letters=False,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return plt.imread(path)[..., :3]


def _pixels_of(rgb: np.ndarray, colour) -> np.ndarray:
    return np.argwhere(np.abs(rgb - np.asarray(colour)).max(axis=-1) < 0.12)


def test_lidc_is_drawn_left_lung_on_the_image_right(lidc_h5, tmp_path):
    """PROVENANCE.md: the nodule is in the posterior lung on the image's right (patient's left)."""
    with open_dataset(lidc_h5) as ds:
        record = ds[0]
        assert np.allclose(record.direction, np.eye(3))  # a standard axial scan
        z = int(round(record.boxes[0, 0]))
        rgb = _rendered_axial(record, z, tmp_path / "slice.png")
    width = rgb.shape[1]
    green = _pixels_of(rgb, viz.LABEL_COLOURS[1])  # label 1 = left lung
    orange = _pixels_of(rgb, viz.LABEL_COLOURS[2])  # label 2 = right lung
    red = _pixels_of(rgb, viz.BOX_COLOUR)
    assert len(green) > 200 and len(orange) > 200 and len(red) > 40
    assert green[:, 1].mean() > width / 2 > orange[:, 1].mean()
    assert red[:, 1].mean() > width / 2  # the nodule: image right ...
    assert red[:, 0].mean() > rgb.shape[0] / 2  # ... and posterior (bottom)
    assert viz.view_letters(record.direction, 0) == {
        "left": "R",
        "right": "L",
        "top": "A",
        "bottom": "P",
    }


def test_build_figure_uses_the_shared_drawing(lidc_h5, tmp_path):
    from dsbprep.build import print_random_case

    out = print_random_case(lidc_h5, tmp_path / "fig.png", seed=0)
    assert _png_ok(Path(out), 50_000)


def test_report_of_a_2d_contour_build(sunnybrook_dir, tmp_path):
    out = tmp_path / "c.h5"
    report = run_build(
        load_config(None),
        data_directory=sunnybrook_dir,
        output_filename=out,
        workers=1,
        progress=False,
        source="contours",
    )
    assert report.built and not report.failed
    index = write_report(out, tmp_path / "rep", max_cases=30, sheet_tiles=24)
    sheets = sorted((tmp_path / "rep" / "sheets").iterdir())
    assert [p.name for p in sheets] == ["sheet_000.png", "sheet_001.png"]  # 24 + 6 tiles
    assert all(_png_ok(p, 20_000) for p in sheets)
    page = index.read_text()
    assert page.count("<tr") - page.count("<tr><th") >= len(report.built)  # every case in the table
    assert "mask fraction" in page and "blood pool" not in page  # label names are in the PNG legend
    summary = summarize_dataset(out)
    assert summary.kind == "slices" and all(c.total_l is None for c in summary.cases)
    assert all(0 < sum(c.mask_fraction.values()) < 0.5 for c in summary.cases)


def test_2d_big_mask_flagged_and_drawn(tmp_path):
    path = tmp_path / "s.h5"
    with DatasetWriter(path, kind="slices", image_dtype="int16", attrs={"source": "rle"}) as w:
        for k, frac in enumerate((0.1, 0.8, 0.0)):
            image = np.arange(64 * 64, dtype=np.int16).reshape(64, 64)
            mask = np.zeros((64, 64), np.uint8)
            mask[: int(64 * frac)] = 1
            w.append(CaseData(f"x{k}", image, mask, spacing=(1.0, 0.5, 0.5)))
    summary = summarize_dataset(path)
    assert [c.case_id for c in summary.cases][0] == "x1"
    assert "mask covers 80% of the image" in summary.cases[0].flags[0][1]
    write_report(path, tmp_path / "rep")
    assert _png_ok(tmp_path / "rep" / "sheets" / "sheet_000.png", 5_000)


def test_case_ids_and_label_names_with_dollars_are_drawn_as_plain_text(tmp_path):
    """``$...$`` would be matplotlib math text: an unbalanced or invalid one broke the report."""
    bad_ids = ["p$1", r"scan $\frac{$", "a$_b$c^$"]
    path = tmp_path / "dollars.h5"
    with DatasetWriter(path, chunks=(8, 16, 16), pad_value=170, attrs={"source": "lung"}) as w:
        for case_id in bad_ids:
            w.append(_lung_case(case_id, 1700.0, 1900.0))
    index = write_report(path, tmp_path / "rep", axial_slices=2)
    page = index.read_text()
    assert all(html.escape(cid) in page for cid in bad_ids)
    assert all(_png_ok(p, 5_000) for p in (tmp_path / "rep" / "cases").iterdir())
    assert len(list((tmp_path / "rep" / "cases").iterdir())) == len(bad_ids)
    sheet = tmp_path / "s.h5"  # 2-D: tile titles, and label names from the meta in the legend
    with DatasetWriter(sheet, kind="slices", image_dtype="int16", attrs={"source": "rle"}) as w:
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:16] = 1
        for case_id in bad_ids:
            w.append(CaseData(case_id, np.zeros((32, 32), np.int16), mask, spacing=(1.0, 1.0, 1.0),
                              meta={"labels": {"1": "$\\notacommand$"}}))
    write_report(sheet, tmp_path / "rep2")
    assert _png_ok(tmp_path / "rep2" / "sheets" / "sheet_000.png", 5_000)
    with open_dataset(path) as ds:  # the build's --print_random_image figure
        assert _png_ok(viz.save_case_figure(ds[bad_ids[1]], tmp_path / "one.png"), 5_000)


# ---------------------------------------------------------------------------------------------
# viz helpers
# ---------------------------------------------------------------------------------------------


def test_view_letters_follow_the_direction():
    flipped_x = np.diag([1.0, 1.0, -1.0])  # x index towards the patient's right
    assert viz.view_letters(flipped_x, 0)["right"] == "R"
    assert "neurological" in viz.orientation_note(flipped_x)
    assert viz.view_letters(None, 2) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}


def test_montage_slices_cover_the_mask_and_every_nodule():
    mask = np.zeros((200, 4, 4), np.uint8)
    mask[50:150] = 2
    boxes = np.array(
        [[60, 2, 2, 4, 2, 2, 4, 1], [61, 2, 2, 4, 2, 2, 4, 1], [140, 2, 2, 4, 2, 2, 4, 1]], float
    )
    zs = viz.montage_slices(mask, boxes, n=6)
    assert len(zs) == 6 and min(zs) >= 50 and max(zs) < 150
    assert 60 in zs and 140 in zs
    assert viz.montage_slices(np.zeros((3, 2, 2)), n=12) == [0, 1, 2]


def test_patch_figure_from_loader_samples(flagged_h5, tmp_path):
    from dsbprep.loader import BatchLoader

    loader = BatchLoader(flagged_h5, patch_size=(8, 16, 16), batch_size=2, seed=1)
    samples = [loader.sample(0, i) for i in range(3)]
    path = viz.save_patches_figure(samples, tmp_path / "p.png")
    assert _png_ok(path, 5_000)
    with pytest.raises(ValueError, match="no patches"):
        viz.save_patches_figure([], tmp_path / "q.png")


@pytest.mark.parametrize("module", [viz, report_module])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
