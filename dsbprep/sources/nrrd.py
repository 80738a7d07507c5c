"""NRRD label-volume source: an image (NRRD or DICOM series) plus a label NRRD per case.

Layout of the data directory: one folder per case, named after the case::

    DIR/<case>/image.nrrd     the image: a NRRD file (.nrrd/.nhdr) or a folder of DICOM files
    DIR/<case>/label.nrrd     the label map on the same physical grid

``image_name`` and ``label_name`` (``[nrrd]`` in ``config.ini``) are file names or
glob patterns (e.g. ``ct-*.nrrd``, ``*Dicom``); each must match exactly one entry
of the case folder. The case id and its patient are the folder name.

Geometry: NRRD files are read with pynrrd in C order, so arrays are (z, y, x) like
the rest of dsbprep; ``space directions`` (one row per NRRD axis, fastest = x) and
``space origin`` are converted to dsbprep's world (z, y, x) = (S, P, L) frame
(``RAS``/``LAS`` spaces are flipped to LPS). The label must have the image's shape,
and its spacing, origin and direction must agree within the configured tolerances,
otherwise the case fails with a :class:`MaskSourceError` that names both files and
the values that differ.

Labels: ``label_bits`` (a bit mask, 255 = CIP's low byte "ChestRegion"; 0 = keep the
value) is applied first, then ``label_map`` (``"1=9 10 11; 2=12 13 14"``: output label =
input values) - the default gives CIP's left lung (regions 9-11) label 1 and right
lung (12-14) label 2, the convention of dsbprep's lung files. Values not in the map
become 0. An empty map keeps the (masked) values, which must fit in uint8.

Optionally the case is resampled to ``target_spacing`` (image linear, label nearest;
voxel [0, 0, 0] and the origin stay put) and its axial slices are exported as PNG
pairs for 2-D training (seed 001's ``convert_nrrd_to_png``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import DsbprepError, MaskSourceError
from ..store import CaseData
from . import Task, listing_fingerprint

__all__ = [
    "Volume",
    "SPACING_TOLERANCE_MM",
    "ORIGIN_TOLERANCE_MM",
    "DIRECTION_TOLERANCE",
    "CIP_LUNG_LABEL_MAP",
    "read_nrrd_volume",
    "read_image_volume",
    "check_alignment",
    "parse_label_map",
    "map_labels",
    "resample_to_spacing",
    "export_png_slices",
    "discover_nrrd_cases",
    "NrrdSource",
]

logger = logging.getLogger(__name__)

#: Largest spacing difference (mm) between image and label still called "the same grid".
#: ct-64's DICOM series and its NRRD differ by 0.0003 mm in z spacing (rounded header values).
SPACING_TOLERANCE_MM = 0.01
#: Largest origin difference (mm); DICOM positions are often written with 3 decimals.
ORIGIN_TOLERANCE_MM = 0.1
#: Largest difference of any direction-cosine component.
DIRECTION_TOLERANCE = 1e-3
#: CIP label maps: left lung = regions 9, 10, 11 -> 1; right lung = 12, 13, 14 -> 2.
CIP_LUNG_LABEL_MAP = "1=9 10 11; 2=12 13 14"
#: Sign that turns each NRRD space axis (x, y, z) into LPS.
_SPACE_SIGNS = {
    "left-posterior-superior": (1, 1, 1),
    "lps": (1, 1, 1),
    "right-anterior-superior": (-1, -1, 1),
    "ras": (-1, -1, 1),
    "left-anterior-superior": (1, -1, 1),
    "las": (1, -1, 1),
}
#: HU window of the exported PNG images: grt123's lung window, as :func:`window_to_uint8`.
PNG_WINDOW = (-1200.0, 600.0)


@dataclass
class Volume:
    """A 3-D array with its geometry.

    Attributes
    ----------
    array : ndarray (z, y, x)
    spacing : tuple of 3 float
        mm (z, y, x).
    origin : tuple of 3 float
        World (z, y, x) of voxel [0, 0, 0].
    direction : ndarray (3, 3)
        Column k = world (z, y, x) unit vector of index axis k.
    path : str
        File or folder it was read from.
    notes : list of str
        Assumptions made while reading.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    path: str
    notes: list[str] = field(default_factory=list)


