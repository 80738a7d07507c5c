"""Nodule annotations -> nodule boxes in the stored voxel frame.

Two sources of nodules:

- the LIDC-IDRI reader XML (``LidcReadMessage``, e.g. ``069.xml`` beside the DICOM
  files): each of the (usually 4) radiologists outlines every nodule >= 3 mm on
  every slice it appears on. :func:`parse_lidc_xml` turns each reader's outlines
  into one :class:`Nodule` per nodule, :func:`merge_readers` groups the marks of
  different readers that describe the same nodule, and :func:`lidc_nodules` does
  both and keeps the nodules a label rule (:data:`LABEL_RULES`) accepts: ``luna16``,
  LUNA16's reference standard (>= 3 of 4 readers, >= 3 mm), or ``all``.
  docs/LABELS.md describes both rules and their sources.
- LUNA16's ``annotations.csv`` (``seriesuid, coordX, coordY, coordZ, diameter_mm``),
  read by :func:`read_luna_csv`.

Nodules live in world coordinates, (z, y, x) mm of DICOM's LPS patient frame,
so they do not depend on how a volume is resampled or cropped;
:func:`nodules_to_boxes` maps them into the stored grid of a case (columns
:data:`dsbprep.store.BOX_COLUMNS`).

Examples
--------
>>> nodules = [Nodule(center=(-100.0, 20.0, 30.0), diameter_mm=8.0, n_readers=3)]
>>> to_index = world_to_stored_mapper(origin=(-110.0, 0.0, 0.0), spacing=(2.0, 1.0, 1.0))
>>> nodules_to_boxes(nodules, to_stored_index=to_index, stored_spacing=(2.0, 1.0, 1.0)).tolist()
[[5.0, 20.0, 30.0, 4.0, 8.0, 8.0, 8.0, 3.0, nan]]
"""

from __future__ import annotations

import csv
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist
from skimage.draw import polygon as fill_polygon
from skimage.draw import polygon_perimeter

from .errors import MaskSourceError
from .geometry import _parts, voxel_to_world, world_to_voxel
from .store import BOX_COLUMNS, empty_boxes

__all__ = [
    "DEFAULT_LABEL_RULE",
    "DEFAULT_MIN_DIAMETER_MM",
    "LABEL_RULES",
    "LIDC_NAMESPACE",
    "MERGE_RULES",
    "LabelRule",
    "Nodule",
    "equivalent_diameter",
    "label_rule",
    "find_lidc_xml",
    "parse_lidc_xml",
    "write_lidc_xml",
    "merge_readers",
    "lidc_nodules",
    "read_luna_csv",
    "world_to_stored_mapper",
    "nodules_to_boxes",
]

logger = logging.getLogger(__name__)

#: XML namespace of LIDC's ``LidcReadMessage`` files.
LIDC_NAMESPACE = "http://www.nih.gov"
#: Root element that identifies an LIDC CT reader XML (chest X-ray reads use ``IdriReadMessage``).
_LIDC_ROOT = "LidcReadMessage"
#: LIDC's size limit: readers outline nodules >= 3 mm and mark smaller ones with one point.
DEFAULT_MIN_DIAMETER_MM = 3.0
#: A roi whose imageZposition is further than this fraction of the slice step from a
#: slice of the scan is still put on the nearest slice, with a warning.
_Z_MATCH_TOLERANCE = 0.25
#: Bytes read from a file to decide cheaply whether it can be XML at all.
_SNIFF_BYTES = 64
#: Rules accepted by :func:`merge_readers`.
MERGE_RULES = ("larger-radius", "sum-of-radii")
#: Columns of LUNA16's annotations.csv.
_LUNA_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")


@dataclass(frozen=True)
class Nodule:
    """One nodule in world coordinates.

    Attributes
    ----------
    center : tuple of 3 float
        World (z, y, x) mm (LPS patient frame written as S, P, L).
    diameter_mm : float
        LUNA16's size, in mm: the diameter of the sphere with the outlined volume
        (LIDC marks), averaged over readers when merged; a LUNA16 row's ``diameter_mm``.
    n_readers : int
        Radiologists who marked it (LIDC); 1 for a LUNA16 row.
    reader_ids : tuple of str
        ``servicingRadiologistID`` of those readers (LIDC), else empty.
    extent_mm : tuple of 3 float or None
        (z, y, x) size in mm of the outlined voxels' bounding box along the scan's
        index axes (voxel-inclusive), when outlines are known.
    diameter_axial_mm : float
        The largest axial diameter of the outlines in mm (pylidc's
        ``Annotation.diameter``), averaged over readers; NaN when unknown.
    """

    center: tuple[float, float, float]
    diameter_mm: float
    n_readers: int = 1
    reader_ids: tuple[str, ...] = ()
    extent_mm: tuple[float, float, float] | None = None
    diameter_axial_mm: float = math.nan


