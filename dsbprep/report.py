"""A visual QA report of a dsbprep dataset: one HTML page and the PNGs it shows.

``python -m dsbprep.report DATASET.h5 [--out report/]`` writes

* ``index.html`` - self-contained (inline CSS, no scripts, nothing fetched from the
  network; the PNGs are files next to it, so the folder can be copied or zipped): the
  build's summary (cases, failures with their reasons, spacing and shape statistics,
  lung volume in litres per case with outliers flagged) and one figure per case, the
  **suspicious cases first**;
* ``cases/<case>.png`` - for 3-D files, a montage of axial slices spread over the
  lungs (every nodule's centre slice included) plus one coronal and one sagittal view,
  with the left/right lung outlines (green = left, orange = right) and the nodule
  boxes (red) drawn by :mod:`dsbprep.viz` - for a case built with ``[segmentation]
  method = robust`` also grt123's outline, dashed cyan under the robust one, so it
  shows where the methods differ; for 2-D files, ``sheets/sheet_NNN.png``
  grids of slices with their mask outlines;
* ``summary.json`` - the same summary for machines.

What is flagged (each rule a named threshold below, severity in brackets): a case
with only one lung found [3], a total lung volume below 1 L [3] or above 8 L [2], one
lung more than twice the other [2], an empty mask [3 for lung files], a total lung
volume that is a robust outlier of the dataset (more than 3.5 scaled MADs from the
median, with at least 5 cases) [1], loader warnings [1], a lung mask holding a tube
of air at the top (airway leak) [2], a lung whose robust volume differs from grt123's
by more than 5 % and 50 mL (cases built with ``method = robust``) [2]; for 2-D files a
mask covering more than half of the image [2]. Cases sort by the sum of their severities.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .store import DsbDataset, open_dataset

__all__ = [
    "CaseSummary",
    "DatasetSummary",
    "LUNG_OUTLIER_MADS",
    "MAX_LUNG_RATIO",
    "MAX_MASK_FRACTION",
    "MAX_TOTAL_LUNG_L",
    "METHOD_DIFF_FRACTION",
    "METHOD_DIFF_ML",
    "MIN_CASES_FOR_OUTLIERS",
    "MIN_TOTAL_LUNG_L",
    "lung_flags",
    "airway_leak_flags",
    "main",
    "method_flags",
    "outlier_flags",
    "summarize_dataset",
    "write_report",
]

logger = logging.getLogger(__name__)

# --- flag thresholds ------------------------------------------------------------------------
#: Total lung volume (both lungs) below this, litres, is suspicious: an adult chest CT holds
#: 3-7 L of lung; less means a missed lung, a partial scan or a failed segmentation (issue 8).
MIN_TOTAL_LUNG_L = 1.0
#: Above this, litres: beyond adult total lung capacity (about 6-7 L) - body or outside air
#: was probably included (grt123's own per-component upper limit is 7.5 L).
MAX_TOTAL_LUNG_L = 8.0
#: Larger lung / smaller lung volume above this is suspicious: the right lung is normally only
#: 10-20 % larger than the left, so a factor 2 means a bad split or a collapsed lung.
MAX_LUNG_RATIO = 2.0
#: A total volume further than this many scaled MADs (1.4826 x median absolute deviation,
#: the robust standard deviation) from the dataset's median is an outlier.
LUNG_OUTLIER_MADS = 3.5
#: ... tested only when the dataset has at least this many cases with a lung volume.
MIN_CASES_FOR_OUTLIERS = 5
#: 2-D files: a mask covering more than this fraction of its image is suspicious (the seed's
#: contour reader rejects polygons larger than half the image as corrupt).
MAX_MASK_FRACTION = 0.5
#: Airway leak: air below this HU inside the lung mask ...
AIRWAY_AIR_HU = -950.0
#: ... in the top this-many mm of the lungs ...
AIRWAY_TOP_MM = 40.0
#: ... of trachea cross-section (mm^2, 10 mm across) within this of the lungs' centre (mm) ...
AIRWAY_MIN_AREA_MM2 = 80.0
AIRWAY_MIDLINE_MM = 30.0
#: ... over this many mm of slices is flagged: grt123's masks can hold the trachea.
AIRWAY_TUBE_MM = 20.0
#: Lung volume between methods (cases built with ``method = robust``, which records grt123's
#: volumes too): one lung's robust volume differing from grt123's by more than this
#: fraction of grt123's ... On normal lungs the two differ by 1-3 % (LIDC-IDRI-0001: +1.6 %
#: left, +2.3 % right: airway walls out, hilar vessels in), so 5 % is twice that: pathology
#: grt123 cut out (a 45 x 45 mm band of posterior consolidation adds 7-10 %), a large airway
#: leak, or one of the methods failing.
METHOD_DIFF_FRACTION = 0.05
#: ... and by at least this many mL (a 45 mm ball), so that a small or partial lung is not
#: flagged for its airway wall alone (the robust method removes 25-60 mL of airway).
METHOD_DIFF_ML = 50.0
#: MAD -> standard deviation of a normal distribution.
_MAD_TO_SD = 1.4826

#: Severities: 3 = almost surely wrong, 2 = look at it, 1 = worth knowing.
_SEVERE, _WARN, _INFO = 3, 2, 1
#: Default axial slices per montage and 2-D tiles per sheet.
DEFAULT_AXIAL_SLICES = 12
DEFAULT_SHEET_TILES = 24
_SHEET_COLUMNS = 6
_ML_PER_L = 1000.0
_MM3_PER_L = 1e6


@dataclass
class CaseSummary:
    """What the report knows about one stored case.

    ``left_l``/``right_l`` are litres (from the segmentation's meta of lung files, else
    counted from the stored mask's labels 1 and 2 of a 3-D file; None for 2-D files).
    ``flags`` are ``(severity, text)`` pairs; ``severity`` is their sum. ``method`` is the
    segmentation method of a lung file's case (meta ``segmentation_method``, '' when not
    recorded); ``grt123_left_l``/``grt123_right_l`` are grt123's volumes of a case built
    with ``method = robust`` (litres), ``grt123_outline`` whether its meta holds grt123's
    mask (meta ``grt123_mask_diff``) for the figures.
    """

    case_id: str
    position: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    original_spacing: tuple[float, float, float]
    split: str
    n_boxes: int
    lungs_found: int | None = None
    left_l: float | None = None
    right_l: float | None = None
    volume_from: str = ""
    method: str = ""
    grt123_left_l: float | None = None
    grt123_right_l: float | None = None
    grt123_outline: bool = False
    mask_fraction: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    note: str = ""
    flags: list[tuple[int, str]] = field(default_factory=list)

    @property
    def total_l(self) -> float | None:
        """Both lungs, litres (None when unknown)."""
        if self.left_l is None or self.right_l is None:
            return None
        return self.left_l + self.right_l

    @property
    def severity(self) -> int:
        """Sum of the flags' severities (0 = nothing suspicious)."""
        return sum(s for s, _ in self.flags)


