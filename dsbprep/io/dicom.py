"""DICOM series loading: a folder of slices -> one HU volume with its geometry.

The loader reads every header once (``stop_before_pixels``), groups files by
SeriesInstanceUID, picks one series, orders its slices along the slice normal,
drops repeated passes, and then decodes each file's pixels once into a
preallocated array that becomes the Hounsfield-unit volume.

Design decisions (each one is tested in ``tests/test_dicom.py``):

* **Which files.** :func:`find_dicom_files` walks the folder recursively, skips
  hidden files and folders and ``DICOMDIR``, and accepts a file when it has the
  ``DICM`` magic at byte 128, or - for preamble-less files - when its first tag
  is in group 0x0002/0x0008 and pydicom can read an image header from it.
* **Which series.** :func:`load_scan` loads the axial series of an allowed
  modality with the most files; localizers (ImageType ``LOCALIZER`` or a
  non-axial orientation) are never picked. When several series qualify, the
  choice is written to ``Scan.warnings`` and logged. ``series_uid=`` forces one.
  Series are never mixed.
* **Order.** Slices are sorted by their position along the slice normal
  (``dot(ImagePositionPatient, cross(row, col))``), never by file name. Without
  ImagePositionPatient on every slice the order falls back to SliceLocation,
  then to InstanceNumber, each with a warning.
* **Duplicates.** Byte-identical copies (same SOPInstanceUID, same bytes) are
  dropped first. Several slices at one position (repeated passes) keep the
  slice of the first pass: lowest (InstanceNumber, AcquisitionNumber). On
  grt123's case (complete passes numbered one after the other) this selects
  exactly the slices grt123's ``load_scan`` keeps; unlike grt123's
  ``len // sec_num`` rule it never drops a position covered by one pass only.
* **Spacing.** z spacing is the median gap between sorted positions (or
  SliceLocations); SliceThickness is the last resort. Gaps that deviate from the
  median by more than :data:`UNEVEN_GAP_TOLERANCE` produce a warning.
* **HU.** Pixels go through the modality LUT (RescaleSlope/-Intercept or a
  Modality LUT Sequence, per slice) and are stored as int16; values outside the
  int16 range are clipped, with a warning. Voxels whose *stored* value is the
  PixelPaddingValue (read in the pixel data's own dtype: LIDC's 63536 is -2000)
  - or -2000 when the tag is absent, grt123's rule - become ``pad_hu``. No other
  value is clipped: LIDC's out-of-circle -2048 HU stays -2048.
* **Broken files.** A file whose header cannot be read is skipped with a
  warning naming it; if the chosen series then has an uneven gap, the load fails
  instead (the skipped file may be the missing slice). A file whose header is
  fine but whose pixels cannot be decoded is dropped when it is the first or
  last slice (no gap), and is an error anywhere else.
* **Untrusted input.** The declared volume size is checked against
  ``max_voxels`` before anything is allocated; large header values are not read
  (``defer_size``); files above :data:`MAX_FILE_BYTES` are refused.

pydicom's own warnings while reading (for example invalid UIDs) are caught,
logged, and summarised in ``Scan.warnings``; they do not stop the load. The
catching uses :func:`warnings.catch_warnings`, which is process-global, so
calling the loader from several *threads* at once can misroute those notes
(processes are fine).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import struct
import warnings as _warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ..errors import DicomSeriesError
from .inflate import InflateLimitError, inflate
from .tags import floats, orientation_to_direction, slice_normal, to_float, to_int

__all__ = [
    "Scan",
    "SeriesInfo",
    "find_dicom_files",
    "list_series",
    "load_scan",
    "read_dataset",
    "MAX_VOXELS",
    "DEFAULT_PAD_HU",
    "HEADER_INFLATE_BYTES",
]

logger = logging.getLogger(__name__)

# --- named constants ---------------------------------------------------------------------

#: Default cap on Rows * Columns * slices (2**31 voxels = 4 GiB of int16): larger
#: declared volumes are refused before any allocation (untrusted input).
MAX_VOXELS = 2**31
#: Files larger than this are refused (1 GiB: a 2048x2048 uncompressed 32-bit slice is 16 MiB).
MAX_FILE_BYTES = 2**30
#: HU written into padding voxels by default: air, as grt123 (raw -2000 -> 0 -> intercept -1024).
DEFAULT_PAD_HU = -1024
#: Stored value treated as padding when PixelPaddingValue is absent (grt123's get_pixels_hu rule).
GRT123_PADDING_RAW = -2000
#: Offset and magic of the DICOM Part 10 preamble.
_DICM_OFFSET = 128
_DICM_MAGIC = b"DICM"
#: First-tag groups accepted for preamble-less files (file meta 0x0002, identifying 0x0008).
_PREAMBLELESS_GROUPS = (0x0002, 0x0008)
#: Header values longer than this are not read in the header pass (big private blobs, bad lengths).
_HEADER_DEFER_BYTES = 64 * 1024
#: Positions closer than this (mm) along the normal are the same slice position. Real slice
#: spacings are >= 0.1 mm; DS round-off is ~1e-6 mm.
POSITION_TOLERANCE_MM = 0.01
#: Relative deviation of any slice gap from the median gap above which gaps count as uneven
#: (5 %: 0.125 mm on a 2.5 mm scan; a missing slice is a 100 % deviation).
UNEVEN_GAP_TOLERANCE = 0.05
#: A series is axial when |normal . z| >= this (cos 37 deg: admits tilted axial, rejects
#: coronal/sagittal scouts, whose normal is perpendicular to z).
AXIAL_MIN_ABS_COS = 0.8
#: Two ImageOrientationPatient vectors are the same orientation if no component differs by more.
ORIENTATION_TOLERANCE = 1e-3
#: Relative difference of PixelSpacing between slices of a series that triggers a warning.
PIXEL_SPACING_TOLERANCE = 1e-3
#: |cos| between the first->last position displacement and the normal below which the volume
#: is reported as sheared (gantry tilt): 0.9999 is ~0.8 deg.
SHEAR_MIN_COS = 0.9999
#: Inflated bytes at most read for a header (stop_before_pixels) of a Deflated Explicit VR
#: file: everything before Pixel Data. A CT header is 2-20 KiB; values over
#: ``_HEADER_DEFER_BYTES`` are skipped anyway. A longer header reads as truncated.
HEADER_INFLATE_BYTES = 16 * 2**20
#: Inflated bytes allowed beyond a slice's header and pixel data (elements after Pixel Data).
_INFLATE_SLACK_BYTES = 2**20
#: Slices per block when the general (float) modality LUT path runs, to bound temporary memory.
_LUT_BLOCK_SLICES = 16
#: Names never read as DICOM.
_IGNORED_NAMES = frozenset({"DICOMDIR"})
#: SOP Class UID of a DICOMDIR (media storage directory), never an image.
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Transfer syntaxes whose pixel data are plain little-endian arrays (fast decode path).
_NATIVE_LE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
#: How many file names an error or warning lists before "and N more".
_MAX_NAMES = 3
_INT16 = np.iinfo(np.int16)

#: Exceptions pydicom (or our tag parsing) raises on malformed files.
_READ_ERRORS = (
    InvalidDicomError,
    BytesLengthException,  # a numeric value of the wrong length (found by tests/test_fuzz.py)
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    OverflowError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    zlib.error,  # a corrupt Deflated Explicit VR body
)


# --- public data types -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Scan:
    """A CT volume in Hounsfield units with its geometry and provenance.

    Attributes
    ----------
    hu : numpy.ndarray
        int16 array (z, y, x); z ascends along the slice normal.
    spacing : tuple of float
        Voxel size (z, y, x) in mm.
    origin : tuple of float
        World (z, y, x) = (S, P, L) position in mm of voxel [0, 0, 0].
    direction : numpy.ndarray
        3x3 float64; column k is the world (z, y, x) unit vector of index axis k, so
        ``world_zyx = origin + direction @ (index_zyx * spacing)``.
    patient_id, series_uid, study_uid, modality : str
        From the DICOM headers ('' when absent).
    source_files : tuple of str
        Absolute paths of the files used, in z order.
    source_hash : str
        sha256 hex over the sorted list of ``"<size> <sha256>"`` lines of the source files: a
        stable id of the input that ignores file names and folder.
    warnings : tuple of str
        Human-readable notes about the load (series picked, duplicates dropped, fallbacks, ...).
    padding_value_hu : int or None
        HU written into padding voxels, or None when no voxel was padding.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    patient_id: str
    series_uid: str
    study_uid: str
    modality: str
    source_files: tuple[str, ...]
    source_hash: str
    warnings: tuple[str, ...]
    padding_value_hu: int | None

    def __repr__(self) -> str:
        return (
            f"Scan(patient_id={self.patient_id!r}, shape={self.hu.shape}, spacing={self.spacing}, "
            f"origin={self.origin}, series_uid={self.series_uid!r}, "
            f"n_files={len(self.source_files)}, warnings={len(self.warnings)})"
        )