def read_nrrd_volume(path: str | os.PathLike) -> Volume:
    """Read a 2-D or 3-D scalar NRRD as a (z, y, x) :class:`Volume` in dsbprep's LPS frame.

    Parameters
    ----------
    path : str or Path
        ``.nrrd`` or ``.nhdr`` file.

    Returns
    -------
    Volume
        A 2-D file becomes one slice (1, y, x).

    Raises
    ------
    MaskSourceError
        Unreadable file, not 2-D/3-D scalar, or degenerate space directions.

    Examples
    --------
    >>> v = read_nrrd_volume("ct-64.nrrd")  # doctest: +SKIP
    >>> v.array.shape, v.spacing  # doctest: +SKIP
    ((79, 64, 64), (3.98734177, 4.171872, 4.171872))
    """
    import nrrd

    path = Path(path)
    try:
        data, header = nrrd.read(str(path), index_order="C")
    except (OSError, nrrd.NRRDError, ValueError) as err:
        raise MaskSourceError(f"{path}: cannot read as NRRD: {err}") from err
    notes: list[str] = []
    ndim = int(header.get("dimension", data.ndim))
    if ndim not in (2, 3) or data.ndim != ndim:
        raise MaskSourceError(
            f"{path}: expected a 2-D or 3-D scalar NRRD, got dimension {ndim}, shape {data.shape}"
        )
    space = str(header.get("space", "")).lower()
    if space in _SPACE_SIGNS:
        signs = np.asarray(_SPACE_SIGNS[space], float)
    else:
        signs = np.ones(3)
        notes.append(f"space {space or '(none)'!r}: axes taken as LPS")
    directions = header.get("space directions")
    if directions is not None:
        rows = np.asarray(directions, float)
        if rows.shape != (ndim, 3) or not np.all(np.isfinite(rows)):
            raise MaskSourceError(
                f"{path}: 'space directions' {directions!r} are not {ndim} 3-D vectors"
            )
        rows = rows * signs  # NRRD axis i (fastest first) in LPS (x, y, z)
    else:
        spacings = np.asarray(header.get("spacings", [1.0] * ndim), float)
        rows = np.diag(np.r_[spacings, [1.0] * (3 - ndim)])[:ndim]
        notes.append("no 'space directions': axis-aligned, 'spacings' (or 1 mm) used")
    origin_xyz = np.asarray(header.get("space origin", np.zeros(3)), float).reshape(-1)
    if origin_xyz.size != 3 or not np.all(np.isfinite(origin_xyz)):
        raise MaskSourceError(
            f"{path}: 'space origin' {header.get('space origin')!r} is not a 3-D point"
        )
    origin_xyz = origin_xyz * signs
    if ndim == 2:
        data = data[None]
        normal = np.cross(rows[0], rows[1])
        rows = np.vstack([rows, normal / max(np.linalg.norm(normal), 1e-12)])
    # C axis k (z, y, x) is NRRD axis 2 - k; world order (x, y, z) -> (z, y, x)
    vectors = rows[::-1, ::-1]
    spacing = np.linalg.norm(vectors, axis=1)
    if np.any(spacing <= 0):
        raise MaskSourceError(f"{path}: a 'space directions' vector has zero length")
    direction = (vectors / spacing[:, None]).T
    return Volume(
        array=np.ascontiguousarray(data),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(v) for v in origin_xyz[::-1]),
        direction=direction,
        path=str(path),
        notes=notes,
    )


