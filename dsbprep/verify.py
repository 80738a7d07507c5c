"""Check a dataset file end to end: ``python -m dsbprep.verify DATASET.h5``.

Checks everything the format promises (docs/FORMAT.md): the file's schema
(through :func:`dsbprep.store.open_dataset`), every index row (ranges inside the
arrays, status, split, spacing), that cases do not overlap and start on a chunk
boundary, each case's geometry, its checksum (the image and mask are re-read),
its metadata (a JSON object whose known keys have the right types), its boxes
and foreground points inside the case, and each failed case's reason. Every
problem is reported, per case. Exits 0 when the file is sound, 1 when any
problem was found (each printed), 2 when the file cannot be opened at all.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import DsbprepError
from .store import BOX_COLUMNS, CaseRecord, DsbDataset, case_checksum, open_dataset

__all__ = ["VerifyResult", "verify_dataset", "main"]

#: Tolerance on |det(direction)| - 1: direction cosines are stored as float64 from
#: DICOM's 6-decimal strings, so an orthonormal matrix is within ~1e-5 of it.
DIRECTION_DET_TOLERANCE = 1e-3
#: A stored box centre lies in [-0.5, shape - 0.5) voxels: the rule the build uses to
#: keep a nodule (dsbprep.annotations drops nodules whose centre is outside).
_HALF_VOXEL = 0.5
_CHECKSUM = re.compile(r"[0-9a-f]{32}")
_SIZES = slice(BOX_COLUMNS.index("size_z"), BOX_COLUMNS.index("size_x") + 1)


@dataclass
class VerifyResult:
    """Outcome of :func:`verify_dataset`: every problem, also grouped by case id."""

    cases_checked: int = 0
    failed_rows: int = 0
    problems: list[str] = field(default_factory=list)
    by_case: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, case_id: str | None, problem: str) -> None:
        """Record ``problem`` (of ``case_id``, or of the file when None)."""
        self.problems.append(problem if case_id is None else f"case {case_id!r}: {problem}")
        self.by_case.setdefault(case_id or "", []).append(problem)


def _check_file(ds: DsbDataset, result: VerifyResult) -> None:
    """File-wide promises: arrays alike; every row valid (ranges, cases apart and chunk-aligned)."""
    images, masks = ds.arrays
    if images.shape != masks.shape:
        result.add(None, f"/images {images.shape} and /masks {masks.shape} differ")
    for problem in ds.row_problems.values():
        result.add(problem.case_id, f"row {problem.row}: field {problem.field}: {problem.problem}")


def _geometry_problems(rec: CaseRecord) -> Iterator[str]:
    if not np.all(np.isfinite(rec.origin)):
        yield f"origin {rec.origin} is not finite"
    direction = rec.direction
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1) > DIRECTION_DET_TOLERANCE:
        yield f"direction {direction.tolist()} is not a rotation (|det| != 1)"
    if not all(np.isfinite(s) and s > 0 for s in rec.original_spacing):
        yield f"original_spacing {rec.original_spacing} is not finite and positive"
    if np.any(rec.crop_box[:, 0] > rec.crop_box[:, 1]):
        yield f"crop_box {rec.crop_box.tolist()} has a start after its stop"
    if not _CHECKSUM.fullmatch(rec.checksum):
        yield f"checksum {rec.checksum!r} is not 32 hex digits"
    if rec.label < -1:
        yield f"label {rec.label} is below -1 (none)"


def _content_problems(rec: CaseRecord) -> Iterator[str]:
    """Checksum, boxes and foreground points of a readable case."""
    got = case_checksum(rec.image, rec.mask)
    if got != rec.checksum:
        yield f"checksum {got} != stored {rec.checksum}"
    shape = np.asarray(rec.shape, float)
    boxes = rec.boxes.astype(np.float64)
    for k in np.flatnonzero(~np.all(np.isfinite(boxes), axis=1)):
        yield f"box {k} has non-finite values {boxes[k].tolist()}"
    finite = np.all(np.isfinite(boxes), axis=1)
    outside = finite & np.any((boxes[:, :3] < -_HALF_VOXEL) | (boxes[:, :3] >= shape - _HALF_VOXEL), axis=1)
    for k in np.flatnonzero(outside):
        yield f"box {k} centre {boxes[k, :3].tolist()} is outside the case {rec.shape}"
    for k in np.flatnonzero(finite & np.any(boxes[:, _SIZES] < 0, axis=1)):
        yield f"box {k} has a negative size {boxes[k, _SIZES].tolist()}"
    for label, points in (rec.meta.get("foreground") or {}).items():
        pts = np.asarray(points, np.int64).reshape(-1, 3)
        bad = np.any((pts < 0) | (pts >= np.asarray(rec.shape)), axis=1)
        if bad.any():
            yield f"{int(bad.sum())} foreground point(s) of label {label} outside the case {rec.shape}"


def _check_case(rec: CaseRecord, result: VerifyResult) -> None:
    result.cases_checked += 1
    for problem in _geometry_problems(rec):
        result.add(rec.case_id, problem)
    try:
        for problem in _content_problems(rec):
            result.add(rec.case_id, problem)
    except DsbprepError as err:  # unreadable arrays or metadata: the message names file and case
        result.add(rec.case_id, str(err).split(f"case {rec.case_id!r}: ", 1)[-1])


def verify_dataset(path: str) -> VerifyResult:
    """Verify every case and the index of the dataset at ``path``; every problem is collected.

    Raises
    ------
    DatasetFormatError
        The file cannot be opened as a dsbprep dataset (the message names the field).
    FileNotFoundError
        No such file.
    """
    result = VerifyResult()
    with open_dataset(path) as ds:
        _check_file(ds, result)
        for rec in ds:
            _check_case(rec, result)
        for case_id, reason in ds.failures.items():
            result.failed_rows += 1
            if reason.startswith("(reason unreadable"):
                result.add(case_id, f"failed-case row: {reason}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 sound, 1 problems found, 2 unreadable."""
    p = argparse.ArgumentParser(prog="python -m dsbprep.verify", description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="the HDF5 dataset file")
    args = p.parse_args(argv)
    try:
        result = verify_dataset(args.dataset)
    except (DsbprepError, OSError) as err:
        print(f"dsbprep.verify: {err}", file=sys.stderr)
        return 2
    for problem in result.problems:
        print(f"PROBLEM {problem}")
    status = "OK" if result.ok else f"{len(result.problems)} PROBLEM(S) in {len(result.by_case)} case(s)"
    print(f"{args.dataset}: {status}: {result.cases_checked} cases verified, "
          f"{result.failed_rows} failed-case rows")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
