"""grt123 beside robust masks (issue 17): what a robust build records, and what the QA report shows.

A build with ``[segmentation] method = robust`` records grt123's lung volumes
(``lung_volume_ml_grt123``) and grt123's mask on the stored grid (``grt123_mask_diff``,
:mod:`dsbprep.store.maskdiff`); the report flags a lung whose volume differs strongly
between the methods and draws grt123's outline dashed cyan under the robust one.

Real data: LIDC-IDRI-0001 as it is, and the same scan with a posterior consolidation
band written into the right lung (soft tissue, -100..+60 HU, the dependent 45 mm of the
lung over 45 mm of slices), stored as an NRRD volume beside it; both built with each
method. grt123 cuts the band out, the robust method takes it in: the right lung's
volumes differ by about 10 %, which the report flags, while on the unmodified scan they
differ by 1-3 %.
"""

from __future__ import annotations

import base64
import json
import tracemalloc
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_segment_robust import texture
from test_volumes import write_nrrd

from dsbprep import viz
from dsbprep.build import run_build
from dsbprep.config import load_config
from dsbprep.dicom import load_scan
from dsbprep.errors import DatasetFormatError
from dsbprep.report import METHOD_DIFF_FRACTION, method_flags, summarize_dataset, write_report
from dsbprep.segment import segment_lungs
from dsbprep.store import (
    CaseData,
    DatasetWriter,
    apply_mask_diff,
    mask_diff,
    open_dataset,
    parse_meta,
)
from dsbprep.store.maskdiff import _RUNS_PER_STEP, MASK_DIFF_ENCODING, RUN_DTYPE

BAND_MM = 45.0  # thickness (dependent layer) and cranio-caudal extent of the consolidation
BAND_CASE = "LIDC-0001-band"
CYAN = viz.COMPARE_COLOUR


def _band_scan(lidc_dir):
    """LIDC-IDRI-0001 with a posterior consolidation band in the right lung, and the band."""
    scan = load_scan(lidc_dir)
    right = segment_lungs(scan.hu, scan.spacing, direction=scan.direction).right
    zs = np.flatnonzero(right.any(axis=(1, 2)))
    z_mid = int(zs[0] + zs[-1]) // 2
    z_band = slice(z_mid - int(BAND_MM / scan.spacing[0]), z_mid)
    y = np.arange(scan.hu.shape[1])[None, :, None]
    back = np.where(right[z_band], y, -1).max(axis=(1, 2), keepdims=True)
    band = np.zeros(scan.hu.shape, bool)
    band[z_band] = right[z_band] & (y > back - BAND_MM / scan.spacing[1])
    hu = scan.hu.copy()
    hu[band] = texture(np.random.default_rng(17), hu.shape, scan.spacing, -100, 60)[band]
    return replace(scan, hu=hu), band


@pytest.fixture(scope="module")
def builds(lidc_dir, tmp_path_factory) -> dict[str, Path]:
    """The two cases built with each method: {"grt123": h5, "robust": h5}."""
    root = tmp_path_factory.mktemp("methods")
    data = root / "input"
    data.mkdir()
    (data / lidc_dir.name).symlink_to(lidc_dir)
    sick, _ = _band_scan(lidc_dir)
    write_nrrd(sick, data / f"{BAND_CASE}.nrrd")
    out = {}
    for method in ("grt123", "robust"):
        out[method] = root / f"{method}.h5"
        config = load_config(None, {"segmentation": {"method": method}})
        built = run_build(config, data_directory=data, output_filename=out[method], workers=1,
                          progress=False)
        assert sorted(built.built) == [BAND_CASE, "LIDC-IDRI-0001"], built.failed
    return out


# ---------------------------------------------------------------------------------------------
# what a robust build records
# ---------------------------------------------------------------------------------------------


def test_robust_masks_carry_grt123_bit_exact(lidc_dir):
    scan = load_scan(lidc_dir)
    grt = segment_lungs(scan.hu, scan.spacing, direction=scan.direction)
    rob = segment_lungs(scan.hu, scan.spacing, direction=scan.direction, method="robust")
    assert grt.grt123_left is None and grt.grt123_right is None
    assert np.array_equal(rob.grt123_left, grt.left) and np.array_equal(rob.grt123_right, grt.right)
    assert not np.array_equal(rob.left | rob.right, grt.left | grt.right)  # the robust ones differ


