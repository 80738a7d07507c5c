"""Robust lung masks: grt123's masks without the airways and with the pathology at the pleura.

:func:`refine_masks` takes the two lung masks of grt123's segmentation
(:func:`dsbprep.segment.segment_lungs` with ``method="grt123"``) and corrects the two ways
that algorithm fails on diseased lungs (issue 17):

1. **Airways out.** The trachea is found near the top of the lungs as a round air region
   (below ``airway_seed_hu``) of a plausible cross-section (10 to 32 mm across), inside the
   body and nearest the lungs' left-right centre. From it the airway lumen is grown in 3-D
   with a rising threshold (``_AIRWAY_STEP_HU`` steps from ``_AIRWAY_START_HU``) until one
   step adds more than ``airway_leak_ml`` (a leak into the parenchyma): the last threshold
   before the leak gives trachea, main and lobar bronchi. The lumen, grown by
   ``airway_margin_mm`` (the wall and the partial-volume rim), is removed from both lungs.
   The growth runs on a grid pooled to about ``_AIRWAY_GRID_MM`` in-plane (minimum HU per
   block, so a thin lumen stays dark), then the result is refined on the input grid.
2. **Pathology in.** Dense or ground-glass lung (consolidation, juxtapleural nodules and
   tumours, ground-glass) is above grt123's -600 HU air threshold and is cut out of the
   mask where it touches the pleura. Such a region is enclosed by lung above and below it
   and by the chest wall outside. Each lung gets back what lies between two of its own
   voxels on one line along z (cranio-caudal) no more than ``pathology_gap_mm`` apart,
   and what a 3-D closing with a ball of ``pathology_closing_mm`` radius (on a ~2 mm grid)
   adds next to such a gap or on its own. Both only ever add voxels between parts of the
   *same* lung: the mediastinum, the heart and the liver dome lie between the two lungs or
   below them, not inside one lung's z-gaps, so they stay out. Voxels brighter than
   ``pathology_max_hu`` (bone, contrast-filled vessels) are never added.

Everything is in mm (or mL, HU), so the result does not depend on the slice thickness
beyond what the grid resolves.

Where it still fails (see the closing note of issue 17): a lesion at the apex or on the
diaphragm (no lung above, resp. below it) is only recovered by the small ball closing, so
only lesions up to about its radius are recovered there; consolidation of a whole lobe
(more than ``pathology_gap_mm`` along z) is not recovered; the hila are partly filled
(vessels entering between upper and lower lobe lie in a z-gap of the lung); airways
narrower than the grid resolves (segmental bronchi) stay in the mask.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from .defaults import SEGMENTATION
from .geometry import bounding_box, erode_cross_in_plane
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
# Trachea cross-section (mm^2): 10 to 32 mm across (adult trachea 13-25 mm, CT blur included).
_TRACHEA_AREA_MM2 = (np.pi / 4 * 10.0**2, np.pi / 4 * 32.0**2)
# The trachea is searched in the top this-many mm of the lungs (it runs above the apex).
_TRACHEA_SEARCH_MM = 40.0
# ... every this many mm along z,
_TRACHEA_STEP_MM = 5.0
# ... within this distance (mm) of the lungs' left-right centre.
_TRACHEA_MIDLINE_MM = 40.0
# The airway growth: first threshold, step, last threshold (HU).
_AIRWAY_START_HU = -990.0
_AIRWAY_STEP_HU = 15.0
_AIRWAY_STOP_HU = -700.0
# The airways lie within this distance (mm, left-right) of the trachea, and above this far
# below its seed (the lobar bronchi end ~ 10 cm below the carina).
_AIRWAY_HALF_WIDTH_MM = 90.0
_AIRWAY_DEPTH_MM = 200.0
# In-plane size (mm) of the pooled grid of the airway growth.
_AIRWAY_GRID_MM = 1.4
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
# In-plane 4-neighbourhood.


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
    left, right = left.copy(), right.copy()
    union = left | right
    if not union.any():
        return left, right, dict(info, airways=0.0, pathology=0.0)
    voxel_ml = float(np.prod(spacing)) / _ML
    pad = np.ceil(airway_margin_mm / spacing).astype(int) + 2
    box = tuple(
        slice(max(0, b.start - p), min(n, b.stop + p))
        for b, p, n in zip(bounding_box(union), pad, union.shape, strict=True)
    )
    sub_hu, sub_l, sub_r = hu[box], left[box], right[box]
    t = time.perf_counter()
    lumen = _airway_lumen(sub_hu, spacing, sub_l | sub_r, airway_seed_hu, airway_leak_ml)
    removed = np.zeros(sub_hu.shape, dtype=bool)
    if lumen is not None:
        abox, k, coarse, _ = lumen
        info["airway_ml"] = float(np.count_nonzero(coarse)) * voxel_ml * k[0] * k[1]
        removed[abox] = _unpool(_grown(coarse, spacing * (1, *k), airway_margin_mm), (1, *k),
                                removed[abox].shape)
        before = np.count_nonzero(sub_l) + np.count_nonzero(sub_r)
        sub_l &= ~removed
        sub_r &= ~removed
        info["airway_removed_ml"] = (before - np.count_nonzero(sub_l) - np.count_nonzero(sub_r)) * voxel_ml
    info["airways"] = time.perf_counter() - t
    t = time.perf_counter()
    before = np.count_nonzero(sub_l) + np.count_nonzero(sub_r)
    new_l, new_r = fill_pathology(
        sub_hu, spacing, sub_l, sub_r, (sub_hu <= pathology_max_hu) & ~removed,
        gap_mm=pathology_gap_mm, wall_mm=pathology_wall_mm,
    )
    info["pathology_ml"] = (np.count_nonzero(new_l) + np.count_nonzero(new_r) - before) * voxel_ml
    left[box], right[box] = new_l, new_r
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
# Airways
# =============================================================================================


def find_airways(
    hu: np.ndarray,
    spacing,
    lungs: np.ndarray,
    *,
    seed_hu: float = _R["airway_seed_hu"],
    leak_ml: float = _R["airway_leak_ml"],
) -> np.ndarray:
    """The airway lumen (trachea, main and lobar bronchi) as a bool (z, y, x) mask.

    Empty when no trachea is found (no lungs, or no round air region of trachea size near
    the midline in the top of the lungs).
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    out = np.zeros(hu.shape, dtype=bool)
    lumen = _airway_lumen(hu, spacing, lungs, seed_hu, leak_ml) if lungs.any() else None
    if lumen is not None:
        box, k, coarse, threshold = lumen
        out[box] = _unpool(coarse, (1, *k), hu[box].shape) & (hu[box] < threshold)
    return out


