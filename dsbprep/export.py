"""Export a dsbprep dataset to the files other lung-CT code reads.

``python -m dsbprep.export --format grt123 DATASET.h5 OUTDIR`` writes, per case,
the two files the DSB2017 winners' detector (lfz/DSB2017, "grt123") loads in its
``data.py``:

``<case>_clean.npy``
    uint8, shape (1, z, y, x): the stored (windowed, masked, resampled, cropped)
    lung volume.
``<case>_label.npy``
    float64, shape (n, 4): one row ``z, y, x, diameter`` per nodule, centre in
    stored voxels and diameter in voxels of the stored (~1 mm) grid
    (``diameter_mm`` / mean in-plane stored spacing), as grt123's ``prep.py``
    writes them; ``[[0, 0, 0, 0]]`` for a case without nodules (grt123's marker
    for "no nodule", which its loader turns into an empty label list).

``--format npz`` writes one ``<case>.npz`` per patient as seed 000's pipeline
does (``np.savez_compressed(path, image)``, read back with ``np.load(path)["arr_0"]``):
``arr_0`` is the stored volume, and extra keys carry ``mask``, ``spacing``,
``origin``, ``direction``, ``boxes`` (columns ``box_columns``),
``original_spacing``, ``shape_before_crop`` and ``crop_box``.

Both write each file under a temporary name and rename it into place, so an
interrupted export never leaves a truncated file under its final name.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import DatasetFormatError, DsbprepError
from .store import BOX_COLUMNS, CaseRecord, DsbDataset, open_dataset

__all__ = ["FORMATS", "grt123_label", "export_grt123", "export_npz", "main"]

logger = logging.getLogger(__name__)

#: Export formats of the command line.
FORMATS = ("grt123", "npz")
#: grt123's label for a case without nodules (its data.py drops an all-zero row).
_EMPTY_LABEL = np.zeros((1, 4))
#: Column positions in BOX_COLUMNS.
_CENTER = slice(0, 3)
_DIAMETER = BOX_COLUMNS.index("diameter_mm")
_SIZE_YX = slice(BOX_COLUMNS.index("size_y"), BOX_COLUMNS.index("size_x") + 1)


def grt123_label(boxes: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """grt123 label rows (n, 4) ``z, y, x, diameter_voxels`` from dsbprep boxes.

    Parameters
    ----------
    boxes : ndarray (n, 8)
        Boxes in the stored voxel frame, columns :data:`dsbprep.store.BOX_COLUMNS`.
    spacing : sequence of 3 float
        Stored voxel size (z, y, x) in mm.

    Returns
    -------
    ndarray, float64, (n, 4)
        ``[[0, 0, 0, 0]]`` when there are no boxes. A box without a diameter
        (``diameter_mm`` <= 0) gets the mean of its in-plane sizes in voxels.

    Examples
    --------
    >>> b = np.array([[10, 20, 30, 5, 6, 6, 8.0, 3]], np.float32)
    >>> grt123_label(b, (1.0, 0.8, 0.8)).tolist()
    [[10.0, 20.0, 30.0, 10.0]]
    >>> grt123_label(np.zeros((0, 8)), (1.0, 1.0, 1.0)).tolist()
    [[0.0, 0.0, 0.0, 0.0]]
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, len(BOX_COLUMNS))
    spacing = np.asarray(spacing, float).reshape(3)
    if len(boxes) == 0:
        return _EMPTY_LABEL.copy()
    in_plane = float(spacing[1:].mean())
    diameter = np.where(
        boxes[:, _DIAMETER] > 0, boxes[:, _DIAMETER] / in_plane, boxes[:, _SIZE_YX].mean(axis=1)
    )
    return np.column_stack([boxes[:, _CENTER], diameter])


def _select(ds: DsbDataset, cases: Iterable[str] | None, split: str | None) -> list[CaseRecord]:
    if cases is not None:
        cases = list(cases)
        missing = [c for c in cases if c not in ds and c not in ds.unreadable]
        if missing:
            raise DatasetFormatError(f"{ds.path}: no case(s) {missing} (it holds {len(ds)} cases)")
        records = [ds[c] for c in cases]  # an unreadable case asked for by name: DatasetFormatError
    else:
        records = list(ds.iter_cases())  # unreadable cases skipped, a warning names each
    if split is not None:
        records = [r for r in records if r.split == split]
    return records


def _safe_name(case_id: str, path: str) -> str:
    if not case_id or case_id in (".", "..") or any(ch in case_id for ch in "/\\\0"):
        raise DatasetFormatError(f"{path}: case id {case_id!r} cannot be used as a file name")
    return case_id