@dataclass(frozen=True)
class SeriesInfo:
    """Header-level summary of one series found in a folder.

    Attributes
    ----------
    series_uid : str
        SeriesInstanceUID ('' for files without one).
    modality : str
        Modality of the series' first file ('' when absent).
    n_files : int
        Number of image files of the series.
    files : tuple of pathlib.Path
        The files, sorted by path.
    orientation : tuple of 6 float or None
        The most common ImageOrientationPatient of the series (row then column cosines, LPS).
    description : str
        SeriesDescription ('' when absent).
    is_axial : bool
        True when the slice normal is within ``acos(AXIAL_MIN_ABS_COS)`` of the patient z axis
        and the series is not made of localizers. A series without orientation tags counts as
        axial (the loader then warns).
    """

    series_uid: str
    modality: str
    n_files: int
    files: tuple[Path, ...]
    orientation: tuple[float, ...] | None
    description: str
    is_axial: bool


# --- private records ---------------------------------------------------------------------


@dataclass
class _Header:
    """What the loader needs from one file's header (read once)."""

    path: Path
    size: int
    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    description: str
    sop_uid: str
    image_type: tuple[str, ...]
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    slice_location: float | None
    instance_number: int | None
    acquisition_number: int | None
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    bits_allocated: int
    bits_stored: int | None
    pixel_representation: int
    transfer_syntax: str
    pixel_offset: int  # file offset where the header pass stopped: the Pixel Data tag, if any
    samples_per_pixel: int
    n_frames: int
    slope: float
    intercept: float
    lut_ds: pydicom.Dataset | None  # set only when a Modality LUT Sequence is present
    padding_value: int | None
    padding_limit: int | None
    pydicom_warnings: tuple[str, ...]

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type


@dataclass
class _Folder:
    """Result of the header pass over one folder."""

    root: Path
    headers: list[_Header]
    unreadable: list[tuple[Path, str]]  # DICOM-looking files whose header failed, with reason
    rejected: list[Path]  # files named like DICOM (.dcm) that are not DICOM


# --- small helpers -----------------------------------------------------------------------


def _names(paths: Sequence[Path | str], root: Path | None = None) -> str:
    """A short, readable list of file names for messages."""
    shown = []
    for p in list(paths)[:_MAX_NAMES]:
        p = Path(p)
        if root is not None:
            try:
                p = p.relative_to(root)
            except ValueError:
                pass
        shown.append(str(p))
    more = len(paths) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


_float = to_float
_int = to_int
_floats = floats
_normal = slice_normal


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _same_orientation(a, b) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= ORIENTATION_TOLERANCE


def _is_axial_orientation(orientation: Sequence[float] | None) -> bool:
    if orientation is None:
        return True
    try:
        return abs(_normal(orientation)[2]) >= AXIAL_MIN_ABS_COS
    except ValueError:
        return False


