"""Nodule annotations: LIDC reader XML, reader merging, LUNA16 CSV, boxes."""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from dsbprep.annotations import (
    DEFAULT_LABEL_RULE,
    LABEL_RULES,
    Nodule,
    equivalent_diameter,
    find_lidc_xml,
    label_rule,
    lidc_nodules,
    merge_readers,
    nodules_to_boxes,
    parse_lidc_xml,
    read_luna_csv,
    world_to_stored_mapper,
)
from dsbprep.errors import MaskSourceError
from dsbprep.geometry import voxel_to_world, world_to_voxel
from dsbprep.preprocess import TrainingVolume, zoom_geometry
from dsbprep.store import BOX_COLUMNS

NS = "{http://www.nih.gov}"
#: PROVENANCE.md: LIDC-IDRI-0001 has a nodule in the patient's left, posterior lung at z ~ -107 mm.
KNOWN_NODULE_Z = -107.0


# --- real data: LIDC-IDRI-0001 ------------------------------------------------------------


@pytest.fixture(scope="module")
def lidc_scan(lidc_dir):
    from dsbprep.dicom import load_scan

    return load_scan(lidc_dir)


@pytest.fixture(scope="module")
def lidc_xml(lidc_dir, lidc_scan):
    path = find_lidc_xml(lidc_dir, series_uid=lidc_scan.series_uid)
    assert path is not None
    return path


def _geometry(scan):
    return {"origin": scan.origin, "spacing": scan.spacing, "direction": scan.direction}


def _raw_readers_covering(xml_path, z_mm):
    """Independent count, straight from the XML: readers with an outlined nodule whose
    rois span ``z_mm`` (an outline has more than one edge point)."""
    readers = set()
    root = ET.parse(xml_path).getroot()
    for session in root.iter(f"{NS}readingSession"):
        rid = session.findtext(f"{NS}servicingRadiologistID")
        for nodule in session.iter(f"{NS}unblindedReadNodule"):
            rois = nodule.findall(f"{NS}roi")
            zs = [float(r.findtext(f"{NS}imageZposition")) for r in rois]
            n_points = sum(len(r.findall(f"{NS}edgeMap")) for r in rois)
            if n_points > 1 and min(zs) - 2.5 <= z_mm <= max(zs) + 2.5:
                readers.add(rid)
    return readers


def test_find_lidc_xml_in_patient_folder(lidc_dir, lidc_xml):
    assert lidc_xml.name == "069.xml"
    assert find_lidc_xml(lidc_dir) == lidc_xml  # only one XML in the patient tree
    assert find_lidc_xml(lidc_dir, series_uid="1.2.3.4") is None


def test_find_lidc_xml_by_root_element_not_name(tmp_path, lidc_xml, ct64_dir):
    shutil.copy(lidc_xml, tmp_path / "reads.dat")  # LIDC XML under a non-.xml name
    (tmp_path / "other.xml").write_text("<IdriReadMessage><x/></IdriReadMessage>")
    (tmp_path / "broken.xml").write_text("<Other><unclosed>")
    shutil.copy(next(p for p in sorted(ct64_dir.iterdir()) if p.is_file()), tmp_path / "slice.dcm")
    assert find_lidc_xml(tmp_path) == tmp_path / "reads.dat"
    sub = tmp_path / "nested" / "deeper"
    sub.mkdir(parents=True)
    shutil.copy(lidc_xml, sub / "second.xml")
    with pytest.raises(MaskSourceError, match="2 LIDC reader XML files"):
        find_lidc_xml(tmp_path)
    with pytest.raises(FileNotFoundError):
        find_lidc_xml(tmp_path / "absent")
    # a truncated LIDC XML is an error, not silently skipped
    truncated = tmp_path / "cut"
    truncated.mkdir()
    (truncated / "069.xml").write_bytes(lidc_xml.read_bytes()[:5000])
    with pytest.raises(MaskSourceError, match="cut/069.xml: cannot parse"):
        find_lidc_xml(truncated)