def read_image_volume(path: str | os.PathLike, *, pad_hu: int = -1024) -> Volume:
    """Read a case image: a NRRD file, or a folder (or file) of one DICOM series.

    DICOM goes through :func:`dsbprep.dicom.load_scan` (any modality), so CT is in HU.

    Raises
    ------
    MaskSourceError
        An unreadable NRRD.
    DicomSeriesError
        An unreadable DICOM series.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".nrrd", ".nhdr"):
        return read_nrrd_volume(path)
    from ..dicom import load_scan

    scan = load_scan(path, allowed_modalities=None, pad_hu=pad_hu)
    return Volume(
        scan.hu,
        scan.spacing,
        scan.origin,
        np.asarray(scan.direction, float),
        str(path),
        list(scan.warnings),
    )


def check_alignment(
    image: Volume,
    label: Volume,
    *,
    spacing_tolerance_mm: float = SPACING_TOLERANCE_MM,
    origin_tolerance_mm: float = ORIGIN_TOLERANCE_MM,
    direction_tolerance: float = DIRECTION_TOLERANCE,
) -> None:
    """Check that ``label`` lies on ``image``'s voxel grid.

    Parameters
    ----------
    image, label : Volume
    spacing_tolerance_mm, origin_tolerance_mm : float
        Largest accepted absolute differences of spacing and origin, mm.
    direction_tolerance : float
        Largest accepted difference of a direction cosine.

    Raises
    ------
    MaskSourceError
        Shapes differ, or spacing, origin or direction differ by more than the tolerance;
        the message names both files and the values.

    Examples
    --------
    >>> a = Volume(np.zeros((2, 3, 4)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "ct.nrrd")
    >>> b = Volume(np.zeros((2, 3, 4)), (1.0, 1.0, 1.0), (0.0, 0.0, 2.0), np.eye(3), "lm.nrrd")
    >>> check_alignment(a, b)
    Traceback (most recent call last):
    ...
    dsbprep.errors.MaskSourceError: image ct.nrrd vs label lm.nrrd: origin (z, y, x) 0, 0, 0 mm vs 0, 0, 2 mm differ by 2 mm > origin_tolerance_mm=0.1
    """
    where = f"image {image.path} vs label {label.path}"

    def fmt(values) -> str:
        return ", ".join(f"{v:.6g}" for v in np.asarray(values, float).ravel())

    if image.array.shape != label.array.shape:
        raise MaskSourceError(
            f"{where}: shape (z, y, x) {image.array.shape} vs {label.array.shape}: "
            "the label is not on the image grid"
        )
    checks = (
        (
            "spacing (z, y, x)",
            image.spacing,
            label.spacing,
            spacing_tolerance_mm,
            "spacing_tolerance_mm",
            " mm",
        ),
        (
            "origin (z, y, x)",
            image.origin,
            label.origin,
            origin_tolerance_mm,
            "origin_tolerance_mm",
            " mm",
        ),
        (
            "direction",
            image.direction,
            label.direction,
            direction_tolerance,
            "direction_tolerance",
            "",
        ),
    )
    for what, a, b, tol, key, unit in checks:
        diff = float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))))
        if not diff <= tol:
            raise MaskSourceError(
                f"{where}: {what} {fmt(a)}{unit} vs {fmt(b)}{unit} differ by "
                f"{diff:.4g}{unit} > {key}={tol:g}"
            )


def parse_label_map(text: str) -> dict[int, tuple[int, ...]]:
    """Parse ``"1=9 10 11; 2=12 13 14"`` into ``{1: (9, 10, 11), 2: (12, 13, 14)}``.

    An empty string gives an empty map (keep values).

    Raises
    ------
    ValueError
        Malformed entries, output labels outside 1..255, or an input value mapped twice.

    Examples
    --------
    >>> parse_label_map("1=9 10 11; 2=12 13 14")
    {1: (9, 10, 11), 2: (12, 13, 14)}
    """
    out: dict[int, tuple[int, ...]] = {}
    seen: dict[int, int] = {}
    for entry in (e.strip() for e in str(text).split(";")):
        if not entry:
            continue
        key, sep, values = entry.partition("=")
        try:
            if not sep:
                raise ValueError
            target = int(key)
            sources = tuple(int(v) for v in values.replace(",", " ").split())
        except ValueError:
            raise ValueError(f"label_map entry {entry!r} must look like 'OUT=IN IN ...'") from None
        if not 1 <= target <= np.iinfo(np.uint8).max or not sources:
            raise ValueError(
                f"label_map entry {entry!r}: output label must be 1..255 with at least one input"
            )
        for v in sources:
            if v in seen:
                raise ValueError(
                    f"label_map: input value {v} mapped to both {seen[v]} and {target}"
                )
            seen[v] = target
        out[target] = out.get(target, ()) + sources
    return out


def map_labels(
    label: np.ndarray, label_map: dict[int, tuple[int, ...]], *, bits: int = 0, name: str = "label"
) -> np.ndarray:
    """Turn a label volume into a uint8 mask: ``value & bits`` (when bits), then ``label_map``.

    Parameters
    ----------
    label : ndarray of int
    label_map : dict
        Output label -> input values (after masking); empty keeps the values.
    bits : int
        Bit mask applied first (255 = CIP's ChestRegion byte); 0 = none.
    name : str
        Used in error messages (the file).

    Returns
    -------
    ndarray uint8, the shape of ``label``

    Raises
    ------
    MaskSourceError
        Non-integer labels, or (empty map) values outside 0..255.

    Examples
    --------
    >>> map_labels(np.array([0, 9, 521, 12, 5]), parse_label_map("1=9 10 11; 2=12 13 14"), bits=255).tolist()
    [0, 1, 1, 2, 0]
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        if not np.array_equal(label, np.round(label)):
            raise MaskSourceError(f"{name}: label values must be integers (dtype {label.dtype})")
        label = label.astype(np.int64)
    values = label & bits if bits else label
    if not label_map:
        if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint8).max):
            raise MaskSourceError(
                f"{name}: label values {values.min()}..{values.max()} do not fit uint8; "
                "set [nrrd] label_map or label_bits"
            )
        return values.astype(np.uint8)
    uniq, inverse = np.unique(values, return_inverse=True)
    lut = np.zeros(uniq.size, np.uint8)
    for target, sources in label_map.items():
        lut[np.isin(uniq, sources)] = target
    return lut[inverse].reshape(label.shape)


