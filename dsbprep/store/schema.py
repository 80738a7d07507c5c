"""Validation of a dataset file before anything reads it: the file's schema and every index row.

:func:`check_file` raises :class:`~dsbprep.errors.DatasetFormatError` (naming the
file and the field) when the file as a whole cannot be read: a missing dataset or
attribute, a wrong rank or dtype (the index dtype must equal ``INDEX_DTYPE``
exactly), external storage, a virtual dataset, a soft or external link, more
index rows than the limit. :func:`row_problems` checks every index row against
the arrays it points into (vectorised) and returns, per bad row, the first field
that is wrong: that case becomes unreadable while the others stay readable.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from ..errors import DatasetFormatError
from .format import (
    BOX_COLUMNS,
    DATASETS,
    INDEX_DTYPE,
    SPLITS,
    STATUS_FAILED,
    STATUS_OK,
    ReadLimits,
    box_columns_of,
    check_version,
)

__all__ = ["RowProblem", "check_file", "decode_ids", "row_problems", "KINDS"]

#: The ``kind`` attribute's values.
KINDS = ("volume", "slices")


@dataclass(frozen=True)
class RowProblem:
    """Why one index row cannot be read: its row number, case id and the field to blame."""

    row: int
    case_id: str
    field: str
    problem: str

    def __str__(self) -> str:
        return f"case {self.case_id!r} (row {self.row}): field {self.field}: {self.problem}"


def _fail(path: str, field: str, problem: str) -> DatasetFormatError:
    return DatasetFormatError(f"{path}: {field}: {problem}")


def _check_dataset(f: h5py.File, name: str, path: str) -> h5py.Dataset:
    link = f.get(name, getlink=True)
    if link is None:
        raise _fail(path, f"/{name}", "missing")
    if not isinstance(link, h5py.HardLink):
        what = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
        raise _fail(path, f"/{name}", f"is {what} (refused: links can reach outside the file)")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise _fail(path, f"/{name}", f"is a {type(ds).__name__}, not a dataset")
    if ds.is_virtual:
        raise _fail(path, f"/{name}", "is a virtual dataset (refused: it maps other files)")
    if ds.external:
        raise _fail(path, f"/{name}", "has external storage (refused: it reads other files)")
    plist = ds.id.get_create_plist()
    for k in range(plist.get_nfilters()):
        code, _flags, _values, label = plist.get_filter(k)
        if not h5py.h5z.filter_avail(code):
            raise _fail(path, f"/{name}", f"needs HDF5 filter {code} ({label.decode(errors='replace')}), "
                        "which is not available here (hdf5plugin provides the Blosc ones)")
    rank = DATASETS[name][0]
    if ds.ndim != rank:
        raise _fail(path, f"/{name}", f"has rank {ds.ndim} {ds.shape}, expected {rank}")
    return ds


def _check_dtypes(sets: dict[str, h5py.Dataset], path: str, columns: tuple[str, ...] = BOX_COLUMNS) -> None:
    image = sets["images"].dtype
    if image.kind not in "iuf" or image.fields is not None or image.shape or image.itemsize > 8:
        raise _fail(path, "/images", f"dtype {image} is not a numeric image dtype")
    expected = {"masks": np.dtype("u1"), "boxes": np.dtype("f4"), "meta": np.dtype("u1")}
    for name, dtype in expected.items():
        if sets[name].dtype != dtype:
            raise _fail(path, f"/{name}", f"dtype {sets[name].dtype}, expected {dtype}")
    if sets["index"].dtype != INDEX_DTYPE:
        got = sets["index"].dtype
        extra = [n for n in got.names or () if n not in INDEX_DTYPE.names]
        missing = [n for n in INDEX_DTYPE.names if n not in (got.names or ())]
        raise _fail(path, "/index", f"dtype is not this format's INDEX_DTYPE (extra fields {extra}, "
                    f"missing {missing}, {got.itemsize} bytes per row instead of {INDEX_DTYPE.itemsize})")
    if sets["boxes"].shape[1] != len(columns):
        raise _fail(path, "/boxes", f"has {sets['boxes'].shape[1]} columns, expected "
                    f"{len(columns)} ({', '.join(columns)})")


def _check_attrs(attrs: h5py.AttributeManager, path: str) -> tuple[str, float]:
    check_version(attrs, path)
    kind = attrs.get("kind")
    kind = kind.decode("utf-8", "replace") if isinstance(kind, bytes) else kind
    if not isinstance(kind, str) or kind not in KINDS:
        raise _fail(path, "attribute kind", f"{kind!r} is not one of {KINDS}")
    pad = np.asarray(attrs.get("pad_value", np.nan))
    if pad.ndim != 0 or pad.dtype.kind not in "iufb" or not np.isfinite(pad):
        raise _fail(path, "attribute pad_value", f"{pad.tolist()!r} is not a finite number")
    return kind, float(pad)


def check_file(f: h5py.File, path: str, limits: ReadLimits) -> tuple[dict[str, h5py.Dataset], str, float]:
    """Check the schema of an open dataset file; returns its datasets, ``kind`` and pad value.

    Parameters
    ----------
    f : h5py.File
        The open file.
    path : str
        Its path, for messages.
    limits : ReadLimits
        The most index rows accepted.

    Raises
    ------
    DatasetFormatError
        The first file-level problem found, naming the file and the field.
    """
    kind, pad = _check_attrs(f.attrs, path)
    sets = {name: _check_dataset(f, name, path) for name in DATASETS}
    _check_dtypes(sets, path, box_columns_of(f.attrs))
    dtype = sets["images"].dtype
    if dtype.kind in "iu" and not (pad.is_integer() and np.iinfo(dtype).min <= pad <= np.iinfo(dtype).max):
        raise _fail(path, "attribute pad_value", f"{pad!r} is not a value of the images' dtype {dtype}")
    if sets["index"].shape[0] > limits.max_index_rows:
        raise _fail(path, "/index", f"{sets['index'].shape[0]} rows, more than the limit of "
                    f"{limits.max_index_rows}")
    return sets, kind, pad


def decode_ids(raw_ids: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Case ids as text (undecodable bytes shown as ``\\xNN``) and which ids are valid UTF-8."""
    ids, valid = [], np.ones(len(raw_ids), bool)
    for i, raw in enumerate(raw_ids.tolist()):
        try:
            ids.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            ids.append(raw.decode("utf-8", "backslashreplace"))
            valid[i] = False
    valid &= np.asarray([bool(c) for c in ids], bool)
    return ids, valid


