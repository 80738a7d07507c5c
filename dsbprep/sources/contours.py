"""Contour-file source: 2-D DICOM frames with polygon contours (Sunnybrook cardiac MR).

Layout of the data directory (the ``final_data/`` folder of seed 002)::

    DIR/link.csv                      patient_id,original_id  (DICOM folder, contour folder)
    DIR/dicoms/<patient_id>/<N>.dcm   one 2-D frame per file, N = 1, 2, ... (not zero-padded)
    DIR/contourfiles/<original_id>/i-contours/IM-0001-<NNNN>-icontour-manual.txt
    DIR/contourfiles/<original_id>/o-contours/IM-0001-<NNNN>-ocontour-manual.txt

``NNNN`` is the zero-padded DICOM number N. A contour file holds one ``x y`` point
per line in pixel coordinates (x = column, y = row; pixel (r, c) has its centre at
x = c, y = r). One case = one frame, id ``<patient_id>_<NNNN>``; its patient is
``patient_id``.

Mask labels (uint8)
-------------------
- 0: background, or not annotated;
- 1 (``LABEL_BLOOD_POOL``): inside the i-contour (LV endocardium): the blood pool;
- 2 (``LABEL_MYOCARDIUM``): inside the o-contour (epicardium) but outside the i-contour.

The o-contour is filled first, the i-contour over it. Many frames have an i-contour
but no o-contour: their mask has label 1 only and the myocardium is *not annotated*
(not background); ``meta["contours"]`` lists which contours a case has, so a
training set can select frames with both.

Frames without any contour are skipped, or stored with an empty mask when
``empty_frames = store``. A polygon that fills more than ``max_area_fraction`` of
the image is reported as corrupt (seed 002's sanity check, 0.5 there).
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as _fill_polygon

from ..errors import MaskSourceError
from ..io.frame import Frame, read_dicom_frame
from ..store import CaseData
from . import SourceBase, Task, as_pair, listing_fingerprint

__all__ = [
    "LABEL_BLOOD_POOL",
    "LABEL_MYOCARDIUM",
    "MAX_AREA_FRACTION",
    "Frame",
    "ContourSource",
    "read_dicom_frame",
    "read_contour",
    "contour_mask",
    "frame_mask",
    "resample_frame",
    "discover_contour_cases",
]

logger = logging.getLogger(__name__)

LABEL_BLOOD_POOL = 1
LABEL_MYOCARDIUM = 2
#: Seed 002's ``getMask(maskThreshold=0.5)``: a polygon covering more than half the image is corrupt.
MAX_AREA_FRACTION = 0.5
#: ``IM-0001-0048-icontour-manual.txt`` -> frame 48, kind "icontour".
CONTOUR_NAME = re.compile(r"^IM-\d{4}-(?P<frame>\d{4})-(?P<kind>[io]contour)-manual\.txt$")
#: Sub-folders of a patient's contour folder, by contour kind.
CONTOUR_DIRS = {"icontour": "i-contours", "ocontour": "o-contours"}


# --- contours -> masks -----------------------------------------------------------------------


def read_contour(path: str | Path) -> np.ndarray:
    """Read a contour file: one ``x y`` float pair per line.

    Parameters
    ----------
    path : str or Path
        The ``*-manual.txt`` file.

    Returns
    -------
    ndarray (n, 2) float64
        Points as (x, y) = (column, row) pixel coordinates.

    Raises
    ------
    MaskSourceError
        Missing file, a line that is not two numbers (the message gives the line), or
        fewer than 3 points.

    Examples
    --------
    >>> read_contour("IM-0001-0048-icontour-manual.txt")[:2]  # doctest: +SKIP
    array([[120.5 , 137.5 ], [120.5 , 138.  ]])
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise MaskSourceError(f"{path}: cannot read contour file: {err}") from err
    points = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise MaskSourceError(
                f"{path}: line {number} is not an 'x y' pair: {line.strip()!r}"
            ) from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise MaskSourceError(
                f"{path}: line {number} has a non-finite coordinate: {line.strip()!r}"
            )
        points.append((x, y))
    if len(points) < 3:
        raise MaskSourceError(f"{path}: a contour needs at least 3 points, found {len(points)}")
    return np.asarray(points, float)


