"""The dsbprep HDF5 dataset format: one append-only, crash-safe, chunked file.

See ``docs/FORMAT.md`` for the full description and the reasons behind it. In
short, a file holds a fixed set of resizable datasets created once:

``/images``  (total_z, Y, X)  every case's volume stacked along z (2-D cases are
             one slice thick), padded in y/x with the file's pad value;
``/masks``   (total_z, Y, X)  uint8 label masks in the same place;
``/boxes``   (n_boxes, len(BOX_COLUMNS))  float32 boxes, ``BOX_COLUMNS``;
``/meta``    (n_bytes,)       uint8, the cases' provenance as UTF-8 JSON, back to back;
``/index``   (n_rows,)        one compound row per case (``INDEX_DTYPE``).

The subpackage's modules:

``format``    the on-disk format: constants, ``INDEX_DTYPE``, ``CaseData``, read limits,
              metadata JSON encoding and its bounded parsing;
``writer``    ``DatasetWriter``: crash-safe, all-or-nothing appends;
``recovery``  the writer's lock file, temporary file, status-flag clearing, full-disk errors;
``schema``    the checks a file and each index row pass before anything reads them;
``reader``    ``open_dataset`` / ``DsbDataset`` / ``CaseRecord``: the one validated read path;
``maskdiff``  a second mask of a case (grt123's beside robust masks) as runs in its meta.

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

from ..encode import (
    COMPRESSORS,
    FOREGROUND_POINTS,
    ChunkSpec,
    EncodedCase,
    case_checksum,
    encode_case,
    foreground_points,
)
from ..errors import DatasetFormatError, StorageFullError
from .format import (
    BOX_COLUMNS,
    DEFAULT_CACHE_BYTES,
    DEFAULT_CACHE_SLOTS,
    DEFAULT_SLICE_CHUNKS,
    DEFAULT_VOLUME_CHUNKS,
    FORMAT_VERSION,
    INDEX_DTYPE,
    SPLITS,
    STATUS_FAILED,
    STATUS_OK,
    CaseData,
    ReadLimits,
    as_boxes,
    empty_boxes,
    parse_meta,
)
from .maskdiff import apply_mask_diff, mask_diff
from .reader import CaseRecord, DsbDataset, open_dataset
from .recovery import FILES_LEFT_OPEN
from .schema import RowProblem
from .writer import RESERVE_MARGIN_BYTES, DatasetWriter

__all__ = [
    "FORMAT_VERSION",
    "INDEX_DTYPE",
    "BOX_COLUMNS",
    "empty_boxes",
    "as_boxes",
    "STATUS_OK",
    "STATUS_FAILED",
    "SPLITS",
    "COMPRESSORS",
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_CACHE_SLOTS",
    "DEFAULT_VOLUME_CHUNKS",
    "DEFAULT_SLICE_CHUNKS",
    "RESERVE_MARGIN_BYTES",
    "FILES_LEFT_OPEN",
    "CaseData",
    "CaseRecord",
    "DatasetWriter",
    "DatasetFormatError",
    "StorageFullError",
    "DsbDataset",
    "ReadLimits",
    "RowProblem",
    "open_dataset",
    "parse_meta",
    "case_checksum",
    "foreground_points",
    "FOREGROUND_POINTS",
    "ChunkSpec",
    "EncodedCase",
    "encode_case",
    "mask_diff",
    "apply_mask_diff",
]