class _Notes:
    """Collects warnings for a Scan and logs them as they come."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str, level: int = logging.WARNING) -> None:
        self.items.append(message)
        logger.log(level, message)


# --- reading one file (bounded inflation) ------------------------------------------------


def _explicit_le_file(meta: pydicom.dataset.FileMetaDataset, body: bytes) -> io.BytesIO:
    """A Part 10 file in memory: ``meta`` re-encoded as Explicit VR Little Endian, then ``body``."""
    meta = pydicom.dataset.FileMetaDataset(meta)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    buffer.write(bytes(_DICM_OFFSET) + _DICM_MAGIC)
    write_file_meta_info(buffer, meta, enforce_standard=False)
    buffer.write(body)
    return io.BytesIO(buffer.getvalue())


_DEFLATED_UID = DeflatedExplicitVRLittleEndian.encode()
#: The file meta group of a Part 10 file starts with its group length, (0002,0000) UL.
_META_LENGTH_TAG = b"\x02\x00\x00\x00UL\x04\x00"
#: Longest file meta group read by the quick check (real ones are ~200 bytes).
_MAX_QUICK_META_BYTES = 64 * 1024


def _maybe_deflated(fh) -> bool:
    """Quick check: False when the file meta certainly does not declare a deflated body.

    Reads the preamble and the meta group its group length announces; True (maybe) for
    anything unusual, which then gets pydicom's full file-meta parse.
    """
    head = fh.read(_DICM_OFFSET + len(_DICM_MAGIC) + 12)
    if head[_DICM_OFFSET : _DICM_OFFSET + 4] != _DICM_MAGIC:
        return True  # preamble-less: let pydicom parse whatever meta there is
    if head[132:140] != _META_LENGTH_TAG:
        return True
    (length,) = struct.unpack("<I", head[140:144])
    if length > _MAX_QUICK_META_BYTES:
        return True
    return _DEFLATED_UID in fh.read(length)


def _declared_inflate_cap(fh, meta: pydicom.dataset.FileMetaDataset, name: str) -> int:
    """Cap for a deflated body from its own header: a header's allowance plus the pixel bytes
    Rows x Columns x frames x samples x BitsAllocated declare, plus slack; ``fh`` is left
    where it was (at the body)."""
    at = fh.tell()
    head = inflate(fh, "deflate", HEADER_INFLATE_BYTES, truncate=True, name=name)
    fh.seek(at)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_explicit_le_file(meta, head), stop_before_pixels=True, force=True)
    pixels = 1
    for key in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"):
        pixels *= max(_int(ds.get(key)) or 1, 1)
    pixels *= max(_int(ds.get("BitsAllocated")) or 16, 8) // 8
    return min(HEADER_INFLATE_BYTES + pixels + _INFLATE_SLACK_BYTES, MAX_FILE_BYTES)


def _read_dataset(
    fh,
    *,
    stop_before_pixels: bool = False,
    max_inflated_bytes: int | None = None,
    defer_size: int | None = None,
    name: str = "",
    force: bool = True,
) -> pydicom.FileDataset:
    """:func:`read_dataset` on an open binary file; raises pydicom's own errors (``_READ_ERRORS``).

    A Deflated Explicit VR Little Endian body is inflated by :func:`dsbprep.io.inflate.inflate`
    (at most ``max_inflated_bytes``; :data:`HEADER_INFLATE_BYTES` for a header read, where the
    rest is cut off) and handed to pydicom as Explicit VR Little Endian; the dataset then has
    ``dsbprep_deflated = True``.
    """
    start = fh.tell()
    if not _maybe_deflated(fh):
        fh.seek(start)
        return pydicom.dcmread(
            fh, defer_size=defer_size, stop_before_pixels=stop_before_pixels, force=force
        )
    fh.seek(start)
    read_preamble(fh, True)
    meta = _read_file_meta_info(fh)  # leaves fh at the start of the body
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        fh.seek(start)
        return pydicom.dcmread(
            fh, defer_size=defer_size, stop_before_pixels=stop_before_pixels, force=force
        )
    if max_inflated_bytes is None:
        max_inflated_bytes = (HEADER_INFLATE_BYTES if stop_before_pixels
                              else _declared_inflate_cap(fh, meta, name))
    body = inflate(fh, "deflate", max_inflated_bytes, truncate=stop_before_pixels, name=name)
    ds = pydicom.dcmread(
        _explicit_le_file(meta, body),  # type: ignore[arg-type]
        defer_size=defer_size,
        stop_before_pixels=stop_before_pixels,
        force=True,
    )
    ds.dsbprep_deflated = True
    return ds


def read_dataset(
    path,
    *,
    stop_before_pixels: bool = False,
    max_inflated_bytes: int | None = None,
) -> pydicom.FileDataset:
    """Read one DICOM file with pydicom, inflating a Deflated Explicit VR body with a cap.

    pydicom itself inflates a Deflated Explicit VR Little Endian file's whole body in memory
    before reading a single element, so a 1.4 MB file can take gigabytes. Here the body is
    inflated through a capped decompressor first, and pydicom reads the inflated copy.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        The file.
    stop_before_pixels : bool
        Read the header only. A deflated body is then inflated up to
        :data:`HEADER_INFLATE_BYTES` and the rest is never decompressed.
    max_inflated_bytes : int, optional
        Cap on the inflated body. Default: :data:`HEADER_INFLATE_BYTES` for a header; for a
        full read, that plus the pixel bytes the file's own header declares (Rows x Columns
        x frames x samples x BitsAllocated) plus 1 MiB, at most :data:`MAX_FILE_BYTES`. The
        series reader passes the same for a slice whose size was checked against
        ``max_voxels``.

    Returns
    -------
    pydicom.FileDataset
        As :func:`pydicom.dcmread` with ``force=True``; a deflated file's dataset has
        Explicit VR Little Endian as its TransferSyntaxUID and ``dsbprep_deflated = True``.

    Raises
    ------
    DicomSeriesError
        Naming the file: the body inflates past the cap, or the file cannot be read.

    Examples
    --------
    >>> ds = read_dataset("LIDC-IDRI-0001/.../1-001.dcm", stop_before_pixels=True)  # doctest: +SKIP
    >>> ds.Modality  # doctest: +SKIP
    'CT'
    """
    name = str(getattr(path, "name", path))
    try:
        if hasattr(path, "read"):
            return _read_dataset(path, stop_before_pixels=stop_before_pixels,
                                 max_inflated_bytes=max_inflated_bytes, name=name)
        with open(path, "rb") as fh:
            return _read_dataset(fh, stop_before_pixels=stop_before_pixels,
                                 max_inflated_bytes=max_inflated_bytes, name=name)
    except InflateLimitError as err:
        raise DicomSeriesError(f"{err} (Deflated Explicit VR Little Endian body)") from err
    except _READ_ERRORS as err:
        raise DicomSeriesError(f"{name}: cannot read as DICOM: {type(err).__name__}: {err}") from err


# --- finding files -----------------------------------------------------------------------


def _looks_like_dicom(path: Path) -> bool | None:
    """Cheap check: True (DICM magic), None (maybe: preamble-less), False (not DICOM)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_DICM_OFFSET + len(_DICM_MAGIC))
    except OSError:
        return False
    if head[_DICM_OFFSET : _DICM_OFFSET + len(_DICM_MAGIC)] == _DICM_MAGIC:
        return True
    if len(head) >= 8:
        group, element = struct.unpack("<HH", head[:4])
        if group in _PREAMBLELESS_GROUPS and element < 0x1000:
            return None
    return False


def _preambleless_is_dicom(path: Path) -> bool:
    """Force-read a preamble-less candidate; accept it when it has image/SOP tags."""
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            with open(path, "rb") as fh:
                ds = _read_dataset(
                    fh, stop_before_pixels=True, defer_size=_HEADER_DEFER_BYTES, name=str(path)
                )
            return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
    except _READ_ERRORS:
        return False


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """(DICOM files, files named like DICOM that are not), both sorted."""
    found: list[Path] = []
    rejected: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False: no cycles
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.upper() in _IGNORED_NAMES:
                continue
            path = Path(dirpath, name)
            if not path.is_file():
                continue
            verdict = _looks_like_dicom(path)
            if verdict is None:
                verdict = _preambleless_is_dicom(path)
            if verdict:
                found.append(path)
            elif path.suffix.lower() in (".dcm", ".dicom", ".ima"):
                rejected.append(path)
            else:
                logger.debug("ignoring non-DICOM file %s", path)
    return found, rejected


def _check_folder(folder) -> Path:
    try:
        root = Path(folder).expanduser().resolve()
    except (TypeError, OSError) as err:
        raise DicomSeriesError(f"{folder!r}: not a usable path ({err})") from err
    if not root.exists():
        raise DicomSeriesError(f"{root}: no such file or folder")
    return root


def find_dicom_files(folder) -> list[Path]:
    """Find the DICOM files under a folder, recursively.

    Parameters
    ----------
    folder : str or os.PathLike
        A patient folder, flat (``<patient>/*.dcm``) or nested
        (``<patient>/<study>/<series>/*.dcm``), or a single file.

    Returns
    -------
    list of pathlib.Path
        Absolute paths, sorted. Hidden files/folders, ``DICOMDIR`` and files that are not
        DICOM (xml, txt, random bytes) are left out. A file is DICOM when it has the ``DICM``
        magic at byte 128, or, without preamble, when its first tag is in group 0x0002/0x0008
        and pydicom reads SOPClassUID or Rows/Columns from it.

    Raises
    ------
    DicomSeriesError
        When ``folder`` does not exist.

    Examples
    --------
    >>> files = find_dicom_files("LIDC-IDRI-0001")  # doctest: +SKIP
    >>> len(files)  # doctest: +SKIP
    133
    """
    root = _check_folder(folder)
    if root.is_file():
        verdict = _looks_like_dicom(root)
        if verdict is None:
            verdict = _preambleless_is_dicom(root)
        return [root] if verdict else []
    return _walk(root)[0]


# --- header pass -------------------------------------------------------------------------