def resample_to_spacing(
    array: np.ndarray, spacing: tuple[float, ...], target_spacing: tuple[float, ...], *, order: int
) -> np.ndarray:
    """Resample a (z, y, x) volume to ``target_spacing`` mm, keeping voxel [0, 0, 0] in place.

    Output voxel i samples input index ``i * target / spacing`` (edges clamped), so the
    origin and direction are unchanged; the output has ``round(n * spacing / target)``
    voxels per axis. ``order=0`` for label maps.

    Examples
    --------
    >>> resample_to_spacing(np.arange(4.0).reshape(1, 1, 4), (1, 1, 1.0), (1, 1, 2.0), order=1).tolist()
    [[[0.0, 2.0]]]
    """
    spacing = np.asarray(spacing, float)
    target = np.asarray(target_spacing, float)
    if np.any(target <= 0):
        raise ValueError(f"target_spacing must be positive, got {target.tolist()}")
    scale = target / spacing
    shape = tuple(
        int(n) for n in np.maximum(np.round(np.asarray(array.shape) * spacing / target), 1)
    )
    return ndimage.affine_transform(array, scale, output_shape=shape, order=order, mode="nearest")


def export_png_slices(
    image: np.ndarray,
    mask: np.ndarray,
    folder: str | os.PathLike,
    prefix: str,
    *,
    window: tuple[float, float] = PNG_WINDOW,
    skip_empty: bool = False,
) -> list[str]:
    """Write each axial slice as ``<prefix>_z<NNNN>_image.png`` / ``_mask.png`` in ``folder``.

    The image is windowed to uint8 (:func:`dsbprep.preprocess.window_to_uint8`); the mask
    PNG holds the label values themselves (0, 1, 2, ...).

    Parameters
    ----------
    image, mask : ndarray (z, y, x)
    folder : str or Path
        Created when absent.
    prefix : str
        File name prefix (the case id).
    window : tuple of 2 float
        (low, high) image values mapped to 0 and 255.
    skip_empty : bool
        Leave out slices whose mask is empty.

    Returns
    -------
    list of str
        The image PNG paths written (each has its ``_mask.png`` twin).
    """
    from PIL import Image  # pillow comes with matplotlib, a dsbprep dependency

    from ..preprocess import window_to_uint8

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    gray = window_to_uint8(image, window)
    for z in range(image.shape[0]):
        if skip_empty and not mask[z].any():
            continue
        stem = folder / f"{prefix}_z{z:04d}"
        Image.fromarray(np.ascontiguousarray(gray[z])).save(f"{stem}_image.png")
        Image.fromarray(np.ascontiguousarray(mask[z].astype(np.uint8))).save(f"{stem}_mask.png")
        written.append(f"{stem}_image.png")
    return written


