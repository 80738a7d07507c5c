"""The reader: ``open_dataset`` validates a dataset file, then serves its cases.

Nothing is read from a file before :mod:`dsbprep.store.schema` has checked it:
a file-level problem raises :class:`~dsbprep.errors.DatasetFormatError` naming
the file and the field; a bad index row makes only its case unreadable
(:attr:`DsbDataset.unreadable`, with the case, row and field), and the other
cases stay readable. Metadata is parsed on first use, with size and depth
limits. Commands read only through this API (``iter_cases``, ``column``,
``image_dtype``, ``read_region``), never ``ds.file`` or ``ds.index`` directly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  (registers the Blosc filters with HDF5 for readers)
import numpy as np

from ..encode import case_checksum
from ..errors import DatasetFormatError
from . import format as fmt
from .format import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CACHE_SLOTS,
    SPLITS,
    STATUS_FAILED,
    STATUS_OK,
    ReadLimits,
    as_boxes,
    empty_boxes,
    parse_meta,
)
from .schema import check_file, row_problems

__all__ = ["CaseRecord", "DsbDataset", "open_dataset"]

logger = logging.getLogger(__name__)

_SPLIT_NAMES = {v: k for k, v in SPLITS.items()}
#: How long a reader waits for a writer that holds HDF5's file lock while it starts (s).
_LOCKED_WAIT_S = 10.0
#: Pause between two attempts to open a locked file (s).
_LOCKED_RETRY_S = 0.05


class CaseRecord:
    """One stored case; arrays and metadata are read lazily from the file."""

    def __init__(self, dataset: DsbDataset, position: int) -> None:
        self._ds = dataset
        self.position = position
        self.row = row = dataset.index[position]
        self.row_number = int(dataset.rows[position])
        self.case_id: str = dataset.case_ids[position]
        self.shape = tuple(int(s) for s in row["shape"])
        self.ndim = int(row["ndim"])
        self.spacing = tuple(float(s) for s in row["spacing"])
        self.origin = tuple(float(s) for s in row["origin"])
        self.direction = np.array(row["direction"], float)
        self.original_spacing = tuple(float(s) for s in row["original_spacing"])
        self.shape_before_crop = tuple(int(s) for s in row["shape_before_crop"])
        self.crop_box = np.array(row["crop_box"], int)
        self.split = _SPLIT_NAMES.get(int(row["split"]), "")
        self.label = int(row["label"])
        self.n_boxes = int(row["n_boxes"])
        self.checksum = row["checksum"].decode("ascii", "replace")
        self.source_hash = row["source_hash"].decode("utf-8", "replace")
        self._meta: dict | None = None

    def __repr__(self) -> str:
        return f"CaseRecord({self.case_id!r}, shape={self.shape}, spacing={self.spacing})"

    @property
    def image(self) -> np.ndarray:
        """The whole image volume, (z, y, x)."""
        return self._ds._read_case("images", self)

    @property
    def mask(self) -> np.ndarray:
        """The whole label mask, (z, y, x) uint8."""
        return self._ds._read_case("masks", self)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The image and mask, checked against the stored checksum (for exports).

        Raises
        ------
        DatasetFormatError
            The arrays do not match the checksum stored with the case (the data or
            the index row was altered after the case was written).
        """
        image, mask = self.image, self.mask
        if case_checksum(image, mask) != self.checksum:
            raise DatasetFormatError(f"{self._ds.path}: case {self.case_id!r} (row {self.row_number}): "
                                     "field checksum: the stored image and mask do not match it")
        return image, mask

    @property
    def boxes(self) -> np.ndarray:
        """Boxes (n, len(BOX_COLUMNS)) in this case's voxel frame, columns ``BOX_COLUMNS``."""
        if self.n_boxes == 0:
            return empty_boxes()
        start = int(self.row["boxes_start"])
        return as_boxes(self._ds._read_span("boxes", start, self.n_boxes, self.case_id))

    @property
    def meta(self) -> dict:
        """Provenance dictionary stored with the case (parsed once; DatasetFormatError if bad)."""
        if self._meta is None:
            self._meta = self._ds._parse_meta(self.row, self.case_id)
        return self._meta