def _airway_lumen(hu, spacing, lungs, seed_hu, leak_ml):
    """``(box, k, coarse, threshold)``: the lumen on the grid pooled by k (y, x) in ``box``."""
    seed = _find_trachea(hu, spacing, lungs, seed_hu)
    if seed is None:
        logger.info("robust segmentation: no trachea found, airways not removed")
        return None
    z0, y0, x0 = seed
    half = int(round(_AIRWAY_HALF_WIDTH_MM / spacing[2]))
    ys = np.flatnonzero(lungs.any(axis=(0, 2)))
    box = (
        slice(max(0, z0 - int(round(_AIRWAY_DEPTH_MM / spacing[0]))), hu.shape[0]),
        slice(min(int(ys[0]), y0), max(int(ys[-1]), y0) + 1),
        slice(max(0, x0 - half), min(hu.shape[2], x0 + half + 1)),
    )
    k = tuple(max(1, int(round(_AIRWAY_GRID_MM / s))) for s in spacing[1:])
    pooled = _min_pool(hu[box], k)
    local = (z0 - box[0].start, (y0 - box[1].start) // k[0], (x0 - box[2].start) // k[1])
    coarse, threshold = _grow_with_leak_control(
        pooled, local, voxel_ml=float(np.prod(spacing)) * k[0] * k[1] / _ML, leak_ml=leak_ml
    )
    return None if coarse is None else (box, k, coarse, threshold)


def _find_trachea(hu, spacing, lungs, seed_hu):
    """(z, y, x) of a trachea voxel, or None.

    Every ``_TRACHEA_STEP_MM`` in the top ``_TRACHEA_SEARCH_MM`` of the lungs, 2-D air regions
    (below ``seed_hu``) of trachea cross-section, within ``_TRACHEA_MIDLINE_MM`` of the lungs'
    left-right centre and between their front and back, that do not touch that search
    window's border (air outside the body does). The one nearest the centre (over all those
    slices) wins; its darkest voxel is the seed.
    """
    zs = np.flatnonzero(lungs.any(axis=(1, 2)))
    ys = np.flatnonzero(lungs.any(axis=(0, 2)))
    xs = np.flatnonzero(lungs.any(axis=(0, 1)))
    mid_x = (xs[0] + xs[-1]) / 2
    half = int(round(1.5 * _TRACHEA_MIDLINE_MM / spacing[2]))
    win = (slice(int(ys[0]), int(ys[-1]) + 1),
           slice(max(0, int(mid_x) - half), min(hu.shape[2], int(mid_x) + half + 1)))
    step = max(1, int(round(_TRACHEA_STEP_MM / spacing[0])))
    z_lo = max(int(zs[0]), int(zs[-1]) - int(round(_TRACHEA_SEARCH_MM / spacing[0])))
    pixel = spacing[1] * spacing[2]
    best = None
    for z in range(int(zs[-1]), z_lo - 1, -step):
        plane = hu[z][win]
        lab, n = ndi.label(plane < seed_hu)
        if n == 0:
            continue
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        area = np.bincount(lab.ravel(), minlength=n + 1) * pixel
        ok = (area >= _TRACHEA_AREA_MM2[0]) & (area <= _TRACHEA_AREA_MM2[1])
        ok[0] = False
        ok[border] = False
        for lab_id in np.flatnonzero(ok):
            yy, xx = np.nonzero(lab == lab_id)
            off = abs(xx.mean() + win[1].start - mid_x) * spacing[2]
            if off <= _TRACHEA_MIDLINE_MM and (best is None or off < best[0]):
                i = int(np.argmin(plane[yy, xx]))
                best = (off, (z, int(yy[i]) + win[0].start, int(xx[i]) + win[1].start))
    return None if best is None else best[1]


def _min_pool(volume: np.ndarray, k: tuple[int, int]) -> np.ndarray:
    """In-plane minimum over blocks of k (y, x) pixels (edge blocks may be partial).

    Reduced one axis at a time with ``np.minimum`` over strided views (10x faster than a
    5-D ``min(axis=(2, 4))``; same values).
    """
    if k == (1, 1):
        return volume
    nz, ny, nx = volume.shape
    py, px = -(-ny // k[0]) * k[0], -(-nx // k[1]) * k[1]
    padded = volume
    if (py, px) != (ny, nx):
        fill = np.iinfo(volume.dtype).max if volume.dtype.kind in "iu" else np.inf
        padded = np.full((nz, py, px), fill, dtype=volume.dtype)
        padded[:, :ny, :nx] = volume
    cols = padded[:, :, 0 :: k[1]].copy()
    for dx in range(1, k[1]):
        np.minimum(cols, padded[:, :, dx :: k[1]], out=cols)
    rows = cols[:, 0 :: k[0]].copy()
    for dy in range(1, k[0]):
        np.minimum(rows, cols[:, dy :: k[0]], out=rows)
    return rows


def _grown(mask: np.ndarray, sampling, margin_mm: float) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (Euclidean distance in mm), computed on its box."""
    reach = np.ceil(margin_mm / np.asarray(sampling)).astype(int) + 1
    box = tuple(slice(max(0, b.start - r), min(n, b.stop + r))
                for b, r, n in zip(bounding_box(mask), reach, mask.shape, strict=True))
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = ndi.distance_transform_edt(~mask[box], sampling=sampling) <= margin_mm
    return out


def _grow_with_leak_control(volume, seed, *, voxel_ml, leak_ml):
    """Component of ``volume < T`` holding ``seed`` for T rising until a step leaks.

    Returns (mask, T) of the last threshold before a step that adds more than ``leak_ml``,
    or (None, None) when the seed is never below a threshold.
    """
    best, best_t, prev_ml = None, None, 0.0
    for threshold in np.arange(_AIRWAY_START_HU, _AIRWAY_STOP_HU + 1e-9, _AIRWAY_STEP_HU):
        if not volume[seed] < threshold:
            continue
        lab, _ = ndi.label(volume < threshold)
        comp = lab == lab[seed]
        ml = float(np.count_nonzero(comp)) * voxel_ml
        if best is not None and ml - prev_ml > leak_ml:
            break
        best, best_t, prev_ml = comp, float(threshold), ml
    return best, best_t


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
) -> tuple[np.ndarray, np.ndarray]:
    """Both lungs plus the voxels of ``allowed`` that fill their z-gaps near the chest wall.

    On a grid of about ``_GRID_MM`` in-plane (a block is lung, or allowed, when most of
    its voxels are), each lung gets the blocks of ``allowed`` that lie between two of its
    blocks of one (y, x) column at most ``gap_mm`` apart, inside its outline (the convex
    hull of the lung over a z-window of ``gap_mm``, per slice) and within ``wall_mm`` of a
    costal edge of that outline. Those blocks grow by ``_RIM_MM`` in-plane inside the
    outline (the lesion's rim at the pleura), and every allowed voxel of them that is in
    neither lung is added.

    Returns new bool (z, y, x) masks (left, right), disjoint.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    k = (1,) + tuple(max(1, int(round(_GRID_MM / v))) for v in spacing[1:])
    grid = _Grid(k, spacing * np.array(k), max(0, int(gap_mm // spacing[0])), wall_mm)
    coarse = [_pool_majority(m, k) for m in (left, right)]
    c_ok = _pool_majority(allowed, k)
    centre = [float(np.argwhere(c.any(axis=(0, 1))).mean()) if c.any() else None for c in coarse]
    out = []
    for i, (lung, other) in enumerate(((left, right), (right, left))):
        mine, theirs = centre[i], centre[1 - i]
        mid = theirs if theirs is not None else (lung.shape[2] / k[2] - 1) / 2
        medial = 1.0 if mine is None or mid >= mine else -1.0
        blocks = _pathology_blocks(coarse[i], c_ok & ~coarse[1 - i], grid, medial)
        new = lung.copy()
        if blocks is not None:
            _add_blocks(new, blocks, k, allowed, other)
        out.append(new)
    both = out[0] & out[1] & ~(left | right)
    out[0] &= ~both
    out[1] &= ~both
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
    hulls: dict = {}  # slice -> hull equations, shared by both tests
    cand &= _within_outline(cand, outline, grid.spacing, grid.wall_mm, medial, hulls)
    if not cand.any():
        return None
    rim = max(1, int(round(_RIM_MM / min(grid.spacing[1:]))))
    cand = ndi.binary_dilation(cand, np.ones((1, 3, 3), dtype=bool), iterations=rim, mask=ok)
    return cand & _within_outline(cand, outline, grid.spacing, np.inf, medial, hulls)


def _pool_majority(mask: np.ndarray, k) -> np.ndarray:
    """In-plane blocks of k (1, ky, kx) voxels that are more than half set (zero-padded)."""
    nz, ny, nx = mask.shape
    py, px = -(-ny // k[1]) * k[1], -(-nx // k[2]) * k[2]
    padded = np.zeros((nz, py, px), dtype=np.uint8)
    padded[:, :ny, :nx] = mask
    cols = padded[:, :, 0 :: k[2]].copy()  # x blocks first, then y blocks of the sums
    for dx in range(1, k[2]):
        cols += padded[:, :, dx :: k[2]]
    count = cols[:, 0 :: k[1]].copy()
    for dy in range(1, k[1]):
        count += cols[:, dy :: k[1]]
    return 2 * count.astype(np.int32) > k[1] * k[2]


def _add_blocks(lung: np.ndarray, blocks: np.ndarray, k, allowed: np.ndarray,
                other: np.ndarray) -> None:
    """``lung |= unpooled(blocks) & allowed & ~other``, computed in the blocks' bounding box
    only (the added pathology is a small part of the lung box)."""
    if not blocks.any():
        return
    coarse_box = bounding_box(blocks)
    fine = tuple(slice(b.start * f, min(b.stop * f, n))
                 for b, f, n in zip(coarse_box, k, lung.shape, strict=True))
    shape = tuple(b.stop - b.start for b in fine)
    added = _unpool(blocks[coarse_box], k, shape)[:, : shape[1], : shape[2]]
    lung[fine] |= added & allowed[fine] & ~other[fine]


def _unpool(coarse: np.ndarray, k, shape) -> np.ndarray:
    """Blocks back to voxels, cropped to ``shape``."""
    fine = np.repeat(np.repeat(coarse, k[1], axis=1), k[2], axis=2)
    return fine[:, : shape[1], : shape[2]]


def _slice_hull(outline2d: np.ndarray, spacing, z: int, cache: dict):
    """The convex hull (qhull) of one slice's outline pixels in mm, or None; cached by z."""
    if z not in cache:
        try:
            cache[z] = ConvexHull(np.argwhere(outline2d) * spacing[1:])
        except (QhullError, ValueError):
            cache[z] = None
    return cache[z]


def _within_outline(points, outline, spacing, depth_mm, medial_sign, hulls=None) -> np.ndarray:
    """Voxels of ``points`` inside the convex hull of their slice of ``outline`` (its edge
    pixels are enough) and within
    ``depth_mm`` (in-plane, mm) of one of its costal edges: edges whose outward normal is
    not within ``_MEDIAL_DEG`` of the medial direction (``medial_sign`` along x)."""
    out = np.zeros(points.shape, dtype=bool)
    medial_cos = np.cos(np.deg2rad(_MEDIAL_DEG))
    for z in np.flatnonzero(points.any(axis=(1, 2))):
        hull = _slice_hull(outline[z], spacing, z, {} if hulls is None else hulls)
        if hull is None:
            continue
        yy, xx = np.nonzero(points[z])
        signed = np.stack([yy, xx], axis=1) * spacing[1:] @ hull.equations[:, :2].T
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
    """Voxels between two mask voxels of the same (y, x) column at most ``max_slices`` apart."""
    nz = mask.shape[0]
    idx = np.arange(nz, dtype=np.int32)[:, None, None]
    below = np.maximum.accumulate(np.where(mask, idx, -(10**6)), axis=0)
    above = np.minimum.accumulate(np.where(mask, idx, 10**6)[::-1], axis=0)[::-1]
    return ~mask & (above - below - 1 <= max_slices)