def test_parse_lidc_per_reader(lidc_xml, lidc_scan):
    marks = parse_lidc_xml(lidc_xml, **_geometry(lidc_scan), series_uid=lidc_scan.series_uid)
    expected_readers = _raw_readers_covering(lidc_xml, KNOWN_NODULE_Z)
    assert len(marks) == 4
    assert len(expected_readers) == 4  # all four radiologists outlined it
    # every reader: exactly one nodule >= 3 mm (the others are single points, < 3 mm)
    assert [len(m) for m in marks] == [1, 1, 1, 1]
    assert {m[0].reader_ids[0] for m in marks} == expected_readers
    for (n,) in marks:
        assert n.n_readers == 1
        assert 20.0 < n.diameter_mm < 40.0
        assert n.extent_mm[0] >= 5 * lidc_scan.spacing[0]  # outlined on >= 5 slices of 2.5 mm
        assert max(n.extent_mm[1:]) < 40.0
    # the centres of the four readers agree within a few mm
    centers = np.array([m[0].center for m in marks])
    assert np.ptp(centers, axis=0).max() < 2.0
    # a threshold above the nodule drops it; 0 mm still ignores the single-point marks
    assert parse_lidc_xml(lidc_xml, **_geometry(lidc_scan), min_diameter_mm=40.0) == [
        [],
        [],
        [],
        [],
    ]
    assert [
        len(m) for m in parse_lidc_xml(lidc_xml, **_geometry(lidc_scan), min_diameter_mm=0.0)
    ] == [1] * 4


def test_lidc_known_nodule(lidc_xml, lidc_scan):
    nodules = lidc_nodules(lidc_xml, **_geometry(lidc_scan), series_uid=lidc_scan.series_uid)
    assert len(nodules) == 1
    (n,) = nodules
    assert n.n_readers == 4 and len(n.reader_ids) == 4
    z, y, x = n.center
    assert abs(z - KNOWN_NODULE_Z) < 12.5  # outlined from -125 to -105 mm
    assert z - n.extent_mm[0] / 2 <= KNOWN_NODULE_Z <= z + n.extent_mm[0] / 2

    hu = lidc_scan.hu
    idx = world_to_voxel(n.center, lidc_scan.origin, lidc_scan.spacing, lidc_scan.direction)
    k, r, c = np.round(idx).astype(int)
    assert 0 <= k < hu.shape[0] and 0 <= r < hu.shape[1] and 0 <= c < hu.shape[2]
    # soft tissue at the centre, lung air around it
    assert hu[k, r, c] > -300
    assert hu[k, r - 1 : r + 2, c - 1 : c + 2].mean() > -300
    around = hu[k, max(r - 40, 0) : r + 40, max(c - 40, 0) : c + 40]
    assert (around < -800).mean() > 0.2
    # patient's left (world x = L grows) and posterior (world y = P grows) of the body centre
    body = np.argwhere(hu[k] > -500)
    body_r, body_c = body.mean(axis=0)
    assert c > body_c + 30 and r > body_r
    left_right = voxel_to_world(
        [k, r, body_c], lidc_scan.origin, lidc_scan.spacing, lidc_scan.direction
    )
    assert x > left_right[2]
    # world -> voxel -> world round trip
    back = voxel_to_world(idx, lidc_scan.origin, lidc_scan.spacing, lidc_scan.direction)
    np.testing.assert_allclose(back, n.center, atol=1e-9)

    assert lidc_nodules(lidc_xml, **_geometry(lidc_scan), min_readers=4) == nodules
    assert lidc_nodules(lidc_xml, **_geometry(lidc_scan), min_readers=5) == []