def _range_checks(rows: np.ndarray, extent: dict[str, tuple[int, ...]], itemsize: int,
                  limits: ReadLimits, kind: str) -> list[tuple[str, np.ndarray, str]]:
    """(field, bad-row mask, problem) for the array geometry of stored cases.

    Sums are written as differences (``z0 > len - nz``) so that no int64 overflows.
    """
    z0 = rows["z0"].astype(np.int64)
    shape = rows["shape"].astype(np.int64)
    stored = np.minimum(extent["images"], extent["masks"])
    nbytes = np.prod(shape.astype(np.float64), axis=1) * (itemsize + 1)  # image + uint8 mask
    ndim = 2 if kind == "slices" else 3
    return [
        ("ndim", rows["ndim"] != ndim, f"is not {ndim} (the file holds {kind})"),
        ("shape", np.any(shape < 1, axis=1), "has a size below 1"),
        ("shape", (shape[:, 0] != 1) & (kind == "slices"), "is more than one slice in a slices file"),
        ("z0", z0 < 0, "is negative"),
        ("z0", z0 > stored[0] - shape[:, 0], f"z0 + shape[0] is past the end of /images ({stored[0]} slices)"),
        ("shape", shape[:, 1] > stored[1], f"height is more than the stored {stored[1]}"),
        ("shape", shape[:, 2] > stored[2], f"width is more than the stored {stored[2]}"),
        ("shape", nbytes > limits.max_case_bytes, f"image and mask are more than the limit of {limits.max_case_bytes} bytes"),
        ("spacing", ~np.all(np.isfinite(rows["spacing"]) & (rows["spacing"] > 0), axis=1),
         "is not finite and positive"),
    ]


