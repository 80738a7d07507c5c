"""Check a dataset file end to end: ``python -m dsbprep.verify DATASET.h5``.

Re-reads every stored case, recomputes its checksum, and checks the index
against the arrays: format version, row fields, z ranges inside ``/images`` and
not overlapping, boxes and meta ranges inside their datasets, meta that parses.
Exits 0 when the file is sound, 1 when any problem was found (each printed),
2 when the file cannot be opened at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

import numpy as np

from .errors import DsbprepError
from .store import STATUS_FAILED, STATUS_OK, case_checksum, open_dataset

__all__ = ["VerifyResult", "verify_dataset", "main"]


@dataclass
class VerifyResult:
    """Outcome of :func:`verify_dataset`."""

    cases_checked: int = 0
    failed_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dataset(path: str) -> VerifyResult:
    """Verify every case and the index of the dataset at ``path``.

    Raises
    ------
    DatasetFormatError
        The file is not a dsbprep dataset, or its format version is newer.
    """
    result = VerifyResult()
    with open_dataset(path) as ds:
        f = ds.file
        images, masks = f["images"], f["masks"]
        index = f["index"][:]
        n_boxes, n_meta = f["boxes"].shape[0], f["meta"].shape[0]
        if images.shape != masks.shape:
            result.problems.append(f"/images {images.shape} and /masks {masks.shape} differ")
        spans = []
        for i, row in enumerate(index):
            cid = row["case_id"].decode("utf-8", "replace")
            where = f"row {i} ({cid!r})"
            if row["status"] not in (STATUS_OK, STATUS_FAILED):
                result.problems.append(f"{where}: unknown status {row['status']}")
                continue
            b0, nb = int(row["boxes_start"]), int(row["n_boxes"])
            if nb < 0 or b0 < 0 or b0 + nb > n_boxes:
                result.problems.append(f"{where}: boxes [{b0}, {b0 + nb}) outside /boxes ({n_boxes})")
            m0, nm = int(row["meta_start"]), int(row["meta_len"])
            if nm < 0 or m0 < 0 or m0 + nm > n_meta:
                result.problems.append(f"{where}: meta [{m0}, {m0 + nm}) outside /meta ({n_meta})")
            else:
                try:
                    json.loads(f["meta"][m0 : m0 + nm].tobytes() or b"{}")
                except ValueError as err:
                    result.problems.append(f"{where}: meta is not valid JSON: {err}")
            if row["status"] == STATUS_FAILED:
                result.failed_rows += 1
                continue
            z0, shape = int(row["z0"]), tuple(int(s) for s in row["shape"])
            if min(shape) < 1 or z0 < 0 or z0 + shape[0] > images.shape[0] or shape[1] > images.shape[1] \
                    or shape[2] > images.shape[2]:
                result.problems.append(f"{where}: shape {shape} at z0 {z0} outside /images {images.shape}")
                continue
            if np.any(np.asarray(row["spacing"]) <= 0):
                result.problems.append(f"{where}: non-positive spacing {row['spacing'].tolist()}")
            spans.append((z0, z0 + shape[0], where))
        spans.sort()
        for (_a0, a1, wa), (b0_, _b1, wb) in zip(spans, spans[1:], strict=False):
            if b0_ < a1:
                result.problems.append(f"{wa} and {wb} overlap in /images rows")
        for rec in ds:
            result.cases_checked += 1
            got = case_checksum(rec.image, rec.mask)
            if got != rec.checksum:
                result.problems.append(f"case {rec.case_id!r}: checksum {got} != stored {rec.checksum}")
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
    status = "OK" if result.ok else f"{len(result.problems)} PROBLEM(S)"
    print(f"{args.dataset}: {status}: {result.cases_checked} cases verified, "
          f"{result.failed_rows} failed-case rows")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