def test_lidc_series_mismatch_and_wrong_scan(lidc_xml, lidc_scan):
    with pytest.raises(MaskSourceError, match="not the scan's series 1.2.3"):
        parse_lidc_xml(lidc_xml, **_geometry(lidc_scan), series_uid="1.2.3")
    # a scan that starts above the outlines: the XML cannot belong to it
    with pytest.raises(MaskSourceError, match="outside the scan"):
        parse_lidc_xml(lidc_xml, origin=(0.0, -171.7, -166.0), spacing=lidc_scan.spacing)


def test_lidc_boxes_in_a_resampled_crop(lidc_xml, lidc_scan):
    """The stored frame of a TrainingVolume: 1 mm resampling then a crop."""
    (n,) = lidc_nodules(lidc_xml, **_geometry(lidc_scan))
    new_shape, scale = zoom_geometry(lidc_scan.hu.shape, lidc_scan.spacing, (1.0, 1.0, 1.0))
    crop = np.array([[40, 300], [30, 330], [20, 350]])
    tv = TrainingVolume(
        image=np.zeros(0, np.uint8),
        labels=np.zeros(0, np.uint8),
        spacing=tuple(np.asarray(lidc_scan.spacing) * scale),
        crop_box=crop,
        resampled_shape=tuple(new_shape),
        index_scale=scale,
    )
    to_index = world_to_stored_mapper(
        lidc_scan.origin, lidc_scan.spacing, lidc_scan.direction, stored_index=tv.stored_index
    )
    shape = tuple(crop[:, 1] - crop[:, 0])
    boxes = nodules_to_boxes(
        [n], to_stored_index=to_index, stored_spacing=tv.spacing, stored_shape=shape
    )
    assert boxes.shape == (1, len(BOX_COLUMNS)) and boxes.dtype == np.float32
    # mapping the stored centre back lands on the nodule's original voxel index
    original = tv.original_index(boxes[0, :3].astype(float))
    expected = world_to_voxel(n.center, lidc_scan.origin, lidc_scan.spacing, lidc_scan.direction)
    np.testing.assert_allclose(original, expected, atol=1e-3)
    np.testing.assert_allclose(
        boxes[0, 3:6], np.asarray(n.extent_mm) / np.asarray(tv.spacing), rtol=1e-5
    )
    assert boxes[0, 6] == pytest.approx(n.diameter_mm) and boxes[0, 7] == 4


# --- synthetic XML --------------------------------------------------------------------------


def _square(r0, c0, r1, c1):
    """Dense 8-connected outline of the rectangle rows r0..r1, cols c0..c1 (as LIDC draws)."""
    top = [(r0, c) for c in range(c0, c1 + 1)]
    right = [(r, c1) for r in range(r0 + 1, r1 + 1)]
    bottom = [(r1, c) for c in range(c1 - 1, c0 - 1, -1)]
    left = [(r, c0) for r in range(r1 - 1, r0, -1)]
    return top + right + bottom + left


def _roi(z, points, inclusion=True):
    edges = "".join(
        f"<edgeMap><xCoord>{c}</xCoord><yCoord>{r}</yCoord></edgeMap>" for r, c in points
    )
    return (
        f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>1.2</imageSOP_UID>"
        f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>"
    )


def _xml(tmp_path, sessions, series="1.2.840.1"):
    body = "".join(
        f"<readingSession><servicingRadiologistID>{rid}</servicingRadiologistID>"
        + "".join(
            f"<unblindedReadNodule><noduleID>{i}</noduleID>{rois}</unblindedReadNodule>"
            for i, rois in enumerate(nodules)
        )
        + "<nonNodule><nonNoduleID>x</nonNoduleID><imageZposition>0</imageZposition>"
        "<locus><xCoord>5</xCoord><yCoord>5</yCoord></locus></nonNodule>" + "</readingSession>"
        for rid, nodules in sessions
    )
    path = tmp_path / "read.xml"
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage xmlns="http://www.nih.gov">'
        f"<ResponseHeader><SeriesInstanceUid>{series}</SeriesInstanceUid></ResponseHeader>{body}"
        "</LidcReadMessage>"
    )
    return path


