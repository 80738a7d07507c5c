"""Robust lung masks: grt123's masks without the airways and with the pathology at the pleura.

:func:`refine_masks` takes the two lung masks of grt123's segmentation
(:func:`dsbprep.segment.segment_lungs` with ``method="grt123"``) and corrects the two ways
that algorithm fails on diseased lungs (issue 17):

1. **Airways out** (:mod:`dsbprep.airways`). The trachea is found near the top of the
   lungs as a round air region (below ``airway_seed_hu``) of trachea size near the
   midline; from it the lumen is grown in 3-D with a rising threshold until one 15 HU
   step adds more than ``airway_leak_ml`` (a leak into the parenchyma), then bronchus
   pieces cut off by partial-volume narrowings (small dark regions next to the airway)
   join it. The lumen grown by ``airway_margin_mm`` from its edge (the wall and the
   partial-volume rim) is removed from both lungs.
2. **Pathology in.** Dense or ground-glass lung (consolidation, juxtapleural nodules and
   tumours, ground-glass) is above grt123's -600 HU air threshold and is cut out of the
   mask where it touches the pleura. Such a region is enclosed by lung above and below it
   and by the chest wall outside. On a grid of about ``_GRID_MM`` in-plane, each lung gets
   back the voxels that lie between two of its own voxels on one line along z
   (cranio-caudal) no more than ``pathology_gap_mm`` apart, inside the lung's outline
   (the convex hull of its slices over that z-window) and within ``pathology_wall_mm`` of
   a costal (not medial) edge of that outline; those grow by ``_RIM_MM`` in-plane inside
   the outline (the lesion's rim at the pleura, where the lung above and below does not
   reach as far out). This only ever adds voxels between parts of the *same* lung near
   its chest wall: the mediastinum, the heart and the liver dome lie between the two
   lungs, medial to them or below them, not in one lung's z-gaps at its costal wall, so
   they stay out. Voxels brighter than ``pathology_max_hu`` (bone, contrast-filled
   vessels) and the removed airway are never added.

Everything is in mm (or mL, HU), so the result does not depend on the slice thickness
beyond what the grid resolves.

Where it still fails (see the closing note of issue 17): a lesion at the apex or on the
diaphragm (no lung above, resp. below it) is not recovered; consolidation of a whole lobe
(more than ``pathology_gap_mm`` along z) is not recovered; near the costal hila the
z-gaps between lobes can be filled; segmental bronchi that a 4 mm grid does not resolve
stay in the mask (see :mod:`dsbprep.airways`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from .airways import airway_to_remove, find_airways
from .defaults import SEGMENTATION
from .geometry import bounding_box, erode_cross_in_plane, expand_blocks
from .segment import _centroid

__all__ = ["ROBUST_DEFAULTS", "fill_pathology", "find_airways", "one_side", "refine_masks"]

logger = logging.getLogger(__name__)

#: Keyword -> default of :func:`refine_masks` (``segment_lungs`` keywords, ``[segmentation]``
#: in config.ini; written once, with their reasons, in :mod:`dsbprep.defaults`).
ROBUST_DEFAULTS: dict[str, float] = {
    key: float(SEGMENTATION[key])  # type: ignore[arg-type]
    for key in (
        "airway_seed_hu", "airway_leak_ml", "airway_margin_mm",
        "pathology_gap_mm", "pathology_wall_mm", "pathology_max_hu",
    )
}
_R = ROBUST_DEFAULTS

# --- implementation constants ----------------------------------------------------------------
# In-plane size (mm) of the grid of the pathology stage.
_GRID_MM = 2.0
# The additions grow this far (mm) in-plane inside the outline: the lesions' rim at the
# pleura, where the lung above and below does not reach as far out.
_RIM_MM = 6.0
# Outline edges whose outward normal is within this angle (degrees) of the medial direction
# face the mediastinum (hilum, heart, great vessels), not the chest wall.
_MEDIAL_DEG = 40.0
# Hull membership slack (mm), far above float rounding.
_HULL_SLACK_MM = 1e-6
_ML = 1000.0  # mm^3 per mL


def refine_masks(
    hu: np.ndarray,
    spacing,
    left: np.ndarray,
    right: np.ndarray,
    *,
    airway_seed_hu: float = _R["airway_seed_hu"],
    airway_leak_ml: float = _R["airway_leak_ml"],
    airway_margin_mm: float = _R["airway_margin_mm"],
    pathology_gap_mm: float = _R["pathology_gap_mm"],
    pathology_max_hu: float = _R["pathology_max_hu"],
    pathology_wall_mm: float = _R["pathology_wall_mm"],
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Remove the airways from grt123's lung masks and add the pathology they cut out.

    Parameters
    ----------
    hu : numpy.ndarray
        (z, y, x) volume in HU.
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    left, right : numpy.ndarray
        bool (z, y, x): grt123's masks of the patient's left and right lung (one may be
        empty).
    airway_seed_hu, airway_leak_ml, airway_margin_mm, pathology_gap_mm, pathology_max_hu, \
pathology_wall_mm : float
        See the module docstring (defaults in ``ROBUST_DEFAULTS``).
    threads : int
        1: the two lungs' pathology one after the other; else in two threads (same masks).

    Returns
    -------
    left, right : numpy.ndarray
        bool (z, y, x), disjoint.
    info : dict
        Seconds of ``airways`` and ``pathology``, and ``airway_ml`` (lumen volume found,
        0 when no trachea was found), ``airway_removed_ml``, ``pathology_ml``.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    info: dict = {"airway_ml": 0.0, "airway_removed_ml": 0.0, "pathology_ml": 0.0}
    boxes = [bounding_box(m) for m in (left, right) if m.any()]
    if not boxes:
        return left.copy(), right.copy(), dict(info, airways=0.0, pathology=0.0)
    voxel_ml = float(np.prod(spacing)) / _ML
    pad = np.ceil(airway_margin_mm / spacing).astype(int) + 2
    box = tuple(  # the box of both lungs, padded (no full-volume union needed)
        slice(max(0, min(b.start for b in bs) - p), min(n, max(b.stop for b in bs) + p))
        for bs, p, n in zip(zip(*boxes, strict=True), pad, left.shape, strict=True)
    )
    sub_hu, sub_l, sub_r = hu[box], left[box].copy(), right[box].copy()
    t = time.perf_counter()
    removed, info["airway_ml"] = airway_to_remove(
        sub_hu, spacing, sub_l | sub_r, seed_hu=airway_seed_hu, leak_ml=airway_leak_ml,
        margin_mm=airway_margin_mm,
    )
    allowed = sub_hu <= pathology_max_hu
    if removed.any():  # cut out within the removed airway's box only
        cut = bounding_box(removed)
        keep = ~removed[cut]
        gone = np.count_nonzero(sub_l[cut] & ~keep) + np.count_nonzero(sub_r[cut] & ~keep)
        info["airway_removed_ml"] = gone * voxel_ml
        for mask in (sub_l, sub_r, allowed):
            mask[cut] &= keep
    before = np.count_nonzero(sub_l) + np.count_nonzero(sub_r)
    info["airways"] = time.perf_counter() - t
    t = time.perf_counter()
    new_l, new_r = fill_pathology(
        sub_hu, spacing, sub_l, sub_r, allowed, gap_mm=pathology_gap_mm, wall_mm=pathology_wall_mm,
        threads=threads,
    )
    info["pathology_ml"] = (np.count_nonzero(new_l) + np.count_nonzero(new_r) - before) * voxel_ml
    left, right = np.zeros(left.shape, dtype=bool), np.zeros(right.shape, dtype=bool)
    left[box], right[box] = new_l, new_r  # all of both lungs lies in the box
    info["pathology"] = time.perf_counter() - t
    return left, right, info


def one_side(left: np.ndarray, right: np.ndarray, spacing, direction):
    """grt123's two "lungs" when both lie on one side of the body, merged; else None.

    With one lung collapsed (solid), grt123 still splits the other into two parts; both
    then lie on one side of the volume's centre (world x). Returns ``(left, right, 1,
    reason)`` with the merged mask on that side.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    centre = (np.array(left.shape) - 1) / 2
    sides = [float(np.asarray(direction)[2] @ ((_centroid(m) - centre) * spacing))
             for m in (left, right)]
    if (sides[0] > 0) != (sides[1] > 0):
        return None
    merged = left | right
    empty = np.zeros(left.shape, dtype=bool)
    name = "left" if sides[0] > 0 else "right"
    reason = f"one lung: both parts grt123 split lie on the patient's {name}"
    return (merged, empty, 1, reason) if sides[0] > 0 else (empty, merged, 1, reason)


