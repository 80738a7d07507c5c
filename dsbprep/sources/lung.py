"""Lung CT source: one chest CT (a DICOM patient folder or a volume file) -> one 3-D training case.

Layouts, mixed freely in one data directory:

- DICOM: Kaggle DSB ``stage1/<patient>/*.dcm`` (flat) and LIDC
  ``<patient>/<study>/<series>/*.dcm`` (nested). An immediate sub-folder of the data
  directory holding any file that is not a volume file is a DICOM patient (case id = the
  folder name); a data directory holding files itself (and no sub-folders) is one patient.
- Volume files (``.mhd``/``.mha``, ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``) anywhere below
  the data directory, e.g. LUNA16's ``subset0/<seriesuid>.mhd`` + ``.raw``: one case each,
  id = the file name without extension (LUNA16: the SeriesInstanceUID, so
  ``[annotations] luna_csv`` rows match it). A data file beside its header (``<id>.raw``,
  ``<id>.zraw``, ``<id>.raw.gz``) belongs to that case.

Discovery never follows symbolic links below an immediate sub-folder (no loops); an
immediate sub-folder may itself be a link (a patient linked into the data directory).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..io.volume import DATA_SUFFIXES, is_volume_file, volume_case_id
from ..store import CaseData
from . import SourceBase, Task, listing_fingerprint

__all__ = ["LungSource", "discover_patients"]

logger = logging.getLogger(__name__)


def _walk_files(folder: Path) -> list[Path]:
    """Non-hidden files below ``folder`` (``folder`` itself may be a link; links below are not followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False: no cycles
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    return [p for p in out if p.is_file()]


def _split_volumes(files: list[Path]) -> tuple[list[list[Path]], list[Path]]:
    """(volume cases as [header, its data files...], the other files)."""
    cases = {(p.parent, volume_case_id(p)): [p] for p in files if is_volume_file(p)}
    others = []
    for p in files:
        if is_volume_file(p):
            continue
        suffix = next((s for s in DATA_SUFFIXES if p.name.lower().endswith(s)), None)
        owner = cases.get((p.parent, p.name[: -len(suffix)])) if suffix else None
        if owner is not None:
            owner.append(p)
        else:
            others.append(p)
    return list(cases.values()), others


def _volume_tasks(cases: list[list[Path]], root: Path, seen: set[str]) -> list[Task]:
    tasks = []
    for files in cases:
        header = files[0]
        case = volume_case_id(header)
        if case in seen:
            rel = header.parent.relative_to(root) if header.parent.is_relative_to(root) else header.parent
            new = f"{str(rel).replace(os.sep, '_')}_{case}"
            logger.warning("%s: case id %s is taken (another file of that name); stored as %s",
                           header, case, new)
            case = new
        seen.add(case)
        tasks.append(Task(case, listing_fingerprint(files, header.parent), {"volume": str(header)}))
    return tasks


def discover_patients(data_directory: str | Path) -> list[Task]:
    """One :class:`Task` per DICOM patient folder and per volume file (see the module docstring).

    Raises
    ------
    FileNotFoundError
        ``data_directory`` does not exist.
    """
    root = Path(data_directory)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    top = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    volumes, others = _split_volumes(top)
    seen: set[str] = set()
    tasks: list[Task] = []
    if others and not subdirs:
        tasks.append(Task(root.name, listing_fingerprint(others, root), {"folder": str(root)}))
        seen.add(root.name)
    tasks += _volume_tasks(volumes, root, seen)
    for folder in subdirs:
        volumes, others = _split_volumes(_walk_files(folder))
        if others or not volumes:  # an empty folder is a (failing) patient, as before
            tasks.append(Task(folder.name, listing_fingerprint(others, folder),
                              {"folder": str(folder)}))
            seen.add(folder.name)
        tasks += _volume_tasks(volumes, root, seen)
    return tasks


def _grt123_meta(masks: Any, tv: Any, voxel_ml: float) -> dict[str, Any]:
    """With ``method = robust``: grt123's lung volumes (original grid) and its mask on the
    stored grid, resampled and cropped exactly as the stored mask (nearest neighbour, the
    stored crop: what lies outside the crop is lost), as runs where it differs from it."""
    from ..preprocess import resample_box
    from ..store import mask_diff

    if masks.grt123_left is None:
        return {}
    left, right = (resample_box(m, tv.index_scale, tv.crop_box, order=0)
                   for m in (masks.grt123_left, masks.grt123_right))
    labels = left.astype(np.uint8)
    labels[right & ~left] = 2  # prepare_lung_volume's rule
    return {
        "lung_volume_ml_grt123": {"left": float(np.count_nonzero(masks.grt123_left) * voxel_ml),
                                  "right": float(np.count_nonzero(masks.grt123_right) * voxel_ml)},
        "grt123_mask_diff": mask_diff(labels, tv.labels),
    }


@dataclass
class LungSource(SourceBase):
    """Chest CT -> (uint8 training volume, lung label mask, nodule boxes) cases.

    Per case: :func:`dsbprep.io.volume.load_volume` (a DICOM folder through
    :func:`dsbprep.io.dicom.load_scan`, a volume file through SimpleITK or the NRRD reader),
    :func:`dsbprep.segment.segment_lungs`, :func:`dsbprep.preprocess.prepare_lung_volume`,
    and nodule boxes from the LIDC reader XML in a DICOM folder and/or a LUNA16
    ``annotations.csv`` (matched by SeriesInstanceUID; a volume file's is its name).

    Parameters
    ----------
    dicom, segmentation, preprocess : dict
        Keyword arguments of the three stage functions (config sections of the same names);
        ``dicom["max_voxels"]`` also caps volume files.
    annotations : dict
        ``lidc_xml`` (bool), ``min_diameter_mm``, ``label_rule``, ``luna_csv`` (path or "").
    allow_one_lung : bool
        Store a case in which only one lung was found (flagged in its meta) instead of failing it.
    """

    dicom: dict[str, Any] = field(default_factory=dict)
    segmentation: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)
    luna: dict[str, list] = field(default_factory=dict)
    allow_one_lung: bool = True
    image_dtype: str = "uint8"
    pad_value: float = 170
    chunks: tuple[int, int, int] | None = None
    name: ClassVar[str] = "lung"
    kind: ClassVar[str] = "volume"

    @classmethod
    def from_config(cls, config: Any) -> LungSource:
        dicom = config.params("dicom")
        mods = dicom.get("allowed_modalities", "CT")
        dicom["allowed_modalities"] = tuple(mods) if isinstance(mods, tuple) else (mods,)
        seg = config.params("segmentation")
        if seg.get("threads", 0) == 0 and int(config.get("build", "workers")) > 1:
            seg["threads"] = 1  # one thread per worker process: the processes use the cores
        prep = config.params("preprocess")
        allow_one = bool(prep.pop("allow_one_lung"))
        ann = config.params("annotations")
        from ..annotations import label_rule  # an unknown label_rule fails here, not per case

        label_rule(ann.get("label_rule", "luna16"))
        luna = {}
        if ann.get("luna_csv"):
            from ..annotations import read_luna_csv

            luna = read_luna_csv(ann["luna_csv"])
        return cls(dicom=dicom, segmentation=seg, preprocess=prep, annotations=ann, luna=luna,
                   allow_one_lung=allow_one, pad_value=prep["pad_value"],
                   chunks=tuple(config.get("build", "chunks")))

    def discover(self, data_directory: str | Path) -> list[Task]:
        return discover_patients(data_directory)

    def _segment(self, scan: Any, where: str) -> tuple[Any, Any]:
        """Lung masks and the training volume of ``scan``; SegmentationError without lungs."""
        from ..errors import SegmentationError
        from ..preprocess import prepare_lung_volume
        from ..segment import segment_lungs

        masks = segment_lungs(scan.hu, scan.spacing, direction=scan.direction, **self.segmentation)
        if masks.found == 0 or (masks.found == 1 and not self.allow_one_lung):
            raise SegmentationError(
                f"{where}: lung segmentation found {masks.found} lung(s): {masks.reason}"
            )
        tv = prepare_lung_volume(scan.hu, scan.spacing, masks.left, masks.right, **self.preprocess)
        return masks, tv

    def process(self, task: Task) -> CaseData:
        from .._version import __version__
        from ..geometry import voxel_to_world
        from ..io.volume import load_volume

        where = task.inputs.get("volume") or task.inputs["folder"]
        scan = load_volume(where, **self.dicom)
        masks, tv = self._segment(scan, where)
        origin = voxel_to_world(tv.original_index(np.zeros(3)), scan.origin, scan.spacing,
                                scan.direction)
        boxes, nodules = self._boxes(task.inputs.get("folder"), scan, tv, origin)
        voxel_ml = float(np.prod(scan.spacing)) / 1000
        meta = {
            "dsbprep_version": __version__,
            "folder": where,
            "patient_id": scan.patient_id,
            "series_uid": scan.series_uid,
            "study_uid": scan.study_uid,
            "series_sha256": scan.source_hash,
            "n_files": len(scan.source_files),
            "original_shape": list(scan.hu.shape),
            "original_origin": list(scan.origin),
            "crop_box_original": [tv.original_index(np.zeros(3)).tolist(),
                                  tv.original_index(np.array(tv.image.shape) - 1).tolist()],
            "lungs_found": masks.found,
            "segmentation_note": masks.reason,
            "segmentation_method": masks.method,
            "lung_volume_ml": {"left": float(masks.left.sum() * voxel_ml),
                               "right": float(masks.right.sum() * voxel_ml)},
            **_grt123_meta(masks, tv, voxel_ml),
            "nodules": nodules,
            "warnings": list(scan.warnings),
            "parameters": {"dicom": self.dicom, "segmentation": self.segmentation,
                           "preprocess": self.preprocess, "annotations": self.annotations},
        }
        return self.case_data(
            task, tv.image, tv.labels, meta, spacing=tv.spacing,
            origin=tuple(float(v) for v in origin), direction=scan.direction,
            original_spacing=scan.spacing, shape_before_crop=tv.resampled_shape,
            crop_box=tv.crop_box, boxes=boxes,
        )

    def _boxes(
        self, folder: str | None, scan: Any, tv: Any, origin: np.ndarray
    ) -> tuple[np.ndarray, list]:
        """Nodule boxes in the stored frame from the LIDC XML (DICOM folders) and/or the LUNA16 CSV."""
        from ..annotations import find_lidc_xml, lidc_nodules, nodules_to_boxes
        from ..geometry import world_to_voxel
        from ..store import empty_boxes

        nodules = []
        if folder is not None and self.annotations.get("lidc_xml", True):
            xml = find_lidc_xml(folder)
            if xml is not None:
                nodules += lidc_nodules(
                    xml, origin=scan.origin, spacing=scan.spacing, direction=scan.direction,
                    series_uid=scan.series_uid,
                    min_diameter_mm=self.annotations.get("min_diameter_mm", 3.0),
                    rule=self.annotations.get("label_rule", "luna16"),
                )
        nodules += self.luna.get(scan.series_uid, [])
        if not nodules:
            return empty_boxes(), []
        boxes = nodules_to_boxes(
            nodules,
            to_stored_index=lambda w: world_to_voxel(w, origin, tv.spacing, scan.direction),
            stored_spacing=tv.spacing,
            stored_shape=tv.image.shape,
        )
        described = [{"center_world_zyx": list(n.center), "diameter_mm": n.diameter_mm,
                      "n_readers": n.n_readers} for n in nodules]
        return boxes, described