def test_outline_pixels_and_holes(tmp_path):
    # interior of the 0..10 square: rows/cols 1..9 (81 px, centre 5, 5); the hole's outline
    # rows/cols 1..5 removes 25 px with centre 3, 3 -> 56 px with centre 330 / 56
    outer = _square(0, 0, 10, 10)
    hole = _square(1, 1, 5, 5)
    path = _xml(tmp_path, [("r1", [_roi(-50.0, outer) + _roi(-50.0, hole, inclusion=False)])])
    [[n]] = parse_lidc_xml(path, origin=(-50.0, 100.0, 200.0), spacing=(2.0, 0.5, 0.8))
    expected = 330 / 56
    assert n.center == pytest.approx((-50.0, 100.0 + 0.5 * expected, 200.0 + 0.8 * expected))
    assert n.extent_mm == pytest.approx((2.0, 9 * 0.5, 9 * 0.8))
    assert n.diameter_axial_mm == pytest.approx(
        math.hypot(10 * 0.5, 10 * 0.8)
    )  # outline corner to corner
    # LUNA16's size: the sphere of the 56 voxels' volume, (6 V / pi) ** (1/3)
    assert n.diameter_mm == pytest.approx((6 * 56 * 2.0 * 0.5 * 0.8 / math.pi) ** (1 / 3))
    # without the hole the centre is the square's
    path = _xml(tmp_path, [("r1", [_roi(-50.0, outer)])])
    [[n]] = parse_lidc_xml(path, origin=(-50.0, 100.0, 200.0), spacing=(2.0, 0.5, 0.8))
    assert n.center == pytest.approx((-50.0, 102.5, 204.0))


def test_slices_matched_to_nearest_and_tiny_outline(tmp_path, caplog):
    # two slices of 2.5 mm, positions given slightly off (-94.9 -> slice 2, -92.6 -> slice 3)
    rois = _roi(-94.9, _square(10, 10, 14, 14)) + _roi(-92.6, _square(10, 10, 14, 14))
    tiny = [_roi(-100.0, [(30, 30), (30, 31), (31, 31), (31, 30)])]  # encloses no pixel centre
    path = _xml(tmp_path, [("r1", [rois, tiny])])
    with caplog.at_level(logging.WARNING, logger="dsbprep"):
        [marks] = parse_lidc_xml(
            path, origin=(-100.0, 0.0, 0.0), spacing=(2.5, 1.0, 1.0), min_diameter_mm=0
        )
    assert caplog.text == ""  # within a quarter slice: no warning
    big, small = sorted(marks, key=lambda n: -n.diameter_mm)
    assert big.center == pytest.approx((-93.75, 12.0, 12.0))
    assert big.extent_mm == pytest.approx((5.0, 3.0, 3.0))
    assert small.center == pytest.approx((-100.0, 30.5, 30.5))  # falls back to the outline pixels
    # a position far between slices still maps to the nearest one, with a warning
    path = _xml(tmp_path, [("r1", [_roi(-98.6, _square(10, 10, 14, 14))])])
    with caplog.at_level(logging.WARNING, logger="dsbprep"):
        [[n]] = parse_lidc_xml(path, origin=(-100.0, 0.0, 0.0), spacing=(2.5, 1.0, 1.0))
    assert n.center[0] == pytest.approx(-97.5) and "slices from the nearest slice" in caplog.text


