"""The writer: ``DatasetWriter`` appends cases to a dsbprep file, all-or-nothing per case.

A case is appended by writing its arrays, boxes and JSON first, flushing, and
then adding its index row and flushing again. The file is written in HDF5 SWMR
mode, so a crash or SIGKILL at any moment leaves a file that opens, and readers
only ever trust rows of ``/index``: a half-written case has no row and is
invisible. The next writer reuses (and first trims) the space after the last
committed row. Before writing a case the writer reserves (``posix_fallocate``)
the most space the case can take, so a full disk raises
:class:`~dsbprep.errors.StorageFullError` with the file intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filters with HDF5)
import numpy as np

from .._version import __version__
from ..encode import ChunkSpec, EncodedCase, compression_filters, encode_case
from ..errors import DatasetFormatError, StorageFullError
from .format import (
    BOX_COLUMNS,
    DEFAULT_LIMITS,
    DEFAULT_SLICE_CHUNKS,
    DEFAULT_VOLUME_CHUNKS,
    FORMAT_VERSION,
    HASH_BYTES,
    INDEX_DTYPE,
    SPLITS,
    STATUS_FAILED,
    STATUS_OK,
    CaseData,
    as_boxes,
    encode_id,
    meta_blob,
)
from .recovery import (
    FILES_LEFT_OPEN,
    FULL_ERRNOS,
    WriterLock,
    clear_status_flags,
    create_temp,
    fit_to_superblock,
    storage_errno,
)
from .schema import check_file, row_problems

__all__ = ["DatasetWriter", "RESERVE_MARGIN_BYTES"]

logger = logging.getLogger(__name__)

#: Extra bytes reserved per append for HDF5's own metadata (chunk index, object headers,
#: superblock): a few KiB in practice, so 1 MiB leaves a wide margin.
RESERVE_MARGIN_BYTES = 2**20
#: Worst-case growth of a chunk by compression (lzf/deflate/blosc add < 1 % to data that
#: does not compress).
_COMPRESSION_SLACK = 1.01
#: Mode of a new dataset file (mkstemp creates 0600).
_FILE_MODE = 0o644


def _chunked_nbytes(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int) -> int:
    """Bytes of all the chunks an array of ``shape`` written at a chunk corner touches."""
    n = itemsize
    for size, chunk in zip(shape, chunks, strict=True):
        n *= -(-int(size) // int(chunk)) * int(chunk)
    return n


def _align(value: int, step: int) -> int:
    return -(-value // step) * step


def _file_attrs(kind: str, pad_value: float, compression: str, chunks: tuple[int, ...]) -> dict:
    return {
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


def create_file(path: str, image_dtype: str, chunks: tuple[int, int, int] | None, compression: str,
                kind: str, pad_value: float, attrs: Mapping[str, Any]) -> None:
    """Create an empty dsbprep file at ``path``: built under a temporary name, then renamed.

    The temporary file is made by ``mkstemp`` in the target folder (never a planted
    symlink) and written through its descriptor; a crash leaves no half-created file
    under the real name.
    """
    dtype = np.dtype(image_dtype)
    if chunks is None:
        chunks = DEFAULT_VOLUME_CHUNKS if kind == "volume" else DEFAULT_SLICE_CHUNKS
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != 3 or min(chunks) < 1:
        raise ValueError(f"chunks must be 3 positive ints, got {chunks}")
    comp = compression_filters(compression, dtype.itemsize)
    fd, tmp = create_temp(path)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "r+b") as fh, h5py.File(fh, "w", libver="latest") as f:
            f.attrs.update(_file_attrs(kind, pad_value, compression, chunks))
            for key, value in attrs.items():
                f.attrs[key] = value
            shape0 = (0, chunks[1], chunks[2])
            f.create_dataset("images", shape=shape0, maxshape=(None, None, None), chunks=chunks,
                             dtype=dtype, fillvalue=dtype.type(pad_value), **comp)
            f.create_dataset("masks", shape=shape0, maxshape=(None, None, None), chunks=chunks,
                             dtype="u1", fillvalue=0, **compression_filters(compression, 1))
            f.create_dataset("boxes", shape=(0, len(BOX_COLUMNS)), maxshape=(None, len(BOX_COLUMNS)),
                             chunks=(256, len(BOX_COLUMNS)), dtype="f4")
            f.create_dataset("meta", shape=(0,), maxshape=(None,), chunks=(65536,), dtype="u1",
                             **compression_filters("gzip", 1))
            f.create_dataset("index", shape=(0,), maxshape=(None,), chunks=(64,), dtype=INDEX_DTYPE)
        os.replace(tmp, path)  # atomic; replaces a symlink planted at ``path`` instead of following it
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_before_append(f: h5py.File, path: str) -> None:
    """Refuse to append to a file that a reader would not fully accept (schema or any index row)."""
    sets, kind, _ = check_file(f, path, DEFAULT_LIMITS)
    if sets["boxes"].shape[1] != len(BOX_COLUMNS):
        raise DatasetFormatError(
            f"{path}: /boxes has {sets['boxes'].shape[1]} columns (format "
            f"{f.attrs.get('format_version')}), this dsbprep writes {len(BOX_COLUMNS)}: "
            "build into a new file"
        )
    for key in ("chunks", "compression"):
        if key not in f.attrs:
            raise DatasetFormatError(f"{path}: attribute {key}: missing")
    extent = {name: ds.shape for name, ds in sets.items()}
    images = sets["images"]
    _, problems = row_problems(sets["index"][:], extent, images.dtype.itemsize, kind, DEFAULT_LIMITS,
                               chunk_z=(images.chunks or (1,))[0])
    if problems:
        first = next(iter(problems.values()))
        raise DatasetFormatError(f"{path}: cannot append to a file with {len(problems)} invalid index "
                                 f"row(s), the first: {first}; run `python -m dsbprep.verify {path}`")


def trim_uncommitted(f: h5py.File, path: str) -> int:
    """Drop data after the last committed row (left by a crashed append); returns the used z end."""
    index = f["index"][:]
    z_end = boxes_end = meta_end = 0
    ok = index[index["status"] == STATUS_OK]
    if len(ok):
        z_end = int((ok["z0"] + ok["shape"][:, 0]).max())
    if len(index):
        boxes_end = int((index["boxes_start"] + index["n_boxes"]).max())
        meta_end = int((index["meta_start"] + index["meta_len"]).max())
    z_keep = _align(z_end, int(f.attrs["chunks"][0]))
    for name in ("images", "masks"):
        if f[name].shape[0] > z_keep:
            logger.warning("%s: dropping %d slices of an unfinished case", path, f[name].shape[0] - z_keep)
            f[name].resize(z_keep, axis=0)
    if f["boxes"].shape[0] > boxes_end:
        f["boxes"].resize(boxes_end, axis=0)
    if f["meta"].shape[0] > meta_end:
        f["meta"].resize(meta_end, axis=0)
    return z_end


def _case_row(encoded: EncodedCase, ndim: int, z0: int, boxes: tuple[int, int],
              meta: tuple[int, int]) -> np.ndarray:
    """The index row of a stored case (``boxes``, ``meta``: start and length)."""
    case = encoded.case
    row = np.zeros((), INDEX_DTYPE)
    row["case_id"] = encode_id(case.case_id)
    row["status"] = STATUS_OK
    row["ndim"] = ndim
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
    row["boxes_start"], row["n_boxes"] = boxes
    row["meta_start"], row["meta_len"] = meta
    row["source_hash"] = case.source_hash.encode()[:HASH_BYTES]
    row["checksum"] = encoded.checksum.encode()
    row["time"] = time.time()
    return row


def _failure_row(case_id: str, boxes_start: int, meta: tuple[int, int], source_hash: str) -> np.ndarray:
    """The index row recording that ``case_id`` failed (its reason is in its meta)."""
    row = np.zeros((), INDEX_DTYPE)
    row["case_id"] = encode_id(case_id)
    row["status"] = STATUS_FAILED
    row["z0"] = -1
    row["split"] = -1
    row["label"] = -1
    row["boxes_start"] = boxes_start
    row["meta_start"], row["meta_len"] = meta
    row["source_hash"] = source_hash.encode()[:HASH_BYTES]
    row["direction"] = np.eye(3)
    row["time"] = time.time()
    return row


class DatasetWriter:
    """Append cases to a dsbprep HDF5 file, all-or-nothing per case.

    Only one writer may have a file open (a lock file enforces it). Readers in
    other processes may open the file at any time (see :func:`dsbprep.store.open_dataset`).

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
        self._lock = WriterLock(self.path)
        self._lock.acquire()
        try:
            if not os.path.exists(self.path):
                create_file(self.path, image_dtype, chunks, compression, kind, pad_value, attrs or {})
            self._open_existing()
        except BaseException:
            self._lock.release()
            raise

    # -- opening and recovery ----------------------------------------------------
    def _open_existing(self, *, refilled: bool = False) -> None:
        try:
            f = h5py.File(self.path, "a", libver="latest")
        except OSError as err:
            if "truncated file" in str(err) and not refilled:  # a write failed after HDF5 grew the file
                fit_to_superblock(self.path)  # we hold the lock: no writer is alive
                return self._open_existing(refilled=True)
            if "consistency flags" not in str(err) and "already open" not in str(err):
                raise DatasetFormatError(f"{self.path}: cannot open for writing: {err}") from err
            clear_status_flags(self.path)  # we hold the lock: the flag's writer is dead
            f = h5py.File(self.path, "a", libver="latest")
        try:
            check_before_append(f, self.path)
            self._z_end = trim_uncommitted(f, self.path)
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

    # -- queries -----------------------------------------------------------------
    def latest_rows(self) -> dict[str, np.void]:
        """Latest index row per case id (later rows supersede earlier ones)."""
        rows: dict[str, np.void] = {}
        for row in self.file["index"][:]:
            rows[row["case_id"].decode("utf-8", "backslashreplace")] = row
        return rows

    def done(self) -> dict[str, str]:
        """Case id -> source hash of every case stored successfully."""
        return {
            cid: row["source_hash"].decode("utf-8", "backslashreplace")
            for cid, row in self.latest_rows().items()
            if row["status"] == STATUS_OK
        }

    @property
    def spec(self) -> ChunkSpec:
        """This file's chunk layout, for :func:`dsbprep.encode.encode_case` in worker processes."""
        return self._spec

    # -- disk space --------------------------------------------------------------
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
            number = storage_errno(err)
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
            if err.errno in FULL_ERRNOS:
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

    # -- appending ---------------------------------------------------------------
    def _append_to(self, name: str, values: np.ndarray) -> tuple[int, int]:
        """Extend ``/name`` by ``values`` along axis 0; returns (start, length)."""
        ds = self.file[name]
        start = ds.shape[0]
        if len(values):
            ds.resize(start + len(values), axis=0)
            ds[start:] = values
        return start, len(values)

    def _append_row(self, row: np.ndarray) -> None:
        self.file.flush()  # data first: the row must never point at unflushed bytes
        self._append_to("index", row.reshape(1))
        self.file.flush()

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
        encode_id(case.case_id)  # refuse a bad id before anything is written
        boxes = as_boxes(case.case.boxes)
        blob = meta_blob(case.case.meta)
        nbytes = int(_COMPRESSION_SLACK * case.nbytes) + self._meta_nbytes(blob) + boxes.nbytes
        with self._writing(case.case_id, nbytes):
            self._append_case(case, boxes, blob)

    def _append_case(self, encoded: EncodedCase, boxes: np.ndarray, blob: np.ndarray) -> None:
        images = self.file["images"]
        nz, ny, nx = encoded.shape
        z0 = _align(self._z_end, self.chunks[0])
        new_shape = (z0 + nz, max(images.shape[1], ny), max(images.shape[2], nx))
        # Space after the last committed case was trimmed when the file was opened
        # (chunk-aligned, so whole chunks were freed): the new case lands on fresh chunks.
        for name, chunks in (("images", encoded.images), ("masks", encoded.masks)):
            ds = self.file[name]
            ds.resize(new_shape)
            for (oz, oy, ox), filter_mask, data in chunks:
                ds.id.write_direct_chunk((z0 + oz, oy, ox), data, filter_mask)
        box_span = self._append_to("boxes", boxes)
        meta_span = self._append_to("meta", blob)
        ndim = 2 if self.kind == "slices" else 3
        self._append_row(_case_row(encoded, ndim, z0, box_span, meta_span))
        self._z_end = z0 + nz

    def append_failure(self, case_id: str, reason: str, *, source_hash: str = "", meta: Mapping | None = None) -> None:
        """Record that ``case_id`` failed with ``reason`` (no arrays)."""
        encode_id(case_id)
        blob = meta_blob({**(meta or {}), "error": reason})
        with self._writing(case_id, self._meta_nbytes(blob)):
            meta_span = self._append_to("meta", blob)
            self._append_row(_failure_row(case_id, self.file["boxes"].shape[0], meta_span, source_hash))

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
                fit_to_superblock(self.path)
        finally:
            self._lock.release()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
