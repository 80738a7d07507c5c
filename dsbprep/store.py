"""The dsbprep HDF5 dataset format: one append-only, crash-safe, chunked file.

See ``docs/FORMAT.md`` for the full description and the reasons behind it. In
short, a file holds a fixed set of resizable datasets created once:

``/images``  (total_z, Y, X)  every case's volume stacked along z (2-D cases are
             one slice thick), padded in y/x with the file's pad value;
``/masks``   (total_z, Y, X)  uint8 label masks in the same place;
``/boxes``   (n_boxes, 9)     float32 boxes, ``BOX_COLUMNS``;
``/meta``    (n_bytes,)       uint8, the cases' provenance as UTF-8 JSON, back to back;
``/index``   (n_rows,)        one compound row per case (``INDEX_DTYPE``).

A case is appended by writing its arrays, boxes and JSON first, flushing, and
then adding its index row and flushing again. The file is written in HDF5 SWMR
mode, so a crash or SIGKILL at any moment leaves a file that opens, and readers
only ever trust rows of ``/index``: a half-written case has no row and is
invisible. The next writer reuses (and first trims) the space after the last
committed row.

A full disk never damages the file: before writing a case the writer reserves
(``posix_fallocate``) the most space the case can take, so "no space left" or a
file size limit is met before any HDF5 write and raises :class:`StorageFullError`
with the file intact. See docs/RELIABILITY.md.

Examples
--------
>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "demo.h5")
>>> with DatasetWriter(path, image_dtype="uint8", chunks=(8, 16, 16)) as w:
...     w.append(CaseData("a", np.zeros((4, 10, 12), np.uint8), np.ones((4, 10, 12), np.uint8),
...                       spacing=(1.0, 1.0, 1.0)))
>>> with open_dataset(path) as ds:
...     print(len(ds), ds.case_ids, ds["a"].image.shape, int(ds["a"].mask.sum()))
1 ['a'] (4, 10, 12) 480
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import logging
import os
import re
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filters with HDF5 for readers)
import numpy as np

from ._version import __version__
from .encode import (
    COMPRESSORS,
    FOREGROUND_POINTS,
    ChunkSpec,
    EncodedCase,
    case_checksum,
    compression_filters,
    encode_case,
    foreground_points,
)
from .errors import DatasetFormatError, StorageFullError

__all__ = [
    "FORMAT_VERSION",
    "INDEX_DTYPE",
    "BOX_COLUMNS",
    "empty_boxes",
    "as_boxes",
    "STATUS_OK",
    "STATUS_FAILED",
    "COMPRESSORS",
    "CaseData",
    "CaseRecord",
    "DatasetWriter",
    "StorageFullError",
    "DsbDataset",
    "open_dataset",
    "case_checksum",
    "foreground_points",
    "FOREGROUND_POINTS",
    "ChunkSpec",
    "EncodedCase",
    "encode_case",
]

logger = logging.getLogger(__name__)

#: Version of the on-disk layout. Readers refuse files with a larger major version.
#: 2.0: ``/boxes`` gained the column ``diameter_axial_mm`` (format 1.x files are read, see
#: :func:`as_boxes`; appending to them is refused).
FORMAT_VERSION = "2.0"
_FORMAT_MAJOR = 2

# --- box columns (issue 15: label rules; kept as one block so it can be moved as a whole) ---
#: Column meaning of each row of ``/boxes`` (voxel units are in the stored grid).
#: ``diameter_mm``: LUNA16's diameter (volume-equivalent sphere, readers' mean);
#: ``diameter_axial_mm``: the largest axial diameter of the outlines (readers' mean),
#: NaN when unknown (a LUNA16 CSV row). See docs/LABELS.md.
BOX_COLUMNS = (
    "z", "y", "x", "size_z", "size_y", "size_x", "diameter_mm", "n_readers", "diameter_axial_mm"
)
#: Columns of format 1.x files (no ``diameter_axial_mm``; ``diameter_mm`` held the axial one).
_BOX_COLUMNS_V1 = BOX_COLUMNS[:8]


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
    if boxes.ndim == 1 and boxes.size == len(_BOX_COLUMNS_V1):  # one row
        boxes = boxes.reshape(1, -1)
    if boxes.ndim == 2 and boxes.shape[1] == len(_BOX_COLUMNS_V1):
        axial = boxes[:, _BOX_COLUMNS_V1.index("diameter_mm")]
        boxes = np.column_stack([boxes, axial]).astype(np.float32)
    return boxes.reshape(-1, len(BOX_COLUMNS))


def _check_box_columns(f: h5py.File, path: str) -> None:
    """Refuse to append to a file whose ``/boxes`` has other columns (format 1.x)."""
    if f["boxes"].shape[1] != len(BOX_COLUMNS):
        raise DatasetFormatError(
            f"{path}: /boxes has {f['boxes'].shape[1]} columns (format "
            f"{f.attrs.get('format_version')}), this dsbprep writes {len(BOX_COLUMNS)}: "
            "build into a new file"
        )
# --- end box columns ---

STATUS_OK = 0
STATUS_FAILED = 1

#: Longest case id and hash strings kept in the index (bytes, UTF-8).
_ID_BYTES = 128
_HASH_BYTES = 64

INDEX_DTYPE = np.dtype(
    [
        ("case_id", f"S{_ID_BYTES}"),
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
        ("source_hash", f"S{_HASH_BYTES}"),
        ("checksum", "S32"),
        ("time", "f8"),
    ]
)

#: Split codes stored in the index.
SPLITS = {"": -1, "train": 0, "val": 1, "test": 2}

#: Default chunk shapes: 64^3 suits 3-D patch reads (see docs/FORMAT.md);
#: 2-D slice files use one slice per chunk row.
DEFAULT_VOLUME_CHUNKS = (64, 64, 64)
DEFAULT_SLICE_CHUNKS = (1, 128, 128)

#: Reader chunk cache: a few 3-D patches' worth of chunks (the h5py default is 1 MiB).
DEFAULT_CACHE_BYTES = 64 * 1024**2
#: Slots of the chunk hash table; a prime about 100x the number of cached chunks.
DEFAULT_CACHE_SLOTS = 100_003


#: errno values that mean "the file cannot grow": no space, file too large (RLIMIT_FSIZE), quota.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
#: Extra bytes reserved per append for HDF5's own metadata (chunk index, object headers,
#: superblock): a few KiB in practice, so 1 MiB leaves a wide margin.
RESERVE_MARGIN_BYTES = 2**20
#: Worst-case growth of a chunk by compression (lzf/deflate/blosc add < 1 % to data that
#: does not compress).
_COMPRESSION_SLACK = 1.01
#: h5py reports HDF5 write failures as RuntimeError/OSError whose text holds "errno = N".
_ERRNO_IN_TEXT = re.compile(r"errno\s*=\s*(\d+)")


#: Files whose HDF5 close failed after a failed write: the HDF5 library still holds them and
#: may crash while shutting down at interpreter exit (see ``python -m dsbprep.build``).
FILES_LEFT_OPEN: list[str] = []


def _storage_errno(err: BaseException) -> int | None:
    """The errno of ``err`` when it means "the file cannot grow", else None."""
    number = getattr(err, "errno", None)
    if number in _FULL_ERRNOS:
        return number
    for match in _ERRNO_IN_TEXT.finditer(str(err)):
        if int(match.group(1)) in _FULL_ERRNOS:
            return int(match.group(1))
    return None


def _chunked_nbytes(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> int:
    """Bytes of all the chunks an array of ``shape`` written at a chunk corner touches."""
    n = itemsize
    for size, chunk in zip(shape, chunks, strict=True):
        n *= -(-int(size) // int(chunk)) * int(chunk)
    return n


def _superblock_eof(path: str) -> int | None:
    """End-of-file address stored in a version 2/3 HDF5 superblock at offset 0 (else None)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(48)
    except OSError:
        return None
    if len(head) < 48 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3) or head[9] != 8:
        return None
    base, _ext, eof = struct.unpack_from("<QQQ", head, 12)
    return base + eof


