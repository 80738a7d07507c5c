"""The embedded default cohort: synthetic chest CT scans written as real DICOM series.

``make dataset`` on a machine without data must still build something. When the
input folder is empty or absent, the build calls :func:`write_sample_cohort`,
which draws a few digital chest phantoms (:func:`make_phantom`) and writes each
one as a CT Image Storage series (:func:`write_series`) that any DICOM reader,
and grt123's lung segmentation, accept as a chest CT:

* a body (elliptical cylinder of soft tissue under a thin fat layer) in air,
  inside the scanner's circular field of view; outside that circle the stored
  value is a padding value (-2000 or -3024 HU, as real scanners write);
* two lungs (about -850 HU, denser posteriorly) with a narrowing apex, a
  diaphragm dome (the right one higher, a liver beneath it), a cardiac notch,
  branching vessels and a few solid nodules;
* a trachea and two main bronchi, the spine, ribs, sternum and a heart;

and beside each series an LIDC-style reader XML (``annotations.xml``, one
reader: the phantom's truth) outlining every nodule on each slice it crosses, so
the build stores nodule boxes for the default cohort as it does for LIDC-IDRI.

Everything is seeded: the same seed gives byte-identical files (UIDs come from
:func:`pydicom.uid.generate_uid` with entropy drawn from the seeded generator).
Run ``python -m dsbprep.phantom OUTDIR [--patients N] [--seed S]`` (or ``dsbprep phantom``;
``python -m dsbprep.sample`` is an alias).

The phantom is deliberately simple geometry (ellipses, capsules, spheres); it
is a smoke-test cohort, not a substitute for real scans.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

__all__ = [
    "ANATOMY_DEFAULTS",
    "SeriesStorage",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "main",
    "make_phantom",
    "make_sample_patient",
    "nodule_outlines",
    "write_sample_cohort",
    "write_series",
]

logger = logging.getLogger(__name__)

#: Default volume shape (z, y, x): 100 slices of 256 x 256 pixels.
DEFAULT_SHAPE = (100, 256, 256)
#: Default spacing (z, y, x) in mm: 2.5 mm slices, 350 mm / 256 pixels in-plane.
DEFAULT_SPACING = (2.5, 350.0 / 256, 350.0 / 256)

# Scanner value range (12-bit CT): values of the reconstruction are clipped to it.
HU_MIN = -1024.0
HU_MAX = 3071.0
# Smallest volume the phantom geometry fits in (slices, pixels): below it the lungs degenerate.
_MIN_SHAPE = (16, 64, 64)
# Partial-volume blur of the reconstruction (Gaussian sigma, mm, z-y-x): a standard-kernel CT
# point spread (in-plane FWHM ~1.2 mm) and a 2.5 mm slice profile.
_BLUR_SIGMA_MM = (1.0, 0.5, 0.5)
# Distance (mm) kept between a nodule surface and the lung boundary, airways and other nodules.
_NODULE_MARGIN_MM = 3.0
# Tries of rejection sampling for one nodule position before giving up.
_NODULE_TRIES = 500
# Vessel tree: child/parent length and radius ratios and branching angle range (degrees),
# roughly Murray's law ((1/2)^(1/3) ~ 0.79) shortened so the tree stays inside the lung.
_VESSEL_LENGTH_RATIO = 0.75
_VESSEL_RADIUS_RATIO = 0.78
_VESSEL_ANGLE_DEG = (20.0, 40.0)
# Fraction of the hilum-target distance covered by the root segment.
_VESSEL_ROOT_REACH = 0.5
# Root radius (mm) of each lung's vessel tree (lobar pulmonary artery/vein).
_VESSEL_ROOT_RADIUS_MM = 4.5
# Vessel trees per lung (pulmonary arteries and veins of the lobes and segments), and the
# spread (mm) of their roots around the hilum.
_VESSEL_ROOTS = 8
_HILUM_SPREAD_MM = 10.0
# Ribs: vertical drop (mm) from the posterior to the anterior end, height (mm) of one rib,
# radial thickness (mm), distance (mm) between ribs along z, anterior gap (mm, each side of
# the midline) left for the costal cartilage and sternum.
_RIB_DROP_MM = 40.0
_RIB_HEIGHT_MM = 9.0
_RIB_THICKNESS_MM = 7.0
_RIB_PITCH_MM = 26.0
_RIB_ANTERIOR_GAP_MM = 30.0
_RIB_BELOW_BASE_MM = 10.0
_RIB_PLEURA_GAP_MM = 3.0  # intercostal muscle between the pleura and the ribs
_STERNUM_HALF_WIDTH_MM = 14.0  # the lowest rib starts this far below the costophrenic recess
# Spine (mm, relative to the body's posterior skin): vertebral body centre depth and
# semi-axes, spinal canal radius, intervertebral disc period and height, disc HU.
_VERTEBRA_DEPTH_MM = 62.0
_VERTEBRA_SEMI_AXES_MM = (15.0, 17.0)
_CANAL_RADIUS_MM = 8.0
_ARCH_THICKNESS_MM = 5.0  # vertebral arch around the canal, and half width of the spinous process
_DISC_PERIOD_MM = 28.0
_DISC_HEIGHT_MM = 5.0
_DISC_HU = 80.0
_CSF_HU = 10.0
# Airways: trachea centre (mm anterior of the body centre is negative y), hilum position (mm
# below the carina and inside the lung's medial edge).
_TRACHEA_Y_MM = -10.0
_HILUM_BELOW_CARINA_MM = 20.0
_HILUM_DEPTH_MM = 18.0
_HILUM_ANTERIOR_MM = 10.0  # hilum in front of the lung's centre
# Anterior-posterior extent of the diaphragm dome relative to the lung depth (> 1: the
# anterior and posterior recesses stay shallower than the lateral one).
_DOME_AP_FACTOR = 1.1
# How far (mm) the heart sinks into the left diaphragm dome.
_HEART_SINK_MM = 15.0
# Pericardial gap (mm, epicardial fat) between the heart and the lungs.
_PERICARDIUM_MM = 5.0
# Default display window written to the files (centre, width, HU): the usual lung window.
_LUNG_WINDOW = (-600.0, 1600.0)

#: Anatomy parameters of :func:`make_phantom` (lengths in mm, values in HU) and their defaults.
ANATOMY_DEFAULTS: Mapping[str, float | int | None] = MappingProxyType(
    {
        # body: elliptical cylinder centred on the scanner axis
        "body_width_mm": 320.0,  # left-right
        "body_depth_mm": 240.0,  # anterior-posterior
        "fat_thickness_mm": 10.0,  # subcutaneous fat
        "chest_wall_mm": 26.0,  # skin to pleura (fat + muscle + ribs)
        # lungs
        "right_lung_width_mm": 110.0,  # the right lung is the bigger one
        "left_lung_width_mm": 100.0,
        "lung_depth_mm": 176.0,  # anterior-posterior
        "lung_height_mm": 215.0,  # apex to the lowest costophrenic recess
        "apex_margin_mm": 20.0,  # top of the volume to the lung apex
        "apex_cap_mm": 90.0,  # height of the narrowing apical part
        "dome_height_mm": 45.0,  # diaphragm dome above the recesses
        "right_dome_offset_mm": 15.0,  # right hemidiaphragm higher (liver)
        # heart (ellipsoid sitting on the left hemidiaphragm)
        "heart_width_mm": 115.0,
        "heart_depth_mm": 90.0,
        "heart_height_mm": 105.0,
        "heart_shift_mm": 20.0,  # towards the patient's left
        "heart_anterior_mm": 35.0,  # in front of the body centre
        # airways
        "trachea_diameter_mm": 18.0,
        "bronchus_diameter_mm": 13.0,
        "carina_depth_mm": 75.0,  # below the lung apex
        # lung content
        "vessel_generations": 5,
        "n_nodules": 2,
        "nodule_min_mm": 5.0,
        "nodule_max_mm": 20.0,
        # attenuation (HU) and noise
        "air_hu": -1000.0,
        "lung_hu": -850.0,
        "lung_gradient_hu": 30.0,  # posterior (dependent) lung this much denser than anterior
        "soft_tissue_hu": 40.0,
        "fat_hu": -100.0,
        "liver_hu": 60.0,
        "bone_hu": 700.0,
        "vessel_hu": 40.0,
        "nodule_hu": 30.0,
        "noise_hu": 20.0,  # standard deviation of the Gaussian noise
        # scanner field of view
        "fov_diameter_mm": None,  # None: the circle inscribed in the image
        "padding_hu": -3024.0,  # value outside the field of view
    }
)

# Storage variants of the sample cohort, cycled by patient index: (signed, intercept,
# padding HU, write PixelPaddingValue). The padding alternates -3024 / -2000 HU as on real
# scanners; unsigned storage needs an intercept low enough to hold the padding.
_STORAGE_VARIANTS = (
    (True, -1024.0, -3024.0, True),  # stored padding -2000 (GE/Siemens style)
    (True, -1000.0, -2000.0, False),  # stored padding -1000, no PixelPaddingValue
    (False, -3024.0, -3024.0, True),  # uint16, PixelRepresentation 0, stored padding 0
    (True, -1024.0, -2000.0, True),  # stored padding -976
)
# Ranges the cohort draws each patient from.
_COHORT_BODY_WIDTH_MM = (300.0, 340.0)
_COHORT_BODY_DEPTH_MM = (222.0, 252.0)
_COHORT_LUNG_SCALE = (0.97, 1.06)
_COHORT_FOV_MM = (340.0, 350.0, 360.0)  # reconstruction diameters (image width)
_COHORT_SLICE_MM = (2.5, 2.5, 2.0)  # cycled by patient index
_COHORT_COVERAGE_MM = (250.0, 275.0)  # scan length
_COHORT_NODULES = (1, 3)  # inclusive
_COHORT_PIXELS = 256
_STUDY_DATE = "20000101"  # fixed so that files are reproducible (LIDC uses the same)


# --------------------------------------------------------------------------- geometry helpers


def _check_shape_spacing(shape, spacing) -> tuple[tuple[int, int, int], np.ndarray]:
    try:
        shape_t = tuple(int(n) for n in shape)
    except (TypeError, ValueError) as err:
        raise TypeError(f"shape must be 3 integers (z, y, x), got {shape!r}") from err
    if len(shape_t) != 3 or any(n < m for n, m in zip(shape_t, _MIN_SHAPE, strict=True)):
        raise ValueError(
            f"shape must be 3 integers (z, y, x) of at least {_MIN_SHAPE}, got {shape!r}"
        )
    spacing_a = np.asarray(spacing, dtype=np.float64)
    if spacing_a.shape != (3,) or not np.all(np.isfinite(spacing_a)) or np.any(spacing_a <= 0):
        raise ValueError(f"spacing must be 3 positive finite mm values (z, y, x), got {spacing!r}")
    return shape_t, spacing_a


def _default_origin(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """World (z, y, x) of voxel [0, 0, 0]: image centred on the scanner axis, top slice at -10 mm."""
    nz, ny, nx = shape
    sz, sy, sx = spacing
    top_mm = -10.0  # like LIDC-IDRI: the table positions are negative
    return np.array([top_mm - (nz - 1) * sz, -(ny - 1) / 2 * sy, -(nx - 1) / 2 * sx])


def _ellipse_r2(y, x, cy, cx, ay, ax):
    """Squared normalised elliptical radius (< 1 inside)."""
    return ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2


def _dome_r2(y, x, cy, cx, ay, ax):
    """Normalised squared distance (clipped to 0..1) from the top of a diaphragm dome."""
    return np.clip(_ellipse_r2(y, x, cy, cx, ay * _DOME_AP_FACTOR, 2 * ax), 0.0, 1.0).astype(
        np.float32
    )


def _capsule_fraction(vol, spacing, p0, p1, radius, *, edge_mm):
    """Raise ``vol`` to the occupancy (0..1, soft edge) of a capsule p0-p1 (mm, z-y-x)."""
    p0 = np.asarray(p0, float)
    p1 = np.asarray(p1, float)
    pad = radius + edge_mm
    lo = np.floor((np.minimum(p0, p1) - pad) / spacing).astype(int)
    hi = np.ceil((np.maximum(p0, p1) + pad) / spacing).astype(int) + 1
    lo = np.clip(lo, 0, vol.shape)
    hi = np.clip(hi, 0, vol.shape)
    if np.any(hi <= lo):
        return
    z = (np.arange(lo[0], hi[0]) * spacing[0])[:, None, None]
    y = (np.arange(lo[1], hi[1]) * spacing[1])[None, :, None]
    x = (np.arange(lo[2], hi[2]) * spacing[2])[None, None, :]
    d = p1 - p0
    dd = float(d @ d)
    if dd > 0:
        t = ((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / dd
        t = np.clip(t, 0.0, 1.0)
    else:
        t = 0.0
    dist = np.sqrt(
        (z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2
    )
    frac = np.clip((radius - dist) / edge_mm + 0.5, 0.0, 1.0).astype(vol.dtype)
    view = vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    np.maximum(view, frac, out=view)


def _rotate_away(direction, angle, rng):
    """``direction`` turned by ``angle`` (radians) about a random perpendicular axis, both ways."""
    helper = rng.standard_normal(3)
    perp = helper - (helper @ direction) * direction
    perp /= np.linalg.norm(perp)
    a = math.cos(angle) * direction + math.sin(angle) * perp
    b = math.cos(angle) * direction - math.sin(angle) * perp
    return a / np.linalg.norm(a), b / np.linalg.norm(b)


def _vessel_segments(hilum, targets, generations, rng):
    """Segments (p0, p1, radius) of a binary tree growing from ``hilum`` towards ``targets``."""
    segments = []
    stack = []
    for target in targets:
        vec = np.asarray(target, float) - hilum
        length = float(np.linalg.norm(vec)) * _VESSEL_ROOT_REACH
        stack.append(
            (np.asarray(hilum, float), vec / np.linalg.norm(vec), length, _VESSEL_ROOT_RADIUS_MM, 0)
        )
    while stack:
        start, direction, length, radius, gen = stack.pop()
        end = start + direction * length
        segments.append((start, end, radius))
        if gen + 1 < generations:
            angle = math.radians(rng.uniform(*_VESSEL_ANGLE_DEG))
            for child in _rotate_away(direction, angle, rng):
                stack.append(
                    (
                        end,
                        child,
                        length * _VESSEL_LENGTH_RATIO,
                        radius * _VESSEL_RADIUS_RATIO,
                        gen + 1,
                    )
                )
    return segments


def _place_nodules(lungs, blocked, spacing, n, size_range, rng):
    """Centres (voxel index) and diameters (mm) of ``n`` spheres well inside ``lungs``."""
    placed = []
    candidates = [np.flatnonzero(m) for m in lungs]
    for k in range(n):
        diameter = float(rng.uniform(*size_range))
        reach = diameter / 2 + _NODULE_MARGIN_MM
        half = np.ceil(reach / spacing).astype(int)
        offsets = np.stack(
            np.meshgrid(*(np.arange(-h, h + 1) for h in half), indexing="ij"), axis=-1
        ).reshape(-1, 3)
        offsets = offsets[np.linalg.norm(offsets * spacing, axis=1) <= reach]
        for _ in range(_NODULE_TRIES):
            side = int(rng.integers(len(lungs)))
            flat = candidates[side][rng.integers(len(candidates[side]))]
            centre = np.array(np.unravel_index(flat, lungs[side].shape))
            pts = centre + offsets
            if np.any(pts < 0) or np.any(pts >= lungs[side].shape):
                continue
            idx = tuple(pts.T)
            if lungs[side][idx].all() and not blocked[idx].any():
                blocked[idx] = True
                placed.append((centre, diameter))
                break
        else:
            raise ValueError(
                f"could not place nodule {k + 1} of {n} (diameter {diameter:.1f} mm) inside the "
                f"lungs in {_NODULE_TRIES} tries: lungs too small for nodule_max_mm={size_range[1]}"
            )
    return placed


# --------------------------------------------------------------------------- phantom


@dataclass
class _Frame:
    """The phantom's grid and parameters, shared by its drawing stages.

    Coordinates are voxel centres in mm: ``z`` (nz, 1, 1) from the bottom slice, ``y2``
    (ny, 1) and ``x2`` (1, nx) from the image centre; ``p`` the anatomy parameters.
    """

    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    p: dict
    z: np.ndarray
    y2: np.ndarray
    x2: np.ndarray
    fov_d: float
    z_apex: float
    z_base: float

    @property
    def half_w(self) -> float:
        return self.p["body_width_mm"] / 2

    @property
    def half_d(self) -> float:
        return self.p["body_depth_mm"] / 2

    @property
    def extent(self) -> np.ndarray:
        return np.array(self.shape) * self.spacing

    @property
    def centre_shift(self) -> np.ndarray:
        """Centred mm (y, x from the image centre) -> index-frame mm (from voxel 0)."""
        _, ny, nx = self.shape
        return np.array([0.0, (ny - 1) / 2 * self.spacing[1], (nx - 1) / 2 * self.spacing[2]])

    @property
    def edge(self) -> float:
        """Soft-edge width (mm) of the drawn capsules and spheres: the in-plane pixel."""
        return float(min(self.spacing[1], self.spacing[2]))


def _frame(shape, spacing, origin, anatomy) -> _Frame:
    """Check the arguments of :func:`make_phantom` and lay out its grid."""
    shape, spacing_a = _check_shape_spacing(shape, spacing)
    unknown = sorted(set(anatomy) - set(ANATOMY_DEFAULTS))
    if unknown:
        raise TypeError(
            f"unknown anatomy parameter(s) {unknown}; known: {sorted(ANATOMY_DEFAULTS)}"
        )
    p = {**ANATOMY_DEFAULTS, **anatomy}
    origin_a = _default_origin(shape, spacing_a) if origin is None else np.asarray(origin, float)
    if origin_a.shape != (3,) or not np.all(np.isfinite(origin_a)):
        raise ValueError(f"origin must be 3 finite mm values (z, y, x), got {origin!r}")
    nz, ny, nx = shape
    sz, sy, sx = spacing_a
    extent = np.array(shape) * spacing_a
    fov_d = (
        min(extent[1], extent[2]) if p["fov_diameter_mm"] is None else float(p["fov_diameter_mm"])
    )
    if max(p["body_width_mm"], p["body_depth_mm"]) / 2 >= fov_d / 2:
        raise ValueError(
            f"body {p['body_width_mm']} x {p['body_depth_mm']} mm does not fit in the field of "
            f"view of {fov_d:.1f} mm (image {extent[2]:.1f} x {extent[1]:.1f} mm)"
        )
    z_apex = extent[0] - p["apex_margin_mm"]
    z_base = z_apex - p["lung_height_mm"]
    if z_base < sz:
        raise ValueError(
            f"volume of {nz} slices x {sz} mm = {extent[0]:.0f} mm is too short for lungs of "
            f"lung_height_mm={p['lung_height_mm']} below apex_margin_mm={p['apex_margin_mm']}"
        )
    return _Frame(
        shape=shape, spacing=spacing_a, origin=origin_a, p=p,
        z=(np.arange(nz) * sz)[:, None, None],
        y2=((np.arange(ny) - (ny - 1) / 2) * sy)[:, None],
        x2=((np.arange(nx) - (nx - 1) / 2) * sx)[None, :],
        fov_d=fov_d, z_apex=z_apex, z_base=z_base,
    )


def _cross_sections(f: _Frame) -> dict[str, np.ndarray]:
    """2-D (y, x) masks of the slice-invariant anatomy: field of view, body, chest wall, spine."""
    y2, x2, p = f.y2, f.x2, f.p
    half_w, half_d = f.half_w, f.half_d
    fat_in, wall = p["fat_thickness_mm"], p["chest_wall_mm"]
    rib_in = wall - _RIB_PLEURA_GAP_MM  # depth (mm, from the skin) of the ribs' inner surface
    rib_r2 = _ellipse_r2(y2, x2, 0, 0, half_d - rib_in, half_w - rib_in)
    rib_out = _ellipse_r2(
        y2, x2, 0, 0, half_d - rib_in + _RIB_THICKNESS_MM, half_w - rib_in + _RIB_THICKNESS_MM
    )
    y_vert = half_d - _VERTEBRA_DEPTH_MM
    y_canal = y_vert + _VERTEBRA_SEMI_AXES_MM[0] + _CANAL_RADIUS_MM
    canal2 = _ellipse_r2(y2, x2, y_canal, 0, _CANAL_RADIUS_MM, _CANAL_RADIUS_MM) < 1.0
    arch_r = _CANAL_RADIUS_MM + _ARCH_THICKNESS_MM
    return {
        "fov": (y2 / (f.fov_d / 2)) ** 2 + (x2 / (f.fov_d / 2)) ** 2 < 1.0,
        "body": _ellipse_r2(y2, x2, 0, 0, half_d, half_w) < 1.0,
        "inner": _ellipse_r2(y2, x2, 0, 0, half_d - fat_in, half_w - fat_in) < 1.0,
        "pleura": _ellipse_r2(y2, x2, 0, 0, half_d - wall, half_w - wall) < 1.0,
        "rib_band": (rib_r2 >= 1.0) & (rib_out < 1.0),
        "vertebra": _ellipse_r2(
            y2, x2, y_vert, 0, _VERTEBRA_SEMI_AXES_MM[0], _VERTEBRA_SEMI_AXES_MM[1]
        ) < 1.0,
        "canal": canal2,
        "arch": (_ellipse_r2(y2, x2, y_canal, 0, arch_r, arch_r) < 1.0) & ~canal2,
        "spinous": (np.abs(x2) < _ARCH_THICKNESS_MM)
        & (y2 > y_canal)
        & (y2 < half_d - fat_in - _ARCH_THICKNESS_MM),
        "sternum": (np.abs(x2) < _STERNUM_HALF_WIDTH_MM)
        & (y2 < -(half_d - rib_in))
        & (y2 > -(half_d - rib_in + _RIB_THICKNESS_MM)),
    }


def _heart(f: _Frame, grow_mm: float) -> np.ndarray:
    """The heart ellipsoid (sitting on the left hemidiaphragm), grown by ``grow_mm``."""
    p = f.p
    centre = (
        f.z_base + p["dome_height_mm"] + p["heart_height_mm"] / 2 - _HEART_SINK_MM,
        -p["heart_anterior_mm"],
        p["heart_shift_mm"],
    )
    a = np.array([p["heart_height_mm"], p["heart_depth_mm"], p["heart_width_mm"]]) / 2 + grow_mm
    zt = (((f.z - centre[0]) / a[0]) ** 2).astype(np.float32)
    yx = _ellipse_r2(f.y2, f.x2, centre[1], centre[2], a[1], a[2]).astype(np.float32)
    return yx[None] < 1.0 - zt


def _lung_box(f: _Frame) -> tuple[float, float, float]:
    """Lateral pleura (mm from the midline), lung semi-depth and centre y (mm)."""
    ay = f.p["lung_depth_mm"] / 2
    return f.half_w - f.p["chest_wall_mm"], ay, f.half_d - f.p["chest_wall_mm"] - ay


def _lungs(f: _Frame, pleura2: np.ndarray, heart_margin: np.ndarray) -> list[tuple]:
    """Per lung ``(mask, side, cx, ax, dome base z)``: right (patient right = -x) first.

    Per slice an ellipse shrinking towards the apex, above the diaphragm dome.
    """
    p, z, y2, x2 = f.p, f.z, f.y2, f.x2
    lung_top_of_cap = f.z_apex - p["apex_cap_mm"]
    cap = np.clip((z - lung_top_of_cap) / p["apex_cap_mm"], 0.0, 1.0)
    # (nz, 1, 1) squared size of the cross-section: 1 below the cap, 0 at the apex
    scale2 = (1.0 - cap**2).astype(np.float32)
    lateral, ay, cy = _lung_box(f)
    inside_z = (z > f.z_base) & (z < f.z_apex)
    lungs = []
    for side, width, dome_offset in (
        (-1.0, p["right_lung_width_mm"], p["right_dome_offset_mm"]),
        (+1.0, p["left_lung_width_mm"], 0.0),
    ):
        ax = width / 2
        cx = side * (lateral - ax)
        r2 = _ellipse_r2(y2, x2, cy, cx, ay, ax).astype(np.float32)
        r2[~pleura2] = np.inf
        # the diaphragm dome peaks at the lung's medial edge, so that a slice through it cuts
        # the lung base into a crescent open towards the mediastinum (not a closed ring)
        dome2 = _dome_r2(y2, x2, cy, cx - side * ax, ay, ax)
        # above the dome: z - base > dome * (1 - dome2)  <=>  dome2 > 1 - (z - base) / dome
        dome_min = (1.0 - (z - f.z_base - dome_offset) / p["dome_height_mm"]).astype(np.float32)
        lung = (r2[None] < scale2) & (dome2[None] > dome_min) & inside_z & ~heart_margin
        lungs.append((lung, side, cx, ax, f.z_base + dome_offset))
    return lungs


def _liver(f: _Frame, right_lung: tuple, pleura2: np.ndarray, heart: np.ndarray) -> np.ndarray:
    """The liver: the body below the right hemidiaphragm."""
    _, side, cx, ax, zb = right_lung
    _, ay, cy = _lung_box(f)
    liver_top = zb + f.p["dome_height_mm"] * (1.0 - _dome_r2(f.y2, f.x2, cy, cx - side * ax, ay, ax))
    liver2 = (f.x2 < f.p["heart_shift_mm"]) & pleura2
    return (f.z < np.where(liver2, liver_top, -np.inf)[None]) & ~heart


def _airways(f: _Frame, lungs: list[tuple]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Occupancy of the trachea and main bronchi, and each lung's hilum (centred mm)."""
    p, shift = f.p, f.centre_shift
    _, _, cy = _lung_box(f)
    z_carina = f.z_apex - p["carina_depth_mm"]
    carina = np.array([z_carina, _TRACHEA_Y_MM, 0.0])
    airway_f = np.zeros(f.shape, np.float32)
    top = np.array([f.extent[0] + p["trachea_diameter_mm"], _TRACHEA_Y_MM, 0.0])
    _capsule_fraction(airway_f, f.spacing, carina + shift, top + shift,
                      p["trachea_diameter_mm"] / 2, edge_mm=f.edge)
    hila = []
    for _, side, cx, ax, _ in lungs:
        medial = cx - side * ax
        hilum = np.array([z_carina - _HILUM_BELOW_CARINA_MM, cy - _HILUM_ANTERIOR_MM,
                          medial + side * _HILUM_DEPTH_MM])
        hila.append(hilum)
        _capsule_fraction(airway_f, f.spacing, carina + shift, hilum + shift,
                          p["bronchus_diameter_mm"] / 2, edge_mm=f.edge)
    return airway_f, hila