def _syntax_of(ds: pydicom.Dataset) -> str:
    """Transfer syntax UID; for a file without file meta, the encoding pydicom read it with."""
    syntax = _text(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax:
        return syntax
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if little:
        return str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    return ""


def _read_header(path: Path) -> _Header | None:
    """Read one header (no pixels). Returns None for non-image DICOM (no Rows/Columns).

    Raises one of ``_READ_ERRORS`` for unreadable files.
    """
    size = path.stat().st_size
    with _warnings.catch_warnings(record=True) as caught, open(path, "rb") as fh:
        _warnings.simplefilter("always")
        ds = _read_dataset(
            fh, stop_before_pixels=True, defer_size=_HEADER_DEFER_BYTES, name=str(path)
        )
        pixel_offset = fh.tell()  # pydicom rewinds to the start of the Pixel Data element
        if _text(ds.get("SOPClassUID")) == _DICOMDIR_SOP_CLASS:
            return None
        if "Rows" not in ds or "Columns" not in ds:
            if "SOPClassUID" not in ds:  # pydicom stops quietly at truncation or garbage
                raise InvalidDicomError(
                    f"no SOP Class UID and no image size in the {len(ds)} element(s) read: "
                    "truncated or corrupt"
                )
            return None  # a non-image object (structured report, presentation state, ...)
        orientation = _floats(ds.get("ImageOrientationPatient"), 6)
        if orientation is not None:
            try:
                _normal(orientation)
            except ValueError:
                orientation = None
        spacing = _floats(ds.get("PixelSpacing"), 2) or _floats(ds.get("ImagerPixelSpacing"), 2)
        image_type = ds.get("ImageType")
        if image_type is None:
            image_type = ()
        elif isinstance(image_type, str):
            image_type = (image_type,)
        header = _Header(
            path=path,
            size=size,
            series_uid=_text(ds.get("SeriesInstanceUID")),
            study_uid=_text(ds.get("StudyInstanceUID")),
            patient_id=_text(ds.get("PatientID")),
            modality=_text(ds.get("Modality")).upper(),
            description=_text(ds.get("SeriesDescription")),
            sop_uid=_text(ds.get("SOPInstanceUID")),
            image_type=tuple(_text(t).upper() for t in image_type),
            orientation=orientation,
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            slice_location=_float(ds.get("SliceLocation")),
            instance_number=_int(ds.get("InstanceNumber")),
            acquisition_number=_int(ds.get("AcquisitionNumber")),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            pixel_spacing=spacing,  # type: ignore[arg-type]
            slice_thickness=_float(ds.get("SliceThickness")),
            bits_allocated=_int(ds.get("BitsAllocated")) or 16,
            bits_stored=_int(ds.get("BitsStored")),
            pixel_representation=_int(ds.get("PixelRepresentation")) or 0,
            transfer_syntax=(DeflatedExplicitVRLittleEndian
                             if getattr(ds, "dsbprep_deflated", False) else _syntax_of(ds)),
            pixel_offset=pixel_offset,
            samples_per_pixel=_int(ds.get("SamplesPerPixel")) or 1,
            n_frames=_int(ds.get("NumberOfFrames")) or 1,
            slope=_float(ds.get("RescaleSlope")) if "RescaleSlope" in ds else 1.0,  # type: ignore[arg-type]
            intercept=_float(ds.get("RescaleIntercept")) if "RescaleIntercept" in ds else 0.0,  # type: ignore[arg-type]
            lut_ds=ds if ds.get("ModalityLUTSequence") else None,
            padding_value=_int(ds.get("PixelPaddingValue")),
            padding_limit=_int(ds.get("PixelPaddingRangeLimit")),
            pydicom_warnings=(),
        )
    if header.slope is None or header.intercept is None:
        raise ValueError("RescaleSlope/RescaleIntercept is not a number")
    header.pydicom_warnings = tuple(str(w.message).splitlines()[0] for w in caught)
    for message in header.pydicom_warnings:
        logger.debug("pydicom warned on %s: %s", path, message)
    return header


def _scan_folder(folder) -> _Folder:
    root = _check_folder(folder)
    if root.is_file():
        verdict = _looks_like_dicom(root)
        files = [root] if (verdict or (verdict is None and _preambleless_is_dicom(root))) else []
        rejected = [] if files else [root]
    else:
        files, rejected = _walk(root)
    headers: list[_Header] = []
    unreadable: list[tuple[Path, str]] = []
    for path in files:
        try:
            header = _read_header(path)
        except _READ_ERRORS as err:
            logger.debug("%s: cannot read DICOM header of %s: %s", root, path, err)
            unreadable.append((path, f"{type(err).__name__}: {err}"))
            continue
        if header is None:
            logger.debug("%s: %s is not an image (no Rows/Columns); ignored", root, path)
            continue
        headers.append(header)
    return _Folder(root, headers, unreadable, rejected)


def _group_series(headers: Iterable[_Header]) -> dict[str, list[_Header]]:
    groups: dict[str, list[_Header]] = defaultdict(list)
    for h in headers:
        groups[h.series_uid].append(h)
    for members in groups.values():
        members.sort(key=lambda h: str(h.path))
    return dict(groups)


def _majority_orientation(members: Sequence[_Header]) -> tuple[float, ...] | None:
    counts: list[tuple[tuple[float, ...], int]] = []
    for h in members:
        if h.orientation is None:
            continue
        for i, (o, c) in enumerate(counts):
            if _same_orientation(o, h.orientation):
                counts[i] = (o, c + 1)
                break
        else:
            counts.append((h.orientation, 1))
    if not counts:
        return None
    return max(counts, key=lambda oc: oc[1])[0]


def _series_info(uid: str, members: Sequence[_Header]) -> SeriesInfo:
    orientation = _majority_orientation(members)
    all_localizers = all(h.is_localizer for h in members)
    return SeriesInfo(
        series_uid=uid,
        modality=members[0].modality,
        n_files=len(members),
        files=tuple(h.path for h in members),
        orientation=orientation,
        description=members[0].description,
        is_axial=bool(_is_axial_orientation(orientation) and not all_localizers),
    )


def _no_files_error(scan: _Folder) -> DicomSeriesError:
    parts = [f"{scan.root}: no DICOM image files found"]
    if scan.unreadable:
        path, reason = scan.unreadable[0]
        parts.append(f"{len(scan.unreadable)} unreadable DICOM file(s), e.g. {path.name}: {reason}")
    if scan.rejected:
        parts.append(
            f"{len(scan.rejected)} file(s) named like DICOM are not DICOM "
            f"({_names(scan.rejected, scan.root)})"
        )
    return DicomSeriesError("; ".join(parts))


def list_series(folder) -> list[SeriesInfo]:
    """List the image series under a folder from headers only (no pixel data is read).

    Parameters
    ----------
    folder : str or os.PathLike
        Folder searched recursively (see :func:`find_dicom_files`), or a single file.

    Returns
    -------
    list of SeriesInfo
        One entry per SeriesInstanceUID, most files first (ties by UID). Non-image DICOM
        (DICOMDIR, structured reports) is left out; unreadable files are logged and skipped.

    Raises
    ------
    DicomSeriesError
        When the folder does not exist or holds no readable DICOM image.

    Examples
    --------
    >>> [(s.modality, s.n_files, s.is_axial) for s in list_series("LIDC-IDRI-0001")]  # doctest: +SKIP
    [('CT', 133, True)]
    """
    scan = _scan_folder(folder)
    if not scan.headers:
        raise _no_files_error(scan)
    for path, reason in scan.unreadable:
        logger.warning("%s: skipped unreadable file %s: %s", scan.root, path, reason)
    infos = [_series_info(uid, m) for uid, m in _group_series(scan.headers).items()]
    return sorted(infos, key=lambda s: (-s.n_files, s.series_uid))


# --- choosing the series -----------------------------------------------------------------


def _describe(info: SeriesInfo, root: Path) -> str:
    kind = "axial" if info.is_axial else "non-axial/localizer"
    desc = f" {info.description!r}" if info.description else ""
    return (
        f"{info.series_uid or '<no SeriesInstanceUID>'} ({info.modality or '?'}, {kind}{desc}, "
        f"{info.n_files} files, e.g. {_names(info.files[:1], root)})"
    )


def _choose_series(
    scan: _Folder,
    groups: dict[str, list[_Header]],
    series_uid: str | None,
    allowed: tuple[str, ...] | None,
    notes: _Notes,
) -> str:
    infos = sorted(
        (_series_info(uid, m) for uid, m in groups.items()),
        key=lambda s: (-s.n_files, s.series_uid),
    )
    root = scan.root

    def modality_error(info: SeriesInfo) -> DicomSeriesError:
        return DicomSeriesError(
            f"{root}: series {info.series_uid} (file {_names(info.files[:1], root)}) has "
            f"modality {info.modality or '<missing>'}, expected {' or '.join(allowed or ())}"
        )

    if series_uid is not None:
        for info in infos:
            if info.series_uid == series_uid:
                if allowed is not None and info.modality not in allowed:
                    raise modality_error(info)
                notes.add(f"series {_describe(info, root)} chosen by series_uid", logging.INFO)
                return series_uid
        raise DicomSeriesError(
            f"{root}: no series with SeriesInstanceUID {series_uid}; found "
            + "; ".join(_describe(i, root) for i in infos)
        )

    of_modality = [i for i in infos if allowed is None or i.modality in allowed]
    if not of_modality:
        if len(infos) == 1:
            raise modality_error(infos[0])
        found = sorted({i.modality or "<missing>" for i in infos})
        raise DicomSeriesError(
            f"{root}: {len(infos)} series, all of modality {', '.join(found)}, expected "
            f"{' or '.join(allowed or ())}: "
            + "; ".join(_describe(i, root) for i in infos[:_MAX_NAMES])
            + (f" and {len(infos) - _MAX_NAMES} more" if len(infos) > _MAX_NAMES else "")
        )
    candidates = [i for i in of_modality if i.is_axial]
    if not candidates:
        raise DicomSeriesError(
            f"{root}: no axial series to load (localizers and non-axial series are skipped; "
            "pass series_uid= to load one anyway); found "
            + "; ".join(_describe(i, root) for i in of_modality)
        )
    chosen = candidates[0]
    if len(infos) > 1:
        others = [i for i in infos if i is not chosen]
        notes.add(
            f"picked series {_describe(chosen, root)} among {len(infos)} series; skipped "
            + "; ".join(_describe(i, root) for i in others[:_MAX_NAMES])
            + (f" and {len(others) - _MAX_NAMES} more" if len(others) > _MAX_NAMES else ""),
            logging.INFO,
        )
    return chosen.series_uid


# --- filtering and ordering one series ---------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _drop_identical_copies(members: list[_Header], root: Path, notes: _Notes) -> list[_Header]:
    """Drop byte-identical files (same SOPInstanceUID and size, same sha256); keep the first."""
    by_key: dict[tuple[str, int], list[_Header]] = defaultdict(list)
    for h in members:
        if h.sop_uid:
            by_key[(h.sop_uid, h.size)].append(h)
    dropped: list[Path] = []
    conflicting: list[Path] = []
    drop_ids: set[int] = set()
    for group in by_key.values():
        if len(group) < 2:
            continue
        seen: dict[str, _Header] = {}
        for h in group:  # members are sorted by path: the first name is kept
            digest = _file_sha256(h.path)
            if digest in seen:
                drop_ids.add(id(h))
                dropped.append(h.path)
            else:
                if seen:
                    conflicting.append(h.path)
                seen[digest] = h
    if dropped:
        notes.add(
            f"{root}: dropped {len(dropped)} byte-identical duplicate file(s) "
            f"({_names(dropped, root)})"
        )
    if conflicting:
        notes.add(
            f"{root}: {len(conflicting)} file(s) repeat a SOPInstanceUID with different content "
            f"({_names(conflicting, root)}); treated as repeated slices"
        )
    return [h for h in members if id(h) not in drop_ids]


def _filter_series(members: list[_Header], root: Path, notes: _Notes) -> list[_Header]:
    """Drop localizers and off-orientation files; check sizes and pixel layout."""
    localizers = [h for h in members if h.is_localizer]
    if localizers and len(localizers) < len(members):
        members = [h for h in members if not h.is_localizer]
        notes.add(
            f"{root}: dropped {len(localizers)} LOCALIZER image(s) from the series "
            f"({_names([h.path for h in localizers], root)})"
        )
    orientation = _majority_orientation(members)
    if orientation is not None:
        off = [
            h
            for h in members
            if h.orientation is not None and not _same_orientation(h.orientation, orientation)
        ]
        if off:
            members = [h for h in members if h not in off]
            notes.add(
                f"{root}: dropped {len(off)} file(s) whose ImageOrientationPatient differs from "
                f"the series' {orientation} ({_names([h.path for h in off], root)})"
            )
    members = _drop_identical_copies(members, root, notes)

    first = members[0]
    for h in members:
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise DicomSeriesError(
                f"{root}: inconsistent image size in the series: file {h.path.name} is "
                f"{h.rows}x{h.columns} (Rows x Columns), file {first.path.name} is "
                f"{first.rows}x{first.columns}"
            )
        if h.rows <= 0 or h.columns <= 0:
            raise DicomSeriesError(f"{root}: file {h.path.name} has {h.rows}x{h.columns} pixels")
        if h.samples_per_pixel != 1:
            raise DicomSeriesError(
                f"{root}: file {h.path.name} has SamplesPerPixel {h.samples_per_pixel}; "
                "only single-channel (greyscale) images form a volume"
            )
        if h.n_frames != 1:
            raise DicomSeriesError(
                f"{root}: file {h.path.name} is multi-frame ({h.n_frames} frames); "
                "only one slice per file is supported"
            )
        if h.bits_allocated not in (1, 8, 16, 32):
            raise DicomSeriesError(
                f"{root}: file {h.path.name} has unsupported BitsAllocated {h.bits_allocated}"
            )
        if h.size > MAX_FILE_BYTES:
            raise DicomSeriesError(
                f"{root}: file {h.path.name} is {h.size} bytes, above the {MAX_FILE_BYTES}-byte limit"
            )
    return members


def _order_slices(
    members: list[_Header], root: Path, notes: _Notes
) -> tuple[list[_Header], np.ndarray | None, str, np.ndarray]:
    """Sort slices along the normal and drop repeated passes.

    Returns (ordered headers, positions along the ordering axis or None, what the positions
    are, unit normal in LPS xyz).
    """
    orientation = _majority_orientation(members)
    if orientation is None:
        normal = np.array([0.0, 0.0, 1.0])
    else:
        normal = _normal(orientation)
    no_pos = [h for h in members if h.position is None]
    if not no_pos:
        if orientation is None:
            notes.add(
                f"{root}: ImageOrientationPatient missing; assumed axial (normal = patient z)"
            )
        key = np.array([float(np.dot(h.position, normal)) for h in members])  # type: ignore[arg-type]
        source = "ImagePositionPatient"
    elif all(h.slice_location is not None for h in members):
        notes.add(
            f"{root}: ImagePositionPatient missing on {len(no_pos)} of {len(members)} files "
            f"({_names([h.path for h in no_pos], root)}); slices ordered by SliceLocation"
        )
        key = np.array([h.slice_location for h in members], float)
        source = "SliceLocation"
    elif all(h.instance_number is not None for h in members):
        numbers = [h.instance_number for h in members]
        if len(set(numbers)) != len(numbers):
            dup = [h.path for h in members if numbers.count(h.instance_number) > 1]
            raise DicomSeriesError(
                f"{root}: cannot order slices: ImagePositionPatient and SliceLocation are "
                f"missing and InstanceNumber repeats (files {_names(dup, root)})"
            )
        notes.add(
            f"{root}: ImagePositionPatient and SliceLocation missing (e.g. "
            f"{_names([h.path for h in no_pos], root)}); slices ordered by InstanceNumber, "
            "the z direction is not known"
        )
        order = sorted(members, key=lambda h: h.instance_number)  # type: ignore[arg-type,return-value]
        return order, None, "InstanceNumber", normal
    else:
        bad = [h.path for h in members if h.position is None and h.instance_number is None]
        raise DicomSeriesError(
            f"{root}: cannot order slices: file(s) {_names(bad or [h.path for h in no_pos], root)} "
            "have no ImagePositionPatient, no SliceLocation and no InstanceNumber"
        )

    order = np.argsort(key, kind="stable")
    ordered, positions = _keep_first_pass([members[i] for i in order], key[order], root, notes)
    return ordered, positions, source, normal


def _keep_first_pass(
    ordered: list[_Header], key: np.ndarray, root: Path, notes: _Notes
) -> tuple[list[_Header], np.ndarray]:
    """Group equal positions (sorted ``key``); repeated passes keep the first pass's slice."""
    breaks = np.flatnonzero(np.diff(key) > POSITION_TOLERANCE_MM) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(key)]])
    if len(starts) == len(key):
        return ordered, key
    kept: list[_Header] = []
    kept_pos: list[float] = []
    max_copies = 0
    repeated = 0
    for s, e in zip(starts, ends, strict=True):
        group = ordered[s:e]
        if len(group) > 1:
            repeated += 1
            max_copies = max(max_copies, len(group))
        best = min(
            group,
            key=lambda h: (
                h.instance_number if h.instance_number is not None else math.inf,
                h.acquisition_number if h.acquisition_number is not None else math.inf,
                str(h.path),
            ),
        )
        kept.append(best)
        kept_pos.append(float(key[s]))
    notes.add(
        f"{root}: {repeated} slice position(s) occur more than once (up to {max_copies} "
        f"copies: repeated passes); kept the first pass's slice (lowest InstanceNumber, then "
        f"AcquisitionNumber) at each, dropped {len(ordered) - len(kept)} file(s)"
    )
    return kept, np.asarray(kept_pos)