def test_robust_build_records_both_volumes(builds):
    with open_dataset(builds["grt123"]) as g, open_dataset(builds["robust"]) as r:
        for case_id in (BAND_CASE, "LIDC-IDRI-0001"):
            gm, rm = g[case_id].meta, r[case_id].meta
            assert gm["segmentation_method"] == "grt123" and rm["segmentation_method"] == "robust"
            assert "lung_volume_ml_grt123" not in gm and "grt123_mask_diff" not in gm
            assert rm["lung_volume_ml_grt123"] == gm["lung_volume_ml"]  # the same masks, exactly
            assert rm["lung_volume_ml"] != gm["lung_volume_ml"]
            assert rm["grt123_mask_diff"]["encoding"] == MASK_DIFF_ENCODING


def test_stored_grt123_mask_is_the_grt123_builds_mask(builds):
    """Decoded from the robust build, grt123's mask equals the grt123 build's stored mask
    voxel for voxel where their crops overlap (one resampled grid, crops placed by crop_box)."""
    with open_dataset(builds["grt123"]) as g, open_dataset(builds["robust"]) as r:
        for case_id in (BAND_CASE, "LIDC-IDRI-0001"):
            rec_g, rec_r = g[case_id], r[case_id]
            assert rec_g.shape_before_crop == rec_r.shape_before_crop
            decoded = apply_mask_diff(rec_r.meta["grt123_mask_diff"], rec_r.mask)
            box_g, box_r = np.asarray(rec_g.crop_box), np.asarray(rec_r.crop_box)
            lo, hi = np.maximum(box_g[:, 0], box_r[:, 0]), np.minimum(box_g[:, 1], box_r[:, 1])
            in_g = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, box_g[:, 0], strict=True))
            in_r = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, box_r[:, 0], strict=True))
            assert np.array_equal(decoded[in_r], rec_g.mask[in_g]), case_id
            assert np.count_nonzero(rec_g.mask[in_g]) > 0.99 * np.count_nonzero(rec_g.mask)
            assert not np.array_equal(decoded, rec_r.mask)


# ---------------------------------------------------------------------------------------------
# the flag
# ---------------------------------------------------------------------------------------------


def test_method_flag_rules():
    # LIDC-IDRI-0001's volumes (mL / 1000): normal lungs differ by 1.6 % and 2.3 %
    assert method_flags(1.693, 1.956, 1.665, 1.912) == []
    just = 1.9 * (1 + METHOD_DIFF_FRACTION)
    assert method_flags(1.7, just - 0.001, 1.7, 1.9) == []
    ((severity, text),) = method_flags(1.7, just + 0.001, 1.7, 1.9)
    assert severity == 2 and text.startswith("right lung 2.00 L (robust) vs 1.90 L (grt123): +96 mL")
    assert method_flags(0.30, 0.5, 0.34, 0.5) == []  # 12 % of a small lung, but only 40 mL
    assert method_flags(1.7, 1.9, None, None) == [] and method_flags(None, None, 1.7, 1.9) == []
    texts = [t for _, t in method_flags(0.0, 1.9, 0.06, 1.9)]  # a lung the robust method lost
    assert texts == ["left lung 0.00 L (robust) vs 0.06 L (grt123): -60 mL (-100.0 %) between methods"]
    assert [t[:9] for _, t in method_flags(0.08, 1.9, 0.0, 1.9)] == ["left lung"]  # grt123 empty


def test_band_case_flagged_and_normal_case_not(builds):
    summary = {c.case_id: c for c in summarize_dataset(builds["robust"]).cases}
    band, normal = summary[BAND_CASE], summary["LIDC-IDRI-0001"]
    assert band.method == normal.method == "robust" and band.grt123_outline and normal.grt123_outline
    texts = [t for s, t in band.flags if "between methods" in t]
    assert len(texts) == 1 and texts[0].startswith("right lung") and "(grt123)" in texts[0]
    assert band.right_l - band.grt123_right_l > METHOD_DIFF_FRACTION * band.grt123_right_l
    assert not [t for _, t in normal.flags if "between methods" in t]
    assert abs(normal.right_l / normal.grt123_right_l - 1) < 0.03  # normal lungs: 1-3 %
    assert list(summary) == [BAND_CASE, "LIDC-IDRI-0001"]  # the flagged case first
    for c in summarize_dataset(builds["grt123"]).cases:  # grt123 files: nothing to compare
        assert c.method == "grt123" and c.grt123_left_l is None and not c.grt123_outline
        assert not [t for _, t in c.flags if "between methods" in t]


# ---------------------------------------------------------------------------------------------
# the figures
# ---------------------------------------------------------------------------------------------


def _cyan_pixels(png: Path, rows: float = 1.0) -> int:
    """Pixels of ``COMPARE_COLOUR`` in the top ``rows`` of the PNG (0.95: above the legend)."""
    rgb = viz._plt().imread(png)[..., :3]
    rgb = rgb[: int(rows * rgb.shape[0])]
    return int(np.count_nonzero(np.abs(rgb - np.asarray(CYAN)).max(axis=-1) < 0.15))