def _vessels(f: _Frame, lungs: list[np.ndarray], hila: list[np.ndarray], airway: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Occupancy of the vessels: from each hilum, binary trees towards random lung points."""
    vessel_f = np.zeros(f.shape, np.float32)
    for lung, hilum in zip(lungs, hila, strict=True):
        inside = np.flatnonzero(lung)
        picks = rng.choice(inside, size=_VESSEL_ROOTS, replace=False)
        targets = np.stack(np.unravel_index(picks, f.shape), axis=1) * f.spacing
        roots = (
            hilum + f.centre_shift + rng.uniform(-1, 1, size=(_VESSEL_ROOTS, 3)) * _HILUM_SPREAD_MM
        )
        for root, target in zip(roots, targets, strict=True):
            for p0, p1, radius in _vessel_segments(
                root, [target], int(f.p["vessel_generations"]), rng
            ):
                _capsule_fraction(vessel_f, f.spacing, p0, p1, radius, edge_mm=f.edge)
    vessel_f *= lungs[0] | lungs[1]
    vessel_f[airway] = 0.0
    return vessel_f


def _nodules(f: _Frame, lungs: list[np.ndarray], airway_f: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, list[tuple]]:
    """Occupancy of the nodules and their ``(world centre mm, diameter mm)``."""
    p = f.p
    placed = _place_nodules(lungs, airway_f > 0, f.spacing, int(p["n_nodules"]),
                            (p["nodule_min_mm"], p["nodule_max_mm"]), rng)
    nodule_f = np.zeros(f.shape, np.float32)
    nodules = []
    for centre, diameter in placed:
        c_mm = centre * f.spacing
        _capsule_fraction(nodule_f, f.spacing, c_mm, c_mm, diameter / 2, edge_mm=f.edge)
        world = f.origin + c_mm
        nodules.append((tuple(float(v) for v in world), diameter))
    return nodule_f, nodules


def _bone(f: _Frame, xs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bone mask (vertebrae without their discs, arches, sternum, ribs) and the disc slices."""
    nz, _, nx = f.shape
    y2, x2, z = f.y2, f.x2, f.z
    vert2 = xs["vertebra"]
    bone = np.zeros(f.shape, bool)
    bone[:, vert2 | xs["arch"] | xs["spinous"] | xs["sternum"]] = True
    disc_slices = np.flatnonzero(np.mod(z[:, 0, 0], _DISC_PERIOD_MM) < _DISC_HEIGHT_MM)
    bone[np.ix_(disc_slices, *np.nonzero(vert2))] = False  # intervertebral discs
    # ribs: oblique bands in the chest wall, higher posteriorly than anteriorly
    band = np.flatnonzero(xs["rib_band"] & ~((np.abs(x2) < _RIB_ANTERIOR_GAP_MM) & (y2 < 0)))
    yb, xb = y2[:, 0][band // nx], x2[0][band % nx]
    sin_b = yb / np.maximum(np.hypot(yb, xb), 1e-6)  # +1 posterior, -1 anterior
    rib_z = z[:, 0, :] + (_RIB_DROP_MM * (1.0 - sin_b) / 2 - (f.z_base - _RIB_BELOW_BASE_MM))[None]
    ribs = (
        (np.mod(rib_z, _RIB_PITCH_MM) < _RIB_HEIGHT_MM) & (rib_z >= 0) & (rib_z < f.z_apex - f.z_base)
    )
    bone.reshape(nz, -1)[:, band] |= ribs
    return bone, disc_slices


def _paint(f: _Frame, xs: dict, organs: dict, fractions: dict) -> np.ndarray:
    """The noise-free HU volume (float32): tissues, then vessels, nodules and airways blended in."""
    p, shape = f.p, f.shape
    slice2 = np.full(shape[1:], p["air_hu"], np.float32)
    slice2[xs["body"]] = p["soft_tissue_hu"]
    slice2[xs["body"] & ~xs["inner"]] = p["fat_hu"]
    slice2[xs["canal"]] = _CSF_HU
    img = np.empty(shape, np.float32)
    img[:] = slice2
    img[organs["epicardial"]] = p["fat_hu"]
    img[organs["liver"]] = p["liver_hu"]
    img[organs["bone"]] = p["bone_hu"]
    img[(organs["disc_slices"][:, None], *np.nonzero(xs["vertebra"]))] = _DISC_HU
    _, ay, cy = _lung_box(f)
    gradient = p["lung_gradient_hu"] * np.clip((f.y2 - cy) / ay, -1, 1) / 2
    np.copyto(img, np.broadcast_to((p["lung_hu"] + gradient).astype(np.float32), shape),
              where=organs["lungs"])
    for name, hu_key in (("vessel", "vessel_hu"), ("nodule", "nodule_hu"), ("airway", "air_hu")):
        img += fractions[name] * (np.float32(p[hu_key]) - img)
    return img


def _reconstruct(f: _Frame, img: np.ndarray, fov: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Scanner reconstruction of ``img``: blur, noise, scanner range, field of view -> int16 HU."""
    img = ndimage.gaussian_filter(img, np.array(_BLUR_SIGMA_MM) / f.spacing, mode="nearest")
    img += rng.standard_normal(f.shape, dtype=np.float32) * np.float32(f.p["noise_hu"])
    np.clip(img, HU_MIN, HU_MAX, out=img)
    img[:, ~fov] = f.p["padding_hu"]
    return np.rint(img).astype(np.int16)


def make_phantom(
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    *,
    rng: np.random.Generator | int | None = None,
    origin: Sequence[float] | None = None,
    **anatomy: float | int | None,
) -> tuple[np.ndarray, dict]:
    """Draw a synthetic chest CT volume in HU, with its ground truth.

    Parameters
    ----------
    shape : sequence of 3 int
        Volume shape (z, y, x); z index 0 is the most inferior (caudal) slice.
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm.
    rng : numpy.random.Generator, int or None
        Random source (noise, vessel branching, nodule positions and sizes).
    origin : sequence of 3 float, optional
        World (z, y, x) mm of voxel [0, 0, 0]; only used for the nodule centres of the
        truth. Default: the image centred on the scanner axis, top slice at z = -10 mm
        (the same default as :func:`write_series`).
    **anatomy
        Overrides of :data:`ANATOMY_DEFAULTS` (lengths in mm, attenuations in HU).

    Returns
    -------
    hu : numpy.ndarray of int16, shape ``shape``
        The volume in HU; voxels outside the circular field of view hold ``padding_hu``.
    truth : dict
        ``right_lung``, ``left_lung`` (bool masks of the lung regions, including the
        vessels, nodules and bronchi inside them; the right lung has the smaller x
        indices), ``body``, ``fat``, ``bone`` (ribs, sternum, vertebrae), ``spine`` (the vertebral
        column with its discs and canal), ``heart``, ``liver``, ``airway``
        (trachea and main bronchi), ``vessels``, ``nodule_mask``, ``fov`` (bool masks);
        ``nodules`` (list of ``(center_zyx_mm, diameter_mm)`` in world mm);
        ``lung_volume_l`` (float, both lungs); ``spacing``, ``origin`` (float arrays)
        and ``anatomy`` (the parameters used).

    Raises
    ------
    TypeError
        An unknown anatomy parameter.
    ValueError
        A shape, spacing or anatomy that does not fit (the message names the value).

    Examples
    --------
    >>> hu, truth = make_phantom((45, 96, 96), (6.0, 3.6, 3.6), rng=0, vessel_generations=2)
    >>> hu.dtype, hu.shape
    (dtype('int16'), (45, 96, 96))
    >>> 2.5 < truth["lung_volume_l"] < 6.0
    True
    """
    f = _frame(shape, spacing, origin, anatomy)
    rng = np.random.default_rng(rng)
    xs = _cross_sections(f)
    heart, heart_margin = _heart(f, 0.0), _heart(f, _PERICARDIUM_MM)
    lungs = _lungs(f, xs["pleura"], heart_margin)
    right, left = (lung[0] for lung in lungs)
    liver = _liver(f, lungs[0], xs["pleura"], heart)
    airway_f, hila = _airways(f, lungs)
    vessel_f = _vessels(f, [right, left], hila, airway_f >= 0.5, rng)
    nodule_f, nodules = _nodules(f, [right, left], airway_f, rng)
    bone, disc_slices = _bone(f, xs)
    organs = {"right_lung": right, "left_lung": left, "heart": heart, "liver": liver,
              "epicardial": heart_margin & ~heart & ~liver,  # pericardial fat
              "bone": bone, "disc_slices": disc_slices, "lungs": right | left}
    fractions = {"vessel": vessel_f, "nodule": nodule_f, "airway": airway_f}
    hu = _reconstruct(f, _paint(f, xs, organs, fractions), xs["fov"], rng)
    return hu, _truth(f, xs, organs, fractions, nodules)


def _truth(f: _Frame, xs: dict, organs: dict, fractions: dict, nodules: list) -> dict:
    """The ``truth`` dict of :func:`make_phantom` (masks, nodules, volume, geometry)."""
    def whole(mask2d: np.ndarray) -> np.ndarray:
        return np.broadcast_to(mask2d, f.shape).copy()

    return {
        "right_lung": organs["right_lung"],
        "left_lung": organs["left_lung"],
        "body": whole(xs["body"]),
        "fat": (xs["body"] & ~xs["inner"])[None] | organs["epicardial"],
        "bone": organs["bone"],
        "spine": whole(xs["vertebra"] | xs["arch"] | xs["spinous"] | xs["canal"]),
        "heart": organs["heart"],
        "liver": organs["liver"] & ~organs["bone"],
        "airway": fractions["airway"] >= 0.5,
        "vessels": fractions["vessel"] >= 0.5,
        "nodule_mask": fractions["nodule"] >= 0.5,
        "fov": whole(xs["fov"]),
        "nodules": nodules,
        "lung_volume_l": float(organs["lungs"].sum()) * (float(np.prod(f.spacing)) / 1e6),
        "spacing": f.spacing,
        "origin": f.origin,
        "anatomy": dict(f.p),
    }


# --------------------------------------------------------------------------- DICOM writing


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``value``."""
    for digits in (15, 12, 10, 8, 6):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value!r} cannot be written as a DICOM decimal string")


@dataclass(frozen=True)
class SeriesStorage:
    """How :func:`write_series` stores HU and labels the series' display.

    Attributes
    ----------
    slope, intercept : float
        RescaleSlope and RescaleIntercept: stored = round((hu - intercept) / slope).
    unsigned : bool
        Store uint16 (PixelRepresentation 0) instead of int16.
    padding_hu : float, optional
        When given, write PixelPaddingValue as the stored value of this HU.
    window : (float, float)
        WindowCenter and WindowWidth (HU).
    study_date : str
        StudyDate/SeriesDate/ContentDate (``YYYYMMDD``).
    """

    slope: float = 1.0
    intercept: float = -1024.0
    unsigned: bool = False
    padding_hu: float | None = None
    window: tuple[float, float] = _LUNG_WINDOW
    study_date: str = _STUDY_DATE

    @property
    def dtype(self) -> np.dtype:
        """Stored pixel type (little-endian 16 bit)."""
        return np.dtype("<u2") if self.unsigned else np.dtype("<i2")


@dataclass(frozen=True)
class _Series:
    """What every slice file of one series shares (see :func:`_slice_dataset`)."""

    patient_id: str
    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    storage: SeriesStorage
    padding_stored: int | None
    token: str  # seeded entropy of every UID of the series

    def uid(self, *parts: object) -> str:
        return generate_uid(entropy_srcs=[self.token, *map(str, parts)])


def _checked_geometry(hu, spacing, origin, patient_id: str, storage: SeriesStorage):
    """``hu``, ``spacing`` and ``origin`` as arrays, checked (the messages name the patient)."""
    hu_a = np.asarray(hu)
    if hu_a.ndim != 3 or 0 in hu_a.shape:
        raise ValueError(
            f"patient {patient_id}: hu must be a non-empty 3-D (z, y, x) array, got shape {hu_a.shape}"
        )
    if not np.issubdtype(hu_a.dtype, np.number):
        raise ValueError(f"patient {patient_id}: hu must be numeric, got dtype {hu_a.dtype}")
    spacing_a = np.asarray(spacing, dtype=np.float64)
    if spacing_a.shape != (3,) or not np.all(np.isfinite(spacing_a)) or np.any(spacing_a <= 0):
        raise ValueError(
            f"patient {patient_id}: spacing must be 3 positive mm values (z, y, x), got {spacing!r}"
        )
    slope, intercept = storage.slope, storage.intercept
    if not slope or not math.isfinite(slope) or not math.isfinite(intercept):
        raise ValueError(
            f"patient {patient_id}: invalid rescale slope {slope!r} / intercept {intercept!r}"
        )
    origin_a = _default_origin(hu_a.shape, spacing_a) if origin is None else np.asarray(origin, float)
    if origin_a.shape != (3,) or not np.all(np.isfinite(origin_a)):
        raise ValueError(
            f"patient {patient_id}: origin must be 3 finite mm values (z, y, x), got {origin!r}"
        )
    return hu_a, spacing_a, origin_a


def _stored_values(hu_a: np.ndarray, storage: SeriesStorage, patient_id: str):
    """The stored pixel values of ``hu_a`` and of the padding HU (None without padding)."""
    slope, intercept, dtype = storage.slope, storage.intercept, storage.dtype
    limits = np.iinfo(dtype)
    stored = np.rint((hu_a.astype(np.float64) - intercept) / slope)
    lo, hi = float(stored.min()), float(stored.max())
    if lo < limits.min or hi > limits.max:
        raise ValueError(
            f"patient {patient_id}: stored values {lo:.0f}..{hi:.0f} (HU {hu_a.min()}..{hu_a.max()}, "
            f"intercept {intercept}, slope {slope}) do not fit {dtype.name}"
        )
    if storage.padding_hu is None:
        return stored.astype(dtype), None
    padding_stored = (storage.padding_hu - intercept) / slope
    if padding_stored != round(padding_stored) or not limits.min <= padding_stored <= limits.max:
        raise ValueError(
            f"patient {patient_id}: padding {storage.padding_hu} HU is not an exact {dtype.name} "
            f"stored value with intercept {intercept} and slope {slope}"
        )
    return stored.astype(dtype), int(round(padding_stored))


def _empty_folder(folder: str | Path, overwrite: bool) -> Path:
    """``folder`` created, its ``*.dcm`` files removed (``overwrite``) or refused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.dcm"))
    if existing and not overwrite:
        raise FileExistsError(
            f"{folder} already holds {len(existing)} DICOM files (pass overwrite=True to replace)"
        )
    for old in existing:
        old.unlink()
    return folder


def _file_names(nz: int, shuffle: bool, rng: np.random.Generator) -> list[str]:
    if not shuffle:
        return [f"{k + 1:06d}.dcm" for k in range(nz)]
    names = [f"{rng.bytes(8).hex()}.dcm" for _ in range(nz)]
    if len(set(names)) != nz:  # 64-bit names: a clash is practically impossible
        raise RuntimeError("file name collision; use another rng")
    return names


def _series_tags(ds: Dataset, s: _Series) -> None:
    """Patient, study, series and equipment tags (the same in every slice)."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = s.storage.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "dsbprep"
    ds.ManufacturerModelName = "synthetic chest phantom"
    ds.ReferringPhysicianName = ""
    ds.PatientName = f"SYNTHETIC^{s.patient_id}"
    ds.PatientID = s.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds(s.spacing[0])
    ds.KVP = "120"
    ds.ReconstructionDiameter = _ds(max(s.shape[1] * s.spacing[1], s.shape[2] * s.spacing[2]))
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = s.uid("study")
    ds.SeriesInstanceUID = s.uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = s.uid("frame")
    ds.PositionReferenceIndicator = ""


def _pixel_tags(ds: Dataset, s: _Series, pixels: np.ndarray) -> None:
    """Image pixel module, rescale and window tags, and the pixel data of one slice."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = s.shape[1], s.shape[2]
    ds.PixelSpacing = [_ds(s.spacing[1]), _ds(s.spacing[2])]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    unsigned = s.storage.unsigned
    ds.PixelRepresentation = 0 if unsigned else 1
    if s.padding_stored is not None:
        ds.add_new(0x00280120, "US" if unsigned else "SS", s.padding_stored)  # PixelPaddingValue
    ds.WindowCenter = _ds(s.storage.window[0])
    ds.WindowWidth = _ds(s.storage.window[1])
    ds.RescaleIntercept = _ds(s.storage.intercept)
    ds.RescaleSlope = _ds(s.storage.slope)
    ds.RescaleType = "HU"
    ds.add_new(0x7FE00010, "OW", pixels.tobytes())  # PixelData


def _slice_dataset(s: _Series, k: int, pixels: np.ndarray) -> Dataset:
    """The CT Image Storage dataset of slice ``k`` (stored values ``pixels``)."""
    sop_uid = s.uid("image", k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    _series_tags(ds, s)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = s.shape[0] - k
    z_mm = s.origin[0] + k * s.spacing[0]
    ds.ImagePositionPatient = [_ds(s.origin[2]), _ds(s.origin[1]), _ds(z_mm)]  # DICOM x, y, z
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = _ds(z_mm)
    _pixel_tags(ds, s, pixels)
    return ds


def write_series(
    hu: np.ndarray,
    spacing: Sequence[float],
    folder: str | Path,
    *,
    patient_id: str,
    rng: np.random.Generator | int | None = None,
    origin: Sequence[float] | None = None,
    storage: SeriesStorage | None = None,
    shuffle_names: bool = True,
    overwrite: bool = False,
    **storage_fields: Any,
) -> list[Path]:
    """Write a HU volume as an axial CT Image Storage series, one file per slice.

    Parameters
    ----------
    hu : numpy.ndarray, shape (z, y, x)
        Volume in HU; z index 0 is the most inferior slice (lowest ImagePositionPatient z).
    spacing : sequence of 3 float
        Voxel size (z, y, x) in mm: slice distance and PixelSpacing (rows, columns).
    folder : str or Path
        Output folder (created).
    patient_id : str
        PatientID, also the source of PatientName.
    rng : numpy.random.Generator, int or None
        Entropy of the UIDs and the file names; a fixed seed gives byte-identical files.
    origin : sequence of 3 float, optional
        World (z, y, x) mm of voxel [0, 0, 0] (identity orientation, LPS patient frame).
        Default: the image centred on the scanner axis, top slice at z = -10 mm.
    storage : SeriesStorage, optional
        Rescale, pixel type, padding, window and date (default ``SeriesStorage()``).
    shuffle_names : bool
        Random hexadecimal file names (not in z order); otherwise ``000001.dcm`` ... in z order.
    overwrite : bool
        Replace ``*.dcm`` files already in ``folder`` (otherwise they are an error).
    **storage_fields
        Fields of :class:`SeriesStorage` given one by one (``slope``, ``intercept``,
        ``unsigned``, ``padding_hu``, ``window``, ``study_date``), over ``storage``.

    Returns
    -------
    list of Path
        The files, in z order (``files[k]`` holds ``hu[k]``). InstanceNumber counts from
        the top (most superior) slice, as on many scanners, so it is not z order either.

    Raises
    ------
    ValueError
        A volume that is not 3-D, stored values out of the range of the pixel type, a
        padding value that is not representable.
    FileExistsError
        ``folder`` already holds DICOM files and ``overwrite`` is false.

    Examples
    --------
    >>> import tempfile, pydicom
    >>> hu = np.full((3, 8, 8), -1000, np.int16)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     files = write_series(hu, (2.5, 1.0, 1.0), tmp, patient_id="P1", rng=0)
    ...     ds = pydicom.dcmread(files[0])
    ...     print(len(files), ds.Modality, float(ds.ImagePositionPatient[2]), int(ds.pixel_array[0, 0]))
    3 CT -15.0 24
    """
    storage = replace(storage or SeriesStorage(), **storage_fields)
    hu_a, spacing_a, origin_a = _checked_geometry(hu, spacing, origin, patient_id, storage)
    rng = np.random.default_rng(rng)
    stored, padding_stored = _stored_values(hu_a, storage, patient_id)
    folder = _empty_folder(folder, overwrite)
    token = rng.bytes(16).hex()  # drawn before the names: the cohort's files depend on the order
    series = _Series(patient_id, hu_a.shape, spacing_a, origin_a, storage, padding_stored, token)
    names = _file_names(hu_a.shape[0], shuffle_names, rng)
    files = []
    for k, name in enumerate(names):
        path = folder / name
        dcmwrite(path, _slice_dataset(series, k, stored[k]), enforce_file_format=True)
        files.append(path)
    logger.debug("wrote %d slices of patient %s to %s", len(files), patient_id, folder)
    return files


# --------------------------------------------------------------------------- annotations

#: Reader id of the phantom's own nodule outlines in the cohort's annotation XML.
TRUTH_READER = "dsbprep-sample-truth"
#: Name of that XML in each patient folder.
ANNOTATION_FILE = "annotations.xml"


def nodule_outlines(
    center: Sequence[float],
    diameter_mm: float,
    *,
    origin: Sequence[float],
    spacing: Sequence[float],
    shape: Sequence[int],
) -> list[tuple[float, np.ndarray]]:
    """LIDC-style outlines of a spherical nodule: one closed polygon per slice it crosses.

    On slice ``k`` (world z ``origin[0] + k * spacing[0]``; the phantom's series
    are axial with identity direction) the sphere's cross-section has radius
    ``r``; the outline is that circle, its points rounded to pixels, so the
    largest axial diameter read back (:func:`dsbprep.annotations.parse_lidc_xml`)
    is the truth to about a pixel. (LIDC readers drew just outside the nodule,
    which makes their diameters a pixel or two larger.) Slices whose
    cross-section is under 1.5 pixels in radius get no outline.

    Returns
    -------
    list of (float, ndarray)
        ``(imageZposition, (n, 2) int (row, column) points)`` per slice, for
        :func:`dsbprep.annotations.write_lidc_xml`.

    Examples
    --------
    >>> rois = nodule_outlines((-50.0, 0.0, 0.0), 8.0, origin=(-60.0, -50.0, -50.0),
    ...                        spacing=(2.0, 1.0, 1.0), shape=(11, 101, 101))
    >>> [z for z, _ in rois]
    [-52.0, -50.0, -48.0]
    """
    origin_a, spacing_a = np.asarray(origin, float), np.asarray(spacing, float)
    centre_px = (np.asarray(center, float) - origin_a) / spacing_a
    radius = diameter_mm / 2
    rois = []
    for k in range(int(shape[0])):
        dz = (k - centre_px[0]) * spacing_a[0]
        if abs(dz) >= radius:
            continue
        r_mm = math.sqrt(radius**2 - dz**2)
        ry, rx = r_mm / spacing_a[1], r_mm / spacing_a[2]
        if min(ry, rx) < 1.5:
            continue
        angles = np.linspace(0, 2 * np.pi, int(np.ceil(4 * np.pi * max(ry, rx))) + 8, endpoint=False)
        points = np.round(np.column_stack([centre_px[1] + ry * np.sin(angles),
                                           centre_px[2] + rx * np.cos(angles)])).astype(np.int64)
        keep = np.any(points != np.roll(points, 1, axis=0), axis=1)  # no repeated neighbours
        points = np.clip(points[keep], 0, np.asarray(shape[1:]) - 1)
        rois.append((float(origin_a[0] + k * spacing_a[0]), points))
    return rois


def _write_truth_xml(folder: Path, files: Sequence[Path], hu_shape, truth: Mapping) -> Path:
    """The phantom's nodules as a one-reader LIDC XML in ``folder`` (see :func:`nodule_outlines`)."""
    from pydicom import dcmread

    from .annotations import write_lidc_xml

    series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    origin = truth["storage"]["origin"]
    nodules = [
        nodule_outlines(center, diameter, origin=origin, spacing=truth["spacing"], shape=hu_shape)
        for center, diameter in truth["nodules"]
    ]
    return write_lidc_xml(folder / ANNOTATION_FILE, [[n for n in nodules if n]],
                          series_uid=series_uid, reader_ids=[TRUTH_READER])


# --------------------------------------------------------------------------- the cohort


def write_sample_cohort(
    folder: str | Path,
    n_patients: int = 3,
    *,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write the default cohort of synthetic chest CT scans, one sub-folder per patient.

    Patient ``i`` is :func:`make_sample_patient` ``(i, seed=seed)``, drawn from its own
    generator (child ``i`` of ``SeedSequence(seed)``), so it does not depend on ``n_patients``. Patients differ in body size, lung size, field of
    view (pixel spacing), slice count and thickness, nodules and storage: the variants
    cycle through int16 / intercept -1024 / padding -3024 HU with PixelPaddingValue,
    int16 / intercept -1000 / padding -2000 HU without it, uint16 (PixelRepresentation 0)
    / intercept -3024, and int16 / intercept -1024 / padding -2000 HU.

    Parameters
    ----------
    folder : str or Path
        Cohort root (created); patient ``i`` goes to ``folder / f"SAMPLE-{i:03d}"``.
    n_patients : int
        Number of patients (>= 1).
    seed : int
        Root seed (>= 0): the same seed writes byte-identical files.
    overwrite : bool
        Replace the DICOM files of patient folders that already hold some.

    Returns
    -------
    list of Path
        The patient folders, in patient order. Each holds the series and
        ``annotations.xml``, an LIDC-style reader XML outlining the patient's nodules
        (:func:`nodule_outlines`), rewritten on every call.

    Raises
    ------
    ValueError
        ``n_patients`` < 1 or a negative ``seed``.
    FileExistsError
        A patient folder already holds DICOM files and ``overwrite`` is false.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     folders = write_sample_cohort(tmp, n_patients=1, seed=0)
    ...     print([f.name for f in folders], len(list(folders[0].glob("*.dcm"))) > 80)
    ['SAMPLE-000'] True
    """
    if (
        isinstance(n_patients, bool)
        or not isinstance(n_patients, (int, np.integer))
        or n_patients < 1
    ):
        raise ValueError(f"n_patients must be an integer >= 1, got {n_patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for i in range(int(n_patients)):
        hu, truth = make_sample_patient(i, seed=int(seed))
        target = root / truth["patient_id"]
        files = write_series(
            hu, truth["spacing"], target, rng=truth["rng"], overwrite=overwrite, **truth["storage"]
        )
        _write_truth_xml(target, files, hu.shape, truth)
        logger.info(
            "synthetic patient %s: %d x %d x %d voxels of %.2f x %.2f x %.2f mm, lungs %.2f L, "
            "%d nodule(s) -> %s",
            truth["patient_id"],
            *hu.shape,
            *truth["spacing"],
            truth["lung_volume_l"],
            len(truth["nodules"]),
            target,
        )
        folders.append(target)
    return folders


def make_sample_patient(index: int, *, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Draw patient ``index`` of the sample cohort of root seed ``seed`` (no files written).

    This is what :func:`write_sample_cohort` writes for that patient, with the truth.

    Parameters
    ----------
    index : int
        Patient index (>= 0); it picks the storage variant and the slice thickness.
    seed : int
        Root seed of the cohort (>= 0).

    Returns
    -------
    hu : numpy.ndarray of int16
        The volume (z, y, x) in HU.
    truth : dict
        As returned by :func:`make_phantom`, plus ``patient_id``, ``storage`` (the keyword
        arguments of :func:`write_series`: ``patient_id``, ``origin``, ``intercept``,
        ``unsigned``, ``padding_hu``) and ``rng`` (the generator :func:`write_series` must
        continue with to reproduce the cohort's UIDs and file names).

    Examples
    --------
    >>> hu, truth = make_sample_patient(0)
    >>> truth["patient_id"], hu.shape[1:], truth["storage"]["intercept"]
    ('SAMPLE-000', (256, 256), -1024.0)
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    # child `index` of the root seed: independent of how many patients are drawn
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))
    signed, intercept, padding_hu, padding_tag = _STORAGE_VARIANTS[index % len(_STORAGE_VARIANTS)]
    fov_mm = float(rng.choice(_COHORT_FOV_MM))
    slice_mm = _COHORT_SLICE_MM[index % len(_COHORT_SLICE_MM)]
    nz = int(round(rng.uniform(*_COHORT_COVERAGE_MM) / slice_mm))
    spacing = (slice_mm, fov_mm / _COHORT_PIXELS, fov_mm / _COHORT_PIXELS)
    shape = (nz, _COHORT_PIXELS, _COHORT_PIXELS)
    lung_scale = rng.uniform(*_COHORT_LUNG_SCALE)
    anatomy = {
        "body_width_mm": rng.uniform(*_COHORT_BODY_WIDTH_MM),
        "body_depth_mm": rng.uniform(*_COHORT_BODY_DEPTH_MM),
        "right_lung_width_mm": ANATOMY_DEFAULTS["right_lung_width_mm"] * lung_scale,
        "left_lung_width_mm": ANATOMY_DEFAULTS["left_lung_width_mm"] * lung_scale,
        "lung_depth_mm": ANATOMY_DEFAULTS["lung_depth_mm"] * lung_scale,
        "lung_height_mm": ANATOMY_DEFAULTS["lung_height_mm"] * lung_scale,
        "n_nodules": int(rng.integers(_COHORT_NODULES[0], _COHORT_NODULES[1] + 1)),
        "padding_hu": padding_hu,
    }
    patient_id = f"SAMPLE-{index:03d}"
    origin = _default_origin(shape, spacing)
    hu, truth = make_phantom(shape, spacing, rng=rng, origin=origin, **anatomy)
    truth["patient_id"] = patient_id
    truth["storage"] = {
        "patient_id": patient_id,
        "origin": origin,
        "intercept": intercept,
        "unsigned": not signed,
        "padding_hu": padding_hu if padding_tag else None,
    }
    truth["rng"] = rng
    return hu, truth


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m dsbprep.phantom OUTDIR [--patients N] [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="python -m dsbprep.phantom",
        description="Write the embedded cohort of synthetic chest CT scans as DICOM series, "
                    "each with an LIDC-style XML outlining its nodules.",
    )
    parser.add_argument("outdir", type=Path, help="cohort folder (one sub-folder per patient)")
    parser.add_argument("--patients", type=int, default=3, help="number of patients (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="root seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing DICOM files")
    args = parser.parse_args(argv)
    try:
        folders = write_sample_cohort(
            args.outdir, args.patients, seed=args.seed, overwrite=args.overwrite
        )
    except (ValueError, FileExistsError) as err:
        parser.exit(2, f"error: {err}\n")
    for path in folders:
        print(f"{path}: {len(list(path.glob('*.dcm')))} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
