"""Score predicted masks against ground truth: ``python -m dsbprep.evaluate PRED GROUND_TRUTH``.

Inputs, both of the same kind:

- two dsbprep HDF5 dataset files: masks are matched by case id (every ground-truth
  case is scored; 2-D cases as 2-D images);
- two NRRD label files (one case), or two folders of NRRD files matched by file name.

Every non-zero label present in either mask is scored (``--labels`` to choose) with
Dice, surface Dice at ``--tolerance_mm`` and the ``--percentile`` Hausdorff distance
(:mod:`dsbprep.metrics`), spacing-aware (the ground truth's spacing; both files must
have the same grid). One line per case and label is printed, then the mean per label
(``inf`` distances are left out of the mean and counted). ``--json`` writes it all.

Exit status: 0 when every ground-truth case was scored, 1 when some are missing from
the prediction or have another shape, 2 on unusable inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import DsbprepError
from .metrics import DEFAULT_PERCENTILE, DEFAULT_TOLERANCE_MM, score_labels

__all__ = ["iter_mask_pairs", "evaluate", "main"]

_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")


def _kind(path: Path) -> str:
    if path.is_dir():
        return "nrrd-folder"
    suffix = path.suffix.lower()
    if suffix in _HDF5_SUFFIXES:
        return "hdf5"
    if suffix in _NRRD_SUFFIXES:
        return "nrrd"
    raise ValueError(
        f"{path}: not an HDF5 dataset (.h5), a NRRD file (.nrrd/.nhdr) or a folder of NRRD files"
    )


def _hdf5_pairs(
    pred: Path, truth: Path
) -> Iterator[tuple[str, np.ndarray | None, np.ndarray, tuple, str]]:
    from .store import open_dataset

    with open_dataset(pred) as dp, open_dataset(truth) as dt:
        for record in dt:
            truth_mask = record.mask
            spacing = record.spacing
            if record.ndim == 2 and truth_mask.shape[0] == 1:
                truth_mask, spacing = truth_mask[0], spacing[1:]
            if record.case_id not in dp:
                yield record.case_id, None, truth_mask, spacing, f"missing from {pred}"
                continue
            pred_mask = dp[record.case_id].mask
            if pred_mask.shape == (1, *truth_mask.shape):
                pred_mask = pred_mask[0]
            yield record.case_id, pred_mask, truth_mask, spacing, ""


def _nrrd_pair(
    pred: Path, truth: Path, case_id: str
) -> tuple[str, np.ndarray | None, np.ndarray, tuple, str]:
    from .io.nrrd import read_nrrd_volume
    from .io.volume import check_alignment

    t = read_nrrd_volume(truth)
    if not pred.exists():
        return case_id, None, t.array, t.spacing, f"missing: {pred}"
    p = read_nrrd_volume(pred)
    check_alignment(t, p)
    tm, pm, spacing = t.array, p.array, t.spacing
    if tm.shape[0] == 1:
        tm, pm, spacing = tm[0], pm[0], spacing[1:]
    return case_id, pm, tm, spacing, ""


def iter_mask_pairs(
    pred: str | os.PathLike, truth: str | os.PathLike
) -> Iterator[tuple[str, np.ndarray | None, np.ndarray, tuple, str]]:
    """Yield ``(case_id, pred_mask or None, truth_mask, spacing, problem)`` per ground-truth case.

    Raises
    ------
    ValueError
        The two inputs are not of the same supported kind.
    FileNotFoundError
        An input does not exist.
    """
    pred, truth = Path(pred), Path(truth)
    for path in (pred, truth):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
    kind = _kind(truth)
    if _kind(pred) != kind:
        raise ValueError(
            f"{pred} and {truth} must be of the same kind (both HDF5, NRRD files or folders)"
        )
    if kind == "hdf5":
        yield from _hdf5_pairs(pred, truth)
    elif kind == "nrrd":
        yield _nrrd_pair(pred, truth, truth.name)
    else:
        for t in sorted(p for p in truth.iterdir() if p.suffix.lower() in _NRRD_SUFFIXES):
            yield _nrrd_pair(pred / t.name, t, t.name)


def evaluate(
    pred: str | os.PathLike,
    truth: str | os.PathLike,
    *,
    labels: list[int] | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    percentile: float = DEFAULT_PERCENTILE,
) -> dict:
    """Score every ground-truth case; returns ``{"cases": {...}, "problems": {...}, "mean": {...}}``.

    ``cases[case_id][label]`` is :meth:`SegmentationScores.to_dict`; ``mean[label]`` holds the
    mean Dice and surface Dice over the cases and the mean Hausdorff distance over those where
    it is finite (``n_infinite`` counts the others).

    Examples
    --------
    >>> evaluate("pred.h5", "truth.h5")["mean"]  # doctest: +SKIP
    {'1': {'dice': 0.97, 'surface_dice': 0.91, 'hausdorff': 2.1, 'n_cases': 3, 'n_infinite': 0}}
    """
    cases: dict[str, dict[str, dict]] = {}
    problems: dict[str, str] = {}
    for case_id, pm, tm, spacing, problem in iter_mask_pairs(pred, truth):
        if problem:
            problems[case_id] = problem
            continue
        if pm.shape != tm.shape:
            problems[case_id] = f"prediction shape {pm.shape} vs ground truth {tm.shape}"
            continue
        scores = score_labels(
            pm, tm, spacing, labels=labels, tolerance_mm=tolerance_mm, percentile=percentile
        )
        cases[case_id] = {str(k): v.to_dict() for k, v in scores.items()}
    mean: dict[str, dict] = {}
    for label in sorted({k for c in cases.values() for k in c}, key=int):
        rows = [c[label] for c in cases.values() if label in c]
        finite = [r["hausdorff"] for r in rows if math.isfinite(r["hausdorff"])]
        mean[label] = {
            "dice": float(np.mean([r["dice"] for r in rows])),
            "surface_dice": float(np.mean([r["surface_dice"] for r in rows])),
            "hausdorff": float(np.mean(finite)) if finite else float("inf"),
            "n_cases": len(rows),
            "n_infinite": len(rows) - len(finite),
        }
    return {
        "pred": str(pred),
        "truth": str(truth),
        "tolerance_mm": tolerance_mm,
        "percentile": percentile,
        "cases": cases,
        "problems": problems,
        "mean": mean,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dsbprep.evaluate",
        description="Dice, surface Dice and percentile Hausdorff distance of predicted masks per case.",
    )
    p.add_argument(
        "pred", help="predicted masks: dsbprep HDF5 file, NRRD file or folder of NRRD files"
    )
    p.add_argument("ground_truth", help="ground truth, same kind as PRED")
    p.add_argument(
        "--tolerance_mm",
        type=float,
        default=DEFAULT_TOLERANCE_MM,
        help=f"surface Dice tolerance in mm (default {DEFAULT_TOLERANCE_MM})",
    )
    p.add_argument(
        "--percentile",
        type=float,
        default=DEFAULT_PERCENTILE,
        help=f"Hausdorff distance percentile (default {DEFAULT_PERCENTILE:g})",
    )
    p.add_argument(
        "--labels", default=None, help="comma-separated labels to score (default: all present)"
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        labels = [int(v) for v in args.labels.split(",")] if args.labels else None
        result = evaluate(
            args.pred,
            args.ground_truth,
            labels=labels,
            tolerance_mm=args.tolerance_mm,
            percentile=args.percentile,
        )
    except (DsbprepError, FileNotFoundError, ValueError) as err:
        print(f"dsbprep.evaluate: error: {err}", file=sys.stderr)
        return 2
    hd = f"HD{args.percentile:g}_mm"
    print(
        f"{'case':<40} {'label':>5} {'dice':>7} {'surf_dice':>9} {hd:>10} {'pred_vox':>9} {'true_vox':>9}"
    )
    for case_id, labels_scores in result["cases"].items():
        for label, s in labels_scores.items():
            print(
                f"{case_id:<40} {label:>5} {s['dice']:7.4f} {s['surface_dice']:9.4f} {s['hausdorff']:10.3f} "
                f"{s['pred_voxels']:9d} {s['truth_voxels']:9d}"
            )
    for label, m in result["mean"].items():
        print(
            f"{'mean of ' + str(m['n_cases']) + ' cases':<40} {label:>5} {m['dice']:7.4f} "
            f"{m['surface_dice']:9.4f} {m['hausdorff']:10.3f}"
            + (f"  ({m['n_infinite']} infinite HD left out)" if m["n_infinite"] else "")
        )
    for case_id, problem in result["problems"].items():
        print(f"NOT SCORED {case_id}: {problem}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))  # inf is written as Infinity
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