def _render(record, z: int, compare, path: Path) -> Path:
    fig = viz._plt().figure(figsize=(4, 4))
    ax = fig.add_axes((0, 0, 1, 1))
    viz.draw_slice(ax, record.image[z], record.mask[z], axis=0, index=z, spacing=record.spacing,
                   fill_alpha=0.0, letters=False, compare=None if compare is None else compare[z])
    fig.savefig(path, dpi=100)
    viz._plt().close(fig)
    return path


def test_slice_through_the_band_shows_grt123_outline(builds, tmp_path):
    with open_dataset(builds["robust"]) as ds:
        record = ds[BAND_CASE]
        grt = apply_mask_diff(record.meta["grt123_mask_diff"], record.mask)
        stored = record.mask
        added = (stored > 0) & (grt == 0)  # the band (and pathology elsewhere) grt123 cut out
        z = int(np.argmax(added.sum(axis=(1, 2))))
        assert added[z].sum() > 1000  # mm^2 of band in that slice
        with_grt = _cyan_pixels(_render(record, z, grt, tmp_path / "with.png"))
        without = _cyan_pixels(_render(record, z, None, tmp_path / "without.png"))
        same = _cyan_pixels(_render(record, z, stored, tmp_path / "same.png"))
    assert without == 0 and with_grt > 100
    assert same < with_grt / 4  # drawn under the stored outline: hidden where the two coincide


def test_report_draws_both_outlines_when_present(builds, tmp_path):
    pages = {}
    for method, path in builds.items():
        index = write_report(path, tmp_path / method)
        pages[method] = index.read_text()
        summary = json.loads((tmp_path / method / "summary.json").read_text())
        band = next(c for c in summary["cases"] if c["case_id"] == BAND_CASE)
        png = tmp_path / method / "cases" / f"{BAND_CASE}.png"
        assert png.stat().st_size > 100_000
        if method == "robust":
            assert band["grt123_outline"] and band["grt123_right_l"] > 1.7
            assert _cyan_pixels(png, rows=0.95) > 100  # outlines, not just the legend's line
        else:
            assert not band["grt123_outline"] and _cyan_pixels(png) == 0
    assert "grt123: left 1.67 L, right 1.78 L (dashed cyan outline)" in pages["robust"]
    assert "between methods" in pages["robust"] and "between methods" not in pages["grt123"]
    assert "outline, dashed cyan" in pages["robust"] and "dashed cyan" not in pages["grt123"]


def _case(case_id: str, meta: dict, shape=(24, 40, 48)) -> CaseData:
    image = np.full(shape, 170, np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[4:20, 10:30, 28:44], mask[4:20, 10:30, 4:20] = 1, 2
    image[mask > 0] = 30
    return CaseData(case_id, image, mask, spacing=(2.0, 1.0, 1.0),
                    meta={"lung_volume_ml": {"left": 1700.0, "right": 1900.0}, "lungs_found": 2, **meta})


def test_old_and_partial_files_still_render(tmp_path):
    """A file without the keys (built before them), one with volumes but no mask, one whose
    mask diff is damaged: the report renders each, flags only what it can tell."""
    shape = (24, 40, 48)
    stored = _case("x", {}).mask
    grt = stored.copy()
    grt[4:20, 2:8, 4:20] = 2  # grt123's right lung reached further forward
    cut = {"encoding": MASK_DIFF_ENCODING, "shape": list(shape), "runs": 10,
           "data": "eJw="}  # b"x\x9c": a zlib stream cut after its header
    path = tmp_path / "mixed.h5"
    with DatasetWriter(path, chunks=(8, 16, 16), pad_value=170, attrs={"source": "lung"}) as w:
        w.append(_case("old", {}))
        w.append(_case("no-mask", {"segmentation_method": "robust",
                                   "lung_volume_ml_grt123": {"left": 1700.0, "right": 1500.0}}))
        w.append(_case("drawn", {"segmentation_method": "robust",
                                 "lung_volume_ml_grt123": {"left": 1700.0, "right": 1880.0},
                                 "grt123_mask_diff": mask_diff(grt, stored)}))
        w.append(_case("damaged", {"segmentation_method": "robust",
                                   "lung_volume_ml_grt123": {"left": 1700.0, "right": 1880.0},
                                   "grt123_mask_diff": cut}))
    index = write_report(path, tmp_path / "rep")
    cases = {c.case_id: c for c in summarize_dataset(path).cases}
    assert cases["old"].flags == [] and cases["old"].method == "" and not cases["old"].grt123_outline
    assert [t[:10] for _, t in cases["no-mask"].flags] == ["right lung"]  # +400 mL
    assert not cases["no-mask"].grt123_outline and cases["drawn"].grt123_outline
    assert cases["drawn"].flags == []
    ((severity, text),) = cases["damaged"].flags
    assert severity == 1 and "grt123's mask not drawn" in text and "'damaged'" in text
    for case_id in cases:
        assert (tmp_path / "rep" / "cases" / f"{case_id}.png").stat().st_size > 10_000
    assert _cyan_pixels(tmp_path / "rep" / "cases" / "drawn.png", rows=0.95) > 20
    assert _cyan_pixels(tmp_path / "rep" / "cases" / "old.png") == 0
    assert "damaged" in index.read_text()


# ---------------------------------------------------------------------------------------------
# the encoding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_mask_diff_round_trips(seed):
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 3, (7, 11, 13)).astype(np.uint8)
    other = stored.copy()
    flip = rng.random(stored.shape) < [0.0, 0.05, 0.5, 1.0][seed]
    other[flip] = rng.integers(0, 3, int(flip.sum()))
    diff = mask_diff(other, stored)
    assert json.loads(json.dumps(diff)) == diff
    assert np.array_equal(apply_mask_diff(diff, stored), other)
    assert diff["runs"] == 0 if seed == 0 else diff["runs"] > 0