def test_malformed_xml(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<IdriReadMessage/>")
    with pytest.raises(MaskSourceError, match="not 'LidcReadMessage'"):
        parse_lidc_xml(bad, origin=(0, 0, 0), spacing=(1, 1, 1))
    bad.write_text("<LidcReadMessage><oops")
    with pytest.raises(MaskSourceError, match="cannot read"):
        parse_lidc_xml(bad, origin=(0, 0, 0), spacing=(1, 1, 1))
    path = _xml(tmp_path, [("r1", [_roi(0.0, [(1, 1), (1, "a"), (3, 3)])])])
    with pytest.raises(MaskSourceError, match="read.xml: nodule '0'.*not two integers"):
        parse_lidc_xml(path, origin=(0, 0, 0), spacing=(1, 1, 1))
    path = _xml(tmp_path, [("r1", [_roi("abc", _square(0, 0, 4, 4))])])
    with pytest.raises(MaskSourceError, match="imageZposition 'abc'"):
        parse_lidc_xml(path, origin=(0, 0, 0), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="min_diameter_mm"):
        parse_lidc_xml(path, origin=(0, 0, 0), spacing=(1, 1, 1), min_diameter_mm=-1)


def _rule_xml(tmp_path):
    """Four readers on 1 x 1 x 1 mm slices: a 9-pixel square nodule A outlined by 3 readers,
    B (same size, far away) by 2, C by 1, and D (a 3 x 3-pixel outline: axial 4.2 mm, 4 voxels
    inside, a 1.97 mm sphere) by all 4."""
    a = _roi(0.0, _square(10, 10, 19, 19)) + _roi(1.0, _square(10, 10, 19, 19))
    b = _roi(0.0, _square(60, 60, 69, 69)) + _roi(1.0, _square(60, 60, 69, 69))
    c = _roi(0.0, _square(10, 60, 19, 69)) + _roi(1.0, _square(10, 60, 19, 69))
    d = _roi(0.0, _square(40, 40, 43, 43))
    sessions = [("r1", [a, b, c, d]), ("r2", [a, b, d]), ("r3", [a, d]), ("r4", [d])]
    return _xml(tmp_path, sessions)


def test_label_rules(tmp_path):
    xml = _rule_xml(tmp_path)
    geometry = {"origin": (0.0, 0.0, 0.0), "spacing": (1.0, 1.0, 1.0)}
    luna = lidc_nodules(xml, **geometry)  # the default: LUNA16's rule
    assert DEFAULT_LABEL_RULE == "luna16" and lidc_nodules(xml, **geometry, rule="luna16") == luna
    (a,) = luna  # >= 3 readers and >= 3 mm (D: 4 readers, but a 1.97 mm sphere)
    assert a.n_readers == 3 and a.center == pytest.approx((0.5, 14.5, 14.5))
    assert a.diameter_mm == pytest.approx(equivalent_diameter(8 * 8 * 2))  # 2 slices of 8 x 8
    assert a.diameter_axial_mm == pytest.approx(math.hypot(9, 9))
    every = lidc_nodules(xml, **geometry, rule="all")  # D is kept: each reader's axial >= 3 mm
    assert sorted(n.n_readers for n in every) == [1, 2, 3, 4]
    assert [n.n_readers for n in lidc_nodules(xml, **geometry, rule="luna16", min_readers=2)] == [3, 2]
    assert [n.n_readers for n in lidc_nodules(xml, **geometry, min_diameter_mm=1.5)] == [4, 3]
    with pytest.raises(ValueError, match="unknown label rule 'lidc'"):
        lidc_nodules(xml, **geometry, rule="lidc")
    assert set(LABEL_RULES) == {"luna16", "all"} and label_rule("all").min_readers == 1


def test_luna16_rule_with_fewer_reading_sessions(tmp_path):
    # a one-reader truth XML (the synthetic cohort's): LUNA16 has no rule, all its readers count
    xml = _xml(tmp_path, [("truth", [_roi(0.0, _square(10, 10, 19, 19))])])
    (n,) = lidc_nodules(xml, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0))
    assert n.n_readers == 1
    assert lidc_nodules(xml, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), min_readers=2) == []


# --- merging --------------------------------------------------------------------------------


def _n(z, y, x, d, rid):
    return Nodule((float(z), float(y), float(x)), float(d), reader_ids=(rid,))