def _match_one(folder: Path, pattern: str) -> Path | None:
    found = sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))
    if len(found) > 1:
        raise MaskSourceError(
            f"{folder}: {len(found)} entries match {pattern!r} ({', '.join(p.name for p in found)}); "
            "make [nrrd] image_name/label_name match one"
        )
    return found[0] if found else None


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return out


def discover_nrrd_cases(
    data_directory: str | os.PathLike,
    *,
    image_name: str = "image.nrrd",
    label_name: str = "label.nrrd",
) -> list[Task]:
    """One :class:`Task` per case folder of ``data_directory`` (see the module docstring).

    A folder without a matching label or image still gets a task; building it fails with
    a :class:`MaskSourceError` saying what is missing.

    Raises
    ------
    FileNotFoundError
        ``data_directory`` does not exist.
    MaskSourceError
        A pattern matches several entries of a case folder.
    """
    root = Path(data_directory)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    tasks = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        image = _match_one(folder, image_name)
        label = _match_one(folder, label_name)
        files = [f for p in (image, label) if p is not None for f in _files_of(p)]
        inputs = {
            "folder": str(folder),
            "image": str(image) if image else None,
            "label": str(label) if label else None,
        }
        tasks.append(Task(folder.name, listing_fingerprint(files, folder), inputs))
    return tasks


def _tuple3(value: Any, what: str) -> tuple[float, float, float] | None:
    if value in ("", None):
        return None
    values = tuple(float(v) for v in np.atleast_1d(value))
    values = values * 3 if len(values) == 1 else values
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(
            f"[nrrd] {what} must be one or three positive mm values (z, y, x), got {value!r}"
        )
    return values