def test_many_runs_are_decoded_in_steps():
    stored = np.zeros((4, 200, 300), np.uint8)
    other = stored.copy()
    other[..., ::2] = 1  # 120,000 runs of one voxel
    other[0, 0, 1] = 2  # a run of another label right after the first
    diff = mask_diff(other, stored)
    assert diff["runs"] > 1.5 * _RUNS_PER_STEP
    assert np.array_equal(apply_mask_diff(diff, stored), other)


def _packed(runs) -> str:
    return base64.b64encode(zlib.compress(np.array(runs, RUN_DTYPE).tobytes())).decode()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"encoding": "label-runs/0"}, "grt123_mask_diff: not an object"),
        ({"shape": [4, 5, 8]}, ".shape"),
        ({"runs": -1}, ".runs"),
        ({"runs": True}, ".runs"),
        ({"runs": 10**12}, ".runs"),
        ({"data": 5}, ".data: is a int"),
        ({"data": "not base64!"}, ".data: not base64"),
        ({"data": "AAAA"}, ".data: not zlib"),
        ({"runs": 3}, ".data: holds 1 runs, not the 3"),
        ({"data": _packed([(1, 2, 1), (0, 1, 2)])}, ".data: holds more than the 1 runs"),
        ({"data": _packed([(0, 0, 1)])}, "a run of length 0"),
        ({"data": _packed([(100, 41, 1)])}, "reach past the 140 voxels"),
        ({"data": _packed([(2**32 - 1, 2**32 - 1, 1)])}, "reach past"),
    ],
)
def test_damaged_mask_diffs_are_refused_with_the_field(change, field):
    stored = np.zeros((4, 5, 7), np.uint8)
    diff = {**mask_diff(stored + 1, stored), "runs": 1, "data": _packed([(3, 4, 2)]), **change}
    with pytest.raises(DatasetFormatError, match=r"f\.h5: case 'c': field meta\.grt123_mask_diff"):
        try:
            apply_mask_diff(diff, stored, "f.h5: case 'c'")
        except DatasetFormatError as err:
            assert field in str(err), err
            raise


def test_decompression_bomb_allocates_one_mask():
    """256 MiB of zeros compress to 256 kB; declared as runs they are refused after one step."""
    stored = np.zeros((64, 512, 512), np.uint8)  # 16 MiB, the most the bomb may claim
    bomb = zlib.compressobj(9)
    data = b"".join(bomb.compress(bytes(2**24)) for _ in range(16)) + bomb.flush()

    diff = {"encoding": MASK_DIFF_ENCODING, "shape": list(stored.shape), "runs": stored.size,
            "data": base64.b64encode(data).decode()}
    tracemalloc.start()
    try:
        with pytest.raises(DatasetFormatError, match="length 0"):
            apply_mask_diff(diff, stored)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < stored.nbytes + 4 * len(data) + 8 * 2**20, peak


def test_meta_types_of_the_new_keys_are_checked():
    for key, value in (("segmentation_method", 1), ("lung_volume_ml_grt123", {"left": "x"}),
                       ("grt123_mask_diff", [1, 2])):
        with pytest.raises(DatasetFormatError, match=f"field meta.{key}"):
            parse_meta(json.dumps({key: value}).encode(), "f.h5: case 'c'")