def _span_checks(rows: np.ndarray, extent: dict[str, tuple[int, ...]],
                 limits: ReadLimits) -> list[tuple[str, np.ndarray, str]]:
    """(field, bad-row mask, problem) for the boxes and meta ranges of a row."""
    checks = []
    for name, start, count, most in (("boxes", "boxes_start", "n_boxes", limits.max_case_boxes),
                                     ("meta", "meta_start", "meta_len", limits.max_meta_bytes)):
        a, n = rows[start].astype(np.int64), rows[count].astype(np.int64)
        checks += [
            (start, a < 0, "is negative"),
            (count, n < 0, "is negative"),
            (count, n > most, f"is more than the limit of {most}"),
            (count, a > extent[name][0] - n, f"{start} + {count} is past the end of /{name} "
             f"({extent[name][0]})"),
        ]
    return checks


def _overlaps(index: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Rows among ``live`` whose z range overlaps another's (both are marked)."""
    rows = np.flatnonzero(live)
    bad = np.zeros(len(index), bool)
    if len(rows) < 2:
        return bad
    z0 = index["z0"][rows].astype(np.int64)
    order = np.argsort(z0, kind="stable")
    starts, ends = z0[order], z0[order] + index["shape"][rows[order], 0]
    reach = np.maximum.accumulate(ends)  # furthest end among the rows before each
    for k in np.flatnonzero(starts[1:] < reach[:-1]) + 1:
        bad[rows[order[k]]] = True
        bad[rows[order[int(np.argmax(ends[:k]))]]] = True
    return bad


def row_problems(index: np.ndarray, extent: dict[str, tuple[int, ...]], itemsize: int,
                 kind: str, limits: ReadLimits, chunk_z: int = 1) -> tuple[list[str], dict[int, RowProblem]]:
    """Check every index row against the arrays; returns the case ids and the bad rows.

    Parameters
    ----------
    index : ndarray of INDEX_DTYPE
        The rows.
    extent : dict
        Shape of each dataset (``images``, ``masks``, ``boxes``, ``meta``).
    itemsize : int
        Bytes per image voxel (for the size limit).
    kind : {"volume", "slices"}
        The file's kind.
    limits : ReadLimits
        Size limits.
    chunk_z : int
        Chunk depth of ``/images``: every case starts on a chunk boundary.

    Returns
    -------
    ids : list of str
        Each row's case id (bytes that are not UTF-8 shown as ``\\xNN``).
    problems : dict
        Row number -> the first :class:`RowProblem` of that row; rows not listed are readable.
    """
    ids, valid = decode_ids(index["case_id"])
    ok = index["status"] == STATUS_OK
    checks = [
        ("case_id", ~valid, "is empty or not UTF-8"),
        ("status", ~np.isin(index["status"], (STATUS_OK, STATUS_FAILED)), "is not 0 (ok) or 1 (failed)"),
        ("split", ok & ~np.isin(index["split"], list(SPLITS.values())),
         f"is not one of {sorted(SPLITS.values())}"),
    ]
    checks += [(f, bad & ok, p) for f, bad, p in _range_checks(index, extent, itemsize, limits, kind)]
    checks += _span_checks(index, extent, limits)
    checks.append(("z0", ok & (index["z0"] % max(1, chunk_z) != 0), f"is not a multiple of the chunk depth {chunk_z}"))
    problems: dict[int, RowProblem] = {}
    for field, bad, problem in checks:
        for i in np.flatnonzero(bad).tolist():
            if i not in problems:
                problems[i] = RowProblem(i, ids[i], field, problem)
    live = ok & ~np.isin(np.arange(len(index)), list(problems))
    for i in np.flatnonzero(_overlaps(index, live)).tolist():
        problems[i] = RowProblem(i, ids[i], "z0", "its rows of /images overlap another case's")
    return ids, problems