def contour_mask(
    points_xy: np.ndarray,
    shape: tuple[int, int],
    *,
    max_area_fraction: float = MAX_AREA_FRACTION,
    name: str = "contour",
) -> np.ndarray:
    """Fill a closed polygon into a boolean mask of ``shape``.

    A pixel is inside when its centre is inside the polygon (``skimage.draw.polygon``).

    Parameters
    ----------
    points_xy : ndarray (n, 2)
        Vertices as (x, y) = (column, row) pixel coordinates.
    shape : tuple of 2 int
        (rows, columns) of the image.
    max_area_fraction : float, default 0.5
        Largest plausible fraction of the image inside the polygon; above it the polygon
        is corrupt (seed 002's check).
    name : str
        Used in error messages (the contour file).

    Returns
    -------
    ndarray (rows, columns) bool

    Raises
    ------
    MaskSourceError
        The polygon covers more than ``max_area_fraction`` of the image, or no pixel at all.

    Examples
    --------
    >>> m = contour_mask(np.array([[1.0, 1.0], [4.0, 1.0], [4.0, 3.0], [1.0, 3.0]]), (5, 6))
    >>> int(m.sum()), m[2].astype(int).tolist()
    (12, [0, 1, 1, 1, 1, 0])
    """
    points_xy = np.asarray(points_xy, float)
    if points_xy.ndim != 2 or points_xy.shape[1] != 2 or len(points_xy) < 3:
        raise MaskSourceError(
            f"{name}: polygon must be an (n >= 3, 2) array of x, y points, got {points_xy.shape}"
        )
    if not 0 < max_area_fraction <= 1:
        raise ValueError(f"max_area_fraction must be in (0, 1], got {max_area_fraction!r}")
    mask = np.zeros(shape, bool)
    rr, cc = _fill_polygon(points_xy[:, 1], points_xy[:, 0], shape=shape)
    mask[rr, cc] = True
    fraction = mask.mean()
    if fraction > max_area_fraction:
        raise MaskSourceError(
            f"{name}: polygon covers {fraction:.1%} of the {shape[0]}x{shape[1]} image, more than "
            f"max_area_fraction={max_area_fraction:.0%}: the contour points are probably corrupt"
        )
    if not mask.any():
        raise MaskSourceError(
            f"{name}: polygon covers no pixel centre of the {shape[0]}x{shape[1]} image"
        )
    return mask


def frame_mask(
    shape: tuple[int, int],
    *,
    icontour: np.ndarray | None = None,
    ocontour: np.ndarray | None = None,
    max_area_fraction: float = MAX_AREA_FRACTION,
    names: tuple[str, str] = ("i-contour", "o-contour"),
) -> np.ndarray:
    """Label mask of one frame: o-contour filled with 2, then the i-contour with 1.

    Parameters
    ----------
    shape : tuple of 2 int
        (rows, columns).
    icontour, ocontour : ndarray (n, 2), optional
        Polygon points (x, y); either may be absent.
    max_area_fraction : float
        See :func:`contour_mask`.
    names : tuple of 2 str
        Names of the i- and o-contour for error messages.

    Returns
    -------
    ndarray (rows, columns) uint8

    Examples
    --------
    >>> sq = lambda a, b: np.array([[a, a], [b, a], [b, b], [a, b]], float)
    >>> frame_mask((8, 8), icontour=sq(3, 4), ocontour=sq(2, 5))[3].tolist()
    [0, 0, 2, 1, 1, 2, 0, 0]
    """
    mask = np.zeros(shape, np.uint8)
    if ocontour is not None:
        mask[contour_mask(ocontour, shape, max_area_fraction=max_area_fraction, name=names[1])] = (
            LABEL_MYOCARDIUM
        )
    if icontour is not None:
        mask[contour_mask(icontour, shape, max_area_fraction=max_area_fraction, name=names[0])] = (
            LABEL_BLOOD_POOL
        )
    return mask