# --- LIDC XML --------------------------------------------------------------------------------


def _local(tag: str) -> str:
    """Tag name without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def _root_tag(path: Path) -> str | None:
    """Local name of the root element of ``path``, or None when it is not XML."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
            if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
                return None
            fh.seek(0)
            for _event, element in ET.iterparse(fh, events=("start",)):
                return _local(element.tag)
    except (OSError, ET.ParseError):
        return None
    return None


def _header_series_uid(root: ET.Element) -> str | None:
    for header in _children(root, "ResponseHeader"):
        uid = _text(header, "SeriesInstanceUid")
        if uid:
            return uid
    return None


def find_lidc_xml(folder: str | os.PathLike, *, series_uid: str | None = None) -> Path | None:
    """The LIDC reader XML inside a patient or series folder.

    Every file under ``folder`` (recursively) whose root element is
    ``LidcReadMessage`` qualifies, whatever its name; DICOM files are rejected
    after reading a few bytes. A file that starts as an LIDC XML but does not
    parse is an error rather than silently skipped (its nodules would be lost).

    Parameters
    ----------
    folder : str or Path
        Patient folder (``LIDC-IDRI-0001``) or one of its series folders.
    series_uid : str, optional
        Keep only the XML whose ``ResponseHeader/SeriesInstanceUid`` is this one
        (a patient folder may hold the reads of several series).

    Returns
    -------
    Path or None
        The XML file, or None when there is none.

    Raises
    ------
    FileNotFoundError
        ``folder`` is not a directory.
    MaskSourceError
        Several LIDC XML files qualify and ``series_uid`` does not pick one, or one
        of them is not well-formed XML.

    Examples
    --------
    >>> import tempfile
    >>> find_lidc_xml(tempfile.mkdtemp()) is None
    True
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"annotation folder {root} does not exist")
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and _root_tag(p) == _LIDC_ROOT):
        try:
            xml_series = _header_series_uid(ET.parse(path).getroot())
        except ET.ParseError as err:
            raise MaskSourceError(f"{path}: cannot parse the LIDC reader XML: {err}") from err
        if series_uid is None or xml_series == series_uid:
            found.append(path)
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        hint = "" if series_uid is not None else "; pass series_uid= to pick one"
        raise MaskSourceError(f"{root}: {len(found)} LIDC reader XML files ({names}){hint}")
    return found[0]


def _slice_index(z_position: float, origin, spacing, direction, xml_path, nodule_id) -> int:
    """Index of the slice whose ImagePositionPatient z is nearest ``z_position``."""
    step = float(direction[0, 0]) * float(spacing[0])  # world z advance per slice
    if abs(float(direction[0, 0])) < 0.5:
        raise MaskSourceError(
            f"{xml_path}: nodule {nodule_id!r}: the scan is not axial (direction {direction.tolist()}), "
            "LIDC outlines are drawn on axial slices"
        )
    fractional = (z_position - float(origin[0])) / step
    k = int(round(fractional))
    if k < 0:
        raise MaskSourceError(
            f"{xml_path}: nodule {nodule_id!r}: imageZposition {z_position} mm lies outside the scan "
            f"(first slice at z = {float(origin[0])} mm): wrong series?"
        )
    if abs(fractional - k) > _Z_MATCH_TOLERANCE:
        logger.warning(
            "%s: nodule %r: imageZposition %s mm is %.2f slices from the nearest slice (%d)",
            xml_path,
            nodule_id,
            z_position,
            abs(fractional - k),
            k,
        )
    return k


def _edge_points(roi: ET.Element, xml_path, nodule_id) -> np.ndarray:
    """(n, 2) int (row, col) pixel indices of a roi's edgeMap points."""
    points = []
    for edge in _children(roi, "edgeMap"):
        x, y = _text(edge, "xCoord"), _text(edge, "yCoord")
        try:
            points.append((int(y), int(x)))  # xCoord = column, yCoord = row
        except (TypeError, ValueError):
            raise MaskSourceError(
                f"{xml_path}: nodule {nodule_id!r}: edgeMap point ({x!r}, {y!r}) is not two integers"
            ) from None
    return np.asarray(points, np.int64).reshape(-1, 2)