def _atomic(path: Path, write) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def export_grt123(
    dataset_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    cases: Iterable[str] | None = None,
    split: str | None = None,
) -> list[Path]:
    """Write grt123's ``<case>_clean.npy`` and ``<case>_label.npy`` for each case.

    Parameters
    ----------
    dataset_path : str or Path
        A dsbprep lung (3-D, uint8) dataset file.
    outdir : str or Path
        Output folder (created when absent); existing files are replaced.
    cases : iterable of str, optional
        Only these case ids (all by default).
    split : {"train", "val", "test"}, optional
        Only the cases of this split.

    Returns
    -------
    list of Path
        The files written, two per case.

    Raises
    ------
    DatasetFormatError
        The file holds 2-D slices or non-uint8 images (grt123 reads the prepared
        uint8 lung volume), or a requested case is absent.

    Examples
    --------
    >>> import tempfile, os
    >>> from dsbprep.store import CaseData, DatasetWriter
    >>> tmp = tempfile.mkdtemp(); h5 = os.path.join(tmp, "lung.h5")
    >>> with DatasetWriter(h5, chunks=(4, 8, 8)) as w:
    ...     w.append(CaseData("p1", np.full((4, 6, 6), 170, np.uint8), np.ones((4, 6, 6), np.uint8)))
    >>> [p.name for p in export_grt123(h5, os.path.join(tmp, "out"))]
    ['p1_clean.npy', 'p1_label.npy']
    """
    outdir = Path(outdir)
    written: list[Path] = []
    with open_dataset(dataset_path) as ds:
        if ds.kind != "volume":
            raise DatasetFormatError(
                f"{ds.path}: holds 2-D {ds.kind!r} cases; the grt123 export needs a 3-D lung CT dataset "
                "(use --format npz for 2-D files)"
            )
        dtype = ds.image_dtype
        if dtype != np.uint8:
            raise DatasetFormatError(
                f"{ds.path}: images are {dtype}, grt123's _clean.npy is the prepared uint8 lung volume "
                "(build the dataset with the lung preprocessing)"
            )
        records = _select(ds, cases, split)
        outdir.mkdir(parents=True, exist_ok=True)
        for rec in records:
            name = _safe_name(rec.case_id, ds.path)
            clean = rec.arrays()[0][np.newaxis]  # checksum-checked: DatasetFormatError if altered
            label = grt123_label(rec.boxes, rec.spacing)
            written.append(
                _atomic(outdir / f"{name}_clean.npy", lambda fh, a=clean: np.save(fh, a))
            )
            written.append(
                _atomic(outdir / f"{name}_label.npy", lambda fh, a=label: np.save(fh, a))
            )
            logger.info(
                "%s: wrote %s %s and %d label rows",
                rec.case_id,
                clean.shape,
                clean.dtype,
                len(label),
            )
    return written


def export_npz(
    dataset_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    cases: Iterable[str] | None = None,
    split: str | None = None,
    compress: bool = True,
) -> list[Path]:
    """Write one ``<case>.npz`` per case in seed 000's layout (``arr_0`` = the volume).

    Keys: ``arr_0`` (image, stored dtype and shape (z, y, x); a 2-D case is (1, y, x)),
    ``mask`` (uint8), ``spacing``, ``origin`` (3,), ``direction`` (3, 3), ``boxes``
    (n, 8) float32 with ``box_columns``, ``original_spacing``, ``shape_before_crop``,
    ``crop_box`` (3, 2). Every key loads without pickle.

    Parameters
    ----------
    dataset_path : str or Path
        A dsbprep dataset file (3-D or 2-D).
    outdir : str or Path
        Output folder (created when absent); existing files are replaced.
    cases, split
        See :func:`export_grt123`.
    compress : bool
        ``np.savez_compressed`` (as seed 000) or plain ``np.savez``.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    DatasetFormatError
        A requested case is absent.

    Examples
    --------
    >>> import tempfile, os
    >>> from dsbprep.store import CaseData, DatasetWriter
    >>> tmp = tempfile.mkdtemp(); h5 = os.path.join(tmp, "lung.h5")
    >>> with DatasetWriter(h5, chunks=(4, 8, 8)) as w:
    ...     w.append(CaseData("p1", np.full((4, 6, 6), 170, np.uint8), np.ones((4, 6, 6), np.uint8)))
    >>> [f] = export_npz(h5, os.path.join(tmp, "out"))
    >>> np.load(f)["arr_0"].shape
    (4, 6, 6)
    """
    outdir = Path(outdir)
    save = np.savez_compressed if compress else np.savez
    written: list[Path] = []
    with open_dataset(dataset_path) as ds:
        records = _select(ds, cases, split)
        outdir.mkdir(parents=True, exist_ok=True)
        for rec in records:
            name = _safe_name(rec.case_id, ds.path)
            image, mask = rec.arrays()  # checksum-checked: DatasetFormatError if altered
            arrays = {
                "arr_0": image,
                "mask": mask,
                "spacing": np.asarray(rec.spacing, float),
                "origin": np.asarray(rec.origin, float),
                "direction": np.asarray(rec.direction, float),
                "boxes": np.asarray(rec.boxes, np.float32),
                "box_columns": np.asarray(BOX_COLUMNS),
                "original_spacing": np.asarray(rec.original_spacing, float),
                "shape_before_crop": np.asarray(rec.shape_before_crop, np.int64),
                "crop_box": np.asarray(rec.crop_box, np.int64),
            }
            written.append(_atomic(outdir / f"{name}.npz", lambda fh, a=arrays: save(fh, **a)))
            logger.info("%s: wrote %s.npz", rec.case_id, name)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dsbprep.export",
        description="Export a dsbprep dataset: grt123's <case>_clean.npy/_label.npy, or one .npz per case.",
    )
    parser.add_argument("--format", choices=FORMATS, required=True, help="output layout")
    parser.add_argument("dataset", help="the dsbprep HDF5 file")
    parser.add_argument("outdir", help="output folder (created when absent)")
    parser.add_argument("--cases", nargs="+", metavar="ID", help="only these case ids")
    parser.add_argument(
        "--split", choices=("train", "val", "test"), help="only the cases of this split"
    )
    parser.add_argument(
        "--no-compress", action="store_true", help="npz: np.savez instead of savez_compressed"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.format == "grt123":
            files = export_grt123(args.dataset, args.outdir, cases=args.cases, split=args.split)
            n_cases = len(files) // 2
        else:
            files = export_npz(
                args.dataset,
                args.outdir,
                cases=args.cases,
                split=args.split,
                compress=not args.no_compress,
            )
            n_cases = len(files)
    except (DsbprepError, FileNotFoundError) as err:
        print(f"dsbprep.export: error: {err}", file=sys.stderr)
        return 1
    print(f"exported {n_cases} case(s) as {args.format} to {args.outdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