# --- pixel pass --------------------------------------------------------------------------


class _SliceError(Exception):
    """One slice's pixels could not be decoded (message says why)."""


def _raw_dtype(members: Sequence[_Header]) -> np.dtype:
    """The dtype that holds every slice's stored values."""
    dtypes = []
    for h in members:
        bits = 8 if h.bits_allocated == 1 else h.bits_allocated
        kind = "i" if h.pixel_representation == 1 and h.bits_allocated != 1 else "u"
        dtypes.append(np.dtype(f"{kind}{bits // 8}"))
    return np.result_type(*dtypes)


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _native_pixels(data: bytes, h: _Header) -> np.ndarray | None:
    """Fast path: the stored values of an uncompressed little-endian slice, or None.

    Applies when the transfer syntax is Explicit/Implicit VR Little Endian and BitsStored
    equals BitsAllocated (8/16/32), so the element's bytes are the array as is. The header
    pass recorded where the Pixel Data element starts; its tag and length are checked here.
    Anything unexpected returns None and the caller uses pydicom instead.
    """
    bits = h.bits_allocated
    if h.transfer_syntax not in _NATIVE_LE or bits not in (8, 16, 32) or h.bits_stored != bits:
        return None
    off = h.pixel_offset
    if data[off : off + 4] != _PIXEL_DATA_TAG:
        return None
    if h.transfer_syntax == ExplicitVRLittleEndian:
        if data[off + 4 : off + 6] not in (b"OW", b"OB"):
            return None
        (length,) = struct.unpack_from("<I", data, off + 8)
        start = off + 12
    else:
        (length,) = struct.unpack_from("<I", data, off + 4)
        start = off + 8
    dtype = np.dtype(f"<{'i' if h.pixel_representation == 1 else 'u'}{bits // 8}")
    expected = h.rows * h.columns * dtype.itemsize
    if length == _UNDEFINED_LENGTH or length < expected or start + expected > len(data):
        return None  # let pydicom report what is wrong
    return np.frombuffer(data, dtype, count=h.rows * h.columns, offset=start).reshape(
        h.rows, h.columns
    )