def _nodule_voxels(
    rois, xml_path, nodule_id, origin, spacing, direction
) -> tuple[np.ndarray, float]:
    """Outlined voxels (n, 3) (slice, row, col) of one reader's nodule and its max in-plane diameter.

    Inclusion rois are filled, minus the pixels of the outline itself (the closed
    polyline through the edge points): LIDC readers drew the outline just outside
    the nodule, so its pixels are not nodule, as in pylidc's ``boolean_mask``.
    Exclusion rois (holes) are subtracted with their outline. A nodule whose
    outlines enclose no pixel keeps the outline pixels.
    """
    parsed = []
    for roi in rois:
        z_text = _text(roi, "imageZposition")
        try:
            z_position = float(z_text)
        except (TypeError, ValueError):
            raise MaskSourceError(
                f"{xml_path}: nodule {nodule_id!r}: imageZposition {z_text!r} is not a number"
            ) from None
        inclusion = (_text(roi, "inclusion") or "TRUE").upper() != "FALSE"
        points = _edge_points(roi, xml_path, nodule_id)
        if len(points) == 0:
            continue
        k = _slice_index(z_position, origin, spacing, direction, xml_path, nodule_id)
        parsed.append((k, inclusion, points))
    if not any(inclusion for _, inclusion, _ in parsed):
        raise MaskSourceError(f"{xml_path}: nodule {nodule_id!r} has no inclusion outline")
    all_points = np.concatenate([p for _, _, p in parsed])
    lo = all_points.min(axis=0)
    shape = tuple(all_points.max(axis=0) - lo + 1)
    k_values = sorted({k for k, _, _ in parsed})
    inside = {k: np.zeros(shape, bool) for k in k_values}
    outline = {k: np.zeros(shape, bool) for k in k_values}
    holes = {k: np.zeros(shape, bool) for k in k_values}
    diameter = 0.0
    pixel_mm = np.asarray(spacing, float)[1:]
    for k, inclusion, points in parsed:
        local = points - lo
        filled = np.zeros(shape, bool)
        rr, cc = fill_polygon(local[:, 0], local[:, 1], shape=shape)
        filled[rr, cc] = True
        # the outline as drawn: the closed polyline through the edge points
        pr, pc = polygon_perimeter(local[:, 0], local[:, 1], shape=shape)
        if inclusion:
            inside[k] |= filled
            outline[k][pr, pc] = True
            if len(points) > 1:
                diameter = max(diameter, float(pdist(points * pixel_mm).max()))
        else:
            holes[k] |= filled
            holes[k][pr, pc] = True
    voxels = [
        np.column_stack([np.full(len(idx), k), idx + lo])
        for k in k_values
        if len(idx := np.argwhere(inside[k] & ~outline[k] & ~holes[k]))
    ]
    if not voxels:  # outlines too small to enclose a pixel centre: use the outline itself
        voxels = [
            np.column_stack([np.full(len(idx), k), idx + lo])
            for k in k_values
            if len(idx := np.argwhere(outline[k] & ~holes[k]))
        ]
    if not voxels:
        raise MaskSourceError(
            f"{xml_path}: nodule {nodule_id!r}: its exclusion outlines remove every pixel"
        )
    return np.concatenate(voxels).astype(float), diameter