def _fit_to_superblock(path: str) -> None:
    """Make the file exactly as long as its superblock says.

    Longer: drops the unused space reserved for appends. Shorter (a write failed after
    HDF5 had recorded the new end of file): extends it with zeros (sparse), so HDF5 opens
    it again; nothing committed lives in that tail, and ``dsbprep.verify`` proves it.
    Call only while holding the writer lock.
    """
    eof = _superblock_eof(path)
    if eof is None:
        return
    size = os.path.getsize(path)
    if size != eof:
        if size < eof:
            logger.warning("%s: %d bytes short of its recorded end (a write failed); zero-filling the "
                           "tail: run `python -m dsbprep.verify` on it", path, eof - size)
        os.truncate(path, eof)


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
    boxes : ndarray, shape (n, 9)
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
    boxes: np.ndarray = field(default_factory=empty_boxes)
    source_hash: str = ""
    split: str = ""
    label: int = -1
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = as_boxes(self.boxes)  # issue 15: 8-column (1.x) boxes accepted


def _hdf5_library() -> ctypes.CDLL:
    """Return the HDF5 shared library h5py itself uses (already loaded in this process)."""
    candidates: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rsplit(None, 1)[-1]
            name = os.path.basename(path)
            if name.startswith("libhdf5") and "_hl" not in name and path not in candidates:
                candidates.append(path)
    libs = os.path.join(os.path.dirname(h5py.__file__), os.pardir, "h5py.libs")
    candidates += [p for p in glob.glob(os.path.join(libs, "libhdf5*.so*")) if "_hl" not in p]
    for path in candidates:
        with contextlib.suppress(OSError):
            return ctypes.CDLL(path)
    raise DatasetFormatError("cannot locate the HDF5 library used by h5py to clear status flags")