# =============================================================================================
# Pathology
# =============================================================================================


def fill_pathology(
    hu: np.ndarray,
    spacing,
    left: np.ndarray,
    right: np.ndarray,
    allowed: np.ndarray,
    *,
    gap_mm: float = _R["pathology_gap_mm"],
    wall_mm: float = _R["pathology_wall_mm"],
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Both lungs plus the voxels of ``allowed`` that fill their z-gaps near the chest wall.

    On a grid of about ``_GRID_MM`` in-plane (a block is lung, or allowed, when most of
    its voxels are), each lung gets the blocks of ``allowed`` that lie between two of its
    blocks of one (y, x) column at most ``gap_mm`` apart, inside its outline (the convex
    hull of the lung over a z-window of ``gap_mm``, per slice) and within ``wall_mm`` of a
    costal edge of that outline. Those blocks grow by ``_RIM_MM`` in-plane inside the
    outline (the lesion's rim at the pleura), and every allowed voxel of them that is in
    neither lung is added.

    The two lungs are processed in two threads (``threads=1``: one after the other; the
    result is the same).

    Returns new bool (z, y, x) masks (left, right), disjoint.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    k = (1,) + tuple(max(1, int(round(_GRID_MM / v))) for v in spacing[1:])
    grid = _Grid(k, spacing * np.array(k), max(0, int(gap_mm // spacing[0])), wall_mm)
    coarse = [_pool_majority(m, k) for m in (left, right)]
    c_ok = _pool_majority(allowed, k)
    centre = [float(np.argwhere(c.any(axis=(0, 1))).mean()) if c.any() else None for c in coarse]
    out, boxes = [], []

    def one_lung(i: int):
        lung, other = (left, right) if i == 0 else (right, left)
        mine, theirs = centre[i], centre[1 - i]
        mid = theirs if theirs is not None else (lung.shape[2] / k[2] - 1) / 2
        medial = 1.0 if mine is None or mid >= mine else -1.0
        blocks = _pathology_blocks(coarse[i], c_ok & ~coarse[1 - i], grid, medial)
        mask = lung.copy()
        return mask, None if blocks is None else _add_blocks(mask, blocks, k, allowed, other)

    # One lung per thread (scipy.ndimage and numpy release the GIL; each thread writes only
    # its own lung's copy): the same masks as one after the other.
    with ThreadPoolExecutor(max_workers=2 if threads != 1 else 1) as pool:
        for mask, added in pool.map(one_lung, (0, 1)):
            out.append(mask)
            boxes.append(added)
    if None not in boxes:  # a voxel both lungs added goes to neither: only where both added
        both = tuple(slice(max(a.start, b.start), max(a.start, b.start, min(a.stop, b.stop)))
                     for a, b in zip(*boxes, strict=True))
        taken = out[0][both] & out[1][both] & ~(left[both] | right[both])
        out[0][both] &= ~taken
        out[1][both] &= ~taken
    return out[0], out[1]


@dataclass(frozen=True)
class _Grid:
    """The pathology grid: pooling factors, block size (mm), gap (slices), wall depth (mm)."""

    k: tuple
    spacing: np.ndarray
    gap_slices: int
    wall_mm: float


def _pathology_blocks(lung: np.ndarray, ok: np.ndarray, grid: _Grid, medial: float):
    """Blocks one lung (pooled) gets back, or None; see :func:`fill_pathology`."""
    outline = ndi.maximum_filter1d(lung, size=2 * (grid.gap_slices // 2) + 1, axis=0)
    outline &= ~erode_cross_in_plane(outline)  # its edge pixels are enough
    cand = _z_gaps(lung, grid.gap_slices) & ok
    hulls = _SliceHulls(outline, grid.spacing)  # shared by both tests
    cand &= _within_outline(cand, hulls, grid.wall_mm, medial)
    if not cand.any():
        return None
    rim = max(1, int(round(_RIM_MM / min(grid.spacing[1:]))))
    box = tuple(slice(max(0, b.start - r), min(n, b.stop + r))  # the dilation's reach
                for b, r, n in zip(bounding_box(cand), (0, rim, rim), cand.shape, strict=True))
    cand[box] = ndi.binary_dilation(cand[box], np.ones((1, 3, 3), dtype=bool), iterations=rim,
                                    mask=ok[box])
    return cand & _within_outline(cand, hulls, np.inf, medial)


def _pool_majority(mask: np.ndarray, k) -> np.ndarray:
    """In-plane blocks of k (1, ky, kx) voxels that are more than half set (zero-padded).

    Summed over strided uint8 views of the mask, x blocks first, then y blocks of the sums
    (the partial edge blocks get fewer terms: the zero padding, without a padded copy).
    """
    values = np.asarray(mask, dtype=bool).view(np.uint8)
    cols = values[:, :, 0 :: k[2]].copy()
    for dx in range(1, k[2]):
        part = values[:, :, dx :: k[2]]
        cols[:, :, : part.shape[2]] += part
    count = cols[:, 0 :: k[1]].copy()
    for dy in range(1, k[1]):
        part = cols[:, dy :: k[1]]
        count[:, : part.shape[1]] += part
    return 2 * count.astype(np.int32) > k[1] * k[2]


def _add_blocks(lung: np.ndarray, blocks: np.ndarray, k, allowed: np.ndarray,
                other: np.ndarray):
    """``lung |= unpooled(blocks) & allowed & ~other``, computed in the blocks' bounding box
    only (the added pathology is a small part of the lung box); returns that box (voxels),
    or None when ``blocks`` is empty."""
    if not blocks.any():
        return None
    coarse_box = bounding_box(blocks)
    fine = tuple(slice(b.start * f, min(b.stop * f, n))
                 for b, f, n in zip(coarse_box, k, lung.shape, strict=True))
    shape = tuple(b.stop - b.start for b in fine)
    added = expand_blocks(blocks[coarse_box], k, shape)
    lung[fine] |= added & allowed[fine] & ~other[fine]
    return fine


class _SliceHulls:
    """The convex hull (qhull) of each slice's outline pixels in mm, or None; made once per
    slice, when first asked for (``hulls(z)``).

    Only the first and last pixel of each row can be a vertex (every other pixel lies
    between them), so qhull gets those, found for all slices at once: the same hull from
    ~10x fewer points.
    """

    def __init__(self, outline: np.ndarray, spacing) -> None:
        self.rows = outline.any(axis=2)
        self.first = np.argmax(outline, axis=2)
        self.last = outline.shape[2] - 1 - np.argmax(outline[:, :, ::-1], axis=2)
        self.spacing = np.asarray(spacing, dtype=np.float64)[1:]
        self.cache: dict = {}

    def __call__(self, z: int):
        if z not in self.cache:
            rows = np.flatnonzero(self.rows[z])
            ends = np.concatenate([np.stack([rows, self.first[z, rows]], axis=1),
                                   np.stack([rows, self.last[z, rows]], axis=1)])
            try:
                self.cache[z] = ConvexHull(ends * self.spacing)
            except (QhullError, ValueError):
                self.cache[z] = None
        return self.cache[z]


def _within_outline(points, hulls: _SliceHulls, depth_mm, medial_sign) -> np.ndarray:
    """Voxels of ``points`` inside the convex hull of their slice of the outline (``hulls``)
    and within ``depth_mm`` (in-plane, mm) of one of its costal edges: edges whose outward
    normal is not within ``_MEDIAL_DEG`` of the medial direction (``medial_sign`` along x)."""
    out = np.zeros(points.shape, dtype=bool)
    medial_cos = np.cos(np.deg2rad(_MEDIAL_DEG))
    for z in np.flatnonzero(points.any(axis=(1, 2))):
        hull = hulls(z)
        if hull is None:
            continue
        yy, xx = np.nonzero(points[z])
        signed = np.stack([yy, xx], axis=1) * hulls.spacing @ hull.equations[:, :2].T
        signed += hull.equations[:, 2]
        costal = hull.equations[:, 1] * medial_sign < medial_cos
        if not costal.any():
            continue
        keep = signed.max(axis=1) <= _HULL_SLACK_MM
        if np.isfinite(depth_mm):
            keep &= -signed[:, costal].max(axis=1) <= depth_mm
        out[z, yy[keep], xx[keep]] = True
    return out


def _z_gaps(mask: np.ndarray, max_slices: int) -> np.ndarray:
    """Voxels between two mask voxels of the same (y, x) column at most ``max_slices`` apart.

    The nearest mask slice below and above each voxel, carried one slice at a time (plane
    by plane: 5x faster than ``np.maximum.accumulate`` along axis 0; same values).
    """
    nz = mask.shape[0]
    below = np.empty(mask.shape, dtype=np.int32)
    above = np.empty(mask.shape, dtype=np.int32)
    below[0] = np.where(mask[0], 0, -(10**6))
    for z in range(1, nz):
        np.copyto(below[z], below[z - 1])
        np.copyto(below[z], z, where=mask[z])
    above[-1] = np.where(mask[-1], nz - 1, 10**6)
    for z in range(nz - 2, -1, -1):
        np.copyto(above[z], above[z + 1])
        np.copyto(above[z], z, where=mask[z])
    return ~mask & (above - below - 1 <= max_slices)
