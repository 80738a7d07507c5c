"""Default parameters of the segmentation and preprocessing stages, written once.

Each stage's keyword defaults (:func:`dsbprep.segment.segment_lungs`,
:func:`dsbprep.preprocess.prepare_lung_volume`), its ``CONFIG_DEFAULTS`` and the
``[segmentation]`` / ``[preprocess]`` sections of :data:`dsbprep.config.DEFAULTS` (and so
``config.ini``) are all read from the dictionaries here. This module imports nothing, so
``import dsbprep.config`` stays light.

Examples
--------
>>> SEGMENTATION["intensity_threshold_hu"], SEGMENTATION["method"]
(-600.0, 'grt123')
>>> ini_value((0.68, 7.5)), ini_value(True), ini_value(-600.0)
('0.68, 7.5', 'true', '-600.0')
"""

from __future__ import annotations

__all__ = ["PREPROCESS", "PREPROCESS_EXTRA", "SEGMENTATION", "SEGMENTATION_METHODS", "ini_value"]

#: Lung segmentation methods: grt123's exact masks, or those corrected for airways and
#: pathology at the pleura (:mod:`dsbprep.segment_robust`, issue 17).
SEGMENTATION_METHODS = ("grt123", "robust")

#: Keyword -> default of :func:`dsbprep.segment.segment_lungs` (``[segmentation]``).
#: grt123's values are those of lfz/DSB2017 ``preprocessing/step1.py``.
SEGMENTATION: dict[str, object] = {
    # which masks: grt123 (exact, the detector's) or robust (airways out, pathology in)
    "method": "grt123",
    # Air/lung vs soft tissue: smoothed HU below this is air (binarize_per_slice intensity_th).
    "intensity_threshold_hu": -600.0,
    # Gaussian sigma in pixels, applied in-plane per slice (binarize_per_slice sigma=1).
    "smoothing_sigma_px": 1.0,
    # scipy's truncate: the kernel reaches 2 sigma = 2 pixels (hard-coded truncate=2.0).
    "smoothing_truncate": 2.0,
    # Smallest 2-D air component kept, mm^2 (area_th=30): drops noise specks.
    "min_component_area_mm2": 30.0,
    # Most elongated 2-D air component kept (eccen_th=0.99): drops the air strips around the body.
    "max_eccentricity": 0.99,
    # Side of the corner patch (pixels) tested for a uniform padding value (bg_patch_size=10).
    "corner_patch_px": 10,
    # Lung component volume range in litres: step1_python calls all_slice_analysis with
    # vol_limit=[0.68, 7.5] (the function's own default, [0.68, 8.2], is never used by it).
    "lung_volume_range_l": (0.68, 7.5),
    # Slices where a component covers more than this (mm^2) enter the distance test (area_th=6e3).
    "distance_min_slice_area_mm2": 6000.0,
    # Mean over those slices of the component's minimum distance to the scan axis must be below
    # this (dist_th=62 mm): lungs lie near the axis, air pockets at the body edge do not.
    "max_axis_distance_mm": 62.0,
    # Top slices removed per retry when no lung component is found (cut_step=2).
    "cut_step_slices": 2,
    # Erosions tried to split the lungs (two_lung_only max_iter=22).
    "max_erosions": 22,
    # Largest / second largest eroded component volume ratio accepted as two lungs (max_ratio=4.8).
    "max_lung_volume_ratio": 4.8,
    # Fraction of a slice's mask area covered by the 2-D components kept (extract_main cover=0.95).
    "slice_cover_fraction": 0.95,
    # Threads of the slab-parallel stages and of the robust method's two lungs (0 = one per CPU
    # core); the result does not depend on it.
    "threads": 0,
    # --- method = robust only (dsbprep.segment_robust, dsbprep.airways) ---
    # A trachea seed is air below this HU (air -1000; at 4 mm voxels its core is still < -950).
    "airway_seed_hu": -900.0,
    # One 15 HU threshold step that grows the airway by more than this (mL) has leaked into the
    # lung: trachea + main + lobar bronchi of an adult hold 30-80 mL, a clean step adds < 10 mL.
    "airway_leak_ml": 20.0,
    # The removed airway: lumen grown by this (mm), its wall and partial-volume rim, measured
    # from the lumen's edge (half a voxel beyond its voxel centres; dsbprep.airways).
    "airway_margin_mm": 3.0,
    # Gaps of one lung along z up to this length (mm) are lung with pathology.
    "pathology_gap_mm": 50.0,
    # ... added only within this in-plane distance (mm) of the lung outline's costal edges.
    "pathology_wall_mm": 30.0,
    # Voxels above this HU (bone, contrast-enhanced blood) are never added (lesions: -100..+100).
    "pathology_max_hu": 150.0,
}

#: Keyword -> default of :func:`dsbprep.preprocess.prepare_lung_volume` (``[preprocess]``).
PREPROCESS: dict[str, object] = {
    # mm (z, y, x); grt123 uses 1 mm, seed 000 uses 2 mm
    "target_spacing": (1.0, 1.0, 1.0),
    # HU mapped to 0 and 255
    "window": (-1200.0, 600.0),
    # uint8 value outside the dilated lungs (grt123: soft-tissue grey)
    "pad_value": 170,
    # uint8 level above which the dilated margin counts as bone
    "bone_threshold": 210,
    # voxel steps of the 6-connected dilation of the lung hulls
    "dilation_iterations": 10,
    # keep a slice's convex hull only if area(hull) <= ratio * area(mask)
    "hull_max_area_ratio": 2.0,
    # voxels of the target grid added below the lung box (2x above, as grt123)
    "margin": 5,
}

#: ``[preprocess]`` keys read by the lung source, not by ``prepare_lung_volume``.
PREPROCESS_EXTRA: dict[str, object] = {
    # keep a case in which only one lung was found (flagged) instead of failing it
    "allow_one_lung": True,
}


def ini_value(value: object) -> str:
    """A default as config.ini writes it: tuples comma-separated, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(ini_value(v) for v in value)
    return str(value)