def resample_frame(
    pixels: np.ndarray,
    spacing_yx: tuple[float, float],
    target_spacing_yx: tuple[float, float],
    *,
    order: int = 1,
) -> np.ndarray:
    """Resample a 2-D image to ``target_spacing_yx`` (mm), keeping the image's physical extent.

    Pixel centres are aligned on the image centre grid: output pixel i samples input
    coordinate ``(i + 0.5) * target / spacing - 0.5``; the output has
    ``round(n * spacing / target)`` pixels per axis. Use ``order=0`` for masks.

    Examples
    --------
    >>> resample_frame(np.arange(4.0).reshape(2, 2), (1.0, 1.0), (0.5, 0.5), order=0).shape
    (4, 4)
    """
    spacing = np.asarray(spacing_yx, float)
    target = np.asarray(target_spacing_yx, float)
    if np.any(target <= 0) or np.any(spacing <= 0):
        raise ValueError(f"spacings must be positive, got {spacing.tolist()} -> {target.tolist()}")
    scale = target / spacing
    out_shape = tuple(int(n) for n in np.maximum(np.round(np.asarray(pixels.shape) / scale), 1))
    offset = 0.5 * scale - 0.5
    return ndimage.affine_transform(
        np.asarray(pixels),
        scale,
        offset=offset,
        output_shape=out_shape,
        order=order,
        mode="nearest",
    )


# --- discovery -------------------------------------------------------------------------------


def _folder_name(value: str, path: Path, number: int, column: str) -> str:
    """``value`` if it names one folder inside the data directory, else MaskSourceError.

    A link file comes with the data and may come from anyone: an entry such as
    ``../../home`` or ``/etc`` would make the build read outside the data folder.
    Only a single plain path component is accepted (a folder that is itself a
    symbolic link, placed there by the user, is still followed).
    """
    bad = (
        not value
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or "\0" in value
        or Path(value).is_absolute()
    )
    if bad:
        raise MaskSourceError(
            f"{path}: row {number}: {column} {value!r} is not a folder name inside the data "
            "directory (no path separators, '..' or absolute paths)"
        )
    return value