def test_merge_rule_and_one_mark_per_reader():
    a = _n(0, 0, 0, 10, "A")
    a2 = _n(0, 2, 0, 10, "A")  # the same reader marked two close nodules
    b = _n(0, 4, 0, 6, "B")  # 4 mm from a: < max(5, 3) -> same nodule
    c = _n(0, 30, 0, 6, "C")
    merged = merge_readers([[a, a2], [b], [c]])
    assert [m.n_readers for m in merged] == [2, 1, 1]
    first = merged[0]
    assert set(first.reader_ids) == {"A", "B"}
    # b is closer to a2 (2 mm) than to a (4 mm): the closest pair merges first
    assert first.center == pytest.approx((0.0, 3.0, 0.0)) and first.diameter_mm == pytest.approx(
        8.0
    )
    # 4 mm apart, radii 5 and 3: closer than the larger radius (not the smaller)
    assert [
        m.n_readers for m in merge_readers([[_n(0, 0, 0, 10, "A")], [_n(0, 4, 0, 6, "B")]])
    ] == [2]
    # larger-radius vs sum-of-radii: 7 mm apart, radii 5 and 3
    p, q = _n(0, 0, 0, 10, "A"), _n(0, 7, 0, 6, "B")
    assert [m.n_readers for m in merge_readers([[p], [q]])] == [1, 1]
    assert [m.n_readers for m in merge_readers([[p], [q]], rule="sum-of-radii")] == [2]
    with pytest.raises(ValueError, match="unknown merge rule"):
        merge_readers([[p]], rule="nearest")


def test_merge_complete_linkage_and_order_independence():
    # a chain A - B - C where A and C are too far apart: C must not join A's group
    a, b, c = _n(0, 0, 0, 8, "A"), _n(0, 3.5, 0, 8, "B"), _n(0, 7, 0, 8, "C")
    merged = merge_readers([[a], [b], [c]])
    assert sorted(m.n_readers for m in merged) == [1, 2]
    # without distance ties the grouping does not depend on the readers' order
    readers = [
        [a, _n(50, 0, 0, 12, "A")],
        [_n(0, 3, 0, 8, "B"), _n(52, 1, 0, 10, "B")],
        [_n(0, 20, 0, 8, "C")],
        [_n(51, 0, 1, 9, "D")],
    ]
    summaries = {
        tuple(
            (
                tuple(np.round(m.center, 9)),
                round(m.diameter_mm, 9),
                m.n_readers,
                tuple(sorted(m.reader_ids)),
            )
            for m in merge_readers(list(perm))
        )
        for perm in itertools.permutations(readers)
    }
    assert len(summaries) == 1
    (summary,) = summaries
    assert [s[2] for s in summary] == [3, 2, 1]
    assert merge_readers([]) == [] and merge_readers([[], []]) == []


# --- LUNA16 CSV -----------------------------------------------------------------------------


def test_read_luna_csv(tmp_path):
    path = tmp_path / "annotations.csv"
    text = (
        '"seriesuid","coordX","coordY","coordZ","diameter_mm","note"\r\n'
        '"1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860",-128.6994211,-175.3192718,-298.3875064,5.651470635,"a, quoted"\r\n'
        "\r\n"
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860,103.7836509,-211.9251487,-227.12125,4.224708481,\r\n"
        "1.2.3,0,1e1,-2.5,10,x\r\n"
    )
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    out = read_luna_csv(path)
    assert list(out) == [
        "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860",
        "1.2.3",
    ]
    first, second = out["1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"]
    assert first == Nodule(
        center=(-298.3875064, -175.3192718, -128.6994211), diameter_mm=5.651470635
    )
    assert second.center == (-227.12125, -211.9251487, 103.7836509)
    assert out["1.2.3"] == [Nodule((-2.5, 10.0, 0.0), 10.0, n_readers=1)]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty file"),
        ("seriesuid,coordX,coordY,coordZ\n1,0,0,0\n", r"lacks column\(s\) \['diameter_mm'\]"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n1,0,0,0\n", "line 2: 4 fields"),
        (
            "seriesuid,coordX,coordY,coordZ,diameter_mm\n1,0,0,0,5\n2,0,abc,0,5\n",
            "line 3: non-numeric",
        ),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n1,0,0,nan,5\n", "line 2: non-finite"),
        (
            "seriesuid,coordX,coordY,coordZ,diameter_mm\n1,0,0,0,-1\n",
            "line 2: negative diameter_mm",
        ),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n,0,0,0,1\n", "line 2: empty seriesuid"),
    ],
)
def test_read_luna_csv_errors(tmp_path, text, match):
    path = tmp_path / "annotations.csv"
    path.write_text(text)
    with pytest.raises(MaskSourceError, match=match) as err:
        read_luna_csv(path)
    assert str(path) in str(err.value)