@dataclass
class NrrdSource:
    """Image + label NRRD per case folder -> 3-D (image, label mask) cases.

    Parameters
    ----------
    image_name, label_name : str
        File names or glob patterns inside each case folder.
    label_map : str
        ``"OUT=IN IN ...; OUT=IN ..."`` (see :func:`parse_label_map`); '' keeps values.
    label_bits : int
        Bit mask applied to label values first (0 = none).
    target_spacing : tuple of 3 float or None
        Resample to this (z, y, x) mm spacing; None keeps the image grid.
    spacing_tolerance_mm, origin_tolerance_mm, direction_tolerance : float
        Alignment tolerances (:func:`check_alignment`).
    png_directory : str
        When set, also export axial PNG pairs to ``<png_directory>/<case>/``.
    png_window : tuple of 2 float
        Image window of the PNGs.
    image_dtype : str
        dtype of the stored images (int16 for CT in HU).
    pad_value : float
        Image value outside every case (air for CT).
    """

    image_name: str = "image.nrrd"
    label_name: str = "label.nrrd"
    label_map: str = CIP_LUNG_LABEL_MAP
    label_bits: int = 0xFF
    target_spacing: tuple[float, float, float] | None = None
    spacing_tolerance_mm: float = SPACING_TOLERANCE_MM
    origin_tolerance_mm: float = ORIGIN_TOLERANCE_MM
    direction_tolerance: float = DIRECTION_TOLERANCE
    png_directory: str = ""
    png_window: tuple[float, float] = PNG_WINDOW
    image_dtype: str = "int16"
    pad_value: float = -1024
    name: str = "nrrd"
    kind: str = "volume"
    chunks: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        self._map = parse_label_map(self.label_map)
        self.target_spacing = _tuple3(self.target_spacing, "target_spacing")
        dtype = np.dtype(self.image_dtype)
        if dtype.kind not in "iuf":
            raise ValueError(
                f"[nrrd] image_dtype must be a numeric dtype, got {self.image_dtype!r}"
            )
        self.png_window = tuple(float(v) for v in self.png_window)

    @classmethod
    def from_config(cls, config: Any) -> NrrdSource:
        p = config.params("nrrd")
        chunks = config.get("build", "chunks")
        return cls(
            image_name=str(p["image_name"]),
            label_name=str(p["label_name"]),
            label_map=config.parser.get("nrrd", "label_map"),
            label_bits=int(p["label_bits"]),
            target_spacing=p["target_spacing"],
            spacing_tolerance_mm=float(p["spacing_tolerance_mm"]),
            origin_tolerance_mm=float(p["origin_tolerance_mm"]),
            direction_tolerance=float(p["direction_tolerance"]),
            png_directory=str(p["png_directory"]),
            png_window=tuple(p["png_window"]),
            image_dtype=str(p["image_dtype"]),
            pad_value=float(p["pad_value"]),
            chunks=tuple(chunks),
        )

    def discover(self, data_directory: str | os.PathLike) -> list[Task]:
        return discover_nrrd_cases(
            data_directory, image_name=self.image_name, label_name=self.label_name
        )

    def process(self, task: Task) -> CaseData:
        folder = task.inputs["folder"]
        for key, pattern in (("image", self.image_name), ("label", self.label_name)):
            if not task.inputs.get(key):
                raise MaskSourceError(
                    f"{folder}: no {key} matching {pattern!r} ([nrrd] {key}_name)"
                )
        image = read_image_volume(task.inputs["image"], pad_hu=int(self.pad_value))
        label = read_nrrd_volume(task.inputs["label"])
        check_alignment(
            image,
            label,
            spacing_tolerance_mm=self.spacing_tolerance_mm,
            origin_tolerance_mm=self.origin_tolerance_mm,
            direction_tolerance=self.direction_tolerance,
        )
        mask = map_labels(label.array, self._map, bits=self.label_bits, name=label.path)
        notes = image.notes + label.notes
        if label.array.any() and not mask.any():
            notes.append(
                f"{label.path}: has labels {np.unique(label.array)[1:10].tolist()} but none is in "
                f"label_map {self.label_map!r}: the mask is empty"
            )
            logger.warning("%s", notes[-1])
        array = image.array
        spacing = image.spacing
        if self.target_spacing is not None:
            array = resample_to_spacing(
                array.astype(np.float32), spacing, self.target_spacing, order=1
            )
            mask = resample_to_spacing(mask, spacing, self.target_spacing, order=0)
            spacing = self.target_spacing
        array = self._cast(array, notes)
        pngs: list[str] = []
        if self.png_directory:
            try:
                pngs = export_png_slices(
                    array,
                    mask,
                    Path(self.png_directory) / task.case_id,
                    task.case_id,
                    window=self.png_window,
                )
            except OSError as err:
                raise DsbprepError(
                    f"{task.case_id}: cannot write PNG slices to {self.png_directory}: {err}"
                ) from err
        meta = {
            "source": self.name,
            "image": task.inputs["image"],
            "label": task.inputs["label"],
            "label_values": [int(v) for v in np.unique(label.array)],
            "mask_voxels": {
                str(int(k)): int(n)
                for k, n in zip(*np.unique(mask, return_counts=True), strict=True)
                if k
            },
            "png_slices": len(pngs),
            "png_directory": str(Path(self.png_directory) / task.case_id) if pngs else "",
            "warnings": notes,
            "parameters": {
                "label_map": self.label_map,
                "label_bits": self.label_bits,
                "target_spacing": self.target_spacing,
            },
        }
        return CaseData(
            case_id=task.case_id,
            image=array,
            mask=mask,
            spacing=tuple(float(s) for s in spacing),
            origin=image.origin,
            direction=image.direction,
            original_spacing=image.spacing,
            shape_before_crop=image.array.shape,
            source_hash=task.fingerprint,
            meta=meta,
        )

    def _cast(self, array: np.ndarray, notes: list[str]) -> np.ndarray:
        dtype = np.dtype(self.image_dtype)
        if array.dtype == dtype:
            return array
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            rounded = np.rint(array)
            if rounded.size and (rounded.min() < info.min or rounded.max() > info.max):
                notes.append(
                    f"image values {rounded.min():g}..{rounded.max():g} clipped to {dtype}"
                )
            return np.clip(rounded, info.min, info.max).astype(dtype)
        return array.astype(dtype)
