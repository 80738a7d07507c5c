"""The on-disk dsbprep format: its constants, the index row, and case metadata encoding.

Everything a reader or a writer must agree on lives here: the format version,
the compound ``INDEX_DTYPE`` of ``/index``, the box columns, status and split
codes, default chunk and cache sizes, the limits a reader enforces on a file it
did not write (``ReadLimits``), and how a case's provenance becomes the JSON
bytes of ``/meta`` and back (:func:`parse_meta`, depth- and size-limited).
See docs/FORMAT.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import DatasetFormatError

__all__ = [
    "FORMAT_VERSION",
    "INDEX_DTYPE",
    "BOX_COLUMNS",
    "STATUS_OK",
    "STATUS_FAILED",
    "SPLITS",
    "DATASETS",
    "DEFAULT_VOLUME_CHUNKS",
    "DEFAULT_SLICE_CHUNKS",
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_CACHE_SLOTS",
    "ReadLimits",
    "DEFAULT_LIMITS",
    "CaseData",
    "check_version",
    "encode_id",
    "meta_blob",
    "parse_meta",
    "empty_boxes",
    "as_boxes",
    "box_columns_of",
]

#: Version of the on-disk layout. Readers refuse files with a larger major version.
#: 2.0: ``/boxes`` gained the column ``diameter_axial_mm`` (format 1.x files are read, see
#: :func:`as_boxes`; appending to them is refused).
FORMAT_VERSION = "2.0"
_FORMAT_MAJOR = 2

#: Column meaning of each row of ``/boxes`` (voxel units are in the stored grid).
#: ``diameter_mm``: LUNA16's diameter (volume-equivalent sphere, readers' mean);
#: ``diameter_axial_mm``: the largest axial diameter of the outlines (readers' mean),
#: NaN when unknown (a LUNA16 CSV row). See docs/LABELS.md.
BOX_COLUMNS = (
    "z", "y", "x", "size_z", "size_y", "size_x", "diameter_mm", "n_readers", "diameter_axial_mm"
)
#: Columns of format 1.x files (no ``diameter_axial_mm``; ``diameter_mm`` held the axial one).
BOX_COLUMNS_V1 = BOX_COLUMNS[:8]

STATUS_OK = 0
STATUS_FAILED = 1

#: Longest case id and hash strings kept in the index (bytes, UTF-8).
ID_BYTES = 128
HASH_BYTES = 64

INDEX_DTYPE = np.dtype(
    [
        ("case_id", f"S{ID_BYTES}"),
        ("status", "i1"),
        ("ndim", "i1"),
        ("split", "i1"),
        ("label", "i2"),
        ("z0", "i8"),
        ("shape", "i4", (3,)),
        ("spacing", "f8", (3,)),
        ("origin", "f8", (3,)),
        ("direction", "f8", (3, 3)),
        ("original_spacing", "f8", (3,)),
        ("shape_before_crop", "i4", (3,)),
        ("crop_box", "i4", (3, 2)),
        ("boxes_start", "i8"),
        ("n_boxes", "i4"),
        ("meta_start", "i8"),
        ("meta_len", "i8"),
        ("source_hash", f"S{HASH_BYTES}"),
        ("checksum", "S32"),
        ("time", "f8"),
    ]
)

#: Split codes stored in the index.
SPLITS = {"": -1, "train": 0, "val": 1, "test": 2}

#: The five datasets of a file: name -> (rank, what the dtype must be).
DATASETS = {
    "images": (3, "a numeric image dtype"),
    "masks": (3, "uint8"),
    "boxes": (2, "float32"),
    "meta": (1, "uint8"),
    "index": (1, "INDEX_DTYPE"),
}

#: Default chunk shapes: 64^3 suits 3-D patch reads (see docs/FORMAT.md);
#: 2-D slice files use one slice per chunk row.
DEFAULT_VOLUME_CHUNKS = (64, 64, 64)
DEFAULT_SLICE_CHUNKS = (1, 128, 128)

#: Reader chunk cache: a few 3-D patches' worth of chunks (the h5py default is 1 MiB).
DEFAULT_CACHE_BYTES = 64 * 1024**2
#: Slots of the chunk hash table; a prime about 100x the number of cached chunks.
DEFAULT_CACHE_SLOTS = 100_003


@dataclass(frozen=True)
class ReadLimits:
    """What a reader accepts from a file it did not write (``open_dataset(limits=...)``).

    The defaults hold every legitimate dataset we know of by a wide margin while
    keeping a hostile file's declared sizes from being allocated.

    Parameters
    ----------
    max_case_bytes : int
        Largest image plus mask of one case, in bytes (default 1 GiB: a 700 x 512 x 512
        int16 CT with its uint8 mask is 550 MB; a lung crop of grt123's layout ~50 MB).
        Reading a case allocates its image and mask, so this bounds a reader's memory.
    max_index_rows : int
        Most rows of ``/index`` (default 250,000: 115 MB in memory; a 2-D file has one row
        per slice, and the largest public sets we know hold ~112,000 images).
    max_meta_bytes : int
        Largest metadata JSON of one case (default 16 MiB; a lung case's is < 100 kB, with
        grt123's mask of a robust build 96 kB for LIDC-IDRI-0001).
    max_meta_depth : int
        Deepest nesting of a case's metadata JSON (default 64; dsbprep writes 4).
    max_case_boxes : int
        Most boxes of one case (default 100,000; LIDC's most nodules in a scan is < 30).
    """

    max_case_bytes: int = 1024**3
    max_index_rows: int = 250_000
    max_meta_bytes: int = 16 * 1024**2
    max_meta_depth: int = 64
    max_case_boxes: int = 100_000


#: The limits every reader uses unless given others (tests may replace it with smaller ones).
DEFAULT_LIMITS = ReadLimits()


@dataclass
class CaseData:
    """One case ready to be appended.

    Parameters
    ----------
    case_id : str
        Unique id (patient id for lung CT, ``<patient>_<frame>`` for 2-D sources).
    image : ndarray, shape (z, y, x)
        Volume in the file's image dtype. A 2-D case is given as (y, x) or (1, y, x).
    mask : ndarray, same shape, uint8
        Label mask (0 background; lung files use 1 = left, 2 = right).
    spacing : tuple of 3 float
        Voxel size of ``image`` in mm (z, y, x).
    origin, direction : world (z, y, x) mm of voxel [0, 0, 0] and 3x3 direction cosines
        (column k = world unit vector of index axis k), describing the *stored* grid.
    boxes : ndarray, shape (n, len(BOX_COLUMNS))
        Boxes in the stored voxel frame, columns ``BOX_COLUMNS`` (8 columns, without
        ``diameter_axial_mm``, are accepted: it is set to ``diameter_mm``).
    meta : dict
        JSON-serialisable provenance (source files, series UID, parameters, ...).
    """

    case_id: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    original_spacing: tuple[float, float, float] | None = None
    shape_before_crop: tuple[int, int, int] | None = None
    crop_box: np.ndarray | None = None
    boxes: np.ndarray = field(default_factory=lambda: empty_boxes())
    source_hash: str = ""
    split: str = ""
    label: int = -1
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = as_boxes(self.boxes)  # 8-column (format 1.x) boxes accepted


def empty_boxes() -> np.ndarray:
    """No boxes: a float32 array of shape (0, len(BOX_COLUMNS)).

    Examples
    --------
    >>> empty_boxes().shape == (0, len(BOX_COLUMNS))
    True
    """
    return np.zeros((0, len(BOX_COLUMNS)), np.float32)


def as_boxes(boxes: Any) -> np.ndarray:
    """Boxes as a float32 array (n, len(BOX_COLUMNS)).

    8-column rows (format 1.x files and callers) gain ``diameter_axial_mm`` = their
    ``diameter_mm``, which in 1.x was the largest axial diameter (``diameter_mm``
    keeps it too: 1.x had no other).

    Examples
    --------
    >>> as_boxes([[1, 2, 3, 4, 4, 4, 6.5, 2]]).tolist()
    [[1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 6.5, 2.0, 6.5]]
    """
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim == 1 and boxes.size == len(BOX_COLUMNS_V1):  # one row
        boxes = boxes.reshape(1, -1)
    if boxes.ndim == 2 and boxes.shape[1] == len(BOX_COLUMNS_V1):
        axial = boxes[:, BOX_COLUMNS_V1.index("diameter_mm")]
        boxes = np.column_stack([boxes, axial]).astype(np.float32)
    return boxes.reshape(-1, len(BOX_COLUMNS))


def box_columns_of(attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``/boxes`` columns of a file with these attributes (format 1.x: 8 columns)."""
    version = _text(attrs.get("format_version", FORMAT_VERSION))
    return BOX_COLUMNS_V1 if version.split(".")[0] == "1" else BOX_COLUMNS


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def check_version(attrs: Mapping[str, Any], path: str) -> None:
    """Raise :class:`DatasetFormatError` unless ``attrs`` say dsbprep format of a readable version."""
    version = attrs.get("format_version")
    if version is None or _text(attrs.get("format")) != "dsbprep":
        raise DatasetFormatError(f"{path}: not a dsbprep dataset (no format/format_version attributes)")
    version = _text(version)
    try:
        major = int(version.split(".")[0])
    except ValueError as err:
        raise DatasetFormatError(f"{path}: unreadable format_version {version!r}") from err
    if major > _FORMAT_MAJOR:
        raise DatasetFormatError(
            f"{path}: written with format version {version} by a newer dsbprep; "
            f"this dsbprep {__version__} reads format {FORMAT_VERSION}: upgrade dsbprep"
        )


def encode_id(case_id: str) -> bytes:
    """A case id as the index stores it (UTF-8, 1 to ``ID_BYTES`` bytes)."""
    raw = case_id.encode("utf-8")
    if len(raw) > ID_BYTES or not raw:
        raise ValueError(f"case id {case_id!r} must be 1..{ID_BYTES} UTF-8 bytes")
    return raw


def meta_blob(meta: Mapping[str, Any]) -> np.ndarray:
    """A case's meta as UTF-8 JSON bytes (uint8), the way ``/meta`` stores it."""
    return np.frombuffer(json.dumps(meta, default=_json_default, sort_keys=True).encode(), np.uint8)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in case metadata")


def json_depth(raw: bytes) -> int:
    """Deepest ``[``/``{`` nesting of JSON text ``raw``, brackets inside strings not counted.

    Vectorised, so that a hostile 200,000-level document is measured before
    ``json.loads`` (which recurses) sees it.

    Examples
    --------
    >>> json_depth(b'{"a": [1, {"b": "[[["}]}')
    3
    """
    # Drop escaped backslashes, then escaped quotes: what is left of a string has no quotes inside.
    text = np.frombuffer(raw.replace(b"\\\\", b"").replace(b'\\"', b""), np.uint8)
    if text.size == 0:
        return 0
    in_string = np.cumsum(text == ord('"')) % 2 == 1
    step = np.isin(text, (ord("["), ord("{"))).astype(np.int64)
    step -= np.isin(text, (ord("]"), ord("}")))
    step[in_string] = 0
    return int(np.cumsum(step).max(initial=0))


def parse_meta(raw: bytes, where: str, limits: ReadLimits | None = None) -> dict:
    """Parse a case's metadata bytes: a JSON object, within ``limits``' size and depth.

    Parameters
    ----------
    raw : bytes
        The case's bytes of ``/meta`` (empty means ``{}``).
    where : str
        Names the file and case in error messages.
    limits : ReadLimits, optional
        Size and depth limits (default ``DEFAULT_LIMITS``).

    Raises
    ------
    DatasetFormatError
        Too large or too deep, not UTF-8, not JSON, or not a JSON object.

    Examples
    --------
    >>> parse_meta(b'{"a": 1}', "f.h5: case 'x'")
    {'a': 1}
    >>> parse_meta(b"[1]", "f.h5: case 'x'")
    Traceback (most recent call last):
    ...
    dsbprep.errors.DatasetFormatError: f.h5: case 'x': field meta: metadata is a list, not a JSON object
    """
    limits = limits or DEFAULT_LIMITS
    if not raw:
        return {}
    if len(raw) > limits.max_meta_bytes:
        raise DatasetFormatError(f"{where}: field meta: {len(raw)} bytes, more than the "
                                 f"{limits.max_meta_bytes} a case may hold")
    depth = json_depth(raw)
    if depth > limits.max_meta_depth:
        raise DatasetFormatError(f"{where}: field meta: nested {depth} levels deep "
                                 f"(at most {limits.max_meta_depth})")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DatasetFormatError(f"{where}: field meta: not UTF-8 JSON: {err}") from None
    if not isinstance(meta, dict):
        raise DatasetFormatError(f"{where}: field meta: metadata is a {type(meta).__name__}, "
                                 "not a JSON object")
    for key, problem in _meta_type_problems(meta):
        raise DatasetFormatError(f"{where}: field meta.{key}: {problem}")
    return meta


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: Metadata keys that dsbprep's readers use, and the JSON types they must have.
_META_TYPES: dict[str, tuple[str, Any]] = {
    "error": ("a string", lambda v: isinstance(v, str)),
    "warnings": ("a list", lambda v: isinstance(v, list)),
    "segmentation_note": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "lungs_found": ("an integer or null", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool))),
    "lung_volume_ml": ("an object of numbers",
                       lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values())),
    # [segmentation] method = robust: grt123's volumes beside the robust ones, and grt123's
    # mask on the stored grid as runs where it differs (dsbprep.store.maskdiff; checked there)
    "segmentation_method": ("a string", lambda v: isinstance(v, str)),
    "lung_volume_ml_grt123": ("an object of numbers",
                              lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values())),
    "grt123_mask_diff": ("an object", lambda v: isinstance(v, dict)),
}


def _meta_type_problems(meta: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(key, problem) for each known metadata key whose value has the wrong type."""
    for key, (what, ok) in _META_TYPES.items():
        if key in meta and not ok(meta[key]):
            yield key, f"is a {type(meta[key]).__name__}, not {what}"
    foreground = meta.get("foreground")
    if foreground is None:
        return
    if not isinstance(foreground, dict):
        yield "foreground", f"is a {type(foreground).__name__}, not an object of point lists"
        return
    for label, points in foreground.items():
        if not (label.isdigit() and 0 < int(label) < 256):
            yield "foreground", f"label {label!r} is not a mask label 1..255"
        elif not _is_points(points):
            yield "foreground", f"points of label {label} are not a list of [z, y, x] integers"


def _is_points(points: Any) -> bool:
    if not isinstance(points, list):
        return False
    return all(isinstance(p, list) and len(p) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in p) for p in points)