def _clear_status_flags(path: str) -> None:
    """Clear the superblock's 'open for write' flags left by a writer that died.

    The same as the ``h5clear -s`` tool. Called only while this process holds the
    writer lock (see ``_WriterLock``), i.e. when no live writer can own the flags.
    """
    lib = _hdf5_library()
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    flag = ctypes.c_bool(True)
    lib.H5Pset.argtypes = [ctypes.c_int64, ctypes.c_char_p, ctypes.c_void_p]
    lib.H5Pset.restype = ctypes.c_int
    if lib.H5Pset(fapl.id, b"clear_status_flags", ctypes.byref(flag)) < 0:
        raise DatasetFormatError(f"{path}: HDF5 refused to clear the status flags")
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=fapl)
    fid.close()
    logger.warning("%s: cleared the status flags of a writer that stopped without closing", path)


class _WriterLock:
    """An exclusive ``flock`` on ``<file>.lock`` held for the writer's lifetime.

    The kernel releases it when the process dies (even by SIGKILL), so holding it
    proves that no other writer is alive.
    """

    def __init__(self, path: str) -> None:
        self.path = path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._fd)
            self._fd = None
            raise DatasetFormatError(
                f"{self.path[:-5]}: another dsbprep build is writing this file (lock {self.path})"
            ) from err

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _align(value: int, step: int) -> int:
    return -(-value // step) * step


def _check_version(attrs: Mapping[str, Any], path: str) -> None:
    version = attrs.get("format_version")
    if version is None or attrs.get("format") != "dsbprep":
        raise DatasetFormatError(f"{path}: not a dsbprep dataset (no format/format_version attributes)")
    version = version.decode() if isinstance(version, bytes) else str(version)
    try:
        major = int(version.split(".")[0])
    except ValueError as err:
        raise DatasetFormatError(f"{path}: unreadable format_version {version!r}") from err
    if major > _FORMAT_MAJOR:
        raise DatasetFormatError(
            f"{path}: written with format version {version} by a newer dsbprep; "
            f"this dsbprep {__version__} reads format {FORMAT_VERSION}: upgrade dsbprep"
        )


class DatasetWriter:
    """Append cases to a dsbprep HDF5 file, all-or-nothing per case.

    Only one writer may have a file open (a lock file enforces it). Readers in
    other processes may open the file at any time (see :func:`open_dataset`).

    Parameters
    ----------
    path : str or Path
        The file; created (atomically, via a temporary name) when absent.
    image_dtype : str
        dtype of ``/images`` (a new file only; an existing file keeps its own).
    chunks : tuple of 3 int, optional
        Chunk shape of images and masks; default 64^3 for volumes, (1, 128, 128) for slices.
    compression : str
        One of ``COMPRESSORS``.
    kind : {"volume", "slices"}
        3-D cases or 2-D cases (one slice each).
    pad_value : number
        Image value outside every case (y/x padding and border patches).
    attrs : dict, optional
        Extra file attributes for a new file (e.g. ``config`` text, ``source``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_dtype: str = "uint8",
        chunks: tuple[int, int, int] | None = None,
        compression: str = "blosc-lz4",
        kind: str = "volume",
        pad_value: float = 0,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        if kind not in ("volume", "slices"):
            raise ValueError(f"kind must be 'volume' or 'slices', got {kind!r}")
        #: Reserve each case's worst-case size on disk before writing it (see StorageFullError).
        self.reserve_space = True
        self._broken = False
        self._lock = _WriterLock(self.path)
        self._lock.acquire()
        try:
            if not os.path.exists(self.path):
                self._create(image_dtype, chunks, compression, kind, pad_value, attrs or {})
            self._open_existing()
        except BaseException:
            self._lock.release()
            raise

    # -- creation and recovery -------------------------------------------------
    def _create(self, image_dtype, chunks, compression, kind, pad_value, attrs) -> None:
        dtype = np.dtype(image_dtype)
        if chunks is None:
            chunks = DEFAULT_VOLUME_CHUNKS if kind == "volume" else DEFAULT_SLICE_CHUNKS
        chunks = tuple(int(c) for c in chunks)
        if len(chunks) != 3 or min(chunks) < 1:
            raise ValueError(f"chunks must be 3 positive ints, got {chunks}")
        comp = compression_filters(compression, dtype.itemsize)
        mask_comp = compression_filters(compression, 1)
        tmp = f"{self.path}.creating-{os.getpid()}"
        with h5py.File(tmp, "w", libver="latest") as f:
            f.attrs.update(
                {
                    "format": "dsbprep",
                    "format_version": FORMAT_VERSION,
                    "creator": f"dsbprep {__version__}",
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "kind": kind,
                    "pad_value": pad_value,
                    "compression": compression,
                    "box_columns": json.dumps(BOX_COLUMNS),
                    "chunks": chunks,
                }
            )
            for key, value in attrs.items():
                f.attrs[key] = value
            shape0 = (0, chunks[1], chunks[2])
            f.create_dataset(
                "images", shape=shape0, maxshape=(None, None, None), chunks=chunks,
                dtype=dtype, fillvalue=dtype.type(pad_value), **comp,
            )
            f.create_dataset(
                "masks", shape=shape0, maxshape=(None, None, None), chunks=chunks,
                dtype="u1", fillvalue=0, **mask_comp,
            )
            f.create_dataset(
                "boxes", shape=(0, len(BOX_COLUMNS)), maxshape=(None, len(BOX_COLUMNS)),
                chunks=(256, len(BOX_COLUMNS)), dtype="f4",
            )
            f.create_dataset("meta", shape=(0,), maxshape=(None,), chunks=(65536,), dtype="u1",
                             **compression_filters("gzip", 1))
            f.create_dataset("index", shape=(0,), maxshape=(None,), chunks=(64,), dtype=INDEX_DTYPE)
        os.replace(tmp, self.path)  # atomic: a crash leaves no half-created file under the real name

    def _open_existing(self, *, refilled: bool = False) -> None:
        try:
            f = h5py.File(self.path, "a", libver="latest")
        except OSError as err:
            if "truncated file" in str(err) and not refilled:  # a write failed after HDF5 grew the file
                _fit_to_superblock(self.path)  # we hold the lock: no writer is alive
                return self._open_existing(refilled=True)
            if "consistency flags" not in str(err) and "already open" not in str(err):
                raise DatasetFormatError(f"{self.path}: cannot open for writing: {err}") from err
            _clear_status_flags(self.path)  # we hold the lock: the flag's writer is dead
            f = h5py.File(self.path, "a", libver="latest")
        try:
            _check_version(f.attrs, self.path)
            for name in ("images", "masks", "boxes", "meta", "index"):
                if name not in f:
                    raise DatasetFormatError(f"{self.path}: dataset /{name} is missing")
            _check_box_columns(f, self.path)  # issue 15: format 1.x files have 8 box columns
            self._trim(f)
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        self.file = f
        self.kind = f.attrs["kind"]
        self.chunks = tuple(int(c) for c in f.attrs["chunks"])
        images = f["images"]
        self._spec = ChunkSpec(  # fixed while the file is open: read once, compared per append
            image_dtype=images.dtype.str,
            chunks=tuple(int(c) for c in (images.chunks or self.chunks)),
            compression=str(f.attrs["compression"]),
            pad_value=float(f.attrs["pad_value"]),
            kind=str(self.kind),
        )

    def _trim(self, f: h5py.File) -> None:
        """Drop data after the last committed row (left by a crashed append)."""
        index = f["index"][:]
        z_end = boxes_end = meta_end = 0
        ok = index[index["status"] == STATUS_OK]
        if len(ok):
            z_end = int((ok["z0"] + ok["shape"][:, 0]).max())
        if len(index):
            boxes_end = int((index["boxes_start"] + index["n_boxes"]).max())
            meta_end = int((index["meta_start"] + index["meta_len"]).max())
        z_keep = _align(z_end, int(f.attrs["chunks"][0]))
        self._z_end = z_end
        for name in ("images", "masks"):
            if f[name].shape[0] > z_keep:
                logger.warning("%s: dropping %d slices of an unfinished case", self.path,
                               f[name].shape[0] - z_keep)
                f[name].resize(z_keep, axis=0)
        if f["boxes"].shape[0] > boxes_end:
            f["boxes"].resize(boxes_end, axis=0)
        if f["meta"].shape[0] > meta_end:
            f["meta"].resize(meta_end, axis=0)

    # -- queries ---------------------------------------------------------------
    def latest_rows(self) -> dict[str, np.void]:
        """Latest index row per case id (later rows supersede earlier ones)."""
        rows: dict[str, np.void] = {}
        for row in self.file["index"][:]:
            rows[row["case_id"].decode("utf-8")] = row
        return rows

    def done(self) -> dict[str, str]:
        """Case id -> source hash of every case stored successfully."""
        return {
            cid: row["source_hash"].decode()
            for cid, row in self.latest_rows().items()
            if row["status"] == STATUS_OK
        }

    # -- disk space ------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self, case_id: str, nbytes: int) -> Iterator[None]:
        """Reserve ``nbytes`` (+ margin) at the end of the file, then run the writes.

        A failed reservation raises :class:`StorageFullError` before anything is written.
        A write that fails for lack of space anyway (a filesystem that does not honour the
        reservation) also raises it, and the writer refuses further appends.
        """
        if self._broken:
            raise StorageFullError(f"{self.path}: an earlier write failed for lack of space; "
                                   "close the writer and run the build again")
        nbytes += RESERVE_MARGIN_BYTES
        if self.reserve_space:
            self._reserve(case_id, nbytes)
        try:
            yield
        except (OSError, RuntimeError) as err:
            number = _storage_errno(err)
            if number is None:
                raise
            self._broken = True
            raise StorageFullError(self._full_message(case_id, nbytes, number)) from err

    def _reserve(self, case_id: str, nbytes: int) -> None:
        handle = self.file.id.get_vfd_handle()
        if not isinstance(handle, int):
            return
        try:
            os.posix_fallocate(handle, self.file.id.get_filesize(), nbytes)
        except OSError as err:
            if err.errno in _FULL_ERRNOS:
                raise StorageFullError(self._full_message(case_id, nbytes, err.errno)) from err
            logger.debug("%s: cannot reserve space (%s); writing without a reservation", self.path, err)

    def _meta_nbytes(self, blob: np.ndarray) -> int:
        """Worst case for appending ``blob`` to ``/meta``: its chunks plus the rewritten last one."""
        chunk = self.file["meta"].chunks
        return _chunked_nbytes((blob.size + chunk[0],), chunk, 1)

    def _full_message(self, case_id: str, nbytes: int, number: int) -> str:
        return (
            f"no space left / file size limit while writing {self.path}: "
            f"{os.strerror(number)} (errno {number}) when storing case {case_id!r} (up to "
            f"{nbytes / 2**20:.1f} MiB); the cases stored before it are intact - free space "
            "and run the build again to resume"
        )

    # -- appending -------------------------------------------------------------
    def _append_meta(self, meta: Mapping[str, Any] | np.ndarray) -> tuple[int, int]:
        blob = meta if isinstance(meta, np.ndarray) else _meta_blob(meta)
        ds = self.file["meta"]
        start = ds.shape[0]
        ds.resize(start + blob.size, axis=0)
        ds[start:] = blob
        return start, blob.size

    def _append_row(self, row: np.ndarray) -> None:
        self.file.flush()  # data first: the row must never point at unflushed bytes
        index = self.file["index"]
        n = index.shape[0]
        index.resize(n + 1, axis=0)
        index[n] = row
        self.file.flush()

    @property
    def spec(self) -> ChunkSpec:
        """This file's chunk layout, for :func:`dsbprep.encode.encode_case` in worker processes."""
        return self._spec

    def append(self, case: CaseData | EncodedCase) -> None:
        """Append one case; it becomes visible to readers only when complete.

        ``case`` is a :class:`CaseData` (encoded here) or an :class:`EncodedCase`
        that a worker encoded for this file's :attr:`spec` (stored as it is).

        Raises
        ------
        ValueError
            The arrays do not fit the file (shape, dtype), or ``case`` was encoded for
            another layout.
        StorageFullError
            The disk or a file size limit has no room for the case (nothing written).
        """
        if not isinstance(case, EncodedCase):
            case = encode_case(case, self.spec)
        elif case.spec != self.spec:
            raise ValueError(f"case {case.case_id!r} was encoded for {case.spec}, but the file is {self.spec}")
        boxes = as_boxes(case.case.boxes)  # issue 15
        blob = _meta_blob(case.case.meta)
        nbytes = int(_COMPRESSION_SLACK * case.nbytes) + self._meta_nbytes(blob) + boxes.nbytes
        with self._writing(case.case_id, nbytes):
            self._append_case(case, boxes, blob)

    def _append_case(self, encoded: EncodedCase, boxes: np.ndarray, blob: np.ndarray) -> None:
        images, masks = self.file["images"], self.file["masks"]
        case = encoded.case
        nz, ny, nx = encoded.shape
        z0 = _align(self._z_end, self.chunks[0])
        new_shape = (z0 + nz, max(images.shape[1], ny), max(images.shape[2], nx))
        # Space after the last committed case was trimmed when the file was opened
        # (chunk-aligned, so whole chunks were freed): the new case lands on fresh chunks.
        for ds, chunks in ((images, encoded.images), (masks, encoded.masks)):
            ds.resize(new_shape)
            for (oz, oy, ox), filter_mask, data in chunks:
                ds.id.write_direct_chunk((z0 + oz, oy, ox), data, filter_mask)
        bstart = self.file["boxes"].shape[0]
        if len(boxes):
            self.file["boxes"].resize(bstart + len(boxes), axis=0)
            self.file["boxes"][bstart:] = boxes
        mstart, mlen = self._append_meta(blob)
        row = np.zeros((), INDEX_DTYPE)
        row["case_id"] = _encode_id(case.case_id)
        row["status"] = STATUS_OK
        row["ndim"] = 2 if self.kind == "slices" else 3
        row["split"] = SPLITS.get(case.split, -1)
        row["label"] = case.label
        row["z0"] = z0
        row["shape"] = encoded.shape
        row["spacing"] = case.spacing
        row["origin"] = case.origin
        row["direction"] = np.asarray(case.direction, float).reshape(3, 3)
        row["original_spacing"] = case.original_spacing if case.original_spacing is not None else case.spacing
        row["shape_before_crop"] = case.shape_before_crop if case.shape_before_crop is not None else encoded.shape
        row["crop_box"] = (
            case.crop_box if case.crop_box is not None else np.stack([np.zeros(3), encoded.shape], axis=1)
        )
        row["boxes_start"] = bstart
        row["n_boxes"] = len(boxes)
        row["meta_start"] = mstart
        row["meta_len"] = mlen
        row["source_hash"] = case.source_hash.encode()[:_HASH_BYTES]
        row["checksum"] = encoded.checksum.encode()
        row["time"] = time.time()
        self._append_row(row)
        self._z_end = z0 + nz

    def append_failure(self, case_id: str, reason: str, *, source_hash: str = "", meta: Mapping | None = None) -> None:
        """Record that ``case_id`` failed with ``reason`` (no arrays)."""
        blob = _meta_blob({**(meta or {}), "error": reason})
        with self._writing(case_id, self._meta_nbytes(blob)):
            self._append_failure(case_id, blob, source_hash)

    def _append_failure(self, case_id: str, blob: np.ndarray, source_hash: str) -> None:
        mstart, mlen = self._append_meta(blob)
        row = np.zeros((), INDEX_DTYPE)
        row["case_id"] = _encode_id(case_id)
        row["status"] = STATUS_FAILED
        row["z0"] = -1
        row["split"] = -1
        row["label"] = -1
        row["boxes_start"] = self.file["boxes"].shape[0]
        row["meta_start"] = mstart
        row["meta_len"] = mlen
        row["source_hash"] = source_hash.encode()[:_HASH_BYTES]
        row["direction"] = np.eye(3)
        row["time"] = time.time()
        self._append_row(row)

    def close(self) -> None:
        """Flush and close the file and release the writer lock."""
        try:
            if getattr(self, "file", None) is not None and self.file.id.valid:
                if self._broken:  # HDF5 cannot flush what it could not write: do not raise again
                    try:
                        self.file.close()
                    except (OSError, RuntimeError) as err:
                        logger.warning("%s: closing after a failed write: %s", self.path, err)
                        FILES_LEFT_OPEN.append(self.path)
                else:
                    self.file.close()
            with contextlib.suppress(OSError):  # drop the reserved tail (or refill a short file)
                _fit_to_superblock(self.path)
        finally:
            self._lock.release()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _encode_id(case_id: str) -> bytes:
    raw = case_id.encode("utf-8")
    if len(raw) > _ID_BYTES or not raw:
        raise ValueError(f"case id {case_id!r} must be 1..{_ID_BYTES} UTF-8 bytes")
    return raw


def _meta_blob(meta: Mapping[str, Any]) -> np.ndarray:
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


# ---------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------


class CaseRecord:
    """One stored case; arrays and metadata are read lazily from the file."""

    def __init__(self, dataset: DsbDataset, row: np.void) -> None:
        self._ds = dataset
        self.row = row
        self.case_id: str = row["case_id"].decode("utf-8")
        self.shape = tuple(int(s) for s in row["shape"])
        self.spacing = tuple(float(s) for s in row["spacing"])
        self.origin = tuple(float(s) for s in row["origin"])
        self.direction = np.array(row["direction"], float)
        self.original_spacing = tuple(float(s) for s in row["original_spacing"])
        self.shape_before_crop = tuple(int(s) for s in row["shape_before_crop"])
        self.crop_box = np.array(row["crop_box"], int)
        self.split = {v: k for k, v in SPLITS.items()}.get(int(row["split"]), "")
        self.label = int(row["label"])
        self.checksum = row["checksum"].decode()
        self.source_hash = row["source_hash"].decode()

    def __repr__(self) -> str:
        return f"CaseRecord({self.case_id!r}, shape={self.shape}, spacing={self.spacing})"

    @property
    def image(self) -> np.ndarray:
        """The whole image volume, (z, y, x)."""
        return self._ds._read("images", self.row)

    @property
    def mask(self) -> np.ndarray:
        """The whole label mask, (z, y, x) uint8."""
        return self._ds._read("masks", self.row)

    @property
    def boxes(self) -> np.ndarray:
        """Boxes (n, 9) in this case's voxel frame, columns ``BOX_COLUMNS``."""
        start, n = int(self.row["boxes_start"]), int(self.row["n_boxes"])
        if n == 0:
            return empty_boxes()
        return as_boxes(self._ds.file["boxes"][start : start + n])

    @property
    def meta(self) -> dict:
        """Provenance dictionary stored with the case."""
        return self._ds._read_meta(self.row)


class DsbDataset:
    """A dsbprep HDF5 file opened for reading (see :func:`open_dataset`)."""

    def __init__(self, path: str | os.PathLike, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 cache_slots: int = DEFAULT_CACHE_SLOTS) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such dataset file")
        kwargs = {"rdcc_nbytes": cache_bytes, "rdcc_nslots": cache_slots, "libver": "latest"}
        try:
            self.file = h5py.File(self.path, "r", **kwargs)
            self.swmr = False
        except OSError as err:
            if "truncated file" in str(err):
                raise DatasetFormatError(
                    f"{self.path}: shorter than its HDF5 superblock says (a write failed, e.g. the "
                    "disk filled up); run the build on it again (the writer repairs the file), then "
                    f"`python -m dsbprep.verify {self.path}`: {err}"
                ) from err
            if "consistency flags" not in str(err) and "already open" not in str(err):
                raise DatasetFormatError(f"{self.path}: cannot open as HDF5: {err}") from err
            # A writer is appending (or died): SWMR read sees every committed case.
            self.file = h5py.File(self.path, "r", swmr=True, **kwargs)
            self.swmr = True
        try:
            _check_version(self.file.attrs, self.path)
            self.attrs = dict(self.file.attrs)
            self.kind = str(self.attrs["kind"])
            self.pad_value = self.attrs["pad_value"]
            self._load_index()
        except BaseException:
            self.file.close()
            raise

    def _load_index(self) -> None:
        index = self.file["index"][:]
        latest: dict[str, int] = {}
        for i, cid in enumerate(index["case_id"]):
            latest[cid.decode("utf-8")] = i
        rows = index[sorted(latest.values())] if latest else index[:0]
        self.index = rows[rows["status"] == STATUS_OK]
        self.case_ids = [c.decode("utf-8") for c in self.index["case_id"]]
        self._pos = {cid: i for i, cid in enumerate(self.case_ids)}
        self.failures = {
            row["case_id"].decode("utf-8"): self._read_meta(row).get("error", "")
            for row in rows[rows["status"] == STATUS_FAILED]
        }

    def refresh(self) -> None:
        """See cases appended since opening (SWMR)."""
        if self.swmr:
            for name in ("index", "images", "masks", "boxes", "meta"):
                self.file[name].refresh()
        self._load_index()

    def __len__(self) -> int:
        return len(self.case_ids)

    def __iter__(self) -> Iterator[CaseRecord]:
        return (self[i] for i in range(len(self)))

    def __contains__(self, case_id: str) -> bool:
        return case_id in self._pos

    def position(self, case_id: str) -> int:
        """Position of ``case_id`` in ``case_ids``."""
        try:
            return self._pos[case_id]
        except KeyError:
            raise KeyError(f"{self.path}: no case {case_id!r}") from None

    def __getitem__(self, key: int | str) -> CaseRecord:
        if isinstance(key, str):
            key = self.position(key)
        n = len(self)
        if not -n <= key < n:
            raise IndexError(f"case index {key} out of range for {n} cases")
        return CaseRecord(self, self.index[key])

    def _read(self, name: str, row: np.void) -> np.ndarray:
        z0 = int(row["z0"])
        nz, ny, nx = (int(s) for s in row["shape"])
        return self.file[name][z0 : z0 + nz, :ny, :nx]

    def _read_meta(self, row: np.void) -> dict:
        start, n = int(row["meta_start"]), int(row["meta_len"])
        return json.loads(self.file["meta"][start : start + n].tobytes()) if n else {}

    def read_region(self, key: int | str, start: tuple[int, ...], size: tuple[int, ...],
                    *, pad_image: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read an image/mask box of ``size`` at ``start`` (case voxel frame), padded at borders.

        Parts outside the case are filled with ``pad_image`` (default: the file's pad
        value) in the image and 0 in the mask.
        """
        i = self.position(key) if isinstance(key, str) else key
        row = self.index[i]
        z0 = int(row["z0"])
        shape = np.asarray(row["shape"], int)
        start = np.asarray(start, int)
        size = np.asarray(size, int)
        lo = np.clip(start, 0, shape)
        hi = np.clip(start + size, 0, shape)
        pad = self.pad_value if pad_image is None else pad_image
        img = np.full(tuple(size), pad, dtype=self.file["images"].dtype)
        msk = np.zeros(tuple(size), np.uint8)
        if np.all(hi > lo):
            src = (slice(z0 + lo[0], z0 + hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
            img[dst] = self.file["images"][src]
            msk[dst] = self.file["masks"][src]
        return img, msk

    def close(self) -> None:
        """Close the file."""
        if self.file.id.valid:
            self.file.close()

    def __enter__(self) -> DsbDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DsbDataset({self.path!r}, {len(self)} cases, kind={self.kind!r})"


def open_dataset(path: str | os.PathLike, **kwargs: Any) -> DsbDataset:
    """Open a dsbprep HDF5 file for reading.

    Works while a build is appending to it (HDF5 SWMR): call ``refresh()`` to see
    new cases; a case is visible only once complete.

    Parameters
    ----------
    path : str or Path
        The dataset file.
    cache_bytes, cache_slots : int, optional
        HDF5 chunk cache size and hash slots (patch reads need far more than h5py's 1 MiB).

    Returns
    -------
    DsbDataset
        ``len()``, ``case_ids``, ``ds[i]`` / ``ds["case"]`` -> :class:`CaseRecord`.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    DatasetFormatError
        Not a dsbprep file, or one written by a newer format version.
    """
    return DsbDataset(path, **kwargs)