class DsbDataset:
    """A dsbprep HDF5 file opened for reading and validated (see :func:`open_dataset`).

    Attributes
    ----------
    case_ids : list of str
        The readable stored cases, in file order (the latest row of each id).
    unreadable : dict
        Case id -> message naming the file, case, row and field, for cases whose
        latest row is invalid (or whose metadata turned out unreadable).
    row_problems : dict
        Row number -> :class:`~dsbprep.store.schema.RowProblem` for every invalid row,
        superseded rows included; ``n_rows`` is the number of index rows.
    kind, pad_value, attrs, image_dtype, image_shape
        The file's kind ("volume" or "slices"), pad value, attributes, and the
        dtype and shape of ``/images``.
    """

    def __init__(self, path: str | os.PathLike, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 cache_slots: int = DEFAULT_CACHE_SLOTS, limits: ReadLimits | None = None) -> None:
        self.path = os.fspath(path)
        self.limits = limits or fmt.DEFAULT_LIMITS
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path}: no such dataset file")
        self.file, self.swmr = _open_h5(self.path, cache_bytes, cache_slots)
        try:
            self._sets, self.kind, self.pad_value = check_file(self.file, self.path, self.limits)
            self.attrs = dict(self.file.attrs)
            self._load_index()
        except BaseException:
            self.file.close()
            raise

    def _load_index(self) -> None:
        # Rows first, then the arrays' shapes: a committed row never points past them. In SWMR
        # mode every shape is cached until refreshed, so refresh the arrays after reading rows.
        if self.swmr:
            self._sets["index"].refresh()
        index = self._sets["index"][:]
        if self.swmr:
            for name in ("images", "masks", "boxes", "meta"):
                self._sets[name].refresh()
        extent = {name: ds.shape for name, ds in self._sets.items()}
        ids, problems = row_problems(index, extent, self.image_dtype.itemsize, self.kind, self.limits,
                                     chunk_z=(self.chunks or (1,))[0])
        latest = sorted({cid: i for i, cid in enumerate(ids)}.values())
        self.row_problems = problems  # every row's, superseded rows included (for verify)
        self.n_rows = len(index)
        self.unreadable = {ids[i]: f"{self.path}: {problems[i]}" for i in latest if i in problems}
        good = [i for i in latest if i not in problems]
        ok = [i for i in good if index["status"][i] == STATUS_OK]
        self._failed = [(ids[i], index[i]) for i in good if index["status"][i] == STATUS_FAILED]
        self.index = index[ok]
        self.rows = np.asarray(ok, np.int64)
        self.case_ids = [ids[i] for i in ok]
        self._pos = {cid: i for i, cid in enumerate(self.case_ids)}

    def refresh(self) -> None:
        """See cases appended since opening (SWMR)."""
        self._load_index()

    # -- what commands need ------------------------------------------------------
    @property
    def image_dtype(self) -> np.dtype:
        """dtype of the stored images."""
        return self._sets["images"].dtype

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of ``/images`` (all cases stacked along z, padded to the widest in y and x)."""
        return tuple(int(s) for s in self._sets["images"].shape)

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """Chunk shape of ``/images`` (None when not chunked)."""
        return self._sets["images"].chunks

    @property
    def arrays(self) -> tuple[h5py.Dataset, h5py.Dataset]:
        """``/images`` and ``/masks``, for fast region reads of validated rows (see ``column("z0")``)."""
        return self._sets["images"], self._sets["masks"]

    def column(self, name: str) -> np.ndarray:
        """One index field of every readable case, in ``case_ids`` order (a copy).

        Examples
        --------
        ``ds.column("shape")`` is (n, 3) int; ``ds.column("split")`` the split codes.
        """
        return np.array(self.index[name])

    @property
    def failures(self) -> dict[str, str]:
        """Case id -> reason of every case whose latest row records a failed build."""
        out = {}
        for cid, row in self._failed:
            try:
                out[cid] = str(self._parse_meta(row, cid).get("error", ""))
            except DatasetFormatError as err:
                out[cid] = f"(reason unreadable: {err})"
        return out

    def report_unreadable(self, *, strict: bool = False) -> None:
        """Log a warning naming each unreadable case; with ``strict``, raise instead.

        Raises
        ------
        DatasetFormatError
            ``strict`` and at least one case is unreadable (all are named).
        """
        if strict and self.unreadable:
            raise DatasetFormatError(f"{self.path}: {len(self.unreadable)} unreadable case(s) (--strict): "
                                     + "; ".join(m.split(": ", 1)[1] for m in self.unreadable.values()))
        for message in self.unreadable.values():
            logger.warning("skipping unreadable case: %s", message)

    def iter_cases(self, *, strict: bool = False, check_meta: bool = False) -> Iterator[CaseRecord]:
        """The readable cases; unreadable ones are skipped with a warning (or refused, ``strict``).

        With ``check_meta``, each case's metadata is parsed first, and a case whose
        metadata is unreadable joins :attr:`unreadable` and is skipped the same way.
        """
        self.report_unreadable(strict=strict)
        for position in range(len(self)):
            record = self[position]
            if check_meta:
                try:
                    record.meta  # noqa: B018  (parses and caches it)
                except DatasetFormatError as err:
                    if strict:
                        raise
                    self.unreadable[record.case_id] = str(err)
                    logger.warning("skipping unreadable case: %s", err)
                    continue
            yield record

    # -- mapping of cases --------------------------------------------------------
    def __len__(self) -> int:
        return len(self.case_ids)

    def __iter__(self) -> Iterator[CaseRecord]:
        return (self[i] for i in range(len(self)))

    def __contains__(self, case_id: str) -> bool:
        return case_id in self._pos

    def position(self, case_id: str) -> int:
        """Position of ``case_id`` in ``case_ids`` (DatasetFormatError if it is unreadable)."""
        try:
            return self._pos[case_id]
        except KeyError:
            if case_id in self.unreadable:
                raise DatasetFormatError(self.unreadable[case_id]) from None
            raise KeyError(f"{self.path}: no case {case_id!r}") from None

    def __getitem__(self, key: int | str) -> CaseRecord:
        if isinstance(key, str):
            key = self.position(key)
        n = len(self)
        if not -n <= key < n:
            raise IndexError(f"case index {key} out of range for {n} cases")
        return CaseRecord(self, key % n)

    # -- reading -----------------------------------------------------------------
    def _read_span(self, name: str, start: int, n: int, case_id: str) -> np.ndarray:
        try:
            return self._sets[name][start : start + n]
        except (OSError, ValueError, RuntimeError) as err:
            raise DatasetFormatError(f"{self.path}: case {case_id!r}: cannot read /{name}: {err}") from None

    def _read_case(self, name: str, record: CaseRecord) -> np.ndarray:
        z0 = int(record.row["z0"])
        nz, ny, nx = record.shape
        try:
            return self._sets[name][z0 : z0 + nz, :ny, :nx]
        except (OSError, ValueError, RuntimeError) as err:
            raise DatasetFormatError(f"{self.path}: case {record.case_id!r}: cannot read /{name}: {err}") from None

    def _parse_meta(self, row: np.void, case_id: str) -> dict:
        start, n = int(row["meta_start"]), int(row["meta_len"])
        raw = self._read_span("meta", start, n, case_id).tobytes() if n else b""
        return parse_meta(raw, f"{self.path}: case {case_id!r}", self.limits)

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
        img = np.full(tuple(size), pad, dtype=self.image_dtype)
        msk = np.zeros(tuple(size), np.uint8)
        if np.all(hi > lo):
            src = (slice(z0 + lo[0], z0 + hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
            images, masks = self.arrays
            img[dst] = images[src]
            msk[dst] = masks[src]
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


def _open_h5(path: str, cache_bytes: int, cache_slots: int) -> tuple[h5py.File, bool]:
    """Open ``path`` read-only: normally, or in SWMR-read mode while a writer has it (or died).

    A writer holds HDF5's file lock for a moment while it opens the file and switches to
    SWMR mode; a reader arriving then retries for up to ``_LOCKED_WAIT_S``.
    """
    kwargs = {"rdcc_nbytes": cache_bytes, "rdcc_nslots": cache_slots, "libver": "latest"}
    deadline = time.monotonic() + _LOCKED_WAIT_S
    while True:
        try:
            return _open_once(path, kwargs)
        except BlockingIOError as err:  # "unable to lock file": a writer is starting up
            if time.monotonic() > deadline:
                raise DatasetFormatError(f"{path}: locked by another process: {err}") from err
            time.sleep(_LOCKED_RETRY_S)


def _open_once(path: str, kwargs: dict[str, Any]) -> tuple[h5py.File, bool]:
    try:
        return h5py.File(path, "r", **kwargs), False
    except BlockingIOError:
        raise
    except OSError as err:
        if "truncated file" in str(err):
            raise DatasetFormatError(
                f"{path}: shorter than its HDF5 superblock says (a write failed, e.g. the "
                "disk filled up); run the build on it again (the writer repairs the file), then "
                f"`python -m dsbprep.verify {path}`: {err}"
            ) from err
        if "consistency flags" not in str(err) and "already open" not in str(err):
            raise DatasetFormatError(f"{path}: cannot open as HDF5: {err}") from err
    try:  # a writer is appending (or died): SWMR read sees every committed case
        return h5py.File(path, "r", swmr=True, **kwargs), True
    except BlockingIOError:
        raise
    except OSError as err:
        raise DatasetFormatError(f"{path}: cannot open as HDF5: {err}") from err


def open_dataset(path: str | os.PathLike, **kwargs: Any) -> DsbDataset:
    """Open a dsbprep HDF5 file for reading, after checking its schema and every index row.

    Works while a build is appending to it (HDF5 SWMR): call ``refresh()`` to see
    new cases; a case is visible only once complete.

    Parameters
    ----------
    path : str or Path
        The dataset file.
    cache_bytes, cache_slots : int, optional
        HDF5 chunk cache size and hash slots (patch reads need far more than h5py's 1 MiB).
    limits : ReadLimits, optional
        Largest case, index, metadata accepted (default ``dsbprep.store.format.DEFAULT_LIMITS``).

    Returns
    -------
    DsbDataset
        ``len()``, ``case_ids``, ``ds[i]`` / ``ds["case"]`` -> :class:`CaseRecord`,
        ``iter_cases()``, ``unreadable``, ``failures``, ``column(name)``.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    DatasetFormatError
        Not a dsbprep file, one written by a newer format version, or a file whose
        schema is broken (the message names the file and the field). Cases whose
        index rows are invalid do not raise: they are listed in ``unreadable``.
    """
    return DsbDataset(path, **kwargs)