def _pydicom_pixels(ds: pydicom.Dataset, rows: int, columns: int) -> np.ndarray:
    """Decode one slice's stored values with pydicom (any transfer syntax it supports)."""
    if "PixelData" not in ds:
        kinds = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        raise _SliceError(f"unsupported {kinds[0]}" if kinds else "missing Pixel Data element")
    syntax = _syntax_of(ds)
    if syntax and "TransferSyntaxUID" not in ds.file_meta:  # preamble-less file without meta
        ds.file_meta.TransferSyntaxUID = syntax
    try:
        arr = ds.pixel_array
    except _READ_ERRORS as err:
        raise _SliceError(f"cannot decode Pixel Data ({syntax}): {err}") from err
    if arr.shape != (rows, columns):
        raise _SliceError(f"decoded pixels have shape {arr.shape}, expected ({rows}, {columns})")
    return arr


def _inflate_cap(h: _Header) -> int:
    """Most inflated bytes a deflated slice may have: a header, its pixels, and some slack."""
    return HEADER_INFLATE_BYTES + h.rows * h.columns * max(h.bits_allocated, 8) // 8 + (
        _INFLATE_SLACK_BYTES
    )


def _read_pixels(
    ordered: Sequence[_Header], raw: np.ndarray, *, fast: bool = True
) -> tuple[list[str | None], list[tuple[int, str]], list[str]]:
    """Decode every slice into ``raw`` (one read per file, which also feeds the sha256).

    Returns (sha256 per slice or None, failures as (index, reason), pydicom's warnings).
    """
    digests: list[str | None] = []
    failures: list[tuple[int, str]] = []
    notes: list[str] = []
    rows, columns = raw.shape[1:]
    for i, h in enumerate(ordered):
        try:
            data = h.path.read_bytes()
        except OSError as err:
            failures.append((i, f"cannot read file: {err}"))
            digests.append(None)
            continue
        digests.append(hashlib.sha256(data).hexdigest())
        arr = _native_pixels(data, h) if fast else None
        if arr is not None:
            raw[i] = arr
            continue
        try:
            with _warnings.catch_warnings(record=True) as caught:
                _warnings.simplefilter("always")
                ds = _read_dataset(io.BytesIO(data), max_inflated_bytes=_inflate_cap(h),
                                   name=str(h.path))
                raw[i] = _pydicom_pixels(ds, rows, columns)
            notes.extend(str(w.message).splitlines()[0] for w in caught)
        except _SliceError as err:
            failures.append((i, str(err)))
        except _READ_ERRORS as err:
            failures.append((i, f"cannot read file: {type(err).__name__}: {err}"))
    return digests, failures, notes


# --- HU ----------------------------------------------------------------------------------


def _padding_raw(h: _Header, dtype: np.dtype) -> tuple[int, int] | None:
    """Inclusive range of stored padding values, or None.

    The tag is read in the pixel data's own integer type (BitsAllocated, PixelRepresentation):
    LIDC writes -2000 as the unsigned 63536, which is -2000 once read as int16.
    """
    bits = 8 if h.bits_allocated == 1 else h.bits_allocated
    signed = h.pixel_representation == 1

    def as_stored(v: int) -> int:
        v &= (1 << bits) - 1
        return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v

    if h.padding_value is None:
        info = np.iinfo(dtype)
        if signed and info.min <= GRT123_PADDING_RAW <= info.max:
            return GRT123_PADDING_RAW, GRT123_PADDING_RAW
        return None
    lo = as_stored(h.padding_value)
    hi = lo if h.padding_limit is None else as_stored(h.padding_limit)
    return min(lo, hi), max(lo, hi)


def _padding_mask(raw: np.ndarray, ordered: Sequence[_Header]) -> np.ndarray | None:
    ranges = [_padding_raw(h, raw.dtype) for h in ordered]
    mask = None
    if len(set(ranges)) == 1:
        rng = ranges[0]
        if rng is None:
            return None
        lo, hi = rng
        mask = raw == lo if lo == hi else (raw >= lo) & (raw <= hi)
    else:
        mask = np.zeros(raw.shape, bool)
        for i, rng in enumerate(ranges):
            if rng is not None:
                lo, hi = rng
                mask[i] = (raw[i] >= lo) & (raw[i] <= hi)
    return mask if mask.any() else None