@dataclass
class DatasetSummary:
    """A dataset file's summary: attributes, cases (suspicious first), failures, statistics."""

    path: str
    kind: str
    source: str
    attrs: dict[str, Any]
    cases: list[CaseSummary]
    failures: dict[str, str]
    stats: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what ``summary.json`` holds)."""
        cases = []
        for c in self.cases:
            d = asdict(c)
            d["total_l"] = c.total_l
            d["severity"] = c.severity
            d["flags"] = [{"severity": s, "text": t} for s, t in c.flags]
            cases.append(d)
        return {
            "path": self.path,
            "kind": self.kind,
            "source": self.source,
            "attrs": {k: v for k, v in self.attrs.items() if k != "config"},
            "n_cases": len(self.cases),
            "n_failed": len(self.failures),
            "failures": self.failures,
            "stats": self.stats,
            "cases": cases,
        }


def lung_flags(
    left_l: float | None,
    right_l: float | None,
    lungs_found: int | None = None,
    *,
    min_total_l: float = MIN_TOTAL_LUNG_L,
    max_total_l: float = MAX_TOTAL_LUNG_L,
    max_ratio: float = MAX_LUNG_RATIO,
) -> list[tuple[int, str]]:
    """Flags of one case's lung volumes.

    Parameters
    ----------
    left_l, right_l : float or None
        Lung volumes in litres (None: unknown, no volume flags).
    lungs_found : int, optional
        Lungs the segmentation found (``meta["lungs_found"]``): < 2 is flagged.
    min_total_l, max_total_l : float
        Plausible range of the total lung volume, litres.
    max_ratio : float
        Largest accepted larger/smaller lung volume ratio.

    Returns
    -------
    list of (severity, text)

    Examples
    --------
    >>> lung_flags(1.7, 1.9)
    []
    >>> lung_flags(0.3, 0.4)
    [(3, 'total lung volume 0.70 L < 1 L')]
    >>> [t for _, t in lung_flags(2.0, 0.0, lungs_found=1)]
    ['only 1 lung found', 'right lung empty']
    """
    flags: list[tuple[int, str]] = []
    if lungs_found is not None and lungs_found < 2:
        flags.append((_SEVERE, f"only {lungs_found} lung{'s' if lungs_found != 1 else ''} found"))
    if left_l is None or right_l is None:
        return flags
    total = left_l + right_l
    if total <= 0:
        flags.append((_SEVERE, "empty lung mask"))
        return flags
    for name, volume in (("left", left_l), ("right", right_l)):
        if volume <= 0:
            flags.append((_SEVERE if lungs_found is None else _WARN, f"{name} lung empty"))
    if total < min_total_l:
        flags.append((_SEVERE, f"total lung volume {total:.2f} L < {min_total_l:g} L"))
    elif total > max_total_l:
        flags.append((_WARN, f"total lung volume {total:.2f} L > {max_total_l:g} L"))
    small, large = sorted((left_l, right_l))
    if small > 0 and large / small > max_ratio:
        bigger = "left" if left_l > right_l else "right"
        flags.append((_WARN, f"{bigger} lung {large / small:.1f}x the other (> {max_ratio:g})"))
    return flags


def airway_leak_flags(
    image: np.ndarray,
    mask: np.ndarray,
    spacing,
    meta: dict | None = None,
    *,
    air_hu: float = AIRWAY_AIR_HU,
    top_mm: float = AIRWAY_TOP_MM,
    min_tube_mm: float = AIRWAY_TUBE_MM,
) -> list[tuple[int, str]]:
    """Flag a lung mask that holds a tube of air at the top: the trachea.

    In the top ``top_mm`` of the lungs, slices where the mask holds a region of air
    (below ``air_hu``) of trachea cross-section (at least ``AIRWAY_MIN_AREA_MM2``, less
    than half the slice's lung) within ``AIRWAY_MIDLINE_MM`` of the lungs' left-right
    centre are counted; ``min_tube_mm`` of
    such slices is a flag (``segment_lungs(method="robust")`` removes the airways).

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (z, y, x) stored image, z ascending (superior last), windowed with ``window``.
    mask : numpy.ndarray
        (z, y, x) labels, > 0 = lung.
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    meta : dict, optional
        The case's meta; its ``parameters.preprocess.window`` (HU mapped to 0..255) gives
        the uint8 level of ``air_hu`` (default window -1200..600).

    Returns
    -------
    list of (severity, text)

    Examples
    --------
    >>> image = np.full((30, 40, 40), 100, np.uint8); mask = np.zeros(image.shape, np.uint8)
    >>> mask[:, 5:35, 5:35] = 1; image[:, 15:25, 15:25] = 0  # a 10 mm tube of air in it
    >>> airway_leak_flags(image, mask, (2.0, 1.0, 1.0))
    [(2, 'lung mask holds a tube of air at the top over 42 mm (airway leak)')]
    """
    from scipy import ndimage

    lungs = np.asarray(mask) > 0
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    if zs.size == 0:
        return []
    xs = np.flatnonzero(lungs.any(axis=(0, 1)))
    centre, half = (xs[0] + xs[-1]) / 2, AIRWAY_MIDLINE_MM / spacing[2]
    window = ((meta or {}).get("parameters") or {}).get("preprocess", {}).get("window")
    lo, hi = window or (-1200.0, 600.0)
    level = (air_hu - lo) / (hi - lo) * 255
    slices = 0
    for z in zs[zs >= zs[-1] - top_mm / spacing[0]]:
        lab, n = ndimage.label((image[z] <= level) & lungs[z])
        lung_px = np.count_nonzero(lungs[z])
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        for label, region in enumerate(ndimage.find_objects(lab), 1):
            cx = (region[1].start + region[1].stop - 1) / 2
            px = int(sizes[label])  # this region's pixels, not others' in its box
            tube = abs(cx - centre) <= half and 2 * px < lung_px  # not the lung itself
            if tube and px * spacing[1] * spacing[2] >= AIRWAY_MIN_AREA_MM2:
                slices += 1
                break
    if slices * spacing[0] < min_tube_mm:
        return []
    return [(_WARN, f"lung mask holds a tube of air at the top over {slices * spacing[0]:g} mm "
             "(airway leak)")]


def method_flags(
    left_l: float | None,
    right_l: float | None,
    grt123_left_l: float | None,
    grt123_right_l: float | None,
    *,
    max_fraction: float = METHOD_DIFF_FRACTION,
    min_ml: float = METHOD_DIFF_ML,
) -> list[tuple[int, str]]:
    """Flag each lung whose volume differs strongly between the robust and grt123's masks.

    A lung is flagged when its robust volume differs from grt123's by more than
    ``max_fraction`` of grt123's volume **and** by more than ``min_ml``.

    Parameters
    ----------
    left_l, right_l : float or None
        The stored (robust) masks' volumes, litres.
    grt123_left_l, grt123_right_l : float or None
        grt123's volumes of the same case, litres (None: not recorded, no flag).
    max_fraction : float
        Largest accepted difference as a fraction of grt123's volume of that lung.
    min_ml : float
        Smallest difference flagged, mL.

    Returns
    -------
    list of (severity, text)

    Examples
    --------
    >>> method_flags(1.693, 1.956, 1.665, 1.912)  # LIDC-IDRI-0001, normal lungs: +1.6 %, +2.3 %
    []
    >>> method_flags(1.693, 1.951, 1.665, 1.778)  # with a posterior consolidation band
    [(2, 'right lung 1.95 L (robust) vs 1.78 L (grt123): +173 mL (+9.7 %) between methods')]
    >>> [t.split(":")[1] for _, t in method_flags(1.80, 0.0, 0.95, 0.90)]  # one lung collapsed
    [' +850 mL (+89.5 %) between methods', ' -900 mL (-100.0 %) between methods']
    """
    flags: list[tuple[int, str]] = []
    for name, robust, grt in (("left", left_l, grt123_left_l), ("right", right_l, grt123_right_l)):
        if robust is None or grt is None:
            continue
        diff_ml = (robust - grt) * _ML_PER_L
        if abs(diff_ml) <= min_ml or abs(diff_ml) <= max_fraction * grt * _ML_PER_L:
            continue
        relative = f" ({diff_ml / (grt * _ML_PER_L):+.1%})".replace("%", " %") if grt > 0 else ""
        flags.append((_WARN, f"{name} lung {robust:.2f} L (robust) vs {grt:.2f} L (grt123): "
                             f"{diff_ml:+.0f} mL{relative} between methods"))
    return flags


def outlier_flags(
    totals: dict[str, float],
    *,
    mads: float = LUNG_OUTLIER_MADS,
    min_cases: int = MIN_CASES_FOR_OUTLIERS,
) -> dict[str, tuple[int, str]]:
    """Cases whose total lung volume is a robust outlier of the dataset.

    Parameters
    ----------
    totals : dict
        Case id -> total lung volume (litres).
    mads : float
        Distance from the median, in scaled MADs, beyond which a case is an outlier.
    min_cases : int
        Fewer cases than this: no outlier test (a median of few is no reference).

    Returns
    -------
    dict
        Case id -> (severity, text) for the outliers only.

    Examples
    --------
    >>> outlier_flags({"a": 3.0, "b": 3.1, "c": 2.9, "d": 3.05, "e": 6.5})
    {'e': (1, 'total lung volume 6.50 L is an outlier (median 3.05 L)')}
    """
    if len(totals) < min_cases:
        return {}
    values = np.array(list(totals.values()), float)
    median = float(np.median(values))
    spread = _MAD_TO_SD * float(np.median(np.abs(values - median)))
    if spread <= 0:
        return {}
    return {
        cid: (_INFO, f"total lung volume {v:.2f} L is an outlier (median {median:.2f} L)")
        for cid, v in totals.items()
        if abs(v - median) > mads * spread
    }


def _stats(values: np.ndarray) -> dict[str, list[float]]:
    values = np.asarray(values, float)
    if values.size == 0:  # no built case (every case failed): nothing to summarise
        return {}
    values = values.reshape(len(values), -1)
    return {
        "min": values.min(0).round(4).tolist(),
        "median": np.median(values, 0).round(4).tolist(),
        "max": values.max(0).round(4).tolist(),
    }


def _summarise_case(ds: DsbDataset, position: int, kind: str) -> CaseSummary:
    record = ds[position]
    meta = record.meta
    warnings = [str(w) for w in meta.get("warnings", []) or []]
    summary = CaseSummary(
        case_id=record.case_id,
        position=position,
        shape=record.shape,
        spacing=record.spacing,
        original_spacing=record.original_spacing,
        split=record.split,
        n_boxes=record.n_boxes,
        lungs_found=meta.get("lungs_found"),
        warnings=warnings,
        note=str(meta.get("segmentation_note", "") or ""),
    )
    volumes = meta.get("lung_volume_ml")
    if kind == "volume" and isinstance(volumes, dict):
        summary.left_l = float(volumes.get("left", 0.0)) / _ML_PER_L
        summary.right_l = float(volumes.get("right", 0.0)) / _ML_PER_L
        summary.volume_from = "segmentation"
        mask = record.mask
        summary.flags += airway_leak_flags(record.image, mask, record.spacing, meta)
        _grt123_of(summary, meta, mask, f"{ds.path}: case {record.case_id!r}")
    elif kind == "volume":
        counts = np.bincount(record.mask.ravel(), minlength=3)
        voxel_l = float(np.prod(record.spacing)) / _MM3_PER_L
        summary.left_l, summary.right_l = float(counts[1] * voxel_l), float(counts[2] * voxel_l)
        summary.volume_from = "stored mask"
    else:
        mask = record.mask
        counts = np.bincount(mask.ravel())
        summary.mask_fraction = {
            str(k): float(counts[k] / mask.size) for k in range(1, counts.size) if counts[k]
        }
    return summary


def _grt123_of(summary: CaseSummary, meta: dict, mask: np.ndarray, where: str) -> None:
    """The method, grt123's volumes and whether grt123's mask can be drawn (lung files)."""
    from .errors import DatasetFormatError
    from .store import apply_mask_diff

    summary.method = str(meta.get("segmentation_method", "") or "")
    grt = meta.get("lung_volume_ml_grt123")
    if isinstance(grt, dict):
        summary.grt123_left_l = float(grt.get("left", 0.0)) / _ML_PER_L
        summary.grt123_right_l = float(grt.get("right", 0.0)) / _ML_PER_L
    if "grt123_mask_diff" not in meta:
        return
    try:
        apply_mask_diff(meta["grt123_mask_diff"], mask, where)
    except DatasetFormatError as err:
        logger.warning("%s", err)
        summary.flags.append((_INFO, f"grt123's mask not drawn: {err}"))
    else:
        summary.grt123_outline = True


def summarize_dataset(
    path: str | os.PathLike,
    *,
    min_total_l: float = MIN_TOTAL_LUNG_L,
    max_total_l: float = MAX_TOTAL_LUNG_L,
    max_ratio: float = MAX_LUNG_RATIO,
    outlier_mads: float = LUNG_OUTLIER_MADS,
    max_mask_fraction: float = MAX_MASK_FRACTION,
    method_fraction: float = METHOD_DIFF_FRACTION,
    method_ml: float = METHOD_DIFF_ML,
    strict: bool = False,
) -> DatasetSummary:
    """Summarise a dataset file and flag suspicious cases (no figures).

    Parameters
    ----------
    path : path
        A dsbprep HDF5 file.
    min_total_l, max_total_l, max_ratio : float
        Lung volume rules (:func:`lung_flags`).
    outlier_mads : float
        Robust outlier rule (:func:`outlier_flags`).
    max_mask_fraction : float
        2-D files: a mask covering more than this fraction of its image is flagged.
    method_fraction, method_ml : float
        Lung volume between methods (:func:`method_flags`).
    strict : bool
        Refuse (DatasetFormatError) a file with an unreadable case; by default such a
        case is skipped with a warning and listed with the failures as ``unreadable``.

    Returns
    -------
    DatasetSummary
        Cases sorted by decreasing severity, then by case id.

    Raises
    ------
    FileNotFoundError, DatasetFormatError
        As :func:`dsbprep.store.open_dataset`.
    """
    with open_dataset(path) as ds:
        kind = ds.kind
        attrs = {k: _plain(v) for k, v in ds.attrs.items()}
        readable = [r.position for r in ds.iter_cases(strict=strict, check_meta=True)]
        cases = [_summarise_case(ds, i, kind) for i in readable]
        failures = {**ds.failures, **{k: f"unreadable: {v}" for k, v in ds.unreadable.items()}}
    lung_file = kind == "volume" and attrs.get("source") in ("lung", "nrrd")
    for c in cases:
        c.flags += _case_flags(c, kind, lung_file, min_total_l=min_total_l,
                               max_total_l=max_total_l, max_ratio=max_ratio,
                               max_mask_fraction=max_mask_fraction)
        c.flags += method_flags(c.left_l, c.right_l, c.grt123_left_l, c.grt123_right_l,
                                max_fraction=method_fraction, min_ml=method_ml)
    totals = {c.case_id: c.total_l for c in cases if c.total_l}
    if lung_file:
        for cid, flag in outlier_flags(totals, mads=outlier_mads).items():
            next(c for c in cases if c.case_id == cid).flags.append(flag)
    cases.sort(key=lambda c: (-c.severity, c.case_id))
    return DatasetSummary(
        path=os.fspath(path),
        kind=kind,
        source=str(attrs.get("source", "")),
        attrs=attrs,
        cases=cases,
        failures=failures,
        stats=_dataset_stats(cases, totals),
    )


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value (arrays -> lists, numpy scalars -> Python)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def _case_flags(c: CaseSummary, kind: str, lung_file: bool, *, min_total_l: float,
                max_total_l: float, max_ratio: float, max_mask_fraction: float) -> list[tuple[int, str]]:
    """One case's flags, outliers aside: lung volumes, empty or oversized masks, warnings."""
    flags: list[tuple[int, str]] = []
    if kind == "volume" and lung_file:
        flags += lung_flags(c.left_l, c.right_l, c.lungs_found, min_total_l=min_total_l,
                            max_total_l=max_total_l, max_ratio=max_ratio)
    elif kind == "volume" and not c.total_l:
        flags.append((_WARN, "empty mask"))
    elif kind != "volume":
        covered = sum(c.mask_fraction.values())
        if covered > max_mask_fraction:
            flags.append(
                (_WARN, f"mask covers {covered:.0%} of the image (> {max_mask_fraction:.0%})")
            )
    if c.warnings:
        flags.append((_INFO, f"{len(c.warnings)} loader warning(s)"))
    return flags


def _dataset_stats(cases: list[CaseSummary], totals: dict[str, float]) -> dict[str, Any]:
    """Shape, spacing and lung volume statistics, box, flag and split counts."""
    stats: dict[str, Any] = {
        "shape": _stats(np.array([c.shape for c in cases])),
        "spacing_mm": _stats(np.array([c.spacing for c in cases])),
        "original_spacing_mm": _stats(np.array([c.original_spacing for c in cases])),
        "boxes": int(sum(c.n_boxes for c in cases)),
        "flagged": sum(1 for c in cases if c.flags),
        "splits": {
            s: sum(1 for c in cases if c.split == s) for s in sorted({c.split for c in cases})
        },
    }
    if totals:
        stats["total_lung_l"] = _stats(np.array(list(totals.values())))
    return stats


# ---------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.sev3 { background: #fdd; } .sev2 { background: #fed; } .sev1 { background: #ffd; }
.flag { display: inline-block; margin: 0 0.3em 0.2em 0; padding: 0 0.3em; border-radius: 3px; }
.flag.s3 { background: #c00; color: #fff; } .flag.s2 { background: #e80; color: #fff; }
.flag.s1 { background: #ee8; }
img { max-width: 100%; border: 1px solid #ddd; }
.case { margin-bottom: 2em; }
.legend { font-size: 0.9em; color: #444; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _safe_name(case_id: str, used: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", case_id)[:100] or "case"
    base, k = name, 1
    while name in used:
        name, k = f"{base}-{k}", k + 1
    used.add(name)
    return name


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    return " x ".join(f"{v:.{digits}g}" for v in values)


def _flags_html(case: CaseSummary) -> str:
    return "".join(
        f'<span class="flag s{s}">{_e(t)}</span>' for s, t in sorted(case.flags, reverse=True)
    )


def _stats_rows(stats: dict[str, Any]) -> str:
    rows = []
    for key, label in (
        ("shape", "stored shape (z, y, x), voxels"),
        ("spacing_mm", "stored spacing (z, y, x), mm"),
        ("original_spacing_mm", "original spacing (z, y, x), mm"),
        ("total_lung_l", "total lung volume, L"),
    ):
        s = stats.get(key)
        if s:
            rows.append(
                f"<tr><th>{_e(label)}</th>"
                + "".join(
                    f'<td class="num">{_e(_fmt(s[q], 4))}</td>' for q in ("min", "median", "max")
                )
                + "</tr>"
            )
    return (
        "<table><tr><th></th><th>min</th><th>median</th><th>max</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _case_rows(summary: DatasetSummary, names: dict[str, str]) -> str:
    volume = summary.kind == "volume"
    head = ["#", "case", "split", "shape (z, y, x)", "spacing mm"]
    head += ["left L", "right L", "total L", "lungs found"] if volume else ["mask fraction"]
    head += ["boxes", "flags"]
    rows = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for k, c in enumerate(summary.cases, 1):
        link = (
            f'<a href="#{_e(names[c.case_id])}">{_e(c.case_id)}</a>'
            if c.case_id in names
            else _e(c.case_id)
        )
        cells = [
            f'<td class="num">{k}</td>',
            f"<td>{link}</td>",
            f"<td>{_e(c.split or '-')}</td>",
            f"<td>{_e(_fmt(c.shape, 6))}</td>",
            f"<td>{_e(_fmt(c.spacing))}</td>",
        ]
        if volume:

            def litres(v: float | None) -> str:
                return "-" if v is None else f"{v:.2f}"

            cells += [
                f'<td class="num">{litres(c.left_l)}</td>',
                f'<td class="num">{litres(c.right_l)}</td>',
                f'<td class="num">{litres(c.total_l)}</td>',
                f'<td class="num">{_e("-" if c.lungs_found is None else c.lungs_found)}</td>',
            ]
        else:
            frac = ", ".join(f"{lab}: {v:.1%}" for lab, v in c.mask_fraction.items()) or "empty"
            cells.append(f"<td>{_e(frac)}</td>")
        cells += [f'<td class="num">{c.n_boxes}</td>', f"<td>{_flags_html(c)}</td>"]
        sev = min(c.severity, _SEVERE)
        rows.append(
            f'<tr class="sev{sev}">' + "".join(cells) + "</tr>"
            if sev
            else "<tr>" + "".join(cells) + "</tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _figures(
    summary: DatasetSummary,
    out: Path,
    *,
    max_cases: int | None,
    axial_slices: int,
    sheet_tiles: int,
) -> tuple[str, dict[str, str]]:
    """Draw the figures; returns their HTML and case id -> anchor name."""
    from . import viz

    shown = summary.cases if max_cases is None else summary.cases[: max(0, int(max_cases))]
    used: set[str] = set()
    names = {c.case_id: _safe_name(c.case_id, used) for c in shown}
    parts = []
    with open_dataset(summary.path) as ds:
        if summary.kind == "volume":
            for c in shown:
                png = Path("cases") / f"{names[c.case_id]}.png"
                record = ds[c.position]
                viz.save_case_montage(record, out / png, n_axial=axial_slices,
                                      compare=_grt123_mask(record, ds.path) if c.grt123_outline else None)
                vol = _volume_text(c)
                parts.append(
                    f'<div class="case" id="{_e(names[c.case_id])}"><h3>{_e(c.case_id)}</h3>'
                    f"<p>{_flags_html(c)} {_e(vol)}; {c.n_boxes} nodule box(es)"
                    + (f"; note: {_e(c.note)}" if c.note else "")
                    + (f"; warnings: {_e('; '.join(c.warnings))}" if c.warnings else "")
                    + f'</p><img src="{_e(png.as_posix())}" alt="{_e(c.case_id)}" loading="lazy"></div>'
                )
        else:
            for start in range(0, len(shown), sheet_tiles):
                chunk = shown[start : start + sheet_tiles]
                png = Path("sheets") / f"sheet_{start // sheet_tiles:03d}.png"
                titles = [("! " if c.flags else "") + c.case_id for c in chunk]
                viz.save_slices_figure(
                    [ds[c.position] for c in chunk],
                    out / png,
                    titles=titles,
                    columns=_SHEET_COLUMNS,
                )
                anchors = "".join(f'<span id="{_e(names[c.case_id])}"></span>' for c in chunk)
                parts.append(
                    f'<div class="case">{anchors}<h3>cases {start + 1} to {start + len(chunk)}</h3>'
                    f'<img src="{_e(png.as_posix())}" alt="sheet" loading="lazy"></div>'
                )
    return "\n".join(parts), names


def _grt123_mask(record: Any, path: str) -> np.ndarray:
    """grt123's mask of a case built robust, on the stored grid (checked when summarised)."""
    from .store import apply_mask_diff

    where = f"{path}: case {record.case_id!r}"
    return apply_mask_diff(record.meta["grt123_mask_diff"], record.mask, where)


def _volume_text(c: CaseSummary) -> str:
    """The figure's line on volumes: stored masks, and grt123's when the case was built robust."""
    if c.total_l is None:
        return ""
    text = f"left {c.left_l:.2f} L, right {c.right_l:.2f} L ({c.volume_from}"
    text += f", {c.method})" if c.method else ")"
    if c.grt123_left_l is not None and c.grt123_right_l is not None:
        text += f"; grt123: left {c.grt123_left_l:.2f} L, right {c.grt123_right_l:.2f} L"
        text += " (dashed cyan outline)" if c.grt123_outline else ""
    return text


def write_report(
    path: str | os.PathLike,
    out: str | os.PathLike = "report",
    *,
    max_cases: int | None = None,
    axial_slices: int = DEFAULT_AXIAL_SLICES,
    sheet_tiles: int = DEFAULT_SHEET_TILES,
    strict: bool = False,
    **thresholds: float,
) -> Path:
    """Write the QA report of a dataset file into the folder ``out``.

    Parameters
    ----------
    path : path
        A dsbprep HDF5 file (3-D or 2-D).
    out : path
        Report folder (created): ``index.html``, ``summary.json``, ``cases/*.png`` or
        ``sheets/*.png``.
    max_cases : int, optional
        Draw figures of only this many cases, the most suspicious first (the tables
        still list every case). None = all.
    axial_slices : int
        Axial slices per montage (3-D files).
    sheet_tiles : int
        Slices per PNG sheet (2-D files).
    strict : bool
        See :func:`summarize_dataset`.
    **thresholds
        Keyword arguments of :func:`summarize_dataset` (``min_total_l``, ...).

    Returns
    -------
    Path
        The ``index.html`` written.

    Raises
    ------
    FileNotFoundError, DatasetFormatError
        As :func:`dsbprep.store.open_dataset`.
    """
    t0 = time.perf_counter()
    summary = summarize_dataset(path, strict=strict, **thresholds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("cases/*.png"), *out.glob("sheets/*.png")]:
        old.unlink()  # figures of an earlier report into the same folder
    figures, names = _figures(
        summary,
        out,
        max_cases=max_cases,
        axial_slices=axial_slices,
        sheet_tiles=max(1, int(sheet_tiles)),
    )
    index = out / "index.html"
    index.write_text(_page(summary, figures, names, time.perf_counter() - t0), encoding="utf-8")
    (out / "summary.json").write_text(
        json.dumps(summary.to_json(), indent=1, default=str), encoding="utf-8"
    )
    logger.info(
        "report of %d cases (%d flagged, %d failed) written to %s",
        len(summary.cases),
        summary.stats["flagged"],
        len(summary.failures),
        index,
    )
    return index


#: The figures' legend in the page.
_FIGURE_LEGEND = (
    "Figures: grey = stored image; outlines and faint fills = mask labels "
    '(lung files: <b style="color:#1c3">green = label 1, the patient\'s left lung</b>, '
    '<b style="color:#e81">orange = label 2, the right lung</b>); red boxes = nodules. '
    "Slices are shown in stored array order without flips: for a standard axial scan "
    "the patient's left is on the image's right (radiological convention), anterior at "
    "the top; coronal and sagittal views have superior at the top. The letters on each "
    "view's edges give the anatomical directions computed from the case's direction "
    "cosines."
)
#: ... and when a case was built with ``method = robust`` (its meta holds grt123's mask).
_COMPARE_LEGEND = (
    " Cases built with <code>[segmentation] method = robust</code> also show "
    '<b style="color:#0bd">grt123\'s outline, dashed cyan</b>, drawn under the robust one: '
    "it shows where grt123's mask differs (airways it included, pathology it cut out)."
)


def _head_table(summary: DatasetSummary) -> str:
    """The file's table: path, kind and source, creator, storage, case counts."""
    a = summary.attrs
    splits = ", ".join(f"{k or 'none'} {v}" for k, v in summary.stats["splits"].items())
    return (
        f"<table><tr><th>file</th><td>{_e(os.path.abspath(summary.path))}</td></tr>"
        f"<tr><th>kind / source</th><td>{_e(summary.kind)} / {_e(summary.source)}</td></tr>"
        f"<tr><th>created by</th><td>{_e(a.get('creator', '?'))}, {_e(a.get('created', '?'))}, "
        f"format {_e(a.get('format_version', '?'))}</td></tr>"
        f"<tr><th>storage</th><td>compression {_e(a.get('compression', '?'))}, chunks "
        f"{_e(a.get('chunks', '?'))}, pad value {_e(a.get('pad_value', '?'))}</td></tr>"
        f"<tr><th>cases</th><td>{len(summary.cases)} stored, {len(summary.failures)} failed, "
        f"{summary.stats['flagged']} flagged; splits {_e(splits)}; "
        f"{summary.stats['boxes']} nodule boxes</td></tr></table>"
    )


def _failures_table(failures: dict[str, str]) -> str:
    if not failures:
        return "<p>None.</p>"
    return (
        "<table><tr><th>case</th><th>reason</th></tr>"
        + "".join(
            f'<tr class="sev3"><td>{_e(k)}</td><td>{_e(v)}</td></tr>'
            for k, v in sorted(failures.items())
        )
        + "</table>"
    )


def _page(summary: DatasetSummary, figures: str, names: dict[str, str], seconds: float) -> str:
    """The whole ``index.html``."""
    n_fig = len(names)
    shown = (
        f"Figures of the {n_fig} most suspicious of {len(summary.cases)} cases."
        if n_fig < len(summary.cases)
        else ""
    )
    name = _e(os.path.basename(summary.path))
    compare = _COMPARE_LEGEND if any(c.grt123_outline for c in summary.cases) else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>dsbprep QA report: {name}</title>
<style>{_CSS}</style></head><body>
<h1>dsbprep QA report: {name}</h1>
{_head_table(summary)}
<h2>Failures ({len(summary.failures)})</h2>
{_failures_table(summary.failures)}
<h2>Statistics</h2>
{_stats_rows(summary.stats)}
<h2>Cases, suspicious first</h2>
<p class="legend">Flags: red = almost surely wrong, orange = look at it, yellow = worth knowing.
Lung volumes of lung files come from the segmentation on the original grid.</p>
{_case_rows(summary, names)}
<h2>Figures</h2>
<p class="legend">{_FIGURE_LEGEND}{compare} {_e(shown)}</p>
{figures}
<p class="legend">Written by dsbprep.report in {seconds:.1f} s.</p>
</body></html>
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dsbprep.report",
        description="Write a visual QA report (HTML + PNGs) of a dsbprep dataset file.",
    )
    p.add_argument(
        "dataset",
        nargs="?",
        default=None,
        help="the HDF5 file (default: [paths] output_filename of the config)",
    )
    p.add_argument("--out", default="report", help="report folder (default: report/)")
    p.add_argument("--config", default=None, help="config.ini (default: ./config.ini if present)")
    p.add_argument(
        "--max_cases",
        type=int,
        default=None,
        help="draw only this many cases, the most suspicious first (default: all)",
    )
    p.add_argument(
        "--slices",
        type=int,
        default=DEFAULT_AXIAL_SLICES,
        help=f"axial slices per montage (default {DEFAULT_AXIAL_SLICES})",
    )
    p.add_argument(
        "--strict", action="store_true", help="refuse (exit 2, no report) a file with an "
        "unreadable case, instead of listing it with the failures",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 when the file cannot be read)."""
    from .config import load_config
    from .errors import DsbprepError

    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        dataset = args.dataset or load_config(args.config).get("paths", "output_filename")
        index = write_report(dataset, args.out, max_cases=args.max_cases, axial_slices=args.slices,
                             strict=args.strict)
    except (DsbprepError, FileNotFoundError, ValueError, OSError) as err:
        print(f"dsbprep.report: error: {err}", file=sys.stderr)
        return 2
    summary = json.loads((index.parent / "summary.json").read_text(encoding="utf-8"))
    print(
        f"{index}: {summary['n_cases']} cases, {summary['stats']['flagged']} flagged, "
        f"{summary['n_failed']} failed"
    )
    for case in summary["cases"]:
        if case["flags"]:
            print(f"  {case['case_id']}: " + "; ".join(f["text"] for f in case["flags"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