def _read_link(path: Path) -> list[tuple[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [
                [c.strip() for c in row] for row in csv.reader(fh) if any(c.strip() for c in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MaskSourceError(f"{path}: cannot read the link file: {err}") from err
    if rows and rows[0][:2] == ["patient_id", "original_id"]:
        rows = rows[1:]
    out = []
    for number, row in enumerate(rows, start=2):
        if len(row) < 2 or not row[0] or not row[1]:
            raise MaskSourceError(f"{path}: row {number} needs 'patient_id,original_id', got {row}")
        out.append((
            _folder_name(row[0], path, number, "patient_id"),
            _folder_name(row[1], path, number, "original_id"),
        ))
    return out


def _frame_number(path: Path) -> int | None:
    try:
        return int(path.stem)
    except ValueError:
        return None


def discover_contour_cases(
    data_directory: str | Path,
    *,
    link_file: str = "link.csv",
    dicom_dir: str = "dicoms",
    contour_dir: str = "contourfiles",
    empty_frames: str = "skip",
) -> list[Task]:
    """One :class:`Task` per frame to build (see the module docstring for the layout).

    Parameters
    ----------
    data_directory : str or Path
        Folder holding ``link_file``, ``dicom_dir`` and ``contour_dir``.
    link_file, dicom_dir, contour_dir : str
        Names inside ``data_directory``.
    empty_frames : {"skip", "store"}
        Frames without a contour file are left out, or stored with an empty mask.

    Returns
    -------
    list of Task
        ``inputs`` = {"dicom": path or None, "icontour": path or None, "ocontour": path or None}.
        A contour file whose DICOM is missing still gets a task (its build then fails with
        a clear reason).

    Raises
    ------
    FileNotFoundError
        ``data_directory`` or its link file does not exist.
    MaskSourceError
        A malformed link file, or a patient folder listed in it that is missing.
    """
    if empty_frames not in ("skip", "store"):
        raise ValueError(f"empty_frames must be 'skip' or 'store', got {empty_frames!r}")
    root = Path(data_directory)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    link = root / link_file
    if not link.is_file():
        raise FileNotFoundError(
            f"{root}: no {link_file} (expected {link_file}, {dicom_dir}/, {contour_dir}/)"
        )
    tasks = []
    for patient_id, original_id in _read_link(link):
        dicom_folder = root / dicom_dir / patient_id
        if not dicom_folder.is_dir():
            raise MaskSourceError(
                f"{link}: DICOM folder {dicom_folder} of patient {patient_id} is missing"
            )
        frames = _patient_frames(dicom_folder, root / contour_dir / original_id)
        for number in sorted(frames):
            found = frames[number]
            has_contour = "icontour" in found or "ocontour" in found
            if not has_contour and empty_frames == "skip":
                continue
            files = [p for p in found.values() if p is not None]
            inputs = {
                key: (str(found[key]) if key in found else None) for key in ("dicom", *CONTOUR_DIRS)
            }
            tasks.append(
                Task(
                    f"{patient_id}_{number:04d}",
                    listing_fingerprint(files, root),
                    inputs,
                    patient_id=patient_id,
                )
            )
    return tasks


def _patient_frames(dicom_folder: Path, contour_folder: Path) -> dict[int, dict[str, Path]]:
    """Frame number -> {"dicom": path, "icontour": path, "ocontour": path} (those present)."""
    frames: dict[int, dict[str, Path]] = {}
    for dcm in dicom_folder.glob("*.dcm"):
        number = _frame_number(dcm)
        if number is None:
            logger.warning("%s: DICOM name is not a frame number, ignored", dcm)
            continue
        frames.setdefault(number, {})["dicom"] = dcm
    for kind, sub in CONTOUR_DIRS.items():
        folder = contour_folder / sub
        for txt in sorted(folder.glob("*.txt")) if folder.is_dir() else []:
            match = CONTOUR_NAME.match(txt.name)
            if match is None or match["kind"] != kind:
                logger.warning(
                    "%s: not a %s file name (IM-0001-NNNN-%s-manual.txt), ignored", txt, kind, kind
                )
                continue
            frames.setdefault(int(match["frame"]), {})[kind] = txt
    return frames


# --- the source --------------------------------------------------------------------------


@dataclass
class ContourSource(SourceBase):
    """Sunnybrook-style contour files -> 2-D (image, label mask) cases.

    Parameters
    ----------
    link_file, dicom_dir, contour_dir : str
        Layout names (see :func:`discover_contour_cases`).
    empty_frames : {"skip", "store"}
        Frames without contours: left out, or stored with an empty mask.
    max_area_fraction : float
        Corrupt-polygon threshold (fraction of the image).
    target_spacing : tuple of 2 float or None
        (y, x) mm to resample every frame to; None keeps each frame's own spacing.
    """

    link_file: str = "link.csv"
    dicom_dir: str = "dicoms"
    contour_dir: str = "contourfiles"
    empty_frames: str = "skip"
    max_area_fraction: float = MAX_AREA_FRACTION
    target_spacing: tuple[float, float] | None = None
    name: ClassVar[str] = "contours"
    kind: ClassVar[str] = "slices"  # int16 images, pad 0, default chunks: SourceBase's

    def __post_init__(self) -> None:
        if self.empty_frames not in ("skip", "store"):
            raise ValueError(
                f"[contours] empty_frames must be 'skip' or 'store', got {self.empty_frames!r}"
            )
        if not 0 < float(self.max_area_fraction) <= 1:
            raise ValueError(
                f"[contours] max_area_fraction must be in (0, 1], got {self.max_area_fraction!r}"
            )
        if self.target_spacing is not None:
            ts = as_pair(self.target_spacing, float)
            if len(ts) != 2 or min(ts) <= 0:
                raise ValueError(
                    f"[contours] target_spacing must be 1 or 2 positive mm values, got {self.target_spacing!r}"
                )
            self.target_spacing = ts

    @classmethod
    def from_config(cls, config: Any) -> ContourSource:
        p = config.params("contours")
        target = p["target_spacing"]
        return cls(
            link_file=str(p["link_file"]),
            dicom_dir=str(p["dicom_dir"]),
            contour_dir=str(p["contour_dir"]),
            empty_frames=str(p["empty_frames"]),
            max_area_fraction=float(p["max_area_fraction"]),
            target_spacing=None if target in ("", None) else target,
        )

    def discover(self, data_directory: str | Path) -> list[Task]:
        return discover_contour_cases(
            data_directory,
            link_file=self.link_file,
            dicom_dir=self.dicom_dir,
            contour_dir=self.contour_dir,
            empty_frames=self.empty_frames,
        )

    def process(self, task: Task) -> CaseData:
        inputs = task.inputs
        if not inputs.get("dicom"):
            contour = inputs.get("icontour") or inputs.get("ocontour")
            raise MaskSourceError(
                f"{contour}: no matching DICOM file {self.dicom_dir}/{task.patient}/<N>.dcm for frame {task.case_id}"
            )
        frame = read_dicom_frame(inputs["dicom"])
        image = frame.pixels
        spacing = frame.spacing
        origin = frame.origin
        contours = {k: read_contour(inputs[k]) for k in CONTOUR_DIRS if inputs.get(k)}
        if self.target_spacing is not None:
            scale = np.asarray(spacing[1:]) / np.asarray(
                self.target_spacing
            )  # new pixels per old pixel
            image = resample_frame(
                np.asarray(image, np.float64), spacing[1:], self.target_spacing, order=1
            )
            # contour points follow the same centre-aligned map: new = (old + 0.5) * scale - 0.5
            contours = {k: (pts + 0.5) * scale[::-1] - 0.5 for k, pts in contours.items()}
            # pixel [0, 0] of the new grid sits at old index 0.5 / scale - 0.5 (y, x)
            shift = np.array([0.0, *(0.5 / scale - 0.5)]) * np.asarray(spacing)
            origin = tuple(float(v) for v in np.asarray(origin) + frame.direction @ shift)
            spacing = (spacing[0], *self.target_spacing)
        mask = frame_mask(
            image.shape,
            icontour=contours.get("icontour"),
            ocontour=contours.get("ocontour"),
            max_area_fraction=self.max_area_fraction,
            names=(str(inputs.get("icontour")), str(inputs.get("ocontour"))),
        )
        info = np.iinfo(np.int16)
        values = np.rint(image)
        if values.min() < info.min or values.max() > info.max:
            frame.notes.append("pixel values outside int16 clipped")
        image = np.clip(values, info.min, info.max).astype(np.int16)
        meta = {
            "source": self.name,
            "dicom": inputs["dicom"],
            "contour_files": {k: inputs[k] for k in CONTOUR_DIRS if inputs.get(k)},
            "contours": sorted(contours),
            "labels": {
                "1": "blood pool (inside i-contour)",
                "2": "myocardium (between i- and o-contour)",
            },
            "patient_id": task.patient,
            "dicom_patient_id": frame.patient_id,
            "sop_instance_uid": frame.sop_instance_uid,
            "modality": frame.modality,
            "pixel_spacing_original": list(frame.spacing[1:]),
            "warnings": frame.notes,
            "parameters": {
                "max_area_fraction": self.max_area_fraction,
                "target_spacing": self.target_spacing,
                "empty_frames": self.empty_frames,
            },
        }
        return CaseData(
            case_id=task.case_id,
            image=image[None],
            mask=mask[None],
            spacing=spacing,
            origin=origin,
            direction=frame.direction,
            original_spacing=frame.spacing,
            shape_before_crop=(1, *frame.pixels.shape),
            source_hash=task.fingerprint,
            meta=meta,
        )