def _lut_key(h: _Header) -> tuple:
    return ("lut", str(h.path)) if h.lut_ds is not None else ("rescale", h.slope, h.intercept)


#: Largest |RescaleSlope| and |RescaleIntercept| applied in exact int64 arithmetic: with 32-bit
#: stored values the product stays below 2**63. Larger (hostile) values take the float path
#: and are clipped to int16 like any other (found by tests/test_fuzz.py).
_EXACT_RESCALE_LIMIT = 2**30


def _to_hu(raw: np.ndarray, ordered: Sequence[_Header], notes: _Notes, root: Path) -> np.ndarray:
    """Apply each slice's modality LUT; return int16 HU (``raw`` is reused when it is int16).

    Slices sharing one rescale are converted together. An integer slope and intercept are
    applied in exact integer arithmetic (in place when nothing can overflow: the common CT
    case); anything else (non-integer rescale, Modality LUT Sequence) goes through
    :func:`pydicom.pixels.apply_modality_lut` and is rounded to the nearest integer. Both
    paths work on blocks of slices to bound temporary memory, and clip to int16.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, h in enumerate(ordered):
        groups[_lut_key(h)].append(i)
    hu = raw if raw.dtype == np.int16 else np.empty(raw.shape, np.int16)
    clipped = 0
    for key, idx in groups.items():
        h = ordered[idx[0]]
        integer = (
            key[0] == "rescale" and float(h.slope).is_integer() and float(h.intercept).is_integer()
            and abs(h.slope) <= _EXACT_RESCALE_LIMIT and abs(h.intercept) <= _EXACT_RESCALE_LIMIT
        )
        if integer and raw is hu and h.slope == 1 and len(idx) == len(ordered):
            intercept = int(h.intercept)
            ends = (int(raw.min()) + intercept, int(raw.max()) + intercept)
            if _INT16.min <= ends[0] and ends[1] <= _INT16.max:
                if intercept:
                    np.add(hu, np.int16(intercept), out=hu)
                continue
        lut_ds = h.lut_ds if h.lut_ds is not None else _rescale_ds(h)
        for s in range(0, len(idx), _LUT_BLOCK_SLICES):
            block = idx[s : s + _LUT_BLOCK_SLICES]
            if integer:
                values = raw[block].astype(np.int64) * int(h.slope) + int(h.intercept)
            else:
                values = np.rint(apply_modality_lut(raw[block], lut_ds))
            clipped += int(np.count_nonzero((values < _INT16.min) | (values > _INT16.max)))
            hu[block] = np.clip(values, _INT16.min, _INT16.max)
    if len(groups) > 1:
        notes.add(
            f"{root}: rescale differs between slices ({len(groups)} distinct modality LUTs); "
            "applied per slice",
            logging.INFO,
        )
    if clipped:
        notes.add(f"{root}: {clipped} voxel(s) outside the int16 range were clipped")
    return hu


def _rescale_ds(h: _Header) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.RescaleSlope = h.slope
    ds.RescaleIntercept = h.intercept
    return ds


# --- geometry ----------------------------------------------------------------------------


def _geometry(
    ordered: Sequence[_Header],
    positions: np.ndarray | None,
    source: str,
    normal: np.ndarray,
    root: Path,
    notes: _Notes,
    skipped_unreadable: Sequence[tuple[Path, str]],
) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    first = ordered[0]
    if positions is not None:
        gaps = np.diff(positions)
        dz = float(np.median(gaps))
        deviation = float(np.max(np.abs(gaps - dz)) / dz)
        if deviation > UNEVEN_GAP_TOLERANCE:
            worst = int(np.argmax(np.abs(gaps - dz)))
            where = (
                f"gaps from {gaps.min():.4g} to {gaps.max():.4g} mm (median {dz:.4g}); the most "
                f"different is {gaps[worst]:.4g} mm between {ordered[worst].path.name} and "
                f"{ordered[worst + 1].path.name}"
            )
            if skipped_unreadable:
                raise DicomSeriesError(
                    f"{root}: uneven slice gaps ({where}) and unreadable file(s) "
                    f"{_names([p for p, _ in skipped_unreadable], root)} "
                    f"({skipped_unreadable[0][1]}): a slice is probably missing"
                )
            notes.add(f"{root}: uneven slice spacing: {where}; using the median")
        if source != "ImagePositionPatient":
            notes.add(f"{root}: slice spacing {dz:.4g} mm taken from {source}")
    else:
        if first.slice_thickness is None or first.slice_thickness <= 0:
            raise DicomSeriesError(
                f"{root}: no slice spacing: positions are missing and file {first.path.name} "
                "has no usable SliceThickness"
            )
        dz = first.slice_thickness
        notes.add(f"{root}: slice spacing {dz:.4g} mm taken from SliceThickness")

    if first.pixel_spacing is None:
        raise DicomSeriesError(f"{root}: file {first.path.name} has no PixelSpacing")
    dy, dx = first.pixel_spacing
    if dy <= 0 or dx <= 0:
        raise DicomSeriesError(
            f"{root}: file {first.path.name} has non-positive PixelSpacing {first.pixel_spacing}"
        )
    odd = [
        h.path
        for h in ordered
        if h.pixel_spacing is None
        or max(abs(a - b) / b for a, b in zip(h.pixel_spacing, (dy, dx), strict=True))
        > PIXEL_SPACING_TOLERANCE
    ]
    if odd:
        notes.add(
            f"{root}: PixelSpacing differs from {first.pixel_spacing} in {len(odd)} file(s) "
            f"({_names(odd, root)}); using the first slice's"
        )

    direction = orientation_to_direction(_majority_orientation(ordered), normal)
    if first.position is not None:
        origin = tuple(float(v) for v in first.position[::-1])
    else:
        z0 = first.slice_location if first.slice_location is not None else 0.0
        origin = (float(z0), 0.0, 0.0)
        notes.add(
            f"{root}: first slice {first.path.name} has no ImagePositionPatient; origin set "
            f"to {origin} (z from SliceLocation when present)"
        )
    last = ordered[-1]
    if source == "ImagePositionPatient" and first.position is not None and len(ordered) > 1:
        step = np.subtract(last.position, first.position)  # type: ignore[arg-type]
        length = float(np.linalg.norm(step))
        if length > 0 and abs(float(step @ normal)) / length < SHEAR_MIN_COS:
            notes.add(
                f"{root}: slice positions do not follow the slice normal (gantry tilt?); the "
                "volume is sheared and its z direction is taken as the normal"
            )
    return (dz, float(dy), float(dx)), origin, direction  # type: ignore[return-value]


# --- the loader --------------------------------------------------------------------------


def _summarise_pydicom(messages: Iterable[str], root: Path, notes: _Notes) -> None:
    counts = Counter(messages)
    for message, n in list(counts.items())[:_MAX_NAMES]:
        notes.add(f"{root}: pydicom warned {n}x: {message}", logging.INFO)
    if len(counts) > _MAX_NAMES:
        notes.add(
            f"{root}: pydicom gave {len(counts) - _MAX_NAMES} more kinds of warnings", logging.INFO
        )


def _check_load_args(allowed_modalities, pad_hu, max_voxels) -> tuple[str, ...] | None:
    """Validate :func:`load_scan`'s options; return the allowed modalities, upper case."""
    allowed: tuple[str, ...] | None = None
    if allowed_modalities is not None:
        if isinstance(allowed_modalities, str):
            allowed_modalities = (allowed_modalities,)
        allowed = tuple(str(m).upper() for m in allowed_modalities)
    if isinstance(pad_hu, bool) or not isinstance(pad_hu, (int, np.integer)):
        raise TypeError(f"pad_hu must be an int, got {pad_hu!r}")
    if not _INT16.min <= pad_hu <= _INT16.max:
        raise ValueError(f"pad_hu={pad_hu} is outside the int16 range")
    if (
        isinstance(max_voxels, bool)
        or not isinstance(max_voxels, (int, np.integer))
        or max_voxels < 1
    ):
        raise ValueError(f"max_voxels must be a positive int, got {max_voxels!r}")
    return allowed