def _read_lidc_root(xml_path: Path, series_uid: str | None) -> ET.Element:
    """The root of an LIDC reader XML, checked to be one and to annotate ``series_uid``."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as err:
        raise MaskSourceError(f"{xml_path}: cannot read the LIDC reader XML: {err}") from err
    if _local(root.tag) != _LIDC_ROOT:
        raise MaskSourceError(
            f"{xml_path}: root element is {_local(root.tag)!r}, not {_LIDC_ROOT!r}"
        )
    xml_series = _header_series_uid(root)
    if series_uid is not None and xml_series is not None and xml_series != series_uid:
        raise MaskSourceError(
            f"{xml_path}: annotates series {xml_series}, not the scan's series {series_uid}"
        )
    return root


def equivalent_diameter(volume_mm3: float) -> float:
    """Diameter (mm) of the sphere of volume ``volume_mm3``: ``(6 V / pi) ** (1/3)``.

    Examples
    --------
    >>> round(equivalent_diameter(4 / 3 * math.pi * 5.0**3), 6)
    10.0
    """
    return float((6.0 * float(volume_mm3) / math.pi) ** (1.0 / 3.0))


def _reader_marks(session, r, xml_path, geometry, min_diameter_mm) -> list[Nodule]:
    """One reader's (``readingSession``'s) outlined nodules as :class:`Nodule` marks."""
    origin, spacing, direction = geometry
    reader_id = _text(session, "servicingRadiologistID") or f"reader{r}"
    marks: list[Nodule] = []
    for nodule in _children(session, "unblindedReadNodule"):
        nodule_id = _text(nodule, "noduleID") or "?"
        rois = _children(nodule, "roi")
        if sum(len(_children(roi, "edgeMap")) for roi in rois) <= 1:
            continue  # a single point: a nodule < 3 mm, no outline
        voxels, axial = _nodule_voxels(rois, xml_path, nodule_id, origin, spacing, direction)
        if axial < min_diameter_mm:
            logger.debug(
                "%s: reader %s nodule %r: %.1f mm < %.1f mm, dropped",
                xml_path, reader_id, nodule_id, axial, min_diameter_mm,
            )
            continue
        center = voxel_to_world(voxels.mean(axis=0), origin, spacing, direction)
        extent = (voxels.max(axis=0) - voxels.min(axis=0) + 1) * spacing
        marks.append(
            Nodule(
                center=tuple(float(c) for c in center),
                diameter_mm=equivalent_diameter(len(voxels) * float(np.prod(spacing))),
                n_readers=1,
                reader_ids=(reader_id,),
                extent_mm=tuple(float(e) for e in extent),
                diameter_axial_mm=axial,
            )
        )
    return marks


def parse_lidc_xml(
    xml_path: str | os.PathLike,
    *,
    origin: Sequence[float],
    spacing: Sequence[float],
    direction: np.ndarray | None = None,
    series_uid: str | None = None,
    min_diameter_mm: float = DEFAULT_MIN_DIAMETER_MM,
) -> list[list[Nodule]]:
    """Each reader's outlined nodules from an LIDC ``LidcReadMessage`` XML.

    For every ``readingSession`` (one radiologist) and every ``unblindedReadNodule``
    with outlines, the nodule's voxels are the filled inclusion outlines minus the
    outline pixels and the holes (``inclusion`` FALSE), each outline put on the scan
    slice nearest its ``imageZposition``. Then ``center`` is the world (z, y, x)
    centroid of those voxels, ``diameter_mm`` the diameter of the sphere of their
    volume (:func:`equivalent_diameter`, LUNA16's size), ``diameter_axial_mm`` the
    largest distance between two outline points of one slice (pylidc's
    ``Annotation.diameter``), ``extent_mm`` the voxels' bounding box size along the
    scan axes. Single-point marks (LIDC: nodules < 3 mm) and ``nonNodule`` marks
    are never returned.

    Parameters
    ----------
    xml_path : str or Path
        The XML file.
    origin, spacing : sequence of 3 float
        World (z, y, x) mm of voxel [0, 0, 0] and voxel size (z, y, x) mm of the scan
        the XML annotates (:class:`dsbprep.dicom.Scan` ``origin`` / ``spacing``).
    direction : ndarray (3, 3), optional
        The scan's direction cosines (column k = world unit vector of index axis k);
        identity when None.
    series_uid : str, optional
        The scan's SeriesInstanceUID; the XML's ``ResponseHeader`` must name the same.
    min_diameter_mm : float
        Marks whose ``diameter_axial_mm`` is smaller are dropped (0 keeps all).

    Returns
    -------
    list of list of Nodule
        One list per reading session, in file order; each nodule has ``n_readers`` 1
        and ``reader_ids`` = (that reader's ``servicingRadiologistID``,).

    Raises
    ------
    MaskSourceError
        The file is not an LIDC reader XML, is malformed, belongs to another series,
        or an outline lies before the scan's first slice.

    Examples
    --------
    >>> from pathlib import Path
    >>> import tempfile
    >>> xml = Path(tempfile.mkdtemp()) / "read.xml"
    >>> _ = xml.write_text('<LidcReadMessage xmlns="http://www.nih.gov"><readingSession>'
    ...     '<servicingRadiologistID>r1</servicingRadiologistID><unblindedReadNodule>'
    ...     '<noduleID>n1</noduleID><roi><imageZposition>-95</imageZposition>'
    ...     '<inclusion>TRUE</inclusion>'
    ...     + "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>"
    ...               for x, y in [(10, 20), (16, 20), (16, 26), (10, 26)])
    ...     + '</roi></unblindedReadNodule></readingSession></LidcReadMessage>')
    >>> [[n]] = parse_lidc_xml(xml, origin=(-100.0, 0.0, 0.0), spacing=(2.5, 1.0, 1.0))
    >>> n.center, round(n.diameter_axial_mm, 2), n.extent_mm, round(n.diameter_mm, 2)
    ((-95.0, 23.0, 13.0), 8.49, (2.5, 5.0, 5.0), 4.92)
    """
    xml_path = Path(xml_path)
    root = _read_lidc_root(xml_path, series_uid)
    if min_diameter_mm < 0 or not math.isfinite(min_diameter_mm):
        raise ValueError(f"min_diameter_mm must be a finite number >= 0, got {min_diameter_mm}")
    geometry = _parts(origin, spacing, direction)  # float arrays, spacing checked
    return [
        _reader_marks(session, r, xml_path, geometry, min_diameter_mm)
        for r, session in enumerate(_children(root, "readingSession"))
    ]


def write_lidc_xml(
    path: str | os.PathLike,
    readers: Sequence[Sequence[Sequence[tuple[float, np.ndarray]]]],
    *,
    series_uid: str | None = None,
    reader_ids: Sequence[str] | None = None,
) -> Path:
    """Write nodule outlines as an LIDC ``LidcReadMessage`` XML (what :func:`parse_lidc_xml` reads).

    Parameters
    ----------
    path : str or Path
        The file to write.
    readers : sequence
        One entry per reading session (radiologist); each is a sequence of nodules, and
        each nodule a sequence of ``(imageZposition, points)``: the slice's world z in
        mm and an (n, 2) int array of (row, column) pixels of a closed outline drawn
        just outside the nodule, as LIDC readers did.
    series_uid : str, optional
        Written to ``ResponseHeader/SeriesInstanceUid``.
    reader_ids : sequence of str, optional
        ``servicingRadiologistID`` per reader (default ``reader1``, ``reader2``, ...).

    Returns
    -------
    Path

    Examples
    --------
    >>> import tempfile
    >>> square = np.array([(20, 10), (20, 16), (26, 16), (26, 10)])
    >>> xml = write_lidc_xml(Path(tempfile.mkdtemp()) / "r.xml", [[[(-95.0, square)]]])
    >>> [[n]] = parse_lidc_xml(xml, origin=(-100.0, 0.0, 0.0), spacing=(2.5, 1.0, 1.0))
    >>> n.center, round(n.diameter_axial_mm, 2)
    ((-95.0, 23.0, 13.0), 8.49)
    """
    def sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
        element = ET.SubElement(parent, f"{{{LIDC_NAMESPACE}}}{tag}")
        if text is not None:
            element.text = str(text)
        return element

    ET.register_namespace("", LIDC_NAMESPACE)
    root = ET.Element(f"{{{LIDC_NAMESPACE}}}{_LIDC_ROOT}")
    header = sub(root, "ResponseHeader")
    if series_uid:
        sub(header, "SeriesInstanceUid", series_uid)
    for r, nodules in enumerate(readers):
        session = sub(root, "readingSession")
        sub(session, "servicingRadiologistID", reader_ids[r] if reader_ids else f"reader{r + 1}")
        for n, rois in enumerate(nodules):
            nodule = sub(session, "unblindedReadNodule")
            sub(nodule, "noduleID", f"nodule{n + 1}")
            for z_position, points in rois:
                roi = sub(nodule, "roi")
                sub(roi, "imageZposition", repr(float(z_position)))
                sub(roi, "inclusion", "TRUE")
                for row, col in np.asarray(points, np.int64).reshape(-1, 2):
                    edge = sub(roi, "edgeMap")
                    sub(edge, "xCoord", int(col))
                    sub(edge, "yCoord", int(row))
    path = Path(path)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


# --- merging readers -------------------------------------------------------------------------


def _merge_radius(n: Nodule) -> float:
    """Radius a mark has when deciding whether two marks are one nodule: half its
    largest axial diameter (the reader's own outline), else half ``diameter_mm``."""
    d = n.diameter_axial_mm
    return (d if math.isfinite(d) else n.diameter_mm) / 2


def _same_nodule(a: Nodule, b: Nodule, rule: str) -> bool:
    distance = math.dist(a.center, b.center)
    ra, rb = _merge_radius(a), _merge_radius(b)
    limit = max(ra, rb) if rule == "larger-radius" else ra + rb
    return distance < limit


def _mean_nodule(members: list[Nodule]) -> Nodule:
    centers = np.array([m.center for m in members], float)
    extents = [m.extent_mm for m in members]
    extent = None
    if all(e is not None for e in extents):
        extent = tuple(float(e) for e in np.mean(np.array(extents, float), axis=0))
    return Nodule(
        center=tuple(float(c) for c in centers.mean(axis=0)),
        diameter_mm=float(np.mean([m.diameter_mm for m in members])),
        n_readers=int(sum(m.n_readers for m in members)),
        reader_ids=tuple(rid for m in members for rid in m.reader_ids),
        extent_mm=extent,
        diameter_axial_mm=float(np.mean([m.diameter_axial_mm for m in members])),
    )


def _candidate_pairs(items: list[tuple[int, Nodule]], rule: str) -> list[tuple[float, int, int]]:
    """Pairs (distance, i, j) of marks of different readers that the rule joins, nearest first."""
    return sorted(
        (math.dist(items[i][1].center, items[j][1].center), i, j)
        for i in range(len(items))
        for j in range(i + 1, len(items))
        if items[i][0] != items[j][0] and _same_nodule(items[i][1], items[j][1], rule)
    )


def merge_readers(
    marks: Sequence[Sequence[Nodule]], *, rule: str = "larger-radius"
) -> list[Nodule]:
    """Group the marks of different readers that describe the same nodule.

    Rule (``"larger-radius"``, the default): two marks of *different* readers are
    the same nodule when their centres are closer than the larger of their two
    radii, i.e. the bigger sphere holds the smaller's centre. ``"sum-of-radii"`` is
    looser: the two spheres overlap (LUNA16's rule). A mark's radius is half its
    ``diameter_axial_mm`` (half ``diameter_mm`` when that is unknown). Marks are
    grouped by complete linkage: pairs are taken in order of increasing distance,
    and two groups join only when every cross pair satisfies the rule and no reader
    would appear twice in the group. Hence a reader never contributes two marks to
    one nodule, and (barring exact distance ties, broken by reader order) the
    grouping does not depend on the readers' order.

    A group becomes one nodule: centre, both diameters and extent = the mean of its
    marks', ``n_readers`` = the sum of theirs (the number of readers for
    :func:`parse_lidc_xml` marks), ``reader_ids`` = theirs, in reader order.

    Parameters
    ----------
    marks : sequence of sequence of Nodule
        One sequence per reader (the output of :func:`parse_lidc_xml`).
    rule : {"larger-radius", "sum-of-radii"}
        See above.

    Returns
    -------
    list of Nodule
        Sorted by decreasing ``n_readers``, then by centre (z, y, x).

    Examples
    --------
    >>> a = Nodule((0.0, 0.0, 0.0), 10.0, reader_ids=("r1",))
    >>> b = Nodule((0.0, 3.0, 0.0), 6.0, reader_ids=("r2",))
    >>> c = Nodule((0.0, 40.0, 0.0), 6.0, reader_ids=("r2",))
    >>> [(n.center, n.diameter_mm, n.n_readers) for n in merge_readers([[a], [b, c]])]
    [((0.0, 1.5, 0.0), 8.0, 2), ((0.0, 40.0, 0.0), 6.0, 1)]
    """
    if rule not in MERGE_RULES:
        raise ValueError(f"unknown merge rule {rule!r}; expected one of {MERGE_RULES}")
    items = [(r, n) for r, reader in enumerate(marks) for n in reader]
    group_of = list(range(len(items)))  # item -> group id
    groups: dict[int, list[int]] = {i: [i] for i in range(len(items))}
    for _distance, i, j in _candidate_pairs(items, rule):
        gi, gj = group_of[i], group_of[j]
        if gi == gj:
            continue
        readers_i = {items[m][0] for m in groups[gi]}
        if readers_i & {items[m][0] for m in groups[gj]}:
            continue
        if not all(
            _same_nodule(items[a][1], items[b][1], rule) for a in groups[gi] for b in groups[gj]
        ):
            continue
        for m in groups[gj]:
            group_of[m] = gi
        groups[gi] = sorted(groups[gi] + groups.pop(gj))
    merged = [_mean_nodule([items[m][1] for m in members]) for members in groups.values()]
    return sorted(merged, key=lambda n: (-n.n_readers, n.center))


# --- label rules -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRule:
    """Which merged LIDC nodules become labels, and how readers' marks are merged.

    Attributes
    ----------
    name : str
        ``[annotations] label_rule`` value.
    min_readers : int
        Least number of readers who outlined the nodule (capped at the number of
        reading sessions in the XML, so a one-reader truth XML keeps its nodules).
    merge : str
        :func:`merge_readers` rule.
    size_after_merge : bool
        True: ``min_diameter_mm`` applies to the merged ``diameter_mm`` (LUNA16);
        False: to each reader's ``diameter_axial_mm`` before merging.
    """

    name: str
    min_readers: int
    merge: str
    size_after_merge: bool


#: ``[annotations] label_rule`` values (docs/LABELS.md). ``luna16``: LUNA16's reference
#: standard (nodules >= 3 mm outlined by >= 3 of the 4 LIDC readers, marks merged when
#: closer than the sum of their radii, centre and diameter averaged); ``all``: every
#: outlined nodule >= 3 mm (axial) of any reader, as dsbprep built before.
LABEL_RULES = {
    "luna16": LabelRule("luna16", min_readers=3, merge="sum-of-radii", size_after_merge=True),
    "all": LabelRule("all", min_readers=1, merge="larger-radius", size_after_merge=False),
}
#: The default: LUNA16's labels are what lung-nodule detectors are trained and scored on.
DEFAULT_LABEL_RULE = "luna16"


def label_rule(name: str) -> LabelRule:
    """The :class:`LabelRule` called ``name``.

    Examples
    --------
    >>> label_rule("luna16").min_readers
    3
    """
    try:
        return LABEL_RULES[name]
    except KeyError:
        raise ValueError(f"unknown label rule {name!r}; expected one of {tuple(LABEL_RULES)}") from None


def lidc_nodules(
    xml_path: str | os.PathLike,
    *,
    origin: Sequence[float],
    spacing: Sequence[float],
    direction: np.ndarray | None = None,
    series_uid: str | None = None,
    min_diameter_mm: float = DEFAULT_MIN_DIAMETER_MM,
    rule: str = DEFAULT_LABEL_RULE,
    min_readers: int | None = None,
) -> list[Nodule]:
    """The nodules of an LIDC reader XML under a label rule (:data:`LABEL_RULES`).

    :func:`parse_lidc_xml`, :func:`merge_readers` with the rule's merge, then only
    the nodules outlined by at least ``min_readers`` readers and at least
    ``min_diameter_mm`` large (``luna16``: the merged ``diameter_mm``; ``all``: each
    reader's ``diameter_axial_mm``).

    Parameters
    ----------
    xml_path, origin, spacing, direction, series_uid
        See :func:`parse_lidc_xml`.
    min_diameter_mm : float
        Size limit (LIDC / LUNA16: 3 mm).
    rule : {"luna16", "all"}
        The label rule.
    min_readers : int, optional
        Overrides the rule's number of readers.

    Returns
    -------
    list of Nodule

    Raises
    ------
    MaskSourceError
        See :func:`parse_lidc_xml`.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> xml = Path(tempfile.mkdtemp()) / "empty.xml"
    >>> _ = xml.write_text('<LidcReadMessage xmlns="http://www.nih.gov"/>')
    >>> lidc_nodules(xml, origin=(0, 0, 0), spacing=(1, 1, 1))
    []
    """
    spec = label_rule(rule)
    if min_readers is not None and int(min_readers) < 1:
        raise ValueError(f"min_readers must be >= 1, got {min_readers}")
    marks = parse_lidc_xml(
        xml_path,
        origin=origin,
        spacing=spacing,
        direction=direction,
        series_uid=series_uid,
        min_diameter_mm=0.0 if spec.size_after_merge else min_diameter_mm,
    )
    need = spec.min_readers if min_readers is None else int(min_readers)
    if min_readers is None and 0 < len(marks) < need:
        logger.info("%s: %d reading session(s): rule %s needs all of them", xml_path, len(marks), rule)
        need = len(marks)
    kept = [n for n in merge_readers(marks, rule=spec.merge) if n.n_readers >= need]
    if spec.size_after_merge:
        kept = [n for n in kept if n.diameter_mm >= min_diameter_mm]
    return kept


# --- LUNA16 CSV ------------------------------------------------------------------------------


def read_luna_csv(path: str | os.PathLike) -> dict[str, list[Nodule]]:
    """LUNA16 ``annotations.csv``: series UID -> its nodules.

    The file has a header row naming at least ``seriesuid, coordX, coordY, coordZ,
    diameter_mm`` (any order; a UTF-8 byte-order mark, quoted fields and blank lines
    are accepted). Coordinates are world LPS mm, reordered here to (z, y, x).

    Parameters
    ----------
    path : str or Path
        The CSV file.

    Returns
    -------
    dict of str to list of Nodule
        In file order; each nodule has ``n_readers`` 1 and no extent.

    Raises
    ------
    MaskSourceError
        A column is missing, a row has a wrong number of fields, a value is not a
        finite number, or a diameter is negative; the message names file and line.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> f = Path(tempfile.mkdtemp()) / "annotations.csv"
    >>> _ = f.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\\n1.2.3,-128.7,-175.3,-298.4,5.65\\n")
    >>> read_luna_csv(f)["1.2.3"][0].center
    (-298.4, -175.3, -128.7)
    """
    path = Path(path)
    out: dict[str, list[Nodule]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise MaskSourceError(
                    f"{path}: empty file, expected a header {','.join(_LUNA_COLUMNS)}"
                )
            names = [h.strip() for h in header]
            missing = [c for c in _LUNA_COLUMNS if c not in names]
            if missing:
                raise MaskSourceError(f"{path}: header {names} lacks column(s) {missing}")
            col = {c: names.index(c) for c in _LUNA_COLUMNS}
            for row in reader:
                if not row or all(not field.strip() for field in row):
                    continue
                line = reader.line_num
                if len(row) != len(names):
                    raise MaskSourceError(
                        f"{path}, line {line}: {len(row)} fields, header has {len(names)}"
                    )
                uid = row[col["seriesuid"]].strip()
                if not uid:
                    raise MaskSourceError(f"{path}, line {line}: empty seriesuid")
                try:
                    x, y, z, d = (float(row[col[c]]) for c in _LUNA_COLUMNS[1:])
                except ValueError:
                    raise MaskSourceError(
                        f"{path}, line {line}: non-numeric value in {row}"
                    ) from None
                if not all(math.isfinite(v) for v in (x, y, z, d)):
                    raise MaskSourceError(f"{path}, line {line}: non-finite value in {row}")
                if d < 0:
                    raise MaskSourceError(f"{path}, line {line}: negative diameter_mm {d}")
                out.setdefault(uid, []).append(Nodule(center=(z, y, x), diameter_mm=d, n_readers=1))
    except OSError as err:
        raise MaskSourceError(f"{path}: cannot read the annotations CSV: {err}") from err
    except UnicodeDecodeError as err:
        raise MaskSourceError(f"{path}: not UTF-8 text: {err}") from err
    return out


# --- boxes -----------------------------------------------------------------------------------


def world_to_stored_mapper(
    origin: Sequence[float],
    spacing: Sequence[float],
    direction: np.ndarray | None = None,
    *,
    stored_index: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A ``to_stored_index`` for :func:`nodules_to_boxes`: world (n, 3) -> stored index (n, 3).

    World points go to fractional voxel indices of the scan with geometry
    ``origin`` / ``spacing`` / ``direction``, then through ``stored_index`` (e.g.
    :meth:`dsbprep.preprocess.TrainingVolume.stored_index`, which maps original
    indices into the resampled crop); without it the scan grid is the stored grid.

    Examples
    --------
    >>> f = world_to_stored_mapper((0.0, 0.0, 0.0), (2.0, 1.0, 1.0), stored_index=lambda i: i - 1)
    >>> f(np.array([[4.0, 3.0, 2.0]])).tolist()
    [[1.0, 2.0, 1.0]]
    """
    origin = tuple(float(v) for v in origin)
    spacing = tuple(float(v) for v in spacing)
    direction = None if direction is None else np.asarray(direction, float).reshape(3, 3)

    def to_stored_index(world: np.ndarray) -> np.ndarray:
        index = world_to_voxel(np.asarray(world, float).reshape(-1, 3), origin, spacing, direction)
        return index if stored_index is None else np.asarray(stored_index(index), float)

    return to_stored_index


def nodules_to_boxes(
    nodules: Sequence[Nodule],
    *,
    to_stored_index: Callable[[np.ndarray], np.ndarray],
    stored_spacing: Sequence[float],
    stored_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Boxes (n, 9) in the stored voxel frame, columns :data:`dsbprep.store.BOX_COLUMNS`.

    ``z, y, x`` = the nodule centre mapped by ``to_stored_index``; ``size_*`` =
    ``extent_mm / stored_spacing`` when the extent is known, else ``diameter_mm /
    stored_spacing`` (a cube around the sphere); ``diameter_mm``, ``n_readers`` and
    ``diameter_axial_mm`` are copied.

    Parameters
    ----------
    nodules : sequence of Nodule
    to_stored_index : callable
        Maps world (n, 3) (z, y, x) mm to fractional stored voxel indices (n, 3)
        (see :func:`world_to_stored_mapper`).
    stored_spacing : sequence of 3 float
        Voxel size (z, y, x) mm of the stored grid.
    stored_shape : sequence of 3 int, optional
        When given, nodules whose centre falls outside the stored volume (beyond
        half a voxel of its edge voxels) are dropped, with a warning.

    Returns
    -------
    ndarray, float32, shape (n, 9)

    Raises
    ------
    ValueError
        ``stored_spacing`` is not 3 positive numbers, or ``to_stored_index`` does not
        return an (n, 3) array.

    Examples
    --------
    >>> n = Nodule((10.0, 20.0, 30.0), 6.0, n_readers=2, extent_mm=(5.0, 6.0, 7.0),
    ...            diameter_axial_mm=7.5)
    >>> nodules_to_boxes([n], to_stored_index=lambda w: w / 2, stored_spacing=(2.0, 2.0, 2.0)).tolist()
    [[5.0, 10.0, 15.0, 2.5, 3.0, 3.5, 6.0, 2.0, 7.5]]
    """
    spacing = np.asarray(stored_spacing, float).reshape(-1)
    if spacing.shape != (3,) or np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(
            f"stored_spacing must be 3 positive numbers (z, y, x) mm, got {stored_spacing}"
        )
    nodules = list(nodules)
    if not nodules:
        return empty_boxes()
    centers = np.array([n.center for n in nodules], float)
    index = np.asarray(to_stored_index(centers), float)
    if index.shape != centers.shape:
        raise ValueError(
            f"to_stored_index returned shape {index.shape} for {centers.shape} world points"
        )
    sizes_mm = np.array(
        [n.extent_mm if n.extent_mm is not None else (n.diameter_mm,) * 3 for n in nodules]
    )
    columns = {
        **dict(zip(("z", "y", "x"), index.T, strict=True)),
        **dict(zip(("size_z", "size_y", "size_x"), (sizes_mm / spacing).T, strict=True)),
        "diameter_mm": [n.diameter_mm for n in nodules],
        "n_readers": [n.n_readers for n in nodules],
        "diameter_axial_mm": [n.diameter_axial_mm for n in nodules],
    }
    boxes = np.column_stack([columns[c] for c in BOX_COLUMNS])
    if stored_shape is not None:
        boxes = boxes[_inside_or_warn(nodules, index, stored_shape)]
    return boxes.astype(np.float32)


def _inside_or_warn(nodules: list[Nodule], index: np.ndarray, stored_shape) -> np.ndarray:
    """Which centres lie in the stored volume (within half a voxel); warns about the others."""
    shape = np.asarray(stored_shape, float).reshape(3)
    inside = np.all((index >= -0.5) & (index < shape - 0.5), axis=1)
    for n, idx in ((n, i) for n, i, ok in zip(nodules, index, inside, strict=True) if not ok):
        logger.warning(
            "nodule at world %s maps to stored index %s, outside the stored volume %s: dropped",
            n.center,
            np.round(idx, 1).tolist(),
            tuple(int(v) for v in shape),
        )
    return inside