# --- boxes ----------------------------------------------------------------------------------


def test_nodules_to_boxes_geometry(caplog):
    # stored grid: 1 mm voxels, origin (-200, -150, -100), then a crop starting at (10, 20, 30)
    origin, spacing = (-200.0, -150.0, -100.0), (1.0, 1.0, 1.0)
    to_index = world_to_stored_mapper(
        origin, spacing, stored_index=lambda i: i - np.array([10, 20, 30])
    )
    nodules = [
        Nodule((-150.0, -100.0, -50.0), 6.0, n_readers=3),  # no extent: a 6 mm cube
        Nodule((-170.0, -110.0, -60.0), 10.0, 1, (), (4.0, 8.0, 12.0), diameter_axial_mm=13.0),
        Nodule((-205.0, -100.0, -50.0), 5.0),  # before the crop: dropped with stored_shape
    ]
    boxes = nodules_to_boxes(nodules, to_stored_index=to_index, stored_spacing=(2.0, 1.0, 0.5))
    assert boxes.dtype == np.float32 and boxes.shape == (3, len(BOX_COLUMNS)) == (3, 9)
    nan = np.nan  # a LUNA16 row has no axial diameter
    np.testing.assert_array_equal(boxes[0], [40, 30, 20, 3, 6, 12, 6, 3, nan])
    np.testing.assert_array_equal(boxes[1], [20, 20, 10, 2, 8, 24, 10, 1, 13])
    np.testing.assert_array_equal(boxes[2], [-15, 30, 20, 2.5, 5, 10, 5, 1, nan])
    with caplog.at_level(logging.WARNING, logger="dsbprep"):
        kept = nodules_to_boxes(
            nodules,
            to_stored_index=to_index,
            stored_spacing=(2.0, 1.0, 0.5),
            stored_shape=(100, 100, 100),
        )
    np.testing.assert_array_equal(kept, boxes[:2])
    assert "outside the stored volume" in caplog.text
    # a rotated grid: direction swaps y and x
    direction = np.array([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])
    rotated = world_to_stored_mapper((0.0, 0.0, 0.0), (1.0, 2.0, 4.0), direction)
    box = nodules_to_boxes(
        [Nodule((3.0, 8.0, 4.0), 4.0)], to_stored_index=rotated, stored_spacing=(1, 2, 4)
    )
    np.testing.assert_allclose(box[0, :3], [3.0, 2.0, 2.0])


def test_nodules_to_boxes_edge_cases():
    to_index = world_to_stored_mapper((0, 0, 0), (1, 1, 1))
    empty = nodules_to_boxes([], to_stored_index=to_index, stored_spacing=(1, 1, 1))
    assert empty.shape == (0, len(BOX_COLUMNS)) and empty.dtype == np.float32
    with pytest.raises(ValueError, match="stored_spacing"):
        nodules_to_boxes(
            [Nodule((0, 0, 0), 1.0)], to_stored_index=to_index, stored_spacing=(1, 0, 1)
        )
    with pytest.raises(ValueError, match="returned shape"):
        nodules_to_boxes(
            [Nodule((0, 0, 0), 1.0)], to_stored_index=lambda w: w[:, :2], stored_spacing=(1, 1, 1)
        )