def _read_folder(path, notes: _Notes) -> _Folder:
    """The header pass, with notes on skipped files; raises when no image was found."""
    scan = _scan_folder(path)
    root = scan.root
    if not scan.headers:
        raise _no_files_error(scan)
    for p, reason in scan.unreadable:
        notes.add(f"{root}: skipped unreadable file {_names([p], root)}: {reason}")
    if scan.rejected:
        notes.add(
            f"{root}: ignored {len(scan.rejected)} file(s) named like DICOM that are not DICOM "
            f"({_names(scan.rejected, root)})"
        )
    return scan


def _select_slices(
    scan: _Folder, series_uid: str | None, allowed: tuple[str, ...] | None, notes: _Notes
) -> tuple[list[_Header], np.ndarray | None, str, np.ndarray]:
    """Choose the series, filter and order its slices (see :func:`_order_slices`)."""
    root = scan.root
    groups = _group_series(scan.headers)
    uid = _choose_series(scan, groups, series_uid, allowed, notes)
    members = _filter_series(groups[uid], root, notes)
    if len(members) < 2:
        raise DicomSeriesError(
            f"{root}: a volume needs >= 2 slices; series {uid} has {len(members)} "
            f"(file {_names([h.path for h in members], root)})"
        )
    ordered, positions, source, normal = _order_slices(members, root, notes)
    if len(ordered) < 2:
        raise DicomSeriesError(
            f"{root}: a volume needs >= 2 slices; after dropping repeated positions series "
            f"{uid} has {len(ordered)} (file {_names([h.path for h in ordered], root)})"
        )
    return ordered, positions, source, normal


def _check_size(ordered: Sequence[_Header], root: Path, max_voxels: int) -> None:
    """Refuse a series whose declared voxels exceed ``max_voxels``, before any allocation."""
    rows, columns = ordered[0].rows, ordered[0].columns
    n_voxels = len(ordered) * rows * columns
    if n_voxels > max_voxels:
        raise DicomSeriesError(
            f"{root}: series {ordered[0].series_uid} declares {len(ordered)} x {rows} x "
            f"{columns} = {n_voxels} voxels (file {ordered[0].path.name}), above "
            f"max_voxels={max_voxels}"
        )


def _drop_failed_ends(
    ordered: Sequence[_Header], failures: list[tuple[int, str]], root: Path, notes: _Notes
) -> tuple[int, int]:
    """Slice range [lo, hi) left after dropping undecodable end slices; raise on a gap."""
    bad = {i for i, _ in failures}
    lo = 0
    while lo in bad:
        lo += 1
    hi = len(ordered)
    while hi - 1 in bad:
        hi -= 1
    interior = [(i, why) for i, why in failures if lo <= i < hi]
    if interior:
        i, why = interior[0]
        raise DicomSeriesError(
            f"{root}: file {ordered[i].path.name} inside the volume cannot be decoded "
            f"({why}); dropping it would leave a gap ({len(failures)} undecodable file(s))"
        )
    if hi - lo < 2:
        i, why = failures[0]
        raise DicomSeriesError(
            f"{root}: {len(failures)} of {len(ordered)} files cannot be decoded, fewer than "
            f"2 slices remain; file {ordered[i].path.name}: {why}"
        )
    notes.add(
        f"{root}: dropped {len(failures)} undecodable end slice(s) (no gap left): "
        + "; ".join(f"{ordered[i].path.name}: {why}" for i, why in failures)
    )
    return lo, hi


def load_scan(
    path,
    *,
    series_uid: str | None = None,
    allowed_modalities: Sequence[str] | None = ("CT",),
    pad_hu: int = DEFAULT_PAD_HU,
    max_voxels: int = MAX_VOXELS,
) -> Scan:
    """Load one DICOM series as an int16 Hounsfield-unit volume.

    Parameters
    ----------
    path : str or os.PathLike
        Patient folder (flat or nested, searched recursively) or a single file.
    series_uid : str, optional
        Load this SeriesInstanceUID. By default the axial series of an allowed modality with
        the most files is loaded (localizers excluded); the choice is recorded in
        ``Scan.warnings`` when there was one to make.
    allowed_modalities : sequence of str or None, default ("CT",)
        Modalities accepted (upper case). None accepts any.
    pad_hu : int, default -1024
        HU written into padding voxels (stored value == PixelPaddingValue, or -2000 without
        the tag). -1024 is air, what grt123 produces with LIDC's intercept.
    max_voxels : int, default 2**31
        Refuse series whose Rows * Columns * slices exceeds this, before allocating.

    Returns
    -------
    Scan
        ``hu`` is int16 (z, y, x) with z ascending along the slice normal; modality-LUT
        values outside the int16 range are clipped (and the clip reported in ``warnings``).

    Raises
    ------
    DicomSeriesError
        For every input problem: missing or empty folder, no readable image, wrong modality,
        no axial series, unknown ``series_uid``, a single slice, inconsistent Rows/Columns,
        slices that cannot be ordered, undecodable pixels inside the volume, a volume above
        ``max_voxels``. The message names the folder, the file and what is wrong.

    Examples
    --------
    >>> load_scan("LIDC-IDRI-0001").hu.shape  # doctest: +SKIP
    (133, 512, 512)
    """
    allowed = _check_load_args(allowed_modalities, pad_hu, max_voxels)
    notes = _Notes()
    scan = _read_folder(path, notes)
    root = scan.root
    ordered, positions, source, normal = _select_slices(scan, series_uid, allowed, notes)
    _check_size(ordered, root, max_voxels)
    raw = np.empty((len(ordered), ordered[0].rows, ordered[0].columns), _raw_dtype(ordered))
    digests, failures, pyd_notes = _read_pixels(ordered, raw)
    _summarise_pydicom(pyd_notes + [m for h in ordered for m in h.pydicom_warnings], root, notes)
    if failures:
        lo, hi = _drop_failed_ends(ordered, failures, root, notes)
        ordered, digests, raw = ordered[lo:hi], digests[lo:hi], raw[lo:hi].copy()
        positions = None if positions is None else positions[lo:hi]
    spacing, origin, direction = _geometry(
        ordered, positions, source, normal, root, notes, scan.unreadable
    )
    pad_mask = _padding_mask(raw, ordered)
    hu = _to_hu(raw, ordered, notes, root)
    if pad_mask is not None:
        hu[pad_mask] = pad_hu
    first, lines = ordered[0], sorted(f"{h.size} {d}\n" for h, d in zip(ordered, digests, strict=True))
    return Scan(
        hu=hu,
        spacing=spacing,
        origin=origin,
        direction=direction,
        patient_id=first.patient_id,
        series_uid=first.series_uid,
        study_uid=first.study_uid,
        modality=first.modality,
        source_files=tuple(str(h.path) for h in ordered),
        source_hash=hashlib.sha256("".join(lines).encode()).hexdigest(),
        warnings=tuple(notes.items),
        padding_value_hu=None if pad_mask is None else int(pad_hu),
    )
